"""Two-sided CUSUM (Page 1954) on online-standardised inputs.

The numerical step functions here are the only implementation: the batch driver calls them in a
numba loop, the online engine calls them once per event, and `Cusum` exposes them one input at a
time (`update`) or over an array (`run`).

State: a record with named fields, `STANDARDIZER` (count `n`, `mean`, `var`; see
`standardize_update`) or `CUSUM` (the same plus the two cumulative sums `s_pos`, `s_neg`). The
kernels take one record (a row of a structured array, passed by reference) and read its fields
by name, so any record with those fields works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

STANDARDIZER = np.dtype([("n", np.float64), ("mean", np.float64), ("var", np.float64)], align=True)
CUSUM = np.dtype(
    [
        ("n", np.float64),
        ("mean", np.float64),
        ("var", np.float64),
        ("s_pos", np.float64),
        ("s_neg", np.float64),
    ],
    align=True,
)
# Inputs are clipped after standardisation: microstructure series are heavy tailed, and one
# 50-sigma print would otherwise dominate the cumulative sum for hundreds of events.
Z_CLIP = 8.0


def halflife_to_alpha(halflife: float) -> float:
    """EWMA weight of the newest observation for a half-life given in observations."""
    return 1.0 - 0.5 ** (1.0 / halflife)


@njit(cache=True, inline="always")
def standardize_update(st: Any, x: float, alpha: float, min_count: float) -> float:
    """Standardise `x` with the statistics of the observations BEFORE it, then fold it in.

    Returns NaN while fewer than `min_count` observations were seen (or the variance is zero),
    so a detector never acts on a z-score made of two points. The weight is 1/n until it falls
    to `alpha`: the first observations form an ordinary running mean/variance instead of an
    EWMA biased towards its zero initial value.
    """
    n = st.n
    mean = st.mean
    var = st.var
    z = math.nan
    if n >= min_count and var > 1e-300:
        z = (x - mean) / math.sqrt(var)
        if z > Z_CLIP:
            z = Z_CLIP
        elif z < -Z_CLIP:
            z = -Z_CLIP
    a = 1.0 / (n + 1.0)
    if a < alpha:
        a = alpha
    d = x - mean
    st.n = n + 1.0
    st.mean = mean + a * d
    st.var = (1.0 - a) * (var + a * d * d)
    return z


@njit(cache=True, inline="always")
def cusum_step(st: Any, z: float, allowance: float, threshold: float) -> int:
    """One step of the two-sided CUSUM on a standardised input.

    s_pos = max(0, s_pos + z - k), s_neg = max(0, s_neg - z - k); an alarm (+1 up, -1 down) when
    either reaches the threshold h, after which both sums restart at zero (a renewal, so the
    false-alarm rate is 1/ARL0). A NaN input (warm-up) leaves the sums unchanged.
    """
    if not math.isfinite(z):
        return 0
    sp = st.s_pos + z - allowance
    sn = st.s_neg - z - allowance
    if sp < 0.0:
        sp = 0.0
    if sn < 0.0:
        sn = 0.0
    alarm = 0
    if sp >= threshold or sn >= threshold:
        alarm = 1 if sp >= sn else -1
        st.s_pos = 0.0
        st.s_neg = 0.0
    else:
        st.s_pos = sp
        st.s_neg = sn
    return alarm


@njit(cache=True)
def _cusum_run(
    state: np.ndarray,
    xs: np.ndarray,
    allowance: float,
    threshold: float,
    alpha: float,
    min_count: float,
    alarms: np.ndarray,
    stat: np.ndarray,
) -> None:
    st = state[0]
    for i in range(xs.shape[0]):
        z = standardize_update(st, xs[i], alpha, min_count)
        sp_before = st.s_pos
        sn_before = st.s_neg
        a = cusum_step(st, z, allowance, threshold)
        alarms[i] = a
        if a != 0 and math.isfinite(z):
            # The statistic that crossed, not the reset value.
            stat[i] = max(sp_before + z - allowance, sn_before - z - allowance)
        else:
            stat[i] = max(st.s_pos, st.s_neg)


@njit(cache=True)
def _cusum_one(
    state: np.ndarray, x: float, allowance: float, threshold: float, alpha: float, min_count: float
) -> tuple[float, int]:
    st = state[0]
    z = standardize_update(st, x, alpha, min_count)
    return z, cusum_step(st, z, allowance, threshold)


@dataclass(frozen=True)
class CusumState:
    z: float
    s_pos: float
    s_neg: float
    alarm: int


class Cusum:
    """Two-sided CUSUM with online standardisation.

    threshold   h, in standard deviations of the input (alarm when a cumulative sum reaches it).
    allowance   k, the drift allowance in standard deviations (k = delta/2 targets a shift of
                delta); also what keeps the false-alarm rate finite on stationary input.
    halflife    half-life, in observations, of the EWMA mean and variance used to standardise.
    min_count   observations needed before the standardiser is trusted.
    """

    def __init__(
        self,
        *,
        threshold: float = 3.0,
        allowance: float = 1.0,
        halflife: float = 1000.0,
        min_count: int = 30,
    ) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(
                f"Cusum threshold must be a positive number of sigmas, got {threshold!r}"
            )
        if not (math.isfinite(allowance) and allowance >= 0):
            raise ValueError(f"Cusum allowance must be >= 0 sigmas, got {allowance!r}")
        if not (math.isfinite(halflife) and halflife >= 1):
            raise ValueError(f"Cusum halflife must be >= 1 observation, got {halflife!r}")
        if not (isinstance(min_count, int) and min_count >= 2):
            raise ValueError(f"Cusum min_count must be an int >= 2, got {min_count!r}")
        self.threshold = float(threshold)
        self.allowance = float(allowance)
        self.halflife = float(halflife)
        self.min_count = min_count
        self._alpha = halflife_to_alpha(self.halflife)
        self._state = np.zeros(1, dtype=CUSUM)

    def update(self, x: float) -> CusumState:
        """Fold in one observation; `alarm` is +1/-1 when the CUSUM fired on it."""
        z, alarm = _cusum_one(
            self._state, float(x), self.allowance, self.threshold, self._alpha,
            float(self.min_count),
        )  # fmt: skip
        st = self._state[0]
        return CusumState(z=z, s_pos=float(st["s_pos"]), s_neg=float(st["s_neg"]), alarm=int(alarm))

    def restart(self) -> None:
        """Zero both cumulative sums, keeping the standardiser (a detection restart)."""
        self._state["s_pos"] = 0.0
        self._state["s_neg"] = 0.0

    def run(self, xs: np.ndarray) -> np.ndarray:
        """Alarms (+1, -1, 0) for every element of `xs`, continuing from the current state."""
        xs = np.ascontiguousarray(xs, dtype=np.float64)
        alarms = np.zeros(xs.shape[0], dtype=np.int8)
        stat = np.zeros(xs.shape[0])
        _cusum_run(
            self._state, xs, self.allowance, self.threshold, self._alpha,
            float(self.min_count), alarms, stat,
        )  # fmt: skip
        return alarms


def siegmund_arl(shift: float, *, threshold: float, allowance: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length for a mean `shift`.

    ARL = (exp(-2 d b) + 2 d b - 1) / (2 d^2), d = shift - k, b = h + 1.166. With shift = 0 it
    is the in-control ARL0 (one side); with shift > k it approximates the detection delay.
    """
    d = shift - allowance
    b = threshold + 1.166
    if abs(d) < 1e-12:
        return b * b
    return (math.exp(-2.0 * d * b) + 2.0 * d * b - 1.0) / (2.0 * d * d)
