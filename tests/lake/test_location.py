"""A lake location the code does not understand (a URL other than s3://) is refused, never made a
local folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdpipe.cli import main as cli_main
from mdpipe.lake import LAKE_ENV, Lake, LakeLocationError

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "data" / "binance-spot-2024-08-08" / "btcusdt_20240808.gz"
URLS = [
    "gs://bucket/x",
    "abfs://container@acct/x",
    "HTTP://host/lake",
]  # s3:// works: test_objstore


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(LAKE_ENV, raising=False)
    return tmp_path


@pytest.mark.parametrize("url", URLS)
def test_a_url_is_refused_at_construction_and_resolve(
    url: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = f"object-store lakes must be s3:// URLs: {url} "
    with pytest.raises(LakeLocationError, match=f"^{msg}"):
        Lake(url)
    with pytest.raises(LakeLocationError, match=f"^{msg}"):
        Lake.resolve(url)
    monkeypatch.setenv(LAKE_ENV, url)
    with pytest.raises(LakeLocationError, match=f"^{msg}"):
        Lake.resolve()
    assert list(cwd.iterdir()) == []  # no folder named "s3:" appeared


def test_file_urls_and_empty_locations_are_refused_with_a_hint(cwd: Path) -> None:
    with pytest.raises(
        LakeLocationError, match=r"not file:// URLs: file:///data/lake \(give the folder"
    ):
        Lake("file:///data/lake")
    with pytest.raises(LakeLocationError, match="the lake location is empty"):
        Lake("")


def test_local_folders_still_work(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Lake.resolve().root == cwd / "lake"
    assert Lake("relative/x:y").root == cwd / "relative" / "x:y"  # a colon alone is no URL
    monkeypatch.setenv(LAKE_ENV, str(cwd / "elsewhere"))
    assert Lake.resolve().root == cwd / "elsewhere"
    assert Lake.resolve("given").root == cwd / "given"


def _expect_refused(rc: int, err: str, url: str, cwd: Path) -> None:
    assert rc == 2
    assert f"error: object-store lakes must be s3:// URLs: {url}" in err
    assert "Traceback" not in err
    assert list(cwd.iterdir()) == []


def test_mdpipe_import_refuses_a_url_lake(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["import", str(RECORDING), "--lake", "gs://bucket/x"])
    _expect_refused(rc, capsys.readouterr().err, "gs://bucket/x", cwd)


def test_mdpipe_run_refuses_a_url_lake_from_the_flag_and_the_environment(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc = cli_main(["run", "--lake", "gs://bucket/x"])
    _expect_refused(rc, capsys.readouterr().err, "gs://bucket/x", cwd)
    monkeypatch.setenv(LAKE_ENV, "abfs://bucket/env")
    rc = cli_main(["run"])
    _expect_refused(rc, capsys.readouterr().err, "abfs://bucket/env", cwd)


def test_mdpipe_capture_refuses_a_url_lake_before_connecting(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an unreachable exchange: reaching the network at all would fail differently
    args = ["capture", "--symbols", "BTC/USDT", "--lake", "gs://bucket/x",
            "--ws-url", "ws://127.0.0.1:9", "--rest-url", "http://127.0.0.1:9"]  # fmt: skip
    rc = cli_main(args)
    _expect_refused(rc, capsys.readouterr().err, "gs://bucket/x", cwd)


def test_the_installed_commands_exit_non_zero_with_the_message(cwd: Path) -> None:
    """As a user runs them: `mdpipe capture` and `python -m mdpipe.capture capture`."""
    env = {k: v for k, v in os.environ.items() if k != LAKE_ENV}
    env[LAKE_ENV] = "gs://bucket/from-env"
    for argv in (
        [sys.executable, "-m", "mdpipe.cli", "capture", "--symbols", "BTC/USDT"],
        [sys.executable, "-m", "mdpipe.capture", "capture", "--symbols", "BTC/USDT"],
    ):
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        _expect_refused(proc.returncode, proc.stderr, "gs://bucket/from-env", cwd)
