"""Run storage in PostgreSQL: `mdpipe run` with DAGSTER_HOME holding deploy/dagster.yaml
records its runs, event logs, materialisations and checks in a real PostgreSQL server on
127.0.0.1, and writes the same Parquet as the local (SQLite) run."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from mdpipe.cli import main
from mdpipe.instance import HOME_ENV
from mdpipe.lake import Lake
from tests.deploy.conftest import (
    ROOT,
    assert_same_outputs,
    copy_lake,
    derived_frames,
    frames_of_date,
)
from tests.deploy.services import PostgresServer

DATE = "2024-07-18"


def postgres_home(tmp: Path, server: PostgresServer, db: str, mp: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME holding the deployment's dagster.yaml, its variables set for `server`."""
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {
        "DAGSTER_POSTGRES_HOST": server.host,
        "DAGSTER_POSTGRES_PORT": str(server.port),
        "DAGSTER_POSTGRES_USER": server.user,
        "DAGSTER_POSTGRES_PASSWORD": "",
        "DAGSTER_POSTGRES_DB": server.create_database(db),
    }.items():
        mp.setenv(key, value)
    mp.setenv(HOME_ENV, str(home))
    return home


def test_mdpipe_run_on_postgres_storage(
    postgres: PostgresServer,
    small_lake: Lake,
    local_outputs: dict[str, pl.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = postgres_home(tmp_path, postgres, "mdpipe_run", monkeypatch)
    lake = copy_lake(small_lake, tmp_path / "lake")
    assert main(["run", "--lake", str(lake.root), "--date", DATE]) == 0

    # the outputs are the local run's, byte for byte in every column
    assert_same_outputs(derived_frames(lake), frames_of_date(local_outputs, DATE))

    # everything Dagster recorded is in PostgreSQL; the home holds no SQLite storage
    q = lambda sql: postgres.query("mdpipe_run", sql)  # noqa: E731
    runs = q("select status, count(*) from runs group by status")
    assert dict(runs) == {"SUCCESS": 5}, runs  # features, labels stage x 2 markets + summary
    mats = q(
        "select asset_key, partition, count(*) from event_logs "
        "where dagster_event_type = 'ASSET_MATERIALIZATION' group by 1, 2"
    )
    assets = {(k.strip('["]'), p) for k, p, _ in mats}
    for market in ("BTC-USDT-USDT", "ETH-USDT-USDT"):
        part = f"{DATE}|binanceusdm:{market}"
        for asset in ("features", "signals", "labels", "cv_folds", "evaluation"):
            assert (asset, part) in assets, (asset, part, sorted(assets))
    assert ("evaluation_summary", None) in assets
    [(n_events,)] = q("select count(*) from event_logs")
    assert n_events > 50
    checks = q("select execution_status, count(*) from asset_check_executions group by 1")
    assert dict(checks).get("SUCCEEDED", 0) > 0, checks
    markets = q("select partition from dynamic_partitions where partitions_def_name = 'market'")
    assert sorted(m for (m,) in markets) == [
        "binance:ETH-USDT",
        "binanceusdm:BTC-USDT-USDT",
        "binanceusdm:ETH-USDT-USDT",
    ]
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
