"""Cross-venue analytics of one underlying on two markets: basis, lead-lag, and the detector.

Three parts, all pure (arrays and frames in, arrays and frames out):

* **Basis** on a fixed exchange-time grid (every `grid_ms`, epoch-aligned): at grid time g each
  market's mid is the last known mid at or before g, `basis_bps = (mid_b - mid_a) / mid_a * 1e4`,
  and `basis_z` its rolling z-score against the previous `z_window` grid values.
* **Lead-lag**: the Hayashi-Yoshida correlation of the two markets' log mid changes with b's
  clock shifted by a lag (positive lag: a leads), over a lag grid, on the asynchronous changes
  themselves (no resampling). Hayashi, T. and Yoshida, N. (2005), "On covariance estimation of
  non-synchronously observed diffusion processes", Bernoulli 11(2), 359-379. The lead-lag ratio
  and the lag of the maximum follow Huth, N. and Abergel, F. (2014), "High frequency lead/lag
  relationships - Empirical facts", Journal of Empirical Finance 26, 41-58. A shuffled-time
  null (b's changes permuted among b's change times) gives the confidence band.
* **The cross-venue detector**, one numba kernel (`cross_event`) that both drivers call per
  event: the batch driver (`cross_venue_batch`) over two markets' `features` rows merged in
  exchange time, and the online engine (`CrossVenueEngine`) one released feature row at a time.
  The same kernel writes the basis grid rows, so the `basis` table and the detector's z-scores
  are one computation. Two triggers, both emitting `cross_venue` signals for the follower:

  - `basis_z`: at a grid point, |basis_z| >= `z_threshold`; direction: the follower moves to
    close the gap (b rich -> b down, a up).
  - `leader_move`: the leader's mid moved more than `k_spreads` follower spreads (in bps)
    within the lead window while the follower moved less than `follower_max_frac` of that in
    the same direction; direction: the leader's move.

Event order (both drivers): events of both markets by effective exchange time (each market's
running maximum of `ts_ns`, so a market's own order is kept), market a before b on ties. The
online engine holds an event until the other market has shown a later time (or `max_wait_ms`
of receive time passed), so it releases exactly the batch order: live equals batch.

A grid point is closed (its basis computed) by the first event after it; a mid older than
`max_stale_ms` at a grid point leaves that point out (a gap is never bridged with an old mid).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from numba import njit

from mdpipe.core.detectors.ensemble import signal_id
from mdpipe.core.kernel import specialize

SIGNAL_TYPE = "cross_venue"
TRIGGERS: tuple[str, ...] = ("basis_z", "leader_move")
NO_LEADER = -1
_MIN_I64 = np.int64(-(2**63))

# ---------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class CrossVenueConfig:
    """Cross-venue basis, lead-lag and detector settings (the `[cross_venue]` section).

    grid_ms            spacing of the exchange-time grid of the basis, in ms.
    max_stale_ms       a grid point is skipped when either mid is older than this (ms).
    z_window           grid points in the rolling window of the basis z-score.
    z_min_count        grid points needed before a z-score is given.
    z_threshold        |basis z| at which a basis dislocation signal fires.
    lag_min_ms, lag_max_ms, lag_step_ms   the lead-lag grid (ms; positive lag: a leads).
    null_shuffles      shuffled-time null draws for the lead-lag confidence band.
    null_quantile      two-sided coverage of the band (0.95: 2.5 % and 97.5 % quantiles).
    significance       a lead counts (and picks the leader) when its p-value is at most this.
    seed               seed of the shuffled-time null.
    leader             a venue that leads whenever it is in a pair; empty: the pair's lead
                       measured on the previous day (no leader-based signal without one).
    lead_window_ms     the lead window when `leader` is set; a measured lead uses its own lag.
    k_spreads          leader move (bps) must exceed this many follower spreads (bps).
    follower_max_frac  the follower counts as not moved below this fraction of the leader's move.
    signal_cooldown_seconds   least time between two signals of one trigger for one follower.
    history_events     mid changes kept per market for the lead window (bounded state).
    prev_day_warmup_seconds     seconds of the previous day replayed without output to warm up.
    """

    grid_ms: int = 100
    max_stale_ms: float = 5000.0
    z_window: int = 3000
    z_min_count: int = 300
    z_threshold: float = 4.0
    lag_min_ms: float = -2000.0
    lag_max_ms: float = 2000.0
    lag_step_ms: float = 50.0
    null_shuffles: int = 20
    null_quantile: float = 0.95
    significance: float = 0.05
    seed: int = 0
    leader: str = ""
    lead_window_ms: float = 500.0
    k_spreads: float = 3.0
    follower_max_frac: float = 0.25
    signal_cooldown_seconds: float = 30.0
    history_events: int = 4096
    prev_day_warmup_seconds: float = 600.0

    def __post_init__(self) -> None:
        def num(name: str, *, zero: bool = False, neg: bool = False) -> float:
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (not neg and (v < 0 or (v == 0 and not zero))):
                bound = "" if neg else (" >= 0" if zero else " > 0")
                raise ValueError(f"cross_venue.{name} must be a finite number{bound}, got {v!r}")
            return float(v)

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                raise ValueError(f"cross_venue.{name} must be an int >= {lo}, got {v!r}")

        integer("grid_ms", 1)
        num("max_stale_ms")
        integer("z_window", 2)
        integer("z_min_count", 2)
        if self.z_min_count > self.z_window:
            raise ValueError(
                f"cross_venue.z_min_count ({self.z_min_count}) must be <= z_window "
                f"({self.z_window})"
            )
        num("z_threshold")
        lo, hi, step = num("lag_min_ms", neg=True), num("lag_max_ms", neg=True), num("lag_step_ms")
        if not lo < 0 < hi:
            raise ValueError(
                f"cross_venue.lag_min_ms must be < 0 < lag_max_ms, got {lo!r} and {hi!r}"
            )
        if len(lag_grid_ns(lo, hi, step)) > 2001:
            raise ValueError(f"cross_venue.lag_step_ms {step!r} gives more than 2001 lags")
        integer("null_shuffles", 0)
        if not 0 < self.null_quantile < 1:
            raise ValueError(
                f"cross_venue.null_quantile must be in (0, 1), got {self.null_quantile!r}"
            )
        if not 0 < self.significance < 1:
            raise ValueError(
                f"cross_venue.significance must be in (0, 1), got {self.significance!r}"
            )
        integer("seed", 0)
        if not isinstance(self.leader, str):
            raise ValueError(
                f"cross_venue.leader must be a venue name or empty, got {self.leader!r}"
            )
        num("lead_window_ms")
        num("k_spreads")
        num("follower_max_frac", zero=True)
        num("signal_cooldown_seconds", zero=True)
        integer("history_events", 2)
        num("prev_day_warmup_seconds", zero=True)

    @property
    def grid_ns(self) -> int:
        return self.grid_ms * 1_000_000

    @property
    def lags_ns(self) -> np.ndarray:
        return lag_grid_ns(self.lag_min_ms, self.lag_max_ms, self.lag_step_ms)


def lag_grid_ns(lo_ms: float, hi_ms: float, step_ms: float) -> np.ndarray:
    """Lags from `lo_ms` to `hi_ms` in `step_ms` steps, in ns, always including 0."""
    step = round(step_ms * 1e6)
    lo = -(round(-lo_ms * 1e6) // step) * step
    hi = (round(hi_ms * 1e6) // step) * step
    return np.arange(lo, hi + step, step, dtype=np.int64)


# ---------------------------------------------------------------- kernel state

CROSS_PARAMS = np.dtype(
    [
        ("grid_ns", np.int64),
        ("max_stale_ns", np.int64),
        ("z_min_count", np.int64),
        ("z_threshold", np.float64),
        ("leader", np.int64),  # 0: a leads, 1: b leads, -1: none known
        ("lead_window_ns", np.int64),
        ("k_spreads", np.float64),
        ("follower_max_frac", np.float64),
        ("cooldown_ns", np.int64),
        ("emit_from_ns", np.int64),  # no grid row or signal before this time (warm-up)
    ],
    align=True,
)
# One record per market (index 0: a, 1: b).
CROSS_SIDE = np.dtype(
    [
        ("has", np.int64),
        ("ts", np.int64),
        ("mid", np.float64),
        ("bid", np.float64),
        ("ask", np.float64),
        ("spread_bps", np.float64),
        ("update_id", np.int64),
        ("head", np.int64),  # mid-change history ring
        ("count", np.int64),
        ("overflow", np.int64),
        ("events", np.int64),
    ],
    align=True,
)
CROSS_VARS = np.dtype(
    [
        ("next_grid", np.int64),
        ("grid_started", np.int64),
        ("z_n", np.int64),
        ("z_head", np.int64),
        ("z_since", np.int64),  # pushes since the sums were last recomputed exactly
        ("z_sum", np.float64),
        ("z_sumsq", np.float64),
        ("grid_points", np.int64),
        ("stale_points", np.int64),
        ("last_sig", np.int64),  # cooldown of trigger 0 (basis_z)
        ("has_sig", np.int64),
        ("last_sig1", np.int64),  # cooldown of trigger 1 (leader_move)
        ("has_sig1", np.int64),
        ("alarms", np.int64),
        ("signals", np.int64),
        ("suppressed_cooldown", np.int64),
    ],
    align=True,
)
GRID_ROW = np.dtype(
    [
        ("ts", np.int64),
        ("mid_a", np.float64),
        ("mid_b", np.float64),
        ("basis_bps", np.float64),
        ("basis_z", np.float64),
    ],
    align=True,
)
CROSS_SIGNAL = np.dtype(
    [
        ("ts", np.int64),
        ("trigger", np.int64),  # index into TRIGGERS
        ("follower", np.int64),  # 0: a, 1: b
        ("direction", np.float64),
        ("score", np.float64),
        ("value", np.float64),
        ("threshold", np.float64),
        ("mid", np.float64),
        ("bid", np.float64),
        ("ask", np.float64),
        ("spread_bps", np.float64),
        ("update_id", np.int64),
    ],
    align=True,
)


class CrossState(NamedTuple):
    """The cross-venue detector's complete, bounded state for one pair, and its parameters."""

    sides: np.ndarray  # CROSS_SIDE[2]
    hist_ts: np.ndarray  # int64[2, history_events]: each market's recent mid changes
    hist_mid: np.ndarray  # float64[2, history_events]
    z_ring: np.ndarray  # float64[z_window]: the basis values behind the z-score
    vars: np.ndarray  # CROSS_VARS[1]
    params: np.ndarray  # CROSS_PARAMS[1]


