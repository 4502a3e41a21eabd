"""Schedules: yesterday's partitions every day, then the summary."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import dagster as dg

from mdpipe.defs.jobs import pipeline_job, summary_job
from mdpipe.defs.partitions import MARKET_DIMENSION, partition_key
from mdpipe.defs.resources import LakeResource
from mdpipe.pipeline import steps


def yesterday_requests(
    lake: LakeResource, markets: Sequence[str], scheduled: dt.datetime
) -> list[dg.RunRequest]:
    day = (scheduled.astimezone(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    registered = set(markets)
    out = []
    for part in steps.raw_parts(lake.get()):
        if part.date == day and part.market in registered:
            out.append(
                dg.RunRequest(
                    run_key=f"daily|{part.label}",
                    partition_key=partition_key(part.date, part.market),
                )
            )
    return out


@dg.schedule(
    job=pipeline_job,
    cron_schedule="20 0 * * *",
    execution_timezone="UTC",
    description="Materialise yesterday (UTC) for every registered market that has data for it.",
)
def daily_pipeline_schedule(
    context: dg.ScheduleEvaluationContext, lake: LakeResource
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    markets = context.instance.get_dynamic_partitions(MARKET_DIMENSION)
    requests = yesterday_requests(lake, markets, context.scheduled_execution_time)
    if not requests:
        yield dg.SkipReason("no data for yesterday in the lake")
    yield from requests


summary_schedule = dg.ScheduleDefinition(
    job=summary_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="Rebuild the cross-partition summary after the daily runs.",
)
