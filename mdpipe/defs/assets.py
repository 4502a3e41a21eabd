"""Assets: thin steps over `mdpipe.pipeline.steps` (which call `mdpipe.core`), one partition each.

    ticks (observed source: the lake's book / trades / gaps)
      -> features, signals (one pass: features and detectors share the event loop)
      -> labels (triple barrier) -> cv_folds (purged, embargoed) -> evaluation (metrics + report)
      -> evaluation_summary (cross-partition report, unpartitioned)

Checks are declared with `check_specs` and yielded by the step that produces the asset.
"""

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext, OpExecutionContext

from mdpipe.core.config import BacktestConfig
from mdpipe.defs.partitions import (
    MARKET_DIMENSION,
    START_DATE,
    WITH_NEXT_DAY,
    WITH_PREVIOUS_DAY,
    day_market,
    part_of,
    partition_key,
)
from mdpipe.defs.resources import LakeResource, SettingsResource
from mdpipe.lake import Lake
from mdpipe.pipeline import steps

GROUP = "pipeline"


def _quiet_beta(fn: Any) -> Any:
    """Call a Dagster API marked beta without printing its BetaWarning on every import."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            dec = fn(*args, **kwargs)

        def apply(f: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                return dec(f)

        return apply

    return call


# ---------------------------------------------------------------- metadata helpers


def md_table(df: pl.DataFrame, max_rows: int = steps.PREVIEW_ROWS, max_cols: int = 12) -> str:
    """A small Markdown preview (no pandas / tabulate needed)."""
    df = df.head(max_rows).select(df.columns[:max_cols])
    if df.width == 0:
        return "_empty_"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "---|" * df.width
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, sep, *rows])


def frame_metadata(df: pl.DataFrame, ts_col: str = "ts_ns") -> dict[str, Any]:
    span = steps.time_span(df[ts_col]) if ts_col in df.columns else steps.time_span(pl.Series([]))
    return {
        "dagster/row_count": df.height,
        "first_ts": span["first"],
        "last_ts": span["last"],
        "span_seconds": round(span["seconds"], 3),
        "preview": dg.MetadataValue.md(md_table(df)),
    }


def _clean(values: Mapping[str, Any], *, wrap: bool = True) -> dict[str, Any]:
    """NaN is not valid JSON metadata: report it as None. Nested dicts become JSON metadata
    values (`wrap=True`, for a metadata mapping) or stay plain (for inside `json(...)`)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, dict):
            inner = _clean(v, wrap=False)
            out[k] = dg.MetadataValue.json(inner) if wrap else inner
        else:
            out[k] = v
    return out


def config_metadata(cfg: BacktestConfig) -> dg.JsonMetadataValue:
    """The effective backtest settings of a materialisation (what produced this partition)."""
    return dg.MetadataValue.json(cfg.to_dict())


def check_result(asset: str, c: steps.Check) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=c.name,
        passed=bool(c.passed),
        metadata=_clean(c.metadata),
        severity=dg.AssetCheckSeverity.WARN if c.warn_only else dg.AssetCheckSeverity.ERROR,
    )


# ---------------------------------------------------------------- ticks (observed source)


def observe_ticks(
    lake: Lake, markets: set[str], known: dict[str, str] | None = None, limit: int | None = None
) -> list[tuple[dg.MultiPartitionKey, str, dict]]:
    """(partition key, data version, metadata) for raw partitions of registered markets whose
    data version differs from `known` (at most `limit` of them, oldest first), from Parquet
    footers and the gaps table only (cheap enough for a sensor over months of data)."""
    out = []
    for part in steps.raw_parts(lake):
        if part.market not in markets or part.date < START_DATE:
            continue
        key = partition_key(part.date, part.market)
        version = steps.partition_fingerprint(lake, part)
        if known is not None and known.get(str(key)) == version:
            continue
        out.append((key, version, _clean(steps.tick_summary(lake, part))))
        if limit is not None and len(out) >= limit:
            break
    return out


@_quiet_beta(dg.observable_source_asset)(
    partitions_def=day_market,
    group_name=GROUP,
    description="The lake's raw book, trades and gaps tables of a day and market. Observations "
    "carry row counts, recorded gaps, the longest silence, clock offsets and the last receive "
    "time (freshness).",
)
def ticks(context: OpExecutionContext, lake: LakeResource) -> dg.DataVersionsByPartition:
    markets = set(context.instance.get_dynamic_partitions(MARKET_DIMENSION))
    for key, version, meta in observe_ticks(lake.get(), markets):
        # one observation per partition carrying both the metadata and the data version
        # (returning the versions as well would record a second, metadata-less observation)
        context.log_event(
            dg.AssetObservation(
                asset_key="ticks",
                partition=key,
                metadata=meta,
                tags={"dagster/data_version": version},
            )
        )
    return dg.DataVersionsByPartition({})


