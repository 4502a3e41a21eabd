"""The sweep and the meta-model as Dagster assets: one call into `pipeline.sweep.sweep_and_learn`
(the same function as `mdpipe sweep`). Unpartitioned: a sweep spans the days it is given."""

from collections.abc import Iterator

import dagster as dg
import pydantic

from mdpipe.defs.resources import LakeResource, SettingsResource

GROUP = "research"


class SweepConfig(dg.Config):
    """grid_file: the grid TOML; market: e.g. binance:BTC-USDT (empty: the lake's only market);
    dates: UTC days (empty: all); seed / samples override the grid's [sweep] options."""

    grid_file: str
    market: str = ""
    dates: list[str] = pydantic.Field(default_factory=list)
    seed: int = -1  # -1: the grid's
    samples: int = 0  # 0: the grid's
    workers: int = 0


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "sweep",
            group_name=GROUP,
            description="derived/sweeps and sweep_summary: "
            "candidates under purged CV, PBO, DSR, holdout",
        ),
        dg.AssetSpec(
            "meta_model",
            group_name=GROUP,
            deps=["sweep"],
            description="<lake>/models/<model_id>/: meta-labelling model of the "
            "sweep's selected candidate",
        ),
    ],
    can_subset=False,
)
def sweep_and_meta_model(
    context: dg.AssetExecutionContext,
    config: SweepConfig,
    lake: LakeResource,
    features: SettingsResource,
    detectors: SettingsResource,
    backtest: SettingsResource,
) -> Iterator[dg.MaterializeResult]:
    import dataclasses

    from mdpipe.pipeline.sweep import load_grid, sweep_and_learn
    from mdpipe.settings import Settings

    grid = load_grid(config.grid_file)
    over: dict[str, int] = {}
    if config.seed >= 0:
        over["seed"] = config.seed
    if config.samples > 0:
        over["samples"] = config.samples
    if over:
        grid = dataclasses.replace(grid, options=dataclasses.replace(grid.options, **over))
    settings = Settings(features=features.get(), detectors=detectors.get(), backtest=backtest.get())
    out = sweep_and_learn(
        lake.get(), grid, settings, market=config.market or None, dates=config.dates or None,
        workers=config.workers or None,
    )  # fmt: skip
    s = out.result.summary.row(0, named=True)
    yield dg.MaterializeResult(
        asset_key="sweep",
        metadata={
            "sweep_id": out.result.sweep_id,
            "n_candidates": s["n_candidates"],
            "selected_candidate_id": s["selected_candidate_id"] or "",
            "pbo": dg.MetadataValue.float(float(s["pbo"])),
            "dsr": dg.MetadataValue.float(float(s["dsr"])),
            "report": dg.MetadataValue.path(str(out.report)),
            "seconds": dg.MetadataValue.json(
                {k: round(v, 2) for k, v in out.result.seconds.items()}
            ),
        },
    )
    yield dg.MaterializeResult(
        asset_key="meta_model",
        metadata={
            "model_id": out.model_id or "",
            "path": dg.MetadataValue.path(str(out.model_dir or "")),
            "not_trained": out.model_error or "",
        },
    )
