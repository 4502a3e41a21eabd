"""Batch driver: a partition's `book` and `trades` -> (`features`, `signals`) polars frames.

Per book event (rows sharing update_id, in applied order) the numba loop runs, in this order:
book_event_step -> trade_add for every trade with exch_ts_ns <= the event's as-of time ->
finish_event (trade features, detectors). The online engine runs the same kernels in the same
order (`mdpipe.core.kernel`). Input arrives as frames or as chunks of `BookRows`; reading
partitions from files is the pipeline layer's job (`mdpipe.pipeline.read`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.book import book_apply_event
from mdpipe.core.config import settings_id
from mdpipe.core.detectors.ensemble import (
    DET_INPUTS,
    DETECTION,
    N_DET_INPUTS,
    N_TYPES,
    DetectorConfig,
    DetectorState,
    detector_step,
)
from mdpipe.core.features import (
    FEATURE_META,
    FEATURE_NAMES,
    N_FEATURES,
    FeatureConfig,
    MicropriceModel,
    book_event_step,
    trade_add,
)
from mdpipe.core.kernel import (
    FEATURE_COLUMNS,
    SIGNAL_COLUMNS,
    SIGNAL_CONTEXT,
    SIGNAL_ROW,
    BookRows,
    MarketState,
    Outputs,
    Scratch,
    TradeRows,
    book_rows,
    empty_features,
    empty_signals,
    features_frame,
    finish_event,
    market_stats,
    new_market_state,
    new_outputs,
    new_scratch,
    signals_frame,
    trade_rows,
    write_meta,
    write_signals,
)


@njit(cache=True)
def batch_chunk(
    state: MarketState,
    rows: BookRows,
    ev_start: np.ndarray,
    e0: int,
    e1: int,
    emit_from: int,
    full_from_ts: np.int64,
    trades: TradeRows,
    trade_pos: int,
    out: Outputs,
    scratch: Scratch,
) -> tuple[int, int, int]:
    """Events [e0, e1) of `rows` (event e is rows [ev_start[e], ev_start[e + 1])); feature
    rows are written only for events >= emit_from. Trades from `trade_pos` on are folded in
    as the events' as-of time passes them. Returns (rows written, signals written, the next
    trade position).

    Events stamped before `full_from_ts` only update the book (a previous day replayed to
    rebuild the book before its last minutes are run in full as warm-up); the trades up to
    them are skipped.
    """
    # Tuple fields are taken out once, outside the loop: each access costs a reference count
    # round trip (atomic), which per event adds up to more than the book update itself.
    book_state, trade_state, detector = state.book, state.trades, state.detector
    book = book_state.book
    is_bid, price, qty, is_snap = rows.is_bid, rows.price, rows.qty, rows.is_snapshot
    ev_ts, ev_uid, ev_recv = rows.exch_ts, rows.update_id, rows.recv_ts
    t_ts, t_px, t_qty, t_buy = trades.exch_ts, trades.price, trades.qty, trades.is_buy
    features, meta, signals = out.features, out.meta, out.signals
    no_row, top, x, detection = scratch.row, scratch.top, scratch.x, scratch.detection
    nr = 0
    ns = 0
    tp = trade_pos
    nt = t_ts.shape[0]
    for e in range(e0, e1):
        s = ev_start[e]
        stop = ev_start[e + 1]
        emit = e >= emit_from
        row = features[nr] if emit else no_row
        snap = is_snap[s]
        ts = ev_ts[s]
        if ts < full_from_ts and not emit:
            book_apply_event(book, is_bid, price, qty, s, stop, snap)
            while tp < nt and t_ts[tp] <= ts:
                tp += 1
            continue
        asof, warm = book_event_step(book_state, is_bid, price, qty, s, stop, snap, ts, row, top)
        while tp < nt and t_ts[tp] <= asof:
            trade_add(trade_state, t_ts[tp], t_px[tp], t_qty[tp], t_buy[tp])
            tp += 1
        finish_event(trade_state, detector, asof, snap, warm, row, x, detection)
        if emit:
            write_meta(meta, nr, ev_uid[s], ts, asof, ev_recv[s], snap, warm)
            ns = write_signals(detection, nr, signals, ns)
            nr += 1
    return nr, ns, tp


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


def batch_trade_rows(trades: pl.DataFrame) -> TradeRows:
    """Trades in the order the batch driver folds them in: (exch_ts_ns, trade_id)."""
    return trade_rows(trades.sort(["exch_ts_ns", "trade_id"], maintain_order=True))


class BatchRun:
    """One market's batch state machine, fed book rows in applied order chunk by chunk.

    Trades are given whole (sorted by exch_ts_ns, trade_id: `batch_trade_rows`): they are
    small next to the book. Book chunks may cut an event anywhere: the incomplete last event
    is carried over to the next chunk. Memory is bounded by the chunk size plus the output.
    """

    def __init__(
        self,
        venue: str,
        symbol: str,
        trades: TradeRows,
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
        self.trades = trades
        self.chunk_events = chunk_events
        fcfg = feature_config or FeatureConfig()
        dcfg = detector_config or DetectorConfig()
        self.state = new_market_state(fcfg, dcfg, microprice)
        self.settings_id = settings_id(fcfg, dcfg)
        self.trade_pos = 0
        self._scratch = new_scratch()
        self._carry: BookRows | None = None
        self._features: list[pl.DataFrame] = []
        self._signals: list[pl.DataFrame] = []

    def feed(
        self,
        book: BookRows,
        *,
        emit: bool = True,
        final: bool = False,
        full_from_ts: int = -(2**63),
    ) -> None:
        """Process the complete events of `book`; with `final`, the last one too."""
        if self._carry is not None:
            book = self._carry.concat(book)
            self._carry = None
        starts = event_starts(book.update_id, book.is_snapshot)
        n_events = starts.shape[0] - 1
        if not final and n_events > 0:
            # The last event may continue in the next chunk.
            cut = int(starts[-2])
            self._carry = book.slice(cut)
            starts = starts[:-1]
            n_events -= 1
        for e0 in range(0, n_events, self.chunk_events):
            e1 = min(n_events, e0 + self.chunk_events)
            n = (e1 - e0) if emit else 0
            out = new_outputs(n)
            nr, ns, self.trade_pos = batch_chunk(
                self.state, book, starts, e0, e1, e0 if emit else e1, np.int64(full_from_ts),
                self.trades, self.trade_pos, out, self._scratch,
            )  # fmt: skip
            if emit:
                assert nr == n
                self._features.append(
                    features_frame(self.venue, self.symbol, out.features, out.meta)
                )
                if ns:
                    self._signals.append(
                        signals_frame(
                            self.venue,
                            self.symbol,
                            out.signals[:ns],
                            out.features,
                            out.meta,
                            settings_id=self.settings_id,
                        )
                    )

    def finish(self, *, emit: bool = True, full_from_ts: int = -(2**63)) -> None:
        """Process the event carried over from the last chunk, if any (end of the input)."""
        if self._carry is not None:
            self.feed(self._carry.slice(0, 0), emit=emit, final=True, full_from_ts=full_from_ts)

    def result(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        self.finish()
        feats = (
            pl.concat(self._features, rechunk=False)
            if self._features
            else empty_features(self.venue, self.symbol)
        )
        sigs = pl.concat(self._signals) if self._signals else empty_signals()
        return feats, sigs

    def stats(self) -> dict[str, Any]:
        return market_stats(self.state)


def _frame_chunks(book: pl.DataFrame, rows: int) -> list[BookRows]:
    if "seq" in book.columns:
        book = book.sort("seq", maintain_order=True)
    book = book.select(BOOK_INPUT_COLUMNS)
    return [book_rows(book.slice(o, rows)) for o in range(0, max(book.height, 1), rows)]


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

    book, trades   the partition's canonical `book` and `trades` rows (`seq` orders book rows when
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
        venue, symbol, batch_trade_rows(trades), feature_config=feature_config,
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


# ---- markets without a book -------------------------------------------------------------------

# Feature columns a trades-only run fills (the rest describe a book and stay NaN); among them,
# those that need a book price too (`vwap_distance_bps` is measured from the mid).
TRADE_FEATURES: tuple[str, ...] = FEATURE_NAMES[FEATURE_NAMES.index("trade_imbalance_1s") :]
BOOK_PRICED_TRADE_FEATURES: tuple[str, ...] = ("vwap_distance_bps",)


@njit(cache=True)
def trades_only_chunk(
    state: MarketState,
    trades: TradeRows,
    trade_ids: np.ndarray,
    warmup_ns: np.int64,
    out: Outputs,
    scratch: Scratch,
) -> tuple[int, int]:
    """A market without a book: one event per distinct trade time (all trades at that time
    folded in first), running the same trade features and detectors as a book event
    (`finish_event`), with every book feature NaN. Returns (rows, signals) written."""
    trade_state, detector = state.trades, state.detector
    t_ts, t_px, t_qty, t_buy, t_recv = (
        trades.exch_ts, trades.price, trades.qty, trades.is_buy, trades.recv_ts
    )  # fmt: skip
    features, meta, signals = out.features, out.meta, out.signals
    x, detection = scratch.x, scratch.detection
    nt = t_ts.shape[0]
    nr = 0
    ns = 0
    tp = 0
    first = t_ts[0] if nt else np.int64(0)
    while tp < nt:
        ts = t_ts[tp]
        while tp < nt and t_ts[tp] == ts:
            trade_add(trade_state, t_ts[tp], t_px[tp], t_qty[tp], t_buy[tp])
            tp += 1
        row = features[nr]
        row[:] = np.nan
        warm = ts - first < warmup_ns
        finish_event(trade_state, detector, ts, False, warm, row, x, detection)
        # the last trade id at that time keys the row (one row per distinct trade time)
        write_meta(meta, nr, trade_ids[tp - 1], ts, ts, t_recv[tp - 1], False, warm)
        ns = write_signals(detection, nr, signals, ns)
        nr += 1
    return nr, ns


def compute_trade_features_and_signals(
    trades: pl.DataFrame,
    *,
    venue: str | None = None,
    symbol: str | None = None,
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    stats: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features and signals of a partition with trades and no book (a trade dump, a recording
    whose snapshot never came): one row per distinct trade time, `update_id` the last trade
    id at that time. The trade columns (:data:`TRADE_FEATURES`) and the detectors are the
    book path's own kernels; book columns are NaN, so only trade-driven signals (bursts) can
    fire. Same columns as :func:`compute_features_and_signals`."""
    venue, symbol = _market(trades, venue, symbol)
    fcfg = feature_config or FeatureConfig()
    dcfg = detector_config or DetectorConfig()
    cols = [*TRADE_INPUT_COLUMNS, "recv_ts_ns"]
    ordered = trades.select(cols).sort(["exch_ts_ns", "trade_id"], maintain_order=True)
    rows = trade_rows(ordered)
    n_events = int(ordered["exch_ts_ns"].n_unique()) if ordered.height else 0
    state = new_market_state(fcfg, dcfg)
    out = new_outputs(n_events)
    nr, ns = trades_only_chunk(
        state,
        rows,
        ordered["trade_id"].to_numpy().astype(np.int64),
        np.int64(round(fcfg.warmup_seconds * 1e9)),
        out,
        new_scratch(),
    )
    assert nr == n_events
    if stats is not None:
        stats.update(market_stats(state))
    feats = features_frame(venue, symbol, out.features[:nr], out.meta[:nr])
    sid = settings_id(fcfg, dcfg)
    sigs = (
        signals_frame(venue, symbol, out.signals[:ns], out.features, out.meta, settings_id=sid)
        if ns
        else empty_signals()
    )
    return feats, sigs


