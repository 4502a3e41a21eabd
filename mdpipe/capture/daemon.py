"""The capture daemon: websocket frames -> raw journal + normalized lake tables, continuously.

Data path (one asyncio loop, one flush thread)::

    ccxt websocket client --tap--> pending lines (recv ns, raw text)      [transport.py]
      every batch_interval_s:  normalizer.feed(lines) -> Batch (trades, book, gaps, bbo)
                               -> crossed-book check after every update -> per-symbol resync
                               -> callbacks and event consumers (online engine)
      every flush_interval_s:  journal member (gzip, fsync) then Parquet publish (atomic)
      once an hour is over:    roll-up of each partition's files of that hour into one file

Everything venue-specific (stream names, subscribe messages, frame routing, REST endpoints,
sequence rules, message parsing) is behind the venue's `Venue`, `Transport` and `Normalizer`
(mdpipe/venues/base.py). REST depth snapshots enter the same pending queue as the frames,
wrapped by the transport so that the line names its market (`wrap_snapshot`), so the journal
replays to the same lake through `mdpipe import`. Because the journal is written before the
Parquet files of the same interval, a SIGKILL loses at most the last flush interval and never
leaves lake rows without their raw lines.

Trade backfill. A trade-id hole the normalizer reports (`sequence_gap`, "trade ids A..B") starts
a background task that fetches A..B over the venue's REST trade history (ccxt's rate limiter,
Retry-After on 429/418), normalizes them with the normalizer's `rest_trades` and queues them for
the lake; a `backfill` gaps row records the outcome. REST trade answers are not journaled (the
import reproduces the gap row, not the backfill).

Roll-up ("compaction"). Flushes name files `cap-YYYYMMDDTHH-<publish ns>.parquet`; a day of them
is ~17,000 small files per partition. Once the flush that took the flush lock after an hour's end
has finished, no file of that hour can still appear (names use publish time, never decrease, and
every earlier flush has completed), so a background thread merges each partition's files of the
hour into one roll-up (`Lake.compact`: `<first file's stem>-to-<last ns>.parquet`, which sorts
where the first file did). One roll-up pass at a time, off the event loop; at start, one pass over
the capture's partitions finishes interrupted roll-ups and rolls up past hours a previous run
left. See mdpipe/lake/store.py for the crash window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ccxt
import polars as pl

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.status import Episode, Events, Status
from mdpipe.capture.transport import make_exchange
from mdpipe.core.book import L2Book
from mdpipe.lake import SCHEMAS, JournalWriter, Lake, Partition, split_by_date
from mdpipe.retry import backoff_s, retry_after_s
from mdpipe.venues import Batch, Normalizer, RawLines, StreamRoute, Transport, UnknownStream
from mdpipe.venues import get as get_venue
from mdpipe.venues.base import TRADE_GAP_PREFIX

log = logging.getLogger("mdpipe.capture")

TABLES = ("trades", "book", "gaps", "bbo", "agg_trades")
FILE_PREFIX = "cap-"  # capture's sequence-named files: cap-YYYYMMDDTHH-<19-digit ns>.parquet
HOUR_NS = 3600 * 1_000_000_000
BACKFILL_ATTEMPTS = 6  # failed requests in a row before a backfill gives up (each one backs off)
BACKFILL_STOP_WAIT_S = 5.0  # stop() lets running backfills finish for this long, then cancels


class BookView:
    """A synced L2 book handed to book callbacks; sorted lazily, only if asked."""

    __slots__ = ("asks", "bids", "exch_ts_ns", "recv_ts_ns", "symbol", "update_id")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.update_id = 0
        self.exch_ts_ns = 0
        self.recv_ts_ns = 0

    def best_bid(self) -> tuple[float, float] | None:
        if not self.bids:
            return None
        p = max(self.bids)
        return p, self.bids[p]

    def best_ask(self) -> tuple[float, float] | None:
        if not self.asks:
            return None
        p = min(self.asks)
        return p, self.asks[p]

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        b = sorted(self.bids.items(), reverse=True)[:n]
        a = sorted(self.asks.items())[:n]
        return b, a


BookCallback = Callable[[BookView], None]
TradeCallback = Callable[[dict[str, Any]], None]
BatchConsumer = Callable[[Batch], None]


@dataclass
class _CompactionResult:
    compactions: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    covered_removed: int = 0
    errors: int = 0
    failed: list[Partition] = field(default_factory=list)  # retried by the next pass
    complete: bool = True  # False when stopped part way


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
        self.lake = Lake.resolve(config.lake)
        self.normalizer: Normalizer = self.plugin.normalizer()
        self.status = Status(config.venue, config.symbols)
        self.status.queue_depth = lambda: len(self._p_ns) + len(self._u_ns)
        # wake-ups for callers waiting on the capture's state (see idle() and Events)
        self.events: Events = self.status.events
        self.journal = JournalWriter(self.lake.root, config.venue, fsync=config.fsync)
        self._book_callbacks: list[BookCallback] = []
        self._trade_callbacks: list[TradeCallback] = []
        self._consumers: list[BatchConsumer] = list(consumers)
        self._books: dict[str, BookView] = {}
        self._cross_book: L2Book | None = None  # replays each batch's book rows (lazily made)
        # pending: received, not yet normalized; unflushed: normalized, not yet on disk
        self._p_ns: list[int] = []
        self._p_text: list[str] = []
        self._u_ns: list[int] = []
        self._u_text: list[str] = []
        self._acc = Batch()
        self._line_no = 0
        self._last_rx_mono = time.monotonic()
        self._stream_last_ns: dict[str, int] = {}
        self._depth_seen: set[str] = set()  # symbols with a depth frame on this connection
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._backfill_tasks: set[asyncio.Task[None]] = set()
        self._ex: Any = None
        self._markets: dict[str, dict[str, Any]] = {}
        self._market_keys: dict[str, str] = {}  # unified symbol -> the venue's stream key
        self._symbol_of_key: dict[str, str] = {}
        self._routes: dict[str, StreamRoute | None] = {}  # stream label -> route (None: not one)
        self._dials_open = asyncio.Event()  # cleared by hold_dials(): no new connection
        self._dials_open.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._flush_lock = asyncio.Lock()
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._last_flush_mono = time.monotonic()
        self._name_ns = 0
        # roll-up: the period files are merged by (an hour; tests shorten it, see roll_period_s)
        self._roll_ns = HOUR_NS
        self._lock_ns = 0  # wall time the flush lock was last taken: names below it are final
        self._dirty: dict[Partition, int] = {}  # partition -> newest file name ns published
        self._compact_task: asyncio.Task[None] | None = None
        self._compact_stop = threading.Event()
        self._metrics_runner: Any = None
        self.metrics_port: int | None = None
        self._conn_url: str | None = None
        self._slot = 0
        self._primary: Any = None
        self._standby: Any = None
        self._overlap: set[str] | None = None
        self._standby_ns: list[int] = []
        self._standby_text: list[str] = []
        self._standby_depth: set[str] = set()
        self._seam: set[str] | None = None
        self._seam_until = 0.0

    # ---- public API --------------------------------------------------------------------------

    def register_book_callback(self, fn: BookCallback) -> None:
        self._book_callbacks.append(fn)

    def register_trade_callback(self, fn: TradeCallback) -> None:
        self._trade_callbacks.append(fn)

    def register_consumer(self, fn: BatchConsumer) -> None:
        self._consumers.append(fn)

    @property
    def roll_period_s(self) -> float:
        """The period whose files are rolled up into one: an hour. Tests shorten it (it must
        divide an hour, so a period never spans two `THH` name prefixes)."""
        return self._roll_ns / 1e9

    @roll_period_s.setter
    def roll_period_s(self, seconds: float) -> None:
        ns = round(seconds * 1e9)
        if ns <= 0 or HOUR_NS % ns:
            raise ValueError(f"roll_period_s must divide 3600 s, got {seconds!r}")
        self._roll_ns = ns

    async def start(self) -> None:
        self.status.started_ns = time.time_ns()
        self._ex = make_exchange(self.transport, self._on_raw, self._on_control)
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
            self._symbol_of_key[self._market_keys[s]] = s
        self._seed_from_lake()
        self._name_ns = max(self._name_ns, self._lake_name_floor())
        # load the crossed-book replay's compiled code now rather than inside the first batch
        self._cross_book = L2Book()
        self._cross_book.first_crossed(
            None,
            pl.DataFrame(
                {"update_id": [1], "is_snapshot": [True], "side": ["bid"], "price": [1.0]}
            ).with_columns(qty=pl.lit(1.0)),
        )
        if self.config.compact_hourly:
            # finish interrupted roll-ups and roll up the hours a previous run left behind
            now = time.time_ns()
            parts = [
                p
                for t in TABLES
                for sym in self.config.symbols
                for p in self.lake.partition_dirs(t, self.venue, sym)
            ]
            self._start_compaction(parts, now - now % self._roll_ns)
        await self._sync_clock()
        if self.config.metrics_port is not None:
            await self._start_metrics_server()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._connection_loop(), name="capture-connection"),
            loop.create_task(self._process_loop(), name="capture-process"),
            loop.create_task(self._clock_loop(), name="capture-clock"),
        ]

    async def stop(self) -> None:
        """Close the websocket, normalize what was received, flush everything, exit cleanly."""
        if self._stopping:
            return
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in list(self._snapshot_tasks.values()):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._snapshot_tasks.values(), return_exceptions=True)
        await self._unsubscribe_and_drain()
        await self._teardown_client()
        self._process_pending()  # holes found from here on are recorded as not backfilled
        if self._backfill_tasks:
            # running backfills get a moment to finish; the rest record how far they got
            _, running = await asyncio.wait(self._backfill_tasks, timeout=BACKFILL_STOP_WAIT_S)
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        for attempt in range(5):
            await self._flush()
            if not self._u_ns and not self._acc.tables:
                break
            await asyncio.sleep(0.2 * (attempt + 1))  # a failed last flush gets a few retries
        else:
            log.error(
                "exiting with %d raw lines and %s rows unwritten (every flush failed)",
                len(self._u_ns),
                {t: df.height for t, df in self._acc.tables.items()},
            )
        if self._compact_task is not None:
            # a pass stops between partitions; what it left is finished by the next start
            self._compact_stop.set()
            await asyncio.gather(self._compact_task, return_exceptions=True)
        if self._ex is not None:
            with contextlib.suppress(Exception):
                await self._ex.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self._set_connected(False)

    async def _unsubscribe_and_drain(self, timeout_s: float = 2.0) -> None:
        """UNSUBSCRIBE and wait for its answer: the exchange answers after every frame it sent
        before, so nothing already on the wire is lost by closing."""
        client = self._primary
        if client is None or self._ex is None or client.closed():
            return
        streams = [
            n for s in self.config.symbols for n in self.transport.stream_names(self._markets[s])
        ]
        req = self.transport.unsubscribe_request(self._ex, client.url, streams)
        fut = client.future(f"mdpipe:sub:{req.request_id}")
        try:
            await client.send(req.message)
            await asyncio.wait_for(fut, timeout_s)
        except (TimeoutError, Exception) as exc:
            log.warning("no answer to UNSUBSCRIBE before closing (%s)", exc)

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
        return len(self._p_ns)

    @property
    def unpublished(self) -> bool:
        """True while normalized rows or raw lines wait for a flush."""
        return bool(self._u_ns or self._acc.tables)

    @property
    def backfills_running(self) -> int:
        return len(self._backfill_tasks)

    def synced(self, symbol: str) -> bool:
        """True when `symbol`'s book is synced (a snapshot bridged to the stream, no gap since)."""
        return self.normalizer.is_synced(symbol)

    def is_idle(self, *, synced: bool = True, published: bool = False) -> bool:
        """Nothing received waits for the normalizer, no snapshot is in flight, no backfill runs,
        and (`synced`) every book is synced, (`published`) everything is on disk."""
        return (
            not self._p_ns
            and not self._snapshot_tasks
            and not self._backfill_tasks
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
        self._dials_open.clear()

    def release_dials(self) -> None:
        self._dials_open.set()

    def backoff_s(self, attempt: int) -> float:
        """The reconnect delay before retry `attempt` (mdpipe.retry.backoff_s, configured)."""
        return backoff_s(attempt, self.config.reconnect_initial_s, self.config.reconnect_max_s)

    def get_stats(self) -> dict[str, Any]:
        return self.status.as_dict(
            {
                "journal_files": [str(p) for p in self.journal.files_written],
                "journal_lines": self.journal.lines_written,
                "backfill": {"running": len(self._backfill_tasks)},
            }
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): healthy while connected, every depth stream fresh, every book synced."""
        return self.status.health(self.config.stale_after_s)

    def _set_connected(self, connected: bool) -> None:
        self.status.connected = connected
        self.events.notify()

    def _backfill_done(self, task: asyncio.Task[None]) -> None:
        self._backfill_tasks.discard(task)
        self.events.notify()

    def _seed_from_lake(self) -> None:
        """A restart continues where the lake ends: the last trade id seeds trade-gap detection,
        and a `reconnect` gap row says the book was not followed between the two runs."""
        ts = time.time_ns()
        rows = []
        for sym in self.config.symbols:
            dates = self.lake.dates(self.venue, sym, "trades")
            if not dates:
                continue
            last_trade = (
                self.lake.scan("trades", self.venue, sym, dates[-1])
                .select(pl.col("trade_id").max())
                .collect()
                .item()
            )
            bdates = self.lake.dates(self.venue, sym, "book")
            last_u = (
                self.lake.scan("book", self.venue, sym, bdates[-1])
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
            self._absorb(b)

    # ---- transport callbacks (synchronous, inside ccxt's receive loop) -----------------------

    def _on_raw(self, recv_ns: int, text: str, client: Any = None) -> None:
        if client is None or client is self._primary:
            if self._seam is not None and client is not None:
                # just after a switch the new connection may still deliver events the old one
                # already gave us (it was behind); they are dropped here, once each
                if text in self._seam:
                    self._seam.discard(text)
                    return
                if time.monotonic() > self._seam_until:
                    self._seam = None
            self._p_ns.append(recv_ns)
            self._p_text.append(text)
            self._last_rx_mono = time.monotonic()
            if self._overlap is not None:
                self._overlap.add(text)
        elif client is self._standby:
            self._standby_ns.append(recv_ns)
            self._standby_text.append(text)
            key = self.plugin.depth_market(text)
            if key is not None:
                self._standby_depth.add(key)
        # else: a retired connection closing; everything it still delivers, the new one has

    def _on_control(self, client: Any, msg: dict[str, Any]) -> None:
        answer = self.transport.control_answer(msg)
        if answer is None:
            return
        h = f"mdpipe:sub:{answer.request_id}"
        if answer.error is not None:
            client.reject(ccxt.ExchangeError(answer.error), h)
        else:
            client.resolve(True, h)

    # ---- connection --------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt = 0
        need_connect = True
        while not self._stopping:
            reason = "error"
            detail = ""
            try:
                opened = time.monotonic()
                got_data_before = self.status.messages.total()
                if need_connect:
                    await self._dials_open.wait()
                    await self._connect_and_subscribe()
                need_connect = True
                self._set_connected(True)
                reason, detail = await self._wait_connection_end(opened)
                if self.status.messages.total() > got_data_before:
                    attempt = 0
                if reason == "planned" and await self._make_before_break(detail):
                    need_connect = False
                    attempt = 0
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every transport failure leads to a reconnect
                reason, detail = "error", f"{type(exc).__name__}: {exc}"
            self._set_connected(False)
            if self._stopping:
                return
            await self._teardown_client()
            self._on_disconnect(reason, detail)
            delay = 0.0 if reason == "planned" else self.backoff_s(attempt)
            attempt += 1
            log.warning("reconnecting in %.2f s after %s: %s", delay, reason, detail)
            await asyncio.sleep(delay)

    async def _subscribe(self, url: str) -> tuple[Any, Any]:
        """Open (or reuse) the ccxt client of `url` and send one SUBSCRIBE for every stream;
        returns the client and the future resolved by the exchange's answer."""
        ex = self._ex
        streams = [
            n for s in self.config.symbols for n in self.transport.stream_names(self._markets[s])
        ]
        req = self.transport.subscribe_request(ex, url, streams)
        h = f"mdpipe:sub:{req.request_id}"
        # our own backoff governs redials; ccxt's per-url dial backoff would stack on top of it
        if getattr(ex, "ws_dial_backoff", None):
            ex.ws_dial_backoff.pop(url, None)
        fut = ex.watch_multiple(url, [h], req.message, [h], {"id": req.request_id})
        return ex.clients[url], fut

    async def _make_before_break(self, detail: str) -> bool:
        """Replace the connection without a hole: subscribe a second connection, wait until it
        streams every symbol's depth, then switch. Frames both connections received are kept
        once (identical events are byte-identical frames); the normalizer's sequence checks
        still guard the seam, and a gap there would resync as usual."""
        old_url, old_client = self._conn_url, self._primary
        self._slot ^= 1
        url = self.transport.ws_endpoint(self._ex, self._slot)
        self._overlap = set()
        self._standby_ns, self._standby_text, self._standby_depth = [], [], set()
        try:
            client, fut = await self._subscribe(url)
            self._standby = client
            await asyncio.wait_for(fut, timeout=self.config.connect_timeout_s)
            want = {self._market_keys[s] for s in self.config.symbols}
            deadline = time.monotonic() + self.config.connect_timeout_s
            while not want <= self._standby_depth:
                if time.monotonic() > deadline or client.closed():
                    raise TimeoutError("the new connection delivered no depth for every symbol")
                await asyncio.sleep(0.01)
        except (TimeoutError, Exception) as exc:
            log.warning("make-before-break failed (%s); falling back to a plain reconnect", exc)
            self._standby = None
            self._overlap = None
            bad = self._ex.clients.pop(url, None)
            if bad is not None:
                with contextlib.suppress(Exception):
                    await bad.close()
            self._slot ^= 1
            return False
        # the switch itself: no await from here until the old client is detached
        self._process_pending()
        seen = self._overlap
        keep = [
            (n, t)
            for n, t in zip(self._standby_ns, self._standby_text, strict=True)
            if t not in seen
        ]
        dup = len(self._standby_text) - len(keep)
        self._seam = seen.difference(self._standby_text)
        self._seam_until = time.monotonic() + self.config.connect_timeout_s
        self._primary, self._conn_url = client, url
        self._standby, self._overlap = None, None
        self._standby_ns, self._standby_text = [], []
        for n, t in keep:
            self._p_ns.append(n)
            self._p_text.append(t)
        self._depth_seen |= self._standby_depth
        self._last_rx_mono = time.monotonic()
        self._ex.clients.pop(old_url, None)
        self.status.reconnects.inc("planned")
        ep = self.status.episode(
            "planned_reconnect",
            "*",
            f"{detail}; switched to {url} "
            f"({len(keep)} new frames after the seam, {dup} duplicates dropped)",
            resolved=True,
        )
        log.info("%s", ep.detail)
        if old_client is not None:
            with contextlib.suppress(Exception):
                await old_client.close()
        return True

    async def _connect_and_subscribe(self) -> None:
        url = self.transport.ws_endpoint(self._ex, self._slot)
        self._conn_url = url
        self._depth_seen.clear()
        client, fut = await self._subscribe(url)
        self._primary = client
        await asyncio.wait_for(fut, timeout=self.config.connect_timeout_s)
        self._last_rx_mono = time.monotonic()
        log.info("subscribed on %s", url)

    async def _wait_connection_end(self, opened: float) -> tuple[str, str]:
        client = self._ex.clients.get(self._conn_url)
        if client is None:
            return "error", "client vanished after subscribing"
        alive = client.future("mdpipe:alive")
        last_tick = time.monotonic()
        while not self._stopping:
            done, _ = await asyncio.wait({alive}, timeout=0.2)
            tick = time.monotonic()
            stalled = tick - last_tick > 1.0
            last_tick = tick
            if stalled:
                # our own loop was blocked (CPU starvation, a long flush): frames may be waiting
                # in the socket; give the receive loop a turn before judging the exchange silent
                self._last_rx_mono = max(self._last_rx_mono, tick - 1.0)
                await asyncio.sleep(0)
            if done:
                exc = alive.exception() if not alive.cancelled() else None
                return "closed", f"connection closed: {exc}"
            if client.closed():
                return "closed", "connection closed"
            now = time.monotonic()
            silent = now - self._last_rx_mono
            if silent > self.config.stale_after_s:
                return (
                    "stale",
                    f"no message for {silent:.1f} s (watchdog {self.config.stale_after_s} s)",
                )
            if now - opened > self.config.max_connection_age_s:
                return "planned", (
                    f"planned reconnect after {now - opened:.0f} s "
                    f"(max_connection_age_s={self.config.max_connection_age_s:g})"
                )
        return "stopping", ""

    async def _teardown_client(self) -> None:
        if self._ex is None or self._conn_url is None:
            return
        client = self._ex.clients.pop(self._conn_url, None)
        self._primary = None
        if client is not None:
            # bounded: a close handshake the peer never answers must not delay the reconnect
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(client.close(), 2.0)

    def _on_disconnect(self, reason: str, detail: str) -> None:
        """Every book is unknown after the connection changes: gap rows, then resync each."""
        self._process_pending()
        for t in self._snapshot_tasks.values():
            t.cancel()
        self._snapshot_tasks.clear()
        self._depth_seen.clear()
        self.status.reconnects.inc(reason)
        kind = "stale" if reason == "stale" else "reconnect"
        ts = time.time_ns()
        for sym in self.config.symbols:
            b = self.normalizer.force_resync(sym, ts, f"{reason}: {detail}", kind=kind)
            self._absorb(b)

    # ---- processing --------------------------------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.batch_interval_s)
            self._process_pending()
            self._schedule_resyncs()
            self.events.notify()
            # start early by the last flush's duration, so that the oldest line of a flush is
            # on disk about flush_interval_s after it arrived, not flush_interval_s + write time
            lead = min(self.status.last_flush_s, self.config.flush_interval_s / 2)
            if time.monotonic() - self._last_flush_mono >= self.config.flush_interval_s - lead:
                await self._flush()
                self._maybe_compact()

    def _process_pending(self) -> None:
        if not self._p_ns:
            return
        ns, texts = self._p_ns, self._p_text
        self._p_ns, self._p_text = [], []
        n = len(ns)
        first = self._line_no + 1
        self._line_no += n
        recv = pl.Series("recv", ns, dtype=pl.Int64)
        text = pl.Series("text", texts, dtype=pl.String)
        # raw lines are queued for the journal before anything can fail on them
        self._u_ns.extend(ns)
        self._u_text.extend(texts)
        self._count_streams(recv, text)
        # the synced books before this batch: the crossed-book check replays the batch from them
        before = {sym: self.normalizer.book_state(sym) for sym in self.config.symbols}
        try:
            batch = self.normalizer.feed(
                RawLines(
                    recv_ts_ns=recv,
                    text=text,
                    line_no=pl.int_range(first, first + n, dtype=pl.Int64, eager=True),
                    source=f"capture:{self.venue}",
                )
            )
        except Exception as exc:
            # a normalizer bug must not stop the recording: the lines are in the journal (and
            # can be re-imported once fixed); every book is unknown from here until resynced
            log.exception(
                "normalizer failed on lines %d..%d; resyncing every book", first, first + n - 1
            )
            now = time.time_ns()
            self.status.episode("normalizer_error", "*", repr(exc)[:300], resolved=True)
            for sym in self.config.symbols:
                self._absorb(
                    self.normalizer.force_resync(
                        sym,
                        now,
                        f"normalizer error on capture lines {first}..{first + n - 1}: {exc!r}"[
                            :500
                        ],
                        kind="resync",
                    )
                )
            return
        for err in batch.errors:
            self.status.malformed.inc()
            idx = err.line - first
            frame = texts[idx] if 0 <= idx < n else err.content
            self.status.malformed_samples.append(frame[:2000])
            # the whole frame as received, so the log alone shows what the exchange sent
            log.warning("skipped a malformed frame (%s): %r", err.message, frame[:2000])
            self.status.episode("malformed", "*", f"{err.message}: {frame[:300]!r}", resolved=True)
        self._check_crossed(batch, before)
        self._absorb(batch)

    def _count_streams(self, recv: pl.Series, text: pl.Series) -> None:
        df = pl.DataFrame({"recv": recv, "text": text})
        g = (
            df.with_columns(
                stream=self.plugin.stream_labels(text), nbytes=pl.col("text").str.len_bytes()
            )
            .group_by("stream")
            .agg(n=pl.len(), b=pl.col("nbytes").sum(), last=pl.col("recv").max())
        )
        for st, n, b, last in g.iter_rows():
            self.status.messages.inc(st, n=n)
            self.status.bytes.inc(st, n=b)
            self._stream_last_ns[st] = last
            route = self._route(st)
            sym = None if route is None else self._symbol_of_key.get(route.market_key)
            self.status.stream_seen(st, sym, last)
            if route is not None and route.kind == "depth":
                self._depth_seen.add(route.market_key)

    def _route(self, label: str) -> StreamRoute | None:
        """The venue's route of a stream label; None for `control`, `other` and streams the
        venue does not know (the normalizer reports those frames with file and line)."""
        if label not in self._routes:
            try:
                self._routes[label] = self.plugin.route(label)
            except UnknownStream:
                self._routes[label] = None
        return self._routes[label]

    def _market_of(self, label: str) -> str | None:
        route = self._route(label)
        return None if route is None else route.market_key

    def _absorb(self, batch: Batch) -> None:
        """Account a normalized batch, hand it to callbacks and consumers, queue it for publish."""
        gaps = batch.get("gaps")
        if gaps.height:
            for sym, kind, detail, ts, prev, nxt in gaps.select(
                "symbol", "kind", "detail", "ts_ns", "prev_update_id", "next_update_id"
            ).iter_rows():
                if (
                    kind == "sequence_gap"
                    and detail.startswith(TRADE_GAP_PREFIX)
                    and prev is not None
                    and nxt is not None
                    and self.config.backfill_trades
                ):
                    self._start_backfill(sym, prev + 1, nxt - 1, ts)
                self.status.gaps.inc(sym, kind)
                self.status.episode(kind, sym, detail, resolved=False)
                log.warning("gap %s %s: %s", sym, kind, detail)
        book = batch.get("book")
        if book.height:
            for sym, n in book.group_by("symbol").len().iter_rows():
                self.status.book_rows.inc(sym, n=n)
        for sym in self.config.symbols:
            self.status.set_synced(sym, self.normalizer.is_synced(sym))
        trades = batch.get("trades")
        if trades.height:
            for sym, n in trades.group_by("symbol").len().iter_rows():
                self.status.trades.inc(sym, n=n)
        self._observe_latency(trades, book)
        if self._trade_callbacks and trades.height:
            for row in trades.iter_rows(named=True):
                for fn in self._trade_callbacks:
                    fn(row)
        if self._book_callbacks and book.height:
            self._run_book_callbacks(book)
        for consumer in self._consumers:
            try:
                consumer(batch)
            except Exception:  # a broken consumer must not stop the recording
                log.exception("event consumer %r failed", consumer)
        self._acc.extend(batch)

    def _observe_latency(self, trades: pl.DataFrame, book: pl.DataFrame) -> None:
        offset = self.status.clock_offset_rest_ns or 0
        frames = []
        if trades.height:
            frames.append(
                trades.select(
                    stream=pl.col("symbol"), kind=pl.lit("trade"), e="exch_ts_ns", r="recv_ts_ns"
                )
            )
        if book.height:
            frames.append(
                book.filter(~pl.col("is_snapshot"))
                .unique(["symbol", "update_id"], keep="first", maintain_order=True)
                .select(
                    stream=pl.col("symbol"), kind=pl.lit("depth"), e="exch_ts_ns", r="recv_ts_ns"
                )
            )
        if not frames:
            return
        df = pl.concat(frames).drop_nulls()
        if df.height == 0:
            return
        # the largest exchange-minus-receive difference is the offset seen by the fastest message
        ev_off = int((df["e"] - df["r"]).max())  # type: ignore[arg-type]
        prev = self.status.clock_offset_events_ns
        self.status.clock_offset_events_ns = ev_off if prev is None else max(prev, ev_off)
        df = df.with_columns(lat=(pl.col("r") + offset - pl.col("e")) / 1e9)
        for (sym, kind), g in df.group_by("stream", "kind"):
            mid = self._market_keys.get(str(sym), str(sym))
            self.status.latency.observe_many(f"{mid}@{kind}", g["lat"].to_numpy())

    def _run_book_callbacks(self, book: pl.DataFrame) -> None:
        cur_key: tuple[str, int, bool] | None = None
        view: BookView | None = None
        cols = (
            "symbol",
            "update_id",
            "is_snapshot",
            "side",
            "price",
            "qty",
            "exch_ts_ns",
            "recv_ts_ns",
        )
        for sym, uid, snap, side, px, qty, ets, rts in book.select(cols).iter_rows():
            key = (sym, uid, snap)
            if key != cur_key:
                if view is not None:
                    self._emit_book(view)
                cur_key = key
                view = self._books.get(sym)
                if view is None:
                    view = self._books[sym] = BookView(sym)
                if snap:
                    view.bids.clear()
                    view.asks.clear()
                view.update_id, view.exch_ts_ns, view.recv_ts_ns = uid, ets, rts
            assert view is not None
            levels = view.bids if side == "bid" else view.asks
            if qty == 0.0:
                levels.pop(px, None)
            else:
                levels[px] = qty
        if view is not None:
            self._emit_book(view)

    def _emit_book(self, view: BookView) -> None:
        for fn in self._book_callbacks:
            fn(view)

    def _check_crossed(
        self, batch: Batch, before: dict[str, tuple[pl.DataFrame, int] | None]
    ) -> None:
        """A crossed book means a diff was lost or mangled: treat it like a sequence gap.

        Checked after every update, not only at the end of the batch: each symbol's book rows
        are replayed (the numba book of mdpipe.core.book) from its book before the batch. At
        the first update after which best bid >= best ask, that update's rows and the symbol's
        later rows of the batch are withheld (the lake's book is never crossed, as after a
        sequence gap no rows follow until the next snapshot), a `sequence_gap` row names the
        update and the prices, and the symbol resyncs.
        """
        book = batch.tables.get("book")
        if book is None or not book.height:
            return
        syms = book["symbol"].unique(maintain_order=True).to_list()
        for sym in syms:
            rows = book if len(syms) == 1 else book.filter(pl.col("symbol") == sym)
            state = before.get(sym)
            if self._cross_book is None:
                self._cross_book = L2Book()
            hit = self._cross_book.first_crossed(None if state is None else state[0], rows)
            if hit is None:
                continue
            row, uid, bid, ask = hit
            prev = int(rows["update_id"][row - 1]) if row else (state[1] if state else None)
            ts = rows["exch_ts_ns"][row]
            last = int(rows["update_id"][-1])
            mine = (pl.col("symbol") == sym).cum_sum()  # 1-based position among sym's rows
            book = book.filter((pl.col("symbol") != sym) | (mine <= row))
            detail = (
                f"crossed book after update {uid}: best bid {bid} >= best ask {ask}; book rows "
                f"of updates {uid}..{last} ({rows.height - row} rows) not written; resyncing"
            )
            gap = self.normalizer.force_resync(
                sym,
                int(ts) if ts is not None else time.time_ns(),
                detail,
                kind="sequence_gap",
                prev_update_id=prev,
            )
            batch.extend(gap)
        if book.height:
            batch.tables["book"] = book
        else:
            batch.tables.pop("book", None)

    # ---- resync ------------------------------------------------------------------------------

    def _schedule_resyncs(self) -> None:
        if not self.status.connected:
            return
        awaiting = set(self.normalizer.awaiting_snapshot())
        for sym in self.config.symbols:
            key = self._market_keys[sym]
            need = sym in awaiting or (
                key in self._depth_seen and not self.normalizer.is_synced(sym)
            )
            # ask only once this connection has delivered a diff of the symbol: a snapshot older
            # than the first buffered diff would not bridge to the stream
            if need and key in self._depth_seen and sym not in self._snapshot_tasks:
                self._snapshot_tasks[sym] = asyncio.get_running_loop().create_task(
                    self._fetch_snapshot(sym), name=f"snapshot-{sym}"
                )

    async def _fetch_snapshot(self, sym: str) -> None:
        m = self._markets[sym]
        attempt = 0
        try:
            while not self._stopping:
                try:
                    snap = await self.transport.fetch_snapshot(self._ex, m)
                except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
                    status, delay, why = self._rest_failure(exc, attempt)
                    self.status.snapshot_errors.inc(sym, status)
                    attempt += 1
                    self.status.episode("snapshot_error", sym, why, resolved=False)
                    log.warning("snapshot %s failed (%s); retrying in %.2f s", sym, status, delay)
                    await asyncio.sleep(delay)
                    continue
                self._on_raw(snap.recv_ns, self.transport.wrap_snapshot(m, snap.text))
                self.status.snapshots.inc(sym)
                return
        finally:
            self._snapshot_tasks.pop(sym, None)
            self.events.notify()

    def _rest_failure(self, exc: Exception, attempt: int) -> tuple[str, float, str]:
        """A failed REST request (snapshot or backfill): its status ("429", "418", "500" or the
        error class when no HTTP answer came), the delay before the next try (the exchange's
        Retry-After on 429/418, else our backoff) and a one-line description."""
        headers = getattr(self._ex, "last_response_headers", None) or {}
        retry = retry_after_s(headers)
        status = str(getattr(self._ex, "mdpipe_last_status", None) or type(exc).__name__)
        delay = retry if retry is not None else self.backoff_s(attempt)
        why = f"{status} {type(exc).__name__}: {str(exc)[:200]}; retry in {delay:.2f} s" + (
            " (Retry-After)" if retry is not None else ""
        )
        return status, delay, why

    # ---- trade backfill ----------------------------------------------------------------------

    def _start_backfill(self, sym: str, first: int, last: int, gap_ts: int) -> None:
        """Fetch trade ids first..last (a hole the normalizer reported) over REST, off the loop's
        critical path: a task per hole, paced by ccxt's rate limiter."""
        if last < first or sym not in self._markets:
            return
        self.status.backfill_holes.inc(sym)
        if self._stopping or self._ex is None:
            self._backfill_outcome(sym, first, last, gap_ts, 0, "not attempted: capture stopping")
            return
        task = asyncio.get_running_loop().create_task(
            self._backfill(sym, first, last, gap_ts), name=f"backfill-{sym}-{first}"
        )
        self._backfill_tasks.add(task)
        task.add_done_callback(self._backfill_done)

    async def _backfill(self, sym: str, first: int, last: int, gap_ts: int) -> None:
        m = self._markets[sym]
        end = min(last, first + self.config.backfill_max_trades - 1)
        next_id, got, attempt = first, 0, 0
        failure: str | None = None
        try:
            while next_id <= end:
                try:
                    page = await self.transport.fetch_trades_page(
                        self._ex, m, next_id, end - next_id + 1
                    )
                except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
                    status, delay, why = self._rest_failure(exc, attempt)
                    self.status.backfill_request_errors.inc(sym, status)
                    attempt += 1
                    if attempt >= BACKFILL_ATTEMPTS:
                        failure = f"failed after {attempt} attempts, last {why.split(';')[0]}"
                        break
                    log.warning("trade backfill %s from id %d: %s", sym, next_id, why)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                rows = [t for t in page.trades if next_id <= int(t["id"]) <= end]
                if not rows:
                    failure = f"the exchange returned no trade from id {next_id} on"
                    break
                df = self.normalizer.rest_trades(sym, rows, page.recv_ns)
                df = df.unique("trade_id", keep="first", maintain_order=True)
                self._acc.add("trades", df)
                got += df.height
                self.status.backfilled.inc(sym, n=df.height)
                next_id = int(df.select(pl.col("trade_id").max()).item()) + 1
            if failure is None and end < last:
                failure = f"capped at backfill_max_trades={self.config.backfill_max_trades}"
        except asyncio.CancelledError:
            failure = "interrupted: capture stopping"
            raise
        except Exception as exc:  # an odd answer must never take the capture down
            log.exception("trade backfill %s %d..%d failed", sym, first, last)
            failure = f"error {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            self._backfill_outcome(sym, first, last, gap_ts, got, failure)

    def _backfill_outcome(
        self, sym: str, first: int, last: int, gap_ts: int, got: int, failure: str | None
    ) -> None:
        """The `backfill` gaps row of a hole: same ts_ns, prev/next ids as its `sequence_gap`."""
        want = last - first + 1
        detail = (
            f"backfilled {got} of {want} trades (ids {first}..{last}) via REST historicalTrades"
        )
        if failure:
            detail += f"; {failure}"
        if got < want:
            self.status.backfill_missing.inc(sym, n=want - got)
            self.status.backfill_failures.inc(sym)
        self.status.gaps.inc(sym, "backfill")
        row = {
            "venue": self.venue,
            "symbol": sym,
            "ts_ns": gap_ts,
            "kind": "backfill",
            "detail": detail,
            "prev_update_id": first - 1,
            "next_update_id": last + 1,
        }
        self._acc.add("gaps", pl.DataFrame([row], schema=SCHEMAS["gaps"]))
        self.status.episode("backfill", sym, detail, resolved=True)
        (log.info if got == want else log.warning)("trade backfill %s: %s", sym, detail)

    # ---- clock -------------------------------------------------------------------------------

    async def _sync_clock(self) -> None:
        try:
            t0 = time.time_ns()
            server_ms = await self.transport.server_time_ms(self._ex)
            t1 = time.time_ns()
        except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
            log.warning("clock sync failed: %s", exc)
            return
        # NTP-style: the server stamped its time somewhere within the round trip; the midpoint
        # is the unbiased guess and half the round trip bounds the error
        self.status.clock_offset_rest_ns = int(server_ms) * 1_000_000 - (t0 + t1) // 2
        self.status.clock_offset_rtt_ns = t1 - t0

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.clock_sync_interval_s)
            try:
                await self._sync_clock()
            except Exception:  # an odd answer must not end clock tracking for good
                log.exception("clock sync failed")

    # ---- publishing --------------------------------------------------------------------------

    async def _flush(self) -> None:
        # shielded: cancelling the caller (stop() cancels the process loop) must not release the
        # lock while the writer thread still appends to the journal; stop() then waits for it
        task = asyncio.ensure_future(self._flush_locked())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)
        await asyncio.shield(task)

    async def _flush_locked(self) -> None:
        async with self._flush_lock:
            self._last_flush_mono = time.monotonic()
            # every earlier flush has finished and every later name is >= this: files named
            # before the roll period this falls in are final (see _maybe_compact)
            self._lock_ns = time.time_ns()
            ns, texts = self._u_ns, self._u_text
            self._u_ns, self._u_text = [], []
            acc, self._acc = self._acc, Batch()
            if not ns and not acc.tables:
                return
            t0 = time.perf_counter()
            try:
                published, touched = await asyncio.to_thread(self._flush_sync, ns, texts, acc)
            except _FlushFailed as failed:
                # disk full, permissions...: keep what was not written and retry next interval
                log.error("flush failed (%s); keeping the data for the next flush", failed.cause)
                self.status.episode("flush_error", "*", repr(failed.cause)[:300], resolved=False)
                if not failed.journal_done:
                    self._u_ns[:0] = ns
                    self._u_text[:0] = texts
                failed.leftover.extend(self._acc)
                self._acc = failed.leftover
                for part, name_ns in failed.touched:
                    self._dirty[part] = name_ns
                return
            dt = time.perf_counter() - t0
            for part, name_ns in touched:
                self._dirty[part] = name_ns
            st = self.status
            st.flushes.inc()
            st.last_flush_s = dt
            st.flush_duration.labels(self.venue).observe(dt)
            if ns:
                delay = (time.time_ns() - min(ns)) / 1e9
                st.publish_delay_last_s = delay
                st.publish_delay_max_s = max(st.publish_delay_max_s, delay)
            for table, (files, rows) in published.items():
                st.files_published.inc(table, n=files)
                st.rows_published.inc(table, n=rows)
            self.events.notify()

    def _file_name(self) -> tuple[str, int]:
        # names sort in publish order inside a partition (readers concatenate files by name to
        # get applied order) and never repeat, even across restarts (start() floors _name_ns at
        # the newest name in the lake, so a clock stepped back cannot reuse a rolled-up range)
        # and never fall below the time this flush took the lock (the roll-up's barrier)
        ns = max(time.time_ns(), self._name_ns + 1, self._lock_ns)
        self._name_ns = ns
        t = time.gmtime(ns // 1_000_000_000)
        stamp = f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}T{t.tm_hour:02d}"
        return f"{FILE_PREFIX}{stamp}-{ns:019d}.parquet", ns

    def _flush_sync(
        self, ns: list[int], texts: list[str], acc: Batch
    ) -> tuple[dict[str, tuple[int, int]], list[tuple[Partition, int]]]:
        out: dict[str, tuple[int, int]] = {}
        touched: list[tuple[Partition, int]] = []
        try:
            if ns:
                before = len(self.journal.files_written)
                self.journal.write_lines(ns, texts)
                out["raw"] = (len(self.journal.files_written) - before, len(ns))
        except Exception as exc:
            raise _FlushFailed(exc, journal_done=False, leftover=acc) from exc
        name, name_ns = self._file_name()
        parts: list[tuple[str, str, str, pl.DataFrame]] = []
        for table in TABLES:
            df = acc.tables.get(table)
            if df is None or df.height == 0:
                continue
            for date, day in split_by_date(df, table).items():
                for (sym,), part in day.group_by("symbol", maintain_order=True):
                    parts.append((table, str(sym), date, part))
        for i, (table, sym, date, part) in enumerate(parts):
            try:
                self.lake.publish(table, self.venue, sym, date, part, name=name)
            except Exception as exc:
                leftover = Batch()
                for t, _, _, p in parts[i:]:
                    leftover.add(t, p)
                raise _FlushFailed(
                    exc, journal_done=True, leftover=leftover, touched=touched
                ) from exc
            touched.append((Partition(table, self.venue, sym, date), name_ns))
            files, rows = out.get(table, (0, 0))
            out[table] = (files + 1, rows + part.height)
        return out, touched

    # ---- roll-up -----------------------------------------------------------------------------

    def _lake_name_floor(self) -> int:
        """The newest name ns among the capture's latest partitions (two newest dates each)."""
        best = 0
        for t in TABLES:
            for sym in self.config.symbols:
                for part in self.lake.partition_dirs(t, self.venue, sym)[-2:]:
                    best = max(best, self.lake.max_sequence_ns(part))
        return best

    def _maybe_compact(self) -> None:
        """Start a roll-up pass once a flush has taken the lock in a new roll period."""
        if not self.config.compact_hourly or self._compact_task is not None or self._stopping:
            return
        cutoff = self._lock_ns - self._lock_ns % self._roll_ns
        if cutoff <= self.status.compacted_before_ns:
            return
        self._start_compaction(list(self._dirty), cutoff)

    def _start_compaction(self, parts: list[Partition], cutoff: int) -> None:
        async def run() -> None:
            t0 = time.perf_counter()
            try:
                res = await asyncio.to_thread(self._compact_sync, parts, cutoff)
            except Exception:  # never expected (errors are per partition); never fatal
                log.exception("roll-up pass failed")
                res = _CompactionResult(errors=1, complete=False)
            s = self.status
            s.last_compaction_s = time.perf_counter() - t0
            for table, n in res.compactions.items():
                s.compactions.inc(table, n=n)
            for table, n in res.files.items():
                s.files_compacted.inc(table, n=n)
            s.covered_files_removed.inc(n=res.covered_removed)
            s.compaction_errors.inc(n=res.errors)
            if res.complete:
                # the next pass runs in the next period; failed partitions stay dirty until then
                s.compacted_before_ns = max(s.compacted_before_ns, cutoff)
                failed = set(res.failed)
                for p in parts:  # a partition whose newest file was before the cutoff is done
                    if p not in failed and self._dirty.get(p, cutoff) < cutoff:
                        del self._dirty[p]
                for p in failed:
                    self._dirty.setdefault(p, 0)
            self._compact_task = None
            self.events.notify()

        self._compact_task = asyncio.get_running_loop().create_task(run(), name="capture-rollup")

    def _compact_sync(self, parts: list[Partition], cutoff: int) -> _CompactionResult:
        """One pass (worker thread): per partition, delete files an earlier roll-up covers, then
        merge the files of each roll period that ended before `cutoff` into one."""
        res = _CompactionResult()
        for part in parts:
            if self._compact_stop.is_set():
                res.complete = False
                break
            try:
                res.covered_removed += self.lake.finish_compactions(part)
                groups: dict[tuple[str, int], list[Path]] = {}
                for path, prefix, ns in self.lake.sequence_files(part):
                    if prefix.startswith(FILE_PREFIX) and ns < cutoff:
                        groups.setdefault((prefix, ns // self._roll_ns), []).append(path)
                for files in groups.values():
                    if len(files) < 2:
                        continue  # already one file for its period
                    self.lake.compact(part, files)
                    t = part.table
                    res.compactions[t] = res.compactions.get(t, 0) + 1
                    res.files[t] = res.files.get(t, 0) + len(files)
            except Exception:  # disk full...: the files stay as they are, retried next pass
                log.exception("roll-up of %s failed", part)
                res.errors += 1
                res.failed.append(part)
        return res

    # ---- metrics server ----------------------------------------------------------------------

    async def _start_metrics_server(self) -> None:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(self.status.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def health(request: web.Request) -> web.Response:
            ok, body = self.health()
            return web.json_response(body, status=200 if ok else 503)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.get_stats())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.metrics_host, self.config.metrics_port)
        await site.start()
        self._metrics_runner = runner
        self.metrics_port = int(runner.addresses[0][1])
        log.info("metrics on http://%s:%s/metrics", self.config.metrics_host, self.metrics_port)


class _FlushFailed(Exception):
    """A flush that stopped part way: what is already on disk, and what is not."""

    def __init__(
        self,
        cause: Exception,
        *,
        journal_done: bool,
        leftover: Batch,
        touched: list[tuple[Partition, int]] | None = None,
    ) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.journal_done = journal_done
        self.leftover = leftover
        self.touched = touched or []  # partitions published before the failure


__all__ = ["BookView", "Capture", "CaptureConfig", "Episode"]
