"""Microstructure features: one row per applied book event, trades as of its time.

Everything sequential is a numba kernel operating on explicit, bounded state: `BookState` and
`TradeState`, NamedTuples of arrays whose scalars sit in one-record structured arrays (`vars`,
`params`) read by field name:

  book_event_step    applies one book event and computes the book-side features (book shape,
                     OFI, wmid drift, spread compression, BOCPD on mid returns, time of day,
                     Stoikov micro-price) from the book and the book-event history only;
  trade_add          folds one trade into the trade windows and the VPIN buckets;
  trade_features     trade-side features as of a time (trades with exch_ts_ns <= that time).

The batch driver (`compute_features_and_signals`, in `mdpipe.core.batch`) and the online
engine (`mdpipe.core.online`) both call exactly these kernels in the same order per event:
book step, then the trades up to the event's time, then trade features, then the detector.
That ordering, not a tolerance, is what makes online and batch agree bit for bit.

Time windows (1 s, 5 s, 30 s) are trailing, (t - W, t], on exchange time. The event time used
for windows and for the as-of join is the running maximum of the book events' exchange times
(`asof_ns`), so a late-stamped event can never pull trades from the future.

Running window sums are updated by add/subtract and reset to exactly zero whenever a window
empties, so floating-point drift cannot accumulate across quiet periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.book import Book, book_apply_event, book_top, new_book
from mdpipe.core.detectors.bocpd import (
    BOCPD_ROWS,
    bocpd_reset,
    bocpd_update,
    lgamma_table,
    validate_bocpd,
)
from mdpipe.core.detectors.cusum import STANDARDIZER, halflife_to_alpha, standardize_update
from mdpipe.core.detectors.ensemble import DET_INPUTS

FEATURE_NAMES: tuple[str, ...] = (
    # book shape
    "best_bid",
    "best_ask",
    "best_bid_qty",
    "best_ask_qty",
    "mid",
    "spread",
    "spread_bps",
    "wmid",
    "bid_depth_5",
    "ask_depth_5",
    "bid_depth_10",
    "ask_depth_10",
    "imbalance_5",
    "imbalance_10",
    "depth_ratio_5",
    "depth_ratio_10",
    # book dynamics
    "wmid_change_bps",
    "wmid_drift_1s_bps",
    "wmid_drift_5s_bps",
    "spread_mean_30s",
    "spread_compression",
    "ofi",
    "ofi_1s",
    "ofi_5s",
    "mid_return_bps",
    "bocpd_run_length",
    "bocpd_cp_prob",
    "hour",
    "minute",
    "tod_sin",
    "tod_cos",
    "microprice",
    # trades as of the event
    "trade_imbalance_1s",
    "trade_imbalance_5s",
    "trade_imbalance_30s",
    "volume_1s",
    "volume_5s",
    "volume_30s",
    "volume_z_1s",
    "volume_z_5s",
    "volume_z_30s",
    "trade_count_1s",
    "trade_count_5s",
    "trade_count_30s",
    "realized_vol_5s",
    "realized_vol_30s",
    "realized_vol_z",
    "vwap_30s",
    "vwap_distance_bps",
    "vpin",
    "last_trade_price",
)
N_FEATURES = len(FEATURE_NAMES)
_IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}
(
    F_BID, F_ASK, F_BIDQ, F_ASKQ, F_MID, F_SPREAD, F_SPREAD_BPS, F_WMID,
    F_BD5, F_AD5, F_BD10, F_AD10, F_IMB5, F_IMB10, F_DR5, F_DR10,
    F_WCHG, F_WD1, F_WD5, F_SPMEAN, F_SPCOMP, F_OFI, F_OFI1, F_OFI5, F_MRET,
    F_RL, F_CP, F_HOUR, F_MINUTE, F_TSIN, F_TCOS, F_MICRO,
    F_TI1, F_TI5, F_TI30, F_V1, F_V5, F_V30, F_VZ1, F_VZ5, F_VZ30, F_N1, F_N5, F_N30,
    F_RV5, F_RV30, F_RVZ, F_VWAP, F_VWAPD, F_VPIN, F_LAST,
) = range(N_FEATURE_NAMES := len(FEATURE_NAMES))  # fmt: skip
assert N_FEATURE_NAMES == F_LAST + 1
DET_INDEX = np.array([_IDX[n] for n in DET_INPUTS], dtype=np.int64)

# What identifies a feature row besides its values, one record per row.
FEATURE_META = np.dtype(
    [
        ("update_id", np.int64),
        ("ts", np.int64),  # exchange time of the event
        ("asof", np.int64),  # running maximum of the event times: the as-of join time
        ("recv", np.int64),  # receive time
        ("is_snapshot", np.int64),
        ("is_warmup", np.int64),
    ],
    align=True,
)

W1_NS = 1_000_000_000
W5_NS = 5_000_000_000
W30_NS = 30_000_000_000
_TRADE_WINDOWS = (W1_NS, W5_NS, W30_NS)
DAY_NS = 86_400_000_000_000

# ---- book-side state ----------------------------------------------------------------------
# One book event in the 30 s ring.
BOOK_RING = np.dtype(
    [("ts", np.int64), ("ofi", np.float64), ("wmid", np.float64), ("spread", np.float64)],
    align=True,
)
BOOK_VARS = np.dtype(
    [
        # the previous two-sided top of book
        ("prev_bid", np.float64),
        ("prev_bid_qty", np.float64),
        ("prev_ask", np.float64),
        ("prev_ask_qty", np.float64),
        ("prev_wmid", np.float64),
        ("prev_mid", np.float64),
        # running window sums over the ring
        ("ofi_1s", np.float64),
        ("ofi_5s", np.float64),
        ("spread_sum_30s", np.float64),
        ("spread_count_30s", np.float64),
        # wmid of the latest event at or before now - 1 s / 5 s (cached: its slot may recycle)
        ("lookback_wmid_1s", np.float64),
        ("lookback_wmid_5s", np.float64),
        ("bar_ref_mid", np.float64),  # mid at the last 1 s bar close
        ("bocpd_run_length", np.float64),  # last BOCPD outputs, held between bars
        ("bocpd_cp_prob", np.float64),
        # ring positions (monotone counters; slot = counter % capacity)
        ("head", np.int64),
        ("tail_1s", np.int64),
        ("tail_5s", np.int64),
        ("tail_30s", np.int64),
        ("lookback_1s", np.int64),  # -1 until an event is old enough
        ("lookback_5s", np.int64),
        ("first_asof", np.int64),
        ("has_first", np.int64),
        ("events", np.int64),
        ("bocpd_m", np.int64),  # BOCPD hypotheses in use
        ("last_asof", np.int64),
        ("ring_overflow", np.int64),
        ("bar", np.int64),  # second of the open 1 s bar, -1 before the first
    ],
    align=True,
)
BOOK_PARAMS = np.dtype(
    [
        ("warmup_ns", np.int64),
        ("hazard", np.float64),
        ("mu0", np.float64),
        ("kappa0", np.float64),
        ("alpha0", np.float64),
        ("beta0", np.float64),
        ("cp_lag", np.int64),
        ("std_alpha", np.float64),
        ("std_min_count", np.float64),
    ],
    align=True,
)

# ---- trade-side state ---------------------------------------------------------------------
# One trade in the 30 s ring, and the running sums of the same quantities per window.
TRADE_RING = np.dtype(
    [
        ("ts", np.int64),
        ("signed", np.float64),  # taker-signed quantity
        ("qty", np.float64),
        ("notional", np.float64),
        ("r2", np.float64),  # squared trade-to-trade log return (bps^2)
    ],
    align=True,
)
TRADE_WINDOW = np.dtype(
    [
        ("tail", np.int64),  # oldest trade still in the window (counter)
        ("signed", np.float64),
        ("qty", np.float64),
        ("notional", np.float64),
        ("r2", np.float64),
    ],
    align=True,
)
TRADE_VARS = np.dtype(
    [
        ("last_price", np.float64),
        ("ewma_qty", np.float64),
        ("cur_buy", np.float64),  # the open VPIN bucket
        ("cur_sell", np.float64),
        ("target", np.float64),  # its volume
        ("sum_imb", np.float64),  # sums over the closed buckets kept
        ("sum_vol", np.float64),
        ("vpin", np.float64),
        ("head", np.int64),
        ("trades", np.int64),
        ("vp_head", np.int64),
        ("vp_n", np.int64),
        ("overflow", np.int64),
        ("qty_n", np.int64),
    ],
    align=True,
)
VPIN_BUCKET = np.dtype([("imbalance", np.float64), ("volume", np.float64)], align=True)
TRADE_PARAMS = np.dtype(
    [
        ("std_alpha", np.float64),
        ("std_min_count", np.float64),
        ("trades_per_bucket", np.float64),
        ("qty_alpha", np.float64),
    ],
    align=True,
)


class BookState(NamedTuple):
    """Bounded state of the book side of one market, and its parameters."""

    book: Book
    ring: np.ndarray  # BOOK_RING[book_ring_capacity]
    vars: np.ndarray  # BOOK_VARS[1]
    ret_std: np.ndarray  # STANDARDIZER[1] of the 1 s mid returns feeding BOCPD
    bocpd: np.ndarray  # float64[BOCPD_ROWS, bocpd_max_run_length]
    lgamma: np.ndarray  # `lgamma_table` of the BOCPD prior
    micro: np.ndarray  # `MicropriceModel.table` (empty: no model)
    params: np.ndarray  # BOOK_PARAMS[1]


class TradeState(NamedTuple):
    """Bounded state of the trade side of one market, and its parameters."""

    ring: np.ndarray  # TRADE_RING[trade_ring_capacity]
    windows: np.ndarray  # TRADE_WINDOW[3]: 1 s, 5 s, 30 s
    vars: np.ndarray  # TRADE_VARS[1]
    volume_std: np.ndarray  # STANDARDIZER[3]: volume per window
    rv_std: np.ndarray  # STANDARDIZER[1]: realized_vol_5s
    vpin: np.ndarray  # VPIN_BUCKET[vpin_buckets]
    params: np.ndarray  # TRADE_PARAMS[1]


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Feature parameters, validated on construction.

    warmup_seconds          rows less than this after the first event are marked warm-up (the
                            longest window is 30 s; the standardisers need some history too).
    zscore_halflife         half-life, in book events, of the EWMA statistics behind the volume,
                            volatility and mid-return z-scores.
    zscore_min_count        events before a z-score is reported (NaN before).
    bocpd_hazard            constant hazard of the changepoint model, per 1 s bar
                            (1 / expected regime length in seconds).
    bocpd_max_run_length    run-length hypotheses kept (time and memory per bar are O(this)).
    bocpd_cp_lag            changepoint probability = posterior P(run length < this), in bars.
    vpin_trades_per_bucket  VPIN bucket volume, as a multiple of the EWMA trade size.
    vpin_buckets            buckets in the VPIN average.
    book_ticks              width of the dense price grid, in ticks (see `mdpipe.core.book`).
    book_ring_capacity      book events kept for the 30 s windows (bounded state).
    trade_ring_capacity     trades kept for the 30 s windows (bounded state).
    """

    warmup_seconds: float = 60.0
    zscore_halflife: float = 3000.0
    zscore_min_count: int = 30
    bocpd_hazard: float = 1.0 / 300.0
    bocpd_max_run_length: int = 48
    bocpd_cp_lag: int = 10
    vpin_trades_per_bucket: float = 50.0
    vpin_buckets: int = 50
    book_ticks: int = 1 << 21
    book_ring_capacity: int = 1 << 14
    trade_ring_capacity: int = 1 << 16

    def __post_init__(self) -> None:
        def num(name: str, v: object, lo: float, *, strict: bool = True) -> None:
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or not math.isfinite(float(v)) or (v <= lo if strict else v < lo):  # type: ignore[arg-type, operator]
                bound = f"> {lo}" if strict else f">= {lo}"
                raise ValueError(f"FeatureConfig.{name} must be a finite number {bound}, got {v!r}")

        num("warmup_seconds", self.warmup_seconds, 0.0, strict=False)
        num("zscore_halflife", self.zscore_halflife, 1.0, strict=False)
        num("vpin_trades_per_bucket", self.vpin_trades_per_bucket, 0.0)
        validate_bocpd(
            self.bocpd_hazard, self.bocpd_max_run_length, self.bocpd_cp_lag, 1.0, 1.0, 1.0
        )
        for name in ("zscore_min_count", "vpin_buckets", "book_ring_capacity",
                     "trade_ring_capacity"):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 2):
                raise ValueError(f"FeatureConfig.{name} must be an int >= 2, got {v!r}")
        bt = self.book_ticks
        if not (isinstance(bt, int) and bt >= 1024 and bt % 64 == 0):
            raise ValueError(
                f"FeatureConfig.book_ticks must be a multiple of 64 >= 1024, got {bt!r}"
            )

    def book_params(self) -> np.ndarray:
        p = np.zeros(1, dtype=BOOK_PARAMS)
        p["warmup_ns"] = float(round(self.warmup_seconds * 1e9))
        p["hazard"] = self.bocpd_hazard
        p["mu0"], p["kappa0"], p["alpha0"], p["beta0"] = 0.0, 1.0, 1.0, 1.0
        p["cp_lag"] = self.bocpd_cp_lag
        p["std_alpha"] = halflife_to_alpha(self.zscore_halflife)
        p["std_min_count"] = self.zscore_min_count
        return p

    def trade_params(self) -> np.ndarray:
        p = np.zeros(1, dtype=TRADE_PARAMS)
        p["std_alpha"] = halflife_to_alpha(self.zscore_halflife)
        p["std_min_count"] = self.zscore_min_count
        p["trades_per_bucket"] = self.vpin_trades_per_bucket
        p["qty_alpha"] = halflife_to_alpha(1000.0)
        return p


