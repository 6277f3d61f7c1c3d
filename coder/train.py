"""The trainer: one loop for both objectives, one process or many (see coder/distributed.py).

    dcoder train --data DATA --preset tiny --objective dlm --out runs/dlm --epochs 4
    dcoder pair  --data DATA --preset tiny --out runs/pair --epochs 4      # runs/pair/{ar,dlm}
    torchrun --nproc-per-node 8 -m dcoder train --data DATA --preset paper-1.7b ...

Per step: the sampler's next global batch (this rank's rows), micro-batches with gradient
accumulation, AdamW, warmup-stable-decay LR. Host syncs only at log steps (loss, NaN check)
and at epoch ends. Per epoch: validation loss (AR NLL; DLM ELBO by Monte Carlo with fixed
noise), then the eval callback (rank 0; handed a full, unsharded model), then a checkpoint.

Run dir: config.json (resolved RunConfig), tokenizer.json, metrics.jsonl, checkpoints/,
eval/epoch_NNN.json, tensorboard/ (only if TensorBoard is importable).

With `eval_every` N > 0, validation and the callback also run every N steps inside an epoch
(eval/step_NNNNNNNN.json); epoch ends are always evaluated.

Not handled: pipeline/tensor parallelism, changing the world size on resume when the global batch
no longer divides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from coder import distributed as D
from coder.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from coder.config import ConfigError, RunConfig
from coder.data import SamplerState, TrainData
from coder.model import Transformer, build_model
from coder.objectives import (
    doc_ids_from_eos,
    draw_diffusion_noise,
    fim_transform,
    infill_pad,
    masked_diffusion_loss,
    next_token_loss,
    random_length,
)
from data_prep.format import (
    EOS,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    MASK,
    PAD,
    DataDirError,
    atomic_write_bytes,
    atomic_write_json,
)

EvalCallback = Callable[..., dict]  # callback(model, tokenizer, cfg, epoch, step) -> {name: float}
VAL_SEQUENCES = 64  # validation sequences per evaluation (fixed, the first of the val split)
VAL_MC_SAMPLES = 2  # DLM ELBO: noise draws per validation sequence (same draws every epoch)


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss): one line, the last good checkpoint is kept."""

    user_error = True


