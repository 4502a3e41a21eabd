"""The Dagster-free partition steps: book order, warm-up tail, day-boundary handling."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from mdpipe.core.batch import compute_features_and_signals
from mdpipe.lake import Lake
from mdpipe.pipeline import steps

BTC8 = steps.Part("2024-08-08", "binance", "BTC/USDT")
BTC9 = BTC8.shifted(1)


def test_features_step_warms_up_on_the_previous_day(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    out = steps.features_step(lake, BTC9)
    assert out.warmup_from == "2024-08-08"
    b8, t8 = steps.read_book(lake, BTC8), steps.read_trades(lake, BTC8)
    b9, t9 = steps.read_book(lake, BTC9), steps.read_trades(lake, BTC9)
    kw = {"venue": "binance", "symbol": "BTC/USDT"}
    # the bundled day 8 is six minutes long, inside the 30-min full warm-up: the streamed step
    # equals a full in-memory replay of day 8 followed by day 9
    full, sig = compute_features_and_signals(b9, t9, prev_book=b8, prev_trades=t8, **kw)
    assert out.features.equals(full)
    assert out.signals.equals(sig)
    assert not out.features["is_warmup"].any()
    cold = steps.features_step(lake, BTC9, warmup=False)
    assert cold.features["is_warmup"].any()
    assert cold.features.select("best_bid", "best_ask").equals(full.select("best_bid", "best_ask"))


def test_several_book_files_are_replayed_in_applied_order(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    one = steps.features_step(lake, BTC8)
    [f] = lake.files("book", BTC8.venue, BTC8.symbol, BTC8.date)
    raw = pl.read_parquet(f)
    uid = raw["update_id"].to_numpy()
    half = int(next(i for i in range(raw.height // 2, raw.height) if uid[i] != uid[i - 1]))
    # names that sort in the wrong order
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(half), name="a.parquet")
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(0, half), name="b.parquet")
    f.unlink()
    two = steps.features_step(lake, BTC8)
    assert two.features.equals(one.features)
    assert two.signals.equals(one.signals)


def test_read_book_restores_applied_order_across_files(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    ordered = steps.read_book(lake, BTC8)
    assert steps.in_applied_order(
        ordered["update_id"].to_numpy(), ordered["is_snapshot"].to_numpy()
    )
    # split the partition into two files whose names sort in the wrong order
    [f] = lake.files("book", BTC8.venue, BTC8.symbol, BTC8.date)
    raw = pl.read_parquet(f)
    # split at an event boundary (the order of levels inside one event is immaterial)
    uid = raw["update_id"].to_numpy()
    half = int(next(i for i in range(raw.height // 2, raw.height) if uid[i] != uid[i - 1]))
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(half), name="a.parquet")
    lake.publish("book", BTC8.venue, BTC8.symbol, BTC8.date, raw.slice(0, half), name="b.parquet")
    f.unlink()
    mixed = lake.read("book", BTC8.venue, BTC8.symbol, BTC8.date)
    assert not steps.in_applied_order(
        mixed["update_id"].to_numpy(), mixed["is_snapshot"].to_numpy()
    )
    assert steps.read_book(lake, BTC8).equals(ordered)


@pytest.mark.parametrize("with_next", [True, False])
def test_price_path_uses_the_next_day_only_when_materialised(
    lake_with_recordings: Lake, tmp_path: Path, with_next: bool
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    steps.features_step(lake, BTC8)
    if with_next:
        steps.features_step(lake, BTC9)
    path, how = steps.price_path(lake, BTC8)
    own, _ = steps.price_path(lake, BTC8, with_next=False)
    if with_next:
        assert how == "used" and len(path) > len(own)
        assert path.end_ns > BTC8.end_ns
    else:
        assert how.startswith("raw data present, features not materialised")
        assert len(path) == len(own)
        # day 9 exists in the lake, so day 8 is known complete to its very end
        assert path.end_ns == BTC8.end_ns


def test_label_stage_of_a_day_without_data_writes_empty_partitions(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    """A backfill starting on day D also re-runs labels of D-1 (its labels read D's
    features); a D-1 without any data must give empty partitions, not a failed run."""
    from mdpipe.core.config import BacktestConfig

    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    steps.features_step(lake, BTC8)
    day7 = BTC8.shifted(-1)
    cfg = BacktestConfig()
    assert steps.labels_step(lake, day7, cfg).labels.height == 0
    assert steps.cv_folds_step(lake, day7, cfg).folds.height == 0
    ev = steps.evaluation_step(lake, day7, cfg)
    assert ev.report is None and ev.metrics["partition"].to_list() == [day7.label]
    for asset in ("labels", "cv_folds", "evaluation"):
        assert len(lake.files(steps.derived(asset), day7.venue, day7.symbol, day7.date)) == 1


def test_trade_price_barriers_run_through_labels_and_evaluation(
    lake_with_recordings: Lake, tmp_path: Path
) -> None:
    """`barrier_price='trade'` set in the launchpad goes through every step: labels, folds,
    and the evaluation's backtests and random baseline, on the real partition."""
    import dataclasses

    from mdpipe.core.config import BacktestConfig

    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    steps.features_step(lake, BTC8)
    steps.features_step(lake, BTC9)
    mid_cfg = BacktestConfig(profit_target_pct=0.0005, stop_loss_pct=0.0005)
    trade_cfg = dataclasses.replace(mid_cfg, barrier_price="trade")
    results = {}
    for cfg in (mid_cfg, trade_cfg):
        labels = steps.labels_step(lake, BTC8, cfg).labels
        steps.cv_folds_step(lake, BTC8, cfg)
        ev = steps.evaluation_step(lake, BTC8, cfg)
        assert ev.report is not None and ev.report.exists()
        full = ev.metrics.filter(
            (pl.col("fold") == -1)
            & (pl.col("sample") == "full")
            & (pl.col("strategy") == "detector")
        )
        results[cfg.barrier_price] = (labels, full)
    mid_labels, _ = results["mid"]
    trade_labels, trade_full = results["trade"]
    assert trade_full.height >= 1 and trade_full["n_trades"][0] > 0
    # the modes label the same signals but touches happen at different times
    assert trade_labels.height == mid_labels.height
    assert not trade_labels["t_end_ns"].equals(mid_labels["t_end_ns"])
