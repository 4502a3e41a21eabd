"""Bayesian online changepoint detection (Adams and MacKay 2007), Normal-Gamma model.

Unknown mean and precision (Normal-Gamma prior), Student-t predictive, constant hazard H.

Truncation keeps memory and time per observation bounded: at most `max_run_length` (R)
run-length hypotheses are kept. When a new one (a changepoint now) would make R + 1, the two
adjacent hypotheses (in run length, both >= cp_lag) with the least total mass are merged: the
mass is kept, the statistics are the heavier one's (adjacent runs share almost all their data).
Why merge and not drop: on heavy-tailed market data the posterior over long runs is diffuse,
thousands of hypotheses each small but together a large share; dropping them one at a time
loses that share and changes the detections, merging keeps it. Run lengths below cp_lag are
never merged, so the changepoint probability is exact up to the merged runs' likelihoods.
With R greater than the series length nothing is ever dropped and the recursion is the exact
one: `bocpd_exact` is the same kernel with R = n + 1, which tests and the benchmark compare
against.

State, float64[6, R]: rows prob, mu, kappa, alpha, beta, scratch, hypotheses in increasing
run length (run length = kappa - kappa0); `m` = hypotheses in use.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

BOCPD_ROWS = 6
_LOG_PI = math.log(math.pi)
LGAMMA_TABLE_SIZE = 4096


def lgamma_table(alpha0: float, size: int = LGAMMA_TABLE_SIZE) -> np.ndarray:
    """lgamma(alpha + 1/2) - lgamma(alpha) for run length r, alpha = alpha0 + r/2.

    alpha depends only on the run length, so the two lgamma calls per hypothesis and
    observation become a lookup (beyond the table, an asymptotic series).
    """
    a = alpha0 + 0.5 * np.arange(size, dtype=np.float64)
    return np.array([math.lgamma(v + 0.5) - math.lgamma(v) for v in a], dtype=np.float64)


@njit(cache=True, inline="always")
def _lg_half(lgt: np.ndarray, r: int, alpha: float) -> float:
    if r < lgt.shape[0]:
        return lgt[r]
    # lgamma(a + 1/2) - lgamma(a) ~ ln(a)/2 - 1/(8a) + 1/(192 a^3); a >= 2048 here, so the
    # next term (~1e-16) is below double precision.
    return 0.5 * math.log(alpha) - 0.125 / alpha + 1.0 / (192.0 * alpha**3)


@njit(cache=True)
def bocpd_reset(st: np.ndarray, mu0: float, kappa0: float, alpha0: float, beta0: float) -> int:
    st[:, :] = 0.0
    st[0, 0] = 1.0
    st[1, 0] = mu0
    st[2, 0] = kappa0
    st[3, 0] = alpha0
    st[4, 0] = beta0
    return 1


@njit(cache=True, fastmath={"contract", "afn", "reassoc", "arcp"})
def bocpd_update(
    st: np.ndarray,
    lgt: np.ndarray,
    m: int,
    x: float,
    hazard: float,
    mu0: float,
    kappa0: float,
    alpha0: float,
    beta0: float,
    cp_lag: int,
) -> tuple[int, float, float]:
    """Fold in `x`; returns (hypotheses in use, expected run length, P(run length < cp_lag)).

    P(r_t = 0) alone is identically the hazard under a constant hazard, so the changepoint
    probability reported is the posterior mass of run lengths shorter than `cp_lag`: it rises
    to ~1 a few observations after a change and decays once the new run is older than the lag.
    A non-finite `x` is skipped (the posterior is unchanged).
    """
    R = st.shape[1]
    prob = st[0]
    mu = st[1]
    kappa = st[2]
    alpha = st[3]
    beta = st[4]
    lp = st[5]
    if math.isfinite(x):
        mx = -math.inf
        for i in range(m):
            a = alpha[i]
            k = kappa[i]
            nu = 2.0 * a
            scale2 = beta[i] * (k + 1.0) / (a * k)
            d = x - mu[i]
            v = (
                _lg_half(lgt, int(k - kappa0 + 0.5), a)
                - 0.5 * (math.log(nu * scale2) + _LOG_PI)
                - 0.5 * (nu + 1.0) * math.log1p(d * d / (nu * scale2))
            )
            lp[i] = v
            if v > mx:
                mx = v
        # Joint mass of (run length, x) up to the common factor exp(mx): underflow-safe.
        total = 0.0
        for i in range(m):
            w = prob[i] * math.exp(lp[i] - mx)
            total += w
            # Grow every hypothesis by x (Normal-Gamma conjugate update).
            k = kappa[i]
            d = x - mu[i]
            prob[i] = (1.0 - hazard) * w
            mu[i] = (k * mu[i] + x) / (k + 1.0)
            beta[i] = beta[i] + k * d * d / (2.0 * (k + 1.0))
            alpha[i] = alpha[i] + 0.5
            kappa[i] = k + 1.0
        cp_mass = hazard * total
        # Insert the new hypothesis (run length 0) in front. When full, first merge the
        # adjacent pair of run lengths >= cp_lag with the least mass into one (mass kept,
        # statistics of the heavier): the changepoint probability stays exact, and a diffuse
        # posterior over long runs keeps its total mass instead of losing it hypothesis by
        # hypothesis.
        if m == R:
            j = -1
            best = math.inf
            for i in range(m - 1):
                if kappa[i] - kappa0 >= cp_lag:
                    c = prob[i] + prob[i + 1]
                    if c < best:
                        best = c
                        j = i
            if j < 0:
                j = m - 2
            if prob[j + 1] > prob[j]:
                mu[j] = mu[j + 1]
                kappa[j] = kappa[j + 1]
                alpha[j] = alpha[j + 1]
                beta[j] = beta[j + 1]
            prob[j] += prob[j + 1]
            for i in range(j + 1, m - 1):
                prob[i] = prob[i + 1]
                mu[i] = mu[i + 1]
                kappa[i] = kappa[i + 1]
                alpha[i] = alpha[i + 1]
                beta[i] = beta[i + 1]
            m -= 1
        for i in range(m, 0, -1):
            prob[i] = prob[i - 1]
            mu[i] = mu[i - 1]
            kappa[i] = kappa[i - 1]
            alpha[i] = alpha[i - 1]
            beta[i] = beta[i - 1]
        m += 1
        prob[0] = cp_mass
        mu[0] = mu0
        kappa[0] = kappa0
        alpha[0] = alpha0
        beta[0] = beta0
        norm = 0.0
        for i in range(m):
            norm += prob[i]
        if not (norm > 0.0 and math.isfinite(norm)):
            # Cannot happen with a t predictive and a finite x, but a corrupted state must
            # not poison every later observation: restart.
            m = bocpd_reset(st, mu0, kappa0, alpha0, beta0)
            norm = 1.0
        inv = 1.0 / norm
        for i in range(m):
            prob[i] *= inv
    rl = 0.0
    cp = 0.0
    for i in range(m):
        r = kappa[i] - kappa0
        rl += prob[i] * r
        if r < cp_lag:
            cp += prob[i]
    return m, rl, cp


@njit(cache=True)
def _bocpd_run(
    st: np.ndarray,
    lgt: np.ndarray,
    m: int,
    xs: np.ndarray,
    hazard: float,
    mu0: float,
    kappa0: float,
    alpha0: float,
    beta0: float,
    cp_lag: int,
    run_length: np.ndarray,
    cp_prob: np.ndarray,
) -> int:
    for i in range(xs.shape[0]):
        m, rl, cp = bocpd_update(st, lgt, m, xs[i], hazard, mu0, kappa0, alpha0, beta0, cp_lag)
        run_length[i] = rl
        cp_prob[i] = cp
    return m


class Bocpd:
    """Online changepoint detector; `update(x)` per observation, `run(xs)` over an array.

    hazard            constant hazard H = 1 / expected run length, in (0, 1).
    max_run_length    R, run-length hypotheses kept (>= 2); time and memory per observation
                      are O(R).
    cp_lag            changepoint probability = posterior P(run length < cp_lag).
    mu0, kappa0, alpha0, beta0   Normal-Gamma prior (the defaults suit standardised input).
    """

    def __init__(
        self,
        *,
        hazard: float = 1.0 / 250.0,
        max_run_length: int = 48,
        cp_lag: int = 10,
        mu0: float = 0.0,
        kappa0: float = 1.0,
        alpha0: float = 1.0,
        beta0: float = 1.0,
    ) -> None:
        validate_bocpd(hazard, max_run_length, cp_lag, kappa0, alpha0, beta0)
        self.hazard = float(hazard)
        self.max_run_length = int(max_run_length)
        self.cp_lag = int(cp_lag)
        self.prior = (float(mu0), float(kappa0), float(alpha0), float(beta0))
        self._lgt = lgamma_table(self.prior[2])
        self._st = np.zeros((BOCPD_ROWS, self.max_run_length))
        self._m = bocpd_reset(self._st, *self.prior)

    def update(self, x: float) -> tuple[float, float]:
        """Returns (expected run length, changepoint probability) after observing `x`."""
        self._m, rl, cp = bocpd_update(
            self._st, self._lgt, self._m, float(x), self.hazard, *self.prior, self.cp_lag
        )
        return rl, cp

    def run(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = np.ascontiguousarray(xs, dtype=np.float64)
        rl = np.empty(xs.shape[0])
        cp = np.empty(xs.shape[0])
        self._m = _bocpd_run(
            self._st, self._lgt, self._m, xs, self.hazard, *self.prior, self.cp_lag, rl, cp
        )
        return rl, cp

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(run lengths, posterior probabilities) of the hypotheses kept."""
        st = self._st[:, : self._m]
        return st[2] - self.prior[1], st[0].copy()


