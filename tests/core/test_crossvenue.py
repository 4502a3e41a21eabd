"""Cross-venue core: Hayashi-Yoshida against a slow reference, the known-answer lead on a real
recorded mid series, the basis z-score, settings validation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from mdpipe.core.crossvenue import (
    CrossVenueConfig,
    CrossVenueEngine,
    Pair,
    cross_venue_batch,
    hy_corr_lags,
    hy_corr_lags_many,
    lead_lag,
    market_mids,
    mid_changes,
)
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from tests.conftest import DATA

T0 = 1_723_161_600_000_000_000  # 2024-08-09 00:00 UTC


def slow_hy_corr(ta, xa, tb, xb, lag):  # type: ignore[no-untyped-def]
    """Hayashi-Yoshida as written: every pair of increments whose intervals overlap, b's
    intervals shifted back by the lag."""
    cov = 0.0
    for i in range(1, len(ta)):
        for j in range(1, len(tb)):
            s1, e1 = ta[i - 1], ta[i]
            s2, e2 = tb[j - 1] - lag, tb[j] - lag
            if s1 < e2 and s2 < e1:
                cov += (xa[i] - xa[i - 1]) * (xb[j] - xb[j - 1])
    va = sum((xa[i] - xa[i - 1]) ** 2 for i in range(1, len(xa)))
    vb = sum((xb[j] - xb[j - 1]) ** 2 for j in range(1, len(xb)))
    return cov / math.sqrt(va * vb)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hy_corr_equals_the_slow_reference_at_several_lags(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # coarse clocks make ties between the two series' times (the open/closed interval rule)
    ta = np.cumsum(rng.integers(1, 6, 150)).astype(np.int64) * 10
    tb = np.cumsum(rng.integers(1, 6, 170)).astype(np.int64) * 10
    xa = np.cumsum(rng.normal(size=150))
    xb = np.cumsum(rng.normal(size=170))
    lags = np.array([-70, -30, -10, 0, 10, 20, 50, 400], dtype=np.int64)
    fast = hy_corr_lags(ta, xa, tb, xb, lags)
    for k, lag in enumerate(lags):
        assert fast[k] == pytest.approx(slow_hy_corr(ta, xa, tb, xb, int(lag)), abs=1e-12)


def test_many_b_series_on_one_walk_equal_one_walk_each_bit_for_bit() -> None:
    """The null's draws share b's clock and go through one pointer walk per lag; each
    column must be exactly what `hy_corr_lags` gives it alone (same sums, same order)."""
    rng = np.random.default_rng(3)
    ta = np.cumsum(rng.integers(1, 6, 400)).astype(np.int64) * 10
    tb = np.cumsum(rng.integers(1, 6, 380)).astype(np.int64) * 10
    xa = np.cumsum(rng.normal(size=400))
    xbs = np.cumsum(rng.normal(size=(380, 5)), axis=0)
    xbs[:, 4] = 1.0  # a b that never moves: NaN, as alone
    lags = np.arange(-200, 210, 10, dtype=np.int64)
    many = hy_corr_lags_many(ta, xa, tb, xbs, lags)
    for s in range(5):
        alone = hy_corr_lags(ta, xa, tb, np.ascontiguousarray(xbs[:, s]), lags)
        assert np.array_equal(many[s], alone, equal_nan=True), s
    assert np.isnan(many[4]).all()


@pytest.fixture(scope="module")
def real_mids(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """A real recorded mid series: BTC/USDT top of book (bookTicker) of 2024-08-08, its
    mid changes on the receive clock."""
    lake = Lake(tmp_path_factory.mktemp("lake"))
    assert import_paths([DATA / "btcusdt_20240808.gz"], lake).ok
    bbo = lake.read("bbo", "binance", "BTC/USDT", "2024-08-08").sort("recv_ts_ns")
    ts = bbo["recv_ts_ns"].to_numpy().astype(np.int64)
    mid = ((bbo["bid"] + bbo["ask"]) / 2).to_numpy()
    ts, x = mid_changes(ts, mid)
    assert ts.shape[0] > 2000
    return ts, np.exp(x)


def test_a_follower_copying_a_real_series_200ms_late_is_found_200ms_behind(
    real_mids: tuple[np.ndarray, np.ndarray],
) -> None:
    ts, mid = real_mids
    rng = np.random.default_rng(7)
    step = np.std(np.diff(np.log(mid)))
    # the follower sees each change 200 ms later, on its own jittered clock, with noise
    f_ts = ts + 200_000_000 + rng.integers(0, 10_000_000, ts.shape[0])
    f_mid = mid * np.exp(rng.normal(0, 0.3 * step, ts.shape[0]))
    cfg = CrossVenueConfig(null_shuffles=20)
    ll = lead_lag(ts, mid, f_ts, f_mid, cfg)
    assert abs(ll.max_lag_ns - 200_000_000) <= 50_000_000
    assert ll.leader == 0
    assert ll.ratio > 1.0  # Huth-Abergel: a leads
    assert ll.p_value <= cfg.significance
    assert ll.max_corr > ll.null_hi[np.searchsorted(ll.lags_ns, ll.max_lag_ns)]


def test_a_shuffled_copy_shows_no_significant_lead(
    real_mids: tuple[np.ndarray, np.ndarray],
) -> None:
    ts, mid = real_mids
    rng = np.random.default_rng(11)
    x = np.log(mid)
    shuffled = np.exp(x[0] + np.concatenate([[0.0], np.cumsum(rng.permutation(np.diff(x)))]))
    cfg = CrossVenueConfig(null_shuffles=20)
    ll = lead_lag(ts, mid, ts + 200_000_000, shuffled, cfg)
    # the peak is no larger than the largest |corr| of enough shuffled-time draws
    assert ll.p_value > cfg.significance


def _features(ts: np.ndarray, mid: np.ndarray, spread: float = 0.02) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts_ns": ts,
            "update_id": np.arange(ts.shape[0]),
            "mid": mid,
            "best_bid": mid - spread / 2,
            "best_ask": mid + spread / 2,
            "spread_bps": spread / mid * 1e4,
        }
    )


def test_basis_z_is_the_z_of_the_previous_window_and_signals_follow_the_leader() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    ta = T0 + np.cumsum(rng.integers(20, 120, n)) * 1_000_000
    tb = T0 + np.cumsum(rng.integers(20, 120, n)) * 1_000_000
    ma = 100 * np.exp(np.cumsum(rng.normal(0, 2e-5, n)))
    mb = np.interp(tb, ta, ma) * np.exp(rng.normal(0, 2e-5, n))
    mb[n // 2 :] *= 1.002  # a 20 bps dislocation half way
    cfg = CrossVenueConfig(z_window=200, z_min_count=50, z_threshold=4.0)
    pair = Pair("X", "va", "X/USDT", "vb", "X/USDT:USDT")
    out = cross_venue_batch(pair, market_mids(_features(ta, ma)), market_mids(_features(tb, mb)),
                            cfg, settings_id="s", leader=0)  # fmt: skip
    b = out.basis["basis_bps"].to_numpy()
    z = out.basis["basis_z"].to_numpy()
    for k in (60, 500, 1500, len(b) - 1):
        prev = b[max(0, k - cfg.z_window) : k]
        want = (b[k] - prev.mean()) / prev.std(ddof=1)
        assert z[k] == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert math.isnan(z[10])
    s = out.signals.filter(pl.col("trigger") == "basis_z")
    assert s.height >= 1
    # b jumped rich: the follower b is expected to come back down
    assert set(s["venue"]) == {"vb"} and set(s["direction"]) == {-1}
    assert s["ts_ns"].min() >= int(tb[n // 2])  # type: ignore[operator]


def test_online_engine_releases_the_batch_order_whatever_the_interleaving() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    ta = T0 + np.cumsum(rng.integers(1, 80, n)) * 1_000_000
    tb = ta + 150_000_000 + rng.integers(0, 5_000_000, n)
    tb = np.maximum.accumulate(tb)
    ma = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    mb = ma * 1.0001
    cfg = CrossVenueConfig(z_window=100, z_min_count=20, z_threshold=2.5, k_spreads=1.0)
    pair = Pair("X", "va", "X/USDT", "vb", "X/USDT:USDT")
    fa, fb = _features(ta, ma), _features(tb, mb)
    batch = cross_venue_batch(pair, market_mids(fa), market_mids(fb), cfg, settings_id="s",
                              leader=0, lead_window_ns=200_000_000)  # fmt: skip
    assert batch.signals.height > 3
    # receive clocks: b's messages arrive 0.5 s after a's of the same exchange time
    rows = [(int(r[0]) + 1_000, 0, r) for r in fa.iter_rows()]
    rows += [(int(r[0]) + 500_000_000, 1, r) for r in fb.iter_rows()]
    rows.sort(key=lambda x: x[0])
    eng = CrossVenueEngine(pair, cfg, settings_id="s", leader=0, lead_window_ns=200_000_000)
    got = []
    for recv, side, r in rows:
        o = eng.on_row(side, r[0], recv, r[2], r[3], r[4], r[5], r[1])
        if o is not None:
            got.append(o)
    o = eng.flush()
    if o is not None:
        got.append(o)
    assert eng.timeouts == 0
    live = pl.concat(got)
    assert set(live["source"]) == {"live"}  # the one column that names the driver
    assert live.drop("source").equals(batch.signals.drop("source"))


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"grid_ms": 0}, "cross_venue.grid_ms must be an int >= 1, got 0"),
        ({"z_min_count": 500, "z_window": 100}, "z_min_count (500) must be <= z_window (100)"),
        ({"lag_min_ms": 10.0}, "lag_min_ms must be < 0 < lag_max_ms, got 10.0 and 2000.0"),
        ({"k_spreads": -1.0}, "cross_venue.k_spreads must be a finite number > 0, got -1.0"),
    ],
)
def test_bad_settings_are_refused_with_the_field_and_the_range(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        CrossVenueConfig(**kw)


def test_cross_venue_settings_change_the_cross_signal_id_only() -> None:
    from mdpipe.settings import load_settings

    base = load_settings(environ={})
    other = load_settings(sets=["cross_venue.z_threshold=3"], environ={})
    assert other.cross_venue.z_threshold == 3.0
    assert other.settings_id == base.settings_id
    assert other.cross_venue_settings_id != base.cross_venue_settings_id
