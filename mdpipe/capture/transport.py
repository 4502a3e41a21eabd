"""ccxt.pro as the transport, with the raw message stream tapped before ccxt parses anything.

ccxt's `watch_order_book` rebuilds its own book and, when messages arrive faster than the caller
consumes them, hands back only the latest state: about 3% of Binance diffs are never seen by a
caller. Capture must be lossless, so it taps `Client.handle_text_or_binary_message`, the one
place every websocket text frame passes through, and takes each frame there with its receive
time. ccxt still owns what it is good at: connecting, the ping/pong keepalive, subscription
bookkeeping, URL layout, REST with rate limiting and error mapping. Market-data frames are not
handed to ccxt's own handlers at all (nothing would consume them, and parsing every trade into a
ccxt structure would cost more than the whole capture pipeline).

What is venue-specific (which ccxt class, URLs, stream names, subscribe messages and their
answers, REST endpoints) is the venue's `Transport` (mdpipe/venues/base.py), e.g.
mdpipe/venues/binance/transport.py; this module is the generic part every venue shares.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mdpipe.venues.base import Snapshot, TradesPage, Transport

log = logging.getLogger("mdpipe.capture.transport")

RawSink = Callable[[int, str, Any], None]  # (recv ns, text, ccxt client)


def _tap(
    client: Any,
    sink: RawSink,
    on_control: Callable[[Any, dict[str, Any]], None],
    is_control: Callable[[str], bool],
) -> None:
    """Replace the client's frame handler with one that records every frame first."""

    def handle_text_or_binary_message(data: str | bytes) -> None:
        recv_ns = time.time_ns()
        if isinstance(data, bytes):
            data = data.decode("utf-8", errors="replace")
        sink(recv_ns, data, client)
        # answers to our own requests, not market data: ccxt sees these too
        if is_control(data):
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
    transport: Transport,
    sink: RawSink,
    on_control: Callable[[Any, dict[str, Any]], None],
) -> Any:
    """An instance of the transport's ccxt.pro exchange class whose websocket clients are all
    tapped, pointed at the transport's URLs."""
    ccxt_class = transport.ccxt_class

    class Tapped(ccxt_class):  # type: ignore[valid-type,misc]
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
                _tap(c, sink, on_control, transport.is_control)
            return c

    Tapped.__name__ = f"Tapped{ccxt_class.__name__}"
    ex = Tapped(transport.ccxt_config())
    transport.apply_urls(ex)
    return ex


__all__ = ["RawSink", "Snapshot", "TradesPage", "make_exchange"]
