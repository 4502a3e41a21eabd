"""Binance public-data dumps (data.binance.vision): spot ``trades`` and ``aggTrades``.

Named ``<SYMBOL>-trades-<date>.csv`` / ``<SYMBOL>-aggTrades-<date>.csv``, or the ``.zip`` they
ship in (one CSV inside); with or without a header row; timestamps in ms (µs since 2025)::

    trades:     id,price,qty,quote_qty,time,is_buyer_maker,is_best_match
                3735683259,61837.63,0.02,1236.75,1723161255342,True,True
    aggTrades:  agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,
                is_buyer_maker,is_best_match

``is_buyer_maker = true`` means the taker sold.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import polars as pl

from mdpipe.lake import epoch_ns_expr
from mdpipe.venues.base import Batch, DumpFile, LineError
from mdpipe.venues.binance.common import unified_symbol

DUMP_NAME = re.compile(r"^(?P<sym>[A-Z0-9]+)-(?P<kind>trades|aggTrades)-", re.I)
DUMP_NAMES = "BTCUSDT-trades-2024-08-08.csv or BTCUSDT-aggTrades-2024-08-08.zip"
TRADES_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
AGG_COLUMNS = (
    "agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
    "is_buyer_maker", "is_best_match",
)  # fmt: skip
TRADES, AGG_TRADES = "trades", "agg_trades"


class DumpError(ValueError):
    """A dump that cannot be read at all (named, with the reason)."""


def dump_of(path: Path) -> DumpFile | None:
    m = DUMP_NAME.match(path.name)
    if m is None or path.suffix == ".gz":  # a .gz is a journal, whatever its name
        return None
    kind = AGG_TRADES if m.group("kind").lower() == "aggtrades" else TRADES
    return DumpFile(kind, m.group("sym").lower())


def read_dump(venue: str, path: Path, data: bytes, dump: DumpFile) -> Batch:
    if path.suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise DumpError(f"{path}: expected one .csv inside the zip, found {names}")
            data = z.read(names[0])
    batch = Batch()
    if not data.strip():
        batch.errors.append(
            LineError(str(path), 1, "empty file: expected Binance trades/aggTrades CSV")
        )
        return batch
    agg = dump.kind == AGG_TRADES
    cols = AGG_COLUMNS if agg else TRADES_COLUMNS
    first = data.split(b"\n", 1)[0].decode(errors="replace")
    header = not first.split(",")[0].strip().lstrip("-").isdigit()
    ncols = len(first.split(","))
    if ncols != len(cols):
        batch.errors.append(
            LineError(
                str(path),
                1,
                f"expected {len(cols)} columns ({', '.join(cols)}) of a Binance "
                f"{'aggTrades' if agg else 'trades'} dump, found {ncols}",
                first,
            )
        )
        return batch
    df = pl.read_csv(
        data,
        has_header=False,
        skip_rows=1 if header else 0,
        new_columns=list(cols),
        schema={c: pl.String for c in cols},
        truncate_ragged_lines=False,
    ).with_row_index("line", offset=2 if header else 1)
    num = {
        c: pl.col(c)
        .str.strip_chars()
        .cast(
            pl.Float64 if c in ("price", "qty", "quantity", "quote_qty") else pl.Int64, strict=False
        )
        for c in cols
        if c not in ("is_buyer_maker", "is_best_match")
    }
    maker = pl.col("is_buyer_maker").str.strip_chars().str.to_lowercase()
    df = df.with_columns(
        **num,
        maker=pl.when(maker == "true")
        .then(True)
        .when(maker == "false")
        .then(False)
        .otherwise(None),
    )
    need = [*num, "maker"]
    bad = df.filter(pl.any_horizontal([pl.col(c).is_null() for c in need]))
    for line in bad["line"].head(50).to_list():
        batch.errors.append(
            LineError(
                str(path),
                int(line),
                f"expected numeric {', '.join(cols[:-2])} and true/false maker flag",
            )
        )
    if bad.height > 50:
        batch.errors.append(
            LineError(str(path), int(bad["line"][50]), f"... and {bad.height - 50} more bad rows")
        )
    df = df.filter(~pl.any_horizontal([pl.col(c).is_null() for c in need]))
    tcol = "transact_time" if agg else "time"
    # Binance switched spot dumps from ms to µs timestamps in 2025: detect per row.
    ts_ns = epoch_ns_expr(pl.col(tcol))
    sym = unified_symbol(dump.symbol_hint, venue)
    side = pl.when(pl.col("maker")).then(pl.lit("sell")).otherwise(pl.lit("buy"))
    common = dict(
        venue=pl.lit(venue),
        symbol=pl.lit(sym),
        exch_ts_ns=ts_ns,
        recv_ts_ns=pl.lit(None, pl.Int64),
        price=pl.col("price"),
        side=side,
    )
    if agg:
        batch.add(
            "agg_trades",
            df.select(
                **common,
                agg_trade_id=pl.col("agg_trade_id"),
                first_trade_id="first_trade_id",
                last_trade_id="last_trade_id",
                qty=pl.col("quantity"),
            ).unique("agg_trade_id", keep="first", maintain_order=True),
        )
    else:
        batch.add(
            "trades",
            df.select(**common, trade_id=pl.col("id"), qty=pl.col("qty")).unique(
                "trade_id", keep="first", maintain_order=True
            ),
        )
    batch.count("csv_rows", df.height)
    return batch
