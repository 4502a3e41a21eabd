"""What a running capture reports: one counter API behind /stats, /health and Prometheus, the
episodes /health lists, and the events callers (and tests) wait on.

Each counter is declared once, in `Status.__init__`: its Prometheus name (None: /stats only),
help text and labels. /stats reads the same numbers as the Prometheus collector, so the two can
never disagree and a new counter is one line. The Prometheus names are a contract (see
mdpipe/capture/metrics.py, METRIC_NAMES, and the Grafana dashboard in config/).

`Events.wait_for(predicate)` re-checks a predicate over the capture's public state each time the
capture changes something (a batch normalized, a flush, a snapshot, a backfill, a connection
change, a roll-up): waiting on an event, never on a clock, holds on a busy machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mdpipe.capture.metrics import LatencyTracker


@dataclass
class Episode:
    """Something /health reports: a gap, resync, reconnect or stale stream, and its resolution."""

    ts_ns: int
    kind: str
    symbol: str
    detail: str
    resolved_ns: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts_ns": self.ts_ns,
            "kind": self.kind,
            "symbol": self.symbol,
            "detail": self.detail,
            "resolved_ns": self.resolved_ns,
        }


class Counter:
    """A count per label tuple (the venue label is implied). `export` maps the value Prometheus
    shows (e.g. resyncs = snapshots after the first); /stats shows the count itself."""

    def __init__(
        self,
        prom: str | None,
        help: str,
        labels: tuple[str, ...],
        export: Callable[[int], int] | None = None,
    ) -> None:
        self.prom = prom
        self.help = help
        self.labels = labels
        self.export = export
        self._values: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str, n: int = 1) -> None:
        if len(labels) != len(self.labels):
            raise ValueError(f"counter {self.prom or self.help!r} takes labels {self.labels}")
        self._values[labels] = self._values.get(labels, 0) + int(n)

    def value(self, *labels: str) -> int:
        return self._values.get(labels, 0)

    def total(self) -> int:
        return sum(self._values.values())

    def by(self, label: str) -> dict[str, int]:
        """Counts summed per value of one label, e.g. snapshot errors by status."""
        i = self.labels.index(label)
        out: dict[str, int] = {}
        for key, n in self._values.items():
            out[key[i]] = out.get(key[i], 0) + n
        return out

    def nested(self) -> dict[str, dict[str, int]]:
        """Two-label counts as {first: {second: n}} (gaps per symbol and kind)."""
        out: dict[str, dict[str, int]] = {}
        for (a, b), n in self._values.items():
            out.setdefault(a, {})[b] = n
        return out

    def items(self) -> Iterator[tuple[tuple[str, ...], int]]:
        return iter(list(self._values.items()))


class Events:
    """Wake waiters whenever the capture changed something; they re-check their predicate."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self.changes = 0
        self._forward: list[Events] = []

    def forward_to(self, other: Events) -> None:
        """Wake `other`'s waiters too (a multi-venue capture waits on all its venues)."""
        self._forward.append(other)

    def notify(self) -> None:
        self.changes += 1
        if self._event is not None:
            self._event.set()
            self._event = None
        for other in self._forward:
            other.notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = 120.0) -> None:
        """Return once `predicate()` is true; TimeoutError after `timeout` seconds (a deadlock
        guard, not a pacing device: None waits for ever)."""

        async def wait() -> None:
            while not predicate():
                if self._event is None:
                    self._event = asyncio.Event()
                await self._event.wait()

        await asyncio.wait_for(wait(), timeout)


