"""Binance facts shared by spot, USD-M and COIN-M: symbols, stream names, book-sync rules.

Stream names (combined streams, ``/stream``): ``<market id in lower case>@<channel>``, e.g.
``btcusdt@depth@100ms``, ``btcusdt@trade``, ``btcusdt@aggTrade``, ``btcusdt@bookTicker``; the
capture journal adds ``btcusdt@depthSnapshot`` for the REST depth snapshots it records.

Book sync follows Binance's documented procedure ("How to manage a local order book correctly").
Spot: drop diffs with ``u <= lastUpdateId``; the first applied diff has
``U <= lastUpdateId + 1 <= u``; every next one has ``U == previous u + 1``. USD-M futures: drop
``u < lastUpdateId``; first applied ``U <= lastUpdateId <= u``; then ``pu == previous u``.
COIN-M futures follow the USD-M procedure word for word (Binance's COIN-M "How to manage a
local order book correctly").

COIN-M market ids are ``<BASE>USD_PERP`` (perpetual) or ``<BASE>USD_<YYMMDD>`` (delivery);
their unified symbols are ccxt's ``BTC/USD:BTC`` and ``BTC/USD:BTC-240927``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mdpipe.venues.base import StreamRoute, UnknownStream

MS = 1_000_000  # ns per ms
SPOT, USDM, COINM = "binance", "binanceusdm", "binancecoinm"
VENUES = (SPOT, USDM, COINM)
# a COIN-M market id: BTCUSD_PERP, ETHUSD_240927 (case-insensitive: streams use lower case)
COINM_MARKET = re.compile(
    r"^(?P<base>[A-Za-z0-9]+?)(?P<quote>USD|usd)_(?P<expiry>PERP|perp|\d{6})$"
)
# Longest first, so that e.g. FDUSD wins over USD.
QUOTE_ASSETS = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY",
    "BRL", "JPY", "GBP", "AUD", "USD", "XRP", "DOGE",
)  # fmt: skip

# channel (the part after the first '@') -> kind
CHANNEL_KIND = {
    "depth": "depth",
    "depth@100ms": "depth",
    "depth@250ms": "depth",
    "depth@500ms": "depth",
    "depth@0ms": "depth",
    "trade": "trade",
    "aggTrade": "agg_trade",
    "bookTicker": "bbo",
    "depthSnapshot": "snapshot",
    "markPrice": "mark",
    "markPrice@1s": "mark",
}
FUTURES_ONLY_CHANNELS = ("markPrice", "markPrice@1s")
SPOT_CHANNEL_KIND = {c: k for c, k in CHANNEL_KIND.items() if c not in FUTURES_ONLY_CHANNELS}


def channel_kinds(venue: str) -> dict[str, str]:
    """The channels a venue's streams have (spot has no mark price) -> their kind."""
    return SPOT_CHANNEL_KIND if venue == SPOT else CHANNEL_KIND


DEFAULT_CHANNELS = ("depth@100ms", "trade", "bookTicker")
# futures also carry mark price, index price and funding (one frame a second per market)
FUTURES_CHANNELS = (*DEFAULT_CHANNELS, "markPrice@1s")


def split_symbol(raw: str) -> tuple[str, str]:
    """``BTCUSDT`` -> (``BTC``, ``USDT``)."""
    raw = raw.upper()
    for q in QUOTE_ASSETS:
        if raw.endswith(q) and len(raw) > len(q):
            return raw[: -len(q)], q
    raise ValueError(f"cannot split Binance symbol {raw!r} into base and quote")


def unified_symbol(raw: str, venue: str) -> str:
    """``BTCUSDT`` -> ``BTC/USDT`` (spot) or ``BTC/USDT:USDT`` (USD-M); ``BTCUSD_PERP`` ->
    ``BTC/USD:BTC`` and ``BTCUSD_240927`` -> ``BTC/USD:BTC-240927`` (COIN-M, as ccxt)."""
    if venue == COINM:
        m = COINM_MARKET.match(raw)
        if m is None:
            raise ValueError(
                f"cannot read COIN-M symbol {raw!r}: expected <BASE>USD_PERP or <BASE>USD_YYMMDD"
            )
        base = m["base"].upper()
        expiry = m["expiry"].upper()
        return f"{base}/USD:{base}" + ("" if expiry == "PERP" else f"-{expiry}")
    base, q = split_symbol(raw)
    return f"{base}/{q}:{q}" if venue == USDM else f"{base}/{q}"


def route(venue: str, stream: str) -> StreamRoute:
    """``btcusdt@depth@100ms`` -> StreamRoute("depth", "btcusdt"); unknown -> UnknownStream."""
    market, sep, channel = stream.partition("@")
    kinds = channel_kinds(venue)
    kind = kinds.get(channel)
    if not sep or not market or kind is None:
        raise UnknownStream(venue, stream, "<symbol>@{" + ",".join(kinds) + "}, e.g. btcusdt@trade")
    return StreamRoute(kind, market.lower())


@dataclass(frozen=True)
class SpotRules:
    """Spot diffs chain by ids: ``U == previous u + 1``."""

    bridge_rule: str = "U <= lastUpdateId+1 <= u"

    def covered_by_snapshot(self, last_id: int, u: int) -> bool:
        return u <= last_id

    def bridges(self, last_id: int, U: int, u: int) -> bool:
        return U <= last_id + 1 <= u

    def continues(self, prev_u: int, U: int, u: int, pu: int) -> bool:
        return U == prev_u + 1

    def break_detail(self, prev_u: int, U: int, u: int, pu: int) -> str:
        return f"expected U={prev_u + 1}, got U={U} ({U - prev_u - 1} update ids missing)"


@dataclass(frozen=True)
class UsdmRules:
    """USD-M diffs name their predecessor: ``pu == previous u``."""

    bridge_rule: str = "U <= lastUpdateId <= u"

    def covered_by_snapshot(self, last_id: int, u: int) -> bool:
        return u < last_id

    def bridges(self, last_id: int, U: int, u: int) -> bool:
        return U <= last_id <= u

    def continues(self, prev_u: int, U: int, u: int, pu: int) -> bool:
        return pu == prev_u

    def break_detail(self, prev_u: int, U: int, u: int, pu: int) -> str:
        return f"expected pu={prev_u}, got pu={pu} (U={U}, u={u})"


SPOT_RULES = SpotRules()
USDM_RULES = UsdmRules()
COINM_RULES = USDM_RULES  # the same documented procedure (see the module docstring)


def market_type(venue: str) -> str:
    """``spot``, ``usdm`` or ``coinm``: which of Binance's three APIs a venue name means."""
    try:
        return {SPOT: "spot", USDM: "usdm", COINM: "coinm"}[venue]
    except KeyError:
        raise ValueError(f"a Binance venue is one of {VENUES}, not {venue!r}") from None
