"""The venue plug-in contract: everything capture and import call on a venue.

A venue is one folder under ``mdpipe/venues/`` (``binance/`` is the model) holding an object
that satisfies :class:`Venue`. Capture and import know venues only through this module and the
registry (:func:`mdpipe.venues.get`, :func:`mdpipe.venues.detect`); nothing outside a venue's
folder knows its message shapes, stream names, sequence rules or REST endpoints.

The parts, after cryptofeed (one module per exchange behind generic connection code) and
NautilusTrader's adapters (an HTTP client, a websocket client and an instrument provider
composed into a data client):

- :class:`Venue`: the name (a ccxt id), symbol mapping, frame routing (stream name ->
  :class:`StreamRoute`), recognition of journal files and dump files, the dump reader, the
  sequence rules, and factories for the stateful parts below.
- :class:`Normalizer`: raw lines (receive time, message text) -> canonical lake rows
  (:class:`Batch`), one code path for live capture and for import.
- :class:`Transport`: what the capture daemon needs to talk to the exchange through ccxt: URLs,
  subscribe/unsubscribe messages and their answers, REST depth snapshot, trade backfill, clock.
- :class:`SequenceRules` and :class:`BookSync`: the snapshot + diff-sequence procedure (which
  diff is the first one after a snapshot, which diff continues the previous one), as data a
  generic state machine runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl

from mdpipe.lake import SCHEMAS, empty_frame, with_added_columns

# Kinds a stream can carry. `mark` is futures mark price and funding; `snapshot` is a REST depth
# snapshot the capture journal wraps as a stream of its own; `control` is an answer to our own
# request (subscribe acknowledgements).
STREAM_KINDS = ("depth", "trade", "agg_trade", "bbo", "mark", "snapshot", "control")

# The `detail` of a `sequence_gap` row for a trade-id hole starts with this; capture backfills
# exactly those holes (`prev_update_id` + 1 .. `next_update_id` - 1 over REST).
TRADE_GAP_PREFIX = "trade ids "


# ---- what a normalizer takes and gives -------------------------------------------------------


@dataclass(frozen=True)
class LineError:
    """A line that could not be used, with where it was and what was expected."""

    source: str
    line: int
    message: str
    content: str = ""

    def __str__(self) -> str:
        snippet = f": {self.content[:120]!r}" if self.content else ""
        return f"{self.source}:{self.line}: {self.message}{snippet}"


@dataclass
class Batch:
    """Canonical rows produced from one slice of input, in applied order per table."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def get(self, table: str) -> pl.DataFrame:
        return self.tables.get(table, empty_frame(table))

    def add(self, table: str, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        df = with_added_columns(table, df).select(list(SCHEMAS[table]))
        prev = self.tables.get(table)
        self.tables[table] = df if prev is None else pl.concat([prev, df], how="vertical")

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def extend(self, other: Batch) -> None:
        for t, df in other.tables.items():
            self.add(t, df)
        self.errors.extend(other.errors)
        for k, v in other.counts.items():
            self.count(k, v)


@dataclass(frozen=True)
class RawLines:
    """A slice of raw journal input: receive times (ns), message texts and where they came from."""

    recv_ts_ns: pl.Series  # Int64
    text: pl.Series  # String
    line_no: pl.Series  # Int64, 1-based within source
    source: str
    symbol_hint: str | None = None  # the venue's market id for bare REST snapshots ("btcusdt")


def gap_rows(
    venue: str, symbol: str, rows: Sequence[tuple[int, str, str, int | None, int | None]]
) -> pl.DataFrame:
    """``gaps`` rows from (ts_ns, kind, detail, prev_update_id, next_update_id) tuples."""
    if not rows:
        return empty_frame("gaps")
    ts, kind, detail, prev, nxt = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "venue": [venue] * len(rows),
            "symbol": [symbol] * len(rows),
            "ts_ns": list(ts),
            "kind": list(kind),
            "detail": list(detail),
            "prev_update_id": list(prev),
            "next_update_id": list(nxt),
        },
        schema=SCHEMAS["gaps"],
    )


