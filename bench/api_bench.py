"""GET /api/v1/signals: the newest 1,000 signals from a lake holding a million.

    .venv/bin/python bench/api_bench.py [--signals 1000000] [--requests 200]

The lake: `live/signals` for 2 markets x 100 days, 5,000 signals per market-day (one file per
partition, as after a roll-up), plus `derived/signals` (batch) for the same days, so the API
merges both tables as it does for real. `mdpipe serve` runs in its own process; the client
sends `GET /api/v1/signals?limit=1000` over loopback HTTP, one request at a time; p50/p95 of
the whole request (connect, query, JSON, transfer). Baseline in the same run: the obvious
implementation, a scan of every signal file (`Lake.scan`) sorted and cut to 1,000, in process
(no HTTP), i.e. what the date-pruned walk avoids. A second case puts the newest day's signals
in one file per signal (capture's per-batch files before any roll-up) to show the cost of
many small files. A third is the layout capture leaves: the newest day in hourly roll-ups made by
the real roll-up code (`compact_partition`, 23 hours of `sig-` files merged hour by hour) plus
the current hour's signals in one `sig-` file each, not yet rolled up.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdpipe.lake import Lake, date_of_ns  # noqa: E402
from mdpipe.pipeline.compaction import HOUR_NS, compact_partition  # noqa: E402

DAY = 86_400 * 10**9
T0 = 1_735_689_600 * 10**9  # 2025-01-01


def publish_hourly(lake: Lake, venue: str, sym: str, date: str, df: pl.DataFrame) -> int:
    """The newest day as capture leaves it: `sig-` files (8 per past hour, merged into one
    roll-up per hour by `compact_partition`) and the current (last) hour one file per signal."""
    day0 = int(df["ts_ns"][0]) // DAY * DAY
    hour = (df["ts_ns"] - day0) // HOUR_NS
    last = int(hour.max())
    n = 0
    for h in range(last + 1):
        rows = df.filter(hour == h)
        stamp = f"sig-{date.replace('-', '')}T{h:02d}"
        parts = [rows.slice(i, 1) for i in range(rows.height)] if h == last else [
            rows.slice(i * (rows.height // 8 + 1), rows.height // 8 + 1) for i in range(8)
        ]  # fmt: skip
        for i, part in enumerate(p for p in parts if p.height):
            ns = day0 + h * HOUR_NS + (i + 1) * 1_000_000
            lake.publish("live/signals", venue, sym, date, part, name=f"{stamp}-{ns:019d}.parquet")
            n += h == last
    compact_partition(
        lake, venue, sym, date, tables=("live/signals",), before_ns=day0 + last * HOUR_NS
    )
    return n


def build(lake: Lake, total: int, small_files: int) -> None:
    markets = [("binance", "BTC/USDT"), ("binance", "ETH/USDT")]
    days = 100
    per = total // (len(markets) * days)
    rng = np.random.default_rng(3)
    for k, (venue, sym) in enumerate(markets):
        for d in range(days):
            ts = np.sort(T0 + d * DAY + rng.integers(0, DAY, per))
            df = pl.DataFrame({
                "venue": venue, "symbol": sym, "ts_ns": ts,
                "signal_id": [f"{k}{d:03d}{i:06d}" for i in range(per)],
                "signal_type": rng.choice(["drift", "burst", "regime"], per),
                "direction": rng.choice([1, -1], per).astype(np.int8),
                "score": rng.normal(1.5, 0.3, per), "update_id": np.arange(per),
                "trigger": "imbalance_5", "trigger_value": rng.normal(0, 1, per),
                "threshold": 0.5, "settings_id": "bench", "source": "live",
                "mid": 60000.0 + rng.normal(0, 10, per), "recv_ts_ns": ts, "emitted_ns": ts,
            })  # fmt: skip
            date = date_of_ns(int(ts[0]))
            if d == days - 1 and small_files < 0:
                publish_hourly(lake, venue, sym, date, df)
            elif d == days - 1 and small_files:
                tail, head = df.tail(small_files), df.head(per - small_files)
                lake.publish("live/signals", venue, sym, date, head, name="roll-0.parquet")
                for i in range(tail.height):
                    lake.publish("live/signals", venue, sym, date, tail.slice(i, 1),
                                 name=f"sig-{i:06d}.parquet")  # fmt: skip
            else:
                lake.publish("live/signals", venue, sym, date, df, name="roll-0.parquet")
            batch = df.head(per // 10).with_columns(source=pl.lit("batch"))
            lake.replace_partition("derived/signals", venue, sym, date, batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_gets(lake: Lake, n: int) -> tuple[list[float], list[float]]:
    port = free_port()
    log = open(lake.root.parent / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mdpipe.cli", "serve", "--lake", str(lake.root),
                             "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            end = time.monotonic() + 120
            while True:
                try:
                    c.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < end, "serve did not start"
                    time.sleep(0.2)
            for _ in range(5):
                c.get("/api/v1/signals", params={"limit": 1000})
            out, server = [], []
            for _ in range(n):
                t = time.perf_counter()
                r = c.get("/api/v1/signals", params={"limit": 1000})
                out.append(time.perf_counter() - t)
                assert r.status_code == 200 and len(r.json()["signals"]) == 1000, r.text[:300]
                server.append(float(r.headers["server-timing"].split("dur=")[1]) / 1000)
            return out, server
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def naive(lake: Lake, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        lf = pl.concat(
            [lake.scan("live/signals"), lake.scan("derived/signals")], how="diagonal_relaxed"
        )
        got = lf.sort(["ts_ns", "signal_id"], descending=True).head(1000).collect()
        out.append(time.perf_counter() - t)
        assert got.height == 1000
    return out


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signals", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    res = {}
    with tempfile.TemporaryDirectory() as d:
        cases = (
            ("rolled-up files", 0),
            ("newest 1,000 in single-signal files", 500),
            ("capture layout: newest day hourly roll-ups + current hour one file per signal", -1),
        )
        for case, small in cases:
            lake = Lake(Path(d) / f"case{len(res)}" / "lake")
            t = time.perf_counter()
            build(lake, args.signals, small)
            print(f"{case}: lake built in {time.perf_counter() - t:.1f} s", flush=True)
            gets, server = time_gets(lake, args.requests)
            base = naive(lake, 10)
            res[case] = (gets, server, base)
            print(case, f"GET p50 {pct(gets, 50):.1f} ms p95 {pct(gets, 95):.1f} ms "
                  f"(server p95 {pct(server, 95):.1f} ms); full scan p50 {pct(base, 50):.0f} ms",
                  flush=True)  # fmt: skip
    rows = [
        f"| {case} | {pct(g, 50):.1f} | {pct(g, 95):.1f} | {pct(sv, 50):.1f} | {pct(sv, 95):.1f} | "
        f"{pct(b, 50):.0f} | {pct(b, 95):.0f} | {pct(b, 50) / pct(g, 50):.0f}x |"
        for case, (g, sv, b) in res.items()
    ]
    p95 = pct(res["rolled-up files"][0], 95)
    real = next(v for k, v in res.items() if k.startswith("capture layout"))
    p95_real = pct(real[0], 95)
    section = f"""
