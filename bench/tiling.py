"""Tile the bundled recordings to a longer span, for benchmarks.

Copy k of a symbol's recording is shifted in time by k x (recorded span + 100 ms) (receive
times and the exchange's E/T) and in ids by k x (id range): depth U/u and bookTicker u by the
update-id range, trade ids by the trade count. Diff ids stay contiguous across copies, so the
tiled stream syncs once (on copy 0's REST snapshot; later copies carry none) and shows no gap.
The book content of copies k > 0 continues from a different state than recorded, which is
fine for throughput measurements and nothing else.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "binance-spot-2024-08-08"
OUT = ROOT / "bench" / "out"


def _load(symbol: str) -> list[tuple[int, dict]]:
    rows = []
    for f in sorted(DATA.glob(f"{symbol}_*.gz")):
        with gzip.open(f, "rt") as fh:
            for line in fh:
                ts, msg = line.rstrip("\n").split(" ", 1)
                rows.append((int(ts), json.loads(msg)))
    return rows


def tile(symbol: str, copies: int, out: Path | None = None) -> Path:
    """Write ``<symbol>_x<copies>.gz`` (cached) and return its path."""
    OUT.mkdir(parents=True, exist_ok=True)
    out = out or OUT / f"{symbol}_x{copies}.gz"
    if out.exists():
        return out
    rows = _load(symbol)
    span = rows[-1][0] - rows[0][0] + 100_000_000
    span_ms = span // 1_000_000
    depth = [m["data"] for _, m in rows if "data" in m and m["data"].get("e") == "depthUpdate"]
    id_span = depth[-1]["u"] - depth[0]["U"] + 1
    trades = [m["data"]["t"] for _, m in rows if "data" in m and m["data"].get("e") == "trade"]
    trade_span = max(trades) - min(trades) + 1
    tmp = out.with_suffix(".partial")
    with gzip.open(tmp, "wt", compresslevel=3) as fh:
        for k in range(copies):
            for ts, msg in rows:
                if "lastUpdateId" in msg:
                    if k:
                        continue
                    fh.write(f"{ts} {json.dumps(msg, separators=(',', ':'))}\n")
                    continue
                d = dict(msg["data"])
                if d.get("e") == "depthUpdate":
                    d["U"] += k * id_span
                    d["u"] += k * id_span
                    d["E"] += k * span_ms
                elif d.get("e") == "trade":
                    d["t"] += k * trade_span
                    d["E"] += k * span_ms
                    d["T"] += k * span_ms
                else:  # bookTicker
                    d["u"] += k * id_span
                frame = {"stream": msg["stream"], "data": d}
                fh.write(f"{ts + k * span} {json.dumps(frame, separators=(',', ':'))}\n")
    tmp.replace(out)
    return out
