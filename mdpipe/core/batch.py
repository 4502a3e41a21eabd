"""Batch driver: a partition's `book` and `trades` -> (`features`, `signals`) polars frames.

Per book event (rows sharing update_id, in `seq` order) the numba loop runs, in this order:
book_event_step -> trade_add for every trade with exch_ts_ns <= the event's as-of time ->
trade_features -> detector_step. The online engine runs the same kernels in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.book import book_apply_event
from mdpipe.core.config import settings_id
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

if TYPE_CHECKING:
    from mdpipe.lake import Lake

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
    "settings_id",
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
    full_from_ts: np.int64,
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
    """Events [e0, e1) of the merged input; rows are written only for events >= emit_from.

    Events stamped before `full_from_ts` only update the book (a previous day replayed to
    rebuild the book before its last minutes are run in full as warm-up); the trades up to
    them are skipped.
    """
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
        if b_ts[s] < full_from_ts and not emit:
            book_apply_event(qty, bits, bi, b_isbid, b_px, b_qty, s, stop, snap)
            while tp < nt and t_ts[tp] <= b_ts[s]:
                tp += 1
            continue
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


def _np(s: pl.Series) -> np.ndarray:
    # polars may hand out read-only views; see `_stream` for why kernels want writable ones.
    a = s.to_numpy()
    return a if a.flags.writeable else a.copy()


def _book_arrays(book: pl.DataFrame) -> dict[str, np.ndarray]:
    return {
        "uid": _np(book["update_id"].cast(pl.Int64)),
        "ts": _np(book["exch_ts_ns"].cast(pl.Int64)),
        "recv": _np(book["recv_ts_ns"].cast(pl.Int64)),
        "isbid": _np(book["side"] == "bid"),
        "px": _np(book["price"].cast(pl.Float64)),
        "qty": _np(book["qty"].cast(pl.Float64)),
        "snap": _np(book["is_snapshot"].cast(pl.Boolean)),
    }


def _trade_arrays(trades: pl.DataFrame) -> dict[str, np.ndarray]:
    trades = trades.sort(["exch_ts_ns", "trade_id"], maintain_order=True)
    return {
        "ts": _np(trades["exch_ts_ns"].cast(pl.Int64)),
        "px": _np(trades["price"].cast(pl.Float64)),
        "qty": _np(trades["qty"].cast(pl.Float64)),
        "buy": _np(trades["side"] == "buy"),
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


BOOK_INPUT_COLUMNS = ("update_id", "exch_ts_ns", "recv_ts_ns", "side", "price", "qty",
                      "is_snapshot")  # fmt: skip
TRADE_INPUT_COLUMNS = ("exch_ts_ns", "trade_id", "price", "qty", "side")
_BOOK_KEYS = ("uid", "ts", "recv", "isbid", "px", "qty", "snap")


class BatchRun:
    """One market's batch state machine, fed book rows in applied order chunk by chunk.

    Trades are given whole (sorted here by exch_ts_ns, trade_id): they are small next to the
    book. Book chunks may cut an event anywhere: the incomplete last event is carried over to
    the next chunk. Memory is bounded by the chunk size plus the output.
    """

    def __init__(
        self,
        venue: str,
        symbol: str,
        trades: dict[str, np.ndarray],
        *,
        feature_config: FeatureConfig | None = None,
        detector_config: DetectorConfig | None = None,
        microprice: MicropriceModel | None = None,
        chunk_events: int = 1 << 16,
    ) -> None:
        if not (isinstance(chunk_events, int) and chunk_events >= 1):
            raise ValueError(f"chunk_events must be a positive int, got {chunk_events!r}")
        self.venue = venue
        self.symbol = symbol
        self.fcfg = feature_config or FeatureConfig()
        self.dcfg = detector_config or DetectorConfig()
        self.trades = trades
        self.chunk_events = chunk_events
        self.bs = BookState(self.fcfg, microprice)
        self.ts_ = TradeState(self.fcfg)
        self.dfs, self.dis, self.dq = self.dcfg.new_state()
        self.dparams = self.dcfg.params()
        self.settings_id = settings_id(self.fcfg, self.dcfg)
        self.tpos = np.zeros(1, dtype=np.int64)
        self._carry: dict[str, np.ndarray] | None = None
        self._features: list[pl.DataFrame] = []
        self._signals: list[pl.DataFrame] = []

    def feed(
        self,
        book: dict[str, np.ndarray],
        *,
        emit: bool = True,
        final: bool = False,
        full_from_ts: int = -(2**63),
    ) -> None:
        """Process the complete events of `book` (arrays keyed like `_BOOK_KEYS`)."""
        if self._carry is not None:
            book = {k: np.concatenate([self._carry[k], book[k]]) for k in _BOOK_KEYS}
            self._carry = None
        starts = event_starts(book["uid"], book["snap"])
        n_events = starts.shape[0] - 1
        if not final and n_events > 0:
            # The last event may continue in the next chunk.
            cut = int(starts[-2])
            self._carry = {k: book[k][cut:] for k in _BOOK_KEYS}
            starts = starts[:-1]
            n_events -= 1
        bs, ts_, t = self.bs, self.ts_, self.trades
        for e0 in range(0, n_events, self.chunk_events):
            e1 = min(n_events, e0 + self.chunk_events)
            n = (e1 - e0) if emit else 0
            out_f = np.empty((n, N_FEATURES))
            out_m = np.zeros((n, N_META), dtype=np.int64)
            sig_f = np.empty((3 * n, SIG_F_COLS))
            sig_i = np.empty(3 * n, dtype=np.int64)
            nr, ns = batch_chunk(
                starts, e0, e1, e0 if emit else e1, np.int64(full_from_ts),
                book["uid"], book["ts"], book["recv"], book["isbid"], book["px"], book["qty"],
                book["snap"], t["ts"], t["px"], t["qty"], t["buy"], self.tpos,
                bs.qty, bs.bits, bs.bi, bs.ring_ts, bs.ring_f, bs.bkf, bs.bki, bs.bst, bs.lgt,
                bs.params, bs.mp,
                ts_.ring_ts, ts_.ring_f, ts_.tf, ts_.ti, ts_.vp, ts_.params,
                self.dfs, self.dis, self.dq, self.dparams,
                out_f, out_m, sig_f, sig_i,
            )  # fmt: skip
            if emit:
                assert nr == n
                self._features.append(features_frame(self.venue, self.symbol, out_f, out_m))
                if ns:
                    self._signals.append(
                        signals_frame(
                            self.venue,
                            self.symbol,
                            sig_f[:ns],
                            sig_i[:ns],
                            out_f,
                            out_m,
                            settings_id=self.settings_id,
                        )
                    )

    def result(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        if self._carry is not None:
            self.feed({k: v[:0] for k, v in self._carry.items()}, final=True)
        feats = (
            pl.concat(self._features, rechunk=False)
            if self._features
            else features_frame(
                self.venue, self.symbol, np.empty((0, N_FEATURES)), np.empty((0, N_META), np.int64)
            )
        )
        sigs = pl.concat(self._signals) if self._signals else empty_signals()
        return feats, sigs

    def stats(self) -> dict[str, Any]:
        return engine_stats(self.bs, self.ts_, self.dis, self.dq)


def _frame_chunks(book: pl.DataFrame, rows: int) -> list[dict[str, np.ndarray]]:
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    book = book.select(BOOK_INPUT_COLUMNS)
    return [_book_arrays(book.slice(o, rows)) for o in range(0, max(book.height, 1), rows)]


def compute_features_and_signals(
    book: pl.DataFrame,
    trades: pl.DataFrame,
    *,
    venue: str | None = None,
    symbol: str | None = None,
    prev_book: pl.DataFrame | None = None,
    prev_trades: pl.DataFrame | None = None,
    warmup_minutes: float | None = None,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    microprice: MicropriceModel | None = None,
    chunk_rows: int = 1 << 22,
    stats: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features (one row per applied book event) and signals of one market's partition.

    book, trades   the partition's canonical rows (lake schemas; `seq` orders book rows when
                   present, otherwise the frame must already be in applied order). Only the
                   columns BOOK_INPUT_COLUMNS / TRADE_INPUT_COLUMNS are read.
    prev_book, prev_trades
                   the previous partition (it starts with a snapshot): replayed first without
                   output, so rolling windows, standardisers, BOCPD and the detector start
                   warm. With `warmup_minutes`, only its last minutes run in full; before
                   that only the book is rebuilt (cheap). Rows are flagged `is_warmup` by time
                   since the first event processed in full.
    microprice     a model fitted on an EARLIER partition (`fit_microprice`); without it the
                   `microprice` column is NaN.
    stats          if a dict is given, it is filled with book and detector counters.

    Returns (features, signals) with columns FEATURE_COLUMNS and SIGNAL_COLUMNS.
    """
    venue, symbol = _market(book, venue, symbol)
    tcols = list(TRADE_INPUT_COLUMNS)
    trades = trades.select(tcols)
    if prev_trades is not None and prev_trades.height:
        trades = pl.concat([prev_trades.select(tcols).cast(trades.schema), trades])
    run = BatchRun(
        venue, symbol, _trade_arrays(trades), feature_config=feature_config,
        detector_config=detector_config, microprice=microprice,
    )  # fmt: skip
    if prev_book is not None and prev_book.height:
        full_from = -(2**63)
        if warmup_minutes is not None:
            full_from = int(prev_book["exch_ts_ns"].max()) - round(warmup_minutes * 60e9)  # type: ignore[arg-type]
        chunks = _frame_chunks(prev_book, chunk_rows)
        for i, c in enumerate(chunks):
            run.feed(c, emit=False, final=i == len(chunks) - 1, full_from_ts=full_from)
    chunks = _frame_chunks(book, chunk_rows)
    for i, c in enumerate(chunks):
        run.feed(c, final=i == len(chunks) - 1)
    if stats is not None:
        stats.update(run.stats())
    return run.result()


