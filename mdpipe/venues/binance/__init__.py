"""Binance: spot (`binance`) and USD-M futures (`binanceusdm`)."""

from mdpipe.venues.binance.normalizer import (
    BinanceNormalizer,
    BookSync,
    unified_symbol,
)

__all__ = ["BinanceNormalizer", "BookSync", "unified_symbol"]
