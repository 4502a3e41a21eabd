"""Exact rolling quantile over the last W values: a sorted window plus a ring of arrival order.

Insert and evict are a binary search and a shift of at most W values (W = 500 by default), so a
step costs well under a microsecond and the result is exact and deterministic, which the
batch/online parity depends on. State: float64[2, W] (row 0 sorted values, row 1 ring) and two
counters (count, ring head) kept by the caller.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def rq_quantile(st: np.ndarray, n: int, q: float) -> float:
    """The q-quantile of the window (lower order statistic, no interpolation); NaN when empty."""
    if n == 0:
        return np.nan
    return st[0, int(q * (n - 1))]


@njit(cache=True)
def rq_push(st: np.ndarray, n: int, head: int, x: float) -> tuple[int, int]:
    """Add `x`, evicting the oldest value once the window is full; returns (count, head)."""
    w = st.shape[1]
    srt = st[0]
    if n == w:
        old = st[1, head]
        lo = np.searchsorted(srt[:n], old)
        for i in range(lo, n - 1):
            srt[i] = srt[i + 1]
        n -= 1
    pos = np.searchsorted(srt[:n], x)
    for i in range(n, pos, -1):
        srt[i] = srt[i - 1]
    srt[pos] = x
    st[1, head] = x
    head += 1
    if head == w:
        head = 0
    return n + 1, head
