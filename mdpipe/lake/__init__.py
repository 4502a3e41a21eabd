"""The lake: partitioned Parquet files, their layout, atomic writes and the DuckDB catalog.

Every fact about where rows live (paths, file names, the time column per table, UTC-day
splitting) is stated once, in :mod:`mdpipe.lake.store`; everything else imports it from here.
"""

from mdpipe.lake.store import (
    CATALOG_NAME,
    COMPACT_READ_FILES,
    GAP_KINDS,
    LAKE_ENV,
    NS_PER_DAY,
    ROW_GROUP_ROWS,
    SCHEMAS,
    TMP_PREFIX,
    Lake,
    Partition,
    PartitionWriter,
    atomic_write_bytes,
    conform,
    covered_files,
    date_of_ns,
    day_start_ns,
    empty_frame,
    market_key,
    parse_market_key,
    parse_rollup_name,
    parse_sequence_name,
    path_to_symbol,
    rollup_name,
    symbol_to_path,
)

__all__ = [
    "CATALOG_NAME",
    "COMPACT_READ_FILES",
    "GAP_KINDS",
    "LAKE_ENV",
    "NS_PER_DAY",
    "ROW_GROUP_ROWS",
    "SCHEMAS",
    "TMP_PREFIX",
    "Lake",
    "Partition",
    "PartitionWriter",
    "atomic_write_bytes",
    "conform",
    "covered_files",
    "date_of_ns",
    "day_start_ns",
    "empty_frame",
    "market_key",
    "parse_market_key",
    "parse_rollup_name",
    "parse_sequence_name",
    "path_to_symbol",
    "rollup_name",
    "symbol_to_path",
]
