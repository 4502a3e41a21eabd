"""Sensors: register new markets, report tick observations, re-label when the next day lands.

Both are cursor-driven and cheap: they list lake files (no Parquet decoding except the small
tick-quality read of partitions whose files changed), and the work happens in runs.
"""

from __future__ import annotations

import json

import dagster as dg

from mdpipe.defs.assets import LABEL_STAGE_KEYS, observe_ticks
from mdpipe.defs.jobs import pipeline_job
from mdpipe.defs.partitions import MARKET_DIMENSION, market_partitions, partition_key
from mdpipe.defs.resources import LakeResource
from mdpipe.lake import Lake, market_key
from mdpipe.pipeline import steps

# Observations per tick: a first scan of a large lake catches up over a few ticks.
MAX_OBSERVATIONS = 500


def new_markets(lake: Lake, registered: set[str]) -> list[str]:
    return sorted({market_key(v, s) for v, s in lake.markets()} - registered)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every market found in the lake to the `market` partitions and reports "
    "an observation of `ticks` for each day x market whose raw files changed.",
)
def market_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    lk = lake.get()
    registered = set(context.instance.get_dynamic_partitions(MARKET_DIMENSION))
    added = new_markets(lk, registered)
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    events = []
    # Observations only for markets registered before this tick: a partition must exist before
    # events are recorded against it; new markets are observed on the next tick.
    for key, version, meta in observe_ticks(lk, registered, seen, limit=MAX_OBSERVATIONS):
        k = str(key)
        seen[k] = version
        events.append(
            dg.AssetObservation(
                asset_key="ticks",
                partition=k,
                metadata=meta,
                tags={"dagster/data_version": version},
            )
        )
    return dg.SensorResult(
        dynamic_partitions_requests=([market_partitions.build_add_request(added)] if added else []),
        asset_events=events,
        cursor=json.dumps(seen, sort_keys=True),
    )


@dg.sensor(
    job=pipeline_job,
    minimum_interval_seconds=300,
    description="When day D+1's features are materialised after day D's labels, re-run D's "
    "labels, cv_folds and evaluation so labels that were censored at the day end get their "
    "real outcome, with the backtest settings D's labels were last materialised with.",
)
def relabel_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    lk = lake.get()
    cursor = int(context.cursor) if context.cursor else 0
    newest = cursor
    requests = []
    registered = set(context.instance.get_dynamic_partitions(MARKET_DIMENSION))
    for f in lk.files(steps.derived("features")):
        mtime = f.stat().st_mtime_ns
        if mtime <= cursor:
            continue
        newest = max(newest, mtime)
        seg = dict(s.split("=", 1) for s in f.parent.relative_to(lk.root).parts[2:])
        nxt = steps.Part.from_keys(seg["date"], f"{seg['venue']}:{seg['symbol']}")
        prev = nxt.shifted(-1)
        lab = lk.files(steps.derived("labels"), prev.venue, prev.symbol, prev.date)
        if prev.market not in registered or not lab or lab[0].stat().st_mtime_ns >= mtime:
            continue
        pk = partition_key(prev.date, prev.market)
        settings = last_backtest_settings(context.instance, pk)
        requests.append(
            dg.RunRequest(
                run_key=f"relabel|{prev.label}|{mtime}",
                partition_key=pk,
                asset_selection=LABEL_STAGE_KEYS,
                run_config=(
                    {"resources": {"backtest": {"config": settings}}} if settings else None
                ),
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=str(newest))


def last_backtest_settings(instance: dg.DagsterInstance, pk: dg.MultiPartitionKey) -> dict | None:
    """The backtest settings of the partition's latest `labels` materialisation (its `config`
    metadata), so a re-label keeps what the user chose for it; None when there is none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("labels"), asset_partitions=[str(pk)]),
        limit=1,
    ).records
    mat = records[0].asset_materialization if records else None
    meta = mat.metadata.get("config") if mat is not None else None
    return dict(meta.value) if isinstance(meta, dg.JsonMetadataValue) and meta.value else None
