"""The per-event kernel both drivers share: named state bundles, the event's second half, and
the output rows.

A market's complete state is one `MarketState`: the book side (`features.BookState`), the trade
side (`features.TradeState`) and the detector ensemble (`detectors.ensemble.DetectorState`).
Each is a NamedTuple of numpy arrays; scalars live in one-record structured arrays (`vars`,
`params`) whose fields the kernels read by name. numba compiles a NamedTuple argument into a
struct of array views, so a kernel takes a handful of bundles instead of dozens of arrays and
nothing is copied per call; the tuples are built once per market and passed as they are.

Per book event both drivers run, in this order: `book_event_step` (features.py), the trades up
to the event's as-of time (`trade_add`), then `finish_event` here (trade features, detector).
The batch driver (`batch.py`) does it over a partition in one numba loop; the online engine
(`online.py`) one arrival at a time with a short release queue. Same kernels, same order:
online and batch agree bit for bit.

Outputs (`Outputs`): the feature matrix (float64, one row per event, columns FEATURE_NAMES),
one `FEATURE_META` record per row, and `SIGNAL_ROW` records pointing at their feature row.

Two numba costs shape the code around the bundles (both measured, both with the same results
bit for bit): numba types every argument of every call from Python, which for these nested
tuples costs more than an event, so the online engine calls entry points specialised once
(`specialize`); and taking an array out of a tuple inside a kernel is a reference count round
trip, so kernels take the fields they use out once, outside their loops, and hot inner
helpers (`book_set_level`, the ring updates) take the parts rather than the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.book import book_counters
from mdpipe.core.detectors.ensemble import (
    DET_INPUTS,
    DETECTION,
    N_TYPES,
    SIGNAL_TYPES,
    DetectorConfig,
    DetectorState,
    Signal,
    detector_step,
    signal_id,
    stats_from_state,
)
from mdpipe.core.features import (
    DET_INDEX,
    F_MID,
    FEATURE_META,
    FEATURE_NAMES,
    N_FEATURES,
    BookState,
    FeatureConfig,
    MicropriceModel,
    TradeState,
    new_book_state,
    new_trade_state,
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
    "settings_id",
    "source",  # 'batch' | 'live' | 'api': which driver (or tool) produced the row
    *SIGNAL_CONTEXT,
    "meta_prob",  # P(profit barrier) from the pinned meta-model (`core.meta`); null without one
)
_CONTEXT_IDX = np.array([FEATURE_NAMES.index(c) for c in SIGNAL_CONTEXT], dtype=np.int64)

# One emitted signal; `row` is the index of its event's feature row in the same Outputs.
SIGNAL_ROW = np.dtype(
    [
        ("row", np.int64),
        ("type", np.int64),  # index into SIGNAL_TYPES
        ("direction", np.float64),
        ("score", np.float64),
        ("trigger", np.int64),  # index into DET_INPUTS
        ("value", np.float64),
        ("threshold", np.float64),
    ],
    align=True,
)


class BookRows(NamedTuple):
    """`book` rows in applied order, one array per column (rows of one event are contiguous)."""

    update_id: np.ndarray  # int64
    exch_ts: np.ndarray  # int64
    recv_ts: np.ndarray  # int64
    is_bid: np.ndarray  # bool
    price: np.ndarray  # float64
    qty: np.ndarray  # float64
    is_snapshot: np.ndarray  # bool

    def slice(self, start: int, stop: int | None = None) -> BookRows:
        return BookRows(*(a[start:stop] for a in self))

    def concat(self, other: BookRows) -> BookRows:
        return BookRows(*(np.concatenate([a, b]) for a, b in zip(self, other, strict=True)))


class TradeRows(NamedTuple):
    """Trades, one array per column (sorted by exch_ts, trade_id for the batch driver)."""

    exch_ts: np.ndarray  # int64
    recv_ts: np.ndarray  # int64 (the batch driver never reads it)
    price: np.ndarray  # float64
    qty: np.ndarray  # float64
    is_buy: np.ndarray  # bool: the taker bought


class MarketState(NamedTuple):
    """Everything one market's kernels remember between events (bounded)."""

    book: BookState
    trades: TradeState
    detector: DetectorState