# ---------------------------------------------------------------- features and signals

# Recorded facts about the data (gaps, clock offsets) warn; broken invariants block downstream.
WARN_CHECKS = frozenset({"sequence_gaps", "clock_offset"})
FEATURE_CHECKS = {
    "sequence_gaps": "No sequence gap recorded in the partition (WARN: gaps are recorded facts, "
    "the book is resynced after each); count and longest gap in update ids.",
    "no_crossed_book": "Best bid below best ask after every applied book event.",
    "clock_offset": f"|exchange - receive time| within {steps.MAX_CLOCK_OFFSET_S} s (WARN).",
    "rows_present": "The partition has book rows and produced feature rows; a partition with "
    "trades and no book passes with trade features only and a `missing` note.",
    "features_finite_after_warmup": "Every feature is finite after warm-up, except snapshot "
    "rows and `microprice` (NaN without a model).",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "features",
            deps=[dg.AssetDep("ticks", partition_mapping=WITH_PREVIOUS_DAY)],
            description="One row per applied book event: book shape and dynamics, trade flow, "
            "BOCPD. Warmed up on the previous day when the lake has it.",
            group_name=GROUP,
        ),
        dg.AssetSpec(
            "signals",
            deps=["features"],
            description="Detector signals (drift, burst, regime) with stable ids.",
            group_name=GROUP,
        ),
    ],
    partitions_def=day_market,
    check_specs=[
        dg.AssetCheckSpec(name, asset="features", description=d, blocking=name not in WARN_CHECKS)
        for name, d in FEATURE_CHECKS.items()
    ],
)
def features_and_signals(
    context: AssetExecutionContext,
    lake: LakeResource,
    features: SettingsResource,
    detectors: SettingsResource,
    meta: SettingsResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from mdpipe.core.config import settings_id
    from mdpipe.pipeline.models import load_model

    part = part_of(context)
    fcfg, dcfg, mcfg = features.get(), detectors.get(), meta.get()
    model = load_model(lake.get(), mcfg.model_id) if mcfg.model_id else None
    out = steps.features_step(
        lake.get(), part, feature_config=fcfg, detector_config=dcfg, meta_model=model
    )
    common: dict[str, Any] = {
        "duration_s": round(out.seconds, 3),
        "warmup_from": out.warmup_from or "none",
        # which settings produced this partition (every signal row carries the id too)
        "settings_id": settings_id(fcfg, dcfg),
        "meta_model_id": mcfg.model_id or "none",
        "config": dg.MetadataValue.json(
            {"features": dataclasses.asdict(fcfg), "detectors": dataclasses.asdict(dcfg)}
        ),
    }
    yield dg.MaterializeResult(
        asset_key="features",
        metadata={
            **frame_metadata(out.features),
            **common,
            "path": dg.MetadataValue.path(str(out.paths["features"])),
            "ticks": dg.MetadataValue.json(_clean(out.quality.as_metadata(), wrap=False)),
            **({"missing": dg.MetadataValue.text(out.missing)} if out.missing else {}),
        },
    )
    det = out.stats.get("detections", {})
    yield dg.MaterializeResult(
        asset_key="signals",
        metadata={
            **frame_metadata(out.signals),
            **common,
            "path": dg.MetadataValue.path(str(out.paths["signals"])),
            "per_type": dg.MetadataValue.json(
                dict(out.signals.group_by("signal_type").len().sort("signal_type").iter_rows())
                if out.signals.height
                else {}
            ),
            "detector_stats": dg.MetadataValue.json(
                {"detections": det, "alarms": out.stats.get("alarms", {})}
            ),
        },
    )
    for c in steps.feature_checks(out):
        yield check_result("features", c)


# ---------------------------------------------------------------- labels, folds, evaluation


@dg.asset(
    partitions_def=day_market,
    deps=["signals", dg.AssetDep("features", partition_mapping=WITH_NEXT_DAY)],
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "entry_after_signal_exit_before_end",
            asset="labels",
            blocking=True,
            description="Every uncensored label enters strictly after its signal and exits "
            "between entry and t_end_ns.",
        )
    ],
    description="Triple-barrier labels of every signal and of a regular grid (both sides); "
    "labels needing the next day read its features when materialised, else are censored.",
)
def labels(
    context: AssetExecutionContext, backtest: SettingsResource, lake: LakeResource
) -> dg.MaterializeResult:
    cfg = backtest.get()
    out = steps.labels_step(lake.get(), part_of(context), cfg)
    lab = out.labels
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(lab),
            "duration_s": round(out.seconds, 3),
            "signal_labels": lab.filter(pl.col("kind") == "signal").height,
            "grid_labels": lab.filter(pl.col("kind") == "grid").height,
            "censored": int(lab["censored"].sum()) if lab.height else 0,
            "barriers": dg.MetadataValue.json(
                dict(lab.group_by("barrier").len().sort("barrier").iter_rows())
                if lab.height
                else {}
            ),
            "next_day": out.next_day,
            "config": config_metadata(cfg),
            "path": dg.MetadataValue.path(str(out.path)),
        },
        check_results=[check_result("labels", c) for c in steps.label_checks(lab)],
    )


