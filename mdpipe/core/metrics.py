"""Signal-quality and trading metrics, and the per-partition / per-fold evaluation table.

Definitions (the evaluation table's columns):

- A signal is a **hit** when its triple-barrier label is +1 (profit barrier first).
  `precision` = hits / acted signals; `precision_at_k` ranks all scored, uncensored signals by
  score (ties: earlier signal first) and takes the share of hits among the top k; NaN when
  fewer than k signals exist (a precision over fewer rows than k would not be precision@k).
- **Grid classification** (recall, FPR, confusion matrix, ROC, PR): the regular label grid in
  both directions (see `mdpipe.core.labels`). A grid row `(t, d)` is a positive when its label
  is +1; it is **predicted** positive when an acted signal of direction `d` arrived in the grid
  cell `(t - grid, t]` (known by `t`, so no look-ahead), and its **score** for ROC / PR is the
  highest score of such signals (any score, acted or not), `-inf` when there is none.
- `false_alarms_per_hour` = acted signals that were not hits / hours covered, where hours
  covered = grid points in the set * grid_seconds / 3600 (the grid measures covered time even
  for non-contiguous CV train sets).
- Lead times, in seconds, medians over acted hits: `lead_time_barrier_s` = `t_end_ns - ts_ns`
  (signal to profit-barrier touch), `lead_time_move_s` = `move_ts_ns - ts_ns` (signal to the
  first favourable move of `move_bps`, over acted signals that saw it).
- Trading figures (`net_pnl`, `net_return`, `sharpe`, `max_drawdown`, `win_rate`,
  `n_trades`) come from the event-driven backtester over the acted signals
  (`mdpipe.core.backtest`; Sharpe annualisation documented in `sharpe_ratio`). `win_rate` =
  trades with positive net PnL / trades.
- **Calibration**: signals are binned by score quantile (`calibration_table`);
  `calibration_spearman` is the rank correlation between a bin's mean score and its hit rate
  (+1: the hit rate rises with the score; the score is not a probability, so a Brier score
  would mean nothing).
- Baselines, same table: `random` = as many signals as the detector emitted, at uniform random
  times in the partition's span with random sides and scores (seeded by `random_seed`), labelled
  and backtested with the same rules; `always_in` = long from the first to the last book event
  (trading figures), and every grid row predicted positive (classification figures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from mdpipe.core.backtest import BacktestResult, backtest, buy_and_hold
from mdpipe.core.config import BacktestConfig
from mdpipe.core.cv import acted, fit_threshold
from mdpipe.core.labels import PricePath, TradePath, triple_barrier

F64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PRECISION_KS = (10, 50, 100)


# ---------------------------------------------------------------- primitives (numpy only)


def _as_xy(scores: npt.ArrayLike, positive: npt.ArrayLike) -> tuple[F64Array, BoolArray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    if s.shape != y.shape:
        raise ValueError("scores and positive must have the same length")
    s = np.where(np.isnan(s), -np.inf, s)
    return s, y


def precision_at_k(
    scores: npt.ArrayLike,
    positive: npt.ArrayLike,
    k: int,
    *,
    order_key: npt.ArrayLike | None = None,
) -> float:
    """Share of positives among the k highest scores (ties broken by `order_key` ascending,
    default the row order); NaN when there are fewer than k rows."""
    s, y = _as_xy(scores, positive)
    if k <= 0:
        raise ValueError("k must be > 0")
    if s.size < k:
        return math.nan
    key = np.arange(s.size) if order_key is None else np.asarray(order_key)
    top = np.lexsort((key, -s))[:k]
    return float(np.mean(y[top]))


def _ranked_counts(s: F64Array, y: BoolArray) -> tuple[F64Array, F64Array, F64Array]:
    """Cumulative (tp, fp) at each distinct threshold, highest first, and the thresholds."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, bool)
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = np.cumsum(~y)[last].astype(np.float64)
    return tp, fp, s[last]


