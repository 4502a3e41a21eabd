"""What the lake holds, in one screen: markets, time span, counts, gaps, prices, how to query."""

from __future__ import annotations

import duckdb
from rich.console import Console
from rich.table import Table

from mdpipe.lake import Lake


def lake_summary(lake: Lake) -> list[dict[str, object]]:
    """One row per market with the headline figures (computed by DuckDB over the Parquet files)."""
    out = []
    con = duckdb.connect()
    lake.register(con)  # s3:// lakes: DuckDB reads through the lake's fsspec filesystem
    for venue, symbol in lake.markets():
        trades = [str(f) for f in lake.files("trades", venue, symbol)]
        book = [str(f) for f in lake.files("book", venue, symbol)]
        gaps = [str(f) for f in lake.files("gaps", venue, symbol)]
        row: dict[str, object] = {"venue": venue, "symbol": symbol}
        if trades:
            n, t0, t1, first, last, lo, hi = con.execute(
                "select count(*), min(exch_ts_ns), max(exch_ts_ns), arg_min(price, exch_ts_ns), "
                "arg_max(price, exch_ts_ns), min(price), max(price) from read_parquet(?)",
                [trades],
            ).fetchone()  # type: ignore[misc]
            row.update(
                trades=n,
                start_ns=t0,
                end_ns=t1,
                first_price=first,
                last_price=last,
                low=lo,
                high=hi,
            )
        if book:
            events, rows = con.execute(
                "select count(distinct update_id) filter (where not is_snapshot), count(*) "
                "from read_parquet(?)",
                [book],
            ).fetchone()  # type: ignore[misc]
            row.update(book_events=events, book_rows=rows)
        row["gaps"] = (
            con.execute("select count(*) from read_parquet(?)", [gaps]).fetchone()[0]  # type: ignore[index]
            if gaps
            else 0
        )
        row["dates"] = lake.dates(venue, symbol)
        out.append(row)
    return out


def _ts(ns: object) -> str:
    import datetime as dt

    if not isinstance(ns, int):
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_summary(lake: Lake, console: Console) -> None:
    rows = lake_summary(lake)
    if not rows:
        console.print(f"the lake at {lake.root} is empty: try `mdpipe import` or `mdpipe demo`")
        return
    t = Table(title=f"lake {lake.root}")
    for c in ("market", "UTC span", "trades", "book events", "gaps", "first → last price"):
        t.add_column(c, justify="right" if c in ("trades", "book events", "gaps") else "left")
    for r in rows:
        t.add_row(
            f"{r['venue']} {r['symbol']}",
            f"{_ts(r.get('start_ns'))} → {_ts(r.get('end_ns'))[11:]}",
            f"{r.get('trades', 0):,}",
            f"{r.get('book_events', 0):,}",
            str(r["gaps"]),
            f"{r.get('first_price', '-')} → {r.get('last_price', '-')}",
        )
    console.print(t)
    cat = lake.catalog_path
    console.print("Query it with DuckDB (views: trades, book, bbo, gaps, and every derived table):")
    if lake.remote:
        # DuckDB reads s3:// through the lake's fsspec filesystem; its CLI needs httpfs
        console.print(
            f"  python -c \"from mdpipe.lake import Lake; print(Lake('{lake.url}').connect()"
            ".sql('select * from gaps'))\""
        )
        console.print(
            "  the DuckDB CLI needs the httpfs extension (INSTALL httpfs; LOAD httpfs; and an "
            "S3 secret) to read the objects: see the README's object-storage section"
        )
        return
    console.print(
        f'  duckdb {cat} "select symbol, count(*) trades, sum(qty*price) notional '
        'from trades group by all"'
    )
    console.print(
        f"  python -c \"import duckdb; print(duckdb.connect('{cat}', read_only=True)"
        ".sql('select * from gaps'))\""
    )
