"""Every asset of one full market-day, with and without Dagster; appends to bench/RESULTS.md.

Input: the bundled BTCUSDT recording (~11 min, 2024-08-08 23:54 to 2024-08-09 00:05), depth
diffs, trades and the REST snapshot, tiled (times and ids shifted per copy, each copy with its
own shifted snapshot: `tile_with_snapshots`) until it covers the whole of 2024-08-09, imported
into a lake under bench/out (cached). Partition measured:
2024-08-09 x binance:BTC-USDT, a full UTC day; it warms up on 2024-08-08's six minutes and
its labels read into 2024-08-10's first minutes, whose features are materialised beforehand
(outside the timing) in both modes.

Two modes, each in a fresh process (so peak RSS is per mode):
- `steps`: the Dagster-free partition steps (`mdpipe.pipeline.steps`), i.e. the work itself;
- `dagster`: the same partition through `pipeline_job.execute_in_process` on an ephemeral
  instance, the way `mdpipe run` does it (features stage, then labels stage). Dagster's own
  overhead = run wall time - the steps' own durations reported in the run's metadata.

    .venv/bin/python bench/pipeline.py            # both modes, appends to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
LAKE = OUT / "pipeline_lake"
DAY = "2024-08-09"
MARKET = "binance:BTC-USDT"
RESULTS = ROOT / "bench" / "RESULTS.md"


def _first_last_ts(files: list[Path]) -> tuple[int, int]:
    first = last = None
    for f in files:
        with gzip.open(f, "rt") as fh:
            for line in fh:
                ts = int(line.split(" ", 1)[0])
                first = ts if first is None else first
                last = ts
    assert first is not None and last is not None
    return first, last


def tile_with_snapshots(copies: int) -> Path:
    """Like `bench/tiling.py` (copy k shifted by k x span in time and k x id range in ids) but
    every copy k > 0 starts with the recording's REST snapshot, re-stamped just below the
    copy's first diff id, so the book is replaced at each copy's start instead of carrying the
    previous copy's levels (which leaves a crossed book for the rest of the day) and no diff is
    lost to a sequence gap. bookTicker lines are left out: the pipeline does not read them."""
    out = OUT / f"btcusdt_sync2_x{copies}.gz"
    if out.exists():
        return out
    from bench.tiling import DATA

    rows: list[tuple[int, dict]] = []
    for f in sorted(DATA.glob("btcusdt_*.gz")):
        with gzip.open(f, "rt") as fh:
            for line in fh:
                ts, msg = line.rstrip("\n").split(" ", 1)
                m = json.loads(msg)
                if "lastUpdateId" in m or m.get("data", {}).get("e") in ("depthUpdate", "trade"):
                    rows.append((int(ts), m))
    span = rows[-1][0] - rows[0][0] + 100_000_000
    span_ms = span // 1_000_000
    depth = [m["data"] for _, m in rows if "data" in m and m["data"]["e"] == "depthUpdate"]
    # one spare id between copies: the re-stamped snapshot gets an id of its own (sharing the
    # previous copy's last diff id would order that diff after the snapshot)
    id_span = depth[-1]["u"] - depth[0]["U"] + 2
    trade_ids = [m["data"]["t"] for _, m in rows if "data" in m and m["data"]["e"] == "trade"]
    trade_span = max(trade_ids) - min(trade_ids) + 1
    tmp = out.with_suffix(".partial")
    OUT.mkdir(parents=True, exist_ok=True)
    snapshot = next(m for _, m in rows if "lastUpdateId" in m)
    with gzip.open(tmp, "wt", compresslevel=1) as fh:
        for k in range(copies):
            if k:
                # the copy starts synced: a snapshot just below its first diff, so every diff
                # of the copy applies (no gap); its levels are the recording's snapshot,
                # which the copy's first diffs then update
                snap = dict(snapshot, lastUpdateId=depth[0]["U"] - 1 + k * id_span)
                line = json.dumps(snap, separators=(",", ":"))
                fh.write(f"{rows[0][0] + k * span - 1} {line}\n")
            for ts, msg in rows:
                if "lastUpdateId" in msg:
                    if not k:
                        fh.write(f"{ts} {json.dumps(msg, separators=(',', ':'))}\n")
                    continue
                d = dict(msg["data"])
                if d["e"] == "depthUpdate":
                    d["U"] += k * id_span
                    d["u"] += k * id_span
                else:
                    d["t"] += k * trade_span
                    d["T"] += k * span_ms
                d["E"] += k * span_ms
                frame = {"stream": msg["stream"], "data": d}
                fh.write(f"{ts + k * span} {json.dumps(frame, separators=(',', ':'))}\n")
    tmp.replace(out)
    return out


def prepare() -> tuple[Path, int]:
    """The tiled recording (enough copies to pass 2024-08-10 00:05) imported into LAKE."""
    from bench.tiling import DATA
    from mdpipe.ingest import import_paths
    from mdpipe.lake import Lake, day_start_ns

    first, last = _first_last_ts(sorted(DATA.glob("btcusdt_*.gz")))
    span = last - first + 100_000_000
    target = day_start_ns("2024-08-10") + 5 * 60 * 1_000_000_000
    copies = -(-(target - first) // span)
    marker = LAKE / f".imported-sync2-x{copies}"
    if not marker.exists():
        src = tile_with_snapshots(copies)
        shutil.rmtree(LAKE, ignore_errors=True)
        t0 = time.perf_counter()
        report = import_paths([src], Lake(LAKE))
        assert report.ok, report.errors[:5]
        print(f"imported x{copies} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        marker.write_text("ok")
    return LAKE, copies


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _clear_derived(lake_root: Path) -> None:
    shutil.rmtree(lake_root / "derived", ignore_errors=True)


def _side_days(lake: Any) -> None:
    """Features of the neighbouring days, materialised before the measured partition."""
    from mdpipe.pipeline import steps

    for d in ("2024-08-08", "2024-08-10"):
        steps.features_step(lake, steps.Part.from_keys(d, MARKET))


def mode_steps(lake_root: Path) -> dict[str, Any]:
    from mdpipe.core.config import BacktestConfig
    from mdpipe.lake import Lake
    from mdpipe.pipeline import steps

    lake = Lake(lake_root)
    _clear_derived(lake_root)
    _side_days(lake)
    part = steps.Part.from_keys(DAY, MARKET)
    cfg = BacktestConfig()
    t0 = time.perf_counter()
    f = steps.features_step(lake, part)
    t1 = time.perf_counter()
    checks = steps.feature_checks(f)
    lab = steps.labels_step(lake, part, cfg)
    t2 = time.perf_counter()
    folds = steps.cv_folds_step(lake, part, cfg)
    t3 = time.perf_counter()
    ev = steps.evaluation_step(lake, part, cfg)
    t4 = time.perf_counter()
    return {
        "features_signals_s": t1 - t0,
        "labels_s": t2 - t1,
        "cv_folds_s": t3 - t2,
        "evaluation_s": t4 - t3,
        "total_s": t4 - t0,
        "book_rows": f.quality.book_rows,
        "book_events": f.quality.book_events,
        "trades": f.quality.trade_rows,
        "feature_rows": f.features.height,
        "signals": f.signals.height,
        "labels": lab.labels.height,
        "cv_rows": folds.folds.height,
        "checks_passed": all(c.passed for c in checks),
        "checks_failed": {c.name: c.metadata for c in checks if not c.passed},
        "span_s": f.quality.span["seconds"],
        "peak_rss_mb": _rss_mb(),
        "headline": ev.headline,
    }


def mode_dagster(lake_root: Path) -> dict[str, Any]:
    import warnings

    import dagster as dg

    from mdpipe.defs import build_defs
    from mdpipe.defs.assets import LABEL_STAGE_KEYS
    from mdpipe.defs.partitions import partition_key
    from mdpipe.lake import Lake

    lake = Lake(lake_root)
    _clear_derived(lake_root)
    _side_days(lake)
    warnings.simplefilter("ignore", dg.BetaWarning)
    t_load = time.perf_counter()
    defs = build_defs(str(lake_root))
    job = defs.resolve_job_def("pipeline_job")
    load_s = time.perf_counter() - t_load
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    key = str(partition_key(DAY, MARKET))
    walls: dict[str, float] = {}
    step_s = 0.0
    ok = True
    failed: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("market", [MARKET])
        t0 = time.perf_counter()
        for stage, keys in (
            ("features", [dg.AssetKey("features"), dg.AssetKey("signals")]),
            ("labels", LABEL_STAGE_KEYS),
        ):
            ts = time.perf_counter()
            res = job.execute_in_process(
                run_config=quiet,
                instance=instance,
                partition_key=key,
                asset_selection=keys,
                raise_on_error=False,
            )
            walls[stage] = time.perf_counter() - ts
            ok = ok and res.success
            seen = set()
            for mat in res.get_asset_materialization_events():
                m = mat.materialization
                dur = m.metadata.get("duration_s")
                node = mat.step_key
                if dur is not None and node not in seen:  # one duration per step
                    seen.add(node)
                    step_s += float(dur.value)
            failed += [e.check_name for e in res.get_asset_check_evaluations() if not e.passed]
        total = time.perf_counter() - t0
    return {
        "definitions_load_s": load_s,
        "features_stage_wall_s": walls["features"],
        "labels_stage_wall_s": walls["labels"],
        "total_s": total,
        "steps_own_s": step_s,
        "dagster_overhead_s": total - step_s,
        "success": ok,
        "checks_failed": failed,
        "peak_rss_mb": _rss_mb(),
    }


def _child(mode: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--mode", mode],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["steps", "dagster"], default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.mode:
        fn = mode_steps if args.mode == "steps" else mode_dagster
        print(json.dumps(fn(LAKE), default=float))
        return
    _, copies = prepare()
    load_before = _load()
    steps_r = _child("steps")
    dag_r = _child("dagster")
    load_after = _load()
    print(json.dumps({"steps": steps_r, "dagster": dag_r}, indent=1, default=float))
    if args.no_write:
        return
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    s, d = steps_r, dag_r
    ratio = d["total_s"] / s["total_s"]
    text = f"""
