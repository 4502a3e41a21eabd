"""The README's offline demo, as a user runs it: `mdpipe exchange-sim` prints the exact
`mdpipe capture` command as its first line, and that command captures into a lake."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from mdpipe.lake import Lake
from tests.capture.conftest import ALL_FILES

ROOT = Path(__file__).resolve().parents[2]


def test_exchange_sim_prints_the_capture_command_that_works(tmp_path: Path) -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "mdpipe.cli", "exchange-sim", "--recording",
         *map(str, ALL_FILES), "--speed", "30", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    cap = None
    try:
        assert sim.stdout is not None
        first = sim.stdout.readline().strip()
        assert first.startswith(
            "mdpipe capture --venue binance --symbols BTC/USDT,ETH/USDT --ws-url ws://127.0.0.1:"
        ), first
        argv = shlex.split(first)
        assert "--rest-url" in argv
        lake = tmp_path / "lake"
        cap = subprocess.Popen(
            [sys.executable, "-m", "mdpipe.cli", *argv[1:], "--lake", str(lake),
             "--flush-interval", "0.5", "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(Lake(lake).files("book")) >= 4 and len(Lake(lake).files("trades")) >= 4:
                break
            assert cap.poll() is None, cap.communicate()[1][-2000:]
            time.sleep(0.2)
        cap.send_signal(signal.SIGTERM)
        out, err = cap.communicate(timeout=30)
        assert cap.returncode == 0, err[-2000:]
        assert "capture stopped" in out
        trades = Lake(lake).read("trades")
        assert set(trades["symbol"]) == {"BTC/USDT", "ETH/USDT"}
        assert trades["trade_id"].is_duplicated().sum() == 0
        book = Lake(lake).read("book", "binance", "BTC/USDT")
        assert book["is_snapshot"][0] and book.filter(~pl.col("is_snapshot")).height > 0
    finally:
        for p in (cap, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
