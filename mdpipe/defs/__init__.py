"""Dagster glue: partitions, resources, assets, checks, jobs, schedules, sensors.

`build_defs()` assembles the code location; `mdpipe.definitions` only calls it. When the alerts
package is present (`mdpipe/defs/alerts.py` exposing `alert_defs`), its definitions are merged.
"""

from __future__ import annotations

import importlib
import warnings

import dagster as dg

# Dagster 1.13 copies sensor definitions with an explicit `owners=None` when it binds resources,
# which trips its own beta warning on every load of the code location, in every step process.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)


def core_defs(lake_path: str = "") -> dg.Definitions:
    from mdpipe.defs.assets import PARTITIONED_ASSETS, evaluation_summary, ticks
    from mdpipe.defs.jobs import pipeline_job, summary_job
    from mdpipe.defs.resources import LakeResource
    from mdpipe.defs.schedules import daily_pipeline_schedule, summary_schedule
    from mdpipe.defs.sensors import market_sensor, relabel_sensor

    return dg.Definitions(
        assets=[ticks, *PARTITIONED_ASSETS, evaluation_summary],
        jobs=[pipeline_job, summary_job],
        schedules=[daily_pipeline_schedule, summary_schedule],
        sensors=[market_sensor, relabel_sensor],
        resources={"lake": LakeResource(path=lake_path)},
    )


def build_defs(lake_path: str = "") -> dg.Definitions:
    """The code location. `lake_path` empty: `$MDPIPE_LAKE`, else `./lake`, resolved at run
    time (see `LakeResource`)."""
    defs = core_defs(lake_path)
    try:
        alerts = importlib.import_module("mdpipe.defs.alerts")
    except ModuleNotFoundError as e:
        if e.name != "mdpipe.defs.alerts":
            raise
        return defs
    return dg.Definitions.merge(defs, alerts.alert_defs)
