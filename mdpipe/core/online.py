"""Online engine: the batch kernels driven one arriving event at a time, with bounded state.

Parts (public, also usable on their own):
  OrderBookFeatureExtractor   book snapshots/updates -> book-side features (`book_event_step`)
  TradeFeatureExtractor       trades -> trade-side features as of a time (`trade_add`,
                              `trade_features`)
  MicrostructureDetector      feature rows -> signals (`detector_step`)
  OnlineEngine                the three, fed canonical `book` and `trades` rows in arrival order.

Why the engine holds book events back for a moment: the `features` contract joins each book
event with the trades at or before its exchange time, and on the wire a trade can arrive after
the depth message it precedes. A book event is computed on arrival (the book side needs
nothing else), then RELEASED, i.e. joined with trades and passed to the detector, as soon as
a trade stamped after it has arrived (trade streams are time-ordered) or `max_wait_ms` of
receive time has passed (a quiet trade stream). Released in this order, the kernels see
exactly the sequence the batch driver sees, so online and batch agree bit for bit; a trade
arriving later than `max_wait_ms` is counted in `late_trades` (and joins the next events).
Time is receive time carried by the data, never the wall clock, so replays are deterministic;
the capture process calls `poll(now_ns)` on a timer to release events when nothing arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.batch import event_starts
from mdpipe.core.config import settings_id
from mdpipe.core.detectors.ensemble import DetectorConfig, MicrostructureDetector, Signal
from mdpipe.core.features import (
    F_LAST,
    F_TI1,
    FEATURE_META,
    FEATURE_NAMES,
    N_FEATURES,
    FeatureConfig,
    MicropriceModel,
    book_event_step,
    new_book_state,
    new_trade_state,
    trade_add,
    trade_features,
)
from mdpipe.core.kernel import (
    SIGNAL_ROW,
    BookRows,
    MarketState,
    Outputs,
    Scratch,
    TradeRows,
    book_rows,
    copy_meta,
    empty_book_rows,
    empty_trade_rows,
    event_array,
    features_frame,
    finish_event,
    new_outputs,
    new_scratch,
    signal_objects,
    signals_frame,
    specialize,
    trade_rows,
    write_meta,
    write_signals,
)

# A trade waiting for the book events it precedes.
PENDING_TRADE = np.dtype(
    [("ts", np.int64), ("price", np.float64), ("qty", np.float64), ("is_buy", np.int64)],
    align=True,
)
QUEUE_VARS = np.dtype(
    [
        ("head", np.int64),  # pending book events: ring head and count
        ("count", np.int64),
        ("t_head", np.int64),  # pending trades: ring head and count
        ("t_count", np.int64),
        ("max_trade_ts", np.int64),  # latest trade time seen (valid once has_trade)
        ("has_trade", np.int64),
        ("late_trades", np.int64),  # trades stamped at or before an event already released
        ("last_released", np.int64),  # as-of time of the last released event
        ("has_released", np.int64),
        ("forced", np.int64),  # releases forced by a full queue
        ("timeouts", np.int64),  # releases after max_wait of receive time
        ("max_wait_ns", np.int64),
    ],
    align=True,
)


class Pending(NamedTuple):
    """The online engine's release queue: book events computed but not yet joined with
    trades (their book-side feature rows and meta), and trades not yet folded in."""

    features: np.ndarray  # float64[pending_events, N_FEATURES]
    meta: np.ndarray  # FEATURE_META[pending_events]
    trades: np.ndarray  # PENDING_TRADE[pending_trades]
    vars: np.ndarray  # QUEUE_VARS[1]


def new_pending(pending_events: int, pending_trades: int, max_wait_ns: int) -> Pending:
    q = np.zeros(1, dtype=QUEUE_VARS)
    q["max_wait_ns"] = max_wait_ns
    return Pending(
        np.zeros((pending_events, N_FEATURES)),
        np.zeros(pending_events, dtype=FEATURE_META),
        np.zeros(pending_trades, dtype=PENDING_TRADE),
        q,
    )


@njit(cache=True)
def _release(
    state: MarketState,
    pend: Pending,
    recv_now: np.int64,
    force: bool,
    limit: int,
    out: Outputs,
    nr: int,
    ns: int,
    scratch: Scratch,
) -> tuple[int, int]:
    """Release pending book events whose trades are all known (or that waited long enough)."""
    q = pend.vars[0]
    cap = pend.features.shape[0]
    tcap = pend.trades.shape[0]
    released = 0
    while q.count > 0 and nr < out.features.shape[0]:
        slot = q.head
        m = pend.meta[slot]
        asof = m.asof
        ready = force or released < limit
        if not ready:
            ready = q.has_trade == 1 and q.max_trade_ts > asof
            if not ready and recv_now - m.recv >= q.max_wait_ns:
                ready = True
                q.timeouts += 1
        if not ready:
            break
        while q.t_count > 0:
            h = q.t_head
            t = pend.trades[h]
            if t.ts > asof:
                break
            trade_add(state.trades, t.ts, t.price, t.qty, t.is_buy != 0)
            q.t_head = (h + 1) % tcap
            q.t_count -= 1
        row = out.features[nr]
        row[:] = pend.features[slot]
        copy_meta(out.meta, nr, pend.meta, slot)
        finish_event(
            state.trades, state.detector, asof, m.is_snapshot != 0, m.is_warmup != 0, row,
            scratch.x, scratch.detection,
        )  # fmt: skip
        ns = write_signals(scratch.detection, nr, out.signals, ns)
        nr += 1
        released += 1
        q.head = (slot + 1) % cap
        q.count -= 1
        q.last_released = asof
        q.has_released = 1
    return nr, ns


@njit(cache=True)
def _arrive_book(
    state: MarketState,
    pend: Pending,
    is_bid: np.ndarray,
    price: np.ndarray,
    qty: np.ndarray,
    start: int,
    stop: int,
    snap: bool,
    ts: np.int64,
    uid: np.int64,
    recv: np.int64,
    out: Outputs,
    nr: int,
    ns: int,
    scratch: Scratch,
) -> tuple[int, int]:
    """One book event (level rows [start, stop)) arrives: its book side is computed now,
    then it waits in the queue for the trades at or before its as-of time."""
    q = pend.vars[0]
    cap = pend.features.shape[0]
    if q.count == cap:
        # Bounded queue: the oldest pending event is released without waiting further.
        q.forced += 1
        nr, ns = _release(state, pend, recv, False, 1, out, nr, ns, scratch)
    slot = (q.head + q.count) % cap
    asof, warm = book_event_step(
        state.book, is_bid, price, qty, start, stop, snap, ts, pend.features[slot], scratch.top
    )
    write_meta(pend.meta, slot, uid, ts, asof, recv, snap, warm)
    q.count += 1
    return _release(state, pend, recv, False, 0, out, nr, ns, scratch)


@njit(cache=True)
def _arrive_trade(
    state: MarketState,
    pend: Pending,
    ts: np.int64,
    px: float,
    qty: float,
    buy: bool,
    recv: np.int64,
    out: Outputs,
    nr: int,
    ns: int,
    scratch: Scratch,
) -> tuple[int, int]:
    q = pend.vars[0]
    ring = pend.trades
    tcap = ring.shape[0]
    if q.t_count == tcap:
        # A full trade backlog with no book event to join it to: fold the oldest in now.
        h = q.t_head
        t = ring[h]
        trade_add(state.trades, t.ts, t.price, t.qty, t.is_buy != 0)
        q.t_head = (h + 1) % tcap
        q.t_count -= 1
        q.forced += 1
    if q.has_released == 1 and ts <= q.last_released:
        q.late_trades += 1
    # Insert keeping (ts, arrival) order; trades almost always arrive in order, so this is
    # an append.
    n = q.t_count
    pos = n
    while pos > 0 and ring[(q.t_head + pos - 1) % tcap].ts > ts:
        src = ring[(q.t_head + pos - 1) % tcap]
        dst = ring[(q.t_head + pos) % tcap]
        dst.ts = src.ts
        dst.price = src.price
        dst.qty = src.qty
        dst.is_buy = src.is_buy
        pos -= 1
    t = ring[(q.t_head + pos) % tcap]
    t.ts = ts
    t.price = px
    t.qty = qty
    t.is_buy = 1 if buy else 0
    q.t_count = n + 1
    if q.has_trade == 0 or ts > q.max_trade_ts:
        q.max_trade_ts = ts
        q.has_trade = 1
    return _release(state, pend, recv, False, 0, out, nr, ns, scratch)


@njit(cache=True)
def _feed_chunk(
    state: MarketState,
    pend: Pending,
    kind: np.ndarray,
    index: np.ndarray,
    a0: int,
    ev_start: np.ndarray,
    rows: BookRows,
    trades: TradeRows,
    out: Outputs,
    scratch: Scratch,
) -> tuple[int, int, int]:
    """Arrivals from a0 on (kind 1 = book event `index`, 0 = trade `index`), one at a time,
    exactly as single-event calls would; stops early when the output might not fit."""
    nr = 0
    ns = 0
    a = a0
    room = pend.features.shape[0] + 1
    while a < kind.shape[0]:
        if nr + room > out.features.shape[0] or ns + 3 * room > out.signals.shape[0]:
            break
        k = index[a]
        if kind[a] == 1:
            s = ev_start[k]
            nr, ns = _arrive_book(
                state, pend, rows.is_bid, rows.price, rows.qty, s, ev_start[k + 1],
                rows.is_snapshot[s], rows.exch_ts[s], rows.update_id[s], rows.recv_ts[s],
                out, nr, ns, scratch,
            )  # fmt: skip
        else:
            nr, ns = _arrive_trade(
                state, pend, trades.exch_ts[k], trades.price[k], trades.qty[k],
                trades.is_buy[k], trades.recv_ts[k], out, nr, ns, scratch,
            )  # fmt: skip
        a += 1
    return a, nr, ns


def _dict(row: np.ndarray, names: Sequence[str], idx: Iterable[int]) -> dict[str, float]:
    return {n: float(row[i]) for n, i in zip(names, idx, strict=True)}


_BOOK_NAMES = FEATURE_NAMES[:F_TI1]
# The types of a book event's level arrays (`event_array` makes every caller's match).
_EVENT_ARRAYS = (np.zeros(0, np.bool_), np.zeros(0), np.zeros(0))
_TRADE_NAMES = FEATURE_NAMES[F_TI1 : F_LAST + 1]


class OrderBookFeatureExtractor:
    """Book snapshots and updates -> book-side features (same kernel as the batch path).

    `update(bids, asks, ts_ns=..., is_snapshot=...)` takes lists of (price, absolute size)
    (size 0 removes a level; a snapshot replaces the book) and returns the book-side features
    of that event as a dict, including `bocpd_cp_prob`, `ofi_*`, `wmid_drift_*`, `microprice`.
    """

    def __init__(
        self,
        *,
        config: FeatureConfig | None = None,
        microprice: MicropriceModel | None = None,
    ) -> None:
        self.config = config or FeatureConfig()
        self.state = new_book_state(self.config, microprice)
        self._row = np.full(N_FEATURES, math.nan)
        self._top = np.empty((4, 10))
        self._step = specialize(
            book_event_step, self.state, *_EVENT_ARRAYS, 0, 0, False, np.int64(0), self._row,
            self._top,
        )  # fmt: skip
        self.last_asof_ns = 0
        self.last_is_warmup = True
        self._view: tuple[set[float], set[float]] | None = None

    def update(
        self,
        bids: Sequence[tuple[float, float]],
        asks: Sequence[tuple[float, float]],
        *,
        ts_ns: int,
        is_snapshot: bool = False,
    ) -> dict[str, float]:
        rows = [(True, p, q) for p, q in bids] + [(False, p, q) for p, q in asks]
        is_bid = np.fromiter((r[0] for r in rows), dtype=np.bool_, count=len(rows))
        px = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        qty = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
        return self.update_arrays(is_bid, px, qty, ts_ns=ts_ns, is_snapshot=is_snapshot)

    def update_arrays(
        self,
        is_bid: np.ndarray,
        price: np.ndarray,
        qty: np.ndarray,
        *,
        ts_ns: int,
        is_snapshot: bool = False,
    ) -> dict[str, float]:
        is_bid = event_array(is_bid, np.bool_, "is_bid")
        asof, warm = self._step(
            self.state, is_bid, event_array(price, np.float64, "price"),
            event_array(qty, np.float64, "qty"), 0, is_bid.shape[0], bool(is_snapshot),
            np.int64(ts_ns), self._row, self._top,
        )  # fmt: skip
        self.last_asof_ns = int(asof)
        self.last_is_warmup = bool(warm)
        return _dict(self._row, _BOOK_NAMES, range(F_TI1))

    def update_top(
        self,
        bids: Sequence[tuple[float, float]],
        asks: Sequence[tuple[float, float]],
        *,
        ts_ns: int,
    ) -> dict[str, float]:
        """The current top levels of each side (a full-book view, e.g. a capture callback's
        `book.top(20)`), as an update: levels that left the view are removed, so the kernel's
        book is exactly the view and the top-10 features are exact when at least 10 levels
        per side are given. The first call is a snapshot; later calls are order flow (OFI)."""
        if not self._view:
            self._view = ({p for p, _ in bids}, {p for p, _ in asks})
            return self.update(bids, asks, ts_ns=ts_ns, is_snapshot=True)
        nb = {p for p, _ in bids}
        na = {p for p, _ in asks}
        rb = [(p, 0.0) for p in self._view[0] - nb] + list(bids)
        ra = [(p, 0.0) for p in self._view[1] - na] + list(asks)
        self._view = (nb, na)
        return self.update(rb, ra, ts_ns=ts_ns)


class TradeFeatureExtractor:
    """Trades -> trade-side features as of a time (same kernels as the batch path).

    Call `add_trade` for every trade in (exch_ts_ns, trade_id) order and `features_at(ts_ns,
    mid)` once per book event, after adding exactly the trades stamped at or before `ts_ns`.
    """

    def __init__(self, *, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.state = new_trade_state(self.config)
        self._row = np.full(N_FEATURES, math.nan)
        self._add = specialize(trade_add, self.state, np.int64(0), 0.0, 0.0, False)
        self._features = specialize(trade_features, self.state, np.int64(0), 0.0, self._row)

    def add_trade(self, ts_ns: int, price: float, qty: float, side: str | bool) -> None:
        buy = side if isinstance(side, bool) else side == "buy"
        if not isinstance(side, bool) and side not in ("buy", "sell"):
            raise ValueError(f"trade side is the taker side, 'buy' or 'sell', got {side!r}")
        self._add(self.state, np.int64(ts_ns), float(price), float(qty), bool(buy))

    def features_at(self, ts_ns: int, mid: float = math.nan) -> dict[str, float]:
        self._features(self.state, np.int64(ts_ns), float(mid), self._row)
        return _dict(self._row, _TRADE_NAMES, range(F_TI1, F_LAST + 1))


@dataclass
class EngineOutput:
    features: pl.DataFrame
    signals: pl.DataFrame


class OnlineEngine:
    """One market's online engine over canonical rows (book events and trades).

    Per-event API (`on_book_event`, `on_trade`) returns the signals released by that arrival;
    feature rows accumulate until `drain_features()`. Frame API (`feed(book=..., trades=...)`)
    takes normalized batches (canonical schemas), interleaves them by `recv_ts_ns`, and returns the
    released features and signals as frames. `flush()` releases everything pending (end of a
    replay); `poll(now_recv_ns)` releases what waited longer than `max_wait_ms`.
    """

    def __init__(
        self,
        *,
        venue: str,
        symbol: str,
        feature_config: FeatureConfig | None = None,
        detector_config: DetectorConfig | None = None,
        microprice: MicropriceModel | None = None,
        max_wait_ms: float = 500.0,
        pending_events: int = 4096,
        pending_trades: int = 1 << 16,
    ) -> None:
        if not (
            isinstance(max_wait_ms, int | float) and math.isfinite(max_wait_ms) and max_wait_ms >= 0
        ):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        for name, v in (("pending_events", pending_events), ("pending_trades", pending_trades)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.venue = venue
        self.symbol = symbol
        self.feature_config = feature_config or FeatureConfig()
        dcfg = detector_config or DetectorConfig()
        self.settings_id = settings_id(self.feature_config, dcfg)
        self.book = OrderBookFeatureExtractor(config=self.feature_config, microprice=microprice)
        self.trades = TradeFeatureExtractor(config=self.feature_config)
        self.detector = MicrostructureDetector.from_config(dcfg, venue=venue, symbol=symbol)
        self.max_wait_ns = np.int64(round(max_wait_ms * 1e6))
        self.state = MarketState(self.book.state, self.trades.state, self.detector.state)
        self.pending = new_pending(pending_events, pending_trades, int(self.max_wait_ns))
        self._out = new_outputs(pending_events + 1)
        self._scratch = new_scratch()
        i64, st, pend, out, scr = np.int64(0), self.state, self.pending, self._out, self._scratch
        self._arrive_book = specialize(
            _arrive_book, st, pend, *_EVENT_ARRAYS, 0, 0, False, i64, i64, i64, out, 0, 0, scr
        )
        self._arrive_trade = specialize(
            _arrive_trade, st, pend, i64, 0.0, 0.0, False, i64, out, 0, 0, scr
        )
        self._feat_f: list[np.ndarray] = []
        self._feat_m: list[np.ndarray] = []

    # ---- per event ----------------------------------------------------------------------
    def on_book_event(
        self,
        update_id: int,
        exch_ts_ns: int,
        recv_ts_ns: int,
        is_bid: np.ndarray,
        price: np.ndarray,
        qty: np.ndarray,
        *,
        is_snapshot: bool = False,
    ) -> list[Signal]:
        """One book event (all its level changes; absolute sizes, 0 removes)."""
        is_bid = event_array(is_bid, np.bool_, "is_bid")
        nr, ns = self._arrive_book(
            self.state, self.pending, is_bid, event_array(price, np.float64, "price"),
            event_array(qty, np.float64, "qty"), 0, is_bid.shape[0], bool(is_snapshot),
            np.int64(exch_ts_ns), np.int64(update_id), np.int64(recv_ts_ns), self._out, 0, 0,
            self._scratch,
        )  # fmt: skip
        return self._collect(nr, ns)

    def on_trade(
        self, exch_ts_ns: int, recv_ts_ns: int, price: float, qty: float, side: str | bool
    ) -> list[Signal]:
        buy = side if isinstance(side, bool) else side == "buy"
        nr, ns = self._arrive_trade(
            self.state, self.pending, np.int64(exch_ts_ns), float(price), float(qty), bool(buy),
            np.int64(recv_ts_ns), self._out, 0, 0, self._scratch,
        )  # fmt: skip
        return self._collect(nr, ns)

    def poll(self, now_recv_ns: int) -> list[Signal]:
        """Release events that waited `max_wait_ms` of receive time (call on a timer)."""
        f, m, sigs = self._release_arrays(np.int64(now_recv_ns), force=False)
        self._feat_f.append(f)
        self._feat_m.append(m)
        return signal_objects(self.venue, self.symbol, sigs, m)

    def flush(self) -> list[Signal]:
        """Release every pending event (end of a replay, or shutdown)."""
        f, m, sigs = self._release_arrays(np.int64(0), force=True)
        self._feat_f.append(f)
        self._feat_m.append(m)
        return signal_objects(self.venue, self.symbol, sigs, m)

    def flush_frames(self) -> EngineOutput:
        """`flush()` for the frame API: the released rows as frames."""
        f, m, sigs = self._release_arrays(np.int64(0), force=True)
        return EngineOutput(
            features_frame(self.venue, self.symbol, f, m),
            signals_frame(
                self.venue, self.symbol, sigs, f, m, settings_id=self.settings_id, source="live"
            ),
        )

    def _release_arrays(
        self, now: np.int64, *, force: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self._out
        fs, ms, ss = [], [], []
        base = 0
        while True:
            nr, ns = _release(self.state, self.pending, now, force, 0, out, 0, 0, self._scratch)
            fs.append(out.features[:nr].copy())
            ms.append(out.meta[:nr].copy())
            sigs = out.signals[:ns].copy()
            sigs["row"] += base
            ss.append(sigs)
            base += nr
            if nr == 0 or self.pending.vars[0]["count"] == 0:
                break
        return np.concatenate(fs), np.concatenate(ms), np.concatenate(ss)

    def _collect(self, nr: int, ns: int) -> list[Signal]:
        if nr == 0:
            return []
        out = self._out
        m = out.meta[:nr].copy()
        self._feat_f.append(out.features[:nr].copy())
        self._feat_m.append(m)
        if ns == 0:
            return []
        return signal_objects(self.venue, self.symbol, out.signals[:ns], m)

    def drain_features(self) -> pl.DataFrame:
        """Feature rows released since the last drain."""
        f = np.concatenate(self._feat_f) if self._feat_f else np.empty((0, N_FEATURES))
        m = np.concatenate(self._feat_m) if self._feat_m else np.zeros(0, FEATURE_META)
        self._feat_f.clear()
        self._feat_m.clear()
        return features_frame(self.venue, self.symbol, f, m)

    # ---- frames -------------------------------------------------------------------------
    def feed(
        self, book: pl.DataFrame | None = None, trades: pl.DataFrame | None = None
    ) -> EngineOutput:
        """A normalized batch of this market's rows; returns what it released."""
        book = book if book is not None else pl.DataFrame()
        trades = trades if trades is not None else pl.DataFrame()
        if book.height and "venue" in book.columns:
            book = book.filter((pl.col("venue") == self.venue) & (pl.col("symbol") == self.symbol))
        if trades.height and "venue" in trades.columns:
            trades = trades.filter(
                (pl.col("venue") == self.venue) & (pl.col("symbol") == self.symbol)
            )
        if book.height and "seq" in book.columns:
            book = book.sort("seq", maintain_order=True)
        rows = book_rows(book) if book.height else empty_book_rows()
        trs = trade_rows(trades) if trades.height else empty_trade_rows()
        starts = event_starts(rows.update_id, rows.is_snapshot)
        n_ev = starts.shape[0] - 1
        kind, index = arrival_order(rows.recv_ts[starts[:-1]] if n_ev else rows.recv_ts,
                                    trs.recv_ts)  # fmt: skip
        out = new_outputs(max(n_ev, 1) + self.pending.features.shape[0] + 1)
        fs: list[np.ndarray] = []
        ms: list[np.ndarray] = []
        ss: list[np.ndarray] = []
        base = 0
        a = 0
        while a < kind.shape[0]:
            a, nr, ns = _feed_chunk(
                self.state, self.pending, kind, index, a, starts, rows, trs, out, self._scratch
            )
            fs.append(out.features[:nr].copy())
            ms.append(out.meta[:nr].copy())
            sigs = out.signals[:ns].copy()
            sigs["row"] += base
            ss.append(sigs)
            base += nr
        f = np.concatenate(fs) if fs else np.empty((0, N_FEATURES))
        m = np.concatenate(ms) if ms else np.zeros(0, FEATURE_META)
        sg = np.concatenate(ss) if ss else np.zeros(0, SIGNAL_ROW)
        return EngineOutput(
            features_frame(self.venue, self.symbol, f, m),
            signals_frame(
                self.venue, self.symbol, sg, f, m, settings_id=self.settings_id, source="live"
            ),
        )

    def get_stats(self) -> dict[str, Any]:
        out = self.detector.get_stats()
        q = self.pending.vars[0]
        out["pending_events"] = int(q["count"])
        out["pending_trades"] = int(q["t_count"])
        out["late_trades"] = int(q["late_trades"])
        out["timeouts"] = int(q["timeouts"])
        out["forced_releases"] = int(q["forced"])
        return out


