"""Import of every file in data/binance-multi-2024/: the facts its SOURCES.md states.

COIN-M (``binancecoinm``, inverse contracts) and USD-M (``binanceusdm``) recordings: books rebuilt
from the lake equal the recorded bookTicker at every matching update id, trade counts and id
ranges are the stated ones, sizes of inverse contracts keep their contracts and gain their BTC/ETH
equivalent, and the receive-minus-exchange offset of each market is reported, not hidden.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from mdpipe.crosscheck import book_vs_bbo
from mdpipe.ingest import ImportReport, import_paths
from mdpipe.lake import Lake
from mdpipe.venues import recognise

ROOT = Path(__file__).resolve().parents[2]
MULTI = ROOT / "data" / "binance-multi-2024"
FILES = sorted(MULTI.glob("*.gz"))

# (venue, symbol) -> [(first trade id, last trade id, trades)] per recording (SOURCES.md)
TRADES = {
    ("binancecoinm", "BTC/USD:BTC"): [(849714402, 849719636, 2286 + 2949)],
    ("binancecoinm", "ETH/USD:ETH"): [(805376266, 805379860, 1732 + 1863)],
    ("binanceusdm", "BTC/USDT:USDT"): [(5182005737, 5182016437, 974 + 9727)],
    ("binanceusdm", "ETH/USDT:USDT"): [
        (4217896584, 4217910238, 1640 + 12015),
        (4308068523, 4308082598, 14076),
    ],
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, ImportReport]:
    lake = Lake(tmp_path_factory.mktemp("lake"))
    report = import_paths(FILES, lake)
    assert report.ok, report.errors[:5]
    return lake, report


def test_every_file_is_recognised_as_its_venue() -> None:
    assert len(FILES) == 9
    for f in FILES:
        want = "binancecoinm" if f.name.startswith("cm_") else "binanceusdm"
        assert recognise(f).venue.name == want, f  # type: ignore[union-attr]


@pytest.mark.parametrize("market", sorted(TRADES))
def test_trade_counts_and_id_ranges_are_the_stated_ones(
    imported: tuple[Lake, ImportReport], market: tuple[str, str]
) -> None:
    lake, _ = imported
    t = lake.read("trades", *market).sort("trade_id")
    ranges = TRADES[market]
    assert t.height == sum(n for _, _, n in ranges)
    assert t["trade_id"].n_unique() == t.height
    for first, last, n in ranges:
        part = t.filter(pl.col("trade_id").is_between(first, last))
        assert part.height == n and part["trade_id"].min() == first
        assert part["trade_id"].max() == last
        assert (part["trade_id"].diff().drop_nulls() == 1).all()


@pytest.mark.parametrize(
    ("venue", "symbol", "expected"),
    [
        ("binancecoinm", "BTC/USD:BTC", 1885),
        ("binancecoinm", "ETH/USD:ETH", 2278),
        ("binanceusdm", "BTC/USDT:USDT", 625),
        ("binanceusdm", "ETH/USDT:USDT", 1385),
    ],
)
def test_book_rebuilt_from_the_lake_equals_every_book_ticker(
    imported: tuple[Lake, ImportReport], venue: str, symbol: str, expected: int
) -> None:
    lake, _ = imported
    check = book_vs_bbo(lake.read("book", venue, symbol), lake.read("bbo", venue, symbol))
    assert (check.compared, check.matched) == (expected, expected), check.mismatches


def test_coinm_sizes_are_contracts_with_their_base_currency_equivalent(
    imported: tuple[Lake, ImportReport],
) -> None:
    lake, _ = imported
    # first BTCUSD_PERP trade: "t":849714402,"p":"61804.8","q":"4","m":false (4 contracts)
    t = lake.read("trades", "binancecoinm", "BTC/USD:BTC").filter(pl.col("trade_id") == 849714402)
    assert t.row(0, named=True) | {"base_qty": None} == {
        "venue": "binancecoinm",
        "symbol": "BTC/USD:BTC",
        "exch_ts_ns": 1723161257679 * 1_000_000,
        "recv_ts_ns": 1723161256419684465,
        "trade_id": 849714402,
        "price": 61804.8,
        "qty": 4.0,
        "side": "buy",
        "base_qty": None,
    }
    assert t["base_qty"][0] == pytest.approx(4 * 100 / 61804.8, rel=1e-15)
    for symbol, usd in (("BTC/USD:BTC", 100.0), ("ETH/USD:ETH", 10.0)):
        for table in ("trades", "book"):
            df = lake.read(table, "binancecoinm", symbol)
            assert df["base_qty"].null_count() == 0
            want = df["qty"] * usd / df["price"]
            assert (df["base_qty"] - want).abs().max() < 1e-12  # type: ignore[operator]
    # linear venues: qty is already in the base currency, base_qty stays null
    assert lake.read("trades", "binanceusdm", "BTC/USDT:USDT")["base_qty"].null_count() == 10701


def test_receive_minus_exchange_offset_is_reported_per_market(
    imported: tuple[Lake, ImportReport],
) -> None:
    _, report = imported
    assert set(report.clock) == set(TRADES)
    for (venue, symbol), off in report.clock.items():
        # the recording host's clock ran about 1.27 s (August) / 1.52 s (July) behind
        july = venue == "binanceusdm" and symbol == "BTC/USDT:USDT"
        centre = -1520 if july else -1270
        if symbol == "ETH/USDT:USDT":  # July and August recordings of one market
            assert -1600 < off.median_ms < -1200, off
        else:
            assert abs(off.median_ms - centre) < 80, (venue, symbol, off)
        assert off.p05_ms <= off.median_ms <= off.p95_ms and off.rows > 1000


def test_the_only_gaps_are_between_the_july_and_august_recordings(
    imported: tuple[Lake, ImportReport],
) -> None:
    """Files of one venue are one stream: the USD-M ETHUSDT July pair and the August file are
    weeks apart, and that hole is recorded (trade ids and update ids), not papered over."""
    _, report = imported
    gaps = report.gaps
    assert gaps is not None
    assert gaps.select("venue", "symbol", "kind").unique().rows() == [
        ("binanceusdm", "ETH/USDT:USDT", "sequence_gap")
    ]
    details = sorted(gaps["detail"].to_list())
    assert details[0].startswith("expected pu=")
    assert details[1] == ("trade ids 4217910239..4308068522 missing (90158284 trades)")
    sync = report.sync
    assert sync["binancecoinm"]["BTC/USD:BTC"]["snapshots"] == 1
    assert sync["binanceusdm"]["ETH/USDT:USDT"]["snapshots"] == 2


# ---- markPrice@1s frames --------------------------------------------------------------------


def _with_mark_frames(src: Path, dst: Path, stream: str, n_lines: int = 3000) -> list[dict]:  # type: ignore[type-arg]
    """The first lines of a real recording with a ``markPrice@1s`` frame (Binance's documented
    shape) inserted after the first frame of every exchange second, as a collector subscribed
    to the stream would have received them. Returns the inserted payloads."""
    inserted = []
    last_sec = None
    with gzip.open(src, "rt") as f, gzip.open(dst, "wt") as out:
        for i, line in enumerate(f):
            if i >= n_lines:
                break
            out.write(line)
            recv, _, text = line.partition(" ")
            if not text.startswith('{"stream"'):
                continue
            data = json.loads(text)["data"]
            if "E" not in data:
                continue
            sec = int(data["E"]) // 1000
            if sec == last_sec:
                continue
            last_sec = sec
            mark = 61800.0 + len(inserted) / 10
            payload = {
                "e": "markPriceUpdate",
                "E": sec * 1000 + 1000,
                "s": data["s"],
                "p": f"{mark:.8f}",
                "P": f"{mark + 3:.8f}",
                "i": f"{mark - 2.5:.8f}",
                "r": "0.00010000",
                "T": 1723190400000,  # the next funding time, 2024-08-09 08:00 UTC
            }
            inserted.append(payload)
            frame = json.dumps({"stream": stream, "data": payload}, separators=(",", ":"))
            out.write(f"{recv} {frame}\n")
    return inserted


def test_mark_price_frames_are_stored_in_the_mark_table(tmp_path: Path) -> None:
    rec = tmp_path / "cm_btcusd_perp_with_mark.gz"
    sent = _with_mark_frames(MULTI / "cm_btcusd_perp_20240808.gz", rec, "btcusd_perp@markPrice@1s")
    lake = Lake(tmp_path / "lake")
    report = import_paths([rec], lake)
    assert report.ok, report.errors[:3]
    assert report.counts["mark"] == len(sent) > 20
    mark = lake.read("mark", "binancecoinm", "BTC/USD:BTC").sort("exch_ts_ns")
    assert mark.height == len(sent)
    first = mark.row(0, named=True)
    assert first["exch_ts_ns"] == sent[0]["E"] * 1_000_000
    assert first["mark_price"] == float(sent[0]["p"])
    assert first["index_price"] == float(sent[0]["i"])
    assert first["estimated_settle_price"] == float(sent[0]["P"])
    assert first["funding_rate"] == 0.0001
    assert first["next_funding_ts_ns"] == 1723190400000 * 1_000_000
    assert first["recv_ts_ns"] < first["exch_ts_ns"]  # the host clock behind, as recorded
    # the rest of the recording is read as without the mark frames
    plain = Lake(tmp_path / "plain")
    src = tmp_path / "plain.gz"
    with gzip.open(MULTI / "cm_btcusd_perp_20240808.gz", "rt") as f, gzip.open(src, "wt") as o:
        for i, line in enumerate(f):
            if i >= 3000:
                break
            o.write(line)
    import_paths([src], plain)
    for table in ("trades", "book", "bbo"):
        assert lake.read(table).equals(plain.read(table)), table
    # a second import changes nothing (row key: exchange time)
    again = import_paths([rec], lake)
    assert again.ok and lake.read("mark").height == len(sent)


def test_delivery_mark_frames_have_no_funding_and_a_bad_one_is_named(tmp_path: Path) -> None:
    """USD-M frame shape; a delivery contract sends ``"r":""`` and ``"T":0`` (Binance's COIN-M
    docs), stored as nulls; a frame without the mark price is reported with file and line."""
    rec = tmp_path / "usdm_ethusdt_with_mark.gz"
    _with_mark_frames(MULTI / "usdm_ethusdt_20240808.gz", rec, "ethusdt@markPrice@1s", n_lines=400)
    with gzip.open(rec, "rt") as f:
        lines = f.read().splitlines()
    idx = [i for i, x in enumerate(lines) if "markPriceUpdate" in x]
    lines[idx[0]] = lines[idx[0]].replace('"r":"0.00010000","T":1723190400000', '"r":"","T":0')
    lines[idx[1]] = lines[idx[1]].replace('"p":"', '"q":"')
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    lake = Lake(tmp_path / "lake")
    report = import_paths([bad], lake)
    assert [(e.line, e.message) for e in report.errors] == [
        (idx[1] + 1, "mark message lacks field(s) p")
    ]
    mark = lake.read("mark", "binanceusdm", "ETH/USDT:USDT").sort("exch_ts_ns")
    assert mark.height == len(idx) - 1
    assert mark["funding_rate"][0] is None and mark["next_funding_ts_ns"][0] is None
    assert mark["funding_rate"].null_count() == 1


def test_spot_has_no_mark_price_stream(tmp_path: Path) -> None:
    from tests.conftest import BTC_FILES

    rec = tmp_path / "spot_with_mark.gz"
    _with_mark_frames(BTC_FILES[0], rec, "btcusdt@markPrice@1s", n_lines=200)
    report = import_paths([rec], Lake(tmp_path / "lake"), venue="binance")
    assert report.errors and all(
        "unknown binance stream 'btcusdt@markPrice@1s'" in e.message for e in report.errors
    )


def test_mdpipe_import_prints_the_clock_offset_per_market(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mdpipe.cli import main

    rc = main(["import", str(MULTI / "usdm_btcusdt_20240718.gz"), "--lake", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("clock binanceusdm BTC/USDT:USDT"))
    # "clock binanceusdm BTC/USDT:USDT: receive - exchange time median -1,5xx ms (...)"
    median = int(line.split("median ")[1].split(" ms")[0].replace(",", ""))
    assert -1600 < median < -1450, line
