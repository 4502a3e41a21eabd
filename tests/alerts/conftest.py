"""Alert tests: real HTTP servers on 127.0.0.1 that answer like Slack, Discord and Telegram."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mdpipe.alerts.delivery import DeliveryPolicy
from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs
from mdpipe.alerts.message import AlertSignal
from mdpipe.lake import Lake

# quick policy for tests: short backoffs so retries happen within a test's lifetime
FAST = DeliveryPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, retry_base_s=0.2, max_wait_s=5.0)


@pytest.fixture
def apis() -> Iterator[FakeChatAPIs]:
    with FakeChatAPIs() as a:
        yield a


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def make_signal(i: int, *, symbol: str = "BTC/USDT", recv_ns: int | None = None) -> AlertSignal:
    return AlertSignal(
        signal_id=f"sig{i:05d}",
        venue="binance",
        symbol=symbol,
        ts_ns=1_723_161_348_551_000_000 + i * 1_000_000_000,
        signal_type=("drift", "burst", "regime")[i % 3],
        direction=1 if i % 2 == 0 else -1,
        score=1.25 + i / 100,
        price=61802.815,
        trigger="imbalance_5",
        trigger_value=0.81,
        threshold=0.5,
        recv_ts_ns=recv_ns if recv_ns is not None else time.time_ns(),
        inputs={"imbalance_5": 0.81, "trade_imbalance_5s": -3.2, "vpin": 0.41},
    )


def signal_rows(signals: list[AlertSignal]) -> pl.DataFrame:
    """Rows shaped like `live/signals` (the contract's columns plus detector inputs)."""
    return pl.DataFrame(
        [
            {
                "venue": s.venue,
                "symbol": s.symbol,
                "ts_ns": s.ts_ns,
                "signal_id": s.signal_id,
                "signal_type": s.signal_type,
                "direction": s.direction,
                "score": s.score,
                "update_id": 1000 + k,
                "trigger": s.trigger,
                "trigger_value": s.trigger_value,
                "threshold": s.threshold,
                "mid": s.price,
                "recv_ts_ns": s.recv_ts_ns,
                **s.inputs,
            }
            for k, s in enumerate(signals)
        ]
    )


def publish_signals(lake: Lake, signals: list[AlertSignal], name: str) -> Path:
    s0 = signals[0]
    date = time.strftime("%Y-%m-%d", time.gmtime(s0.ts_ns // 1_000_000_000))
    return lake.publish("live/signals", s0.venue, s0.symbol, date, signal_rows(signals), name=name)
