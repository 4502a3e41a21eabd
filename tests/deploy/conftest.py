"""Fixtures of the deployment tests: a small lake of real recordings, its local (SQLite,
in-process) run as the reference, and real services on 127.0.0.1 (PostgreSQL, Redis) started
here and stopped by process id."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.pipeline import steps
from tests.deploy.services import PostgresServer, RedisServer, find_postgres_bin, find_redis

ROOT = Path(__file__).resolve().parents[2]
MULTI = ROOT / "data" / "binance-multi-2024"
SPOT = ROOT / "data" / "binance-spot-2024-08-08"
# small real recordings that start with a snapshot: about three minutes of USD-M BTC and ETH,
# and the bundled spot ETH day file, each a partition of its own
RECORDINGS = [
    MULTI / "usdm_btcusdt_20240718.gz",
    MULTI / "usdm_ethusdt_20240718.gz",
    SPOT / "ethusdt_20240808.gz",
]
MARKET = "binanceusdm:BTC-USDT-USDT"
# The partitions the deployment tests materialise: one per recording. The USD-M files end a
# second before midnight by the recording host's clock, so their last events fall on the next
# UTC day; that day is left unmaterialised everywhere, so labels near midnight are censored
# the same way in every run whatever order the runs take.
PARTS = (
    ("2024-07-18", "binanceusdm:BTC-USDT-USDT"),
    ("2024-07-18", "binanceusdm:ETH-USDT-USDT"),
    ("2024-08-08", "binance:ETH-USDT"),
)
ASSETS = ("features", "signals", "labels", "cv_folds", "evaluation")


@pytest.fixture(scope="session")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """The three recordings imported (shared: copy before writing into it)."""
    lake = Lake(tmp_path_factory.mktemp("small") / "lake")
    report = import_paths(RECORDINGS, lake)
    assert report.ok, report.errors
    return lake


def copy_lake(src: Lake, dest: Path) -> Lake:
    shutil.copytree(src.root, dest, ignore=shutil.ignore_patterns("derived", "mdpipe.duckdb"))
    return Lake(dest)


def derived_frames(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every derived partition file's rows, keyed by asset/venue/symbol/date."""
    out = {}
    for asset in ASSETS:
        for f in lake.files(steps.derived(asset)):
            key = "/".join((asset, *f.parent.relative_to(lake.root / steps.derived(asset)).parts))
            assert key not in out, f"two files for {key}"
            out[key] = pl.read_parquet(f)
    return out


def assert_same_outputs(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for key, df in want.items():
        assert got[key].equals(df), key


@pytest.fixture(scope="session")
def local_outputs(
    small_lake: Lake, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, pl.DataFrame]:
    """The reference: every asset of `PARTS`, in process on a local (SQLite) instance."""
    from dagster._core.instance.ref import InstanceRef

    from mdpipe.run import execute, register_markets, select_parts

    lake = copy_lake(small_lake, tmp_path_factory.mktemp("local") / "lake")
    parts = [p for p in select_parts(lake) if (p.date, p.market) in PARTS]
    assert len(parts) == len(PARTS)
    home = tmp_path_factory.mktemp("local_home")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        register_markets(instance, lake)
        outcome = execute(lake, parts, instance=instance)
    assert outcome.ok, (outcome.runs, outcome.failed_checks)
    frames = derived_frames(lake)
    assert len(frames) == len(ASSETS) * len(PARTS)
    return frames


def frames_of_date(frames: dict[str, pl.DataFrame], date: str) -> dict[str, pl.DataFrame]:
    return {k: v for k, v in frames.items() if k.endswith(f"/date={date}")}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    with PostgresServer.start(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    exe = find_redis()
    if exe is None:
        pytest.skip("redis-server not found (apt-get install redis-server)")
    with RedisServer.start(exe, tmp_path_factory.mktemp("redis")) as server:
        yield server
