"""Jobs: the partitioned pipeline (multiprocess: independent steps of a run in parallel), the
same pipeline on Celery workers (when the `deploy` extra is installed), and the
cross-partition summary.

Every job tags its runs `mdpipe/job=<name>` and partitioned runs carry
`dagster/partition/market`: the keys deploy/dagster.yaml's tag concurrency limits use."""

from __future__ import annotations

import dagster as dg

from mdpipe.defs.assets import PIPELINE_KEYS

# Two cores on the reference machine: more concurrent steps only thrash.
MAX_CONCURRENT_STEPS = 2
JOB_TAG = "mdpipe/job"
# the Celery broker and result backend, read when a run starts (`execution: config:`)
CELERY_BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"

pipeline_job = dg.define_asset_job(
    "pipeline_job",
    selection=dg.AssetSelection.assets(*PIPELINE_KEYS),
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": MAX_CONCURRENT_STEPS}),
    description="features + signals -> labels -> cv_folds -> evaluation for one day x market.",
    tags={JOB_TAG: "pipeline_job"},
)

summary_job = dg.define_asset_job(
    "summary_job",
    selection=dg.AssetSelection.assets("evaluation_summary"),
    description="Rebuild the cross-partition summary report.",
    tags={JOB_TAG: "summary_job"},
)


def celery_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    """`pipeline_celery_job`: the same steps as `pipeline_job`, each sent to a Celery worker
    (`dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`). Workers need
    the code at the same absolute path and the lake at the same location (a shared disk or an
    object store). Absent without the `deploy` extra (dagster-celery)."""
    try:
        from dagster_celery import celery_executor
    except ImportError:
        return []
    return [
        dg.define_asset_job(
            "pipeline_celery_job",
            selection=dg.AssetSelection.assets(*PIPELINE_KEYS),
            executor_def=celery_executor,
            # a top-level `broker:` is silently ignored: Celery's settings go here
            config={
                "execution": {
                    "config": {
                        "broker": {"env": CELERY_BROKER_ENV},
                        "backend": {"env": CELERY_BACKEND_ENV},
                    }
                }
            },
            description="pipeline_job's steps on Celery workers (see deploy/README.md).",
            tags={JOB_TAG: "pipeline_celery_job"},
        )
    ]