class Status:
    """Counters, values, episodes and the state /health judges, for one venue."""

    def __init__(self, venue: str, symbols: Iterable[str]) -> None:
        self.venue = venue
        self.symbols = tuple(symbols)
        self.registry = CollectorRegistry()
        self.events = Events()
        self._counters: list[Counter] = []
        c = self._counter
        # ---- counters: each declared once (Prometheus name or None, help, labels) ----
        self.messages = c("mdpipe_capture_messages", "Websocket frames received", "stream")
        self.bytes = c("mdpipe_capture_bytes", "Bytes of websocket frames received", "stream")
        self.malformed = c("mdpipe_capture_malformed", "Frames that could not be used")
        self.gaps = c("mdpipe_capture_gaps", "Rows written to the gaps table", "symbol", "kind")
        self.snapshots = c(
            "mdpipe_capture_resyncs",
            "Snapshots applied after the first",
            "symbol",
            export=lambda n: max(n - 1, 0),
        )
        self.snapshot_errors = c(
            "mdpipe_capture_snapshot_errors", "Failed depth snapshot requests", "symbol", "status"
        )
        self.reconnects = c("mdpipe_capture_reconnects", "Websocket reconnections", "reason")
        self.trades = c(None, "Trades normalized", "symbol")
        self.book_rows = c(None, "Book rows normalized", "symbol")
        self.files_published = c(
            "mdpipe_capture_files_published", "Files published to the lake", "table"
        )
        self.rows_published = c("mdpipe_capture_rows_published", "Rows published", "table")
        self.flushes = c(None, "Flushes that completed")
        self.compactions = c(
            "mdpipe_capture_compactions",
            "Roll-up files written (one per partition and hour)",
            "table",
        )
        self.files_compacted = c(
            "mdpipe_capture_files_compacted", "Published files merged into roll-ups", "table"
        )
        self.compaction_errors = c(
            "mdpipe_capture_compaction_errors",
            "Partitions whose roll-up failed (retried by the next pass)",
        )
        self.covered_files_removed = c(None, "Files an earlier roll-up covered, removed")
        self.backfill_holes = c(None, "Trade-id holes a backfill was started for", "symbol")
        self.backfilled = c(
            "mdpipe_capture_backfilled_trades",
            "Trades of trade-id holes fetched over REST and written to the lake",
            "symbol",
        )
        self.backfill_missing = c(None, "Trades of holes a backfill did not get", "symbol")
        self.backfill_failures = c(
            "mdpipe_capture_backfill_failures",
            "Trade-id holes not fully backfilled (REST error, cap reached, capture stopping)",
            "symbol",
        )
        self.backfill_request_errors = c(
            "mdpipe_capture_backfill_request_errors",
            "Failed REST historicalTrades requests (each retried or ending its backfill)",
            "symbol",
            "status",
        )
        self.objects_uploaded = c(
            "mdpipe_capture_objects_uploaded",
            "Spool files uploaded to the object-store lake",
            "table",
        )
        self.upload_errors = c(
            "mdpipe_capture_upload_errors",
            "Upload passes stopped by an error (the files stay in the spool, retried)",
        )
        # ---- values: last or largest seen ----
        self.started_ns = 0
        self.last_flush_s = 0.0
        self.publish_delay_last_s: float | None = None
        self.publish_delay_max_s = 0.0
        self.clock_offset_rest_ns: int | None = None
        self.clock_offset_rtt_ns: int | None = None
        self.clock_offset_events_ns: int | None = None
        self.compacted_before_ns = 0
        self.last_compaction_s = 0.0
        # ---- state /health judges ----
        self.connected = False
        self.synced: dict[str, bool] = dict.fromkeys(self.symbols, False)
        self.stream_last_ns: dict[str, int] = {}
        self.stream_symbol: dict[str, str | None] = {}  # stream label -> its symbol, if any
        self.queue_depth: Callable[[], int] = lambda: 0
        # (files, bytes, oldest age s) of the spool, when the lake is on an object store
        self.spool: Callable[[], tuple[int, int, float]] | None = None
        self.episodes: deque[Episode] = deque(maxlen=200)
        self._open: dict[str, list[Episode]] = {}
        self.malformed_samples: deque[str] = deque(maxlen=20)
        # ---- Prometheus: the counters above, gauges read at scrape time, two histograms ----
        self.latency = LatencyTracker(venue)
        self.registry.register(self.latency)
        self.flush_duration = Histogram(
            "mdpipe_capture_flush_duration_seconds",
            "Journal write plus Parquet publish time per flush",
            ["venue"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(self))

    def _counter(
        self, prom: str | None, help: str, *labels: str, export: Callable[[int], int] | None = None
    ) -> Counter:
        counter = Counter(prom, help, labels, export)
        self._counters.append(counter)
        return counter

    # ---- episodes ------------------------------------------------------------------------

    def episode(
        self, kind: str, symbol: str, detail: str, *, resolved: bool, ts_ns: int | None = None
    ) -> Episode:
        """Record an episode; an unresolved one stays open until its symbol's book is synced."""
        now = time.time_ns()
        ep = Episode(now if ts_ns is None else ts_ns, kind, symbol, detail)
        if resolved:
            ep.resolved_ns = now
        else:
            self._open.setdefault(symbol, []).append(ep)
        self.episodes.append(ep)
        return ep

    def resolve_open(self, symbol: str, kind: str) -> None:
        """Close the open episodes of one kind (e.g. ``store_unreachable`` once uploads work)."""
        now = time.time_ns()
        still = []
        for ep in self._open.get(symbol, []):
            if ep.kind == kind:
                ep.resolved_ns = now
            else:
                still.append(ep)
        if still:
            self._open[symbol] = still
        else:
            self._open.pop(symbol, None)

    def set_synced(self, symbol: str, synced: bool) -> None:
        self.synced[symbol] = synced
        if synced and self._open.get(symbol):
            now = time.time_ns()
            for ep in self._open.pop(symbol):
                ep.resolved_ns = now

    def stream_seen(self, label: str, symbol: str | None, last_ns: int) -> None:
        self.stream_last_ns[label] = last_ns
        self.stream_symbol[label] = symbol

    # ---- the three views -----------------------------------------------------------------

    def health(self, stale_after_s: float) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): healthy while connected, every stream fresh, every book synced."""
        reasons: list[str] = []
        now = time.time_ns()
        if not self.connected:
            reasons.append("websocket not connected")
        for sym in self.symbols:
            last = max(
                (v for k, v in self.stream_last_ns.items() if self.stream_symbol.get(k) == sym),
                default=None,
            )
            if last is None:
                reasons.append(f"{sym}: no message yet")
            elif (now - last) / 1e9 > stale_after_s:
                reasons.append(f"{sym}: silent for {(now - last) / 1e9:.1f} s")
            if not self.synced.get(sym, False):
                reasons.append(f"{sym}: book not synced (waiting for a snapshot)")
        for ep in self._open.get("*", []):
            if ep.kind == "store_unreachable":
                files = self.spool()[0] if self.spool else 0
                reasons.append(f"object store unreachable: {files} file(s) waiting in the spool")
        body = {
            "status": "ok" if not reasons else "unhealthy",
            "reasons": reasons,
            "venue": self.venue,
            "streams": {k: round((now - v) / 1e9, 3) for k, v in self.stream_last_ns.items()},
            "open_episodes": [e.as_dict() for eps in self._open.values() for e in eps],
            "recent_episodes": [e.as_dict() for e in list(self.episodes)[-50:]],
        }
        return not reasons, body

    def as_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The /stats body; `extra` adds what other parts own (journal files, running tasks)."""
        now = time.time_ns()

        def ms(ns: int | None) -> float | None:
            return None if ns is None else ns / 1e6

        out: dict[str, Any] = {
            "venue": self.venue,
            "symbols": list(self.symbols),
            "connected": self.connected,
            "uptime_s": (now - self.started_ns) / 1e9 if self.started_ns else 0.0,
            "messages": self.messages.by("stream"),
            "messages_total": self.messages.total(),
            "bytes": self.bytes.by("stream"),
            "malformed": self.malformed.total(),
            "reconnects": self.reconnects.by("reason"),
            "reconnects_total": self.reconnects.total(),
            "gaps": self.gaps.nested(),
            "gaps_total": self.gaps.total(),
            "snapshots": self.snapshots.by("symbol"),
            "resyncs": {k: max(v - 1, 0) for k, v in self.snapshots.by("symbol").items()},
            "snapshot_errors": self.snapshot_errors.by("status"),
            "synced": dict(self.synced),
            "trades": self.trades.by("symbol"),
            "book_rows": self.book_rows.by("symbol"),
            "latency": self.latency.percentiles(),
            "clock_offset_ms": {
                "rest": ms(self.clock_offset_rest_ns),
                "rest_rtt": ms(self.clock_offset_rtt_ns),
                "events": ms(self.clock_offset_events_ns),
            },
            "seconds_since_last_message": {
                k: (now - v) / 1e9 for k, v in self.stream_last_ns.items()
            },
            "queue_depth": self.queue_depth(),
            "files_published": self.files_published.by("table"),
            "rows_published": self.rows_published.by("table"),
            "flushes": self.flushes.total(),
            "last_flush_s": self.last_flush_s,
            "publish_delay_last_s": self.publish_delay_last_s or 0.0,
            "publish_delay_max_s": self.publish_delay_max_s,
            "compactions": self.compactions.by("table"),
            "files_compacted": self.files_compacted.by("table"),
            "compaction_errors": self.compaction_errors.total(),
            "covered_files_removed": self.covered_files_removed.total(),
            "compacted_before_ns": self.compacted_before_ns,
            "last_compaction_s": self.last_compaction_s,
            "backfill": {
                "holes": self.backfill_holes.by("symbol"),
                "trades": self.backfilled.by("symbol"),
                "trades_total": self.backfilled.total(),
                "missing": self.backfill_missing.by("symbol"),
                "failures": self.backfill_failures.by("symbol"),
                "request_errors": self.backfill_request_errors.by("status"),
            },
            "episodes": [e.as_dict() for e in self.episodes],
        }
        if self.spool is not None:
            files, size, age = self.spool()
            out["spool"] = {
                "files": files,
                "bytes": size,
                "oldest_age_s": age,
                "uploaded": self.objects_uploaded.by("table"),
                "upload_errors": self.upload_errors.total(),
            }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
        return out

    def counters(self) -> list[Counter]:
        return list(self._counters)


