"""Microstructure features: one row per applied book event, trades as of its time.

Everything sequential is a numba kernel operating on explicit, bounded state arrays:

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

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.book import (
    B_BEST_ASK,
    B_BEST_BID,
    B_SYNCED,
    book_apply_event,
    book_top,
)
from mdpipe.core.detectors.bocpd import (
    BOCPD_ROWS,
    bocpd_reset,
    bocpd_update,
    lgamma_table,
    validate_bocpd,
)
from mdpipe.core.detectors.cusum import halflife_to_alpha, standardize_update
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

# Meta columns of a feature row (int64): event id, exchange time, as-of time, receive time,
# snapshot flag, warm-up flag.
M_UID, M_TS, M_ASOF, M_RECV, M_SNAP, M_WARM = range(6)
N_META = 6

W1_NS = 1_000_000_000
W5_NS = 5_000_000_000
W30_NS = 30_000_000_000
_TRADE_WINDOWS = (W1_NS, W5_NS, W30_NS)
DAY_NS = 86_400_000_000_000

# ---- book-side state layout ---------------------------------------------------------------
# bkf (float64)
K_PBID, K_PBIDQ, K_PASK, K_PASKQ, K_PWMID, K_PMID = range(6)
K_OFI1, K_OFI5, K_SPSUM, K_SPCNT, K_LOOK1W, K_LOOK5W = range(6, 12)
K_STD = 12  # 3: standardiser of 1 s mid returns feeding BOCPD
K_BAR_REF, K_RL, K_CP = 15, 16, 17  # mid at the last 1 s bar close; last BOCPD outputs
BKF_SIZE = 18
# bki (int64)
J_HEAD, J_T1, J_T5, J_T30, J_L1, J_L5, J_FIRST, J_HAS_FIRST, J_EVENTS, J_BOCPD_M = range(10)
J_LAST_ASOF, J_RING_OVERFLOW, J_BAR = 10, 11, 12
BKI_SIZE = 13
# ring_f columns
R_OFI, R_WMID, R_SPREAD = range(3)
# book params (float64)
PB_WARMUP, PB_HAZARD, PB_MU0, PB_KAPPA0, PB_ALPHA0, PB_BETA0, PB_CPLAG = range(7)
PB_STD_ALPHA, PB_STD_MIN = 7, 8
N_PB = 9

# ---- trade-side state layout --------------------------------------------------------------
# trade ring columns
T_SIGNED, T_QTY, T_NOTIONAL, T_R2 = range(4)
# tf (float64): window sums [w*4 + col] for w in 0..2, then:
Q_LAST = 12
Q_STD_V = 13  # 3 standardisers x 3 (volume_1s, volume_5s, volume_30s)
Q_STD_RV = 22  # 3
Q_EWMA_QTY, Q_CUR_BUY, Q_CUR_SELL, Q_TARGET, Q_SUM_IMB, Q_SUM_VOL, Q_VPIN = range(25, 32)
TF_SIZE = 32
# ti (int64)
U_HEAD = 0
U_TAIL = 1  # 3 tails
U_TRADES, U_VP_HEAD, U_VP_N, U_OVERFLOW, U_QTY_N = 4, 5, 6, 7, 8
TI_SIZE = 9
# trade params
PT_STD_ALPHA, PT_STD_MIN, PT_TPB, PT_QTY_ALPHA = range(4)
N_PT = 4


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
        p = np.zeros(N_PB)
        p[PB_WARMUP] = round(self.warmup_seconds * 1e9)
        p[PB_HAZARD] = self.bocpd_hazard
        p[PB_MU0], p[PB_KAPPA0], p[PB_ALPHA0], p[PB_BETA0] = 0.0, 1.0, 1.0, 1.0
        p[PB_CPLAG] = self.bocpd_cp_lag
        p[PB_STD_ALPHA] = halflife_to_alpha(self.zscore_halflife)
        p[PB_STD_MIN] = self.zscore_min_count
        return p

    def trade_params(self) -> np.ndarray:
        p = np.zeros(N_PT)
        p[PT_STD_ALPHA] = halflife_to_alpha(self.zscore_halflife)
        p[PT_STD_MIN] = self.zscore_min_count
        p[PT_TPB] = self.vpin_trades_per_bucket
        p[PT_QTY_ALPHA] = halflife_to_alpha(1000.0)
        return p


class BookState:
    """Bounded state of the book side of one market (arrays handed to the kernels)."""

    def __init__(self, config: FeatureConfig, microprice: MicropriceModel | None = None) -> None:
        from mdpipe.core.book import new_book_state

        self.qty, self.bits, self.bi = new_book_state(config.book_ticks)
        cap = config.book_ring_capacity
        self.ring_ts = np.zeros(cap, dtype=np.int64)
        self.ring_f = np.zeros((cap, 3))
        self.bkf = np.zeros(BKF_SIZE)
        self.bki = np.zeros(BKI_SIZE, dtype=np.int64)
        self.bki[J_L1] = -1
        self.bki[J_L5] = -1
        self.bki[J_BAR] = -1
        self.bst = np.zeros((BOCPD_ROWS, config.bocpd_max_run_length))
        self.lgt = lgamma_table(1.0)
        self.params = config.book_params()
        self.bki[J_BOCPD_M] = bocpd_reset(self.bst, 0.0, 1.0, 1.0, 1.0)
        for k in (K_PBID, K_PBIDQ, K_PASK, K_PASKQ, K_PWMID, K_PMID, K_BAR_REF):
            self.bkf[k] = math.nan
        self.mp = (microprice or MicropriceModel.empty()).table


class TradeState:
    """Bounded state of the trade side of one market."""

    def __init__(self, config: FeatureConfig) -> None:
        cap = config.trade_ring_capacity
        self.ring_ts = np.zeros(cap, dtype=np.int64)
        self.ring_f = np.zeros((cap, 4))
        self.tf = np.zeros(TF_SIZE)
        self.tf[Q_LAST] = math.nan
        self.ti = np.zeros(TI_SIZE, dtype=np.int64)
        self.vp = np.zeros((2, config.vpin_buckets))
        self.params = config.trade_params()


# =============================================================================================
# Book side
# =============================================================================================


@njit(cache=True)
def _book_ring_expire(
    ring_ts: np.ndarray, ring_f: np.ndarray, bkf: np.ndarray, bki: np.ndarray, now: np.int64
) -> None:
    head = bki[J_HEAD]
    cap = ring_ts.shape[0]
    t = bki[J_T1]
    while t < head and ring_ts[t % cap] <= now - W1_NS:
        bkf[K_OFI1] -= ring_f[t % cap, R_OFI]
        t += 1
    bki[J_T1] = t
    if t == head:
        bkf[K_OFI1] = 0.0
    t = bki[J_T5]
    while t < head and ring_ts[t % cap] <= now - W5_NS:
        bkf[K_OFI5] -= ring_f[t % cap, R_OFI]
        t += 1
    bki[J_T5] = t
    if t == head:
        bkf[K_OFI5] = 0.0
    t = bki[J_T30]
    while t < head and ring_ts[t % cap] <= now - W30_NS:
        s = ring_f[t % cap, R_SPREAD]
        if math.isfinite(s):
            bkf[K_SPSUM] -= s
            bkf[K_SPCNT] -= 1.0
        t += 1
    bki[J_T30] = t
    if t == head or bkf[K_SPCNT] == 0.0:
        bkf[K_SPSUM] = 0.0
        bkf[K_SPCNT] = 0.0
    # Look-back pointers: the latest event at or before now - W (its wmid is cached in bkf so
    # the ring slot may be recycled afterwards).
    lk = bki[J_L1]
    while lk + 1 < head and ring_ts[(lk + 1) % cap] <= now - W1_NS:
        lk += 1
        bkf[K_LOOK1W] = ring_f[lk % cap, R_WMID]
    bki[J_L1] = lk
    lk = bki[J_L5]
    while lk + 1 < head and ring_ts[(lk + 1) % cap] <= now - W5_NS:
        lk += 1
        bkf[K_LOOK5W] = ring_f[lk % cap, R_WMID]
    bki[J_L5] = lk


@njit(cache=True)
def _book_ring_push(
    ring_ts: np.ndarray,
    ring_f: np.ndarray,
    bkf: np.ndarray,
    bki: np.ndarray,
    now: np.int64,
    ofi: float,
    wmid: float,
    spread: float,
) -> None:
    cap = ring_ts.shape[0]
    head = bki[J_HEAD]
    if head - bki[J_T30] == cap:
        # Full ring (more than `cap` events within 30 s): the oldest leaves every window early.
        old = bki[J_T30]
        if bki[J_T1] == old:
            bkf[K_OFI1] -= ring_f[old % cap, R_OFI]
            bki[J_T1] += 1
        if bki[J_T5] == old:
            bkf[K_OFI5] -= ring_f[old % cap, R_OFI]
            bki[J_T5] += 1
        s = ring_f[old % cap, R_SPREAD]
        if math.isfinite(s):
            bkf[K_SPSUM] -= s
            bkf[K_SPCNT] -= 1.0
        bki[J_T30] += 1
        bki[J_RING_OVERFLOW] += 1
    slot = head % cap
    ring_ts[slot] = now
    ring_f[slot, R_OFI] = ofi
    ring_f[slot, R_WMID] = wmid
    ring_f[slot, R_SPREAD] = spread
    bki[J_HEAD] = head + 1
    bkf[K_OFI1] += ofi
    bkf[K_OFI5] += ofi
    if math.isfinite(spread):
        bkf[K_SPSUM] += spread
        bkf[K_SPCNT] += 1.0


@njit(cache=True)
def book_event_step(
    qty: np.ndarray,
    bits: np.ndarray,
    bi: np.ndarray,
    ring_ts: np.ndarray,
    ring_f: np.ndarray,
    bkf: np.ndarray,
    bki: np.ndarray,
    bst: np.ndarray,
    lgt: np.ndarray,
    params: np.ndarray,
    mp: np.ndarray,
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
    """Apply one book event and write the book-side features into `row`.

    Returns (as-of time, warm-up flag). `top` is scratch of shape (4, 10).
    """
    book_apply_event(qty, bits, bi, is_bid, price, size, start, stop, is_snapshot)
    asof = ts_ns
    if bki[J_HAS_FIRST] == 1 and bki[J_LAST_ASOF] > asof:
        asof = bki[J_LAST_ASOF]
    bki[J_LAST_ASOF] = asof
    if bki[J_HAS_FIRST] == 0:
        bki[J_HAS_FIRST] = 1
        bki[J_FIRST] = asof
    bki[J_EVENTS] += 1

    book_top(qty, bits, bi, 10, top)
    n = qty.shape[1]
    two_sided = bi[B_SYNCED] == 1 and bi[B_BEST_BID] >= 0 and bi[B_BEST_ASK] < n
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
    pbid = bkf[K_PBID]
    pbidq = bkf[K_PBIDQ]
    pask = bkf[K_PASK]
    paskq = bkf[K_PASKQ]
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
    pwmid = bkf[K_PWMID]
    pmid = bkf[K_PMID]
    row[F_WCHG] = (wmid / pwmid - 1.0) * 1e4 if (two_sided and pwmid == pwmid) else math.nan
    mret = math.nan
    if two_sided and pmid == pmid:
        # Across a resync snapshot too: the move is real even if the flow behind it is unseen.
        mret = math.log(mid / pmid) * 1e4
    row[F_MRET] = mret
    if two_sided:
        bkf[K_PBID] = bid
        bkf[K_PBIDQ] = bidq
        bkf[K_PASK] = ask
        bkf[K_PASKQ] = askq
        bkf[K_PWMID] = wmid
        bkf[K_PMID] = mid

    _book_ring_push(ring_ts, ring_f, bkf, bki, asof, ofi, wmid, spread)
    _book_ring_expire(ring_ts, ring_f, bkf, bki, asof)
    row[F_OFI1] = bkf[K_OFI1]
    row[F_OFI5] = bkf[K_OFI5]
    lw1 = bkf[K_LOOK1W] if bki[J_L1] >= 0 else math.nan
    lw5 = bkf[K_LOOK5W] if bki[J_L5] >= 0 else math.nan
    row[F_WD1] = (wmid / lw1 - 1.0) * 1e4 if (two_sided and lw1 == lw1) else math.nan
    row[F_WD5] = (wmid / lw5 - 1.0) * 1e4 if (two_sided and lw5 == lw5) else math.nan
    spmean = bkf[K_SPSUM] / bkf[K_SPCNT] if bkf[K_SPCNT] > 0.0 else math.nan
    row[F_SPMEAN] = spmean
    row[F_SPCOMP] = spread / spmean if (two_sided and spmean > 0.0) else math.nan

    # Regime: BOCPD on standardised 1 s mid returns. Per-event returns at 100 ms are mostly
    # exact zeros, and a Normal-Gamma run fed zeros grows so confident that every tick move
    # reads as a changepoint; one-second bars are closer to the model's iid-within-a-regime
    # assumption. A bar closes on the first event of a later second; the outputs hold between.
    if two_sided:
        bar = asof // W1_NS
        if bki[J_BAR] < 0:
            bki[J_BAR] = bar
            bkf[K_BAR_REF] = mid
        elif bar > bki[J_BAR] and pmid == pmid:
            ret = math.log(pmid / bkf[K_BAR_REF]) * 1e4
            bkf[K_BAR_REF] = pmid
            bki[J_BAR] = bar
            x = standardize_update(bkf, K_STD, ret, params[PB_STD_ALPHA], params[PB_STD_MIN])
            if x == x:
                m, rl, cp = bocpd_update(
                    bst, lgt, bki[J_BOCPD_M], x, params[PB_HAZARD], params[PB_MU0],
                    params[PB_KAPPA0], params[PB_ALPHA0], params[PB_BETA0],
                    int(params[PB_CPLAG]),
                )  # fmt: skip
                bki[J_BOCPD_M] = m
                bkf[K_RL] = rl
                bkf[K_CP] = cp
    row[F_RL] = bkf[K_RL]
    row[F_CP] = bkf[K_CP]

    tod_ns = ts_ns % DAY_NS
    row[F_HOUR] = float(tod_ns // 3_600_000_000_000)
    row[F_MINUTE] = float((tod_ns // 60_000_000_000) % 60)
    ang = 2.0 * math.pi * (float(tod_ns) / float(DAY_NS))
    row[F_TSIN] = math.sin(ang)
    row[F_TCOS] = math.cos(ang)

    row[F_MICRO] = microprice_lookup(mp, bid, ask, bidq, askq)

    warm = (asof - bki[J_FIRST] < np.int64(params[PB_WARMUP])) or not two_sided
    return asof, warm


# =============================================================================================
# Trade side
# =============================================================================================


@njit(cache=True)
def _trade_evict_oldest(ring_f: np.ndarray, tf: np.ndarray, ti: np.ndarray) -> None:
    cap = ring_f.shape[0]
    old = ti[U_TAIL + 2]
    for w in range(3):
        if ti[U_TAIL + w] == old:
            for c in range(4):
                tf[w * 4 + c] -= ring_f[old % cap, c]
            ti[U_TAIL + w] += 1
    ti[U_OVERFLOW] += 1


@njit(cache=True)
def trade_add(
    ring_ts: np.ndarray,
    ring_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    vp: np.ndarray,
    params: np.ndarray,
    ts_ns: np.int64,
    price: float,
    qty: float,
    is_buy: bool,
) -> None:
    """Fold one trade (taker side `is_buy`) into the windows and the VPIN buckets."""
    if not (qty > 0.0 and price > 0.0):
        return
    cap = ring_ts.shape[0]
    head = ti[U_HEAD]
    if head - ti[U_TAIL + 2] == cap:
        _trade_evict_oldest(ring_f, tf, ti)
    last = tf[Q_LAST]
    r = math.log(price / last) * 1e4 if last == last else 0.0
    tf[Q_LAST] = price
    signed = qty if is_buy else -qty
    slot = head % cap
    ring_ts[slot] = ts_ns
    ring_f[slot, T_SIGNED] = signed
    ring_f[slot, T_QTY] = qty
    ring_f[slot, T_NOTIONAL] = qty * price
    ring_f[slot, T_R2] = r * r
    ti[U_HEAD] = head + 1
    ti[U_TRADES] += 1
    for w in range(3):
        for c in range(4):
            tf[w * 4 + c] += ring_f[slot, c]

    # VPIN (Easley, Lopez de Prado and O'Hara 2012) with the taker side known exactly (no bulk
    # classification needed). Bucket volume = vpin_trades_per_bucket x EWMA trade size, fixed
    # when a bucket opens; a trade larger than the space left spills into the next buckets.
    n = ti[U_QTY_N]
    a = max(1.0 / (n + 1.0), params[PT_QTY_ALPHA])
    tf[Q_EWMA_QTY] += a * (qty - tf[Q_EWMA_QTY])
    ti[U_QTY_N] = n + 1
    if tf[Q_TARGET] <= 0.0:
        tf[Q_TARGET] = tf[Q_EWMA_QTY] * params[PT_TPB]
    rem = qty
    nb = vp.shape[1]
    spills = 0
    while rem > 0.0:
        space = tf[Q_TARGET] - tf[Q_CUR_BUY] - tf[Q_CUR_SELL]
        take = rem if (rem < space or spills > nb) else space
        if is_buy:
            tf[Q_CUR_BUY] += take
        else:
            tf[Q_CUR_SELL] += take
        rem -= take
        if tf[Q_CUR_BUY] + tf[Q_CUR_SELL] >= tf[Q_TARGET] * (1.0 - 1e-12):
            h = ti[U_VP_HEAD]
            vp[0, h] = abs(tf[Q_CUR_BUY] - tf[Q_CUR_SELL])
            vp[1, h] = tf[Q_CUR_BUY] + tf[Q_CUR_SELL]
            ti[U_VP_HEAD] = (h + 1) % nb
            if ti[U_VP_N] < nb:
                ti[U_VP_N] += 1
            s_imb = 0.0
            s_vol = 0.0
            for b in range(ti[U_VP_N]):
                s_imb += vp[0, b]
                s_vol += vp[1, b]
            tf[Q_SUM_IMB] = s_imb
            tf[Q_SUM_VOL] = s_vol
            tf[Q_CUR_BUY] = 0.0
            tf[Q_CUR_SELL] = 0.0
            tf[Q_TARGET] = tf[Q_EWMA_QTY] * params[PT_TPB]
            spills += 1
    vol = tf[Q_SUM_VOL] + tf[Q_CUR_BUY] + tf[Q_CUR_SELL]
    imb = tf[Q_SUM_IMB] + abs(tf[Q_CUR_BUY] - tf[Q_CUR_SELL])
    tf[Q_VPIN] = imb / vol if vol > 0.0 else math.nan


@njit(cache=True)
def trade_features(
    ring_ts: np.ndarray,
    ring_f: np.ndarray,
    tf: np.ndarray,
    ti: np.ndarray,
    params: np.ndarray,
    asof: np.int64,
    mid: float,
    row: np.ndarray,
) -> None:
    """Trade-side features as of `asof` (the trades folded in so far, all <= asof)."""
    cap = ring_ts.shape[0]
    head = ti[U_HEAD]
    for w in range(3):
        win = _TRADE_WINDOWS[w]
        t = ti[U_TAIL + w]
        while t < head and ring_ts[t % cap] <= asof - win:
            for c in range(4):
                tf[w * 4 + c] -= ring_f[t % cap, c]
            t += 1
        ti[U_TAIL + w] = t
        if t == head:
            for c in range(4):
                tf[w * 4 + c] = 0.0
        row[F_TI1 + w] = tf[w * 4 + T_SIGNED]
        vol = tf[w * 4 + T_QTY]
        row[F_V1 + w] = vol
        row[F_N1 + w] = float(head - t)
        row[F_VZ1 + w] = standardize_update(
            tf, Q_STD_V + 3 * w, vol, params[PT_STD_ALPHA], params[PT_STD_MIN]
        )
    rv5 = math.sqrt(max(tf[4 + T_R2], 0.0))
    rv30 = math.sqrt(max(tf[8 + T_R2], 0.0))
    row[F_RV5] = rv5
    row[F_RV30] = rv30
    row[F_RVZ] = standardize_update(tf, Q_STD_RV, rv5, params[PT_STD_ALPHA], params[PT_STD_MIN])
    last = tf[Q_LAST]
    vol30 = tf[8 + T_QTY]
    vwap = tf[8 + T_NOTIONAL] / vol30 if vol30 > 0.0 else last
    row[F_VWAP] = vwap
    row[F_VWAPD] = (mid / vwap - 1.0) * 1e4
    row[F_VPIN] = tf[Q_VPIN] if ti[U_TRADES] > 0 else math.nan
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
