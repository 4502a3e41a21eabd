"""Benchmark of `mdpipe sweep`: 100 candidates over the bench's synthetic market-day.

    .venv/bin/python bench/sweep.py [--copies 131] [--candidates 100] [--workers 2] [--no-append]

The day is bench/core.py's: the bundled BTCUSDT recording tiled to ~24 h (one partition).
Measured in one invocation, so the ratio compares like with like on a shared machine:

  1. single run: `features_step` (features + detectors, written to the lake) and one
     candidate's labels -> purged CV -> evaluation (what `mdpipe run` does for one setting);
  2. the sweep: `run_sweep` with `candidates` random draws from a detectors x backtest grid,
     features computed once (step 1's), candidates in a process pool of `workers`.
Results are appended to bench/RESULTS.md with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core as bench_core

from mdpipe.lake import Lake
from mdpipe.pipeline.steps import Part, features_step
from mdpipe.pipeline.sweep import candidates, load_part, parse_grid, run_candidate, run_sweep
from mdpipe.settings import load_settings

GRID = {
    "detectors": {
        "drift_threshold": [2.0, 2.5, 3.0, 3.5, 4.0, 5.0],
        "burst_threshold": [2.0, 2.5, 3.0, 4.0],
        "cooldown_seconds": [10.0, 30.0, 60.0],
        "dynamic_quantile": [0.8, 0.9, 0.95],
    },
    "backtest": {
        "profit_target_pct": [0.001, 0.002, 0.005],
        "stop_loss_pct": [0.001, 0.003],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=131)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        t = time.perf_counter()
        bench_core.write_day(Path(tmp), args.copies)
        setup_s = time.perf_counter() - t
        settings = load_settings(None, (), environ={}, cwd=tmp)
        part = Part("2024-08-08", "binance", "BTC/USDT")
        load0 = os.getloadavg()
        t = time.perf_counter()
        fo = features_step(lake, part, feature_config=settings.features,
                           detector_config=settings.detectors)  # fmt: skip
        features_s = time.perf_counter() - t
        grid = parse_grid({"sweep": {"samples": args.candidates, "seed": 1, "holdout_days": 0,
                                     "bar_seconds": 300}, **GRID})  # fmt: skip
        cand = candidates(grid, settings)[0]
        t = time.perf_counter()
        pd = load_part(lake, part, False)
        run_candidate(cand, pd)
        one_s = time.perf_counter() - t
        t = time.perf_counter()
        res = run_sweep(lake, grid, settings, workers=args.workers, compute_features=False)
        sweep_s = time.perf_counter() - t
        load1 = os.getloadavg()
    s = res.summary.row(0, named=True)
    single = features_s + one_s
    total = features_s + sweep_s
    lines = [
        f"\n## sweep: {len(res.candidates)} candidates over one market-day "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
        f"Command: `.venv/bin/python bench/sweep.py --copies {args.copies} --candidates "
        f"{args.candidates} --workers {args.workers}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before / after: "
        f"{load0[0]:.1f} / {load1[0]:.1f} (other helpers' work shared the machine).  ",
        f"Input: bench/core.py's tiled day, {fo.features.height:,} book events; "
        f"grid of {grid.size:,} (detectors x backtest), {len(res.candidates)} seeded draws; "
        f"{args.workers} worker processes. Setup (writing the day) {setup_s:.1f} s, not counted.\n",
        "| measurement | wall s |",
        "|---|---|",
        f"| features + detectors once (`features_step`) | {features_s:.1f} |",
        f"| one candidate: detectors, labels, purged CV, evaluation | {one_s:.1f} |",
        f"| single run (the two above) | {single:.1f} |",
        f"| sweep candidates ({len(res.candidates)}, incl. worker start-up and loading) | "
        f"{sweep_s:.1f} |",
        f"| sweep total (features once + candidates) | {total:.1f} |",
        "",
        f"Sweep / single run: **{total / single:.1f}x** for {len(res.candidates)} candidates "
        f"({sweep_s / max(len(res.candidates), 1):.2f} s per candidate); target total <= 180 s: "
        f"{'met' if total <= 180 else 'NOT met'}. PBO {s['pbo']:.3f}, DSR {s['dsr']:.3f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
