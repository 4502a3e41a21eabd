"""The lake as an object: listing, reading and publishing partitions, roll-ups, the catalog.

Every file appears under its final name in one ``os.replace`` after its bytes are fsynced
(:mod:`mdpipe.lake.atomic`), so a reader (DuckDB, polars, another process) never sees a
half-written file and a crashed writer leaves at most a ``.tmp-*`` file, which no ``*.parquet``
glob matches. Files hold the ``venue`` and ``symbol`` columns themselves (the unified symbol
``BTC/USDT``; the path uses ``BTC-USDT``), so readers do not use hive partitioning for those
columns.

Roll-ups (names in :mod:`mdpipe.lake.paths`). The roll-up is published before the files it
covers are unlinked, so a crash in between leaves both: :meth:`Lake.files` (and so
``scan``/``read``) never lists covered files, and :meth:`Lake.finish_compactions` deletes them.
DuckDB views glob ``*.parquet`` and do not know the rule: they count covered rows twice for the
moment between the roll-up's rename and the unlinks (milliseconds), or until the writer finishes
an interrupted roll-up after a crash.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mdpipe.lake import paths
from mdpipe.lake.atomic import TMP_PREFIX, atomic_target, commit, fsync_dir, tmp_path_for
from mdpipe.lake.objstore import S3Config, delete, filesystem, key, open_root
from mdpipe.lake.paths import (
    CATALOG_NAME,
    DEFAULT_LAKE,
    JOURNAL_SUFFIX,
    LAKE_ENV,
    RAW_DIR,
    SAFE_NAME,
    covered_files,
    local_root,
    object_store_url,
    parse_rollup_name,
    parse_sequence_name,
    path_to_symbol,
    rollup_name,
    symbol_to_path,
)
from mdpipe.lake.tables import (
    ROW_KEYS,
    SCHEMAS,
    SIGNAL_TABLE_SOURCE,
    UNDERLYING_TABLES,
    conform,
    with_signal_source,
)

ROW_GROUP_ROWS = 131_072  # rows a streaming writer buffers per Parquet row group
COMPACT_READ_FILES = 64  # files read at once while merging (rows stream out in row groups)


@dataclass(frozen=True)
class Partition:
    table: str
    venue: str
    symbol: str
    date: str


class Lake:
    """A lake rooted at a local directory or at ``s3://bucket/prefix`` on an S3-compatible
    store (:mod:`mdpipe.lake.objstore`). Cheap to construct; holds no open files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # another URL (gs://, file://) raises LakeLocationError, never becomes a folder "gs:"
        self.url = object_store_url(root)
        self.s3 = S3Config.from_env() if self.url else None
        self.root = open_root(self.url, self.s3) if self.url else local_root(root)

    @property
    def remote(self) -> bool:
        """True when the lake is on an object store."""
        return self.url is not None

    @property
    def storage_options(self) -> dict[str, str] | None:
        """polars' ``storage_options`` for this lake's files (None for a local lake)."""
        return self.s3.polars_options() if self.s3 else None

    @classmethod
    def resolve(cls, lake: str | os.PathLike[str] | None = None) -> Lake:
        """``--lake`` if given, else ``$MDPIPE_LAKE``, else ``./lake``."""
        return cls(lake or os.environ.get(LAKE_ENV) or DEFAULT_LAKE)

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # ---- paths -------------------------------------------------------------------------
    def partition_dir(self, table: str, venue: str, symbol: str, date: str) -> Path:
        return paths.partition_dir(self.root, table, venue, symbol, date)

    def raw_dir(self, venue: str, date: str) -> Path:
        return paths.raw_dir(self.root, venue, date)

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
        if not self._maybe_dir(base):
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
        return sorted((p for p in out if p not in covered), key=_order)

    def partition_dirs(
        self, table: str, venue: str | None = None, symbol: str | None = None
    ) -> list[Partition]:
        """Every partition directory of a table (with or without files), from the directory
        tree alone: cheaper than :meth:`partitions` when partitions hold many files."""
        base = self.root / table
        if not self._maybe_dir(base):
            return []
        want_v = f"venue={venue}" if venue else None
        want_s = f"symbol={symbol_to_path(symbol)}" if symbol else None
        out = []
        if self.remote:
            v = want_v or "venue=*"
            s = want_s or "symbol=*"
            # on an object store only folders hold "date=" in their last part: no stat needed
            for d in base.glob(f"{v}/{s}/date=*"):
                ven = d.parent.parent.name.removeprefix("venue=")
                sym = path_to_symbol(d.parent.name.removeprefix("symbol="), ven)
                out.append(Partition(table, ven, sym, d.name.removeprefix("date=")))
        else:
            # os.scandir: the entry's type comes with the listing (no stat per directory), which
            # keeps this cheap for a table with years of daily partitions
            for ve in _subdirs(base, "venue=", want_v):
                ven = ve.name.removeprefix("venue=")
                for se in _subdirs(Path(ve.path), "symbol=", want_s):
                    sym = path_to_symbol(se.name.removeprefix("symbol="), ven)
                    for de in _subdirs(Path(se.path), "date=", None):
                        out.append(Partition(table, ven, sym, de.name.removeprefix("date=")))
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

    def _maybe_dir(self, d: Path) -> bool:
        """Whether folder ``d`` may hold files. On an object store there are no folders, only
        key prefixes: a listing of a missing prefix is empty anyway, so skip the extra request
        (one LIST per call, which is most of the listing cost on a remote lake)."""
        return self.remote or d.is_dir()

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
        return self.scan_files(files, table)

    def scan_files(self, files: Sequence[Path], table: str | None = None) -> pl.LazyFrame:
        """The rows of these lake files (listed by :meth:`files`) as one frame, in file order.
        Columns of `table`'s schema a file lacks (written before
        :data:`~mdpipe.lake.tables.ADDED_COLUMNS` existed) read as null, whichever file comes
        first; extra columns are those of the first file."""
        opts: dict[str, Any] = {"storage_options": self.storage_options} if self.remote else {}
        paths = [str(f) for f in files] if self.remote else list(files)
        if table in SIGNAL_TABLE_SOURCE:
            # signal files gain columns over time (`source`, `details`): one schema per file,
            # united by name, rather than the first file's schema imposed on all
            return with_signal_source(
                table,
                pl.concat(
                    [pl.scan_parquet(f, hive_partitioning=False, **opts) for f in paths],
                    how="diagonal_relaxed",
                ),
            )
        schema = None
        if table in SCHEMAS and files:
            canonical = SCHEMAS[table]
            first = pl.scan_parquet(paths[0], hive_partitioning=False, **opts).collect_schema()
            schema = {**canonical, **{c: t for c, t in first.items() if c not in canonical}}
        return pl.scan_parquet(
            paths,
            hive_partitioning=False,
            schema=schema,
            missing_columns="insert",
            extra_columns="ignore",
            **opts,
        )

    def read_file(self, file: Path) -> pl.DataFrame:
        """One lake file as a frame."""
        return self.scan_files([file]).collect()

    def parquet_file(self, file: Path) -> pq.ParquetFile:
        """A lake file opened for row-group / record-batch reading (metadata, streaming)."""
        if self.remote:
            return pq.ParquetFile(filesystem(file).open(key(file), "rb", block_size=8 << 20))
        return pq.ParquetFile(file)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def delete(self, files: Iterable[Path]) -> None:
        """Remove lake files (one batched request on an object store)."""
        files = list(files)
        if self.remote:
            delete(files)
        else:
            for f in files:
                f.unlink(missing_ok=True)

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
        if not SAFE_NAME.match(name) or name.startswith(TMP_PREFIX):
            raise ValueError(f"unsafe lake file name {name!r}")
        final = self.partition_dir(table, venue, symbol, date) / name
        with atomic_target(final) as tmp:
            conform(table, df).write_parquet(tmp, compression="zstd", statistics=True)
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
        self.delete(f for f in final.parent.glob("*.parquet") if str(f) != str(final))
        return final

    # ---- day x underlying partitions (tables.UNDERLYING_TABLES) ---------------------------
    def underlying_dir(self, table: str, underlying: str, date: str) -> Path:
        return paths.underlying_dir(self.root, table, underlying, date)

    def underlying_files(
        self, table: str, underlying: str | None = None, dates: str | Sequence[str] | None = None
    ) -> list[Path]:
        """Published Parquet files of a day x underlying table."""
        base = self.root / table
        if not base.is_dir():
            return []
        u = f"underlying={underlying}" if underlying else "underlying=*"
        if isinstance(dates, str):
            dates = [dates]
        out: list[Path] = []
        for d in dates if dates is not None else ["*"]:
            out.extend(base.glob(f"{u}/date={d}/*.parquet"))
        return sorted(p for p in out if not p.name.startswith(TMP_PREFIX))

    def read_underlying(
        self, table: str, underlying: str | None = None, dates: str | Sequence[str] | None = None
    ) -> pl.DataFrame:
        files = self.underlying_files(table, underlying, dates)
        if not files:
            return pl.DataFrame()
        return pl.read_parquet(files, hive_partitioning=False, missing_columns="insert")

    def replace_underlying_partition(
        self, table: str, underlying: str, date: str, df: pl.DataFrame
    ) -> Path:
        """Make ``df`` the whole content of a day x underlying partition (atomic, as
        :meth:`replace_partition`)."""
        if table not in UNDERLYING_TABLES:
            raise ValueError(f"{table!r} is not a day x underlying table: {UNDERLYING_TABLES}")
        final = self.underlying_dir(table, underlying, date) / "part-0.parquet"
        with atomic_target(final) as tmp:
            df.write_parquet(tmp, compression="zstd", statistics=True)
        for f in final.parent.glob("*.parquet"):
            if f != final:
                f.unlink(missing_ok=True)
        return final

    # ---- roll-ups (see the module docstring) --------------------------------------------
    def sequence_files(self, part: Partition) -> list[tuple[Path, str, int]]:
        """The partition's sequence-named files no roll-up covers, as (path, prefix, ns), in
        name order."""
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        if not self._maybe_dir(d):
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
        for p in d.glob("*.parquet") if self._maybe_dir(d) else ():
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
            if seq is None or str(f.parent) != str(d):
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
                w.write(self.scan_files(chunk, part.table).collect())
            final, _ = w.publish(name, dedup=False)
        except BaseException:
            w.abort()
            raise
        self.delete(ordered)
        if not self.remote:
            fsync_dir(d)
        return final

    def finish_compactions(self, part: Partition) -> int:
        """Delete files a roll-up covers (left by a crash between a roll-up's publish and its
        unlinks); returns how many."""
        d = self.partition_dir(part.table, part.venue, part.symbol, part.date)
        if not self._maybe_dir(d):
            return 0
        covered = covered_files(d.glob("*.parquet"))
        self.delete(covered)
        if covered and not self.remote:
            fsync_dir(d)
        return len(covered)

    def data_files(self) -> list[Path]:
        """Every published data file of a local lake: Parquet files of every table (``live/``
        and ``derived/`` included) and raw journal files; never temporary files nor what else
        sits in the root (the catalog, a ledger). What a spool uploads."""
        if self.remote or not self.root.is_dir():
            return []
        return [
            p
            for pattern in ("*/**/*.parquet", f"{RAW_DIR}/**/*{JOURNAL_SUFFIX}")
            for p in self.root.glob(pattern)
            if not p.name.startswith(TMP_PREFIX) and p.is_file()
        ]

    def remove_stale_tmp(self) -> int:
        """Delete temporary files left by crashed writers; returns how many (always 0 on an
        object store, where temporary files are local and objects appear whole)."""
        n = 0
        if self.remote:
            return 0
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
            if top.name == CATALOG_NAME or top.name == "raw" or not top.is_dir():
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

        with atomic_target(self.catalog_path) as tmp:
            con = duckdb.connect(str(tmp))
            try:
                self.register(con)
                self._create_views(con, extra_tables)
            finally:
                con.close()
                tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
        return self.catalog_path

    def connect(self, extra_tables: Iterable[str] = ()) -> Any:
        """An in-memory DuckDB connection with one view per table, reading this lake's files;
        for an object-store lake its filesystem is registered with DuckDB (fsspec), so no
        ``httpfs`` extension is needed."""
        import duckdb

        con = duckdb.connect()
        self.register(con)
        self._create_views(con, extra_tables)
        return con

    def register(self, con: Any) -> None:
        """Let DuckDB connection ``con`` read this lake's ``s3://`` paths (a no-op locally)."""
        if self.remote:
            con.register_filesystem(filesystem(self.root))

    def _create_views(self, con: Any, extra_tables: Iterable[str] = ()) -> None:
        """One view per table (date taken from the path); a table with no files yet gets an
        empty, typed view so queries never fail on absence."""
        names = list(dict.fromkeys([*SCHEMAS, *self.tables(), *extra_tables]))
        for table in names:
            view = table.split("/")[-1] if table.startswith("derived/") else table
            view = view.replace("/", "_")
            by_underlying = table in UNDERLYING_TABLES
            files = self.underlying_files(table) if by_underlying else self.files(table)
            if files:
                levels = ("*", "*") if by_underlying else ("*", "*", "*")
                glob = str(self.root.joinpath(table, *levels, "*.parquet"))
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