def roc_curve(
    scores: npt.ArrayLike, positive: npt.ArrayLike
) -> tuple[F64Array, F64Array, F64Array]:
    """`(fpr, tpr, thresholds)`, starting at (0, 0) with threshold +inf; tied scores form one
    step (a diagonal segment), as in scikit-learn."""
    s, y = _as_xy(scores, positive)
    tp, fp, thr = _ranked_counts(s, y)
    npos, nneg = float(y.sum()), float((~y).sum())
    tpr = np.r_[0.0, tp / npos] if npos else np.full(tp.size + 1, np.nan)
    fpr = np.r_[0.0, fp / nneg] if nneg else np.full(fp.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Area under the ROC curve (trapezoids, so a tie counts one half); NaN with one class."""
    fpr, tpr, _ = roc_curve(scores, positive)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_curve(scores: npt.ArrayLike, positive: npt.ArrayLike) -> tuple[F64Array, F64Array, F64Array]:
    """`(precision, recall, thresholds)` at each distinct threshold, highest first."""
    s, y = _as_xy(scores, positive)
    tp, fp, thr = _ranked_counts(s, y)
    npos = float(y.sum())
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / npos if npos else np.full(tp.size, np.nan)
    return precision, recall, thr


def average_precision(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Step-wise area under the PR curve: sum over thresholds of (recall increase) * precision
    (scikit-learn's definition, no interpolation); NaN without positives."""
    precision, recall, _ = pr_curve(scores, positive)
    if recall.size == 0 or np.isnan(recall).any():
        return math.nan
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(predicted: npt.ArrayLike, positive: npt.ArrayLike) -> dict[str, int]:
    """`tp, fp, fn, tn` counts."""
    p = np.asarray(predicted).astype(bool)
    y = np.asarray(positive).astype(bool)
    if p.shape != y.shape:
        raise ValueError("predicted and positive must have the same length")
    return {
        "tp": int(np.sum(p & y)),
        "fp": int(np.sum(p & ~y)),
        "fn": int(np.sum(~p & y)),
        "tn": int(np.sum(~p & ~y)),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def calibration_table(
    scores: npt.ArrayLike, positive: npt.ArrayLike, *, n_bins: int = 10
) -> pl.DataFrame:
    """Hit rate per score-quantile bin: `bin, score_lo, score_hi, mean_score, hit_rate, count`.
    Bins are quantiles of the finite scores; equal edges collapse (few distinct scores)."""
    s, y = _as_xy(scores, positive)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    schema = {
        "bin": pl.Int32,
        "score_lo": pl.Float64,
        "score_hi": pl.Float64,
        "mean_score": pl.Float64,
        "hit_rate": pl.Float64,
        "count": pl.Int64,
    }
    if s.size == 0:
        return pl.DataFrame(schema=schema)
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(edges.size - 2, 0))
    rows = []
    for b in np.unique(idx):
        m = idx == b
        rows.append(
            (
                int(b),
                float(s[m].min()),
                float(s[m].max()),
                float(s[m].mean()),
                float(y[m].mean()),
                int(m.sum()),
            )
        )
    return pl.DataFrame(rows, schema=schema, orient="row")


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    x = np.asarray(a, dtype=np.float64)
    z = np.asarray(b, dtype=np.float64)
    if x.size < 2:
        return math.nan

    def rank(v: F64Array) -> F64Array:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        # average ranks over ties
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    rx, rz = rank(x), rank(z)
    if rx.std() == 0 or rz.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, rz)[0, 1])


def _median(v: npt.ArrayLike) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(np.median(a)) if a.size else math.nan


# ---------------------------------------------------------------- evaluation of one row set


