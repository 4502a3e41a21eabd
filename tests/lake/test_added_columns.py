"""Columns added to a table later (`base_qty` on trades and book) read as null in files written
before they existed, whichever file comes first, and writers fill them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from mdpipe.lake import ADDED_COLUMNS, SCHEMAS, Lake, PartitionWriter, conform
from mdpipe.lake.store import Partition

OLD_TRADES = {c: t for c, t in SCHEMAS["trades"].items() if c not in ADDED_COLUMNS["trades"]}


def _trades(ids: list[int], base_qty: bool) -> pl.DataFrame:
    n = len(ids)
    df = pl.DataFrame(
        {
            "venue": ["binancecoinm"] * n,
            "symbol": ["BTC/USD:BTC"] * n,
            "exch_ts_ns": [1723161257679000000 + i for i in ids],
            "recv_ts_ns": [1723161256419684465 + i for i in ids],
            "trade_id": ids,
            "price": [61804.8] * n,
            "qty": [4.0] * n,
            "side": ["buy"] * n,
        },
        schema=OLD_TRADES,
    )
    return df.with_columns(base_qty=pl.lit(400 / 61804.8)) if base_qty else df


def test_old_and_new_files_read_together_in_any_order(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    d = lake.partition_dir("trades", "binancecoinm", "BTC/USD:BTC", "2024-08-08")
    d.mkdir(parents=True)
    # an "old" file: written before base_qty existed (not through conform)
    _trades([1, 2], base_qty=False).write_parquet(d / "a-old.parquet")
    lake.publish("trades", "binancecoinm", "BTC/USD:BTC", "2024-08-08", _trades([3], True))
    lake.publish(
        "trades", "binancecoinm", "BTC/USD:BTC", "2024-08-08", _trades([4], True), name="0.parquet"
    )
    got = lake.read("trades", "binancecoinm", "BTC/USD:BTC").sort("trade_id")
    assert got.columns == list(SCHEMAS["trades"])
    assert got["base_qty"].to_list()[:2] == [None, None]
    assert got["base_qty"].null_count() == 2 and got.height == 4
    # dedup against mixed files, and DuckDB's view
    w = PartitionWriter(lake, Partition("trades", "binancecoinm", "BTC/USD:BTC", "2024-08-08"))
    w.write(_trades([1, 5], True))
    _, rows = w.publish("import-x.parquet")
    assert rows == 1
    lake.build_catalog()
    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    assert con.execute("select count(*), count(base_qty) from trades").fetchone() == (5, 3)


def test_writers_fill_added_columns_with_nulls() -> None:
    out = conform("trades", _trades([1], base_qty=False))
    assert out.columns == list(SCHEMAS["trades"]) and out["base_qty"].null_count() == 1
