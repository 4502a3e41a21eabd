"""The pinned meta-model gives live signals the same `meta_prob` as the batch step, on the
bundled BTC/USDT recording replayed through the capture consumer (the harness of
tests/alerts/test_live_signals.py), and the batch step fills it from the same feature rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdpipe.capture.live_signals import LiveSignals
from mdpipe.core.batch import compute_features_and_signals
from mdpipe.core.meta import META_FEATURES, train_meta_model, with_meta_prob
from mdpipe.lake import Lake

DATE = "2024-08-09"
SYMBOL = "BTC/USDT"


class _Batch:
    def __init__(self, book: pl.DataFrame, trades: pl.DataFrame) -> None:
        self.tables = {"book": book, "trades": trades}

    def get(self, name: str) -> pl.DataFrame:
        return self.tables[name]


def test_live_meta_prob_equals_batch(lake_with_recordings: Lake, tmp_path: Path) -> None:
    # any fitted model will do for parity: one trained on random rows
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, len(META_FEATURES)))
    t0 = np.arange(n, dtype=np.int64) * 10
    model = train_meta_model(x, x[:, 0] + rng.normal(size=n) > 0, t0, t0 + 5, n_folds=3,
                             importance_repeats=0)  # fmt: skip
    src = lake_with_recordings
    book = src.read("book", "binance", SYMBOL, DATE)
    trades = src.read("trades", "binance", SYMBOL, DATE)
    feats, sigs = compute_features_and_signals(book, trades)
    assert sigs["meta_prob"].null_count() == sigs.height  # no model: null
    batch = with_meta_prob(sigs, feats, model).sort("signal_id")
    assert batch.height >= 3 and batch["meta_prob"].null_count() == 0

    now = {"t": 0}
    out = Lake(tmp_path / "lake")
    ls = LiveSignals(out, "binance", clock=lambda: now["t"], meta_model=model)
    w = pl.col("recv_ts_ns") // 500_000_000
    b_parts = book.with_columns(_w=w).partition_by("_w", as_dict=True)
    t_parts = trades.with_columns(_w=w).partition_by("_w", as_dict=True)
    for key in sorted(set(b_parts) | set(t_parts)):
        now["t"] = (key[0] + 1) * 500_000_000
        ls(_Batch(b_parts.get(key, book.head(0)).drop("_w", strict=False),
                  t_parts.get(key, trades.head(0)).drop("_w", strict=False)))  # fmt: skip
    ls.poll(2**62)
    live = pl.concat(
        [pl.read_parquet(f) for f in sorted((out.root / "live" / "signals").rglob("*.parquet"))]
    ).sort("signal_id")
    assert live["signal_id"].to_list() == batch["signal_id"].to_list()
    assert live["meta_prob"].to_list() == batch["meta_prob"].to_list()


def test_alerts_read_only_signals_the_model_backs(tmp_path: Path) -> None:
    from mdpipe.alerts.config import AlertConfig
    from mdpipe.alerts.source import read_signals
    from mdpipe.core.batch import empty_signals

    base = empty_signals()
    rows = pl.concat(
        [
            base.extend(base.clear(1)).with_columns(
                signal_id=pl.lit(sid),
                ts_ns=pl.lit(i, dtype=pl.Int64),
                venue=pl.lit("binance"),
                symbol=pl.lit(SYMBOL),
                signal_type=pl.lit("drift"),
                direction=pl.lit(1, dtype=pl.Int8),
                score=pl.lit(1.0),
                meta_prob=pl.lit(p, dtype=pl.Float64),
            )
            for i, (sid, p) in enumerate([("a", 0.9), ("b", 0.2), ("c", None)])
        ]
    )
    lake = Lake(tmp_path)
    f = lake.publish("live/signals", "binance", SYMBOL, "2024-08-09", rows, name="s.parquet")
    rel = [str(f.relative_to(tmp_path))]
    assert [s.signal_id for s in read_signals(tmp_path, rel)] == ["a", "b", "c"]
    assert [s.signal_id for s in read_signals(tmp_path, rel, min_meta_prob=0.5)] == ["a"]
    with pytest.raises(ValueError, match="min_meta_prob must be a probability"):
        AlertConfig(min_meta_prob=2.0)
