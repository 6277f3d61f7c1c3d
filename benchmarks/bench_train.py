"""Training throughput of the `tiny` preset: ours vs transformers' Qwen3ForCausalLM, plus MFU.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py [--steps 8] [--compile] [--bf16] [--out FILE]

Side by side in one run, each contender in its own worker process (its own heap: in one process
the contenders shared the allocator's state), same batch (tiny: 32 × 128 tokens) and dtype (fp32;
with --bf16 also both under CPU bf16 autocast), grad clipping, next-token CE on random tokens:
  transformers        Qwen3ForCausalLM built from the config our AR export writes, loss from
                      `labels` (its standard training path), torch's default AdamW; once as a
                      plain loop runs it, once with dcoder's host allocator policy
                      (coder.distributed.keep_host_memory) applied, for the code-only comparison
  ours (model only)   coder.model.Transformer in that same plain loop, loss from `targets` (its
                      training path: the LM head fused with the CE, no full logits tensor)
                      (default allocator, as the transformers row)
  ours (trainer, …)   coder.train.Trainer.train_step: the real training step as shipped (data from
                      a memmapped data dir, AR and DLM objectives, fused AdamW, the host
                      allocator policy; --compile adds the trainer with torch.compile)
Single steps of all contenders are interleaved (the parent sends each worker "step" in turn) so
load from other jobs hits them alike; the median step counts. Page faults per step are reported
because they are what the allocator policy changes.
The primary measure is CPU seconds per step (robust when other jobs share the cores); wall time
is reported too. MFU = model FLOPs/s ÷ the measured fp32 matmul peak (per CPU second for CPU
time, per wall second with all threads for wall time); model FLOPs per token = 6 · (non-embedding params + LM head)
+ 12 · layers · d_model · seq_len (attention).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coder.config import get_preset  # noqa: E402
from coder.export import hf_config  # noqa: E402
from coder.model import build_model  # noqa: E402

REF = "transformers Qwen3ForCausalLM"


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> tuple[float, float]:
    """Best fp32 GEMM rate over `reps` tries: (GFLOP per wall second with all threads,
    GFLOP per CPU second). The rooflines MFU is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    wall = cpu = float("inf")
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / max(cpu, 1e-9) / 1e9


def flops_per_token(cfg) -> float:
    m = cfg.model
    non_embed = m.num_params() - 2 * m.vocab_size * m.d_model
    return 6 * (non_embed + m.vocab_size * m.d_model) + 12 * m.n_layers * m.d_model * cfg.train.seq_len


def plain_step(model, batches, hf: bool, bf16: bool = False):
    """One step of a plain PyTorch loop (torch's default AdamW) as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    it = iter(range(1 << 30))

    def step():
        x = batches[next(it) % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if hf:
                loss = model(input_ids=x, labels=x).loss
            else:
                loss = model(x[:, :-1], targets=x[:, 1:])  # our training path: fused LM head + CE
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())

    return step


def trainer_step(cfg, data_dir: Path, run_dir: Path):
    """The real training step (Trainer.train_step, then a host sync as at a log step)."""
    from coder.train import Trainer

    trainer = Trainer(cfg, data_dir, run_dir, quiet=True, device="cpu")
    it = iter(range(1 << 30))
    return lambda: float(trainer.train_step(next(it)))


def make_data(root: Path, vocab: int, n_tokens: int) -> Path:
    from tokenizers import Tokenizer, models

    from data_prep.format import SCHEMA_VERSION, SPECIAL_TOKENS, atomic_write_json, write_indexed

    root.mkdir(parents=True, exist_ok=True)
    vocab_map = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab_map.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab)})
    Tokenizer(models.WordLevel(vocab_map, unk_token="<|pad|>")).save(str(root / "tokenizer.json"))
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(6, vocab, 400), 0).astype(np.uint16) for _ in range(n_tokens // 400)]
    write_indexed(root / "train" / "00000", docs, np.uint16)
    write_indexed(root / "val" / "00000", docs[:4], np.uint16)
    atomic_write_json(root / "manifest.json", {"schema_version": SCHEMA_VERSION, "complete": True, "seq_len": 128})
    return root


def build_contender(spec: dict):
    """A contender's step closure, built inside its own worker process."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from coder.distributed import keep_host_memory

    if spec.get("keep_host_memory") and not keep_host_memory():
        raise SystemExit("dcoder's host allocator policy did not apply here (MALLOC_*, GLIBC_TUNABLES or "
                         "LD_PRELOAD set, or not glibc)")
    cfg = get_preset("tiny")
    cfg.train.objective, cfg.model.causal = "ar", True
    B, T, V = cfg.train.global_batch, cfg.train.seq_len, cfg.model.vocab_size
    torch.manual_seed(0)
    if spec["kind"] == "trainer":  # Trainer → coder.distributed.init applies its host policy itself
        c = get_preset("tiny")
        for k, v in spec["opts"].items():
            setattr(c.train, k, v)
        return trainer_step(c, Path(spec["data"]), Path(spec["run"]))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, V, (B, T), generator=gen) for _ in range(4)]
    if spec["kind"] == "hf":
        hf_cfg = {k: v for k, v in hf_config(cfg, {}).items() if k not in ("dcoder", "architectures", "torch_dtype")}
        hf_cfg.pop("rope_theta" if "rope_parameters" in Qwen3Config().to_dict() else "rope_parameters")
        model = Qwen3ForCausalLM(Qwen3Config(**hf_cfg, attn_implementation="sdpa"))
        return plain_step(model, batches, True, bf16=spec.get("bf16", False))
    return plain_step(build_model(cfg.model, seed=0), batches, False)


