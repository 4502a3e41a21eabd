"""Binance: spot (`binance`) and USD-M futures (`binanceusdm`)."""

from mdpipe.venues.binance.normalizer import (
    BinanceNormalizer,
    BookSync,
    date_partitions,
    unified_symbol,
)

__all__ = ["BinanceNormalizer", "BookSync", "date_partitions", "unified_symbol"]
