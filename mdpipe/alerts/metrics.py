"""Pipeline metrics (Prometheus). The names are a contract with config/grafana/.

Live signals (exported by the capture process, which runs the online engine):

| name | type | labels | meaning |
|---|---|---|---|
| mdpipe_signals_total | counter | venue, symbol, signal_type | live signals emitted |
| mdpipe_signals_active | gauge | venue, symbol, signal_type | signals in the last `active_window_s` (5 min) |
| mdpipe_signal_score | histogram | venue, signal_type | ensemble score of emitted signals |
| mdpipe_detector_events_total | counter | venue, symbol | book events through the online engine |
| mdpipe_detector_batch_seconds | histogram | venue | engine time per normalized batch |
| mdpipe_signal_publish_latency_seconds | histogram | venue | triggering event received -> live signal file published |

Alert delivery (read from the delivery ledger at scrape time, so deliveries made by short-lived
Dagster runs are counted; exported by the capture process or `mdpipe alerts metrics`):

| name | type | labels | meaning |
|---|---|---|---|
| mdpipe_alert_deliveries_total | counter | channel | signals confirmed delivered |
| mdpipe_alert_messages_total | counter | channel | messages (single or digest) confirmed |
| mdpipe_alert_failures_total | counter | channel, outcome | requests not confirmed (rate_limited, transient, rejected, uncertain) |
| mdpipe_alert_queue | gauge | channel, status | ledger rows by status (pending, sending, failed, uncertain, delivered) |
| mdpipe_alert_latency_seconds | histogram | channel | triggering event received -> delivery confirmed |
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

SIGNAL_METRIC_NAMES = (
    "mdpipe_signals_total",
    "mdpipe_signals_active",
    "mdpipe_signal_score",
    "mdpipe_detector_events_total",
    "mdpipe_detector_batch_seconds",
    "mdpipe_signal_publish_latency_seconds",
)
ALERT_METRIC_NAMES = (
    "mdpipe_alert_deliveries_total",
    "mdpipe_alert_messages_total",
    "mdpipe_alert_failures_total",
    "mdpipe_alert_queue",
    "mdpipe_alert_latency_seconds",
)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
SCORE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)
BATCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _ActiveSignals(Collector):
    """Signals emitted in the trailing window, by market and type (a bounded deque)."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.events: deque[tuple[int, str, str, str]] = deque(maxlen=100_000)
        self.keys: set[tuple[str, str, str]] = set()

    def add(self, venue: str, symbol: str, signal_type: str, now_ns: int) -> None:
        self.events.append((now_ns, venue, symbol, signal_type))
        self.keys.add((venue, symbol, signal_type))

    def collect(self) -> Iterable[Metric]:
        now = time.time_ns()
        while self.events and self.events[0][0] < now - self.window_ns:
            self.events.popleft()
        counts = dict.fromkeys(self.keys, 0)
        for _, v, s, t in self.events:
            counts[(v, s, t)] += 1
        fam = GaugeMetricFamily(
            "mdpipe_signals_active",
            f"Live signals emitted in the last {self.window_ns / 1e9:g} s",
            labels=["venue", "symbol", "signal_type"],
        )
        for (v, s, t), n in sorted(counts.items()):
            fam.add_metric([v, s, t], n)
        yield fam


class SignalMetrics:
    """Metrics of the online engine inside the capture process, on the capture's registry."""

    def __init__(self, registry: CollectorRegistry, *, active_window_s: float = 300.0) -> None:
        r = registry
        self.signals = Counter(
            "mdpipe_signals",
            "Live signals emitted",
            ["venue", "symbol", "signal_type"],
            registry=r,
        )
        self.active = _ActiveSignals(active_window_s)
        r.register(self.active)
        self.score = Histogram(
            "mdpipe_signal_score",
            "Ensemble score of emitted live signals",
            ["venue", "signal_type"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "mdpipe_detector_events",
            "Book events processed by the online engine",
            ["venue", "symbol"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "mdpipe_detector_batch_seconds",
            "Online engine time per normalized batch",
            ["venue"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.publish_latency = Histogram(
            "mdpipe_signal_publish_latency_seconds",
            "Triggering event received to live signal published",
            ["venue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


class LedgerCollector(Collector):
    """Alert delivery metrics read from the ledger at scrape time (one small SQLite query each).

    The ledger is the source of truth for deliveries made by any run in any process, so the
    numbers are right however many alert runs came and went between two scrapes.
    """

    def __init__(self, ledger_path: str | os.PathLike[str]) -> None:
        self.path = Path(ledger_path)

    def collect(self) -> Iterable[Metric]:
        deliveries = CounterMetricFamily(
            "mdpipe_alert_deliveries", "Signals confirmed delivered", labels=["channel"]
        )
        messages = CounterMetricFamily(
            "mdpipe_alert_messages",
            "Alert messages (single or digest) confirmed",
            labels=["channel"],
        )
        failures = CounterMetricFamily(
            "mdpipe_alert_failures",
            "Alert requests not confirmed, by outcome",
            labels=["channel", "outcome"],
        )
        queue = GaugeMetricFamily(
            "mdpipe_alert_queue", "Delivery ledger rows by status", labels=["channel", "status"]
        )
        latency = HistogramMetricFamily(
            "mdpipe_alert_latency_seconds",
            "Triggering event received to alert delivery confirmed",
            labels=["channel"],
        )
        if self.path.exists():
            from mdpipe.alerts.ledger import Ledger

            ledger = Ledger(self.path)
            status = ledger.status_counts()
            delivered: dict[str, int] = {}
            for (ch, st), n in status.items():
                queue.add_metric([ch, st], n)
                if st == "delivered":
                    delivered[ch] = n
            for ch, n in sorted(delivered.items()):
                deliveries.add_metric([ch], n)
            for (ch, outcome), (n_req, _n_sig) in sorted(ledger.attempt_counts().items()):
                if outcome == "delivered":
                    messages.add_metric([ch], n_req)
                else:
                    failures.add_metric([ch, outcome], n_req)
            for ch, (cum, n, total) in sorted(ledger.latency_histogram(LATENCY_BUCKETS).items()):
                buckets = [
                    (floatToGoString(e), c) for e, c in zip(LATENCY_BUCKETS, cum, strict=True)
                ]
                buckets.append(("+Inf", n))
                latency.add_metric([ch], buckets, total)
        yield from (deliveries, messages, failures, queue, latency)


def alert_registry(ledger_path: str | os.PathLike[str]) -> CollectorRegistry:
    """A registry with only the ledger metrics (for `mdpipe alerts metrics`)."""
    r = CollectorRegistry()
    r.register(LedgerCollector(ledger_path))
    return r


__all__ = [
    "ALERT_METRIC_NAMES",
    "SIGNAL_METRIC_NAMES",
    "LedgerCollector",
    "SignalMetrics",
    "alert_registry",
]
