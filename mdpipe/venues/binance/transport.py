"""Binance over ccxt.pro: URLs, combined-stream subscriptions, REST depth, trades and clock.

Spot: websocket ``<ws>/<n>`` with ``SUBSCRIBE`` of ``<sym>@depth@100ms``, ``<sym>@trade``,
``<sym>@bookTicker``; answers ``{"result":null,"id":N}`` or ``{"error":{...},"id":N}``;
REST ``GET /api/v3/depth``, ``/api/v3/historicalTrades``, ``/api/v3/time``. USD-M: the same
streams plus ``<sym>@markPrice@1s``, REST under ``/fapi/v1``. COIN-M: as USD-M, REST under
``/dapi/v1``, websocket on ccxt's ``inverse`` URL (``dstream``), markets ``btcusd_perp``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import ccxt
import ccxt.pro as ccxtpro

from mdpipe.venues.base import ControlAnswer, Snapshot, SubscribeRequest, TradesPage
from mdpipe.venues.binance.common import COINM, DEFAULT_CHANNELS, FUTURES_CHANNELS, SPOT, USDM
from mdpipe.venues.binance.sniff import CONTROL_PREFIXES


class BinanceTransport:
    """Binance spot: combined streams `<sym>@depth@100ms`, `<sym>@trade`, `<sym>@bookTicker`."""

    venue = SPOT
    ccxt_class: type[Any] = ccxtpro.binance
    market_type = "spot"
    ws_type = "spot"
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    snapshot_limit = 1000
    time_path = "public"
    history_api = "public"  # GET /api/v3/historicalTrades
    history_limit = 1000

    def __init__(
        self, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()
    ) -> None:
        self.ws_url = ws_url
        self.rest_url = rest_url
        if channels:
            self.channels = channels

    def ccxt_config(self) -> dict[str, Any]:
        # only spot markets: linear/inverse exchangeInfo come from other hosts and would fail
        # (or be slow) against a proxy or the local exchange
        return {"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["spot"]}}}

    def apply_urls(self, ex: Any) -> None:
        if self.rest_url:
            ex.urls["api"]["public"] = self.rest_url.rstrip("/") + "/api/v3"
        if self.ws_url:
            ex.urls["api"]["ws"]["spot"] = self.ws_url.rstrip("/")

    def market_key(self, market: Mapping[str, Any]) -> str:
        return str(market["lowercaseId"])

    def stream_names(self, market: Mapping[str, Any]) -> list[str]:
        return [f"{self.market_key(market)}@{c}" for c in self.channels]

    def ws_endpoint(self, ex: Any, slot: int = 0) -> str:
        # the stream-index suffix ccxt itself uses (`/ws/0`), so real Binance sees a familiar URL
        index = ex.stream(self.ws_type, f"mdpipe-{slot}")
        return str(ex.get_ws_url(self.ws_type, "public")) + "/" + str(index)

    def subscribe_request(self, ex: Any, url: str, streams: list[str]) -> SubscribeRequest:
        rid = int(ex.request_id(url))
        return SubscribeRequest(str(rid), {"method": "SUBSCRIBE", "params": streams, "id": rid})

    def unsubscribe_request(self, ex: Any, url: str, streams: list[str]) -> SubscribeRequest:
        rid = int(ex.request_id(url))
        return SubscribeRequest(str(rid), {"method": "UNSUBSCRIBE", "params": streams, "id": rid})

    def is_control(self, text: str) -> bool:
        return text.startswith(CONTROL_PREFIXES)

    def control_answer(self, msg: Mapping[str, Any]) -> ControlAnswer | None:
        rid = msg.get("id")
        if rid is None:
            return None
        if "error" in msg or ("code" in msg and "msg" in msg):
            return ControlAnswer(str(rid), f"subscription {rid} refused: {dict(msg)}")
        return ControlAnswer(str(rid))

    async def fetch_snapshot(self, ex: Any, market: Mapping[str, Any]) -> Snapshot:
        await ex.publicGetDepth({"symbol": market["id"], "limit": self.snapshot_limit})
        # ccxt keeps the response body; nothing is awaited between its assignment and here, so
        # it is this request's body, byte for byte (prices stay the exchange's decimal strings)
        return Snapshot(time.time_ns(), str(ex.last_http_response))

    async def fetch_trades_page(
        self, ex: Any, market: Mapping[str, Any], from_id: int, limit: int
    ) -> TradesPage:
        # ccxt's implicit `publicGetHistoricalTrades` refuses to send without an apiKey, but the
        # endpoint is public market data: the same request goes through ccxt's rate limiter (at
        # ccxt's cost for the endpoint), HTTP session and error mapping (429/418 -> ccxt errors,
        # headers in last_response_headers), adding the key header only if one is configured
        api = self.history_api
        if ex.enableRateLimit:
            cost = ex.calculate_rate_limiter_cost(
                [api], "GET", "historicalTrades", {}, ex.api[api]["get"]["historicalTrades"]
            )
            await ex.throttle(cost)
        params = {
            "symbol": market["id"],
            "fromId": from_id,
            "limit": min(limit, self.history_limit),
        }
        url = str(ex.urls["api"][api]) + "/historicalTrades?" + ex.urlencode(params)
        headers = {"X-MBX-APIKEY": ex.apiKey} if ex.apiKey else None
        body = await ex.fetch(url, "GET", headers)
        if not isinstance(body, list):
            raise ccxt.BadResponse(f"historicalTrades answered {str(body)[:200]}")
        return TradesPage(time.time_ns(), body)

    async def server_time_ms(self, ex: Any) -> int:
        """The exchange clock, fetched without ccxt's rate-limit queue: time spent waiting for
        a token would otherwise count as network round trip and bias the offset estimate."""
        # ex.fetch is ccxt's raw HTTP call: same session and error mapping, no throttle queue
        body = await ex.fetch(str(ex.urls["api"][self.time_path]) + "/time", "GET")
        return int(body["serverTime"])

    def wrap_snapshot(self, market: Mapping[str, Any], text: str) -> str:
        # the agreed journal wrapper: it names the symbol, which a bare REST body does not
        return '{"stream":"' + self.market_key(market) + '@depthSnapshot","data":' + text + "}"


class BinanceUsdmTransport(BinanceTransport):
    """Binance USD-M futures: same stream names, `pu` chaining, REST `/fapi/v1/depth`."""

    venue = USDM
    ccxt_class = ccxtpro.binanceusdm
    market_type = "swap"
    ws_type = "linear"
    channels: tuple[str, ...] = FUTURES_CHANNELS
    time_path = "fapiPublic"
    history_api = "fapiPublic"  # GET /fapi/v1/historicalTrades

    def ccxt_config(self) -> dict[str, Any]:
        return {"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["linear"]}}}

    def apply_urls(self, ex: Any) -> None:
        if self.rest_url:
            ex.urls["api"]["fapiPublic"] = self.rest_url.rstrip("/") + "/fapi/v1"
        if self.ws_url:
            ex.urls["api"]["ws"]["linear"] = self.ws_url.rstrip("/")

    async def fetch_snapshot(self, ex: Any, market: Mapping[str, Any]) -> Snapshot:
        await ex.fapiPublicGetDepth({"symbol": market["id"], "limit": self.snapshot_limit})
        return Snapshot(time.time_ns(), str(ex.last_http_response))


class BinanceCoinmTransport(BinanceTransport):
    """Binance COIN-M futures: USD-M's streams and `pu` chaining, REST `/dapi/v1/depth`."""

    venue = COINM
    ccxt_class = ccxtpro.binancecoinm
    market_type = "swap"
    ws_type = "inverse"
    channels: tuple[str, ...] = FUTURES_CHANNELS
    time_path = "dapiPublic"
    history_api = "dapiPublic"  # GET /dapi/v1/historicalTrades

    def ccxt_config(self) -> dict[str, Any]:
        return {"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["inverse"]}}}

    def apply_urls(self, ex: Any) -> None:
        if self.rest_url:
            ex.urls["api"]["dapiPublic"] = self.rest_url.rstrip("/") + "/dapi/v1"
        if self.ws_url:
            ex.urls["api"]["ws"]["inverse"] = self.ws_url.rstrip("/")

    async def fetch_snapshot(self, ex: Any, market: Mapping[str, Any]) -> Snapshot:
        await ex.dapiPublicGetDepth({"symbol": market["id"], "limit": self.snapshot_limit})
        return Snapshot(time.time_ns(), str(ex.last_http_response))


TRANSPORTS: dict[str, type[BinanceTransport]] = {
    SPOT: BinanceTransport,
    USDM: BinanceUsdmTransport,
    COINM: BinanceCoinmTransport,
}
