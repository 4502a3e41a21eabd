"""CPU of `compute_partition` (Parquet read, features, detectors) for one tree, to compare commits.

    .venv/bin/python bench/partition_cpu.py --write-day 20      # build /tmp/mdpipe-day (once)
    .venv/bin/python bench/partition_cpu.py --root bench/out/base-f64dd16 --calls 5
    .venv/bin/python bench/partition_cpu.py --root . --calls 5

Each invocation imports `mdpipe` from `--root` (a checkout of the commit to measure), runs one
untimed call (numba cache), then `--calls` timed calls and prints the minimum and median CPU
seconds. Alternate the roots over several rounds on a shared machine: the minimum of a process's
calls is the figure least disturbed by other load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default=str(ROOT), help="checkout whose mdpipe is measured")
    ap.add_argument("--lake", default="/tmp/mdpipe-day")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--write-day", type=int, default=0, metavar="COPIES",
                    help="build the tiled day (bench/core.py's tiles) into --lake and exit")  # fmt: skip
    args = ap.parse_args()
    if args.write_day:
        sys.path.insert(0, str(ROOT / "bench"))
        import core  # bench/core.py

        core.write_day(Path(args.lake), args.write_day)
        return
    sys.path.insert(0, str(Path(args.root).resolve()))
    from mdpipe.lake import Lake

    try:
        from mdpipe.pipeline.read import compute_partition
    except ImportError:  # trees before the pipeline layer (f64dd16)
        from mdpipe.core.signals import compute_partition  # type: ignore[no-redef]

    lake = Lake(Path(args.lake))
    feats, _ = compute_partition(lake, "binance", "BTC/USDT", "2024-08-08")
    times = []
    for _ in range(args.calls):
        t = time.process_time()
        compute_partition(lake, "binance", "BTC/USDT", "2024-08-08")
        times.append(time.process_time() - t)
    print(f"{args.root}: events {feats.height} min {min(times):.3f} s "
          f"median {statistics.median(times):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
