"""Code-aware MinHash signatures and LSH near-duplicate clustering, vectorised with numpy.

The Stack's near-dedup settings: shingles are 5-grams of code tokens (runs of identifier
characters, case kept, so `Foo` and `foo` differ and punctuation/whitespace do not count),
256 permutations, Jaccard >= 0.7 is a duplicate, one representative per cluster is kept.

Hash family: each token is hashed with xxh32, five consecutive token hashes are mixed into one
32-bit shingle hash `x`, and permutation k is the multiply-add-shift hash
`h_k(x) = (a_k * x + b_k mod 2^64) >> 32` (Dietzfelbinger), which is 2-independent for 32-bit `x`
and needs one multiply, one add and one shift per (shingle, permutation) on uint64 arrays.

Not handled: documents with no identifier characters get no signature (exact dedup still covers
them); candidate verification uses the signature's Jaccard estimate (std ~0.03 at 256 perms),
not the exact shingle sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import xxhash

NUM_PERM = 256
NGRAM = 5
THRESHOLD = 0.7
_TOKEN_RE = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK = 2048  # shingles per block: (2048, 256) uint64 = 4 MiB of temporaries


_HASH_CACHE: dict[str, int] = {}


def token_hashes(toks: list[str]) -> np.ndarray:
    """xxh32 of each token as uint64 (shape (len(toks),)), memoised: code reuses few distinct tokens,
    and a dict hit is several times cheaper than encoding and hashing."""
    cache = _HASH_CACHE
    if len(cache) > 2_000_000:  # bound memory on huge vocabularies
        cache.clear()
    for t in toks:
        if t not in cache:
            cache[t] = xxhash.xxh32_intdigest(t.encode("utf-8", "surrogatepass"))
    return np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))


def code_tokens(text: str) -> list[str]:
    """Identifier-ish tokens (split on non-identifier characters), case kept."""
    return _TOKEN_RE.findall(text)


def shingle_hashes(text: str, ngram: int = NGRAM) -> np.ndarray:
    """Distinct 32-bit hashes of the token `ngram`-grams of `text`, as uint64 (shape (S,)).

    A document shorter than `ngram` tokens is one shingle; one with no tokens has none.
    """
    toks = code_tokens(text)
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    t = token_hashes(toks)
    n = min(ngram, len(t))
    m = len(t) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # polynomial mix of the n token hashes, wrapping mod 2^64
        h = h * _MIX + t[j : j + m]
    h ^= h >> np.uint64(29)
    h *= _MIX
    return np.unique(h >> np.uint64(32))


class MinHasher:
    """Signatures of `num_perm` multiply-add-shift permutations, fixed by `seed`."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1):
        rng = np.random.default_rng(seed)
        # a odd and b arbitrary, both 64-bit: the multiply-add-shift family.
        self.a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)
        self.num_perm = num_perm

    def signature_of_hashes(self, x: np.ndarray) -> np.ndarray:
        """(num_perm,) uint32 signature of shingle hashes `x` (S,); all 0xFFFFFFFF if S == 0."""
        if not len(x):
            return np.full(self.num_perm, _EMPTY, dtype=np.uint32)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        buf = np.empty((min(_CHUNK, len(x)), self.num_perm), dtype=np.uint64)
        for s in range(0, len(x), _CHUNK):
            xs = x[s : s + _CHUNK]
            block = buf[: len(xs)]  # (S', P), computed in place: no temporaries
            np.multiply(xs[:, None], self.a[None, :], out=block)
            block += self.b
            np.minimum(sig, block.min(axis=0), out=sig)
        # `>> 32` is monotone, so the min of the shifted hashes is the shifted min: one shift per perm.
        return (sig >> np.uint64(32)).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(shingle_hashes(text))


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
