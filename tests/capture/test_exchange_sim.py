"""The local Binance against a real ccxt.pro.binance client, on the bundled recordings."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from mdpipe.lake import iter_journal_lines
from mdpipe.venues.binance.simulator import ExchangeSim, load_recording

DATA = Path(__file__).resolve().parents[2] / "data" / "binance-spot-2024-08-08"
BTC = [DATA / "btcusdt_20240808.gz", DATA / "btcusdt_20240809.gz"]


def book_tickers(paths: list[Path]) -> dict[int, tuple[float, float, float, float]]:
    out: dict[int, tuple[float, float, float, float]] = {}
    for p in paths:
        for _, text, _ in iter_journal_lines(p):
            if "@bookTicker" in text[:40]:
                d = json.loads(text)["data"]
                out[int(d["u"])] = (float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]))
    return out


def ccxt_client(sim: ExchangeSim) -> Any:
    ex = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    ex.urls["api"]["public"] = sim.rest_url + "/api/v3"
    ex.urls["api"]["ws"]["spot"] = sim.ws_url
    return ex


def test_load_recording_orders_events_and_seeds_snapshot() -> None:
    events, states = load_recording(BTC)
    assert [e.recv_ns for e in events] == sorted(e.recv_ns for e in events)
    # markets are keyed <venue>:<exchange id> (the simulator serves several venues)
    assert states["binance:btcusdt"].snapshot_id == 50093239218
    assert len(states["binance:btcusdt"].bids) == 1000
    kinds = {e.kind for e in events}
    assert kinds == {"depth", "trade", "bookTicker"}
    # REST snapshot lines are not streamed
    assert not any(e.frame.startswith('{"lastUpdateId"') for e in events)


async def _run_ccxt_against_sim() -> tuple[ExchangeSim, list[int], int, int]:
    sim = ExchangeSim(BTC, speed=None, start_grace_s=0.5)
    await sim.start()
    tickers = book_tickers(BTC)
    ex = ccxt_client(sim)
    matched = mismatched = 0
    trade_ids: list[int] = []
    try:
        await ex.load_markets()
        assert list(ex.markets) == ["BTC/USDT"]

        async def books() -> None:
            nonlocal matched, mismatched
            while True:
                ob = await ex.watch_order_book("BTC/USDT")
                t = tickers.get(int(ob["nonce"]))
                if t is None:
                    continue
                top = (ob["bids"][0][0], ob["bids"][0][1], ob["asks"][0][0], ob["asks"][0][1])
                if top == t:
                    matched += 1
                else:
                    mismatched += 1

        async def trades() -> None:
            while True:
                for tr in await ex.watch_trades("BTC/USDT"):
                    trade_ids.append(int(tr["id"]))

        tasks = [asyncio.create_task(books()), asyncio.create_task(trades())]
        await asyncio.wait_for(sim.finished.wait(), 120)
        await asyncio.sleep(0.3)  # let the last frames drain through ccxt
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await ex.close()
        await sim.stop()
    return sim, trade_ids, matched, mismatched


def test_ccxt_pro_syncs_book_and_receives_every_trade() -> None:
    sim, trade_ids, matched, mismatched = asyncio.run(_run_ccxt_against_sim())
    st = sim.symbols["btcusdt"]
    # every trade of the recording went out once and ccxt got each of them
    assert st.sent_trade_ids == list(range(3735683259, 3735703162 + 1))
    assert sorted(trade_ids) == st.sent_trade_ids
    # ccxt coalesces diffs when it falls behind, so only some nonces land on a bookTicker u;
    # those that do must agree exactly with the recorded best bid/ask
    assert mismatched == 0
    assert matched > 50
    # the simulator's own book ends at the last replayed diff
    assert st.last_update_id == 50093696318


async def _depth(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], str]:
    async with session.get(url) as r:
        return r.status, await r.json(), r.headers.get("Retry-After", "")


def test_faults_over_http_control_endpoint() -> None:
    async def run() -> None:
        sim = ExchangeSim(BTC, speed=20, limit_events=3000, start_grace_s=0.0)
        await sim.start()
        try:
            async with aiohttp.ClientSession() as s:
                depth = f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT&limit=5"
                async with s.post(
                    f"{sim.rest_url}/_sim/fault", json={"kind": "snapshot_429", "retry_after": 2}
                ) as r:
                    assert r.status == 200
                status, body, retry = await _depth(s, depth)
                assert (status, retry) == (429, "2")
                status, body, _ = await _depth(s, depth)
                assert status == 200 and body["lastUpdateId"] == 50093239218
                assert len(body["bids"]) == 5
                async with s.post(f"{sim.rest_url}/_sim/fault", json={"kind": "nope"}) as r:
                    assert r.status == 400
                async with s.ws_connect(sim.ws_url) as ws:
                    await ws.send_str(
                        json.dumps(
                            {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 7}
                        )
                    )
                    assert json.loads((await ws.receive()).data) == {"result": None, "id": 7}
                    prev_u = None
                    jumps = 0
                    hole = (0, 0)
                    for i in range(20):
                        if i == 5:
                            await sim.fault("skip", symbol="BTC/USDT", count=2)
                        frame = json.loads((await ws.receive()).data)
                        assert frame["stream"] == "btcusdt@depth@100ms"
                        d = frame["data"]
                        if prev_u is not None and d["U"] != prev_u + 1:
                            jumps += 1
                            hole = (prev_u + 1, d["U"] - 1)
                        prev_u = d["u"]
                    # the two skipped diffs make exactly one hole, of exactly those ids
                    skipped = sim.symbols["btcusdt"].skipped_update_ids
                    assert jumps == 1 and len(skipped) == 2
                    assert hole == (skipped[0][0], skipped[1][1])
                # after the skipped diffs the snapshot still covers them: lastUpdateId is the last
                # replayed u, not the last u delivered
                status, body, _ = await _depth(s, depth)
                assert body["lastUpdateId"] == sim.symbols["btcusdt"].last_update_id
        finally:
            await sim.stop()

    asyncio.run(run())


def test_raw_ws_path_sends_unwrapped_payload_bytes() -> None:
    async def run() -> None:
        sim = ExchangeSim(BTC, speed=None, limit_events=200, start_grace_s=0.0)
        await sim.start()
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.ws_connect(f"{sim.rest_url.replace('http', 'ws')}/ws/btcusdt@trade") as ws,
            ):
                text = (await ws.receive()).data
                first_trade = next(e for e in sim.events if e.kind == "trade")
                assert first_trade.frame == '{"stream":"btcusdt@trade","data":' + text + "}"
        finally:
            await sim.stop()

    asyncio.run(run())


@pytest.mark.parametrize("speed", ["0", "-1"])
def test_bad_parameters_are_rejected(speed: str) -> None:
    with pytest.raises(ValueError, match="speed"):
        ExchangeSim(BTC, speed=float(speed))
    with pytest.raises(ValueError, match="at least one"):
        ExchangeSim([])
