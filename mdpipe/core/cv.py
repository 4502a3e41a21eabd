"""Purged k-fold with embargo and combinatorial purged cross-validation (CPCV).

After López de Prado (2018, ch. 7 and 12) and skfolio's `CombinatorialPurgedCV`. Rows are
labelled events with an information interval `[ts_ns, t_end_ns]` (the signal time and the time
its label was decided). Rows are ordered by `ts_ns` and cut into `n_folds` contiguous groups of
(nearly) equal row count. For each split some groups are the test set and then, by **time**,
never by row count:

- **purged**: a non-test row whose closed interval `[ts_ns, t_end_ns]` intersects the closed
  interval of any test row (its label saw prices the test period also sees, or vice versa);
- **embargoed**: a non-test, non-purged row with `ts_ns` in `(end, end + embargo_ns]` where `end`
  is the largest `t_end_ns` of a test group: features computed right after a test period are
  serially correlated with it, so they are kept out of training as well;
- **train**: everything else.

`split()` follows scikit-learn's protocol (yields `(train_idx, test_idx)` index arrays into the
caller's row order); `roles()` gives the full role per row, used for the `cv_folds` table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import polars as pl

from mdpipe.core.config import BacktestConfig

ROLE_NAMES = ("train", "test", "purged", "embargoed")
ROLE_TRAIN, ROLE_TEST, ROLE_PURGED, ROLE_EMBARGOED = 0, 1, 2, 3

CV_FOLDS_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int32(),
    "role": pl.String(),
    "ts_ns": pl.Int64(),
    "t_end_ns": pl.Int64(),
    "signal_id": pl.String(),
    "kind": pl.String(),
    "direction": pl.Int8(),
    "group": pl.Int32(),
    "path": pl.Int32(),
}

I64Array = npt.NDArray[np.int64]


def _check_intervals(ts_ns: npt.ArrayLike, t_end_ns: npt.ArrayLike) -> tuple[I64Array, I64Array]:
    ts = np.asarray(ts_ns, dtype=np.int64)
    te = np.asarray(t_end_ns, dtype=np.int64)
    if ts.ndim != 1 or ts.shape != te.shape:
        raise ValueError("ts_ns and t_end_ns must be 1-d arrays of the same length")
    if np.any(te < ts):
        bad = int(np.argmax(te < ts))
        raise ValueError(f"t_end_ns < ts_ns at row {bad}: labels must end after they start")
    return ts, te


def overlaps_any(
    start: I64Array, end: I64Array, other_start: I64Array, other_end: I64Array
) -> npt.NDArray[np.bool_]:
    """For each closed interval `[start, end]`, whether it intersects any closed interval of
    the other set (vectorised: merge the other set, then one searchsorted)."""
    if other_start.size == 0:
        return np.zeros(start.shape, bool)
    order = np.argsort(other_start, kind="stable")
    s = other_start[order]
    e = np.maximum.accumulate(other_end[order])
    # Merged interval k covers [s[first of run], e[last of run]]; because `e` is a running max,
    # the last interval starting at or before `end` carries the furthest reach so far.
    k = np.searchsorted(s, end, side="right") - 1
    ok = k >= 0
    reach = np.where(ok, e[np.maximum(k, 0)], np.iinfo(np.int64).min)
    return ok & (reach >= start)


class _PurgedSplitter:
    n_folds: int
    embargo_ns: int

    def _test_group_sets(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def get_n_splits(self) -> int:
        return len(self._test_group_sets())

    def groups(self, ts_ns: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """Group id of each row (contiguous in time, nearly equal counts)."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        n = ts.size
        if n < self.n_folds:
            raise ValueError(f"need at least n_folds={self.n_folds} rows to split, got {n}")
        order = np.argsort(ts, kind="stable")
        g = np.empty(n, np.int32)
        for gid, chunk in enumerate(np.array_split(order, self.n_folds)):
            g[chunk] = gid
        return g

    def roles(
        self, ts_ns: npt.ArrayLike, t_end_ns: npt.ArrayLike
    ) -> Iterator[npt.NDArray[np.int8]]:
        """Per split, the role code of every row (`ROLE_NAMES[code]`)."""
        ts, te = _check_intervals(ts_ns, t_end_ns)
        g = self.groups(ts)
        for test_groups in self._test_group_sets():
            test = np.isin(g, np.asarray(test_groups))
            role = np.zeros(ts.size, np.int8)
            role[test] = ROLE_TEST
            purged = ~test & overlaps_any(ts, te, ts[test], te[test])
            role[purged] = ROLE_PURGED
            if self.embargo_ns > 0:
                free = role == ROLE_TRAIN
                for gid in test_groups:
                    end = te[g == gid].max()
                    emb = free & (ts > end) & (ts <= end + self.embargo_ns)
                    role[emb] = ROLE_EMBARGOED
            yield role

    def split(
        self, ts_ns: npt.ArrayLike, t_end_ns: npt.ArrayLike
    ) -> Iterator[tuple[I64Array, I64Array]]:
        """scikit-learn style: `(train_idx, test_idx)` per split."""
        for role in self.roles(ts_ns, t_end_ns):
            yield np.flatnonzero(role == ROLE_TRAIN), np.flatnonzero(role == ROLE_TEST)