# ---- routing and recognition -----------------------------------------------------------------


@dataclass(frozen=True)
class StreamRoute:
    """Where a stream's frames go: what they carry and which market (the venue's wire id)."""

    kind: str  # one of STREAM_KINDS
    market_key: str  # e.g. "btcusdt" for Binance's btcusdt@depth@100ms


class UnknownStream(ValueError):
    """A stream name the venue does not know: never guessed at, always reported."""

    def __init__(self, venue: str, stream: str, known: str) -> None:
        super().__init__(f"unknown {venue} stream {stream!r}; {venue} streams are {known}")
        self.venue = venue
        self.stream = stream


@dataclass(frozen=True)
class JournalHead:
    """What a venue sees in the first messages of a journal file."""

    recognized: bool  # these are this venue's messages (by content, not by file name)
    symbol_hint: str | None = None  # the market id of the file's first stream, if any


@dataclass(frozen=True)
class DumpFile:
    """A file a venue reads as a bulk dump (not a line journal): which table, which market."""

    kind: str  # the venue's name for the dump kind, handed back to read_dump
    symbol_hint: str  # the venue's market id, e.g. "btcusdt"


# ---- snapshot and sequence rules ------------------------------------------------------------


class SequenceRules(Protocol):
    """A venue's book-sync procedure, in terms of an event's first id ``U``, last id ``u`` and
    (where the venue sends one) the previous event's last id ``pu`` (-1 when absent).

    After a snapshot with ``lastUpdateId`` = L: events with ``covered_by_snapshot(L, u)`` are
    dropped; the first kept one must satisfy ``bridges(L, U, u)``; every later one must satisfy
    ``continues(prev_u, U, u, pu)``. Anything else is a sequence gap."""

    @property
    def bridge_rule(self) -> str:
        """The first-event rule as text, for gap details ("U <= lastUpdateId+1 <= u")."""
        ...

    def covered_by_snapshot(self, last_id: int, u: int) -> bool: ...

    def bridges(self, last_id: int, U: int, u: int) -> bool: ...

    def continues(self, prev_u: int, U: int, u: int, pu: int) -> bool: ...

    def break_detail(self, prev_u: int, U: int, u: int, pu: int) -> str: ...


MAX_BUFFERED_DIFFS = 20_000  # about half an hour of 100 ms diffs per market without a snapshot


@dataclass
class GapInfo:
    ev: int
    detail: str
    prev_update_id: int | None
    next_update_id: int | None


