"""Adding a venue needs nothing outside its folder: the toy venue (tests/venues/toyvenue/),
registered from here, drives `mdpipe import` end to end into lake rows DuckDB can query."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from mdpipe import venues
from mdpipe.cli import main as cli_main
from mdpipe.lake import Lake
from tests.venues.toyvenue import TOY

T0 = 1723161600000  # 2024-08-09 00:00:00 UTC, ms


@pytest.fixture
def toy() -> Iterator[None]:
    assert "toyvenue" not in venues.names()
    venues.register(TOY)
    yield
    venues.unregister("toyvenue")


def _line(recv_ms: int, msg: dict[str, object]) -> str:
    return f"{recv_ms * 1_000_000 + 123} {json.dumps(msg, separators=(',', ':'))}"


def _book(
    seq: int, bids: list[list[str]], asks: list[list[str]], **kw: object
) -> dict[str, object]:
    return {
        "ch": "book",
        "m": "TOY-USD",
        "seq": seq,
        "ts": T0 + seq,
        "bids": bids,
        "asks": asks,
        **kw,
    }


def _trade(tid: int, px: str, taker: str) -> dict[str, object]:
    return {"ch": "trade", "m": "TOY-USD", "id": tid, "px": px, "qty": "0.5", "taker": taker,
            "ts": T0 + tid}  # fmt: skip


def _journal(path: Path) -> Path:
    msgs = [
        _book(9, [["99", "1"]], [], prev=8),  # before the snapshot, covered by it: dropped
        _book(10, [["99", "1"], ["98", "2"]], [["101", "1"], ["102", "3"]], snap=True),
        _trade(1, "101", "buy"),
        _book(11, [["99", "0"]], [["100.5", "1"]], prev=10),
        _trade(2, "99", "sell"),
        _book(12, [["99.5", "4"]], [], prev=11),
        _book(14, [["97", "1"]], [], prev=13),  # 13 never came: a sequence gap, no book rows
        _trade(4, "100", "buy"),  # trade 3 never came: a trade gap
        _book(20, [["99", "1"]], [["100", "2"]], snap=True),  # resync
        _book(21, [], [["100", "0"], ["100.25", "1"]], prev=20),
    ]
    lines = [_line(T0 + i, m) for i, m in enumerate(msgs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_venue_from_its_own_folder_imports_end_to_end(toy: None, tmp_path: Path) -> None:
    path = _journal(tmp_path / "toy-2024-08-09.jsonl")
    assert venues.detect(path) is TOY
    assert cli_main(["import", str(path), "--lake", str(tmp_path / "lake")]) == 0
    lake = Lake(tmp_path / "lake")
    assert (tmp_path / "lake/trades/venue=toyvenue/symbol=TOY-USD/date=2024-08-09").is_dir()
    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    trades = con.sql(
        "select trade_id, price, side from trades where venue = 'toyvenue' order by trade_id"
    ).fetchall()
    assert trades == [(1, 101.0, "buy"), (2, 99.0, "sell"), (4, 100.0, "buy")]
    book = con.sql(
        "select update_id, is_snapshot, count(*) from book where symbol = 'TOY/USD' "
        "group by all order by update_id"
    ).fetchall()
    assert book == [(10, True, 4), (11, False, 2), (12, False, 1), (20, True, 2), (21, False, 2)]
    gaps = con.sql("select kind, prev_update_id, next_update_id, ts_ns from gaps order by ts_ns")
    assert gaps.fetchall() == [  # trade 3 and book update 13 never came
        ("sequence_gap", 2, 4, (T0 + 4) * 1_000_000),
        ("sequence_gap", 12, 14, (T0 + 14) * 1_000_000),
    ]
    # the last book, replayed from the lake's rows alone
    rows = con.sql(
        "select side, price, qty from book where update_id >= 20 order by update_id, side"
    ).fetchall()
    levels: dict[tuple[str, float], float] = {}
    for side, px, qty in rows:
        levels[(side, px)] = qty
    assert {k: v for k, v in levels.items() if v > 0} == {
        ("bid", 99.0): 1.0,
        ("ask", 100.25): 1.0,
    }
    # importing again changes nothing
    before = sorted(p.name for p in lake.files("book"))
    assert cli_main(["import", str(path), "--lake", str(tmp_path / "lake")]) == 0
    assert sorted(p.name for p in lake.files("book")) == before
    assert Lake(tmp_path / "lake").read("trades", "toyvenue").height == 3


def test_an_unknown_stream_is_an_error_with_file_line_and_stream(toy: None, tmp_path: Path) -> None:
    path = _journal(tmp_path / "toy.jsonl")
    lines = path.read_text().splitlines()
    lines.insert(3, _line(T0 + 3, {"ch": "kline", "m": "TOY-USD", "ts": T0}))
    path.write_text("\n".join(lines) + "\n")
    from mdpipe.ingest import import_paths

    report = import_paths([path], Lake(tmp_path / "lake"))
    assert [f"{e.source}:{e.line}: {e.message}" for e in report.errors] == [
        f"{path}:4: not a toy message: unknown toyvenue stream 'kline.TOY-USD'; "
        "toyvenue streams are book.<MARKET> or trade.<MARKET>"
    ]
    assert report.rows("trades") == 3  # the rest is kept


def test_forcing_an_unknown_venue_names_the_known_ones(toy: None, tmp_path: Path) -> None:
    path = _journal(tmp_path / "toy.jsonl")
    assert cli_main(["import", str(path), "--venue", "kraken", "--lake", str(tmp_path)]) == 2
    with pytest.raises(venues.UnknownVenue, match="unknown venue 'kraken'; known: binance, binancecoinm, "
                       "binanceusdm, toyvenue"):  # fmt: skip
        venues.get("kraken")


def test_a_journal_no_venue_recognises_is_reported_not_guessed(tmp_path: Path) -> None:
    path = _journal(tmp_path / "toy.jsonl")  # toyvenue is not registered here
    from mdpipe.ingest import import_paths

    report = import_paths([path], Lake(tmp_path / "lake"))
    assert [str(e) for e in report.errors] == [
        f"{path}:1: no venue recognises this journal's messages (known: binance, binancecoinm, binanceusdm); "
        "choose one with --venue"
    ]
    assert not report.written
