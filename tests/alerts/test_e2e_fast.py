"""End to end with both alert paths on: a replay through `mdpipe capture` (online engine, fast
path) and posts to `mdpipe serve` (fast path) reach the loopback Slack, Discord and Telegram
while the live-signal sensor runs alert_job on a real Dagster instance; every signal, live or
posted, arrives once per channel. Signal written -> delivered latency is printed (measured, not
asserted: bench/fast_alerts.py records it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import polars as pl
import pytest

from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs
from mdpipe.api.app import create_app
from mdpipe.settings import load_settings
from tests.api.conftest import TOKEN, Served, auth
from tests.sim_thread import SimThread

from .test_defs import Harness, _env, _setenv, covered
from .test_fastpath import FILES, ROOT, _py_env


def test_replay_and_posts_reach_every_channel_once_with_both_paths_on(
    tmp_path: Path, apis: FakeChatAPIs, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg = FakeChatAPIs().start()
    env = _env(tmp_path, apis, tg)
    _setenv(monkeypatch, env)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        h = Harness(tmp_path, env, instance)
        lake = h.lake
        served = Served(
            create_app(load_settings(environ={}), lake, environ={**env, "MDPIPE_API_TOKEN": TOKEN})
        ).start()
        client = httpx.Client(base_url=served.url, timeout=30)
        st = SimThread(FILES, speed=40.0, start_grace_s=1.0, limit_events=70_000)
        sim = st.start()
        logf = (tmp_path / "capture.log").open("wb")
        cmd = [
            sys.executable, "-m", "mdpipe.cli", "capture", "--venue", "binance",
            "--symbols", "BTC/USDT,ETH/USDT", "--lake", str(lake.root), "--ws-url", sim.ws_url,
            "--rest-url", sim.rest_url, "--flush-interval", "1", "--log-level", "INFO",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                env={**env, **_py_env()})  # fmt: skip
        log_text = lambda: (tmp_path / "capture.log").read_text(errors="replace")[-3000:]  # noqa: E731
        posted: list[str] = []
        try:
            deadline = time.monotonic() + 300
            while not st.finished():
                assert proc.poll() is None, log_text()
                assert time.monotonic() < deadline, "the replay did not finish within 300 s"
                if len(posted) < 6:
                    r = client.post("/api/v1/signals", headers=auth(), json={
                        "timestamp": time.time() - 0.5, "signal_type": "ext_imbalance",
                        "score": 0.5 + len(posted), "symbol": "ETH/USDT", "venue": "binance",
                        "price": 2650.0})  # fmt: skip
                    assert r.status_code == 201, r.text
                    posted.append(r.json()["signal_id"])
                h.tick()  # the sensor path, as the daemon would, while capture records
            proc.send_signal(signal.SIGTERM)  # stops the fast path after its queue drains
            assert proc.wait(120) == 0, log_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            logf.close()
            st.stop()
        try:
            assert served.app.state.fast_path().wait_idle(60)
            for _ in range(10):
                res, launched = h.tick()
                if not launched and res.skip_reason:
                    break
            files = sorted((lake.root / "live" / "signals").rglob("*.parquet"))
            rows = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
            ids = rows["signal_id"].to_list()
            assert len(ids) == len(set(ids)) and set(posted) <= set(ids)
            assert rows.filter(pl.col("source") == "live").height >= 3, log_text()
            assert "alerts fast path on" in (tmp_path / "capture.log").read_text()
            for name, server in (("slack", apis), ("discord", apis), ("telegram", tg)):
                assert covered(server.messages(name)) == len(ids), name
            ledger = Ledger(lake.root / "state" / "alerts-ledger.sqlite").rows()
            assert len(ledger) == 3 * len(ids) and {r["status"] for r in ledger} == {"delivered"}
            emitted = dict(zip(rows["signal_id"], rows["emitted_ns"], strict=True))
            lat = np.array([(r["delivered_ns"] - emitted[r["signal_id"]]) / 1e9 for r in ledger])
            by_run = sum(
                1 for r in ledger if not str(r["claimed_by"]).startswith(("capture-", "serve-"))
            )
            print(f"e2e both paths: {len(ids)} signals ({len(posted)} posted) x 3 channels; "
                  f"written -> delivered p50 {np.percentile(lat, 50):.2f} s, p95 "
                  f"{np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s; "
                  f"{len(ledger) - by_run} pairs by the fast path, {by_run} by sensor runs")  # fmt: skip
        finally:
            client.close()
            served.stop()
            tg.stop()