@dataclass
class BookSync:
    """The snapshot + diff-sequence state machine of one market, run by a venue's
    :class:`SequenceRules`. Events are identified by a number ``ev``; the caller keeps their rows
    and emits them in the order :meth:`on_diff` and :meth:`on_snapshot` return. It runs once per
    event (not per level row), so it stays in plain Python."""

    rules: SequenceRules
    synced: bool = False
    first_pending: bool = False
    last_u: int = -1
    buffer: list[tuple[int, int, int, int]] = field(default_factory=list)  # ev, U, u, pu
    dropped: int = 0
    applied: int = 0
    snapshots: int = 0
    first_applied: tuple[int, int, int] | None = None  # (lastUpdateId, U, u) of the last sync

    def on_snapshot(self, ev: int, last_id: int) -> tuple[list[int], list[GapInfo]]:
        """Apply a snapshot: returns the events to emit (the snapshot first, then buffered diffs
        that follow it) and any gap found while replaying the buffer."""
        self.synced, self.first_pending, self.last_u = True, True, last_id
        self.snapshots += 1
        out, gaps = [ev], []
        pending, self.buffer = self.buffer, []
        for b_ev, U, u, pu in pending:
            o, g = self.on_diff(b_ev, U, u, pu)
            out.extend(o)
            gaps.extend(g)
        return out, gaps

    def on_diff(self, ev: int, U: int, u: int, pu: int) -> tuple[list[int], list[GapInfo]]:
        if not self.synced:
            self.buffer.append((ev, U, u, pu))
            if len(self.buffer) > MAX_BUFFERED_DIFFS:
                self.buffer.pop(0)
                self.dropped += 1
            return [], []
        last = self.last_u
        rules = self.rules
        if self.first_pending:
            if rules.covered_by_snapshot(last, u):
                self.dropped += 1
                return [], []
            if not rules.bridges(last, U, u):
                detail = (
                    f"first diff after snapshot breaks {rules.bridge_rule}: "
                    f"lastUpdateId={last}, U={U}, u={u}"
                )
                return [], [self._gap(ev, U, u, pu, detail)]
            self.first_applied = (last, U, u)
        elif not rules.continues(last, U, u, pu):
            if u <= last:  # an old event delivered again (a connection seam): nothing new
                self.dropped += 1
                return [], []
            return [], [self._gap(ev, U, u, pu, rules.break_detail(last, U, u, pu))]
        self.first_pending = False
        self.last_u = u
        self.applied += 1
        return [ev], []

    def _gap(self, ev: int, U: int, u: int, pu: int, detail: str) -> GapInfo:
        prev = self.last_u
        self.reset()
        self.buffer.append((ev, U, u, pu))  # it may apply on top of the next snapshot
        return GapInfo(ev, detail + "; book rows stop until the next snapshot", prev, U)

    def reset(self) -> None:
        self.synced, self.first_pending = False, False


# ---- the stateful parts -----------------------------------------------------------------------


class Normalizer(Protocol):
    """Raw lines -> canonical rows, streaming: feed slices in arrival order, then :meth:`finish`.
    Symbols are unified symbols (``BTC/USDT``)."""

    venue: str

    def feed(self, lines: RawLines) -> Batch: ...

    def finish(self) -> Batch:
        """End of input (import): e.g. ``no_snapshot`` gaps for books never synced."""
        ...

    def awaiting_snapshot(self) -> list[str]:
        """Symbols whose book waits for a snapshot (never synced, or after a gap)."""
        ...

    def force_resync(
        self,
        symbol: str,
        ts_ns: int,
        reason: str,
        kind: str = "resync",
        prev_update_id: int | None = None,
    ) -> Batch:
        """Forget the book of ``symbol``: a ``kind`` gaps row, no book rows until a snapshot."""
        ...

    def sync_stats(self) -> dict[str, dict[str, object]]: ...

    def is_synced(self, symbol: str) -> bool: ...

    def book_state(self, symbol: str) -> tuple[pl.DataFrame, int] | None:
        """The synced book (side, price, qty) and its update id, or None while unknown."""
        ...

    def seed_last_trade_id(self, symbol: str, trade_id: int) -> None:
        """Continue trade-id gap detection from an earlier run (capture restarts)."""
        ...

    def rest_trades(
        self, symbol: str, trades: Sequence[Mapping[str, Any]], recv_ts_ns: int
    ) -> pl.DataFrame:
        """``trades`` rows from the venue's REST trade list, normalized as stream trades."""
        ...

    def set_contract_size(self, symbol: str, size: float) -> None:
        """Inverse markets only (capture calls it when ccxt's market has ``inverse`` set): the
        quote amount of one contract, from the market's metadata, for ``base_qty``."""
        ...


@dataclass(frozen=True)
class Snapshot:
    """A REST depth snapshot as received: the response text and the receive time."""

    recv_ns: int
    text: str


@dataclass(frozen=True)
class TradesPage:
    """A REST trade-history answer as received: the trades (exchange dicts) and receive time."""

    recv_ns: int
    trades: list[dict[str, Any]]


@dataclass(frozen=True)
class SubscribeRequest:
    """A websocket request and the id its answer carries (the daemon waits on that id)."""

    request_id: str
    message: dict[str, Any]


@dataclass(frozen=True)
class ControlAnswer:
    """The exchange's answer to one of our requests: which request, and the refusal if any."""

    request_id: str
    error: str | None = None


