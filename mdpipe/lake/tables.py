"""The lake's tables: columns, row keys, the time column of each, and splitting rows by UTC day.

Timestamps are int64 ns since the epoch, UTC; prices and sizes float64 (DESIGN.md, a contract).
A row belongs to the date partition of its *time column* (:data:`TIME_COLUMNS`); where that is
null (Binance spot ``bookTicker`` carries no exchange time) its receive time ``recv_ts_ns``
decides. Import, capture and the online engine all split rows with :func:`split_by_date`, so a
row lands in the same partition whichever way it arrived.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

NS_PER_DAY = 86_400 * 1_000_000_000

# Canonical tables.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "trades": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),
        "recv_ts_ns": pl.Int64(),
        "trade_id": pl.Int64(),
        "price": pl.Float64(),
        "qty": pl.Float64(),  # as the exchange sends it: contracts for inverse (COIN-M) markets
        "side": pl.String(),  # taker side: 'buy' | 'sell'
        # base-currency equivalent of `qty` for inverse contracts (contracts x contract size /
        # price); null on linear and spot venues, whose `qty` is already in the base currency
        "base_qty": pl.Float64(),
    },
    "agg_trades": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),
        "recv_ts_ns": pl.Int64(),
        "agg_trade_id": pl.Int64(),
        "first_trade_id": pl.Int64(),
        "last_trade_id": pl.Int64(),
        "price": pl.Float64(),
        "qty": pl.Float64(),
        "side": pl.String(),
    },
    "book": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),
        "recv_ts_ns": pl.Int64(),
        "update_id": pl.Int64(),
        "side": pl.String(),  # 'bid' | 'ask'
        "price": pl.Float64(),
        "qty": pl.Float64(),  # absolute size; 0 removes the level
        "is_snapshot": pl.Boolean(),
        "base_qty": pl.Float64(),  # as in `trades`: inverse contracts only, else null
    },
    "bbo": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),  # null for Binance spot bookTicker, which carries no time
        "recv_ts_ns": pl.Int64(),
        "update_id": pl.Int64(),
        "bid": pl.Float64(),
        "bid_qty": pl.Float64(),
        "ask": pl.Float64(),
        "ask_qty": pl.Float64(),
    },
    "gaps": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "ts_ns": pl.Int64(),
        "kind": pl.String(),  # sequence_gap | resync | reconnect | stale | no_snapshot | backfill
        "detail": pl.String(),
        "prev_update_id": pl.Int64(),
        "next_update_id": pl.Int64(),
    },
    # Binance futures `markPrice@1s`: mark and index price, funding (perpetuals only)
    "mark": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),  # the event time E
        "recv_ts_ns": pl.Int64(),
        "mark_price": pl.Float64(),
        "index_price": pl.Float64(),
        "funding_rate": pl.Float64(),  # null for delivery contracts (no funding)
        "next_funding_ts_ns": pl.Int64(),  # null for delivery contracts
        "estimated_settle_price": pl.Float64(),
    },
}

# Columns added to a table after files were written without them. Readers see them as null in
# older files (``Lake.scan`` inserts missing columns); writers fill them with null when a source
# has no value (:func:`conform`), so every new file has the full schema.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "trades": ("base_qty",),
    "book": ("base_qty",),
}

# Columns identifying a row, used to keep imports idempotent across overlapping inputs.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "trades": ("trade_id",),
    "agg_trades": ("agg_trade_id",),
    "book": ("update_id", "is_snapshot", "side", "price"),
    "bbo": ("update_id",),
    "gaps": ("ts_ns", "kind", "prev_update_id", "next_update_id"),
    "mark": ("exch_ts_ns",),
}

# The column whose UTC day chooses a row's date partition, for every table whose rows are split
# by day when written (derived tables are written per partition and carry ``ts_ns``).
TIME_COLUMNS: dict[str, str] = {
    "trades": "exch_ts_ns",
    "agg_trades": "exch_ts_ns",
    "book": "exch_ts_ns",
    "bbo": "exch_ts_ns",
    "gaps": "ts_ns",
    "mark": "exch_ts_ns",
    "live/signals": "ts_ns",
}
RECV_COLUMN = "recv_ts_ns"  # the fallback where a row's time column is null

# Cross-venue tables, partitioned by day x underlying (``BTC``, ``ETH``) instead of by market:
# ``<lake>/derived/<asset>/underlying=<BASE>/date=<YYYY-MM-DD>/*.parquet``. Their columns are
# the core's (``mdpipe.core.crossvenue.BASIS_COLUMNS``, ``LEAD_LAG_COLUMNS``). Cross-venue
# signals are per follower market, ``derived/cross_signals`` (the ``signals`` columns).
BASIS_TABLE = "derived/basis"
LEAD_LAG_TABLE = "derived/lead_lag"
UNDERLYING_TABLES = (BASIS_TABLE, LEAD_LAG_TABLE)
CROSS_SIGNALS_TABLE = "derived/cross_signals"

GAP_KINDS = ("sequence_gap", "resync", "reconnect", "stale", "no_snapshot", "backfill")

# Where a signal row came from (the `source` column of both signal tables): the online engine
# inside capture, the batch asset, or a tool that posted it to `mdpipe serve`.
SIGNAL_SOURCES = ("live", "batch", "api")
# Files written before signals carried `source` hold rows of one origin per table: reading fills
# the column from the table (`with_signal_source`), so old lakes stay readable unchanged.
SIGNAL_TABLE_SOURCE: dict[str, str] = {"live/signals": "live", "derived/signals": "batch"}


def time_column(table: str) -> str:
    """The column whose UTC day is a row's date partition; derived tables use ``ts_ns``."""
    col = TIME_COLUMNS.get(table)
    if col is not None:
        return col
    if table.startswith("derived/"):
        return "ts_ns"
    raise ValueError(f"no time column is known for table {table!r}; known: {sorted(TIME_COLUMNS)}")


