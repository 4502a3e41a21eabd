"""The Dagster-free partition steps: book order, warm-up tail, day-boundary handling."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from mdpipe.core.signals import compute_features_and_signals
from mdpipe.defs import steps
from mdpipe.lake import Lake

BTC8 = steps.Part("2024-08-08", "binance", "BTC/USDT")
BTC9 = BTC8.shifted(1)


def _book(rows: list[tuple[int, int, str, float, float, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "exch_ts_ns": pl.Int64,
            "update_id": pl.Int64,
            "side": steps.SIDE_ENUM,
            "price": pl.Float64,
            "qty": pl.Float64,
            "is_snapshot": pl.Boolean,
        },
        orient="row",
    ).with_columns(pl.col("exch_ts_ns").alias("recv_ts_ns"))


def test_warmup_tail_rebuilds_the_book_at_the_cut() -> None:
    book = _book(
        [
            (10, 100, "bid", 99.0, 1.0, True),  # snapshot
            (10, 100, "bid", 98.0, 2.0, True),
            (10, 100, "ask", 101.0, 1.0, True),
            (20, 101, "bid", 98.0, 0.0, False),  # removes 98
            (20, 101, "ask", 102.0, 5.0, False),
            (30, 102, "bid", 99.0, 3.0, False),
            (40, 103, "ask", 101.0, 0.0, False),  # after the cut
        ]
    )
    tail = steps.warmup_tail(book, 35)
    snap = tail.filter(pl.col("is_snapshot"))
    # 98 was removed, 99 updated to 3, 102 added; 101 is removed only after the cut
    assert snap.select("side", "price", "qty").rows() == [
        ("bid", 99.0, 3.0),
        ("ask", 101.0, 1.0),
        ("ask", 102.0, 5.0),
    ]
    assert snap["update_id"].unique().to_list() == [102]
    assert snap["exch_ts_ns"].unique().to_list() == [30]
    assert tail.filter(~pl.col("is_snapshot")).rows() == book.slice(6).rows()
    # a cut before the first event keeps everything; after the last keeps only the snapshot
    assert steps.warmup_tail(book, 0).equals(book)
    assert steps.warmup_tail(book, 1000)["is_snapshot"].all()


def test_warmup_over_the_whole_previous_day_equals_a_full_replay(
    lake_with_recordings: Lake,
) -> None:
    lake = lake_with_recordings
    b8, t8 = steps.read_book(lake, BTC8), steps.read_trades(lake, BTC8)
    b9, t9 = steps.read_book(lake, BTC9), steps.read_trades(lake, BTC9)
    kw = {"venue": "binance", "symbol": "BTC/USDT"}
    full, sig_full = compute_features_and_signals(b9, t9, prev_book=b8, prev_trades=t8, **kw)
    # the bundled day 8 is six minutes long: a 30-min tail covers all of it
    tail = steps.warmup_tail(b8, BTC9.start_ns - steps.WARMUP_SECONDS * 10**9)
    f, s = compute_features_and_signals(b9, t9, prev_book=tail, prev_trades=t8, **kw)
    assert f.equals(full)
    assert s["signal_id"].to_list() == sig_full["signal_id"].to_list()
    # a 2-minute tail starts from a rebuilt snapshot: the book side is exact, the long-memory
    # statistics differ a little (that is what warm-up is for)
    short = steps.warmup_tail(b8, BTC9.start_ns - 120 * 10**9)
    assert short.height < b8.height
    f2, _ = compute_features_and_signals(
        b9,
        t9,
        prev_book=short,
        prev_trades=t8.filter(pl.col("exch_ts_ns") >= short["exch_ts_ns"].min()),
        **kw,
    )
    for col in ("best_bid", "best_ask", "mid", "imbalance_5", "imbalance_10", "wmid"):
        assert f2[col].equals(full[col]), col
    assert not f2["is_warmup"].any()


def test_read_book_restores_applied_order_across_files(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    ordered = steps.read_book(lake, BTC8)
    assert steps._in_applied_order(ordered)
    # split the partition into two files whose names sort in the wrong order
    [f] = lake.files("book", BTC8.venue, BTC8.symbol, BTC8.date)
    raw = pl.read_parquet(f)
    # split at an event boundary (the order of levels inside one event is immaterial)
    uid = raw["update_id"].to_numpy()
    half = int(next(i for i in range(raw.height // 2, raw.height) if uid[i] != uid[i - 1]))
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(half), name="a.parquet")
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(0, half), name="b.parquet")
    f.unlink()
    assert not steps._in_applied_order(
        lake.read("book", BTC8.venue, BTC8.symbol, BTC8.date).select(ordered.columns)
    )
    assert steps.read_book(lake, BTC8).equals(ordered)


@pytest.mark.parametrize("with_next", [True, False])
def test_price_path_uses_the_next_day_only_when_materialised(
    lake_with_recordings: Lake, tmp_path: Path, with_next: bool
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    steps.features_step(lake, BTC8)
    if with_next:
        steps.features_step(lake, BTC9)
    path, how = steps.price_path(lake, BTC8)
    own, _ = steps.price_path(lake, BTC8, with_next=False)
    if with_next:
        assert how == "used" and len(path) > len(own)
        assert path.end_ns > BTC8.end_ns
    else:
        assert how.startswith("raw data present, features not materialised")
        assert len(path) == len(own)
        # day 9 exists in the lake, so day 8 is known complete to its very end
        assert path.end_ns == BTC8.end_ns
