import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from coder_testutil import cli_sets, make_data_dir, make_tokenizer, tiny_run_config, train_losses

from coder.checkpoint import checkpoint_dirs, latest_checkpoint, save_checkpoint
from coder.config import ConfigError, get_preset
from coder.export import export_run, load_model
from coder.model import build_model
from coder.train import Trainer, TrainingError, lr_at, train, train_pair
from data_prep.format import DataDirError

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"), make_tokenizer(), n_docs=60)


def _dcoder(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "dcoder", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses_bitwise(tmp_path, data_dir):
    args = ["train", "--data", str(data_dir), "--objective", "dlm", "--max-steps", "9", "--save-every", "3",
            "--device", "cpu", *cli_sets("random_length_prob=0.3", "infill_pad_prob=0.3")]
    full = _dcoder(*args, "--out", str(tmp_path / "full"))
    killed = _dcoder(*args, "--out", str(tmp_path / "killed"))
    deadline = time.monotonic() + 120
    while not checkpoint_dirs(tmp_path / "killed") and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stdout.read()
    step = int(latest_checkpoint(tmp_path / "killed").name.split("_")[1])
    assert step < 9
    resumed = _dcoder(*args, "--out", str(tmp_path / "killed"), "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    assert full.wait(timeout=300) == 0, full.stdout.read()
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 10))
    assert a == b  # bitwise: JSON floats round-trip exactly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun workers plus a reference run: ~40 s on 2 shared cores
def test_two_process_gloo_fsdp_matches_one_process(tmp_path, data_dir):
    common = ["train", "--data", str(data_dir), "--objective", "dlm", "--max-steps", "4", "--device", "cpu",
              "--quiet", *cli_sets("micro_batch=2")]
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "dcoder", *common, "--out", str(tmp_path / "fsdp")],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stdout + dist.stderr
    single = _dcoder(*common, "--out", str(tmp_path / "one"))
    assert single.wait(timeout=300) == 0, single.stdout.read()
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([b[s] for s in sorted(b)]), torch.tensor([a[s] for s in sorted(a)]),
                               rtol=1e-5, atol=1e-5)
    one, two = load_model(tmp_path / "one").model, load_model(tmp_path / "fsdp").model
    for (k, p), q in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=k)


def test_pair_is_matched_evaluates_per_epoch_and_exports(tmp_path, data_dir):
    calls = []

    def callback(model, tokenizer, cfg, epoch, step):
        assert not model.training and model.config.causal == (cfg.train.objective == "ar")
        calls.append((cfg.train.objective, epoch, step))
        return {"proxy_acc": 0.5 + epoch / 100}

    cfg = tiny_run_config("dlm", epochs=2.0)
    result = train_pair(cfg, data_dir, tmp_path / "pair", eval_callback=callback, quiet=True)
    ar_cfg = json.loads((tmp_path / "pair" / "ar" / "config.json").read_text())
    dlm_cfg = json.loads((tmp_path / "pair" / "dlm" / "config.json").read_text())
    diff = {(s, k) for s in ("model", "train") for k in ar_cfg[s] if ar_cfg[s][k] != dlm_cfg[s][k]}
    assert diff == {("model", "causal"), ("train", "objective")}
    assert result["ar"]["step"] == result["dlm"]["step"] > 0
    assert [(o, e) for o, e, _ in calls] == [("ar", 1.0), ("ar", 2.0), ("dlm", 1.0), ("dlm", 2.0)]
    for obj in ("ar", "dlm"):
        run = tmp_path / "pair" / obj
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        vals = [r for r in lines if r["type"] == "val"]
        assert [r["epoch"] for r in vals] == [1.0, 2.0] and all(math.isfinite(r["val_loss"]) for r in vals)
        assert all({"step", "epoch", "tokens", "unique_tokens", "loss", "lr", "tokens_per_s"} <= set(r)
                   for r in lines if r["type"] == "train")
        assert json.loads((run / "eval" / "epoch_002.json").read_text())["proxy_acc"] == 0.52
        loaded = load_model(run)
        assert loaded.objective == obj and loaded.model.config.causal == (obj == "ar")
        exported = load_model(export_run(run, tmp_path / "models" / obj))
        x = torch.randint(0, 300, (1, 16))
        with torch.no_grad():
            torch.testing.assert_close(exported.model(x), loaded.model(x), rtol=0, atol=0)
    # resume=True on finished runs does no more steps
    again = train_pair(cfg, data_dir, tmp_path / "pair", resume=True, quiet=True)
    assert again["ar"]["step"] == result["ar"]["step"] and len(calls) == 4


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    cfg = tiny_run_config("ar", max_steps=2)
    train(cfg, data_dir, tmp_path / "run", quiet=True)
    cfg.train.max_steps = 6
    trainer = Trainer(cfg, data_dir, tmp_path / "run", resume=True, quiet=True)
    with torch.no_grad():
        trainer.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss is nan at step 3"):
        trainer.run()
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    assert torch.isfinite(load_model(tmp_path / "run").model.lm_head.weight).all()


