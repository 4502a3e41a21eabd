"""Meta-labelling: the detectors choose the side, a classifier says whether to act.

López de Prado, *Advances in Financial Machine Learning* (2018): ch. 3 (meta-labelling: a
secondary model predicts whether the primary model's bet hits the profit barrier), ch. 4
(sample weights by average label uniqueness, because overlapping labels share information),
ch. 7 (purged, embargoed cross-validation) and ch. 8 (mean decrease accuracy: permutation
importance measured out of sample).

The model sees, at the signal's event, the features in `META_FEATURES` (directional ones
multiplied by the signal's side, so "imbalance in my favour" is one column whatever the side),
the side itself, the detector's score and the signal type. The target is `label == 1` (profit
barrier first) of uncensored signal labels. Everything here is pure: frames and arrays in,
arrays, a fitted `MetaModel` and bytes out; the artefact on disk is `mdpipe.pipeline.models`'s
job. Live and batch call the same `meta_matrix` and `MetaModel.predict` on the same feature
rows (online and batch features are bit-identical), so their probabilities agree.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from mdpipe.core.cv import PurgedKFold
from mdpipe.core.detectors.ensemble import SIGNAL_TYPES

F64Array = npt.NDArray[np.float64]

# Features signed by the signal's side (positive = in the signal's favour).
DIRECTIONAL_FEATURES: tuple[str, ...] = (
    "imbalance_5",
    "imbalance_10",
    "wmid_change_bps",
    "wmid_drift_1s_bps",
    "wmid_drift_5s_bps",
    "ofi_1s",
    "ofi_5s",
    "trade_imbalance_1s",
    "trade_imbalance_5s",
    "trade_imbalance_30s",
)
# Features with no side of their own.
UNSIGNED_FEATURES: tuple[str, ...] = (
    "spread_bps",
    "spread_compression",
    "volume_z_1s",
    "volume_z_5s",
    "volume_z_30s",
    "realized_vol_z",
    "bocpd_cp_prob",
)
META_FEATURES: tuple[str, ...] = (
    *(f"{f}_signed" for f in DIRECTIONAL_FEATURES),
    *UNSIGNED_FEATURES,
    "direction",
    "score",
    *(f"type_{t}" for t in SIGNAL_TYPES),
)


@dataclass(frozen=True, kw_only=True)
class MetaConfig:
    """Meta-labelling: which trained model scores signals (alerts filter on its probability
    with `[alerts] min_meta_prob`).

    model_id   the model under `<lake>/models/<model_id>/` that fills signals' `meta_prob`
               (batch and live); unset: no model, `meta_prob` is null.
    """

    model_id: str | None = None

    def __post_init__(self) -> None:
        if self.model_id is not None and not (
            self.model_id and all(c.isalnum() or c in "-_" for c in self.model_id)
        ):
            raise ValueError(f"model_id must be letters, digits, '-' or '_', got {self.model_id!r}")


def meta_matrix(signals: pl.DataFrame, features: pl.DataFrame) -> F64Array:
    """The model's inputs, one row per signal in `signals` order: each signal's own event row
    of `features` (matched on `update_id`, non-snapshot: signals never fire on snapshots).
    A signal whose event row is absent gets NaN features (the model handles NaN natively)."""
    n = signals.height
    if n == 0:
        return np.zeros((0, len(META_FEATURES)))
    cols = ["update_id", *DIRECTIONAL_FEATURES, *UNSIGNED_FEATURES]
    rows = features.select(cols)
    if "is_snapshot" in features.columns:
        rows = features.filter(~pl.col("is_snapshot")).select(cols)
    rows = rows.unique("update_id", keep="last", maintain_order=True)
    joined = signals.select(
        pl.int_range(pl.len()).alias("_i"), "update_id", "direction", "score", "signal_type"
    ).join(rows, on="update_id", how="left")
    joined = joined.sort("_i")
    side = joined["direction"].cast(pl.Float64).to_numpy()
    out = np.empty((n, len(META_FEATURES)))
    k = 0
    for f in DIRECTIONAL_FEATURES:
        out[:, k] = joined[f].cast(pl.Float64).fill_null(math.nan).to_numpy() * side
        k += 1
    for f in UNSIGNED_FEATURES:
        out[:, k] = joined[f].cast(pl.Float64).fill_null(math.nan).to_numpy()
        k += 1
    out[:, k] = side
    out[:, k + 1] = joined["score"].cast(pl.Float64).fill_null(math.nan).to_numpy()
    types = joined["signal_type"].to_list()
    for j, t in enumerate(SIGNAL_TYPES):
        out[:, k + 2 + j] = [1.0 if s == t else 0.0 for s in types]
    return out


def average_uniqueness(t0: npt.ArrayLike, t1: npt.ArrayLike) -> F64Array:
    """Average uniqueness of each label over its life [t0, t1] (López de Prado 2018, 4.4):
    the time-weighted mean of 1 / (number of labels alive) over the label's interval. A label
    of zero length counts the labels alive at its instant."""
    s = np.asarray(t0, dtype=np.int64)
    e = np.asarray(t1, dtype=np.int64)
    if s.shape != e.shape:
        raise ValueError("t0 and t1 must have the same length")
    if s.size == 0:
        return np.zeros(0)
    if np.any(e < s):
        raise ValueError("every label must end at or after it starts (t1 >= t0)")
    pts = np.unique(np.concatenate([s, e]))
    # concurrency on each elementary interval [pts[i], pts[i+1]) and at each point
    starts = np.searchsorted(pts, s)
    ends = np.searchsorted(pts, e)
    delta = np.zeros(pts.size + 1)
    np.add.at(delta, starts, 1.0)
    np.add.at(delta, ends, -1.0)
    alive_seg = np.cumsum(delta)[:-1]  # labels covering [pts[i], pts[i+1])
    at_point = alive_seg + np.bincount(ends, minlength=pts.size)[: pts.size]  # closed at e
    seg_len = np.diff(pts).astype(np.float64)
    inv = np.where(alive_seg[:-1] > 0, 1.0 / np.maximum(alive_seg[:-1], 1.0), 0.0) * seg_len
    cum = np.concatenate([[0.0], np.cumsum(inv)])
    out = np.empty(s.size)
    span = (e - s).astype(np.float64)
    pos = span > 0
    out[pos] = (cum[ends[pos]] - cum[starts[pos]]) / span[pos]
    out[~pos] = 1.0 / np.maximum(at_point[starts[~pos]], 1.0)
    return out


def _classifier(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # early stopping would hold out a random validation split: off, so the fit is the same
    # for the same rows and seed
    return HistGradientBoostingClassifier(
        max_iter=80,
        learning_rate=0.08,
        max_bins=63,
        max_leaf_nodes=15,
        min_samples_leaf=20,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )


@dataclass
class MetaModel:
    """A fitted, calibrated meta-labelling model and what its purged CV said about it."""

    estimator: Any  # sklearn CalibratedClassifierCV over HistGradientBoostingClassifier
    feature_names: tuple[str, ...]
    cv: dict[str, Any] = field(default_factory=dict)  # per-fold and pooled OOS scores
    importance: dict[str, float] = field(default_factory=dict)  # MDA, mean over folds
    oos_prob: F64Array = field(default_factory=lambda: np.zeros(0))  # pooled OOS predictions
    oos_index: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def predict(self, x: F64Array) -> F64Array:
        """P(profit barrier first) for each row of `meta_matrix`."""
        from threadpoolctl import threadpool_limits

        if x.shape[0] == 0:
            return np.zeros(0)
        with threadpool_limits(limits=1):
            return np.asarray(self.estimator.predict_proba(x)[:, 1], dtype=np.float64)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        pickle.dump(self, buf, protocol=pickle.HIGHEST_PROTOCOL)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> MetaModel:
        # only ever called on artefacts this project wrote under <lake>/models/
        obj = pickle.loads(data)
        if not isinstance(obj, MetaModel):
            raise ValueError(f"not a MetaModel artefact (got {type(obj).__name__})")
        return obj


def _auc(y: npt.NDArray[np.bool_], p: F64Array, w: F64Array | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, p, sample_weight=w))


def train_meta_model(
    x: F64Array,
    y: npt.ArrayLike,
    t0: npt.ArrayLike,
    t1: npt.ArrayLike,
    *,
    n_folds: int = 5,
    embargo_ns: int = 0,
    seed: int = 0,
    importance_repeats: int = 3,
    calibration: str = "sigmoid",
) -> MetaModel:
    """Fit the meta-model on rows `x` (from `meta_matrix`) with targets `y` (profit barrier
    hit) of labels living over [t0, t1].

    - sample weights: `average_uniqueness(t0, t1)`, normalised to mean 1;
    - out-of-sample scores: purged, embargoed k-fold (`mdpipe.core.cv.PurgedKFold`, the same
      splitter `mdpipe run` evaluates with): per fold a classifier fitted on the train rows
      scores the test rows (AUC, Brier, log loss), and permutation importance (MDA, weighted
      log loss) is measured on the test rows;
    - the final model: `CalibratedClassifierCV` over the same purged splits (each split's
      classifier calibrated on its own test rows; probabilities averaged), so no row ever
      calibrates a classifier it trained.
    """
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: the sweep and Dagster already run one process per core, and nested
    # thread pools on a shared 2-core box spin rather than work
    with threadpool_limits(limits=1):
        return _train(x, y, t0, t1, n_folds, embargo_ns, seed, importance_repeats, calibration)


def _train(
    x: F64Array,
    y: npt.ArrayLike,
    t0: npt.ArrayLike,
    t1: npt.ArrayLike,
    n_folds: int,
    embargo_ns: int,
    seed: int,
    importance_repeats: int,
    calibration: str,
) -> MetaModel:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import brier_score_loss, log_loss

    yy = np.asarray(y).astype(bool)
    if x.shape[0] != yy.size:
        raise ValueError(f"x has {x.shape[0]} rows but y has {yy.size}")
    if yy.size < 2 * n_folds or yy.all() or not yy.any():
        raise ValueError(
            f"meta-model needs both outcomes and at least {2 * n_folds} labelled signals, got "
            f"{yy.size} with {int(yy.sum())} profit-barrier hits"
        )
    w = average_uniqueness(t0, t1)
    w = w / w.mean()
    splitter = PurgedKFold(n_folds=n_folds, embargo_ns=embargo_ns)
    splits = [
        (tr, te)
        for tr, te in splitter.split(t0, t1)
        if tr.size and te.size and yy[tr].any() and not yy[tr].all()
    ]
    if not splits:
        raise ValueError("no purged fold has both outcomes in its train rows")
    oos = np.full(yy.size, math.nan)
    folds: list[dict[str, float]] = []
    imp = np.zeros(x.shape[1])
    for k, (tr, te) in enumerate(splits):
        clf = _classifier(seed).fit(x[tr], yy[tr], sample_weight=w[tr])
        p = clf.predict_proba(x[te])[:, 1]
        oos[te] = p
        folds.append(
            {
                "fold": float(k),
                "n_train": float(tr.size),
                "n_test": float(te.size),
                "auc": _auc(yy[te], p),
                "brier": float(brier_score_loss(yy[te], p)),
            }
        )
        if importance_repeats > 0 and yy[te].any() and not yy[te].all():
            r = permutation_importance(
                clf,
                x[te],
                yy[te],
                scoring="neg_log_loss",
                n_repeats=importance_repeats,
                random_state=seed,
                sample_weight=w[te],
            )
            imp += r.importances_mean / len(splits)
    done = ~np.isnan(oos)
    final = CalibratedClassifierCV(_classifier(seed), method=calibration, cv=splits, ensemble=True)
    final.fit(x, yy, sample_weight=w)
    cv = {
        "folds": folds,
        "oos_auc": _auc(yy[done], oos[done]),
        "oos_auc_weighted": _auc(yy[done], oos[done], w[done]),
        "oos_brier": float(brier_score_loss(yy[done], oos[done])),
        "oos_log_loss": float(log_loss(yy[done], np.clip(oos[done], 1e-6, 1 - 1e-6))),
        "n_rows": int(yy.size),
        "n_positive": int(yy.sum()),
        "base_rate": float(yy.mean()),
        "n_folds": n_folds,
        "embargo_ns": int(embargo_ns),
        "calibration": calibration,
    }
    return MetaModel(
        estimator=final,
        feature_names=META_FEATURES
        if x.shape[1] == len(META_FEATURES)
        else tuple(f"x{i}" for i in range(x.shape[1])),
        cv=cv,
        importance={n: float(v) for n, v in zip(META_FEATURES, imp, strict=False)},
        oos_prob=oos[done],
        oos_index=np.flatnonzero(done),
    )


def with_meta_prob(
    signals: pl.DataFrame, features: pl.DataFrame, model: MetaModel | None
) -> pl.DataFrame:
    """`signals` with `meta_prob` filled by `model` from their event rows in `features`
    (null when there is no model)."""
    if model is None or signals.height == 0:
        return signals.with_columns(pl.lit(None, dtype=pl.Float64).alias("meta_prob"))
    p = model.predict(meta_matrix(signals, features))
    return signals.with_columns(pl.Series("meta_prob", p, dtype=pl.Float64))


__all__ = [
    "META_FEATURES",
    "MetaConfig",
    "MetaModel",
    "average_uniqueness",
    "meta_matrix",
    "train_meta_model",
    "with_meta_prob",
]