def new_book_state(config: FeatureConfig, microprice: MicropriceModel | None = None) -> BookState:
    """A market's book side before its first event."""
    v = np.zeros(1, dtype=BOOK_VARS)
    for name in ("lookback_1s", "lookback_5s", "bar"):
        v[name] = -1
    for name in ("prev_bid", "prev_bid_qty", "prev_ask", "prev_ask_qty", "prev_wmid",
                 "prev_mid", "bar_ref_mid"):  # fmt: skip
        v[name] = math.nan
    bocpd = np.zeros((BOCPD_ROWS, config.bocpd_max_run_length))
    v["bocpd_m"] = bocpd_reset(bocpd, 0.0, 1.0, 1.0, 1.0)
    return BookState(
        book=new_book(config.book_ticks),
        ring=np.zeros(config.book_ring_capacity, dtype=BOOK_RING),
        vars=v,
        ret_std=np.zeros(1, dtype=STANDARDIZER),
        bocpd=bocpd,
        lgamma=lgamma_table(1.0),
        micro=(microprice or MicropriceModel.empty()).table,
        params=config.book_params(),
    )


def new_trade_state(config: FeatureConfig) -> TradeState:
    """A market's trade side before its first trade."""
    v = np.zeros(1, dtype=TRADE_VARS)
    v["last_price"] = math.nan
    return TradeState(
        ring=np.zeros(config.trade_ring_capacity, dtype=TRADE_RING),
        windows=np.zeros(3, dtype=TRADE_WINDOW),
        vars=v,
        volume_std=np.zeros(3, dtype=STANDARDIZER),
        rv_std=np.zeros(1, dtype=STANDARDIZER),
        vpin=np.zeros(config.vpin_buckets, dtype=VPIN_BUCKET),
        params=config.trade_params(),
    )


