"""The two Binance venues as :class:`mdpipe.venues.base.Venue` objects: spot (``binance``) and
USD-M futures (``binanceusdm``). They share message shapes, stream names and the dump format;
they differ in symbols (``BTC/USDT`` vs ``BTC/USDT:USDT``), sequence rules (ids vs ``pu``
chaining) and REST paths."""

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
        if name not in (common.SPOT, common.USDM):
            raise ValueError(f"BinanceVenue is {common.SPOT!r} or {common.USDM!r}, not {name!r}")
        self.name = name
        self.futures = name == common.USDM
        self.rules: SequenceRules = common.USDM_RULES if self.futures else common.SPOT_RULES
        # USD-M dumps have other columns (no is_best_match); only spot dumps are read
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
        from mdpipe.venues.binance.transport import BinanceTransport, BinanceUsdmTransport

        cls = BinanceUsdmTransport if self.futures else BinanceTransport
        return cls(ws_url, rest_url, channels)

    def route(self, stream: str) -> StreamRoute:
        return common.route(self.name, stream)

    def stream_labels(self, text: pl.Series) -> pl.Series:
        return sniff.stream_labels(text)

    def depth_market(self, text: str) -> str | None:
        return sniff.depth_market(text)

    def sniff(self, messages: Sequence[bytes]) -> JournalHead:
        head = sniff.sniff_head(messages)
        return JournalHead(head.binance and head.futures == self.futures, head.symbol)

    def dump_of(self, path: Path) -> DumpFile | None:
        return None if self.futures else dumps.dump_of(path)

    def read_dump(self, path: Path, data: bytes, dump: DumpFile) -> Batch:
        return dumps.read_dump(self.name, path, data, dump)


SPOT_VENUE = BinanceVenue(common.SPOT)
USDM_VENUE = BinanceVenue(common.USDM)
