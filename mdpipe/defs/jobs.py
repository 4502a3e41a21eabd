"""Jobs: the partitioned pipeline (multiprocess: independent steps of a run in parallel) and
the cross-partition summary."""

from __future__ import annotations

import dagster as dg

from mdpipe.defs.assets import PIPELINE_KEYS

# Two cores on the reference machine: more concurrent steps only thrash.
MAX_CONCURRENT_STEPS = 2

pipeline_job = dg.define_asset_job(
    "pipeline_job",
    selection=dg.AssetSelection.assets(*PIPELINE_KEYS),
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": MAX_CONCURRENT_STEPS}),
    description="features + signals -> labels -> cv_folds -> evaluation for one day x market.",
)

summary_job = dg.define_asset_job(
    "summary_job",
    selection=dg.AssetSelection.assets("evaluation_summary"),
    description="Rebuild the cross-partition summary report.",
)
