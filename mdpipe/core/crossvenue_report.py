"""The cross-venue report of one day x underlying: basis per pair (with funding beside it when
the lake has `mark` rows), the Hayashi-Yoshida lead-lag curve with its shuffled-time null
band, and the pair and venue tables. Pure: frames in, file contents by name out (the HTML and
its PNGs), drawn like `mdpipe.core.report` (matplotlib object API, PNGs embedded)."""

from __future__ import annotations

import html
import math

import numpy as np
import polars as pl

from mdpipe.core.report import CSS, _img, _new_figure, _no_data, _png, html_table

PLOTS = ("basis", "lead_lag")


def _pairs(frame: pl.DataFrame) -> list[tuple[str, str, str, str]]:
    if frame.height == 0:
        return []
    keys = frame.select("venue_a", "symbol_a", "venue_b", "symbol_b").unique(maintain_order=True)
    return [tuple(r) for r in keys.iter_rows()]


def _of(frame: pl.DataFrame, pair: tuple[str, str, str, str]) -> pl.DataFrame:
    va, sa, vb, sb = pair
    return frame.filter(
        (pl.col("venue_a") == va)
        & (pl.col("symbol_a") == sa)
        & (pl.col("venue_b") == vb)
        & (pl.col("symbol_b") == sb)
    )


def _label(pair: tuple[str, str, str, str]) -> str:
    return f"{pair[2]}:{pair[3]} - {pair[0]}:{pair[1]}"