class _StatusCollector(Collector):
    """Prometheus reads the Status at scrape time: the declared counters and the gauges."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        st, venue = self.status, self.status.venue
        for counter in st._counters:
            if counter.prom is None:
                continue
            fam = CounterMetricFamily(counter.prom, counter.help, labels=["venue", *counter.labels])
            for key, n in counter.items():
                fam.add_metric([venue, *key], counter.export(n) if counter.export else n)
            yield fam
        now = time.time_ns()
        gauges: list[tuple[str, str, list[str], list[tuple[list[str], float]]]] = [
            (
                "mdpipe_capture_clock_offset_seconds",
                "Exchange clock minus local clock",
                [],
                [] if st.clock_offset_rest_ns is None else [([], st.clock_offset_rest_ns / 1e9)],
            ),
            (
                "mdpipe_capture_seconds_since_last_message",
                "Seconds since the last frame of a stream",
                ["stream"],
                [([k], (now - v) / 1e9) for k, v in st.stream_last_ns.items()],
            ),
            (
                "mdpipe_capture_book_synced",
                "1 when the book is synced",
                ["symbol"],
                [([s], 1.0 if v else 0.0) for s, v in st.synced.items()],
            ),
            (
                "mdpipe_capture_write_queue_depth",
                "Received lines not yet published",
                [],
                [([], float(st.queue_depth()))],
            ),
            (
                "mdpipe_capture_publish_delay_seconds",
                "Oldest receive time to publish time in the last flush",
                [],
                [] if st.publish_delay_last_s is None else [([], st.publish_delay_last_s)],
            ),
            (
                "mdpipe_capture_connected",
                "1 while the websocket is subscribed",
                [],
                [([], 1.0 if st.connected else 0.0)],
            ),
        ]
        if st.spool is not None:
            files, size, age = st.spool()
            gauges += [
                (
                    "mdpipe_capture_spool_files",
                    "Files waiting in the spool",
                    [],
                    [([], float(files))],
                ),
                (
                    "mdpipe_capture_spool_bytes",
                    "Bytes waiting in the spool",
                    [],
                    [([], float(size))],
                ),
                (
                    "mdpipe_capture_spool_age_seconds",
                    "Age of the oldest file waiting in the spool (0 when empty)",
                    [],
                    [([], age)],
                ),
            ]
        for name, help, labels, samples in gauges:
            g = GaugeMetricFamily(name, help, labels=["venue", *labels])
            for values, v in samples:
                g.add_metric([venue, *values], v)
            yield g


__all__ = ["Counter", "Episode", "Events", "Status"]
