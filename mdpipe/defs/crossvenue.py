"""Cross-venue assets, partitioned by day x underlying ("2024-08-08|ETH"): `basis`, `lead_lag`
and `cross_venue_signals`, one step over `mdpipe.pipeline.crossvenue.crossvenue_step`.

They read the `features` of every market listing the underlying that day (a many-to-one
dependency Dagster's partition mappings cannot state between day x market and day x
underlying, so it is not drawn as an edge: `mdpipe run` orders the stages, features first,
cross-venue next, labels after). The `underlying` dimension is dynamic: `mdpipe run`
registers the lake's underlyings.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from mdpipe.defs.resources import LakeResource, SettingsResource
from mdpipe.pipeline.crossvenue import CrossPart, crossvenue_step

UNDERLYING_DIMENSION = "underlying"
GROUP = "cross_venue"

underlying_partitions = dg.DynamicPartitionsDefinition(name=UNDERLYING_DIMENSION)


def _day_underlying() -> dg.MultiPartitionsDefinition:
    from mdpipe.defs.partitions import DATE_DIMENSION, daily_partitions

    return dg.MultiPartitionsDefinition(
        {DATE_DIMENSION: daily_partitions, UNDERLYING_DIMENSION: underlying_partitions}
    )


day_underlying = _day_underlying()


def cross_part_of(context: dg.AssetExecutionContext) -> CrossPart:
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        key = day_underlying.get_partition_key_from_str(str(key))
    dims = key.keys_by_dimension
    return CrossPart(dims["date"], dims[UNDERLYING_DIMENSION])


@dg.multi_asset(
    specs=[
        dg.AssetSpec("basis", group_name=GROUP, description="Basis of every pair of markets "
                     "listing the underlying on a fixed exchange-time grid, with its rolling "
                     "z-score; a report next to it."),
        dg.AssetSpec("lead_lag", group_name=GROUP, description="Hayashi-Yoshida lead-lag "
                     "curve per pair with the shuffled-time null band, Huth-Abergel ratio."),
        dg.AssetSpec("cross_venue_signals", group_name=GROUP, description="cross_venue "
                     "signals (basis dislocation, leader moved / follower not) per follower "
                     "market, labelled with its other signals."),
    ],
    partitions_def=day_underlying,
)  # fmt: skip
def cross_venue(
    context: AssetExecutionContext,
    lake: LakeResource,
    features: SettingsResource,
    detectors: SettingsResource,
    cross_venue: SettingsResource,
) -> Iterator[dg.MaterializeResult]:
    from mdpipe.core.config import settings_id

    cfg = cross_venue.get()
    sid = settings_id(features.get(), detectors.get(), cfg)
    out = crossvenue_step(lake.get(), cross_part_of(context), cfg, settings_id=sid)
    common: dict[str, Any] = {"duration_s": round(out.seconds, 3), "settings_id": sid}
    yield dg.MaterializeResult(
        asset_key="basis",
        metadata={
            **common,
            "dagster/row_count": out.basis.height,
            "path": dg.MetadataValue.path(str(out.paths["basis"])),
            "report": dg.MetadataValue.path(str(out.report)),
            "venues": dg.MetadataValue.json(out.venues.to_dicts()),
        },
    )
    yield dg.MaterializeResult(
        asset_key="lead_lag",
        metadata={
            **common,
            "dagster/row_count": out.lead_lag.height,
            "pairs": dg.MetadataValue.json(out.pairs),
        },
    )
    yield dg.MaterializeResult(
        asset_key="cross_venue_signals",
        metadata={**common, "dagster/row_count": out.signals.height},
    )


cross_venue_job = dg.define_asset_job(
    "cross_venue_job",
    selection=dg.AssetSelection.assets("basis", "lead_lag", "cross_venue_signals"),
    description="basis, lead_lag and cross_venue_signals of one day x underlying.",
)
