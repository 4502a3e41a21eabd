"""Binance: spot (``binance``) and USD-M futures (``binanceusdm``), registered on import.

Every Binance fact lives in this folder: ``common`` (symbols, stream names, sequence rules),
``normalizer`` (frames -> lake rows), ``sniff`` (recognising frames and files), ``dumps``
(public-data CSV/zip), ``transport`` (ccxt), ``simulator`` (a local Binance for tests and demos),
``venue`` (the :class:`mdpipe.venues.base.Venue` objects).
"""

from mdpipe.venues import register
from mdpipe.venues.binance.common import SPOT_RULES, USDM_RULES, unified_symbol
from mdpipe.venues.binance.venue import SPOT_VENUE, USDM_VENUE, BinanceVenue

register(SPOT_VENUE)
register(USDM_VENUE)

__all__ = ["SPOT_RULES", "SPOT_VENUE", "USDM_RULES", "USDM_VENUE", "BinanceVenue", "unified_symbol"]
