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


# ---- an S3-compatible server on loopback (moto), for lakes at s3://bucket/prefix ----------


class S3Server:
    """moto's S3 server on 127.0.0.1 in this process. ``stop()`` makes the store unreachable
    (connections refused) and ``start()`` brings it back on the same port with its objects:
    moto keeps them in the process, not in the server thread."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "mdpipe-test",
            "AWS_SECRET_ACCESS_KEY": "mdpipe-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto[server] on 127.0.0.1 (skipped with the reason when moto is not installed)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip: dev extra)")
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_lake_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 server, the AWS variables pointing at it, and the URL
    ``s3://<bucket>/lake`` of an empty lake in it."""
    import uuid

    import boto3

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = f"mdpipe-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake"