class Outputs(NamedTuple):
    """Rows a kernel call writes: features, their meta, and signals (3 per row at most)."""

    features: np.ndarray  # float64[n, N_FEATURES]
    meta: np.ndarray  # FEATURE_META[n]
    signals: np.ndarray  # SIGNAL_ROW[3 n]


class Scratch(NamedTuple):
    """Per-call working memory (never state: contents do not survive an event)."""

    row: np.ndarray  # float64[N_FEATURES]: the feature row of an event that is not emitted
    top: np.ndarray  # float64[4, 10]: top-of-book levels
    x: np.ndarray  # float64[len(DET_INPUTS)]: detector inputs
    detection: np.ndarray  # DETECTION[3]


def new_market_state(
    feature_config: FeatureConfig | None = None,
    detector_config: DetectorConfig | None = None,
    microprice: MicropriceModel | None = None,
) -> MarketState:
    fcfg = feature_config or FeatureConfig()
    dcfg = detector_config or DetectorConfig()
    return MarketState(new_book_state(fcfg, microprice), new_trade_state(fcfg), dcfg.new_state())


def new_outputs(n: int) -> Outputs:
    return Outputs(
        np.empty((n, N_FEATURES)), np.zeros(n, dtype=FEATURE_META), np.empty(3 * n, SIGNAL_ROW)
    )


def new_scratch() -> Scratch:
    return Scratch(
        np.empty(N_FEATURES),
        np.empty((4, 10)),
        np.empty(DET_INDEX.shape[0]),
        np.zeros(N_TYPES, dtype=DETECTION),
    )


@njit(cache=True)
def finish_event(
    trades: TradeState,
    detector: DetectorState,
    asof: np.int64,
    is_snapshot: bool,
    warm: bool,
    row: np.ndarray,
    x: np.ndarray,
    detection: np.ndarray,
) -> int:
    """Trade features as of `asof`, then the detectors (inputs gathered into `x`); returns the
    signals emitted, whose details are in `detection`. Takes the two bundles it needs, not the
    MarketState: numba passes a tuple's arrays field by field, so smaller is cheaper per call."""
    trade_features(trades, asof, row[F_MID], row)
    for j in range(DET_INDEX.shape[0]):
        x[j] = row[DET_INDEX[j]]
    return detector_step(detector, asof, x, warm, is_snapshot, detection)


@njit(cache=True)
def write_meta(
    meta: np.ndarray,
    i: int,
    update_id: np.int64,
    ts: np.int64,
    asof: np.int64,
    recv: np.int64,
    is_snapshot: bool,
    warm: bool,
) -> None:
    m = meta[i]
    m.update_id = update_id
    m.ts = ts
    m.asof = asof
    m.recv = recv
    m.is_snapshot = 1 if is_snapshot else 0
    m.is_warmup = 1 if warm else 0


@njit(cache=True)
def copy_meta(dst: np.ndarray, i: int, src: np.ndarray, j: int) -> None:
    d = dst[i]
    s = src[j]
    d.update_id = s.update_id
    d.ts = s.ts
    d.asof = s.asof
    d.recv = s.recv
    d.is_snapshot = s.is_snapshot
    d.is_warmup = s.is_warmup


@njit(cache=True)
def write_signals(detection: np.ndarray, row_index: int, signals: np.ndarray, ns: int) -> int:
    """Append the types that fired in `detection` to `signals` from `ns` on; returns the new
    count."""
    for d in range(detection.shape[0]):
        o = detection[d]
        if o.fired != 0 and ns < signals.shape[0]:
            r = signals[ns]
            r.row = row_index
            r.type = d
            r.direction = o.direction
            r.score = o.score
            r.trigger = o.trigger
            r.value = o.value
            r.threshold = o.threshold
            ns += 1
    return ns