# =============================================================================================
# Book side
# =============================================================================================


@njit(cache=True)
def _book_ring_expire(ring: np.ndarray, v: Any, now: np.int64) -> None:
    head = v.head
    cap = ring.shape[0]
    t = v.tail_1s
    while t < head and ring[t % cap].ts <= now - W1_NS:
        v.ofi_1s -= ring[t % cap].ofi
        t += 1
    v.tail_1s = t
    if t == head:
        v.ofi_1s = 0.0
    t = v.tail_5s
    while t < head and ring[t % cap].ts <= now - W5_NS:
        v.ofi_5s -= ring[t % cap].ofi
        t += 1
    v.tail_5s = t
    if t == head:
        v.ofi_5s = 0.0
    t = v.tail_30s
    while t < head and ring[t % cap].ts <= now - W30_NS:
        sp = ring[t % cap].spread
        if math.isfinite(sp):
            v.spread_sum_30s -= sp
            v.spread_count_30s -= 1.0
        t += 1
    v.tail_30s = t
    if t == head or v.spread_count_30s == 0.0:
        v.spread_sum_30s = 0.0
        v.spread_count_30s = 0.0
    # Look-back pointers: the latest event at or before now - W (its wmid is cached in vars so
    # the ring slot may be recycled afterwards).
    lk = v.lookback_1s
    while lk + 1 < head and ring[(lk + 1) % cap].ts <= now - W1_NS:
        lk += 1
        v.lookback_wmid_1s = ring[lk % cap].wmid
    v.lookback_1s = lk
    lk = v.lookback_5s
    while lk + 1 < head and ring[(lk + 1) % cap].ts <= now - W5_NS:
        lk += 1
        v.lookback_wmid_5s = ring[lk % cap].wmid
    v.lookback_5s = lk