def compute_partition(
    lake: Lake,
    venue: str,
    symbol: str,
    date: str,
    *,
    prev_date: str | None = None,
    warmup_minutes: float | None = 30.0,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    microprice: MicropriceModel | None = None,
    batch_rows: int = 1 << 21,
    stats: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`compute_features_and_signals` straight from the lake, streaming the book.

    The book partition (tens of millions of rows for a liquid market-day) is read file by
    file in record batches of `batch_rows`, only the needed columns, so peak memory is the
    trades, one batch and the output. With `prev_date`, that partition is replayed first:
    book only, except its last `warmup_minutes` (None: all of it) which run in full.
    """
    tcols = list(TRADE_INPUT_COLUMNS)
    trades = lake.scan("trades", venue, symbol, date).select(tcols).collect()
    if prev_date is not None:
        prev_t = lake.scan("trades", venue, symbol, prev_date).select(tcols).collect()
        if prev_t.height:
            trades = pl.concat([prev_t.cast(trades.schema), trades])
    run = BatchRun(
        venue, symbol, _trade_arrays(trades), feature_config=feature_config,
        detector_config=detector_config, microprice=microprice,
    )  # fmt: skip
    if prev_date is not None:
        files = book_files_in_order(lake, venue, symbol, prev_date)
        full_from = -(2**63)
        if warmup_minutes is not None and files:
            last = pl.scan_parquet(files).select(pl.col("exch_ts_ns").max()).collect().item()
            full_from = int(last) - round(warmup_minutes * 60e9)
        _stream(run, files, batch_rows, emit=False, full_from_ts=full_from)
    _stream(run, book_files_in_order(lake, venue, symbol, date), batch_rows, emit=True)
    if stats is not None:
        stats.update(run.stats())
    return run.result()


def book_files_in_order(lake: Lake, venue: str, symbol: str, date: str) -> list[Path]:
    """The partition's book files in applied order (by first `seq` when the column exists,
    else by file name); rows inside a file are in applied order."""
    import pyarrow.parquet as pq

    files = lake.files("book", venue, symbol, date)
    if len(files) < 2:
        return files

    def first_seq(f: Path) -> tuple[int, str]:
        pf = pq.ParquetFile(f)
        if "seq" not in pf.schema_arrow.names or pf.metadata.num_rows == 0:
            return (0, f.name)
        v = pf.read_row_group(0, columns=["seq"]).column(0)[0].as_py()
        return (int(v), f.name)

    return sorted(files, key=first_seq)


def _stream(
    run: BatchRun, files: list[Path], batch_rows: int, *, emit: bool, full_from_ts: int = -(2**63)
) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pending: dict[str, np.ndarray] | None = None
    for f in files:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=batch_rows, columns=list(BOOK_INPUT_COLUMNS)):
            # Arrow hands out read-only views; numba would compile (and cache) a second,
            # read-only specialisation of every kernel for them, so take writable copies.
            arrays = {
                "uid": np.array(rb.column("update_id"), dtype=np.int64),
                "ts": np.array(rb.column("exch_ts_ns"), dtype=np.int64),
                "recv": np.array(rb.column("recv_ts_ns"), dtype=np.int64),
                "isbid": np.array(pc.equal(rb.column("side"), "bid"), dtype=np.bool_),
                "px": np.array(rb.column("price"), dtype=np.float64),
                "qty": np.array(rb.column("qty"), dtype=np.float64),
                "snap": np.array(rb.column("is_snapshot"), dtype=np.bool_),
            }
            if pending is not None:
                run.feed(pending, emit=emit, full_from_ts=full_from_ts)
            pending = arrays
    if pending is not None:
        run.feed(pending, emit=emit, final=True, full_from_ts=full_from_ts)
    elif run._carry is not None:
        run.feed({k: v[:0] for k, v in run._carry.items()}, emit=emit, final=True,
                 full_from_ts=full_from_ts)  # fmt: skip


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
    *,
    settings_id: str,
) -> pl.DataFrame:
    """Signal rows; `signal_id` hashes (venue, symbol, type, update_id), a few rows a day;
    `settings_id` names the feature and detector settings that produced them
    (`mdpipe.core.config.settings_id`)."""
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
        "settings_id": pl.Series([settings_id] * len(types), dtype=pl.String),
    }
    for j, name in enumerate(SIGNAL_CONTEXT):
        vals = out_f[sig_i, _CONTEXT_IDX[j]] if len(types) else np.empty(0)
        data[name] = pl.Series(vals, dtype=pl.Float64)
    return pl.DataFrame(data)


def empty_signals() -> pl.DataFrame:
    return signals_frame("", "", np.empty((0, SIG_F_COLS)), np.empty(0, np.int64),
                         np.empty((0, N_FEATURES)), np.empty((0, N_META), np.int64),
                         settings_id="")  # fmt: skip


__all__ = [
    "FEATURE_COLUMNS",
    "SIGNAL_COLUMNS",
    "BatchRun",
    "compute_features_and_signals",
    "compute_partition",
]
