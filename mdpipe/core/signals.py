"""Batch driver: a partition's `book` and `trades` -> (`features`, `signals`) polars frames.

Per book event (rows sharing update_id, in `seq` order) the numba loop runs, in this order:
book_event_step -> trade_add for every trade with exch_ts_ns <= the event's as-of time ->
trade_features -> detector_step. The online engine runs the same kernels in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.detectors.ensemble import (
    DET_INPUTS,
    O_DIR,
    O_FIRED,
    O_SCORE,
    O_THRESHOLD,
    O_TRIGGER,
    O_VALUE,
    OUT_COLS,
    SIGNAL_TYPES,
    DetectorConfig,
    detector_step,
    signal_id,
    stats_from_state,
)
from mdpipe.core.features import (
    DET_INDEX,
    F_MID,
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

META_COLUMNS: tuple[str, ...] = (
    "venue",
    "symbol",
    "update_id",
    "ts_ns",
    "recv_ts_ns",
    "asof_ns",
    "is_snapshot",
    "is_warmup",
)
FEATURE_COLUMNS: tuple[str, ...] = META_COLUMNS + FEATURE_NAMES
# Feature values copied into each signal row, for alerts and for labelling without a join.
SIGNAL_CONTEXT: tuple[str, ...] = (
    "mid",
    "best_bid",
    "best_ask",
    "spread_bps",
    "imbalance_5",
    "wmid_drift_5s_bps",
    "trade_imbalance_5s",
    "volume_z_5s",
    "realized_vol_z",
    "vpin",
    "bocpd_cp_prob",
)
SIGNAL_COLUMNS: tuple[str, ...] = (
    "venue",
    "symbol",
    "ts_ns",
    "signal_id",
    "signal_type",
    "direction",
    "score",
    "update_id",
    "trigger",
    "trigger_value",
    "threshold",
    *SIGNAL_CONTEXT,
)
_CONTEXT_IDX = np.array([FEATURE_NAMES.index(c) for c in SIGNAL_CONTEXT], dtype=np.int64)
# sig_f columns: type, direction, score, trigger, value, threshold; sig_i: row index
SIG_F_COLS = 6


@njit(cache=True)
def finish_event(
    tr_ts: np.ndarray,
    tr_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    tparams: np.ndarray,
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    dparams: np.ndarray,
    asof: np.int64,
    is_snapshot: bool,
    warm: bool,
    row: np.ndarray,
    xdet: np.ndarray,
    dout: np.ndarray,
) -> int:
    """Trade features as of `asof`, then the detectors; returns the signals emitted."""
    trade_features(tr_ts, tr_f, tf, ti, tparams, asof, row[F_MID], row)
    for j in range(DET_INDEX.shape[0]):
        xdet[j] = row[DET_INDEX[j]]
    return detector_step(dfs, dis, dq, dparams, asof, xdet, warm, is_snapshot, dout)


@njit(cache=True)
def write_signals(
    dout: np.ndarray, row_index: int, sig_f: np.ndarray, sig_i: np.ndarray, ns: int
) -> int:
    for d in range(3):
        if dout[d, O_FIRED] != 0.0 and ns < sig_f.shape[0]:
            sig_f[ns, 0] = d
            sig_f[ns, 1] = dout[d, O_DIR]
            sig_f[ns, 2] = dout[d, O_SCORE]
            sig_f[ns, 3] = dout[d, O_TRIGGER]
            sig_f[ns, 4] = dout[d, O_VALUE]
            sig_f[ns, 5] = dout[d, O_THRESHOLD]
            sig_i[ns] = row_index
            ns += 1
    return ns


@njit(cache=True)
def batch_chunk(
    ev_start: np.ndarray,
    e0: int,
    e1: int,
    emit_from: int,
    b_uid: np.ndarray,
    b_ts: np.ndarray,
    b_recv: np.ndarray,
    b_isbid: np.ndarray,
    b_px: np.ndarray,
    b_qty: np.ndarray,
    b_snap: np.ndarray,
    t_ts: np.ndarray,
    t_px: np.ndarray,
    t_qty: np.ndarray,
    t_buy: np.ndarray,
    tpos: np.ndarray,
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
    out_f: np.ndarray,
    out_m: np.ndarray,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
) -> tuple[int, int]:
    """Events [e0, e1) of the merged input; rows are written only for events >= emit_from."""
    top = np.empty((4, 10))
    scratch = np.empty(N_FEATURES)
    xdet = np.empty(DET_INDEX.shape[0])
    dout = np.zeros((3, OUT_COLS))
    nr = 0
    ns = 0
    tp = tpos[0]
    nt = t_ts.shape[0]
    for e in range(e0, e1):
        s = ev_start[e]
        stop = ev_start[e + 1]
        emit = e >= emit_from
        row = out_f[nr] if emit else scratch
        snap = b_snap[s]
        asof, warm = book_event_step(
            qty, bits, bi, rts, rf, bkf, bki, bst, lgt, bparams, mp,
            b_isbid, b_px, b_qty, s, stop, snap, b_ts[s], row, top,
        )  # fmt: skip
        while tp < nt and t_ts[tp] <= asof:
            trade_add(tr_ts, tr_f, tf, ti, vp, tparams, t_ts[tp], t_px[tp], t_qty[tp], t_buy[tp])
            tp += 1
        finish_event(
            tr_ts, tr_f, tf, ti, tparams, dfs, dis, dq, dparams, asof, snap, warm, row, xdet, dout
        )
        if emit:
            out_m[nr, M_UID] = b_uid[s]
            out_m[nr, M_TS] = b_ts[s]
            out_m[nr, M_ASOF] = asof
            out_m[nr, M_RECV] = b_recv[s]
            out_m[nr, M_SNAP] = 1 if snap else 0
            out_m[nr, M_WARM] = 1 if warm else 0
            ns = write_signals(dout, nr, sig_f, sig_i, ns)
            nr += 1
    tpos[0] = tp
    return nr, ns


def _book_arrays(book: pl.DataFrame) -> dict[str, np.ndarray]:
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    return {
        "uid": book["update_id"].cast(pl.Int64).to_numpy(),
        "ts": book["exch_ts_ns"].cast(pl.Int64).to_numpy(),
        "recv": book["recv_ts_ns"].cast(pl.Int64).to_numpy(),
        "isbid": (book["side"] == "bid").to_numpy(),
        "px": book["price"].cast(pl.Float64).to_numpy(),
        "qty": book["qty"].cast(pl.Float64).to_numpy(),
        "snap": book["is_snapshot"].to_numpy(),
    }


def _trade_arrays(trades: pl.DataFrame) -> dict[str, np.ndarray]:
    trades = trades.sort(["exch_ts_ns", "trade_id"], maintain_order=True)
    return {
        "ts": trades["exch_ts_ns"].cast(pl.Int64).to_numpy(),
        "px": trades["price"].cast(pl.Float64).to_numpy(),
        "qty": trades["qty"].cast(pl.Float64).to_numpy(),
        "buy": (trades["side"] == "buy").to_numpy(),
    }


def event_starts(uid: np.ndarray, snap: np.ndarray) -> np.ndarray:
    """Row index where each event starts (rows of one event share update_id and snapshot
    flag and are contiguous in applied order), with the row count appended."""
    n = uid.shape[0]
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = (uid[1:] != uid[:-1]) | (snap[1:] != snap[:-1])
    return np.concatenate([[0], np.flatnonzero(change) + 1, [n]]).astype(np.int64)


def _market(df: pl.DataFrame, venue: str | None, symbol: str | None) -> tuple[str, str]:
    if venue is None:
        venue = str(df["venue"][0]) if "venue" in df.columns and df.height else ""
    if symbol is None:
        symbol = str(df["symbol"][0]) if "symbol" in df.columns and df.height else ""
    return venue, symbol


def _concat(prev: pl.DataFrame | None, cur: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    cur = cur.select(cols)
    if prev is None or prev.height == 0:
        return cur
    return pl.concat([prev.select(cols).cast(dict(cur.schema)), cur])


def compute_features_and_signals(
    book: pl.DataFrame,
    trades: pl.DataFrame,
    *,
    venue: str | None = None,
    symbol: str | None = None,
    prev_book: pl.DataFrame | None = None,
    prev_trades: pl.DataFrame | None = None,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    microprice: MicropriceModel | None = None,
    chunk_events: int = 1 << 16,
    stats: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features (one row per applied book event) and signals of one market's partition.

    book, trades   the partition's canonical rows (lake schemas; `seq` orders book rows when
                   present, otherwise the frame must already be in applied order).
    prev_book, prev_trades
                   the previous partition (or a tail of it that starts with a snapshot): it is
                   run through the same state machine first, without output, so rolling
                   windows, standardisers, BOCPD and the detector start warm. Rows are still
                   flagged `is_warmup` by time since the first event processed.
    microprice     a model fitted on an EARLIER partition (`fit_microprice`); without it the
                   `microprice` column is NaN.
    stats          if a dict is given, it is filled with book and detector counters.

    Returns (features, signals) with columns FEATURE_COLUMNS and SIGNAL_COLUMNS.
    """
    fcfg = feature_config or FeatureConfig()
    dcfg = detector_config or DetectorConfig()
    if not (isinstance(chunk_events, int) and chunk_events >= 1):
        raise ValueError(f"chunk_events must be a positive int, got {chunk_events!r}")
    venue, symbol = _market(book, venue, symbol)
    bcols = ["update_id", "exch_ts_ns", "recv_ts_ns", "side", "price", "qty", "is_snapshot"]
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    if prev_book is not None and "seq" in prev_book.columns:
        prev_book = prev_book.sort("seq", maintain_order=True)
    n_prev_events = 0
    if prev_book is not None and prev_book.height:
        pb = prev_book.select(bcols)
        n_prev_events = int(event_starts(
            pb["update_id"].to_numpy(), pb["is_snapshot"].to_numpy()
        ).shape[0] - 1)  # fmt: skip
    b = _book_arrays(_concat(prev_book, book, bcols))
    tcols = ["exch_ts_ns", "trade_id", "price", "qty", "side"]
    t = _trade_arrays(_concat(prev_trades, trades, tcols))
    starts = event_starts(b["uid"], b["snap"])
    n_events = starts.shape[0] - 1
    n_out = n_events - n_prev_events

    bs = BookState(fcfg, microprice)
    ts_ = TradeState(fcfg)
    dfs, dis, dq = dcfg.new_state()
    dparams = dcfg.params()
    out_f = np.empty((max(n_out, 0), N_FEATURES))
    out_m = np.zeros((max(n_out, 0), N_META), dtype=np.int64)
    sig_rows: list[np.ndarray] = []
    sig_idx: list[np.ndarray] = []
    tpos = np.zeros(1, dtype=np.int64)
    written = 0
    for e0 in range(0, n_events, chunk_events):
        e1 = min(n_events, e0 + chunk_events)
        cap = 3 * (e1 - e0)
        sig_f = np.empty((cap, SIG_F_COLS))
        sig_i = np.empty(cap, dtype=np.int64)
        lo = max(e0, n_prev_events) - n_prev_events
        nr, ns = batch_chunk(
            starts, e0, e1, n_prev_events,
            b["uid"], b["ts"], b["recv"], b["isbid"], b["px"], b["qty"], b["snap"],
            t["ts"], t["px"], t["qty"], t["buy"], tpos,
            bs.qty, bs.bits, bs.bi, bs.ring_ts, bs.ring_f, bs.bkf, bs.bki, bs.bst, bs.lgt,
            bs.params, bs.mp,
            ts_.ring_ts, ts_.ring_f, ts_.tf, ts_.ti, ts_.vp, ts_.params,
            dfs, dis, dq, dparams,
            out_f[lo:], out_m[lo:], sig_f, sig_i,
        )  # fmt: skip
        written += nr
        if ns:
            sig_rows.append(sig_f[:ns].copy())
            sig_idx.append(sig_i[:ns] + lo)
    assert written == max(n_out, 0)
    if stats is not None:
        stats.update(engine_stats(bs, ts_, dis, dq))
    features = features_frame(venue, symbol, out_f, out_m)
    sf = np.concatenate(sig_rows) if sig_rows else np.empty((0, SIG_F_COLS))
    si = np.concatenate(sig_idx) if sig_idx else np.empty(0, dtype=np.int64)
    signals = signals_frame(venue, symbol, sf, si, out_f, out_m)
    return features, signals


