"""One settings file, live and batch, on the bundled BTC/USDT recording.

`mdpipe run --config strict.toml` (higher thresholds, a longer cooldown) against the defaults:
fewer or equal signals of every type, and every row names its settings. The same file given to
`mdpipe capture --config strict.toml`, replaying the recording through the local exchange,
publishes live signals with the same ids and the same settings_id as that batch run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mdpipe.cli import main
from mdpipe.lake import Lake
from mdpipe.pipeline import steps
from mdpipe.settings import load_settings
from tests.sim_thread import SimThread

from ..conftest import BTC_FILES, ROOT

STRICT = """\
# stricter detectors than the defaults (3.0, 2.5, 0.7, 30 s)
[detectors]
drift_threshold = 4.5
burst_threshold = 3.5
regime_threshold = 0.9
cooldown_seconds = 90

[backtest]
fee_rate = 0.0004
"""
MARKET = "binance:BTC-USDT"
SYMBOL = "BTC/USDT"


@pytest.fixture(scope="module")
def no_ambient_settings() -> Iterator[None]:
    """The runs read only what the test gives them (no $MDPIPE_CONFIG, ...; the instance is
    the suite's own, see tests/conftest.py)."""
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith(("MDPIPE_CONFIG", "MDPIPE_DETECTORS_"))
        or k.startswith(("MDPIPE_FEATURES_", "MDPIPE_BACKTEST_"))
    }
    yield
    os.environ.update(saved)


def batch_signals(lake: Lake) -> pl.DataFrame:
    files = lake.files(steps.derived("signals"), "binance", SYMBOL)
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def runs(
    lake_with_recordings: Lake,
    tmp_path_factory: pytest.TempPathFactory,
    no_ambient_settings: None,
) -> dict[str, Any]:
    """`mdpipe run` twice on copies of the imported recording: defaults, then strict.toml."""
    base = tmp_path_factory.mktemp("settings_runs")
    strict = base / "strict.toml"
    strict.write_text(STRICT)
    out: dict[str, Any] = {"strict_toml": strict}
    for name, extra in (("default", []), ("strict", ["--config", str(strict)])):
        lake = Lake(base / name)
        shutil.copytree(lake_with_recordings.root, lake.root)
        rc = main(["run", "--lake", str(lake.root), "--market", MARKET, *extra])
        assert rc == 0, name
        out[name] = batch_signals(lake)
    return out


def test_stricter_detectors_give_fewer_signals_of_each_type_with_another_settings_id(
    runs: dict[str, Any],
) -> None:
    default, strict = runs["default"], runs["strict"]
    per_type = {
        name: dict(df.group_by("signal_type").len().iter_rows())
        for name, df in (("default", default), ("strict", strict))
    }
    print(f"signals per type: {per_type}")
    for signal_type in ("drift", "burst", "regime"):
        assert per_type["strict"].get(signal_type, 0) <= per_type["default"][signal_type]
    assert strict.height < default.height  # the file took effect
    expect = load_settings(runs["strict_toml"], environ={}).settings_id
    assert default["settings_id"].unique().to_list() == [load_settings(environ={}).settings_id]
    assert strict["settings_id"].unique().to_list() == [expect]
    assert expect != default["settings_id"][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def _captured(lake: Lake, table: str) -> pl.DataFrame:
    return lake.read(table, "binance", SYMBOL) if lake.files(table, "binance") else pl.DataFrame()


def test_capture_with_the_same_file_publishes_the_batch_signal_ids(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    port = _free_port()
    st = SimThread(BTC_FILES, speed=None, start_grace_s=1.0)
    sim = st.start()
    log = (tmp_path / "capture.log").open("wb")
    cmd = [
        sys.executable, "-m", "mdpipe.cli", "capture", "--config", str(runs["strict_toml"]),
        "--venue", "binance", "--symbols", SYMBOL, "--lake", str(lake.root),
        "--ws-url", sim.ws_url, "--rest-url", sim.rest_url, "--metrics-port", str(port),
        "--flush-interval", "0.5",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDPIPE_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def tail() -> str:
        return (tmp_path / "capture.log").read_text()[-3000:]

    try:
        # done when the exchange has replayed everything, every trade it sent is in the lake,
        # and the engine has published as many signals as the batch run found (if it never
        # does, the deadline fails the test; which ids differ is checked below)
        want = runs["strict"].height
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, tail()
            assert time.monotonic() < deadline, tail()
            if sim.finished.is_set():
                sent = sum(len(s.sent_trade_ids) for s in sim.symbols.values())
                if (
                    _captured(lake, "trades").height == sent
                    and _metric(port, "mdpipe_signals_total") >= want
                ):
                    break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, tail()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        st.stop()
    files = sorted((lake.root / "live" / "signals").rglob("*.parquet"))
    live = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    batch = runs["strict"]
    expect = load_settings(runs["strict_toml"], environ={}).settings_id
    assert live["settings_id"].unique().to_list() == [expect], tail()
    cols = ["signal_id", "signal_type", "ts_ns"]
    assert live.select(cols).sort(cols).equals(batch.select(cols).sort(cols)), tail()
    assert live.height > 0
    assert "live signals with settings_id " + expect in tail()
