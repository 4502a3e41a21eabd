"""The cross-venue step without Dagster: one day x underlying, every pair of markets listing it.

Reads each market's `features` partition (mids, exchange and receive times), and per pair:
the Hayashi-Yoshida lead-lag of the day (`derived/lead_lag`), the basis grid with its z-score
(`derived/basis`), and the cross-venue signals of the followers (`derived/cross_signals`, per
follower market, labelled with the market's other signals). Which market leads, for the
leader_move trigger, is `[cross_venue] leader` when that venue is in the pair, else the lead
measured on the PREVIOUS day (never the same day's: that would look ahead); without one, no
signal is emitted for the pair. The detector warms up on the previous day's last
`prev_day_warmup_seconds` when that day's features are there.

Markets are paired by the underlying their venue says they trade (`mdpipe.venues.underlying`),
never by a list of names. A report per day x underlying sits next to its basis partition.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.core.crossvenue import (
    MID_COLUMNS,
    CrossVenueConfig,
    Pair,
    cross_venue_batch,
    empty_cross_signals,
    lead_lag,
    lead_lag_frame,
    leader_for,
    market_mids,
    with_index_basis,
)
from mdpipe.core.crossvenue_report import render_cross_report
from mdpipe.lake import (
    BASIS_TABLE,
    CROSS_SIGNALS_TABLE,
    LEAD_LAG_TABLE,
    Lake,
    date_of_ns,
    day_start_ns,
    market_key,
)
from mdpipe.pipeline.reports import publish
from mdpipe.venues import underlying as underlying_of

FEATURES = "derived/features"
BASIS = BASIS_TABLE
LEAD_LAG = LEAD_LAG_TABLE


@dataclass(frozen=True)
class CrossPart:
    """One cross-venue partition: a UTC day of one underlying."""

    date: str
    underlying: str

    @property
    def label(self) -> str:
        return f"{self.date}|{self.underlying}"

    def shifted(self, days: int) -> CrossPart:
        d = dt.date.fromisoformat(self.date) + dt.timedelta(days=days)
        return CrossPart(d.isoformat(), self.underlying)


def markets_by_underlying(lake: Lake, date: str) -> dict[str, list[tuple[str, str]]]:
    """The markets with a `features` partition on `date`, grouped by underlying, each list
    sorted by market key."""
    out: dict[str, list[tuple[str, str]]] = {}
    for p in lake.partition_dirs(FEATURES):
        if p.date == date and lake.files(FEATURES, p.venue, p.symbol, date):
            out.setdefault(underlying_of(p.venue, p.symbol), []).append((p.venue, p.symbol))
    return {u: sorted(ms, key=lambda m: market_key(*m)) for u, ms in sorted(out.items())}


def pairs_of(part: CrossPart, markets: list[tuple[str, str]]) -> list[Pair]:
    return [Pair(part.underlying, *a, *b) for a, b in itertools.combinations(markets, 2)]


def cross_parts(lake: Lake, dates: list[str] | None = None) -> list[CrossPart]:
    """Every day x underlying with at least two markets' features."""
    found = sorted({p.date for p in lake.partition_dirs(FEATURES)})
    out = []
    for d in found if dates is None else [d for d in found if d in dates]:
        for u, ms in markets_by_underlying(lake, d).items():
            if len(ms) >= 2:
                out.append(CrossPart(d, u))
    return out


def read_mids(
    lake: Lake, venue: str, symbol: str, date: str, since_ns: int | None = None
) -> pl.DataFrame:
    cols = [*MID_COLUMNS, "recv_ts_ns"]
    lf = lake.scan(FEATURES, venue, symbol, date)
    if not lake.files(FEATURES, venue, symbol, date):
        return pl.DataFrame(schema={c: pl.Float64 for c in cols})
    lf = lf.select(cols)
    if since_ns is not None:
        lf = lf.filter(pl.col("ts_ns") >= since_ns)
    return lf.collect()


def choose_leader(
    lake: Lake, part: CrossPart, pair: Pair, config: CrossVenueConfig
) -> tuple[int, int | None, str]:
    """(leader side, lead window ns, how it was chosen) for the leader_move trigger."""
    prev_date = part.shifted(-1).date
    return leader_for(pair, config, lake.read_underlying(LEAD_LAG, part.underlying, prev_date),
                      prev_date)  # fmt: skip


