"""Training throughput of the `tiny` preset: ours vs transformers' Qwen3ForCausalLM, plus MFU.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py [--steps 12] [--rounds 3] [--out FILE]

Side by side in one process, same batch (tiny: 32 × 128 tokens), dtype fp32, AdamW and
grad clipping, next-token CE on random tokens:
  ours (model)    coder.model.Transformer in a plain PyTorch loop
  ours (trainer)  coder.train.Trainer.train_step, the real training step (data from a memmapped
                  data dir, AR and DLM objectives)
  transformers    Qwen3ForCausalLM built from the config our AR export writes, same loop, loss
                  from `labels` (its standard training path)
Rounds alternate the contenders so load from other jobs hits them alike; the best round counts.
MFU = model FLOPs per second / the measured fp32 matmul peak of this machine, where model FLOPs
per token = 6 · (non-embedding params + LM head) + 12 · layers · d_model · seq_len (attention).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coder.config import get_preset  # noqa: E402
from coder.export import hf_config  # noqa: E402
from coder.model import build_model  # noqa: E402


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(cfg) -> float:
    m = cfg.model
    non_embed = m.num_params() - 2 * m.vocab_size * m.d_model
    return 6 * (non_embed + m.vocab_size * m.d_model) + 12 * m.n_layers * m.d_model * cfg.train.seq_len


def plain_loop(model, batches, hf: bool, steps: int) -> float:
    """Seconds per step (mean over `steps`, after 2 warm-up steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()

    def step(x):
        if hf:
            loss = model(input_ids=x, labels=x).loss
        else:
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for x in batches[:2]:
        step(x)
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - t) / steps


def trainer_loop(cfg, data_dir: Path, run_dir: Path, steps: int) -> float:
    from coder.train import Trainer

    trainer = Trainer(cfg, data_dir, run_dir, quiet=True, device="cpu")
    for s in range(2):
        trainer.train_step(s)
    t = time.perf_counter()
    for s in range(2, 2 + steps):
        trainer.train_step(s)
    float(trainer.train_step(2 + steps))  # one host sync, as at a log step
    return (time.perf_counter() - t) / (steps + 1)


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = get_preset("tiny")
    cfg.train.objective, cfg.model.causal = "ar", True
    B, T, V = cfg.train.global_batch, cfg.train.seq_len, cfg.model.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, V, (B, T), generator=gen) for _ in range(4)]
    hf_cfg = {k: v for k, v in hf_config(cfg, {}).items() if k not in ("dcoder", "architectures", "torch_dtype")}
    hf_cfg.pop("rope_theta" if "rope_parameters" in Qwen3Config().to_dict() else "rope_parameters")

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", V, 400 * 400)
        for r in range(args.rounds):
            torch.manual_seed(0)
            ours = build_model(cfg.model, seed=0)
            results.setdefault("ours (model, plain loop)", []).append(plain_loop(ours, batches, False, args.steps))
            hf = Qwen3ForCausalLM(Qwen3Config(**hf_cfg, attn_implementation="sdpa"))
            results.setdefault("transformers Qwen3ForCausalLM", []).append(plain_loop(hf, batches, True, args.steps))
            for obj in ("ar", "dlm"):
                c = get_preset("tiny")
                c.train.objective = obj
                results.setdefault(f"ours (trainer, {obj})", []).append(
                    trainer_loop(c, data, Path(tmp) / f"run_{obj}_{r}", args.steps))
    peak = matmul_peak_gflops()
    fpt = flops_per_token(cfg)
    tokens = B * T
    ref = min(results["transformers Qwen3ForCausalLM"])
    rows = []
    for name, secs in results.items():
        best = min(secs)
        tps = tokens / best
        rows.append({"name": name, "s_per_step": best, "tokens_per_s": tps, "vs_transformers": ref / best,
                     "mfu": tps * fpt / (peak * 1e9)})
    machine = {
        "nproc": os.cpu_count(),
        "cpu": subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "matmul_peak_gflops": peak, "model_gflop_per_token": fpt / 1e9, "batch": [B, T],
    }
    print(json.dumps(machine))
    print(f"{'contender':34s} {'s/step':>8s} {'tok/s':>9s} {'vs HF':>7s} {'MFU':>6s}")
    for r in rows:
        print(f"{r['name']:34s} {r['s_per_step']:8.3f} {r['tokens_per_s']:9.0f} {r['vs_transformers']:6.2f}x "
              f"{r['mfu'] * 100:5.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
