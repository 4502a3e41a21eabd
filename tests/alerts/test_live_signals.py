"""The capture consumer: normalized batches -> online engine -> live/signals, on real data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prometheus_client import CollectorRegistry, generate_latest

from mdpipe.capture.live_signals import LiveSignals
from mdpipe.core.batch import SIGNAL_COLUMNS, compute_features_and_signals
from mdpipe.lake import Lake

DATE = "2024-08-09"


class _Batch:
    def __init__(self, book: pl.DataFrame, trades: pl.DataFrame) -> None:
        self.tables = {"book": book, "trades": trades}

    def get(self, name: str) -> pl.DataFrame:
        return self.tables[name]


def test_consumer_publishes_the_batch_signals_of_both_markets(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    src = lake_with_recordings
    book = src.read("book", "binance", dates=DATE)
    trades = src.read("trades", "binance", dates=DATE)
    expected = {
        sym: compute_features_and_signals(
            book.filter(pl.col("symbol") == sym), trades.filter(pl.col("symbol") == sym)
        )[1]
        for sym in ("BTC/USDT", "ETH/USDT")
    }
    assert all(s.height >= 3 for s in expected.values())

    # capture-like batches: 500 ms of receive time each, both markets mixed; the injected
    # clock is the receive time the live process would be at when the batch is handed over
    now = {"t": 0}
    out = Lake(tmp_path / "lake")
    reg = CollectorRegistry()
    ls = LiveSignals(out, "binance", registry=reg, clock=lambda: now["t"])
    w = pl.col("recv_ts_ns") // 500_000_000
    b_parts = book.with_columns(_w=w).partition_by("_w", as_dict=True)
    t_parts = trades.with_columns(_w=w).partition_by("_w", as_dict=True)
    empty_b, empty_t = book.head(0), trades.head(0)
    for key in sorted(set(b_parts) | set(t_parts)):
        now["t"] = (key[0] + 1) * 500_000_000
        b = b_parts.get(key, empty_b).drop("_w", strict=False)
        t = t_parts.get(key, empty_t).drop("_w", strict=False)
        ls(_Batch(b, t))
    ls.poll(2**62)  # end of the replay: everything held is released

    files = sorted((out.root / "live" / "signals").rglob("*.parquet"))
    got = pl.concat([pl.read_parquet(f) for f in files])  # one schema for every file
    assert got.columns[: len(SIGNAL_COLUMNS)] == list(SIGNAL_COLUMNS)
    assert got["recv_ts_ns"].null_count() == 0 and got["emitted_ns"].null_count() == 0
    for sym, exp in expected.items():
        mine = got.filter(pl.col("symbol") == sym).sort("ts_ns", "signal_id")
        assert mine.select("signal_id", "signal_type", "ts_ns").equals(
            exp.sort("ts_ns", "signal_id").select("signal_id", "signal_type", "ts_ns")
        ), sym
        assert mine["mid"].to_list() == exp.sort("ts_ns", "signal_id")["mid"].to_list()
    # partitions follow the signal's exchange date, like every other table
    assert {f.parent.name for f in files} == {f"date={DATE}"}
    text = generate_latest(reg).decode()
    total = sum(s.height for s in expected.values())
    exported = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mdpipe_signals_total{")
    )
    assert exported == total == ls.signals_published
    assert "mdpipe_detector_events_total" in text and "mdpipe_signal_score_bucket" in text
