"""The lake: partitioned Parquet files, the raw journal, atomic writes and the DuckDB catalog.

Each fact about the lake is stated once, in one module of this package, and imported from here:

- :mod:`~mdpipe.lake.tables`: table columns, row keys, the time column of each table and
  splitting rows by UTC day;
- :mod:`~mdpipe.lake.paths`: the lake's location (a local folder or ``s3://bucket/prefix``), partition folders,
  market keys, sequence and roll-up file names;
- :mod:`~mdpipe.lake.objstore`: lakes on S3-compatible object stores (configuration, PUTs);
- :mod:`~mdpipe.lake.atomic`: the one atomic writer (temporary ``.tmp-*`` name, fsync, rename);
- :mod:`~mdpipe.lake.journal`: the raw journal's format, its writer and its one reader;
- :mod:`~mdpipe.lake.store`: :class:`Lake` (listing, reading, publishing, roll-ups, catalog).
"""

from mdpipe.lake.atomic import TMP_PREFIX, atomic_target, atomic_write_bytes, tmp_path_for
from mdpipe.lake.journal import (
    JournalError,
    JournalProblem,
    JournalReader,
    JournalWriter,
    epoch_ns,
    epoch_ns_expr,
    iter_journal_lines,
    read_journal,
)
from mdpipe.lake.objstore import S3Config, is_remote
from mdpipe.lake.paths import (
    CATALOG_NAME,
    DEFAULT_LAKE,
    LAKE_ENV,
    LakeLocationError,
    covered_files,
    local_root,
    market_key,
    object_store_url,
    parse_market_key,
    parse_rollup_name,
    parse_sequence_name,
    path_to_symbol,
    rollup_name,
    symbol_to_path,
)
from mdpipe.lake.store import (
    COMPACT_READ_FILES,
    ROW_GROUP_ROWS,
    Lake,
    Partition,
    PartitionWriter,
)
from mdpipe.lake.tables import (
    ADDED_COLUMNS,
    BASIS_TABLE,
    CROSS_SIGNALS_TABLE,
    LEAD_LAG_TABLE,
    GAP_KINDS,
    NS_PER_DAY,
    RESULT_SCHEMAS,
    ROW_KEYS,
    SCHEMAS,
    SIGNAL_SOURCES,
    SIGNAL_TABLE_SOURCE,
    TIME_COLUMNS,
    UNDERLYING_TABLES,
    conform,
    date_of_ns,
    day_start_ns,
    empty_frame,
    row_time,
    split_by_date,
    time_column,
    with_added_columns,
    with_signal_source,
)

__all__ = [
    "ADDED_COLUMNS",
    "CATALOG_NAME",
    "COMPACT_READ_FILES",
    "BASIS_TABLE",
    "CROSS_SIGNALS_TABLE",
    "LEAD_LAG_TABLE",
    "DEFAULT_LAKE",
    "GAP_KINDS",
    "LAKE_ENV",
    "NS_PER_DAY",
    "ROW_GROUP_ROWS",
    "RESULT_SCHEMAS",
    "ROW_KEYS",
    "SCHEMAS",
    "SIGNAL_SOURCES",
    "SIGNAL_TABLE_SOURCE",
    "TIME_COLUMNS",
    "TMP_PREFIX",
    "UNDERLYING_TABLES",
    "JournalError",
    "JournalProblem",
    "JournalReader",
    "JournalWriter",
    "Lake",
    "LakeLocationError",
    "Partition",
    "PartitionWriter",
    "S3Config",
    "atomic_target",
    "atomic_write_bytes",
    "conform",
    "covered_files",
    "date_of_ns",
    "day_start_ns",
    "empty_frame",
    "epoch_ns",
    "epoch_ns_expr",
    "is_remote",
    "iter_journal_lines",
    "local_root",
    "market_key",
    "object_store_url",
    "parse_market_key",
    "parse_rollup_name",
    "parse_sequence_name",
    "path_to_symbol",
    "read_journal",
    "rollup_name",
    "row_time",
    "split_by_date",
    "symbol_to_path",
    "time_column",
    "tmp_path_for",
    "with_added_columns",
    "with_signal_source",
]
