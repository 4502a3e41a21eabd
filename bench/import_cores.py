"""Benchmark: `mdpipe import` on 1 worker vs N workers, same files, same run.

    .venv/bin/python bench/import_cores.py [--rounds 3] [--jobs 2] [--no-append]

Imports every bundled recording (data/binance-spot-2024-08-08 + data/binance-multi-2024: 13
files, six markets) into a fresh lake with ``import_paths(jobs=1)`` (the serial baseline) and
``jobs=N``, rounds interleaved so both see the same machine load. Reports wall seconds (median),
messages per second and the speed-up ratio, plus the load average before and after (the machine
is shared: a ratio well under N with a high load is the other processes' share of the cores).
``--polars-threads 1`` keeps each process on one polars thread, so the ratio shows the
process-level scaling alone (by default the serial run already spreads some work over polars'
thread pool). Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if "--polars-threads" in sys.argv:  # before polars is imported (workers inherit it)
    os.environ["POLARS_MAX_THREADS"] = sys.argv[sys.argv.index("--polars-threads") + 1]

from mdpipe.ingest import import_paths  # noqa: E402
from mdpipe.lake import Lake  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
FILES = sorted((ROOT / "data" / "binance-spot-2024-08-08").glob("*.gz")) + sorted(
    (ROOT / "data" / "binance-multi-2024").glob("*.gz")
)
MESSAGES = ("depth", "trade", "agg_trade", "bbo", "snapshot", "mark")


def _one(jobs: int) -> tuple[float, int, int]:
    """(wall s, messages, lake files) of one import into a fresh lake."""
    with tempfile.TemporaryDirectory(prefix="import-cores-") as d:
        lake = Lake(Path(d) / "lake")
        t0 = time.perf_counter()
        report = import_paths(FILES, lake, jobs=jobs, catalog=False)
        wall = time.perf_counter() - t0
        if not report.ok:
            raise SystemExit(f"import reported errors: {report.errors[:3]}")
        files = sum(1 for _ in Path(d).rglob("*.parquet"))
        return wall, sum(report.counts.get(k, 0) for k in MESSAGES), files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="workers of the parallel run")
    ap.add_argument(
        "--polars-threads",
        default=None,
        help="POLARS_MAX_THREADS for the parent and the workers (default: polars' own)",
    )
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    load0 = os.getloadavg()
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    msgs: dict[int, int] = {}
    nfiles: dict[int, int] = {}
    for r in range(args.rounds):
        for jobs in (1, args.jobs) if r % 2 == 0 else (args.jobs, 1):
            wall, msgs[jobs], nfiles[jobs] = _one(jobs)
            walls[jobs].append(wall)
            print(f"round {r + 1} jobs={jobs}: {wall:.2f} s", flush=True)
    load1 = os.getloadavg()
    if msgs[1] != msgs[args.jobs] or nfiles[1] != nfiles[args.jobs]:
        raise SystemExit(f"runs differ: {msgs} messages, {nfiles} files")
    med = {j: statistics.median(w) for j, w in walls.items()}
    ratio = med[1] / med[args.jobs]
    size = sum(f.stat().st_size for f in FILES) / 1e6
    lines = [
        f"## import on every core (`bench/import_cores.py --rounds {args.rounds} --jobs "
        f"{args.jobs}"
        + (f" --polars-threads {args.polars_threads}" if args.polars_threads else "")
        + f"`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{len(FILES)} bundled files ({size:.1f} MB gzip, 6 markets, {msgs[1]:,} messages), "
        f"fresh lake per run, rounds interleaved; {os.cpu_count()} cores, "
        f"{platform.python_version()}; load average (1/5/15 min) before "
        f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} (shared machine).",
        "",
        "| workers | wall s (median) | runs | msg/s | speed-up vs 1 worker |",
        "|---|---|---|---|---|",
    ]
    for j in (1, args.jobs):
        runs = ", ".join(f"{w:.2f}" for w in walls[j])
        lines.append(
            f"| {j} | {med[j]:.2f} | {runs} | {msgs[j] / med[j]:,.0f} | {med[1] / med[j]:.2f}x |"
        )
    lines += ["", f"Speed-up {ratio:.2f}x with {args.jobs} workers.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
