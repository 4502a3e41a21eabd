"""The Binance venues conform to the plug-in contract, and their parts agree with each other:
what the transport subscribes to, the venue routes; what it journals, the normalizer reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import ccxt.pro as ccxtpro
import polars as pl
import pytest

from mdpipe import venues
from mdpipe.venues import RawLines, UnknownStream, Venue
from mdpipe.venues.base import BookSync, StreamRoute
from tests.conftest import BTC_FILES

SPOT, USDM = venues.get("binance"), venues.get("binanceusdm")
COINM = venues.get("binancecoinm")
MARKET = {"id": "BTCUSDT", "lowercaseId": "btcusdt", "symbol": "BTC/USDT"}
COINM_MARKET = {"id": "BTCUSD_PERP", "lowercaseId": "btcusd_perp", "symbol": "BTC/USD:BTC"}


@pytest.mark.parametrize(
    "venue", [SPOT, USDM, COINM], ids=["binance", "binanceusdm", "binancecoinm"]
)
def test_protocol_conformance(venue: Venue) -> None:
    assert isinstance(venue, Venue)
    assert venue.name in venues.names()
    norm = venue.normalizer()
    assert norm.venue == venue.name
    for method in ("feed", "finish", "awaiting_snapshot", "force_resync", "sync_stats",
                   "is_synced", "book_state", "seed_last_trade_id", "rest_trades"):  # fmt: skip
        assert callable(getattr(norm, method)), method
    t = venue.transport("ws://127.0.0.1:1/stream", "http://127.0.0.1:1")
    assert t.venue == venue.name and issubclass(t.ccxt_class, ccxtpro.Exchange)
    # every stream the transport subscribes to is routed back to this market
    market = COINM_MARKET if venue is COINM else MARKET
    key = str(market["lowercaseId"])
    names = t.stream_names(market)
    # futures also subscribe to mark price and funding
    kinds = ["depth", "trade", "bbo"] + (["mark"] if venue is not SPOT else [])
    assert [venue.route(n) for n in names] == [StreamRoute(k, key) for k in kinds]
    assert t.market_key(market) == key
    assert (
        venue.unified_symbol(str(market["id"]))
        == {
            "binance": "BTC/USDT",
            "binanceusdm": "BTC/USDT:USDT",
            "binancecoinm": "BTC/USD:BTC",
        }[venue.name]
    )
    if venue is COINM:
        assert venue.unified_symbol("ETHUSD_240927") == "ETH/USD:ETH-240927"
        with pytest.raises(ValueError, match="expected <BASE>USD_PERP or <BASE>USD_YYMMDD"):
            venue.unified_symbol("BTCUSDT")


def test_subscribe_messages_and_answers() -> None:
    ex = ccxtpro.binance()
    t = SPOT.transport(None, None)
    sub = t.subscribe_request(ex, "ws://x/ws/0", ["btcusdt@trade"])
    assert sub.message == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@trade"],
        "id": int(sub.request_id),
    }
    unsub = t.unsubscribe_request(ex, "ws://x/ws/0", ["btcusdt@trade"])
    assert unsub.message["method"] == "UNSUBSCRIBE" and unsub.request_id != sub.request_id
    assert t.is_control('{"result":null,"id":1}') and not t.is_control('{"stream":"x@trade"}')
    ok = t.control_answer({"result": None, "id": 7})
    assert ok is not None and ok.request_id == "7" and ok.error is None
    bad = t.control_answer({"error": {"code": 2, "msg": "Invalid request"}, "id": 8})
    assert bad is not None and bad.request_id == "8" and "refused" in (bad.error or "")
    assert t.control_answer({"result": None}) is None


def test_a_journaled_snapshot_is_read_back_as_that_markets_snapshot() -> None:
    t = SPOT.transport(None, None)
    line = t.wrap_snapshot(
        MARKET, '{"lastUpdateId":5,"bids":[["1.0","2.0"]],"asks":[["3.0","1.0"]]}'
    )
    labels = SPOT.stream_labels(pl.Series([line]))
    assert labels.to_list() == ["btcusdt@depthSnapshot"]
    assert SPOT.route(labels[0]) == StreamRoute("snapshot", "btcusdt")
    norm = SPOT.normalizer()
    b = norm.feed(
        RawLines(pl.Series([1], dtype=pl.Int64), pl.Series([line]),
                 pl.Series([1], dtype=pl.Int64), "test")
    )  # fmt: skip
    assert not b.errors
    state = norm.book_state("BTC/USDT")
    assert state is not None and state[1] == 5 and state[0].height == 2


def test_routing_never_guesses() -> None:
    for bad in ("btcusdt@kline_1m", "btcusdt", "@trade", "btcusdt@depthX"):
        with pytest.raises(UnknownStream, match=f"unknown binance stream '{bad}'"):
            SPOT.route(bad)
    frames = pl.Series([
        '{"stream":"btcusdt@depth@100ms","data":{}}',
        '{"e":"trade","E":1,"s":"ETHUSDT","t":1}',
        '{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}',
        '{"result":null,"id":1}',
        "garbage",
    ])  # fmt: skip
    assert SPOT.stream_labels(frames).to_list() == [
        "btcusdt@depth@100ms", "ethusdt@trade", "btcusdt@bookTicker", "control", "other",
    ]  # fmt: skip
    assert SPOT.depth_market(frames[0]) == "btcusdt"
    assert SPOT.depth_market('{"e":"depthUpdate","E":1,"s":"ETHUSDT","U":1}') == "ethusdt"
    assert SPOT.depth_market('{"stream":"btcusdt@depthSnapshot","data":{}}') is None
    assert SPOT.depth_market(frames[1]) is None


def test_sequence_rules_follow_binance_documentation() -> None:
    # spot: first diff U <= L+1 <= u, then U == prev u + 1; USD-M: U <= L <= u, then pu == prev u
    assert SPOT.rules.bridges(100, 101, 105) and not SPOT.rules.bridges(100, 102, 105)
    assert SPOT.rules.covered_by_snapshot(100, 100) and not USDM.rules.covered_by_snapshot(100, 100)
    assert USDM.rules.bridges(100, 95, 100) and not USDM.rules.bridges(100, 101, 105)
    assert SPOT.rules.continues(105, 106, 110, -1) and not SPOT.rules.continues(105, 107, 110, -1)
    assert USDM.rules.continues(105, 200, 210, 105) and not USDM.rules.continues(105, 106, 110, 104)
    s = BookSync(USDM.rules)
    s.on_snapshot(1, 100)
    assert s.on_diff(2, 95, 100, 94) == ([2], [])
    out, gaps = s.on_diff(3, 101, 103, 99)
    assert out == [] and "expected pu=100, got pu=99" in gaps[0].detail


def _gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def test_detect_by_content_and_by_dump_name(tmp_path: Path) -> None:
    assert venues.detect(BTC_FILES[0]) is SPOT
    with gzip.open(BTC_FILES[0], "rt") as f:
        first = [next(f) for _ in range(50)]
    futures = [ln.replace('"u":', '"pu":0,"u":', 1) if "depthUpdate" in ln else ln for ln in first]
    assert venues.detect(_gz(tmp_path / "f.gz", futures)) is USDM
    assert venues.detect(first[1]) is SPOT  # a single journal line
    assert venues.detect(tmp_path / "BTCUSDT-aggTrades-2024-08-08.zip") is SPOT
    with pytest.raises(venues.UnknownVenue, match="no venue recognises this content"):
        venues.detect('1723161254087085768 {"ch":"trade","m":"X-Y"}')
    assert SPOT.dump_of(tmp_path / "BTCUSDT-trades-2024-08-08.gz") is None  # .gz: a journal


def test_registry_refuses_what_is_not_a_venue_and_name_clashes() -> None:
    with pytest.raises(TypeError, match="is not a Venue: it lacks"):
        venues.register(object())  # type: ignore[arg-type]
    venues.register(SPOT)  # the same object again: fine
    clash = type(SPOT)("binance")
    with pytest.raises(ValueError, match="venue 'binance' is already registered"):
        venues.register(clash)
    assert venues.get("binance") is SPOT


def test_unknown_stream_in_a_journal_names_file_line_and_stream(tmp_path: Path) -> None:
    from mdpipe.ingest import import_paths
    from mdpipe.lake import Lake

    with gzip.open(BTC_FILES[0], "rt") as f:
        lines = [next(f).rstrip("\n") for _ in range(20)]
    lines.insert(5, '1723161254087085769 {"stream":"btcusdt@kline_1m","data":{"e":"kline"}}')
    path = _gz(tmp_path / "k.gz", lines)
    report = import_paths([path], Lake(tmp_path / "lake"))
    assert [e.message for e in report.errors if e.line == 6] == [
        "unknown message: unknown binance stream 'btcusdt@kline_1m'; binance streams are "
        "<symbol>@{depth,depth@100ms,depth@250ms,depth@500ms,depth@0ms,trade,aggTrade,"
        "bookTicker,depthSnapshot}, e.g. btcusdt@trade"
    ]
    assert json.loads(lines[5].split(" ", 1)[1])["stream"] == "btcusdt@kline_1m"


def test_a_file_no_venue_reads_as_a_dump_is_refused_naming_what_they_read(tmp_path: Path) -> None:
    from mdpipe.cli import main as cli_main

    csv = tmp_path / "prices.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(venues.UnknownVenue) as err:
        venues.recognise(csv)
    assert str(err.value) == (
        f"{csv}: no venue reads this file as a dump; dump names read: "
        "binance: BTCUSDT-trades-2024-08-08.csv or BTCUSDT-aggTrades-2024-08-08.zip"
    )
    assert cli_main(["import", str(csv), "--lake", str(tmp_path / "lake")]) == 2
    assert not (tmp_path / "lake").exists() or not list((tmp_path / "lake").rglob("*.parquet"))


def test_forcing_a_venue_keeps_the_files_market(tmp_path: Path) -> None:
    r = venues.recognise(BTC_FILES[0], "binanceusdm")
    assert r.venue is USDM and r.dump is None and r.symbol_hint == "btcusdt"
    assert venues.recognise(BTC_FILES[0]).venue is SPOT
