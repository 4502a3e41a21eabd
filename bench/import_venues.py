"""Benchmark: `mdpipe import` per Binance venue on the bundled recordings, on one core.

    .venv/bin/python bench/import_venues.py [--no-append]

Spot (data/binance-spot-2024-08-08, the baseline of the ratios), USD-M and COIN-M
(data/binance-multi-2024) are each imported in a child process pinned to one CPU
(``taskset -c 0``, ``POLARS_MAX_THREADS=1``; bench/import_bench.py's runner). COIN-M frames carry
an extra ``"ps"`` field and sizes in contracts (``base_qty`` added): the figure to watch is
COIN-M's messages per CPU-second against spot's in the same run. Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.import_bench import RESULTS, run  # noqa: E402

GROUPS = {
    "spot (binance)": sorted((ROOT / "data" / "binance-spot-2024-08-08").glob("*.gz")),
    "USD-M (binanceusdm)": sorted((ROOT / "data" / "binance-multi-2024").glob("usdm_*.gz")),
    "COIN-M (binancecoinm)": sorted((ROOT / "data" / "binance-multi-2024").glob("cm_*.gz")),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = {}
    for name, files in GROUPS.items():
        rows[name] = run("mdpipe", [str(f) for f in files])
        print(name, rows[name], flush=True)
    spot = rows["spot (binance)"]
    base = spot["messages"] / spot["cpu_s"]
    base_lc = spot["level_changes"] / spot["cpu_s"]
    lines = [
        f"## import per venue ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        "Command: `.venv/bin/python bench/import_venues.py`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, each import pinned to one core (taskset -c 0, "
        "POLARS_MAX_THREADS=1).  ",
        f"Load average when starting: {load:.2f} (other work shares the cores).",
        "",
        "| venue | files | messages | level changes | CPU s | messages/CPU-s | vs spot "
        "| level changes/CPU-s | vs spot | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        rate = r["messages"] / r["cpu_s"]
        lc = r["level_changes"] / r["cpu_s"]
        lines.append(
            f"| {name} | {len(GROUPS[name])} | {r['messages']:,} | {r['level_changes']:,} | "
            f"{r['cpu_s']:.2f} | {rate:,.0f} | {rate / base:.2f}x | {lc:,.0f} | "
            f"{lc / base_lc:.2f}x | {r['peak_rss_mb']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