class PurgedKFold(_PurgedSplitter):
    """k contiguous folds, each the test set once; purged and embargoed around it."""

    def __init__(self, *, n_folds: int = 5, embargo_ns: int = 0) -> None:
        if not isinstance(n_folds, int) or n_folds < 2:
            raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
        if not isinstance(embargo_ns, int) or embargo_ns < 0:
            raise ValueError(f"embargo_ns must be an int >= 0 (nanoseconds), got {embargo_ns!r}")
        self.n_folds = n_folds
        self.embargo_ns = embargo_ns

    def _test_group_sets(self) -> list[tuple[int, ...]]:
        return [(k,) for k in range(self.n_folds)]

    def path_ids(self) -> npt.NDArray[np.int32]:
        """One backtest path: every group is tested exactly once."""
        return np.zeros((self.n_folds, 1), np.int32)


class CombinatorialPurgedCV(_PurgedSplitter):
    """Every choice of `n_test_folds` of the `n_folds` groups is a test set
    (C(n_folds, n_test_folds) splits). Each group is tested C(n_folds-1, n_test_folds-1) times,
    so the test predictions assemble into that many full backtest paths (`path_ids`)."""

    def __init__(self, *, n_folds: int = 6, n_test_folds: int = 2, embargo_ns: int = 0) -> None:
        if not isinstance(n_folds, int) or n_folds < 2:
            raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
        if not isinstance(n_test_folds, int) or not 1 <= n_test_folds < n_folds:
            raise ValueError(
                f"n_test_folds must be an int in [1, n_folds={n_folds}), got {n_test_folds!r}"
            )
        if not isinstance(embargo_ns, int) or embargo_ns < 0:
            raise ValueError(f"embargo_ns must be an int >= 0 (nanoseconds), got {embargo_ns!r}")
        self.n_folds = n_folds
        self.n_test_folds = n_test_folds
        self.embargo_ns = embargo_ns

    def _test_group_sets(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(self.n_folds), self.n_test_folds))

    @property
    def n_test_paths(self) -> int:
        return math.comb(self.n_folds - 1, self.n_test_folds - 1)

    def path_ids(self) -> npt.NDArray[np.int32]:
        """`(n_splits, n_test_folds)`: the path each test group of each split belongs to; path p
        of group g is the p-th split (in order) where g is tested."""
        seen = np.zeros(self.n_folds, np.int32)
        out = np.zeros((self.get_n_splits(), self.n_test_folds), np.int32)
        for s, groups in enumerate(self._test_group_sets()):
            for j, gid in enumerate(groups):
                out[s, j] = seen[gid]
                seen[gid] += 1
        return out


def make_splitter(config: BacktestConfig) -> PurgedKFold | CombinatorialPurgedCV:
    if config.cv_method == "cpcv":
        return CombinatorialPurgedCV(
            n_folds=config.cv_n_folds,
            n_test_folds=config.cv_n_test_folds,
            embargo_ns=config.embargo_ns,
        )
    return PurgedKFold(n_folds=config.cv_n_folds, embargo_ns=config.embargo_ns)


