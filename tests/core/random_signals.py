"""Random signals over a price path's span (a baseline for the metrics tests); the paths
themselves come from `mdpipe.pipeline.recordings`."""

from __future__ import annotations

import numpy as np
import polars as pl


def random_signals(ts_ns: np.ndarray, n: int, seed: int) -> pl.DataFrame:
    """`n` signals at random times inside the path's span, random sides and scores."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(int(ts_ns[0]), int(ts_ns[-1]), size=n))
    return pl.DataFrame(
        {
            "venue": ["binance"] * n,
            "symbol": ["BTC/USDT"] * n,
            "ts_ns": t.astype(np.int64),
            "signal_id": [f"rnd-{i:05d}" for i in range(n)],
            "signal_type": np.where(rng.random(n) < 0.5, "drift", "burst").tolist(),
            "direction": np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8),
            "score": rng.random(n),
        }
    )
