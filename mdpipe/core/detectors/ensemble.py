"""Detector ensemble: CUSUM drift, volume/volatility bursts, BOCPD regime changes.

`detector_step` is the one per-event kernel; the batch driver calls it inside its numba loop,
`MicrostructureDetector.process` and the online engine call it once per event.

Per event and per type d in (drift, burst, regime) a normalised statistic s_d is formed
(statistic / its static threshold, so s_d >= 1 means the detector alarms on its own):
  drift   max over the CUSUMs of imbalance_5, wmid_change_bps, spread_compression and
          trade_imbalance_5s of max(s_pos, s_neg) / drift_threshold (inputs standardised online)
  burst   max(volume_z_1s, volume_z_5s, volume_z_30s, realized_vol_z) / burst_threshold
  regime  bocpd_cp_prob / regime_threshold
The ensemble score is the mean of min(s_d, 3). A signal of type d is emitted when detector d
alarms, the score reaches the dynamic threshold (the `dynamic_quantile` quantile of the scores
of the previous `dynamic_threshold_window` events), the event is past warm-up and not a
snapshot, and the last signal of type d is at least `cooldown_seconds` old.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from mdpipe.core.detectors.cusum import (
    CUSUM_SIZE,
    STD_SIZE,
    cusum_step,
    halflife_to_alpha,
    standardize_update,
)
from mdpipe.core.detectors.quantile import rq_push, rq_quantile

SIGNAL_TYPES: tuple[str, ...] = ("drift", "burst", "regime")
# Feature names the detector reads, in kernel order (index = trigger code).
DET_INPUTS: tuple[str, ...] = (
    "imbalance_5",
    "wmid_change_bps",
    "spread_compression",
    "trade_imbalance_5s",
    "volume_z_1s",
    "volume_z_5s",
    "volume_z_30s",
    "realized_vol_z",
    "bocpd_cp_prob",
    "wmid_drift_5s_bps",
    "trade_imbalance_1s",
    "trade_imbalance_30s",
)
N_DET_INPUTS = len(DET_INPUTS)
N_CUSUM = 4
# dis (int64 state) layout
I_LAST = 0  # 3: ts of the last signal per type
I_HAS = 3  # 3: whether a signal of that type was emitted yet
I_SIGNALS = 6  # 3: signals emitted per type
I_ALARMS = 9  # 3: raw detector alarms per type (before score/cooldown gating)
I_RQ_N = 12
I_RQ_HEAD = 13
I_EVENTS = 14
I_SUPPRESSED_COOLDOWN = 15
DIS_SIZE = 16
DFS_SIZE = N_CUSUM * (STD_SIZE + CUSUM_SIZE)
# params layout
P_DRIFT, P_ALLOW, P_BURST, P_REGIME, P_COOLDOWN, P_Q, P_ALPHA, P_MINCOUNT = range(8)
N_PARAMS = 8
# out columns, one row per signal type
O_FIRED, O_DIR, O_SCORE, O_TRIGGER, O_VALUE, O_THRESHOLD = range(6)
OUT_COLS = 6
SCORE_CAP = 3.0


@njit(cache=True, inline="always")
def _sign(x: float) -> float:
    return -1.0 if x < 0.0 else 1.0


@njit(cache=True)
def detector_step(
    dfs: np.ndarray,
    dis: np.ndarray,
    dq: np.ndarray,
    params: np.ndarray,
    ts_ns: np.int64,
    x: np.ndarray,
    is_warmup: bool,
    is_snapshot: bool,
    out: np.ndarray,
) -> int:
    """Advance every detector by one event; fill `out` (3 x 6) and return the signals emitted."""
    out[:, :] = 0.0
    h = params[P_DRIFT]
    k = params[P_ALLOW]
    alpha = params[P_ALPHA]
    min_count = params[P_MINCOUNT]
    dis[I_EVENTS] += 1
    # Drift: four CUSUMs. A snapshot (resync) is not market information: skip the inputs.
    s_drift = 0.0
    drift_alarm = 0
    drift_dir = 1.0
    drift_trig = 0
    drift_val = 0.0
    if not is_snapshot:
        for j in range(N_CUSUM):
            off = j * (STD_SIZE + CUSUM_SIZE)
            xj = x[j]
            if not math.isfinite(xj):
                continue
            z = standardize_update(dfs, off, xj, alpha, min_count)
            if not math.isfinite(z):
                continue
            sp = max(dfs[off + STD_SIZE] + z - k, 0.0)
            sn = max(dfs[off + STD_SIZE + 1] - z - k, 0.0)
            a = cusum_step(dfs, off + STD_SIZE, z, k, h)
            stat = max(sp, sn)
            if stat / h > s_drift:
                s_drift = stat / h
            if a != 0 and (drift_alarm == 0 or stat > drift_val):
                drift_alarm = 1
                drift_trig = j
                drift_val = stat
                # A spread shift has no side of its own: take the book's.
                book_side = _sign(x[0]) if math.isfinite(x[0]) else 1.0
                drift_dir = book_side if j == 2 else float(a)
    # Burst: the largest of the volume and volatility z-scores.
    s_burst = 0.0
    burst_trig = 4
    burst_val = 0.0
    for j in range(4, 8):
        v = x[j]
        if math.isfinite(v) and v > burst_val:
            burst_val = v
            burst_trig = j
    s_burst = burst_val / params[P_BURST]
    burst_alarm = 1 if s_burst >= 1.0 else 0
    if burst_trig == 4:
        burst_dir = _sign(x[10]) if math.isfinite(x[10]) else 1.0
    elif burst_trig == 5:
        burst_dir = _sign(x[3]) if math.isfinite(x[3]) else 1.0
    elif burst_trig == 6:
        burst_dir = _sign(x[11]) if math.isfinite(x[11]) else 1.0
    else:
        burst_dir = _sign(x[9]) if math.isfinite(x[9]) else 1.0
    # Regime: BOCPD changepoint probability.
    cp = x[8] if math.isfinite(x[8]) else 0.0
    s_regime = cp / params[P_REGIME]
    regime_alarm = 1 if s_regime >= 1.0 else 0
    regime_dir = _sign(x[9]) if math.isfinite(x[9]) else 1.0
    score = (min(s_drift, SCORE_CAP) + min(s_burst, SCORE_CAP) + min(s_regime, SCORE_CAP)) / 3.0

    w = dq.shape[1]
    n = dis[I_RQ_N]
    thr = rq_quantile(dq, n, params[P_Q])
    ready = (n == w) and (not is_warmup) and (not is_snapshot)
    cooldown = np.int64(params[P_COOLDOWN])
    emitted = 0
    for d in range(3):
        if d == 0:
            alarm, direction, trig, val = drift_alarm, drift_dir, drift_trig, drift_val
        elif d == 1:
            alarm, direction, trig, val = burst_alarm, burst_dir, burst_trig, burst_val
        else:
            alarm, direction, trig, val = regime_alarm, regime_dir, 8, cp
        out[d, O_DIR] = direction
        out[d, O_SCORE] = score
        out[d, O_TRIGGER] = trig
        out[d, O_VALUE] = val
        out[d, O_THRESHOLD] = thr
        if alarm == 0 or is_snapshot:
            continue
        dis[I_ALARMS + d] += 1
        if not ready or score < thr:
            continue
        if dis[I_HAS + d] == 1 and ts_ns - dis[I_LAST + d] < cooldown:
            dis[I_SUPPRESSED_COOLDOWN] += 1
            continue
        dis[I_HAS + d] = 1
        dis[I_LAST + d] = ts_ns
        dis[I_SIGNALS + d] += 1
        out[d, O_FIRED] = 1.0
        emitted += 1
    if not is_snapshot:
        n, head = rq_push(dq, n, dis[I_RQ_HEAD], score)
        dis[I_RQ_N] = n
        dis[I_RQ_HEAD] = head
    return emitted


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """Detector parameters, validated on construction.

    drift_threshold           CUSUM threshold h, in standard deviations of each input.
    drift_allowance           CUSUM allowance k, in standard deviations (k = 1 targets 2-sigma
                              shifts; with h = 3 the in-control run length is ~1,000 events).
    burst_threshold           z-score at which a volume or volatility burst alarms.
    regime_threshold          BOCPD changepoint probability at which a regime change alarms.
    cooldown_seconds          minimum time between two signals of one type in one market.
    dynamic_threshold_window  events in the rolling window of ensemble scores.
    dynamic_quantile          quantile of that window the score must reach.
    standardize_halflife      half-life (events) of the EWMA mean/variance of CUSUM inputs.
    standardize_min_count     events before a CUSUM input's standardiser is trusted.
    """

    drift_threshold: float = 3.0
    drift_allowance: float = 1.0
    burst_threshold: float = 2.5
    regime_threshold: float = 0.7
    cooldown_seconds: float = 30.0
    dynamic_threshold_window: int = 500
    dynamic_quantile: float = 0.9
    standardize_halflife: float = 1000.0
    standardize_min_count: int = 30

    def __post_init__(self) -> None:
        def pos(name: str, v: Any, *, zero: bool = False) -> None:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (v == 0 and not zero):
                bound = ">= 0" if zero else "> 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")

        pos("drift_threshold", self.drift_threshold)
        pos("drift_allowance", self.drift_allowance, zero=True)
        pos("burst_threshold", self.burst_threshold)
        pos("cooldown_seconds", self.cooldown_seconds, zero=True)
        pos("standardize_halflife", self.standardize_halflife)
        if not (
            isinstance(self.regime_threshold, int | float) and 0.0 < self.regime_threshold <= 1.0
        ):
            raise ValueError(
                "regime_threshold is a changepoint probability and must be in (0, 1], "
                f"got {self.regime_threshold!r}"
            )
        w = self.dynamic_threshold_window
        if not (isinstance(w, int) and not isinstance(w, bool) and 2 <= w <= 1_000_000):
            raise ValueError(f"dynamic_threshold_window must be an int in [2, 1e6], got {w!r}")
        if not (isinstance(self.dynamic_quantile, int | float) and 0 <= self.dynamic_quantile <= 1):
            raise ValueError(f"dynamic_quantile must be in [0, 1], got {self.dynamic_quantile!r}")
        mc = self.standardize_min_count
        if not (isinstance(mc, int) and mc >= 2):
            raise ValueError(f"standardize_min_count must be an int >= 2, got {mc!r}")

    def params(self) -> np.ndarray:
        p = np.zeros(N_PARAMS)
        p[P_DRIFT] = self.drift_threshold
        p[P_ALLOW] = self.drift_allowance
        p[P_BURST] = self.burst_threshold
        p[P_REGIME] = self.regime_threshold
        p[P_COOLDOWN] = round(self.cooldown_seconds * 1e9)
        p[P_Q] = self.dynamic_quantile
        p[P_ALPHA] = halflife_to_alpha(self.standardize_halflife)
        p[P_MINCOUNT] = self.standardize_min_count
        return p

    def new_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dfs, dis, dq): the detector's complete, bounded state."""
        return (
            np.zeros(DFS_SIZE),
            np.zeros(DIS_SIZE, dtype=np.int64),
            np.zeros((2, self.dynamic_threshold_window)),
        )


