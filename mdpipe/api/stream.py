"""New signals for SSE clients: one watcher over `<lake>/live/signals`, many subscribers.

The watcher is the alert sensor's own cursor (`mdpipe.alerts.source.scan_new_files`): files
appear atomically and are immutable, so "new" is "a file not seen before". It finds capture's
live signals and posted ones alike (a post is a file there too). Each subscriber has a bounded
queue; a client too slow to keep up loses its oldest events rather than growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.alerts.source import SignalCursor, scan_new_files
from mdpipe.api.signals import LIVE_TABLE, jsonable
from mdpipe.lake import with_signal_source

log = logging.getLogger("mdpipe.api.stream")
QUEUE_MAX = 1000


class SignalWatcher:
    def __init__(self, lake_root: Path, poll_s: float) -> None:
        self.root = lake_root
        self.poll_s = poll_s
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._cursor = SignalCursor(watermark_ns=time.time_ns())

    def start(self) -> None:
        if self._task is None:
            # what is on disk at start is history, not news: seen without being read
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
            p = self.root / rel
            if not p.exists():
                continue  # rolled up in between
            df = with_signal_source(LIVE_TABLE, pl.scan_parquet(p)).collect()
            out.extend(jsonable(r) for r in df.sort("ts_ns").iter_rows(named=True))
        return out

    def _fan_out(self, row: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(row)


__all__ = ["SignalWatcher"]
