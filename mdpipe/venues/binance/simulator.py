"""A local Binance on 127.0.0.1: replays raw journals over Binance's websocket and REST protocol.

Spot, USD-M and COIN-M at once: each recording file is one venue's (recognised by content, as
import does: `pu` chaining is futures, a ``btcusd_perp`` market is COIN-M), served under that
venue's REST prefix (spot ``/api/v3``, USD-M ``/fapi/v1``, COIN-M ``/dapi/v1``) and on its own
websocket path ``/<venue>/stream`` (``/stream`` and ``/ws`` serve every venue's streams, as one
venue's recording always did). A recording of a single venue is also served under the other
prefixes, as before.

What a real `ccxt.pro.binance` client needs, and nothing pretends beyond it:

- REST `GET /api/v3/ping`, `/api/v3/time`, `/api/v3/exchangeInfo` (only the recorded symbols),
  `/api/v3/depth` (served from a book the simulator maintains by applying every diff it has
  replayed, so `lastUpdateId` is the last replayed `u` and a resync snapshot is always consistent
  with the stream), `/api/v3/trades` (recent replayed trades), `/api/v3/historicalTrades`
  (`fromId`, `limit`: every trade printed so far, whether or not anyone received it).
- Websocket on `/ws[/...]` (raw payloads, as Binance's raw streams) and `/stream[/...]`
  (combined-stream frames `{"stream":..,"data":..}`), with `SUBSCRIBE` / `UNSUBSCRIBE` /
  `LIST_SUBSCRIPTIONS` and Binance's `{"result":null,"id":N}` answers.
- Faults on command (Python methods or `POST /_sim/fault` with a JSON body): drop every
  connection, skip N diffs of a symbol (a sequence gap: the simulator's own book still applies
  them), go silent for S seconds, send a malformed frame, answer the next depth snapshot with
  429/418 + Retry-After, restart (close everything, refuse connections for a while, come back),
  answer the next N historicalTrades requests with an error status.

Replay pacing follows the recorded receive times divided by `speed` (`speed=None` is "max": as
fast as the sockets take it). The replay clock only runs while at least one client is subscribed
(unless `keep_running`: set by the constructor or by a `drop` fault with `keep_running=True`,
the exchange then goes on printing with nobody listening, as a real one does),
and starts once every recorded stream has a subscriber (or `start_grace_s` after the first
SUBSCRIBE), so a capture that connects late or reconnects loses nothing the exchange did not
deliberately drop. Frames are sent byte-for-byte as recorded.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from mdpipe.lake import iter_journal_lines
from mdpipe.venues.binance import sniff
from mdpipe.venues.binance.common import COINM, SPOT, USDM, split_symbol, unified_symbol
from mdpipe.venues.binance.contracts import contract_size

log = logging.getLogger("mdpipe.venues.binance.simulator")

FAULT_KINDS = (
    "drop",
    "skip",
    "silence",
    "malformed",
    "snapshot_429",
    "snapshot_418",
    "restart",
    "history_error",
)
PRINTED_TRADES_KEPT = 1_000_000  # per symbol, for historicalTrades (older ones are forgotten)
# `speed` is not a fault but travels the same control path: {"kind": "speed", "speed": 5}


# the REST prefix of each venue, and the venue of each prefix
REST_PREFIX = {SPOT: "/api/v3", USDM: "/fapi/v1", COINM: "/dapi/v1"}
_MARKET_VENUE = {"spot": SPOT, "usdm": USDM, "coinm": COINM}


@dataclass(slots=True)
class _Event:
    recv_ns: int
    sym: str  # lowercase exchange id, e.g. 'btcusdt'
    stream: str
    kind: str  # 'depth' | 'trade' | 'bookTicker' | 'other'
    frame: str  # the recorded combined-stream frame text
    data: dict[str, Any] | None = None  # parsed payload, only for depth diffs and trades
    venue: str = SPOT

    @property
    def key(self) -> str:
        """The market's key in `ExchangeSim.markets`: ``<venue>:<exchange id>``."""
        return f"{self.venue}:{self.sym}"


@dataclass
class _SymbolState:
    sym: str
    venue: str = SPOT
    snapshot_id: int | None = None
    snapshot_recv_ns: int | None = None  # where the recorder took its REST snapshot
    snapshot_served: bool = False
    first_bids: dict[str, str] | None = None  # the recorded snapshot, to restart laps from
    first_asks: dict[str, str] | None = None
    snapshot_id_shift: int = 0
    hold_done: bool = False
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    last_u: int | None = None
    skip_diffs: int = 0
    snapshot_error: tuple[int, float] | None = None  # (status, retry_after_s) for the next depth
    recent_trades: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    sent_trade_ids: list[int] = field(default_factory=list)
    # every trade printed (replayed), delivered or not, ids as sent: what historicalTrades serves
    printed_trades: list[dict[str, Any]] = field(default_factory=list)
    sent_diffs: int = 0
    trades_sent: int = 0
    skipped_update_ids: list[tuple[int, int]] = field(default_factory=list)

    @property
    def printed_trade_ids(self) -> list[int]:
        return [int(t["t"]) for t in self.printed_trades]

    @property
    def last_update_id(self) -> int:
        snap = None if self.snapshot_id is None else self.snapshot_id + self.snapshot_id_shift
        ids = [x for x in (snap, self.last_u) if x is not None]
        return max(ids) if ids else 0

    def apply_diff(self, d: dict[str, Any], id_shift: int = 0) -> None:
        u = int(d["u"]) + id_shift
        if self.snapshot_id is not None and u <= self.snapshot_id + id_shift:
            return  # already contained in the recorded snapshot
        for side, levels in ((self.bids, d["b"]), (self.asks, d["a"])):
            for px, qty in levels:
                if float(qty) == 0.0:
                    side.pop(px, None)
                else:
                    side[px] = qty
        self.last_u = u

    def depth(self, limit: int) -> dict[str, Any]:
        bids = sorted(self.bids.items(), key=lambda kv: -float(kv[0]))[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))[:limit]
        return {
            "lastUpdateId": self.last_update_id,
            "bids": [[p, q] for p, q in bids],
            "asks": [[p, q] for p, q in asks],
        }


