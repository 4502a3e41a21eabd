"""Several venues in one capture process: `mdpipe capture --markets binance:BTC/USDT,
binanceusdm:BTC/USDT:USDT,binancecoinm:BTC/USD:BTC`.

One :class:`~mdpipe.capture.daemon.Capture` per venue, each with its own connection, book sync,
gaps, journal (``raw/venue=<venue>/``) and health, composed here behind the same small surface
a single capture has (`start`, `stop`, `run_until_signal`, `idle`, `health`, `get_stats`,
`registry`, `register_consumer`, `lake`, `venue`). Batch consumers, the online engine above
all, are registered on every venue's capture, so one engine sees every market's batches.

One metrics server serves all of them: every capture metric carries a ``venue`` label, so the
venues' registries merge into one exposition (:class:`MergedCollector`) without clashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from mdpipe.capture.absorb import BatchConsumer
from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.daemon import Capture
from mdpipe.capture.http import serve_status
from mdpipe.capture.status import Events
from mdpipe.lake import Lake


class MergedCollector(Collector):
    """The metric families of several registries as one: samples of families of the same
    name (the venues' copies of one metric, told apart by their ``venue`` label) are joined."""

    def __init__(self, registries: Sequence[CollectorRegistry]) -> None:
        self.registries = list(registries)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for reg in self.registries:
            for fam in reg.collect():
                have = merged.get(fam.name)
                if have is None:
                    merged[fam.name] = fam
                else:
                    have.samples.extend(fam.samples)
        return list(merged.values())


class MultiCapture:
    """A capture of several venues (see the module docstring)."""

    def __init__(self, config: CaptureConfig, *, consumers: Sequence[BatchConsumer] = ()) -> None:
        self.config = config
        venues = config.by_venue()
        if len(venues) < 2:
            raise ValueError("MultiCapture is for several venues; use Capture for one")
        self.captures: dict[str, Capture] = {
            v: Capture(config.for_venue(v), consumers=consumers) for v in venues
        }
        self.lake = Lake.resolve(config.lake)
        self.venue = ",".join(self.captures)  # the label of engine-wide metrics
        self.registry = CollectorRegistry()
        self.registry.register(MergedCollector([c.registry for c in self.captures.values()]))
        # one Events that wakes waiters on any venue's change
        self.events = Events()
        for c in self.captures.values():
            c.events.forward_to(self.events)
        self._metrics_runner: Any = None
        self.metrics_port: int | None = None

    def register_consumer(self, fn: BatchConsumer) -> None:
        for c in self.captures.values():
            c.register_consumer(fn)

    async def start(self) -> None:
        started: list[Capture] = []
        try:
            for c in self.captures.values():
                await c.start()
                started.append(c)
        except BaseException:
            for c in started:
                await c.stop()
            raise
        if self.config.metrics_port is not None:
            self._metrics_runner, self.metrics_port = await serve_status(
                self.config.metrics_host,
                self.config.metrics_port,
                self.registry,
                self.health,
                self.get_stats,
            )

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.captures.values()))
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stopping
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            stopping.cancel()
            await self.stop()

    def is_idle(self, *, synced: bool = True, published: bool = False) -> bool:
        return all(c.is_idle(synced=synced, published=published) for c in self.captures.values())

    async def idle(
        self, *, synced: bool = True, published: bool = False, timeout: float | None = 60.0
    ) -> None:
        await self.events.wait_for(
            lambda: self.is_idle(synced=synced, published=published), timeout
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when every venue is; the body has each venue's own /health body."""
        parts = {v: c.health() for v, c in self.captures.items()}
        ok = all(h for h, _ in parts.values())
        return ok, {"healthy": ok, "venues": {v: body for v, (_, body) in parts.items()}}

    def get_stats(self) -> dict[str, Any]:
        per = {v: c.get_stats() for v, c in self.captures.items()}
        total = {
            k: sum(s[k] for s in per.values())
            for k in ("messages_total", "gaps_total", "reconnects_total")
        }
        trades: dict[str, int] = {}
        files: dict[str, int] = {}
        for v, s in per.items():
            trades.update({f"{v}:{sym}": n for sym, n in s["trades"].items()})
            for table, n in s["files_published"].items():
                files[table] = files.get(table, 0) + n
        return {**total, "trades": trades, "files_published": files, "venues": per}


def make_capture(
    config: CaptureConfig, *, consumers: Sequence[BatchConsumer] = ()
) -> Capture | MultiCapture:
    """The capture `config` describes: one venue's `Capture`, or a `MultiCapture`."""
    venues = config.by_venue()
    if len(venues) == 1:
        return Capture(config.for_venue(next(iter(venues))), consumers=consumers)
    return MultiCapture(config, consumers=consumers)


__all__ = ["MergedCollector", "MultiCapture", "make_capture"]
