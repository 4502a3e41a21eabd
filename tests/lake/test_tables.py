"""The time column of each table and the UTC-day split: stated once, in mdpipe.lake.tables."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl
import pytest

from mdpipe.ingest import import_paths
from mdpipe.lake import (
    NS_PER_DAY,
    SCHEMAS,
    TIME_COLUMNS,
    Lake,
    date_of_ns,
    day_start_ns,
    split_by_date,
    time_column,
)

ROOT = Path(__file__).resolve().parents[2]
MIDNIGHT = day_start_ns("2024-08-09")  # 2024-08-08 ends one ns before this
MS = 1_000_000


def test_dates_are_exact_at_the_day_boundary() -> None:
    assert MIDNIGHT == 1723161600 * 10**9
    # the last ns of a day is that day (a float division would round it into the next one)
    assert date_of_ns(MIDNIGHT - 1) == "2024-08-08"
    assert date_of_ns(MIDNIGHT) == "2024-08-09"
    assert date_of_ns(MIDNIGHT + NS_PER_DAY - 1) == "2024-08-09"
    assert day_start_ns("1970-01-01") == 0
    with pytest.raises(ValueError, match="expected a date YYYY-MM-DD, got '2024-8-9x'"):
        day_start_ns("2024-8-9x")


def test_every_canonical_table_has_its_time_column_among_its_columns() -> None:
    for table in SCHEMAS:
        assert time_column(table) in SCHEMAS[table], table
    assert time_column("gaps") == "ts_ns" and time_column("trades") == "exch_ts_ns"
    assert time_column("live/signals") == "ts_ns"
    assert time_column("derived/features") == "ts_ns"
    with pytest.raises(ValueError, match="no time column is known for table 'nope'"):
        time_column("nope")


def _bbo(exch: list[int | None], recv: list[int]) -> pl.DataFrame:
    n = len(recv)
    return pl.DataFrame(
        {
            "venue": ["binance"] * n,
            "symbol": ["BTC/USDT"] * n,
            "exch_ts_ns": exch,
            "recv_ts_ns": recv,
            "update_id": list(range(n)),
            "bid": [1.0] * n,
            "bid_qty": [1.0] * n,
            "ask": [2.0] * n,
            "ask_qty": [1.0] * n,
        },
        schema=SCHEMAS["bbo"],
    )


def test_split_by_date_uses_the_time_column_then_the_receive_time() -> None:
    df = _bbo(
        exch=[MIDNIGHT - 2, None, MIDNIGHT - 1, MIDNIGHT, None],
        #     exch decides   recv decides    exch decides (received the next day)
        recv=[MIDNIGHT - 1, MIDNIGHT - 1, MIDNIGHT + 5, MIDNIGHT + 6, MIDNIGHT + 7],
    )
    parts = split_by_date(df, "bbo")
    assert list(parts) == ["2024-08-08", "2024-08-09"]
    assert parts["2024-08-08"]["update_id"].to_list() == [0, 1, 2]  # order kept
    assert parts["2024-08-09"]["update_id"].to_list() == [3, 4]
    assert parts["2024-08-08"].columns == df.columns
    assert split_by_date(df.head(0), "bbo") == {}


def test_a_row_without_any_time_is_refused_not_placed_on_a_guessed_day() -> None:
    df = _bbo(exch=[None, MIDNIGHT], recv=[MIDNIGHT, MIDNIGHT]).with_columns(
        recv_ts_ns=pl.Series([None, MIDNIGHT], dtype=pl.Int64)
    )
    with pytest.raises(ValueError, match=r"bbo: 1 row\(s\) have neither exch_ts_ns nor recv_ts_ns"):
        split_by_date(df, "bbo")


def test_import_files_rows_by_their_time_column_across_midnight(tmp_path: Path) -> None:
    """A trade done before midnight but received after it belongs to the earlier day; a
    bookTicker (no exchange time) to the day it was received; a gap to its own time."""

    def trade(t: int, exch_ms: int) -> str:
        data = {"e": "trade", "E": exch_ms, "s": "BTCUSDT", "t": t, "p": "61000.0",
                "q": "0.1", "T": exch_ms, "m": True, "M": True}  # fmt: skip
        return json.dumps({"stream": "btcusdt@trade", "data": data}, separators=(",", ":"))

    def bbo(u: int) -> str:
        data = {"u": u, "s": "BTCUSDT", "b": "61000.0", "B": "1.0", "a": "61000.1", "A": "1.0"}
        return json.dumps({"stream": "btcusdt@bookTicker", "data": data}, separators=(",", ":"))

    last_ms = MIDNIGHT // MS - 1  # 23:59:59.999
    lines = [
        f"{MIDNIGHT - 500 * MS} {trade(1, last_ms - 400)}",
        f"{MIDNIGHT - 400 * MS} {bbo(10)}",
        f"{MIDNIGHT + 300 * MS} {trade(2, last_ms)}",  # done before midnight, received after
        f"{MIDNIGHT + 301 * MS} {bbo(11)}",
        f"{MIDNIGHT + 400 * MS} {trade(4, MIDNIGHT // MS + 100)}",  # trade 3 is missing: a gap
    ]
    path = tmp_path / "btcusdt_midnight.jsonl"
    path.write_text("\n".join(lines) + "\n")
    lake = Lake(tmp_path / "lake")
    report = import_paths([path], lake, venue="binance", catalog=False)
    assert report.ok, report.errors
    trades = {p.date: lake.read("trades", dates=p.date)["trade_id"].to_list()
              for p in lake.partitions("trades")}  # fmt: skip
    assert trades == {"2024-08-08": [1, 2], "2024-08-09": [4]}
    bbos = {p.date: lake.read("bbo", dates=p.date)["update_id"].to_list()
            for p in lake.partitions("bbo")}  # fmt: skip
    assert bbos == {"2024-08-08": [10], "2024-08-09": [11]}
    # the trade-id hole is stamped with the time of trade 4 (after midnight): filed that day
    assert [p.date for p in lake.partitions("gaps")] == ["2024-08-09"]
    gaps = lake.read("gaps")
    assert gaps.select("kind", "prev_update_id", "next_update_id").rows() == [
        ("sequence_gap", 2, 4)
    ]


# --- one source: nothing outside mdpipe/lake restates the time column or the day split --------


def _modules_outside_lake() -> list[Path]:
    pkg = ROOT / "mdpipe"
    return [p for p in sorted(pkg.rglob("*.py")) if (pkg / "lake") not in p.parents]


def test_no_module_outside_the_lake_maps_tables_to_time_columns_or_formats_partition_dates() -> (
    None
):
    time_cols = set(TIME_COLUMNS.values())
    found = []
    for path in _modules_outside_lake():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            # {"gaps": "ts_ns", ...}: a table -> time column map
            if isinstance(node, ast.Dict):
                pairs = [
                    (k.value, v.value)
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                ]
                if any(k in TIME_COLUMNS and v in time_cols for k, v in pairs):
                    found.append(f"{where}: a table -> time column map")
            # .dt.strftime("%Y-%m-%d") / .floordiv(NS_PER_DAY): a day split of its own
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                args = [a.value for a in node.args if isinstance(a, ast.Constant)]
                named = [a.id for a in node.args if isinstance(a, ast.Name)]
                if name == "strftime" and "%Y-%m-%d" in args and _on_polars_dt(node.func):
                    found.append(f"{where}: a date column of its own (use split_by_date)")
                if name == "floordiv" and "NS_PER_DAY" in named:
                    found.append(f"{where}: a day number of its own (use split_by_date)")
    assert not found, "\n".join(found)


def _on_polars_dt(func: ast.Attribute) -> bool:
    value = func.value
    return isinstance(value, ast.Attribute) and value.attr == "dt"


def test_signal_tables_read_old_files_without_source_next_to_new_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import polars as pl

    from mdpipe.lake import Lake

    lake = Lake(tmp_path / "lake")
    old = pl.DataFrame({"venue": ["binance"], "symbol": ["BTC/USDT"], "ts_ns": [1],
                        "signal_id": ["a"], "score": [1.0]})  # fmt: skip
    new = old.with_columns(signal_id=pl.lit("b"), source=pl.lit("api"), details=pl.lit("{}"))
    for table in ("live/signals", "derived/signals"):
        # the old file sorts first: its schema must not be imposed on the new one
        lake.publish(table, "binance", "BTC/USDT", "1970-01-01", old, name="a-old.parquet")
        lake.publish(table, "binance", "BTC/USDT", "1970-01-01", new, name="b-new.parquet")
        got = lake.read(table).sort("signal_id")
        default = "live" if table == "live/signals" else "batch"
        assert got["source"].to_list() == [default, "api"], table
        assert got["details"].to_list() == [None, "{}"]
