"""Several venues in one capture: spot, USD-M and COIN-M replayed by the local exchange at once.

Each venue has its own connection, book sync, gaps and health; one online engine sees all of
them; and what the capture writes equals what `mdpipe import` makes of the same frames (the
recordings, with real-shaped `markPrice@1s` frames added to the futures ones).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import aiohttp
import polars as pl
import pytest

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.live_signals import attach_live_signals
from mdpipe.capture.multi import MultiCapture, make_capture
from mdpipe.core.crossvenue import CrossVenueConfig
from mdpipe.crosscheck import book_vs_bbo
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.venues.binance.simulator import ExchangeSim

ROOT = Path(__file__).resolve().parents[2]
SPOT_BTC = ROOT / "data" / "binance-spot-2024-08-08" / "btcusdt_20240808.gz"
USDM_ETH = ROOT / "data" / "binance-multi-2024" / "usdm_ethusdt_20240808.gz"
COINM_BTC = ROOT / "data" / "binance-multi-2024" / "cm_btcusd_perp_20240808.gz"
MARKETS = {
    "binance": "BTC/USDT",
    "binanceusdm": "ETH/USDT:USDT",
    "binancecoinm": "BTC/USD:BTC",
}
LINES = 8000
# low enough that the minute the spot and COIN-M BTC heads share gives cross-venue signals
CROSS = CrossVenueConfig(
    z_window=200, z_min_count=50, z_threshold=2.0, k_spreads=1.0, leader="binancecoinm",
    signal_cooldown_seconds=2.0, null_shuffles=5,
)  # fmt: skip


def _head(src: Path, dst: Path, mark_stream: str | None) -> Path:
    """The first LINES lines of a real recording; futures ones get a `markPrice@1s` frame
    (Binance's documented shape) after the first frame of each exchange second."""
    last_sec = None
    n_mark = 0
    with gzip.open(src, "rt") as f, gzip.open(dst, "wt") as out:
        for i, line in enumerate(f):
            if i >= LINES:
                break
            out.write(line)
            recv, _, text = line.partition(" ")
            if mark_stream is None or not text.startswith('{"stream"'):
                continue
            data = json.loads(text)["data"]
            sec = int(data.get("E", 0)) // 1000
            if not sec or sec == last_sec:
                continue
            last_sec = sec
            n_mark += 1
            payload = {
                "e": "markPriceUpdate",
                "E": sec * 1000 + 1000,
                "s": data["s"],
                "p": f"{2680 + n_mark / 100:.8f}",
                "P": "0.00000000",
                "i": f"{2679 + n_mark / 100:.8f}",
                "r": "0.00010000",
                "T": 1723190400000,
            }
            frame = {"stream": mark_stream, "data": payload}
            out.write(f"{recv} {json.dumps(frame, separators=(',', ':'))}\n")
    return dst


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("rec")
    return [
        _head(SPOT_BTC, d / "btcusdt.gz", None),
        _head(USDM_ETH, d / "usdm_ethusdt.gz", "ethusdt@markPrice@1s"),
        _head(COINM_BTC, d / "cm_btcusd_perp.gz", "btcusd_perp@markPrice@1s"),
    ]


async def _capture(
    recordings: list[Path], lake_dir: Path
) -> tuple[MultiCapture, ExchangeSim, dict]:  # type: ignore[type-arg]
    sim = ExchangeSim(recordings, speed=None, start_grace_s=1.0)
    await sim.start()
    assert sim.venues == sorted(MARKETS)
    cmd = sim.capture_command()
    assert "--markets binance:BTC/USDT,binancecoinm:BTC/USD:BTC,binanceusdm:ETH/USDT:USDT" in cmd
    config = CaptureConfig(
        markets=tuple(f"{v}:{s}" for v, s in MARKETS.items()),
        lake=str(lake_dir),
        ws_url=f"ws://127.0.0.1:{sim.port}/{{venue}}/stream",
        rest_url=sim.rest_url,
        # the futures recordings carry depth@0ms (spot: depth@100ms, the capture's default)
        channels=tuple(
            f"{v}:{c}"
            for v in ("binanceusdm", "binancecoinm")
            for c in ("depth@0ms", "trade", "bookTicker", "markPrice@1s")
        ),
        flush_interval_s=0.5,
        metrics_port=0,
    )
    cap = make_capture(config)
    assert isinstance(cap, MultiCapture)
    live = attach_live_signals(cap, required=True, cross_venue_config=CROSS)
    assert live is not None
    await cap.start()
    try:
        await asyncio.wait_for(sim.finished.wait(), 180)
        want = sum(len(st.sent_trade_ids) for st in sim.markets.values())
        await cap.events.wait_for(
            lambda: (
                sum(c.status.trades.total() for c in cap.captures.values()) >= want
                and cap.is_idle(synced=True)
            ),
            60,
        )
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{cap.metrics_port}/health") as r:
                health = (r.status, await r.json())
            async with s.get(f"http://127.0.0.1:{cap.metrics_port}/metrics") as r:
                metrics = await r.text()
    finally:
        await cap.stop()
        await sim.stop()
    live.flush()  # the end of the replay: every held event is released
    return cap, sim, {"health": health, "metrics": metrics, "live": live}


@pytest.fixture(scope="module")
def captured(recordings: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    d = tmp_path_factory.mktemp("cap")
    cap, sim, extra = asyncio.run(_capture(recordings, d / "lake"))
    imported = Lake(d / "imported")
    report = import_paths(recordings, imported)
    assert report.ok, report.errors[:3]
    return {"lake": Lake(d / "lake"), "imported": imported, "cap": cap, "sim": sim, **extra}


def _no_recv(df: pl.DataFrame, key: str) -> pl.DataFrame:
    return df.drop("recv_ts_ns").sort(key)


def test_each_venue_has_its_own_connection_sync_gaps_and_health(captured: dict) -> None:  # type: ignore[type-arg]
    cap: MultiCapture = captured["cap"]
    assert sorted(cap.captures) == sorted(MARKETS)
    for venue, c in cap.captures.items():
        assert c.config.symbols == (MARKETS[venue],)
        assert c.config.ws_url.endswith(f"/{venue}/stream")  # type: ignore[union-attr]
        assert ("depth@0ms" in c.config.channels) == (venue != "binance")
        assert c.synced(MARKETS[venue])
        assert c.status.snapshots.total() == 1  # one sync each, no resync
        assert c.get_stats()["gaps_total"] == 0
        # each venue's journal
        assert list((captured["lake"].root / "raw").glob(f"venue={venue}/date=*/*.jsonl.gz"))
    code, body = captured["health"]
    assert code == 200 and body["healthy"] and sorted(body["venues"]) == sorted(MARKETS)
    for venue in MARKETS:
        assert f'mdpipe_capture_connected{{venue="{venue}"}} 1.0' in captured["metrics"]


@pytest.mark.parametrize("venue", sorted(MARKETS))
def test_captured_tables_equal_the_import_of_the_same_frames(captured: dict, venue: str) -> None:  # type: ignore[type-arg]
    lake, imported = captured["lake"], captured["imported"]
    sym = MARKETS[venue]
    trades = lake.read("trades", venue, sym)
    assert trades.height > 100
    assert _no_recv(trades, "trade_id").equals(
        _no_recv(imported.read("trades", venue, sym), "trade_id")
    )
    assert _no_recv(lake.read("bbo", venue, sym), "update_id").equals(
        _no_recv(imported.read("bbo", venue, sym), "update_id")
    )
    mark = lake.read("mark", venue, sym)
    assert _no_recv(mark, "exch_ts_ns").equals(
        _no_recv(imported.read("mark", venue, sym), "exch_ts_ns")
    )
    assert (mark.height > 20) == (venue != "binance")
    # the book: the same diffs applied after the same sync, every bookTicker matched
    book = lake.read("book", venue, sym)
    diffs = book.filter(~pl.col("is_snapshot")).drop("recv_ts_ns")
    idiffs = imported.read("book", venue, sym).filter(~pl.col("is_snapshot")).drop("recv_ts_ns")
    assert diffs.equals(idiffs.filter(pl.col("update_id") >= diffs["update_id"].min()))
    check = book_vs_bbo(book, lake.read("bbo", venue, sym))
    assert check.ok and check.compared > 50, check.mismatches
    if venue == "binancecoinm":  # inverse: base_qty from ccxt's contractSize (100 USD)
        assert (trades["base_qty"] - trades["qty"] * 100 / trades["price"]).abs().max() < 1e-12  # type: ignore[operator]


def test_one_online_engine_sees_every_venue(captured: dict) -> None:  # type: ignore[type-arg]
    live = captured["live"]
    assert sorted(live.engines) == sorted(MARKETS.items())
    for (venue, sym), eng in live.engines.items():
        assert eng.get_stats()["events"] > 100, (venue, sym)


def test_markets_flag_old_flags_and_bad_markets() -> None:
    import argparse

    from mdpipe.capture.cli import add_capture_args, build_config
    from mdpipe.capture.daemon import Capture

    p = argparse.ArgumentParser()
    add_capture_args(p)
    c = build_config(
        p.parse_args(
            [
                "--markets",
                "binance:BTC/USDT,binanceusdm:BTC/USDT:USDT,binancecoinm:BTC/USD:BTC,"
                "binance:ETH/USDT",
                "--ws-url",
                "ws://127.0.0.1:9/{venue}/stream",
            ]
        ),
        {},
    )
    assert c.by_venue() == {
        "binance": ("BTC/USDT", "ETH/USDT"),
        "binanceusdm": ("BTC/USDT:USDT",),
        "binancecoinm": ("BTC/USD:BTC",),
    }
    one = c.for_venue("binancecoinm")
    assert one.symbols == ("BTC/USD:BTC",) and one.ws_url == "ws://127.0.0.1:9/binancecoinm/stream"
    assert isinstance(make_capture(c), MultiCapture)
    # the old form keeps working, and one venue given as --markets is a plain Capture
    old = build_config(p.parse_args(["--venue", "binanceusdm", "--symbols", "ETH/USDT:USDT"]), {})
    assert old.by_venue() == {"binanceusdm": ("ETH/USDT:USDT",)}
    assert type(make_capture(old)) is Capture
    single = build_config(p.parse_args(["--markets", "binancecoinm:ETH/USD:ETH"]), {})
    cap = make_capture(single)
    assert type(cap) is Capture and cap.venue == "binancecoinm"
    for bad, why in (
        ("binance-BTC/USDT", "markets are venue:SYMBOL"),
        ("binance:BTCUSDT", "markets are venue:SYMBOL"),
        ("binance:BTC/USDT,binance:BTC/USDT", "listed twice"),
    ):
        with pytest.raises(ValueError, match=why):
            build_config(p.parse_args(["--markets", bad]), {})


def test_each_venues_journal_reimports_to_the_same_lake(captured: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The raw journal of every venue (what capture received, with receive times) imports to
    exactly the rows capture wrote: one normalizer for live and import."""
    lake: Lake = captured["lake"]
    again = Lake(tmp_path / "again")
    report = import_paths([lake.root / "raw"], again)
    assert report.ok, report.errors[:3]
    for venue, sym in MARKETS.items():
        for table, key in (("trades", "trade_id"), ("bbo", "update_id"), ("mark", "exch_ts_ns")):
            assert (
                lake.read(table, venue, sym)
                .sort(key)
                .equals(again.read(table, venue, sym).sort(key))
            ), (venue, table)
        diffs = lake.read("book", venue, sym).filter(~pl.col("is_snapshot"))
        assert diffs.equals(again.read("book", venue, sym).filter(~pl.col("is_snapshot")))


def test_live_cross_venue_signals_equal_the_batch_step_on_the_captured_lake(captured: dict) -> None:  # type: ignore[type-arg]
    """The capture's online engines fed one cross-venue engine per pair (spot BTC/USDT and
    COIN-M BTC/USD:BTC: one underlying); the batch step over the features of the lake the
    capture wrote gives the same `cross_venue` signals, ids and settings id included."""
    from mdpipe.core.kernel import SIGNAL_COLUMNS
    from mdpipe.pipeline import steps
    from mdpipe.pipeline.crossvenue import CrossPart, crossvenue_step

    lake: Lake = captured["lake"]
    live = captured["live"]
    assert [(p.venue_a, p.venue_b) for p in live.cross] == [("binance", "binancecoinm")]
    for part in steps.raw_parts(lake):
        steps.features_step(lake, part)
    dates = {p.date for p in steps.raw_parts(lake)}
    assert dates == {"2024-08-08"}
    batch = crossvenue_step(
        lake, CrossPart("2024-08-08", "BTC"), CROSS, settings_id=live.cross_settings_id
    ).signals
    files = sorted((lake.root / "live" / "signals").rglob("*.parquet"))
    got = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    cross = got.filter(pl.col("signal_type") == "cross_venue")
    # everything but `source`, which names the driver: 'live' here, 'batch' there
    cols = [c for c in (*SIGNAL_COLUMNS, "leader_venue", "leader_symbol") if c != "source"]
    key = ["ts_ns", "venue", "symbol", "signal_id"]
    assert batch.height >= 3 and set(batch["trigger"]) == {"basis_z", "leader_move"}
    assert cross.select(cols).sort(key).equals(batch.select(cols).sort(key))
    assert set(cross["source"]) == {"live"} and set(batch["source"]) == {"batch"}
    assert set(cross["leader_venue"]) == {"binancecoinm"}
    assert cross["recv_ts_ns"].null_count() == 0
    # the per-market signals keep the features/detectors settings id
    assert set(got.filter(pl.col("signal_type") != "cross_venue")["settings_id"]) <= {
        live.settings_id
    }