def _order(p: Path) -> tuple[str, ...]:
    """Path order (by parts) for local and object-store paths alike."""
    return tuple(p.parts)


def scan_files(files: Sequence[Path], table: str | None = None) -> pl.LazyFrame:
    """Parquet files of one table as one frame, in the order given. Columns of the table's
    schema a file lacks (written before :data:`~mdpipe.lake.tables.ADDED_COLUMNS` existed)
    read as null, whichever file comes first; extra columns are those of the first file."""
    schema = None
    if table in SCHEMAS and files:
        canonical = SCHEMAS[table]
        first = pl.read_parquet_schema(files[0])
        schema = {**canonical, **{c: t for c, t in first.items() if c not in canonical}}
    return pl.scan_parquet(
        list(files),
        hive_partitioning=False,
        schema=schema,
        missing_columns="insert",
        extra_columns="ignore",
    )


def _subdirs(d: Path, prefix: str, exact: str | None) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(d) as it:
            return [
                e
                for e in it
                if e.name.startswith(prefix) and (exact is None or e.name == exact) and e.is_dir()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


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
        if not lake.remote:
            self.dir.mkdir(parents=True, exist_ok=True)
        # Not named *.parquet: globbing readers (DuckDB views) must never pick it up; local
        # (system temporary folder) when the lake is on an object store.
        self.tmp = tmp_path_for(self.dir / f"{uuid.uuid4().hex}.parquet")
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

    def seal(self) -> tuple[Path, int] | None:
        """Finish the hidden temporary file without publishing it: ``(tmp, rows)``, or None when
        nothing was written. Another process (an import's parent) publishes it later through
        :meth:`sealed` + :meth:`publish`, or drops it with :func:`Path.unlink`."""
        self._flush()
        if self._writer is None:
            return None
        self._writer.close()
        return self.tmp, self.rows

    @classmethod
    def sealed(cls, lake: Lake, part: Partition, tmp: Path, rows: int) -> PartitionWriter:
        """A writer for a temporary file :meth:`seal` finished (possibly in another process)."""
        w = cls.__new__(cls)
        w.lake, w.part = lake, part
        w.dir = lake.partition_dir(part.table, part.venue, part.symbol, part.date)
        w.tmp = Path(tmp)
        w._writer, w._buffer, w._buffered, w.rows, w.schema = None, [], 0, rows, None
        w._sealed = True
        return w

    _sealed = False

    def publish(self, name: str, dedup: bool = True) -> tuple[Path | None, int]:
        """Publish under ``name``; rows already present in the partition's other files are
        dropped first (by the table's row key), so overlapping inputs never duplicate rows.
        Returns the path (None when nothing new) and the number of rows published."""
        self._flush()
        if self._writer is None and not self._sealed:
            return None, 0
        if self._writer is not None:
            self._writer.close()
        final = self.dir / name
        keys = ROW_KEYS.get(self.part.table)
        others = (
            [
                f
                for f in self.dir.glob("*.parquet")
                if str(f) != str(final) and not f.name.startswith(TMP_PREFIX)
            ]
            if dedup and keys
            else []
        )
        if dedup and others and keys:
            new = pl.read_parquet(self.tmp)
            seen = self.lake.scan_files(others, self.part.table).select(keys).unique().collect()
            kept = new.join(
                seen, on=list(keys), how="anti", nulls_equal=True, maintain_order="left"
            )
            if kept.height != new.height:
                self.tmp.unlink()
                if kept.height == 0:
                    self.lake.delete([final])
                    return None, 0
                kept.write_parquet(self.tmp, compression="zstd")
            rows = kept.height
        else:
            rows = self.rows
        commit(self.tmp, final)
        return final, rows


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
