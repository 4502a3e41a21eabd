"""Meta-labelling core: uniqueness weights (known answers), the model finds a planted edge and
does not find one in noise, and the feature rows come from the signal's own event."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mdpipe.core.meta import (
    META_FEATURES,
    MetaConfig,
    MetaModel,
    average_uniqueness,
    meta_matrix,
    train_meta_model,
)


def test_average_uniqueness_known_answers() -> None:
    # [0,10] alone for 5 then shared with [5,15] for 5: (5*1 + 5*0.5)/10 = 0.75
    u = average_uniqueness([0, 5, 20], [10, 15, 30])
    assert u == pytest.approx([0.75, 0.75, 1.0])
    # three identical labels: 1/3 each
    assert average_uniqueness([0, 0, 0], [9, 9, 9]) == pytest.approx([1 / 3] * 3)
    # a zero-length label at an instant two others cover
    assert average_uniqueness([0, 0, 5], [10, 10, 5]) == pytest.approx([1 / 2, 1 / 2, 1 / 3])
    with pytest.raises(ValueError, match="t1 >= t0"):
        average_uniqueness([5], [4])


def _signals(n: int, rng: np.random.Generator) -> tuple[pl.DataFrame, pl.DataFrame]:
    uid = np.arange(n, dtype=np.int64) * 3 + 1
    feats = {"update_id": uid, "is_snapshot": np.zeros(n, bool)}
    from mdpipe.core.meta import DIRECTIONAL_FEATURES, UNSIGNED_FEATURES

    for f in (*DIRECTIONAL_FEATURES, *UNSIGNED_FEATURES):
        feats[f] = rng.normal(size=n)
    sig = pl.DataFrame(
        {
            "update_id": uid,
            "direction": rng.choice([-1, 1], n).astype(np.int8),
            "score": rng.random(n),
            "signal_type": rng.choice(["drift", "burst", "regime"], n),
        }
    )
    return sig, pl.DataFrame(feats)


def test_meta_matrix_signs_directional_features_by_side() -> None:
    sig, feats = _signals(10, np.random.default_rng(0))
    x = meta_matrix(sig, feats)
    assert x.shape == (10, len(META_FEATURES))
    i = META_FEATURES.index("imbalance_5_signed")
    expect = feats["imbalance_5"].to_numpy() * sig["direction"].to_numpy()
    assert np.array_equal(x[:, i], expect)
    # a signal whose event row is missing gets NaN features, not another row's
    x2 = meta_matrix(sig, feats.slice(1))
    assert np.isnan(x2[0, i]) and np.array_equal(x2[1:, i], expect[1:])


@pytest.mark.parametrize("edge", [True, False])
def test_model_finds_a_planted_edge_and_nothing_in_noise(edge: bool) -> None:
    rng = np.random.default_rng(5)
    n = 600
    sig, feats = _signals(n, rng)
    x = meta_matrix(sig, feats)
    i = META_FEATURES.index("trade_imbalance_5s_signed")
    logit = 2.0 * x[:, i] if edge else np.zeros(n)
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    t0 = np.arange(n, dtype=np.int64) * 1_000_000_000
    t1 = t0 + 3_000_000_000  # overlapping labels
    m = train_meta_model(x, y, t0, t1, n_folds=3, embargo_ns=1_000_000_000, seed=1,
                         importance_repeats=1)  # fmt: skip
    auc = m.cv["oos_auc"]
    if edge:
        assert auc > 0.75
        assert max(m.importance, key=lambda k: m.importance[k]) == "trade_imbalance_5s_signed"
    else:
        assert 0.4 < auc < 0.6
    p = m.predict(x[:50])
    assert np.all((p >= 0) & (p <= 1))
    again = MetaModel.from_bytes(m.to_bytes())
    assert np.array_equal(again.predict(x[:50]), p)


def test_meta_config_validates() -> None:
    with pytest.raises(ValueError, match="model_id"):
        MetaConfig(model_id="../etc")
