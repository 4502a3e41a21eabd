"""Prometheus metrics of the capture daemon. The names below are a contract: the Grafana dashboard
in config/ queries them, so rename nothing without updating it. Each is declared once, in
mdpipe/capture/status.py (`Status`), which feeds /stats, /health and Prometheus from the same
numbers; tests/capture check that the declarations and this list agree.

| name | type | labels | meaning |
|---|---|---|---|
| mdpipe_capture_messages_total | counter | venue, stream | websocket frames received |
| mdpipe_capture_bytes_total | counter | venue, stream | bytes of those frames |
| mdpipe_capture_malformed_total | counter | venue | frames the normalizer could not use |
| mdpipe_capture_gaps_total | counter | venue, symbol, kind | rows written to `gaps` |
| mdpipe_capture_resyncs_total | counter | venue, symbol | REST snapshots applied after start |
| mdpipe_capture_snapshot_errors_total | counter | venue, symbol, status | failed snapshot requests |
| mdpipe_capture_reconnects_total | counter | venue, reason | websocket reconnections |
| mdpipe_capture_latency_seconds | histogram | venue, stream | receive time minus exchange time, clock-offset corrected |
| mdpipe_capture_clock_offset_seconds | gauge | venue | exchange clock minus local clock |
| mdpipe_capture_seconds_since_last_message | gauge | venue, stream | staleness per stream |
| mdpipe_capture_book_synced | gauge | venue, symbol | 1 when the symbol's book is synced |
| mdpipe_capture_write_queue_depth | gauge | venue | received lines not yet published |
| mdpipe_capture_files_published_total | counter | venue, table | Parquet and journal files published |
| mdpipe_capture_rows_published_total | counter | venue, table | rows in those files |
| mdpipe_capture_flush_duration_seconds | histogram | venue | time to write journal + publish Parquet |
| mdpipe_capture_publish_delay_seconds | gauge | venue | oldest receive time to publish time, last flush |
| mdpipe_capture_connected | gauge | venue | 1 while the websocket is subscribed |
| mdpipe_capture_compactions_total | counter | venue, table | roll-up files written (one per partition and hour) |
| mdpipe_capture_files_compacted_total | counter | venue, table | published files merged into roll-ups |
| mdpipe_capture_compaction_errors_total | counter | venue | partitions whose roll-up failed (retried) |
| mdpipe_capture_backfilled_trades_total | counter | venue, symbol | trades of trade-id holes fetched over REST |
| mdpipe_capture_backfill_failures_total | counter | venue, symbol | holes not fully backfilled (error, cap, stop) |
| mdpipe_capture_backfill_request_errors_total | counter | venue, symbol, status | failed historicalTrades requests |
| mdpipe_capture_objects_uploaded_total | counter | venue, table | spool files uploaded to an object-store lake |
| mdpipe_capture_upload_errors_total | counter | venue | upload passes stopped by an error (files kept, retried) |
| mdpipe_capture_spool_files | gauge | venue | files waiting in the spool (object-store lakes only) |
| mdpipe_capture_spool_bytes | gauge | venue | bytes waiting in the spool |
| mdpipe_capture_spool_age_seconds | gauge | venue | age of the oldest file waiting in the spool |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

METRIC_NAMES = (
    "mdpipe_capture_messages_total",
    "mdpipe_capture_bytes_total",
    "mdpipe_capture_malformed_total",
    "mdpipe_capture_gaps_total",
    "mdpipe_capture_resyncs_total",
    "mdpipe_capture_snapshot_errors_total",
    "mdpipe_capture_reconnects_total",
    "mdpipe_capture_latency_seconds",
    "mdpipe_capture_clock_offset_seconds",
    "mdpipe_capture_seconds_since_last_message",
    "mdpipe_capture_book_synced",
    "mdpipe_capture_write_queue_depth",
    "mdpipe_capture_files_published_total",
    "mdpipe_capture_rows_published_total",
    "mdpipe_capture_flush_duration_seconds",
    "mdpipe_capture_publish_delay_seconds",
    "mdpipe_capture_connected",
    "mdpipe_capture_compactions_total",
    "mdpipe_capture_files_compacted_total",
    "mdpipe_capture_compaction_errors_total",
    "mdpipe_capture_backfilled_trades_total",
    "mdpipe_capture_backfill_failures_total",
    "mdpipe_capture_backfill_request_errors_total",
    "mdpipe_capture_objects_uploaded_total",
    "mdpipe_capture_upload_errors_total",
)
# exported only by a capture whose lake is on an object store (it has a spool)
SPOOL_METRIC_NAMES = (
    "mdpipe_capture_spool_files",
    "mdpipe_capture_spool_bytes",
    "mdpipe_capture_spool_age_seconds",
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_WINDOW = 20_000  # latest samples per stream kept for percentiles


class LatencyTracker(Collector):
    """Per-stream receive latency: bulk-observed from numpy arrays (a batch at a time, no per-row
    Python), exported as a Prometheus histogram, with percentiles over a recent window."""

    def __init__(self, venue: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.venue = venue
        self.edges = np.asarray(buckets, dtype=np.float64)
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, float] = {}
        self.windows: dict[str, np.ndarray] = {}

    def observe_many(self, stream: str, seconds: np.ndarray) -> None:
        if seconds.size == 0:
            return
        if stream not in self.counts:
            self.counts[stream] = np.zeros(len(self.edges) + 1, dtype=np.int64)
            self.sums[stream] = 0.0
            self.windows[stream] = np.empty(0, dtype=np.float64)
        idx = np.searchsorted(self.edges, seconds, side="left")
        self.counts[stream] += np.bincount(idx, minlength=len(self.edges) + 1)
        self.sums[stream] += float(seconds.sum())
        w = np.concatenate([self.windows[stream], seconds])
        self.windows[stream] = w[-LATENCY_WINDOW:]

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for stream, w in self.windows.items():
            if w.size:
                p50, p95, p99 = np.percentile(w, [50, 95, 99])
                out[stream] = {
                    "p50_ms": float(p50) * 1e3,
                    "p95_ms": float(p95) * 1e3,
                    "p99_ms": float(p99) * 1e3,
                    "samples": int(w.size),
                }
        return out

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(
            "mdpipe_capture_latency_seconds",
            "Receive time minus exchange event time, corrected by the estimated clock offset",
            labels=["venue", "stream"],
        )
        for stream, counts in self.counts.items():
            cum = np.cumsum(counts)
            buckets = [(f"{e:g}", int(c)) for e, c in zip(self.edges, cum[:-1], strict=True)]
            buckets.append(("+Inf", int(cum[-1])))
            fam.add_metric([self.venue, stream], buckets, self.sums[stream])
        yield fam
