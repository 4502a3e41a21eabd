"""Opt-in (`pytest -m internet`): `mdpipe capture` against the real Binance spot exchange.

Not part of `make test` (the suite never reaches the internet). It runs the same process the
users run, for about half a minute, and checks what the simulator tests check: the book rebuilt
from the lake's rows equals every bookTicker whose `u` is an applied update, trade ids are
unique and every jump in them is a `gaps` row, and the raw journal re-imports to the same trades.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mdpipe.crosscheck import book_vs_bbo
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake

pytestmark = pytest.mark.internet

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTC/USDT", "ETH/USDT")
RUN_SECONDS = 30.0


def test_capture_from_real_binance_cross_checks(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    cmd = [
        sys.executable, "-m", "mdpipe.capture", "capture", "--venue", "binance",
        "--symbols", ",".join(SYMBOLS), "--lake", str(lake_dir), "--flush-interval", "2",
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(RUN_SECONDS)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]

    lake = Lake(lake_dir)
    for sym in SYMBOLS:
        cc = book_vs_bbo(lake.read("book", "binance", sym), lake.read("bbo", "binance", sym))
        assert cc.ok, (sym, cc.compared, cc.matched, cc.mismatches[:3])
        trades = lake.read("trades", "binance", sym).sort("trade_id")
        assert trades.height > 0 and trades["trade_id"].is_duplicated().sum() == 0
        ids = trades["trade_id"]
        jumps = trades.filter((ids - ids.shift(1)) > 1)
        gaps = lake.read("gaps", "binance", sym)
        explained = set(gaps["next_update_id"].drop_nulls().to_list()) if gaps.height else set()
        assert set(jumps["trade_id"].to_list()) <= explained

    # the journal is lossless: a fresh import of it gives the same trades
    again = Lake(tmp_path / "reimported")
    journal = sorted((lake_dir / "raw").rglob("*.jsonl.gz"))
    report = import_paths(journal, again, venue="binance", catalog=False)
    assert report.ok, report.errors[:3]
    for sym in SYMBOLS:
        a = lake.read("trades", "binance", sym).sort("trade_id").select("trade_id", "price", "qty")
        b = again.read("trades", "binance", sym).sort("trade_id").select("trade_id", "price", "qty")
        assert a.equals(b), sym
    assert lake.read("gaps").filter(pl.col("kind") == "no_snapshot").height == 0
