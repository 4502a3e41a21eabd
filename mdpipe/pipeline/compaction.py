"""Compaction of one day x market: the roll-ups capture used to do, as a job of its own.

Captures (one or many, each with its writer id in its file names) publish a file per flush:
``cap-[<writer>-]YYYYMMDDTHH-<ns>.parquet``, and their online engine a file per signal batch to
``live/signals``: ``sig-[<writer>-]YYYYMMDDTHH-<ns>.parquet``. This merges, per table of the partition, each
prefix's files of a roll period (an hour) into one roll-up (:meth:`mdpipe.lake.Lake.compact`)
and deletes what an interrupted roll-up left covered. It is safe while captures write:

- per writer, files reach the lake in name order (local publish; the spool uploads oldest
  first and stops at a failure), so a file arriving after a roll-up has a larger ns than the
  roll-up's range and is never covered by it;
- two compactions of one partition at once are prevented by the job's concurrency tag (one
  run per partition key); if it happens anyway, a roll-up inside a wider one of the same
  prefix is covered by it (:func:`mdpipe.lake.covered_files`), so rows are never counted twice.

Dagster-free: the job in ``mdpipe/defs/compaction.py`` calls :func:`compact_partition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mdpipe.lake import Lake, Partition

HOUR_NS = 3600 * 1_000_000_000
# the tables capture publishes sequence-named files to
CAPTURE_TABLES = ("trades", "book", "gaps", "bbo", "agg_trades", "mark")
# ... and the online engine inside capture (`sig-...` files; posted signals, `api-<id>`, are not
# sequence-named and stay one file each)
SIGNALS_TABLE = "live/signals"
ROLLUP_TABLES = (*CAPTURE_TABLES, SIGNALS_TABLE)


@dataclass
class CompactionStats:
    rollups: dict[str, int] = field(default_factory=dict)  # table -> roll-ups written
    files: dict[str, int] = field(default_factory=dict)  # table -> files merged
    covered_removed: int = 0

    def metadata(self) -> dict[str, int]:
        return {
            "rollups": sum(self.rollups.values()),
            "files_merged": sum(self.files.values()),
            "covered_removed": self.covered_removed,
        }


def compact_partition(
    lake: Lake,
    venue: str,
    symbol: str,
    date: str,
    *,
    tables: tuple[str, ...] = ROLLUP_TABLES,
    roll_period_ns: int = HOUR_NS,
    before_ns: int | None = None,
) -> CompactionStats:
    """Roll up every prefix's files of each roll period in the partition's tables (only files
    named before ``before_ns`` when given); returns what was done."""
    stats = CompactionStats()
    for table in tables:
        part = Partition(table, venue, symbol, date)
        stats.covered_removed += lake.finish_compactions(part)
        groups: dict[tuple[str, int], list[Path]] = {}
        for path, prefix, ns in lake.sequence_files(part):
            if before_ns is None or ns < before_ns:
                groups.setdefault((prefix, ns // roll_period_ns), []).append(path)
        for files in groups.values():
            if len(files) < 2:
                continue
            lake.compact(part, files)
            stats.rollups[table] = stats.rollups.get(table, 0) + 1
            stats.files[table] = stats.files.get(table, 0) + len(files)
    return stats


__all__ = [
    "CAPTURE_TABLES",
    "HOUR_NS",
    "ROLLUP_TABLES",
    "SIGNALS_TABLE",
    "CompactionStats",
    "compact_partition",
]
