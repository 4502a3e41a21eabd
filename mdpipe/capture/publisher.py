"""Publishing: the capture's outbox (raw lines not yet journaled, normalized rows not yet on disk),
flushed as journal first, then Parquet (atomic publish), and hourly roll-ups.

Because the journal is written before the Parquet files of the same interval, a SIGKILL loses at
most the last flush interval and never leaves lake rows without their raw lines.

Roll-up ("compaction"). Flushes name files `cap-YYYYMMDDTHH-<publish ns>.parquet`; a day of them
is ~17,000 small files per partition. Once the flush that took the flush lock after an hour's end
has finished, no file of that hour can still appear (names use publish time, never decrease, and
every earlier flush has completed), so a background thread merges each partition's files of the
hour into one roll-up (`Lake.compact`: `<first file's stem>-to-<last ns>.parquet`, which sorts
where the first file did). One roll-up pass at a time, off the event loop; at start, one pass over
the capture's partitions finishes interrupted roll-ups and rolls up past hours a previous run
left. See mdpipe/lake/store.py for the crash window.

The online engine's `live/signals` files (`sig-...`, mdpipe/capture/live_signals.py) are rolled
up by the same pass: they are published on the event loop like the flushes, and named with the
wall time of their publish, so once a pass has started no signal file named before its cutoff
can still appear (`signal_file_published` marks their partitions dirty).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.status import Status
from mdpipe.lake import JournalWriter, Lake, Partition, split_by_date
from mdpipe.venues import Batch

log = logging.getLogger("mdpipe.capture")

TABLES = ("trades", "book", "gaps", "bbo", "agg_trades", "mark")
FILE_PREFIX = "cap-"  # capture's sequence-named files: cap-YYYYMMDDTHH-<19-digit ns>.parquet
SIGNALS_TABLE = "live/signals"
SIGNAL_FILE_PREFIX = "sig-"  # the online engine's files (live_signals.FILE_PREFIX)
ROLLUP_PREFIXES = (FILE_PREFIX, SIGNAL_FILE_PREFIX)
HOUR_NS = 3600 * 1_000_000_000


@dataclass
class _CompactionResult:
    compactions: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    covered_removed: int = 0
    errors: int = 0
    failed: list[Partition] = field(default_factory=list)  # retried by the next pass
    complete: bool = True  # False when stopped part way


class Publisher:
    """The outbox and everything that writes it to the lake: flushes and roll-ups."""

    def __init__(
        self, config: CaptureConfig, lake: Lake, journal: JournalWriter, status: Status
    ) -> None:
        self.config = config
        self.venue = config.venue
        self.lake = lake
        self.journal = journal
        self.status = status
        # normalized or received, not yet on disk
        self._u_ns: list[int] = []
        self._u_text: list[str] = []
        self._acc = Batch()
        self._flush_lock = asyncio.Lock()
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self.last_flush_mono = time.monotonic()
        self._name_ns = 0
        # roll-up: the period files are merged by (an hour; tests shorten it, see roll_period_s)
        self._roll_ns = HOUR_NS
        self._lock_ns = 0  # wall time the flush lock was last taken: names below it are final
        self._dirty: dict[Partition, int] = {}  # partition -> newest file name ns published
        self._compact_task: asyncio.Task[None] | None = None
        self._compact_stop = threading.Event()
        self.closing = False
        self.compact_hourly = config.compact_hourly  # the daemon turns it off for object stores
        self.writer_id = ""  # set by the daemon: in every file name when several captures write

    # ---- the outbox ----------------------------------------------------------------------

    def add_lines(self, ns: Sequence[int], texts: Sequence[str]) -> None:
        self._u_ns.extend(ns)
        self._u_text.extend(texts)

    def add(self, table: str, df: pl.DataFrame) -> None:
        self._acc.add(table, df)

    def extend(self, batch: Batch) -> None:
        self._acc.extend(batch)

    @property
    def lines_waiting(self) -> int:
        return len(self._u_ns)

    @property
    def unpublished(self) -> bool:
        return bool(self._u_ns or self._acc.tables)

    @property
    def roll_period_s(self) -> float:
        return self._roll_ns / 1e9

    @roll_period_s.setter
    def roll_period_s(self, seconds: float) -> None:
        ns = round(seconds * 1e9)
        if ns <= 0 or HOUR_NS % ns:
            raise ValueError(f"roll_period_s must divide 3600 s, got {seconds!r}")
        self._roll_ns = ns

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Name floor from the lake; with roll-ups on, one pass over the capture's partitions."""
        self._name_ns = max(self._name_ns, self._lake_name_floor())
        if self.compact_hourly:
            # finish interrupted roll-ups and roll up the hours a previous run left behind
            now = time.time_ns()
            parts = [
                p
                for t in (*TABLES, SIGNALS_TABLE)
                for sym in self.config.symbols
                for p in self.lake.partition_dirs(t, self.venue, sym)
            ]
            self._start_compaction(parts, now - now % self._roll_ns)

    def due(self) -> bool:
        """A flush is due: started early by the last flush's duration, so that the oldest line
        of a flush is on disk about flush_interval_s after it arrived, not after that plus the
        write time."""
        lead = min(self.status.last_flush_s, self.config.flush_interval_s / 2)
        return time.monotonic() - self.last_flush_mono >= self.config.flush_interval_s - lead

    async def close(self) -> None:
        """The last flushes (a failed one gets a few retries), then stop the roll-up pass."""
        self.closing = True
        for attempt in range(5):
            await self.flush()
            if not self.unpublished:
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            log.error(
                "exiting with %d raw lines and %s rows unwritten (every flush failed)",
                len(self._u_ns),
                {t: df.height for t, df in self._acc.tables.items()},
            )
        if self._compact_task is not None:
            # a pass stops between partitions; what it left is finished by the next start
            self._compact_stop.set()
            await asyncio.gather(self._compact_task, return_exceptions=True)

    async def flush(self) -> None:
        # shielded: cancelling the caller (stop() cancels the process loop) must not release the
        # lock while the writer thread still appends to the journal; stop() then waits for it
        task = asyncio.ensure_future(self._flush_locked())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)
        await asyncio.shield(task)

    async def _flush_locked(self) -> None:
        async with self._flush_lock:
            self._last_flush_mono = time.monotonic()
            # every earlier flush has finished and every later name is >= this: files named
            # before the roll period this falls in are final (see maybe_compact)
            self._lock_ns = time.time_ns()
            ns, texts = self._u_ns, self._u_text
            self._u_ns, self._u_text = [], []
            acc, self._acc = self._acc, Batch()
            if not ns and not acc.tables:
                return
            t0 = time.perf_counter()
            try:
                published, touched = await asyncio.to_thread(self._flush_sync, ns, texts, acc)
            except _FlushFailed as failed:
                # disk full, permissions...: keep what was not written and retry next interval
                log.error("flush failed (%s); keeping the data for the next flush", failed.cause)
                self.status.episode("flush_error", "*", repr(failed.cause)[:300], resolved=False)
                if not failed.journal_done:
                    self._u_ns[:0] = ns
                    self._u_text[:0] = texts
                failed.leftover.extend(self._acc)
                self._acc = failed.leftover
                for part, name_ns in failed.touched:
                    self._dirty[part] = name_ns
                return
            dt = time.perf_counter() - t0
            for part, name_ns in touched:
                self._dirty[part] = name_ns
            st = self.status
            st.flushes.inc()
            st.last_flush_s = dt
            st.flush_duration.labels(self.venue).observe(dt)
            if ns:
                delay = (time.time_ns() - min(ns)) / 1e9
                st.publish_delay_last_s = delay
                st.publish_delay_max_s = max(st.publish_delay_max_s, delay)
            for table, (files, rows) in published.items():
                st.files_published.inc(table, n=files)
                st.rows_published.inc(table, n=rows)
            self.status.events.notify()

    def _file_name(self) -> tuple[str, int]:
        # names sort in publish order inside a partition (readers concatenate files by name to
        # get applied order) and never repeat, even across restarts (start() floors _name_ns at
        # the newest name in the lake, so a clock stepped back cannot reuse a rolled-up range)
        # and never fall below the time this flush took the lock (the roll-up's barrier)
        ns = max(time.time_ns(), self._name_ns + 1, self._lock_ns)
        self._name_ns = ns
        t = time.gmtime(ns // 1_000_000_000)
        stamp = f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}T{t.tm_hour:02d}"
        writer = f"{self.writer_id}-" if self.writer_id else ""
        return f"{FILE_PREFIX}{writer}{stamp}-{ns:019d}.parquet", ns

    def _flush_sync(
        self, ns: list[int], texts: list[str], acc: Batch
    ) -> tuple[dict[str, tuple[int, int]], list[tuple[Partition, int]]]:
        out: dict[str, tuple[int, int]] = {}
        touched: list[tuple[Partition, int]] = []
        try:
            if ns:
                before = len(self.journal.files_written)
                self.journal.write_lines(ns, texts)
                out["raw"] = (len(self.journal.files_written) - before, len(ns))
        except Exception as exc:
            raise _FlushFailed(exc, journal_done=False, leftover=acc) from exc
        name, name_ns = self._file_name()
        parts: list[tuple[str, str, str, pl.DataFrame]] = []
        for table in TABLES:
            df = acc.tables.get(table)
            if df is None or df.height == 0:
                continue
            for date, day in split_by_date(df, table).items():
                for (sym,), part in day.group_by("symbol", maintain_order=True):
                    parts.append((table, str(sym), date, part))
        for i, (table, sym, date, part) in enumerate(parts):
            try:
                self.lake.publish(table, self.venue, sym, date, part, name=name)
            except Exception as exc:
                leftover = Batch()
                for t, _, _, p in parts[i:]:
                    leftover.add(t, p)
                raise _FlushFailed(
                    exc, journal_done=True, leftover=leftover, touched=touched
                ) from exc
            touched.append((Partition(table, self.venue, sym, date), name_ns))
            files, rows = out.get(table, (0, 0))
            out[table] = (files + 1, rows + part.height)
        return out, touched

    # ---- roll-up -----------------------------------------------------------------------------

    def _lake_name_floor(self) -> int:
        """The newest name ns among the capture's latest partitions (two newest dates each)."""
        best = 0
        for t in TABLES:
            for sym in self.config.symbols:
                for part in self.lake.partition_dirs(t, self.venue, sym)[-2:]:
                    best = max(best, self.lake.max_sequence_ns(part))
        return best

    def signal_file_published(self, part: Partition, name_ns: int) -> None:
        """A `live/signals` file of this venue was published: roll it up with the flushes'."""
        if part.venue == self.venue:
            self._dirty[part] = max(self._dirty.get(part, 0), name_ns)

    def maybe_compact(self) -> None:
        """Start a roll-up pass once a flush has taken the lock in a new roll period."""
        if not self.compact_hourly or self._compact_task is not None or self.closing:
            return
        cutoff = self._lock_ns - self._lock_ns % self._roll_ns
        if cutoff <= self.status.compacted_before_ns:
            return
        self._start_compaction(list(self._dirty), cutoff)

    def _start_compaction(self, parts: list[Partition], cutoff: int) -> None:
        async def run() -> None:
            t0 = time.perf_counter()
            try:
                res = await asyncio.to_thread(self._compact_sync, parts, cutoff)
            except Exception:  # never expected (errors are per partition); never fatal
                log.exception("roll-up pass failed")
                res = _CompactionResult(errors=1, complete=False)
            s = self.status
            s.last_compaction_s = time.perf_counter() - t0
            for table, n in res.compactions.items():
                s.compactions.inc(table, n=n)
            for table, n in res.files.items():
                s.files_compacted.inc(table, n=n)
            s.covered_files_removed.inc(n=res.covered_removed)
            s.compaction_errors.inc(n=res.errors)
            if res.complete:
                # the next pass runs in the next period; failed partitions stay dirty until then
                s.compacted_before_ns = max(s.compacted_before_ns, cutoff)
                failed = set(res.failed)
                for p in parts:  # a partition whose newest file was before the cutoff is done
                    if p not in failed and self._dirty.get(p, cutoff) < cutoff:
                        del self._dirty[p]
                for p in failed:
                    self._dirty.setdefault(p, 0)
            self._compact_task = None
            self.status.events.notify()

        self._compact_task = asyncio.get_running_loop().create_task(run(), name="capture-rollup")

    def _compact_sync(self, parts: list[Partition], cutoff: int) -> _CompactionResult:
        """One pass (worker thread): per partition, delete files an earlier roll-up covers, then
        merge the files of each roll period that ended before `cutoff` into one."""
        res = _CompactionResult()
        for part in parts:
            if self._compact_stop.is_set():
                res.complete = False
                break
            try:
                res.covered_removed += self.lake.finish_compactions(part)
                groups: dict[tuple[str, int], list[Path]] = {}
                for path, prefix, ns in self.lake.sequence_files(part):
                    if prefix.startswith(ROLLUP_PREFIXES) and ns < cutoff:
                        groups.setdefault((prefix, ns // self._roll_ns), []).append(path)
                for files in groups.values():
                    if len(files) < 2:
                        continue  # already one file for its period
                    self.lake.compact(part, files)
                    t = part.table
                    res.compactions[t] = res.compactions.get(t, 0) + 1
                    res.files[t] = res.files.get(t, 0) + len(files)
            except Exception:  # disk full...: the files stay as they are, retried next pass
                log.exception("roll-up of %s failed", part)
                res.errors += 1
                res.failed.append(part)
        return res


class _FlushFailed(Exception):
    """A flush that stopped part way: what is already on disk, and what is not."""

    def __init__(
        self,
        cause: Exception,
        *,
        journal_done: bool,
        leftover: Batch,
        touched: list[tuple[Partition, int]] | None = None,
    ) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.journal_done = journal_done
        self.leftover = leftover
        self.touched = touched or []  # partitions published before the failure