def new_cross_state(
    config: CrossVenueConfig,
    *,
    leader: int = NO_LEADER,
    lead_window_ns: int | None = None,
    emit_from_ns: int = -(2**63),
) -> CrossState:
    if leader not in (NO_LEADER, 0, 1):
        raise ValueError(f"leader must be 0 (a), 1 (b) or -1 (none), got {leader!r}")
    p = np.zeros(1, dtype=CROSS_PARAMS)
    p["grid_ns"] = config.grid_ns
    p["max_stale_ns"] = round(config.max_stale_ms * 1e6)
    p["z_min_count"] = config.z_min_count
    p["z_threshold"] = config.z_threshold
    p["leader"] = leader
    p["lead_window_ns"] = (
        round(config.lead_window_ms * 1e6) if lead_window_ns is None else int(lead_window_ns)
    )
    p["k_spreads"] = config.k_spreads
    p["follower_max_frac"] = config.follower_max_frac
    p["cooldown_ns"] = round(config.signal_cooldown_seconds * 1e9)
    p["emit_from_ns"] = emit_from_ns
    c = config.history_events
    return CrossState(
        sides=np.zeros(2, dtype=CROSS_SIDE),
        hist_ts=np.zeros((2, c), dtype=np.int64),
        hist_mid=np.zeros((2, c)),
        z_ring=np.zeros(config.z_window),
        vars=np.zeros(1, dtype=CROSS_VARS),
        params=p,
    )


# ---------------------------------------------------------------- the kernel


