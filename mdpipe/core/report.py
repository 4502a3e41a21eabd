"""Self-contained HTML evaluation reports (one file, opens offline) and their PNGs.

Plots are drawn with matplotlib's object API (`Figure` + the Agg canvas, never pyplot) so that
rendering does not touch global backend state and works in worker processes and threads. Each
plot is a PNG, embedded in the HTML as a base64 data URI; the HTML has no scripts and no
external references.

Rendering is pure: `render_report` and `render_summary_report` return the files' contents by
name (the HTML and one PNG per plot). Publishing them (atomically, next to the partition's
metrics) is the pipeline's job: `mdpipe.pipeline.reports`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mdpipe.core.labels import PricePath
from mdpipe.core.metrics import Evaluation

PLOT_NAMES = (
    "price_signals",
    "score_distribution",
    "roc_pr",
    "equity_drawdown",
    "confusion",
    "calibration",
    "per_detector",
    "data_quality",
)

SIDE_BY_SIDE_METRICS = (
    "threshold",
    "n_signals",
    "n_acted",
    "precision",
    "precision_at_10",
    "precision_at_50",
    "precision_at_100",
    "recall",
    "fpr",
    "false_alarms_per_hour",
    "roc_auc",
    "average_precision",
    "lead_time_barrier_s",
    "lead_time_move_s",
    "net_pnl",
    "sharpe",
    "max_drawdown",
    "win_rate",
    "n_trades",
    "calibration_spearman",
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#1d2330;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #d5d9e2;padding:3px 7px;text-align:right}
th{background:#f1f3f8}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #e4e7ee;margin:6px 0}
.note{color:#5a6275;font-size:12px}.kv td{text-align:left}
"""


def _new_figure(w: float = 11.0, h: float = 4.0) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_xticks([])
    ax.set_yticks([])


def _seconds_axis(ts_ns: np.ndarray, t0: int) -> np.ndarray:
    return (np.asarray(ts_ns, dtype=np.float64) - t0) / 1e9


