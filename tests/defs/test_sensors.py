"""Sensors and the daily schedule, evaluated with Dagster's test contexts on a real lake."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from mdpipe.core.config import BacktestConfig
from mdpipe.defs import build_defs
from mdpipe.defs.resources import LakeResource
from mdpipe.defs.schedules import daily_pipeline_schedule
from mdpipe.defs.sensors import market_sensor, relabel_sensor
from mdpipe.lake import Lake
from mdpipe.pipeline import steps

MARKETS = ["binance:BTC-USDT", "binance:ETH-USDT"]


def assert_valid_run_config(req: dg.RunRequest) -> None:
    """The request's run config is valid for `pipeline_job`; the backtest settings left out
    resolve to the core's defaults on the `backtest` resource."""
    job = build_defs().resolve_job_def("pipeline_job")
    resolved = dg.validate_run_config(job, req.run_config)
    assert resolved["resources"]["backtest"]["config"] == BacktestConfig().to_dict()


def evaluate(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    lake: Lake,
    cursor: str | None = None,
) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, resources={"lake": LakeResource(path=str(lake.root))}, cursor=cursor
    ) as ctx:
        result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


@pytest.fixture()
def lake(lake_with_recordings: Lake, tmp_path: Path) -> Lake:
    shutil.copytree(lake_with_recordings.root, tmp_path / "lake")
    return Lake(tmp_path / "lake")


def test_market_sensor_registers_markets_then_observes_changed_partitions(lake: Lake) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        first = evaluate(market_sensor, instance, lake)
        [req] = first.dynamic_partitions_requests
        assert req.partitions_def_name == "market"
        assert sorted(req.partition_keys) == MARKETS
        assert not first.asset_events  # partitions must exist before events refer to them
        instance.add_dynamic_partitions("market", list(req.partition_keys))

        second = evaluate(market_sensor, instance, lake, first.cursor)
        assert not second.dynamic_partitions_requests
        obs = {str(e.partition): e for e in second.asset_events}
        assert sorted(obs) == sorted(
            f"{d}|{m}" for d in ("2024-08-08", "2024-08-09") for m in MARKETS
        )
        meta = obs["2024-08-08|binance:BTC-USDT"].metadata
        assert meta["book_rows"].value > 100_000
        assert meta["trade_rows"].value > 9_000
        assert meta["gaps"].value == 0
        assert meta["first_event"].value.startswith("2024-08-08T23:5")
        # freshness: the last receive time (the recorder ran ~1.27 s behind the exchange)
        assert meta["last_received"].value.startswith("2024-08-08T23:59:5")

        # nothing changed: nothing reported
        third = evaluate(market_sensor, instance, lake, second.cursor)
        assert not third.asset_events
        assert json.loads(third.cursor) == json.loads(second.cursor)

        # one partition's files change: exactly that partition is observed again
        f = lake.files("trades", "binance", "ETH/USDT", "2024-08-09")[0]
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        fourth = evaluate(market_sensor, instance, lake, third.cursor)
        assert [str(e.partition) for e in fourth.asset_events] == ["2024-08-09|binance:ETH-USDT"]


def test_relabel_sensor_requests_labels_when_next_day_features_land(lake: Lake) -> None:
    cfg = BacktestConfig()
    d8 = steps.Part("2024-08-08", "binance", "BTC/USDT")
    d9 = d8.shifted(1)
    steps.features_step(lake, d8)
    steps.labels_step(lake, d8, cfg)  # before day 9's features: censored at the day end
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("market", MARKETS)
        first = evaluate(relabel_sensor, instance, lake)
        assert not first.run_requests  # day 8's features are older than its labels
        steps.features_step(lake, d9)
        second = evaluate(relabel_sensor, instance, lake, first.cursor)
        [req] = second.run_requests
        assert req.partition_key == "2024-08-08|binance:BTC-USDT"
        assert_valid_run_config(req)
        assert [k.to_user_string() for k in req.asset_selection] == [
            "labels",
            "cv_folds",
            "evaluation",
        ]
        third = evaluate(relabel_sensor, instance, lake, second.cursor)
        assert not third.run_requests


def test_relabel_keeps_the_settings_the_partition_was_labelled_with(lake: Lake) -> None:
    """A user labelled day 8 with their own costs in the launchpad; the automatic re-label after
    day 9 lands must not silently fall back to the defaults."""
    d8 = steps.Part("2024-08-08", "binance", "BTC/USDT")
    steps.features_step(lake, d8)
    settings = {"fee_rate": 0.0, "slippage_bps": 1.0, "max_holding_seconds": 60.0}
    expected = BacktestConfig.from_mapping(settings).to_dict()
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("market", MARKETS)
        job = build_defs(str(lake.root)).resolve_job_def("pipeline_job")
        res = job.execute_in_process(
            run_config={"resources": {"backtest": {"config": settings}}},
            instance=instance,
            partition_key="2024-08-08|binance:BTC-USDT",
            asset_selection=[dg.AssetKey("labels")],
        )
        assert res.success
        first = evaluate(relabel_sensor, instance, lake)
        assert not first.run_requests
        steps.features_step(lake, d8.shifted(1))
        [req] = evaluate(relabel_sensor, instance, lake, first.cursor).run_requests
        resolved = dg.validate_run_config(job, req.run_config)
        assert resolved["resources"]["backtest"]["config"] == expected


def test_daily_schedule_requests_yesterday_for_every_market_with_data(lake: Lake) -> None:
    resources = {"lake": LakeResource(path=str(lake.root))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("market", MARKETS)
        when = dt.datetime(2024, 8, 10, 0, 20, tzinfo=dt.UTC)
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, resources=resources
        ) as ctx:
            reqs = list(daily_pipeline_schedule(ctx))
        assert sorted(r.partition_key for r in reqs) == [f"2024-08-09|{m}" for m in MARKETS]
        assert len({r.run_key for r in reqs}) == 2
        for r in reqs:
            assert_valid_run_config(r)
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime(2024, 9, 1, 0, 20, tzinfo=dt.UTC),
            resources=resources,
        ) as ctx:
            [skip] = list(daily_pipeline_schedule(ctx))
        assert isinstance(skip, dg.SkipReason)


def test_observing_ticks_records_one_observation_per_partition(lake: Lake) -> None:
    # `observe` is Dagster's in-process runner for observable source assets (what the UI's
    # "Observe sources" button launches); it is not re-exported at the top level
    from dagster._core.definitions.observe import observe

    from mdpipe.defs.assets import ticks

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("market", MARKETS)
        res = observe(
            [ticks], instance=instance, resources={"lake": LakeResource(path=str(lake.root))}
        )
        assert res.success
        obs = [
            e.event_specific_data.asset_observation
            for e in res.all_events
            if e.event_type_value == "ASSET_OBSERVATION"
        ]
    assert sorted(o.partition for o in obs) == sorted(
        f"{d}|{m}" for d in ("2024-08-08", "2024-08-09") for m in MARKETS
    )
    for o in obs:
        assert o.metadata["book_rows"].value > 0
        assert o.tags["dagster/data_version"]
