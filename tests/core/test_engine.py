"""Online engine: parity with the batch driver on the real recordings, chunking invariance,
release semantics."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpipe.core.batch import compute_features_and_signals, event_starts
from mdpipe.core.detectors import DetectorConfig, Signal
from mdpipe.core.features import FEATURE_NAMES, FeatureConfig
from mdpipe.core.online import OnlineEngine, arrivals
from mdpipe.lake import Lake

MARKETS = [("BTC/USDT", "2024-08-08"), ("BTC/USDT", "2024-08-09"),
           ("ETH/USDT", "2024-08-08"), ("ETH/USDT", "2024-08-09")]  # fmt: skip


@pytest.fixture(scope="module")
def data(lake_with_recordings: Lake) -> dict[tuple[str, str], tuple[pl.DataFrame, pl.DataFrame]]:
    return {
        (s, d): (
            lake_with_recordings.read("book", "binance", s, d),
            lake_with_recordings.read("trades", "binance", s, d),
        )
        for s, d in MARKETS
    }


def replay_event_by_event(
    engine: OnlineEngine, book: pl.DataFrame, trades: pl.DataFrame
) -> tuple[pl.DataFrame, list[Signal]]:
    """Feed rows one arrival at a time (book events whole), in receive-time order."""
    sigs: list[Signal] = []
    for kind, args in arrivals(book, trades):
        if kind == "book":
            *event, snap = args
            sigs += engine.on_book_event(*event, is_snapshot=snap)
        else:
            sigs += engine.on_trade(*args)
    sigs += engine.flush()
    return engine.drain_features(), sigs


def assert_features_equal(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a["update_id"].to_list() == b["update_id"].to_list()
    for c in ("ts_ns", "asof_ns", "is_warmup", "is_snapshot"):
        assert a[c].to_list() == b[c].to_list(), c
    for c in FEATURE_NAMES:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        both_nan = np.isnan(x) & np.isnan(y)
        close = np.abs(x - y) <= 1e-9 * np.maximum(np.abs(x), np.abs(y))
        assert np.all(both_nan | close), c


@pytest.mark.parametrize("market", MARKETS)
def test_online_event_by_event_equals_batch_on_recordings(
    data: dict, market: tuple[str, str]
) -> None:
    book, trades = data[market]
    feats, sigs = compute_features_and_signals(book, trades)
    assert sigs.height >= 5  # the comparison below is about real signals
    engine = OnlineEngine(venue="binance", symbol=market[0])
    online, online_sigs = replay_event_by_event(engine, book, trades)
    assert_features_equal(online, feats)
    assert [(s.signal_id, s.signal_type, s.ts_ns) for s in online_sigs] == list(
        zip(sigs["signal_id"], sigs["signal_type"], sigs["ts_ns"], strict=True)
    )
    stats = engine.get_stats()
    assert stats["late_trades"] == 0 and stats["pending_events"] == 0
    for t in ("drift", "burst", "regime"):
        assert stats["detections"][t] == sigs.filter(pl.col("signal_type") == t).height


def _subset(book: pl.DataFrame, trades: pl.DataFrame, n_events: int) -> tuple[pl.DataFrame, ...]:
    uid = book["update_id"].to_numpy()
    starts = event_starts(uid, book["is_snapshot"].to_numpy())
    b = book.head(int(starts[n_events]))
    last_recv = b["recv_ts_ns"].max()
    return b, trades.filter(pl.col("recv_ts_ns") <= last_recv)


SMALL_F = FeatureConfig(warmup_seconds=5.0)
SMALL_D = DetectorConfig(dynamic_threshold_window=40, cooldown_seconds=3.0)


@pytest.fixture(scope="module")
def small(data: dict) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    book, trades = _subset(*data[("ETH/USDT", "2024-08-09")], 900)
    feats, sigs = compute_features_and_signals(
        book, trades, feature_config=SMALL_F, detector_config=SMALL_D
    )
    assert sigs.height >= 5
    return book, trades, feats, sigs


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=12))
def test_any_chunking_gives_the_batch_result(small: tuple, cuts: list[float]) -> None:
    book, trades, feats, sigs = small
    lo = int(min(book["recv_ts_ns"].min(), trades["recv_ts_ns"].min()))
    hi = int(max(book["recv_ts_ns"].max(), trades["recv_ts_ns"].max())) + 1
    edges = sorted({lo, hi, *(lo + int(c * (hi - lo)) for c in cuts)})
    # A chunk boundary may fall inside a book event's rows only if the event's rows straddle
    # a receive stamp, which they never do: rows of one event share recv_ts_ns.
    engine = OnlineEngine(
        venue="binance", symbol="ETH/USDT", feature_config=SMALL_F, detector_config=SMALL_D
    )
    fs, ss = [], []
    for a, b in itertools.pairwise(edges):
        out = engine.feed(
            book.filter(pl.col("recv_ts_ns").is_between(a, b, closed="left")),
            trades.filter(pl.col("recv_ts_ns").is_between(a, b, closed="left")),
        )
        fs.append(out.features)
        ss.append(out.signals)
    out = engine.flush_frames()
    fs.append(out.features)
    ss.append(out.signals)
    assert_features_equal(pl.concat(fs), feats)
    got = pl.concat(ss)
    assert got.select("signal_id", "signal_type", "ts_ns").equals(
        sigs.select("signal_id", "signal_type", "ts_ns")
    )


def _one_level(engine: OnlineEngine, uid: int, ts: int, recv: int, px: float, snap: bool) -> list:
    return engine.on_book_event(
        uid, ts, recv, np.array([True, False]), np.array([px, px + 1.0]), np.array([1.0, 1.0]),
        is_snapshot=snap,
    )  # fmt: skip


def test_book_event_waits_for_trades_up_to_its_time() -> None:
    ms = 1_000_000
    engine = OnlineEngine(venue="v", symbol="S", max_wait_ms=500.0)
    _one_level(engine, 1, 1_000 * ms, 1_000 * ms, 100.0, True)
    assert engine.get_stats()["pending_events"] == 1
    # A trade stamped before the event but received after it must still be joined.
    engine.on_trade(990 * ms, 1_010 * ms, 100.5, 2.0, "buy")
    assert engine.get_stats()["pending_events"] == 1
    engine.on_trade(1_005 * ms, 1_020 * ms, 100.5, 1.0, "sell")  # stamped after: release
    f = engine.drain_features()
    assert f.height == 1
    assert f["trade_imbalance_1s"][0] == 2.0  # the later-stamped trade is not included
    # A quiet trade stream: released by receive time (poll), not by the wall clock.
    _one_level(engine, 2, 2_000 * ms, 2_000 * ms, 100.0, False)
    engine.poll(2_400 * ms)
    assert engine.get_stats()["pending_events"] == 1
    engine.poll(2_500 * ms)
    assert engine.get_stats()["pending_events"] == 0
    assert engine.get_stats()["timeouts"] == 1
    # A trade older than an already released event is counted, never silently reordered.
    engine.on_trade(1_900 * ms, 2_600 * ms, 100.5, 1.0, "buy")
    assert engine.get_stats()["late_trades"] == 1


def test_engine_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_wait_ms"):
        OnlineEngine(venue="v", symbol="s", max_wait_ms=-1.0)
    with pytest.raises(ValueError, match="pending_events"):
        OnlineEngine(venue="v", symbol="s", pending_events=0)


def test_full_book_views_through_update_top_give_the_batch_book_features(data: dict) -> None:
    """What examples/live_detect.py does with the capture's book callback (top-20 views)."""
    from mdpipe.core.online import OrderBookFeatureExtractor

    book, trades = _subset(*data[("BTC/USDT", "2024-08-08")], 600)
    feats, _ = compute_features_and_signals(book, trades)
    ob = OrderBookFeatureExtractor()
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    rows = book.select("update_id", "exch_ts_ns", "side", "price", "qty", "is_snapshot").rows()
    got = []
    i = 0
    while i < len(rows):
        uid, ts, snap = rows[i][0], rows[i][1], rows[i][5]
        if snap:
            bids, asks = {}, {}
        while i < len(rows) and rows[i][0] == uid and rows[i][5] == snap:
            side = bids if rows[i][2] == "bid" else asks
            if rows[i][4] == 0.0:
                side.pop(rows[i][3], None)
            else:
                side[rows[i][3]] = rows[i][4]
            i += 1
        top_b = sorted(bids.items(), reverse=True)[:20]
        top_a = sorted(asks.items())[:20]
        got.append(ob.update_top(top_b, top_a, ts_ns=ts))
    cols = ["best_bid", "best_ask", "wmid", "imbalance_5", "imbalance_10", "ofi", "ofi_5s",
            "wmid_drift_1s_bps", "spread_compression"]  # fmt: skip
    for c in cols:
        np.testing.assert_array_equal(np.array([g[c] for g in got]), feats[c].to_numpy(), c)