def specialize(kernel: Any, *example_args: Any) -> Callable[..., Any]:
    """The compiled entry point of numba `kernel` for the types of `example_args`.

    numba's dispatcher types every argument of every call; for the nested NamedTuples of
    structured arrays that hold a market's state that costs ~10 us, more than an event's
    work. The entry point returned here is compiled (or loaded from numba's cache) once and
    skips that dispatch, so its callers must pass arguments of exactly the example's types on
    every call: the state bundles never change type, and event arrays go through
    `event_array` first.
    """
    sig = tuple(numba.typeof(a) for a in example_args)
    kernel.compile(sig)
    entry: Callable[..., Any] = kernel.overloads[sig].entry_point
    return entry


def event_array(a: Any, dtype: type, name: str) -> np.ndarray:
    """`a` as a contiguous 1-d array of `dtype` (a no-op when it already is one)."""
    out: np.ndarray = np.ascontiguousarray(a, dtype=dtype)
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {out.shape}")
    return out


# ---------------------------------------------------------------- frames


def writable_numpy(s: pl.Series) -> np.ndarray:
    """A polars column as a writable numpy array: polars (and Arrow) may hand out read-only
    views, and numba would compile (and cache) a second, read-only specialisation of every
    kernel for them."""
    a = s.to_numpy()
    return a if a.flags.writeable else a.copy()


def book_rows(book: pl.DataFrame) -> BookRows:
    """The columns of canonical `book` rows the kernels read (rows already in applied order)."""
    return BookRows(
        writable_numpy(book["update_id"].cast(pl.Int64)),
        writable_numpy(book["exch_ts_ns"].cast(pl.Int64)),
        writable_numpy(book["recv_ts_ns"].cast(pl.Int64)),
        writable_numpy(book["side"] == "bid"),
        writable_numpy(book["price"].cast(pl.Float64)),
        writable_numpy(book["qty"].cast(pl.Float64)),
        writable_numpy(book["is_snapshot"].cast(pl.Boolean)),
    )


def empty_book_rows() -> BookRows:
    i, f, b = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.bool_)
    return BookRows(i, i.copy(), i.copy(), b, f, f.copy(), b.copy())


def trade_rows(trades: pl.DataFrame) -> TradeRows:
    """The columns of canonical `trades` rows the kernels read, in the frame's order; without
    a `recv_ts_ns` column the exchange time stands in (only the online engine reads it)."""
    ts = writable_numpy(trades["exch_ts_ns"].cast(pl.Int64))
    recv = writable_numpy(trades["recv_ts_ns"].cast(pl.Int64)) if "recv_ts_ns" in trades else ts
    return TradeRows(
        ts,
        recv,
        writable_numpy(trades["price"].cast(pl.Float64)),
        writable_numpy(trades["qty"].cast(pl.Float64)),
        writable_numpy(trades["side"] == "buy"),
    )


def empty_trade_rows() -> TradeRows:
    i, f = np.zeros(0, np.int64), np.zeros(0)
    return TradeRows(i, i.copy(), f, f.copy(), np.zeros(0, np.bool_))


def features_frame(venue: str, symbol: str, features: np.ndarray, meta: np.ndarray) -> pl.DataFrame:
    n = features.shape[0]
    cols: dict[str, Any] = {
        "venue": pl.Series("venue", [venue], dtype=pl.String).extend_constant(venue, n - 1)
        if n
        else pl.Series("venue", [], dtype=pl.String),
        "symbol": pl.Series("symbol", [symbol], dtype=pl.String).extend_constant(symbol, n - 1)
        if n
        else pl.Series("symbol", [], dtype=pl.String),
        "update_id": meta["update_id"],
        "ts_ns": meta["ts"],
        "recv_ts_ns": meta["recv"],
        "asof_ns": meta["asof"],
        "is_snapshot": meta["is_snapshot"].astype(np.bool_),
        "is_warmup": meta["is_warmup"].astype(np.bool_),
    }
    for k, name in enumerate(FEATURE_NAMES):
        cols[name] = features[:, k]
    return pl.DataFrame(cols)