def engine_stats(bs: BookState, ts_: TradeState, dis: np.ndarray, dq: np.ndarray) -> dict[str, Any]:
    from mdpipe.core.book import B_CROSSED, B_OFF_GRID, B_OUT_OF_RANGE, B_SNAPSHOTS
    from mdpipe.core.features import J_RING_OVERFLOW, U_OVERFLOW, U_TRADES

    out = stats_from_state(dis, dq)
    out["book"] = {
        "snapshots": int(bs.bi[B_SNAPSHOTS]),
        "out_of_range_levels": int(bs.bi[B_OUT_OF_RANGE]),
        "off_grid_prices": int(bs.bi[B_OFF_GRID]),
        "crossed_events": int(bs.bi[B_CROSSED]),
        "ring_overflows": int(bs.bki[J_RING_OVERFLOW]),
    }
    out["trades"] = {
        "trades": int(ts_.ti[U_TRADES]),
        "ring_overflows": int(ts_.ti[U_OVERFLOW]),
    }
    return out


def features_frame(venue: str, symbol: str, out_f: np.ndarray, out_m: np.ndarray) -> pl.DataFrame:
    n = out_f.shape[0]
    cols: dict[str, Any] = {
        "venue": pl.Series("venue", [venue], dtype=pl.String).extend_constant(venue, n - 1)
        if n
        else pl.Series("venue", [], dtype=pl.String),
        "symbol": pl.Series("symbol", [symbol], dtype=pl.String).extend_constant(symbol, n - 1)
        if n
        else pl.Series("symbol", [], dtype=pl.String),
        "update_id": out_m[:, M_UID],
        "ts_ns": out_m[:, M_TS],
        "recv_ts_ns": out_m[:, M_RECV],
        "asof_ns": out_m[:, M_ASOF],
        "is_snapshot": out_m[:, M_SNAP].astype(np.bool_),
        "is_warmup": out_m[:, M_WARM].astype(np.bool_),
    }
    for k, name in enumerate(FEATURE_NAMES):
        cols[name] = out_f[:, k]
    return pl.DataFrame(cols)


