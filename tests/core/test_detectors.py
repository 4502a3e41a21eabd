"""Known-answer and property tests of the detector kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpipe.core.detectors import (
    SIGNAL_TYPES,
    Bocpd,
    Cusum,
    DetectorConfig,
    MicrostructureDetector,
    bocpd_exact,
    siegmund_arl,
    signal_id,
)
from mdpipe.core.detectors.quantile import rq_push, rq_quantile

# ---- CUSUM -------------------------------------------------------------------------------


def test_cusum_false_alarm_rate_on_stationary_noise_matches_siegmund() -> None:
    rng = np.random.default_rng(7)
    det = Cusum(threshold=3.0, allowance=1.0)
    alarms = det.run(rng.normal(size=400_000))
    rate = float(np.mean(alarms[5_000:] != 0))
    # Two one-sided CUSUMs, each renewing after an alarm: rate = 2 / ARL0(one side).
    theory = 2.0 / siegmund_arl(0.0, threshold=3.0, allowance=1.0)
    assert theory == pytest.approx(1.0 / 1036.3, rel=1e-3)
    assert rate == pytest.approx(theory, rel=0.2)


@pytest.mark.parametrize("shift", [2.0, 3.0])
def test_cusum_detects_step_change_within_theoretical_delay(shift: float) -> None:
    rng = np.random.default_rng(11)
    delays = []
    for _ in range(300):
        det = Cusum(threshold=3.0, allowance=1.0)
        det.run(rng.normal(size=1_000))  # in-control history for the standardiser
        det.restart()
        alarms = det.run(rng.normal(size=100) + shift)
        hits = np.flatnonzero(alarms != 0)
        assert hits.size, "the step change was never detected"
        assert alarms[hits[0]] == 1, "an upward step must raise an upward alarm"
        delays.append(hits[0] + 1)
    theory = siegmund_arl(shift, threshold=3.0, allowance=1.0)
    assert float(np.mean(delays)) == pytest.approx(theory, rel=0.15)


def test_cusum_downward_step_alarms_down() -> None:
    rng = np.random.default_rng(3)
    det = Cusum()
    det.run(rng.normal(size=2_000))
    det.restart()
    alarms = det.run(rng.normal(size=50) - 3.0)
    assert alarms[np.flatnonzero(alarms)[0]] == -1


def test_cusum_update_matches_run() -> None:
    x = np.random.default_rng(5).normal(size=500)
    a = Cusum().run(x)
    det = Cusum()
    b = np.array([det.update(v).alarm for v in x])
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.0}, {"allowance": -1.0}, {"halflife": 0.5}, {"min_count": 1}],
)
def test_cusum_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Cusum(**kwargs)  # type: ignore[arg-type]


# ---- BOCPD -------------------------------------------------------------------------------


def _reference_bocpd(x: np.ndarray, hazard: float, cp_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Adams-MacKay written out directly (full run-length posterior, log space, no tables)."""
    mu0, kappa0, alpha0, beta0 = 0.0, 1.0, 1.0, 1.0
    log_r = np.array([0.0])
    mu = np.array([mu0])
    kappa = np.array([kappa0])
    alpha = np.array([alpha0])
    beta = np.array([beta0])
    cps, rls = [], []
    for xt in x:
        nu = 2 * alpha
        scale2 = beta * (kappa + 1) / (alpha * kappa)
        lg = np.array([math.lgamma(a + 0.5) - math.lgamma(a) for a in alpha])
        logpred = (
            lg
            - 0.5 * np.log(nu * math.pi * scale2)
            - (nu + 1) / 2 * np.log1p((xt - mu) ** 2 / (nu * scale2))
        )
        joint = log_r + logpred
        growth = joint + math.log(1 - hazard)
        cp = np.logaddexp.reduce(joint) + math.log(hazard)
        log_r = np.concatenate([[cp], growth])
        log_r -= np.logaddexp.reduce(log_r)
        mu, kappa, alpha, beta = (
            np.concatenate([[mu0], (kappa * mu + xt) / (kappa + 1)]),
            np.concatenate([[kappa0], kappa + 1]),
            np.concatenate([[alpha0], alpha + 0.5]),
            np.concatenate([[beta0], beta + kappa * (xt - mu) ** 2 / (2 * (kappa + 1))]),
        )
        p = np.exp(log_r)
        cps.append(p[:cp_lag].sum())
        rls.append((p * np.arange(p.size)).sum())
    return np.array(rls), np.array(cps)