def signal_id(venue: str, symbol: str, signal_type: str, update_id: int) -> str:
    """Stable id from (market, type, event id): reruns and the live engine agree on it."""
    key = f"{venue}|{symbol}|{signal_type}|{int(update_id)}".encode()
    return hashlib.blake2b(key, digest_size=10).hexdigest()


@dataclass(frozen=True)
class Signal:
    venue: str
    symbol: str
    ts_ns: int
    update_id: int
    signal_id: str
    signal_type: str
    direction: int
    score: float
    trigger: str
    trigger_value: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def signals_from_out(
    out: np.ndarray, venue: str, symbol: str, ts_ns: int, update_id: int
) -> list[Signal]:
    sigs = []
    for d in range(3):
        if out[d, O_FIRED] != 0.0:
            t = SIGNAL_TYPES[d]
            sigs.append(
                Signal(
                    venue=venue,
                    symbol=symbol,
                    ts_ns=int(ts_ns),
                    update_id=int(update_id),
                    signal_id=signal_id(venue, symbol, t, update_id),
                    signal_type=t,
                    direction=int(out[d, O_DIR]),
                    score=float(out[d, O_SCORE]),
                    trigger=DET_INPUTS[int(out[d, O_TRIGGER])],
                    trigger_value=float(out[d, O_VALUE]),
                    threshold=float(out[d, O_THRESHOLD]),
                )
            )
    return sigs


