"""The API across roll-ups of `live/signals`: pages, the partition cache and the stream see each
signal once while capture's small `sig-` files are merged into a roll-up and deleted."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from mdpipe.api.signals import FileCache, SignalQuery, query_page
from mdpipe.lake import Lake
from mdpipe.pipeline.compaction import compact_partition

from .conftest import ServeFn

HOUR0 = 1_723_161_600 * 10**9  # 2024-08-09T00:00Z
DATE = "2024-08-09"


def publish(lake: Lake, i: int) -> Path:
    """Signal `i` in its own file, named as the online engine names it."""
    row = pl.DataFrame({
        "venue": ["binance"], "symbol": ["BTC/USDT"], "ts_ns": [HOUR0 + i * 10**9],
        "signal_id": [f"s{i:04d}"], "signal_type": ["drift"], "direction": [1],
        "score": [1.5], "source": ["live"], "emitted_ns": [time.time_ns()],
    })  # fmt: skip
    name = f"sig-20240809T00-{HOUR0 + i:019d}.parquet"
    return lake.publish("live/signals", "binance", "BTC/USDT", DATE, row, name=name)


def roll_up(lake: Lake) -> None:
    stats = compact_partition(lake, "binance", "BTC/USDT", DATE, tables=("live/signals",))
    assert stats.rollups == {"live/signals": 1}


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["signal_id"] for r in rows]


def test_paging_across_a_rollup_returns_each_signal_once(serve: ServeFn, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for i in range(30):
        publish(lake, i)
    _s, c = serve(lake=lake)
    first = c.get("/api/v1/signals", params={"limit": 10}).json()
    assert ids(first["signals"]) == [f"s{i:04d}" for i in range(29, 19, -1)]
    roll_up(lake)  # the 30 files become one between two pages
    assert len(lake.files("live/signals")) == 1
    got = ids(first["signals"])
    cursor = first["next_cursor"]
    while cursor:
        page = c.get("/api/v1/signals", params={"limit": 10, "cursor": cursor}).json()
        got += ids(page["signals"])
        cursor = page["next_cursor"]
    assert got == [f"s{i:04d}" for i in range(29, -1, -1)]
    # a batch published after the roll-up is on the next page 1
    publish(lake, 30)
    assert ids(c.get("/api/v1/signals", params={"limit": 2}).json()["signals"]) == [
        "s0030",
        "s0029",
    ]


def _settle(lake: Lake) -> None:
    """Date the partition folder a minute back, as it is once no file arrived for a while."""
    d = lake.partition_dir("live/signals", "binance", "BTC/USDT", DATE)
    t = time.time_ns() - 60 * 10**9
    os.utime(d, ns=(t, t))


def test_the_partition_cache_follows_new_files_and_rollups(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    cache = FileCache()
    q = SignalQuery(limit=100)

    def page() -> list[str]:
        return query_page(lake, q, cache)[0]["signal_id"].to_list()

    for i in range(5):
        publish(lake, i)
    _settle(lake)
    assert page() == ["s0004", "s0003", "s0002", "s0001", "s0000"]
    builds = cache.partition_builds
    assert page() == ["s0004", "s0003", "s0002", "s0001", "s0000"]
    assert (cache.partition_builds, cache.partition_hits) == (builds, 1)  # no listing
    publish(lake, 5)  # a new batch: the folder time moves, its rows are appended
    assert page()[:2] == ["s0005", "s0004"]
    roll_up(lake)  # files removed: rebuilt from the roll-up
    _settle(lake)
    assert page() == [f"s{i:04d}" for i in range(5, -1, -1)]
    assert page() == lake.read("live/signals").sort("ts_ns", descending=True)["signal_id"].to_list()


def test_the_stream_sends_each_signal_once_across_a_rollup(serve: ServeFn, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for i in range(3):
        publish(lake, i)  # history: on disk before serve starts, never streamed
    s, _c = serve(lake=lake)
    events: list[str] = []
    subscribed = threading.Event()
    got = {3: threading.Event(), 4: threading.Event()}

    def listen() -> None:
        with httpx.stream("GET", s.url + "/api/v1/signals/stream", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith(":"):
                    subscribed.set()
                if line.startswith("data:"):
                    sid = json.loads(line[5:])["signal_id"]
                    events.append(sid)
                    if sid == "s0004":
                        got[4].set()
                        return
                    if sid == "s0003":
                        got[3].set()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert subscribed.wait(30)
    publish(lake, 3)
    assert got[3].wait(30), "signal 3 not streamed"
    roll_up(lake)  # a new file holding history (0-2) and an already streamed signal (3)
    publish(lake, 4)
    assert got[4].wait(30), "signal 4 not streamed"
    t.join(30)
    assert events == ["s0003", "s0004"]
