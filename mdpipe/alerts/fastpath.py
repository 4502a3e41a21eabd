"""The fast path: new signals handed straight to delivery, through the sensor's ledger.

    capture (LiveSignals publishes a file)  ─┐
                                             ├─> FastPath.submit ─> ledger.register ─> one worker
    mdpipe serve (a post is stored)         ─┘     per channel: deliver_channel (claim, send, mark)

The Dagster sensor (mdpipe/defs/alerts.py) stays the guarantee: it finds the same files and
registers the same (signal, channel) pairs (INSERT OR IGNORE), and whoever *claims* a pair first
in the ledger sends it, so the two paths racing on one signal deliver it once. Whatever the fast
path misses (the process died between writing a signal and claiming it, a channel was down) is
still `pending` or `failed` in the ledger, or not registered at all, and the sensor's next run
delivers it. What the fast path saves is the sensor interval plus Dagster launching a run.

Submitting never blocks the caller (capture's event loop, an API request): signals go into a
queue that a dispatcher thread registers; each channel has its own worker so a slow or
rate-limited channel does not hold up the others. Same delivery policy, same rate-limit slots
(kept in the ledger), same messages as the sensor's runs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.alerts.channels import ChannelClient, clients_from_env
from mdpipe.alerts.delivery import DeliveryPolicy, deliver_channel
from mdpipe.alerts.ledger import Ledger, default_ledger_path
from mdpipe.alerts.message import AlertSignal

log = logging.getLogger("mdpipe.alerts.fastpath")
_STOP = object()


class FastPath:
    def __init__(
        self,
        ledger_path: str | os.PathLike[str],
        clients: Sequence[ChannelClient],
        *,
        policy: DeliveryPolicy | None = None,
        link: str | None = None,
        name: str = "fast",
        registry: Any = None,
    ) -> None:
        if not clients:
            raise ValueError("the fast path needs at least one configured channel")
        self.ledger = Ledger(ledger_path)
        self.clients = list(clients)
        self.policy = policy or DeliveryPolicy()
        self.link = link
        self.run_id = f"{name}-{os.getpid()}"
        self._in: queue.Queue[object] = queue.Queue()
        self._wake = {c.name: threading.Event() for c in self.clients}
        self._busy = {c.name: False for c in self.clients}
        self._lock = threading.Condition()
        self._pending = 0  # submitted, not yet registered and attempted on every channel
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.submitted = 0
        self.delivered: dict[str, int] = {c.name: 0 for c in self.clients}
        self._metrics = _FastPathMetrics(registry) if registry is not None else None

    @classmethod
    def from_settings(
        cls,
        lake_root: str | os.PathLike[str],
        alerts: Any,
        *,
        environ: Mapping[str, str] | None = None,
        name: str = "fast",
        registry: Any = None,
    ) -> FastPath | None:
        """The fast path for the channels configured in the environment (the variables the
        Dagster resources read), or None when it is turned off or no channel is configured."""
        if not getattr(alerts, "fast_path", True):
            return None
        clients, _ = clients_from_env(os.environ if environ is None else environ,
                                      timeout_s=alerts.timeout_s)  # fmt: skip
        if not clients:
            return None
        ledger = Path(alerts.ledger_path) if alerts.ledger_path else None
        return cls(
            ledger or default_ledger_path(lake_root),
            clients,
            policy=alerts.policy(),
            link=alerts.dagster_ui_url,
            name=name,
            registry=registry,
        ).start()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> FastPath:
        t = threading.Thread(target=self._dispatch, name="alert-fast-dispatch", daemon=True)
        self._threads.append(t)
        for c in self.clients:
            self._threads.append(
                threading.Thread(
                    target=self._work, args=(c,), name=f"alert-fast-{c.name}", daemon=True
                )
            )
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Finish what was submitted (up to `timeout_s`), then stop; True if nothing was left."""
        done = self.wait_idle(timeout_s)
        self._stopping = True
        self._in.put(_STOP)
        for ev in self._wake.values():
            ev.set()
        for t in self._threads:
            t.join(timeout_s)
        return done

    # ---- submitting ------------------------------------------------------------------------
    def submit(self, signals: Sequence[AlertSignal]) -> None:
        if not signals or self._stopping:
            return
        with self._lock:
            self._pending += 1
        self.submitted += len(signals)
        self._in.put(list(signals))

    def submit_frame(self, rows: pl.DataFrame) -> None:
        """`submit` for rows of `live/signals` (what capture's LiveSignals just published)."""
        self.submit([AlertSignal.from_row(r) for r in rows.iter_rows(named=True)])

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every submitted signal was registered and each channel's worker went
        through the ledger once since (delivered, or left failed/pending for the sensor)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self._pending == 0 and not any(self._busy.values()), timeout_s
            )

    # ---- threads ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        names = [c.name for c in self.clients]
        while True:
            item = self._in.get()
            if item is _STOP:
                return
            batch: list[AlertSignal] = list(item)  # type: ignore[call-overload]
            n_items = 1
            while True:  # fold everything queued meanwhile into one registration
                try:
                    more = self._in.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._in.put(_STOP)
                    break
                batch.extend(more)  # type: ignore[arg-type]
                n_items += 1
            try:
                self.ledger.register(batch, names)
            except Exception:  # the sensor registers them later; never lose the thread
                log.exception("fast path: registering %d signal(s) failed", len(batch))
            with self._lock:
                for n in names:
                    self._busy[n] = True
                self._pending -= n_items
            for n in names:
                self._wake[n].set()

    def _work(self, client: ChannelClient) -> None:
        ev = self._wake[client.name]
        while True:
            ev.wait()
            ev.clear()
            if self._stopping:
                with self._lock:
                    self._busy[client.name] = False
                    self._lock.notify_all()
                return
            try:
                rep = deliver_channel(
                    self.ledger,
                    client,
                    link=self.link,
                    run_id=self.run_id,
                    policy=self.policy,
                    on_delivered=self._on_delivered,
                )
                self.delivered[client.name] += rep.signals_delivered
                if rep.failed or rep.uncertain:
                    log.warning("fast path: %s (the sensor retries what is left)", rep.summary())
            except Exception:
                log.exception("fast path: delivery to %s failed", client.name)
            with self._lock:
                if not ev.is_set():
                    self._busy[client.name] = False
                self._lock.notify_all()

    def _on_delivered(self, client: ChannelClient, n: int, latency_s: float) -> None:
        if self._metrics is not None:
            self._metrics.delivered.labels(client.name).inc(n)
            self._metrics.latency.labels(client.name).observe(latency_s)


class _FastPathMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        from mdpipe.alerts.metrics import LATENCY_BUCKETS

        self.delivered = Counter(
            "mdpipe_alert_fast_path_deliveries",
            "Signals this process delivered itself (the fast path, not a sensor run)",
            ["channel"],
            registry=registry,
        )
        self.latency = Histogram(
            "mdpipe_alert_fast_path_latency_seconds",
            "Triggering event received to fast-path delivery confirmed",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


__all__ = ["FastPath"]
