"""Purged k-fold / CPCV: known answers, leakage properties, threshold fitting."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpipe.core.config import BacktestConfig
from mdpipe.core.cv import (
    CV_FOLDS_SCHEMA,
    ROLE_NAMES,
    CombinatorialPurgedCV,
    PurgedKFold,
    acted,
    check_no_leakage,
    fit_threshold,
    make_cv_folds,
    overlaps_any,
)


def names(role: np.ndarray) -> list[str]:
    return [ROLE_NAMES[r] for r in role]


def test_kfold_without_overlap_is_plain_kfold() -> None:
    ts = np.arange(10) * 10
    te = ts + 5  # labels end before the next row starts
    roles = list(PurgedKFold(n_folds=5).roles(ts, te))
    assert len(roles) == 5
    assert names(roles[1]) == ["train"] * 2 + ["test"] * 2 + ["train"] * 6


def test_purging_is_by_label_end_time_not_row_count() -> None:
    ts = np.arange(10) * 10
    te = ts + 5
    te[1] = 25  # row 1's label runs into row 2 (first test row of fold 1)
    te[5] = 90  # row 5 starts after the test block: it cannot overlap, however long it is
    roles = list(PurgedKFold(n_folds=5).roles(ts, te))
    assert names(roles[1]) == ["train", "purged", "test", "test"] + ["train"] * 6
    # and a long label far before the test block is purged too (time, not adjacency)
    te2 = ts + 5
    te2[0] = 60
    roles2 = list(PurgedKFold(n_folds=5).roles(ts, te2))
    assert names(roles2[2])[0] == "purged"


def test_embargo_after_each_test_block() -> None:
    ts = np.arange(10) * 10
    te = ts + 5
    roles = list(PurgedKFold(n_folds=5, embargo_ns=12).roles(ts, te))
    # test block rows 2,3 end at 35; embargo (35, 47] removes row 4 (ts 40) only
    assert names(roles[1]) == ["train", "train", "test", "test", "embargoed"] + ["train"] * 5
    # nothing after the last block
    assert names(roles[4]) == ["train"] * 8 + ["test"] * 2


def test_split_follows_sklearn_protocol_and_maps_unsorted_rows() -> None:
    ts = np.array([50, 10, 40, 0, 30, 20])
    te = ts + 1
    splits = list(PurgedKFold(n_folds=3).split(ts, te))
    assert len(splits) == PurgedKFold(n_folds=3).get_n_splits() == 3
    train, test = splits[0]
    assert sorted(ts[test].tolist()) == [0, 10]  # earliest two rows, by time
    assert sorted(ts[train].tolist()) == [20, 30, 40, 50]


def test_cpcv_counts_and_paths() -> None:
    cv = CombinatorialPurgedCV(n_folds=6, n_test_folds=2)
    assert cv.get_n_splits() == 15
    assert cv.n_test_paths == 5
    paths = cv.path_ids()
    assert paths.shape == (15, 2)
    sets = cv._test_group_sets()
    for g in range(6):
        ids = sorted(
            paths[s, j] for s, grp in enumerate(sets) for j, gg in enumerate(grp) if gg == g
        )
        assert ids == [0, 1, 2, 3, 4]  # every group appears once on each path
    ts = np.arange(12) * 10
    roles = list(cv.roles(ts, ts + 5))
    assert names(roles[0]) == ["test"] * 4 + ["train"] * 8


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="n_folds"):
        PurgedKFold(n_folds=1)
    with pytest.raises(ValueError, match="n_test_folds"):
        CombinatorialPurgedCV(n_folds=4, n_test_folds=4)
    with pytest.raises(ValueError, match="embargo_ns"):
        PurgedKFold(embargo_ns=-1)
    with pytest.raises(ValueError, match="t_end_ns < ts_ns"):
        list(PurgedKFold(n_folds=2).roles([0, 10], [5, 5]))
    with pytest.raises(ValueError, match="at least"):
        list(PurgedKFold(n_folds=5).roles([0, 10], [1, 11]))


def test_overlaps_any_closed_intervals() -> None:
    got = overlaps_any(
        np.array([0, 10, 20, 31]),
        np.array([5, 15, 25, 40]),
        np.array([5, 26]),
        np.array([9, 30]),
    )
    assert got.tolist() == [True, False, False, False]


def labels_frame(
    ts: np.ndarray, te: np.ndarray, censored: np.ndarray | None = None
) -> pl.DataFrame:
    n = ts.size
    return pl.DataFrame(
        {
            "kind": ["signal"] * n,
            "signal_id": [f"s{i:03d}" for i in range(n)],
            "direction": np.ones(n, np.int8),
            "ts_ns": ts.astype(np.int64),
            "t_end_ns": te.astype(np.int64),
            "censored": np.zeros(n, bool) if censored is None else censored,
        }
    )


def test_make_cv_folds_table() -> None:
    ts = np.arange(12) * 10
    cens = np.zeros(12, bool)
    cens[-1] = True
    folds = make_cv_folds(labels_frame(ts, ts + 15, cens), BacktestConfig(cv_n_folds=3))
    assert folds.schema == pl.Schema(CV_FOLDS_SCHEMA)
    assert folds.height == 3 * 11  # the censored row is not cross-validated
    assert set(folds["role"].unique()) <= set(ROLE_NAMES)
    assert check_no_leakage(folds) == []
    assert folds.filter(pl.col("role") == "test")["path"].to_list() == [0] * 11
    assert folds.filter(pl.col("role") != "test")["path"].null_count() == 22
    few = make_cv_folds(labels_frame(ts[:2], ts[:2] + 1), BacktestConfig(cv_n_folds=3))
    assert few.height == 0 and few.schema == pl.Schema(CV_FOLDS_SCHEMA)


def test_check_no_leakage_finds_an_injected_leak() -> None:
    ts = np.arange(10) * 10
    folds = make_cv_folds(
        labels_frame(ts, ts + 15), BacktestConfig(cv_n_folds=5, embargo_seconds=0)
    )
    leaky = folds.with_columns(
        pl.when(pl.col("role") == "purged")
        .then(pl.lit("train"))
        .otherwise(pl.col("role"))
        .alias("role")
    )
    assert any("overlap" in p for p in check_no_leakage(leaky))
    emb = make_cv_folds(
        labels_frame(ts * 10**9, ts * 10**9 + 1), BacktestConfig(cv_n_folds=5, embargo_seconds=12)
    )
    assert check_no_leakage(emb, 12 * 10**9) == []
    leaky2 = emb.with_columns(
        pl.when(pl.col("role") == "embargoed")
        .then(pl.lit("train"))
        .otherwise(pl.col("role"))
        .alias("role")
    )
    assert any("embargo" in p for p in check_no_leakage(leaky2, 12 * 10**9))


@st.composite
def intervals(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(6, 60))
    ts = np.sort(np.asarray(draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))))
    length = np.asarray(draw(st.lists(st.integers(0, 120), min_size=n, max_size=n)))
    return ts.astype(np.int64), (ts + length).astype(np.int64)


@settings(max_examples=200, deadline=None)
@given(
    intervals(),
    st.integers(2, 6),
    st.integers(1, 3),
    st.integers(0, 80),
    st.booleans(),
)
def test_no_train_interval_overlaps_a_test_interval_and_embargo_holds(
    iv: tuple[np.ndarray, np.ndarray], n_folds: int, n_test: int, embargo: int, combinatorial: bool
) -> None:
    ts, te = iv
    if combinatorial and n_test < n_folds:
        cv: PurgedKFold | CombinatorialPurgedCV = CombinatorialPurgedCV(
            n_folds=n_folds, n_test_folds=n_test, embargo_ns=embargo
        )
    else:
        cv = PurgedKFold(n_folds=n_folds, embargo_ns=embargo)
    groups = cv.groups(ts)
    n_test_rows = 0
    for role, test_groups in zip(cv.roles(ts, te), cv._test_group_sets(), strict=True):
        train = np.flatnonzero(role == 0)
        test = np.flatnonzero(role == 1)
        n_test_rows += test.size
        assert set(np.unique(groups[test])) == set(test_groups)
        # brute force: closed intervals never intersect
        for i in train:
            assert not np.any((ts[test] <= te[i]) & (te[test] >= ts[i]))
        # no training row starts inside the embargo after a test group
        for g in test_groups:
            end = te[groups == g].max()
            assert not np.any((ts[train] > end) & (ts[train] <= end + embargo))
        # and only rows that had to go were removed
        dropped = np.flatnonzero(role >= 2)
        for i in dropped:
            overl = np.any((ts[test] <= te[i]) & (te[test] >= ts[i]))
            emb = any(
                te[groups == g].max() < ts[i] <= te[groups == g].max() + embargo
                for g in test_groups
            )
            assert overl or emb
    if isinstance(cv, PurgedKFold):
        assert n_test_rows == ts.size  # every row tested exactly once


def test_fit_threshold_pnl() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    rets = np.array([0.01, 0.02, -0.005, 0.01, -0.03, -0.01])
    labels = np.array([1, 1, -1, 1, -1, -1])
    # cumulative: .01 .03 .025 .035 .005 -.005 -> best at 0.6
    assert fit_threshold(scores, rets, labels, objective="pnl", min_signals=1) == 0.6
    # at least 5 acted signals: only 0.5 (sum .005) and 0.4 (-.005) qualify
    assert fit_threshold(scores, rets, labels, objective="pnl", min_signals=5) == 0.5
    assert fit_threshold(scores, -np.abs(rets), labels, min_signals=1) == math.inf
    assert fit_threshold(scores[:3], rets[:3], labels[:3], min_signals=5) == -math.inf


def test_fit_threshold_precision_and_ties() -> None:
    scores = np.array([0.9, 0.9, 0.7, 0.6, np.nan])
    rets = np.zeros(5)
    labels = np.array([1, -1, 1, 1, 1])
    # thresholds 0.9 (1/2), 0.7 (2/3), 0.6 (3/4): the NaN score is never a candidate
    assert fit_threshold(scores, rets, labels, objective="precision", min_signals=1) == 0.6
    labels2 = np.array([1, 1, 1, 1, 1])
    # all precisions equal 1: the lower threshold wins (more signals)
    assert fit_threshold(scores, rets, labels2, objective="precision", min_signals=1) == 0.6
    with pytest.raises(ValueError, match="objective"):
        fit_threshold(scores, rets, labels, objective="sharpe")


def test_acted() -> None:
    s = np.array([0.2, np.nan, 0.5])
    assert acted(s, 0.3).tolist() == [False, False, True]
    assert acted(s, -math.inf).tolist() == [True, True, True]
    assert acted(s, math.inf).tolist() == [False, False, False]