def arrival_order(book_recv: np.ndarray, trade_recv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interleave book events and trades by receive time (stable: a book event before a
    trade received in the same nanosecond, each stream in its own order)."""
    kind = np.concatenate(
        [np.ones(book_recv.shape[0], np.int8), np.zeros(trade_recv.shape[0], np.int8)]
    )
    index = np.concatenate([np.arange(book_recv.shape[0]), np.arange(trade_recv.shape[0])])
    # Running maxima keep each stream in its own order even if a receive stamp steps back.
    recv = np.concatenate(
        [
            np.maximum.accumulate(book_recv) if book_recv.shape[0] else book_recv,
            np.maximum.accumulate(trade_recv) if trade_recv.shape[0] else trade_recv,
        ]
    )
    order = np.lexsort((1 - kind, recv))
    return kind[order], index[order].astype(np.int64)


BookArrival = tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray, bool]
TradeArrival = tuple[int, int, float, float, str]


def arrivals(
    book: pl.DataFrame, trades: pl.DataFrame
) -> Iterator[tuple[Literal["book"], BookArrival] | tuple[Literal["trade"], TradeArrival]]:
    """A market's rows one arrival at a time, in receive-time order (book events whole), as
    `OnlineEngine.on_book_event(*args[:6], is_snapshot=args[6])` and `on_trade(*args)` take
    them: what a live feed would have delivered. Rows in a `seq` column's order if present."""
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    uid = book["update_id"].to_numpy()
    snap = book["is_snapshot"].to_numpy()
    starts = event_starts(uid, snap)
    ts = book["exch_ts_ns"].to_numpy()
    recv = book["recv_ts_ns"].to_numpy()
    is_bid = (book["side"] == "bid").to_numpy()
    px = book["price"].to_numpy()
    qty = book["qty"].to_numpy()
    trs = trades.select("exch_ts_ns", "recv_ts_ns", "price", "qty", "side").rows()
    kind, index = arrival_order(recv[starts[:-1]], trades["recv_ts_ns"].to_numpy())
    for k, i in zip(kind.tolist(), index.tolist(), strict=True):
        if k == 1:
            a, b = starts[i], starts[i + 1]
            yield "book", (
                int(uid[a]), int(ts[a]), int(recv[a]), is_bid[a:b], px[a:b], qty[a:b],
                bool(snap[a]),
            )  # fmt: skip
        else:
            yield "trade", trs[i]


__all__ = [
    "EngineOutput",
    "OnlineEngine",
    "OrderBookFeatureExtractor",
    "TradeFeatureExtractor",
    "arrivals",
]
