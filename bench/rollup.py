"""Benchmark: capture's hourly roll-up, and what it buys a DuckDB reader.

    .venv/bin/python bench/rollup.py [--files 720] [--copies 6]

The BTCUSDT recording tiled to ``copies`` x 11 minutes (bench/tiling.py) is imported, its
`book` partition of 2024-08-09 is split at event boundaries into ``files`` sequence-named
`cap-...` files (one hour of capture at a 5 s flush is 720 files per partition), and then:
the time of `Lake.compact` (one core), and in the same run a full DuckDB scan of the
partition (`count(*)`, `sum(qty)`, the hive view's way of reading) over the small files and
over the roll-up. Figures are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tiling import tile
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake, Partition

RESULTS = Path(__file__).with_name("RESULTS.md")
PART = Partition("book", "binance", "BTC/USDT", "2024-08-09")


def scan_s(glob: str, repeat: int = 5) -> float:
    con = duckdb.connect()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        con.execute(f"select count(*), sum(qty) from read_parquet('{glob}')").fetchall()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=720)
    ap.add_argument("--copies", type=int, default=6)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollup-"))
    try:
        lake = Lake(work / "lake")
        report = import_paths([tile("btcusdt", args.copies)], lake, catalog=False)
        assert report.ok, report.errors[:3]
        [src] = lake.files(PART.table, PART.venue, PART.symbol, PART.date)
        book = pl.read_parquet(src)
        src.unlink()
        # cut at event boundaries (rows of one update stay in one file)
        uid = book["update_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
        cuts = starts[np.linspace(0, len(starts), args.files, endpoint=False).astype(int)]
        bounds = [*cuts.tolist(), book.height]
        base_ns = 1_723_161_600_000_000_000
        for i in range(args.files):
            name = f"cap-20240809T00-{base_ns + i * 5_000_000_000:019d}.parquet"
            lake.publish(
                PART.table,
                PART.venue,
                PART.symbol,
                PART.date,
                book.slice(bounds[i], bounds[i + 1] - bounds[i]),
                name=name,
            )
        d = lake.partition_dir(PART.table, PART.venue, PART.symbol, PART.date)
        glob = f"{d}/*.parquet"
        before = scan_s(glob)
        files = [p for p, _, _ in lake.sequence_files(PART)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = lake.compact(PART, files)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        after = scan_s(glob)
        assert out is not None and pl.read_parquet(out).equals(book)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = out.stat().st_size / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"\n## capture roll-up ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
        f"Command: `.venv/bin/python bench/rollup.py --files {args.files} --copies {args.copies}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at the end.  ",
        f"Input: the BTCUSDT `book` partition of 2024-08-09 from the recording tiled to "
        f"{args.copies * 11} min ({book.height:,} rows), split at event boundaries into "
        f"{args.files} `cap-` files (an hour of capture at a 5 s flush).\n",
        "| measure | figure |",
        "|---|---|",
        f"| `Lake.compact` of {args.files} files, wall / CPU | {wall:.2f} s / {cpu:.2f} s |",
        f"| roll-up file | {size:.1f} MB, rows and order identical (checked) |",
        f"| DuckDB full scan, {args.files} small files | {before * 1e3:.1f} ms |",
        f"| DuckDB full scan, the roll-up | {after * 1e3:.1f} ms |",
        f"| scan speed-up from the roll-up | **{before / after:.1f}x** |",
        f"| peak RSS of the process (import included) | {rss:.0f} MB |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with RESULTS.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
