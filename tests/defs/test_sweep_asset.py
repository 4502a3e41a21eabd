"""The `sweep` and `meta_model` assets: one call into `pipeline.sweep.sweep_and_learn`,
materialised in process on a small synthetic lake, writing the same tables as `mdpipe sweep`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mdpipe.defs.resources import LakeResource, pipeline_resources
from mdpipe.defs.sweep import sweep_and_meta_model
from mdpipe.lake import Lake
from mdpipe.settings import load_settings
from tests.pipeline.synthetic import BASE_SETS, MARKET, write_market


def test_sweep_asset_materialises_tables_and_a_model(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write_market(lake, edge=True, days=2, minutes=10, seed=4)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "[sweep]\ncscv_blocks = 4\nbar_seconds = 60\n[detectors]\ndrift_threshold = [2.0, 3.0]\n"
    )
    settings = load_settings(None, BASE_SETS, environ={}, cwd=tmp_path)
    res = dg.materialize(
        [sweep_and_meta_model],
        resources={"lake": LakeResource(path=str(lake.root)), **pipeline_resources(settings)},
        run_config={
            "ops": {
                "sweep_and_meta_model": {
                    "config": {"grid_file": str(grid), "market": MARKET, "workers": 1}
                }
            },
            **settings.run_config(),
        },
    )
    assert res.success
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in res.get_asset_materialization_events()
        for m in [m.materialization]
    }
    assert set(mats) == {"sweep", "meta_model"}
    sweep_id = mats["sweep"]["sweep_id"].value
    assert lake.read("derived/sweep_summary")["sweep_id"].to_list() == [sweep_id]
    assert mats["sweep"]["n_candidates"].value == 2
