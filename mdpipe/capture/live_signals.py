"""The online engine inside the capture process: normalized batches -> `live/signals`.

A consumer registered on `Capture` (its `register_consumer` hook): every normalized batch (about
every `batch_interval_s`) goes through one `mdpipe.core.online.OnlineEngine` per market; the
signals it releases are published at once, one small Parquet file per market and batch, through
`mdpipe.lake` (atomic), under `<lake>/live/signals/venue=/symbol=/date=/<name>.parquet`.
The date partition is the UTC day of the signal's exchange time, like every other table.

File names are sequence names (mdpipe/lake/paths.py, "Roll-ups"), like capture's own files:
`sig-[<writer id>-]YYYYMMDDTHH-<19-digit ns>.parquet`, the ns increasing with every publish of
this process (floored at the newest name already in the lake, so a restart with a clock stepped
back never names a file inside an existing roll-up's range). Publishes are serialised by a lock,
so a file still being written always has a larger ns than every file a roll-up can see: the
capture's hourly roll-up and the Dagster compaction job merge an hour of them into one file
(`Lake.compact`) with the same guarantees as book and trades. Files named before this scheme
(`sig-<ns>-<SYMBOL>-<n>.parquet`) are read as before and never rolled up.

Latency: the engine holds a book event until a later trade or `max_wait_ms` (default 500 ms) of
receive time tells it every trade at or before the event is known (that is what makes online
equal batch); a poller releases held events on a 100 ms timer when the streams go quiet. So a
signal is on disk within max_wait + one batch interval + a file write of its triggering event:
under a second with the defaults (`mdpipe_signal_publish_latency_seconds` measures it).

Cross-venue: every two markets of one underlying (`mdpipe.venues.underlying`, as the batch
step pairs them) get a `mdpipe.core.crossvenue.CrossVenueEngine` fed with the feature rows the
two markets' online engines release, so a multi-venue capture writes `cross_venue` signals
for the follower market into the same `live/signals` files, with the batch step's signal ids
and `settings_id` (the hash that includes `[cross_venue]`). The leader is chosen by the batch
rule (`crossvenue.leader_for`: the `[cross_venue] leader` setting, else the lead measured in
the lake's `lead_lag` of the day before the pair's first event), once per engine: a capture
running past midnight keeps its first day's leader and state, where the batch step restarts
each day (with the previous day as warm-up).

Each row is the `signals` contract (with `settings_id`, the hash of the `[features]` and
`[detectors]` settings this engine runs with: `mdpipe capture --config F` and `mdpipe run
--config F` stamp the same id) plus `recv_ts_ns` (when the triggering event was received)
and `emitted_ns` (when the row was written), from which alerts measure signal-to-delivery time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from mdpipe.alerts.ledger import default_ledger_path
from mdpipe.alerts.metrics import LedgerCollector, SignalMetrics
from mdpipe.lake import Lake, Partition, split_by_date

log = logging.getLogger("mdpipe.capture.signals")

TABLE = "live/signals"
FILE_PREFIX = "sig-"  # sequence-named: sig-[<writer id>-]YYYYMMDDTHH-<19-digit ns>.parquet


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
        cross_venue_config: Any = None,
        cross_max_wait_ms: float = 10_000.0,
        export_alert_metrics: bool = True,
        warm_up: bool = True,
        clock: Callable[[], int] = time.time_ns,
        meta_model: Any = None,
    ) -> None:
        from mdpipe.core.config import settings_id
        from mdpipe.core.crossvenue import CrossVenueConfig
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
        self.cross_config = cross_venue_config or CrossVenueConfig()
        self.cross_max_wait_ms = cross_max_wait_ms
        self.cross_settings_id = settings_id(
            feature_config or FeatureConfig(), detector_config or DetectorConfig(),
            self.cross_config,
        )  # fmt: skip
        # pair -> its engine (None until the pair's first row: the leader depends on the day)
        self.cross: dict[Any, Any] = {}
        self._pairs_of: dict[tuple[str, str], list[Any]] = {}
        # the receive-time clock: live, receive stamps are the wall clock; a replay injects
        # its own so held events are released exactly as they would have been live
        self.clock = clock
        # the pinned meta-model (`[meta] model_id`): fills `meta_prob` from the signal's own
        # feature row, the same call the batch step makes
        self.meta_model = meta_model
        # one engine per market; a multi-venue capture feeds every venue's batches here
        self.engines: dict[tuple[str, str], Any] = {}
        self.metrics = SignalMetrics(registry) if registry is not None else None
        if registry is not None and export_alert_metrics:
            # deliveries happen in short-lived Dagster runs; the long-lived capture process
            # exports their ledger so one scrape target shows the whole pipeline
            registry.register(LedgerCollector(default_ledger_path(lake.root)))
        self.signals_published = 0
        self.files_published: list[str] = []
        self.events_processed = 0
        self.writer_id = ""  # attach_live_signals sets the capture's (in every file name)
        self._name_ns = -1  # -1: not yet floored at the lake's newest name
        self._publish_lock = threading.Lock()
        # called with (partition, name ns) of each published file (the capture's roll-up)
        self.on_file: list[Callable[[Partition, int], None]] = []
        # called with each published frame once its files are on disk (the alerts fast path)
        self.listeners: list[Callable[[pl.DataFrame], None]] = []
        self._poller: asyncio.Task[None] | None = None
        if warm_up:
            self._warm_up()

    # ---- consumer ----------------------------------------------------------------------------
    def __call__(self, batch: Any) -> None:
        self._ensure_poller()
        t0 = time.perf_counter()
        book = batch.get("book")
        trades = batch.get("trades")
        markets: set[tuple[str, str]] = set()
        for df in (book, trades):
            if df.height:
                markets.update(df.select("venue", "symbol").unique().iter_rows())
        out: list[pl.DataFrame] = []
        for venue, sym in sorted(markets):
            eng = self._engine(venue, sym)
            mine = (pl.col("venue") == venue) & (pl.col("symbol") == sym)
            res = eng.feed(
                book=book.filter(mine) if book.height else None,
                trades=trades.filter(mine) if trades.height else None,
            )
            self._count_events(venue, sym, res.features)
            if res.signals.height:
                out.append(self._meta(_with_receive_time(res.signals, res.features), res.features))
            out.extend(self._forward(venue, sym, res.features))
        out.extend(self._poll_all(self.clock()))
        if self.metrics is not None and markets:
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
            "engines": {f"{v}:{s}": e.get_stats() for (v, s), e in self.engines.items()},
            "cross_venue": {
                f"{p.venue_a}:{p.symbol_a}/{p.venue_b}:{p.symbol_b}": e.stats()
                for p, e in self.cross.items()
                if e is not None
            },
        }

    def flush(self) -> None:
        """Release everything every engine holds and publish what it triggers (end of a
        replay, shutdown): the markets' engines first, then the cross-venue ones."""
        out: list[pl.DataFrame] = []
        for (venue, sym), eng in self.engines.items():
            res = eng.flush_frames()
            self._count_events(venue, sym, res.features)
            if res.signals.height:
                out.append(_with_receive_time(res.signals, res.features))
            out.extend(self._forward(venue, sym, res.features))
        for eng in self.cross.values():
            got = eng.flush() if eng is not None else None
            if got is not None:
                out.append(got)
        if out:
            self._publish(pl.concat(out, how="diagonal_relaxed"))

    # ---- internals ---------------------------------------------------------------------------
    def _engine(self, venue: str, symbol: str) -> Any:
        eng = self.engines.get((venue, symbol))
        if eng is None:
            kw: dict[str, Any] = {"venue": venue, "symbol": symbol}
            if self.detector_config is not None:
                kw["detector_config"] = self.detector_config
            if self.feature_config is not None:
                kw["feature_config"] = self.feature_config
            eng = self.engines[(venue, symbol)] = self._engine_cls(
                max_wait_ms=self.max_wait_ms, **kw
            )
            self._pair_up(venue, symbol)
        return eng

    def _pair_up(self, venue: str, symbol: str) -> None:
        """Pair a new market with every known market of the same underlying (a is the first
        by market key, as in the batch step)."""
        from mdpipe.core.crossvenue import Pair
        from mdpipe.lake import market_key
        from mdpipe.venues import underlying

        try:
            und = underlying(venue, symbol)
        except ValueError:
            log.warning("%s:%s: no underlying known, no cross-venue signals for it", venue, symbol)
            return
        for other in list(self._pairs_of):
            if other == (venue, symbol):
                continue
            try:
                if underlying(*other) != und:
                    continue
            except ValueError:
                continue
            a, b = sorted([other, (venue, symbol)], key=lambda m: market_key(*m))
            pair = Pair(und, *a, *b)
            self.cross[pair] = None
            self._pairs_of[other].append(pair)
            self._pairs_of.setdefault((venue, symbol), []).append(pair)
        self._pairs_of.setdefault((venue, symbol), [])

    def _cross_engine(self, pair: Any, first_ts_ns: int) -> Any:
        from mdpipe.core.crossvenue import CrossVenueEngine, leader_for
        from mdpipe.lake import LEAD_LAG_TABLE, date_of_ns, day_start_ns

        prev_date = date_of_ns(day_start_ns(date_of_ns(first_ts_ns)) - 1)
        prev = self.lake.read_underlying(LEAD_LAG_TABLE, pair.underlying, prev_date)
        leader, window, how = leader_for(pair, self.cross_config, prev, prev_date)
        log.info(
            "cross-venue %s:%s / %s:%s: %s",
            pair.venue_a, pair.symbol_a, pair.venue_b, pair.symbol_b, how,
        )  # fmt: skip
        eng = CrossVenueEngine(
            pair, self.cross_config, settings_id=self.cross_settings_id, leader=leader,
            lead_window_ns=window, max_wait_ms=self.cross_max_wait_ms, with_recv=True,
        )  # fmt: skip
        self.cross[pair] = eng
        return eng

    def _forward(self, venue: str, symbol: str, features: pl.DataFrame) -> list[pl.DataFrame]:
        """Hand a market's released feature rows (in release order) to its pairs' engines."""
        pairs = self._pairs_of.get((venue, symbol))
        if not pairs or not features.height:
            return []
        rows = features.select(
            "ts_ns", "recv_ts_ns", "mid", "best_bid", "best_ask", "spread_bps", "update_id"
        ).rows()
        out = []
        for pair in pairs:
            eng = self.cross[pair] or self._cross_engine(pair, rows[0][0])
            side = eng.side_of(venue, symbol)
            for r in rows:
                got = eng.on_row(side, *r)
                if got is not None:
                    out.append(got)
        return out

    def _poll_all(self, now_ns: int) -> list[pl.DataFrame]:
        out = []
        for (venue, sym), eng in self.engines.items():
            sigs = eng.poll(now_ns)
            feats = eng.drain_features()  # poll parks released rows there; keep memory flat
            self._count_events(venue, sym, feats)
            if sigs:
                df = pl.DataFrame([s.as_dict() for s in sigs])
                out.append(self._meta(_with_receive_time(df, feats, context=True), feats))
            out.extend(self._forward(venue, sym, feats))
        for eng in self.cross.values():
            got = eng.poll(now_ns) if eng is not None else None
            if got is not None:
                out.append(got)
        return out

    def _meta(self, signals: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
        from mdpipe.core.meta import with_meta_prob

        return with_meta_prob(signals, features, self.meta_model)

    def _count_events(self, venue: str, symbol: str, features: pl.DataFrame) -> None:
        n = features.height
        if n:
            self.events_processed += n
            if self.metrics is not None:
                self.metrics.events.labels(venue, symbol).inc(n)

    def _publish(self, signals: pl.DataFrame) -> None:
        now = time.time_ns()
        signals = conform_live_signals(
            signals.with_columns(
                # rows released by `poll` come from `Signal` objects, which carry no id;
                # cross-venue rows carry their own (it hashes `[cross_venue]` too)
                settings_id=(
                    pl.coalesce(pl.col("settings_id"), pl.lit(self.settings_id, pl.String))
                    if "settings_id" in signals.columns
                    else pl.lit(self.settings_id, dtype=pl.String)
                ),
                source=pl.lit("live", dtype=pl.String),
                emitted_ns=pl.lit(now, dtype=pl.Int64),
            )
        )
        with self._publish_lock:
            # named and written under the lock: files appear in name order (see the docstring)
            name, name_ns = self._file_name(signals)
            for date, day in split_by_date(signals, TABLE).items():
                for (venue, sym), part in day.group_by("venue", "symbol", maintain_order=True):
                    path = self.lake.publish(TABLE, str(venue), str(sym), date, part, name=name)
                    self.files_published.append(str(path))
                    for cb in self.on_file:
                        cb(Partition(TABLE, str(venue), str(sym), date), name_ns)
        published = time.time_ns()
        self.signals_published += signals.height
        for listener in self.listeners:
            try:
                listener(signals)
            except Exception:  # delivery is the sensor's job too; recording goes on
                log.exception("live signal listener failed")
        for row in signals.select("symbol", "signal_type", "score", "signal_id").iter_rows():
            log.info("live signal %s %s %s score %.2f", row[0], row[1], row[3], row[2])
        if self.metrics is not None:
            m = self.metrics
            for venue, sym, st, score in signals.select(
                "venue", "symbol", "signal_type", "score"
            ).iter_rows():
                m.signals.labels(venue, sym, st).inc()
                m.active.add(venue, sym, st, published)
                m.score.labels(venue, st).observe(float(score))
            recv = signals["recv_ts_ns"].drop_nulls().to_numpy()
            for lat in (published - recv) / 1e9:
                m.publish_latency.labels(self.venue).observe(float(lat))

    def _file_name(self, signals: pl.DataFrame) -> tuple[str, int]:
        if self._name_ns < 0:
            self._name_ns = self._lake_name_floor(signals)
        ns = max(time.time_ns(), self._name_ns + 1)
        self._name_ns = ns
        t = time.gmtime(ns // 1_000_000_000)
        stamp = f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}T{t.tm_hour:02d}"
        writer = f"{self.writer_id}-" if self.writer_id else ""
        return f"{FILE_PREFIX}{writer}{stamp}-{ns:019d}.parquet", ns

    def _lake_name_floor(self, signals: pl.DataFrame) -> int:
        """The newest name ns among the two newest date partitions of the markets in the first
        publish (as capture's publisher floors its own names)."""
        best = 0
        for venue, sym in signals.select("venue", "symbol").unique().iter_rows():
            for part in self.lake.partition_dirs(TABLE, str(venue), str(sym))[-2:]:
                best = max(best, self.lake.max_sequence_ns(part))
        return best

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


def conform_live_signals(signals: pl.DataFrame) -> pl.DataFrame:
    """One schema for every file (signals released by `feed` and by `poll` come from
    different code paths): the batch `signals` columns and dtypes, then the live extras."""
    from mdpipe.core.batch import SIGNAL_COLUMNS, empty_signals

    schema = dict(empty_signals().schema)
    schema.update(
        {
            "recv_ts_ns": pl.Int64(),
            "emitted_ns": pl.Int64(),
            "leader_venue": pl.String(),  # cross_venue rows: the market that moved first
            "leader_symbol": pl.String(),
        }
    )
    cols = [*SIGNAL_COLUMNS, "recv_ts_ns", "emitted_ns", "leader_venue", "leader_symbol"]
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
    # each venue's capture rolls up its own signal partitions with its hourly roll-up
    captures = getattr(capture, "captures", None) or {capture.venue: capture}
    ls.writer_id = getattr(next(iter(captures.values())), "writer_id", "") or ""
    for cap in captures.values():
        publisher = getattr(cap, "publisher", None)
        if publisher is not None:
            ls.on_file.append(publisher.signal_file_published)
    return ls


__all__ = ["TABLE", "LiveSignals", "attach_live_signals", "conform_live_signals"]