def test_incompatible_data_dir_is_a_one_line_error(tmp_path, data_dir):
    with pytest.raises(DataDirError, match="tokenizer has .* tokens"):
        train(tiny_run_config("dlm", vocab_size=100), data_dir, tmp_path / "a", quiet=True)
    proc = _dcoder("train", "--data", str(data_dir), "--out", str(tmp_path / "b"), "--set", "model.vocab_size=100")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and out.strip().count("\n") == 0 and "tokenizer has" in out


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    model = build_model(tiny_run_config().model)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, opt, {"ok": 1}, is_main=True)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 2, model, opt, {"bad": object()}, is_main=True)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]
    for s in (3, 4, 5):
        save_checkpoint(tmp_path, s, model, opt, {}, is_main=True, keep_last=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000004", "step_0000005"]


def test_warmup_stable_decay_schedule_of_the_paper_preset():
    t = get_preset("paper-1.7b").train
    total = 10_000
    lrs = [lr_at(s, total, t) for s in range(total)]
    assert lrs[0] == pytest.approx(2e-4 / 2000) and lrs[1999] == pytest.approx(2e-4)
    assert lrs[2000] == lrs[8999] == 2e-4
    assert lrs[-1] == pytest.approx(2e-5) and all(a >= b for a, b in zip(lrs[9000:], lrs[9001:], strict=False))


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for ac in (False, True):
        model = build_model(tiny_run_config("ar").model, seed=1)
        model.activation_checkpointing = ac
        model(x).logsumexp(-1).mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_eval_every_adds_evaluations_inside_the_epoch(tmp_path, data_dir):
    steps = []
    cfg = tiny_run_config("ar", epochs=1.0)
    cfg.train.eval_every = 2
    result = train(cfg, data_dir, tmp_path / "run", quiet=True,
                   eval_callback=lambda model, tok, c, epoch, step: steps.append(step) or {"acc": step / 100})
    last = result["step"]
    assert last > 4 and steps == [s for s in range(2, last, 2)] + [last]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "val"] == steps
    assert json.loads((tmp_path / "run" / "eval" / "step_00000002.json").read_text())["acc"] == 0.02


def test_epoch_every_spaces_end_of_epoch_work(tmp_path, data_dir):
    epochs = []
    cfg = tiny_run_config("ar", epochs=5.0)
    cfg.train.epoch_every = 2
    train(cfg, data_dir, tmp_path / "run", quiet=True,
          eval_callback=lambda model, tok, c, epoch, step: epochs.append(epoch) or {})
    assert epochs == [2.0, 4.0, 5.0]  # every second epoch, and the end of the run
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["type"] == "val"] == epochs
    with pytest.raises(ConfigError, match="epoch_every"):
        cfg.train.epoch_every = 0
        train(cfg, data_dir, tmp_path / "bad", quiet=True)


_ALLOC_PROBE = """
import resource, sys, torch
from coder.distributed import init
init("cpu")
def step():  # a training step's pattern: a few MB-sized activations, all freed at the end
    xs = [torch.ones(1 << 20) for _ in range(6)]
    return float(sum(x.sum() for x in xs))
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a policy for glibc's allocator")
def test_cpu_training_process_keeps_freed_memory_instead_of_faulting_it_back_in():
    def faults(**env):
        base = {k: v for k, v in ENV.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
        out = subprocess.run([sys.executable, "-c", _ALLOC_PROBE], env={**base, **env}, capture_output=True,
                             text=True, check=True)
        return float(out.stdout.split()[-1])

    tuned, opted_out = faults(), faults(DCODER_HOST_ALLOCATOR="default")
    # glibc's default returns freed 4 MB blocks to the kernel: ~1k faults per block per step
    assert opted_out > 1000
    assert tuned < opted_out / 5


def test_allocator_policy_steps_aside_when_the_user_chose_an_allocator(monkeypatch):
    from coder.distributed import keep_host_memory

    for var, value in (("MALLOC_ARENA_MAX", "2"), ("LD_PRELOAD", "libjemalloc.so.2"),
                       ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"), ("DCODER_HOST_ALLOCATOR", "default")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert keep_host_memory() is False, var
    with pytest.raises(ValueError, match="trim_threshold"):
        keep_host_memory(trim_threshold=1 << 31)  # more than mallopt's C int holds
