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
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from mdpipe.core.detectors.cusum import CUSUM, cusum_step, halflife_to_alpha, standardize_update
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
N_CUSUM = 4  # the drift CUSUMs run on DET_INPUTS[:N_CUSUM]
N_TYPES = len(SIGNAL_TYPES)

# Per signal type (one record each, indexed like SIGNAL_TYPES).
TYPE_STATE = np.dtype(
    [
        ("last_ts", np.int64),  # ts of the last signal of this type
        ("has_last", np.int64),  # whether one was emitted yet
        ("signals", np.int64),  # signals emitted
        ("alarms", np.int64),  # raw detector alarms (before score/cooldown gating)
    ],
    align=True,
)
DETECTOR_VARS = np.dtype(
    [
        ("rq_n", np.int64),  # scores in the dynamic-threshold window
        ("rq_head", np.int64),
        ("events", np.int64),
        ("suppressed_cooldown", np.int64),
    ],
    align=True,
)
DETECTOR_PARAMS = np.dtype(
    [
        ("drift_threshold", np.float64),
        ("drift_allowance", np.float64),
        ("burst_threshold", np.float64),
        ("regime_threshold", np.float64),
        ("cooldown_ns", np.int64),
        ("quantile", np.float64),
        ("std_alpha", np.float64),
        ("std_min_count", np.float64),
    ],
    align=True,
)
# What the detector says about one event, one record per signal type.
DETECTION = np.dtype(
    [
        ("fired", np.int64),
        ("direction", np.float64),
        ("score", np.float64),
        ("trigger", np.int64),  # index into DET_INPUTS
        ("value", np.float64),
        ("threshold", np.float64),
    ],
    align=True,
)


class DetectorState(NamedTuple):
    """The detector ensemble's complete, bounded state for one market, and its parameters."""

    cusum: np.ndarray  # CUSUM[N_CUSUM]: standardiser + two-sided sums per drift input
    types: np.ndarray  # TYPE_STATE[3]
    vars: np.ndarray  # DETECTOR_VARS[1]
    scores: np.ndarray  # float64[2, W]: rolling-quantile window (`quantile.rq_push`)
    params: np.ndarray  # DETECTOR_PARAMS[1]


SCORE_CAP = 3.0


@njit(cache=True, inline="always")
def _sign(x: float) -> float:
    return -1.0 if x < 0.0 else 1.0


