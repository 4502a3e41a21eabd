"""REST: depth snapshots (resyncs), trade backfill of trade-id holes, and the exchange clock.

Snapshots enter the same inbox as websocket frames, wrapped by the transport so that the line
names its market (`wrap_snapshot`), so the journal replays to the same lake through
`mdpipe import`.

Trade backfill. A trade-id hole the normalizer reports (`sequence_gap`, "trade ids A..B") starts
a background task that fetches A..B over the venue's REST trade history (ccxt's rate limiter,
Retry-After on 429/418 via mdpipe.retry), normalizes them with the normalizer's `rest_trades` and
queues them for the lake; a `backfill` gaps row records the outcome. REST trade answers are not
journaled (the import reproduces the gap row, not the backfill).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ccxt
import polars as pl

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.publisher import Publisher
from mdpipe.capture.status import Status
from mdpipe.lake import SCHEMAS
from mdpipe.retry import backoff_s, retry_after_s
from mdpipe.venues import Normalizer, Transport

log = logging.getLogger("mdpipe.capture")

BACKFILL_ATTEMPTS = 6  # failed requests in a row before a backfill gives up (each one backs off)


class Rest:
    """REST calls of a capture: snapshot per symbol on demand, backfills, clock sync."""

    def __init__(
        self,
        config: CaptureConfig,
        transport: Transport,
        normalizer: Normalizer,
        status: Status,
        publisher: Publisher,
        inbox: Callable[[int, str], None],
    ) -> None:
        self.config = config
        self.venue = config.venue
        self.transport = transport
        self.normalizer = normalizer
        self.status = status
        self.publisher = publisher
        self.inbox = inbox  # snapshot lines go where websocket frames go
        self.ex: Any = None  # the ccxt client, once the markets are loaded
        self.markets: dict[str, dict[str, Any]] = {}
        self.market_keys: dict[str, str] = {}
        self.snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self.backfill_tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.reconnect_initial_s, self.config.reconnect_max_s)

    def cancel_snapshots(self) -> list[asyncio.Task[None]]:
        tasks = list(self.snapshot_tasks.values())
        for t in tasks:
            t.cancel()
        self.snapshot_tasks.clear()
        return tasks

    def schedule_resyncs(self, depth_seen: set[str]) -> None:
        """Ask for a snapshot of each symbol that needs one, once its diffs are streaming."""
        if not self.status.connected:
            return
        awaiting = set(self.normalizer.awaiting_snapshot())
        for sym in self.config.symbols:
            key = self.market_keys[sym]
            need = sym in awaiting or (key in depth_seen and not self.normalizer.is_synced(sym))
            # ask only once this connection has delivered a diff of the symbol: a snapshot older
            # than the first buffered diff would not bridge to the stream
            if need and key in depth_seen and sym not in self.snapshot_tasks:
                self.snapshot_tasks[sym] = asyncio.get_running_loop().create_task(
                    self._fetch_snapshot(sym), name=f"snapshot-{sym}"
                )

    async def _fetch_snapshot(self, sym: str) -> None:
        m = self.markets[sym]
        attempt = 0
        try:
            while not self.stopping:
                try:
                    snap = await self.transport.fetch_snapshot(self.ex, m)
                except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
                    status, delay, why = self._rest_failure(exc, attempt)
                    self.status.snapshot_errors.inc(sym, status)
                    attempt += 1
                    self.status.episode("snapshot_error", sym, why, resolved=False)
                    log.warning("snapshot %s failed (%s); retrying in %.2f s", sym, status, delay)
                    await asyncio.sleep(delay)
                    continue
                self.inbox(snap.recv_ns, self.transport.wrap_snapshot(m, snap.text))
                self.status.snapshots.inc(sym)
                return
        finally:
            self.snapshot_tasks.pop(sym, None)
            self.status.events.notify()

    def _rest_failure(self, exc: Exception, attempt: int) -> tuple[str, float, str]:
        """A failed REST request (snapshot or backfill): its status ("429", "418", "500" or the
        error class when no HTTP answer came), the delay before the next try (the exchange's
        Retry-After on 429/418, else our backoff) and a one-line description."""
        headers = getattr(self.ex, "last_response_headers", None) or {}
        retry = retry_after_s(headers)
        status = str(getattr(self.ex, "mdpipe_last_status", None) or type(exc).__name__)
        delay = retry if retry is not None else self.backoff_s(attempt)
        why = f"{status} {type(exc).__name__}: {str(exc)[:200]}; retry in {delay:.2f} s" + (
            " (Retry-After)" if retry is not None else ""
        )
        return status, delay, why

    # ---- trade backfill ----------------------------------------------------------------------

    def start_backfill(self, sym: str, first: int, last: int, gap_ts: int) -> None:
        """Fetch trade ids first..last (a hole the normalizer reported) over REST, off the loop's
        critical path: a task per hole, paced by ccxt's rate limiter."""
        if last < first or sym not in self.markets:
            return
        self.status.backfill_holes.inc(sym)
        if self.stopping or self.ex is None:
            self._backfill_outcome(sym, first, last, gap_ts, 0, "not attempted: capture stopping")
            return
        task = asyncio.get_running_loop().create_task(
            self._backfill(sym, first, last, gap_ts), name=f"backfill-{sym}-{first}"
        )
        self.backfill_tasks.add(task)
        task.add_done_callback(self._backfill_done)

    def _backfill_done(self, task: asyncio.Task[None]) -> None:
        self.backfill_tasks.discard(task)
        self.status.events.notify()

    async def _backfill(self, sym: str, first: int, last: int, gap_ts: int) -> None:
        m = self.markets[sym]
        end = min(last, first + self.config.backfill_max_trades - 1)
        next_id, got, attempt = first, 0, 0
        failure: str | None = None
        try:
            while next_id <= end:
                try:
                    page = await self.transport.fetch_trades_page(
                        self.ex, m, next_id, end - next_id + 1
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
                self.publisher.add("trades", df)
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
        self.publisher.add("gaps", pl.DataFrame([row], schema=SCHEMAS["gaps"]))
        self.status.episode("backfill", sym, detail, resolved=True)
        (log.info if got == want else log.warning)("trade backfill %s: %s", sym, detail)

    # ---- clock -------------------------------------------------------------------------------

    async def sync_clock(self) -> None:
        try:
            t0 = time.time_ns()
            server_ms = await self.transport.server_time_ms(self.ex)
            t1 = time.time_ns()
        except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
            log.warning("clock sync failed: %s", exc)
            return
        # NTP-style: the server stamped its time somewhere within the round trip; the midpoint
        # is the unbiased guess and half the round trip bounds the error
        self.status.clock_offset_rest_ns = int(server_ms) * 1_000_000 - (t0 + t1) // 2
        self.status.clock_offset_rtt_ns = t1 - t0

    async def clock_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.clock_sync_interval_s)
            try:
                await self.sync_clock()
            except Exception:  # an odd answer must not end clock tracking for good
                log.exception("clock sync failed")
