"""Shared fixtures: the bundled real recordings and a lake with them imported."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdpipe.ingest import import_paths
from mdpipe.lake import Lake

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "binance-spot-2024-08-08"
RECORDINGS = sorted(DATA.glob("*.gz"))
BTC_FILES = [DATA / "btcusdt_20240808.gz", DATA / "btcusdt_20240809.gz"]
ETH_FILES = [DATA / "ethusdt_20240808.gz", DATA / "ethusdt_20240809.gz"]


@pytest.fixture(scope="session", autouse=True)
def dagster_home_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`mdpipe run` and `mdpipe demo` record into the persistent instance ($DAGSTER_HOME, else
    ./.dagster_home): the suite's runs go to a folder of their own, not the developer's."""
    from mdpipe.instance import HOME_ENV, PROJECT_DAGSTER_YAML

    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(home))
        yield home


@pytest.fixture(scope="session")
def recordings() -> list[Path]:
    return RECORDINGS


@pytest.fixture(scope="session")
def lake_with_recordings(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A lake with the four bundled recordings imported (shared: do not write into it)."""
    lake = Lake(tmp_path_factory.mktemp("lake"))
    report = import_paths(RECORDINGS, lake)
    assert report.ok, report.errors
    return lake