@dg.asset(
    partitions_def=day_market,
    deps=["labels"],
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "no_train_test_leakage",
            asset="cv_folds",
            blocking=True,
            description="No training label interval intersects a test label interval of the "
            "same fold, and no training row sits inside the embargo after a test group.",
        )
    ],
    description="Purged k-fold (or CPCV) roles per labelled row and fold, purged by label end "
    "time and embargoed.",
)
def cv_folds(
    context: AssetExecutionContext, backtest: SettingsResource, lake: LakeResource
) -> dg.MaterializeResult:
    cfg = backtest.get()
    out = steps.cv_folds_step(lake.get(), part_of(context), cfg)
    f = out.folds
    roles = dict(f.group_by("role").len().sort("role").iter_rows()) if f.height else {}
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(f),
            "duration_s": round(out.seconds, 3),
            "folds": int(f["fold"].n_unique()) if f.height else 0,
            "roles": dg.MetadataValue.json(roles),
            "method": cfg.cv_method,
            "config": config_metadata(cfg),
            "path": dg.MetadataValue.path(str(out.path)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_train_test_leakage",
                passed=not out.problems,
                metadata={
                    "problems": dg.MetadataValue.json(out.problems),
                    "rows_checked": f.height,
                    "embargo_seconds": cfg.embargo_seconds,
                },
            )
        ],
    )


@dg.asset(
    partitions_def=day_market,
    deps=["labels", "cv_folds", dg.AssetDep("features", partition_mapping=WITH_NEXT_DAY)],
    group_name=GROUP,
    description="Metrics per partition and fold (in-sample vs out-of-sample, random and "
    "always-in baselines) and a self-contained HTML report with PNGs next to it.",
)
def evaluation(
    context: AssetExecutionContext, backtest: SettingsResource, lake: LakeResource
) -> dg.MaterializeResult:
    cfg = backtest.get()
    out = steps.evaluation_step(lake.get(), part_of(context), cfg)
    meta: dict[str, Any] = {
        "dagster/row_count": out.metrics.height,
        "duration_s": round(out.seconds, 3),
        "path": dg.MetadataValue.path(str(out.path)),
        "config": config_metadata(cfg),
        **{f"headline/{k}": v for k, v in _clean(out.headline).items()},
    }
    if out.report is not None:
        meta["report"] = dg.MetadataValue.path(str(out.report))
        meta["report_url"] = dg.MetadataValue.url(out.report.as_uri())
    if "strategy" in out.metrics.columns:
        table = out.metrics.filter(pl.col("fold") == -1, pl.col("signal_type") == "all").select(
            [
                c
                for c in (
                    "sample",
                    "strategy",
                    "n_signals",
                    "precision",
                    "precision_at_10",
                    "net_pnl",
                    "sharpe",
                    "max_drawdown",
                    "roc_auc",
                )
                if c in out.metrics.columns
            ]
        )
        meta["headline_table"] = dg.MetadataValue.md(md_table(table, max_rows=10))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    deps=["evaluation"],
    group_name=GROUP,
    description="Cross-partition summary report over every materialised evaluation partition.",
)
def evaluation_summary(lake: LakeResource) -> dg.MaterializeResult:
    path, metrics = steps.summary_step(lake.get())
    parts = int(metrics["partition"].n_unique()) if "partition" in metrics.columns else 0
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(path)),
            "report_url": dg.MetadataValue.url(path.as_uri()),
            "partitions": parts,
            "dagster/row_count": metrics.height,
        }
    )


PARTITIONED_ASSETS = [features_and_signals, labels, cv_folds, evaluation]
PIPELINE_KEYS = [
    dg.AssetKey(k) for k in ("features", "signals", "labels", "cv_folds", "evaluation")
]
LABEL_STAGE_KEYS = [dg.AssetKey(k) for k in ("labels", "cv_folds", "evaluation")]
