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
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
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
        self.markets: set[tuple[str, str]] = set()  # (venue, symbol) of every row written

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
                self.markets.add((str(venue), str(symbol)))
                for date, part in split_by_date(g, table).items():
                    key = Partition(table, str(venue), str(symbol), date)
                    w = self.writers.get(key)
                    if w is None:
                        w = self.writers[key] = PartitionWriter(self.lake, key)
                    w.write(part)

    def seal(self) -> list[tuple[Partition, Path, int]]:
        """Every partition's temporary file finished, not published (see PartitionWriter.seal)."""
        out = []
        for key, w in self.writers.items():
            done = w.seal()
            if done is not None:
                out.append((key, done[0], done[1]))
        self.writers.clear()
        return out

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
    jobs: int = 1,
) -> ImportReport:
    """Import recordings and dumps into ``lake``. Never raises for bad lines: they are reported
    in ``ImportReport.errors`` and the valid part is kept. A failure that aborts the import
    leaves the lake exactly as it was.

    ``jobs`` > 1 decodes the files of different markets in that many worker processes: the files
    are grouped by (venue, market) so that everything one market's state depends on (the
    depth-id chain over ``..._20240808`` then ``..._20240809``) stays in one worker, in order.
    Groups whose output turns out to share a market (a journal multiplexing several markets)
    are merged and decoded again together, so the lake and the report always equal ``jobs=1``.
    Workers only write hidden temporary files; this process publishes them all at the end."""
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
    indexed = list(enumerate(sources))
    groups = [indexed] if jobs <= 1 else _market_groups(indexed)
    bar = _progress(progress)
    results: list[_GroupResult] = []
    try:
        task = (
            bar.add_task("importing", total=sum(s.path.stat().st_size for s in sources))
            if bar
            else None
        )
        results = _run_groups(groups, lake, jobs, bar, task)
        groups, results = _merge_overlaps(groups, results, lake, jobs, bar, task)
        failed = [r.failure for r in results if r.failure is not None]
        if failed:
            raise min(failed, key=lambda f: f[0])[1]
        digest = hashlib.sha256()
        for _, d in sorted(pair for r in results for pair in r.digests):
            digest.update(d.encode())
        name = f"import-{digest.hexdigest()[:20]}.parquet"
        gaps, offsets = [], []
        for r in results:
            report.errors.extend(r.errors)
            for k, v in r.counts.items():
                report.counts[k] = report.counts.get(k, 0) + v
            for vname, stats in r.sync.items():
                report.sync.setdefault(vname, {}).update(stats)
            report.lines += r.lines
            report.bytes_read += r.bytes_read
            if r.gaps is not None:
                gaps.append(r.gaps)
            if r.offsets is not None:
                offsets.append(r.offsets)
        # by market, each market's rows in stream order: the same frame whatever the grouping
        report.gaps = pl.concat(gaps).sort("venue", "symbol", maintain_order=True) if gaps else None
        report.clock = _clock(offsets)
        sealed = sorted(
            (p for r in results for p in r.sealed),
            key=lambda t: (t[0].table, t[0].venue, t[0].symbol, t[0].date),
        )
        while sealed:
            part, tmp, rows = sealed[0]
            _, report.written[part] = PartitionWriter.sealed(lake, part, tmp, rows).publish(
                name, dedup=True
            )
            sealed.pop(0)
        results = []
    except BaseException:
        _abort(results)
        raise
    finally:
        if bar:
            bar.stop()
    report.errors.sort(key=lambda e: (e.source, e.line))
    if catalog and report.written:
        lake.build_catalog()
    report.seconds = time.perf_counter() - t0
    return report


Indexed = list[tuple[int, _Source]]  # sources with their position in the serial order


