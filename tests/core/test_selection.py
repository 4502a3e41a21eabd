"""PSR, DSR and PBO against independent computations and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mdpipe.core.selection import deflated_sharpe, expected_max_sharpe, pbo_cscv, psr


def _psr_plain(r: np.ndarray, sr_star: float) -> float:
    """Bailey and López de Prado (2014), written out with scipy.stats."""
    sr = r.mean() / r.std(ddof=1)
    g3 = stats.skew(r, bias=True)
    g4 = stats.kurtosis(r, fisher=False, bias=True)
    z = (sr - sr_star) * math.sqrt(len(r) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    return float(stats.norm.cdf(z))


def _series() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "normal": rng.normal(0.001, 0.01, 500),
        "skewed": rng.lognormal(0.0, 0.8, 400) - 1.2,  # right-skewed
        "left_skewed": -(rng.lognormal(0.0, 0.8, 400) - 1.5),
        "fat_tailed": 0.0005 + 0.01 * rng.standard_t(3, 800),
        "hand_made": np.array([0.01, -0.02, 0.03, 0.0, 0.015, -0.005, 0.02, -0.01, 0.04, 0.005]),
    }


@pytest.mark.parametrize("name", list(_series()))
@pytest.mark.parametrize("sr_star", [0.0, 0.05, -0.02])
def test_psr_equals_independent_computation(name: str, sr_star: float) -> None:
    r = _series()[name]
    assert psr(r, sr_star) == pytest.approx(_psr_plain(r, sr_star), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", list(_series()))
def test_dsr_equals_independent_computation(name: str) -> None:
    r = _series()[name]
    trials = np.random.default_rng(3).normal(0.0, 0.05, 40)
    n = trials.size
    v = trials.var(ddof=1)
    g = 0.5772156649015329
    sr0 = math.sqrt(v) * (
        (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    d = deflated_sharpe(r, trials)
    assert d.sr0 == pytest.approx(sr0, rel=1e-12)
    assert d.dsr == pytest.approx(_psr_plain(r, sr0), rel=1e-10, abs=1e-12)
    assert d.psr0 == pytest.approx(_psr_plain(r, 0.0), rel=1e-10, abs=1e-12)
    assert d.skew == pytest.approx(stats.skew(r, bias=True))
    assert d.kurtosis == pytest.approx(stats.kurtosis(r, fisher=False, bias=True))


def test_more_trials_deflate_more() -> None:
    assert expected_max_sharpe(1, 0.01) == 0.0
    assert 0 < expected_max_sharpe(10, 0.01) < expected_max_sharpe(1000, 0.01)


def test_skew_and_kurtosis_move_psr_the_documented_way() -> None:
    # same Sharpe, negative skew and fat tails make a positive Sharpe less certain
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 2000)
    base = (base - base.mean()) / base.std(ddof=1) * 0.01 + 0.002
    left = -(rng.lognormal(0, 1, 2000))
    left = (left - left.mean()) / left.std(ddof=1) * 0.01 + 0.002
    assert psr(left) < psr(base)


def test_pbo_of_pure_noise_is_near_one_half() -> None:
    rng = np.random.default_rng(11)
    pbos = [pbo_cscv(rng.normal(0, 0.01, (400, 30)), n_blocks=10).pbo for _ in range(8)]
    assert 0.3 < float(np.mean(pbos)) < 0.7


def test_pbo_with_one_real_edge_is_near_zero() -> None:
    rng = np.random.default_rng(12)
    m = rng.normal(0, 0.01, (400, 30))
    m[:, 17] += 0.004  # Sharpe 0.4 per period against noise
    res = pbo_cscv(m, n_blocks=10)
    assert res.pbo < 0.05
    assert res.n_splits == 252
    assert np.all(np.isfinite(res.logits))
    assert res.prob_oos_loss < 0.05


def test_pbo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_blocks must be an even"):
        pbo_cscv(np.zeros((100, 3)), n_blocks=5)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        pbo_cscv(np.zeros((100, 1)))
    with pytest.raises(ValueError, match="finite"):
        pbo_cscv(np.full((100, 3), np.nan), n_blocks=4)
