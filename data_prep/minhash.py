"""Code-aware MinHash signatures and LSH near-duplicate clustering, vectorised with numpy.

The Stack's near-dedup settings: shingles are 5-grams of code tokens (runs of identifier
characters, case kept, so `Foo` and `foo` differ and punctuation/whitespace do not count),
256 permutations, Jaccard >= 0.7 is a duplicate, one representative per cluster is kept.

Everything per document is a handful of whole-array numpy passes, no per-token Python:
- tokens are runs of bytes in [A-Za-z0-9_] or >= 0x80 (any non-ASCII UTF-8 byte counts as an
  identifier character, so non-ASCII identifiers stay whole; non-ASCII punctuation does too);
- a token's hash is a polynomial hash of its bytes taken from one wrapping uint64 prefix sum
  (hash = (C[end] - C[start]) * P^-start mod 2^64; P is odd so P^-1 exists mod 2^64);
- five consecutive token hashes are mixed into one 32-bit shingle hash `x`;
- permutation k is `h_k(x) = a_k * x + b_k mod 2^32` (a_k odd, so each h_k is a bijection of the
  32-bit shingle hashes) on uint32 arrays: one multiply and one add per (shingle, permutation),
  half the memory traffic of 64-bit arithmetic.

Not handled: documents with no identifier characters get no signature (exact dedup still covers
them); candidate verification uses the signature's Jaccard estimate (std ~0.03 at 256 perms),
not the exact shingle sets.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import numpy as np
import xxhash

NUM_PERM = 256
NGRAM = 5
THRESHOLD = 0.7
_TOKEN_RE = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_P = 0x100000001B3  # odd multiplier of the byte polynomial hash (the FNV prime)
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK = 4096  # shingles per block: (4096, 256) uint32 = 4 MiB of temporaries
_WORD = np.zeros(256, dtype=bool)
for _lo, _hi in ((48, 57), (65, 90), (97, 122), (95, 95), (128, 255)):
    _WORD[_lo : _hi + 1] = True
_HASH_CACHE: dict[str, int] = {}


def token_hashes(toks: list[str]) -> np.ndarray:
    """xxh32 of each string token as uint64 (shape (len(toks),)), memoised: code reuses few
    distinct tokens, and a dict hit is several times cheaper than encoding and hashing."""
    cache = _HASH_CACHE
    if len(cache) > 2_000_000:  # bound memory on huge vocabularies
        cache.clear()
    for t in toks:
        if t not in cache:
            cache[t] = xxhash.xxh32_intdigest(t.encode("utf-8", "surrogatepass"))
    return np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))


def code_tokens(text: str) -> list[bytes]:
    """The code tokens (UTF-8 bytes) that shingles are made of; the reference for
    `code_token_hashes`, used where a list is needed (tests, the datasketch comparison)."""
    return _TOKEN_RE.findall(text.encode("utf-8", "surrogatepass"))


class _Powers:
    """P^i and P^-i mod 2^64 for i < n, grown on demand (wrapping uint64 cumprod)."""

    def __init__(self) -> None:
        self.pw = self.inv = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pw) < n:
            size = max(n, 2 * len(self.pw), 1 << 16)
            self.pw = np.ones(size, dtype=np.uint64)
            self.pw[1:] = np.cumprod(np.full(size - 1, _P, dtype=np.uint64))
            self.inv = np.ones(size, dtype=np.uint64)
            self.inv[1:] = np.cumprod(np.full(size - 1, pow(_P, -1, 2**64), dtype=np.uint64))
        return self.pw[:n], self.inv[:n]


_POWERS = _Powers()


def code_token_hashes(text: str) -> np.ndarray:
    """32-bit hashes (as uint64, shape (T,)) of the code tokens of `text`, in order."""
    b = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if not len(b):
        return np.zeros(0, dtype=np.uint64)
    edges = np.diff(_WORD[b].astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # token i is b[starts[i]:ends[i]]
    pw, inv = _POWERS.get(len(b) + 1)
    c = np.zeros(len(b) + 1, dtype=np.uint64)
    np.cumsum((b.astype(np.uint64) + np.uint64(1)) * pw[: len(b)], out=c[1:])  # wraps mod 2^64
    h = (c[ends] - c[starts]) * inv[starts]  # position-free polynomial hash of each token's bytes
    h ^= h >> np.uint64(31)
    h *= _MIX
    return h >> np.uint64(32)


def shingle_hashes(text: str, ngram: int = NGRAM) -> np.ndarray:
    """Distinct 32-bit hashes of the token `ngram`-grams of `text`, as uint32 (shape (S,)).

    A document shorter than `ngram` tokens is one shingle; one with no tokens has none.
    """
    t = code_token_hashes(text)
    if not len(t):
        return np.zeros(0, dtype=np.uint32)
    n = min(ngram, len(t))
    m = len(t) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # polynomial mix of the n token hashes, wrapping mod 2^64
        h = h * _MIX + t[j : j + m]
    h ^= h >> np.uint64(29)
    h *= _MIX
    return np.unique((h >> np.uint64(32)).astype(np.uint32))


class MinHasher:
    """Signatures of `num_perm` multiply-add permutations mod 2^32, fixed by `seed`."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(0, 2**31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1))  # odd
        self.b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
        self.num_perm = num_perm

    def signature_of_hashes(self, x: np.ndarray) -> np.ndarray:
        """(num_perm,) uint32 signature of shingle hashes `x` (S,) uint32; all 0xFFFFFFFF if S == 0."""
        if not len(x):
            return np.full(self.num_perm, _EMPTY, dtype=np.uint32)
        sig = np.full(self.num_perm, _EMPTY, dtype=np.uint32)
        buf = np.empty((min(_CHUNK, len(x)), self.num_perm), dtype=np.uint32)
        for s in range(0, len(x), _CHUNK):
            xs = x[s : s + _CHUNK]
            block = buf[: len(xs)]  # (S', P), computed in place: no temporaries
            np.multiply(xs[:, None], self.a[None, :], out=block)  # wraps mod 2^32
            block += self.b
            np.minimum(sig, block.min(axis=0), out=sig)
        return sig

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(shingle_hashes(text))