def date_of_ns(ts_ns: int) -> str:
    """The UTC date ``YYYY-MM-DD`` of a time in ns (exact: integer day arithmetic)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(ts_ns) // NS_PER_DAY)).isoformat()


def day_start_ns(date: str) -> int:
    """The first ns of a UTC date ``YYYY-MM-DD``."""
    try:
        d = dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"expected a date YYYY-MM-DD, got {date!r}") from None
    return (d - dt.date(1970, 1, 1)).days * NS_PER_DAY


def row_time(table: str, columns: list[str] | tuple[str, ...]) -> pl.Expr:
    """The expression of a row's partition time: its time column, else its receive time."""
    ts = pl.col(time_column(table))
    if RECV_COLUMN in columns and time_column(table) != RECV_COLUMN:
        ts = pl.coalesce(ts, pl.col(RECV_COLUMN))
    return ts


def split_by_date(df: pl.DataFrame, table: str) -> dict[str, pl.DataFrame]:
    """Split ``table`` rows by the UTC date of their partition time (:func:`row_time`), rows
    kept in order within each date; dates in order of first appearance.

    A row with no time at all cannot be placed and raises ``ValueError`` (never a guessed date).
    """
    if df.height == 0:
        return {}
    # an integer day per row (one division), not a formatted date string per row
    days = df.select(row_time(table, df.columns).floordiv(NS_PER_DAY).alias("d"))["d"]
    if days.null_count():
        raise ValueError(
            f"{table}: {days.null_count()} row(s) have neither {time_column(table)} nor "
            f"{RECV_COLUMN}, so no date partition can be chosen for them"
        )
    lo, hi = days.min(), days.max()
    if lo == hi:  # the usual case: one date per slice
        return {date_of_ns(int(lo) * NS_PER_DAY): df}  # type: ignore[arg-type]
    keyed = df.with_columns(days.alias("_day"))
    return {
        date_of_ns(int(d) * NS_PER_DAY): g.drop("_day")
        for (d,), g in keyed.group_by("_day", maintain_order=True)
    }