__all__ = [
    "BOOK_INPUT_COLUMNS",
    "BOOK_PRICED_TRADE_FEATURES",
    "FEATURE_COLUMNS",
    "SIGNAL_COLUMNS",
    "SIGNAL_CONTEXT",
    "TRADE_FEATURES",
    "TRADE_INPUT_COLUMNS",
    "BatchRun",
    "batch_trade_rows",
    "compute_features_and_signals",
    "compute_trade_features_and_signals",
    "detect_on_features",
    "empty_features",
    "empty_signals",
    "event_starts",
    "features_frame",
]


# ---- detectors alone over computed features (sweeps) ----------------------------------------

# What `detect_on_features` reads from a `features` frame.
REDETECT_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(
        ("update_id", "ts_ns", "recv_ts_ns", "asof_ns", "is_snapshot", "is_warmup",
         *DET_INPUTS, *SIGNAL_CONTEXT)
    )
)  # fmt: skip


@njit(cache=True)
def _detect_loop(
    detector: DetectorState,
    x_all: np.ndarray,
    asof: np.ndarray,
    warm: np.ndarray,
    snap: np.ndarray,
    emit_from: int,
    signals: np.ndarray,
    x: np.ndarray,
    detection: np.ndarray,
) -> int:
    ns = 0
    for i in range(x_all.shape[0]):
        for j in range(x.shape[0]):
            x[j] = x_all[i, j]
        detector_step(detector, asof[i], x, warm[i], snap[i], detection)
        if i >= emit_from:
            ns = write_signals(detection, i - emit_from, signals, ns)
    return ns