def _piecewise(seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    # Mean shifts of 3 to 3.5 sigma, the last one with the standard deviation doubling.
    segs = [(0.0, 1.0, 300), (3.0, 1.0, 250), (-0.5, 1.0, 250), (2.5, 2.0, 200)]
    x = np.concatenate([rng.normal(m, s, n) for m, s, n in segs])
    cps = list(np.cumsum([n for _, _, n in segs])[:-1])
    return x, cps


def test_bocpd_exact_kernel_matches_direct_recursion() -> None:
    x, _ = _piecewise(0)
    x = x[250:400]  # straddles a changepoint
    rl, cp = bocpd_exact(x, hazard=1 / 100, cp_lag=10)
    ref_rl, ref_cp = _reference_bocpd(x, 1 / 100, 10)
    np.testing.assert_allclose(cp, ref_cp, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rl, ref_rl, rtol=1e-10, atol=1e-9)


def _crossings(cp: np.ndarray, thr: float = 0.7, start: int = 50) -> list[int]:
    above = cp >= thr
    idx = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    return [int(i) for i in idx if i >= start]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truncated_bocpd_matches_exact_posterior(seed: int) -> None:
    x, _ = _piecewise(seed)
    rl_e, cp_e = bocpd_exact(x, cp_lag=10)
    rl_t, cp_t = Bocpd(cp_lag=10).run(x)
    err = np.abs(cp_t - cp_e)
    assert err.max() < 0.1
    assert err.mean() < 0.005
    # Until the first hypothesis is dropped the truncated recursion IS the exact one.
    np.testing.assert_array_equal(cp_t[:47], cp_e[:47])
    np.testing.assert_array_equal(rl_t[:47], rl_e[:47])
    assert _crossings(cp_t) == _crossings(cp_e)


def _detections(cp: np.ndarray, merge: int = 10) -> list[int]:
    """Upward crossings of 0.7, a crossing within `merge` observations of the previous one
    being the same detection (the ensemble's cooldown does this in production)."""
    out: list[int] = []
    for i in _crossings(cp):
        if not out or i - out[-1] > merge:
            out.append(i)
    return out


def test_bocpd_finds_piecewise_gaussian_changepoints() -> None:
    false_alarms = 0
    for seed in range(10):
        x, truth = _piecewise(seed)
        _, cp = Bocpd(cp_lag=10).run(x)
        found = _detections(cp)
        for t in truth:
            assert any(0 <= f - t <= 15 for f in found), (seed, found, truth)
        false_alarms += sum(not any(0 <= f - t <= 15 for t in truth) for f in found)
    # ~2,000 in-control observations per series at hazard 1/250: a few false alarms in total.
    assert false_alarms <= 5


def test_bocpd_memory_is_bounded() -> None:
    det = Bocpd(max_run_length=16)
    det.run(np.random.default_rng(0).normal(size=5_000))
    r, post = det.posterior()
    assert post.shape == (16,)
    assert post.sum() == pytest.approx(1.0)
    assert r.max() > 1_000  # the long regime is kept, with its own run length


def test_bocpd_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="hazard"):
        Bocpd(hazard=1.5)
    with pytest.raises(ValueError, match="max_run_length"):
        Bocpd(max_run_length=1)
    with pytest.raises(ValueError, match="cp_lag"):
        Bocpd(max_run_length=8, cp_lag=8)


# ---- rolling quantile ----------------------------------------------------------------------


def test_rolling_quantile_is_exact() -> None:
    rng = np.random.default_rng(2)
    w, q = 37, 0.9
    state = np.zeros((2, w))
    n, head = 0, 0
    xs = np.round(rng.normal(size=400), 1)  # ties on purpose
    for i, x in enumerate(xs):
        if n:
            window = np.sort(xs[max(0, i - w) : i])
            assert rq_quantile(state, n, q) == window[int(q * (window.size - 1))]
        n, head = rq_push(state, n, head, float(x))


# ---- ensemble ---------------------------------------------------------------------------