@dataclass
class _Conn:
    ws: web.WebSocketResponse
    wrapped: bool
    streams: set[str] = field(default_factory=set)
    sent: int = 0
    venue: str | None = None  # None: every venue's streams (`/stream`, `/ws`)


_CACHE: dict[tuple[tuple[str, int, int], ...], tuple[list[_Event], dict[str, _SymbolState]]] = {}


def load_recording_cached(
    paths: Sequence[str | Path],
) -> tuple[list[_Event], dict[str, _SymbolState]]:
    """`load_recording`, parsed once per process: events are never mutated, and each caller gets
    fresh symbol states (their books are mutated by the replay)."""
    key = tuple(
        (str(Path(p).resolve()), Path(p).stat().st_mtime_ns, Path(p).stat().st_size) for p in paths
    )
    if key not in _CACHE:
        _CACHE.clear()  # one recording set at a time keeps memory bounded
        _CACHE[key] = load_recording(paths)
    events, states = _CACHE[key]
    fresh = {
        key: _SymbolState(
            st.sym,
            st.venue,
            snapshot_id=st.snapshot_id,
            snapshot_recv_ns=st.snapshot_recv_ns,
            bids=dict(st.bids),
            asks=dict(st.asks),
            first_bids=st.bids,
            first_asks=st.asks,
        )
        for key, st in states.items()
    }
    return list(events), fresh


def load_recording(paths: Sequence[str | Path]) -> tuple[list[_Event], dict[str, _SymbolState]]:
    """Parse journals into one receive-time-ordered event list plus each symbol's first snapshot.

    Several files of one symbol are read in the order given as one stream; REST snapshot lines
    (bare `{"lastUpdateId":..}`) seed the simulator's book and are not streamed. Each file is
    one venue's, recognised from its first lines as import recognises it. States are keyed
    ``<venue>:<exchange id>``.
    """
    events: list[_Event] = []
    states: dict[str, _SymbolState] = {}
    for path in paths:
        file_sym: str | None = None
        pending_snapshot: dict[str, Any] | None = None
        snapshot_ns = 0
        lines = list(iter_journal_lines(path))
        head = sniff.sniff_head([t.encode() for _, t, _ in lines[:2000]])
        venue = _MARKET_VENUE[head.market_type]
        for recv_ns, text, line_no in lines:
            if text.startswith('{"stream":"'):
                stream = text[11 : text.index('"', 11)]
                sym, _, rest = stream.partition("@")
                file_sym = sym
                if rest.startswith("depth"):
                    kind = "depth"
                elif rest == "trade":
                    kind = "trade"
                elif rest == "bookTicker":
                    kind = "bookTicker"
                else:
                    kind = "other"
                data = json.loads(text)["data"] if kind in ("depth", "trade") else None
                events.append(_Event(recv_ns, sym, stream, kind, text, data, venue))
            elif text.startswith('{"lastUpdateId"'):
                pending_snapshot = json.loads(text)
                snapshot_ns = recv_ns
            else:
                raise ValueError(f"{path}:{line_no}: not a combined-stream frame or REST snapshot")
            if pending_snapshot is not None and file_sym is not None:
                key = f"{venue}:{file_sym}"
                st = states.setdefault(key, _SymbolState(file_sym, venue))
                if st.snapshot_id is None:
                    st.snapshot_id = int(pending_snapshot["lastUpdateId"])
                    st.snapshot_recv_ns = snapshot_ns
                    st.bids = {p: q for p, q in pending_snapshot["bids"]}
                    st.asks = {p: q for p, q in pending_snapshot["asks"]}
                pending_snapshot = None
        if file_sym is not None:
            states.setdefault(f"{venue}:{file_sym}", _SymbolState(file_sym, venue))
    # stable: equal receive times keep file order
    events.sort(key=lambda e: e.recv_ns)
    return events, states