@functools.cache
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted false-positive and
    false-negative areas of the LSH S-curve (the usual criterion, as in datasketch)."""
    best, best_err = (1, 1), float("inf")
    lo, hi = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo**r) ** b, lo)
            fn = np.trapezoid((1 - hi**r) ** b, hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _pairs_in_bucket(members: np.ndarray, max_all_pairs: int = 32) -> Iterable[tuple[int, int]]:
    # Small buckets: every pair; big ones (boilerplate) only star pairs to the first member, which
    # keeps the work linear while still linking the cluster.
    if len(members) <= max_all_pairs:
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                yield int(members[i]), int(members[j])
    else:
        for j in members[1:]:
            yield int(members[0]), int(j)


def near_duplicate_clusters(
    sigs: np.ndarray, threshold: float = THRESHOLD, bands: tuple[int, int] | None = None
) -> np.ndarray:
    """Cluster rows of `sigs` (N, P) uint32; returns (N,) int64 representative index per row.

    Rows are assumed sorted by priority: a cluster's representative is its smallest index.
    Candidates share at least one LSH band; a candidate pair is linked when the fraction of
    equal signature entries is >= `threshold`. Rows without a signature are their own cluster.
    """
    n, p = sigs.shape
    b, r = bands or optimal_bands(threshold, p)
    parent = np.arange(n, dtype=np.int64)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    valid = ~(sigs == _EMPTY).all(axis=1)
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return parent
    seen: set[tuple[int, int]] = set()
    for k in range(b):
        band = np.ascontiguousarray(sigs[idx, k * r : (k + 1) * r]).view(np.dtype((np.void, 4 * r)))[:, 0]
        _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
        if counts.max() < 2:
            continue
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(counts)[:-1]
        for group in np.split(idx[order], bounds):
            if len(group) < 2:
                continue
            cand = [pr for pr in _pairs_in_bucket(group) if pr not in seen]
            if not cand:
                continue
            seen.update(cand)
            ii, jj = np.array(cand).T
            est = (sigs[ii] == sigs[jj]).mean(axis=1)
            for i, j in zip(ii[est >= threshold], jj[est >= threshold], strict=True):
                ri, rj = find(int(i)), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)