@dataclass
class CrossVenueOutput:
    part: CrossPart
    basis: pl.DataFrame
    lead_lag: pl.DataFrame
    signals: pl.DataFrame
    pairs: list[dict[str, Any]]
    venues: pl.DataFrame
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None


MARK = "mark"
MARK_COLUMNS = ("exch_ts_ns", "mark_price", "index_price", "funding_rate", "next_funding_ts_ns")


def read_marks(
    lake: Lake, markets: list[tuple[str, str]], date: str, since_ns: int | None = None
) -> pl.DataFrame:
    """The `mark` rows (mark and index price, funding) of the markets on `date` (and the day
    before from `since_ns` on, when given), in exchange-time order per market; empty when the
    lake has none (spot markets, recordings without `markPrice` frames)."""
    dates = [date]
    if since_ns is not None:
        dates.insert(0, date_of_ns(since_ns))
    frames = []
    for venue, symbol in markets:
        for d in dict.fromkeys(dates):
            if not lake.files(MARK, venue, symbol, d):
                continue
            m = lake.read(MARK, venue, symbol, d).select(
                pl.lit(venue).alias("venue"),
                pl.lit(symbol).alias("symbol"),
                *(pl.col(c) for c in MARK_COLUMNS),
            )
            if since_ns is not None:
                m = m.filter(pl.col("exch_ts_ns") >= since_ns)
            frames.append(m)
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed").sort(
        "venue", "symbol", "exch_ts_ns", maintain_order=True
    )


def funding_rates(lake: Lake, markets: list[tuple[str, str]], date: str) -> pl.DataFrame:
    """Funding rates of the markets from the `mark` table, when the lake has one."""
    m = read_marks(lake, markets, date)
    if m.height == 0:
        return m
    return m.select("venue", "symbol", "exch_ts_ns", "funding_rate", "index_price", "mark_price")


def index_series(marks: pl.DataFrame) -> dict[tuple[str, str], tuple[Any, Any]]:
    """(exch_ts_ns, index_price) arrays per market of `read_marks` rows."""
    if marks.height == 0:
        return {}
    out = {}
    for (venue, symbol), m in marks.group_by("venue", "symbol", maintain_order=True):
        m = m.filter(pl.col("exch_ts_ns").is_not_null())
        out[(str(venue), str(symbol))] = (
            m["exch_ts_ns"].cast(pl.Int64).to_numpy(),
            m["index_price"].cast(pl.Float64).fill_null(float("nan")).to_numpy(),
        )
    return out


