"""The alerts fast path next to the Dagster sensor: one ledger, each (signal, channel) once.

- the race: the fast path and sensor-launched alert runs go after the same signals at the same
  time; every channel shows each signal once;
- the crash: `mdpipe capture` (online engine, fast path on) is killed after it wrote signals and
  before it could deliver them (the ledger's write lock is held, so the fast path cannot
  register what it wrote); the sensor then delivers every signal once.

Real HTTP throughout: the loopback Slack/Discord/Telegram servers, the local exchange, the real
capture CLI in its own process, alert_job runs on a real Dagster instance.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mdpipe.alerts.channels import clients_from_env
from mdpipe.alerts.fastpath import FastPath
from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs
from tests.sim_thread import SimThread

from .conftest import FAST, make_signal, publish_signals
from .test_defs import Harness, _env, _setenv, covered

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "data" / "binance-spot-2024-08-08").glob("*.gz"))
CHANNELS = ("slack", "discord", "telegram")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        yield inst


def _ids_per_message(server: FakeChatAPIs, api: str) -> int:
    return covered(server.messages(api))


def test_fast_path_and_sensor_racing_deliver_each_signal_once(
    tmp_path: Path,
    apis: FakeChatAPIs,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tg = FakeChatAPIs().start()
    try:
        env = _env(tmp_path, apis, tg)
        _setenv(monkeypatch, env)
        h = Harness(tmp_path, env, instance)
        clients, _ = clients_from_env(env)
        ledger_path = h.lake.root / "state" / "alerts-ledger.sqlite"
        fp = FastPath(ledger_path, clients, policy=FAST).start()
        n = 12
        signals = [make_signal(i, symbol=("BTC/USDT", "ETH/USDT")[i % 2]) for i in range(n)]
        for i, s in enumerate(signals):
            publish_signals(h.lake, [s], f"sig-{i:03d}.parquet")
        go = threading.Barrier(2)

        def fast() -> None:
            go.wait()
            for s in signals:
                fp.submit([s])

        t = threading.Thread(target=fast)
        t.start()
        go.wait()
        h.tick()  # the sensor's run goes after the same 12 files meanwhile
        t.join()
        assert fp.wait_idle(120)
        for _ in range(10):  # drain: until the sensor asks for nothing
            res, launched = h.tick()
            if not launched and res.skip_reason:
                break
        assert fp.stop(30)
        for name, server in (("slack", apis), ("discord", apis), ("telegram", tg)):
            assert _ids_per_message(server, name) == n, name
        rows = Ledger(ledger_path).rows()
        assert len(rows) == 3 * n and {r["status"] for r in rows} == {"delivered"}
        by_fast = sum(fp.delivered.values())
        print(f"race: {by_fast} of {3 * n} pairs delivered by the fast path, the rest by runs")
    finally:
        tg.stop()


def test_capture_killed_between_write_and_delivery_the_sensor_delivers_once(
    tmp_path: Path,
    apis: FakeChatAPIs,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tg = FakeChatAPIs().start()
    env = _env(tmp_path, apis, tg)
    _setenv(monkeypatch, env)
    h = Harness(tmp_path, env, instance)
    lake = h.lake.root
    ledger_path = lake / "state" / "alerts-ledger.sqlite"
    Ledger(ledger_path)
    # hold the ledger's write lock: the capture's fast path can write signals to the lake but
    # cannot register (let alone claim or send) them: the moment between write and delivery
    lock = sqlite3.connect(ledger_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    st = SimThread(FILES, speed=40.0, start_grace_s=1.0, limit_events=70_000)
    sim = st.start()
    logf = (tmp_path / "capture.log").open("wb")
    cmd = [
        sys.executable, "-m", "mdpipe.cli", "capture", "--venue", "binance",
        "--symbols", "BTC/USDT,ETH/USDT", "--lake", str(lake), "--ws-url", sim.ws_url,
        "--rest-url", sim.rest_url, "--flush-interval", "1", "--log-level", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env={**env, **_py_env()}
    )
    log_text = lambda: (tmp_path / "capture.log").read_text(errors="replace")  # noqa: E731
    try:
        deadline = time.monotonic() + 300
        while not list((lake / "live" / "signals").rglob("*.parquet")):
            assert proc.poll() is None, log_text()[-3000:]
            assert time.monotonic() < deadline, "no live signal within 300 s"
            time.sleep(0.2)
        assert "alerts fast path on: slack, discord, telegram" in log_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        logf.close()
        st.stop()
        lock.execute("ROLLBACK")
        lock.close()
    try:
        # the capture delivered nothing and left nothing in the ledger
        assert [len(s.messages()) for s in (apis, tg)] == [0, 0]
        assert Ledger(ledger_path).rows() == []
        files = sorted((lake / "live" / "signals").rglob("*.parquet"))
        ids = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")["signal_id"]
        assert ids.n_unique() == ids.len() >= 1
        for _ in range(10):
            res, launched = h.tick()
            if not launched and res.skip_reason:
                break
        assert all(r.success for r in h.launched)
        for name, server in (("slack", apis), ("discord", apis), ("telegram", tg)):
            assert covered(server.messages(name)) == ids.len(), name
        rows = Ledger(ledger_path).rows()
        assert len(rows) == 3 * ids.len() and {r["status"] for r in rows} == {"delivered"}
    finally:
        tg.stop()


def _py_env() -> dict[str, str]:
    import os

    keep = ("PATH", "HOME", "LANG", "TMPDIR", "NUMBA_CACHE_DIR", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: os.environ[k] for k in keep if k in os.environ}
