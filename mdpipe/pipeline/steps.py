"""The pipeline's partition steps, without Dagster: read the lake, call `mdpipe.core`, write.

Each asset in `mdpipe.defs.assets` is a thin wrapper over one function here, so the same steps
run under Dagster, in `bench/pipeline.py` (to measure Dagster's own overhead separately) and in
tests. Every write goes through `Lake.replace_partition` under `derived/<asset>`, which
publishes one file under a fixed name atomically: re-running a partition replaces exactly it,
and a concurrent reader sees the old file or the new one, never a mix.

Partition boundaries (DESIGN.md, "Partition boundaries are honest"):

- `features` / `signals` of day D warm up on day D-1 when the lake has it:
  `mdpipe.pipeline.read.compute_partition` replays D-1's book (book only: cheap) and runs its last
  `WARMUP_SECONDS` (30 min) through the full state machine without output, hence rolling
  windows, standardisers, BOCPD and the detectors start warm at D's first event and D's rows
  carry `is_warmup = false`.
- `labels` of day D look past the day end into day D+1's `features` partition when it has been
  materialised; a label whose horizon needs prices that are not there is `censored`. Day D is
  known complete up to its end when the lake holds any D+1 book data (the capture moved on);
  otherwise (today's partition, still growing) it is known complete only up to its last event.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mdpipe.core.batch import (
    BOOK_PRICED_TRADE_FEATURES,
    TRADE_FEATURES,
    compute_features_and_signals,
    compute_trade_features_and_signals,
    empty_features,
    empty_signals,
)
from mdpipe.core.config import BacktestConfig
from mdpipe.core.cv import check_no_leakage, make_cv_folds
from mdpipe.core.labels import PricePath, TradePath, make_labels
from mdpipe.core.metrics import evaluate
from mdpipe.lake import (
    CROSS_SIGNALS_TABLE,
    NS_PER_DAY,
    Lake,
    day_start_ns,
    market_key,
    parse_market_key,
)
from mdpipe.pipeline.read import compute_partition
from mdpipe.pipeline.reports import write_report, write_summary_report

if TYPE_CHECKING:
    from mdpipe.core.detectors.ensemble import DetectorConfig
    from mdpipe.core.features import FeatureConfig
    from mdpipe.core.meta import MetaModel

# Feature columns checked for finiteness after warm-up. `microprice` is excluded on purpose:
# it is NaN by design unless a model fitted on an earlier partition is supplied.
NOT_REQUIRED_FINITE = frozenset({"microprice"})
# |exchange time - receive time| beyond this is a clock or transport problem worth a look.
# The bundled recorder ran ~1.27 s behind Binance, so the bound is deliberately loose.
MAX_CLOCK_OFFSET_S = 5.0
PREVIEW_ROWS = 5
BOOK_COLUMNS = ("exch_ts_ns", "recv_ts_ns", "update_id", "side", "price", "qty", "is_snapshot")
SIDE_ENUM = pl.Enum(["bid", "ask"])
# Warm-up runs this much of the previous day in full (before it, the previous day's book is
# only rebuilt): the longest rolling window is 30 s and the standardisers' half-life is 3000
# events (~5 min at Binance's 100 ms depth stream), so 30 min starts every statistic warm.
WARMUP_SECONDS = 1800


@dataclass(frozen=True)
class Part:
    """One partition: a UTC day of one market."""

    date: str
    venue: str
    symbol: str

    @classmethod
    def from_keys(cls, date: str, market: str) -> Part:
        venue, symbol = parse_market_key(market)
        dt.date.fromisoformat(date)  # a clear error for a malformed date
        return cls(date, venue, symbol)

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)

    @property
    def label(self) -> str:
        return f"{self.date}|{self.market}"

    def shifted(self, days: int) -> Part:
        d = dt.date.fromisoformat(self.date) + dt.timedelta(days=days)
        return Part(d.isoformat(), self.venue, self.symbol)

    @property
    def start_ns(self) -> int:
        return day_start_ns(self.date)

    @property
    def end_ns(self) -> int:
        """Last nanosecond of the day."""
        return self.start_ns + NS_PER_DAY - 1


def derived(asset: str) -> str:
    return f"derived/{asset}"


def _read(lake: Lake, table: str, part: Part) -> pl.DataFrame:
    return lake.read(table, part.venue, part.symbol, part.date)


def has_data(lake: Lake, table: str, part: Part) -> bool:
    return bool(lake.files(table, part.venue, part.symbol, part.date))


def read_book(lake: Lake, part: Part) -> pl.DataFrame:
    """Book rows in applied order: stable sort by (update_id asc, is_snapshot desc), the order
    the lake defines (a snapshot's lastUpdateId sits below every diff applied on top of it).
    Only the columns the driver needs, `side` as a two-value Enum; the sort (a full copy)
    only runs when the rows are not already in that order."""
    book = (
        lake.scan("book", part.venue, part.symbol, part.date)
        .select(BOOK_COLUMNS)
        .with_columns(pl.col("side").cast(SIDE_ENUM))
        .collect()
    )
    if in_applied_order(book["update_id"].to_numpy(), book["is_snapshot"].to_numpy()):
        return book
    return book.sort(["update_id", "is_snapshot"], descending=[False, True], maintain_order=True)


def in_applied_order(uid: np.ndarray, snap: np.ndarray) -> bool:
    """Whether rows are already in applied order: (update_id asc, is_snapshot desc)."""
    # numpy on zero-copy views: the same test as polars expressions, without full-length
    # temporaries
    if uid.shape[0] < 2:
        return True
    if np.any(uid[1:] < uid[:-1]):
        return False
    return not np.any((uid[1:] == uid[:-1]) & snap[1:] & ~snap[:-1])


def read_trades(lake: Lake, part: Part) -> pl.DataFrame:
    trades = _read(lake, "trades", part)
    return trades.sort(["exch_ts_ns", "trade_id"], maintain_order=True)


def time_span(ts: pl.Series) -> dict[str, Any]:
    """First and last timestamp (ISO, UTC) of an ns column and the seconds between them."""
    if ts.len() == 0 or ts.null_count() == ts.len():
        return {"first": None, "last": None, "seconds": 0.0}
    lo, hi = int(ts.min()), int(ts.max())  # type: ignore[arg-type]
    return {"first": _iso(lo), "last": _iso(hi), "seconds": (hi - lo) / 1e9}


def _iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- data quality of the raw ticks


@dataclass
class TickQuality:
    """What the raw tables of one partition look like (the `ticks` observation and the data
    quality checks of `features`)."""

    book_rows: int
    book_events: int
    trade_rows: int
    gap_rows: int
    gap_kinds: dict[str, int]
    sequence_gaps: int
    longest_gap_ids: int  # missing update ids in the worst recorded sequence gap
    longest_silence_s: float  # longest time between consecutive book events
    clock_offset_median_s: float  # exchange minus receive time, per book event
    clock_offset_max_abs_s: float
    last_recv_ns: int | None
    span: dict[str, Any]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "book_rows": self.book_rows,
            "book_events": self.book_events,
            "trade_rows": self.trade_rows,
            "gaps": self.gap_rows,
            "gap_kinds": dict(self.gap_kinds),
            "sequence_gaps": self.sequence_gaps,
            "longest_gap_update_ids": self.longest_gap_ids,
            "longest_silence_s": round(self.longest_silence_s, 3),
            "clock_offset_median_s": _round(self.clock_offset_median_s),
            "clock_offset_max_abs_s": _round(self.clock_offset_max_abs_s),
            "last_received": _iso(self.last_recv_ns) if self.last_recv_ns else None,
            "first_event": self.span["first"],
            "last_event": self.span["last"],
        }


def _round(x: float, nd: int = 4) -> float | None:
    return round(x, nd) if math.isfinite(x) else None


def tick_quality(lake: Lake, part: Part, features: pl.DataFrame) -> TickQuality:
    """Rows, gaps, silences and clock offsets of a partition: row counts from the Parquet
    footers, gaps from the (small) gaps table, and event timing from the `features` rows (one
    per applied book event, with exchange and receive time), so the raw book is never read
    a second time."""
    summary = tick_summary(lake, part)
    gaps = _read(lake, "gaps", part)
    ets = features["ts_ns"].to_numpy() if features.height else np.zeros(0, np.int64)
    silence = float(np.max(np.diff(np.sort(ets)))) / 1e9 if ets.size > 1 else 0.0
    offs = (
        (features["ts_ns"] - features["recv_ts_ns"]).drop_nulls().to_numpy() / 1e9
        if features.height
        else np.zeros(0)
    )
    seq = gaps.filter(pl.col("kind") == "sequence_gap") if gaps.height else gaps
    longest = 0
    if seq.height:
        missing = (seq["next_update_id"] - seq["prev_update_id"] - 1).drop_nulls()
        longest = int(missing.max()) if missing.len() else 0  # type: ignore[arg-type]
    return TickQuality(
        book_rows=summary["book_rows"],
        book_events=features.height,
        trade_rows=summary["trade_rows"],
        gap_rows=gaps.height,
        gap_kinds=summary["gap_kinds"],
        sequence_gaps=seq.height,
        longest_gap_ids=longest,
        longest_silence_s=silence,
        clock_offset_median_s=float(np.median(offs)) if offs.size else math.nan,
        clock_offset_max_abs_s=float(np.max(np.abs(offs))) if offs.size else math.nan,
        last_recv_ns=summary["last_recv_ns"],
        span=time_span(features["ts_ns"]) if features.height else time_span(pl.Series([])),
    )


def _footer_stats(
    lake: Lake, files: list[Path], columns: tuple[str, ...]
) -> tuple[int, dict[str, tuple]]:
    """Row count and (min, max) per column from Parquet footers, without reading data."""
    rows = 0
    bounds: dict[str, tuple] = {}
    for f in files:
        md = lake.parquet_file(f).metadata
        rows += md.num_rows
        names = md.schema.names
        for rg in range(md.num_row_groups):
            grp = md.row_group(rg)
            for c in columns:
                if c not in names:
                    continue
                st = grp.column(names.index(c)).statistics
                if st is None or not st.has_min_max:
                    continue
                lo, hi = bounds.get(c, (st.min, st.max))
                bounds[c] = (min(lo, st.min), max(hi, st.max))
    return rows, bounds


def tick_summary(lake: Lake, part: Part) -> dict[str, Any]:
    """The cheap observation of a partition's raw tables (Parquet footers and the small gaps
    table only), for the sensor that watches the whole lake. The full scan (silences, clock
    offsets) belongs to the `features` step and its checks."""
    files = {t: lake.files(t, part.venue, part.symbol, part.date) for t in ("book", "trades")}
    book_rows, bb = _footer_stats(lake, files["book"], ("exch_ts_ns", "recv_ts_ns"))
    trade_rows, tb = _footer_stats(lake, files["trades"], ("exch_ts_ns", "recv_ts_ns"))
    gaps = _read(lake, "gaps", part)
    recv = [b[1] for b in (bb.get("recv_ts_ns"), tb.get("recv_ts_ns")) if b]
    exch = [b for b in (bb.get("exch_ts_ns"), tb.get("exch_ts_ns")) if b]
    return {
        "book_rows": book_rows,
        "trade_rows": trade_rows,
        "gaps": gaps.height,
        "gap_kinds": dict(gaps.group_by("kind").len().sort("kind").iter_rows())
        if gaps.height
        else {},
        "sequence_gaps": gaps.filter(pl.col("kind") == "sequence_gap").height if gaps.height else 0,
        "first_event": _iso(min(b[0] for b in exch)) if exch else None,
        "last_event": _iso(max(b[1] for b in exch)) if exch else None,
        "last_received": _iso(max(recv)) if recv else None,
        "last_recv_ns": max(recv) if recv else None,
        "files": sum(len(v) for v in files.values()),
    }


def partition_fingerprint(lake: Lake, part: Part) -> str:
    """Names, sizes and mtimes of the raw files: changes whenever the partition's data does."""
    bits = []
    for table in ("book", "trades", "gaps"):
        for f in lake.files(table, part.venue, part.symbol, part.date):
            st = f.stat()
            bits.append(f"{table}/{f.name}:{st.st_size}:{st.st_mtime_ns}")
    import hashlib

    return hashlib.sha256("\n".join(bits).encode()).hexdigest()[:16]


