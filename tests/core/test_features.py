"""Features: hand-computed known answers, and the real recordings against an independent
plain-Python rebuild."""

from __future__ import annotations

import heapq
import math

import numpy as np
import polars as pl
import pytest

from mdpipe.core.batch import (
    FEATURE_COLUMNS,
    SIGNAL_COLUMNS,
    compute_features_and_signals,
)
from mdpipe.core.features import FEATURE_NAMES, FeatureConfig, fit_microprice
from mdpipe.core.online import OrderBookFeatureExtractor, TradeFeatureExtractor
from mdpipe.lake import Lake

MARKETS = [("BTC/USDT", "2024-08-08"), ("BTC/USDT", "2024-08-09"),
           ("ETH/USDT", "2024-08-08"), ("ETH/USDT", "2024-08-09")]  # fmt: skip

# ---- known answers on a small book -------------------------------------------------------


def test_book_features_by_hand() -> None:
    ob = OrderBookFeatureExtractor(config=FeatureConfig(book_ticks=4096))
    f = ob.update(
        [(100.00, 2.0), (99.99, 1.0), (99.98, 3.0)],
        [(100.01, 1.0), (100.02, 4.0), (100.03, 2.0)],
        ts_ns=1_000_000_000,
        is_snapshot=True,
    )
    assert (f["best_bid"], f["best_ask"]) == (100.00, 100.01)
    assert (f["best_bid_qty"], f["best_ask_qty"]) == (2.0, 1.0)
    assert f["mid"] == pytest.approx(100.005, abs=1e-12)
    assert f["spread"] == pytest.approx(0.01, abs=1e-12)
    assert f["wmid"] == pytest.approx((100.00 * 1.0 + 100.01 * 2.0) / 3.0, abs=1e-12)
    assert f["imbalance_5"] == pytest.approx((6.0 - 7.0) / 13.0, abs=1e-15)
    assert f["imbalance_10"] == f["imbalance_5"]
    assert (f["bid_depth_5"], f["ask_depth_5"]) == (6.0, 7.0)
    assert f["depth_ratio_5"] == pytest.approx(6.0 / 7.0)
    assert f["ofi"] == 0.0  # a snapshot is not order flow
    assert math.isnan(f["wmid_change_bps"])

    # Remove the best bid, grow 99.99, grow the best ask.
    g = ob.update([(100.00, 0.0), (99.99, 5.0)], [(100.01, 3.0)], ts_ns=1_100_000_000)
    assert (g["best_bid"], g["best_bid_qty"], g["best_ask"], g["best_ask_qty"]) == (
        99.99, 5.0, 100.01, 3.0,
    )  # fmt: skip
    # Cont-Kukanov-Stoikov: bid fell -> -q_bid(prev) = -2; ask unchanged -> -q_ask + q_ask(prev)
    assert g["ofi"] == pytest.approx(-2.0 - 3.0 + 1.0)
    assert g["ofi_1s"] == pytest.approx(-4.0)
    wmid = (99.99 * 3.0 + 100.01 * 5.0) / 8.0
    assert g["wmid"] == pytest.approx(wmid, abs=1e-12)
    assert g["wmid_change_bps"] == pytest.approx((wmid / f["wmid"] - 1) * 1e4, rel=1e-9)
    assert g["imbalance_5"] == pytest.approx((8.0 - 9.0) / 17.0, abs=1e-15)
    assert g["spread_mean_30s"] == pytest.approx(0.015, abs=1e-12)
    assert g["spread_compression"] == pytest.approx(0.02 / 0.015, rel=1e-9)


