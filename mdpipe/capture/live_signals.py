"""The online engine inside the capture process: normalized batches -> `live/signals`.

A consumer registered on `Capture` (its `register_consumer` hook): every normalized batch (about
every `batch_interval_s`) goes through one `mdpipe.core.online.OnlineEngine` per market; the
signals it releases are published at once, one small Parquet file per market and batch, through
`mdpipe.lake` (atomic), under `<lake>/live/signals/venue=/symbol=/date=/sig-<ns>-<n>.parquet`.
The date partition is the UTC day of the signal's exchange time, like every other table.

Latency: the engine holds a book event until a later trade or `max_wait_ms` (default 500 ms) of
receive time tells it every trade at or before the event is known (that is what makes online
equal batch); a poller releases held events on a 100 ms timer when the streams go quiet. So a
signal is on disk within max_wait + one batch interval + a file write of its triggering event:
under a second with the defaults (`mdpipe_signal_publish_latency_seconds` measures it).

Each row is the `signals` contract (with `settings_id`, the hash of the `[features]` and
`[detectors]` settings this engine runs with: `mdpipe capture --config F` and `mdpipe run
--config F` stamp the same id) plus `recv_ts_ns` (when the triggering event was received)
and `emitted_ns` (when the row was written), from which alerts measure signal-to-delivery time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from mdpipe.alerts.ledger import default_ledger_path
from mdpipe.alerts.metrics import LedgerCollector, SignalMetrics
from mdpipe.lake import Lake, split_by_date, symbol_to_path

log = logging.getLogger("mdpipe.capture.signals")

TABLE = "live/signals"


class LiveSignals:
    """Batch consumer: `consumer(batch)`; `poll(now_ns)` releases events held too long."""

    def __init__(
        self,
        lake: Lake,
        venue: str,
        *,
        registry: Any = None,
        max_wait_ms: float = 500.0,
        poll_interval_s: float = 0.1,
        detector_config: Any = None,
        feature_config: Any = None,
        export_alert_metrics: bool = True,
        warm_up: bool = True,
        clock: Callable[[], int] = time.time_ns,
        meta_model: Any = None,
    ) -> None:
        from mdpipe.core.config import settings_id
        from mdpipe.core.detectors.ensemble import DetectorConfig
        from mdpipe.core.features import FeatureConfig
        from mdpipe.core.online import OnlineEngine

        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        self._engine_cls = OnlineEngine
        self.lake = lake
        self.venue = venue
        self.max_wait_ms = max_wait_ms
        self.poll_interval_s = poll_interval_s
        self.detector_config = detector_config
        self.feature_config = feature_config
        self.settings_id = settings_id(
            feature_config or FeatureConfig(), detector_config or DetectorConfig()
        )
        # the receive-time clock: live, receive stamps are the wall clock; a replay injects
        # its own so held events are released exactly as they would have been live
        self.clock = clock
        # the pinned meta-model (`[meta] model_id`): fills `meta_prob` from the signal's own
        # feature row, the same call the batch step makes
        self.meta_model = meta_model
        self.engines: dict[str, Any] = {}
        self.metrics = SignalMetrics(registry) if registry is not None else None
        if registry is not None and export_alert_metrics:
            # deliveries happen in short-lived Dagster runs; the long-lived capture process
            # exports their ledger so one scrape target shows the whole pipeline
            registry.register(LedgerCollector(default_ledger_path(lake.root)))
        self.signals_published = 0
        self.files_published: list[str] = []
        self.events_processed = 0
        self._file_seq = 0
        self._poller: asyncio.Task[None] | None = None
        if warm_up:
            self._warm_up()

    # ---- consumer ----------------------------------------------------------------------------
    def __call__(self, batch: Any) -> None:
        self._ensure_poller()
        t0 = time.perf_counter()
        book = batch.get("book")
        trades = batch.get("trades")
        symbols: set[str] = set()
        for df in (book, trades):
            if df.height:
                symbols.update(df["symbol"].unique().to_list())
        out: list[pl.DataFrame] = []
        for sym in sorted(symbols):
            eng = self._engine(sym)
            res = eng.feed(
                book=book.filter(pl.col("symbol") == sym) if book.height else None,
                trades=trades.filter(pl.col("symbol") == sym) if trades.height else None,
            )
            self._count_events(sym, res.features)
            if res.signals.height:
                out.append(self._meta(_with_receive_time(res.signals, res.features), res.features))
        out.extend(self._poll_all(self.clock()))
        if self.metrics is not None and symbols:
            self.metrics.batch_seconds.labels(self.venue).observe(time.perf_counter() - t0)
        if out:
            self._publish(pl.concat(out, how="diagonal_relaxed"))

    def poll(self, now_ns: int | None = None) -> None:
        """Release held events (quiet streams); publishes what they trigger."""
        out = self._poll_all(now_ns or self.clock())
        if out:
            self._publish(pl.concat(out, how="diagonal_relaxed"))

    def get_stats(self) -> dict[str, Any]:
        return {
            "events_processed": self.events_processed,
            "signals_published": self.signals_published,
            "files_published": len(self.files_published),
            "engines": {s: e.get_stats() for s, e in self.engines.items()},
        }

    # ---- internals ---------------------------------------------------------------------------
    def _engine(self, symbol: str) -> Any:
        eng = self.engines.get(symbol)
        if eng is None:
            kw: dict[str, Any] = {"venue": self.venue, "symbol": symbol}
            if self.detector_config is not None:
                kw["detector_config"] = self.detector_config
            if self.feature_config is not None:
                kw["feature_config"] = self.feature_config
            eng = self.engines[symbol] = self._engine_cls(max_wait_ms=self.max_wait_ms, **kw)
        return eng

    def _poll_all(self, now_ns: int) -> list[pl.DataFrame]:
        out = []
        for sym, eng in self.engines.items():
            sigs = eng.poll(now_ns)
            feats = eng.drain_features()  # poll parks released rows there; keep memory flat
            self._count_events(sym, feats)
            if sigs:
                df = pl.DataFrame([s.as_dict() for s in sigs])
                out.append(self._meta(_with_receive_time(df, feats, context=True), feats))
        return out

    def _meta(self, signals: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
        from mdpipe.core.meta import with_meta_prob

        return with_meta_prob(signals, features, self.meta_model)

    def _count_events(self, symbol: str, features: pl.DataFrame) -> None:
        n = features.height
        if n:
            self.events_processed += n
            if self.metrics is not None:
                self.metrics.events.labels(self.venue, symbol).inc(n)

    def _publish(self, signals: pl.DataFrame) -> None:
        now = time.time_ns()
        signals = _conform(
            signals.with_columns(
                # rows released by `poll` come from `Signal` objects, which carry no id
                settings_id=pl.lit(self.settings_id, dtype=pl.String),
                emitted_ns=pl.lit(now, dtype=pl.Int64),
            )
        )
        for date, day in split_by_date(signals, TABLE).items():
            for (sym,), part in day.group_by("symbol", maintain_order=True):
                self._file_seq += 1
                name = f"sig-{now:019d}-{symbol_to_path(str(sym))}-{self._file_seq}.parquet"
                path = self.lake.publish(TABLE, self.venue, str(sym), date, part, name=name)
                self.files_published.append(str(path))
        published = time.time_ns()
        self.signals_published += signals.height
        for row in signals.select("symbol", "signal_type", "score", "signal_id").iter_rows():
            log.info("live signal %s %s %s score %.2f", row[0], row[1], row[3], row[2])
        if self.metrics is not None:
            m = self.metrics
            for sym, st, score in signals.select("symbol", "signal_type", "score").iter_rows():
                m.signals.labels(self.venue, sym, st).inc()
                m.active.add(self.venue, sym, st, published)
                m.score.labels(self.venue, st).observe(float(score))
            recv = signals["recv_ts_ns"].drop_nulls().to_numpy()
            for lat in (published - recv) / 1e9:
                m.publish_latency.labels(self.venue).observe(float(lat))

    def _ensure_poller(self) -> None:
        if self._poller is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside an event loop (tests, replays): poll() is the caller's job
        self._poller = loop.create_task(self._poll_loop(), name="live-signals-poll")

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self.poll()
            except Exception:  # a detector bug must not stop the recording
                log.exception("live signal poll failed")

    def _warm_up(self) -> None:
        """Load the engine's numba kernels now, not on the first live batch (where a cold
        compile would stall the websocket reader for seconds)."""
        t0 = time.perf_counter()
        eng = self._engine_cls(venue=self.venue, symbol="WARM/UP", max_wait_ms=self.max_wait_ms)
        base = 1_700_000_000_000_000_000
        n = 4
        book = pl.DataFrame(
            {
                "venue": [self.venue] * n,
                "symbol": ["WARM/UP"] * n,
                "exch_ts_ns": [base] * 2 + [base + 100_000_000] * 2,
                "recv_ts_ns": [base] * 2 + [base + 100_000_000] * 2,
                "update_id": [1, 1, 2, 2],
                "side": ["bid", "ask", "bid", "ask"],
                "price": [100.0, 101.0, 100.5, 101.0],
                "qty": [1.0, 1.0, 2.0, 1.0],
                "is_snapshot": [True, True, False, False],
            }
        )
        trades = pl.DataFrame(
            {
                "venue": [self.venue],
                "symbol": ["WARM/UP"],
                "exch_ts_ns": [base + 200_000_000],
                "recv_ts_ns": [base + 200_000_000],
                "trade_id": [1],
                "price": [100.7],
                "qty": [0.1],
                "side": ["buy"],
            }
        )
        eng.feed(book=book, trades=trades)
        eng.poll(base + 10**10)
        eng.drain_features()
        log.info("online engine ready in %.2f s", time.perf_counter() - t0)


def _with_receive_time(
    signals: pl.DataFrame, features: pl.DataFrame, *, context: bool = False
) -> pl.DataFrame:
    """Add `recv_ts_ns` of the triggering event (and, for signals released by `poll`, the
    feature values the batch path copies into each signal row)."""
    from mdpipe.core.batch import SIGNAL_CONTEXT

    want = ["recv_ts_ns"] + (
        [c for c in SIGNAL_CONTEXT if c not in signals.columns] if context else []
    )
    have = [c for c in want if c in features.columns and c not in signals.columns]
    if not have or not features.height:
        if "recv_ts_ns" not in signals.columns:
            signals = signals.with_columns(recv_ts_ns=pl.lit(None, dtype=pl.Int64))
        return signals
    f = features.select("update_id", *have).unique("update_id", keep="last")
    return signals.join(f, on="update_id", how="left")


def _conform(signals: pl.DataFrame) -> pl.DataFrame:
    """One schema for every file (signals released by `feed` and by `poll` come from
    different code paths): the batch `signals` columns and dtypes, then the live extras."""
    from mdpipe.core.batch import SIGNAL_COLUMNS, empty_signals

    schema = dict(empty_signals().schema)
    schema.update({"recv_ts_ns": pl.Int64(), "emitted_ns": pl.Int64()})
    cols = [*SIGNAL_COLUMNS, "recv_ts_ns", "emitted_ns"]
    return signals.select(
        [
            (pl.col(c) if c in signals.columns else pl.lit(None)).cast(schema[c]).alias(c)
            for c in cols
        ]
    )


def attach_live_signals(
    capture: Any, *, required: bool = False, **kwargs: Any
) -> LiveSignals | None:
    """Run the online engine on `capture`'s batches and export its metrics on its /metrics.

    With `required=False` (the CLI) an engine that cannot start is logged and capture runs on
    without live signals: recording the market must never depend on the detector.
    """
    try:
        ls = LiveSignals(capture.lake, capture.venue, registry=capture.registry, **kwargs)
    except Exception:
        if required:
            raise
        log.exception("online engine unavailable: capturing WITHOUT live signals")
        return None
    capture.register_consumer(ls)
    return ls


__all__ = ["TABLE", "LiveSignals", "attach_live_signals"]
