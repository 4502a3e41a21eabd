"""The import reproduces every fact SOURCES.md states about the bundled recordings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mdpipe.crosscheck import book_vs_bbo
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from tests.conftest import BTC_FILES, ETH_FILES, RECORDINGS


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    lake = Lake(tmp_path_factory.mktemp("lake"))
    report = import_paths(RECORDINGS, lake)
    return lake, report


@pytest.mark.parametrize(
    ("symbol", "first_id", "last_id", "count"),
    [("BTC/USDT", 3735683259, 3735703162, 19904), ("ETH/USDT", 1520538925, 1520553439, 14515)],
)
def test_trades_are_complete_and_contiguous(imported, symbol, first_id, last_id, count):  # type: ignore[no-untyped-def]
    lake, _ = imported
    t = lake.read("trades", "binance", symbol).sort("trade_id")
    assert t.height == count
    assert t["trade_id"].min() == first_id and t["trade_id"].max() == last_id
    assert t["trade_id"].n_unique() == count
    assert (t["trade_id"].diff().drop_nulls() == 1).all()
    assert set(t["side"].unique()) == {"buy", "sell"}


def test_taker_side_follows_buyer_is_maker(imported):  # type: ignore[no-untyped-def]
    # First BTC trade in the file: "t":3735683259, "p":"61837.63", "m":true -> the taker sold.
    lake, _ = imported
    t = lake.read("trades", "binance", "BTC/USDT").filter(pl.col("trade_id") == 3735683259)
    assert t["side"][0] == "sell" and t["price"][0] == 61837.63 and t["qty"][0] == 0.02
    assert t["exch_ts_ns"][0] == 1723161255342 * 1_000_000
    assert t["recv_ts_ns"][0] == 1723161254087896568


def test_prices_in_stated_range(imported):  # type: ignore[no-untyped-def]
    lake, _ = imported
    btc = lake.read("trades", "binance", "BTC/USDT")["price"]
    eth = lake.read("trades", "binance", "ETH/USDT")["price"]
    assert 61556 <= btc.min() and btc.max() <= 61862  # type: ignore[operator]
    assert 2673.60 <= eth.min() and eth.max() <= 2685.37  # type: ignore[operator]


def test_book_sync_facts(imported):  # type: ignore[no-untyped-def]
    _, report = imported
    btc = report.sync["binance"]["BTC/USDT"]
    eth = report.sync["binance"]["ETH/USDT"]
    assert btc["dropped"] == 2 and btc["applied"] == 6493 and btc["snapshots"] == 1
    assert btc["first_applied"] == (50093239218, 50093239208, 50093239224)
    assert eth["dropped"] == 2 and eth["applied"] == 6468
    last_id, first_u, _ = eth["first_applied"]
    assert first_u == last_id + 1  # the edge case a `U <= lastUpdateId` reader wrongly rejects
    assert report.gaps is None or report.gaps.height == 0
    assert report.ok


@pytest.mark.parametrize(("symbol", "expected"), [("BTC/USDT", 1072), ("ETH/USDT", 1056)])
def test_book_rebuilt_from_lake_matches_every_book_ticker(imported, symbol, expected):  # type: ignore[no-untyped-def]
    lake, _ = imported
    check = book_vs_bbo(lake.read("book", "binance", symbol), lake.read("bbo", "binance", symbol))
    assert (check.compared, check.matched) == (expected, expected), check.mismatches


def test_each_day_partition_replays_on_its_own(imported):  # type: ignore[no-untyped-def]
    """The 08-09 partition starts with a checkpoint snapshot of the synced book at midnight."""
    lake, _ = imported
    day2 = lake.read("book", "binance", "BTC/USDT", "2024-08-09")
    assert day2["is_snapshot"][0]
    assert day2["exch_ts_ns"][0] == 1723161600 * 1_000_000_000
    bbo = lake.read("bbo", "binance", "BTC/USDT")
    check = book_vs_bbo(day2, bbo)
    assert check.ok and check.compared > 500


def test_catalog_views_answer_sql(imported):  # type: ignore[no-untyped-def]
    lake, _ = imported
    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    rows = con.execute(
        "select symbol, count(*), count(distinct date) from trades group by all order by 1"
    ).fetchall()
    assert rows == [("BTC/USDT", 19904, 2), ("ETH/USDT", 14515, 2)]
    assert con.execute("select count(*) from gaps").fetchone() == (0,)
    assert (
        con.execute(
            "select count(*) from book where is_snapshot and date = '2024-08-08'"
        ).fetchone()[0]
        > 1000
    )  # type: ignore[index]


def _lake_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def test_import_is_idempotent_and_overlaps_do_not_duplicate(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    import_paths(BTC_FILES, lake)
    before = _lake_digest(tmp_path)
    again = import_paths(BTC_FILES, lake)
    assert again.ok
    assert _lake_digest(tmp_path) == before  # same files, same bytes
    # An overlapping import (one of the same files alone) adds no trade twice.
    import_paths(BTC_FILES[1:], lake)
    t = lake.read("trades", "binance", "BTC/USDT")
    assert t.height == 19904 and t["trade_id"].n_unique() == 19904


def test_second_file_alone_imports_trades_and_records_no_snapshot(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    report = import_paths(ETH_FILES[1:], lake)
    assert report.ok
    assert lake.read("trades", "binance", "ETH/USDT").height == 8409  # the trades of the 0809 file
    assert lake.read("book", "binance", "ETH/USDT").height == 0  # never an invented book
    gaps = lake.read("gaps", "binance", "ETH/USDT")
    assert gaps["kind"].to_list() == ["no_snapshot"]
    assert "3036 depth diffs not applied" in gaps["detail"][0]
