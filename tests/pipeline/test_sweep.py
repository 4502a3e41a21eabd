"""Sweeps end to end on synthetic markets: a random walk (no edge) and a walk whose mid
follows the taker flow 2 s later (a planted edge); determinism; grid validation."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mdpipe.lake import Lake
from mdpipe.pipeline.models import load_metadata, load_model
from mdpipe.pipeline.sweep import load_grid, parse_grid, run_sweep, sweep_and_learn
from mdpipe.settings import Settings, SettingsError, load_settings
from tests.pipeline.synthetic import BASE_SETS, MARKET, write_market

GRID = """
[sweep]
seed = 3
cscv_blocks = 8
bar_seconds = 60
[detectors]
drift_threshold = [2.0, 3.0, 4.0]
burst_threshold = [2.5, 4.0]
"""


def _settings(tmp: Path) -> Settings:
    return load_settings(None, BASE_SETS, environ={}, cwd=tmp)


@pytest.fixture(scope="module")
def edge_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("edge"))
    write_market(lake, edge=True, minutes=25, seed=1)
    return lake


@pytest.fixture(scope="module")
def noise_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("noise"))
    write_market(lake, edge=False, minutes=25, seed=2)
    return lake


def _grid(tmp: Path) -> Path:
    p = tmp / "grid.toml"
    p.write_text(GRID)
    return p


def test_planted_edge_is_found_with_a_significant_dsr(edge_lake: Lake, tmp_path: Path) -> None:
    out = sweep_and_learn(edge_lake, load_grid(_grid(tmp_path)), _settings(tmp_path),
                          market=MARKET, workers=2)  # fmt: skip
    s = out.result.summary.row(0, named=True)
    assert s["n_candidates"] == 6
    assert s["selection_dates"] == "2024-03-10,2024-03-11"
    assert s["holdout_dates"] == "2024-03-12"
    assert s["dsr"] > 0.95, s
    assert s["selected_sharpe_oos"] > 0
    assert s["holdout_net_pnl"] > 0  # the edge holds on days selection never saw
    # the contract columns
    for c in ("sweep_id", "candidate_id", "settings_id", "params", "n_signals", "sharpe_is",
              "sharpe_oos", "net_pnl_oos", "precision_oos", "hit_rate_oos"):  # fmt: skip
        assert c in out.result.sweeps.columns
    assert set(out.result.sweeps["fold"].unique().to_list()) == {-1, 0, 1, 2, 3}
    # tables and report through the lake
    back = edge_lake.read("derived/sweep_summary")
    assert back["sweep_id"].to_list() == [out.result.sweep_id]
    assert out.report is not None and out.report.is_file()
    # the meta-model sees the edge out of sample
    assert out.model_id is not None, out.model_error
    meta = load_metadata(edge_lake, out.model_id)
    assert meta["cv"]["oos_auc"] > 0.6, meta["cv"]
    assert meta["training_partitions"] == [
        "2024-03-10|binance:SYN-USDT", "2024-03-11|binance:SYN-USDT"
    ]  # fmt: skip
    assert {"scikit-learn", "numpy"} <= set(meta["versions"])
    assert load_model(edge_lake, out.model_id).feature_names == tuple(meta["features"])


def test_random_walk_gives_no_significant_selection(noise_lake: Lake, tmp_path: Path) -> None:
    out = sweep_and_learn(noise_lake, load_grid(_grid(tmp_path)), _settings(tmp_path),
                          market=MARKET, workers=2)  # fmt: skip
    s = out.result.summary.row(0, named=True)
    assert not s["dsr"] > 0.95, s
    assert s["pbo"] > 0.1, s
    if out.model_id is not None:  # no leakage: nothing to find out of sample
        auc = load_metadata(noise_lake, out.model_id)["cv"]["oos_auc"]
        assert 0.35 < auc < 0.65


def test_same_grid_and_seed_same_tables_bit_for_bit(edge_lake: Lake, tmp_path: Path) -> None:
    grid = parse_grid(
        {"sweep": {"seed": 5, "samples": 3, "cscv_blocks": 8, "bar_seconds": 60},
         "detectors": {"drift_threshold": [2.0, 3.0, 4.0, 5.0]}}
    )  # fmt: skip
    st = _settings(tmp_path)
    a = run_sweep(edge_lake, grid, st, market=MARKET, workers=1, compute_features=False)
    b = run_sweep(edge_lake, grid, st, market=MARKET, workers=2, compute_features=False)
    assert a.sweeps.equals(b.sweeps) and a.summary.equals(b.summary)
    assert pl.read_parquet(a.paths["sweeps"]).equals(a.sweeps)


def test_grid_errors_name_the_file_section_and_key(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text("[detectors]\ndrift_treshold = [1, 2]\n")
    with pytest.raises(SettingsError, match=r"g.toml \[detectors\]: unknown key 'drift_treshold'"):
        load_grid(p)
    p.write_text("[features]\nwindow = [1]\n")
    with pytest.raises(SettingsError, match=r"\[features\] cannot be swept"):
        load_grid(p)
    p.write_text("[backtest]\nfee_rate = ['x']\n")
    with pytest.raises(SettingsError, match=r"\[backtest\] fee_rate: expected a number"):
        load_grid(p)
    p.write_text("[sweep]\ncscv_blocks = 5\n")
    with pytest.raises(SettingsError, match="cscv_blocks must be an even"):
        load_grid(p)
    # a value the section's own validation rejects names the grid file and the key
    from mdpipe.pipeline.sweep import candidates

    p.write_text("[backtest]\nfee_rate = [0.6]\n")
    with pytest.raises(SettingsError, match=r"g.toml candidate 0 \[backtest\] fee_rate"):
        candidates(load_grid(p), Settings())


def test_cli_rejects_a_bad_grid_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mdpipe.cli import main

    p = tmp_path / "bad.toml"
    p.write_text("[detectors]\nburst_treshold = [2.0]\n")
    rc = main(["sweep", "--grid", str(p), "--lake", str(tmp_path / "lake")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.toml [detectors]: unknown key 'burst_treshold'" in " ".join(err.split())
    # and the lake was not touched
    assert not (tmp_path / "lake").exists()
