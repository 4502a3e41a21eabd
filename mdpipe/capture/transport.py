"""ccxt.pro as the transport, with the raw message stream tapped before ccxt parses anything.

ccxt's `watch_order_book` rebuilds its own book and, when messages arrive faster than the caller
consumes them, hands back only the latest state: about 3% of Binance diffs are never seen by a
caller. Capture must be lossless, so it taps `Client.handle_text_or_binary_message`, the one
place every websocket text frame passes through, and takes each frame there with its receive
time. ccxt still owns what it is good at: connecting, the ping/pong keepalive, subscription
bookkeeping, URL layout, REST with rate limiting and error mapping. Market-data frames are not
handed to ccxt's own handlers at all (nothing would consume them, and parsing every trade into a
ccxt structure would cost more than the whole capture pipeline).

A venue is described by a `VenueAdapter`: which ccxt class, how URLs are overridden, which stream
names a symbol needs, how a REST depth snapshot is fetched. Adding a ccxt venue is one adapter
here plus one normalizer module in `mdpipe.venues`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ccxt
import ccxt.pro as ccxtpro

log = logging.getLogger("mdpipe.capture.transport")

RawSink = Callable[[int, str, Any], None]  # (recv ns, text, ccxt client)

# Frames that are answers to our own requests, not market data: ccxt sees these too.
_CONTROL_PREFIXES = ('{"result"', '{"id"', '{"error"', '{"code"')


def _tap(client: Any, sink: RawSink, on_control: Callable[[Any, dict[str, Any]], None]) -> None:
    """Replace the client's frame handler with one that records every frame first."""

    def handle_text_or_binary_message(data: str | bytes) -> None:
        recv_ns = time.time_ns()
        if isinstance(data, bytes):
            data = data.decode("utf-8", errors="replace")
        sink(recv_ns, data, client)
        if data.startswith(_CONTROL_PREFIXES):
            try:
                msg = json.loads(data)
            except ValueError:
                return  # recorded above; the normalizer reports it with its content
            on_control(client, msg)
            try:
                client.on_message_callback(client, msg)
            except Exception:  # ccxt's handler raising inside its receive loop would kill it
                log.exception("ccxt handler failed on control frame %r", data[:200])

    client.handle_text_or_binary_message = handle_text_or_binary_message
    client._mdpipe_tapped = True


def make_exchange(
    ccxt_class: type[Any],
    sink: RawSink,
    on_control: Callable[[Any, dict[str, Any]], None],
    config: dict[str, Any],
) -> Any:
    """An instance of a ccxt.pro exchange class whose websocket clients are all tapped."""

    class Tapped(ccxt_class):
        mdpipe_last_status: int | None = None

        def on_rest_response(
            self, code: Any, reason: Any, url: Any, method: Any, headers: Any, body: Any, *args: Any
        ) -> Any:
            # kept so a failed snapshot can be reported as 429/418 rather than an error class
            self.mdpipe_last_status = code
            return super().on_rest_response(code, reason, url, method, headers, body, *args)

        def client(self, url: str) -> Any:
            c = super().client(url)
            if not getattr(c, "_mdpipe_tapped", False):
                _tap(c, sink, on_control)
            return c

    Tapped.__name__ = f"Tapped{ccxt_class.__name__}"
    return Tapped(config)


