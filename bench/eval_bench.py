"""Labels -> cv_folds -> evaluation -> report for one market-day, on the real BTC path tiled.

The bundled BTCUSDT bookTicker stream (about 11 minutes, 73k top-of-book updates) is tiled to
24 hours in memory: copy k is shifted by k x span in time and scaled so that its first mid
equals the previous copy's last mid (a continuous path). `--rate depth` thins it to one event
per 100 ms (the `features` table's density: one row per depth diff); `--rate ticker` keeps
every bookTicker update (about 9.5 M events: a stress case). Signals arrive at random times,
one per `--signal-every` seconds on average. Baseline: the same labels computed by a per-row
Python loop (numpy per event group) on a subsample, scaled per signal.

    .venv/bin/python bench/eval_bench.py --rate depth
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdpipe.core.config import BacktestConfig  # noqa: E402
from mdpipe.core.cv import make_cv_folds  # noqa: E402
from mdpipe.core.labels import PricePath, make_labels, triple_barrier  # noqa: E402
from mdpipe.core.metrics import evaluate  # noqa: E402
from mdpipe.pipeline.recordings import bookticker_frame  # noqa: E402
from mdpipe.pipeline.reports import write_report  # noqa: E402

DAY_NS = 86_400 * 1_000_000_000


def tiled_day(rate: str) -> PricePath:
    f = bookticker_frame("btcusdt_20240808.gz", "btcusdt_20240809.gz")
    ts = f["ts_ns"].to_numpy()
    bid = f["best_bid"].to_numpy()
    ask = f["best_ask"].to_numpy()
    if rate == "depth":
        # keep the last update of every 100 ms bucket
        bucket = ts // 100_000_000
        keep = np.r_[bucket[1:] != bucket[:-1], True]
        ts, bid, ask = ts[keep], bid[keep], ask[keep]
    span = int(ts[-1] - ts[0]) + 100_000_000
    copies = -(-DAY_NS // span)
    t0 = (int(ts[0]) // DAY_NS) * DAY_NS + DAY_NS  # start at a midnight
    out_t, out_b, out_a = [], [], []
    scale = 1.0
    for k in range(copies):
        out_t.append(ts - ts[0] + t0 + k * span)
        out_b.append(bid * scale)
        out_a.append(ask * scale)
        scale *= ((bid[-1] + ask[-1]) / 2) / ((bid[0] + ask[0]) / 2)
    t = np.concatenate(out_t)
    keep = t < t0 + DAY_NS
    return PricePath.from_arrays(
        t[keep], np.concatenate(out_b)[keep], np.concatenate(out_a)[keep], end_ns=t0 + DAY_NS - 1
    )


def python_reference(
    path: PricePath, ts_sig: np.ndarray, side: np.ndarray, c: BacktestConfig
) -> None:
    ts, mid = path.ts_ns, path.mid
    for t_sig, s in zip(ts_sig.tolist(), side.tolist(), strict=True):
        e = int(np.searchsorted(ts, t_sig, side="right"))
        if e >= ts.size:
            continue
        t0 = ts[e]
        deadline = t0 + c.max_holding_ns
        hi = int(np.searchsorted(ts, deadline, side="right"))
        for j in range(e + 1, hi):  # the per-row loop the kernels avoid
            r = s * (mid[j] / mid[e] - 1.0)
            if r <= -c.stop_loss_pct or r >= c.profit_target_pct:
                break


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", choices=("depth", "ticker"), default="depth")
    ap.add_argument("--signal-every", type=float, default=20.0)
    args = ap.parse_args()
    cfg = BacktestConfig()  # the defaults: 0.5 % / 0.3 % / 300 s, grid 60 s
    path = tiled_day(args.rate)
    rng = np.random.default_rng(0)
    n_sig = int(86_400 / args.signal_every)
    sig = pl.DataFrame(
        {
            "ts_ns": np.sort(rng.integers(int(path.ts_ns[0]), int(path.ts_ns[-1]), n_sig)),
            "signal_id": [f"s{i}" for i in range(n_sig)],
            "signal_type": np.where(rng.random(n_sig) < 0.5, "cusum", "bocpd").tolist(),
            "direction": np.where(rng.random(n_sig) < 0.5, 1, -1),
            "score": rng.random(n_sig),
        }
    )
    # warm the numba caches so compile time is not measured
    small = PricePath.from_arrays(path.ts_ns[:1000], path.bid[:1000], path.ask[:1000])
    evaluate(make_labels(sig.head(20), small, cfg), None, small, cfg)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    labels = make_labels(sig, path, cfg)
    timings["labels"] = time.perf_counter() - t
    t = time.perf_counter()
    folds = make_cv_folds(labels, cfg)
    timings["cv_folds"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(labels, folds, path, cfg, partition="bench")
    timings["evaluation"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_report(ev, path, tmp)
        timings["report"] = time.perf_counter() - t
    total = sum(timings.values())

    k = 200
    sub = sig.sample(k, seed=1).sort("ts_ns")
    t = time.perf_counter()
    python_reference(path, sub["ts_ns"].to_numpy(), sub["direction"].to_numpy(), cfg)
    py_per_label = (time.perf_counter() - t) / k
    sub_ts, sub_dir = sub["ts_ns"].to_numpy(), sub["direction"].to_numpy()
    triple_barrier(path, sub_ts, sub_dir, cfg)  # first call of this signature loads/compiles
    t = time.perf_counter()
    triple_barrier(path, sub_ts, sub_dir, cfg)
    nb_per_label = (time.perf_counter() - t) / k
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"events {len(path):,}  signals {n_sig:,}  label rows {labels.height:,}  "
        f"cv_folds rows {folds.height:,}  evaluation rows {ev.metrics.height}"
    )
    for name, sec in timings.items():
        print(f"  {name:<11} {sec:7.2f} s")
    print(f"  total       {total:7.2f} s   peak RSS {rss_mb:,.0f} MB")
    print(
        f"  per label: numba {nb_per_label * 1e6:,.1f} us, python loop {py_per_label * 1e6:,.1f} us "
        f"-> {py_per_label / nb_per_label:,.0f}x"
    )
    print(
        f"  machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
