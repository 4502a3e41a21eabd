"""``mdpipe import``: recordings and dumps into the lake, streaming, idempotent, loud on bad input.

Venue-agnostic: the venue registry (:func:`mdpipe.venues.recognise`) says which venue reads
each file, and that venue's normalizer or dump reader yields the rows. Inputs:

- raw journals (:mod:`mdpipe.lake.journal`), one message per line as ``<local receive time>
  <raw message>``: recordings and the journal ``mdpipe capture`` writes. The venue is recognised
  from the first lines' content (``Venue.sniff``) unless forced.
- dumps a venue reads by their file name (``Venue.dump_of``; e.g. Binance public-data trade
  dumps, CSV or zip).

Files of one venue are read in order of their first receive time as one stream, so a day split
over several files syncs once. Output files are named after a digest of the inputs, so a second
import of the same files rewrites identical files, and rows already in a partition (from an
overlapping import or from capture) are not written again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.progress import Progress, TaskID

from mdpipe import venues
from mdpipe.lake import (
    JournalReader,
    Lake,
    Partition,
    PartitionWriter,
    epoch_ns,
    split_by_date,
)
from mdpipe.venues import Batch, DumpFile, LineError, Normalizer, RawLines, Venue

JOURNAL_SUFFIXES = (".gz", ".jsonl", ".txt", ".log", ".json")
# tables whose rows carry both the exchange's time and ours, for the receive-minus-exchange stat
CLOCK_TABLES = ("trades", "bbo", "mark")


class ImportError_(Exception):
    """A file that cannot be imported at all (named, with the reason)."""


@dataclass(frozen=True)
class ClockOffset:
    """Receive time minus exchange time of one market's rows (trades, bookTicker, mark price),
    in ms: network latency plus the recording host's clock error. Negative means the host's
    clock was behind the exchange's (the bundled 2024 recordings: about -1.27 s in August)."""

    rows: int
    median_ms: float
    p05_ms: float
    p95_ms: float


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
    clock: dict[tuple[str, str], ClockOffset] = field(default_factory=dict)  # (venue, symbol)

    @property
    def ok(self) -> bool:
        return not self.errors

    def rows(self, table: str) -> int:
        return sum(n for p, n in self.written.items() if p.table == table)


@dataclass
class _Source:
    path: Path
    kind: str  # journal | dump:<the venue's dump kind>
    venue: Venue | None  # None: no venue recognises the journal (reported, not imported)
    first_ts: int
    symbol_hint: str | None
    dump: DumpFile | None = None


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and f.suffix in (*JOURNAL_SUFFIXES, *venues.DUMP_SUFFIXES)
                )
            )
        elif p.exists():
            out.append(p)
        else:
            raise ImportError_(f"{p}: no such file or directory")
    return out


def _first_recv_ns(head: list[bytes]) -> int:
    """The first receive time of a journal head, in ns (ms and µs told by size), for ordering."""
    for line in head:
        ts = line.partition(b" ")[0]
        if ts.isdigit():
            return epoch_ns(int(ts))
    return 0


class _Sink:
    """Routes batches to one streaming writer per partition; publishes or aborts them together."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.writers: dict[Partition, PartitionWriter] = {}
        self.gaps: list[pl.DataFrame] = []
        self.offsets: list[pl.DataFrame] = []  # venue, symbol, offset_ms

    def write(self, batch: Batch) -> None:
        for table, df in batch.tables.items():
            if table == "gaps":
                self.gaps.append(df)
            if table in CLOCK_TABLES and df.height:
                self.offsets.append(
                    df.select(
                        "venue",
                        "symbol",
                        # whole ms, Int64: a REST backfill may arrive hours after its trade
                        offset_ms=(pl.col("recv_ts_ns") - pl.col("exch_ts_ns")) // 1_000_000,
                    ).drop_nulls("offset_ms")
                )
            for (venue, symbol), g in df.group_by("venue", "symbol", maintain_order=True):
                for date, part in split_by_date(g, table).items():
                    key = Partition(table, str(venue), str(symbol), date)
                    w = self.writers.get(key)
                    if w is None:
                        w = self.writers[key] = PartitionWriter(self.lake, key)
                    w.write(part)

    def clock(self) -> dict[tuple[str, str], ClockOffset]:
        if not self.offsets:
            return {}
        q = pl.col("offset_ms")
        stats = (
            pl.concat(self.offsets)
            .group_by("venue", "symbol")
            .agg(
                rows=pl.len(),
                median=q.median(),
                p05=q.quantile(0.05, "nearest"),
                p95=q.quantile(0.95, "nearest"),
            )
            .sort("venue", "symbol")
        )
        return {
            (v, s): ClockOffset(n, float(m), float(lo), float(hi))
            for v, s, n, m, lo, hi in stats.iter_rows()
        }

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


def _classify_sources(files: list[Path], venue: str | None) -> list[_Source]:
    """Which venue reads each file, and how (the registry decides; see venues.recognise)."""
    out = []
    for f in files:
        try:
            r = venues.recognise(f, venue)
        except venues.UnknownVenue as e:
            raise ImportError_(str(e)) from None
        kind = "journal" if r.dump is None else f"dump:{r.dump.kind}"
        out.append(_Source(f, kind, r.venue, _first_recv_ns(r.head), r.symbol_hint, r.dump))
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
    sources.sort(
        key=lambda s: (
            s.kind != "journal",
            "" if s.venue is None else s.venue.name,
            s.first_ts,
            str(s.path),
        )
    )
    normalizers: dict[str, Normalizer] = {}
    sink = _Sink(lake)
    digest = hashlib.sha256()
    total_bytes = sum(s.path.stat().st_size for s in sources)
    bar = _progress(progress)
    try:
        task = bar.add_task("importing", total=total_bytes) if bar else None
        for src in sources:
            vname = "" if src.venue is None else src.venue.name
            digest.update(f"{src.path.name}|{src.kind}|{vname}".encode())
            if src.path.stat().st_size == 0:
                report.errors.append(
                    LineError(
                        str(src.path), 1, "empty file: expected '<receive time> <JSON>' lines"
                    )
                )
                continue
            if src.venue is None:
                report.errors.append(
                    LineError(
                        str(src.path),
                        1,
                        "no venue recognises this journal's messages (known: "
                        f"{', '.join(venues.names())}); choose one with --venue",
                    )
                )
                continue
            if src.dump is not None:
                data = src.path.read_bytes()
                digest.update(data)
                try:
                    b = src.venue.read_dump(src.path, data, src.dump)
                except ValueError as e:
                    raise ImportError_(str(e)) from e
                report.errors.extend(b.errors)
                sink.write(b)
                _merge_counts(report, b)
            else:
                norm = normalizers.get(vname)
                if norm is None:
                    norm = normalizers[vname] = src.venue.normalizer()
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
        report.clock = sink.clock()
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