def detect_on_features(
    features: pl.DataFrame,
    detector_config: DetectorConfig,
    *,
    settings_id: str,
    venue: str,
    symbol: str,
    warmup: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The detector ensemble alone, run over a partition's computed `features` rows (those of
    `REDETECT_COLUMNS` suffice): the signals `compute_features_and_signals` would emit with
    `detector_config`, because the detectors read nothing but these feature columns
    (`kernel.finish_event`). `warmup` rows (e.g. the previous day's last minutes) are run
    first without output. Sweeps use it to vary detector settings without recomputing
    features."""
    parts = [warmup, features] if warmup is not None and warmup.height else [features]
    frame = pl.concat([p.select(REDETECT_COLUMNS) for p in parts]) if len(parts) > 1 else (
        features.select(REDETECT_COLUMNS)
    )  # fmt: skip
    n = frame.height
    emit_from = n - features.height
    x_all = np.ascontiguousarray(frame.select(DET_INPUTS).to_numpy(), dtype=np.float64)
    det = detector_config.new_state()
    out = np.empty(3 * max(features.height, 1), SIGNAL_ROW)
    ns = _detect_loop(
        det, x_all, frame["asof_ns"].to_numpy().astype(np.int64),
        frame["is_warmup"].to_numpy().astype(np.bool_),
        frame["is_snapshot"].to_numpy().astype(np.bool_), emit_from, out,
        np.empty(N_DET_INPUTS), np.zeros(N_TYPES, dtype=DETECTION),
    )  # fmt: skip
    sig = out[:ns].copy()
    rows = sig["row"]
    own = features.select(REDETECT_COLUMNS)
    fired = own[rows] if ns else own.clear()
    f = np.full((ns, N_FEATURES), np.nan)
    for name in SIGNAL_CONTEXT:
        f[:, FEATURE_NAMES.index(name)] = fired[name].to_numpy()
    meta = np.zeros(ns, FEATURE_META)
    meta["update_id"] = fired["update_id"].to_numpy()
    meta["ts"] = fired["ts_ns"].to_numpy()
    sig["row"] = np.arange(ns)
    if ns == 0:
        return empty_signals()
    return signals_frame(venue, symbol, sig, f, meta, settings_id=settings_id)