def with_signal_source(table: str, frame: pl.LazyFrame) -> pl.LazyFrame:
    """``frame`` of a signal table with ``source`` filled where old files lack it."""
    default = SIGNAL_TABLE_SOURCE[table]
    if "source" not in frame.collect_schema().names():
        return frame.with_columns(source=pl.lit(default, dtype=pl.String))
    return frame.with_columns(pl.col("source").fill_null(default))


def empty_frame(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[table])


def with_added_columns(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with the table's :data:`ADDED_COLUMNS` it lacks, as typed nulls."""
    absent = [c for c in ADDED_COLUMNS.get(table, ()) if c not in df.columns]
    if not absent:
        return df
    return df.with_columns(pl.lit(None, SCHEMAS[table][c]).alias(c) for c in absent)


def conform(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Cast to the table's schema, in its column order (extra columns kept after); columns of
    :data:`ADDED_COLUMNS` a source lacks become nulls."""
    schema = SCHEMAS.get(table) or RESULT_SCHEMAS.get(table)
    if schema is None:
        return df
    df = with_added_columns(table, df)
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    extra = [c for c in df.columns if c not in schema]
    return df.select([*(pl.col(c).cast(t) for c, t in schema.items()), *extra])


# Result tables: rows are not events, so they have no time column and are not split by day.
# Sweeps (`mdpipe sweep`, `mdpipe.pipeline.sweep`): one file per sweep, `sweep-<sweep_id>.parquet`,
# in the market's partition of the sweep's last day. `derived/sweeps`: one row per candidate,
# partition and CV fold (fold -1: pooled out of sample); `derived/sweep_summary`: one row per sweep.
RESULT_SCHEMAS: dict[str, dict[str, pl.DataType]] = {}
RESULT_SCHEMAS["derived/sweeps"] = {
    "sweep_id": pl.String(),
    "candidate_id": pl.String(),
    "settings_id": pl.String(),
    "params": pl.String(),  # JSON {"section.key": value}
    "partition": pl.String(),
    "fold": pl.Int64(),
    "n_signals": pl.Int64(),
    "n_signals_oos": pl.Int64(),
    "sharpe_is": pl.Float64(),
    "sharpe_oos": pl.Float64(),
    "net_pnl_oos": pl.Float64(),
    "precision_oos": pl.Float64(),
    "hit_rate_oos": pl.Float64(),
}
RESULT_SCHEMAS["derived/sweep_summary"] = {
    "sweep_id": pl.String(),
    "n_candidates": pl.Int64(),
    "selected_candidate_id": pl.String(),
    "pbo": pl.Float64(),
    "dsr": pl.Float64(),
    "selected_params": pl.String(),
    "selected_settings_id": pl.String(),
    "selected_sharpe_oos": pl.Float64(),
    "selection_dates": pl.String(),
    "holdout_dates": pl.String(),
    "seed": pl.Int64(),
    "samples": pl.Int64(),
    "n_bars": pl.Int64(),
    "bar_seconds": pl.Float64(),
    "pbo_slope": pl.Float64(),
    "pbo_intercept": pl.Float64(),
    "prob_oos_loss": pl.Float64(),
    "n_splits": pl.Int64(),
    "pbo_logits": pl.List(pl.Float64()),
    "pbo_is": pl.List(pl.Float64()),
    "pbo_oos": pl.List(pl.Float64()),
    "psr": pl.Float64(),
    "sr_bar": pl.Float64(),
    "sr0": pl.Float64(),
    "sr_variance": pl.Float64(),
    "skew": pl.Float64(),
    "kurtosis": pl.Float64(),
    "n_trials": pl.Int64(),
    "holdout_n_signals": pl.Float64(),
    "holdout_sharpe": pl.Float64(),
    "holdout_net_pnl": pl.Float64(),
    "holdout_precision": pl.Float64(),
    "holdout_hit_rate": pl.Float64(),
}
