"""Every throughput benchmark in sequence (what `make bench` runs), each in its own process.

    .venv/bin/python bench/run.py            # full sizes, as recorded in bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # small inputs: a smoke run in a few minutes
    .venv/bin/python bench/run.py --record   # also append each result to bench/RESULTS.md
    .venv/bin/python bench/run.py --only core,pipeline

In order: `import` (bench/import_bench.py: raw recording -> lake, msg/s), `core`
(bench/core.py: a market-day of features + detectors in batch, the online engine's us per
event, BOCPD, the naive baseline), `pipeline` (bench/pipeline.py: every asset of a full
market-day, with and without Dagster; full runs only: its input is always a whole day) and
`capture` (bench/capture.py: `mdpipe capture` against the local exchange, msg/s and soak).
Without `--record` nothing is appended to bench/RESULTS.md: before/after figures are recorded
on purpose, not by every run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
ORDER = ("import", "core", "pipeline", "capture")


def commands(quick: bool, record: bool) -> dict[str, list[str]]:
    py = sys.executable
    imp_args = ["--copies", "1" if quick else "6"]
    core_args = ["--copies", "8", "--naive-events", "2000"] if quick else []
    cap_args = ["--seconds", "40", "--fast-seconds", "40", "--no-baseline"] if quick else []
    cmds = {
        "import": [
            py,
            str(BENCH / "import_bench.py"),
            *imp_args,
            *([] if record else ["--no-append"]),
        ],
        "core": [py, str(BENCH / "core.py"), *core_args, *([] if record else ["--no-append"])],
        "pipeline": [py, str(BENCH / "pipeline.py"), *([] if record else ["--no-write"])],
        "capture": [py, str(BENCH / "capture.py"), *cap_args, *([] if record else ["--no-record"])],
    }
    if quick:
        del cmds["pipeline"]
    return cmds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs (pipeline skipped)")
    ap.add_argument("--record", action="store_true", help="append results to bench/RESULTS.md")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    args = ap.parse_args()
    cmds = commands(args.quick, args.record)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - set(ORDER))
        if unknown:
            ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ORDER)}")
        cmds = {k: v for k, v in cmds.items() if k in wanted}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    failed = []
    for name, cmd in cmds.items():
        print(f"\n==== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        print(f"==== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
