"""Shared helpers: run the real capture (ccxt inside) against the local exchange, in process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl

from mdpipe.capture.daemon import Capture, CaptureConfig
from mdpipe.crosscheck import CrossCheck, book_vs_bbo
from mdpipe.lake import Lake, iter_journal_lines
from mdpipe.venues.binance.simulator import ExchangeSim

DATA = Path(__file__).resolve().parents[2] / "data" / "binance-spot-2024-08-08"
BTC_FILES = [DATA / "btcusdt_20240808.gz", DATA / "btcusdt_20240809.gz"]
ETH_FILES = [DATA / "ethusdt_20240808.gz", DATA / "ethusdt_20240809.gz"]
ALL_FILES = BTC_FILES + ETH_FILES
SYMBOLS = ("BTC/USDT", "ETH/USDT")


@dataclass
class Run:
    lake: Lake
    sim: ExchangeSim
    cap: Capture
    stats: dict[str, Any]
    health_codes: list[int] = field(default_factory=list)
    health_bodies: list[dict[str, Any]] = field(default_factory=list)
    final_health: dict[str, Any] = field(default_factory=dict)

    def gaps(self, symbol: str | None = None) -> pl.DataFrame:
        return self.lake.read("gaps", "binance", symbol)

    def trades(self, symbol: str) -> pl.DataFrame:
        return self.lake.read("trades", "binance", symbol)

    def sent_trade_ids(self, symbol: str) -> list[int]:
        return self.sim.symbols[symbol.replace("/", "").lower()].sent_trade_ids

    def crosscheck(self, symbol: str, after_update_id: int = 0) -> CrossCheck:
        book = self.lake.read("book", "binance", symbol)
        bbo = self.lake.read("bbo", "binance", symbol)
        return book_vs_bbo(book, bbo.filter(pl.col("update_id") > after_update_id))


Step = Callable[[ExchangeSim, Capture], Awaitable[None]]


async def wait_pos(
    sim: ExchangeSim, pos: int, timeout: float = 60.0, then_speed: float | None = 20.0
) -> None:
    """Wait for the replay to reach `pos`, then slow it down so what follows a fault (the
    resync, the reconnect) happens while the exchange is still streaming."""
    await asyncio.wait_for(sim.reached(pos).wait(), timeout)
    if then_speed is not None:
        sim.set_speed(then_speed)


async def hold_until(
    sim: ExchangeSim, cap: Capture, at: int, done: Callable[[], bool], timeout: float = 60.0
) -> None:
    """Replay nothing from position `at` on until `done()` holds for the capture: whatever the
    machine's load, every event after `at` follows what `done` waited for (a resync, say)."""
    sim.hold(at)
    try:
        await cap.events.wait_for(done, timeout)
    finally:
        sim.release()


async def run_capture(
    tmp: Path,
    *,
    files: list[Path] = ALL_FILES,
    symbols: tuple[str, ...] = SYMBOLS,
    limit_events: int | None = None,
    speed: float | None = None,
    steps: list[Step] = (),  # type: ignore[assignment]
    require_synced: bool = True,
    prepare: Callable[[Capture], None] | None = None,
    sim_options: dict[str, Any] | None = None,
    already_trades: int = 0,
    **config: Any,
) -> Run:
    """`already_trades`: trades an earlier run left in the lake, which this one drops."""
    sim = ExchangeSim(
        files, speed=speed, limit_events=limit_events, start_grace_s=1.0, **(sim_options or {})
    )
    await sim.start()
    cfg = {
        "flush_interval_s": 0.5,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.4,
        "metrics_port": 0,
        **config,
    }
    cap = Capture(
        CaptureConfig(
            symbols=symbols, lake=str(tmp / "lake"), ws_url=sim.ws_url, rest_url=sim.rest_url, **cfg
        )
    )
    run = Run(Lake(tmp / "lake"), sim, cap, {})
    if prepare is not None:
        prepare(cap)
    await cap.start()
    poller_stop = asyncio.Event()

    async def poll_health() -> None:
        async with aiohttp.ClientSession() as s:
            while not poller_stop.is_set():
                async with s.get(f"http://127.0.0.1:{cap.metrics_port}/health") as r:
                    run.health_codes.append(r.status)
                    run.health_bodies.append(await r.json())
                await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll_health())
    try:
        for step in steps:
            await step(sim, cap)
        await asyncio.wait_for(sim.finished.wait(), 120)

        # done when every trade the exchange delivered has been normalized
        want = sum(len(st.sent_trade_ids) for st in sim.symbols.values()) - already_trades
        await cap.events.wait_for(
            # trades on the wire when a connection closes are lost (and named in gaps)
            lambda: (
                cap.status.trades.total() + cap_lost_trades(cap) >= want
                and cap.is_idle(synced=require_synced)
            ),
            30,
        )
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{cap.metrics_port}/health") as r,
        ):
            run.final_health = await r.json()
    finally:
        poller_stop.set()
        await asyncio.gather(poller, return_exceptions=True)
        await cap.stop()
        await sim.stop()
    run.stats = cap.get_stats()
    return run


def cap_lost_trades(cap: Capture) -> int:
    n = 0
    for ep in cap.episodes:
        if ep.detail.startswith("trade ids"):
            n += int(ep.detail.split("(")[1].split()[0])
    return n


def recorded_book_tickers(files: list[Path]) -> dict[int, dict[str, Any]]:
    out = {}
    for p in files:
        for _, text, _ in iter_journal_lines(p):
            if "@bookTicker" in text[:40]:
                d = json.loads(text)["data"]
                out[int(d["u"])] = d
    return out
