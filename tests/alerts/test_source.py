"""The sensor's cursor over live/signals files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pytest

from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.source import SignalCursor, read_signals, scan_new_files
from mdpipe.lake import Lake, parse_rollup_name
from mdpipe.pipeline.compaction import compact_partition

from .conftest import make_signal, publish_signals, signal_rows


def _age(path: Path, seconds: float) -> None:
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def test_cursor_sees_each_file_once_including_late_renames(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    new, cur = scan_new_files(tmp_path, None)
    assert new == [] and SignalCursor.loads(cur.dumps()) == cur
    a = publish_signals(lake, [make_signal(0)], "a.parquet")
    new, cur = scan_new_files(tmp_path, cur)
    assert new == [a.relative_to(tmp_path).as_posix()]
    assert scan_new_files(tmp_path, cur)[0] == []  # seen
    # a slow writer: its file's mtime (set while writing) is older than the watermark, but
    # within the lookback, when it is renamed into place
    b = publish_signals(lake, [make_signal(1, symbol="ETH/USDT")], "b.parquet")
    _age(b, 30)
    new, cur = scan_new_files(tmp_path, cur, lookback_s=120)
    assert new == [b.relative_to(tmp_path).as_posix()]
    assert [s.signal_id for s in read_signals(tmp_path, new)] == ["sig00001"]


def test_first_tick_ignores_history_older_than_the_initial_lookback(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    old = publish_signals(lake, [make_signal(0)], "old.parquet")
    _age(old, 3600)
    _age(old.parent, 3600)
    fresh = publish_signals(lake, [make_signal(1)], "fresh.parquet")
    new, _ = scan_new_files(tmp_path, None, initial_lookback_s=900)
    assert new == [fresh.relative_to(tmp_path).as_posix()]


def test_garbage_cursor_restarts_cleanly_and_paths_stay_inside_the_lake(tmp_path: Path) -> None:
    assert SignalCursor.loads("not json") is None
    with pytest.raises(ValueError, match="outside the lake"):
        read_signals(tmp_path, ["../../etc/passwd"])


def test_the_cursor_and_reader_work_on_an_s3_lake(s3_lake_url: str) -> None:
    """Object stores keep no folder times: one listing with each object's time instead."""
    lake = Lake(s3_lake_url)
    new, cur = scan_new_files(lake.root, None)
    assert new == []
    a = publish_signals(lake, [make_signal(0)], "a.parquet")
    new, cur = scan_new_files(lake.root, cur)
    assert new == [str(a)[len(s3_lake_url) + 1 :]]
    assert scan_new_files(lake.root, cur)[0] == []  # seen
    publish_signals(lake, [make_signal(1, symbol="ETH/USDT")], "b.parquet")
    new, cur = scan_new_files(lake.root, cur)
    assert [s.signal_id for s in read_signals(lake.root, new)] == ["sig00001"]
    with pytest.raises(ValueError, match="outside the lake"):
        read_signals(lake.root, ["../other/x.parquet"])


# ---- roll-ups of live/signals ------------------------------------------------------------------
HOUR0 = 1_723_161_600 * 10**9  # 2024-08-09T00:00Z, the hour the signals' files are named in


def _publish_seq(lake: Lake, i: int, *, emitted_ns: int | None = None) -> Path:
    """Signal `i` in its own file, named as the online engine names it (a sequence name)."""
    s = make_signal(i)
    rows = signal_rows([s]).with_columns(emitted_ns=pl.lit(emitted_ns or time.time_ns()))
    name = f"sig-20240809T00-{HOUR0 + i:019d}.parquet"
    return lake.publish("live/signals", s.venue, s.symbol, "2024-08-09", rows, name=name)


def _roll_up(lake: Lake) -> Path:
    stats = compact_partition(lake, "binance", "BTC/USDT", "2024-08-09", tables=("live/signals",))
    assert stats.rollups == {"live/signals": 1}
    (rollup,) = lake.files("live/signals")
    assert parse_rollup_name(rollup.name) is not None
    return rollup


def test_a_rollup_neither_repeats_a_signal_nor_loses_one(tmp_path: Path) -> None:
    """The sensor's path (cursor -> read_signals -> ledger.register) across a roll-up: signals
    seen as small files are not owed again; one rolled up before any tick saw its file is."""
    lake = Lake(tmp_path)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _, cur = scan_new_files(tmp_path, None)
    for i in (0, 1):
        _publish_seq(lake, i)
    new, cur = scan_new_files(tmp_path, cur)
    assert len(new) == 2
    sigs = read_signals(tmp_path, new, history_before_ns=cur.history_before_ns(120))
    assert ledger.register(sigs, ["slack"]) == 2
    # signal 2's file is published and rolled up with the others before the next tick
    _publish_seq(lake, 2)
    rollup = _roll_up(lake)
    new, cur = scan_new_files(tmp_path, SignalCursor.loads(cur.dumps()))
    assert new == [rollup.relative_to(tmp_path).as_posix()]
    sigs = read_signals(tmp_path, new, history_before_ns=cur.history_before_ns(120))
    assert [s.signal_id for s in sigs] == ["sig00000", "sig00001", "sig00002"]
    assert ledger.register(sigs, ["slack"]) == 1  # only signal 2 is owed: none twice
    assert sorted(r["signal_id"] for r in ledger.rows("slack")) == [
        "sig00000",
        "sig00001",
        "sig00002",
    ]
    assert scan_new_files(tmp_path, cur)[0] == []


def test_history_rolled_up_stays_history_and_a_vanished_file_is_skipped(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    old = _publish_seq(lake, 0, emitted_ns=time.time_ns() - 3600 * 10**9)
    _age(old, 3600)
    _age(old.parent, 3600)
    _, cur = scan_new_files(tmp_path, None, initial_lookback_s=900)  # signal 0 is history
    _publish_seq(lake, 1)
    new, cur = scan_new_files(tmp_path, cur)
    assert len(new) == 1
    # listed, then rolled up before it is read: skipped, the roll-up brings it
    rollup = _roll_up(lake)
    assert read_signals(tmp_path, new) == []
    new, cur = scan_new_files(tmp_path, cur)
    assert new == [rollup.relative_to(tmp_path).as_posix()]
    got = read_signals(tmp_path, new, history_before_ns=cur.history_before_ns(120))
    assert [s.signal_id for s in got] == ["sig00001"]  # not the history row
