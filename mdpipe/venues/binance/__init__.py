"""Binance: spot (``binance``), USD-M futures (``binanceusdm``) and COIN-M futures
(``binancecoinm``), registered on import.

Every Binance fact lives in this folder: ``common`` (symbols, stream names, sequence rules),
``contracts`` (COIN-M contract sizes), ``normalizer`` (frames -> lake rows), ``sniff`` (recognising frames and files), ``dumps``
(public-data CSV/zip), ``transport`` (ccxt), ``simulator`` (a local Binance for tests and demos),
``venue`` (the :class:`mdpipe.venues.base.Venue` objects).
"""

from mdpipe.venues import register
from mdpipe.venues.binance.common import COINM_RULES, SPOT_RULES, USDM_RULES, unified_symbol
from mdpipe.venues.binance.venue import COINM_VENUE, SPOT_VENUE, USDM_VENUE, BinanceVenue

register(SPOT_VENUE)
register(USDM_VENUE)
register(COINM_VENUE)

__all__ = [
    "COINM_RULES",
    "COINM_VENUE",
    "SPOT_RULES",
    "SPOT_VENUE",
    "USDM_RULES",
    "USDM_VENUE",
    "BinanceVenue",
    "unified_symbol",
]
