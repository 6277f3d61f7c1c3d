"""Process setup and FSDP2 wiring: the same training entry for 1 process or many.

    dcoder train ...                                        # one process (CPU or one GPU)
    torchrun --nproc-per-node 8 -m dcoder train ...         # one node, FSDP2 over 8 GPUs
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m dcoder train ...      # many nodes
    torchrun --nproc-per-node 2 -m dcoder train --device cpu ...   # CPU, gloo (what the tests run)

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it the run is a
single process with no process group. `parallelize()` applies the fixed order of STYLE.md §8:
activation checkpointing, compile, `fully_shard` per block then root with a
`MixedPrecisionPolicy`; the caller builds on `meta` first and materialises afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from coder.model import Transformer


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """"auto"/None: the local GPU when CUDA is available, else CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init(device: str | None = None) -> DistInfo:
    """Start the process group under torchrun (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity in a single process."""
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def parallelize(model: Transformer, info: DistInfo, *, dtype: torch.dtype = torch.float32,
                activation_checkpointing: bool = False, compile: bool = False) -> Transformer:
    """AC, compile, then FSDP2 (`fully_shard` per block, then the root) when distributed.

    Mixed precision under FSDP2: parameters are kept in fp32 and gathered in `dtype` for compute,
    gradients are reduced in fp32. In a single process the caller uses autocast instead.
    Compile is per block (`Module.compile`), which keeps parameter names free of `_orig_mod.`.
    """
    model.activation_checkpointing = activation_checkpointing
    if compile:
        for block in model.model.layers:
            block.compile()
    if info.distributed:
        import warnings

        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # A block returns its (k, v) views for the KV cache; training never writes to them in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for block in model.model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model