class Transport(Protocol):
    """What capture needs to talk to one venue through ccxt. ``ex`` is a ccxt.pro exchange of
    ``ccxt_class`` whose websocket frames the daemon taps (see mdpipe/capture/transport.py);
    ``market`` is a ccxt market dict."""

    venue: str
    ccxt_class: type[Any]
    channels: tuple[str, ...]

    def ccxt_config(self) -> dict[str, Any]: ...

    def apply_urls(self, ex: Any) -> None:
        """Point ``ex`` at the configured websocket / REST URLs (a proxy, a testnet, a sim)."""
        ...

    def market_key(self, market: Mapping[str, Any]) -> str:
        """The market's id in stream names (what :meth:`Venue.route` returns as market_key)."""
        ...

    def stream_names(self, market: Mapping[str, Any]) -> list[str]: ...

    def ws_endpoint(self, ex: Any, slot: int = 0) -> str:
        """The websocket URL; ``slot`` 0/1 give two distinct URLs, for make-before-break."""
        ...

    def subscribe_request(self, ex: Any, url: str, streams: list[str]) -> SubscribeRequest: ...

    def unsubscribe_request(self, ex: Any, url: str, streams: list[str]) -> SubscribeRequest: ...

    def is_control(self, text: str) -> bool:
        """Whether a frame answers one of our requests (it goes to ccxt's handlers too)."""
        ...

    def control_answer(self, msg: Mapping[str, Any]) -> ControlAnswer | None: ...

    async def fetch_snapshot(self, ex: Any, market: Mapping[str, Any]) -> Snapshot: ...

    async def fetch_trades_page(
        self, ex: Any, market: Mapping[str, Any], from_id: int, limit: int
    ) -> TradesPage:
        """Up to ``limit`` trades with ids >= ``from_id``, oldest first (trade backfill)."""
        ...

    async def server_time_ms(self, ex: Any) -> int: ...

    def wrap_snapshot(self, market: Mapping[str, Any], text: str) -> str:
        """The journal line of a REST snapshot: it must name the market (a bare body need not)."""
        ...


# ---- the venue --------------------------------------------------------------------------------


@runtime_checkable
class Venue(Protocol):
    """One venue: a ccxt id, its symbols, its frames, its files, its rules."""

    name: str  # ccxt id and the lake's `venue` value: "binance", "binanceusdm"
    rules: SequenceRules
    default_channels: tuple[str, ...]

    def unified_symbol(self, market_id: str) -> str:
        """The venue's market id ("BTCUSDT", "btcusdt") -> unified symbol ("BTC/USDT")."""
        ...

    def normalizer(self) -> Normalizer:
        """A fresh normalizer (one per stream of input: state carries across slices)."""
        ...

    def transport(
        self, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()
    ) -> Transport: ...

    def route(self, stream: str) -> StreamRoute:
        """Stream name -> (kind, market); raises :class:`UnknownStream`, never guesses."""
        ...

    def stream_labels(self, text: pl.Series) -> pl.Series:
        """Per raw frame, its stream name (``btcusdt@trade``), ``control`` for answers to our
        requests, or ``other``: vectorised, it runs on every frame capture receives."""
        ...

    def depth_market(self, text: str) -> str | None:
        """The market key of a depth-diff frame, else None: a cheap per-frame test (capture
        uses it while a replacement connection warms up)."""
        ...

    def sniff(self, messages: Sequence[bytes]) -> JournalHead:
        """Recognise a journal from its first messages (the JSON after the receive time)."""
        ...

    def dump_of(self, path: Path) -> DumpFile | None:
        """Whether this venue reads ``path`` as a dump (by its name), and what it holds."""
        ...

    def read_dump(self, path: Path, data: bytes, dump: DumpFile) -> Batch:
        """Rows of a dump file (``data``: its bytes); bad rows are ``Batch.errors``."""
        ...

    dump_names: str  # what dump file names look like, for error messages ("" when none)
