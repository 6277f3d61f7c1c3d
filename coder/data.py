"""Training data: fixed-length sequences cut from a data dir's shards, in a resumable order.

The train shards' documents (each ending with <|endoftext|>) form one token stream, cut into
`seq_len` chunks (the tail shorter than `seq_len` is not used). Every epoch visits every chunk
once, in a permutation that depends only on (seed, epoch): an AR run and a DLM run with the same
seed see identical batches. A global batch takes the next `global_batch` chunks of the stream of
permutations (a batch may straddle two epochs, so nothing is dropped); rank r takes rows
[r·B/W, (r+1)·B/W) of it. The position is one integer (`chunks_seen`), saved with checkpoints.

Not handled: re-packing per epoch (chunk boundaries are fixed), weighting sources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.format import DataDirError, IndexedDataset, read_manifest, shard_prefixes


class TokenStream:
    """The shards of one split as one memory-mapped token stream, read in chunks."""

    def __init__(self, data_dir: str | os.PathLike, split: str):
        self.shards = [IndexedDataset.open(p) for p in shard_prefixes(data_dir, split)]
        # each shard's documents are contiguous in its .bin, so a shard is one flat slice
        self.spans = []
        for s in self.shards:
            start = int(s.offsets[0]) if len(s) else 0
            self.spans.append((s.tokens, start, s.num_tokens))
        self.cum = np.cumsum([0] + [n for _, _, n in self.spans])  # (n_shards + 1,)

    @property
    def num_tokens(self) -> int:
        return int(self.cum[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream, as an int64 copy."""
        out = np.empty(length, dtype=np.int64)
        pos, filled = start, 0
        i = int(np.searchsorted(self.cum, pos, side="right")) - 1
        while filled < length:
            tokens, base, n = self.spans[i]
            off = pos - int(self.cum[i])
            take = min(n - off, length - filled)
            out[filled : filled + take] = tokens[base + off : base + off + take]
            filled, pos, i = filled + take, pos + take, i + 1
        return out


@dataclass
class SamplerState:
    chunks_seen: int = 0  # global chunks consumed since the start of training (all ranks)


class EpochSampler:
    """Global batches of chunk indices; the order depends only on (seed, epoch)."""

    def __init__(self, num_chunks: int, global_batch: int, seed: int, state: SamplerState | None = None):
        if num_chunks < 1:
            raise DataDirError("the training split has fewer tokens than one sequence")
        self.num_chunks, self.global_batch, self.seed = num_chunks, global_batch, seed
        self.state = state or SamplerState()
        self._perm_epoch, self._perm = -1, np.zeros(0, np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)
            self._perm_epoch = epoch
        return self._perm

    @property
    def epoch_progress(self) -> float:
        """Epochs completed, fractional (1.0 = end of the first epoch)."""
        return self.state.chunks_seen / self.num_chunks

    def next_batch(self) -> np.ndarray:
        """The next global batch of chunk indices (global_batch,); advances the state."""
        out = np.empty(self.global_batch, dtype=np.int64)
        filled, seen = 0, self.state.chunks_seen
        while filled < self.global_batch:
            epoch, pos = divmod(seen, self.num_chunks)
            take = min(self.num_chunks - pos, self.global_batch - filled)
            out[filled : filled + take] = self.permutation(epoch)[pos : pos + take]
            filled, seen = filled + take, seen + take
        self.state.chunks_seen = seen
        return out


class TrainData:
    """A data dir opened for training: the stream, its chunking and the sampler."""

    def __init__(self, data_dir: str | os.PathLike, seq_len: int, global_batch: int, seed: int,
                 state: SamplerState | None = None):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.seq_len = seq_len
        self.train = TokenStream(self.data_dir, "train")
        num_chunks = self.train.num_tokens // seq_len
        if num_chunks < 1:
            raise DataDirError(f"{self.data_dir}: the train split has {self.train.num_tokens} tokens, "
                               f"fewer than one sequence of {seq_len}")
        self.sampler = EpochSampler(num_chunks, global_batch, seed, state)

    @property
    def unique_tokens(self) -> int:
        """Tokens one epoch trains on (the stream cut to whole chunks)."""
        return self.sampler.num_chunks * self.seq_len

    def rows(self, chunk_ids: np.ndarray) -> np.ndarray:
        """(len(chunk_ids), seq_len) int64 tokens."""
        return np.stack([self.train.read(int(c) * self.seq_len, self.seq_len) for c in chunk_ids])

    def val_batches(self, max_sequences: int, batch: int) -> list[np.ndarray]:
        """The first `max_sequences` chunks of the val split (fixed), in batches; [] without one."""
        val = TokenStream(self.data_dir, "val")
        n = min(max_sequences, val.num_tokens // self.seq_len)
        rows = [val.read(i * self.seq_len, self.seq_len) for i in range(n)]
        return [np.stack(rows[i : i + batch]) for i in range(0, n, batch)]