def grid_scores(
    grid: pl.DataFrame, signals: pl.DataFrame, acted_mask: npt.ArrayLike, grid_ns: int
) -> tuple[F64Array, BoolArray]:
    """For each grid row `(ts_ns, direction)`: the highest score of same-direction signals in
    `(ts_ns - grid_ns, ts_ns]` (-inf if none) and whether an acted one is among them."""
    if grid.height == 0:
        return np.zeros(0), np.zeros(0, bool)
    sig = signals.select(
        # the cell a signal belongs to is the first grid point at or after it
        ((-((-pl.col("ts_ns")) // grid_ns)) * grid_ns).alias("ts_ns"),
        pl.col("direction").cast(pl.Int8),
        pl.col("score").fill_null(-math.inf).fill_nan(-math.inf).alias("gscore"),
        pl.Series("gacted", np.asarray(acted_mask, bool)),
    )
    cells = sig.group_by("ts_ns", "direction").agg(pl.col("gscore").max(), pl.col("gacted").any())
    joined = grid.select(pl.col("ts_ns"), pl.col("direction").cast(pl.Int8)).join(
        cells, on=["ts_ns", "direction"], how="left", maintain_order="left"
    )
    score = joined["gscore"].fill_null(-math.inf).to_numpy().astype(np.float64)
    pred = joined["gacted"].fill_null(False).to_numpy().astype(bool)
    return score, pred


def signal_set_metrics(
    signals: pl.DataFrame,
    grid: pl.DataFrame,
    threshold: float,
    path: PricePath,
    config: BacktestConfig,
    *,
    act_mask: npt.ArrayLike | None = None,
    window: tuple[int, int] | None = None,
    bt: BacktestResult | None = None,
    trades: TradePath | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of one set of uncensored labelled signals and grid rows, acting on signals with
    `score >= threshold` (or on `act_mask` when given). Returns `(metrics, curves)`; curves hold
    the ROC/PR points, the calibration table and the backtest, for the report."""
    n = signals.height
    scores = signals["score"].cast(pl.Float64).fill_null(np.nan).to_numpy() if n else np.zeros(0)
    hit = (signals["label"].to_numpy() == 1) if n else np.zeros(0, bool)
    if act_mask is not None:
        act = np.asarray(act_mask, bool)
    else:
        act = acted(scores, threshold) if n else np.zeros(0, bool)
    n_act = int(act.sum())
    ts = signals["ts_ns"].to_numpy() if n else np.zeros(0, np.int64)
    out: dict[str, float] = {
        "threshold": float(threshold),
        "n_signals": float(n),
        "n_acted": float(n_act),
        "precision": _ratio(float(np.sum(hit & act)), float(n_act)),
    }
    for k in PRECISION_KS:
        out[f"precision_at_{k}"] = precision_at_k(scores, hit, k, order_key=ts)
    t_end = signals["t_end_ns"].to_numpy() if n else np.zeros(0, np.int64)
    mv = signals["move_ts_ns"].to_numpy() if n else np.zeros(0)
    hit_act = hit & act
    out["lead_time_barrier_s"] = _median((t_end[hit_act] - ts[hit_act]) / 1e9)
    mv_ok = act & ~np.isnan(np.asarray(mv, dtype=np.float64))
    out["lead_time_move_s"] = _median(
        (np.asarray(mv, dtype=np.float64)[mv_ok] - ts[mv_ok].astype(np.float64)) / 1e9
    )
    # grid classification
    gscore, gpred = grid_scores(grid, signals, act, config.grid_ns)
    gpos = grid["label"].to_numpy() == 1 if grid.height else np.zeros(0, bool)
    cm = confusion(gpred, gpos)
    out.update({k: float(v) for k, v in cm.items()})
    out["recall"] = _ratio(cm["tp"], cm["tp"] + cm["fn"])
    out["fpr"] = _ratio(cm["fp"], cm["fp"] + cm["tn"])
    out["grid_positive_rate"] = _ratio(float(gpos.sum()), float(gpos.size))
    hours = grid.height / 2 * config.grid_seconds / 3600.0
    out["hours"] = hours
    out["false_alarms_per_hour"] = _ratio(float(n_act - np.sum(hit_act)), hours)
    out["roc_auc"] = roc_auc(gscore, gpos) if grid.height else math.nan
    out["average_precision"] = average_precision(gscore, gpos) if grid.height else math.nan
    # calibration over all scored signals
    cal = calibration_table(scores, hit)
    out["calibration_spearman"] = (
        spearman(cal["mean_score"].to_numpy(), cal["hit_rate"].to_numpy())
        if cal.height
        else math.nan
    )
    # trading
    if bt is None:
        acted_sig = signals.filter(pl.Series(act)) if n else signals
        lo, hi = window if window is not None else (None, None)
        bt = backtest(path, acted_sig, config, start_ns=lo, end_ns=hi, trades=trades)
    out.update(
        {
            k: bt.summary[k]
            for k in ("net_pnl", "net_return", "sharpe", "max_drawdown", "win_rate", "n_trades")
        }
    )
    out["mean_label_ret"] = float(np.mean(signals["ret"].to_numpy()[act])) if n_act else math.nan
    curves: dict[str, Any] = {
        "roc": roc_curve(gscore, gpos) if grid.height else None,
        "pr": pr_curve(gscore, gpos) if grid.height else None,
        "calibration": cal,
        "backtest": bt,
        "confusion": cm,
    }
    return out, curves


# ---------------------------------------------------------------- the partition's evaluation

EVAL_KEY_COLUMNS = ("partition", "fold", "sample", "strategy", "signal_type")


@dataclass
class Evaluation:
    """`metrics`: the `evaluation` table (one row per partition x fold x sample x strategy x
    signal_type); `curves`: plot data for the report, keyed by (fold, sample, strategy);
    `headline`: the few numbers for Dagster metadata and the CLI summary."""

    metrics: pl.DataFrame
    curves: dict[tuple[int, str, str], dict[str, Any]] = field(default_factory=dict)
    headline: dict[str, float] = field(default_factory=dict)
    signals: pl.DataFrame | None = None
    config: BacktestConfig | None = None


def random_baseline_signals(n: int, start_ns: int, end_ns: int, *, seed: int) -> pl.DataFrame:
    """`n` signals at uniform random times in `[start_ns, end_ns)` with random sides and
    uniform scores; the same seed gives the same signals."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(start_ns, max(end_ns, start_ns + 1), size=n)).astype(np.int64)
    return pl.DataFrame(
        {
            "ts_ns": t,
            "signal_id": [f"random:{i}" for i in range(n)],
            "signal_type": ["random"] * n,
            "direction": np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8),
            "score": rng.random(n),
        }
    )


def _label_random(
    n: int,
    path: PricePath,
    config: BacktestConfig,
    start_ns: int,
    end_ns: int,
    trades: TradePath | None = None,
) -> pl.DataFrame:
    sig = random_baseline_signals(n, start_ns, end_ns, seed=config.random_seed)
    cols = triple_barrier(
        path, sig["ts_ns"].to_numpy(), sig["direction"].to_numpy(), config, trades=trades
    )
    move = cols["move_ts_ns"].astype(np.float64)
    move[move < 0] = np.nan
    return sig.with_columns(
        pl.Series("t_end_ns", cols["t_end_ns"]),
        pl.Series("label", cols["label"]),
        pl.Series("ret", cols["ret"]),
        pl.Series("move_ts_ns", move),
        pl.Series("censored", cols["censored"]),
    ).filter(~pl.col("censored"))


def _row(
    partition: str, fold: int, sample: str, strategy: str, signal_type: str, m: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "partition": partition,
        "fold": fold,
        "sample": sample,
        "strategy": strategy,
        "signal_type": signal_type,
        **m,
    }


def evaluate(
    labels: pl.DataFrame,
    cv_folds: pl.DataFrame | None,
    path: PricePath,
    config: BacktestConfig,
    *,
    partition: str = "",
    trades: TradePath | None = None,
) -> Evaluation:
    """Evaluate one partition.

    `labels` is the partition's `labels` table (signal and grid rows), `cv_folds` its
    `cv_folds` table (may be empty or None: then only the full-sample rows), `path` the price
    path the labels were computed on (the partition, plus the next one when it was used), and
    `trades` the trade prices when `config.barrier_price='trade'`.

    Rows of the result (`sample` / `strategy` / `fold`):
    - fold -1, 'full': every uncensored signal acted on (no threshold): `detector` overall and
      per `signal_type`, and the `random` and `always_in` baselines;
    - fold f, 'in_sample' and 'out_of_sample': threshold fitted on fold f's train signals
      (`config.threshold_objective`), applied to its train rows (in-sample) and test rows
      (out-of-sample), `detector` only;
    - fold -1, 'out_of_sample': pooled test predictions of each row's first test fold (for
      purged k-fold every row's only one; for CPCV backtest path 0).
    """
    lab = labels.filter(~pl.col("censored"))
    sig = lab.filter(pl.col("kind") == "signal").sort("ts_ns", "signal_id")
    grid = lab.filter(pl.col("kind") == "grid").sort("ts_ns", "direction")
    sig = sig.with_columns(
        pl.col("move_ts_ns").cast(pl.Float64),
        pl.col("score").fill_nan(None),
    )
    rows: list[dict[str, Any]] = []
    curves: dict[tuple[int, str, str], dict[str, Any]] = {}
    span = (int(path.ts_ns[0]), int(path.ts_ns[-1])) if len(path) else (0, 0)
    if grid.height:
        span = (int(grid["ts_ns"].min()), int(grid["ts_ns"].max()))  # type: ignore[arg-type]

    m, c = signal_set_metrics(sig, grid, -math.inf, path, config, trades=trades)
    rows.append(_row(partition, -1, "full", "detector", "all", m))
    curves[(-1, "full", "detector")] = c
    for stype in sorted({s for s in sig["signal_type"].to_list() if s is not None}):
        sub = sig.filter(pl.col("signal_type") == stype)
        ms, _ = signal_set_metrics(sub, grid, -math.inf, path, config, trades=trades)
        rows.append(_row(partition, -1, "full", "detector", stype, ms))

    # baselines
    if len(path) >= 2:
        rnd = _label_random(sig.height, path, config, span[0], span[1] + 1, trades)
        mr, cr = signal_set_metrics(rnd, grid, -math.inf, path, config, trades=trades)
        rows.append(_row(partition, -1, "full", "random", "all", mr))
        curves[(-1, "full", "random")] = cr
        bh = buy_and_hold(path, config)
        always = pl.DataFrame(
            {
                "ts_ns": grid["ts_ns"] - 1,
                "signal_id": grid["signal_id"],
                "signal_type": grid["signal_type"],
                "direction": grid["direction"],
                "score": np.ones(grid.height),
                "t_end_ns": grid["t_end_ns"],
                "label": grid["label"],
                "ret": grid["ret"],
                "move_ts_ns": grid["move_ts_ns"].cast(pl.Float64),
            }
        )
        ma, ca = signal_set_metrics(always, grid, -math.inf, path, config, bt=bh, trades=trades)
        ma["precision"] = ma["grid_positive_rate"]
        for k in PRECISION_KS:  # every grid row ties at one score: a ranking means nothing
            ma[f"precision_at_{k}"] = math.nan
        rows.append(_row(partition, -1, "full", "always_in", "all", ma))
        curves[(-1, "full", "always_in")] = ca

    # cross-validated threshold: in-sample vs out-of-sample
    if cv_folds is not None and cv_folds.height:
        keyed = cv_folds.select("fold", "role", "signal_id", "path", "group")
        pooled_thr: list[pl.DataFrame] = []
        for (fold,), part in keyed.partition_by("fold", as_dict=True, maintain_order=True).items():
            train_ids = part.filter(pl.col("role") == "train")["signal_id"]
            test_part = part.filter(pl.col("role") == "test")
            test_ids = test_part["signal_id"]
            s_tr = sig.filter(pl.col("signal_id").is_in(train_ids.implode()))
            s_te = sig.filter(pl.col("signal_id").is_in(test_ids.implode()))
            g_tr = grid.filter(pl.col("signal_id").is_in(train_ids.implode()))
            g_te = grid.filter(pl.col("signal_id").is_in(test_ids.implode()))
            thr = fit_threshold(
                s_tr["score"].to_numpy(),
                s_tr["ret"].to_numpy(),
                s_tr["label"].to_numpy(),
                objective=config.threshold_objective,
                min_signals=config.threshold_min_signals,
            )
            for sample, s_set, g_set in (("in_sample", s_tr, g_tr), ("out_of_sample", s_te, g_te)):
                window = _window(s_set, g_set)
                mf, cf = signal_set_metrics(
                    s_set, g_set, thr, path, config, window=window, trades=trades
                )
                rows.append(_row(partition, int(fold), sample, "detector", "all", mf))
                curves[(int(fold), sample, "detector")] = cf
            first = test_part.filter(pl.col("path") == 0).select("signal_id")
            pooled_thr.append(first.with_columns(pl.lit(thr).alias("thr")))
        ids = pl.concat(pooled_thr).unique("signal_id", keep="first")
        s_oos = sig.join(ids, on="signal_id", how="inner").sort("ts_ns", "signal_id")
        g_oos = grid.join(ids, on="signal_id", how="inner").sort("ts_ns", "direction")
        # each pooled row is acted on with the threshold fitted for its own fold
        sc = s_oos["score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        th = s_oos["thr"].to_numpy()
        with np.errstate(invalid="ignore"):
            act_mask = (th == -math.inf) | (np.isfinite(sc) & (sc >= th))
        mp, cp = signal_set_metrics(
            s_oos,
            g_oos,
            math.nan,
            path,
            config,
            act_mask=act_mask,
            window=_window(s_oos, g_oos),
            trades=trades,
        )
        rows.append(_row(partition, -1, "out_of_sample", "detector", "all", mp))
        curves[(-1, "out_of_sample", "detector")] = cp

    metrics = pl.DataFrame(rows, infer_schema_length=None)
    full = rows[0]
    headline = {
        k: float(full[k])
        for k in ("n_signals", "precision", "net_pnl", "sharpe", "max_drawdown", "roc_auc")
    }
    oos = [r for r in rows if r["fold"] == -1 and r["sample"] == "out_of_sample"]
    if oos:
        headline["oos_precision"] = float(oos[0]["precision"])
        headline["oos_net_pnl"] = float(oos[0]["net_pnl"])
    return Evaluation(metrics=metrics, curves=curves, headline=headline, signals=sig, config=config)


def _window(s_set: pl.DataFrame, g_set: pl.DataFrame) -> tuple[int, int] | None:
    both = pl.concat([s_set.select("ts_ns", "t_end_ns"), g_set.select("ts_ns", "t_end_ns")])
    if both.height == 0:
        return None
    return int(both["ts_ns"].min()), int(both["t_end_ns"].max())  # type: ignore[arg-type]
