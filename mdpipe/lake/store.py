"""The tick lake: paths, table schemas and atomic publishing.

This module is the only writer of lake files. Layout (DESIGN.md, a contract)::

    <lake>/raw/venue=<venue>/date=<YYYY-MM-DD>/<hour>-<seq>.jsonl.gz
    <lake>/<table>/venue=<venue>/symbol=<BASE-QUOTE>/date=<YYYY-MM-DD>/*.parquet
    <lake>/derived/<asset>/venue=.../symbol=.../date=.../*.parquet
    <lake>/live/signals/venue=.../symbol=.../date=.../*.parquet
    <lake>/mdpipe.duckdb

Every file appears under its final name in one ``os.replace`` after its bytes are fsynced, so a
reader (DuckDB, polars, another process) never sees a half-written file and a crashed writer
leaves at most a ``.tmp-*.partial`` file, which no ``*.parquet`` glob matches. Files hold the ``venue`` and ``symbol``
columns themselves (the unified symbol ``BTC/USDT``; the path uses ``BTC-USDT``), so readers do
not use hive partitioning for those columns.

Roll-ups. A writer that publishes often (capture, every few seconds) names its files
``<prefix>-<19-digit ns>.parquet`` with names increasing in publish order, and later merges a run
of them into one *roll-up* ``<prefix>-<first ns>-to-<last ns>.parquet`` (:meth:`Lake.compact`),
which sorts exactly where the first merged file did. A roll-up *covers* every file of its
directory with the same prefix and an ns in ``[first, last]``. The roll-up is published before
the files it covers are unlinked, so a crash in between leaves both: :meth:`Lake.files` (and so
``scan``/``read``) never lists covered files, and :meth:`Lake.finish_compactions` deletes them.
DuckDB views glob ``*.parquet`` and do not know the rule: they count covered rows twice for the
moment between the roll-up's rename and the unlinks (milliseconds), or until the writer finishes
an interrupted roll-up after a crash.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

LAKE_ENV = "MDPIPE_LAKE"
CATALOG_NAME = "mdpipe.duckdb"
TMP_PREFIX = ".tmp-"
ROW_GROUP_ROWS = 131_072  # rows a streaming writer buffers per Parquet row group
NS_PER_DAY = 86_400 * 1_000_000_000

# Canonical tables. Timestamps are int64 ns since the epoch, UTC; prices and sizes float64.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "trades": {
        "venue": pl.String(),
        "symbol": pl.String(),
        "exch_ts_ns": pl.Int64(),
        "recv_ts_ns": pl.Int64(),
        "trade_id": pl.Int64(),
        "price": pl.Float64(),
        "qty": pl.Float64(),
        "side": pl.String(),  # taker side: 'buy' | 'sell'
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
}

# Columns identifying a row, used to keep imports idempotent across overlapping inputs.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "trades": ("trade_id",),
    "agg_trades": ("agg_trade_id",),
    "book": ("update_id", "is_snapshot", "side", "price"),
    "bbo": ("update_id",),
    "gaps": ("ts_ns", "kind", "prev_update_id", "next_update_id"),
}

GAP_KINDS = ("sequence_gap", "resync", "reconnect", "stale", "no_snapshot", "backfill")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.=-]+$")
# see "Roll-ups" above: a sequence-named file, and a roll-up of a run of them
_SEQ_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_.=-]+?)-(?P<ns>[0-9]{19})\.parquet$")
_ROLLUP_NAME = re.compile(
    r"^(?P<prefix>[A-Za-z0-9_.=-]+?)-(?P<first>[0-9]{19})-to-(?P<last>[0-9]{19})\.parquet$"
)
COMPACT_READ_FILES = 64  # files read at once while merging (rows stream out in row groups)


def symbol_to_path(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC-USDT``; ``BTC/USDT:USDT`` -> ``BTC-USDT-USDT``."""
    return symbol.replace("/", "-").replace(":", "-")


def path_to_symbol(part: str, venue: str) -> str:
    """Inverse of :func:`symbol_to_path` for spot and linear-perpetual symbols."""
    bits = part.split("-")
    if len(bits) == 2:
        return f"{bits[0]}/{bits[1]}"
    if len(bits) == 3:
        return f"{bits[0]}/{bits[1]}:{bits[2]}"
    raise ValueError(f"cannot read a symbol from path part {part!r} (venue {venue})")


