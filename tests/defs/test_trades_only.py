"""A partition with trades and no book (here: the real ETH/USDT 08-09 file imported alone, so
its depth snapshot never came) gets what trades allow and a note of what is missing, not a
failed run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mdpipe.core.batch import TRADE_FEATURES, compute_trade_features_and_signals
from mdpipe.core.config import BacktestConfig
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.pipeline import steps
from tests.conftest import ETH_FILES

ETH9 = steps.Part("2024-08-09", "binance", "ETH/USDT")


@pytest.fixture(scope="module")
def trades_only_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake"))
    report = import_paths(ETH_FILES[1:], lake)
    assert report.ok and report.rows("book") == 0 and report.rows("trades") == 8409
    return lake


def test_features_are_trade_features_on_the_trade_clock(trades_only_lake: Lake) -> None:
    out = steps.features_step(trades_only_lake, ETH9)
    trades = steps.read_trades(trades_only_lake, ETH9)
    f = out.features
    assert out.trades_only and out.missing == steps.TRADES_ONLY_NOTE
    assert f.height == trades["exch_ts_ns"].n_unique()  # one row per distinct trade time
    assert f["ts_ns"].is_sorted() and f["update_id"].n_unique() == f.height
    assert f["best_bid"].is_nan().all() and f["mid"].is_nan().all()
    # last trade price and the 1 s taker imbalance, against a plain recomputation
    last = trades.sort("exch_ts_ns", "trade_id").group_by("exch_ts_ns", maintain_order=True).last()
    assert f["last_trade_price"].to_list() == last["price"].to_list()
    ts = trades["exch_ts_ns"].to_numpy()
    signed = np.where(trades["side"].to_numpy() == "buy", 1.0, -1.0) * trades["qty"].to_numpy()
    for i in (10, f.height // 2, f.height - 1):
        t = int(f["ts_ns"][i])
        window = (ts <= t) & (ts > t - 1_000_000_000)
        assert f["trade_imbalance_1s"][i] == pytest.approx(signed[window].sum(), abs=1e-9)
    # the same kernels as the book path: a direct call gives the same rows
    direct, sig = compute_trade_features_and_signals(trades, venue="binance", symbol="ETH/USDT")
    assert direct.equals(f) and sig.equals(out.signals)
    # only detectors fed by trade features can fire
    assert out.signals.height > 0
    assert set(out.signals["trigger"].unique().to_list()) <= set(TRADE_FEATURES)


def test_checks_pass_with_a_note_of_what_is_missing(trades_only_lake: Lake) -> None:
    out = steps.features_step(trades_only_lake, ETH9)
    checks = {c.name: c for c in steps.feature_checks(out)}
    rows = checks["rows_present"]
    assert rows.passed and rows.metadata["book_rows"] == 0
    assert rows.metadata["trade_rows"] == 8409
    assert "no book rows" in rows.metadata["missing"]
    fin = checks["features_finite_after_warmup"]
    assert fin.passed, fin.metadata
    assert 0 < fin.metadata["columns_checked"] < len(TRADE_FEATURES)
    assert checks["no_crossed_book"].passed


def test_labels_and_evaluation_use_trade_prices(trades_only_lake: Lake) -> None:
    steps.features_step(trades_only_lake, ETH9)
    cfg = BacktestConfig()
    labels = steps.labels_step(trades_only_lake, ETH9, cfg).labels
    assert labels.height > 0
    trades = steps.read_trades(trades_only_lake, ETH9)
    lo, hi = trades["price"].min(), trades["price"].max()
    done = labels.filter(pl.col("entry_price").is_not_null())
    assert done.height > 0
    # the prices labels enter and leave at are traded prices (bid = ask = last trade price;
    # the entry price adds the configured slippage)
    assert done["entry_mid"].is_in(trades["price"].implode()).all()
    assert done["exit_mid"].is_in(trades["price"].implode()).all()
    assert done["entry_price"].is_between(lo * 0.99, hi * 1.01).all()
    steps.cv_folds_step(trades_only_lake, ETH9, cfg)
    ev = steps.evaluation_step(trades_only_lake, ETH9, cfg)
    assert ev.report is not None and ev.report.exists()


def test_the_dagster_run_succeeds_and_says_what_is_missing(
    trades_only_lake: Lake, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    import dagster as dg
    from rich.console import Console

    from mdpipe.run import execute, print_outcome, register_markets, select_parts

    lake = Lake(tmp_path_factory.mktemp("run") / "lake")
    shutil.copytree(trades_only_lake.root, lake.root)
    instance = dg.DagsterInstance.ephemeral()
    register_markets(instance, lake)
    out = execute(lake, select_parts(lake), instance=instance)
    assert out.ok, (out.failed_checks, out.runs)
    assert out.notes == [f"{ETH9.label}: {steps.TRADES_ONLY_NOTE}"]
    # the materialisation carries the note too (Dagster UI)
    mats = instance.fetch_materializations(dg.AssetKey("features"), limit=1).records
    meta = mats[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["missing"].value == steps.TRADES_ONLY_NOTE
    console = Console(record=True, width=200)
    print_outcome(console, lake, out)
    assert "note: 2024-08-09|binance:ETH-USDT: no book rows" in console.export_text()
