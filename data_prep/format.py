"""The data-dir contract (version 1): what `dcoder prep` writes and `coder` reads.

    DATA_DIR/
      manifest.json          schema_version, sources, per-stage counts and drop reasons,
                             documents, unique tokens, seq_len, dtype, tokenizer sha256,
                             shard sha256s, complete=true (written last, atomically)
      tokenizer.json         HF `tokenizers` file with SPECIAL_TOKENS
      train/NNNNN.bin/.idx   Megatron indexed-dataset shards (MMIDIDX, version 1)
      val/NNNNN.bin/.idx

Each Megatron "sequence" is one document's tokens followed by `<|endoftext|>`, so document
boundaries are recoverable from the index alone, and the same shards load in Megatron-based
stacks (MegaDLMs). A data dir without `manifest.json` (or with `complete` false) is not a data dir.

This module is stdlib + numpy only: `coder` imports it, and it imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
EOS, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
# Fixed order: trained tokenizers give these ids 0..5.
SPECIAL_TOKENS = [EOS, MASK, PAD, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]

_MAGIC = b"MMIDIDX\x00\x00"
# Megatron-core DType codes.
_DTYPE_CODES = {
    np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
    np.float64: 6, np.float32: 7, np.uint16: 8,
}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}


_UMASK = os.umask(0)
os.umask(_UMASK)


class DataDirError(ValueError):
    """A data dir that is missing, incomplete or incompatible (a user-facing, one-line error)."""

    user_error = True


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65535 else np.int32


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; data dirs are shared on clusters
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_indexed(prefix: str | os.PathLike, docs: Iterable[np.ndarray], dtype: type) -> int:
    """Write documents (1-D token arrays, EOS already appended) as PREFIX.bin + PREFIX.idx.

    Both files go to temp names and are renamed at the end (.bin first, .idx last), so a
    shard whose .idx exists is complete. Returns the number of tokens written.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_tmp, idx_tmp = prefix.with_suffix(".bin.tmp"), prefix.with_suffix(".idx.tmp")
    lengths: list[int] = []
    with open(bin_tmp, "wb") as f:
        for doc in docs:
            arr = np.asarray(doc, dtype=dtype)
            f.write(arr.tobytes(order="C"))
            lengths.append(len(arr))
    lens = np.asarray(lengths, dtype=np.int32)
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        pointers[1:] = np.cumsum(lens[:-1].astype(np.int64)) * itemsize
    doc_idx = np.arange(len(lens) + 1, dtype=np.int64)  # one sequence per document
    with open(idx_tmp, "wb") as f:
        f.write(_MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", _DTYPE_CODES[np.dtype(dtype).type]))
        f.write(struct.pack("<Q", len(lens)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(lens.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())
    os.replace(bin_tmp, prefix.with_suffix(".bin"))
    os.replace(idx_tmp, prefix.with_suffix(".idx"))
    return int(lens.sum())


@dataclass
class IndexedDataset:
    """Read-only view of one Megatron indexed-dataset shard, memory-mapped.

    `tokens` is the flat token stream (documents back to back), `lengths[i]`/`offsets[i]` give
    document i in token units.
    """

    prefix: Path
    tokens: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, prefix: str | os.PathLike) -> IndexedDataset:
        prefix = Path(prefix)
        idx_path, bin_path = prefix.with_suffix(".idx"), prefix.with_suffix(".bin")
        if not idx_path.exists() or not bin_path.exists():
            raise DataDirError(f"shard {prefix} is missing its .bin or .idx file")
        with open(idx_path, "rb") as f:
            header = f.read(9 + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[:9] != _MAGIC:
            raise DataDirError(f"{idx_path} is not a Megatron indexed-dataset index")
        (version,) = struct.unpack("<Q", header[9:17])
        code = header[17]
        n_seq, n_doc = struct.unpack("<QQ", header[18:34])
        if version != 1 or code not in _CODE_DTYPES:
            raise DataDirError(f"{idx_path}: unsupported version {version} or dtype code {code}")
        dtype = _CODE_DTYPES[code]
        idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        lengths = np.frombuffer(idx, dtype=np.int32, count=n_seq, offset=34)
        pointers = np.frombuffer(idx, dtype=np.int64, count=n_seq, offset=34 + 4 * n_seq)
        del n_doc  # documents == sequences in what we write; Megatron's doc index not needed here
        if os.path.getsize(bin_path) == 0:
            tokens = np.zeros(0, dtype=dtype)
        else:
            tokens = np.memmap(bin_path, mode="r", dtype=dtype)
        itemsize = np.dtype(dtype).itemsize
        offsets = (pointers // itemsize).astype(np.int64)
        if n_seq and offsets[-1] + lengths[-1] > len(tokens):
            raise DataDirError(f"{bin_path} is shorter than its index says (truncated write?)")
        return cls(prefix, tokens, np.asarray(lengths), offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        o = int(self.offsets[i])
        return np.asarray(self.tokens[o : o + int(self.lengths[i])])

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum()) if len(self.lengths) else 0


def shard_prefixes(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Shard prefixes of `split` ("train" or "val"), in name order."""
    return sorted(p.with_suffix("") for p in (Path(data_dir) / split).glob("*.idx"))


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load and check a data dir's manifest; raise DataDirError with a one-line reason."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir} does not exist (run `dcoder prep` first)")
    path = data_dir / "manifest.json"
    if not path.exists():
        raise DataDirError(f"{data_dir} has no manifest.json: not a complete data dir")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataDirError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataDirError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, this dcoder reads {SCHEMA_VERSION}"
        )
    if not manifest.get("complete"):
        raise DataDirError(f"{data_dir} is incomplete (an interrupted prep?): rerun `dcoder prep`")
    if not (data_dir / "tokenizer.json").exists():
        raise DataDirError(f"{data_dir} has no tokenizer.json")
    return manifest
