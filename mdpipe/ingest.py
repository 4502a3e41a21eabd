"""``mdpipe import``: recordings and dumps into the lake, streaming, idempotent, loud on bad input.

Inputs:

- raw journals, one message per line as ``<local receive time> <raw JSON>`` (gzip or plain):
  the bundled Binance recordings, Binance USD-M recordings, and the journal ``mdpipe capture``
  writes. Receive times in ns or µs (detected per line). The venue is detected from the content
  (a ``pu`` field or a snapshot with ``E``/``T`` means USD-M futures) unless forced.
- Binance public-data dumps of spot ``trades`` and ``aggTrades`` (CSV or the zip they ship in,
  with or without a header, ms or µs timestamps).

Files of one venue are read in order of their first receive time as one stream, so a day split
over several files syncs once. Output files are named after a digest of the inputs, so a second
import of the same files rewrites identical files, and rows already in a partition (from an
overlapping import or from capture) are not written again.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.progress import Progress, TaskID

from mdpipe.lake import JournalReader, Lake, Partition, PartitionWriter, split_by_date
from mdpipe.venues import Batch, LineError, Normalizer, RawLines, normalizer_for
from mdpipe.venues.binance import unified_symbol

JOURNAL_SUFFIXES = (".gz", ".jsonl", ".txt", ".log", ".json")
_DUMP_NAME = re.compile(r"^(?P<sym>[A-Z0-9]+)-(?P<kind>trades|aggTrades)-", re.I)
TRADES_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
AGG_COLUMNS = (
    "agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
    "is_buyer_maker", "is_best_match",
)  # fmt: skip


class ImportError_(Exception):
    """A file that cannot be imported at all (named, with the reason)."""


@dataclass
class ImportReport:
    files: list[str] = field(default_factory=list)
    written: dict[Partition, int] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    gaps: pl.DataFrame | None = None
    seconds: float = 0.0
    bytes_read: int = 0
    lines: int = 0
    sync: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)  # venue -> symbol

    @property
    def ok(self) -> bool:
        return not self.errors

    def rows(self, table: str) -> int:
        return sum(n for p, n in self.written.items() if p.table == table)


@dataclass
class _Source:
    path: Path
    kind: str  # journal | trades_csv | agg_trades_csv
    venue: str
    first_ts: int
    symbol_hint: str | None


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and f.suffix in (*JOURNAL_SUFFIXES, ".csv", ".zip")
                )
            )
        elif p.exists():
            out.append(p)
        else:
            raise ImportError_(f"{p}: no such file or directory")
    return out


def _peek(path: Path) -> tuple[int, str | None, bool, int]:
    """First receive time, first stream symbol, whether it looks like USD-M futures, lines seen."""
    head: list[bytes] = []
    try:
        opener = __import__("gzip").open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for _ in range(2000):
                line = f.readline()
                if not line:
                    break
                head.append(line)
    except (OSError, EOFError, zlib.error):
        pass  # the full read reports the damage with its line number
    first_ts = 0
    sym = None
    futures = False
    for line in head:
        ts, _, msg = line.partition(b" ")
        if not first_ts and ts.isdigit():
            first_ts = int(ts)
            first_ts *= 1_000_000 if first_ts < 10**14 else (1_000 if first_ts < 10**17 else 1)
        if sym is None:
            m = re.match(rb'\{"stream":"([A-Za-z0-9_.-]+)@', msg)
            if m:
                sym = m.group(1).decode().lower()
            else:
                m = re.search(rb'"s":"([A-Z0-9]+)"', msg)
                if m:
                    sym = m.group(1).decode().lower()
        if b'"pu":' in msg or (msg.startswith(b'{"lastUpdateId"') and b'"E":' in msg):
            futures = True
    return first_ts, sym, futures, len(head)


class _Sink:
    """Routes batches to one streaming writer per partition; publishes or aborts them together."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.writers: dict[Partition, PartitionWriter] = {}
        self.gaps: list[pl.DataFrame] = []

    def write(self, batch: Batch) -> None:
        for table, df in batch.tables.items():
            if table == "gaps":
                self.gaps.append(df)
            for (venue, symbol), g in df.group_by("venue", "symbol", maintain_order=True):
                for date, part in split_by_date(g, table).items():
                    key = Partition(table, str(venue), str(symbol), date)
                    w = self.writers.get(key)
                    if w is None:
                        w = self.writers[key] = PartitionWriter(self.lake, key)
                    w.write(part)

    def publish(self, name: str) -> dict[Partition, int]:
        written = {}
        for key, w in self.writers.items():
            _, rows = w.publish(name, dedup=True)
            written[key] = rows
        self.writers.clear()
        return written

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        self.writers.clear()


