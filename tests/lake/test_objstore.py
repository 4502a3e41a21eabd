"""The lake on an S3-compatible store (moto's server on 127.0.0.1): a real recording imported
into ``s3://`` and every asset materialised gives the same Parquet outputs as the same run on a
local lake; publishing leaves no partial or temporary object; DuckDB reads it without httpfs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mdpipe.cli import main as cli_main
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake, LakeLocationError, is_remote
from mdpipe.run import execute, register_markets, select_parts
from tests.conftest import BTC_FILES, S3Server

ASSETS = ("features", "signals", "labels", "cv_folds", "evaluation")


def rel(lake: Lake, f: Path) -> str:
    return str(f)[len(str(lake.root)) + 1 :]


def lake_frames(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every Parquet file of the lake by its path under the root."""
    out = {}
    for table in lake.tables():
        for f in lake.files(table):
            out[rel(lake, f)] = lake.read_file(f)
    return out


def object_keys(server: S3Server, url: str) -> list[str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=server.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_s3_urls_are_lakes_and_other_schemes_are_refused(s3_lake_url: str) -> None:
    lake = Lake(s3_lake_url)
    assert lake.remote and is_remote(lake.root)
    assert str(lake.root) == s3_lake_url
    assert lake.files("trades") == [] and lake.read("trades").height == 0
    with pytest.raises(LakeLocationError, match=r"^object-store lakes must be s3:// URLs: gs://"):
        Lake("gs://bucket/x")
    with pytest.raises(LakeLocationError, match="names no bucket"):
        Lake("s3:///x")


@pytest.fixture(scope="module")
def both_lakes(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[str, Any]:
    """BTC/USDT (two days) imported and every asset materialised on a local lake and on an
    s3:// lake, each on its own Dagster instance."""
    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket="mdpipe-e2e")
    lakes = {
        "local": Lake(tmp_path_factory.mktemp("local") / "lake"),
        "s3": Lake("s3://mdpipe-e2e/lake"),
    }
    out: dict[str, Any] = {"lakes": lakes, "server": s3_server}
    try:
        for name, lake in lakes.items():
            report = import_paths(BTC_FILES, lake)
            assert report.ok, report.errors
            with dg.DagsterInstance.ephemeral() as instance:
                register_markets(instance, lake)
                outcome = execute(lake, select_parts(lake), instance=instance)
            assert outcome.ok, (name, outcome)
            out[name] = outcome
        yield out
    finally:
        mp.undo()


def test_import_and_every_asset_on_s3_equal_the_local_run(both_lakes: dict[str, Any]) -> None:
    local, s3 = both_lakes["lakes"]["local"], both_lakes["lakes"]["s3"]
    want, got = lake_frames(local), lake_frames(s3)
    assert sorted(got) == sorted(want)
    for asset in ("trades", "book", "bbo", *(f"derived/{a}" for a in ASSETS)):
        assert any(k.startswith(f"{asset}/") for k in want), asset
    for key, frame in want.items():
        assert_frame_equal(got[key], frame, check_exact=True), key
    # the reports are in the bucket beside the evaluation files, and the summary links them
    summary = s3.root / "derived" / "evaluation" / "summary.html"
    assert summary.exists() and "report.html" in summary.read_text()


def test_publishing_leaves_only_finished_objects(both_lakes: dict[str, Any]) -> None:
    keys = object_keys(both_lakes["server"], "s3://mdpipe-e2e/lake")
    assert keys and not [k for k in keys if ".tmp-" in k or k.endswith(".partial")]
    assert Lake("s3://mdpipe-e2e/lake").remove_stale_tmp() == 0


def test_reimport_into_s3_changes_nothing(both_lakes: dict[str, Any]) -> None:
    s3 = both_lakes["lakes"]["s3"]
    before = object_keys(both_lakes["server"], "s3://mdpipe-e2e/lake/trades")
    report = import_paths(BTC_FILES[:1], s3)
    assert report.ok, report.errors
    assert object_keys(both_lakes["server"], "s3://mdpipe-e2e/lake/trades") == before


def test_duckdb_reads_the_s3_lake_through_fsspec(both_lakes: dict[str, Any]) -> None:
    local, s3 = both_lakes["lakes"]["local"], both_lakes["lakes"]["s3"]
    # float sums depend on the order DuckDB's threads add them in: compare them rounded
    sql = "select count(*), round(sum(qty), 6), min(exch_ts_ns), max(trade_id) from trades"
    with local.connect() as lc, s3.connect() as sc:
        assert sc.sql(sql).fetchall() == lc.sql(sql).fetchall()
        assert sc.sql("select count(*) from signals").fetchall()[0][0] > 0
    catalog = s3.build_catalog()
    assert str(catalog).startswith("s3://") and catalog.exists()


def test_mdpipe_import_cli_writes_into_the_bucket(
    s3_lake_url: str,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["import", str(BTC_FILES[0]), "--lake", s3_lake_url]) == 0
    assert list(tmp_path.iterdir()) == []  # no local folder named "s3:"
    keys = object_keys(s3_server, s3_lake_url)
    assert any(k.startswith("lake/trades/venue=binance/symbol=BTC-USDT/") for k in keys)
    capsys.readouterr()
    assert cli_main(["summary", "--lake", s3_lake_url]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"Lake('{s3_lake_url}').connect()" in out and "httpfs" in out