@dataclass(frozen=True)
class TradesPage:
    """A REST trade-history answer as received: the trades (exchange dicts) and receive time."""

    recv_ns: int
    trades: list[dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    """A REST depth snapshot as received: the response text and the receive time."""

    recv_ns: int
    text: str


class VenueAdapter:
    """What capture needs to know about one ccxt venue."""

    venue: str = ""
    ccxt_class: type[Any] = object
    market_type: str = "spot"
    channels: tuple[str, ...] = ()

    def __init__(self, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()):
        self.ws_url = ws_url
        self.rest_url = rest_url
        if channels:
            self.channels = channels

    def ccxt_config(self) -> dict[str, Any]:
        return {"enableRateLimit": True}

    def apply_urls(self, ex: Any) -> None:
        raise NotImplementedError

    def stream_names(self, market: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def ws_endpoint(self, ex: Any, slot: int = 0) -> str:
        """The websocket URL; `slot` 0/1 give two distinct URLs, for make-before-break."""
        raise NotImplementedError

    def subscribe_request(self, ex: Any, url: str, streams: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    async def fetch_snapshot(self, ex: Any, market: dict[str, Any]) -> Snapshot:
        raise NotImplementedError

    async def fetch_trades_page(
        self, ex: Any, market: dict[str, Any], from_id: int, limit: int
    ) -> TradesPage:
        """Up to `limit` trades of `market` with ids >= `from_id`, oldest first (trade backfill)."""
        raise NotImplementedError

    async def server_time_ms(self, ex: Any) -> int:
        """The exchange clock, fetched without ccxt's rate-limit queue: time spent waiting for
        a token would otherwise count as network round trip and bias the offset estimate."""
        return int(await ex.fetch_time())

    def wrap_snapshot(self, market: dict[str, Any], text: str) -> str:
        raise NotImplementedError


class BinanceAdapter(VenueAdapter):
    """Binance spot: combined streams `<sym>@depth@100ms`, `<sym>@trade`, `<sym>@bookTicker`."""

    venue = "binance"
    ccxt_class = ccxtpro.binance
    market_type = "spot"
    channels = ("depth@100ms", "trade", "bookTicker")
    snapshot_limit = 1000

    def ccxt_config(self) -> dict[str, Any]:
        # only spot markets: linear/inverse exchangeInfo come from other hosts and would fail
        # (or be slow) against a proxy or the local exchange
        return {"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["spot"]}}}

    def apply_urls(self, ex: Any) -> None:
        if self.rest_url:
            ex.urls["api"]["public"] = self.rest_url.rstrip("/") + "/api/v3"
        if self.ws_url:
            ex.urls["api"]["ws"]["spot"] = self.ws_url.rstrip("/")

    def stream_names(self, market: dict[str, Any]) -> list[str]:
        return [f"{market['lowercaseId']}@{c}" for c in self.channels]

    def ws_endpoint(self, ex: Any, slot: int = 0) -> str:
        # the stream-index suffix ccxt itself uses (`/ws/0`), so real Binance sees a familiar URL
        index = ex.stream(self.ws_type, f"mdpipe-{slot}")
        return str(ex.get_ws_url(self.ws_type, "public")) + "/" + str(index)

    ws_type = "spot"

    def subscribe_request(self, ex: Any, url: str, streams: list[str]) -> dict[str, Any]:
        return {"method": "SUBSCRIBE", "params": streams, "id": int(ex.request_id(url))}

    async def fetch_snapshot(self, ex: Any, market: dict[str, Any]) -> Snapshot:
        await ex.publicGetDepth({"symbol": market["id"], "limit": self.snapshot_limit})
        # ccxt keeps the response body; nothing is awaited between its assignment and here, so
        # it is this request's body, byte for byte (prices stay the exchange's decimal strings)
        return Snapshot(time.time_ns(), str(ex.last_http_response))

    time_path = "public"
    history_api = "public"  # GET /api/v3/historicalTrades
    history_limit = 1000

    async def fetch_trades_page(
        self, ex: Any, market: dict[str, Any], from_id: int, limit: int
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
        # ex.fetch is ccxt's raw HTTP call: same session and error mapping, no throttle queue
        body = await ex.fetch(str(ex.urls["api"][self.time_path]) + "/time", "GET")
        return int(body["serverTime"])

    def wrap_snapshot(self, market: dict[str, Any], text: str) -> str:
        # the agreed journal wrapper: it names the symbol, which a bare REST body does not
        return '{"stream":"' + market["lowercaseId"] + '@depthSnapshot","data":' + text + "}"


class BinanceUsdmAdapter(BinanceAdapter):
    """Binance USD-M futures: same stream names, `pu` chaining, REST `/fapi/v1/depth`."""

    venue = "binanceusdm"
    ccxt_class = ccxtpro.binanceusdm
    market_type = "swap"
    ws_type = "linear"

    time_path = "fapiPublic"
    history_api = "fapiPublic"  # GET /fapi/v1/historicalTrades

    def ccxt_config(self) -> dict[str, Any]:
        return {"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["linear"]}}}

    def apply_urls(self, ex: Any) -> None:
        if self.rest_url:
            ex.urls["api"]["fapiPublic"] = self.rest_url.rstrip("/") + "/fapi/v1"
        if self.ws_url:
            ex.urls["api"]["ws"]["linear"] = self.ws_url.rstrip("/")

    async def fetch_snapshot(self, ex: Any, market: dict[str, Any]) -> Snapshot:
        await ex.fapiPublicGetDepth({"symbol": market["id"], "limit": self.snapshot_limit})
        return Snapshot(time.time_ns(), str(ex.last_http_response))


ADAPTERS: dict[str, type[VenueAdapter]] = {
    "binance": BinanceAdapter,
    "binanceusdm": BinanceUsdmAdapter,
}


def adapter_for(
    venue: str, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()
) -> VenueAdapter:
    try:
        cls = ADAPTERS[venue]
    except KeyError:
        raise ValueError(
            f"capture has no transport adapter for venue {venue!r}; known: {', '.join(ADAPTERS)}"
        ) from None
    return cls(ws_url, rest_url, channels)
