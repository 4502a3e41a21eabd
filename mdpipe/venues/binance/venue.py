"""The three Binance venues as :class:`mdpipe.venues.base.Venue` objects: spot (``binance``),
USD-M futures (``binanceusdm``) and COIN-M futures (``binancecoinm``). They share message
shapes, stream names and the dump format; they differ in symbols (``BTC/USDT``,
``BTC/USDT:USDT``, ``BTC/USD:BTC``), sequence rules (ids vs ``pu`` chaining), sizes (COIN-M:
inverse contracts) and REST paths (``/api/v3``, ``/fapi/v1``, ``/dapi/v1``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from mdpipe.venues.base import (
    Batch,
    DumpFile,
    JournalHead,
    Normalizer,
    SequenceRules,
    StreamRoute,
    Transport,
)
from mdpipe.venues.binance import common, dumps, sniff


class BinanceVenue:
    default_channels: tuple[str, ...] = common.DEFAULT_CHANNELS

    def __init__(self, name: str) -> None:
        self.market_type = common.market_type(name)  # raises for a name that is not Binance's
        self.name = name
        self.futures = name != common.SPOT
        self.rules: SequenceRules = (
            common.COINM_RULES
            if name == common.COINM
            else common.USDM_RULES
            if self.futures
            else common.SPOT_RULES
        )
        if self.futures:
            self.default_channels = common.FUTURES_CHANNELS
        # futures dumps have other columns (no is_best_match); only spot dumps are read
        self.dump_names = "" if self.futures else dumps.DUMP_NAMES

    def __repr__(self) -> str:
        return f"BinanceVenue({self.name!r})"

    def unified_symbol(self, market_id: str) -> str:
        return common.unified_symbol(market_id, self.name)

    def underlying(self, symbol: str) -> str:
        """The asset a market trades, for pairing venues: the base of its unified symbol
        (``BTC/USDT``, ``BTC/USDT:USDT`` and the inverse ``BTC/USD:BTC`` all trade ``BTC``)."""
        base, sep, _ = symbol.partition("/")
        if not sep or not base:
            raise ValueError(f"{self.name}: {symbol!r} is not a unified symbol BASE/QUOTE")
        return base

    def normalizer(self) -> Normalizer:
        from mdpipe.venues.binance.normalizer import BinanceNormalizer

        return BinanceNormalizer(self.name)

    def transport(
        self, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()
    ) -> Transport:
        # imported here: ccxt.pro is heavy and only capture needs it
        from mdpipe.venues.binance.transport import TRANSPORTS

        return TRANSPORTS[self.name](ws_url, rest_url, channels)

    def route(self, stream: str) -> StreamRoute:
        return common.route(self.name, stream)

    def stream_labels(self, text: pl.Series) -> pl.Series:
        return sniff.stream_labels(text)

    def depth_market(self, text: str) -> str | None:
        return sniff.depth_market(text)

    def sniff(self, messages: Sequence[bytes]) -> JournalHead:
        head = sniff.sniff_head(messages)
        return JournalHead(head.binance and head.market_type == self.market_type, head.symbol)

    def dump_of(self, path: Path) -> DumpFile | None:
        return None if self.futures else dumps.dump_of(path)

    def read_dump(self, path: Path, data: bytes, dump: DumpFile) -> Batch:
        return dumps.read_dump(self.name, path, data, dump)


SPOT_VENUE = BinanceVenue(common.SPOT)
USDM_VENUE = BinanceVenue(common.USDM)
COINM_VENUE = BinanceVenue(common.COINM)
