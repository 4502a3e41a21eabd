"""Event-driven backtester and BacktestConfig: known answers and label consistency."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest

from mdpipe.core.backtest import (
    backtest,
    buy_and_hold,
    max_drawdown,
    minmax_decimate,
    sharpe_ratio,
)
from mdpipe.core.config import BacktestConfig
from mdpipe.core.labels import PricePath, TradePath, label_signals
from mdpipe.pipeline.recordings import bookticker_frame, trade_prices
from tests.core.random_signals import random_signals

S = 1_000_000_000
HALF = 0.05


def book(times_s: list[float], mids: list[float], *, end_s: float | None = None) -> PricePath:
    mid = np.asarray(mids, dtype=np.float64)
    ts = np.round(np.asarray(times_s) * S).astype(np.int64)
    return PricePath.from_arrays(
        ts, mid - HALF, mid + HALF, mid, end_ns=None if end_s is None else round(end_s * S)
    )


def signals(times_s: list[float], sides: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts_ns": [round(t * S) for t in times_s],
            "direction": sides,
            "signal_id": [f"s{i}" for i in range(len(times_s))],
        }
    )


CFG = BacktestConfig(
    profit_target_pct=0.01,
    stop_loss_pct=0.01,
    max_holding_seconds=10.0,
    fee_rate=0.0,
    slippage_bps=0.0,
    initial_capital=1000.0,
)


def test_single_profit_trade_pnl_and_equity() -> None:
    p = book([0, 1, 2, 3, 4], [100, 100, 100.5, 101.2, 99])
    r = backtest(p, signals([0.5], [1]), CFG)
    assert r.trades.height == 1
    t = r.trades.row(0, named=True)
    assert t["barrier"] == "profit" and t["entry_ts_ns"] == 1 * S and t["t_end_ns"] == 3 * S
    qty = 1000.0 / (100 + HALF)
    assert t["qty"] == pytest.approx(qty)
    assert t["pnl"] == pytest.approx(qty * ((101.2 - HALF) - (100 + HALF)))
    eq = r.equity["equity"].to_list()
    # t=0 flat; t=1 entered (marked at the bid: loses the spread); t=2 marked; t=3 closed
    assert eq[0] == 1000.0
    assert eq[1] == pytest.approx(1000 + qty * ((100 - HALF) - (100 + HALF)))
    assert eq[2] == pytest.approx(1000 + qty * ((100.5 - HALF) - (100 + HALF)))
    assert eq[3] == eq[4] == pytest.approx(1000 + t["pnl"])
    assert r.equity["position"].to_list() == [0, 1, 1, 0, 0]
    assert r.summary["net_pnl"] == pytest.approx(t["pnl"])
    assert r.summary["win_rate"] == 1.0


def test_one_position_at_a_time() -> None:
    p = book([0, 1, 2, 3, 4, 5, 6], [100, 100, 100.2, 98.5, 100, 101.5, 100])
    # s0 enters at 1 and stops at 3; s1 (2.5 s) arrives while long: skipped;
    # s2 at exactly the exit time 3 is flat: enters at 4 and hits profit at 5
    r = backtest(p, signals([0.5, 2.5, 3.0], [1, -1, 1]), CFG)
    assert r.trades["signal_id"].to_list() == ["s0", "s2"]
    assert r.trades["barrier"].to_list() == ["stop", "profit"]
    assert r.trades["entry_ts_ns"].to_list() == [1 * S, 4 * S]
    assert r.summary["n_skipped"] == 1
    # the second trade is sized from the equity left after the first
    t0, t1 = r.trades.row(0, named=True), r.trades.row(1, named=True)
    assert t1["qty"] == pytest.approx(t0["equity_after"] / (100 + HALF))


def test_time_exit_at_deadline_book_and_position_fraction() -> None:
    p = book([0, 1, 5, 10.5, 11.5, 12], [100, 100, 100.3, 100.6, 100.2, 100], end_s=20)
    cfg = BacktestConfig(**{**CFG.to_dict(), "position_fraction": 0.5})
    r = backtest(p, signals([0.0], [1]), cfg)
    t = r.trades.row(0, named=True)
    assert t["barrier"] == "time" and t["t_end_ns"] == 11 * S
    assert t["exit_ts_ns"] == round(10.5 * S)
    assert t["qty"] * t["entry_price"] == pytest.approx(500.0)
    assert not t["censored"]


def test_open_position_at_data_end_is_censored() -> None:
    p = book([0, 1, 2, 3], [100, 100, 100.2, 100.1], end_s=4)
    r = backtest(p, signals([0.0], [-1]), CFG)
    t = r.trades.row(0, named=True)
    assert t["censored"] and t["barrier"] == "time" and t["exit_ts_ns"] == 3 * S


def test_costs_match_labels_on_hand_made_path() -> None:
    p = book([0, 1, 2, 3, 4, 5], [100, 100, 100.2, 101.5, 100, 100])
    cfg = BacktestConfig(**{**CFG.to_dict(), "fee_rate": 0.001, "slippage_bps": 5.0})
    sig = signals([0.2], [1])
    r = backtest(p, sig, cfg)
    lab = label_signals(sig, p, cfg)
    assert r.trades["ret"][0] == pytest.approx(lab["ret"][0], rel=1e-12)
    assert r.trades["exit_price"][0] == pytest.approx(lab["exit_price"][0])


def test_buy_and_hold() -> None:
    p = book([0, 1, 2], [100, 90, 110])
    r = buy_and_hold(p, CFG)
    t = r.trades.row(0, named=True)
    assert t["entry_ts_ns"] == 0 and t["exit_ts_ns"] == 2 * S
    assert t["ret"] == pytest.approx((110 - HALF) / (100 + HALF) - 1)
    assert r.summary["max_drawdown"] > 0.09


def test_sharpe_and_drawdown_known_answers() -> None:
    # equity +1 %, -0.5 %, +1 % per minute sampled at one-minute intervals
    ts = np.array([0, 60, 120, 180]) * S
    eq = np.array([100.0, 101.0, 100.495, 101.49995])
    rets = np.array([0.01, -0.005, 0.01])
    expected = rets.mean() / rets.std(ddof=1) * math.sqrt(365 * 86400 / 60)
    assert sharpe_ratio(ts, eq, interval_ns=60 * S) == pytest.approx(expected, rel=1e-4)
    assert math.isnan(sharpe_ratio(ts, np.full(4, 100.0), interval_ns=60 * S))
    assert max_drawdown([100, 120, 90, 130, 117]) == pytest.approx(0.25)
    assert max_drawdown([1, 2, 3]) == 0.0


def test_trade_price_barriers_known_answers() -> None:
    p = book([0, 1, 2, 3, 4, 20], [100, 100, 100.1, 100.2, 100.3, 100.3])
    cfg = dataclasses.replace(CFG, barrier_price="trade")
    # the 150 prints at or before the entry event (t=1) are not looked at; 101.2 at 2.5 s
    # touches the +1 % barrier and exits at the book state at or before it (t=2)
    trades = TradePath.from_arrays(np.array([0.5, 1.0, 2.5, 3.5]) * S, [150.0, 150.0, 101.2, 100.0])
    t = backtest(p, signals([0.5], [1]), cfg, trades=trades).trades.row(0, named=True)
    assert (t["barrier"], t["t_end_ns"], t["exit_ts_ns"]) == ("profit", round(2.5 * S), 2 * S)
    assert t["exit_price"] == pytest.approx(100.1 - HALF)
    # a print stamped at a book event's time sees that event's book; stop wins in one timestamp
    both = TradePath.from_arrays(np.array([3.0, 3.0]) * S, [101.5, 98.0])
    t = backtest(p, signals([0.5], [1]), cfg, trades=both).trades.row(0, named=True)
    assert (t["barrier"], t["t_end_ns"], t["exit_ts_ns"]) == ("stop", 3 * S, 3 * S)
    # a print after the last book event, before the deadline, exits at the last book
    short = book([0, 1, 2], [100, 100, 100], end_s=100)
    late = TradePath.from_arrays(np.array([5.0]) * S, [98.5])
    t = backtest(short, signals([0.5], [1]), cfg, trades=late).trades.row(0, named=True)
    assert (t["barrier"], t["t_end_ns"], t["exit_ts_ns"], t["censored"]) == (
        "stop",
        5 * S,
        2 * S,
        False,
    )
    # the mids alone would have held to the deadline
    assert backtest(short, signals([0.5], [1]), CFG).trades["barrier"][0] == "time"
    with pytest.raises(ValueError, match="TradePath"):
        backtest(p, signals([0.0], [1]), cfg)


def test_trade_price_backtest_equals_trade_price_labels_on_real_recording() -> None:
    frame = bookticker_frame("btcusdt_20240808.gz")
    path = PricePath.from_frame(frame)
    trades = TradePath.from_arrays(*trade_prices("btcusdt_20240808.gz"))
    cfg = BacktestConfig(
        profit_target_pct=0.0004,
        stop_loss_pct=0.0003,
        max_holding_seconds=20.0,
        barrier_price="trade",
    )
    sig = random_signals(path.ts_ns, 200, seed=5)
    r = backtest(path, sig, cfg, trades=trades)
    lab = label_signals(sig, path, cfg, trades=trades)
    j = r.trades.join(lab, on="signal_id", suffix="_label")
    assert r.trades.height > 20 and j.height == r.trades.height
    for col in ("entry_ts_ns", "exit_ts_ns", "t_end_ns", "barrier"):
        assert (j[col] == j[f"{col}_label"]).all(), col
    np.testing.assert_allclose(
        j["ret"].to_numpy(), j["ret_label"].to_numpy(), rtol=1e-9, atol=1e-12
    )
    # trade prints touch barriers the mids never reach: the two modes really differ here
    mid_run = backtest(path, sig, dataclasses.replace(cfg, barrier_price="mid"))
    assert not r.trades["t_end_ns"].equals(mid_run.trades["t_end_ns"])


def test_trades_equal_labels_on_real_recording() -> None:
    frame = bookticker_frame("btcusdt_20240808.gz")
    path = PricePath.from_frame(frame)
    cfg = BacktestConfig(profit_target_pct=0.0004, stop_loss_pct=0.0003, max_holding_seconds=20.0)
    sig = random_signals(path.ts_ns, 200, seed=3)
    r = backtest(path, sig, cfg)
    lab = label_signals(sig, path, cfg)
    j = r.trades.join(lab, on="signal_id", suffix="_label")
    assert r.trades.height > 20 and j.height == r.trades.height
    assert (j["entry_ts_ns"] == j["entry_ts_ns_label"]).all()
    assert (j["t_end_ns"] == j["t_end_ns_label"]).all()
    assert (j["barrier"] == j["barrier_label"]).all()
    np.testing.assert_allclose(
        j["ret"].to_numpy(), j["ret_label"].to_numpy(), rtol=1e-9, atol=1e-12
    )
    # never two positions at once
    entries = r.trades["entry_ts_ns"].to_numpy()
    assert np.all(entries[1:] > r.trades["t_end_ns"].to_numpy()[:-1])
    final = r.trades["equity_after"][-1]
    assert r.summary["final_equity"] == pytest.approx(final)


def test_config_defaults_validation_and_mapping() -> None:
    c = BacktestConfig()
    assert (c.initial_capital, c.fee_rate, c.slippage_bps) == (10000.0, 0.001, 5.0)
    assert (c.profit_target_pct, c.stop_loss_pct, c.max_holding_seconds) == (0.005, 0.003, 300.0)
    assert BacktestConfig.from_mapping(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown BacktestConfig field"):
        BacktestConfig.from_mapping({"fee": 0.1})
    for bad, match in (
        ({"fee_rate": -0.1}, "fee_rate"),
        ({"fee_rate": 10.0}, "fraction"),
        ({"stop_loss_pct": 0.0}, "stop_loss_pct"),
        ({"max_holding_seconds": float("nan")}, "finite"),
        ({"barrier_price": "last"}, "barrier_price"),
        ({"position_fraction": 2.0}, "leverage"),
        ({"cv_n_test_folds": 5}, "cv_n_test_folds"),
        ({"cv_method": "walk"}, "cv_method"),
        ({"threshold_objective": "auc"}, "threshold_objective"),
        ({"cv_n_folds": 2.5}, "int"),
    ):
        with pytest.raises(ValueError, match=match):
            BacktestConfig(**bad)  # type: ignore[arg-type]


def test_equity_curve_thinning_keeps_extremes_and_summary_uses_every_event() -> None:
    v = np.sin(np.linspace(0, 20, 10_001))
    v[1234] = -5.0
    idx = minmax_decimate(v, 50)
    assert idx[0] == 0 and idx[-1] == v.size - 1 and 1234 in idx
    assert idx.size <= 102 and np.all(np.diff(idx) > 0)
    p = book(list(range(400)), [100 + 0.01 * (i % 7) for i in range(400)])
    sig = signals([float(i) for i in range(0, 390, 13)], [1, -1] * 15)
    full = backtest(p, sig, CFG, equity_points=None)
    thin = backtest(p, sig, CFG, equity_points=20)
    assert full.equity.height == 400 and thin.equity.height <= 42
    assert thin.summary == full.summary
    assert thin.equity["equity"].min() == full.equity["equity"].min()
