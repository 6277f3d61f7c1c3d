"""Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), averaged over problems."""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes.

    Computed as the running product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which stays exact-ish for
    large n where the binomials overflow floats. Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """counts: (n, c) per problem → {"pass@k": mean} for each k that every problem has samples for."""
    counts = list(counts)
    out = {}
    for k in ks:
        if counts and all(n >= k for n, _ in counts):
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out