def _decimate(n: int, max_points: int = 20_000) -> np.ndarray:
    step = max(1, n // max_points)
    idx = np.arange(0, n, step)
    if n and idx[-1] != n - 1:
        idx = np.r_[idx, n - 1]
    return idx


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return html.escape(str(v))


def html_table(df: pl.DataFrame, *, max_rows: int = 200) -> str:
    cols = df.columns
    head = "".join(f'<th class="l">{html.escape(c)}</th>' for c in cols)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = "".join(
            f'<td class="l">{_fmt(v)}</td>' if isinstance(v, str) else f"<td>{_fmt(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    more = (
        f'<p class="note">{df.height - max_rows} more rows not shown</p>'
        if df.height > max_rows
        else ""
    )
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


# ---------------------------------------------------------------- the plots


def plot_price_signals(path: PricePath, signals: pl.DataFrame | None, t0: int) -> Figure:
    fig = _new_figure(11, 4)
    ax = fig.add_subplot(1, 1, 1)
    if len(path) == 0:
        _no_data(ax, "prices")
        return fig
    idx = _decimate(len(path))
    ax.plot(_seconds_axis(path.ts_ns[idx], t0), path.mid[idx], lw=0.7, color="#34495e", label="mid")
    if signals is not None and signals.height:
        ts = signals["ts_ns"].to_numpy()
        y = np.interp(ts.astype(np.float64), path.ts_ns.astype(np.float64), path.mid)
        d = signals["direction"].to_numpy()
        hit = signals["label"].to_numpy() == 1
        for side, marker, color in ((1, "^", "#1a9850"), (-1, "v", "#d73027")):
            m = d == side
            ax.scatter(
                _seconds_axis(ts[m & hit], t0),
                y[m & hit],
                marker=marker,
                s=28,
                color=color,
                label=f"{'long' if side > 0 else 'short'} signal, hit",
            )
            ax.scatter(
                _seconds_axis(ts[m & ~hit], t0),
                y[m & ~hit],
                marker=marker,
                s=28,
                facecolors="none",
                edgecolors=color,
                label=f"{'long' if side > 0 else 'short'} signal, miss",
            )
    ax.set_xlabel("seconds since partition start")
    ax.set_ylabel("mid price")
    ax.set_title("Price with signals (filled: profit barrier hit)")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_score_distribution(signals: pl.DataFrame | None) -> Figure:
    fig = _new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    if signals is None or signals.height == 0:
        _no_data(ax, "signals")
        return fig
    s = signals["score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    hit = signals["label"].to_numpy() == 1
    ok = np.isfinite(s)
    if not ok.any():
        _no_data(ax, "scores")
        return fig
    bins = np.histogram_bin_edges(s[ok], bins=30).tolist()
    ax.hist(s[ok & hit], bins=bins, alpha=0.6, color="#1a9850", label="hit (label +1)")
    ax.hist(s[ok & ~hit], bins=bins, alpha=0.6, color="#d73027", label="miss (label 0/-1)")
    ax.set_xlabel("score")
    ax.set_ylabel("signals")
    ax.set_title("Score distribution")
    ax.legend(fontsize=8)
    return fig


def plot_roc_pr(curves: Mapping[tuple[int, str, str], Mapping[str, Any]]) -> Figure:
    fig = _new_figure(11, 4.5)
    ax_roc = fig.add_subplot(1, 2, 1)
    ax_pr = fig.add_subplot(1, 2, 2)
    styles = {
        (-1, "full", "detector"): ("detector (all signals)", "#2c7bb6", "-"),
        (-1, "out_of_sample", "detector"): ("detector, out-of-sample", "#fdae61", "-"),
        (-1, "full", "random"): ("random baseline", "#999999", "--"),
    }
    drawn = False
    for key, (name, color, ls) in styles.items():
        c = curves.get(key)
        if not c or c.get("roc") is None:
            continue
        fpr, tpr, _ = c["roc"]
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            continue
        ax_roc.plot(fpr, tpr, ls, color=color, label=name)
        precision, recall, _ = c["pr"]
        ax_pr.step(recall, precision, ls, where="post", color=color, label=name)
        drawn = True
    if not drawn:
        _no_data(ax_roc, "ROC (needs grid labels of both classes)")
        _no_data(ax_pr, "PR curve")
        return fig
    ax_roc.plot([0, 1], [0, 1], ":", color="#bbb")
    ax_roc.set_xlabel("false positive rate")
    ax_roc.set_ylabel("true positive rate")
    ax_roc.set_title("ROC (grid points, both directions)")
    ax_roc.legend(fontsize=8)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_title("Precision-recall")
    ax_pr.legend(fontsize=8)
    return fig


def plot_equity_drawdown(
    curves: Mapping[tuple[int, str, str], Mapping[str, Any]], t0: int
) -> Figure:
    fig = _new_figure(11, 5.5)
    ax_eq = fig.add_subplot(2, 1, 1)
    ax_dd = fig.add_subplot(2, 1, 2, sharex=ax_eq)
    styles = {
        (-1, "full", "detector"): ("detector", "#2c7bb6"),
        (-1, "full", "random"): ("random baseline", "#999999"),
        (-1, "full", "always_in"): ("always in the market", "#7b3294"),
    }
    drawn = False
    for key, (name, color) in styles.items():
        c = curves.get(key)
        if not c or c.get("backtest") is None or c["backtest"].equity.height == 0:
            continue
        eq = c["backtest"].equity
        idx = _decimate(eq.height)
        ts = eq["ts_ns"].to_numpy()[idx]
        e = eq["equity"].to_numpy()
        peak = np.maximum.accumulate(e)
        dd = ((peak - e) / peak)[idx]
        ax_eq.plot(_seconds_axis(ts, t0), e[idx], color=color, lw=1, label=name)
        ax_dd.fill_between(_seconds_axis(ts, t0), -dd * 100, 0, color=color, alpha=0.35, label=name)
        drawn = True
    if not drawn:
        _no_data(ax_eq, "equity curve")
        _no_data(ax_dd, "drawdown")
        return fig
    ax_eq.set_ylabel("equity (quote)")
    ax_eq.set_title("Equity (marked to market at liquidation value) and drawdown")
    ax_eq.legend(fontsize=8)
    ax_dd.set_ylabel("drawdown %")
    ax_dd.set_xlabel("seconds since partition start")
    return fig


def plot_confusion(cm: Mapping[str, int] | None) -> Figure:
    fig = _new_figure(4.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    if not cm:
        _no_data(ax, "confusion matrix")
        return fig
    m = np.array([[cm["tp"], cm["fn"]], [cm["fp"], cm["tn"]]], dtype=float)
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(
            j,
            i,
            f"{int(v)}",
            ha="center",
            va="center",
            fontsize=13,
            color="white" if v > m.max() / 2 else "black",
        )
    ax.set_xticks([0, 1], ["predicted +", "predicted −"])
    ax.set_yticks([0, 1], ["actual +", "actual −"])
    ax.set_title("Confusion matrix (grid points)")
    return fig


def plot_calibration(curves: Mapping[tuple[int, str, str], Mapping[str, Any]]) -> Figure:
    fig = _new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    cal = (curves.get((-1, "full", "detector")) or {}).get("calibration")
    if cal is None or cal.height == 0:
        _no_data(ax, "scores to calibrate")
        return fig
    ax.plot(cal["mean_score"].to_numpy(), cal["hit_rate"].to_numpy(), "o-", color="#2c7bb6")
    for x, y, n in zip(cal["mean_score"], cal["hit_rate"], cal["count"], strict=True):
        ax.annotate(str(n), (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean score of the bin (score quantile bins)")
    ax.set_ylabel("hit rate (profit barrier first)")
    ax.set_title("Score calibration (labels: signals per bin)")
    return fig


def plot_per_detector(metrics: pl.DataFrame) -> Figure:
    fig = _new_figure(11, 3.8)
    rows = metrics.filter(
        (pl.col("fold") == -1)
        & (pl.col("sample") == "full")
        & (
            ((pl.col("strategy") == "detector") & (pl.col("signal_type") != "all"))
            | (pl.col("strategy") == "random")
        )
    )
    ax1 = fig.add_subplot(1, 3, 1)
    ax2 = fig.add_subplot(1, 3, 2)
    ax3 = fig.add_subplot(1, 3, 3)
    if rows.height == 0:
        for ax in (ax1, ax2, ax3):
            _no_data(ax, "detectors")
        return fig
    names = [
        "random" if st == "random" else t
        for st, t in zip(rows["strategy"], rows["signal_type"], strict=True)
    ]
    x = np.arange(len(names))
    colors = ["#999999" if n == "random" else "#2c7bb6" for n in names]
    for ax, col, title in (
        (ax1, "n_signals", "signals"),
        (ax2, "precision", "precision"),
        (ax3, "net_pnl", "net PnL (own backtest)"),
    ):
        ax.bar(x, rows[col].fill_nan(0).fill_null(0).to_numpy(), color=colors)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    return fig


def plot_data_quality(
    path: PricePath, gaps: pl.DataFrame | None, clock_offsets: pl.DataFrame | None, t0: int
) -> Figure:
    fig = _new_figure(11, 4)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    if len(path) > 1:
        # longest silence per time bucket: readable at any event count, and gaps stand out
        dt = np.diff(path.ts_ns) / 1e9
        t_rel = _seconds_axis(path.ts_ns[1:], t0)
        n_buckets = min(300, dt.size)
        edges = np.linspace(t_rel[0], t_rel[-1] + 1e-9, n_buckets + 1)
        b = np.clip(np.searchsorted(edges, t_rel, side="right") - 1, 0, n_buckets - 1)
        longest = np.zeros(n_buckets)
        np.maximum.at(longest, b, dt)
        ax1.step(
            edges[:-1],
            np.maximum(longest, 1e-6),
            where="post",
            lw=0.8,
            color="#34495e",
            label="longest silence between book events",
        )
        ax1.set_yscale("log")
    if gaps is not None and gaps.height:
        for t in _seconds_axis(gaps["ts_ns"].to_numpy(), t0):
            ax1.axvline(t, color="#d73027", lw=0.8, alpha=0.7)
        ax1.plot([], [], color="#d73027", label=f"recorded gaps ({gaps.height})")
    if len(path) > 1 or (gaps is not None and gaps.height):
        ax1.set_xlabel("seconds since partition start")
        ax1.set_ylabel("seconds")
        ax1.set_title("Event spacing and gaps")
        ax1.legend(fontsize=8)
    else:
        _no_data(ax1, "book events")
    if clock_offsets is not None and clock_offsets.height:
        ax2.plot(
            _seconds_axis(clock_offsets["ts_ns"].to_numpy(), t0),
            clock_offsets["offset_ms"].to_numpy(),
            ".",
            ms=2,
            color="#2c7bb6",
        )
        ax2.set_xlabel("seconds since partition start")
        ax2.set_ylabel("exchange time − receive time (ms)")
        ax2.set_title("Clock offset")
    else:
        _no_data(ax2, "clock offsets supplied")
    return fig


# ---------------------------------------------------------------- assembling


def side_by_side(metrics: pl.DataFrame) -> pl.DataFrame:
    """In-sample next to out-of-sample per fold (metrics as rows), detector rows only."""
    cv = metrics.filter(
        (pl.col("strategy") == "detector")
        & (pl.col("signal_type") == "all")
        & pl.col("sample").is_in(["in_sample", "out_of_sample", "full"])
    ).sort("fold", "sample")
    if cv.height == 0:
        return pl.DataFrame({"metric": list(SIDE_BY_SIDE_METRICS)})
    cols: dict[str, list[Any]] = {"metric": list(SIDE_BY_SIDE_METRICS)}
    for row in cv.iter_rows(named=True):
        fold = "all" if row["fold"] == -1 else f"fold {row['fold']}"
        sample = {"in_sample": "IS", "out_of_sample": "OOS", "full": "full"}[row["sample"]]
        cols[f"{fold} {sample}"] = [
            float(row[m]) if row.get(m) is not None else math.nan for m in SIDE_BY_SIDE_METRICS
        ]
    return pl.DataFrame(cols)


def _data_quality_table(
    path: PricePath, gaps: pl.DataFrame | None, clock_offsets: pl.DataFrame | None
) -> pl.DataFrame:
    items: list[tuple[str, str]] = [("book events", f"{len(path)}")]
    if len(path) > 1:
        dt = np.diff(path.ts_ns) / 1e9
        items.append(("longest silence between book events (s)", f"{dt.max():.3f}"))
    if gaps is not None:
        items.append(("recorded gaps", f"{gaps.height}"))
        if gaps.height and "kind" in gaps.columns:
            for kind, n in gaps.group_by("kind").len().sort("kind").iter_rows():
                items.append((f"  gaps of kind {kind}", f"{n}"))
    else:
        items.append(("recorded gaps", "not supplied"))
    if clock_offsets is not None and clock_offsets.height:
        off = clock_offsets["offset_ms"].to_numpy()
        items.append(
            (
                "clock offset ms (min / median / max)",
                f"{off.min():.1f} / {np.median(off):.1f} / {off.max():.1f}",
            )
        )
    else:
        items.append(("clock offset", "not supplied"))
    return pl.DataFrame(items, schema={"item": pl.String, "value": pl.String}, orient="row")


def _img(name: str, png: bytes, caption: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{name}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{b64}"><figcaption class="note">{html.escape(caption)}'
        "</figcaption></figure>"
    )


def render_report(
    evaluation: Evaluation,
    path: PricePath,
    *,
    title: str = "mdpipe evaluation",
    gaps: pl.DataFrame | None = None,
    clock_offsets: pl.DataFrame | None = None,
    file_name: str = "report.html",
) -> dict[str, bytes]:
    """The report's files by name: `<file_name>` (self-contained HTML) and `<plot>.png` for
    every name in `PLOT_NAMES`. The HTML is the last entry.

    `gaps`: optional frame with `ts_ns` (and `kind`); `clock_offsets`: optional frame with
    `ts_ns, offset_ms` (exchange minus receive time)."""
    files: dict[str, bytes] = {}
    metrics = evaluation.metrics
    curves = evaluation.curves
    sig = evaluation.signals
    t0 = int(path.ts_ns[0]) if len(path) else 0
    full_c = curves.get((-1, "full", "detector")) or {}
    figs = {
        "price_signals": (plot_price_signals(path, sig, t0), "Mid price with the signals overlaid"),
        "score_distribution": (plot_score_distribution(sig), "Score distribution, hits vs misses"),
        "roc_pr": (plot_roc_pr(curves), "ROC and precision-recall curves on the label grid"),
        "equity_drawdown": (plot_equity_drawdown(curves, t0), "Backtest equity and drawdown"),
        "confusion": (
            plot_confusion(full_c.get("confusion")),
            "Confusion matrix, all signals acted",
        ),
        "calibration": (plot_calibration(curves), "Hit rate by score bin"),
        "per_detector": (plot_per_detector(metrics), "Per-detector breakdown vs random"),
        "data_quality": (plot_data_quality(path, gaps, clock_offsets, t0), "Data quality"),
    }
    parts: dict[str, str] = {}
    for name, (fig, caption) in figs.items():
        png = _png(fig)
        files[f"{name}.png"] = png
        parts[name] = _img(name, png, caption)

    head = evaluation.headline
    cfg = evaluation.config.to_dict() if evaluation.config is not None else {}
    headline = pl.DataFrame({"metric": list(head), "value": [float(v) for v in head.values()]})
    per_det = metrics.filter((pl.col("fold") == -1) & (pl.col("sample") == "full")).select(
        [
            c
            for c in (
                "strategy",
                "signal_type",
                "n_signals",
                "n_acted",
                "precision",
                "precision_at_10",
                "recall",
                "fpr",
                "false_alarms_per_hour",
                "roc_auc",
                "net_pnl",
                "sharpe",
                "max_drawdown",
                "win_rate",
                "lead_time_barrier_s",
                "lead_time_move_s",
            )
            if c in metrics.columns
        ]
    )
    cal = full_c.get("calibration")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">Triple-barrier labels on the book mid; costs: taker fee on both legs, slippage,
and the recorded half spread at entry and exit. Grid metrics (recall, FPR, ROC, PR, confusion)
use a regular grid in both directions. Censored labels (horizon past the data) are excluded.</p>
<h2>Headline</h2>{html_table(headline)}
<h2>Price and signals</h2>{parts["price_signals"]}
<h2>Scores</h2>{parts["score_distribution"]}{parts["calibration"]}
{html_table(cal) if cal is not None and cal.height else ""}
<h2>ROC and PR</h2>{parts["roc_pr"]}
<h2>Equity and drawdown</h2>{parts["equity_drawdown"]}
<h2>Confusion matrix</h2>{parts["confusion"]}
<h2>Per detector and baselines</h2>{parts["per_detector"]}{html_table(per_det)}
<h2>In-sample vs out-of-sample</h2>
<p class="note">Thresholds are fitted on each fold's training signals only (objective:
{html.escape(str(cfg.get("threshold_objective", "")))}), then applied to its test signals.</p>
{html_table(side_by_side(metrics))}
<h2>Data quality</h2>{parts["data_quality"]}{html_table(_data_quality_table(path, gaps, clock_offsets))}
<h2>All metrics</h2>{html_table(metrics)}
<h2>Configuration</h2>{html_table(pl.DataFrame({"parameter": list(cfg), "value": [str(v) for v in cfg.values()]}))}
</body></html>
"""
    files[file_name] = doc.encode("utf-8")
    return files


def render_summary_report(
    metrics: pl.DataFrame,
    *,
    title: str = "mdpipe evaluation summary",
    report_links: Mapping[str, str] | None = None,
    file_name: str = "summary.html",
) -> dict[str, bytes]:
    """Cross-partition summary from the concatenated `evaluation` tables of many partitions:
    a headline table per partition (detector vs random vs always-in, out-of-sample), plots of
    precision and net PnL per partition, and links to each partition's report. Returns the
    files by name: `summary.png`, then `<file_name>`."""
    full = metrics.filter((pl.col("fold") == -1) & (pl.col("signal_type") == "all"))
    wide = _summary_wide(full)
    partitions: Sequence[str] = wide["partition"].to_list() if wide.height else []
    fig = _new_figure(11, 4)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    if wide.height:
        x = np.arange(len(partitions))
        w = 0.27
        for off, col, name, color in (
            (-w, "detector_precision", "detector", "#2c7bb6"),
            (0.0, "oos_precision", "detector OOS", "#fdae61"),
            (w, "random_precision", "random", "#999999"),
        ):
            if col in wide.columns:
                ax1.bar(
                    x + off,
                    wide[col].fill_null(np.nan).fill_nan(0).to_numpy(),
                    w,
                    label=name,
                    color=color,
                )
        for off, col, name, color in (
            (-w, "detector_net_pnl", "detector", "#2c7bb6"),
            (0.0, "random_net_pnl", "random", "#999999"),
            (w, "always_in_net_pnl", "always in", "#7b3294"),
        ):
            if col in wide.columns:
                ax2.bar(
                    x + off,
                    wide[col].fill_null(np.nan).fill_nan(0).to_numpy(),
                    w,
                    label=name,
                    color=color,
                )
        for ax, t in ((ax1, "precision per partition"), (ax2, "net PnL per partition")):
            ax.set_xticks(x, partitions, rotation=30, ha="right", fontsize=7)
            ax.set_title(t)
            ax.legend(fontsize=8)
    else:
        _no_data(ax1, "partitions")
        _no_data(ax2, "partitions")
    png = _png(fig)
    links = ""
    if report_links:
        items = "".join(
            f'<li><a href="{html.escape(href, quote=True)}">{html.escape(p)}</a></li>'
            for p, href in sorted(report_links.items())
        )
        links = f"<h2>Partition reports</h2><ul>{items}</ul>"
    totals = _summary_totals(full)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{len(partitions)} partitions. Precision: share of acted signals hitting the
profit barrier first; OOS: thresholds fitted on training folds, scored on test folds.</p>
<h2>Totals</h2>{html_table(totals)}
<h2>Per partition</h2>{_img("summary", png, "Precision and net PnL per partition")}
{html_table(wide)}{links}
</body></html>
"""
    return {"summary.png": png, file_name: doc.encode("utf-8")}


def _summary_wide(full: pl.DataFrame) -> pl.DataFrame:
    if full.height == 0:
        return pl.DataFrame({"partition": pl.Series([], dtype=pl.String)})
    pieces = []
    for (strategy, sample), prefix in (
        (("detector", "full"), "detector"),
        (("random", "full"), "random"),
        (("always_in", "full"), "always_in"),
        (("detector", "out_of_sample"), "oos"),
    ):
        part = full.filter((pl.col("strategy") == strategy) & (pl.col("sample") == sample))
        cols = [
            c
            for c in ("n_signals", "precision", "roc_auc", "net_pnl", "sharpe", "max_drawdown")
            if c in part.columns
        ]
        pieces.append(
            part.select("partition", *[pl.col(c).alias(f"{prefix}_{c}") for c in cols]).unique(
                "partition", keep="first"
            )
        )
    wide = pieces[0]
    for p in pieces[1:]:
        wide = wide.join(p, on="partition", how="full", coalesce=True)
    return wide.sort("partition")


def _summary_totals(full: pl.DataFrame) -> pl.DataFrame:
    if full.height == 0:
        return pl.DataFrame({"strategy": pl.Series([], dtype=pl.String)})
    return (
        full.group_by("strategy", "sample")
        .agg(
            pl.len().alias("partitions"),
            pl.col("n_signals").sum(),
            pl.col("net_pnl").sum().alias("net_pnl_sum"),
            pl.col("precision").fill_nan(None).mean().alias("precision_mean"),
            pl.col("roc_auc").fill_nan(None).mean().alias("roc_auc_mean"),
        )
        .sort("strategy", "sample")
    )


# ---------------------------------------------------------------- sweeps and models


def _page(title: str, body: str) -> bytes:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{CSS}</style></head><body><h1>"
        f"{html.escape(title)}</h1>{body}</body></html>\n"
    ).encode()


def render_sweep_report(
    sweeps: pl.DataFrame,
    summary: pl.DataFrame,
    *,
    params: tuple[str, str] | None = None,
    title: str = "mdpipe sweep",
    file_name: str = "sweep.html",
) -> dict[str, bytes]:
    """A sweep's page: OOS Sharpe heat map over two parameters (the first two grid axes by
    default), IS-vs-OOS scatter of the CSCV winners with the degradation line, the PBO logit
    histogram, and the selected candidate's DSR and holdout figures."""
    import json

    s = summary.row(0, named=True)
    pooled = sweeps.filter(pl.col("fold") == -1)
    per = pooled.group_by("candidate_id", "params", maintain_order=True).agg(
        pl.col("sharpe_oos").filter(pl.col("sharpe_oos").is_finite()).mean().alias("sharpe_oos"),
        pl.col("sharpe_is").filter(pl.col("sharpe_is").is_finite()).mean().alias("sharpe_is"),
        pl.col("net_pnl_oos").sum(),
        pl.col("precision_oos").mean(),
        pl.col("n_signals").sum(),
    )
    keys = list(json.loads(per["params"][0])) if per.height else []
    px = params or ((keys[0], keys[1]) if len(keys) >= 2 else None)
    files: dict[str, bytes] = {}
    fig = _new_figure(6.5, 5)
    ax = fig.add_subplot()
    if px and per.height:
        vals = [json.loads(p) for p in per["params"]]
        xs = sorted({v[px[0]] for v in vals})
        ys = sorted({v[px[1]] for v in vals})
        grid = np.full((len(ys), len(xs)), np.nan)
        cnt = np.zeros_like(grid)
        for v, sh in zip(vals, per["sharpe_oos"].to_list(), strict=True):
            if sh is None or not math.isfinite(sh):
                continue
            i, j = ys.index(v[px[1]]), xs.index(v[px[0]])
            grid[i, j] = sh if cnt[i, j] == 0 else grid[i, j] + sh
            cnt[i, j] += 1
        grid = np.where(cnt > 0, grid / np.maximum(cnt, 1), np.nan)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="RdYlGn")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(px[0])
        ax.set_ylabel(px[1])
        fig.colorbar(im, ax=ax, label="pooled OOS Sharpe (mean over other axes)")
    else:
        _no_data(ax, "two swept parameters")
    files["sweep_heatmap.png"] = _png(fig)
    fig = _new_figure(6.5, 5)
    ax = fig.add_subplot()
    x, y = np.asarray(s["pbo_is"] or []), np.asarray(s["pbo_oos"] or [])
    if x.size:
        ax.scatter(x, y, s=8, alpha=0.5)
        if math.isfinite(s["pbo_slope"]):
            xx = np.linspace(x.min(), x.max(), 2)
            ax.plot(xx, s["pbo_intercept"] + s["pbo_slope"] * xx, color="C3",
                    label=f"OOS = {s['pbo_intercept']:.3g} + {s['pbo_slope']:.3g} IS")  # fmt: skip
            ax.legend()
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_xlabel("IS Sharpe per bar of the IS winner")
        ax.set_ylabel("its OOS Sharpe per bar")
    else:
        _no_data(ax, "CSCV splits")
    files["sweep_is_oos.png"] = _png(fig)
    fig = _new_figure(6.5, 4)
    ax = fig.add_subplot()
    lg = np.asarray(s["pbo_logits"] or [])
    if lg.size:
        ax.hist(lg, bins=30, color="C0")
        ax.axvline(0, color="C3")
        ax.set_xlabel("logit of the IS winner's OOS relative rank")
        ax.set_title(f"PBO = {s['pbo']:.3f} over {lg.size} splits")
    else:
        _no_data(ax, "CSCV splits")
    files["sweep_pbo_logits.png"] = _png(fig)
    facts = pl.DataFrame(
        {
            "figure": [k for k in s if not isinstance(s[k], list)],
            "value": [str(s[k]) for k in s if not isinstance(s[k], list)],
        }
    )
    body = (
        '<p class="note">Candidates are selected by mean pooled out-of-sample Sharpe over the '
        "selection days. PBO: combinatorially symmetric cross-validation over per-bar returns "
        "(Bailey, Borwein, López de Prado and Zhu 2017); DSR: the winner's per-bar Sharpe "
        "deflated by the number of trials and their Sharpe variance (Bailey and López de Prado "
        "2014). Holdout figures are the winner's on days selection never saw.</p>"
        f"<h2>Selected candidate, DSR and holdout</h2>{html_table(facts)}"
        f"<h2>OOS Sharpe heat map</h2>{_img('sweep_heatmap', files['sweep_heatmap.png'], 'pooled OOS Sharpe')}"
        f"<h2>IS vs OOS</h2>{_img('sweep_is_oos', files['sweep_is_oos.png'], 'degradation')}"
        f"<h2>PBO</h2>{_img('sweep_pbo_logits', files['sweep_pbo_logits.png'], 'logits')}"
        f"<h2>Candidates</h2>{html_table(per.sort('sharpe_oos', descending=True, nulls_last=True))}"
    )
    files[file_name] = _page(title, body)
    return files


def render_model_report(
    y: np.ndarray,
    oos_prob: np.ndarray,
    importance: dict[str, float],
    side_by_side: dict[str, dict[str, float]],
    cv: dict[str, Any],
    *,
    title: str = "mdpipe meta-model",
    file_name: str = "model.html",
) -> dict[str, bytes]:
    """A meta-model's page: OOS ROC, calibration curve, MDA importance bars, and OOS precision
    and returns of detector-only, meta-labelled, random and always-in side by side."""
    from mdpipe.core.metrics import calibration_table, roc_curve

    files: dict[str, bytes] = {}
    fig = _new_figure(11, 4.5)
    a1, a2 = fig.subplots(1, 2)
    if y.size and y.any() and not y.all():
        fpr, tpr, _ = roc_curve(oos_prob, y)
        a1.plot(fpr, tpr)
        a1.plot([0, 1], [0, 1], color="#888", ls="--")
        a1.set_title(f"OOS ROC, AUC = {cv.get('oos_auc', math.nan):.3f}")
        a1.set_xlabel("false positive rate")
        a1.set_ylabel("true positive rate")
        cal = calibration_table(oos_prob, y)
        a2.plot(cal["mean_score"], cal["hit_rate"], marker="o")
        a2.plot([0, 1], [0, 1], color="#888", ls="--")
        a2.set_title("calibration (OOS)")
        a2.set_xlabel("predicted probability")
        a2.set_ylabel("profit-barrier rate")
    else:
        _no_data(a1, "OOS predictions")
        _no_data(a2, "OOS predictions")
    files["model_roc_calibration.png"] = _png(fig)
    fig = _new_figure(8, 5)
    ax = fig.add_subplot()
    items = sorted(importance.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("MDA: OOS log-loss increase when permuted")
    files["model_importance.png"] = _png(fig)
    sbs = pl.DataFrame([{"strategy": k, **v} for k, v in side_by_side.items()])
    body = (
        '<p class="note">Out of sample under purged, embargoed k-fold; meta-labelled acts '
        "when P(profit barrier) >= 0.5; random acts on as many signals, drawn at random; "
        "always-in takes every grid point.</p>"
        f"<h2>Side by side (OOS)</h2>{html_table(sbs)}"
        f"<h2>ROC and calibration</h2>{_img('model_roc_calibration', files['model_roc_calibration.png'], 'ROC, calibration')}"
        f"<h2>Importance</h2>{_img('model_importance', files['model_importance.png'], 'MDA')}"
        f"<h2>CV</h2>{html_table(pl.DataFrame(cv.get('folds', [])))}"
    )
    files[file_name] = _page(title, body)
    return files