@njit(cache=True)
def _book_ring_push(ring: np.ndarray, v: Any, now: np.int64, ofi: float, wmid: float,
                    spread: float) -> None:  # fmt: skip
    cap = ring.shape[0]
    head = v.head
    if head - v.tail_30s == cap:
        # Full ring (more than `cap` events within 30 s): the oldest leaves every window early.
        old = v.tail_30s
        if v.tail_1s == old:
            v.ofi_1s -= ring[old % cap].ofi
            v.tail_1s += 1
        if v.tail_5s == old:
            v.ofi_5s -= ring[old % cap].ofi
            v.tail_5s += 1
        sp = ring[old % cap].spread
        if math.isfinite(sp):
            v.spread_sum_30s -= sp
            v.spread_count_30s -= 1.0
        v.tail_30s += 1
        v.ring_overflow += 1
    e = ring[head % cap]
    e.ts = now
    e.ofi = ofi
    e.wmid = wmid
    e.spread = spread
    v.head = head + 1
    v.ofi_1s += ofi
    v.ofi_5s += ofi
    if math.isfinite(spread):
        v.spread_sum_30s += spread
        v.spread_count_30s += 1.0


@njit(cache=True)
def book_event_step(
    s: BookState,
    is_bid: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    start: int,
    stop: int,
    is_snapshot: bool,
    ts_ns: np.int64,
    row: np.ndarray,
    top: np.ndarray,
) -> tuple[np.int64, bool]:
    """Apply one book event (level rows [start, stop)) and write the book-side features into
    `row`.

    Returns (as-of time, warm-up flag). `top` is scratch of shape (4, 10).
    """
    # Tuple fields are taken out once: each access costs a reference count round trip.
    book = s.book
    v = s.vars[0]
    p = s.params[0]
    book_apply_event(book, is_bid, price, size, start, stop, is_snapshot)
    asof = ts_ns
    if v.has_first == 1 and v.last_asof > asof:
        asof = v.last_asof
    v.last_asof = asof
    if v.has_first == 0:
        v.has_first = 1
        v.first_asof = asof
    v.events += 1

    book_top(book, 10, top)
    info = book.info[0]
    n = book.qty.shape[1]
    two_sided = info.synced == 1 and info.best_bid >= 0 and info.best_ask < n
    bid = top[0, 0]
    bidq = top[1, 0]
    ask = top[2, 0]
    askq = top[3, 0]
    row[F_BID] = bid
    row[F_BIDQ] = bidq
    row[F_ASK] = ask
    row[F_ASKQ] = askq
    mid = 0.5 * (bid + ask) if two_sided else math.nan
    spread = ask - bid if two_sided else math.nan
    wmid = (bid * askq + ask * bidq) / (bidq + askq) if two_sided else math.nan
    row[F_MID] = mid
    row[F_SPREAD] = spread
    row[F_SPREAD_BPS] = spread / mid * 1e4 if two_sided else math.nan
    row[F_WMID] = wmid
    bd5 = 0.0
    ad5 = 0.0
    bd10 = 0.0
    ad10 = 0.0
    for i in range(10):
        bq = top[1, i]
        aq = top[3, i]
        if bq == bq:
            bd10 += bq
            if i < 5:
                bd5 += bq
        if aq == aq:
            ad10 += aq
            if i < 5:
                ad5 += aq
    if two_sided:
        row[F_BD5] = bd5
        row[F_AD5] = ad5
        row[F_BD10] = bd10
        row[F_AD10] = ad10
        row[F_IMB5] = (bd5 - ad5) / (bd5 + ad5)
        row[F_IMB10] = (bd10 - ad10) / (bd10 + ad10)
        row[F_DR5] = bd5 / ad5
        row[F_DR10] = bd10 / ad10
    else:
        for f in (F_BD5, F_AD5, F_BD10, F_AD10, F_IMB5, F_IMB10, F_DR5, F_DR10):
            row[f] = math.nan

    # Order flow imbalance of this event (Cont, Kukanov and Stoikov 2014), from the change of
    # the best quotes. A snapshot (resync) is not order flow: 0.
    pbid = v.prev_bid
    pbidq = v.prev_bid_qty
    pask = v.prev_ask
    paskq = v.prev_ask_qty
    ofi = 0.0
    if two_sided and not is_snapshot and pbid == pbid and pask == pask:
        if bid >= pbid:
            ofi += bidq
        if bid <= pbid:
            ofi -= pbidq
        if ask <= pask:
            ofi -= askq
        if ask >= pask:
            ofi += paskq
    row[F_OFI] = ofi
    pwmid = v.prev_wmid
    pmid = v.prev_mid
    row[F_WCHG] = (wmid / pwmid - 1.0) * 1e4 if (two_sided and pwmid == pwmid) else math.nan
    mret = math.nan
    if two_sided and pmid == pmid:
        # Across a resync snapshot too: the move is real even if the flow behind it is unseen.
        mret = math.log(mid / pmid) * 1e4
    row[F_MRET] = mret
    if two_sided:
        v.prev_bid = bid
        v.prev_bid_qty = bidq
        v.prev_ask = ask
        v.prev_ask_qty = askq
        v.prev_wmid = wmid
        v.prev_mid = mid

    ring = s.ring
    _book_ring_push(ring, v, asof, ofi, wmid, spread)
    _book_ring_expire(ring, v, asof)
    row[F_OFI1] = v.ofi_1s
    row[F_OFI5] = v.ofi_5s
    lw1 = v.lookback_wmid_1s if v.lookback_1s >= 0 else math.nan
    lw5 = v.lookback_wmid_5s if v.lookback_5s >= 0 else math.nan
    row[F_WD1] = (wmid / lw1 - 1.0) * 1e4 if (two_sided and lw1 == lw1) else math.nan
    row[F_WD5] = (wmid / lw5 - 1.0) * 1e4 if (two_sided and lw5 == lw5) else math.nan
    spmean = v.spread_sum_30s / v.spread_count_30s if v.spread_count_30s > 0.0 else math.nan
    row[F_SPMEAN] = spmean
    row[F_SPCOMP] = spread / spmean if (two_sided and spmean > 0.0) else math.nan

    # Regime: BOCPD on standardised 1 s mid returns. Per-event returns at 100 ms are mostly
    # exact zeros, and a Normal-Gamma run fed zeros grows so confident that every tick move
    # reads as a changepoint; one-second bars are closer to the model's iid-within-a-regime
    # assumption. A bar closes on the first event of a later second; the outputs hold between.
    if two_sided:
        bar = asof // W1_NS
        if v.bar < 0:
            v.bar = bar
            v.bar_ref_mid = mid
        elif bar > v.bar and pmid == pmid:
            ret = math.log(pmid / v.bar_ref_mid) * 1e4
            v.bar_ref_mid = pmid
            v.bar = bar
            x = standardize_update(s.ret_std[0], ret, p.std_alpha, p.std_min_count)
            if x == x:
                m, rl, cp = bocpd_update(
                    s.bocpd, s.lgamma, v.bocpd_m, x, p.hazard, p.mu0, p.kappa0, p.alpha0,
                    p.beta0, p.cp_lag,
                )  # fmt: skip
                v.bocpd_m = m
                v.bocpd_run_length = rl
                v.bocpd_cp_prob = cp
    row[F_RL] = v.bocpd_run_length
    row[F_CP] = v.bocpd_cp_prob

    tod_ns = ts_ns % DAY_NS
    row[F_HOUR] = float(tod_ns // 3_600_000_000_000)
    row[F_MINUTE] = float((tod_ns // 60_000_000_000) % 60)
    ang = 2.0 * math.pi * (float(tod_ns) / float(DAY_NS))
    row[F_TSIN] = math.sin(ang)
    row[F_TCOS] = math.cos(ang)

    row[F_MICRO] = microprice_lookup(s.micro, bid, ask, bidq, askq)

    warm = (asof - v.first_asof < p.warmup_ns) or not two_sided
    return asof, warm


# =============================================================================================
# Trade side
# =============================================================================================


@njit(cache=True)
def _trade_evict_oldest(s: TradeState) -> None:
    ring = s.ring
    windows = s.windows
    v = s.vars[0]
    cap = ring.shape[0]
    old = windows[2].tail
    e = ring[old % cap]
    for w in range(3):
        win = windows[w]
        if win.tail == old:
            win.signed -= e.signed
            win.qty -= e.qty
            win.notional -= e.notional
            win.r2 -= e.r2
            win.tail += 1
    v.overflow += 1


@njit(cache=True)
def trade_add(s: TradeState, ts_ns: np.int64, price: float, qty: float, is_buy: bool) -> None:
    """Fold one trade (taker side `is_buy`) into the windows and the VPIN buckets."""
    if not (qty > 0.0 and price > 0.0):
        return
    ring = s.ring
    windows = s.windows
    v = s.vars[0]
    p = s.params[0]
    cap = ring.shape[0]
    head = v.head
    if head - windows[2].tail == cap:
        _trade_evict_oldest(s)
    last = v.last_price
    r = math.log(price / last) * 1e4 if last == last else 0.0
    v.last_price = price
    signed = qty if is_buy else -qty
    e = ring[head % cap]
    e.ts = ts_ns
    e.signed = signed
    e.qty = qty
    e.notional = qty * price
    e.r2 = r * r
    v.head = head + 1
    v.trades += 1
    for w in range(3):
        win = windows[w]
        win.signed += e.signed
        win.qty += e.qty
        win.notional += e.notional
        win.r2 += e.r2

    # VPIN (Easley, Lopez de Prado and O'Hara 2012) with the taker side known exactly (no bulk
    # classification needed). Bucket volume = vpin_trades_per_bucket x EWMA trade size, fixed
    # when a bucket opens; a trade larger than the space left spills into the next buckets.
    n = v.qty_n
    a = max(1.0 / (n + 1.0), p.qty_alpha)
    v.ewma_qty += a * (qty - v.ewma_qty)
    v.qty_n = n + 1
    if v.target <= 0.0:
        v.target = v.ewma_qty * p.trades_per_bucket
    rem = qty
    buckets = s.vpin
    nb = buckets.shape[0]
    spills = 0
    while rem > 0.0:
        space = v.target - v.cur_buy - v.cur_sell
        take = rem if (rem < space or spills > nb) else space
        if is_buy:
            v.cur_buy += take
        else:
            v.cur_sell += take
        rem -= take
        if v.cur_buy + v.cur_sell >= v.target * (1.0 - 1e-12):
            h = v.vp_head
            buckets[h].imbalance = abs(v.cur_buy - v.cur_sell)
            buckets[h].volume = v.cur_buy + v.cur_sell
            v.vp_head = (h + 1) % nb
            if v.vp_n < nb:
                v.vp_n += 1
            s_imb = 0.0
            s_vol = 0.0
            for b in range(v.vp_n):
                s_imb += buckets[b].imbalance
                s_vol += buckets[b].volume
            v.sum_imb = s_imb
            v.sum_vol = s_vol
            v.cur_buy = 0.0
            v.cur_sell = 0.0
            v.target = v.ewma_qty * p.trades_per_bucket
            spills += 1
    vol = v.sum_vol + v.cur_buy + v.cur_sell
    imb = v.sum_imb + abs(v.cur_buy - v.cur_sell)
    v.vpin = imb / vol if vol > 0.0 else math.nan


@njit(cache=True)
def trade_features(s: TradeState, asof: np.int64, mid: float, row: np.ndarray) -> None:
    """Trade-side features as of `asof` (the trades folded in so far, all <= asof)."""
    ring = s.ring
    windows = s.windows
    volume_std = s.volume_std
    v = s.vars[0]
    p = s.params[0]
    cap = ring.shape[0]
    head = v.head
    for w in range(3):
        span = _TRADE_WINDOWS[w]
        win = windows[w]
        t = win.tail
        while t < head and ring[t % cap].ts <= asof - span:
            e = ring[t % cap]
            win.signed -= e.signed
            win.qty -= e.qty
            win.notional -= e.notional
            win.r2 -= e.r2
            t += 1
        win.tail = t
        if t == head:
            win.signed = 0.0
            win.qty = 0.0
            win.notional = 0.0
            win.r2 = 0.0
        row[F_TI1 + w] = win.signed
        vol = win.qty
        row[F_V1 + w] = vol
        row[F_N1 + w] = float(head - t)
        row[F_VZ1 + w] = standardize_update(volume_std[w], vol, p.std_alpha, p.std_min_count)
    rv5 = math.sqrt(max(windows[1].r2, 0.0))
    rv30 = math.sqrt(max(windows[2].r2, 0.0))
    row[F_RV5] = rv5
    row[F_RV30] = rv30
    row[F_RVZ] = standardize_update(s.rv_std[0], rv5, p.std_alpha, p.std_min_count)
    last = v.last_price
    vol30 = windows[2].qty
    vwap = windows[2].notional / vol30 if vol30 > 0.0 else last
    row[F_VWAP] = vwap
    row[F_VWAPD] = (mid / vwap - 1.0) * 1e4
    row[F_VPIN] = v.vpin if v.trades > 0 else math.nan
    row[F_LAST] = last


# =============================================================================================
# Stoikov (2018) micro-price
# =============================================================================================


@njit(cache=True, inline="always")
def microprice_lookup(mp: np.ndarray, bid: float, ask: float, bidq: float, askq: float) -> float:
    """mid + G(imbalance bucket, spread in ticks); NaN without a fitted table."""
    n_imb = mp.shape[0]
    n_spr = mp.shape[1] - 1
    if n_imb == 0 or n_spr <= 0 or not (bidq + askq > 0.0) or bid != bid or ask != ask:
        return math.nan
    tick = mp[0, n_spr]  # the last column stores the tick the table was fitted with
    imb = bidq / (bidq + askq)
    ib = min(int(imb * n_imb), n_imb - 1)
    s = round((ask - bid) / tick)
    if s < 1:
        s = 1
    if s > n_spr:
        s = n_spr
    return 0.5 * (bid + ask) + mp[ib, s - 1]


@dataclass(frozen=True)
class MicropriceModel:
    """Stoikov's micro-price adjustment G(I, S) fitted on one partition, applied to the next.

    `table[i, s]` is the adjustment to the mid (price units) for imbalance bucket i (of
    `n_imbalance` equal buckets of I = bid_qty / (bid_qty + ask_qty)) and spread s + 1 ticks;
    the extra last column holds the tick size in column 0. An empty table means "no model".
    """

    table: np.ndarray
    tick: float
    n_observations: int

    @classmethod
    def empty(cls) -> MicropriceModel:
        return cls(table=np.zeros((0, 1)), tick=math.nan, n_observations=0)

    @property
    def fitted(self) -> bool:
        return self.table.shape[0] > 0

    def apply(
        self, bid: np.ndarray, ask: np.ndarray, bid_qty: np.ndarray, ask_qty: np.ndarray
    ) -> np.ndarray:
        return _microprice_apply(self.table, bid, ask, bid_qty, ask_qty)


@njit(cache=True)
def _microprice_apply(
    mp: np.ndarray, bid: np.ndarray, ask: np.ndarray, bidq: np.ndarray, askq: np.ndarray
) -> np.ndarray:
    out = np.empty(bid.shape[0])
    for i in range(bid.shape[0]):
        out[i] = microprice_lookup(mp, bid[i], ask[i], bidq[i], askq[i])
    return out


def fit_microprice(
    features: pl.DataFrame,
    *,
    n_imbalance: int = 10,
    n_spread: int = 2,
    tick_size: float | None = None,
    max_move_ticks: int = 5,
    iterations: int = 6,
) -> MicropriceModel:
    """Fit Stoikov's micro-price (2018) on one partition's feature rows.

    States are (imbalance bucket, spread in ticks); from consecutive rows, Q counts transitions
    with an unchanged mid, R the mid moves (half-tick units) and T the states after a move.
    G1 = (I - Q)^-1 R K, B = (I - Q)^-1 T, G = sum_{i<iterations} B^i G1. The data are
    symmetrised (I -> 1 - I, move -> -move) as in the paper. Apply the result to the NEXT
    partition only; fitting and applying on the same rows would leak.
    """
    if not (isinstance(n_imbalance, int) and n_imbalance >= 2):
        raise ValueError(f"n_imbalance must be an int >= 2, got {n_imbalance!r}")
    if not (isinstance(max_move_ticks, int) and max_move_ticks >= 1):
        raise ValueError(f"max_move_ticks must be an int >= 1, got {max_move_ticks!r}")
    if not (isinstance(n_spread, int) and n_spread >= 1):
        raise ValueError(f"n_spread must be an int >= 1, got {n_spread!r}")
    df = features.select("best_bid", "best_ask", "best_bid_qty", "best_ask_qty").drop_nulls()
    bid = df["best_bid"].to_numpy()
    ask = df["best_ask"].to_numpy()
    bq = df["best_bid_qty"].to_numpy()
    aq = df["best_ask_qty"].to_numpy()
    ok = np.isfinite(bid) & np.isfinite(ask) & (bq + aq > 0) & (ask > bid)
    bid, ask, bq, aq = bid[ok], ask[ok], bq[ok], aq[ok]
    if bid.shape[0] < 10:
        return MicropriceModel.empty()
    if tick_size is None:
        spreads = ask - bid
        tick_size = float(np.min(spreads[spreads > 0]))
    tick = float(tick_size)
    imb = bq / (bq + aq)
    ib = np.minimum((imb * n_imbalance).astype(np.int64), n_imbalance - 1)
    sp = np.clip(np.rint((ask - bid) / tick).astype(np.int64), 1, n_spread)
    state = ib * n_spread + (sp - 1)
    mid = 0.5 * (bid + ask)
    # Mid moves in half ticks, clipped: at 100 ms sampling a move is often several ticks.
    k = 2 * max_move_ticks
    dm = np.clip(np.rint((mid[1:] - mid[:-1]) / (0.5 * tick)).astype(np.int64), -k, k)
    moves = np.array([m for m in range(-k, k + 1) if m != 0])
    x, y = state[:-1], state[1:]
    # Mirror: imbalance bucket i -> n-1-i, same spread, move -> -move.
    mirror = (n_imbalance - 1 - x // n_spread) * n_spread + x % n_spread
    mirror_y = (n_imbalance - 1 - y // n_spread) * n_spread + y % n_spread
    xs = np.concatenate([x, mirror])
    ys = np.concatenate([y, mirror_y])
    ds = np.concatenate([dm, -dm])
    ns = n_imbalance * n_spread
    counts = np.bincount(xs, minlength=ns).astype(np.float64)
    denom = np.where(counts > 0, counts, 1.0)
    still = ds == 0
    q = np.zeros((ns, ns))
    np.add.at(q, (xs[still], ys[still]), 1.0)
    t = np.zeros((ns, ns))
    np.add.at(t, (xs[~still], ys[~still]), 1.0)
    r = np.zeros((ns, moves.shape[0]))
    for j, mv in enumerate(moves):
        r[:, j] = np.bincount(xs[ds == mv], minlength=ns)
    q /= denom[:, None]
    t /= denom[:, None]
    r /= denom[:, None]
    inv = np.linalg.pinv(np.eye(ns) - q)
    g1 = inv @ (r @ (moves * 0.5 * tick))
    b = inv @ t
    g = g1.copy()
    term = g1.copy()
    for _ in range(iterations - 1):
        term = b @ term
        g += term
    table = np.zeros((n_imbalance, n_spread + 1))
    table[:, :n_spread] = g.reshape(n_imbalance, n_spread)
    table[0, n_spread] = tick
    return MicropriceModel(table=table, tick=tick, n_observations=int(x.shape[0]))
