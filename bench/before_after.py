"""Before/after: the same benchmarks on an earlier commit and on this tree, in one invocation.

    .venv/bin/python bench/before_after.py --base f64dd16            # import, core, capture
    .venv/bin/python bench/before_after.py --base f64dd16 --rounds 3 --only core
    .venv/bin/python bench/before_after.py --base f64dd16 --record   # append to RESULTS.md

The base commit is checked out as a detached git worktree under bench/out/ and run with this
tree's interpreter and packages (PYTHONPATH points at the tree being measured, so each run
imports its own `mdpipe`). Rounds alternate base, head, base, head, ... so that load from other
work on a shared machine falls on both sides alike; the table gives the median of the rounds
and the ratio head / base. Each side runs the benchmark scripts of its own tree, so what is
measured is the code of that commit with the inputs its scripts build (the same recording).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BENCHES = ("import", "core", "capture")


def _import_metrics(out: str) -> dict[str, float]:
    row = re.search(r"\| mdpipe import \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \|", out)
    if row is None:
        raise ValueError("import benchmark printed no '| mdpipe import |' row")
    base = re.search(r"\| baseline \(json.loads \+ dicts\) \| ([\d.]+) \| ([\d.]+) \|", out)
    rss = re.search(r"\| mdpipe import \|(?: [^|]+ \|){5} ([\d,]+) \|", out)
    if base is None or rss is None:
        raise ValueError("import benchmark printed no baseline row or no peak RSS")
    cpu, rate = float(row[2]), float(row[3].replace(",", ""))
    return {
        "import messages/s (wall)": rate,
        "import CPU s": cpu,
        # the json.loads baseline runs the same code on both sides: CPU relative to it cancels
        # out how busy the machine was during each side's run
        "import CPU s / baseline CPU s": cpu / float(base[2]),
        "import peak RSS MB": float(rss[1].replace(",", "")),
    }


def _core_metrics(out: str) -> dict[str, float]:
    found: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        for key in ("batch", "online"):
            if line.startswith(key + " {"):
                found[key] = ast.literal_eval(line[len(key) + 1 :])
    if set(found) != {"batch", "online"}:
        raise ValueError(f"core benchmark printed {sorted(found)}, expected batch and online")
    b, o = found["batch"], found["online"]
    return {
        "core batch CPU s (market-day)": float(b["cpu_s"]),
        "core batch us/event (CPU)": float(b["cpu_s"]) / float(b["events"]) * 1e6,
        "online us/book event (median)": float(o["book_median_us"]),
        "online us/trade (median)": float(o["trade_median_us"]),
        "online us/event p99 (book)": float(o["book_p99_us"]),
    }


def _capture_metrics(out: str) -> dict[str, float]:
    # the first JSON object the script prints is the full-speed run
    start = out.find("{\n")
    if start < 0:
        raise ValueError("capture benchmark printed no JSON result")
    fast, _ = json.JSONDecoder().raw_decode(out[start:])
    return {
        "capture messages/s (full speed)": float(fast["msg_per_s"]),
        "capture CPU us/message": float(fast["cpu_us_per_msg"]),
    }


def commands(quick: bool) -> dict[str, tuple[list[str], Callable[[str], dict[str, float]]]]:
    py = sys.executable
    imp = ["--copies", "1" if quick else "3"]
    core = ["--copies", "8" if quick else "30", "--naive-events", "2000", "--no-append"]
    cap = ["--seconds", "40", "--fast-seconds", "40", "--no-baseline", "--no-record"]
    return {
        "import": ([py, "bench/import_bench.py", *imp], _import_metrics),
        "core": ([py, "bench/core.py", *core], _core_metrics),
        "capture": ([py, "bench/capture.py", *cap], _capture_metrics),
    }


def base_tree(rev: str) -> Path:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = OUT / f"base-{sha}"
    if not (path / "mdpipe").is_dir():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True)
    return path


def run_one(tree: Path, cmd: list[str], log: Path) -> str:
    if tree == ROOT and "bench/import_bench.py" in cmd:
        cmd = [*cmd, "--no-append"]  # the base commit's script writes to its own worktree
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} in {tree} exited {proc.returncode}; see {log}")
    print(f"  {tree.name}: {' '.join(cmd[1:])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="f64dd16", help="the 'before' commit (default f64dd16)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--quick", action="store_true", help="small inputs")
    ap.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    trees = {"before": base_tree(args.base), "after": ROOT}
    logs = OUT / "before_after"
    logs.mkdir(parents=True, exist_ok=True)
    cmds = commands(args.quick)
    results: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    load0 = os.getloadavg()[0]
    for name in wanted:
        cmd, parse = cmds[name]
        print(f"== {name}", flush=True)
        for r in range(args.rounds):
            for side, tree in trees.items():
                out = run_one(tree, cmd, logs / f"{name}-{side}-{r}.log")
                for k, v in parse(out).items():
                    results[side].setdefault(k, []).append(v)
    rows = [
        f"\n## before/after: {args.base} vs {git_head()} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
        f"Command: `.venv/bin/python bench/before_after.py --base {args.base} "
        f"--rounds {args.rounds} --only {','.join(wanted)}{' --quick' if args.quick else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at start {load0:.2f} (shared machine).  ",
        f"Median of {args.rounds} alternating rounds per side; ratio = after / before "
        "(higher is better for rates, lower for times).\n",
        "| measurement | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for key, before in results["before"].items():
        b = statistics.median(before)
        a = statistics.median(results["after"][key])
        rows.append(f"| {key} | {b:,.2f} | {a:,.2f} | {a / b:.2f} |")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)
    return 0


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