def make_cv_folds(labels: pl.DataFrame, config: BacktestConfig) -> pl.DataFrame:
    """The `cv_folds` table: one row per uncensored labelled row and split, with its role.

    Censored labels are left out (their outcome is unknown). Test rows carry `path`, the
    backtest path their prediction belongs to (always 0 for purged k-fold). Fewer uncensored
    rows than folds gives an empty table with the schema (nothing to cross-validate)."""
    rows = labels.filter(~pl.col("censored")).sort(["ts_ns", "kind", "signal_id"])
    splitter = make_splitter(config)
    if rows.height < splitter.n_folds:
        return pl.DataFrame(schema=CV_FOLDS_SCHEMA)
    ts = rows["ts_ns"].to_numpy()
    te = rows["t_end_ns"].to_numpy()
    g = splitter.groups(ts)
    paths = splitter.path_ids()
    test_sets = splitter._test_group_sets()
    frames = []
    for fold, role in enumerate(splitter.roles(ts, te)):
        path = np.full(ts.size, -1, np.int32)
        for j, gid in enumerate(test_sets[fold]):
            path[g == gid] = paths[fold, j]
        frames.append(
            pl.DataFrame(
                {
                    "fold": pl.Series(np.full(ts.size, fold, np.int32)),
                    "role": pl.Series(np.asarray(ROLE_NAMES)[role], dtype=pl.String),
                    "ts_ns": pl.Series(ts, dtype=pl.Int64),
                    "t_end_ns": pl.Series(te, dtype=pl.Int64),
                    "signal_id": rows["signal_id"],
                    "kind": rows["kind"],
                    "direction": rows["direction"].cast(pl.Int8),
                    "group": pl.Series(g, dtype=pl.Int32),
                    "path": pl.Series(path, dtype=pl.Int32),
                }
            ).with_columns(pl.when(pl.col("path") >= 0).then(pl.col("path")).alias("path"))
        )
    return pl.concat(frames, how="vertical")


def check_no_leakage(cv_folds: pl.DataFrame, embargo_ns: int = 0) -> list[str]:
    """Problems found in a `cv_folds` table (empty list = clean): a train interval intersecting
    a test interval of the same fold, or a train row inside the embargo after a test group.
    Used by the pipeline's asset check and by the property tests."""
    problems: list[str] = []
    for fold, part in cv_folds.partition_by("fold", as_dict=True, maintain_order=True).items():
        tr = part.filter(pl.col("role") == "train")
        te = part.filter(pl.col("role") == "test")
        if tr.height == 0 or te.height == 0:
            continue
        bad = overlaps_any(
            tr["ts_ns"].to_numpy(),
            tr["t_end_ns"].to_numpy(),
            te["ts_ns"].to_numpy(),
            te["t_end_ns"].to_numpy(),
        )
        if bad.any():
            problems.append(f"fold {fold[0]}: {int(bad.sum())} train rows overlap test labels")
        if embargo_ns > 0:
            ends = te.group_by("group").agg(pl.col("t_end_ns").max())["t_end_ns"].to_numpy()
            tts = tr["ts_ns"].to_numpy()
            for end in ends:
                n_in = int(np.sum((tts > end) & (tts <= end + embargo_ns)))
                if n_in:
                    problems.append(f"fold {fold[0]}: {n_in} train rows inside the embargo")
    return problems


def fit_threshold(
    scores: npt.ArrayLike,
    rets: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    objective: str = "pnl",
    min_signals: int = 5,
) -> float:
    """Score threshold fitted on training signals; a signal is acted on when `score >= thr`.

    - 'pnl': the threshold maximising the summed net return of acted signals; `+inf` (act on
      nothing) when no threshold makes that sum positive.
    - 'precision': the threshold maximising the share of acted signals with label +1; ties go
      to the lower threshold (more signals, same precision).
    Only thresholds acting on at least `min_signals` signals are candidates; with fewer scored
    training signals than that, nothing can be fitted and `-inf` (act on every signal) is
    returned. Null/NaN scores are never acted on, except by `-inf`.
    """
    if objective not in ("pnl", "precision"):
        raise ValueError(f"objective must be 'pnl' or 'precision', got {objective!r}")
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(rets, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(r)
    s, r, y = s[ok], r[ok], y[ok]
    if s.size < min_signals:
        return -math.inf
    order = np.argsort(-s, kind="stable")
    s, r, y = s[order], r[order], y[order]
    # Evaluate only at the last row of each run of equal scores: a threshold acts on all ties.
    last = np.r_[s[1:] != s[:-1], True]
    count = np.arange(1, s.size + 1)[last]
    cand = s[last]
    eligible = count >= min_signals
    if objective == "pnl":
        gain = np.cumsum(r)[last]
        gain = np.where(eligible, gain, -np.inf)
        best = int(np.argmax(gain))  # first max = highest threshold among equals
        return float(cand[best]) if gain[best] > 0 else math.inf
    prec = np.cumsum(y == 1)[last] / count
    prec = np.where(eligible, prec, -np.inf)
    best = int(np.flatnonzero(prec == prec.max())[-1])
    return float(cand[best])


def acted(scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """Which signals a fitted threshold acts on (null scores only when threshold is -inf)."""
    s = np.asarray(scores, dtype=np.float64)
    if threshold == -math.inf:
        return np.ones(s.shape, bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(s) & (s >= threshold)