def crossvenue_step(
    lake: Lake,
    part: CrossPart,
    config: CrossVenueConfig | None = None,
    *,
    settings_id: str,
) -> CrossVenueOutput:
    """Basis, lead-lag and cross-venue signals of one day x underlying, written to the lake
    (each partition replaced whole), and the report."""
    t0 = time.perf_counter()
    cfg = config or CrossVenueConfig()
    markets = markets_by_underlying(lake, part.date).get(part.underlying, [])
    start = day_start_ns(part.date)
    prev_date = part.shifted(-1).date
    mids = {m: read_mids(lake, *m, part.date) for m in markets}
    warm_since = start - round(cfg.prev_day_warmup_seconds * 1e9)
    prev = {m: read_mids(lake, *m, prev_date, warm_since) for m in markets}
    bases, curves, sigs, pair_rows = [], [], [], []
    for pair in pairs_of(part, markets):
        a, b = pair.market(0), pair.market(1)
        fa, fb = mids[a], mids[b]
        ll = lead_lag(fa["ts_ns"].to_numpy(), fa["mid"].to_numpy(), fb["ts_ns"].to_numpy(),
                      fb["mid"].to_numpy(), cfg)  # fmt: skip
        curves.append(lead_lag_frame(part.date, pair, ll))
        leader, window, how = choose_leader(lake, part, pair, cfg)
        wa = pl.concat([prev[a], fa], how="vertical_relaxed") if prev[a].height else fa
        wb = pl.concat([prev[b], fb], how="vertical_relaxed") if prev[b].height else fb
        out = cross_venue_batch(
            pair, market_mids(wa), market_mids(wb), cfg, settings_id=settings_id,
            leader=leader, lead_window_ns=window, emit_from_ns=start,
        )  # fmt: skip
        bases.append(out.basis)
        sigs.append(out.signals)
        pair_rows.append(
            {
                "pair": f"{a[0]}:{a[1]} / {b[0]}:{b[1]}",
                "lead_ms": ll.max_lag_ns / 1e6,
                "max_corr": ll.max_corr if math.isfinite(ll.max_corr) else None,
                "lead_lag_ratio": ll.ratio if math.isfinite(ll.ratio) else None,
                "p_value": ll.p_value if math.isfinite(ll.p_value) else None,
                "grid_points": out.basis.height,
                "signals": out.signals.height,
                "leader_for_signals": how,
                "warmup_from": prev_date if prev[a].height and prev[b].height else "none",
                **{f"detector_{k}": v for k, v in out.stats.items() if k != "events"},
            }
        )
    basis = pl.concat(bases) if bases else pl.DataFrame()
    if basis.height:
        # each perpetual's mid against its index, on the same grid (stale rule as the basis)
        since = start - round(cfg.max_stale_ms * 1e6)
        basis = with_index_basis(basis, index_series(read_marks(lake, markets, part.date, since)),
                                 cfg)  # fmt: skip
    curve = pl.concat(curves) if curves else pl.DataFrame()
    signals = pl.concat(sigs) if sigs else empty_cross_signals()
    signals = signals.sort("ts_ns", "venue", "symbol", "signal_id")
    paths = {
        "basis": lake.replace_underlying_partition(BASIS, part.underlying, part.date, basis),
        "lead_lag": lake.replace_underlying_partition(LEAD_LAG, part.underlying, part.date, curve),
    }
    for venue, symbol in markets:
        own = signals.filter((pl.col("venue") == venue) & (pl.col("symbol") == symbol))
        paths[f"signals {venue}:{symbol}"] = lake.replace_partition(
            CROSS_SIGNALS_TABLE, venue, symbol, part.date, own
        )
    venues = pl.DataFrame(
        [
            {
                "venue": v,
                "symbol": s,
                "feature_rows": f.height,
                "recv_minus_exch_median_ms": (
                    float((f["recv_ts_ns"] - f["ts_ns"]).median()) / 1e6  # type: ignore[arg-type]
                    if f.height
                    else None
                ),
            }
            for (v, s), f in mids.items()
        ]
    )
    files = render_cross_report(
        f"mdpipe cross-venue {part.label}", basis, curve, signals, venues,
        funding_rates(lake, markets, part.date),
        notes=[f"{r['pair']}: {r['leader_for_signals']}" for r in pair_rows],
    )  # fmt: skip
    report_dir = lake.underlying_dir(BASIS, part.underlying, part.date)
    publish(files, report_dir)
    return CrossVenueOutput(
        part, basis, curve, signals, pair_rows, venues, time.perf_counter() - t0, paths,
        report_dir / "report.html",
    )  # fmt: skip


def read_cross_signals(lake: Lake, venue: str, symbol: str, date: str) -> pl.DataFrame:
    """A market's cross-venue signals of a day (empty when none were computed)."""
    return lake.read(CROSS_SIGNALS_TABLE, venue, symbol, date)


def lead_lag_summary(lead_lag_rows: pl.DataFrame) -> list[str]:
    """One line per pair of a `lead_lag` partition: who leads, by how much, how significant."""
    out: list[str] = []
    if lead_lag_rows.height == 0:
        return out
    keys = ["venue_a", "symbol_a", "venue_b", "symbol_b"]
    for _, rows in lead_lag_rows.group_by(keys, maintain_order=True):
        r = rows.row(0, named=True)
        a, b = f"{r['venue_a']}:{r['symbol_a']}", f"{r['venue_b']}:{r['symbol_b']}"
        lag = r["max_lag_ns"] / 1e6
        who = f"{a} leads" if lag > 0 else (f"{b} leads" if lag < 0 else "no lead")
        p = r["p_value"]
        corr, ratio = r["max_corr"], r["lead_lag_ratio"]
        out.append(
            f"lead-lag {r['date']} {a} / {b}: HY peak at {lag:+.0f} ms ({who}), "
            f"corr {corr:.3f}, Huth-Abergel ratio {ratio:.2f} (>1: a leads), "
            f"p {p:.3f} ({'no null' if p is None or p != p else 'shuffled-time null'}), "
            f"mid changes {r['n_changes_a']} / {r['n_changes_b']}"
        )
    return out