def raw_parts(lake: Lake) -> list[Part]:
    """Every (day, market) with book or trade data in the lake."""
    found = {
        Part(p.date, p.venue, p.symbol) for t in ("book", "trades") for p in lake.partitions(t)
    }
    return sorted(found, key=lambda p: (p.date, p.market))


# ---------------------------------------------------------------- features and signals


@dataclass
class FeaturesOutput:
    features: pl.DataFrame
    signals: pl.DataFrame
    quality: TickQuality
    stats: dict[str, Any]
    warmup_from: str | None  # the previous day replayed for warm-up, if any
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    missing: str | None = None  # what the partition lacks and what was computed without it

    @property
    def trades_only(self) -> bool:
        return self.missing is not None and self.quality.book_rows == 0


TRADES_ONLY_NOTE = (
    "no book rows in this partition (a trade dump, or a recording whose depth snapshot never "
    "came): features are one row per trade time with the trade columns only (book columns "
    "best_bid, mid, spread, imbalance, OFI, BOCPD ... are NaN); only detectors fed by trade "
    "features (volume and volatility bursts, taker-imbalance drift) can fire; labels use trade prices (no spread: bid = ask = last trade price)"
)


def compute_features_signals(
    lake: Lake,
    part: Part,
    prev: Part | None,
    warmup_seconds: float,
    stats: dict[str, Any],
    *,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The one call into the core's batch driver (features and detectors share one pass).

    `read.compute_partition` streams the book from the lake in record batches (a full BTC/USDT
    day is ~40 M level changes; holding it in memory would not fit the 4 GiB budget) and
    replays the previous day book-only except its last `warmup_seconds`. It reads each
    partition's files in name order, which is applied order only when a partition is one
    file (what `mdpipe import` produces in one go); several files are read whole and sorted
    into applied order instead (slower, more memory, always correct)."""
    kw: dict[str, Any] = {
        "warmup_minutes": warmup_seconds / 60.0,
        "stats": stats,
        "feature_config": feature_config,
        "detector_config": detector_config,
    }
    single = all(len(lake.files("book", p.venue, p.symbol, p.date)) <= 1 for p in (part, prev) if p)
    if single:
        return compute_partition(
            lake,
            part.venue,
            part.symbol,
            part.date,
            prev_date=prev.date if prev else None,
            **kw,
        )
    return compute_features_and_signals(
        read_book(lake, part),
        read_trades(lake, part),
        venue=part.venue,
        symbol=part.symbol,
        prev_book=read_book(lake, prev) if prev else None,
        prev_trades=read_trades(lake, prev) if prev else None,
        **kw,
    )


def features_step(
    lake: Lake,
    part: Part,
    *,
    warmup: bool = True,
    warmup_seconds: float = WARMUP_SECONDS,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    meta_model: MetaModel | None = None,
) -> FeaturesOutput:
    """`features` and `signals` of a partition, written under derived/; warmed up on the last
    `warmup_seconds` of the previous day when the lake has it. The configs default to the
    core's defaults (`mdpipe.settings` gives the effective ones)."""
    t0 = time.perf_counter()
    prev = part.shifted(-1)
    warm = warmup and has_data(lake, "book", prev)
    stats: dict[str, Any] = {}
    missing = None
    if has_data(lake, "book", part):
        features, signals = compute_features_signals(
            lake, part, prev if warm else None, warmup_seconds, stats,
            feature_config=feature_config, detector_config=detector_config,
        )  # fmt: skip
    elif has_data(lake, "trades", part):
        warm = False  # no book to warm up from; the trade windows start cold
        features, signals = compute_trade_features_and_signals(
            read_trades(lake, part), venue=part.venue, symbol=part.symbol,
            feature_config=feature_config, detector_config=detector_config, stats=stats,
        )  # fmt: skip
        missing = TRADES_ONLY_NOTE
    else:
        features = empty_features(part.venue, part.symbol)
        signals = empty_signals()
    if meta_model is not None:
        from mdpipe.core.meta import with_meta_prob

        signals = with_meta_prob(signals, features, meta_model)
    quality = tick_quality(lake, part, features)
    paths = {
        "features": lake.replace_partition(
            derived("features"), part.venue, part.symbol, part.date, features
        ),
        "signals": lake.replace_partition(
            derived("signals"), part.venue, part.symbol, part.date, signals
        ),
    }
    return FeaturesOutput(
        features=features,
        signals=signals,
        quality=quality,
        stats=stats,
        warmup_from=prev.date if warm else None,
        seconds=time.perf_counter() - t0,
        paths=paths,
        missing=missing,
    )


@dataclass
class Check:
    name: str
    passed: bool
    metadata: dict[str, Any]
    warn_only: bool = False


def feature_checks(out: FeaturesOutput) -> list[Check]:
    """Data-quality checks of a `features` partition and the raw ticks behind it."""
    q, f = out.quality, out.features
    checks = [
        Check(
            "sequence_gaps",
            q.sequence_gaps == 0,
            {
                "sequence_gaps": q.sequence_gaps,
                "longest_gap_update_ids": q.longest_gap_ids,
                "gap_kinds": dict(q.gap_kinds),
                "longest_silence_s": round(q.longest_silence_s, 3),
            },
            warn_only=True,  # gaps are recorded facts; the book is resynced after each
        )
    ]
    crossed = 0
    if f.height:
        crossed = f.filter(
            pl.col("best_bid").is_not_nan()
            & pl.col("best_ask").is_not_nan()
            & (pl.col("best_bid") >= pl.col("best_ask"))
        ).height
    book_stats = out.stats.get("book", {})
    crossed_events = int(book_stats.get("crossed_events", 0))
    checks.append(
        Check(
            "no_crossed_book",
            crossed == 0 and crossed_events == 0,
            {"crossed_rows": crossed, "crossed_events_in_replay": crossed_events},
        )
    )
    med, mx = q.clock_offset_median_s, q.clock_offset_max_abs_s
    checks.append(
        Check(
            "clock_offset",
            bool(math.isfinite(mx) and mx <= MAX_CLOCK_OFFSET_S) if q.book_events else True,
            {
                "median_s": _round(med),
                "max_abs_s": _round(mx),
                "bound_s": MAX_CLOCK_OFFSET_S,
            },
            warn_only=True,
        )
    )
    rows_meta: dict[str, Any] = {
        "book_rows": q.book_rows,
        "trade_rows": q.trade_rows,
        "feature_rows": f.height,
    }
    if out.trades_only:
        # what trades allow was computed: a note of what is missing, not a failed run
        rows_meta["missing"] = out.missing
    checks.append(
        Check(
            "rows_present",
            f.height > 0 and (q.book_rows > 0 or (out.trades_only and q.trade_rows > 0)),
            rows_meta,
        )
    )
    checks.append(_finite_check(f, trades_only=out.trades_only))
    return checks


def _finite_check(f: pl.DataFrame, *, trades_only: bool = False) -> Check:
    cols = [
        c
        for c, t in f.schema.items()
        if t == pl.Float64 and c not in NOT_REQUIRED_FINITE and c not in ("venue", "symbol")
    ]
    if trades_only:  # book columns are NaN by construction without a book
        cols = [c for c in cols if c in TRADE_FEATURES and c not in BOOK_PRICED_TRADE_FEATURES]
    # A snapshot replaces the whole book, so the return across it (`mid_return_bps`) is
    # undefined by construction: snapshot rows (the day-boundary checkpoint, resyncs) are not
    # held to finiteness.
    warm = f.filter(~pl.col("is_warmup") & ~pl.col("is_snapshot")) if f.height else f
    bad: dict[str, int] = {}
    if warm.height and cols:
        counts = warm.select(
            [(~pl.col(c).is_finite()).fill_null(True).sum().alias(c) for c in cols]
        )
        bad = {c: int(v) for c, v in counts.row(0, named=True).items() if v}
    return Check(
        "features_finite_after_warmup",
        not bad,
        {
            "rows_after_warmup": warm.height,
            "warmup_or_snapshot_rows": f.height - warm.height,
            "columns_checked": len(cols),
            "non_finite": bad or "none",
            "not_required": sorted(NOT_REQUIRED_FINITE),
        },
    )


# ---------------------------------------------------------------- labels


@dataclass
class LabelsOutput:
    labels: pl.DataFrame
    next_day: str  # how the day end was handled
    end_ns: int
    seconds: float
    path: Path | None = None


def _top_of_book(features: pl.DataFrame) -> pl.DataFrame:
    """Usable top-of-book rows in time order (a partition never materialised reads as an
    empty frame without columns: a day with no data has no prices, not an error)."""
    cols = {"ts_ns": pl.Int64, "best_bid": pl.Float64, "best_ask": pl.Float64, "mid": pl.Float64}
    if features.height == 0 or not set(cols) <= set(features.columns):
        return pl.DataFrame(schema=cols)
    top = (
        features.select(list(cols))
        .filter(~pl.col("best_bid").is_nan())
        .sort("ts_ns", maintain_order=True)
    )
    if top.height == 0 and "last_trade_price" in features.columns:
        # a partition without a book (trades only): the last trade price is the only price
        px = pl.col("last_trade_price")
        top = (
            features.filter(px.is_finite())
            .select("ts_ns", best_bid=px, best_ask=px, mid=px)
            .sort("ts_ns", maintain_order=True)
        )
    return top


def price_path(lake: Lake, part: Part, *, with_next: bool = True) -> tuple[PricePath, str]:
    """The partition's top of book (from its `features`), continued into the next day's
    `features` when that is materialised; `end_ns` as described in the module docstring."""
    feats = _top_of_book(_read(lake, derived("features"), part))
    nxt = part.shifted(1)
    next_raw = has_data(lake, "book", nxt)
    end = part.end_ns if next_raw else None
    path = PricePath.from_frame(feats.sort("ts_ns", maintain_order=True), end_ns=end)
    if not with_next:
        return path, "not used"
    if not next_raw:
        return path, "absent (labels past the last event are censored)"
    nf = _read(lake, derived("features"), nxt)
    if nf.height == 0:
        return (
            path,
            "raw data present, features not materialised (labels past the day end are censored)",
        )
    nf = _top_of_book(nf)
    # the next day is complete up to its own end only if the day after it exists as well
    next_end = nxt.end_ns if has_data(lake, "book", nxt.shifted(1)) else None
    # rows of the next partition stamped before this day's end (late events) are dropped so
    # the concatenated path stays time-ordered
    nf = nf.filter(pl.col("ts_ns") > (int(path.ts_ns[-1]) if len(path) else part.end_ns))
    return path.concat(PricePath.from_frame(nf, end_ns=next_end)), "used"


def trade_path(lake: Lake, part: Part, config: BacktestConfig) -> TradePath | None:
    """The partition's and the next day's trade prices when barriers are touched by trades
    (`barrier_price='trade'`), else None."""
    if config.barrier_price != "trade":
        return None
    tr = pl.concat([read_trades(lake, part), read_trades(lake, part.shifted(1))])
    return TradePath.from_arrays(tr["exch_ts_ns"].to_numpy(), tr["price"].to_numpy())


def labels_step(lake: Lake, part: Part, config: BacktestConfig) -> LabelsOutput:
    """Triple-barrier labels of the partition's signals and of the regular grid."""
    t0 = time.perf_counter()
    signals = _read(lake, derived("signals"), part)
    # cross-venue signals of this market (written by the cross-venue step) are labelled,
    # cross-validated and evaluated with the others
    cross = _read(lake, CROSS_SIGNALS_TABLE, part)
    if cross.height:
        signals = pl.concat([signals, cross], how="diagonal_relaxed").sort(
            "ts_ns", maintain_order=True
        )
    own, _ = price_path(lake, part, with_next=False)
    full, how = price_path(lake, part)
    trades = trade_path(lake, part, config)
    if len(own) == 0:
        from mdpipe.core.labels import empty_labels

        labels = empty_labels()
    else:
        next_path = None
        if len(full) > len(own):
            n = len(own)
            next_path = PricePath(
                full.ts_ns[n:], full.bid[n:], full.ask[n:], full.mid[n:], full.end_ns
            )
        labels = make_labels(signals, own, config, next_path=next_path, trades=trades)
    p = lake.replace_partition(derived("labels"), part.venue, part.symbol, part.date, labels)
    return LabelsOutput(labels, how, full.end_ns, time.perf_counter() - t0, p)


def label_checks(labels: pl.DataFrame) -> list[Check]:
    """Labels never look before their entry or after their end (cheap re-statement of the
    core's guarantees on the written rows)."""
    done = labels.filter(~pl.col("censored"))
    bad_entry = done.filter(pl.col("entry_ts_ns") <= pl.col("ts_ns")).height
    bad_exit = done.filter(
        (pl.col("exit_ts_ns") > pl.col("t_end_ns")) | (pl.col("exit_ts_ns") < pl.col("entry_ts_ns"))
    ).height
    return [
        Check(
            "entry_after_signal_exit_before_end",
            bad_entry == 0 and bad_exit == 0,
            {"entry_not_after_signal": bad_entry, "exit_outside_entry_to_end": bad_exit},
        )
    ]


# ---------------------------------------------------------------- cv folds


@dataclass
class FoldsOutput:
    folds: pl.DataFrame
    problems: list[str]
    seconds: float
    path: Path | None = None


def cv_folds_step(lake: Lake, part: Part, config: BacktestConfig) -> FoldsOutput:
    t0 = time.perf_counter()
    labels = _read(lake, derived("labels"), part)
    folds = make_cv_folds(labels, config) if labels.height else make_cv_folds_empty()
    problems = check_no_leakage(folds, config.embargo_ns) if folds.height else []
    p = lake.replace_partition(derived("cv_folds"), part.venue, part.symbol, part.date, folds)
    return FoldsOutput(folds, problems, time.perf_counter() - t0, p)


def make_cv_folds_empty() -> pl.DataFrame:
    from mdpipe.core.cv import CV_FOLDS_SCHEMA

    return pl.DataFrame(schema=CV_FOLDS_SCHEMA)


# ---------------------------------------------------------------- evaluation


@dataclass
class EvaluationOutput:
    metrics: pl.DataFrame
    headline: dict[str, float]
    report: Path | None
    seconds: float
    path: Path | None = None


def report_dir(lake: Lake, part: Part) -> Path:
    """The report sits next to the partition's metrics file (only *.parquet files are lake
    data, so the HTML and PNGs never disturb readers or `replace_partition`)."""
    return lake.partition_dir(derived("evaluation"), part.venue, part.symbol, part.date)


def evaluation_step(lake: Lake, part: Part, config: BacktestConfig) -> EvaluationOutput:
    t0 = time.perf_counter()
    labels = _read(lake, derived("labels"), part)
    folds = _read(lake, derived("cv_folds"), part)
    full, _ = price_path(lake, part)
    own, _ = price_path(lake, part, with_next=False)
    if labels.height == 0 or len(full) < 2:
        metrics = pl.DataFrame({"partition": [part.label]})
        p = lake.replace_partition(
            derived("evaluation"), part.venue, part.symbol, part.date, metrics
        )
        return EvaluationOutput(metrics, {}, None, time.perf_counter() - t0, p)
    ev = evaluate(
        labels, folds, full, config, partition=part.label, trades=trade_path(lake, part, config)
    )
    p = lake.replace_partition(
        derived("evaluation"), part.venue, part.symbol, part.date, ev.metrics
    )
    gaps = _read(lake, "gaps", part)
    offsets = clock_offsets(_read(lake, derived("features"), part))
    report = write_report(
        ev,
        own,
        report_dir(lake, part),
        title=f"mdpipe evaluation {part.label}",
        gaps=gaps,
        clock_offsets=offsets,
    )
    return EvaluationOutput(ev.metrics, ev.headline, report, time.perf_counter() - t0, p)


def clock_offsets(features: pl.DataFrame, max_points: int = 5000) -> pl.DataFrame:
    """Exchange minus receive time per applied book event, decimated for plotting."""
    ev = features.select("ts_ns", "recv_ts_ns").drop_nulls()
    step = max(1, ev.height // max_points)
    return ev.gather_every(step).select(
        "ts_ns", ((pl.col("ts_ns") - pl.col("recv_ts_ns")) / 1e6).alias("offset_ms")
    )


def summary_step(lake: Lake) -> tuple[Path, pl.DataFrame]:
    """Cross-partition summary report over every materialised `evaluation` partition."""
    files = lake.files(derived("evaluation"))
    frames = [lake.read_file(f) for f in files]
    frames = [f for f in frames if "fold" in f.columns]
    metrics = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    base = lake.root / derived("evaluation")
    links = {}
    for f in files:
        rep = f.parent / "report.html"
        if rep.exists():
            rel = rep.relative_to(base).as_posix()
            parts = dict(seg.split("=", 1) for seg in rel.split("/")[:-1])
            links[f"{parts['date']}|{parts['venue']}:{parts['symbol']}"] = rel
    out = write_summary_report(metrics, base, report_links=links)
    return out, metrics