def _csv_dump(src: _Source, errors: list[LineError], digest: hashlib._Hash) -> Batch:
    path = src.path
    data = path.read_bytes()
    digest.update(data)
    if path.suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise ImportError_(f"{path}: expected one .csv inside the zip, found {names}")
            data = z.read(names[0])
    batch = Batch()
    if not data.strip():
        errors.append(LineError(str(path), 1, "empty file: expected Binance trades/aggTrades CSV"))
        return batch
    agg = src.kind == "agg_trades_csv"
    cols = AGG_COLUMNS if agg else TRADES_COLUMNS
    first = data.split(b"\n", 1)[0].decode(errors="replace")
    header = not first.split(",")[0].strip().lstrip("-").isdigit()
    ncols = len(first.split(","))
    if ncols != len(cols):
        errors.append(
            LineError(
                str(path),
                1,
                f"expected {len(cols)} columns ({', '.join(cols)}) of a Binance "
                f"{'aggTrades' if agg else 'trades'} dump, found {ncols}",
                first,
            )
        )
        return batch
    df = pl.read_csv(
        data,
        has_header=False,
        skip_rows=1 if header else 0,
        new_columns=list(cols),
        schema={c: pl.String for c in cols},
        truncate_ragged_lines=False,
    ).with_row_index("line", offset=2 if header else 1)
    num = {
        c: pl.col(c)
        .str.strip_chars()
        .cast(
            pl.Float64 if c in ("price", "qty", "quantity", "quote_qty") else pl.Int64, strict=False
        )
        for c in cols
        if c not in ("is_buyer_maker", "is_best_match")
    }
    maker = pl.col("is_buyer_maker").str.strip_chars().str.to_lowercase()
    df = df.with_columns(
        **num,
        maker=pl.when(maker == "true")
        .then(True)
        .when(maker == "false")
        .then(False)
        .otherwise(None),
    )
    need = [*num, "maker"]
    bad = df.filter(pl.any_horizontal([pl.col(c).is_null() for c in need]))
    for line in bad["line"].head(50).to_list():
        errors.append(
            LineError(
                str(path),
                int(line),
                f"expected numeric {', '.join(cols[:-2])} and true/false maker flag",
            )
        )
    if bad.height > 50:
        errors.append(
            LineError(str(path), int(bad["line"][50]), f"... and {bad.height - 50} more bad rows")
        )
    df = df.filter(~pl.any_horizontal([pl.col(c).is_null() for c in need]))
    tcol = "transact_time" if agg else "time"
    # Binance switched spot dumps from ms to µs timestamps in 2025: detect per row.
    ts_ns = (
        pl.when(pl.col(tcol) < 10**14)
        .then(pl.col(tcol) * 1_000_000)
        .otherwise(pl.col(tcol) * 1_000)
    )
    sym = unified_symbol(src.symbol_hint or "", src.venue)
    side = pl.when(pl.col("maker")).then(pl.lit("sell")).otherwise(pl.lit("buy"))
    common = dict(
        venue=pl.lit(src.venue),
        symbol=pl.lit(sym),
        exch_ts_ns=ts_ns,
        recv_ts_ns=pl.lit(None, pl.Int64),
        price=pl.col("price"),
        side=side,
    )
    if agg:
        batch.add(
            "agg_trades",
            df.select(
                **common,
                agg_trade_id=pl.col("agg_trade_id"),
                first_trade_id="first_trade_id",
                last_trade_id="last_trade_id",
                qty=pl.col("quantity"),
            ).unique("agg_trade_id", keep="first", maintain_order=True),
        )
    else:
        batch.add(
            "trades",
            df.select(**common, trade_id=pl.col("id"), qty=pl.col("qty")).unique(
                "trade_id", keep="first", maintain_order=True
            ),
        )
    batch.count("csv_rows", df.height)
    return batch


