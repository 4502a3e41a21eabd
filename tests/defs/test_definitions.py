"""The code location loads and validates; its shape is what the UI and the CLI rely on."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mdpipe.core.config import BacktestConfig
from mdpipe.defs import build_defs
from mdpipe.defs.partitions import day_market
from mdpipe.defs.resources import BacktestResource

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_and_validate() -> None:
    from mdpipe.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"ticks", "features", "signals", "labels", "cv_folds", "evaluation"} <= keys
    assert "evaluation_summary" in keys
    checks = {
        (c.asset_key.to_user_string(), c.name) for c in defs.resolve_asset_graph().asset_check_keys
    }
    assert checks >= {
        ("features", "sequence_gaps"),
        ("features", "no_crossed_book"),
        ("features", "clock_offset"),
        ("features", "rows_present"),
        ("features", "features_finite_after_warmup"),
        ("cv_folds", "no_train_test_leakage"),
    }
    assert defs.resolve_job_def("pipeline_job").partitions_def == day_market
    assert defs.resolve_schedule_def("daily_pipeline_schedule").job_name == "pipeline_job"
    for name in ("market_sensor", "relabel_sensor"):
        assert defs.resolve_sensor_def(name).name == name


def test_partitions_are_day_by_dynamic_market() -> None:
    dims = {d.name: d.partitions_def for d in day_market.partitions_defs}
    assert isinstance(dims["date"], dg.DailyPartitionsDefinition)
    assert isinstance(dims["market"], dg.DynamicPartitionsDefinition)
    assert dims["market"].name == "market"


def test_dependencies_cross_the_day_boundary_honestly() -> None:
    graph = build_defs().resolve_asset_graph()
    # features of D warm up on ticks of D-1; labels of D look into features of D+1
    feat = graph.get(dg.AssetKey("features"))
    assert dg.AssetKey("ticks") in feat.parent_keys
    labels = graph.get(dg.AssetKey("labels"))
    assert {dg.AssetKey("features"), dg.AssetKey("signals")} <= set(labels.parent_keys)


def test_backtest_resource_mirrors_backtest_config_and_validates() -> None:
    core = {f.name: f.default for f in dataclasses.fields(BacktestConfig)}
    ours = {k: f.default for k, f in BacktestResource.model_fields.items()}
    assert ours == core
    assert BacktestResource().get() == BacktestConfig()
    assert BacktestResource(fee_rate=0.0004).get().fee_rate == 0.0004
    with pytest.raises(ValueError, match="stop_loss_pct"):
        BacktestResource(stop_loss_pct=-1.0).get()


def test_backtest_settings_are_one_resource_configurable_at_launch() -> None:
    """One `backtest` entry in the run config of every job, optional (the core's defaults),
    with every BacktestConfig field; the assets take no config of their own."""
    defs = build_defs()
    fields = {f.name for f in dataclasses.fields(BacktestConfig)}
    for job_name in ("pipeline_job", "summary_job", "alert_job"):
        schema = defs.resolve_job_def(job_name).run_config_schema.config_type
        resources = schema.fields["resources"].config_type.fields
        backtest = resources["backtest"]
        assert not backtest.is_required, job_name
        assert set(backtest.config_type.fields["config"].config_type.fields) == fields
    graph = defs.resolve_asset_graph()
    for asset in ("labels", "cv_folds", "evaluation"):
        assets_def = graph.get(dg.AssetKey(asset)).assets_def
        assert "backtest" in assets_def.required_resource_keys, asset
        own = assets_def.op.config_field  # no op config schema: Dagster's permissive Any
        assert own is None or not getattr(own.config_type, "fields", {}), asset


def test_dagster_cli_validates_the_code_location(tmp_path: Path) -> None:
    """What `dagster dev` loads from the project root (pyproject + workspace.yaml)."""
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(dagster.parent), "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful for code location mdpipe" in proc.stdout + proc.stderr
