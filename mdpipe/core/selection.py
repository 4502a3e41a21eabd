"""Selection statistics: how much of a best-of-many backtest is luck.

Trying many settings and keeping the best one inflates its Sharpe ratio. Two corrections from
the literature, both pure numpy / scipy over return series and performance matrices:

- **Probabilistic and Deflated Sharpe Ratio** (Bailey and López de Prado, "The Deflated Sharpe
  Ratio: Correcting for Selection Bias, Backtest Overfitting and Non-Normality", Journal of
  Portfolio Management 40(5), 2014). `psr(returns, sr_benchmark)` is the probability that the
  true (per-period, not annualised) Sharpe ratio exceeds `sr_benchmark`, given the sample
  Sharpe, the number of returns, and their skewness and kurtosis:

      PSR(SR*) = Phi( (SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2) )

  with g3 the skewness and g4 the (non-excess) kurtosis of the returns. The DSR is the PSR
  against the Sharpe ratio expected from the best of N unskilled trials:

      SR0 = sqrt(V[SR_n]) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))

  (gamma the Euler-Mascheroni constant, V[SR_n] the variance of the trials' Sharpe ratios).

- **Probability of Backtest Overfitting** by combinatorially symmetric cross-validation
  (Bailey, Borwein, López de Prado and Zhu, "The Probability of Backtest Overfitting", Journal
  of Computational Finance 20(4), 2017). The T x N matrix of per-period returns of N candidates
  is cut into S contiguous blocks; for every way of choosing S/2 blocks as in-sample (IS) the
  best IS candidate's out-of-sample (OOS) relative rank w gives a logit l = log(w / (1 - w));
  PBO is the share of splits with l <= 0 (the IS winner is below the OOS median). The slope of
  the winner's OOS performance on its IS performance measures the degradation.

Conventions (stated because the published formulas leave them open): Sharpe ratios here are
mean / standard deviation (ddof=1) per period; skewness and kurtosis are the biased moment
estimators (scipy.stats `skew(bias=True)`, `kurtosis(fisher=False, bias=True)`); a constant
series has Sharpe 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

F64Array = npt.NDArray[np.float64]
EULER_GAMMA = 0.5772156649015329


def sharpe(returns: npt.ArrayLike) -> float:
    """Per-period Sharpe ratio: mean / std (ddof=1); 0 for a constant series, NaN for < 2."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    if not sd > 0:
        return 0.0
    return float(np.mean(r)) / sd


def moments(returns: npt.ArrayLike) -> tuple[float, float]:
    """(skewness, non-excess kurtosis) by the biased moment estimators; (0, 3) if constant."""
    r = np.asarray(returns, dtype=np.float64)
    d = r - r.mean()
    m2 = float(np.mean(d**2))
    if not m2 > 0:
        return 0.0, 3.0
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2


def psr(returns: npt.ArrayLike, sr_benchmark: float = 0.0) -> float:
    """Probabilistic Sharpe Ratio (Bailey and López de Prado 2014, eq. in the module docstring):
    P(true per-period Sharpe > `sr_benchmark`). NaN with fewer than 3 returns."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 3:
        return math.nan
    sr = sharpe(r)
    g3, g4 = moments(r)
    var = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    if not var > 0:
        return math.nan
    return float(norm.cdf((sr - sr_benchmark) * math.sqrt(r.size - 1) / math.sqrt(var)))


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """SR0: the Sharpe ratio the best of `n_trials` unskilled trials is expected to reach, given
    the variance of their Sharpe ratios (Bailey and López de Prado 2014)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1 or not sharpe_variance > 0:
        return 0.0
    n = float(n_trials)
    z = (1.0 - EULER_GAMMA) * norm.ppf(1.0 - 1.0 / n) + EULER_GAMMA * norm.ppf(
        1.0 - 1.0 / (n * math.e)
    )
    return float(math.sqrt(sharpe_variance) * z)


@dataclass(frozen=True)
class DeflatedSharpe:
    sharpe: float  # per period
    n_obs: int
    skew: float
    kurtosis: float
    n_trials: int
    sharpe_variance: float  # of the trials' per-period Sharpe ratios
    sr0: float  # expected maximum Sharpe under no skill
    psr0: float  # PSR against 0
    dsr: float  # PSR against sr0

    @property
    def significant(self) -> bool:
        """DSR above 0.95 (a one-sided 5 % test)."""
        return bool(self.dsr > 0.95)


