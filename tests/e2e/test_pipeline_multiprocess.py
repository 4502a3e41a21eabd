"""`pipeline_job` as `dagster dev` launches it: a persistent instance, the multiprocess
executor (each step in its own process), the lake taken from $MDPIPE_LAKE at run time."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mdpipe.defs.partitions import partition_key
from mdpipe.lake import Lake
from mdpipe.pipeline import steps


def pipeline_job() -> dg.JobDefinition:
    from mdpipe.defs import build_defs

    return build_defs().resolve_job_def("pipeline_job")


def test_pipeline_job_runs_with_the_multiprocess_executor(
    lake_with_recordings: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    monkeypatch.setenv("MDPIPE_LAKE", str(lake.root))  # inherited by the step processes
    job = dg.reconstructable(pipeline_job)
    assert "multiprocess" in pipeline_job().executor_def.name
    key = str(partition_key("2024-08-08", "binance:ETH-USDT"))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions("market", ["binance:ETH-USDT"])
        with dg.execute_job(
            job,
            instance=instance,
            tags={"dagster/partition": key},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        ) as result:
            assert result.success
            steps_run = {
                e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"
            }
            assert steps_run == {"features_and_signals", "labels", "cv_folds", "evaluation"}
            checks = {
                (e.asset_key.to_user_string(), e.check_name): e.passed
                for e in result.get_asset_check_evaluations()
            }
            assert checks and all(checks.values()), checks
            # every step ran in a process of its own
            pids = {e.pid for e in result.all_events if e.step_key}
            assert len(pids) >= 4
    part = steps.Part("2024-08-08", "binance", "ETH/USDT")
    files = {
        a: lake.files(steps.derived(a), part.venue, part.symbol, part.date)
        for a in ("features", "signals", "labels", "cv_folds", "evaluation")
    }
    assert all(len(f) == 1 for f in files.values()), files
    assert pl.read_parquet(files["features"][0]).height > 0
    # Day 9 exists in the raw tables but its features were not materialised in this run, so
    # labels needing prices after day 8's end are censored, not guessed.
    labels = pl.read_parquet(files["labels"][0])
    end8 = part.end_ns
    late = labels.filter(pl.col("t_end_ns") > end8)
    assert late.height > 0 and late["censored"].all()
    assert (steps.report_dir(lake, part) / "report.html").exists()
