"""Checkpoints with `torch.distributed.checkpoint` (DCP): sharded, atomic, resumable to the step.

    RUN_DIR/checkpoints/step_0000120/   DCP files (model + optimizer, each rank its shards)
                                        trainer.json: step, sampler position, counters, config
A checkpoint is written to `.tmp_step_N` and renamed when complete, so a reader (or `--resume`)
only ever sees whole checkpoints; a save that fails leaves the previous ones intact. The oldest
are pruned beyond `keep_last`.

Randomness needs no saved RNG state: every random draw of step s (mask noise, random length,
infill, dropout) comes from generators seeded by (seed, s), and the data order from
(seed, epoch) and the sampler position. The learning rate is a function of the step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from coder.config import RunConfig
from coder.distributed import barrier
from coder.model import Transformer, build_model

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def _dcp(fn, *args, **kwargs):
    """Call dcp.save/load without its per-call "assuming ... a single process" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        return fn(*args, **kwargs)


class CheckpointError(ValueError):
    user_error = True


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "trainer.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, trainer_state: dict, *, is_main: bool,
                    keep_last: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step:07d}", root / f".tmp_step_{step:07d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    ok = False
    try:
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        _dcp(dcp.save, state, checkpoint_id=str(tmp))
        if is_main:
            (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
            if final.exists():  # re-saving a step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        ok = True
    finally:
        if is_main and not ok:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore model (and optimizer) in place from a checkpoint dir; returns trainer.json."""
    path = Path(path)
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    _dcp(dcp.load, state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    return json.loads((path / "trainer.json").read_text())


def load_latest_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"
                      ) -> tuple[Transformer, RunConfig]:
    """The latest checkpoint's weights as a plain `Transformer` (no process group needed)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint yet")
    cfg = RunConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    model = build_model(cfg.model, device=device, seed=None)
    state = {"model": get_model_state_dict(model, options=StateDictOptions(strict=True))}
    _dcp(dcp.load, state, checkpoint_id=str(ckpt))
    set_model_state_dict(model, state["model"])
    return model, cfg
