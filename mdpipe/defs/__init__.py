"""Dagster glue: partitions, resources, assets, checks, jobs, schedules, sensors.

`build_defs()` assembles the code location; `mdpipe.definitions` only calls it. When the alerts
package is present (`mdpipe/defs/alerts.py` exposing `build_alert_defs`), its definitions are
merged, with the same settings (`[alerts]`).

Three ways to materialise (all write the same lake partitions, idempotently):

    mdpipe run [--lake DIR] [--market binance:BTC-USDT] [--date 2024-08-08] [--config mdpipe.toml]
    mdpipe demo                      # import the bundled recording, then `mdpipe run`
    dagster dev                      # UI; or from the shell, once the markets are registered:
    dagster asset materialize -m mdpipe.definitions --select features,signals \
        --partition "2024-08-08|binance:BTC-USDT"

Partitions are day x market ("2024-08-08|binance:BTC-USDT"); the `market` dimension is
dynamic. A market becomes a partition (a) when `market_sensor` (running by default under
`dagster dev` / the daemon) sees it in the lake, within a minute of `mdpipe import` or a
capture writing it, or (b) when `mdpipe run` / `mdpipe demo` start, which register the lake's
markets in the instance they use: the persistent one in `$DAGSTER_HOME`, else `./.dagster_home`
(`mdpipe.instance`), which `mdpipe dev` serves, so the UI sees them and the runs.
`mdpipe import` itself never imports Dagster (the lake is the only interface).

The lake is `LakeResource(path=...)`: empty means `$MDPIPE_LAKE`, else `./lake`, resolved when a
step runs. The settings (`mdpipe.settings`) are one resource per section, generated from the
model and configured at launch: `features` and `detectors` (the features/signals step),
`backtest` (labels, cv_folds and evaluation), so a value set once in the launchpad, with
`mdpipe run --config F` or `--set section.key=value` reaches every asset that uses it:

    dagster asset materialize -m mdpipe.definitions --select labels,cv_folds,evaluation \
        --partition "2024-08-08|binance:BTC-USDT" \
        --config-json '{"resources": {"backtest": {"config": {"fee_rate": 0.0004}}}}'
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from mdpipe.settings import Settings

# Dagster 1.13 copies sensor definitions with an explicit `owners=None` when it binds resources,
# which trips its own beta warning on every load of the code location, in every step process.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)


def core_defs(lake_path: str = "", settings: Settings | None = None) -> dg.Definitions:
    from mdpipe.defs.assets import PARTITIONED_ASSETS, evaluation_summary, ticks
    from mdpipe.defs.compaction import compaction_job, compaction_schedule
    from mdpipe.defs.crossvenue import cross_venue, cross_venue_job
    from mdpipe.defs.jobs import celery_jobs, pipeline_job, summary_job
    from mdpipe.defs.resources import LakeResource, pipeline_resources
    from mdpipe.defs.schedules import daily_pipeline_schedule, summary_schedule
    from mdpipe.defs.sensors import market_sensor, relabel_sensor
    from mdpipe.defs.sweep import sweep_and_meta_model

    return dg.Definitions(
        assets=[ticks, *PARTITIONED_ASSETS, evaluation_summary, cross_venue, sweep_and_meta_model],
        jobs=[pipeline_job, summary_job, cross_venue_job, compaction_job, *celery_jobs()],
        schedules=[daily_pipeline_schedule, summary_schedule, compaction_schedule],
        sensors=[market_sensor, relabel_sensor],
        # `features`, `detectors`, `backtest`: defaults are the discovered settings file's (or
        # the core's); every field can be set per run (launchpad, run config)
        resources={"lake": LakeResource(path=lake_path), **pipeline_resources(settings)},
    )


def build_defs(lake_path: str = "", settings: Settings | None = None) -> dg.Definitions:
    """The code location. `lake_path` empty: `$MDPIPE_LAKE`, else `./lake`, resolved at run
    time (see `LakeResource`). `settings` None: the settings file found the usual way
    (`$MDPIPE_CONFIG`, else `./mdpipe.toml`; none: the defaults) gives the resource defaults,
    so scheduled runs use the same values as `mdpipe capture`."""
    if settings is None:
        from mdpipe.settings import load_settings

        settings = load_settings()
    defs = core_defs(lake_path, settings)
    from mdpipe.defs.alerts import build_alert_defs

    return dg.Definitions.merge(defs, build_alert_defs(settings=settings))
