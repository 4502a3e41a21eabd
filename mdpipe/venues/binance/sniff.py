"""Recognising Binance frames and files without parsing them: journal sniffing for import,
per-frame stream labels and depth detection for capture.

Frames look like ``{"stream":"btcusdt@trade","data":{...}}`` (combined streams), a bare event
``{"e":"trade","s":"BTCUSDT",...}``, a bare spot bookTicker ``{"u":1,"s":"BTCUSDT",...}``, a REST
depth snapshot ``{"lastUpdateId":1,...}`` or an answer ``{"result":null,"id":1}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

_STREAM = re.compile(rb'^\{"stream":"([A-Za-z0-9_.-]+)@')
_BARE_SYMBOL = re.compile(rb'"s":"([A-Z0-9_]+)"')
_COINM_ID = re.compile(rb"^[a-z0-9]+usd_(?:perp|\d{6})$")
_BARE = re.compile(rb'^\{"(?:e":"[A-Za-z]+"|u":\d+,"s":"|lastUpdateId":)')
_ANSWER = re.compile(rb'^\{"(?:result|id|error|code)"')
CONTROL_PREFIXES = ('{"result"', '{"id"', '{"error"', '{"code"')


@dataclass(frozen=True)
class BinanceHead:
    """What the first lines of a file say: Binance messages or not, which API (spot, USD-M,
    COIN-M), which market."""

    binance: bool
    futures: bool
    symbol: str | None
    coinm: bool = False

    @property
    def market_type(self) -> str:
        """``spot``, ``usdm`` or ``coinm`` (as :func:`mdpipe.venues.binance.common.market_type`)."""
        return "coinm" if self.coinm else "usdm" if self.futures else "spot"


def sniff_head(messages: Sequence[bytes]) -> BinanceHead:
    """A file is Binance's when its first market-data message is a Binance frame. It is
    COIN-M when its market id is one (``btcusd_perp``, ``ethusd_240927``: ``<base>usd_``) or a
    frame names its pair (``"ps":``, COIN-M only); else USD-M when any diff carries ``pu``, a
    REST snapshot carries ``E`` (``/fapi/v1/depth``) or a frame is a ``markPriceUpdate``."""
    sym = None
    futures = False
    coinm = False
    first: bool | None = None  # whether the first market-data message is a Binance frame
    for msg in messages:
        if not msg or _ANSWER.match(msg):
            continue
        m = _STREAM.match(msg)
        if m:
            sym = sym or m.group(1).decode().lower()
            first = True if first is None else first
        elif _BARE.match(msg):
            first = True if first is None else first
            if sym is None:
                b = _BARE_SYMBOL.search(msg)
                if b:
                    sym = b.group(1).decode().lower()
        elif first is None and msg.startswith(b"{"):
            first = False
        if (
            b'"pu":' in msg
            or (msg.startswith(b'{"lastUpdateId"') and b'"E":' in msg)
            or b'"markPriceUpdate"' in msg
        ):
            futures = True
        if b'"ps":"' in msg:
            coinm = True
    if sym is not None and _COINM_ID.match(sym.encode()):
        coinm = True
    return BinanceHead(bool(first), futures or coinm, sym, coinm)


def stream_labels(text: pl.Series) -> pl.Series:
    """Per frame: its stream name; a bare event is labelled as its stream would be
    (``btcusdt@trade``; a bare spot bookTicker has no ``e``); answers are ``control``."""
    t = pl.col("text")
    stream = (
        t.str.extract(r'^\{"stream":"([^"]+)"', 1)
        .fill_null(
            pl.concat_str(
                t.str.extract(r'"s":"([A-Za-z0-9_]+)"', 1).str.to_lowercase(),
                pl.lit("@"),
                t.str.extract(r'^\{"e":"([A-Za-z]+)"', 1).fill_null("bookTicker"),
            )
        )
        .fill_null(pl.when(t.str.starts_with('{"result"')).then(pl.lit("control")))
        .fill_null("other")
    )
    return text.rename("text").to_frame().select(stream.alias("stream"))["stream"]


def depth_market(text: str) -> str | None:
    """The lower-case market id of a depth diff frame (combined or bare), else None."""
    if text.startswith('{"stream":"'):
        at = text.find("@", 11)
        if at > 0 and text.startswith("@depth", at) and not text.startswith("@depthSnapshot", at):
            return text[11:at]
        return None
    if text.startswith('{"e":"depthUpdate"'):
        i = text.find('"s":"')
        if i > 0:
            return text[i + 5 : text.index('"', i + 5)].lower()
    return None
