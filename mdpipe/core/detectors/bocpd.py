"""Bayesian online changepoint detection (Adams and MacKay 2007), Normal-Gamma model.

Unknown mean and precision (Normal-Gamma prior), Student-t predictive, constant hazard H.

Run-length truncation keeps memory and time per event bounded: at most `max_run_length` bins
(R). Bins 0..R-2 are exact run lengths; bin R-1 is the tail "run length >= R-1". When the tail
receives mass both from bin R-2 and from itself, it keeps the sufficient statistics of the
heavier contributor, so a long stable regime keeps ALL its statistics (the tail is that regime)
and a new regime that outgrows the old one takes the tail over. With R greater than the series
length the tail is never reached and the recursion is the exact one: `bocpd_exact` is the same
kernel with R = n + 1, which is what tests and the benchmark compare against.

State, float64[6, R]: rows prob, mu, kappa, alpha, beta, scratch; `m` = bins in use.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

BOCPD_ROWS = 6
_LOG_PI = math.log(math.pi)


def lgamma_table(max_run_length: int, alpha0: float) -> np.ndarray:
    """lgamma((nu+1)/2) - lgamma(nu/2) for bin r, where nu = 2 * (alpha0 + r/2).

    In an exact bin alpha depends only on r, so the two lgamma calls per bin and event become a
    table lookup; only the merged tail bin evaluates lgamma at run time.
    """
    r = np.arange(max_run_length, dtype=np.float64)
    a = alpha0 + 0.5 * r
    return np.array([math.lgamma(v + 0.5) - math.lgamma(v) for v in a], dtype=np.float64)


@njit(cache=True)
def bocpd_reset(st: np.ndarray, mu0: float, kappa0: float, alpha0: float, beta0: float) -> int:
    st[:, :] = 0.0
    st[0, 0] = 1.0
    st[1, 0] = mu0
    st[2, 0] = kappa0
    st[3, 0] = alpha0
    st[4, 0] = beta0
    return 1


@njit(cache=True)
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
    """Fold in `x`; returns (bins in use, expected run length, P(run length < cp_lag)).

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
    if not math.isfinite(x):
        rl = 0.0
        cp = 0.0
        for r in range(m):
            rl += prob[r] * (kappa[r] - kappa0)
            if r < cp_lag:
                cp += prob[r]
        return m, rl, cp
    tail = R - 1
    mx = -math.inf
    for r in range(m):
        nu = 2.0 * alpha[r]
        scale2 = beta[r] * (kappa[r] + 1.0) / (alpha[r] * kappa[r])
        # Only the merged tail's alpha is not alpha0 + r/2.
        lg = math.lgamma(alpha[r] + 0.5) - math.lgamma(alpha[r]) if r == tail else lgt[r]
        d = x - mu[r]
        v = (
            lg
            - 0.5 * (math.log(nu * scale2) + _LOG_PI)
            - 0.5 * (nu + 1.0) * math.log1p(d * d / (nu * scale2))
        )
        lp[r] = v
        if v > mx:
            mx = v
    # Joint mass of (run length, x) up to the common factor exp(mx): underflow-safe.
    total = 0.0
    for r in range(m):
        w = prob[r] * math.exp(lp[r] - mx)
        lp[r] = w
        total += w
    cp_mass = hazard * total
    full = m == R
    if full:
        # Tail bin: merge the grown tail with the grown bin R-2; keep the heavier one's stats.
        w_tail = lp[tail]
        w_prev = lp[tail - 1]
        src = tail if w_tail >= w_prev else tail - 1
        k_src = kappa[src]
        t_mu = (k_src * mu[src] + x) / (k_src + 1.0)
        t_beta = beta[src] + k_src * (x - mu[src]) ** 2 / (2.0 * (k_src + 1.0))
        t_alpha = alpha[src] + 0.5
        t_kappa = k_src + 1.0
        t_prob = (1.0 - hazard) * (w_tail + w_prev)
        top = tail - 1
        new_m = R
    else:
        top = m
        new_m = m + 1
    # Grow: bin r+1 <- bin r updated with x, from the top down so nothing is overwritten early.
    for r in range(top, 0, -1):
        k = kappa[r - 1]
        d = x - mu[r - 1]
        mu[r] = (k * mu[r - 1] + x) / (k + 1.0)
        beta[r] = beta[r - 1] + k * d * d / (2.0 * (k + 1.0))
        alpha[r] = alpha[r - 1] + 0.5
        kappa[r] = k + 1.0
        prob[r] = (1.0 - hazard) * lp[r - 1]
    if full:
        mu[tail] = t_mu
        beta[tail] = t_beta
        alpha[tail] = t_alpha
        kappa[tail] = t_kappa
        prob[tail] = t_prob
    prob[0] = cp_mass
    mu[0] = mu0
    kappa[0] = kappa0
    alpha[0] = alpha0
    beta[0] = beta0
    norm = 0.0
    for r in range(new_m):
        norm += prob[r]
    if not (norm > 0.0 and math.isfinite(norm)):
        # Every hypothesis assigns x zero density (cannot happen with a t predictive and a
        # finite x, but a corrupted state must not poison every later event): restart.
        new_m = bocpd_reset(st, mu0, kappa0, alpha0, beta0)
        norm = 1.0
    rl = 0.0
    cp = 0.0
    inv = 1.0 / norm
    for r in range(new_m):
        p = prob[r] * inv
        prob[r] = p
        rl += p * (kappa[r] - kappa0)
        if r < cp_lag:
            cp += p
    return new_m, rl, cp


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
    max_run_length    R, bins kept (>= 2); time and memory per observation are O(R).
    cp_lag            changepoint probability = posterior P(run length < cp_lag).
    mu0, kappa0, alpha0, beta0   Normal-Gamma prior (the defaults suit standardised input).
    """

    def __init__(
        self,
        *,
        hazard: float = 1.0 / 250.0,
        max_run_length: int = 32,
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
        self._lgt = lgamma_table(self.max_run_length, self.prior[2])
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

    def posterior(self) -> np.ndarray:
        """Current run-length posterior over the bins in use (the last one is the tail)."""
        return self._st[0, : self._m].copy()


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