def test_trade_windows_by_hand() -> None:
    tr = TradeFeatureExtractor()
    s = 1_000_000_000
    tr.add_trade(0, 100.0, 1.0, "buy")
    tr.add_trade(s // 2, 101.0, 2.0, "sell")
    tr.add_trade(s, 100.0, 3.0, "buy")
    f = tr.features_at(s, mid=100.5)
    # (t - 1 s, t]: the trade at exactly t - 1 s has left the window.
    assert (f["trade_imbalance_1s"], f["volume_1s"], f["trade_count_1s"]) == (1.0, 5.0, 2.0)
    assert (f["trade_imbalance_5s"], f["volume_5s"], f["trade_count_5s"]) == (2.0, 6.0, 3.0)
    assert f["vwap_30s"] == pytest.approx((100 + 202 + 300) / 6.0)
    r = math.log(101 / 100) * 1e4
    assert f["realized_vol_5s"] == pytest.approx(math.sqrt(2) * r, rel=1e-12)
    assert f["vwap_distance_bps"] == pytest.approx((100.5 / f["vwap_30s"] - 1) * 1e4)
    assert f["last_trade_price"] == 100.0
    # VPIN with the bucket still open: |buy - sell| / volume over what was traded.
    assert f["vpin"] == pytest.approx(abs(4.0 - 2.0) / 6.0)
    later = tr.features_at(40 * s, mid=100.5)
    assert (later["volume_30s"], later["trade_count_30s"]) == (0.0, 0.0)
    assert later["vwap_30s"] == 100.0  # no trade in the window: last price


def test_feature_config_validation() -> None:
    with pytest.raises(ValueError, match="hazard"):
        FeatureConfig(bocpd_hazard=0.0)
    with pytest.raises(ValueError, match="book_ticks"):
        FeatureConfig(book_ticks=1000)
    with pytest.raises(ValueError, match="warmup_seconds"):
        FeatureConfig(warmup_seconds=-1.0)


# ---- real recordings ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def partitions(lake_with_recordings: Lake) -> dict[tuple[str, str], tuple[pl.DataFrame, ...]]:
    out = {}
    for sym, date in MARKETS:
        book = lake_with_recordings.read("book", "binance", sym, date)
        trades = lake_with_recordings.read("trades", "binance", sym, date)
        feats, sigs = compute_features_and_signals(book, trades)
        out[(sym, date)] = (book, trades, feats, sigs)
    return out


def _python_rebuild(book: pl.DataFrame) -> list[dict[str, float]]:
    """Independent L2 rebuild: dicts, heapq, no numba, no grid."""
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    rows = book.select("update_id", "side", "price", "qty", "is_snapshot").rows()
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    out = []
    prev_top = None
    i = 0
    while i < len(rows):
        uid, snap = rows[i][0], rows[i][4]
        j = i
        while j < len(rows) and rows[j][0] == uid and rows[j][4] == snap:
            j += 1
        if snap:
            bids, asks = {}, {}
        for _, side, px, q, _ in rows[i:j]:
            book_side = bids if side == "bid" else asks
            if q == 0.0:
                book_side.pop(px, None)
            else:
                book_side[px] = q
        top_b = heapq.nlargest(10, bids.items())
        top_a = heapq.nsmallest(10, asks.items())
        bd5 = sum(q for _, q in top_b[:5])
        ad5 = sum(q for _, q in top_a[:5])
        bd10 = sum(q for _, q in top_b)
        ad10 = sum(q for _, q in top_a)
        (b, bq), (a, aq) = top_b[0], top_a[0]
        ofi = 0.0
        if prev_top is not None and not snap:
            pb, pbq, pa, paq = prev_top
            ofi = (bq if b >= pb else 0) - (pbq if b <= pb else 0)
            ofi += -(aq if a <= pa else 0) + (paq if a >= pa else 0)
        prev_top = (b, bq, a, aq)
        out.append({
            "update_id": uid, "best_bid": b, "best_bid_qty": bq, "best_ask": a,
            "best_ask_qty": aq, "mid": 0.5 * (b + a), "spread": a - b,
            "wmid": (b * aq + a * bq) / (bq + aq),
            "bid_depth_5": bd5, "ask_depth_5": ad5, "bid_depth_10": bd10, "ask_depth_10": ad10,
            "imbalance_5": (bd5 - ad5) / (bd5 + ad5),
            "imbalance_10": (bd10 - ad10) / (bd10 + ad10), "ofi": ofi,
        })  # fmt: skip
        i = j
    return out


@pytest.mark.parametrize("market", [MARKETS[0], MARKETS[3]])
def test_book_features_equal_independent_python_rebuild(
    partitions: dict, market: tuple[str, str]
) -> None:
    book, _, feats, _ = partitions[market]
    ref = pl.DataFrame(_python_rebuild(book))
    assert ref.height == feats.height
    assert ref["update_id"].to_list() == feats["update_id"].to_list()
    for col in ref.columns[1:]:
        np.testing.assert_allclose(
            feats[col].to_numpy(), ref[col].to_numpy(), rtol=1e-12, atol=1e-12, err_msg=col
        )
    # Prices come back from the grid bit for bit.
    assert (feats["best_bid"] == ref["best_bid"]).all()
    assert (feats["best_ask"] == ref["best_ask"]).all()


@pytest.mark.parametrize("market", MARKETS)
def test_trade_features_equal_numpy_windows(partitions: dict, market: tuple[str, str]) -> None:
    _, trades, feats, _ = partitions[market]
    t = trades.sort(["exch_ts_ns", "trade_id"])
    ts = t["exch_ts_ns"].to_numpy()
    signed = np.where(t["side"].to_numpy() == "buy", 1.0, -1.0) * t["qty"].to_numpy()
    qty = t["qty"].to_numpy()
    asof = feats["asof_ns"].to_numpy()
    hi = np.searchsorted(ts, asof, side="right")
    for w, name in ((1, "1s"), (5, "5s"), (30, "30s")):
        lo = np.searchsorted(ts, asof - w * 1_000_000_000, side="right")
        ref_imb = np.array([signed[a:b].sum() for a, b in zip(lo, hi, strict=True)])
        ref_vol = np.array([qty[a:b].sum() for a, b in zip(lo, hi, strict=True)])
        got_imb = feats[f"trade_imbalance_{name}"].to_numpy()
        # Running sums vs fresh sums: equal up to rounding relative to the window's volume.
        np.testing.assert_allclose(got_imb, ref_imb, rtol=0, atol=1e-9 * max(1.0, ref_vol.max()))
        np.testing.assert_allclose(
            feats[f"volume_{name}"].to_numpy(), ref_vol, rtol=1e-9, atol=1e-9
        )
        assert np.array_equal(feats[f"trade_count_{name}"].to_numpy(), (hi - lo).astype(float))


@pytest.mark.parametrize("market", MARKETS)
def test_finite_after_warmup_and_warmup_marked(partitions: dict, market: tuple[str, str]) -> None:
    _, _, feats, sigs = partitions[market]
    assert feats.columns == list(FEATURE_COLUMNS)
    assert sigs.columns == list(SIGNAL_COLUMNS)
    warm = feats["is_warmup"].to_numpy()
    elapsed = (feats["asof_ns"] - feats["asof_ns"][0]).to_numpy()
    assert warm[0] and np.array_equal(warm, elapsed < 60_000_000_000)
    live = feats.filter(~pl.col("is_warmup"))
    assert live.height > 2_000
    cols = [c for c in FEATURE_NAMES if c != "microprice"]  # no model without a prior day
    bad = {c: int((~np.isfinite(live[c].to_numpy())).sum()) for c in cols}
    assert not any(bad.values()), bad
    assert feats["microprice"].is_nan().all()
    assert sigs.filter(pl.col("ts_ns") < live["ts_ns"][0]).height == 0
    assert sigs["signal_id"].n_unique() == sigs.height
    assert set(sigs["direction"].to_list()) <= {-1, 1}


def test_previous_partition_warms_up_the_next(partitions: dict) -> None:
    book0, trades0, feats0, _ = partitions[("BTC/USDT", "2024-08-08")]
    book1, trades1, feats1, _ = partitions[("BTC/USDT", "2024-08-09")]
    model = fit_microprice(feats0)
    assert model.fitted
    warm_f, warm_s = compute_features_and_signals(
        book1, trades1, prev_book=book0, prev_trades=trades0, microprice=model
    )
    assert warm_f["update_id"].to_list() == feats1["update_id"].to_list()
    # With the previous day replayed first, nothing of the new day is warm-up any more...
    assert not warm_f["is_warmup"].any()
    cols = [c for c in FEATURE_NAMES]
    assert all(np.isfinite(warm_f[c].to_numpy()).all() for c in cols)
    # ...and the result is the tail of one continuous run over both days.
    both_f, both_s = compute_features_and_signals(
        pl.concat([book0, book1]), pl.concat([trades0, trades1]), microprice=model
    )
    tail = both_f.tail(warm_f.height)
    for c in cols:
        assert np.array_equal(tail[c].to_numpy(), warm_f[c].to_numpy(), equal_nan=True), c
    assert both_s.filter(pl.col("ts_ns") >= warm_f["ts_ns"][0])["signal_id"].to_list() == (
        warm_s["signal_id"].to_list()
    )


def test_microprice_is_fitted_on_one_day_and_applied_to_the_next(partitions: dict) -> None:
    _, _, feats0, _ = partitions[("ETH/USDT", "2024-08-08")]
    _, _, feats1, _ = partitions[("ETH/USDT", "2024-08-09")]
    model = fit_microprice(feats0, n_imbalance=10, n_spread=2)
    g = model.table[:, 0]
    # Symmetrised estimator: G(I) = -G(1 - I), and more bid size pushes the price up.
    np.testing.assert_allclose(g, -g[::-1], atol=1e-12)
    assert g[-1] > 0 > g[0]
    mp = model.apply(
        feats1["best_bid"].to_numpy(), feats1["best_ask"].to_numpy(),
        feats1["best_bid_qty"].to_numpy(), feats1["best_ask_qty"].to_numpy(),
    )  # fmt: skip
    assert np.isfinite(mp).all()
    # The adjustment is the table entry of each row's (imbalance, spread) state.
    imb = feats1["best_bid_qty"] / (feats1["best_bid_qty"] + feats1["best_ask_qty"])
    one_tick = np.isclose((feats1["best_ask"] - feats1["best_bid"]).to_numpy(), model.tick)
    bucket = np.minimum((imb.to_numpy() * 10).astype(int), 9)
    np.testing.assert_allclose(
        (mp - feats1["mid"].to_numpy())[one_tick], g[bucket[one_tick]], atol=1e-9
    )
    # It is a forecast of the mid: on the next day it beats the mid at predicting the mid 50
    # events later (squared error), out of sample.
    mid = feats1["mid"].to_numpy()
    err_mid = np.mean((mid[50:] - mid[:-50]) ** 2)
    err_mp = np.mean((mid[50:] - mp[:-50]) ** 2)
    assert err_mp < err_mid


def test_streaming_from_the_lake_equals_the_frame_api(
    lake_with_recordings: Lake, partitions: dict
) -> None:
    from mdpipe.pipeline.read import compute_partition

    _, _, feats, sigs = partitions[("ETH/USDT", "2024-08-09")]
    # Batches far smaller than an event's rows: every event straddles batch boundaries.
    got_f, got_s = compute_partition(
        lake_with_recordings, "binance", "ETH/USDT", "2024-08-09", batch_rows=7
    )
    assert got_f.equals(feats)
    assert got_s.equals(sigs)


def test_previous_day_warmup_can_rebuild_the_book_only(lake_with_recordings: Lake) -> None:
    from mdpipe.pipeline.read import compute_partition

    f_all, _ = compute_partition(
        lake_with_recordings, "binance", "BTC/USDT", "2024-08-09",
        prev_date="2024-08-08", warmup_minutes=None,
    )  # fmt: skip
    f_2min, _ = compute_partition(
        lake_with_recordings, "binance", "BTC/USDT", "2024-08-09",
        prev_date="2024-08-08", warmup_minutes=2.0,
    )  # fmt: skip
    f_none, _ = compute_partition(lake_with_recordings, "binance", "BTC/USDT", "2024-08-09")
    assert f_all["update_id"].to_list() == f_2min["update_id"].to_list()
    # Two minutes of full warm-up cover the 60 s warm-up flag; the book state is identical.
    assert not f_2min["is_warmup"].any()
    assert f_none["is_warmup"].any()
    for c in ("best_bid", "best_ask", "imbalance_10", "bid_depth_10"):
        assert f_2min[c].equals(f_all[c]), c