def empty_features(venue: str = "", symbol: str = "") -> pl.DataFrame:
    return features_frame(venue, symbol, np.empty((0, N_FEATURES)), np.zeros(0, FEATURE_META))


def signals_frame(
    venue: str,
    symbol: str,
    signals: np.ndarray,
    features: np.ndarray,
    meta: np.ndarray,
    *,
    settings_id: str,
    source: str = "batch",
) -> pl.DataFrame:
    """Signal rows; `signal_id` hashes (venue, symbol, type, update_id), a few rows a day;
    `settings_id` names the feature and detector settings that produced them
    (`mdpipe.core.config.settings_id`)."""
    types = [SIGNAL_TYPES[int(d)] for d in signals["type"]]
    rows = signals["row"]
    uids = meta["update_id"][rows]
    data: dict[str, Any] = {
        "venue": pl.Series([venue] * len(types), dtype=pl.String),
        "symbol": pl.Series([symbol] * len(types), dtype=pl.String),
        "ts_ns": pl.Series(meta["ts"][rows], dtype=pl.Int64),
        "signal_id": pl.Series(
            [signal_id(venue, symbol, t, int(u)) for t, u in zip(types, uids, strict=True)],
            dtype=pl.String,
        ),
        "signal_type": pl.Series(types, dtype=pl.String),
        "direction": pl.Series(signals["direction"].astype(np.int8), dtype=pl.Int8),
        "score": pl.Series(signals["score"], dtype=pl.Float64),
        "update_id": pl.Series(uids, dtype=pl.Int64),
        "trigger": pl.Series([DET_INPUTS[int(c)] for c in signals["trigger"]], dtype=pl.String),
        "trigger_value": pl.Series(signals["value"], dtype=pl.Float64),
        "threshold": pl.Series(signals["threshold"], dtype=pl.Float64),
        "settings_id": pl.Series([settings_id] * len(types), dtype=pl.String),
        "source": pl.Series([source] * len(types), dtype=pl.String),
    }
    for j, name in enumerate(SIGNAL_CONTEXT):
        data[name] = pl.Series(features[rows, _CONTEXT_IDX[j]], dtype=pl.Float64)
    data["meta_prob"] = pl.Series([None] * len(types), dtype=pl.Float64)
    return pl.DataFrame(data)


def empty_signals() -> pl.DataFrame:
    return signals_frame(
        "", "", np.zeros(0, SIGNAL_ROW), np.empty((0, N_FEATURES)), np.zeros(0, FEATURE_META),
        settings_id="",
    )  # fmt: skip


def signal_objects(venue: str, symbol: str, signals: np.ndarray, meta: np.ndarray) -> list[Signal]:
    """`Signal`s (the alert payload) of SIGNAL_ROW records."""
    out: list[Signal] = []
    for r in signals:
        m = meta[int(r["row"])]
        t = SIGNAL_TYPES[int(r["type"])]
        uid = int(m["update_id"])
        out.append(
            Signal(
                venue=venue,
                symbol=symbol,
                ts_ns=int(m["ts"]),
                update_id=uid,
                signal_id=signal_id(venue, symbol, t, uid),
                signal_type=t,
                direction=int(r["direction"]),
                score=float(r["score"]),
                trigger=DET_INPUTS[int(r["trigger"])],
                trigger_value=float(r["value"]),
                threshold=float(r["threshold"]),
            )
        )
    return out


def market_stats(state: MarketState) -> dict[str, Any]:
    """Book, trade and detector counters of one market's state."""
    out = stats_from_state(state.detector)
    bc = book_counters(state.book.book)
    out["book"] = {
        "snapshots": bc["snapshots"],
        "out_of_range_levels": bc["out_of_range"],
        "off_grid_prices": bc["off_grid"],
        "crossed_events": bc["crossed"],
        "ring_overflows": int(state.book.vars[0]["ring_overflow"]),
    }
    tv = state.trades.vars[0]
    out["trades"] = {"trades": int(tv["trades"]), "ring_overflows": int(tv["overflow"])}
    return out