## pipeline: every asset for one full market-day ({now})

Command: `.venv/bin/python bench/pipeline.py`\\
Machine: {platform.machine()}, {os.cpu_count()} cores (shared; load avg before / after:
{load_before} -> {load_after}), Python {platform.python_version()}, numba caches warm.\\
Input: the bundled BTCUSDT recording (depth diffs + trades + snapshot) tiled x{copies}
(`tile_with_snapshots`: times and ids shifted per copy, each copy re-synced by its own shifted
snapshot), imported; partition 2024-08-09 x binance:BTC-USDT covers the
whole UTC day ({s["span_s"] / 3600:.2f} h): {s["book_rows"]:,} book rows, {s["book_events"]:,}
book events, {s["trades"]:,} trades. Warm-up on 2024-08-08 (6 min), labels reading into
2024-08-10 (features of both side days materialised before the timing). Default
`BacktestConfig`. Each mode runs in its own process.

| step | Dagster-free steps | through Dagster |
|---|---|---|
| features + signals ({s["feature_rows"]:,} rows, {s["signals"]:,} signals) | {s["features_signals_s"]:.2f} s | {d["features_stage_wall_s"]:.2f} s (run wall) |
| labels ({s["labels"]:,} rows) | {s["labels_s"]:.2f} s | |
| cv_folds ({s["cv_rows"]:,} rows) | {s["cv_folds_s"]:.2f} s | |
| evaluation + report | {s["evaluation_s"]:.2f} s | {d["labels_stage_wall_s"]:.2f} s (run wall, 3 steps) |
| **total** | **{s["total_s"]:.2f} s** | **{d["total_s"]:.2f} s** |
| Dagster's own overhead (run wall - step durations) | | {d["dagster_overhead_s"]:.2f} s |
| loading the Definitions (once per process) | | {d["definitions_load_s"]:.2f} s |
| peak RSS | {s["peak_rss_mb"]:,.0f} MB | {d["peak_rss_mb"]:,.0f} MB |

Ratio through-Dagster / steps alone: **{ratio:.2f}x**. Target: a full market-day through every
asset in <= 60 s: **{"met" if d["total_s"] <= 60 else "NOT met"}** ({d["total_s"]:.1f} s); memory
< 4 GiB: **{"met" if max(s["peak_rss_mb"], d["peak_rss_mb"]) < 4096 else "NOT met"}**. Checks
passed: {s["checks_passed"] and d["success"]}.
"""
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
