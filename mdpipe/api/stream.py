"""New signals for SSE clients: one watcher over `<lake>/live/signals`, many subscribers.

The watcher is the alert sensor's own cursor (`mdpipe.alerts.source.scan_new_files`): files
appear atomically and are immutable, so "new" is "a file not seen before". It finds capture's
live signals and posted ones alike (a post is a file there too). Each subscriber has a bounded
queue; a client too slow to keep up loses its oldest events rather than growing memory.

Roll-ups (mdpipe/alerts/source.py): a roll-up of `sig-...` files is a new file holding signals
already streamed, and maybe one whose small file was rolled up before a poll saw it. Its rows
are streamed only if emitted after the watcher started and not streamed before (the ids of the
last `SENT_IDS_MAX` events are kept), so each signal is sent once and none is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.alerts.source import SignalCursor, is_rollup, scan_new_files
from mdpipe.api.signals import LIVE_TABLE, jsonable
from mdpipe.lake import with_signal_source

log = logging.getLogger("mdpipe.api.stream")
QUEUE_MAX = 1000
SENT_IDS_MAX = 100_000  # more than a roll period of signals


class SignalWatcher:
    def __init__(self, lake_root: Path, poll_s: float) -> None:
        self.root = lake_root
        self.poll_s = poll_s
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._cursor = SignalCursor(watermark_ns=time.time_ns())
        self._start_ns = time.time_ns()
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()

    def start(self) -> None:
        if self._task is None:
            # what is on disk at start is history, not news: seen without being read
            self._start_ns = time.time_ns()
            self._cursor = scan_new_files(self.root, None, initial_lookback_s=0.0)[1]
            self._task = asyncio.get_running_loop().create_task(self._run(), name="signal-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers.discard(q)

    async def _run(self) -> None:
        while True:
            try:
                rows = await asyncio.to_thread(self.poll_once)
                for row in rows:
                    self._fan_out(row)
            except Exception:  # a bad file must not end the stream for everyone
                log.exception("signal stream: reading new files failed")
            await asyncio.sleep(self.poll_s)

    def poll_once(self) -> list[dict[str, Any]]:
        new, self._cursor = scan_new_files(self.root, self._cursor, initial_lookback_s=0.001)
        if not self.subscribers:
            return []  # nobody listens: advance the cursor, read nothing
        out: list[dict[str, Any]] = []
        for rel in new:
            try:
                df = with_signal_source(LIVE_TABLE, pl.scan_parquet(self.root / rel)).collect()
            except FileNotFoundError:
                continue  # rolled up in between: the roll-up is a new file
            if is_rollup(rel) and "emitted_ns" in df.columns:
                df = df.filter(pl.col("emitted_ns") >= self._start_ns)  # older: history
            for r in df.sort("ts_ns").iter_rows(named=True):
                key = (str(r["signal_id"]), str(r["source"]))
                if key in self._sent:
                    continue
                self._sent[key] = None
                if len(self._sent) > SENT_IDS_MAX:
                    self._sent.popitem(last=False)
                out.append(jsonable(r))
        return out

    def _fan_out(self, row: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(row)


__all__ = ["SignalWatcher"]