class MicrostructureDetector:
    """The detector ensemble, fed one feature row at a time.

    `process(features)` takes a mapping with `ts_ns`, optional `update_id`, `is_warmup`,
    `is_snapshot`, and the feature names in `DET_INPUTS` (missing ones count as absent); it
    returns the strongest signal emitted on that event, or None (`process_all` returns every
    signal: types have independent cooldowns, so two can fire on one event).
    """

    def __init__(
        self,
        drift_threshold: float = 3.0,
        burst_threshold: float = 2.5,
        regime_threshold: float = 0.7,
        cooldown_seconds: float = 30.0,
        dynamic_threshold_window: int = 500,
        *,
        drift_allowance: float = 1.0,
        dynamic_quantile: float = 0.9,
        standardize_halflife: float = 1000.0,
        standardize_min_count: int = 30,
        venue: str = "",
        symbol: str = "",
    ) -> None:
        self.config = DetectorConfig(
            drift_threshold=drift_threshold,
            drift_allowance=drift_allowance,
            burst_threshold=burst_threshold,
            regime_threshold=regime_threshold,
            cooldown_seconds=cooldown_seconds,
            dynamic_threshold_window=dynamic_threshold_window,
            dynamic_quantile=dynamic_quantile,
            standardize_halflife=standardize_halflife,
            standardize_min_count=standardize_min_count,
        )
        self.venue = venue
        self.symbol = symbol
        self.params = self.config.params()
        self.dfs, self.dis, self.dq = self.config.new_state()
        self._x = np.empty(N_DET_INPUTS)
        self._out = np.zeros((3, OUT_COLS))

    @classmethod
    def from_config(
        cls, config: DetectorConfig, *, venue: str = "", symbol: str = ""
    ) -> MicrostructureDetector:
        return cls(**asdict(config), venue=venue, symbol=symbol)

    def process_all(self, features: Mapping[str, Any]) -> list[Signal]:
        x = self._x
        for i, name in enumerate(DET_INPUTS):
            v = features.get(name)
            x[i] = math.nan if v is None else float(v)
        ts = int(features["ts_ns"])
        uid = int(features.get("update_id", ts))
        detector_step(
            self.dfs, self.dis, self.dq, self.params, np.int64(ts), x,
            bool(features.get("is_warmup", False)), bool(features.get("is_snapshot", False)),
            self._out,
        )  # fmt: skip
        return signals_from_out(self._out, self.venue, self.symbol, ts, uid)

    def process(self, features: Mapping[str, Any]) -> Signal | None:
        sigs = self.process_all(features)
        if not sigs:
            return None
        return max(sigs, key=lambda s: (s.trigger_value / self._static_threshold(s), s.score))

    def _static_threshold(self, s: Signal) -> float:
        c = self.config
        return {"drift": c.drift_threshold, "burst": c.burst_threshold}.get(
            s.signal_type, c.regime_threshold
        )

    def get_stats(self) -> dict[str, Any]:
        return stats_from_state(self.dis, self.dq)


def stats_from_state(dis: np.ndarray, dq: np.ndarray) -> dict[str, Any]:
    n = int(dis[I_RQ_N])
    return {
        "events": int(dis[I_EVENTS]),
        "detections": {t: int(dis[I_SIGNALS + d]) for d, t in enumerate(SIGNAL_TYPES)},
        "alarms": {t: int(dis[I_ALARMS + d]) for d, t in enumerate(SIGNAL_TYPES)},
        "suppressed_by_cooldown": int(dis[I_SUPPRESSED_COOLDOWN]),
        "dynamic_threshold_fill": n,
        "dynamic_threshold_window": int(dq.shape[1]),
    }