def plot_basis(basis: pl.DataFrame, signals: pl.DataFrame, funding: pl.DataFrame) -> bytes:
    pairs = _pairs(basis)
    rows = max(len(pairs), 1) + (1 if funding.height else 0)
    fig = _new_figure(11.0, 2.6 * rows)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    if not pairs:
        _no_data(axes[0], "basis (the markets never overlapped)")
        return _png(fig)
    t0 = int(basis["ts_ns"].min())  # type: ignore[arg-type]
    for ax, pair in zip(axes, pairs, strict=False):
        b = _of(basis, pair)
        step = max(1, b.height // 20_000)
        b = b.gather_every(step)
        t = (b["ts_ns"].to_numpy() - t0) / 1e9
        ax.plot(t, b["basis_bps"].to_numpy(), lw=0.7, color="#2b5d9b", label="basis (bps)")
        for side, color in (("a", "#6a3d9a"), ("b", "#2a9d4a")):
            col = f"index_basis_{side}_bps"
            if col in b.columns and b[col].is_not_null().any():
                who = pair[0] if side == "a" else pair[2]
                ax.plot(t, b[col].cast(pl.Float64).fill_null(np.nan).to_numpy(), lw=0.6,
                        color=color, label=f"{who} mid vs its index (bps)")  # fmt: skip
                ax.legend(fontsize=7, loc="upper left")
        ax.set_ylabel("basis bps")
        ax.set_title(f"basis {_label(pair)}: (mid_b - mid_a) / mid_a", fontsize=9)
        z = b["basis_z"].to_numpy()
        if np.isfinite(z).any():
            az = ax.twinx()
            az.plot(t, z, lw=0.5, color="#c77d1a", alpha=0.6)
            az.set_ylabel("z", color="#c77d1a")
        if signals.height:
            own = signals.filter(
                pl.col("leader_venue").is_in([pair[0], pair[2]])
                & pl.col("venue").is_in([pair[0], pair[2]])
            )
            for trig, color in (("basis_z", "#b22"), ("leader_move", "#2a2")):
                s = own.filter(pl.col("trigger") == trig)
                for x in (s["ts_ns"].to_numpy() - t0) / 1e9:
                    ax.axvline(x, color=color, lw=0.6, alpha=0.6)
        ax.set_xlabel("seconds since the first grid point")
    if funding.height:
        ax = axes[-1]
        for (venue, symbol), f in funding.group_by("venue", "symbol", maintain_order=True):
            t = (f["exch_ts_ns"].to_numpy() - t0) / 1e9
            ax.step(t, f["funding_rate"].to_numpy() * 1e4, where="post", lw=0.8,
                    label=f"{venue}:{symbol}")  # fmt: skip
        ax.set_ylabel("funding (bps)")
        ax.set_title("funding rate (mark table)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_lead_lag(lead_lag: pl.DataFrame) -> bytes:
    pairs = _pairs(lead_lag)
    fig = _new_figure(11.0, 3.2 * max(len(pairs), 1))
    axes = fig.subplots(max(len(pairs), 1), 1, squeeze=False)[:, 0]
    if not pairs:
        _no_data(axes[0], "lead-lag")
        return _png(fig)
    for ax, pair in zip(axes, pairs, strict=False):
        r = _of(lead_lag, pair).sort("lag_ns")
        lag = r["lag_ns"].to_numpy() / 1e6
        lo, hi = r["null_lo"].to_numpy(), r["null_hi"].to_numpy()
        if np.isfinite(lo).any():
            ax.fill_between(lag, lo, hi, color="#bbb", alpha=0.5, label="shuffled-time null")
        ax.plot(lag, r["hy_corr"].to_numpy(), marker=".", lw=1.0, color="#2b5d9b",
                label="Hayashi-Yoshida corr")  # fmt: skip
        ax.axvline(0, color="#555", lw=0.5)
        first = r.row(0, named=True)
        ax.set_title(
            f"{_label(pair)}: max at {first['max_lag_ns'] / 1e6:+.0f} ms (> 0: "
            f"{pair[0]} leads), ratio {first['lead_lag_ratio']:.2f}, p {first['p_value']:.3f}",
            fontsize=9,
        )
        ax.set_xlabel("lag (ms)")
        ax.set_ylabel("correlation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def pair_table(lead_lag: pl.DataFrame) -> pl.DataFrame:
    if lead_lag.height == 0:
        return pl.DataFrame()
    first = lead_lag.group_by("venue_a", "symbol_a", "venue_b", "symbol_b", maintain_order=True)
    t = first.agg(
        pl.col("max_lag_ns").first(),
        pl.col("max_corr").first(),
        pl.col("lead_lag_ratio").first(),
        pl.col("p_value").first(),
        pl.col("n_changes_a").first(),
        pl.col("n_changes_b").first(),
    )
    return t.with_columns(
        (pl.col("max_lag_ns") / 1e6).alias("lead_ms"),
        pl.when(pl.col("max_lag_ns") > 0)
        .then(pl.col("venue_a") + ":" + pl.col("symbol_a"))
        .when(pl.col("max_lag_ns") < 0)
        .then(pl.col("venue_b") + ":" + pl.col("symbol_b"))
        .otherwise(pl.lit("none"))
        .alias("leader"),
    ).drop("max_lag_ns")


def index_table(basis: pl.DataFrame, funding: pl.DataFrame) -> pl.DataFrame:
    """Per market with an index: grid points, mean and last basis against the index (bps),
    and the funding rate (last, mean; bps) beside it."""
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for side in ("a", "b"):
        col = f"index_basis_{side}_bps"
        if col not in basis.columns:
            continue
        got = basis.filter(pl.col(col).is_not_null())
        for (venue, symbol), b in got.group_by(f"venue_{side}", f"symbol_{side}",
                                                maintain_order=True):  # fmt: skip
            rows.setdefault((str(venue), str(symbol)), {
                "venue": venue, "symbol": symbol, "grid_points": b.height,
                "index_basis_mean_bps": finite_or_none(float(b[col].mean())),  # type: ignore[arg-type]
                "index_basis_last_bps": finite_or_none(float(b[col][-1])),
            })  # fmt: skip
    if funding.height:
        for (venue, symbol), f in funding.group_by("venue", "symbol", maintain_order=True):
            r = rows.setdefault((str(venue), str(symbol)), {"venue": venue, "symbol": symbol})
            fr = f["funding_rate"].drop_nulls()
            r["funding_last_bps"] = finite_or_none(float(fr[-1]) * 1e4) if fr.len() else None
            r["funding_mean_bps"] = (
                finite_or_none(float(fr.mean()) * 1e4) if fr.len() else None  # type: ignore[arg-type]
            )
    return pl.DataFrame(list(rows.values())) if rows else pl.DataFrame()


def render_cross_report(
    title: str,
    basis: pl.DataFrame,
    lead_lag: pl.DataFrame,
    signals: pl.DataFrame,
    venues: pl.DataFrame,
    funding: pl.DataFrame | None = None,
    *,
    notes: list[str] | None = None,
    file_name: str = "report.html",
) -> dict[str, bytes]:
    """The report's files: `<plot>.png` for PLOTS, then the HTML (`file_name`)."""
    funding = funding if funding is not None else pl.DataFrame()
    pngs = {
        "basis": plot_basis(basis, signals, funding),
        "lead_lag": plot_lead_lag(lead_lag),
    }
    per = pl.DataFrame()
    against_index = index_table(basis, funding)
    if signals.height:
        per = signals.group_by("venue", "symbol", "trigger").len().sort("venue", "symbol")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='note'>Basis on an exchange-time grid (last mid at or before each point); "
        "lead-lag: Hayashi-Yoshida (2005) correlation of log mid changes, b shifted by the lag "
        "(positive: a leads), lead-lag ratio of Huth &amp; Abergel (2014); band: quantiles of "
        "the shuffled-time null.</p>",
        "<h2>Pairs</h2>",
        html_table(pair_table(lead_lag)),
        "<h2>Venues: receive minus exchange time</h2>",
        "<p class='note'>Venues are aligned on exchange time; the recording host's clock "
        "offset is shown, not hidden.</p>",
        html_table(venues),
        _img("basis", pngs["basis"], "basis per pair, z-score (orange), signals (lines)"),
        _img("lead_lag", pngs["lead_lag"], "lead-lag curve with the null band"),
        "<h2>Cross-venue signals</h2>",
        html_table(per) if per.height else "<p>none</p>",
    ]
    if funding.height == 0:
        parts.append("<p class='note'>No funding rates: the lake has no <code>mark</code> rows "
                     "for these markets.</p>")  # fmt: skip
    else:
        parts += [
            "<h2>Perpetuals against their index; funding</h2>",
            "<p class='note'>Mid against the index price of the <code>mark</code> table on the "
            "basis grid, (mid - index) / index; funding rate of the same rows (bps per "
            "funding interval).</p>",
            html_table(against_index) if against_index.height else "<p>none</p>",
        ]
    for n in notes or []:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    parts.append("</body></html>")
    out = {f"{k}.png": v for k, v in pngs.items()}
    out[file_name] = "\n".join(parts).encode()
    return out


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None