@njit(cache=True)
def basis_z_push(ring: np.ndarray, v: Any, x: float, min_count: int) -> float:
    """The z-score of `x` against the previous values of the window (NaN until `min_count`
    values or when they do not vary), then `x` joins the window. The running sums are
    recomputed exactly every window length of pushes, so rounding never accumulates."""
    w = ring.shape[0]
    n = v.z_n
    z = np.nan
    if n >= min_count:
        mean = v.z_sum / n
        var = (v.z_sumsq - n * mean * mean) / (n - 1)
        if var > 1e-18:
            z = (x - mean) / math.sqrt(var)
    if n == w:
        old = ring[v.z_head]
        v.z_sum -= old
        v.z_sumsq -= old * old
        n -= 1
    ring[v.z_head] = x
    v.z_head = (v.z_head + 1) % w
    n += 1
    v.z_n = n
    v.z_sum += x
    v.z_sumsq += x * x
    v.z_since += 1
    if v.z_since >= w:
        s = 0.0
        s2 = 0.0
        for k in range(n):
            y = ring[(v.z_head - n + k + w) % w]
            s += y
            s2 += y * y
        v.z_sum = s
        v.z_sumsq = s2
        v.z_since = 0
    return z


@njit(cache=True)
def _mid_then(side: Any, hts: np.ndarray, hmid: np.ndarray, cutoff: np.int64) -> float:
    """The market's mid at or before `cutoff` (NaN when its history does not reach back that
    far); drops history no later call can need (times only grow)."""
    cap = hts.shape[0]
    while side.count >= 2 and hts[(side.head + 1) % cap] <= cutoff:
        side.head = (side.head + 1) % cap
        side.count -= 1
    if side.count >= 1 and hts[side.head] <= cutoff:
        return hmid[side.head]
    return np.nan


@njit(cache=True)
def _fire(
    v: Any,
    p: Any,
    trigger: int,
    ts: np.int64,
    follower: int,
    fside: Any,
    direction: float,
    score: float,
    value: float,
    threshold: float,
    sig_out: np.ndarray,
    ns: int,
) -> int:
    v.alarms += 1
    if ts < p.emit_from_ns:
        return ns
    if trigger == 0:
        if v.has_sig == 1 and ts - v.last_sig < p.cooldown_ns:
            v.suppressed_cooldown += 1
            return ns
        v.has_sig = 1
        v.last_sig = ts
    else:
        if v.has_sig1 == 1 and ts - v.last_sig1 < p.cooldown_ns:
            v.suppressed_cooldown += 1
            return ns
        v.has_sig1 = 1
        v.last_sig1 = ts
    v.signals += 1
    if ns < sig_out.shape[0]:
        r = sig_out[ns]
        r.ts = ts
        r.trigger = trigger
        r.follower = follower
        r.direction = direction
        r.score = score
        r.value = value
        r.threshold = threshold
        r.mid = fside.mid
        r.bid = fside.bid
        r.ask = fside.ask
        r.spread_bps = fside.spread_bps
        r.update_id = fside.update_id
        return ns + 1
    return ns


