"""End to end: local exchange -> `mdpipe capture` (online engine inside) -> live/signals ->
sensor tick on a real Dagster instance -> alert_job -> loopback Slack, Discord and Telegram.

The exchange simulator replays the first part of the bundled Binance recordings; the capture
is the real CLI in its own process; the sensor is ticked while it runs, like the daemon would.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs
from tests.sim_thread import SimThread

from .test_defs import Harness, _env, _setenv, covered

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "binance-spot-2024-08-08"
FILES = sorted(DATA.glob("*.gz"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


@pytest.fixture
def instance(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        yield inst


def test_replay_to_messages_on_every_channel(
    tmp_path: Path,
    apis: FakeChatAPIs,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tg = FakeChatAPIs().start()
    env = _env(tmp_path, apis, tg)
    _setenv(monkeypatch, env)
    h = Harness(tmp_path, env, instance)
    lake = tmp_path / "lake"
    metrics_port = free_port()
    # ~4 minutes of market data at 40x: far enough for the detectors to warm up and fire
    st = SimThread(FILES, speed=40.0, start_grace_s=1.0, limit_events=70_000)
    sim = st.start()
    log = (tmp_path / "capture.log").open("wb")
    cmd = [
        sys.executable, "-m", "mdpipe.cli", "capture", "--venue", "binance",
        "--symbols", "BTC/USDT,ETH/USDT", "--lake", str(lake), "--ws-url", sim.ws_url,
        "--rest-url", sim.rest_url, "--metrics-port", str(metrics_port),
        "--flush-interval", "1", "--log-level", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    metrics_text = ""
    try:
        deadline = time.monotonic() + 150
        runs_during_capture = 0
        while not st.finished() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "capture.log").read_text()[-3000:]
            _, launched = h.tick()
            runs_during_capture += len(launched)
            time.sleep(1.0)
        assert st.finished(), "the replay did not finish"
        time.sleep(2.0)  # the engine releases its last held events after max_wait_ms
        metrics_text = scrape(metrics_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "capture.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        st.stop()
    try:
        files = sorted((lake / "live" / "signals").rglob("*.parquet"))
        assert files, (tmp_path / "capture.log").read_text()[-3000:]
        signals = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
        ids = signals["signal_id"].to_list()
        assert len(ids) == len(set(ids)) >= 3
        assert signals["recv_ts_ns"].null_count() == 0 and signals["mid"].null_count() == 0
        # the capture process exported the engine's metrics on its /metrics
        assert metric_sum(metrics_text, "mdpipe_signals_total") == len(ids)
        assert metric_sum(metrics_text, "mdpipe_detector_events_total") > 1000
        assert metric_sum(metrics_text, "mdpipe_capture_messages_total") > 10_000

        # drain: ticks until the sensor has nothing left to ask for
        for _ in range(10):
            res, launched = h.tick()
            if not launched and res.skip_reason:
                break
        assert all(r.success for r in h.launched), [r.run_id for r in h.launched]
        for name, server in (("slack", apis), ("discord", apis), ("telegram", tg)):
            assert covered(server.messages(name)) == len(ids), name  # each signal once
        ledger = Ledger(lake / "state" / "alerts-ledger.sqlite")
        rows = ledger.rows()
        assert len(rows) == 3 * len(ids) and {r["status"] for r in rows} == {"delivered"}
        # single messages carry the real signal: market, type, price
        singles = [m for m in apis.messages("slack") if "signals ·" not in m.body["text"]]
        for m in singles:
            assert m.body["blocks"][0]["text"]["text"].split(" · ")[1] in (
                "binance BTC/USDT",
                "binance ETH/USDT",
            )
        print(
            f"e2e: {len(ids)} live signals, {len(h.launched)} alert runs "
            f"({runs_during_capture} while capturing), publish delay max "
            f"{(signals['emitted_ns'] - signals['recv_ts_ns']).max() / 1e9:.3f} s"
        )
    finally:
        tg.stop()
