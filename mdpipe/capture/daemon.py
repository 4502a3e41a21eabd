"""The capture daemon: websocket frames -> raw journal + normalized lake tables, continuously.

Data path (one asyncio loop, one flush thread)::

    ccxt websocket client --tap--> pending lines (recv ns, raw text)      [connection.py]
      every batch_interval_s:  normalizer.feed(lines) -> Batch (trades, book, gaps, bbo)
                               -> crossed-book check after every update -> per-symbol resync
                               -> callbacks and event consumers (online engine) [absorb.py]
      every flush_interval_s:  journal member (gzip, fsync) then Parquet publish (atomic)
      once an hour is over:    roll-up of each partition's files of that hour into one file
                                                                          [publisher.py]
      after each flush (s3://): finished spool files -> one PUT each, oldest first [uploader.py]

A lake at ``s3://bucket/prefix`` is written through a local spool (``<spool>/<writer id>/``,
itself a local lake) that `uploader.Uploader` empties; roll-ups of such a lake belong to the
Dagster compaction job (mdpipe/defs/compaction.py), not to capture.

`Capture` composes the parts and owns only start/stop, the batch loop and the seeding from the
lake: `connection.Connection` (subscribe, watchdog, reconnect backoff, make-before-break),
`absorb.Absorber` (pending lines -> normalizer -> crossed-book checks -> status, callbacks,
consumers, publisher), `publisher.Publisher` (outbox, flushes, roll-ups), `rest.Rest`
(snapshots, trade backfill, clock) and `status.Status`, the one counter API behind /stats,
/health and Prometheus, served by `http.serve_status`. The parts know each other only through
the callables handed to them here.

Everything venue-specific (stream names, subscribe messages, frame routing, REST endpoints,
sequence rules, message parsing) is behind the venue's `Venue`, `Transport` and `Normalizer`
(mdpipe/venues/base.py).

Waiting on a capture (tests, embedding code): `await cap.idle()` (nothing pending, no snapshot
or backfill in flight, every book synced) or `await cap.events.wait_for(predicate)` over its
public state (`status`, `synced()`, `backfills_running`, `unpublished`); never on a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ccxt
import polars as pl

from mdpipe.capture.absorb import Absorber, BatchConsumer, BookCallback, BookView, TradeCallback
from mdpipe.capture.config import CaptureConfig, effective_writer_id
from mdpipe.capture.connection import Connection
from mdpipe.capture.http import serve_status
from mdpipe.capture.publisher import Publisher
from mdpipe.capture.rest import Rest
from mdpipe.capture.status import Episode, Events, Status
from mdpipe.capture.transport import make_exchange
from mdpipe.capture.uploader import Uploader
from mdpipe.lake import SCHEMAS, JournalWriter, Lake
from mdpipe.venues import Batch, Normalizer, Transport
from mdpipe.venues import get as get_venue

log = logging.getLogger("mdpipe.capture")

BACKFILL_STOP_WAIT_S = 5.0  # stop() lets running backfills finish for this long, then cancels


class Capture:
    """A running capture of one venue's symbols into a lake.

    Usable from Python as a stream object::

        cap = Capture(CaptureConfig(symbols=("BTC/USDT",), lake="lake"))
        cap.register_book_callback(lambda book: ...)    # after each applied update, synced only
        cap.register_trade_callback(lambda trade: ...)  # each trade, in arrival order
        await cap.start(); ...; await cap.stop()

    `consumers` (or `register_consumer`) receive every normalized Batch: the hook for the online
    detector engine, which turns batches into `live/signals`.
    """

    def __init__(
        self,
        config: CaptureConfig,
        *,
        consumers: Sequence[BatchConsumer] = (),
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.venue = config.venue
        # everything venue-specific goes through these three (mdpipe/venues/base.py)
        self.plugin = get_venue(config.venue)
        self.transport = transport or self.plugin.transport(
            config.ws_url, config.rest_url, config.channels
        )
        # the lake the data is for; an object-store lake is written through a local spool
        # (a local lake per writer id) that the uploader empties (uploader.py)
        self.target = Lake.resolve(config.lake)
        self.writer_id = effective_writer_id(config, self.target.remote)
        self.lake = (
            Lake(Path(config.spool).absolute() / self.writer_id)
            if self.target.remote
            else self.target
        )
        self.normalizer: Normalizer = self.plugin.normalizer()
        self.status = Status(config.venue, config.symbols)
        self.status.queue_depth = lambda: self.absorber.pending + self.publisher.lines_waiting
        # wake-ups for callers waiting on the capture's state (see idle() and Events)
        self.events: Events = self.status.events
        self.journal = JournalWriter(
            self.lake.root, config.venue, fsync=config.fsync, writer_id=self.writer_id
        )
        self.uploader = (
            Uploader(self.lake, self.target, self.journal, self.status)
            if self.target.remote
            else None
        )
        self._upload_task: asyncio.Task[int] | None = None
        if self.uploader is not None:
            up = self.uploader
            self.status.spool = lambda: (up.state.files, up.state.bytes, up.state.oldest_age_s)
        self._ex: Any = None
        self._markets: dict[str, dict[str, Any]] = {}
        self._market_keys: dict[str, str] = {}  # unified symbol -> the venue's stream key
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: Any = None
        self.metrics_port: int | None = None
        # the parts. depth_seen: markets with a depth frame on the current connection (the
        # absorber adds, the connection resets, the REST resync scheduler reads)
        depth_seen: set[str] = set()
        self.publisher = Publisher(config, self.lake, self.journal, self.status)
        self.publisher.writer_id = self.writer_id
        # roll-ups of an object-store lake belong to the Dagster compaction job, not capture
        self.publisher.compact_hourly = config.compact_hourly and not self.target.remote
        self.absorber = Absorber(
            config,
            self.plugin,
            self.normalizer,
            self.status,
            self.publisher,
            backfill=lambda sym, first, last, ts: self.rest.start_backfill(sym, first, last, ts),
            depth_seen=depth_seen,
            consumers=list(consumers),
        )
        self.connection = Connection(
            config,
            self.transport,
            self.status,
            inbox=self.absorber.receive,
            drain=self.absorber.process_pending,
            lost=self._connection_lost,
            depth_market=self.plugin.depth_market,
            depth_seen=depth_seen,
        )
        # REST snapshot lines enter where the connection's frames do (and count as traffic)
        self.rest = Rest(
            config,
            self.transport,
            self.normalizer,
            self.status,
            self.publisher,
            self.connection.on_raw,
        )
        self.rest.markets = self._markets
        self.rest.market_keys = self._market_keys

    # ---- public API --------------------------------------------------------------------------

    def register_book_callback(self, fn: BookCallback) -> None:
        self.absorber.book_callbacks.append(fn)

    def register_trade_callback(self, fn: TradeCallback) -> None:
        self.absorber.trade_callbacks.append(fn)

    def register_consumer(self, fn: BatchConsumer) -> None:
        self.absorber.consumers.append(fn)

    @property
    def roll_period_s(self) -> float:
        """The period whose files are rolled up into one: an hour. Tests shorten it (it must
        divide an hour, so a period never spans two `THH` name prefixes)."""
        return self.publisher.roll_period_s

    @roll_period_s.setter
    def roll_period_s(self, seconds: float) -> None:
        self.publisher.roll_period_s = seconds

    async def start(self) -> None:
        self.status.started_ns = time.time_ns()
        self._ex = make_exchange(self.transport, self.connection.on_raw, self.connection.on_control)
        self.rest.ex = self.connection.ex = self._ex
        attempt = 0
        while True:
            try:
                await self._ex.load_markets()
                break
            except ccxt.NetworkError as exc:
                # a daemon started before the network (or the exchange) is up waits for it
                delay = self.backoff_s(attempt)
                attempt += 1
                log.warning("loading markets failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        missing = [s for s in self.config.symbols if s not in self._ex.markets]
        if missing:
            await self._ex.close()
            raise ValueError(
                f"{self.venue} has no market {missing}; known e.g. {sorted(self._ex.markets)[:10]}"
            )
        for s in self.config.symbols:
            m = self._ex.market(s)
            self._markets[s] = m
            self._market_keys[s] = self.transport.market_key(m)
            size = m.get("contractSize")
            if m.get("inverse") and size:
                # inverse contracts: sizes are contracts of `contractSize` USD (COIN-M); the
                # market's own metadata, so a new listing needs no table entry
                self.normalizer.set_contract_size(s, float(size))
        self.absorber.set_markets(self._market_keys)
        self.connection.streams = [
            n for s in self.config.symbols for n in self.transport.stream_names(self._markets[s])
        ]
        self.connection.depth_keys = set(self._market_keys.values())
        self._seed_from_lake()
        self.absorber.warm_up()
        self.publisher.start()
        self._start_upload()  # what a previous run left in the spool goes first
        await self.rest.sync_clock()
        if self.config.metrics_port is not None:
            self._metrics_runner, self.metrics_port = await serve_status(
                self.config.metrics_host,
                self.config.metrics_port,
                self.status.registry,
                self.health,
                self.get_stats,
            )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.connection.run(), name="capture-connection"),
            loop.create_task(self._process_loop(), name="capture-process"),
            loop.create_task(self.rest.clock_loop(), name="capture-clock"),
        ]

    async def stop(self) -> None:
        """Close the websocket, normalize what was received, flush everything, exit cleanly."""
        if self._stopping:
            return
        self._stopping = self.rest.stopping = self.connection.stopping = True
        for t in self._tasks:
            t.cancel()
        snapshots = self.rest.cancel_snapshots()
        await asyncio.gather(*self._tasks, *snapshots, return_exceptions=True)
        await self.connection.unsubscribe_and_close()
        self.absorber.process_pending()  # holes found from here on are recorded as not backfilled
        if self.rest.backfill_tasks:
            # running backfills get a moment to finish; the rest record how far they got
            _, running = await asyncio.wait(self.rest.backfill_tasks, timeout=BACKFILL_STOP_WAIT_S)
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await self.publisher.close()
        if self.uploader is not None:
            # the journal file being appended is finished now: one last pass uploads it too;
            # with the store unreachable the files wait in the spool for the next start
            self.journal.close()
            if self._upload_task is not None:
                await asyncio.gather(self._upload_task, return_exceptions=True)
            await asyncio.to_thread(self.uploader.upload_pass)
        if self._ex is not None:
            with contextlib.suppress(Exception):
                await self._ex.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.connection.set_connected(False)

    async def run_until_signal(self) -> None:
        """Start, run until SIGINT/SIGTERM, then stop (flushing) and return."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            # a signal while start() still waits for the exchange must end the process too
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

    @property
    def registry(self) -> Any:
        """The Prometheus registry /metrics serves (the online engine adds its metrics here)."""
        return self.status.registry

    @property
    def episodes(self) -> deque[Episode]:
        return self.status.episodes

    @property
    def pending_lines(self) -> int:
        """Lines received and not yet normalized."""
        return self.absorber.pending

    @property
    def unpublished(self) -> bool:
        """True while normalized rows or raw lines wait for a flush."""
        return self.publisher.unpublished

    @property
    def backfills_running(self) -> int:
        return len(self.rest.backfill_tasks)

    def synced(self, symbol: str) -> bool:
        """True when `symbol`'s book is synced (a snapshot bridged to the stream, no gap since)."""
        return self.normalizer.is_synced(symbol)

    def is_idle(self, *, synced: bool = True, published: bool = False) -> bool:
        """Nothing received waits for the normalizer, no snapshot is in flight, no backfill runs,
        and (`synced`) every book is synced, (`published`) everything is on disk (for an
        object-store lake: in the spool; `uploader.state` says what still waits for upload)."""
        return (
            not self.absorber.pending
            and not self.rest.snapshot_tasks
            and not self.rest.backfill_tasks
            and (not synced or all(self.synced(s) for s in self.config.symbols))
            and (not published or not self.unpublished)
        )

    async def idle(
        self, *, synced: bool = True, published: bool = False, timeout: float | None = 60.0
    ) -> None:
        """Wait until `is_idle(...)` holds (woken by the capture's events, never by a clock)."""
        await self.events.wait_for(
            lambda: self.is_idle(synced=synced, published=published), timeout
        )

    def hold_dials(self) -> None:
        """Open no new websocket connection until `release_dials()` (an outage of the length a
        test or an operator chooses; the current connection is not touched)."""
        self.connection.hold_dials()

    def release_dials(self) -> None:
        self.connection.release_dials()

    def backoff_s(self, attempt: int) -> float:
        """The reconnect delay before retry `attempt` (mdpipe.retry.backoff_s, configured)."""
        return self.connection.backoff_s(attempt)

    def get_stats(self) -> dict[str, Any]:
        return self.status.as_dict(
            {
                "journal_files": [str(p) for p in self.journal.files_written],
                "journal_lines": self.journal.lines_written,
                "backfill": {"running": len(self.rest.backfill_tasks)},
            }
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): healthy while connected, every depth stream fresh, every book synced."""
        return self.status.health(self.config.stale_after_s)

    def _seed_from_lake(self) -> None:
        """A restart continues where the lake ends: the last trade id seeds trade-gap detection,
        and a `reconnect` gap row says the book was not followed between the two runs."""
        ts = time.time_ns()
        rows = []
        for sym in self.config.symbols:
            lake, dates = self.lake, self.lake.dates(self.venue, sym, "trades")
            if not dates and self.target.remote:
                # nothing in the spool: the object store has the previous run's data
                try:
                    lake, dates = self.target, self.target.dates(self.venue, sym, "trades")
                except Exception as exc:  # unreachable: capture starts all the same
                    log.warning("cannot read %s to seed %s (%s)", self.target.url, sym, exc)
            if not dates:
                continue
            last_trade = (
                lake.scan("trades", self.venue, sym, dates[-1])
                .select(pl.col("trade_id").max())
                .collect()
                .item()
            )
            bdates = lake.dates(self.venue, sym, "book")
            last_u = (
                lake.scan("book", self.venue, sym, bdates[-1])
                .select(pl.col("update_id").max())
                .collect()
                .item()
                if bdates
                else None
            )
            if last_trade is not None:
                self.normalizer.seed_last_trade_id(sym, int(last_trade))
            rows.append(
                {
                    "venue": self.venue,
                    "symbol": sym,
                    "ts_ns": ts,
                    "kind": "reconnect",
                    "detail": (
                        f"capture started after an earlier run (its last trade id {last_trade}, "
                        f"last book update id {last_u}); book unknown until the next snapshot"
                    ),
                    "prev_update_id": last_u,
                    "next_update_id": None,
                }
            )
        if rows:
            b = Batch()
            b.add("gaps", pl.DataFrame(rows, schema=SCHEMAS["gaps"]))
            self.absorber.absorb(b)

    # ---- processing --------------------------------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.batch_interval_s)
            self.absorber.process_pending()
            self.rest.schedule_resyncs(self.absorber.depth_seen)
            self.events.notify()
            if self.publisher.due():
                await self.publisher.flush()
                self.publisher.maybe_compact()
                self._start_upload()

    def _start_upload(self) -> None:
        """One upload pass in a worker thread, unless one is running (never awaited by the
        loop: an unreachable store must not hold up journaling and publishing)."""
        if self.uploader is None or (self._upload_task and not self._upload_task.done()):
            return
        self._upload_task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self.uploader.upload_pass), name="capture-upload"
        )

    def _connection_lost(self, reason: str, detail: str) -> None:
        """After an unplanned end of the connection (its lines already normalized): no snapshot
        of the old stream is of use any more, and every book gets a gap row and resyncs."""
        self.rest.cancel_snapshots()
        kind = "stale" if reason == "stale" else "reconnect"
        self.absorber.resync_all(time.time_ns(), f"{reason}: {detail}", kind)


__all__ = [
    "BatchConsumer",
    "BookCallback",
    "BookView",
    "Capture",
    "CaptureConfig",
    "Episode",
    "TradeCallback",
]