@dataclass
class _GroupResult:
    """What one worker hands back: sealed temporary files (not yet published) and the report's
    parts. ``failure``: the position of the file that aborted the group, and why."""

    sealed: list[tuple[Partition, Path, int]] = field(default_factory=list)
    digests: list[tuple[int, str]] = field(default_factory=list)  # per source position
    errors: list[LineError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sync: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    gaps: pl.DataFrame | None = None
    offsets: pl.DataFrame | None = None
    lines: int = 0
    bytes_read: int = 0
    markets: set[tuple[str, str]] = field(default_factory=set)  # (venue, symbol) written
    failure: tuple[int, Exception] | None = None


def _market_groups(indexed: Indexed) -> list[Indexed]:
    """Files grouped by (venue, the market of their first stream), each in serial order."""
    groups: dict[tuple[str, str], Indexed] = {}
    for i, s in indexed:
        key = ("" if s.venue is None else s.venue.name, s.symbol_hint or str(s.path))
        groups.setdefault(key, []).append((i, s))
    return list(groups.values())


def _merge_overlaps(
    groups: list[Indexed],
    results: list[_GroupResult],
    lake: Lake,
    jobs: int,
    bar: Progress | None,
    task: TaskID | None,
) -> tuple[list[Indexed], list[_GroupResult]]:
    """Groups that wrote the same market are merged and decoded again as one serial stream."""
    while True:
        owner: dict[tuple[str, str], int] = {}
        parent = list(range(len(groups)))

        for gi, r in enumerate(results):
            for m in r.markets:
                if m in owner:
                    parent[_root(parent, gi)] = _root(parent, owner[m])
                else:
                    owner[m] = gi
        merged: dict[int, list[int]] = {}
        for gi in range(len(groups)):
            merged.setdefault(_root(parent, gi), []).append(gi)
        redo = [g for g in merged.values() if len(g) > 1]
        if not redo:
            return groups, results
        keep = [gi for g in merged.values() if len(g) == 1 for gi in g]
        _abort([results[gi] for g in redo for gi in g])
        new_groups = [sorted(pair for gi in g for pair in groups[gi]) for g in redo]
        again = _run_groups(new_groups, lake, jobs, None, None)
        groups = [groups[gi] for gi in keep] + new_groups
        results = [results[gi] for gi in keep] + again


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        i = parent[i]
    return i


def _run_groups(
    groups: list[Indexed], lake: Lake, jobs: int, bar: Progress | None, task: TaskID | None
) -> list[_GroupResult]:
    """Each group decoded by :func:`_import_group`: here for one group or ``jobs`` <= 1, else
    in a pool of ``jobs`` worker processes (largest groups first)."""
    if jobs <= 1 or len(groups) == 1:
        return [_import_group(g, lake, bar, task) for g in groups]
    lake_root = lake.url or str(lake.root)
    # the forkserver keeps the environment it started with: hand the store's settings over
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mdpipe.ingest"])
    size = [sum(s.path.stat().st_size for _, s in g) for g in groups]
    out: dict[int, _GroupResult] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(groups)), mp_context=ctx) as pool:
        futures = {
            pool.submit(_import_group_in_worker, groups[gi], lake_root, aws): gi
            for gi in sorted(range(len(groups)), key=lambda gi: -size[gi])
        }
        try:
            for fut in as_completed(futures):
                gi = futures[fut]
                out[gi] = fut.result()
                if bar and task is not None:
                    bar.update(task, advance=size[gi])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            _abort(
                [
                    f.result()
                    for f in futures
                    if f.done() and not f.cancelled() and not f.exception()
                ]
            )
            raise
    return [out[gi] for gi in range(len(groups))]


def _import_group_in_worker(group: Indexed, lake_root: str, aws: dict[str, str]) -> _GroupResult:
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update(aws)
    return _import_group(group, Lake(lake_root), None, None)


def _abort(results: Sequence[_GroupResult]) -> None:
    for r in results:
        for _, tmp, _ in r.sealed:
            Path(tmp).unlink(missing_ok=True)
        r.sealed = []


def _import_group(
    group: Indexed, lake: Lake, bar: Progress | None, task: TaskID | None
) -> _GroupResult:
    """Decode ``group``'s files in order into sealed (unpublished) partition files. A file that
    cannot be imported at all ends the group: its temporary files are removed and the failure
    returned (raised by the caller, so the lake stays as it was)."""
    res = _GroupResult()
    normalizers: dict[str, Normalizer] = {}
    sink = _Sink(lake)
    pos = -1
    try:
        for pos, src in group:
            vname = "" if src.venue is None else src.venue.name
            digest = hashlib.sha256(f"{src.path.name}|{src.kind}|{vname}".encode())
            res.digests.append((pos, ""))
            if src.path.stat().st_size == 0:
                res.errors.append(
                    LineError(
                        str(src.path), 1, "empty file: expected '<receive time> <JSON>' lines"
                    )
                )
                res.digests[-1] = (pos, digest.hexdigest())
                continue
            if src.venue is None:
                res.errors.append(
                    LineError(
                        str(src.path),
                        1,
                        "no venue recognises this journal's messages (known: "
                        f"{', '.join(venues.names())}); choose one with --venue",
                    )
                )
                res.digests[-1] = (pos, digest.hexdigest())
                continue
            if src.dump is not None:
                data = src.path.read_bytes()
                digest.update(data)
                try:
                    b = src.venue.read_dump(src.path, data, src.dump)
                except ValueError as e:
                    raise ImportError_(str(e)) from e
                res.errors.extend(b.errors)
                sink.write(b)
                _merge_counts(res.counts, b)
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
                    res.errors.extend(b.errors)
                    _merge_counts(res.counts, b)
                    sink.write(b)
                res.errors.extend(
                    LineError(p.source, p.line, p.message, p.content) for p in reader.problems
                )
                res.lines += reader.lines
            res.digests[-1] = (pos, digest.hexdigest())
            res.bytes_read += src.path.stat().st_size
            if bar and task is not None:
                bar.update(task, completed=res.bytes_read)
        for v, norm in normalizers.items():
            res.sync[v] = norm.sync_stats()
            res.markets.update((v, sym) for sym in res.sync[v])
            b = norm.finish()
            _merge_counts(res.counts, b)
            sink.write(b)
        res.gaps = pl.concat(sink.gaps) if sink.gaps else None
        res.offsets = pl.concat(sink.offsets) if sink.offsets else None
        res.markets.update(sink.markets)
        res.sealed = sink.seal()
    except Exception as e:
        sink.abort()
        res.sealed = []
        res.failure = (pos, e)
    except BaseException:
        sink.abort()
        raise
    return res


def _clock(offsets: list[pl.DataFrame]) -> dict[tuple[str, str], ClockOffset]:
    """Receive-minus-exchange stats per (venue, symbol) over every clock table row."""
    if not offsets:
        return {}
    q = pl.col("offset_ms")
    stats = (
        pl.concat(offsets)
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


def _merge_counts(counts: dict[str, int], b: Batch) -> None:
    for k, v in b.counts.items():
        counts[k] = counts.get(k, 0) + v


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
