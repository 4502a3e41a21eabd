"""Resources, bound once in `mdpipe.defs.build_defs`: the lake, and the backtest settings.

`BacktestResource` is the one place the backtest parameters live in Dagster: `labels`,
`cv_folds` and `evaluation` all take it, so a value set once (launchpad, `--config-json`,
`mdpipe run --set`) reaches all three, as run config

    resources:
      backtest:
        config:
          fee_rate: 0.0004
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from mdpipe.core.config import BacktestConfig
from mdpipe.lake import Lake


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake the assets read and write.

    `path` empty means `$MDPIPE_LAKE`, else `./lake` (the same rule as `mdpipe --lake`), resolved
    when a step runs, never at import, so one code location serves whichever lake the process
    is pointed at.
    """

    path: str = ""

    def get(self) -> Lake:
        return Lake.resolve(self.path or None)


_DEFAULTS = BacktestConfig()


class BacktestResource(dg.ConfigurableResource):
    """The backtest settings (`mdpipe.core.config.BacktestConfig`: costs, barriers, CV,
    thresholds) shared by labels, cv_folds and evaluation. Set them once per run, under
    `resources: backtest: config:`.

    Field for field the core's `BacktestConfig` (same names, same defaults; checked at import);
    validation stays in the core (`BacktestConfig.__post_init__`) and runs when the resource is
    initialised, so a bad value fails the run before any data is read, with the core's message.
    """

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

    def get(self) -> BacktestConfig:
        """The validated core config (raises the core's ValueError on a bad value)."""
        return BacktestConfig.from_mapping({k: getattr(self, k) for k in type(self).model_fields})

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.get()


def _check_mirror() -> None:
    core = {f.name for f in dataclasses.fields(BacktestConfig)}
    ours = set(BacktestResource.model_fields)
    if core != ours:
        raise RuntimeError(
            f"BacktestResource is out of step with BacktestConfig: missing {sorted(core - ours)}, "
            f"extra {sorted(ours - core)}"
        )


_check_mirror()