@njit(cache=True)
def detector_step(
    det: DetectorState,
    ts_ns: np.int64,
    x: np.ndarray,
    is_warmup: bool,
    is_snapshot: bool,
    out: np.ndarray,
) -> int:
    """Advance every detector by one event; fill `out` (DETECTION[3]) and return the signals
    emitted."""
    p = det.params[0]
    v = det.vars[0]
    cusums = det.cusum
    types = det.types
    scores = det.scores
    h = p.drift_threshold
    k = p.drift_allowance
    alpha = p.std_alpha
    min_count = p.std_min_count
    v.events += 1
    # Drift: four CUSUMs. A snapshot (resync) is not market information: skip the inputs.
    s_drift = 0.0
    drift_alarm = 0
    drift_dir = 1.0
    drift_trig = 0
    drift_val = 0.0
    if not is_snapshot:
        for j in range(N_CUSUM):
            xj = x[j]
            if not math.isfinite(xj):
                continue
            c = cusums[j]
            z = standardize_update(c, xj, alpha, min_count)
            if not math.isfinite(z):
                continue
            sp = max(c.s_pos + z - k, 0.0)
            sn = max(c.s_neg - z - k, 0.0)
            a = cusum_step(c, z, k, h)
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
        xv = x[j]
        if math.isfinite(xv) and xv > burst_val:
            burst_val = xv
            burst_trig = j
    s_burst = burst_val / p.burst_threshold
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
    s_regime = cp / p.regime_threshold
    regime_alarm = 1 if s_regime >= 1.0 else 0
    regime_dir = _sign(x[9]) if math.isfinite(x[9]) else 1.0
    score = (min(s_drift, SCORE_CAP) + min(s_burst, SCORE_CAP) + min(s_regime, SCORE_CAP)) / 3.0

    w = scores.shape[1]
    n = v.rq_n
    thr = rq_quantile(scores, n, p.quantile)
    ready = (n == w) and (not is_warmup) and (not is_snapshot)
    cooldown = p.cooldown_ns
    emitted = 0
    for d in range(N_TYPES):
        if d == 0:
            alarm, direction, trig, val = drift_alarm, drift_dir, drift_trig, drift_val
        elif d == 1:
            alarm, direction, trig, val = burst_alarm, burst_dir, burst_trig, burst_val
        else:
            alarm, direction, trig, val = regime_alarm, regime_dir, 8, cp
        o = out[d]
        o.fired = 0
        o.direction = direction
        o.score = score
        o.trigger = trig
        o.value = val
        o.threshold = thr
        if alarm == 0 or is_snapshot:
            continue
        t = types[d]
        t.alarms += 1
        if not ready or score < thr:
            continue
        if t.has_last == 1 and ts_ns - t.last_ts < cooldown:
            v.suppressed_cooldown += 1
            continue
        t.has_last = 1
        t.last_ts = ts_ns
        t.signals += 1
        o.fired = 1
        emitted += 1
    if not is_snapshot:
        n, head = rq_push(scores, n, v.rq_head, score)
        v.rq_n = n
        v.rq_head = head
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

    def kernel_params(self) -> np.ndarray:
        """The parameters as the kernels read them (one DETECTOR_PARAMS record)."""
        p = np.zeros(1, dtype=DETECTOR_PARAMS)
        p["drift_threshold"] = self.drift_threshold
        p["drift_allowance"] = self.drift_allowance
        p["burst_threshold"] = self.burst_threshold
        p["regime_threshold"] = self.regime_threshold
        p["cooldown_ns"] = round(self.cooldown_seconds * 1e9)
        p["quantile"] = self.dynamic_quantile
        p["std_alpha"] = halflife_to_alpha(self.standardize_halflife)
        p["std_min_count"] = self.standardize_min_count
        return p

    def new_state(self) -> DetectorState:
        """The detector's complete, bounded state, with these parameters."""
        return DetectorState(
            cusum=np.zeros(N_CUSUM, dtype=CUSUM),
            types=np.zeros(N_TYPES, dtype=TYPE_STATE),
            vars=np.zeros(1, dtype=DETECTOR_VARS),
            scores=np.zeros((2, self.dynamic_threshold_window)),
            params=self.kernel_params(),
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
    """`Signal`s of the types that fired in `out` (DETECTION[3])."""
    sigs = []
    for d in range(N_TYPES):
        o = out[d]
        if o["fired"] != 0:
            t = SIGNAL_TYPES[d]
            sigs.append(
                Signal(
                    venue=venue,
                    symbol=symbol,
                    ts_ns=int(ts_ns),
                    update_id=int(update_id),
                    signal_id=signal_id(venue, symbol, t, update_id),
                    signal_type=t,
                    direction=int(o["direction"]),
                    score=float(o["score"]),
                    trigger=DET_INPUTS[int(o["trigger"])],
                    trigger_value=float(o["value"]),
                    threshold=float(o["threshold"]),
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
        self.state = self.config.new_state()
        self._x = np.empty(N_DET_INPUTS)
        self._out = np.zeros(N_TYPES, dtype=DETECTION)
        self._step: Any = None

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
        if self._step is None:
            from mdpipe.core.kernel import specialize  # kernel imports this module

            self._step = specialize(
                detector_step, self.state, np.int64(0), x, False, False, self._out
            )
        self._step(
            self.state, np.int64(ts), x, bool(features.get("is_warmup", False)),
            bool(features.get("is_snapshot", False)), self._out,
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
        return stats_from_state(self.state)


def stats_from_state(det: DetectorState) -> dict[str, Any]:
    v = det.vars[0]
    return {
        "events": int(v["events"]),
        "detections": {t: int(det.types[d]["signals"]) for d, t in enumerate(SIGNAL_TYPES)},
        "alarms": {t: int(det.types[d]["alarms"]) for d, t in enumerate(SIGNAL_TYPES)},
        "suppressed_by_cooldown": int(v["suppressed_cooldown"]),
        "dynamic_threshold_fill": int(v["rq_n"]),
        "dynamic_threshold_window": int(det.scores.shape[1]),
    }
