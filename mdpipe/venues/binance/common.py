"""Binance facts shared by spot and USD-M: symbols, stream names, book-sync rules.

Stream names (combined streams, ``/stream``): ``<market id in lower case>@<channel>``, e.g.
``btcusdt@depth@100ms``, ``btcusdt@trade``, ``btcusdt@aggTrade``, ``btcusdt@bookTicker``; the
capture journal adds ``btcusdt@depthSnapshot`` for the REST depth snapshots it records.

Book sync follows Binance's documented procedure ("How to manage a local order book correctly").
Spot: drop diffs with ``u <= lastUpdateId``; the first applied diff has
``U <= lastUpdateId + 1 <= u``; every next one has ``U == previous u + 1``. USD-M futures: drop
``u < lastUpdateId``; first applied ``U <= lastUpdateId <= u``; then ``pu == previous u``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdpipe.venues.base import StreamRoute, UnknownStream

MS = 1_000_000  # ns per ms
SPOT, USDM = "binance", "binanceusdm"
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
}
DEFAULT_CHANNELS = ("depth@100ms", "trade", "bookTicker")


def split_symbol(raw: str) -> tuple[str, str]:
    """``BTCUSDT`` -> (``BTC``, ``USDT``)."""
    raw = raw.upper()
    for q in QUOTE_ASSETS:
        if raw.endswith(q) and len(raw) > len(q):
            return raw[: -len(q)], q
    raise ValueError(f"cannot split Binance symbol {raw!r} into base and quote")


def unified_symbol(raw: str, venue: str) -> str:
    """``BTCUSDT`` -> ``BTC/USDT`` (spot) or ``BTC/USDT:USDT`` (USD-M)."""
    base, q = split_symbol(raw)
    return f"{base}/{q}:{q}" if venue == USDM else f"{base}/{q}"


def route(venue: str, stream: str) -> StreamRoute:
    """``btcusdt@depth@100ms`` -> StreamRoute("depth", "btcusdt"); unknown -> UnknownStream."""
    market, sep, channel = stream.partition("@")
    kind = CHANNEL_KIND.get(channel)
    if not sep or not market or kind is None:
        raise UnknownStream(
            venue, stream, "<symbol>@{" + ",".join(CHANNEL_KIND) + "}, e.g. btcusdt@trade"
        )
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