def _rows(n: int, seed: int, step_ms: int = 100) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "ts_ns": i * step_ms * 1_000_000,
                "update_id": 1000 + i,
                "imbalance_5": float(rng.normal() + (2.5 if i > n // 2 else 0.0)),
                "wmid_change_bps": float(rng.normal()),
                "spread_compression": float(1 + 0.1 * rng.normal()),
                "trade_imbalance_5s": float(rng.normal()),
                "volume_z_1s": float(rng.normal()),
                "volume_z_5s": float(rng.standard_t(3)),
                "volume_z_30s": float(rng.normal()),
                "realized_vol_z": float(rng.normal()),
                "bocpd_cp_prob": float(rng.uniform() ** 8),
                "wmid_drift_5s_bps": float(rng.normal()),
                "trade_imbalance_1s": float(rng.normal()),
                "trade_imbalance_30s": float(rng.normal()),
            }
        )
    return rows


def test_detector_emits_each_type_and_counts_them() -> None:
    det = MicrostructureDetector(dynamic_threshold_window=50, cooldown_seconds=5.0)
    got: list = []
    for r in _rows(6_000, 1):
        got.extend(det.process_all(r))
    types = {s.signal_type for s in got}
    assert types == set(SIGNAL_TYPES)
    stats = det.get_stats()
    for t in SIGNAL_TYPES:
        assert stats["detections"][t] == sum(s.signal_type == t for s in got)
        assert stats["alarms"][t] >= stats["detections"][t]
    s = got[0]
    assert s.signal_id == signal_id("", "", s.signal_type, s.update_id)
    assert s.direction in (-1, 1)


def test_no_signal_during_warmup_or_before_the_window_fills() -> None:
    det = MicrostructureDetector(dynamic_threshold_window=100)
    rows = _rows(300, 2)
    for i, r in enumerate(rows):
        r["is_warmup"] = i < 200
        sigs = det.process_all(r)
        if i < 200:
            assert sigs == []


def test_signal_ids_are_deterministic_and_distinct() -> None:
    a = signal_id("binance", "BTC/USDT", "drift", 42)
    assert a == signal_id("binance", "BTC/USDT", "drift", 42)
    assert a != signal_id("binance", "BTC/USDT", "burst", 42)
    assert a != signal_id("binance", "ETH/USDT", "drift", 42)
    assert a != signal_id("binance", "BTC/USDT", "drift", 43)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drift_threshold": -1.0}, "drift_threshold"),
        ({"burst_threshold": 0.0}, "burst_threshold"),
        ({"regime_threshold": 1.5}, "regime_threshold"),
        ({"cooldown_seconds": -5.0}, "cooldown_seconds"),
        ({"dynamic_threshold_window": 1}, "dynamic_threshold_window"),
        ({"dynamic_threshold_window": 50.5}, "dynamic_threshold_window"),
    ],
)
def test_detector_rejects_bad_parameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MicrostructureDetector(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_documented_ones() -> None:
    c = DetectorConfig()
    assert (c.drift_threshold, c.burst_threshold, c.regime_threshold) == (3.0, 2.5, 0.7)
    assert (c.cooldown_seconds, c.dynamic_threshold_window) == (30.0, 500)


@settings(max_examples=40, deadline=None)
@given(
    cooldown=st.floats(min_value=0.0, max_value=5.0),
    gaps_ms=st.lists(st.integers(min_value=0, max_value=400), min_size=50, max_size=400),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_cooldown_never_lets_two_signals_of_one_type_closer(
    cooldown: float, gaps_ms: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    det = MicrostructureDetector(
        cooldown_seconds=cooldown, dynamic_threshold_window=10, burst_threshold=0.5,
        regime_threshold=0.3, drift_threshold=1.0,
    )  # fmt: skip
    ts = np.cumsum(gaps_ms) * 1_000_000
    last: dict[str, int] = {}
    cooldown_ns = round(cooldown * 1e9)
    for i, t in enumerate(ts):
        row = {
            "ts_ns": int(t),
            "update_id": i,
            "imbalance_5": float(rng.normal() * 3),
            "volume_z_5s": float(rng.normal() * 2),
            "bocpd_cp_prob": float(rng.uniform()),
            "trade_imbalance_5s": float(rng.normal()),
        }
        for s in det.process_all(row):
            if s.signal_type in last:
                assert s.ts_ns - last[s.signal_type] >= cooldown_ns
            last[s.signal_type] = s.ts_ns