@njit(cache=True)
def cross_event(
    st: CrossState,
    side: int,
    ts: np.int64,
    mid: float,
    bid: float,
    ask: float,
    spread_bps: float,
    update_id: np.int64,
    grid_out: np.ndarray,
    ng: int,
    sig_out: np.ndarray,
    ns: int,
) -> tuple[int, int]:
    """One market's event (a `features` row: market `side`, effective exchange time `ts`).

    Closes the grid points before `ts` (basis, z-score, basis_z trigger; rows written to
    `grid_out` from `ng` on while it has room), applies the event, then tests the
    leader_move trigger. Returns the new (grid rows, signals) counts."""
    if not math.isfinite(mid) or mid <= 0.0:
        return ng, ns
    p = st.params[0]
    v = st.vars[0]
    sides = st.sides
    sa = sides[0]
    sb = sides[1]
    grid = p.grid_ns
    # 1. grid points strictly before this event: every event at or before them is applied
    if v.grid_started == 1:
        while v.next_grid < ts:
            g = v.next_grid
            v.next_grid = g + grid
            if g - sa.ts > p.max_stale_ns or g - sb.ts > p.max_stale_ns:
                v.stale_points += 1
                continue
            basis = (sb.mid - sa.mid) / sa.mid * 1e4
            z = basis_z_push(st.z_ring, v, basis, p.z_min_count)
            v.grid_points += 1
            if g >= p.emit_from_ns and ng < grid_out.shape[0]:
                r = grid_out[ng]
                r.ts = g
                r.mid_a = sa.mid
                r.mid_b = sb.mid
                r.basis_bps = basis
                r.basis_z = z
                ng += 1
            if math.isfinite(z) and abs(z) >= p.z_threshold and p.leader != -1:
                follower = 1 - p.leader
                # b rich (z > 0): b falls back, a rises
                direction = -1.0 if (z > 0) == (follower == 1) else 1.0
                fs = sides[follower]
                ns = _fire(v, p, 0, g, follower, fs, direction, abs(z) / p.z_threshold, z,
                           p.z_threshold, sig_out, ns)  # fmt: skip
    # 2. apply the event
    s = sides[side]
    changed = s.has == 0 or mid != s.mid
    s.has = 1
    s.ts = ts
    s.mid = mid
    s.bid = bid
    s.ask = ask
    s.spread_bps = spread_bps
    s.update_id = update_id
    s.events += 1
    if changed:
        hts = st.hist_ts[side]
        hmid = st.hist_mid[side]
        cap = hts.shape[0]
        if s.count == cap:
            s.head = (s.head + 1) % cap
            s.count -= 1
            s.overflow += 1
        k = (s.head + s.count) % cap
        hts[k] = ts
        hmid[k] = mid
        s.count += 1
    if v.grid_started == 0 and sa.has == 1 and sb.has == 1:
        v.grid_started = 1
        v.next_grid = -((-ts) // grid) * grid  # the first grid point at or after now
    # 3. leader moved, follower not
    if p.leader == -1 or sa.has == 0 or sb.has == 0:
        return ng, ns
    lead = p.leader
    follower = 1 - lead
    ls = sides[lead]
    fs = sides[follower]
    cutoff = ts - p.lead_window_ns
    l_then = _mid_then(ls, st.hist_ts[lead], st.hist_mid[lead], cutoff)
    f_then = _mid_then(fs, st.hist_ts[follower], st.hist_mid[follower], cutoff)
    if not (math.isfinite(l_then) and math.isfinite(f_then)):
        return ng, ns
    if ts - fs.ts > p.max_stale_ns or ts - ls.ts > p.max_stale_ns:
        return ng, ns
    if not (math.isfinite(fs.spread_bps) and fs.spread_bps > 0.0):
        return ng, ns
    lmove = math.log(ls.mid / l_then) * 1e4
    fmove = math.log(fs.mid / f_then) * 1e4
    need = p.k_spreads * fs.spread_bps
    if abs(lmove) > need:
        direction = 1.0 if lmove > 0 else -1.0
        if fmove * direction < p.follower_max_frac * abs(lmove):
            ns = _fire(v, p, 1, ts, follower, fs, direction, abs(lmove) / need, lmove, need,
                       sig_out, ns)  # fmt: skip
    return ng, ns


@njit(cache=True)
def cross_run(
    st: CrossState,
    side: np.ndarray,
    ts: np.ndarray,
    mid: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    spread_bps: np.ndarray,
    update_id: np.ndarray,
    grid_out: np.ndarray,
    sig_out: np.ndarray,
) -> tuple[int, int]:
    """The batch driver's loop: `cross_event` over merged events in order."""
    ng = 0
    ns = 0
    for i in range(ts.shape[0]):
        ng, ns = cross_event(st, side[i], ts[i], mid[i], bid[i], ask[i], spread_bps[i],
                             update_id[i], grid_out, ng, sig_out, ns)  # fmt: skip
    return ng, ns


# ---------------------------------------------------------------- inputs


class MarketMids(NamedTuple):
    """One market's `features` rows as the kernel reads them, in applied order."""

    ts: np.ndarray  # int64, effective exchange time (running maximum of ts_ns)
    mid: np.ndarray  # float64
    bid: np.ndarray
    ask: np.ndarray
    spread_bps: np.ndarray
    update_id: np.ndarray  # int64


MID_COLUMNS = ("ts_ns", "update_id", "mid", "best_bid", "best_ask", "spread_bps")


def _f64(s: pl.Series) -> np.ndarray:
    return np.ascontiguousarray(s.cast(pl.Float64).to_numpy(), dtype=np.float64)


def market_mids(features: pl.DataFrame) -> MarketMids:
    """The kernel's view of a `features` frame: rows in their order, times made monotone
    (`np.maximum.accumulate`) so the merge keeps each market's own order."""
    if features.height == 0:
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return MarketMids(i, f, f.copy(), f.copy(), f.copy(), i.copy())
    ts = np.maximum.accumulate(features["ts_ns"].cast(pl.Int64).to_numpy())
    return MarketMids(
        np.ascontiguousarray(ts, dtype=np.int64),
        _f64(features["mid"]),
        _f64(features["best_bid"]),
        _f64(features["best_ask"]),
        _f64(features["spread_bps"]),
        np.ascontiguousarray(features["update_id"].cast(pl.Int64).to_numpy(), dtype=np.int64),
    )


def merge_order(ts_a: np.ndarray, ts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(market per merged event, permutation of the concatenation a + b): by time, market a
    first on ties, each market in its own order (times must be each market's running
    maximum, as `market_mids` makes them)."""
    side = np.concatenate([np.zeros(ts_a.shape[0], np.int64), np.ones(ts_b.shape[0], np.int64)])
    order = np.lexsort((side, np.concatenate([ts_a, ts_b])))  # lexsort is stable
    return np.ascontiguousarray(side[order]), order


@dataclass(frozen=True)
class Pair:
    """Two markets listing one underlying; a is the first by market key."""

    underlying: str
    venue_a: str
    symbol_a: str
    venue_b: str
    symbol_b: str

    def market(self, side: int) -> tuple[str, str]:
        return (self.venue_a, self.symbol_a) if side == 0 else (self.venue_b, self.symbol_b)

    def columns(self) -> dict[str, str]:
        return {
            "underlying": self.underlying,
            "venue_a": self.venue_a,
            "symbol_a": self.symbol_a,
            "venue_b": self.venue_b,
            "symbol_b": self.symbol_b,
        }


# ---------------------------------------------------------------- outputs

BASIS_COLUMNS: dict[str, pl.DataType] = {
    "ts_ns": pl.Int64(),
    "underlying": pl.String(),
    "venue_a": pl.String(),
    "symbol_a": pl.String(),
    "venue_b": pl.String(),
    "symbol_b": pl.String(),
    "mid_a": pl.Float64(),
    "mid_b": pl.Float64(),
    "basis_bps": pl.Float64(),
    "basis_z": pl.Float64(),
}


# Added to `basis` when the lake has `mark` rows (index price) for a market of the pair: its
# index price at the grid point (last at or before it, none older than `max_stale_ms`) and
# the basis of its mid against it, `(mid - index) / index * 1e4`; null for a market without
# an index (spot) or where the index is stale.
INDEX_BASIS_COLUMNS: dict[str, pl.DataType] = {
    "index_a": pl.Float64(),
    "index_b": pl.Float64(),
    "index_basis_a_bps": pl.Float64(),
    "index_basis_b_bps": pl.Float64(),
}


def index_at(
    grid_ts: np.ndarray, mark_ts: np.ndarray, index_price: np.ndarray, max_stale_ns: int
) -> np.ndarray:
    """The index price at each grid time: the last `index_price` at or before it (mark rows
    in exchange-time order), NaN before the first, past `max_stale_ns`, or where the index
    is not a positive number."""
    out = np.full(grid_ts.shape[0], np.nan)
    if mark_ts.shape[0] == 0 or grid_ts.shape[0] == 0:
        return out
    k = np.searchsorted(mark_ts, grid_ts, side="right") - 1
    ok = k >= 0
    kk = np.where(ok, k, 0)
    ok &= (grid_ts - mark_ts[kk]) <= max_stale_ns
    px = index_price[kk]
    ok &= np.isfinite(px) & (px > 0)
    out[ok] = px[ok]
    return out


def with_index_basis(
    basis: pl.DataFrame,
    marks: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    config: CrossVenueConfig,
) -> pl.DataFrame:
    """`basis` rows with INDEX_BASIS_COLUMNS: for each row's market a and b, the index price
    from `marks[(venue, symbol)]` = (exch_ts_ns sorted, index_price) and the mid's basis
    against it (null where a market has no index)."""
    if basis.height == 0:
        return basis.with_columns(
            [pl.lit(None, dtype=t).alias(c) for c, t in INDEX_BASIS_COLUMNS.items()]
        )
    stale = round(config.max_stale_ms * 1e6)
    parts = []
    keys = ["venue_a", "symbol_a", "venue_b", "symbol_b"]
    for _, rows in basis.group_by(keys, maintain_order=True):
        r0 = rows.row(0, named=True)
        g = rows["ts_ns"].to_numpy()
        cols: dict[str, np.ndarray] = {}
        for side in ("a", "b"):
            m = marks.get((r0[f"venue_{side}"], r0[f"symbol_{side}"]))
            idx = index_at(g, *m, stale) if m is not None else np.full(g.shape[0], np.nan)
            mid = rows[f"mid_{side}"].to_numpy()
            cols[f"index_{side}"] = idx
            cols[f"index_basis_{side}_bps"] = (mid - idx) / idx * 1e4
        parts.append(
            rows.with_columns(
                [
                    pl.Series(c, cols[c], dtype=pl.Float64).fill_nan(None)
                    for c in INDEX_BASIS_COLUMNS
                ]
            )
        )
    return pl.concat(parts)


def basis_frame(pair: Pair, grid: np.ndarray) -> pl.DataFrame:
    n = grid.shape[0]
    data: dict[str, Any] = {"ts_ns": grid["ts"]}
    for k, val in pair.columns().items():
        data[k] = [val] * n
    for k in ("mid_a", "mid_b", "basis_bps", "basis_z"):
        data[k] = grid[k]
    return pl.DataFrame(data, schema=BASIS_COLUMNS)


def cross_signal_id(pair: Pair, follower: int, trigger: str, ts_ns: int) -> str:
    """Stable across reruns and drivers: the follower, the trigger, the other market, the
    time (the grid point, or the event's exchange time)."""
    venue, symbol = pair.market(follower)
    ov, osym = pair.market(1 - follower)
    return signal_id(venue, symbol, f"{SIGNAL_TYPE}|{trigger}|{ov}:{osym}", int(ts_ns))


def signals_frame(
    pair: Pair, sigs: np.ndarray, settings_id: str, source: str = "batch"
) -> pl.DataFrame:
    """`signals` rows (the table's columns; detector context the kernel does not carry is
    NaN) for the follower markets, plus `leader_venue`, `leader_symbol`. `source` is the
    driver: 'batch' or 'live' (`CrossVenueEngine`)."""
    n = sigs.shape[0]
    fol = sigs["follower"].tolist()
    trig = [TRIGGERS[int(t)] for t in sigs["trigger"]]
    ts = sigs["ts"]
    markets = [pair.market(int(f)) for f in fol]
    leaders = [pair.market(1 - int(f)) for f in fol]
    nan = np.full(n, np.nan)
    data: dict[str, Any] = {
        "venue": pl.Series([m[0] for m in markets], dtype=pl.String),
        "symbol": pl.Series([m[1] for m in markets], dtype=pl.String),
        "ts_ns": pl.Series(ts, dtype=pl.Int64),
        "signal_id": pl.Series(
            [
                cross_signal_id(pair, int(f), t, int(x))
                for f, t, x in zip(fol, trig, ts, strict=True)
            ],
            dtype=pl.String,
        ),
        "signal_type": pl.Series([SIGNAL_TYPE] * n, dtype=pl.String),
        "direction": pl.Series(sigs["direction"].astype(np.int8), dtype=pl.Int8),
        "score": pl.Series(sigs["score"], dtype=pl.Float64),
        "update_id": pl.Series(sigs["update_id"], dtype=pl.Int64),
        "trigger": pl.Series(trig, dtype=pl.String),
        "trigger_value": pl.Series(sigs["value"], dtype=pl.Float64),
        "threshold": pl.Series(sigs["threshold"], dtype=pl.Float64),
        "settings_id": pl.Series([settings_id] * n, dtype=pl.String),
        "source": pl.Series([source] * n, dtype=pl.String),
        "mid": pl.Series(sigs["mid"], dtype=pl.Float64),
        "best_bid": pl.Series(sigs["bid"], dtype=pl.Float64),
        "best_ask": pl.Series(sigs["ask"], dtype=pl.Float64),
        "spread_bps": pl.Series(sigs["spread_bps"], dtype=pl.Float64),
    }
    for c in ("imbalance_5", "wmid_drift_5s_bps", "trade_imbalance_5s", "volume_z_5s",
              "realized_vol_z", "vpin", "bocpd_cp_prob"):  # fmt: skip
        data[c] = pl.Series(nan, dtype=pl.Float64)
    data["meta_prob"] = pl.Series([None] * n, dtype=pl.Float64)  # no meta-model for these
    data["leader_venue"] = pl.Series([m[0] for m in leaders], dtype=pl.String)
    data["leader_symbol"] = pl.Series([m[1] for m in leaders], dtype=pl.String)
    return pl.DataFrame(data)


def empty_cross_signals() -> pl.DataFrame:
    return signals_frame(Pair("", "", "", "", ""), np.zeros(0, CROSS_SIGNAL), "")


@dataclass
class CrossOutput:
    basis: pl.DataFrame
    signals: pl.DataFrame
    stats: dict[str, Any]


def cross_stats(st: CrossState) -> dict[str, Any]:
    v = st.vars[0]
    return {
        "grid_points": int(v["grid_points"]),
        "stale_points": int(v["stale_points"]),
        "alarms": int(v["alarms"]),
        "signals": int(v["signals"]),
        "suppressed_by_cooldown": int(v["suppressed_cooldown"]),
        "events": [int(st.sides[k]["events"]) for k in (0, 1)],
        "history_overflows": [int(st.sides[k]["overflow"]) for k in (0, 1)],
    }


def cross_venue_batch(
    pair: Pair,
    a: MarketMids,
    b: MarketMids,
    config: CrossVenueConfig,
    *,
    settings_id: str,
    leader: int = NO_LEADER,
    lead_window_ns: int | None = None,
    emit_from_ns: int = -(2**63),
) -> CrossOutput:
    """Basis grid rows and cross-venue signals of a pair over two markets' feature rows
    (rows before `emit_from_ns` only warm the state up)."""
    side, order = merge_order(a.ts, b.ts)
    ts = np.ascontiguousarray(np.concatenate([a.ts, b.ts])[order], dtype=np.int64)
    mid, bid, ask, spread = (
        np.ascontiguousarray(np.concatenate([x, y])[order], dtype=np.float64)
        for x, y in ((a.mid, b.mid), (a.bid, b.bid), (a.ask, b.ask), (a.spread_bps, b.spread_bps))
    )
    uid = np.ascontiguousarray(np.concatenate([a.update_id, b.update_id])[order], dtype=np.int64)
    n_grid = 1
    if ts.shape[0]:
        n_grid = int((ts[-1] - max(int(ts[0]), emit_from_ns)) // config.grid_ns) + 2
    grid_out = np.zeros(max(n_grid, 1), GRID_ROW)
    capacity = 1024
    while True:
        st = new_cross_state(
            config, leader=leader, lead_window_ns=lead_window_ns, emit_from_ns=emit_from_ns
        )
        sig_out = np.zeros(capacity, CROSS_SIGNAL)
        ng, ns = cross_run(st, side, ts, mid, bid, ask, spread, uid, grid_out, sig_out)
        emitted = int(st.vars[0]["signals"])
        if emitted <= ns:
            break
        capacity = emitted + 1  # rare: run again with room for every signal
    return CrossOutput(
        basis_frame(pair, grid_out[:ng]),
        signals_frame(pair, sig_out[:ns], settings_id),
        cross_stats(st),
    )


# ---------------------------------------------------------------- online engine

# Scratch outputs of one online event: grid rows are not kept online (the batch asset writes
# the basis table); signals of one event are at most one per grid point closed plus one.
_ONLINE_GRID = np.zeros(0, GRID_ROW)


class CrossVenueEngine:
    """The cross-venue detector online: feature rows of two markets, in each market's own
    release order, interleaved however they arrive (`on_row`); events are held until the
    other market has shown a later exchange time, or `max_wait_ms` of receive time passed
    (`poll`), then run through `cross_event` in the batch driver's order."""

    def __init__(
        self,
        pair: Pair,
        config: CrossVenueConfig,
        *,
        settings_id: str,
        leader: int = NO_LEADER,
        lead_window_ns: int | None = None,
        max_wait_ms: float = 10_000.0,
        with_recv: bool = False,
    ) -> None:
        if not (isinstance(max_wait_ms, int | float) and max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.pair = pair
        # with_recv: signal frames carry `recv_ts_ns`, the receive time of the event whose
        # processing fired them (live rows measure signal-to-delivery time from it)
        self.with_recv = with_recv
        self.config = config
        self.settings_id = settings_id
        self.state = new_cross_state(config, leader=leader, lead_window_ns=lead_window_ns)
        self.max_wait_ns = round(max_wait_ms * 1e6)
        self._queues: tuple[deque[tuple], deque[tuple]] = (deque(), deque())
        self._last_ts = [-(2**63), -(2**63)]
        self._sig = np.zeros(1024, CROSS_SIGNAL)
        self.timeouts = 0
        st = self.state
        self._step = specialize(
            cross_event, st, 0, np.int64(0), 0.0, 0.0, 0.0, 0.0, np.int64(0), _ONLINE_GRID, 0,
            self._sig, 0,
        )  # fmt: skip

    def side_of(self, venue: str, symbol: str) -> int:
        if (venue, symbol) == self.pair.market(0):
            return 0
        if (venue, symbol) == self.pair.market(1):
            return 1
        raise ValueError(f"{venue}:{symbol} is not a market of {self.pair}")

    def on_row(
        self,
        side: int,
        ts_ns: int,
        recv_ts_ns: int,
        mid: float,
        best_bid: float,
        best_ask: float,
        spread_bps: float,
        update_id: int,
    ) -> pl.DataFrame | None:
        """One released feature row of market `side`; returns the signals it released
        (None when none)."""
        ts = ts_ns if ts_ns > self._last_ts[side] else self._last_ts[side]
        self._last_ts[side] = ts
        self._queues[side].append((ts, recv_ts_ns, mid, best_bid, best_ask, spread_bps, update_id))
        return self._release(recv_ts_ns, force=False)

    def poll(self, now_recv_ns: int) -> pl.DataFrame | None:
        """Release events that waited `max_wait_ms` of receive time for the other market."""
        return self._release(now_recv_ns, force=False)

    def flush(self) -> pl.DataFrame | None:
        """Release everything held (end of a replay, shutdown)."""
        return self._release(0, force=True)

    def _release(self, now: int, *, force: bool) -> pl.DataFrame | None:
        qa, qb = self._queues
        ns = 0
        st, step, sig = self.state, self._step, self._sig
        recv: list[int] = []
        while qa or qb:
            if qa and qb:
                s = 0 if qa[0][0] <= qb[0][0] else 1
            else:
                s = 0 if qa else 1
                other = 1 - s
                head = (qa or qb)[0]
                # the other market's next time is at least its last one (times are monotone)
                wm = self._last_ts[other]
                ok = head[0] < wm or (head[0] == wm and s == 0)
                if not ok and not force:
                    if now - head[1] >= self.max_wait_ns:
                        self.timeouts += 1
                    else:
                        break
            e = self._queues[s].popleft()
            before = ns
            _, ns = step(st, s, np.int64(e[0]), e[2], e[3], e[4], e[5], np.int64(e[6]),
                         _ONLINE_GRID, 0, sig, ns)  # fmt: skip
            recv.extend([e[1]] * (ns - before))
            if ns >= sig.shape[0] - 4:
                break
        if ns == 0:
            return None
        out = signals_frame(self.pair, sig[:ns].copy(), self.settings_id, source="live")
        if self.with_recv:
            out = out.with_columns(recv_ts_ns=pl.Series(recv, dtype=pl.Int64))
        return out

    def stats(self) -> dict[str, Any]:
        out = cross_stats(self.state)
        out["held"] = [len(q) for q in self._queues]
        out["timeouts"] = self.timeouts
        return out


# ---------------------------------------------------------------- Hayashi-Yoshida lead-lag


def mid_changes(ts: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, log mids) of the observations where the mid changed (the first kept): the
    change times of an asynchronous series, as Hayashi-Yoshida takes them."""
    ok = np.isfinite(mid) & (mid > 0)
    ts, mid = ts[ok], mid[ok]
    if ts.shape[0] == 0:
        return ts.astype(np.int64), mid.astype(np.float64)
    keep = np.concatenate([[True], mid[1:] != mid[:-1]])
    return (
        np.ascontiguousarray(ts[keep], dtype=np.int64),
        np.ascontiguousarray(np.log(mid[keep]), dtype=np.float64),
    )


@njit(cache=True)
def hy_cov(ta: np.ndarray, xa: np.ndarray, tb: np.ndarray, xb: np.ndarray, lag: np.int64) -> float:
    """Hayashi-Yoshida covariance of a's increments with b's increments shifted by `lag`
    (b's interval (tb[j-1], tb[j]] taken as (tb[j-1] - lag, tb[j] - lag]).

    sum_i sum_j dxa_i dxb_j 1{intervals overlap}, with intervals open on the left: b's
    increments overlapping a's interval i are a contiguous run j in [lo_i, hi_i], summed as
    xb[hi_i] - xb[lo_i - 1]; lo_i and hi_i only grow with i, so one pass of two pointers
    does it in O(n + m) (Hayashi & Yoshida 2005)."""
    n = ta.shape[0]
    m = tb.shape[0]
    if n < 2 or m < 2:
        return 0.0
    cov = 0.0
    d = 0  # number of b times <= ta[i-1] + lag
    c = 0  # number of b times < ta[i] + lag
    for i in range(1, n):
        lo_t = ta[i - 1] + lag
        hi_t = ta[i] + lag
        while d < m and tb[d] <= lo_t:
            d += 1
        while c < m and tb[c] < hi_t:
            c += 1
        jl = d if d > 1 else 1
        jh = c if c < m - 1 else m - 1
        if jh >= jl:
            cov += (xa[i] - xa[i - 1]) * (xb[jh] - xb[jl - 1])
    return cov


@njit(cache=True)
def _sum_sq_increments(x: np.ndarray) -> float:
    s = 0.0
    for i in range(1, x.shape[0]):
        d = x[i] - x[i - 1]
        s += d * d
    return s


@njit(cache=True)
def hy_corr_lags(
    ta: np.ndarray, xa: np.ndarray, tb: np.ndarray, xb: np.ndarray, lags: np.ndarray
) -> np.ndarray:
    """Hayashi-Yoshida correlation at each lag: cov(lag) / sqrt(sum dxa^2 sum dxb^2)."""
    out = np.full(lags.shape[0], np.nan)
    va = _sum_sq_increments(xa)
    vb = _sum_sq_increments(xb)
    if va <= 0.0 or vb <= 0.0:
        return out
    norm = math.sqrt(va * vb)
    for k in range(lags.shape[0]):
        out[k] = hy_cov(ta, xa, tb, xb, lags[k]) / norm
    return out


@njit(cache=True)
def hy_corr_lags_many(
    ta: np.ndarray, xa: np.ndarray, tb: np.ndarray, xbs: np.ndarray, lags: np.ndarray
) -> np.ndarray:
    """`hy_corr_lags` of a against several b series on b's one clock at once: `xbs` is
    (len(tb), S), column s one series of b's log mids; returns (S, len(lags)).

    The two pointers of `hy_cov` depend only on the clocks and the lag, so one walk per lag
    serves every column (the shuffled-time null's draws share b's clock): S curves for about
    the cost of one. Each column's sum runs in the same order as `hy_cov`'s, so column s
    equals `hy_corr_lags(ta, xa, tb, xbs[:, s], lags)` bit for bit."""
    n = ta.shape[0]
    m = tb.shape[0]
    ns = xbs.shape[1]
    out = np.full((ns, lags.shape[0]), np.nan)
    va = _sum_sq_increments(xa)
    vb = np.empty(ns)
    for s in range(ns):
        vb[s] = _sum_sq_increments(xbs[:, s])
    if va <= 0.0 or n < 2 or m < 2:
        return out
    acc = np.zeros(ns)
    for k in range(lags.shape[0]):
        lag = lags[k]
        acc[:] = 0.0
        d = 0
        c = 0
        for i in range(1, n):
            lo_t = ta[i - 1] + lag
            hi_t = ta[i] + lag
            while d < m and tb[d] <= lo_t:
                d += 1
            while c < m and tb[c] < hi_t:
                c += 1
            jl = d if d > 1 else 1
            jh = c if c < m - 1 else m - 1
            if jh >= jl:
                dx = xa[i] - xa[i - 1]
                for s in range(ns):
                    acc[s] += dx * (xbs[jh, s] - xbs[jl - 1, s])
        for s in range(ns):
            if vb[s] > 0.0:
                out[s, k] = acc[s] / math.sqrt(va * vb[s])
    return out


# Columns of b series per walk of `hy_corr_lags_many`: bounds its scratch to 64 MB.
_MANY_CELLS = 2**23


def lead_lag_ratio(lags: np.ndarray, corr: np.ndarray) -> float:
    """Huth & Abergel (2014): sum of squared correlations at positive lags over those at
    negative lags; above 1, a leads (our sign convention)."""
    c = np.nan_to_num(corr)
    pos = float(np.sum(c[lags > 0] ** 2))
    neg = float(np.sum(c[lags < 0] ** 2))
    return pos / neg if neg > 0 else (math.inf if pos > 0 else math.nan)


@dataclass(frozen=True)
class LeadLag:
    """The lead-lag of one pair: the curve, its null band, and the summary figures."""

    lags_ns: np.ndarray
    hy_corr: np.ndarray
    null_lo: np.ndarray
    null_hi: np.ndarray
    ratio: float  # Huth-Abergel lead-lag ratio (> 1: a leads)
    max_lag_ns: int  # lag of the largest correlation (> 0: a leads by it)
    max_corr: float
    p_value: float  # share of null draws whose largest |corr| reaches the observed maximum
    n_a: int  # mid changes used
    n_b: int

    @property
    def leader(self) -> int:
        """0 when a leads, 1 when b leads, -1 when the lag of the maximum is 0 or unknown."""
        if not math.isfinite(self.max_corr) or self.max_lag_ns == 0:
            return NO_LEADER
        return 0 if self.max_lag_ns > 0 else 1


def lead_lag(
    ts_a: np.ndarray,
    mid_a: np.ndarray,
    ts_b: np.ndarray,
    mid_b: np.ndarray,
    config: CrossVenueConfig,
) -> LeadLag:
    """Hayashi-Yoshida lead-lag curve of two mid series (exchange times, any sampling) over
    the configured lag grid, with the shuffled-time null: b's log mid changes are permuted
    among b's change times (`null_shuffles` draws, seeded), which keeps both clocks and b's
    distribution of moves and destroys any alignment with a."""
    ta, xa = mid_changes(np.asarray(ts_a), np.asarray(mid_a, dtype=np.float64))
    tb, xb = mid_changes(np.asarray(ts_b), np.asarray(mid_b, dtype=np.float64))
    lags = config.lags_ns
    n_draws = config.null_shuffles if xb.shape[0] > 2 else 0
    rng = np.random.default_rng(config.seed)
    db = np.diff(xb)

    def series(s: int) -> np.ndarray:  # column s: 0 the observed b, then the null's draws
        if s == 0:
            return xb
        return np.concatenate([[xb[0]], xb[0] + np.cumsum(rng.permutation(db))])

    # the observed curve and the draws share b's clock: several per walk of the pointers
    curves = np.empty((n_draws + 1, lags.shape[0]))
    per_walk = max(1, _MANY_CELLS // max(xb.shape[0], 1))
    for lo in range(0, n_draws + 1, per_walk):
        hi = min(n_draws + 1, lo + per_walk)
        xbs = np.empty((xb.shape[0], hi - lo))
        for s in range(lo, hi):
            xbs[:, s - lo] = series(s)
        curves[lo:hi] = hy_corr_lags_many(ta, xa, tb, xbs, lags)
    corr = curves[0]
    nl = np.full(lags.shape[0], np.nan)
    nh = nl.copy()
    p_value = math.nan
    finite = np.isfinite(corr)
    if n_draws and finite.any():
        draws = curves[1:]
        q = (1.0 - config.null_quantile) / 2.0
        nl = np.quantile(draws, q, axis=0)
        nh = np.quantile(draws, 1.0 - q, axis=0)
        peak = float(np.nanmax(np.abs(corr)))
        hits = int(np.sum(np.nanmax(np.abs(draws), axis=1) >= peak))
        p_value = (hits + 1) / (n_draws + 1)
    if finite.any():
        k = int(np.nanargmax(corr))
        max_lag, max_corr = int(lags[k]), float(corr[k])
    else:
        max_lag, max_corr = 0, math.nan
    return LeadLag(lags, corr, nl, nh, lead_lag_ratio(lags, corr), max_lag, max_corr,
                   p_value, int(ta.shape[0]), int(tb.shape[0]))  # fmt: skip


LEAD_LAG_COLUMNS: dict[str, pl.DataType] = {
    "date": pl.String(),
    "underlying": pl.String(),
    "venue_a": pl.String(),
    "symbol_a": pl.String(),
    "venue_b": pl.String(),
    "symbol_b": pl.String(),
    "lag_ns": pl.Int64(),
    "hy_corr": pl.Float64(),
    "null_lo": pl.Float64(),
    "null_hi": pl.Float64(),
    "lead_lag_ratio": pl.Float64(),
    "max_lag_ns": pl.Int64(),
    "max_corr": pl.Float64(),
    "p_value": pl.Float64(),
    "n_changes_a": pl.Int64(),
    "n_changes_b": pl.Int64(),
}


def lead_lag_frame(date: str, pair: Pair, ll: LeadLag) -> pl.DataFrame:
    n = ll.lags_ns.shape[0]
    data: dict[str, Any] = {"date": [date] * n}
    for k, val in pair.columns().items():
        data[k] = [val] * n
    data.update(
        lag_ns=ll.lags_ns, hy_corr=ll.hy_corr, null_lo=ll.null_lo, null_hi=ll.null_hi,
        lead_lag_ratio=[ll.ratio] * n, max_lag_ns=[ll.max_lag_ns] * n,
        max_corr=[ll.max_corr] * n, p_value=[ll.p_value] * n, n_changes_a=[ll.n_a] * n,
        n_changes_b=[ll.n_b] * n,
    )  # fmt: skip
    return pl.DataFrame(data, schema=LEAD_LAG_COLUMNS)


def measured_leader(lead_lag_rows: pl.DataFrame, config: CrossVenueConfig) -> tuple[int, int]:
    """(leader, lead window ns) from a pair's `lead_lag` rows: the side the maximum's lag
    points to when its p-value is at most `significance`, the window the lag itself (at least
    one lag step); (-1, 0) when the rows show no significant lead."""
    if lead_lag_rows.height == 0:
        return NO_LEADER, 0
    r = lead_lag_rows.row(0, named=True)
    p, lag = r["p_value"], r["max_lag_ns"]
    if p is None or not math.isfinite(p) or p > config.significance or not lag:
        return NO_LEADER, 0
    step = round(config.lag_step_ms * 1e6)
    return (0 if lag > 0 else 1), max(abs(int(lag)), step)


def leader_for(
    pair: Pair, config: CrossVenueConfig, prev_lead_lag: pl.DataFrame, prev_date: str
) -> tuple[int, int | None, str]:
    """(leader side, lead window ns or None for the configured one, how it was chosen) of a
    pair for the leader_move trigger: `config.leader` when that venue is in the pair, else
    the lead measured on the previous day (`prev_lead_lag`: that day's `lead_lag` rows, any
    pairs), never the same day's (that would look ahead). One rule for batch and live."""
    if config.leader and config.leader in (pair.venue_a, pair.venue_b):
        side = 0 if config.leader == pair.venue_a else 1
        return side, None, f"settings: {config.leader} leads"
    prev = prev_lead_lag
    if prev.height:
        prev = prev.filter(
            (pl.col("venue_a") == pair.venue_a)
            & (pl.col("symbol_a") == pair.symbol_a)
            & (pl.col("venue_b") == pair.venue_b)
            & (pl.col("symbol_b") == pair.symbol_b)
        )
    side, window = measured_leader(prev, config)
    if side < 0:
        return side, None, "no leader: no significant lead measured on the previous day"
    who = pair.market(side)
    return side, window, f"measured on {prev_date}: {who[0]}:{who[1]} leads"


__all__ = [
    "BASIS_COLUMNS",
    "INDEX_BASIS_COLUMNS",
    "LEAD_LAG_COLUMNS",
    "SIGNAL_TYPE",
    "TRIGGERS",
    "CrossOutput",
    "CrossState",
    "CrossVenueConfig",
    "CrossVenueEngine",
    "LeadLag",
    "MarketMids",
    "Pair",
    "cross_event",
    "cross_venue_batch",
    "empty_cross_signals",
    "hy_corr_lags",
    "hy_corr_lags_many",
    "hy_cov",
    "index_at",
    "lead_lag",
    "lead_lag_frame",
    "lead_lag_ratio",
    "leader_for",
    "market_mids",
    "measured_leader",
    "merge_order",
    "mid_changes",
    "with_index_basis",
]