def deflated_sharpe(
    returns: npt.ArrayLike, trial_sharpes: npt.ArrayLike, *, n_trials: int | None = None
) -> DeflatedSharpe:
    """Deflated Sharpe Ratio of the selected candidate's `returns` given the per-period Sharpe
    ratios of every trial (Bailey and López de Prado 2014). `n_trials` defaults to the number
    of finite trial Sharpes (the paper's N; pass a smaller effective N when trials are
    clustered)."""
    r = np.asarray(returns, dtype=np.float64)
    srs = np.asarray(trial_sharpes, dtype=np.float64)
    srs = srs[np.isfinite(srs)]
    n = int(n_trials if n_trials is not None else max(srs.size, 1))
    v = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
    sr0 = expected_max_sharpe(n, v)
    g3, g4 = moments(r) if r.size else (math.nan, math.nan)
    return DeflatedSharpe(
        sharpe=sharpe(r),
        n_obs=int(r.size),
        skew=g3,
        kurtosis=g4,
        n_trials=n,
        sharpe_variance=v,
        sr0=sr0,
        psr0=psr(r, 0.0),
        dsr=psr(r, sr0),
    )


# ---------------------------------------------------------------- PBO by CSCV


@dataclass(frozen=True)
class PBOResult:
    pbo: float
    logits: F64Array  # one per split
    is_best: F64Array  # IS performance of the IS winner, per split
    oos_of_best: F64Array  # its OOS performance, per split
    slope: float  # OOS on IS regression slope of the winner (degradation)
    intercept: float
    prob_oos_loss: float  # share of splits where the winner's OOS performance is < 0
    n_splits: int
    n_blocks: int


def _block_sharpes(sums: F64Array, sq: F64Array, counts: F64Array) -> F64Array:
    """Sharpe (ddof=1) of each column from its sum, sum of squares and count."""
    mean = sums / counts
    var = (sq - counts * mean**2) / np.maximum(counts - 1.0, 1.0)
    sd = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > 1e-15 * np.maximum(np.abs(mean), 1e-300), mean / sd, 0.0)
    return np.asarray(out, dtype=np.float64)


def _relative_rank(values: F64Array, idx: npt.NDArray[np.int64]) -> F64Array:
    """Per row, the rank of `values[row, idx[row]]` among the row (1 = lowest; ties take the
    average rank), divided by N + 1 so it lies in (0, 1)."""
    pick = values[np.arange(values.shape[0]), idx][:, None]
    less = np.sum(values < pick, axis=1)
    equal = np.sum(values == pick, axis=1)
    rank = less + (equal + 1) / 2.0
    return np.asarray(rank / (values.shape[1] + 1.0), dtype=np.float64)


def pbo_cscv(
    returns: npt.ArrayLike, *, n_blocks: int = 16, max_splits: int | None = None, seed: int = 0
) -> PBOResult:
    """Probability of Backtest Overfitting of a T x N matrix of per-period returns (rows in
    time order, one column per candidate) by combinatorially symmetric cross-validation
    (Bailey, Borwein, López de Prado and Zhu 2017). Performance is the per-period Sharpe ratio.
    `n_blocks` (even) contiguous blocks; all C(S, S/2) splits, or `max_splits` of them drawn
    with `seed` when given. The IS winner's ties go to the lowest column index."""
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"returns must be a T x N matrix, got shape {m.shape}")
    t, n = m.shape
    if n < 2:
        raise ValueError(f"PBO needs at least 2 candidates, got {n}")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even number >= 2, got {n_blocks}")
    if t < 2 * n_blocks:
        raise ValueError(f"PBO needs at least 2 rows per block: {t} rows for {n_blocks} blocks")
    if not np.all(np.isfinite(m)):
        raise ValueError("returns must be finite (fill periods without trades with 0)")
    bounds = np.linspace(0, t, n_blocks + 1).round().astype(np.int64)
    bsum = np.add.reduceat(m, bounds[:-1], axis=0)
    bsq = np.add.reduceat(m * m, bounds[:-1], axis=0)
    bcnt = np.diff(bounds).astype(np.float64)
    combos = list(itertools.combinations(range(n_blocks), n_blocks // 2))
    if max_splits is not None and len(combos) > max_splits:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(combos), size=max_splits, replace=False))
        combos = [combos[i] for i in keep]
    mask = np.zeros((len(combos), n_blocks))
    for i, c in enumerate(combos):
        mask[i, list(c)] = 1.0
    comp = 1.0 - mask
    is_perf = _block_sharpes(mask @ bsum, mask @ bsq, (mask @ bcnt)[:, None])
    oos_perf = _block_sharpes(comp @ bsum, comp @ bsq, (comp @ bcnt)[:, None])
    best = np.argmax(is_perf, axis=1).astype(np.int64)
    w = _relative_rank(oos_perf, best)
    logits = np.log(w / (1.0 - w))
    rows = np.arange(len(combos))
    x, y = is_perf[rows, best], oos_perf[rows, best]
    if np.ptp(x) > 0:
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    else:
        slope, intercept = math.nan, float(np.mean(y))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        is_best=x,
        oos_of_best=y,
        slope=slope,
        intercept=intercept,
        prob_oos_loss=float(np.mean(y < 0.0)),
        n_splits=len(combos),
        n_blocks=n_blocks,
    )


__all__ = [
    "DeflatedSharpe",
    "PBOResult",
    "deflated_sharpe",
    "expected_max_sharpe",
    "moments",
    "pbo_cscv",
    "psr",
    "sharpe",
]
