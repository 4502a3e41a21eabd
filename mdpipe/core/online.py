"""Online engine: the batch kernels driven one arriving event at a time, with bounded state.

Parts (public, also usable on their own):
  OrderBookFeatureExtractor   book snapshots/updates -> book-side features (`book_event_step`)
  TradeFeatureExtractor       trades -> trade-side features as of a time (`trade_add`,
                              `trade_features`)
  MicrostructureDetector      feature rows -> signals (`detector_step`)
  OnlineEngine                the three, fed the lake's canonical rows in arrival order.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.batch import (
    SIG_F_COLS,
    _np,
    event_starts,
    features_frame,
    finish_event,
    signals_frame,
    write_signals,
)
from mdpipe.core.config import settings_id
from mdpipe.core.detectors.ensemble import (
    OUT_COLS,
    DetectorConfig,
    MicrostructureDetector,
    Signal,
    signals_from_out,
)
from mdpipe.core.features import (
    DET_INDEX,
    F_LAST,
    F_MID,
    F_TI1,
    FEATURE_NAMES,
    M_ASOF,
    M_RECV,
    M_SNAP,
    M_TS,
    M_UID,
    M_WARM,
    N_FEATURES,
    N_META,
    BookState,
    FeatureConfig,
    MicropriceModel,
    TradeState,
    book_event_step,
    trade_add,
    trade_features,
)

# pi (int64) layout: pending book ring and pending trades
P_HEAD, P_COUNT, PT_HEAD, PT_COUNT, P_MAX_TRADE_TS, P_HAS_TRADE = range(6)
P_LATE_TRADES, P_LAST_RELEASED, P_HAS_RELEASED, P_FORCED, P_TIMEOUTS = range(6, 11)
PI_SIZE = 11


@njit(cache=True)
def _release(
    tr_ts: np.ndarray,
    tr_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    vp: np.ndarray,
    tparams: np.ndarray,
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    dparams: np.ndarray,
    pq_f: np.ndarray,
    pq_m: np.ndarray,
    pt_ts: np.ndarray,
    pt_f: np.ndarray,
    pi: np.ndarray,
    max_wait: np.int64,
    recv_now: np.int64,
    force: bool,
    limit: int,
    out_f: np.ndarray,
    out_m: np.ndarray,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
    nr: int,
    ns: int,
    xdet: np.ndarray,
    dout: np.ndarray,
) -> tuple[int, int]:
    """Release pending book events whose trades are all known (or that waited long enough)."""
    cap = pq_f.shape[0]
    tcap = pt_ts.shape[0]
    released = 0
    while pi[P_COUNT] > 0 and nr < out_f.shape[0]:
        slot = pi[P_HEAD]
        asof = pq_m[slot, M_ASOF]
        ready = force or released < limit
        if not ready:
            ready = pi[P_HAS_TRADE] == 1 and pi[P_MAX_TRADE_TS] > asof
            if not ready and recv_now - pq_m[slot, M_RECV] >= max_wait:
                ready = True
                pi[P_TIMEOUTS] += 1
        if not ready:
            break
        while pi[PT_COUNT] > 0:
            h = pi[PT_HEAD]
            if pt_ts[h] > asof:
                break
            trade_add(tr_ts, tr_f, tf, ti, vp, tparams, pt_ts[h], pt_f[h, 0], pt_f[h, 1],
                      pt_f[h, 2] != 0.0)  # fmt: skip
            pi[PT_HEAD] = (h + 1) % tcap
            pi[PT_COUNT] -= 1
        row = out_f[nr]
        row[:] = pq_f[slot]
        for c in range(pq_m.shape[1]):
            out_m[nr, c] = pq_m[slot, c]
        finish_event(
            tr_ts, tr_f, tf, ti, tparams, dfs, dis, dq, dparams, asof,
            pq_m[slot, M_SNAP] != 0, pq_m[slot, M_WARM] != 0, row, xdet, dout,
        )  # fmt: skip
        ns = write_signals(dout, nr, sig_f, sig_i, ns)
        nr += 1
        released += 1
        pi[P_HEAD] = (slot + 1) % cap
        pi[P_COUNT] -= 1
        pi[P_LAST_RELEASED] = asof
        pi[P_HAS_RELEASED] = 1
    return nr, ns


@njit(cache=True)
def _arrive_book(
    qty: np.ndarray,
    bits: np.ndarray,
    bi: np.ndarray,
    rts: np.ndarray,
    rf: np.ndarray,
    bkf: np.ndarray,
    bki: np.ndarray,
    bst: np.ndarray,
    lgt: np.ndarray,
    bparams: np.ndarray,
    mp: np.ndarray,
    tr_ts: np.ndarray,
    tr_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    vp: np.ndarray,
    tparams: np.ndarray,
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    dparams: np.ndarray,
    pq_f: np.ndarray,
    pq_m: np.ndarray,
    pt_ts: np.ndarray,
    pt_f: np.ndarray,
    pi: np.ndarray,
    max_wait: np.int64,
    b_isbid: np.ndarray,
    b_px: np.ndarray,
    b_qty: np.ndarray,
    start: int,
    stop: int,
    snap: bool,
    ts: np.int64,
    uid: np.int64,
    recv: np.int64,
    out_f: np.ndarray,
    out_m: np.ndarray,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
    nr: int,
    ns: int,
    top: np.ndarray,
    xdet: np.ndarray,
    dout: np.ndarray,
) -> tuple[int, int]:
    cap = pq_f.shape[0]
    if pi[P_COUNT] == cap:
        # Bounded queue: the oldest pending event is released without waiting further.
        pi[P_FORCED] += 1
        nr, ns = _release(
            tr_ts, tr_f, tf, ti, vp, tparams, dfs, dis, dq, dparams, pq_f, pq_m, pt_ts, pt_f,
            pi, max_wait, recv, False, 1, out_f, out_m, sig_f, sig_i, nr, ns, xdet, dout,
        )  # fmt: skip
    slot = (pi[P_HEAD] + pi[P_COUNT]) % cap
    asof, warm = book_event_step(
        qty, bits, bi, rts, rf, bkf, bki, bst, lgt, bparams, mp,
        b_isbid, b_px, b_qty, start, stop, snap, ts, pq_f[slot], top,
    )  # fmt: skip
    pq_m[slot, M_UID] = uid
    pq_m[slot, M_TS] = ts
    pq_m[slot, M_ASOF] = asof
    pq_m[slot, M_RECV] = recv
    pq_m[slot, M_SNAP] = 1 if snap else 0
    pq_m[slot, M_WARM] = 1 if warm else 0
    pi[P_COUNT] += 1
    return _release(
        tr_ts, tr_f, tf, ti, vp, tparams, dfs, dis, dq, dparams, pq_f, pq_m, pt_ts, pt_f,
        pi, max_wait, recv, False, 0, out_f, out_m, sig_f, sig_i, nr, ns, xdet, dout,
    )  # fmt: skip


@njit(cache=True)
def _arrive_trade(
    tr_ts: np.ndarray,
    tr_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    vp: np.ndarray,
    tparams: np.ndarray,
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    dparams: np.ndarray,
    pq_f: np.ndarray,
    pq_m: np.ndarray,
    pt_ts: np.ndarray,
    pt_f: np.ndarray,
    pi: np.ndarray,
    max_wait: np.int64,
    ts: np.int64,
    px: float,
    q: float,
    buy: bool,
    recv: np.int64,
    out_f: np.ndarray,
    out_m: np.ndarray,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
    nr: int,
    ns: int,
    xdet: np.ndarray,
    dout: np.ndarray,
) -> tuple[int, int]:
    tcap = pt_ts.shape[0]
    if pi[PT_COUNT] == tcap:
        # A full trade backlog with no book event to join it to: fold the oldest in now.
        h = pi[PT_HEAD]
        trade_add(tr_ts, tr_f, tf, ti, vp, tparams, pt_ts[h], pt_f[h, 0], pt_f[h, 1],
                  pt_f[h, 2] != 0.0)  # fmt: skip
        pi[PT_HEAD] = (h + 1) % tcap
        pi[PT_COUNT] -= 1
        pi[P_FORCED] += 1
    if pi[P_HAS_RELEASED] == 1 and ts <= pi[P_LAST_RELEASED]:
        pi[P_LATE_TRADES] += 1
    # Insert keeping (ts, arrival) order; trades almost always arrive in order, so this is
    # an append.
    n = pi[PT_COUNT]
    pos = n
    while pos > 0 and pt_ts[(pi[PT_HEAD] + pos - 1) % tcap] > ts:
        src = (pi[PT_HEAD] + pos - 1) % tcap
        dst = (pi[PT_HEAD] + pos) % tcap
        pt_ts[dst] = pt_ts[src]
        pt_f[dst, 0] = pt_f[src, 0]
        pt_f[dst, 1] = pt_f[src, 1]
        pt_f[dst, 2] = pt_f[src, 2]
        pos -= 1
    slot = (pi[PT_HEAD] + pos) % tcap
    pt_ts[slot] = ts
    pt_f[slot, 0] = px
    pt_f[slot, 1] = q
    pt_f[slot, 2] = 1.0 if buy else 0.0
    pi[PT_COUNT] = n + 1
    if pi[P_HAS_TRADE] == 0 or ts > pi[P_MAX_TRADE_TS]:
        pi[P_MAX_TRADE_TS] = ts
        pi[P_HAS_TRADE] = 1
    return _release(
        tr_ts, tr_f, tf, ti, vp, tparams, dfs, dis, dq, dparams, pq_f, pq_m, pt_ts, pt_f,
        pi, max_wait, recv, False, 0, out_f, out_m, sig_f, sig_i, nr, ns, xdet, dout,
    )  # fmt: skip


@njit(cache=True)
def _feed_chunk(
    qty: np.ndarray,
    bits: np.ndarray,
    bi: np.ndarray,
    rts: np.ndarray,
    rf: np.ndarray,
    bkf: np.ndarray,
    bki: np.ndarray,
    bst: np.ndarray,
    lgt: np.ndarray,
    bparams: np.ndarray,
    mp: np.ndarray,
    tr_ts: np.ndarray,
    tr_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    vp: np.ndarray,
    tparams: np.ndarray,
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    dparams: np.ndarray,
    pq_f: np.ndarray,
    pq_m: np.ndarray,
    pt_ts: np.ndarray,
    pt_f: np.ndarray,
    pi: np.ndarray,
    max_wait: np.int64,
    kind: np.ndarray,
    index: np.ndarray,
    a0: int,
    ev_start: np.ndarray,
    b_uid: np.ndarray,
    b_ts: np.ndarray,
    b_recv: np.ndarray,
    b_isbid: np.ndarray,
    b_px: np.ndarray,
    b_qty: np.ndarray,
    b_snap: np.ndarray,
    t_ts: np.ndarray,
    t_recv: np.ndarray,
    t_px: np.ndarray,
    t_qty: np.ndarray,
    t_buy: np.ndarray,
    out_f: np.ndarray,
    out_m: np.ndarray,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
) -> tuple[int, int, int]:
    """Arrivals from a0 on (kind 1 = book event `index`, 0 = trade `index`), one at a time,
    exactly as single-event calls would; stops early when the output might not fit."""
    top = np.empty((4, 10))
    xdet = np.empty(DET_INDEX.shape[0])
    dout = np.zeros((3, OUT_COLS))
    nr = 0
    ns = 0
    a = a0
    room = pq_f.shape[0] + 1
    while a < kind.shape[0]:
        if nr + room > out_f.shape[0] or ns + 3 * room > sig_f.shape[0]:
            break
        k = index[a]
        if kind[a] == 1:
            s = ev_start[k]
            nr, ns = _arrive_book(
                qty, bits, bi, rts, rf, bkf, bki, bst, lgt, bparams, mp,
                tr_ts, tr_f, tf, ti, vp, tparams, dfs, dis, dq, dparams,
                pq_f, pq_m, pt_ts, pt_f, pi, max_wait,
                b_isbid, b_px, b_qty, s, ev_start[k + 1], b_snap[s], b_ts[s], b_uid[s], b_recv[s],
                out_f, out_m, sig_f, sig_i, nr, ns, top, xdet, dout,
            )  # fmt: skip
        else:
            nr, ns = _arrive_trade(
                tr_ts, tr_f, tf, ti, vp, tparams, dfs, dis, dq, dparams,
                pq_f, pq_m, pt_ts, pt_f, pi, max_wait,
                t_ts[k], t_px[k], t_qty[k], t_buy[k], t_recv[k],
                out_f, out_m, sig_f, sig_i, nr, ns, xdet, dout,
            )  # fmt: skip
        a += 1
    return a, nr, ns


def _dict(row: np.ndarray, names: Sequence[str], idx: Iterable[int]) -> dict[str, float]:
    return {n: float(row[i]) for n, i in zip(names, idx, strict=True)}


_BOOK_NAMES = FEATURE_NAMES[:F_TI1]
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
        self.state = BookState(self.config, microprice)
        self._row = np.full(N_FEATURES, math.nan)
        self._top = np.empty((4, 10))
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
        s = self.state
        asof, warm = book_event_step(
            s.qty, s.bits, s.bi, s.ring_ts, s.ring_f, s.bkf, s.bki, s.bst, s.lgt, s.params,
            s.mp, is_bid, price, qty, 0, is_bid.shape[0], bool(is_snapshot), np.int64(ts_ns),
            self._row, self._top,
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

    def arrays(self) -> tuple[np.ndarray, ...]:
        s = self.state
        return (s.qty, s.bits, s.bi, s.ring_ts, s.ring_f, s.bkf, s.bki, s.bst, s.lgt, s.params,
                s.mp)  # fmt: skip


class TradeFeatureExtractor:
    """Trades -> trade-side features as of a time (same kernels as the batch path).

    Call `add_trade` for every trade in (exch_ts_ns, trade_id) order and `features_at(ts_ns,
    mid)` once per book event, after adding exactly the trades stamped at or before `ts_ns`.
    """

    def __init__(self, *, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.state = TradeState(self.config)
        self._row = np.full(N_FEATURES, math.nan)

    def add_trade(self, ts_ns: int, price: float, qty: float, side: str | bool) -> None:
        buy = side if isinstance(side, bool) else side == "buy"
        if not isinstance(side, bool) and side not in ("buy", "sell"):
            raise ValueError(f"trade side is the taker side, 'buy' or 'sell', got {side!r}")
        s = self.state
        trade_add(s.ring_ts, s.ring_f, s.tf, s.ti, s.vp, s.params, np.int64(ts_ns),
                  float(price), float(qty), bool(buy))  # fmt: skip

    def features_at(self, ts_ns: int, mid: float = math.nan) -> dict[str, float]:
        s = self.state
        trade_features(s.ring_ts, s.ring_f, s.tf, s.ti, s.params, np.int64(ts_ns), float(mid),
                       self._row)  # fmt: skip
        return _dict(self._row, _TRADE_NAMES, range(F_TI1, F_LAST + 1))

    def arrays(self) -> tuple[np.ndarray, ...]:
        s = self.state
        return (s.ring_ts, s.ring_f, s.tf, s.ti, s.vp, s.params)


@dataclass
class EngineOutput:
    features: pl.DataFrame
    signals: pl.DataFrame


class OnlineEngine:
    """One market's online engine over canonical rows (book events and trades).

    Per-event API (`on_book_event`, `on_trade`) returns the signals released by that arrival;
    feature rows accumulate until `drain_features()`. Frame API (`feed(book=..., trades=...)`)
    takes normalized batches (lake schemas), interleaves them by `recv_ts_ns`, and returns the
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
        self.pq_f = np.zeros((pending_events, N_FEATURES))
        self.pq_m = np.zeros((pending_events, N_META), dtype=np.int64)
        self.pt_ts = np.zeros(pending_trades, dtype=np.int64)
        self.pt_f = np.zeros((pending_trades, 3))
        self.pi = np.zeros(PI_SIZE, dtype=np.int64)
        cap = pending_events + 1
        self._out_f = np.empty((cap, N_FEATURES))
        self._out_m = np.empty((cap, N_META), dtype=np.int64)
        self._sig_f = np.empty((3 * cap, SIG_F_COLS))
        self._sig_i = np.empty(3 * cap, dtype=np.int64)
        self._top = np.empty((4, 10))
        self._xdet = np.empty(DET_INDEX.shape[0])
        self._dout = np.zeros((3, OUT_COLS))
        self._feat_f: list[np.ndarray] = []
        self._feat_m: list[np.ndarray] = []
        d = self.detector
        self._tail: tuple[Any, ...] = (*self.trades.arrays(), d.dfs, d.dis, d.dq, d.params,
                      self.pq_f, self.pq_m, self.pt_ts, self.pt_f, self.pi, self.max_wait_ns)  # fmt: skip
        self._all: tuple[Any, ...] = (*self.book.arrays(), *self._tail)

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
        nr, ns = _arrive_book(  # type: ignore[call-arg]  # state tuple is variadic to mypy
            *self._all, is_bid, price, qty, 0, is_bid.shape[0], bool(is_snapshot),
            np.int64(exch_ts_ns), np.int64(update_id), np.int64(recv_ts_ns),
            self._out_f, self._out_m, self._sig_f, self._sig_i, 0, 0,
            self._top, self._xdet, self._dout,
        )  # fmt: skip
        return self._collect(nr, ns)

    def on_trade(
        self, exch_ts_ns: int, recv_ts_ns: int, price: float, qty: float, side: str | bool
    ) -> list[Signal]:
        buy = side if isinstance(side, bool) else side == "buy"
        nr, ns = _arrive_trade(  # type: ignore[call-arg]  # state tuple is variadic to mypy
            *self._tail, np.int64(exch_ts_ns), float(price), float(qty), bool(buy),
            np.int64(recv_ts_ns), self._out_f, self._out_m, self._sig_f, self._sig_i, 0, 0,
            self._xdet, self._dout,
        )  # fmt: skip
        return self._collect(nr, ns)

    def poll(self, now_recv_ns: int) -> list[Signal]:
        """Release events that waited `max_wait_ms` of receive time (call on a timer)."""
        f, m, sf, si = self._release_arrays(np.int64(now_recv_ns), force=False)
        self._feat_f.append(f)
        self._feat_m.append(m)
        return self._signals(sf, si, m)

    def flush(self) -> list[Signal]:
        """Release every pending event (end of a replay, or shutdown)."""
        f, m, sf, si = self._release_arrays(np.int64(0), force=True)
        self._feat_f.append(f)
        self._feat_m.append(m)
        return self._signals(sf, si, m)

    def flush_frames(self) -> EngineOutput:
        """`flush()` for the frame API: the released rows as frames."""
        f, m, sf, si = self._release_arrays(np.int64(0), force=True)
        return EngineOutput(
            features_frame(self.venue, self.symbol, f, m),
            signals_frame(self.venue, self.symbol, sf, si, f, m, settings_id=self.settings_id),
        )

    def _release_arrays(
        self, now: np.int64, *, force: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        fs, ms, sfs, sis = [], [], [], []
        base = 0
        while True:
            nr, ns = _release(  # type: ignore[call-arg]  # state tuple is variadic to mypy
                *self._tail, now, force, 0, self._out_f, self._out_m, self._sig_f,
                self._sig_i, 0, 0, self._xdet, self._dout,
            )  # fmt: skip
            fs.append(self._out_f[:nr].copy())
            ms.append(self._out_m[:nr].copy())
            sfs.append(self._sig_f[:ns].copy())
            sis.append(self._sig_i[:ns] + base)
            base += nr
            if nr == 0 or self.pi[P_COUNT] == 0:
                break
        return np.concatenate(fs), np.concatenate(ms), np.concatenate(sfs), np.concatenate(sis)

    def _signals(self, sf: np.ndarray, si: np.ndarray, m: np.ndarray) -> list[Signal]:
        sigs: list[Signal] = []
        for j in range(sf.shape[0]):
            i = int(si[j])
            out = np.zeros((3, OUT_COLS))
            d = int(sf[j, 0])
            out[d, 0] = 1.0
            out[d, 1:] = sf[j, 1:]
            sigs.extend(
                signals_from_out(out, self.venue, self.symbol, int(m[i, M_TS]), int(m[i, M_UID]))
            )
        return sigs

    def _collect(self, nr: int, ns: int) -> list[Signal]:
        if nr == 0:
            return []
        m = self._out_m[:nr].copy()
        self._feat_f.append(self._out_f[:nr].copy())
        self._feat_m.append(m)
        if ns == 0:
            return []
        return self._signals(self._sig_f[:ns], self._sig_i[:ns], m)

    def drain_features(self) -> pl.DataFrame:
        """Feature rows released since the last drain."""
        f = np.concatenate(self._feat_f) if self._feat_f else np.empty((0, N_FEATURES))
        m = np.concatenate(self._feat_m) if self._feat_m else np.empty((0, N_META), np.int64)
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
        if book.height:
            uid = _np(book["update_id"].cast(pl.Int64))
            snap = _np(book["is_snapshot"])
            starts = event_starts(uid, snap)
            b_ts = _np(book["exch_ts_ns"].cast(pl.Int64))
            b_recv = _np(book["recv_ts_ns"].cast(pl.Int64))
            b_isbid = _np(book["side"] == "bid")
            b_px = _np(book["price"].cast(pl.Float64))
            b_qty = _np(book["qty"].cast(pl.Float64))
        else:
            starts = np.zeros(1, dtype=np.int64)
            uid = b_ts = b_recv = np.zeros(0, dtype=np.int64)
            snap = b_isbid = np.zeros(0, dtype=np.bool_)
            b_px = b_qty = np.zeros(0)
        n_ev = starts.shape[0] - 1
        if trades.height:
            t_ts = _np(trades["exch_ts_ns"].cast(pl.Int64))
            t_recv = _np(trades["recv_ts_ns"].cast(pl.Int64))
            t_px = _np(trades["price"].cast(pl.Float64))
            t_qty = _np(trades["qty"].cast(pl.Float64))
            t_buy = _np(trades["side"] == "buy")
        else:
            t_ts = t_recv = np.zeros(0, dtype=np.int64)
            t_px = t_qty = np.zeros(0)
            t_buy = np.zeros(0, dtype=np.bool_)
        kind, index = arrival_order(b_recv[starts[:-1]] if n_ev else b_recv, t_recv)
        cap = max(n_ev, 1) + self.pq_f.shape[0] + 1
        out_f = np.empty((cap, N_FEATURES))
        out_m = np.empty((cap, N_META), dtype=np.int64)
        sig_f = np.empty((3 * cap, SIG_F_COLS))
        sig_i = np.empty(3 * cap, dtype=np.int64)
        fs: list[np.ndarray] = []
        ms: list[np.ndarray] = []
        sfs: list[np.ndarray] = []
        sis: list[np.ndarray] = []
        base = 0
        a = 0
        while a < kind.shape[0]:
            a, nr, ns = _feed_chunk(  # type: ignore[call-arg]  # state tuple is variadic to mypy
                *self._all, kind, index, a, starts, uid, b_ts, b_recv, b_isbid, b_px, b_qty,
                snap, t_ts, t_recv, t_px, t_qty, t_buy, out_f, out_m, sig_f, sig_i,
            )  # fmt: skip
            fs.append(out_f[:nr].copy())
            ms.append(out_m[:nr].copy())
            sfs.append(sig_f[:ns].copy())
            sis.append(sig_i[:ns] + base)
            base += nr
        f = np.concatenate(fs) if fs else np.empty((0, N_FEATURES))
        m = np.concatenate(ms) if ms else np.empty((0, N_META), np.int64)
        sf = np.concatenate(sfs) if sfs else np.empty((0, SIG_F_COLS))
        si = np.concatenate(sis) if sis else np.empty(0, np.int64)
        return EngineOutput(
            features_frame(self.venue, self.symbol, f, m),
            signals_frame(self.venue, self.symbol, sf, si, f, m, settings_id=self.settings_id),
        )

    def get_stats(self) -> dict[str, Any]:
        out = self.detector.get_stats()
        out["pending_events"] = int(self.pi[P_COUNT])
        out["pending_trades"] = int(self.pi[PT_COUNT])
        out["late_trades"] = int(self.pi[P_LATE_TRADES])
        out["timeouts"] = int(self.pi[P_TIMEOUTS])
        out["forced_releases"] = int(self.pi[P_FORCED])
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


__all__ = [
    "F_MID",
    "M_ASOF",
    "M_RECV",
    "EngineOutput",
    "OnlineEngine",
    "OrderBookFeatureExtractor",
    "TradeFeatureExtractor",
]