def _classify_sources(files: list[Path], venue: str | None) -> list[_Source]:
    out = []
    for f in files:
        m = _DUMP_NAME.match(f.name)
        if f.suffix in (".csv", ".zip") or (m and f.suffix != ".gz"):
            if not m:
                raise ImportError_(
                    f"{f}: a CSV must be named like a Binance dump "
                    "(BTCUSDT-trades-2024-08-08.csv or BTCUSDT-aggTrades-...)"
                )
            kind = "agg_trades_csv" if m.group("kind").lower() == "aggtrades" else "trades_csv"
            out.append(_Source(f, kind, venue or "binance", 0, m.group("sym").lower()))
            continue
        first_ts, sym, futures, _ = _peek(f)
        v = venue or ("binanceusdm" if futures else "binance")
        out.append(_Source(f, "journal", v, first_ts, sym))
    return out


def import_paths(
    paths: Sequence[str | Path],
    lake: Lake,
    venue: str | None = None,
    progress: bool = False,
    catalog: bool = True,
) -> ImportReport:
    """Import recordings and dumps into ``lake``. Never raises for bad lines: they are reported
    in ``ImportReport.errors`` and the valid part is kept. A failure that aborts the import
    leaves the lake exactly as it was."""
    t0 = time.perf_counter()
    report = ImportReport()
    files = _expand(paths)
    report.files = [str(f) for f in files]
    sources = _classify_sources(files, venue)
    # Journals of one venue are one stream, in order of their first receive time.
    sources.sort(key=lambda s: (s.kind != "journal", s.venue, s.first_ts, str(s.path)))
    normalizers: dict[str, Normalizer] = {}
    sink = _Sink(lake)
    digest = hashlib.sha256()
    total_bytes = sum(s.path.stat().st_size for s in sources)
    bar = _progress(progress)
    try:
        task = bar.add_task("importing", total=total_bytes) if bar else None
        for src in sources:
            digest.update(f"{src.path.name}|{src.kind}|{src.venue}".encode())
            if src.path.stat().st_size == 0:
                report.errors.append(
                    LineError(
                        str(src.path), 1, "empty file: expected '<receive time> <JSON>' lines"
                    )
                )
                continue
            if src.kind != "journal":
                b = _csv_dump(src, report.errors, digest)
                sink.write(b)
                _merge_counts(report, b)
            else:
                norm = normalizers.get(src.venue)
                if norm is None:
                    norm = normalizers[src.venue] = normalizer_for(src.venue)
                reader = JournalReader(src.path, on_raw=_on_raw(digest, bar, task))
                for parsed in reader.frames():
                    b = norm.feed(
                        RawLines(
                            parsed["recv_ts_ns"],
                            parsed["text"],
                            parsed["line"],
                            str(src.path),
                            src.symbol_hint,
                        )
                    )
                    report.errors.extend(b.errors)
                    _merge_counts(report, b)
                    sink.write(b)
                report.errors.extend(
                    LineError(p.source, p.line, p.message, p.content) for p in reader.problems
                )
                report.lines += reader.lines
            report.bytes_read += src.path.stat().st_size
            if bar and task is not None:
                bar.update(task, completed=report.bytes_read)
        for v, norm in normalizers.items():
            report.sync[v] = norm.sync_stats()
            b = norm.finish()
            _merge_counts(report, b)
            sink.write(b)
        name = f"import-{digest.hexdigest()[:20]}.parquet"
        report.gaps = pl.concat(sink.gaps) if sink.gaps else None
        report.written = sink.publish(name)
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar:
            bar.stop()
    report.errors.sort(key=lambda e: (e.source, e.line))
    if catalog and report.written:
        lake.build_catalog()
    report.seconds = time.perf_counter() - t0
    return report


def _merge_counts(report: ImportReport, b: Batch) -> None:
    for k, v in b.counts.items():
        report.counts[k] = report.counts.get(k, 0) + v


def _on_raw(
    digest: hashlib._Hash, bar: Progress | None, task: TaskID | None
) -> Callable[[bytes], None]:
    """Every byte read feeds the output name's digest (and the progress bar)."""
    if bar is None or task is None:
        return digest.update

    def seen(raw: bytes) -> None:
        digest.update(raw)
        bar.update(task, advance=len(raw))

    return seen


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    p.start()
    return p
