"""The capture daemon: websocket frames -> raw journal + normalized lake tables, continuously.

Data path (one asyncio loop, one flush thread)::

    ccxt websocket client --tap--> pending lines (recv ns, raw text)      [transport.py]
      every batch_interval_s:  normalizer.feed(lines) -> Batch (trades, book, gaps, bbo)
                               -> crossed-book check after every update -> per-symbol resync
                               -> callbacks and event consumers (online engine)
      every flush_interval_s:  journal member (gzip, fsync) then Parquet publish (atomic)
      once an hour is over:    roll-up of each partition's files of that hour into one file

`Capture` composes its parts: the connection (make-before-break, watchdog, reconnect backoff)
and the normalizing of pending lines live here; `publisher.Publisher` owns the outbox, flushes
and roll-ups; `rest.Rest` owns snapshots, trade backfill and the clock; `status.Status` is the
one counter API behind /stats, /health and Prometheus, served by `http.serve_status`.

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
from collections.abc import Callable, Sequence
from typing import Any

import ccxt
import polars as pl

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.http import serve_status
from mdpipe.capture.publisher import Publisher
from mdpipe.capture.rest import Rest
from mdpipe.capture.status import Episode, Events, Status
from mdpipe.capture.transport import make_exchange
from mdpipe.core.book import L2Book
from mdpipe.lake import SCHEMAS, JournalWriter, Lake
from mdpipe.retry import backoff_s
from mdpipe.venues import Batch, Normalizer, RawLines, StreamRoute, Transport, UnknownStream
from mdpipe.venues import get as get_venue
from mdpipe.venues.base import TRADE_GAP_PREFIX

log = logging.getLogger("mdpipe.capture")

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
        self.status.queue_depth = lambda: len(self._p_ns) + self.publisher.lines_waiting
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
        self._line_no = 0
        self._last_rx_mono = time.monotonic()
        self._stream_last_ns: dict[str, int] = {}
        self._depth_seen: set[str] = set()  # symbols with a depth frame on this connection
        self._ex: Any = None
        self._markets: dict[str, dict[str, Any]] = {}
        self._market_keys: dict[str, str] = {}  # unified symbol -> the venue's stream key
        self._symbol_of_key: dict[str, str] = {}
        self._routes: dict[str, StreamRoute | None] = {}  # stream label -> route (None: not one)
        self._dials_open = asyncio.Event()  # cleared by hold_dials(): no new connection
        self._dials_open.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: Any = None
        # the parts: publishing (outbox, flushes, roll-ups) and REST (snapshots, backfill, clock)
        self.publisher = Publisher(config, self.lake, self.journal, self.status)
        self.rest = Rest(
            config, self.transport, self.normalizer, self.status, self.publisher, self._on_raw
        )
        self.rest.markets = self._markets
        self.rest.market_keys = self._market_keys
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
        return self.publisher.roll_period_s

    @roll_period_s.setter
    def roll_period_s(self, seconds: float) -> None:
        self.publisher.roll_period_s = seconds

    async def start(self) -> None:
        self.status.started_ns = time.time_ns()
        self._ex = make_exchange(self.transport, self._on_raw, self._on_control)
        self.rest.ex = self._ex
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
        # load the crossed-book replay's compiled code now rather than inside the first batch
        self._cross_book = L2Book()
        self._cross_book.first_crossed(
            None,
            pl.DataFrame(
                {"update_id": [1], "is_snapshot": [True], "side": ["bid"], "price": [1.0]}
            ).with_columns(qty=pl.lit(1.0)),
        )
        self.publisher.start()
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
            loop.create_task(self._connection_loop(), name="capture-connection"),
            loop.create_task(self._process_loop(), name="capture-process"),
            loop.create_task(self.rest.clock_loop(), name="capture-clock"),
        ]

    async def stop(self) -> None:
        """Close the websocket, normalize what was received, flush everything, exit cleanly."""
        if self._stopping:
            return
        self._stopping = self.rest.stopping = True
        for t in self._tasks:
            t.cancel()
        snapshots = self.rest.cancel_snapshots()
        await asyncio.gather(*self._tasks, *snapshots, return_exceptions=True)
        await self._unsubscribe_and_drain()
        await self._teardown_client()
        self._process_pending()  # holes found from here on are recorded as not backfilled
        if self.rest.backfill_tasks:
            # running backfills get a moment to finish; the rest record how far they got
            _, running = await asyncio.wait(self.rest.backfill_tasks, timeout=BACKFILL_STOP_WAIT_S)
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await self.publisher.close()
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
        return self.publisher.unpublished

    @property
    def backfills_running(self) -> int:
        return len(self.rest.backfill_tasks)

    def synced(self, symbol: str) -> bool:
        """True when `symbol`'s book is synced (a snapshot bridged to the stream, no gap since)."""
        return self.normalizer.is_synced(symbol)

    def is_idle(self, *, synced: bool = True, published: bool = False) -> bool:
        """Nothing received waits for the normalizer, no snapshot is in flight, no backfill runs,
        and (`synced`) every book is synced, (`published`) everything is on disk."""
        return (
            not self._p_ns
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
                "backfill": {"running": len(self.rest.backfill_tasks)},
            }
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): healthy while connected, every depth stream fresh, every book synced."""
        return self.status.health(self.config.stale_after_s)

    def _set_connected(self, connected: bool) -> None:
        self.status.connected = connected
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
        self.rest.cancel_snapshots()
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
            self.rest.schedule_resyncs(self._depth_seen)
            self.events.notify()
            if self.publisher.due():
                await self.publisher.flush()
                self.publisher.maybe_compact()

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
        self.publisher.add_lines(ns, texts)
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
                    self.rest.start_backfill(sym, prev + 1, nxt - 1, ts)
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
        self.publisher.extend(batch)

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


__all__ = ["BookView", "Capture", "CaptureConfig", "Episode"]
