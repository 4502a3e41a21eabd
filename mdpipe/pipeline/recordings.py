"""Price paths read straight from the bundled Binance recordings (`data/`), independently of
the import and the lake: top of book from the bookTicker messages and trade prices from the
trade messages. Tests use them as a second source of truth and benchmarks as input.

bookTicker frames carry no exchange time, so the recorder's local receive time (the line's
first field) is the event time here; that is fine for evaluating labels and metrics.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

DATA = Path(__file__).resolve().parents[2] / "data" / "binance-spot-2024-08-08"


def bookticker_frame(*names: str) -> pl.DataFrame:
    """`ts_ns, best_bid, best_ask, mid, spread` from the given recording files, in order."""
    ts: list[int] = []
    bid: list[float] = []
    ask: list[float] = []
    for recv, data in _messages(names, "@bookTicker"):
        ts.append(recv)
        bid.append(float(data["b"]))
        ask.append(float(data["a"]))
    b = np.asarray(bid)
    a = np.asarray(ask)
    return pl.DataFrame(
        {
            "ts_ns": np.asarray(ts, np.int64),
            "best_bid": b,
            "best_ask": a,
            "mid": (a + b) / 2,
            "spread": a - b,
        }
    ).sort("ts_ns", maintain_order=True)


def trade_prices(*names: str) -> tuple[np.ndarray, np.ndarray]:
    """`(ts_ns, price)` of every trade in the given recording files, stamped like
    `bookticker_frame` with the local receive time so both paths share one clock."""
    ts: list[int] = []
    px: list[float] = []
    for recv, data in _messages(names, "@trade"):
        ts.append(recv)
        px.append(float(data["p"]))
    return np.asarray(ts, np.int64), np.asarray(px, np.float64)


def _messages(names: tuple[str, ...], stream: str) -> Iterator[tuple[int, dict]]:
    """(local receive ns, data) of every message of the `stream` channel, file after file."""
    for name in names:
        with gzip.open(DATA / name, "rt") as fh:
            for line in fh:
                if stream in line:
                    head, _, payload = line.partition(" ")
                    yield int(head), json.loads(payload)["data"]
