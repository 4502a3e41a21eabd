"""The websocket connection of a capture: subscribe, watch, reconnect, switch make-before-break.

`Connection.run()` is the connection task: dial (unless `hold_dials()`), SUBSCRIBE to every
stream through the venue's `Transport`, then watch until the connection ends:

- closed or failed: reconnect after `backoff_s(attempt)` (mdpipe.retry, exponential with
  jitter; the attempt count restarts once a connection delivered data);
- stale: no frame for `stale_after_s` (the watchdog; a stalled event loop is not blamed on the
  exchange);
- planned: older than `max_connection_age_s`; a second connection subscribes and, once it streams
  every market's depth, replaces the first without a hole (frames both delivered are kept once).

Every frame the tapped ccxt clients receive enters `on_raw` (synchronously, inside ccxt's receive
loop) and goes to `inbox` if it came from the current connection. On an unplanned end the
pending lines are normalized (`drain`), `depth_seen` is reset and `lost(reason, detail)` lets the
daemon resync every book. `unsubscribe_and_close()` ends the connection at stop without losing
what is already on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import ccxt

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.status import Status
from mdpipe.retry import backoff_s
from mdpipe.venues import Transport

log = logging.getLogger("mdpipe.capture")


class Connection:
    """One venue websocket at a time (two during a make-before-break switch)."""

    def __init__(
        self,
        config: CaptureConfig,
        transport: Transport,
        status: Status,
        *,
        inbox: Callable[[int, str], None],
        drain: Callable[[], None],
        lost: Callable[[str, str], None],
        depth_market: Callable[[str], str | None],
        depth_seen: set[str],
    ) -> None:
        self.config = config
        self.transport = transport
        self.status = status
        self.inbox = inbox  # frames of the current connection, in receive order
        self.drain = drain  # normalize what the inbox holds, now
        self.lost = lost  # after an unplanned end: (reason, detail)
        self.depth_market = depth_market  # the market a depth frame is of (None: not depth)
        self.depth_seen = depth_seen  # markets with a depth frame on this connection
        self.ex: Any = None  # the tapped ccxt client, once the markets are loaded
        self.streams: list[str] = []  # every stream name to subscribe
        self.depth_keys: set[str] = set()  # every market whose depth a new connection must show
        self.stopping = False
        self._dials_open = asyncio.Event()  # cleared by hold_dials(): no new connection
        self._dials_open.set()
        self._last_rx_mono = time.monotonic()
        self._conn_url: str | None = None
        self._slot = 0
        self._primary: Any = None
        self._standby: Any = None
        self._overlap: set[str] | None = None
        self._standby_ns: list[int] = []
        self._standby_text: list[str] = []
        self._standby_depth: set[str] = set()
        self._seam: set[str] | None = None
        self._seam_until = 0.0

    def hold_dials(self) -> None:
        self._dials_open.clear()

    def release_dials(self) -> None:
        self._dials_open.set()

    def backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.reconnect_initial_s, self.config.reconnect_max_s)

    def set_connected(self, connected: bool) -> None:
        self.status.connected = connected
        self.status.events.notify()

    # ---- transport callbacks (synchronous, inside ccxt's receive loop) -----------------------

    def on_raw(self, recv_ns: int, text: str, client: Any = None) -> None:
        """A received line: from the current connection (or REST, `client` None) to the inbox;
        from the standby during a switch, kept aside; from a retired connection, dropped."""
        if client is None or client is self._primary:
            if self._seam is not None and client is not None:
                # just after a switch the new connection may still deliver events the old one
                # already gave us (it was behind); they are dropped here, once each
                if text in self._seam:
                    self._seam.discard(text)
                    return
                if time.monotonic() > self._seam_until:
                    self._seam = None
            self.inbox(recv_ns, text)
            self._last_rx_mono = time.monotonic()
            if self._overlap is not None:
                self._overlap.add(text)
        elif client is self._standby:
            self._standby_ns.append(recv_ns)
            self._standby_text.append(text)
            key = self.depth_market(text)
            if key is not None:
                self._standby_depth.add(key)
        # else: a retired connection closing; everything it still delivers, the new one has

    def on_control(self, client: Any, msg: dict[str, Any]) -> None:
        answer = self.transport.control_answer(msg)
        if answer is None:
            return
        h = f"mdpipe:sub:{answer.request_id}"
        if answer.error is not None:
            client.reject(ccxt.ExchangeError(answer.error), h)
        else:
            client.resolve(True, h)

    # ---- the connection task ----------------------------------------------------------------

    async def run(self) -> None:
        """The connection task: connect, watch, reconnect, until `stopping` (or cancelled)."""
        attempt = 0
        need_connect = True
        while not self.stopping:
            reason = "error"
            detail = ""
            try:
                opened = time.monotonic()
                got_data_before = self.status.messages.total()
                if need_connect:
                    await self._dials_open.wait()
                    await self._connect_and_subscribe()
                need_connect = True
                self.set_connected(True)
                reason, detail = await self._wait_connection_end(opened)
                if self.status.messages.total() > got_data_before:
                    attempt = 0
                if reason == "planned" and await self._make_before_break(detail):
                    need_connect = False
                    attempt = 0
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every transport failure leads to a reconnect
                reason, detail = "error", f"{type(exc).__name__}: {exc}"
            self.set_connected(False)
            if self.stopping:
                return
            await self._teardown_client()
            self._on_disconnect(reason, detail)
            delay = 0.0 if reason == "planned" else self.backoff_s(attempt)
            attempt += 1
            log.warning("reconnecting in %.2f s after %s: %s", delay, reason, detail)
            await asyncio.sleep(delay)

    async def _subscribe(self, url: str) -> tuple[Any, Any]:
        """Open (or reuse) the ccxt client of `url` and send one SUBSCRIBE for every stream;
        returns the client and the future resolved by the exchange's answer."""
        ex = self.ex
        req = self.transport.subscribe_request(ex, url, self.streams)
        h = f"mdpipe:sub:{req.request_id}"
        # our own backoff governs redials; ccxt's per-url dial backoff would stack on top of it
        if getattr(ex, "ws_dial_backoff", None):
            ex.ws_dial_backoff.pop(url, None)
        fut = ex.watch_multiple(url, [h], req.message, [h], {"id": req.request_id})
        return ex.clients[url], fut

    async def _make_before_break(self, detail: str) -> bool:
        """Replace the connection without a hole: subscribe a second connection, wait until it
        streams every symbol's depth, then switch. Frames both connections received are kept
        once (identical events are byte-identical frames); the normalizer's sequence checks
        still guard the seam, and a gap there would resync as usual."""
        old_url, old_client = self._conn_url, self._primary
        self._slot ^= 1
        url = self.transport.ws_endpoint(self.ex, self._slot)
        self._overlap = set()
        self._standby_ns, self._standby_text, self._standby_depth = [], [], set()
        try:
            client, fut = await self._subscribe(url)
            self._standby = client
            await asyncio.wait_for(fut, timeout=self.config.connect_timeout_s)
            want = self.depth_keys
            deadline = time.monotonic() + self.config.connect_timeout_s
            while not want <= self._standby_depth:
                if time.monotonic() > deadline or client.closed():
                    raise TimeoutError("the new connection delivered no depth for every symbol")
                await asyncio.sleep(0.01)
        except (TimeoutError, Exception) as exc:
            log.warning("make-before-break failed (%s); falling back to a plain reconnect", exc)
            self._standby = None
            self._overlap = None
            bad = self.ex.clients.pop(url, None)
            if bad is not None:
                with contextlib.suppress(Exception):
                    await bad.close()
            self._slot ^= 1
            return False
        # the switch itself: no await from here until the old client is detached
        self.drain()
        seen = self._overlap
        keep = [
            (n, t)
            for n, t in zip(self._standby_ns, self._standby_text, strict=True)
            if t not in seen
        ]
        dup = len(self._standby_text) - len(keep)
        self._seam = seen.difference(self._standby_text)
        self._seam_until = time.monotonic() + self.config.connect_timeout_s
        self._primary, self._conn_url = client, url
        self._standby, self._overlap = None, None
        self._standby_ns, self._standby_text = [], []
        for n, t in keep:
            self.inbox(n, t)
        self.depth_seen |= self._standby_depth
        self._last_rx_mono = time.monotonic()
        self.ex.clients.pop(old_url, None)
        self.status.reconnects.inc("planned")
        ep = self.status.episode(
            "planned_reconnect",
            "*",
            f"{detail}; switched to {url} "
            f"({len(keep)} new frames after the seam, {dup} duplicates dropped)",
            resolved=True,
        )
        log.info("%s", ep.detail)
        if old_client is not None:
            with contextlib.suppress(Exception):
                await old_client.close()
        return True

    async def _connect_and_subscribe(self) -> None:
        url = self.transport.ws_endpoint(self.ex, self._slot)
        self._conn_url = url
        self.depth_seen.clear()
        client, fut = await self._subscribe(url)
        self._primary = client
        await asyncio.wait_for(fut, timeout=self.config.connect_timeout_s)
        self._last_rx_mono = time.monotonic()
        log.info("subscribed on %s", url)

    async def _wait_connection_end(self, opened: float) -> tuple[str, str]:
        client = self.ex.clients.get(self._conn_url)
        if client is None:
            return "error", "client vanished after subscribing"
        alive = client.future("mdpipe:alive")
        last_tick = time.monotonic()
        while not self.stopping:
            done, _ = await asyncio.wait({alive}, timeout=0.2)
            tick = time.monotonic()
            stalled = tick - last_tick > 1.0
            last_tick = tick
            if stalled:
                # our own loop was blocked (CPU starvation, a long flush): frames may be waiting
                # in the socket; give the receive loop a turn before judging the exchange silent
                self._last_rx_mono = max(self._last_rx_mono, tick - 1.0)
                await asyncio.sleep(0)
            if done:
                exc = alive.exception() if not alive.cancelled() else None
                return "closed", f"connection closed: {exc}"
            if client.closed():
                return "closed", "connection closed"
            now = time.monotonic()
            silent = now - self._last_rx_mono
            if silent > self.config.stale_after_s:
                return (
                    "stale",
                    f"no message for {silent:.1f} s (watchdog {self.config.stale_after_s} s)",
                )
            if now - opened > self.config.max_connection_age_s:
                return "planned", (
                    f"planned reconnect after {now - opened:.0f} s "
                    f"(max_connection_age_s={self.config.max_connection_age_s:g})"
                )
        return "stopping", ""

    async def _teardown_client(self) -> None:
        if self.ex is None or self._conn_url is None:
            return
        client = self.ex.clients.pop(self._conn_url, None)
        self._primary = None
        if client is not None:
            # bounded: a close handshake the peer never answers must not delay the reconnect
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(client.close(), 2.0)

    def _on_disconnect(self, reason: str, detail: str) -> None:
        """Every book is unknown after the connection changes: gap rows, then resync each."""
        self.drain()
        self.depth_seen.clear()
        self.status.reconnects.inc(reason)
        self.lost(reason, detail)

    async def unsubscribe_and_close(self) -> None:
        """At stop: UNSUBSCRIBE, wait for the answer, close the client."""
        await self._unsubscribe_and_drain()
        await self._teardown_client()

    async def _unsubscribe_and_drain(self, timeout_s: float = 2.0) -> None:
        """UNSUBSCRIBE and wait for its answer: the exchange answers after every frame it sent
        before, so nothing already on the wire is lost by closing."""
        client = self._primary
        if client is None or self.ex is None or client.closed():
            return
        req = self.transport.unsubscribe_request(self.ex, client.url, self.streams)
        fut = client.future(f"mdpipe:sub:{req.request_id}")
        try:
            await client.send(req.message)
            await asyncio.wait_for(fut, timeout_s)
        except (TimeoutError, Exception) as exc:
            log.warning("no answer to UNSUBSCRIBE before closing (%s)", exc)


__all__ = ["Connection"]
