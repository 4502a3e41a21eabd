"""Meta-labelling models on disk: train from a candidate's signals and labels, publish the
artefact under `<lake>/models/<model_id>/` (`model.pkl` and `metadata.json`, each written
atomically, the metadata last so a reader never sees metadata without its model), load it.

The model itself is `mdpipe.core.meta`; this module only gathers its rows from the lake and
writes files.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mdpipe.core.config import BacktestConfig
from mdpipe.core.meta import META_FEATURES, MetaModel, meta_matrix, train_meta_model
from mdpipe.lake import Lake, atomic_write_bytes
from mdpipe.lake.paths import MODEL_FILE, MODEL_METADATA_FILE, model_dir, read_model_bytes
from mdpipe.pipeline.steps import Part, derived

METADATA_FILE = MODEL_METADATA_FILE


@dataclass
class TrainingRows:
    x: np.ndarray
    y: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    ret: np.ndarray
    grid_label: np.ndarray  # every grid row's label (always-in baseline)
    grid_ret: np.ndarray


def training_rows(
    lake: Lake, items: Sequence[tuple[Part, pl.DataFrame, pl.DataFrame]]
) -> TrainingRows:
    """Rows for the meta-model: each uncensored signal label with its signal's event features
    (read from the partition's `derived/features`)."""
    xs, ys, t0s, t1s, rets, gl, gr = [], [], [], [], [], [], []
    for part, signals, labels in items:
        lab = labels.filter(~pl.col("censored"))
        grid = lab.filter(pl.col("kind") == "grid")
        gl.append(grid["label"].to_numpy())
        gr.append(grid["ret"].to_numpy())
        sl = lab.filter(pl.col("kind") == "signal").select("signal_id", "label", "t_end_ns", "ret")
        sig = signals.join(sl, on="signal_id", how="inner").sort("ts_ns", "signal_id")
        if sig.height == 0:
            continue
        feats = lake.read(derived("features"), part.venue, part.symbol, part.date)
        xs.append(meta_matrix(sig, feats))
        ys.append(sig["label"].to_numpy() == 1)
        t0s.append(sig["ts_ns"].to_numpy())
        t1s.append(sig["t_end_ns"].to_numpy())
        rets.append(sig["ret"].to_numpy())

    def cat(a: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(a).astype(dtype) if a else np.zeros(0, dtype)

    return TrainingRows(
        x=np.concatenate(xs) if xs else np.zeros((0, len(META_FEATURES))),
        y=cat(ys, bool),
        t0=cat(t0s, np.int64),
        t1=cat(t1s, np.int64),
        ret=cat(rets, np.float64),
        grid_label=cat(gl, np.int64),
        grid_ret=cat(gr, np.float64),
    )


def side_by_side(rows: TrainingRows, model: MetaModel, *, seed: int = 0) -> dict[str, Any]:
    """Out-of-sample precision and mean net return per acted signal of detector-only,
    meta-labelled (act when the OOS probability >= 0.5), random (as many signals as the
    meta-model acts on, drawn with `seed`) and always-in (every grid row)."""
    idx = model.oos_index
    y, r, p = rows.y[idx], rows.ret[idx], model.oos_prob
    act = p >= 0.5
    rng = np.random.default_rng(seed)
    rnd = np.zeros(idx.size, bool)
    rnd[rng.choice(idx.size, size=int(act.sum()), replace=False)] = True

    def stats(mask: np.ndarray) -> dict[str, float]:
        n = int(mask.sum())
        return {
            "n": float(n),
            "precision": float(y[mask].mean()) if n else math.nan,
            "mean_ret": float(r[mask].mean()) if n else math.nan,
            "sum_ret": float(r[mask].sum()),
        }

    return {
        "detector": stats(np.ones(idx.size, bool)),
        "meta": stats(act),
        "random": stats(rnd),
        "always_in": {
            "n": float(rows.grid_label.size),
            "precision": float(np.mean(rows.grid_label == 1)) if rows.grid_label.size else math.nan,
            "mean_ret": float(rows.grid_ret.mean()) if rows.grid_ret.size else math.nan,
            "sum_ret": float(rows.grid_ret.sum()),
        },
    }


def _versions() -> dict[str, str]:
    import polars
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "polars": polars.__version__,
    }


def train_and_publish(
    lake: Lake,
    items: Sequence[tuple[Part, pl.DataFrame, pl.DataFrame]],
    *,
    settings_id: str,
    backtest: BacktestConfig,
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[str, Path, MetaModel, dict[str, Any]]:
    """Train a meta-model on `items` ((part, signals, labels) per partition) and publish it.
    The model id hashes everything that decides the fit, so retraining the same thing
    replaces the same folder."""
    rows = training_rows(lake, items)
    model = train_meta_model(
        rows.x, rows.y, rows.t0, rows.t1, n_folds=backtest.cv_n_folds,
        embargo_ns=backtest.embargo_ns, seed=seed,
    )  # fmt: skip
    parts = [p.label for p, _, _ in items]
    versions = _versions()
    key = json.dumps(
        [settings_id, backtest.to_dict(), parts, seed, list(META_FEATURES), versions],
        sort_keys=True,
    )
    model_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    meta: dict[str, Any] = {
        "model_id": model_id,
        "kind": "meta-label HistGradientBoostingClassifier, sigmoid-calibrated over purged CV",
        "training_partitions": parts,
        "settings_id": settings_id,
        "params": params or {},
        "backtest": backtest.to_dict(),
        "features": list(model.feature_names),
        "cv": model.cv,
        "importance_mda": model.importance,
        "side_by_side_oos": side_by_side(rows, model, seed=seed),
        "seed": seed,
        "versions": versions,
    }
    d = model_dir(lake.root, model_id)
    atomic_write_bytes(d / MODEL_FILE, model.to_bytes())
    atomic_write_bytes(
        d / METADATA_FILE, json.dumps(meta, indent=2, sort_keys=True, default=float).encode()
    )
    return model_id, d, model, meta


def load_model(lake: Lake, model_id: str) -> MetaModel:
    """The published model `model_id`; a clear error when it is not there."""
    return MetaModel.from_bytes(read_model_bytes(lake.root, model_id))


def load_metadata(lake: Lake, model_id: str) -> dict[str, Any]:
    path = model_dir(lake.root, model_id) / METADATA_FILE
    data: dict[str, Any] = json.loads(path.read_text())
    return data