## api: GET /api/v1/signals, newest 1,000 of {args.signals:,} ({time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC)

Command: `.venv/bin/python bench/api_bench.py --signals {args.signals} --requests {args.requests}`

Machine: {platform.machine()}, {os.cpu_count()} cores (shared: load average {load0:.1f} at the start,
{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}. Lake: live/signals of 2
markets x 100 days ({args.signals:,} rows, one file per market-day) plus derived/signals (10 % of
that, batch). `mdpipe serve` in its own process, {args.requests} sequential requests over
loopback after 5 warm-ups; GET = the whole request as the client sees it (HTTP, query, JSON,
transfer of ~380 KB); server = the app's own time (its `Server-Timing` header). Baseline, same run: a
sort of every signal file (`Lake.scan` of both tables) cut to 1,000, in process, 10 times. In the
second case the newest day of each market holds its last 500 signals as one file each (what
capture writes before any roll-up). In the third (what capture leaves) the newest day of each
market is 23 hourly roll-ups made by `compact_partition` plus the last hour's ~200 signals one
file each.

| lake | GET p50 ms | GET p95 ms | server p50 ms | server p95 ms | full scan p50 ms | full scan p95 ms | speed-up (GET p50) |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Target p95 <= 100 ms (rolled-up files): **{"met" if p95 <= 100 else "NOT met"}** ({p95:.1f} ms);
capture layout: **{"met" if p95_real <= 100 else "NOT met"}** ({p95_real:.1f} ms).
"""
    print(section)
    if not args.no_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
