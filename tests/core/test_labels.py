"""Triple-barrier labels: known answers on hand-made paths, and properties on random ones."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdpipe.core.config import BacktestConfig
from mdpipe.core.labels import (
    LABEL_SCHEMA,
    PricePath,
    TradePath,
    grid_times,
    label_grid,
    make_labels,
    triple_barrier,
)

S = 1_000_000_000
HALF = 0.05  # half spread of the hand-made books


def book(times_s: list[float], mids: list[float], *, end_s: float | None = None) -> PricePath:
    mid = np.asarray(mids, dtype=np.float64)
    ts = np.round(np.asarray(times_s) * S).astype(np.int64)
    return PricePath.from_arrays(
        ts, mid - HALF, mid + HALF, mid, end_ns=None if end_s is None else round(end_s * S)
    )


def cfg(**kw: float | str | int) -> BacktestConfig:
    base: dict[str, float | str | int] = {
        "profit_target_pct": 0.01,
        "stop_loss_pct": 0.01,
        "max_holding_seconds": 10.0,
        "fee_rate": 0.0,
        "slippage_bps": 0.0,
    }
    base.update(kw)
    return BacktestConfig(**base)  # type: ignore[arg-type]


def one(path: PricePath, t_s: float, side: int, config: BacktestConfig, **kw: object) -> dict:
    cols = triple_barrier(path, [round(t_s * S)], [side], config, **kw)  # type: ignore[arg-type]
    return {k: v[0] for k, v in cols.items()}


def test_profit_barrier_long() -> None:
    p = book([0, 1, 2, 3, 4], [100, 100, 100.5, 101.2, 99])
    r = one(p, 0.0, +1, cfg())
    assert r["barrier"] == 1 and r["label"] == 1 and not r["censored"]
    assert r["entry_ts_ns"] == 1 * S  # first event strictly after the signal at t=0
    assert r["t_end_ns"] == 3 * S and r["exit_ts_ns"] == 3 * S
    # long buys the ask at entry, sells the bid at exit
    assert r["entry_price"] == pytest.approx(100 + HALF)
    assert r["exit_price"] == pytest.approx(101.2 - HALF)
    assert r["ret"] == pytest.approx((101.2 - HALF) / (100 + HALF) - 1)
    assert r["gross_ret"] == pytest.approx(0.012)


def test_stop_barrier_short() -> None:
    p = book([0, 1, 2, 3], [100, 100, 100.4, 101.5])
    r = one(p, 0.5, -1, cfg())
    assert r["barrier"] == 2 and r["label"] == -1
    assert r["t_end_ns"] == 3 * S
    # short sells the bid at entry and buys back the ask at exit
    assert r["entry_price"] == pytest.approx(100 - HALF)
    assert r["exit_price"] == pytest.approx(101.5 + HALF)
    assert r["ret"] == pytest.approx(-((101.5 + HALF) - (100 - HALF)) / (100 - HALF))


def test_time_barrier_exits_at_book_state_of_deadline() -> None:
    p = book([0, 1, 5, 10.5, 11.5, 30], [100, 100, 100.3, 100.6, 100.2, 100], end_s=30)
    r = one(p, 0.0, +1, cfg())
    assert r["barrier"] == 0 and r["label"] == 0 and not r["censored"]
    assert r["t_end_ns"] == 11 * S  # entry at 1 s + 10 s holding
    assert r["exit_ts_ns"] == round(10.5 * S)  # last event at or before the deadline
    assert r["exit_mid"] == pytest.approx(100.6)


def test_both_barriers_in_one_event_counts_as_stop() -> None:
    # two rows with the same timestamp: mid goes through the profit and the stop barrier
    p = book([0, 1, 2, 2, 3], [100, 100, 101.5, 98.5, 100])
    r = one(p, 0.0, +1, cfg())
    assert r["barrier"] == 2 and r["label"] == -1
    assert r["t_end_ns"] == 2 * S
    assert r["exit_mid"] == pytest.approx(98.5)  # book state after the whole event


def test_censored_at_partition_end_and_resolved_by_next_partition() -> None:
    today = book([0, 1, 2, 3], [100, 100, 100.2, 100.1], end_s=4)
    r = one(today, 0.0, +1, cfg())
    assert r["censored"] and r["barrier"] == 0 and r["label"] == 0
    assert r["t_end_ns"] == 11 * S  # the deadline it would have needed
    tomorrow = book([5, 6, 7], [100.5, 101.3, 100], end_s=20)
    r2 = one(today.concat(tomorrow), 0.0, +1, cfg())
    assert not r2["censored"] and r2["barrier"] == 1 and r2["t_end_ns"] == 6 * S
    # a touch before the data end is a valid label even without the next partition
    r3 = one(book([0, 1, 2], [100, 100, 98]), 0.0, +1, cfg())
    assert not r3["censored"] and r3["barrier"] == 2


def test_no_book_event_after_signal_is_censored_without_entry() -> None:
    p = book([0, 1], [100, 100])
    r = one(p, 1.0, +1, cfg())  # signal at the last event: no event strictly after it
    assert r["censored"] and r["entry_idx"] == -1 and math.isnan(r["ret"])


def test_entry_is_never_the_signal_event_and_same_timestamp_rows_are_one_event() -> None:
    p = book([0, 1, 2, 2, 3], [100, 100, 100.1, 100.2, 100.3])
    r = one(p, 1.0, +1, cfg())  # signal exactly at an event's time
    assert r["entry_ts_ns"] == 2 * S
    assert r["entry_idx"] == 3  # last row of the timestamp-2 event
    assert r["entry_mid"] == pytest.approx(100.2)


def test_costs_fee_and_slippage_on_both_legs() -> None:
    p = book([0, 1, 2], [100, 100, 102])
    c = cfg(fee_rate=0.001, slippage_bps=5.0)
    r = one(p, 0.0, +1, c)
    entry = (100 + HALF) * (1 + 5e-4)
    exit_ = (102 - HALF) * (1 - 5e-4)
    assert r["entry_price"] == pytest.approx(entry)
    assert r["exit_price"] == pytest.approx(exit_)
    assert r["ret"] == pytest.approx((exit_ - entry) / entry - 0.001 * (entry + exit_) / entry)


def test_move_of_n_bps_lead_time() -> None:
    p = book([0, 1, 2, 3, 4], [100, 100, 100.05, 100.2, 101.5])
    r = one(p, 0.0, +1, cfg(move_bps=10.0))
    assert r["move_ts_ns"] == 3 * S  # 100.2 is the first +10 bps
    r2 = one(p, 0.0, -1, cfg(move_bps=10.0))
    assert r2["move_ts_ns"] == -1  # never moved 10 bps down before its barrier


def test_trade_price_barriers() -> None:
    p = book([0, 1, 2, 3, 4, 20], [100, 100, 100.1, 100.2, 100.3, 100.3])
    trades = TradePath.from_arrays(np.array([0.5, 1.0, 2.5, 3.5]) * S, [150.0, 150.0, 101.2, 100.0])
    r = one(p, 0.0, +1, cfg(barrier_price="trade"), trades=trades)
    # trades at or before entry (t=1) are ignored; the 101.2 print at 2.5 s touches profit
    assert r["barrier"] == 1 and r["t_end_ns"] == round(2.5 * S)
    assert r["exit_ts_ns"] == 2 * S  # book state at the touching trade
    with pytest.raises(ValueError, match="TradePath"):
        one(p, 0.0, +1, cfg(barrier_price="trade"))


def test_grid_is_epoch_aligned_and_labels_both_directions() -> None:
    assert grid_times(S + 1, 5 * S, 2 * S).tolist() == [2 * S, 4 * S]
    p = book([0, 1, 2, 3, 4], [100, 100, 101.5, 100, 100], end_s=100)
    g = label_grid(p, cfg(grid_seconds=2.0), start_ns=0, end_ns=4 * S)
    assert g["ts_ns"].to_list() == [0, 0, 2 * S, 2 * S, 4 * S, 4 * S]
    assert g["direction"].to_list() == [1, -1] * 3
    assert g["barrier"].to_list()[:2] == ["profit", "stop"]
    assert g["signal_id"][0] == "grid:0:+1"


def test_make_labels_schema_and_reruns_identical() -> None:
    p = book([0, 1, 2, 3, 4], [100, 100, 101.5, 100, 100])
    sig = pl.DataFrame(
        {
            "ts_ns": [0, S],
            "signal_id": ["b", "a"],
            "signal_type": ["drift", "burst"],
            "direction": [1, -1],
            "score": [0.3, None],
        }
    )
    a = make_labels(sig, p, cfg(grid_seconds=2.0))
    b = make_labels(sig, p, cfg(grid_seconds=2.0))
    assert a.equals(b)
    assert a.schema == pl.Schema(LABEL_SCHEMA)
    assert a.filter(pl.col("kind") == "signal")["signal_id"].to_list() == ["b", "a"]


def test_rejects_bad_direction_and_unsorted_path() -> None:
    p = book([0, 1], [100, 100])
    with pytest.raises(ValueError, match="direction"):
        triple_barrier(p, [0], [0], cfg())
    with pytest.raises(ValueError, match="sorted"):
        PricePath(np.array([2, 1]), np.ones(2), np.ones(2), np.ones(2), 2)


# ---------------------------------------------------------------- properties


def reference(
    ts: np.ndarray, mid: np.ndarray, end_ns: int, t_sig: int, side: int, c: BacktestConfig
) -> tuple[int, int, bool]:
    """A plain-Python statement of the rules (barrier code, t_end, censored)."""
    after = np.flatnonzero(ts > t_sig)
    if after.size == 0:
        return 0, t_sig + c.max_holding_ns, True
    t0 = ts[after[0]]
    e = np.flatnonzero(ts == t0)[-1]
    deadline = t0 + c.max_holding_ns
    for t in np.unique(ts[(ts > t0) & (ts <= deadline)]):
        r = side * (mid[ts == t] / mid[e] - 1.0)
        if np.any(r <= -c.stop_loss_pct):
            return 2, int(t), False
        if np.any(r >= c.profit_target_pct):
            return 1, int(t), False
    return 0, int(deadline), deadline > end_ns


@st.composite
def paths_and_signal(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    n = draw(st.integers(2, 40))
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # 0: same timestamp
    ts = np.cumsum(np.asarray(steps, dtype=np.int64)) * S // 2
    # steps of 0.3 % against barriers of 1 % / 0.7 %: profit, stop and time all occur often
    moves = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    mid = 100.0 * np.cumprod(1 + 0.003 * np.asarray(moves, dtype=np.float64))
    t_sig = draw(st.integers(int(ts[0]) - S, int(ts[-1]) + S))
    side = draw(st.sampled_from([1, -1]))
    return ts, mid, t_sig, side


PROP = cfg(profit_target_pct=0.01, stop_loss_pct=0.007, max_holding_seconds=6.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths_and_signal())
def test_kernel_matches_reference_and_respects_the_window(
    case: tuple[np.ndarray, np.ndarray, int, int],
) -> None:
    ts, mid, t_sig, side = case
    p = PricePath.from_arrays(ts, mid - 0.01, mid + 0.01, mid)
    r = {k: v[0] for k, v in triple_barrier(p, [t_sig], [side], PROP).items()}
    code, t_end, cens = reference(ts, mid, p.end_ns, t_sig, side, PROP)
    assert (int(r["barrier"]), int(r["t_end_ns"]), bool(r["censored"])) == (code, t_end, cens)
    if r["entry_idx"] >= 0:
        assert r["entry_ts_ns"] > t_sig
        assert r["entry_ts_ns"] <= r["exit_ts_ns"] <= r["t_end_ns"]
        if r["move_ts_ns"] >= 0:
            assert r["entry_ts_ns"] < r["move_ts_ns"] <= r["t_end_ns"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths_and_signal(), st.integers(0, 2**31 - 1))
def test_prices_outside_entry_to_t_end_do_not_change_the_label(
    case: tuple[np.ndarray, np.ndarray, int, int], seed: int
) -> None:
    ts, mid, t_sig, side = case
    p = PricePath.from_arrays(ts, mid - 0.01, mid + 0.01, mid, end_ns=int(ts[-1]) + 100 * S)
    r = {k: v[0] for k, v in triple_barrier(p, [t_sig], [side], PROP).items()}
    if r["entry_idx"] < 0:
        return
    # scramble every price strictly before the entry event and strictly after t_end
    outside = (ts < r["entry_ts_ns"]) | (ts > r["t_end_ns"])
    rng = np.random.default_rng(seed)
    mid2 = mid.copy()
    mid2[outside] = mid[outside] * rng.uniform(0.8, 1.2, size=int(outside.sum()))
    p2 = PricePath.from_arrays(ts, mid2 - 0.01, mid2 + 0.01, mid2, end_ns=p.end_ns)
    r2 = {k: v[0] for k, v in triple_barrier(p2, [t_sig], [side], PROP).items()}
    for key in ("barrier", "t_end_ns", "entry_ts_ns", "exit_ts_ns", "censored", "move_ts_ns"):
        assert r2[key] == r[key], key
    assert r2["ret"] == pytest.approx(r["ret"])
