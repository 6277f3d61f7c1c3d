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
`keep_host_memory()` is the host allocator policy `init()` applies to CPU training.
"""

from __future__ import annotations

import ctypes
import os
import sys
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
    host_memory_kept: bool = False  # keep_host_memory() applied (CPU)

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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HOST_ALLOCATOR_ENV = "DCODER_HOST_ALLOCATOR"  # "default" leaves the C allocator as it is


def keep_host_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed memory in the process instead of handing it back to the kernel.

    A CPU training step allocates and frees the same few-MB activations every step. By default
    glibc serves blocks above its (adaptive) mmap threshold with fresh `mmap`s and returns freed
    heap tops beyond 128 KB, so every step touches new pages: ~20-30k page faults and a tenth of a
    second of kernel time per step of the `tiny` preset on 2 cores. Serving blocks up to 32 MB from
    the heap and trimming only past 1 GB takes that to ~0, at the cost of the process holding on to
    its peak heap. The same advice as PyTorch's CPU tuning guide (jemalloc/tcmalloc), with no
    preload. Skipped when the user already chose (MALLOC_* or GLIBC_TUNABLES set, LD_PRELOAD, or
    DCODER_HOST_ALLOCATOR=default) and off glibc. Returns whether it was applied.
    """
    for name, v in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 < v < 2**31:  # mallopt takes a C int
            raise ValueError(f"{name} must be in (0, 2**31), got {v}")
    env = os.environ
    if (sys.platform != "linux" or env.get(HOST_ALLOCATOR_ENV, "").lower() == "default"
            or "LD_PRELOAD" in env or "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env)):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl has other parameters
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def init(device: str | None = None) -> DistInfo:
    """Start the process group under torchrun (NCCL on GPU, gloo on CPU); a no-op otherwise.
    On CPU also `keep_host_memory()`."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    kept = dev.type == "cpu" and keep_host_memory()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev, kept)


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