def validate_bocpd(
    hazard: float, max_run_length: int, cp_lag: int, kappa0: float, alpha0: float, beta0: float
) -> None:
    if not (math.isfinite(hazard) and 0.0 < hazard < 1.0):
        raise ValueError(f"BOCPD hazard must be in (0, 1) (1/expected run length), got {hazard!r}")
    if not (isinstance(max_run_length, int) and max_run_length >= 2):
        raise ValueError(f"BOCPD max_run_length must be an int >= 2, got {max_run_length!r}")
    if not (isinstance(cp_lag, int) and 1 <= cp_lag < max_run_length):
        raise ValueError(
            f"BOCPD cp_lag must be an int in [1, max_run_length), got {cp_lag!r} "
            f"with max_run_length={max_run_length!r}"
        )
    for name, v in (("kappa0", kappa0), ("alpha0", alpha0), ("beta0", beta0)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"BOCPD prior {name} must be > 0, got {v!r}")


def bocpd_exact(
    xs: np.ndarray,
    *,
    hazard: float = 1.0 / 250.0,
    cp_lag: int = 10,
    mu0: float = 0.0,
    kappa0: float = 1.0,
    alpha0: float = 1.0,
    beta0: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The untruncated recursion (O(n) bins, O(n^2) time): the same kernel with R = n + 1."""
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    det = Bocpd(
        hazard=hazard, max_run_length=max(xs.shape[0] + 1, cp_lag + 1), cp_lag=cp_lag,
        mu0=mu0, kappa0=kappa0, alpha0=alpha0, beta0=beta0,
    )  # fmt: skip
    return det.run(xs)
