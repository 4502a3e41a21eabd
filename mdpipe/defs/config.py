"""Run config: `BacktestConfig` as a Dagster `Config`, editable in the launchpad.

Field for field the core's `BacktestConfig` (same names, same defaults); validation stays in the
core (`BacktestConfig.__post_init__`), so a bad launchpad value fails with the core's message.
The labels, cv_folds and evaluation assets each take this config: set the same values on all
three (`mdpipe run --set name=value` does that for you).
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from mdpipe.core.config import BacktestConfig

_DEFAULTS = BacktestConfig()


class BacktestRunConfig(dg.Config):
    initial_capital: float = _DEFAULTS.initial_capital
    fee_rate: float = _DEFAULTS.fee_rate
    slippage_bps: float = _DEFAULTS.slippage_bps
    profit_target_pct: float = _DEFAULTS.profit_target_pct
    stop_loss_pct: float = _DEFAULTS.stop_loss_pct
    max_holding_seconds: float = _DEFAULTS.max_holding_seconds
    barrier_price: str = _DEFAULTS.barrier_price
    position_fraction: float = _DEFAULTS.position_fraction
    grid_seconds: float = _DEFAULTS.grid_seconds
    move_bps: float = _DEFAULTS.move_bps
    cv_method: str = _DEFAULTS.cv_method
    cv_n_folds: int = _DEFAULTS.cv_n_folds
    cv_n_test_folds: int = _DEFAULTS.cv_n_test_folds
    embargo_seconds: float = _DEFAULTS.embargo_seconds
    threshold_objective: str = _DEFAULTS.threshold_objective
    threshold_min_signals: int = _DEFAULTS.threshold_min_signals
    sharpe_interval_seconds: float = _DEFAULTS.sharpe_interval_seconds
    random_seed: int = _DEFAULTS.random_seed

    def to_core(self) -> BacktestConfig:
        return BacktestConfig.from_mapping(self.model_dump())


def _check_mirror() -> None:
    core = {f.name for f in dataclasses.fields(BacktestConfig)}
    ours = set(BacktestRunConfig.model_fields)
    if core != ours:
        raise RuntimeError(
            f"BacktestRunConfig is out of step with BacktestConfig: missing {sorted(core - ours)}, "
            f"extra {sorted(ours - core)}"
        )


_check_mirror()
