"""Benchmark: raw recording -> lake, mdpipe's import against a plain baseline, on one core.

    .venv/bin/python bench/import_bench.py [--copies 6]

Both readers run in a child process pinned to one CPU (``taskset -c 0``) with
``POLARS_MAX_THREADS=1``, on the bundled BTCUSDT and ETHUSDT recordings tiled to
``copies`` x 11 minutes (bench/tiling.py). The baseline is the reader most projects write:
per-line ``json.loads``, one Python dict per canonical row, the same book-sync state machine,
pyarrow tables written at the end. Figures are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tiling import tile

RESULTS = Path(__file__).with_name("RESULTS.md")


def baseline(paths: list[str], lake: str) -> dict[str, int]:
    """The straightforward reader: json.loads per line, a dict per row, pyarrow at the end."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mdpipe.venues.base import BookSync
    from mdpipe.venues.binance import SPOT_RULES, unified_symbol

    trades: list[dict] = []
    book: list[dict] = []
    bbo: list[dict] = []
    syncs: dict[str, BookSync] = {}
    pending: dict[str, dict[int, list[dict]]] = {}
    msgs = 0
    for path in paths:
        hint = Path(path).name.split("_")[0]
        with gzip.open(path, "rt") as fh:
            for n, line in enumerate(fh):
                ts_s, msg_s = line.rstrip("\n").split(" ", 1)
                ts = int(ts_s)
                msg = json.loads(msg_s)
                msgs += 1
                if "lastUpdateId" in msg:
                    sym = unified_symbol(hint, "binance")
                    sync = syncs.setdefault(sym, BookSync(SPOT_RULES))
                    rows = [
                        {
                            "venue": "binance",
                            "symbol": sym,
                            "exch_ts_ns": ts,
                            "recv_ts_ns": ts,
                            "update_id": msg["lastUpdateId"],
                            "side": side,
                            "price": float(p),
                            "qty": float(q),
                            "is_snapshot": True,
                        }
                        for side, key in (("bid", "bids"), ("ask", "asks"))
                        for p, q in msg[key]
                    ]
                    pend = pending.setdefault(sym, {})
                    pend[-n] = rows
                    order, _ = sync.on_snapshot(-n, msg["lastUpdateId"])
                    for ev in order:
                        book.extend(pend.pop(ev, []))
                    pend.clear()
                    continue
                d = msg["data"]
                sym = unified_symbol(d["s"], "binance")
                e = d.get("e")
                if e == "trade":
                    trades.append(
                        {
                            "venue": "binance",
                            "symbol": sym,
                            "exch_ts_ns": d["T"] * 10**6,
                            "recv_ts_ns": ts,
                            "trade_id": d["t"],
                            "price": float(d["p"]),
                            "qty": float(d["q"]),
                            "side": "sell" if d["m"] else "buy",
                        }
                    )
                elif e == "depthUpdate":
                    sync = syncs.setdefault(sym, BookSync(SPOT_RULES))
                    rows = [
                        {
                            "venue": "binance",
                            "symbol": sym,
                            "exch_ts_ns": d["E"] * 10**6,
                            "recv_ts_ns": ts,
                            "update_id": d["u"],
                            "side": side,
                            "price": float(p),
                            "qty": float(q),
                            "is_snapshot": False,
                        }
                        for side, key in (("bid", "b"), ("ask", "a"))
                        for p, q in d[key]
                    ]
                    pend = pending.setdefault(sym, {})
                    pend[n] = rows
                    order, _ = sync.on_diff(n, d["U"], d["u"], -1)
                    for ev in order:
                        book.extend(pend.pop(ev, []))
                    if sync.synced:
                        pend.clear()
                else:
                    bbo.append(
                        {
                            "venue": "binance",
                            "symbol": sym,
                            "recv_ts_ns": ts,
                            "update_id": d["u"],
                            "bid": float(d["b"]),
                            "bid_qty": float(d["B"]),
                            "ask": float(d["a"]),
                            "ask_qty": float(d["A"]),
                        }
                    )
    os.makedirs(lake, exist_ok=True)
    for name, rows in (("trades", trades), ("book", book), ("bbo", bbo)):
        pq.write_table(pa.Table.from_pylist(rows), f"{lake}/{name}.parquet", compression="zstd")
    return {"messages": msgs, "level_changes": len(book)}


def mdpipe_import(paths: list[str], lake: str) -> dict[str, int]:
    from mdpipe.ingest import import_paths
    from mdpipe.lake import Lake

    report = import_paths(paths, Lake(lake), catalog=False)
    assert report.ok, report.errors[:3]
    msgs = sum(report.counts.get(k, 0) for k in ("depth", "trade", "bbo", "snapshot"))
    return {"messages": msgs, "level_changes": report.rows("book")}


def child(mode: str, paths: list[str]) -> None:
    lake = tempfile.mkdtemp(prefix="bench-lake-")
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = (mdpipe_import if mode == "mdpipe" else baseline)(paths, lake)
    out["wall_s"] = time.perf_counter() - t0  # type: ignore[assignment]
    out["cpu_s"] = time.process_time() - c0  # type: ignore[assignment]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # type: ignore[assignment]
    shutil.rmtree(lake, ignore_errors=True)
    print(json.dumps(out))


def run(mode: str, paths: list[str]) -> dict[str, float]:
    env = dict(os.environ, POLARS_MAX_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", mode, *paths]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--copies", type=int, default=6, help="11-minute copies per symbol (6 = 66 min)"
    )
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    paths = [str(tile(s, args.copies)) for s in ("btcusdt", "ethusdt")]
    mb = sum(Path(p).stat().st_size for p in paths) / 1e6
    run("mdpipe", paths[:1])  # warm the page cache and polars' first-call costs
    ours = run("mdpipe", paths)
    base = run("baseline", paths)
    rate = ours["messages"] / ours["wall_s"]
    brate = base["messages"] / base["wall_s"]
    lines = [
        f"\n## import ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
        f"Command: `.venv/bin/python bench/import_bench.py --copies {args.copies}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "each reader pinned to one core (taskset -c 0, POLARS_MAX_THREADS=1).  ",
        f"Load average when starting: {os.getloadavg()[0]:.2f} (other work shares the 2 cores).  ",
        f"Input: BTCUSDT + ETHUSDT tiled to {args.copies * 11} min each, "
        f"{ours['messages']:,} messages, {mb:.1f} MB gzip.\n",
        "| reader | wall s | CPU s | messages/s (wall) | messages/CPU-s | level changes/s (wall) "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| mdpipe import | {ours['wall_s']:.2f} | {ours['cpu_s']:.2f} | {rate:,.0f} | "
        f"{ours['messages'] / ours['cpu_s']:,.0f} | "
        f"{ours['level_changes'] / ours['wall_s']:,.0f} | {ours['peak_rss_mb']:.0f} |",
        f"| baseline (json.loads + dicts) | {base['wall_s']:.2f} | {base['cpu_s']:.2f} | "
        f"{brate:,.0f} | {base['messages'] / base['cpu_s']:,.0f} | "
        f"{base['level_changes'] / base['wall_s']:,.0f} | {base['peak_rss_mb']:.0f} |",
        f"\nRatio mdpipe / baseline: **{rate / brate:.1f}x** (target >= 3x); "
        f"target >= 250,000 msg/s: {'met' if rate >= 250_000 else 'NOT met'}.\n",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_append:
        return
    with open(RESULTS, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