def signals_frame(
    venue: str,
    symbol: str,
    sig_f: np.ndarray,
    sig_i: np.ndarray,
    out_f: np.ndarray,
    out_m: np.ndarray,
) -> pl.DataFrame:
    """Signal rows; `signal_id` hashes (venue, symbol, type, update_id), a few rows a day."""
    types = [SIGNAL_TYPES[int(d)] for d in sig_f[:, 0]]
    uids = out_m[sig_i, M_UID] if sig_i.shape[0] else np.empty(0, dtype=np.int64)
    data: dict[str, Any] = {
        "venue": pl.Series([venue] * len(types), dtype=pl.String),
        "symbol": pl.Series([symbol] * len(types), dtype=pl.String),
        "ts_ns": pl.Series(out_m[sig_i, M_TS] if len(types) else [], dtype=pl.Int64),
        "signal_id": pl.Series(
            [signal_id(venue, symbol, t, int(u)) for t, u in zip(types, uids, strict=True)],
            dtype=pl.String,
        ),
        "signal_type": pl.Series(types, dtype=pl.String),
        "direction": pl.Series(sig_f[:, 1].astype(np.int8), dtype=pl.Int8),
        "score": pl.Series(sig_f[:, 2], dtype=pl.Float64),
        "update_id": pl.Series(uids, dtype=pl.Int64),
        "trigger": pl.Series([DET_INPUTS[int(c)] for c in sig_f[:, 3]], dtype=pl.String),
        "trigger_value": pl.Series(sig_f[:, 4], dtype=pl.Float64),
        "threshold": pl.Series(sig_f[:, 5], dtype=pl.Float64),
    }
    for j, name in enumerate(SIGNAL_CONTEXT):
        vals = out_f[sig_i, _CONTEXT_IDX[j]] if len(types) else np.empty(0)
        data[name] = pl.Series(vals, dtype=pl.Float64)
    return pl.DataFrame(data)


def empty_signals() -> pl.DataFrame:
    return signals_frame("", "", np.empty((0, SIG_F_COLS)), np.empty(0, np.int64),
                         np.empty((0, N_FEATURES)), np.empty((0, N_META), np.int64))  # fmt: skip


__all__ = [
    "FEATURE_COLUMNS",
    "SIGNAL_COLUMNS",
    "compute_features_and_signals",
]
