"""The real capture (ccxt.pro inside) against the local Binance: full replays and every fault."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import polars as pl
import pytest

from mdpipe.capture.daemon import Capture, CaptureConfig
from mdpipe.lake import iter_journal_lines
from mdpipe.venues.binance.simulator import ExchangeSim
from tests.capture.conftest import Run, hold_until, run_capture, wait_pos

BTC_TRADES = list(range(3735683259, 3735703162 + 1))
ETH_TRADES = list(range(1520538925, 1520553439 + 1))


def assert_trades_exactly_once(run: Run, symbol: str) -> None:
    ids = run.trades(symbol)["trade_id"].to_list()
    assert len(ids) == len(set(ids)), "a trade was written twice"
    assert sorted(ids) == sorted(run.sent_trade_ids(symbol)), "a trade the exchange sent is missing"


def assert_trades_accounted(run: Run, symbol: str) -> None:
    """No duplicates, and any trade the exchange sent but the lake lacks is named in a gaps row
    (frames on the wire when a connection dies are lost; they must never vanish silently)."""
    ids = run.trades(symbol)["trade_id"].to_list()
    assert len(ids) == len(set(ids)), "a trade was written twice"
    missing = set(run.sent_trade_ids(symbol)) - set(ids)
    named: set[int] = set()
    gaps = run.gaps(symbol)
    for d in gaps.filter(pl.col("detail").str.starts_with("trade ids"))["detail"]:
        lo, hi = d.split()[2].split("..")
        named |= set(range(int(lo), int(hi) + 1))
    assert missing <= named, sorted(missing - named)[:10]


def test_full_replay_matches_import_crosscheck_and_every_trade(tmp_path: Path) -> None:
    run = asyncio.run(run_capture(tmp_path))
    btc, eth = run.crosscheck("BTC/USDT"), run.crosscheck("ETH/USDT")
    assert (btc.compared, btc.matched) == (1072, 1072), btc.mismatches
    assert (eth.compared, eth.matched) == (1056, 1056), eth.mismatches
    assert run.sent_trade_ids("BTC/USDT") == BTC_TRADES
    assert run.sent_trade_ids("ETH/USDT") == ETH_TRADES
    assert_trades_exactly_once(run, "BTC/USDT")
    assert_trades_exactly_once(run, "ETH/USDT")
    assert run.gaps().height == 0
    # the book spans two UTC days: each date partition starts with a snapshot
    for date in ("2024-08-08", "2024-08-09"):
        book = run.lake.read("book", "binance", "BTC/USDT", date)
        assert book["is_snapshot"][0]
    # lossless: the journal holds every frame the exchange sent, byte for byte, in order
    journal = [t for f in run.stats["journal_files"] for _, t, _ in iter_journal_lines(f)]
    streamed = [t for t in journal if '@depthSnapshot"' not in t[:40] and '"result"' not in t[:12]]
    assert streamed == [e.frame for e in run.sim.events]
    assert sum('@depthSnapshot"' in t[:40] for t in journal) == 2
    s = run.stats
    assert s["messages"]["btcusdt@trade"] == len(BTC_TRADES)
    assert s["reconnects_total"] == 0 and s["malformed"] == 0
    assert set(s["latency"]) == {"btcusdt@trade", "btcusdt@depth", "ethusdt@trade", "ethusdt@depth"}
    assert s["files_published"]["trades"] >= 2
    assert run.final_health["status"] == "ok"


@pytest.mark.parametrize("refusal", ["429", "418"])
def test_sequence_gap_resyncs_only_that_symbol_while_others_and_trades_flow(
    tmp_path: Path, refusal: str
) -> None:
    async def inject(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 10_000)
        # the resync snapshot is refused once with 429/418 + Retry-After, so ETH stays unsynced
        # for a while and we can watch BTC and ETH trades keep flowing meanwhile
        await sim.fault(f"snapshot_{refusal}", symbol="ETH/USDT", retry_after=0.6)
        await sim.fault("skip", symbol="ETH/USDT", count=3)
        # the replay waits at 12,000 for ETH's second snapshot, so the 8,000 events after it
        # follow the resync however slow the machine is
        await hold_until(sim, cap, 12_000, lambda: cap.status.snapshots.value("ETH/USDT") >= 2)

    run = asyncio.run(run_capture(tmp_path, limit_events=20_000, steps=[inject]))
    skipped = run.sim.symbols["ethusdt"].skipped_update_ids
    assert len(skipped) == 3
    gaps = run.gaps("ETH/USDT")
    assert gaps.height == 1
    g = gaps.row(0, named=True)
    assert g["kind"] == "sequence_gap"
    assert g["prev_update_id"] == skipped[0][0] - 1
    assert g["next_update_id"] == skipped[-1][1] + 1
    assert f"expected U={skipped[0][0]}" in g["detail"]
    assert run.gaps("BTC/USDT").height == 0
    # 429 honoured: one refusal, retried after Retry-After, then synced
    assert run.stats["snapshot_errors"] == {refusal: 1}
    assert run.stats["snapshots"] == {"BTC/USDT": 1, "ETH/USDT": 2}
    assert any(
        e["kind"] == "snapshot_error" and "Retry-After" in e["detail"]
        for e in run.stats["episodes"]
    )
    # no ETH book rows between the gap and the new snapshot; the book is right after it
    eth = run.lake.read("book", "binance", "ETH/USDT")
    after = eth.filter(pl.col("update_id") > g["prev_update_id"])
    assert after["is_snapshot"][0]
    resync_id = int(after["update_id"][0])
    cc = run.crosscheck("ETH/USDT", after_update_id=resync_id)
    assert cc.compared > 10 and cc.matched == cc.compared
    cc_all = run.crosscheck("ETH/USDT")
    assert cc_all.matched == cc_all.compared
    # BTC kept streaming (book rows) and ETH trades kept flowing while ETH was unsynced
    gap_recv = int(eth.filter(pl.col("update_id") <= g["prev_update_id"])["recv_ts_ns"].max())
    resync_recv = int(after["recv_ts_ns"][0])
    btc = run.lake.read("book", "binance", "BTC/USDT")
    assert btc.filter(pl.col("recv_ts_ns").is_between(gap_recv, resync_recv)).height > 0
    eth_trades = run.trades("ETH/USDT")
    assert eth_trades.filter(pl.col("recv_ts_ns").is_between(gap_recv, resync_recv)).height > 0
    assert_trades_exactly_once(run, "ETH/USDT")
    assert_trades_exactly_once(run, "BTC/USDT")
    # /health said so while it lasted, and keeps the episode afterwards
    assert 503 in run.health_codes
    assert any(
        any("ETH/USDT: book not synced" in r for r in b["reasons"]) for b in run.health_bodies
    )
    assert any(e["kind"] == "sequence_gap" for e in run.final_health["recent_episodes"])
    assert run.final_health["status"] == "ok"


@pytest.mark.parametrize("abort", [False, True], ids=["close", "abort"])
def test_dropped_connection_reconnects_and_resyncs(tmp_path: Path, abort: bool) -> None:
    async def inject(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 10_000)
        rec = await sim.fault("drop", abort=abort)
        # at most 500 events (diffs of both books start their resync) are replayed until both
        # books fetched their resync snapshot: the events after it are there to check the
        # resynced books, whatever the machine's load
        await hold_until(
            sim,
            cap,
            int(rec["at_event"]) + 500,
            lambda: all(cap.status.snapshots.value(s) >= 2 for s in ("BTC/USDT", "ETH/USDT")),
        )

    run = asyncio.run(run_capture(tmp_path, limit_events=18_000, steps=[inject]))
    assert run.stats["reconnects"] == {"closed": 1}
    for sym in ("BTC/USDT", "ETH/USDT"):
        gaps = run.gaps(sym)
        rec = gaps.filter(pl.col("kind") == "reconnect")
        assert rec.height == 1 and "closed" in rec["detail"][0]
        assert rec["prev_update_id"][0] is not None
        cc = run.crosscheck(sym, after_update_id=int(rec["prev_update_id"][0]))
        assert cc.compared > 10 and cc.matched == cc.compared
        ids = run.trades(sym)["trade_id"].to_list()
        assert len(ids) == len(set(ids))
        if abort:
            # an abort can swallow frames already on the wire
            assert_trades_accounted(run, sym)
        else:
            assert_trades_exactly_once(run, sym)
    assert any(e["kind"] == "reconnect" for e in run.final_health["recent_episodes"])
    assert run.stats["snapshots"] == {"BTC/USDT": 2, "ETH/USDT": 2}


def test_silence_triggers_watchdog_reconnect(tmp_path: Path) -> None:
    async def inject(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 10_000)
        await sim.fault("silence", seconds=2.0)

    run = asyncio.run(run_capture(tmp_path, limit_events=16_000, steps=[inject], stale_after_s=1.0))
    assert run.stats["reconnects"].get("stale", 0) >= 1
    stale = run.gaps("BTC/USDT").filter(pl.col("kind") == "stale")
    assert stale.height >= 1 and "no message for" in stale["detail"][0]
    for sym in ("BTC/USDT", "ETH/USDT"):
        assert_trades_exactly_once(run, sym)
        cc = run.crosscheck(sym)
        assert cc.compared > 10 and cc.matched == cc.compared
    assert any(
        "silent" in r or "not connected" in r for b in run.health_bodies for r in b["reasons"]
    )


def test_malformed_frame_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = '{"stream":"btcusdt@trade","data":{"e":"trade","t":'

    async def inject(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 8_000, then_speed=None)
        await sim.fault("malformed", text=bad)
        await sim.fault("malformed", text="not json at all")

    caplog.set_level("WARNING", logger="mdpipe.capture")
    run = asyncio.run(run_capture(tmp_path, limit_events=15_000, steps=[inject]))
    assert run.stats["malformed"] == 2
    assert run.stats["reconnects_total"] == 0
    assert run.gaps().height == 0
    assert any(bad in r.getMessage() for r in caplog.records)
    assert sum(e["kind"] == "malformed" for e in run.final_health["recent_episodes"]) == 2
    for sym in ("BTC/USDT", "ETH/USDT"):
        assert_trades_exactly_once(run, sym)
    # the journal keeps what was received, including the bad frames
    journal = [t for f in run.stats["journal_files"] for _, t, _ in iter_journal_lines(f)]
    assert bad in journal and "not json at all" in journal


def test_exchange_restart_reconnects_with_backoff(tmp_path: Path) -> None:
    async def inject(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 8_000)
        await sim.fault("restart", down_s=0.5)

    run = asyncio.run(run_capture(tmp_path, limit_events=16_000, steps=[inject]))
    r = run.stats["reconnects"]
    # while the exchange is down every dial fails; the loop backs off and keeps trying
    assert r.get("closed", 0) == 1 and r.get("error", 0) >= 1, r
    for sym in ("BTC/USDT", "ETH/USDT"):
        assert run.gaps(sym).filter(pl.col("kind") == "reconnect").height >= 1
        assert_trades_exactly_once(run, sym)
        cc = run.crosscheck(sym)
        assert cc.compared > 10 and cc.matched == cc.compared


def test_planned_reconnect_switches_connections_without_a_hole(tmp_path: Path) -> None:
    # max_connection_age_s stands in for Binance's 24 h limit
    run = asyncio.run(
        run_capture(tmp_path, limit_events=12_000, speed=20.0, max_connection_age_s=0.6)
    )
    assert run.stats["reconnects"].get("planned", 0) >= 2, run.stats["reconnects"]
    assert sum(e["kind"] == "planned_reconnect" for e in run.stats["episodes"]) >= 2
    # make-before-break: nothing lost, nothing doubled, the book never left sync
    assert run.gaps().height == 0
    for sym in ("BTC/USDT", "ETH/USDT"):
        assert_trades_exactly_once(run, sym)
        bbo = run.lake.read("bbo", "binance", sym)
        assert bbo["update_id"].is_duplicated().sum() == 0
        cc = run.crosscheck(sym)
        assert cc.compared > 50 and cc.matched == cc.compared
    assert run.stats["snapshots"] == {"BTC/USDT": 1, "ETH/USDT": 1}


def test_metrics_endpoint_exposes_the_documented_names(tmp_path: Path) -> None:
    from mdpipe.capture.metrics import METRIC_NAMES

    scraped: list[str] = []

    async def scrape(sim: ExchangeSim, cap: Capture) -> None:
        await wait_pos(sim, 5_000, then_speed=None)
        # after a flush, so that the publish metrics have samples
        await cap.events.wait_for(lambda: cap.status.flushes.total() > 0)
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{cap.metrics_port}/metrics") as r,
        ):
            scraped.append(await r.text())

    asyncio.run(run_capture(tmp_path, limit_events=8_000, steps=[scrape]))
    (text,) = scraped
    for name in METRIC_NAMES:
        assert name in text, name
    assert 'mdpipe_capture_messages_total{stream="btcusdt@trade",venue="binance"}' in text
    assert "mdpipe_capture_latency_seconds_bucket" in text


def test_backoff_is_exponential_with_equal_jitter_and_capped() -> None:
    cap = Capture(
        CaptureConfig(symbols=("BTC/USDT",), reconnect_initial_s=1.0, reconnect_max_s=60.0)
    )
    for attempt in range(12):
        step = min(60.0, 2.0**attempt)
        draws = [cap.backoff_s(attempt) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws)
        assert max(draws) - min(draws) > step / 4  # jittered, not a fixed delay


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="at least one symbol"):
        CaptureConfig(symbols=())
    with pytest.raises(ValueError, match="reconnect_max_s"):
        CaptureConfig(symbols=("BTC/USDT",), reconnect_initial_s=5, reconnect_max_s=1)
    with pytest.raises(ValueError, match="flush_interval_s"):
        CaptureConfig(symbols=("BTC/USDT",), flush_interval_s=0)
    with pytest.raises(ValueError, match="unified"):
        CaptureConfig(symbols=("BTCUSDT",))


def test_clock_offset_and_latency_against_a_retimed_exchange(tmp_path: Path) -> None:
    """Known answer: the bundled recording's exchange clock ran 1.25-1.28 s ahead of the
    recorder's (SOURCES.md). Retimed, the simulator keeps that relation against our clock, so
    both estimators must find it, and corrected latency is the recorded jitter around it."""

    async def retime(sim: ExchangeSim, cap: Capture) -> None:
        assert 1_240 <= sim.recorded_offset_ms <= 1_290

    run = asyncio.run(
        run_capture(
            tmp_path, limit_events=6_000, speed=10.0, steps=[retime], sim_options={"retime": True}
        )
    )
    off = run.stats["clock_offset_ms"]
    assert 1_200 <= off["rest"] <= 1_300, off
    assert off["rest_rtt"] < 100, off
    assert 1_200 <= off["events"] <= 1_320, off
    lat = run.stats["latency"]
    assert set(lat) == {"btcusdt@trade", "btcusdt@depth", "ethusdt@trade", "ethusdt@depth"}
    for s in lat.values():
        assert -100 <= s["p50_ms"] <= 100 and s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] < 1_000
