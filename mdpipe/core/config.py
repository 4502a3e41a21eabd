"""Parameters of labelling, cross-validation and backtesting, in one validated structure.

`BacktestConfig` is deliberately a flat frozen dataclass of primitive fields (float, int, str) so
that the `[backtest]` settings section (`mdpipe.settings`) and the Dagster resource generated
from it (`mdpipe.defs.resources.BacktestResource`) can carry it field by field. Validation
happens in `__post_init__`, so an invalid value fails before any data is read, with a message
naming the field. `settings_id` (below) names the feature and detector settings of a signal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BARRIER_PRICES = ("mid", "trade")
THRESHOLD_OBJECTIVES = ("pnl", "precision")
CV_METHODS = ("purged_kfold", "cpcv")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"BacktestConfig.{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"BacktestConfig.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BacktestConfig:
    """Everything that decides a label, a fold, a threshold and a backtest trade.

    initial_capital   starting equity of the backtest, in quote currency.

    Costs (applied identically by the labeller and the backtester):
      fee_rate        taker fee as a fraction of notional, charged on entry and on exit.
      slippage_bps    adverse price move in basis points on each leg, on top of the touch price.
      The half spread is not a parameter: a long buys at the recorded best ask and sells at the
      recorded best bid (a short the reverse), so the spread actually quoted at entry and exit
      is paid.

    Barriers (López de Prado 2018, ch. 3), relative to the entry-event mid:
      profit_target_pct, stop_loss_pct   fractions (0.005 = 0.5 %), touched by `barrier_price`.
      max_holding_seconds               the vertical barrier.
      barrier_price   'mid' (default: book mid, robust to one-lot prints) or 'trade' (trade
                      prices; needs a trades path).

    Evaluation:
      grid_seconds            spacing of the regular grid labelled for ROC / recall / FPR.
      move_bps                lead time is also measured to the first favourable move of this size.
      position_fraction       fraction of current equity committed per backtest trade (<= 1: no
                              leverage).
      cv_method, cv_n_folds, cv_n_test_folds, embargo_seconds   the splitter (cv_n_test_folds is
                              only used by 'cpcv').
      threshold_objective     'pnl' (maximise summed net return of acted train signals) or
                              'precision' (maximise the share of acted train signals that hit the
                              profit barrier, with at least `threshold_min_signals` acted).
      threshold_min_signals   fewest acted train signals a fitted threshold may leave.
      sharpe_interval_seconds the equity curve is sampled on this grid for Sharpe; annualised with
                              sqrt(365 * 86400 / interval) because crypto spot trades 24/7.
      random_seed             seed of the random-signal baseline.
    """

    initial_capital: float = 10000.0
    fee_rate: float = 0.001
    slippage_bps: float = 5.0
    profit_target_pct: float = 0.005
    stop_loss_pct: float = 0.003
    max_holding_seconds: float = 300.0
    barrier_price: str = "mid"
    position_fraction: float = 1.0
    grid_seconds: float = 60.0
    move_bps: float = 10.0
    cv_method: str = "purged_kfold"
    cv_n_folds: int = 5
    cv_n_test_folds: int = 2
    embargo_seconds: float = 60.0
    threshold_objective: str = "pnl"
    threshold_min_signals: int = 5
    sharpe_interval_seconds: float = 60.0
    random_seed: int = 0

    def __post_init__(self) -> None:
        _positive("initial_capital", self.initial_capital)
        _positive("fee_rate", self.fee_rate, allow_zero=True)
        if self.fee_rate >= 0.5:
            raise ValueError(
                f"BacktestConfig.fee_rate is a fraction (0.001 = 10 bps), got {self.fee_rate}"
            )
        _positive("slippage_bps", self.slippage_bps, allow_zero=True)
        if self.slippage_bps >= 10_000:
            raise ValueError(
                f"BacktestConfig.slippage_bps must be < 10000, got {self.slippage_bps}"
            )
        _positive("profit_target_pct", self.profit_target_pct)
        _positive("stop_loss_pct", self.stop_loss_pct)
        if self.stop_loss_pct >= 1:
            raise ValueError(
                f"BacktestConfig.stop_loss_pct is a fraction (0.003 = 0.3 %), got {self.stop_loss_pct}"
            )
        _positive("max_holding_seconds", self.max_holding_seconds)
        if self.barrier_price not in BARRIER_PRICES:
            raise ValueError(
                f"BacktestConfig.barrier_price must be one of {BARRIER_PRICES}, got {self.barrier_price!r}"
            )
        _positive("position_fraction", self.position_fraction)
        if self.position_fraction > 1:
            raise ValueError(
                f"BacktestConfig.position_fraction must be in (0, 1] (no leverage), got {self.position_fraction}"
            )
        _positive("grid_seconds", self.grid_seconds)
        _positive("move_bps", self.move_bps)
        if self.cv_method not in CV_METHODS:
            raise ValueError(
                f"BacktestConfig.cv_method must be one of {CV_METHODS}, got {self.cv_method!r}"
            )
        for name in ("cv_n_folds", "cv_n_test_folds", "threshold_min_signals", "random_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"BacktestConfig.{name} must be an int, got {value!r}")
        if self.cv_n_folds < 2:
            raise ValueError(f"BacktestConfig.cv_n_folds must be >= 2, got {self.cv_n_folds}")
        if not 1 <= self.cv_n_test_folds < self.cv_n_folds:
            raise ValueError(
                "BacktestConfig.cv_n_test_folds must be in [1, cv_n_folds), got "
                f"{self.cv_n_test_folds} with cv_n_folds={self.cv_n_folds}"
            )
        _positive("embargo_seconds", self.embargo_seconds, allow_zero=True)
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            raise ValueError(
                f"BacktestConfig.threshold_objective must be one of {THRESHOLD_OBJECTIVES}, "
                f"got {self.threshold_objective!r}"
            )
        if self.threshold_min_signals < 1:
            raise ValueError(
                f"BacktestConfig.threshold_min_signals must be >= 1, got {self.threshold_min_signals}"
            )
        _positive("sharpe_interval_seconds", self.sharpe_interval_seconds)
        if self.random_seed < 0:
            raise ValueError(f"BacktestConfig.random_seed must be >= 0, got {self.random_seed}")

    # Derived quantities in the units the kernels use.
    @property
    def max_holding_ns(self) -> int:
        return round(self.max_holding_seconds * 1e9)

    @property
    def grid_ns(self) -> int:
        return round(self.grid_seconds * 1e9)

    @property
    def embargo_ns(self) -> int:
        return round(self.embargo_seconds * 1e9)

    @property
    def slippage(self) -> float:
        return self.slippage_bps / 10_000.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the public fields (for Dagster metadata, JSON, `from_mapping`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BacktestConfig:
        """Build from a mapping (e.g. a Dagster Config's `model_dump()`), rejecting unknown keys
        so that a typo in run config is an error instead of a silently ignored default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BacktestConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


# ---- settings_id: which feature and detector settings produced a signal ----------------------
SETTINGS_ID_LENGTH = 12


def _canonical(cfg: Any) -> dict[str, Any]:
    """A dataclass's fields as JSON-ready values, numbers normalised by the field's declared
    type, so `drift_threshold=4` and `drift_threshold=4.0` (a TOML int) hash alike."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("float", float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[f.name] = v
    return out


def settings_id(features: Any, detectors: Any, cross_venue: Any = None) -> str:
    """Short id of the effective feature and detector settings (a `FeatureConfig` and a
    `DetectorConfig`): the first 12 hex digits of sha256 over their canonical JSON. Every
    signal row carries it, so signals computed with different settings never mix unnoticed;
    backtest, alert and capture settings do not change what a detector emits and are not in it.
    With `cross_venue` (a `CrossVenueConfig`), its fields are hashed too: the id of
    `cross_venue` signals, which those settings decide; without it the id is unchanged.
    """
    import hashlib
    import json

    doc = {"detectors": _canonical(detectors), "features": _canonical(features)}
    if cross_venue is not None:
        doc["cross_venue"] = _canonical(cross_venue)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:SETTINGS_ID_LENGTH]
