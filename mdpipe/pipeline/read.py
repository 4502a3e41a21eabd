"""Reading partitions from the lake into the core's batch driver (the core reads no files).

`compute_partition` is `mdpipe.core.batch.compute_features_and_signals` straight from the lake:
the book partition (tens of millions of rows for a liquid market-day) is streamed file by file
in Arrow record batches of only the columns the kernels read, so peak memory is the trades, one
batch and the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.compute as pc

from mdpipe.core.batch import TRADE_INPUT_COLUMNS, BatchRun, batch_trade_rows
from mdpipe.core.detectors.ensemble import DetectorConfig
from mdpipe.core.features import FeatureConfig, MicropriceModel
from mdpipe.core.kernel import BookRows
from mdpipe.lake import Lake

BOOK_READ_COLUMNS = ("update_id", "exch_ts_ns", "recv_ts_ns", "side", "price", "qty",
                     "is_snapshot")  # fmt: skip


def compute_partition(
    lake: Lake,
    venue: str,
    symbol: str,
    date: str,
    *,
    prev_date: str | None = None,
    warmup_minutes: float | None = 30.0,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    microprice: MicropriceModel | None = None,
    batch_rows: int = 1 << 21,
    stats: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features and signals of one market-day, streaming the book from the lake.

    With `prev_date`, that partition is replayed first: book only, except its last
    `warmup_minutes` (None: all of it) which run in full. Each partition's files are read in
    applied order (`book_files_in_order`); rows inside a file are in applied order.
    """
    tcols = list(TRADE_INPUT_COLUMNS)
    trades = lake.scan("trades", venue, symbol, date).select(tcols).collect()
    if prev_date is not None:
        prev_t = lake.scan("trades", venue, symbol, prev_date).select(tcols).collect()
        if prev_t.height:
            trades = pl.concat([prev_t.cast(trades.schema), trades])
    run = BatchRun(
        venue, symbol, batch_trade_rows(trades), feature_config=feature_config,
        detector_config=detector_config, microprice=microprice,
    )  # fmt: skip
    if prev_date is not None:
        files = book_files_in_order(lake, venue, symbol, prev_date)
        full_from = -(2**63)
        if warmup_minutes is not None and files:
            last = (
                lake.scan_files(files, "book").select(pl.col("exch_ts_ns").max()).collect().item()
            )
            full_from = int(last) - round(warmup_minutes * 60e9)
        stream_book(lake, run, files, batch_rows, emit=False, full_from_ts=full_from)
    stream_book(lake, run, book_files_in_order(lake, venue, symbol, date), batch_rows, emit=True)
    if stats is not None:
        stats.update(run.stats())
    return run.result()


def book_files_in_order(lake: Lake, venue: str, symbol: str, date: str) -> list[Path]:
    """The partition's book files in applied order (by first `seq` when the column exists,
    else by file name); rows inside a file are in applied order."""
    files = lake.files("book", venue, symbol, date)
    if len(files) < 2:
        return files

    def first_seq(f: Path) -> tuple[int, str]:
        pf = lake.parquet_file(f)
        if "seq" not in pf.schema_arrow.names or pf.metadata.num_rows == 0:
            return (0, f.name)
        v = pf.read_row_group(0, columns=["seq"]).column(0)[0].as_py()
        return (int(v), f.name)

    return sorted(files, key=first_seq)


def stream_book(
    lake: Lake,
    run: BatchRun,
    files: list[Path],
    batch_rows: int,
    *,
    emit: bool,
    full_from_ts: int = -(2**63),
) -> None:
    """Feed `files` (in applied order) to `run` in record batches of `batch_rows`."""
    pending: BookRows | None = None
    for f in files:
        pf = lake.parquet_file(f)
        for rb in pf.iter_batches(batch_size=batch_rows, columns=list(BOOK_READ_COLUMNS)):
            # Arrow hands out read-only views; numba would compile (and cache) a second,
            # read-only specialisation of every kernel for them, so take writable copies.
            rows = BookRows(
                np.array(rb.column("update_id"), dtype=np.int64),
                np.array(rb.column("exch_ts_ns"), dtype=np.int64),
                np.array(rb.column("recv_ts_ns"), dtype=np.int64),
                np.array(pc.equal(rb.column("side"), "bid"), dtype=np.bool_),
                np.array(rb.column("price"), dtype=np.float64),
                np.array(rb.column("qty"), dtype=np.float64),
                np.array(rb.column("is_snapshot"), dtype=np.bool_),
            )
            if pending is not None:
                run.feed(pending, emit=emit, full_from_ts=full_from_ts)
            pending = rows
    if pending is not None:
        run.feed(pending, emit=emit, final=True, full_from_ts=full_from_ts)
    else:
        run.finish(emit=emit, full_from_ts=full_from_ts)
