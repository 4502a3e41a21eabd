"""REST backfill of trade-id holes: the real capture (ccxt inside) against the local Binance,
whose replay keeps printing trades while the capture is away."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.capture.daemon import Capture, CaptureConfig
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.venues.binance.simulator import ExchangeSim
from tests.capture.conftest import ALL_FILES, SYMBOLS, Run, run_capture, wait_pos

LIMIT = 30_000


def _sym(sim: ExchangeSim, symbol: str) -> Any:
    return sim.symbols[symbol.replace("/", "").lower()]


async def _printed_more(sim: ExchangeSim, n: int) -> None:
    """Wait until every symbol printed `n` more trades than now."""
    start = {s: len(_sym(sim, s).printed_trades) for s in SYMBOLS}

    async def _wait() -> None:
        while any(len(_sym(sim, s).printed_trades) < start[s] + n for s in SYMBOLS):
            assert not sim.finished.is_set(), "the replay ended before the trades were printed"
            await sim.reached(sim.position + 1).wait()

    await asyncio.wait_for(_wait(), 60)


async def _backfills_done(cap: Capture, holes: int) -> None:
    # a hole's gap episode and its backfill task are made together, when its gap row is absorbed
    await cap.events.wait_for(
        lambda: (
            sum(e.detail.startswith("trade ids") for e in cap.episodes) >= holes
            and cap.backfills_running == 0
        ),
        60,
    )


def _drop_run(tmp: Path, history_error: dict[str, Any] | None = None, **config: Any) -> Run:
    async def outage(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 10_000)
        cap.hold_dials()  # the outage lasts until the exchange printed what the test needs
        await sim.fault("drop", abort=False, keep_running=True)
        await _printed_more(sim, 100)  # the exchange prints while nobody listens
        if history_error is not None:
            await sim.fault("history_error", **history_error)
        cap.release_dials()
        await _backfills_done(cap, len(SYMBOLS))

    return asyncio.run(run_capture(tmp, limit_events=LIMIT, steps=[outage], **config))


def _hole(run: Run, symbol: str) -> tuple[int, int]:
    g = run.gaps(symbol).filter(
        (pl.col("kind") == "sequence_gap") & pl.col("detail").str.starts_with("trade ids")
    )
    assert g.height == 1, g
    return int(g["prev_update_id"][0]) + 1, int(g["next_update_id"][0]) - 1


def test_trades_printed_during_a_drop_are_backfilled_exactly_once(tmp_path: Path) -> None:
    run = _drop_run(tmp_path)
    total = 0
    for sym in SYMBOLS:
        printed = run.sim.symbols[sym.replace("/", "").lower()].printed_trade_ids
        trades = run.trades(sym)
        ids = trades["trade_id"].to_list()
        assert len(ids) == len(set(ids)), "a trade was written twice"
        assert sorted(ids) == printed, "a trade the exchange printed is missing"
        first, last = _hole(run, sym)
        assert last - first + 1 >= 100
        # the stream never delivered them: they came from REST, normalized like live trades
        assert not set(range(first, last + 1)) & set(run.sent_trade_ids(sym))
        filled = trades.filter(pl.col("trade_id").is_between(first, last))
        assert filled.height == last - first + 1
        assert filled["side"].is_in(["buy", "sell"]).all() and (filled["price"] > 0).all()
        # recv_ts_ns is when the REST answer arrived: after the trade printed, one per page
        assert (filled["recv_ts_ns"] > filled["exch_ts_ns"] - 5_000_000_000).all()
        out = run.gaps(sym).filter(pl.col("kind") == "backfill")
        assert out.height == 1
        n = last - first + 1
        assert out["detail"][0] == (
            f"backfilled {n} of {n} trades (ids {first}..{last}) via REST historicalTrades"
        )
        assert (out["prev_update_id"][0], out["next_update_id"][0]) == (first - 1, last + 1)
        assert run.stats["backfill"]["trades"][sym] == n
        total += n
    b = run.stats["backfill"]
    assert b["trades_total"] == total and b["failures"] == {} and b["request_errors"] == {}
    assert b["holes"] == {s: 1 for s in SYMBOLS} and b["running"] == 0
    assert run.sim.history_requests >= 2
    _reimport_has_the_gap_but_not_the_backfill(run, tmp_path)


def test_rest_errors_then_success_are_counted_and_the_hole_is_filled(tmp_path: Path) -> None:
    run = _drop_run(tmp_path, history_error={"status": 500, "count": 2})
    for sym in SYMBOLS:
        ids = run.trades(sym)["trade_id"].to_list()
        assert len(ids) == len(set(ids))
        assert sorted(ids) == run.sim.symbols[sym.replace("/", "").lower()].printed_trade_ids
    b = run.stats["backfill"]
    assert b["request_errors"] == {"500": 2} and b["failures"] == {}


def test_429_retry_after_is_honoured_then_the_hole_is_filled(tmp_path: Path) -> None:
    run = _drop_run(tmp_path, history_error={"status": 429, "count": 1, "retry_after": 0.2})
    b = run.stats["backfill"]
    assert b["request_errors"] == {"429": 1} and b["failures"] == {}
    assert any(
        e["kind"] == "backfill" and e["detail"].startswith("backfilled")
        for e in run.stats["episodes"]
    )
    for sym in SYMBOLS:
        assert sorted(run.trades(sym)["trade_id"].to_list()) == _sym(run.sim, sym).printed_trade_ids


def test_a_backfill_that_keeps_failing_is_recorded_and_capture_goes_on(tmp_path: Path) -> None:
    run = _drop_run(tmp_path, history_error={"status": 500, "count": 1000})
    b = run.stats["backfill"]
    assert b["trades_total"] == 0 and b["failures"] == {s: 1 for s in SYMBOLS}
    assert b["request_errors"] == {"500": 2 * 6}
    for sym in SYMBOLS:
        first, last = _hole(run, sym)
        n = last - first + 1
        out = run.gaps(sym).filter(pl.col("kind") == "backfill")
        assert out.height == 1
        d = out["detail"][0]
        assert d.startswith(f"backfilled 0 of {n} trades (ids {first}..{last})"), d
        assert "failed after 6 attempts, last 500" in d
        assert b["missing"][sym] == n
        # the stream went on: everything but the hole is there, once
        ids = run.trades(sym)["trade_id"].to_list()
        assert len(ids) == len(set(ids))
        printed = set(_sym(run.sim, sym).printed_trade_ids)
        assert printed - set(ids) == set(range(first, last + 1))
    assert run.final_health["status"] == "ok"


def test_backfill_is_capped_and_can_be_switched_off(tmp_path: Path) -> None:
    run = _drop_run(tmp_path / "cap", backfill_max_trades=30)
    for sym in SYMBOLS:
        first, last = _hole(run, sym)
        d = run.gaps(sym).filter(pl.col("kind") == "backfill")["detail"][0]
        assert d.startswith(f"backfilled 30 of {last - first + 1} trades"), d
        assert "capped at backfill_max_trades=30" in d
        ids = set(run.trades(sym)["trade_id"].to_list())
        assert set(range(first, first + 30)) <= ids and first + 30 not in ids
    off = _drop_run(tmp_path / "off", backfill_trades=False)
    assert off.stats["backfill"]["holes"] == {}
    for sym in SYMBOLS:
        first, last = _hole(off, sym)
        assert off.gaps(sym).filter(pl.col("kind") == "backfill").height == 0
        assert not set(range(first, last + 1)) & set(off.trades(sym)["trade_id"].to_list())


def _reimport_has_the_gap_but_not_the_backfill(run: Run, tmp_path: Path) -> None:
    """REST trade answers are not journaled (documented): `mdpipe import` of the capture's
    journal gives the stream's trades and the gap row, without the backfilled trades."""
    journal = [Path(p) for p in run.stats["journal_files"]]
    lake2 = Lake(tmp_path / "reimport")
    report = import_paths(journal, lake2, venue="binance", catalog=False)
    assert not report.errors, report.errors[:3]
    for sym in SYMBOLS:
        first, last = _hole(run, sym)
        ids = set(lake2.read("trades", "binance", sym)["trade_id"].to_list())
        assert ids == set(run.trades(sym)["trade_id"].to_list()) - set(range(first, last + 1))
        g = lake2.read("gaps", "binance", sym)
        assert g.filter(pl.col("detail").str.starts_with(f"trade ids {first}..{last}")).height == 1
        assert g.filter(pl.col("kind") == "backfill").height == 0