def market_key(venue: str, symbol: str) -> str:
    """The Dagster partition key of a market: ``binance:BTC-USDT``."""
    return f"{venue}:{symbol_to_path(symbol)}"


def parse_market_key(key: str) -> tuple[str, str]:
    venue, _, part = key.partition(":")
    if not venue or not part:
        raise ValueError(f"market key {key!r} is not of the form 'venue:BASE-QUOTE'")
    return venue, path_to_symbol(part, venue)


def date_of_ns(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d")


def day_start_ns(date: str) -> int:
    d = dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return int(d.timestamp()) * 1_000_000_000


def empty_frame(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[table])


def conform(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Cast to the table's schema, in its column order (extra columns kept after)."""
    schema = SCHEMAS.get(table)
    if schema is None:
        return df
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    extra = [c for c in df.columns if c not in schema]
    return df.select([*(pl.col(c).cast(t) for c, t in schema.items()), *extra])


def parse_sequence_name(name: str) -> tuple[str, int] | None:
    """``cap-20240808T14-1723126512345678901.parquet`` -> ``("cap-20240808T14", 1723...)``;
    None for other names, roll-ups included."""
    m = _SEQ_NAME.match(name)
    if m is None or _ROLLUP_NAME.match(name):
        return None
    return m["prefix"], int(m["ns"])


def parse_rollup_name(name: str) -> tuple[str, int, int] | None:
    """``<prefix>-<first>-to-<last>.parquet`` -> ``(prefix, first, last)``."""
    m = _ROLLUP_NAME.match(name)
    return (m["prefix"], int(m["first"]), int(m["last"])) if m else None


def rollup_name(prefix: str, first_ns: int, last_ns: int) -> str:
    return f"{prefix}-{first_ns:019d}-to-{last_ns:019d}.parquet"


def covered_files(paths: Iterable[Path]) -> set[Path]:
    """The files among ``paths`` that a roll-up among ``paths`` (same directory) covers."""
    paths = list(paths)
    ranges: dict[tuple[Path, str], list[tuple[int, int]]] = {}
    for p in paths:
        if "-to-" in p.name:
            r = parse_rollup_name(p.name)
            if r is not None:
                ranges.setdefault((p.parent, r[0]), []).append((r[1], r[2]))
    if not ranges:
        return set()
    out: set[Path] = set()
    for p in paths:
        seq = parse_sequence_name(p.name)
        if seq is None:
            continue
        for first, last in ranges.get((p.parent, seq[0]), ()):
            if first <= seq[1] <= last:
                out.add(p)
                break
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Partition:
    table: str
    venue: str
    symbol: str
    date: str


class Lake:
    """A lake rooted at a directory. Cheap to construct; holds no open files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    @classmethod
    def resolve(cls, lake: str | os.PathLike[str] | None = None) -> Lake:
        """``--lake`` if given, else ``$MDPIPE_LAKE``, else ``./lake``."""
        return cls(lake or os.environ.get(LAKE_ENV) or "lake")

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # ---- paths -------------------------------------------------------------------------
    def partition_dir(self, table: str, venue: str, symbol: str, date: str) -> Path:
        return (
            self.root
            / table
            / f"venue={venue}"
            / f"symbol={symbol_to_path(symbol)}"
            / f"date={date}"
        )

    def raw_dir(self, venue: str, date: str) -> Path:
        return self.root / "raw" / f"venue={venue}" / f"date={date}"

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    def files(
        self,
        table: str,
        venue: str | None = None,
        symbol: str | None = None,
        dates: str | Sequence[str] | None = None,
    ) -> list[Path]:
        """Published Parquet files of a table, optionally narrowed to a market and dates."""
        base = self.root / table
        if not base.is_dir():
            return []
        v = f"venue={venue}" if venue else "venue=*"
        s = f"symbol={symbol_to_path(symbol)}" if symbol else "symbol=*"
        if isinstance(dates, str):
            dates = [dates]
        out: list[Path] = []
        for d in dates if dates is not None else ["*"]:
            out.extend(base.glob(f"{v}/{s}/date={d}/*.parquet"))
        out = [p for p in out if not p.name.startswith(TMP_PREFIX)]
        covered = covered_files(out)  # left by a roll-up interrupted before its unlinks
        return sorted(p for p in out if p not in covered)

    def partition_dirs(
        self, table: str, venue: str | None = None, symbol: str | None = None
    ) -> list[Partition]:
        """Every partition directory of a table (with or without files), from the directory
        tree alone: cheaper than :meth:`partitions` when partitions hold many files."""
        base = self.root / table
        if not base.is_dir():
            return []
        v = f"venue={venue}" if venue else "venue=*"
        s = f"symbol={symbol_to_path(symbol)}" if symbol else "symbol=*"
        out = []
        for d in base.glob(f"{v}/{s}/date=*"):
            if not d.is_dir():
                continue
            ven = d.parent.parent.name.removeprefix("venue=")
            sym = path_to_symbol(d.parent.name.removeprefix("symbol="), ven)
            out.append(Partition(table, ven, sym, d.name.removeprefix("date=")))
        return sorted(out, key=lambda p: (p.venue, p.symbol, p.date))

    def partitions(self, table: str) -> list[Partition]:
        seen: set[Partition] = set()
        for f in self.files(table):
            d, s, v = f.parent, f.parent.parent, f.parent.parent.parent
            venue = v.name.removeprefix("venue=")
            seen.add(
                Partition(
                    table,
                    venue,
                    path_to_symbol(s.name.removeprefix("symbol="), venue),
                    d.name.removeprefix("date="),
                )
            )
        return sorted(seen, key=lambda p: (p.venue, p.symbol, p.date))

    def markets(self, table: str = "book") -> list[tuple[str, str]]:
        found = {(p.venue, p.symbol) for t in (table, "trades") for p in self.partitions(t)}
        return sorted(found)

    def dates(self, venue: str, symbol: str, table: str = "book") -> list[str]:
        found = {
            p.date
            for t in (table, "trades")
            for p in self.partitions(t)
            if p.venue == venue and p.symbol == symbol
        }
        return sorted(found)

    # ---- reading -----------------------------------------------------------------------
    def scan(
        self,
        table: str,
        venue: str | None = None,
        symbol: str | None = None,
        dates: str | Sequence[str] | None = None,
    ) -> pl.LazyFrame:
        files = self.files(table, venue, symbol, dates)
        if not files:
            schema = SCHEMAS.get(table, {})
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(files, hive_partitioning=False, missing_columns="insert")

    def read(
        self,
        table: str,
        venue: str | None = None,
        symbol: str | None = None,
        dates: str | Sequence[str] | None = None,
    ) -> pl.DataFrame:
        return self.scan(table, venue, symbol, dates).collect()

    # ---- writing -----------------------------------------------------------------------
    def publish(
        self,
        table: str,
        venue: str,
        symbol: str,
        date: str,
        df: pl.DataFrame,
        name: str | None = None,
    ) -> Path:
        """Write ``df`` as one new Parquet file of the partition, atomically."""
        name = name or f"{uuid.uuid4().hex}.parquet"
        if not _SAFE_NAME.match(name) or name.startswith(TMP_PREFIX):
            raise ValueError(f"unsafe lake file name {name!r}")
        final = self.partition_dir(table, venue, symbol, date) / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}.partial")
        conform(table, df).write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def replace_partition(
        self, table: str, venue: str, symbol: str, date: str, df: pl.DataFrame
    ) -> Path:
        """Make ``df`` the whole content of the partition (idempotent re-materialisation).

        The new file is published first under a fixed name, then the partition's other files
        are removed, so a reader sees either the old content or the new one plus old files for
        an instant, never an empty or half-written partition.
        """
        final = self.publish(table, venue, symbol, date, df, name="part-0.parquet")
        for f in final.parent.glob("*.parquet"):
            if f != final:
                f.unlink(missing_ok=True)
        return final

    # ---- roll-ups (see the module docstring) --------------------------------------------
    def sequence_files(self, part: Partition) -> list[tuple[Path, str, int]]:
        """The partition's sequence-named files no roll-up covers, as (path, prefix, ns), in
        name order."""
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        if not d.is_dir():
            return []
        names = [p for p in d.glob("*.parquet") if not p.name.startswith(TMP_PREFIX)]
        covered = covered_files(names)
        out = []
        for p in names:
            seq = parse_sequence_name(p.name)
            if seq is not None and p not in covered:
                out.append((p, seq[0], seq[1]))
        return sorted(out, key=lambda t: t[0].name)

    def max_sequence_ns(self, part: Partition) -> int:
        """The largest ns in the partition's sequence and roll-up names (0 when none)."""
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        best = 0
        for p in d.glob("*.parquet") if d.is_dir() else ():
            seq = parse_sequence_name(p.name)
            r = parse_rollup_name(p.name) if seq is None else None
            best = max(best, seq[1] if seq else r[2] if r else 0)
        return best

    def compact(self, part: Partition, files: Sequence[Path]) -> Path | None:
        """Merge sequence-named files of one partition (one prefix) into one roll-up file.

        Rows keep their order (files in name order, rows in file order). The roll-up is
        published atomically (temp file, fsync, rename, fsync dir) under
        ``<prefix>-<first ns>-to-<last ns>.parquet``, which sorts where the first file did;
        then the files are unlinked and the directory fsynced. A crash in between leaves
        covered files that readers skip and :meth:`finish_compactions` deletes. Memory stays
        bounded: files are read a few at a time and written as row groups. Returns the roll-up
        (None if the files held no rows: they are removed all the same).
        """
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        parsed = []
        for f in files:
            seq = parse_sequence_name(f.name)
            if seq is None or f.parent != d:
                raise ValueError(f"{f} is not a sequence-named file of {d}")
            parsed.append((f.name, f, seq))
        if not parsed:
            raise ValueError("compact needs at least one file")
        parsed.sort()
        prefixes = {seq[0] for _, _, seq in parsed}
        if len(prefixes) != 1:
            raise ValueError(f"compact merges files of one prefix, got {sorted(prefixes)}")
        ordered = [f for _, f, _ in parsed]
        name = rollup_name(parsed[0][2][0], parsed[0][2][1], parsed[-1][2][1])
        w = PartitionWriter(self, part)
        try:
            for i in range(0, len(ordered), COMPACT_READ_FILES):
                chunk = ordered[i : i + COMPACT_READ_FILES]
                w.write(
                    pl.scan_parquet(
                        chunk, hive_partitioning=False, missing_columns="insert"
                    ).collect()
                )
            final, _ = w.publish(name, dedup=False)
        except BaseException:
            w.abort()
            raise
        for f in ordered:
            f.unlink(missing_ok=True)
        _fsync_dir(d)
        return final

    def finish_compactions(self, part: Partition) -> int:
        """Delete files a roll-up covers (left by a crash between a roll-up's publish and its
        unlinks); returns how many."""
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        if not d.is_dir():
            return 0
        covered = covered_files(d.glob("*.parquet"))
        for f in covered:
            f.unlink(missing_ok=True)
        if covered:
            _fsync_dir(d)
        return len(covered)

    def remove_stale_tmp(self) -> int:
        """Delete temporary files left by crashed writers; returns how many."""
        n = 0
        if self.root.is_dir():
            for f in self.root.rglob(f"{TMP_PREFIX}*"):
                f.unlink(missing_ok=True)
                n += 1
        return n

    def tables(self) -> list[str]:
        """Every table that has files: canonical ones, ``derived/<asset>``, ``live/signals``."""
        out: list[str] = []
        if not self.root.is_dir():
            return out
        for top in sorted(self.root.iterdir()):
            if not top.is_dir() or top.name == "raw":
                continue
            if top.name in ("derived", "live"):
                out.extend(
                    f"{top.name}/{sub.name}" for sub in sorted(top.iterdir()) if sub.is_dir()
                )
            else:
                out.append(top.name)
        return out

    def build_catalog(self, extra_tables: Iterable[str] = ()) -> Path:
        """(Re)build ``mdpipe.duckdb`` with one view per table, atomically replaced.

        Views read the Parquet files by glob with the partition date taken from the path; a
        table with no files yet gets an empty, typed view so queries never fail on absence.
        """
        import duckdb

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}.duckdb"
        con = duckdb.connect(str(tmp))
        try:
            names = list(dict.fromkeys([*SCHEMAS, *self.tables(), *extra_tables]))
            for table in names:
                view = table.split("/")[-1] if table.startswith("derived/") else table
                view = view.replace("/", "_")
                files = self.files(table)
                if files:
                    glob = str(self.root / table / "*" / "*" / "*" / "*.parquet")
                    con.execute(
                        f'CREATE OR REPLACE VIEW "{view}" AS SELECT * EXCLUDE (filename), '
                        "CAST(regexp_extract(filename, 'date=([0-9-]+)', 1) AS DATE) AS date "
                        f"FROM read_parquet('{_sql_str(glob)}', hive_partitioning = false, "
                        "union_by_name = true, filename = true)"
                    )
                elif table in SCHEMAS:
                    cols = ", ".join(
                        f'CAST(NULL AS {_duck_type(t)}) AS "{c}"' for c, t in SCHEMAS[table].items()
                    )
                    con.execute(
                        f'CREATE OR REPLACE VIEW "{view}" AS SELECT {cols}, '
                        "CAST(NULL AS DATE) AS date WHERE false"
                    )
        finally:
            con.close()
        os.replace(tmp, self.catalog_path)
        wal = tmp.with_name(tmp.name + ".wal")
        wal.unlink(missing_ok=True)
        return self.catalog_path


def _sql_str(s: str) -> str:
    return s.replace("'", "''")


def _duck_type(t: pl.DataType) -> str:
    if t == pl.Int64():
        return "BIGINT"
    if t == pl.Float64():
        return "DOUBLE"
    if t == pl.Boolean():
        return "BOOLEAN"
    return "VARCHAR"


class PartitionWriter:
    """Streams row batches of one partition into a hidden temporary file, published on close.

    Used by imports so that memory stays bounded for any input size: batches are appended as
    Parquet row groups, and the file becomes visible only in :meth:`publish`.
    """

    def __init__(self, lake: Lake, part: Partition) -> None:
        self.lake = lake
        self.part = part
        self.dir = lake.partition_dir(part.table, part.venue, part.symbol, part.date)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Not named *.parquet: globbing readers (DuckDB views) must never pick it up.
        self.tmp = self.dir / f"{TMP_PREFIX}{uuid.uuid4().hex}.partial"
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self.rows = 0
        self.schema: pa.Schema | None = (
            pl.DataFrame(schema=SCHEMAS[part.table]).to_arrow().schema
            if part.table in SCHEMAS
            else None
        )

    def write(self, df: pl.DataFrame) -> None:
        """Buffer ``df``; a row group is written once ``ROW_GROUP_ROWS`` rows are buffered (so
        memory stays bounded and row groups stay large enough to compress and prune well)."""
        if df.height == 0:
            return
        self._buffer.append(conform(self.part.table, df))
        self._buffered += df.height
        self.rows += df.height
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pl.concat(self._buffer, how="vertical_relaxed").to_arrow()
        self._buffer, self._buffered = [], 0
        if self.schema is not None:
            table = table.cast(self.schema)
        if self._writer is None:
            # Statistics on the numeric columns only: DuckDB prunes row groups by time, id and
            # price; min/max of the constant venue/symbol/side strings cost a quarter of the
            # write time and prune nothing the hive path does not already.
            stats = [f.name for f in table.schema if not _is_text(f.type)]
            self._writer = pq.ParquetWriter(
                self.tmp, table.schema, compression="zstd", write_statistics=stats
            )
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def abort(self) -> None:
        self._buffer, self._buffered = [], 0
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def publish(self, name: str, dedup: bool = True) -> tuple[Path | None, int]:
        """Publish under ``name``; rows already present in the partition's other files are
        dropped first (by the table's row key), so overlapping inputs never duplicate rows.
        Returns the path (None when nothing new) and the number of rows published."""
        self._flush()
        if self._writer is None:
            return None, 0
        self._writer.close()
        final = self.dir / name
        others = [
            f
            for f in self.dir.glob("*.parquet")
            if f != final and not f.name.startswith(TMP_PREFIX)
        ]
        keys = ROW_KEYS.get(self.part.table)
        if dedup and others and keys:
            new = pl.read_parquet(self.tmp)
            seen = pl.scan_parquet(others, missing_columns="insert").select(keys).unique().collect()
            kept = new.join(
                seen, on=list(keys), how="anti", nulls_equal=True, maintain_order="left"
            )
            if kept.height != new.height:
                self.tmp.unlink()
                if kept.height == 0:
                    final.unlink(missing_ok=True)
                    return None, 0
                kept.write_parquet(self.tmp, compression="zstd")
            rows = kept.height
        else:
            rows = self.rows
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, final)
        _fsync_dir(self.dir)
        return final, rows


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