def worker(spec_json: str) -> int:
    """One contender in its own process (own heap, so no contender inherits another's allocator
    state): warm up, say "ready", then time one step per "step" line on stdin."""
    import resource

    # the protocol gets stdout's file; anything a library prints (Python or C) goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    step = build_contender(json.loads(spec_json))
    for _ in range(2):  # warm-up (and compile)
        step()
    print("ready", file=proto)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t, c = time.perf_counter(), time.process_time()
        step()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, file=proto)
    return 0


def ask(name: str, p: subprocess.Popen, request: str | None) -> str:
    """Send `request` (if any) to a worker and read its one-line answer; a dead worker is an error
    that names its contender."""
    try:
        if request is not None:
            p.stdin.write(request + "\n")
            p.stdin.flush()
        line = p.stdout.readline()
    except BrokenPipeError:
        line = ""
    if not line:
        raise SystemExit(f"worker for {name!r} exited (code {p.wait()}); its stderr is above")
    return line.strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="timed steps per contender (interleaved)")
    ap.add_argument("--compile", action="store_true", help="also time the trainer with torch.compile")
    ap.add_argument("--bf16", action="store_true", help="also time both under CPU bf16 autocast")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)

    cfg = get_preset("tiny")
    B, T = cfg.train.global_batch, cfg.train.seq_len
    contenders = {
        REF: {"kind": "hf"},
        f"{REF}, dcoder's host allocator policy": {"kind": "hf", "keep_host_memory": True},
        "ours (model only, same plain loop)": {"kind": "model"},
        "ours (trainer, ar)": {"kind": "trainer", "opts": {"objective": "ar"}},
        "ours (trainer, dlm)": {"kind": "trainer", "opts": {"objective": "dlm"}},
    }
    if args.compile:
        contenders["ours (trainer, ar, compile)"] = {"kind": "trainer", "opts": {"objective": "ar", "compile": True}}
    if args.bf16:
        contenders[f"{REF}, bf16 autocast"] = {"kind": "hf", "bf16": True}
        contenders["ours (trainer, ar, bf16 autocast)"] = {"kind": "trainer",
                                                          "opts": {"objective": "ar", "dtype": "bfloat16"}}
    results: dict[str, list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", cfg.model.vocab_size, 400 * 400)
        procs: dict[str, subprocess.Popen] = {}
        try:
            for i, (name, spec) in enumerate(contenders.items()):
                spec = {**spec, "data": str(data), "run": str(Path(tmp) / f"run_{i}")}
                procs[name] = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                if ask(name, procs[name], None) != "ready":  # one at a time: warm-ups don't overlap
                    raise SystemExit(f"worker for {name!r} did not start")
            # interleave single steps so load from other jobs hits every contender alike
            for i in range(args.steps):
                for name, p in procs.items():
                    wall, cpu, faults = ask(name, p, "step").split()
                    results.setdefault(name, []).append((float(wall), float(cpu), int(faults)))
                print(f"step {i + 1}/{args.steps}", file=sys.stderr, flush=True)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.stdin.close()
                    try:
                        p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
    peak, peak_cpu = matmul_peak_gflops()
    # a busy neighbour can hide one core from the wall-clock GEMM: never below the per-core rate × threads
    peak = max(peak, peak_cpu * torch.get_num_threads())
    fpt = flops_per_token(cfg)
    tokens = B * T
    # CPU seconds per step are the primary measure: other jobs share these cores, and wall time
    # (also reported) includes the time this process was waiting for them.
    ref_cpu = float(np.median([c for _, c, _ in results[REF]]))
    rows = []
    for name, vals in results.items():
        wall, cpu = float(np.median([w for w, _, _ in vals])), float(np.median([c for _, c, _ in vals]))
        rows.append({"name": name, "wall_s_per_step": wall, "cpu_s_per_step": cpu,
                     "tokens_per_s_wall": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
                     "vs_transformers_cpu": ref_cpu / cpu,
                     "page_faults_per_step": float(np.median([f for _, _, f in vals])),
                     "mfu_cpu": tokens / cpu * fpt / (peak_cpu * 1e9),
                     "mfu_wall": tokens / wall * fpt / (peak * 1e9)})
    machine = {
        "nproc": os.cpu_count(),
        "cpu": subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "matmul_peak_gflops_wall": peak, "matmul_peak_gflops_per_cpu_s": peak_cpu, "model_gflop_per_token": fpt / 1e9, "batch": [B, T],
    }
    print(json.dumps(machine))
    print("| contender | CPU s/step | tokens/CPU-s | vs transformers | MFU (CPU time) | wall s/step | "
          "tokens/s wall | MFU (wall) | page faults/step |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['cpu_s_per_step']:.3f} | {r['tokens_per_cpu_s']:.0f} | "
              f"{r['vs_transformers_cpu']:.2f}x | {r['mfu_cpu'] * 100:.1f}% | {r['wall_s_per_step']:.3f} | "
              f"{r['tokens_per_s_wall']:.0f} | {r['mfu_wall'] * 100:.1f}% | {r['page_faults_per_step']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
