"""The sensor's cursor over live/signals files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mdpipe.alerts.source import SignalCursor, read_signals, scan_new_files
from mdpipe.lake import Lake

from .conftest import make_signal, publish_signals


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
