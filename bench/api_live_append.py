"""GET /api/v1/signals while capture writes: the capture layout of bench/api_bench.py with a new
one-signal file per market published before every query (the partition frame is re-listed and
appended to, never served from an unchanged folder time); in process, 100 queries.

    .venv/bin/python bench/api_live_append.py
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_bench as b

from mdpipe.api.signals import FileCache, SignalQuery, query_page
from mdpipe.lake import Lake

with tempfile.TemporaryDirectory() as d:
    lake = Lake(Path(d) / "lake")
    b.build(lake, 1_000_000, -1)
    cache = FileCache()
    q = SignalQuery(limit=1000)
    query_page(lake, q, cache)
    date = sorted(p.date for p in lake.partition_dirs("live/signals"))[-1]
    last = lake.read("live/signals", dates=date).sort("ts_ns").tail(1)
    out = []
    for i in range(100):
        for sym in ("BTC/USDT", "ETH/USDT"):
            row = last.with_columns(
                symbol=pl.lit(sym), signal_id=pl.lit(f"new{i}{sym}"), ts_ns=pl.col("ts_ns") + i + 1
            )
            lake.publish(
                "live/signals",
                "binance",
                sym,
                date,
                row,
                name=f"sig-20250410T23-{time.time_ns():019d}.parquet",
            )
        t = time.perf_counter()
        page, _ = query_page(lake, q, cache)
        out.append(time.perf_counter() - t)
        assert page.height == 1000 and page["signal_id"][0].startswith(f"new{i}")
    a = np.asarray(out) * 1000
    print(
        f"new batch before every query: p50 {np.percentile(a, 50):.1f} ms p95 {np.percentile(a, 95):.1f} ms; builds {cache.partition_builds} hits {cache.partition_hits}"
    )