def resolve_config(cfg: RunConfig) -> RunConfig:
    """A copy with `model.causal` following the objective and the batch arithmetic checked."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    t = cfg.train
    if t.objective not in ("ar", "dlm"):
        raise ConfigError(f"objective must be 'ar' or 'dlm', got {t.objective!r}")
    cfg.model.causal = t.objective == "ar"
    if t.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"train.seq_len {t.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}")
    if t.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train.dtype must be float32 or bfloat16, got {t.dtype!r}")
    if t.epoch_every < 1:
        raise ConfigError(f"train.epoch_every must be >= 1, got {t.epoch_every}")
    return cfg


def lr_at(step: int, total_steps: int, t) -> float:
    """Warmup-stable-decay: linear warmup, constant, exponential decay to min_lr over the last
    `decay_steps` steps (none when 0). `step` counts from 0."""
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    decay_start = total_steps - t.decay_steps
    if t.decay_steps and step >= decay_start:
        frac = min(1.0, (step - decay_start + 1) / t.decay_steps)
        return t.lr * (t.min_lr / t.lr) ** frac
    return t.lr


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, ...): independent streams without shared state."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _check_data(cfg: RunConfig, data: TrainData, run_dir: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(data.data_dir / "tokenizer.json"))
    if tok.get_vocab_size() > cfg.model.vocab_size:
        raise DataDirError(f"{data.data_dir}: tokenizer has {tok.get_vocab_size()} tokens, the model's "
                           f"vocab_size is {cfg.model.vocab_size} (--set model.vocab_size=...)")
    packed = int(data.manifest.get("seq_len") or 0)
    if packed > cfg.model.max_seq_len:
        raise DataDirError(f"{data.data_dir}: packed for seq_len {packed}, above the model's max_seq_len "
                           f"{cfg.model.max_seq_len}")
    run_tok = run_dir / "tokenizer.json"
    if run_tok.exists() and run_tok.read_bytes() != (data.data_dir / "tokenizer.json").read_bytes():
        raise DataDirError(f"{data.data_dir}: its tokenizer differs from the one {run_dir} was trained with")


class Trainer:
    """State of one training run; `run()` trains to the budget."""

    def __init__(self, cfg: RunConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 resume: bool = False, eval_callback: EvalCallback | None = None,
                 device: str | None = None, quiet: bool = False):
        self.info = D.init(device)
        self.cfg = resolve_config(cfg)
        self.run_dir = Path(out_dir)
        self.eval_callback, self.quiet = eval_callback, quiet
        t = self.cfg.train
        # global_batch = world_size × micro_batch × accum (micro_batch shrinks to fit a rank's share)
        per_rank, rem = divmod(t.global_batch, self.info.world_size)
        self.micro_batch = min(t.micro_batch, per_rank)
        if rem or per_rank == 0 or per_rank % self.micro_batch:
            raise ConfigError(f"global_batch {t.global_batch} must split into {self.info.world_size} ranks "
                              f"× micro_batch {t.micro_batch} × an integer number of micro-steps")
        self.local_batch, self.accum = per_rank, per_rank // self.micro_batch

        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is not None and not resume:
            raise ConfigError(f"{self.run_dir} already has checkpoints: pass --resume or choose a new --out")
        self._check_resumable_config(ckpt)
        self.data = TrainData(data_dir, t.seq_len, t.global_batch, t.seed, repack=t.repack_each_epoch)
        _check_data(self.cfg, self.data, self.run_dir)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(self.data.data_dir / "tokenizer.json"))
        self.ids = {k: self.tokenizer.token_to_id(k) for k in (EOS, MASK, PAD, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)}
        tokens_per_step = t.global_batch * t.seq_len
        if t.total_tokens > 0:
            self.total_steps = math.ceil(t.total_tokens / tokens_per_step)
        else:
            self.total_steps = math.ceil(t.epochs * self.data.sampler.num_chunks / t.global_batch)
        self.total_steps = max(1, self.total_steps)
        self.stop_step = min(self.total_steps, t.max_steps) if t.max_steps else self.total_steps

        self.model, self.optimizer = self._build_model()
        self.step = 0
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer)
            self.step = state["step"]
            self.data.sampler.state = SamplerState(**state["sampler"])
            self._log(f"resumed from {ckpt} (step {self.step}, epoch {self.data.sampler.epoch_progress:.2f})")
        if self.info.is_main:
            self._prepare_run_dir()
        D.barrier()
        self.tb = self._tensorboard()

    # ------------------------------------------------------------------------------ setup

    def _check_resumable_config(self, ckpt: Path | None) -> None:
        path = self.run_dir / "config.json"
        if ckpt is None or not path.exists():
            return
        saved = RunConfig.from_dict(json.loads(path.read_text()))
        fixed = ("objective", "seed", "seq_len", "global_batch")
        if saved.model != self.cfg.model or any(getattr(saved.train, k) != getattr(self.cfg.train, k) for k in fixed):
            raise ConfigError(f"{self.run_dir} was trained with a different model/objective/seed/batch config "
                              f"than given; resume with the same preset and --set values")

    def _build_model(self) -> tuple[Transformer, torch.optim.Optimizer]:
        t, info = self.cfg.train, self.info
        dtype = torch.bfloat16 if t.dtype == "bfloat16" else torch.float32
        if info.distributed:
            # identical init to a single process: rank 0 builds the full model, the shards load it
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            model = build_model(self.cfg.model, device="meta")
            D.parallelize(model, info, dtype=dtype, activation_checkpointing=t.activation_checkpointing,
                          compile=t.compile)
            model.to_empty(device=info.device)
            full = build_model(self.cfg.model, seed=t.seed).state_dict() if info.is_main else {}
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                                       broadcast_from_rank0=True))
        else:
            model = build_model(self.cfg.model, device=info.device, seed=t.seed)
            D.parallelize(model, info, activation_checkpointing=t.activation_checkpointing, compile=t.compile)
        model.set_dropout(t.dropout)
        model.train()
        decay = [p for p in model.parameters() if p.ndim >= 2]  # no decay on norms
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            # fused: one kernel per step instead of a dozen foreach passes (~7x faster on CPU too)
            lr=t.lr, betas=(t.beta1, t.beta2), fused=True,
        )
        return model, opt

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", self.cfg.to_dict())
        shutil.copyfile(self.data.data_dir / "tokenizer.json", self.run_dir / "tokenizer.json")
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop lines logged after the checkpoint we resume from
            keep = [ln for ln in metrics.read_text().splitlines() if _line_step(ln) <= self.step]
            atomic_write_bytes(metrics, "".join(ln + "\n" for ln in keep).encode())

    def _tensorboard(self):
        if not self.info.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------------------ batches

    def _autocast(self):
        if self.cfg.train.dtype == "bfloat16" and not self.info.distributed:
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _rank_rows(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, slice]:
        lo = self.info.rank * self.local_batch
        return self.data.rows(chunk_ids[lo : lo + self.local_batch]), slice(lo, lo + self.local_batch)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.info.device.type == "cuda":
            return t.pin_memory().to(self.info.device, non_blocking=True)
        return t

    def _micro_losses(self, step: int):
        """Yield each micro-batch's loss (already divided by the number of micro-steps)."""
        t, seed = self.cfg.train, self.cfg.train.seed
        rows, global_rows = self._rank_rows(self.data.sampler.next_batch())
        L = t.seq_len
        eligible = None
        if t.objective == "dlm":
            L = random_length(L, t.random_length_prob, np.random.default_rng(_seed(seed, step, 1)))
            rows = rows[:, :L]
            if t.infill_pad_prob > 0:
                outs = [infill_pad(rows[i : i + 1], t.infill_pad_prob, self.ids[PAD],
                                   np.random.default_rng(_seed(seed, step, 2, global_rows.start + i)))
                        for i in range(len(rows))]
                rows = np.concatenate([o for o, _ in outs])
                if any(e is not None for _, e in outs):
                    eligible = np.concatenate([e if e is not None else np.ones_like(o, bool) for o, e in outs])
            gen = torch.Generator().manual_seed(_seed(seed, step, 3))
            noise = draw_diffusion_noise(t.global_batch, L, gen, t.mask_eps, t.antithetic_t)
            noise = noise.rows(global_rows).to(self.info.device)
        elif t.fim_rate > 0:
            fim = (self.ids[FIM_PREFIX], self.ids[FIM_MIDDLE], self.ids[FIM_SUFFIX])
            rows = np.concatenate([
                fim_transform(rows[i : i + 1], t.fim_rate, self.ids[EOS], fim,
                              np.random.default_rng(_seed(seed, step, 4, global_rows.start + i)))
                for i in range(len(rows))])
        doc_ids = doc_ids_from_eos(rows, self.ids[EOS]) if self.cfg.model.doc_attention else None
        torch.manual_seed(_seed(seed, step, 5, self.info.rank))  # dropout, AR input masking
        for k in range(self.accum):
            sl = slice(k * self.micro_batch, (k + 1) * self.micro_batch)
            x = self._to_device(rows[sl])
            docs = self._to_device(doc_ids[sl]).long() if doc_ids is not None else None
            with self._autocast():
                if t.objective == "dlm":
                    el = self._to_device(eligible[sl]) if eligible is not None else None
                    loss, _ = masked_diffusion_loss(self.model, x, noise.rows(sl), self.ids[MASK], doc_ids=docs,
                                                    eligible=el, realised_mask_weighting=t.realised_mask_weighting)
                else:
                    loss = next_token_loss(self.model, x, doc_ids=docs, input_mask_prob=t.ar_input_mask_prob,
                                           mask_id=self.ids[MASK])
            yield loss / self.accum  # outside autocast: the caller's backward must not run under it

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step; returns the (detached, on-device) loss of this rank."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, self.total_steps, self.cfg.train)
        total = torch.zeros((), device=self.info.device)
        for k, loss in enumerate(self._micro_losses(step)):
            if self.info.distributed:  # reduce gradients once, on the last micro-step
                self.model.set_requires_gradient_sync(k == self.accum - 1)
            loss.backward()
            total += loss.detach()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean val loss over the first VAL_SEQUENCES val sequences (all ranks compute it alike)."""
        t = self.cfg.train
        batches = self.data.val_batches(VAL_SEQUENCES, self.micro_batch)
        if not batches:
            return None
        self.model.eval()
        gen = torch.Generator().manual_seed(_seed(t.seed, 2**31 - 1))  # the same noise every epoch
        total, n = torch.zeros((), device=self.info.device), 0
        for rows in batches:
            x = self._to_device(rows)
            docs = self._to_device(doc_ids_from_eos(rows, self.ids[EOS])).long() if self.cfg.model.doc_attention else None
            with self._autocast():
                if t.objective == "ar":
                    total += next_token_loss(self.model, x, doc_ids=docs)
                    n += 1
                else:
                    for _ in range(VAL_MC_SAMPLES):
                        noise = draw_diffusion_noise(len(rows), rows.shape[1], gen, t.mask_eps).to(self.info.device)
                        total += masked_diffusion_loss(self.model, x, noise, self.ids[MASK], doc_ids=docs)[0]
                        n += 1
        self.model.train()
        return float(total / n)

    def _unsharded_model(self) -> Transformer | None:
        """The model as a plain module for the eval callback: itself in one process; under FSDP a
        full copy gathered on rank 0 (None elsewhere). Collective."""
        if not self.info.distributed:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.info.is_main:
            return None
        model = build_model(self.cfg.model, device="meta")
        model.load_state_dict(full, assign=True)
        return model.to(self.info.device)

    def end_of_epoch(self, step: int, epoch: float, name: str | None = None) -> None:
        """Validation loss, then the eval callback (its results in eval/`name`, by default
        eval/epoch_NNN.json)."""
        val = self.validation_loss()
        record = {"type": "val", "step": step, "epoch": epoch, **self._counters()}
        if val is not None:
            key = "val_nll" if self.cfg.train.objective == "ar" else "val_elbo"
            record.update({"val_loss": val, key: val})
            if not math.isfinite(val):
                raise TrainingError(f"validation loss is {val} at step {step}; last good checkpoint kept")
        self._write(record)
        if self.eval_callback is not None:
            model = self._unsharded_model()
            if model is not None:
                model.eval()
                results = self.eval_callback(model, self.tokenizer, self.cfg, epoch, step)
                model.train()
                results = {k: float(v) for k, v in (results or {}).items()}
                name = name or f"epoch_{math.ceil(epoch - 1e-9):03d}.json"
                atomic_write_json(self.run_dir / "eval" / name, {"epoch": epoch, "step": step, **results})
                self._write({"type": "eval", "step": step, "epoch": epoch, **self._counters(), **results})
            D.barrier()

    # ------------------------------------------------------------------------------ loop

    def _counters(self) -> dict:
        return {"tokens": self.step * self.cfg.train.global_batch * self.cfg.train.seq_len,
                "unique_tokens": self.data.unique_tokens}

    def _write(self, record: dict) -> None:
        if not self.info.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "type"):
                    self.tb.add_scalar(f"{record.get('type', 'train')}/{k}", v, record["step"])

    def _log(self, msg: str) -> None:
        if self.info.is_main and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def save(self) -> None:
        state = {"sampler": dataclasses.asdict(self.data.sampler.state), "total_steps": self.total_steps,
                 "epoch": self.data.sampler.epoch_progress, **self._counters()}
        save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, state,
                        is_main=self.info.is_main, keep_last=self.cfg.train.keep_last)

    def run(self) -> dict:
        t, sampler = self.cfg.train, self.data.sampler
        tokens_per_step = t.global_batch * t.seq_len
        self._log(f"training {t.objective} ({self.cfg.name}, {self.cfg.model.num_params() / 1e6:.2f}M params) "
                  f"for {self.total_steps} steps ({self.total_steps * tokens_per_step / self.data.unique_tokens:.2f} "
                  f"epochs of {self.data.unique_tokens} tokens); world {self.info.world_size}, {self.info.device}"
                  + ("; freed host memory kept for reuse (DCODER_HOST_ALLOCATOR=default turns it off)"
                     if self.info.host_memory_kept else ""))
        losses: list[float] = []
        window, window_steps, t0, start_step = torch.zeros((), device=self.info.device), 0, time.perf_counter(), self.step
        last = {"loss": float("nan")}
        while self.step < self.stop_step:
            epoch_before = int(sampler.epoch_progress)
            window += self.train_step(self.step)
            window_steps += 1
            self.step += 1
            every = t.epoch_every
            epoch_end = int(sampler.epoch_progress) // every > epoch_before // every or self.step == self.stop_step
            save_due = t.save_every and self.step % t.save_every == 0
            eval_due = t.eval_every and self.step % t.eval_every == 0 and not epoch_end
            if self.step % t.log_every == 0 or epoch_end or save_due:
                loss = float(D.all_reduce_mean(window / window_steps))  # the only regular host sync
                if not math.isfinite(loss):
                    raise TrainingError(f"loss is {loss} at step {self.step} (epoch {sampler.epoch_progress:.2f}); "
                                        f"stopping, the last good checkpoint is kept")
                elapsed = time.perf_counter() - t0
                tps = window_steps * tokens_per_step / elapsed
                last = {"type": "train", "step": self.step, "epoch": sampler.epoch_progress, **self._counters(),
                        "loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": tps}
                self._write(last)
                losses.append(loss)
                eta = (self.stop_step - self.step) * elapsed / window_steps
                self._log(f"step {self.step}/{self.stop_step} | epoch {sampler.epoch_progress:.2f} | loss {loss:.4f} | "
                          f"lr {last['lr']:.2e} | {tps / 1e3:.1f}k tok/s | ETA {_fmt_s(eta)}")
                window, window_steps, t0 = torch.zeros((), device=self.info.device), 0, time.perf_counter()
            if epoch_end:  # completed epochs (a batch may straddle the boundary), or the fraction at the stop
                crossed = int(sampler.epoch_progress) > epoch_before
                self.end_of_epoch(self.step, float(int(sampler.epoch_progress)) if crossed
                                  else round(sampler.epoch_progress, 6))
            elif eval_due:
                self.end_of_epoch(self.step, round(sampler.epoch_progress, 6), name=f"step_{self.step:08d}.json")
            if epoch_end or save_due:
                self.save()
        if self.tb is not None:
            self.tb.close()
        self._log(f"done: {self.step - start_step} steps this session, final loss {last['loss']:.4f} → {self.run_dir}")
        return {"run_dir": str(self.run_dir), "step": self.step, "epoch": sampler.epoch_progress,
                "loss": last["loss"], "losses": losses}


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62  # a torn line from a killed run: dropped


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(cfg: RunConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, resume: bool = False,
          eval_callback: EvalCallback | None = None, device: str | None = None, quiet: bool = False) -> dict:
    """Train one run to its budget; returns {run_dir, step, epoch, loss, losses (per log step)}.

    With `resume`, continues from the latest checkpoint in `out_dir` if there is one (else starts).
    """
    trainer = Trainer(cfg, data_dir, out_dir, resume=resume, eval_callback=eval_callback, device=device,
                      quiet=quiet)
    return trainer.run()


def train_pair(cfg: RunConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, resume: bool = False,
               eval_callback: EvalCallback | None = None, device: str | None = None,
               quiet: bool = False) -> dict:
    """The matched pair: AR (the control) then DLM, identical except objective and attention.

    Same seed (init and data order), tokens per step, schedule and eval cadence. Writes
    out_dir/ar and out_dir/dlm; returns {"ar": result, "dlm": result}.
    """
    out = Path(out_dir)
    results = {}
    for objective in ("ar", "dlm"):
        c = RunConfig.from_dict(cfg.to_dict())
        c.train.objective = objective
        results[objective] = train(c, data_dir, out / objective, resume=resume, eval_callback=eval_callback,
                                   device=device, quiet=quiet)
    return results
