"""Metrics: known answers on tiny inputs; the per-fold evaluation; an end-to-end run on the
real recordings (labels across the day end, purged folds, evaluation, report)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdpipe.core.config import BacktestConfig
from mdpipe.core.cv import check_no_leakage, fit_threshold, make_cv_folds
from mdpipe.core.labels import PricePath, make_labels
from mdpipe.core.metrics import (
    average_precision,
    calibration_table,
    confusion,
    evaluate,
    grid_scores,
    pr_curve,
    precision_at_k,
    random_baseline_signals,
    roc_auc,
    roc_curve,
    signal_set_metrics,
    spearman,
)
from mdpipe.core.report import PLOT_NAMES
from mdpipe.pipeline.recordings import bookticker_frame
from mdpipe.pipeline.reports import write_report
from tests.core.random_signals import random_signals

S = 1_000_000_000


def test_precision_at_k() -> None:
    scores = [5, 4, 3, 2, 1]
    hits = [1, 0, 1, 1, 0]
    assert precision_at_k(scores, hits, 2) == 0.5
    assert precision_at_k(scores, hits, 3) == pytest.approx(2 / 3)
    assert math.isnan(precision_at_k(scores, hits, 6))
    # ties broken by the order key (earlier first)
    assert precision_at_k([1, 1], [0, 1], 1, order_key=[2, 1]) == 1.0
    assert precision_at_k([1, 1], [0, 1], 1, order_key=[1, 2]) == 0.0


def test_roc_and_pr_known_answers() -> None:
    s = [0.1, 0.4, 0.35, 0.8]
    y = [0, 0, 1, 1]
    fpr, tpr, thr = roc_curve(s, y)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr.tolist() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert roc_auc(s, y) == pytest.approx(0.75)
    precision, recall, _ = pr_curve(s, y)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert average_precision(s, y) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # ties count a half
    assert roc_auc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(roc_auc([1, 2], [1, 1]))


def test_confusion_and_calibration() -> None:
    assert confusion([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    s = np.arange(10.0)
    cal = calibration_table(s, s >= 5, n_bins=2)
    assert cal["count"].to_list() == [5, 5]
    assert cal["hit_rate"].to_list() == [0.0, 1.0]
    assert cal["mean_score"].to_list() == [2.0, 7.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1], [1, 2]))


def test_grid_scores_use_only_signals_known_by_the_grid_time() -> None:
    grid = pl.DataFrame({"ts_ns": [60 * S, 60 * S, 120 * S, 120 * S], "direction": [1, -1, 1, -1]})
    sig = pl.DataFrame(
        {
            "ts_ns": [30 * S, 60 * S, 61 * S, 121 * S],
            "direction": [1, 1, -1, 1],
            "score": [0.7, 0.9, 0.5, 0.99],
        }
    )
    score, pred = grid_scores(grid, sig, [True, False, True, True], 60 * S)
    assert score.tolist() == [0.9, -math.inf, -math.inf, 0.5]
    assert pred.tolist() == [True, False, False, True]


def tiny_labels() -> tuple[pl.DataFrame, pl.DataFrame, PricePath]:
    """Four signals and a 4-point grid (both directions) over 4 minutes, hand labelled."""
    path = PricePath.from_arrays(np.arange(0, 300) * S, np.full(300, 99.9), np.full(300, 100.1))
    sig = pl.DataFrame(
        {
            "ts_ns": [10 * S, 70 * S, 130 * S, 190 * S],
            "direction": [1, 1, -1, -1],
            "score": [0.9, 0.2, 0.8, 0.5],
            "label": [1, -1, 1, 0],
            "t_end_ns": [40 * S, 90 * S, 150 * S, 250 * S],
            "move_ts_ns": [25.0 * S, None, 140.0 * S, None],
            "ret": [0.004, -0.004, 0.004, -0.001],
        }
    )
    grid = pl.DataFrame(
        {
            "ts_ns": np.repeat(np.array([60, 120, 180, 240]) * S, 2),
            "direction": [1, -1] * 4,
            "label": [1, 0, 0, 0, 0, 1, 0, 0],
        }
    )
    return sig, grid, path


def test_signal_set_metrics_known_answers() -> None:
    sig, grid, path = tiny_labels()
    cfg = BacktestConfig(grid_seconds=60.0)
    m, curves = signal_set_metrics(sig, grid, 0.5, path, cfg)
    # acted: scores 0.9, 0.8, 0.5 -> labels 1, 1, 0
    assert m["n_acted"] == 3 and m["precision"] == pytest.approx(2 / 3)
    assert m["lead_time_barrier_s"] == pytest.approx(25.0)  # median of 30 s and 20 s
    assert m["lead_time_move_s"] == pytest.approx(12.5)  # median of 15 s and 10 s
    # grid positives: (60,+1), (180,-1). (60,+1) <- s@10 acted: TP; (180,-1) <- s@130 acted: TP;
    # (240,-1) <- s@190 acted, label 0: FP; (120,+1) <- s@70 not acted, label 0: TN
    assert curves["confusion"] == {"tp": 2, "fp": 1, "fn": 0, "tn": 5}
    assert m["recall"] == 1.0 and m["fpr"] == pytest.approx(1 / 6)
    assert m["hours"] == pytest.approx(4 / 60)
    assert m["false_alarms_per_hour"] == pytest.approx(1 / (4 / 60))
    assert m["precision_at_10"] != m["precision_at_10"]  # NaN: only 4 signals


def synthetic_partition(seed: int = 0) -> tuple[pl.DataFrame, PricePath, BacktestConfig]:
    rng = np.random.default_rng(seed)
    n = 4000
    ts = np.cumsum(rng.integers(1, 3, n)) * S // 4
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 4e-4, n)))
    path = PricePath.from_arrays(ts, mid - 0.01, mid + 0.01, mid)
    k = 150
    st = np.sort(rng.integers(int(ts[0]), int(ts[-1]), k))
    sig = pl.DataFrame(
        {
            "ts_ns": st,
            "signal_id": [f"s{i:04d}" for i in range(k)],
            "signal_type": np.where(rng.random(k) < 0.5, "drift", "burst").tolist(),
            "direction": np.where(rng.random(k) < 0.5, 1, -1),
            "score": rng.random(k),
        }
    )
    cfg = BacktestConfig(
        profit_target_pct=0.002,
        stop_loss_pct=0.002,
        max_holding_seconds=20.0,
        grid_seconds=10.0,
        fee_rate=0.0,
        slippage_bps=0.0,
        embargo_seconds=5.0,
        threshold_min_signals=3,
    )
    return make_labels(sig, path, cfg), path, cfg


def test_evaluate_fits_thresholds_on_train_rows_only() -> None:
    labels, path, cfg = synthetic_partition()
    folds = make_cv_folds(labels, cfg)
    ev = evaluate(labels, folds, path, cfg, partition="p")
    m = ev.metrics
    keys = set(zip(m["fold"], m["sample"], m["strategy"], m["signal_type"], strict=True))
    assert (-1, "full", "detector", "all") in keys
    assert {(-1, "full", "detector", t) for t in ("burst", "drift")} <= keys
    assert (-1, "full", "random", "all") in keys and (-1, "full", "always_in", "all") in keys
    assert (-1, "out_of_sample", "detector", "all") in keys
    sig = labels.filter(~pl.col("censored") & (pl.col("kind") == "signal"))
    for f in range(cfg.cv_n_folds):
        train_ids = folds.filter((pl.col("fold") == f) & (pl.col("role") == "train"))["signal_id"]
        test_ids = folds.filter((pl.col("fold") == f) & (pl.col("role") == "test"))["signal_id"]
        tr = sig.filter(pl.col("signal_id").is_in(train_ids.implode()))
        te = sig.filter(pl.col("signal_id").is_in(test_ids.implode()))
        expected = fit_threshold(
            tr["score"].to_numpy(), tr["ret"].to_numpy(), tr["label"].to_numpy(), min_signals=3
        )
        rows = m.filter(pl.col("fold") == f)
        for row in rows.iter_rows(named=True):
            assert row["threshold"] == expected
        ins = rows.filter(pl.col("sample") == "in_sample").row(0, named=True)
        oos = rows.filter(pl.col("sample") == "out_of_sample").row(0, named=True)
        assert ins["n_signals"] == tr.height and oos["n_signals"] == te.height
    assert ev.headline["n_signals"] == sig.height
    # rerun: identical table (seeded random baseline, deterministic folds)
    again = evaluate(labels, folds, path, cfg, partition="p").metrics
    assert again.equals(m)


def test_random_baseline_is_seeded() -> None:
    a = random_baseline_signals(50, 0, 10**12, seed=7)
    b = random_baseline_signals(50, 0, 10**12, seed=7)
    c = random_baseline_signals(50, 0, 10**12, seed=8)
    assert a.equals(b) and not a.equals(c)
    assert a.height == 50 and a["ts_ns"].is_sorted()


def test_end_to_end_on_real_recordings(tmp_path: Path) -> None:
    day = PricePath.from_frame(bookticker_frame("btcusdt_20240808.gz"))
    nxt = PricePath.from_frame(bookticker_frame("btcusdt_20240809.gz"))
    cfg = BacktestConfig(
        profit_target_pct=0.0006,
        stop_loss_pct=0.0004,
        max_holding_seconds=45.0,
        grid_seconds=5.0,
        move_bps=2.0,
        embargo_seconds=10.0,
        cv_n_folds=4,
    )
    sig = random_signals(day.ts_ns, 250, seed=11)
    # signals near the day end need tomorrow's prices
    alone = make_labels(sig, day, cfg)
    both = make_labels(sig, day, cfg, next_path=nxt)
    cens_alone = alone.filter((pl.col("kind") == "signal") & pl.col("censored")).height
    cens_both = both.filter((pl.col("kind") == "signal") & pl.col("censored")).height
    assert cens_alone > 0 and cens_both == 0
    late = both.filter(pl.col("kind") == "signal").sort("ts_ns").tail(3)
    assert (late["t_end_ns"] > int(day.ts_ns[-1])).any()
    # no label looks at a price after its end or at/before its signal
    lab = both.filter(~pl.col("censored"))
    assert (lab["entry_ts_ns"] > lab["ts_ns"]).all()
    assert (lab["exit_ts_ns"] <= lab["t_end_ns"]).all()
    assert set(lab["barrier"].unique()) == {"profit", "stop", "time"}

    folds = make_cv_folds(both, cfg)
    assert check_no_leakage(folds, cfg.embargo_ns) == []
    assert {"train", "test", "purged"} <= set(folds["role"].unique())

    full_path = day.concat(nxt)
    ev = evaluate(both, folds, full_path, cfg, partition="2024-08-08|binance:BTC-USDT")
    m = ev.metrics
    full = m.filter((pl.col("fold") == -1) & (pl.col("sample") == "full"))
    assert set(full["strategy"]) == {"detector", "random", "always_in"}
    det = full.filter((pl.col("strategy") == "detector") & (pl.col("signal_type") == "all")).row(
        0, named=True
    )
    assert det["n_signals"] == 250
    for key in ("precision", "recall", "fpr", "roc_auc", "win_rate", "precision_at_100"):
        assert 0.0 <= det[key] <= 1.0, key
    assert det["hours"] == pytest.approx((day.ts_ns[-1] - day.ts_ns[0]) / 3.6e12, rel=0.02)
    assert det["lead_time_move_s"] > 0 and det["lead_time_barrier_s"] > 0
    bt = ev.curves[(-1, "full", "detector")]["backtest"]
    assert det["net_pnl"] == pytest.approx(bt.equity["equity"][-1] - cfg.initial_capital)
    assert m.filter(pl.col("sample") == "out_of_sample").height == cfg.cv_n_folds + 1

    report = write_report(ev, full_path, tmp_path, title="BTC-USDT 2024-08-08")
    text = report.read_text()
    assert text.count("data:image/png;base64,") == len(PLOT_NAMES)
    for name in PLOT_NAMES:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_partitions_without_signals_or_prices_still_evaluate(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ts = np.arange(2000) * S // 2
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 5e-4, 2000)))
    path = PricePath.from_arrays(ts, mid - 0.01, mid + 0.01, mid)
    cfg = BacktestConfig(max_holding_seconds=30.0, grid_seconds=10.0)
    no_signals = pl.DataFrame(
        schema={
            "ts_ns": pl.Int64,
            "signal_id": pl.String,
            "signal_type": pl.String,
            "direction": pl.Int8,
            "score": pl.Float64,
        }
    )
    labels = make_labels(no_signals, path, cfg)
    assert labels.filter(pl.col("kind") == "signal").height == 0
    ev = evaluate(labels, make_cv_folds(labels, cfg), path, cfg, partition="p")
    row = ev.metrics.row(0, named=True)
    assert row["n_signals"] == 0 and row["net_pnl"] == 0.0 and math.isnan(row["precision"])
    assert set(embedded_names(write_report(ev, path, tmp_path / "a").read_text())) == set(
        PLOT_NAMES
    )
    empty_path = PricePath.from_arrays(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    labels0 = make_labels(no_signals, empty_path, cfg)
    assert labels0.height == 0
    ev0 = evaluate(labels0, make_cv_folds(labels0, cfg), empty_path, cfg)
    assert ev0.metrics.height == 1
    write_report(ev0, empty_path, tmp_path / "b")


def embedded_names(text: str) -> list[str]:
    import re

    return re.findall(r'<figure id="fig-([a-z_]+)">', text)


def test_price_path_drops_unusable_books() -> None:
    frame = pl.DataFrame(
        {
            "ts_ns": [3, 1, 2, 4],
            "best_bid": [100.0, 100.0, 101.0, float("nan")],
            "best_ask": [100.1, 100.2, 100.5, 100.0],  # ts 2 is crossed, ts 4 has no bid
            "mid": [100.05, 100.1, 100.75, float("nan")],
        }
    )
    p = PricePath.from_frame(frame, end_ns=10)
    assert p.ts_ns.tolist() == [1, 3] and p.end_ns == 10
