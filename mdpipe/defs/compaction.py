"""The compaction job: roll-ups of captured files per day x market, one worker per partition.

Runs carry the tag ``mdpipe/compaction_partition=<date>|<market>``; a shared deployment's
``QueuedRunCoordinator`` limits it to one run per value::

    run_coordinator:
      module: dagster.core.run_coordinator
      class: QueuedRunCoordinator
      config:
        tag_concurrency_limits:
          - key: mdpipe/compaction_partition
            value: {applyLimitPerUniqueValue: true}
            limit: 1

so exactly one worker compacts a partition, whatever launched the runs (the hourly schedule, a
backfill, the UI). The op body is one call into :mod:`mdpipe.pipeline.compaction`.
"""

import dagster as dg
from dagster import OpExecutionContext

from mdpipe.defs.partitions import day_market, part_of
from mdpipe.defs.resources import LakeResource
from mdpipe.pipeline.compaction import compact_partition

COMPACTION_TAG = "mdpipe/compaction_partition"


@dg.op(
    description="Roll up the captured files of one day x market (every table, the online "
    "engine's live/signals files included)."
)
def compact_op(context: OpExecutionContext, lake: LakeResource) -> dg.Output[None]:
    part = part_of(context)
    stats = compact_partition(lake.get(), part.venue, part.symbol, part.date)
    context.log.info(f"compaction {part.label}: {stats.metadata()}")
    return dg.Output(None, metadata=stats.metadata())


def _tags(partition_key: str) -> dict[str, str]:
    return {COMPACTION_TAG: partition_key, "mdpipe/job": "compaction"}


@dg.job(
    partitions_def=day_market,
    tags={"mdpipe/job": "compaction"},
    description="Roll-ups of captured files for one day x market (one run per partition at a "
    f"time: tag {COMPACTION_TAG}).",
)
def compaction_job() -> None:
    compact_op()


def compaction_run_request(date: str, market: str) -> dg.RunRequest:
    """A run of the job for one partition, tagged for the per-partition concurrency limit."""
    key = f"{date}|{market}"
    return dg.RunRequest(partition_key=key, tags=_tags(key))


@dg.schedule(
    job=compaction_job,
    cron_schedule="5 * * * *",
    description="Every hour: compact today's partitions of every known market.",
)
def compaction_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    markets = context.instance.get_dynamic_partitions("market")
    return [compaction_run_request(day, m) for m in markets]


__all__ = [
    "COMPACTION_TAG",
    "compaction_job",
    "compaction_run_request",
    "compaction_schedule",
]
