"""Partitions: a UTC day x a market, e.g. ("2024-08-08", "binance:BTC-USDT").

The `market` dimension is dynamic: markets are registered at runtime (by `market_sensor`, which
scans the lake, and by `mdpipe run` / `mdpipe demo` before they materialise), so a new symbol
captured or imported shows up without a code change.
"""

from __future__ import annotations

import warnings

import dagster as dg

from mdpipe.pipeline.steps import Part

MARKET_DIMENSION = "market"
DATE_DIMENSION = "date"
# Binance spot history worth backfilling starts well after this; an earlier start only adds
# empty partitions to the UI.
START_DATE = "2020-01-01"

market_partitions = dg.DynamicPartitionsDefinition(name=MARKET_DIMENSION)
# end_offset=1: today's (still growing) partition can be materialised too, e.g. right after a
# capture; its labels are censored past its last event until the next day exists.
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, end_offset=1)
day_market = dg.MultiPartitionsDefinition(
    {DATE_DIMENSION: daily_partitions, MARKET_DIMENSION: market_partitions}
)


def partition_key(date: str, market: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATE_DIMENSION: date, MARKET_DIMENSION: market})


def part_of(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> Part:
    """The partition of the running step as a `Part` (the key arrives as a
    `MultiPartitionKey` in process and as its string form `date|market` in launched runs)."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        key = day_market.get_partition_key_from_str(str(key))
    dims = key.keys_by_dimension
    return Part.from_keys(dims[DATE_DIMENSION], dims[MARKET_DIMENSION])


def _dimension_window(start: int, end: int) -> dg.MultiPartitionMapping:
    """Same market, days [D + start, D + end] upstream; days that do not exist are allowed
    (the first day has no previous day, today has no next day)."""
    with warnings.catch_warnings():
        # MultiPartitionMapping and allow_nonexistent_upstream_partitions are marked beta
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _mapping(start, end)


def _mapping(start: int, end: int) -> dg.MultiPartitionMapping:
    return dg.MultiPartitionMapping(
        {
            DATE_DIMENSION: dg.DimensionPartitionMapping(
                DATE_DIMENSION,
                dg.TimeWindowPartitionMapping(
                    start_offset=start, end_offset=end, allow_nonexistent_upstream_partitions=True
                ),
            ),
            MARKET_DIMENSION: dg.DimensionPartitionMapping(
                MARKET_DIMENSION, dg.IdentityPartitionMapping()
            ),
        }
    )


# features[D] warms up on ticks[D-1]; labels[D] look into features[D+1].
WITH_PREVIOUS_DAY = _dimension_window(-1, 0)
WITH_NEXT_DAY = _dimension_window(0, 1)