def _exchange_info_symbol(sym_upper: str) -> dict[str, Any]:
    try:
        base, quote = split_symbol(sym_upper)
    except ValueError:
        base, quote = sym_upper, ""
    return {
        "symbol": sym_upper,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.01000000",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.01000000",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "maxNotional": "9000000.0"},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _exchange_info_futures_symbol(sym_upper: str, venue: str) -> dict[str, Any]:
    """One symbol of ``/fapi/v1/exchangeInfo`` (USD-M) or ``/dapi/v1/exchangeInfo`` (COIN-M:
    ``BTCUSD_PERP``, pair ``BTCUSD``, margined in the base asset, ``contractSize`` in USD)."""
    if venue == COINM:
        pair, _, expiry = sym_upper.partition("_")
        base, quote = split_symbol(pair)
        size = contract_size(sym_upper)
        perpetual = expiry == "PERP"
        extra: dict[str, Any] = {
            "pair": pair,
            "contractType": "PERPETUAL" if perpetual else "CURRENT_QUARTER",
            "contractStatus": "TRADING",
            "marginAsset": base,
            "contractSize": int(size) if size is not None else 10,
        }
        spot = _exchange_info_symbol(pair)
    else:
        spot = _exchange_info_symbol(sym_upper)
        base, quote = spot["baseAsset"], spot["quoteAsset"]
        extra = {"pair": sym_upper, "contractType": "PERPETUAL", "marginAsset": quote}
    return {
        "symbol": sym_upper,
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "baseAsset": base,
        "quoteAsset": quote,
        "pricePrecision": 2,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "triggerProtect": "0.0500",
        "filters": spot["filters"],
        "orderTypes": ["LIMIT", "MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        **extra,
    }


class ExchangeSim:
    """The simulated exchange. `await start()`, inject faults, `await stop()`.

    Parameters
    ----------
    recordings: journal files to replay (several files of one symbol: in order, one stream)
    speed: replay speed factor against recorded receive times; None replays as fast as possible
    port: TCP port on 127.0.0.1; 0 picks a free one (see `.port` after start)
    start_grace_s: start replaying this long after the first SUBSCRIBE even if some recorded
        stream has no subscriber yet
    """

    def __init__(
        self,
        recordings: Sequence[str | Path],
        *,
        speed: float | None = 1.0,
        port: int = 0,
        host: str = "127.0.0.1",
        start_grace_s: float = 5.0,
        hold_for_snapshot_s: float = 5.0,
        limit_events: int | None = None,
        laps: int = 1,
        retime: bool = False,
        keep_running: bool = False,
    ) -> None:
        if not recordings:
            raise ValueError("ExchangeSim needs at least one recording file")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None for max speed, got {speed!r}")
        if start_grace_s < 0:
            raise ValueError(f"start_grace_s must be >= 0, got {start_grace_s!r}")
        self.recordings = [Path(p) for p in recordings]
        self.speed = speed
        self.host = host
        self.port = port
        self.start_grace_s = start_grace_s
        if hold_for_snapshot_s < 0:
            raise ValueError(f"hold_for_snapshot_s must be >= 0, got {hold_for_snapshot_s!r}")
        self.hold_for_snapshot_s = hold_for_snapshot_s
        if laps < 0:
            raise ValueError(f"laps must be >= 0 (0: forever), got {laps!r}")
        self.laps = laps
        self.lap = 0
        self.retime = retime
        self.keep_running = keep_running
        self.history_error: tuple[int, int, float | None] | None = None  # status, count, retry
        self.history_requests = 0
        self.events, self.markets = load_recording_cached(self.recordings)
        if limit_events is not None:
            self.events = self.events[:limit_events]
        self.venues = sorted({st.venue for st in self.markets.values()})
        self.all_streams = {(e.venue, e.stream) for e in self.events}
        self._spans = _lap_spans(self.events)
        offsets = sorted(
            int(e.data["E"]) - e.recv_ns // 1_000_000
            for e in self.events[:20_000]
            if e.data is not None and "E" in e.data
        )
        # the recorder's clock vs the exchange's (about +1.27 s for the bundled recording)
        self.recorded_offset_ms = offsets[len(offsets) // 2] if offsets else 0
        self._conns: list[_Conn] = []
        self._runner: web.AppRunner | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._pos = 0
        self._first_subscribe_at: float | None = None
        self._subscribed_event = asyncio.Event()
        self._silent_until = 0.0
        self._silence_lose = False
        self._down_until = 0.0
        self._pending_malformed: list[str] = []
        self._reanchor = False
        self.finished = asyncio.Event()
        self.started = asyncio.Event()
        # replay position events and the hold (see reached(), hold(), release())
        self._reached: list[tuple[int, asyncio.Event]] = []
        self._hold_at: int | None = None
        self._released = asyncio.Event()
        self.frames_sent = 0
        self.faults_applied: list[dict[str, Any]] = []
        self.snapshot_requests = 0
        # recorded exchange time of the last replayed event (the first one's before the replay)
        self._clock_ms: int = next(
            (int(e.data["E"]) for e in self.events if e.data is not None and "E" in e.data), 0
        )

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/stream"

    @property
    def symbols(self) -> dict[str, _SymbolState]:
        """Markets by exchange id (``btcusdt``); an id that two venues share appears once per
        venue as ``<venue>:<id>`` only (see `markets`)."""
        ids = [st.sym for st in self.markets.values()]
        return {(st.sym if ids.count(st.sym) == 1 else key): st for key, st in self.markets.items()}

    @property
    def futures(self) -> bool:
        """True when every recorded market is a futures one (USD-M or COIN-M)."""
        return SPOT not in self.venues

    def unified_symbols(self, venue: str | None = None) -> list[str]:
        return [
            unified_symbol(st.sym.upper(), st.venue)
            for st in sorted(self.markets.values(), key=lambda st: (st.venue, st.sym))
            if venue is None or st.venue == venue
        ]

    def ws_url_of(self, venue: str) -> str:
        """The websocket URL that serves one venue's streams only."""
        return f"ws://{self.host}:{self.port}/{venue}/stream"

    def capture_command(self) -> str:
        if len(self.venues) == 1:
            venue = self.venues[0]
            return (
                f"mdpipe capture --venue {venue} --symbols {','.join(self.unified_symbols())} "
                f"--ws-url {self.ws_url} --rest-url {self.rest_url}"
            )
        markets = ",".join(f"{v}:{s}" for v in self.venues for s in self.unified_symbols(v))
        return (
            f"mdpipe capture --markets {markets} "
            f"--ws-url ws://{self.host}:{self.port}/{{venue}}/stream --rest-url {self.rest_url}"
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/depth", self._depth)
        app.router.add_get("/api/v3/trades", self._trades)
        app.router.add_get("/api/v3/historicalTrades", self._historical_trades)
        # USD-M futures: the same books and streams under Binance's /fapi paths; a recording
        # whose diffs carry `pu` is a futures recording (see `futures`)
        app.router.add_get("/fapi/v1/ping", self._ping)
        app.router.add_get("/fapi/v1/time", self._time)
        app.router.add_get("/fapi/v1/exchangeInfo", self._exchange_info_futures)
        app.router.add_get("/fapi/v1/depth", self._depth_futures)
        app.router.add_get("/fapi/v1/trades", self._trades)
        app.router.add_get("/fapi/v1/historicalTrades", self._historical_trades)
        # COIN-M futures under /dapi
        app.router.add_get("/dapi/v1/ping", self._ping)
        app.router.add_get("/dapi/v1/time", self._time)
        app.router.add_get("/dapi/v1/exchangeInfo", self._exchange_info_futures)
        app.router.add_get("/dapi/v1/depth", self._depth_futures)
        app.router.add_get("/dapi/v1/trades", self._trades)
        app.router.add_get("/dapi/v1/historicalTrades", self._historical_trades)
        app.router.add_post("/_sim/fault", self._fault_http)
        app.router.add_get("/_sim/status", self._status_http)
        for path in ("/ws", "/ws/{tail:.*}", "/stream", "/stream/{tail:.*}"):
            app.router.add_get(path, self._ws)
        for venue in REST_PREFIX:  # one venue's streams only, as each has its own host
            for path in ("ws", "ws/{tail:.*}", "stream", "stream/{tail:.*}"):
                app.router.add_get(f"/{venue}/{path}", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        self._replay_task = asyncio.create_task(self._replay(), name="exchange-sim-replay")

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        await self._close_all(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _close_all(self, code: int = 1006, abort: bool = False) -> None:
        conns, self._conns = self._conns, []
        for c in conns:
            if abort and c.ws._req is not None and c.ws._req.transport is not None:
                c.ws._req.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await c.ws.close(code=code)

    # ---- faults (Python API) ---------------------------------------------------------------

    async def fault(self, kind: str, **kw: Any) -> dict[str, Any]:
        """Inject a fault; see FAULT_KINDS. Returns what was done (also kept in faults_applied)."""
        now = time.monotonic()
        rec: dict[str, Any] = {"kind": kind, **kw, "at_event": self._pos}
        if kind == "drop":
            if kw.get("keep_running"):
                # from now on the replay runs on while nobody is connected (a real exchange)
                self.keep_running = True
            await self._close_all(abort=bool(kw.get("abort", True)))
        elif kind == "skip":
            st = self._sym_state(kw["symbol"], kw.get("venue"))
            st.skip_diffs += int(kw.get("count", 1))
        elif kind == "silence":
            self._silent_until = now + float(kw.get("seconds", 1.0))
            self._silence_lose = bool(kw.get("lose", False))
        elif kind == "malformed":
            text = kw.get("text") or '{"stream":"btcusdt@trade","data":{"e":"trade","t":'
            self._pending_malformed.append(str(text))
        elif kind in ("snapshot_429", "snapshot_418"):
            status = 429 if kind == "snapshot_429" else 418
            retry = float(kw.get("retry_after", 1.0))
            targets = (
                [self._sym_state(kw["symbol"], kw.get("venue"))]
                if kw.get("symbol")
                else self.markets.values()
            )
            for st in targets:
                st.snapshot_error = (status, retry)
        elif kind == "history_error":
            ra = kw.get("retry_after")
            self.history_error = (
                int(kw.get("status", 500)),
                int(kw.get("count", 1)),
                None if ra is None else float(ra),
            )
        elif kind == "speed":
            self.set_speed(None if kw.get("speed") in (None, "max") else float(kw["speed"]))
        elif kind == "restart":
            self._down_until = now + float(kw.get("down_s", 1.0))
            await self._close_all(code=1012)
        else:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        self.faults_applied.append(rec)
        log.info("fault injected: %s", rec)
        return rec

    @property
    def position(self) -> int:
        """Events replayed so far (of this lap)."""
        return self._pos

    def reached(self, pos: int) -> asyncio.Event:
        """An event set once `pos` events have been replayed, or the replay has finished."""
        ev = asyncio.Event()
        if self._pos >= pos or self.finished.is_set():
            ev.set()
        else:
            self._reached.append((pos, ev))
        return ev

    def hold(self, at: int) -> None:
        """Replay no event from position `at` on until `release()`: a test that needs N events
        after something (a resync) holds the replay until it happened, whatever the load."""
        if at < 0:
            raise ValueError(f"hold position must be >= 0, got {at!r}")
        self._hold_at = at
        self._released.clear()

    def release(self) -> None:
        """End a hold: the replay goes on from where it stopped."""
        self._hold_at = None
        self._released.set()

    def _signal_reached(self) -> None:
        if self._reached:
            done = [(p, e) for p, e in self._reached if self._pos >= p or self.finished.is_set()]
            for item in done:
                item[1].set()
                self._reached.remove(item)

    def set_speed(self, speed: float | None) -> None:
        """Change the replay speed from the current position on (None: as fast as possible)."""
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None for max speed, got {speed!r}")
        self.speed = speed
        self._reanchor = True

    def _sym_state(self, symbol: str, venue: str | None = None) -> _SymbolState:
        """A market by unified symbol (``BTC/USD:BTC``), exchange id, or ``BTC/USDT`` for
        ``btcusdt`` (the old spelling); ``venue`` picks one where several venues list it."""
        sym = symbol.replace("/", "").replace("-", "").lower()
        hits = [
            st
            for st in self.markets.values()
            if (venue is None or st.venue == venue)
            and (st.sym == sym or unified_symbol(st.sym.upper(), st.venue) == symbol)
        ]
        if len(hits) != 1:
            known = sorted(self.markets)
            why = "is not in the recording" if not hits else "is listed by several venues"
            raise ValueError(f"symbol {symbol!r} {why} ({known}); name the venue")
        return hits[0]

    def _venue_of(self, request: web.Request) -> str:
        for venue, prefix in REST_PREFIX.items():
            if request.path.startswith(prefix + "/"):
                return venue
        return SPOT

    def _venue_markets(self, venue: str) -> list[_SymbolState]:
        """The markets a venue's REST prefix serves; a single-venue recording is served under
        every prefix (what the simulator always did)."""
        if len(self.venues) == 1:
            return list(self.markets.values())
        return [st for st in self.markets.values() if st.venue == venue]

    def _market_of(self, request: web.Request) -> _SymbolState | None:
        sym = request.query.get("symbol", "").lower()
        for st in self._venue_markets(self._venue_of(request)):
            if st.sym == sym:
                return st
        return None

    # ---- REST ------------------------------------------------------------------------------

    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _unavailable(self) -> web.Response:
        return web.json_response({"code": -1001, "msg": "Internal error; restarting."}, status=503)

    async def _ping(self, request: web.Request) -> web.Response:
        return self._unavailable() if self._down() else web.json_response({})

    def server_time_ms(self) -> int:
        """The recorded exchange clock at the replay position (frames are sent unmodified), or
        with `retime`, the local clock plus the recording's exchange-minus-receive offset."""
        if self.retime:
            return int(time.time() * 1000) + self.recorded_offset_ms
        return self._clock_ms or int(time.time() * 1000)

    async def _time(self, request: web.Request) -> web.Response:
        if self._down():
            return self._unavailable()
        return web.json_response({"serverTime": self.server_time_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        if self._down():
            return self._unavailable()
        body = {
            "timezone": "UTC",
            "serverTime": self.server_time_ms(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 6000,
                }
            ],
            "exchangeFilters": [],
            "symbols": [
                _exchange_info_symbol(st.sym.upper())
                for st in sorted(self._venue_markets(SPOT), key=lambda st: st.sym)
            ],
        }
        return web.json_response(body)

    async def _exchange_info_futures(self, request: web.Request) -> web.Response:
        if self._down():
            return self._unavailable()
        venue = self._venue_of(request)
        symbols = []
        for st in sorted(self._venue_markets(venue), key=lambda st: st.sym):
            symbols.append(_exchange_info_futures_symbol(st.sym.upper(), venue))
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self.server_time_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "assets": [],
                "symbols": symbols,
            }
        )

    async def _depth_futures(self, request: web.Request) -> web.Response:
        resp = await self._depth(request)
        if resp.status != 200 or resp.body is None:
            return resp
        body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
        # futures snapshots carry the message and transaction times; COIN-M's also name the
        # symbol and pair
        t = self.server_time_ms()
        extra = {}
        if self._venue_of(request) == COINM:
            sym = request.query.get("symbol", "").upper()
            extra = {"symbol": sym, "pair": sym.partition("_")[0]}
        return web.json_response(
            {
                "lastUpdateId": body["lastUpdateId"],
                "E": t,
                "T": t,
                **extra,
                "bids": body["bids"],
                "asks": body["asks"],
            }
        )

    def _bad_symbol(self) -> web.Response:
        return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)

    async def _depth(self, request: web.Request) -> web.Response:
        if self._down():
            return self._unavailable()
        st = self._market_of(request)
        if st is None:
            return self._bad_symbol()
        self.snapshot_requests += 1
        if st.snapshot_error is None:
            st.snapshot_served = True
        if st.snapshot_error is not None:
            status, retry = st.snapshot_error
            st.snapshot_error = None
            msg = "Too many requests." if status == 429 else "IP banned until later."
            return web.json_response(
                {"code": -1003, "msg": msg}, status=status, headers={"Retry-After": f"{retry:g}"}
            )
        try:
            limit = min(int(request.query.get("limit", "100")), 5000)
        except ValueError:
            return web.json_response(
                {"code": -1100, "msg": "Illegal characters in limit."}, status=400
            )
        return web.json_response(st.depth(limit))

    async def _trades(self, request: web.Request) -> web.Response:
        if self._down():
            return self._unavailable()
        st = self._market_of(request)
        if st is None:
            return self._bad_symbol()
        limit = min(int(request.query.get("limit", "500")), 1000)
        trades = list(st.recent_trades)[-limit:]
        return web.json_response(
            [
                {
                    "id": t["t"],
                    "price": t["p"],
                    "qty": t["q"],
                    "quoteQty": f"{float(t['p']) * float(t['q']):.8f}",
                    "time": t["T"],
                    "isBuyerMaker": t["m"],
                    "isBestMatch": t.get("M", True),
                }
                for t in trades
            ]
        )

    async def _historical_trades(self, request: web.Request) -> web.Response:
        """Binance's `historicalTrades`: up to `limit` (default 500, max 1000) printed trades
        from `fromId` on (without it: the most recent), oldest first."""
        if self._down():
            return self._unavailable()
        st = self._market_of(request)
        if st is None:
            return self._bad_symbol()
        self.history_requests += 1
        if self.history_error is not None:
            status, count, retry = self.history_error
            self.history_error = (status, count - 1, retry) if count > 1 else None
            headers = {} if retry is None else {"Retry-After": f"{retry:g}"}
            msg = "Too many requests." if status in (418, 429) else "Internal error."
            return web.json_response({"code": -1003, "msg": msg}, status=status, headers=headers)
        try:
            limit = max(1, min(int(request.query.get("limit", "500")), 1000))
            from_id = request.query.get("fromId")
            start = None if from_id is None else int(from_id)
        except ValueError:
            return web.json_response({"code": -1100, "msg": "Illegal characters."}, status=400)
        printed = st.printed_trades
        if start is None:
            page = printed[-limit:]
        else:
            i = bisect.bisect_left(printed, start, key=lambda t: int(t["t"]))
            page = printed[i : i + limit]
        return web.json_response(
            [
                {
                    "id": int(t["t"]),
                    "price": t["p"],
                    "qty": t["q"],
                    "quoteQty": f"{float(t['p']) * float(t['q']):.8f}",
                    "time": t["T"],
                    "isBuyerMaker": t["m"],
                    **({} if st.venue != SPOT else {"isBestMatch": t.get("M", True)}),
                }
                for t in page
            ]
        )

    async def _fault_http(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            kind = body.pop("kind")
            rec = await self.fault(kind, **body)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(rec)

    async def _status_http(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    def status(self) -> dict[str, Any]:
        return {
            "position": self._pos,
            "lap": self.lap,
            "events": len(self.events),
            "finished": self.finished.is_set(),
            "frames_sent": self.frames_sent,
            "connections": len(self._conns),
            "snapshot_requests": self.snapshot_requests,
            "history_requests": self.history_requests,
            "keep_running": self.keep_running,
            "symbols": {
                s: {
                    "last_update_id": st.last_update_id,
                    "trades_sent": st.trades_sent,
                    "diffs_sent": st.sent_diffs,
                    "skipped": st.skipped_update_ids,
                }
                for s, st in self.symbols.items()
            },
            "venues": self.venues,
        }

    # ---- websocket -------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self._down():
            return self._unavailable()
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        first = request.path.strip("/").split("/")[0]
        venue = first if first in REST_PREFIX else None
        rest_path = request.path.removeprefix(f"/{venue}") if venue else request.path
        conn = _Conn(ws=ws, wrapped=rest_path.startswith("/stream"), venue=venue)
        tail = request.match_info.get("tail", "")
        if "@" in tail:  # raw single-stream path /ws/btcusdt@trade
            conn.streams.update(tail.split("/"))
        qs = request.query.get("streams")
        if qs:
            conn.streams.update(qs.split("/"))
        self._conns.append(conn)
        if conn.streams:
            self._on_subscribe()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._handle_client_message(conn, msg.data)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
        return ws

    async def _handle_client_message(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
            method = req["method"]
            rid = req.get("id")
        except (ValueError, KeyError, TypeError):
            await conn.ws.send_str(json.dumps({"code": 2, "msg": "Invalid request"}))
            return
        params = req.get("params") or []
        if method == "SUBSCRIBE":
            conn.streams.update(str(p) for p in params)
            await conn.ws.send_str(json.dumps({"result": None, "id": rid}))
            self._on_subscribe()
        elif method == "UNSUBSCRIBE":
            conn.streams.difference_update(str(p) for p in params)
            await conn.ws.send_str(json.dumps({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.ws.send_str(json.dumps({"result": sorted(conn.streams), "id": rid}))
        else:
            await conn.ws.send_str(
                json.dumps({"error": {"code": 1, "msg": "Unknown method"}, "id": rid})
            )

    def _on_subscribe(self) -> None:
        if self._first_subscribe_at is None:
            self._first_subscribe_at = time.monotonic()
        self._subscribed_event.set()

    def _subscribed_streams(self) -> set[tuple[str, str]]:
        """(venue, stream) pairs someone listens to (a `/stream` client: every venue's)."""
        out: set[tuple[str, str]] = set()
        for c in self._conns:
            for v in [c.venue] if c.venue else self.venues:
                out |= {(v, s) for s in c.streams}
        return out

    # ---- replay ----------------------------------------------------------------------------

    async def _wait_ready(self) -> float:
        """Block while nobody listens (start condition, reconnects, restarts); returns time waited."""
        t0 = time.monotonic()
        while True:
            now = time.monotonic()
            if now < self._down_until:
                await asyncio.sleep(self._down_until - now)
                continue
            subscribed = self._subscribed_streams()
            if not self.started.is_set():
                grace_over = (
                    self._first_subscribe_at is not None
                    and now - self._first_subscribe_at >= self.start_grace_s
                )
                if subscribed and (self.all_streams <= subscribed or grace_over):
                    self.started.set()
                    return time.monotonic() - t0
            elif subscribed or self.keep_running:
                return time.monotonic() - t0
            self._subscribed_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed_event.wait(), timeout=0.05)

    async def _replay(self) -> None:
        events = self.events
        await self._wait_ready()
        rec0 = events[0].recv_ns if events else 0
        wall0 = time.monotonic()
        since_yield = 0
        while True:
            if self._pos >= len(events):
                if self.laps and self.lap + 1 >= self.laps:
                    break
                # next lap: the same recording shifted in time and ids, see _lap_spans
                self.lap += 1
                self._pos = 0
                self._reanchor = True
                for st in self.markets.values():
                    # each lap starts from the recorded snapshot again: the book then matches the
                    # lap's diffs; clients see the one-id hole at the seam and resync
                    if st.snapshot_id is not None and st.first_bids is not None:
                        st.bids, st.asks = dict(st.first_bids), dict(st.first_asks or {})
                        st.last_u = None
                        st.snapshot_id_shift = self._spans[f"{st.venue}:{st.sym}"][1] * self.lap
                continue
            waited = await self._wait_ready()
            if self._hold_at is not None and self._pos >= self._hold_at:
                t_hold = time.monotonic()
                await self._released.wait()
                wall0 += waited + time.monotonic() - t_hold  # the hold does not count as lag
                continue  # re-check subscribers and faults after the hold
            now = time.monotonic()
            if now < self._silent_until and not self._silence_lose:
                await asyncio.sleep(self._silent_until - now)
                waited += self._silent_until - now
            wall0 += waited
            ev = events[self._pos]
            if self._reanchor:
                self._reanchor = False
                rec0, wall0 = ev.recv_ns, time.monotonic()
            st = self.markets[ev.key]
            if (
                self.hold_for_snapshot_s > 0
                and not st.hold_done
                and st.snapshot_recv_ns is not None
                and ev.recv_ns > st.snapshot_recv_ns
            ):
                # The recording has a real REST snapshot only here. Holding the replay until the
                # client asks for one lets it sync exactly where the recorder did; later
                # snapshots are rebuilt from the replayed diffs and only as deep as this one.
                st.hold_done = True
                t_hold = time.monotonic()
                while (
                    not st.snapshot_served and time.monotonic() - t_hold < self.hold_for_snapshot_s
                ):
                    await asyncio.sleep(0.002)
                wall0 += time.monotonic() - t_hold
            if self.speed is not None:
                target = wall0 + (ev.recv_ns - rec0) / 1e9 / self.speed
                delay = target - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                    continue  # re-check faults and subscribers after sleeping
            if self._pending_malformed:
                bad = self._pending_malformed.pop(0)
                for c in list(self._conns):
                    if c.streams:
                        await self._send(c, bad, as_recorded=True)
            self._pos += 1
            await self._emit(ev, silent=time.monotonic() < self._silent_until)
            self._signal_reached()
            since_yield += 1
            # events recorded at the same instant go out together (no yield between them)
            if since_yield >= 64 and (
                self._pos >= len(events) or events[self._pos].recv_ns != ev.recv_ns
            ):
                since_yield = 0
                await asyncio.sleep(0)
        self.finished.set()
        self._signal_reached()
        log.info("replay finished: %d events, %d frames sent", len(events), self.frames_sent)

    async def _emit(self, ev: _Event, silent: bool) -> None:
        st = self.markets[ev.key]
        lap = self.lap
        dt_ms, du, dt = (0, 0, 0)
        frame = ev.frame
        if lap:
            span_ms, upd, trd = self._spans[ev.key]
            dt_ms, du, dt = lap * span_ms, lap * upd, lap * trd
        if self.retime:
            # exchange times move to "now", keeping each event's recorded E - receive time
            dt_ms = int(time.time() * 1000) - ev.recv_ns // 1_000_000
        if lap or self.retime:
            frame = _shift_frame(ev, dt_ms, du, dt)
        if ev.data is not None and "E" in ev.data:
            self._clock_ms = int(ev.data["E"]) + dt_ms
        if ev.kind == "depth":
            assert ev.data is not None
            st.apply_diff(ev.data, du)
            if st.skip_diffs > 0:
                st.skip_diffs -= 1
                st.skipped_update_ids.append((int(ev.data["U"]) + du, int(ev.data["u"]) + du))
                return
        elif ev.kind == "trade":
            assert ev.data is not None
            trade = ev.data if not lap else {**ev.data, "t": ev.data["t"] + dt}
            st.recent_trades.append(trade)
            st.printed_trades.append(trade)
            if len(st.printed_trades) > 2 * PRINTED_TRADES_KEPT:
                del st.printed_trades[:PRINTED_TRADES_KEPT]
        if silent:
            return
        delivered = False
        for c in list(self._conns):
            if ev.stream in c.streams and (c.venue is None or c.venue == ev.venue):
                delivered = await self._send(c, frame, as_recorded=c.wrapped) or delivered
        if delivered:
            if ev.kind == "trade":
                assert ev.data is not None
                st.trades_sent += 1
                if self.laps == 1:  # ids are kept for checks; a long soak only counts
                    st.sent_trade_ids.append(int(ev.data["t"]) + dt)
            elif ev.kind == "depth":
                st.sent_diffs += 1

    async def _send(self, c: _Conn, frame: str, as_recorded: bool) -> bool:
        if c.ws.closed:
            return False
        text = frame if as_recorded else _unwrap(frame)
        try:
            await c.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        c.sent += 1
        self.frames_sent += 1
        return True


_SHIFT_RE = {
    "depth": re.compile(r'"([EUu])":(\d+)'),
    "trade": re.compile(r'"([ETt])":(\d+)'),
    "bookTicker": re.compile(r'"(u)":(\d+)'),
}


def _lap_spans(events: list[_Event]) -> dict[str, tuple[int, int, int]]:
    """Per symbol: (time span ms, update-id span, trade-id span) of one lap of the recording.
    Lap k shifts times and ids by k spans, so trade ids never repeat and update ids keep
    increasing, with a one-id hole at each seam (see below)."""
    if not events:
        return {}
    span_ms = (events[-1].recv_ns - events[0].recv_ns) // 1_000_000 + 100
    out: dict[str, tuple[int, int, int]] = {}
    for key in {e.key for e in events}:
        depth = [e.data for e in events if e.key == key and e.kind == "depth" and e.data]
        trades = [int(e.data["t"]) for e in events if e.key == key and e.kind == "trade" and e.data]
        # +2, not +1: one update id is left out at each seam, so a client sees an honest
        # sequence gap there (the book restarts from the recorded snapshot) and resyncs
        upd = (int(depth[-1]["u"]) - int(depth[0]["U"]) + 2) if depth else 0
        trd = (max(trades) - min(trades) + 1) if trades else 0
        out[key] = (span_ms, upd, trd)
    return out


def _shift_frame(ev: _Event, dt_ms: int, du: int, dt: int) -> str:
    pattern = _SHIFT_RE.get(ev.kind)
    if pattern is None:
        return ev.frame
    off = {"E": dt_ms, "T": dt_ms, "U": du, "u": du, "t": dt}
    return pattern.sub(lambda m: f'"{m[1]}":{int(m[2]) + off[m[1]]}', ev.frame)


def _unwrap(frame: str) -> str:
    """The raw-stream payload of a combined frame, sliced so the bytes stay as recorded."""
    i = frame.find(',"data":')
    if frame.startswith('{"stream":"') and i > 0 and frame.endswith("}"):
        return frame[i + 8 : -1]
    return json.dumps(json.loads(frame)["data"], separators=(",", ":"))


async def serve(
    recordings: Sequence[str | Path],
    *,
    speed: float | None = 1.0,
    port: int = 0,
    host: str = "127.0.0.1",
    print_fn: Any = print,
    exit_when_finished: bool = False,
    retime: bool = False,
) -> None:
    """Run the simulator until cancelled (the `mdpipe exchange-sim` command)."""
    sim = ExchangeSim(recordings, speed=speed, port=port, host=host, retime=retime)
    await sim.start()
    # the first line is the exact command that connects a capture to this exchange
    print_fn(sim.capture_command())
    print_fn(
        f"# exchange-sim: {len(sim.events)} events of {', '.join(sorted(sim.symbols))} at "
        f"speed {'max' if speed is None else speed}; faults: curl -X POST "
        f'{sim.rest_url}/_sim/fault -d \'{{"kind":"skip","symbol":"ETH/USDT","count":3}}\''
    )
    try:
        if exit_when_finished:
            await sim.finished.wait()
        else:
            await asyncio.Event().wait()
    finally:
        await sim.stop()


def parse_speed(text: str) -> float | None:
    if text.lower() in ("max", "inf", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise ValueError(f"--speed must be > 0 or 'max', got {text!r}")
    return value