def test_restart_backfills_the_trades_printed_between_two_runs(tmp_path: Path) -> None:
    async def main() -> tuple[ExchangeSim, Lake, dict[str, Any]]:
        sim = ExchangeSim(ALL_FILES, speed=None, limit_events=LIMIT, start_grace_s=1.0)
        await sim.start()
        lake = tmp_path / "lake"

        def config() -> CaptureConfig:
            return CaptureConfig(
                symbols=SYMBOLS,
                lake=str(lake),
                ws_url=sim.ws_url,
                rest_url=sim.rest_url,
                flush_interval_s=0.5,
                reconnect_initial_s=0.05,
                reconnect_max_s=0.4,
            )

        try:
            first = Capture(config())
            await first.start()
            await wait_pos(sim, 10_000)
            await first.stop()  # what SIGTERM does (run_until_signal)
            sim.keep_running = True  # the exchange goes on printing with nobody connected
            await _printed_more(sim, 100)
            second = Capture(config())
            await second.start()
            await asyncio.wait_for(sim.finished.wait(), 120)
            await _backfills_done(second, len(SYMBOLS))
            await second.stop()
            return sim, Lake(lake), second.get_stats()
        finally:
            await sim.stop()

    sim, lake, stats = asyncio.run(main())
    for sym in SYMBOLS:
        ids = lake.read("trades", "binance", sym)["trade_id"].to_list()
        assert len(ids) == len(set(ids)), "a trade was written twice"
        # the second run's frames on the wire when the first one stopped are none: the
        # first UNSUBSCRIBEd and drained, so every printed trade is in the lake exactly once
        assert sorted(ids) == _sym(sim, sym).printed_trade_ids
        gaps = lake.read("gaps", "binance", sym)
        assert gaps.filter(pl.col("kind") == "reconnect").height == 1
        hole = gaps.filter(pl.col("detail").str.starts_with("trade ids"))
        assert hole.height == 1
        first, last = int(hole["prev_update_id"][0]) + 1, int(hole["next_update_id"][0]) - 1
        out = gaps.filter(pl.col("kind") == "backfill")
        n = last - first + 1
        assert out["detail"].to_list() == [
            f"backfilled {n} of {n} trades (ids {first}..{last}) via REST historicalTrades"
        ]
        assert stats["backfill"]["trades"][sym] == n
