"""Sweeps: many settings candidates through the same labels, CV and metrics as `mdpipe run`,
then selection statistics that say how much of the winner is luck.

A grid file (TOML) names values for any field of `[detectors]` and `[backtest]` (and
`[cross_venue]` when the settings have that section); every value is converted and checked by
`mdpipe.settings`, so an unknown field or a bad value is an error naming the file, the section
and the key. A `[sweep]` table holds the sweep's own options:

    [sweep]
    samples = 50          # N seeded random draws from the grid (absent: the full grid)
    seed = 1
    holdout_days = 1      # the last days of the data, never seen by selection
    cscv_blocks = 10      # PBO: even number of contiguous blocks
    bar_seconds = 300     # returns per bar for PBO and DSR
    [detectors]
    drift_threshold = [2.0, 3.0, 4.0]
    [backtest]
    profit_target_pct = [0.002, 0.005]

Work: features are computed once per partition (`steps.features_step`, the same step as
`mdpipe run`; feature settings are not sweepable for that reason); each candidate re-runs only
the detectors over them (`core.batch.detect_on_features`) and then labels, purged CV folds and
`core.metrics.evaluate` exactly as the pipeline does. Candidates run in a process pool (one
worker per core); each worker loads the partitions' feature columns once. Results are sorted by
candidate, and nothing in them depends on timing, so the same grid, seed and data give the same
tables bit for bit.

Selection: the candidate with the best mean pooled out-of-sample Sharpe over the selection
days wins. Per candidate a return series is built on `bar_seconds` bars over the selection
days (net PnL of its trades, acting on every signal, by exit bar, over initial capital); the
matrix of those series gives PBO by CSCV, and the winner's series with the spread of every
candidate's bar Sharpe gives the Deflated Sharpe Ratio (`mdpipe.core.selection`). The last
`holdout_days` days are then evaluated for the winner alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mdpipe.core.batch import REDETECT_COLUMNS, detect_on_features
from mdpipe.core.config import BacktestConfig, settings_id
from mdpipe.core.cv import make_cv_folds
from mdpipe.core.detectors.ensemble import DetectorConfig
from mdpipe.core.labels import PricePath, TradePath, empty_labels, make_labels
from mdpipe.core.metrics import Evaluation, evaluate
from mdpipe.core.selection import deflated_sharpe, pbo_cscv, sharpe
from mdpipe.lake import Lake
from mdpipe.pipeline.steps import (
    WARMUP_SECONDS,
    Part,
    derived,
    features_step,
    price_path,
    raw_parts,
    trade_path,
)
from mdpipe.settings import FIELDS, SECTIONS, Settings, SettingsError, build_section, convert

SWEEPABLE = ("detectors", "backtest", "cross_venue")
SWEEPS_TABLE = "derived/sweeps"
SUMMARY_TABLE = "derived/sweep_summary"


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class SweepOptions:
    """samples, seed, holdout_days, cscv_blocks, bar_seconds: see the module docstring."""

    samples: int | None = None
    seed: int = 0
    holdout_days: int = 1
    cscv_blocks: int = 10
    bar_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.holdout_days, int) or self.holdout_days < 0:
            raise ValueError(f"holdout_days must be an integer >= 0, got {self.holdout_days!r}")
        if not isinstance(self.cscv_blocks, int) or self.cscv_blocks < 2 or self.cscv_blocks % 2:
            raise ValueError(f"cscv_blocks must be an even integer >= 2, got {self.cscv_blocks!r}")
        if not (isinstance(self.bar_seconds, int | float) and self.bar_seconds > 0):
            raise ValueError(f"bar_seconds must be a number > 0, got {self.bar_seconds!r}")


@dataclass(frozen=True)
class Grid:
    """Axes `{(section, key): values}` in file order, and the sweep options."""

    axes: tuple[tuple[tuple[str, str], tuple[Any, ...]], ...]
    options: SweepOptions
    source: str = "<grid>"

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes) if self.axes else 1

    def canonical(self) -> str:
        doc = {
            "axes": [[f"{s}.{k}", list(v)] for (s, k), v in self.axes],
            "options": self.options.__dict__,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


_OPTION_KINDS = {
    "samples": int,
    "seed": int,
    "holdout_days": int,
    "cscv_blocks": int,
    "bar_seconds": float,
}


def parse_grid(data: dict[str, Any], source: str = "<grid>") -> Grid:
    """A grid from parsed TOML; every value is converted and checked by `mdpipe.settings`."""
    axes: list[tuple[tuple[str, str], tuple[Any, ...]]] = []
    opts: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise SettingsError(f"{source}: {section!r} must be a table ([{section}])")
        if section == "sweep":
            for key, value in table.items():
                if key not in _OPTION_KINDS:
                    raise SettingsError(
                        f"{source} [sweep]: unknown key {key!r}; the known keys are "
                        + ", ".join(_OPTION_KINDS)
                    )
                want = _OPTION_KINDS[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or (
                    want is int and not isinstance(value, int)
                ):  # fmt: skip
                    raise SettingsError(
                        f"{source} [sweep] {key}: expected {'an integer' if want is int else 'a number'}, got {value!r}"
                    )
                opts[key] = want(value)
            continue
        if section not in SECTIONS:
            raise SettingsError(
                f"{source}: unknown section [{section}]; a grid varies "
                + ", ".join(f"[{s}]" for s in SWEEPABLE if s in SECTIONS)
                + " and takes options in [sweep]"
            )
        if section not in SWEEPABLE:
            raise SettingsError(
                f"{source}: [{section}] cannot be swept (features are computed once per sweep; "
                "run one sweep per feature setting)"
                if section == "features"
                else f"{source}: [{section}] cannot be swept; a grid varies "
                + ", ".join(f"[{s}]" for s in SWEEPABLE if s in SECTIONS)
            )
        fields = FIELDS[section]
        for key, values in table.items():
            if key not in fields:
                raise SettingsError(
                    f"{source} [{section}]: unknown key {key!r}; the known keys are "
                    + ", ".join(fields)
                )
            vals = values if isinstance(values, list) else [values]
            if not vals:
                raise SettingsError(f"{source} [{section}] {key}: an empty list of values")
            conv = []
            for v in vals:
                try:
                    conv.append(convert(fields[key], v, text=False))
                except ValueError as e:
                    raise SettingsError(f"{source} [{section}] {key}: {e}") from None
            axes.append(((section, key), tuple(dict.fromkeys(conv))))
    try:
        options = SweepOptions(**opts)
    except ValueError as e:
        raise SettingsError(f"{source} [sweep]: {e}") from None
    return Grid(tuple(axes), options, source)


def load_grid(path: str | os.PathLike[str]) -> Grid:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"grid file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{p}: not valid TOML: {e}") from None
    return parse_grid(data, str(p))


@dataclass(frozen=True)
class Candidate:
    index: int
    candidate_id: str
    params: dict[str, Any]  # "section.key" -> value
    detectors: DetectorConfig
    backtest: BacktestConfig
    settings_id: str

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"))


def candidates(grid: Grid, base: Settings) -> list[Candidate]:
    """The grid's candidates on top of `base` (full grid in order, or `samples` seeded draws
    without replacement, in grid order). Each one's settings are built and validated by
    `mdpipe.settings.build_section`; a bad combination names the grid file and the key."""
    n = grid.size
    opts = grid.options
    if opts.samples is not None and opts.samples < n:
        rng = np.random.default_rng(opts.seed)
        picks = sorted(int(i) for i in rng.choice(n, size=opts.samples, replace=False))
    else:
        picks = list(range(n))
    radices = [len(v) for _, v in grid.axes]
    out: list[Candidate] = []
    for i in picks:
        rest, digits = i, []
        for r in reversed(radices):
            digits.append(rest % r)
            rest //= r
        digits.reverse()
        params = {f"{s}.{k}": vals[d] for ((s, k), vals), d in zip(grid.axes, digits, strict=True)}
        sections: dict[str, dict[str, Any]] = {}
        for (s, k), _vals in grid.axes:
            sections.setdefault(s, {})[k] = params[f"{s}.{k}"]
        origin = f"{grid.source} candidate {i}"
        built = {
            s: build_section(s, {**base.section(s), **sections.get(s, {})}, origin)
            for s in ("detectors", "backtest")
        }
        cid = hashlib.sha256(
            json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:12]
        out.append(
            Candidate(
                index=len(out),
                candidate_id=cid,
                params=params,
                detectors=built["detectors"],
                backtest=built["backtest"],
                settings_id=settings_id(base.features, built["detectors"]),
            )
        )
    return out


# ---------------------------------------------------------------- one candidate


@dataclass
class PartData:
    """What every candidate needs of one partition, loaded once per worker."""

    part: Part
    features: pl.DataFrame  # REDETECT_COLUMNS
    warmup: pl.DataFrame | None
    own: PricePath
    next_path: PricePath | None
    full: PricePath
    trades: TradePath | None


def load_part(lake: Lake, part: Part, need_trades: bool) -> PartData:
    feats = lake.read(derived("features"), part.venue, part.symbol, part.date)
    feats = feats.select(REDETECT_COLUMNS)
    prev = part.shifted(-1)
    warm = None
    pf = lake.files(derived("features"), prev.venue, prev.symbol, prev.date)
    if pf:
        pw = pl.read_parquet(pf, columns=list(REDETECT_COLUMNS))
        if pw.height:
            cut = int(pw["ts_ns"].max()) - round(WARMUP_SECONDS * 1e9)  # type: ignore[arg-type]
            warm = pw.filter(pl.col("ts_ns") > cut)
    own, _ = price_path(lake, part, with_next=False)
    full, _ = price_path(lake, part)
    nxt = None
    if len(full) > len(own):
        n = len(own)
        nxt = PricePath(full.ts_ns[n:], full.bid[n:], full.ask[n:], full.mid[n:], full.end_ns)
    trades = trade_path(lake, part, BacktestConfig(barrier_price="trade")) if need_trades else None
    return PartData(part, feats, warm, own, nxt, full, trades)


def run_candidate(cand: Candidate, pd: PartData) -> tuple[pl.DataFrame, Evaluation | None]:
    """Signals -> labels -> purged CV folds -> evaluation of one candidate on one partition,
    by the same core calls as `mdpipe run`'s steps."""
    p = pd.part
    sig = detect_on_features(
        pd.features, cand.detectors, settings_id=cand.settings_id, venue=p.venue,
        symbol=p.symbol, warmup=pd.warmup,
    )  # fmt: skip
    cfg = cand.backtest
    trades = pd.trades if cfg.barrier_price == "trade" else None
    if len(pd.own) == 0:
        return empty_labels(), None
    labels = make_labels(sig, pd.own, cfg, next_path=pd.next_path, trades=trades)
    if len(pd.full) < 2:
        return labels, None
    folds = make_cv_folds(labels, cfg)
    return labels, evaluate(labels, folds, pd.full, cfg, partition=p.label, trades=trades)


def fold_rows(cand: Candidate, ev: Evaluation | None, part: Part) -> list[dict[str, Any]]:
    """The candidate's `derived/sweeps` rows of one partition: one per CV fold and the pooled
    out-of-sample row (fold -1, whose `sharpe_is` is the folds' mean in-sample Sharpe)."""
    base = {
        "candidate_id": cand.candidate_id,
        "settings_id": cand.settings_id,
        "params": cand.params_json,
        "partition": part.label,
    }
    if ev is None:
        return []
    m = ev.metrics
    full = m.filter((pl.col("fold") == -1) & (pl.col("sample") == "full"))
    full = full.filter((pl.col("strategy") == "detector") & (pl.col("signal_type") == "all"))
    n_sig = int(full["n_signals"][0]) if full.height else 0
    det = m.filter(pl.col("strategy") == "detector")
    rows = []
    is_sharpes = []
    folds = sorted(f for f in det["fold"].unique().to_list() if f >= 0)
    for f in [*folds, -1]:
        ins = det.filter((pl.col("fold") == f) & (pl.col("sample") == "in_sample"))
        oos = det.filter((pl.col("fold") == f) & (pl.col("sample") == "out_of_sample"))
        if oos.height == 0:
            continue
        o = oos.row(0, named=True)
        if f >= 0:
            s_is = float(ins["sharpe"][0]) if ins.height else math.nan
            is_sharpes.append(s_is)
        else:
            fin = [s for s in is_sharpes if math.isfinite(s)]
            s_is = float(np.mean(fin)) if fin else math.nan
        rows.append(
            {
                **base,
                "fold": int(f),
                "n_signals": n_sig,
                "n_signals_oos": int(o["n_signals"]),
                "sharpe_is": s_is,
                "sharpe_oos": float(o["sharpe"]),
                "net_pnl_oos": float(o["net_pnl"]),
                "precision_oos": float(o["precision"]),
                "hit_rate_oos": float(o["win_rate"]),
            }
        )
    return rows


def bar_returns(ev: Evaluation | None, part: PartData, bar_ns: int, capital: float) -> np.ndarray:
    """Net PnL of the candidate's trades (acting on every signal) by exit bar over the
    partition's span, as a fraction of initial capital."""
    if len(part.own) == 0:
        return np.zeros(0)
    t0 = part.part.start_ns
    n = int((int(part.own.ts_ns[-1]) - t0) // bar_ns) + 1
    lo = int((int(part.own.ts_ns[0]) - t0) // bar_ns)
    out = np.zeros(n)
    if ev is not None:
        bt = ev.curves.get((-1, "full", "detector"), {}).get("backtest")
        if bt is not None and bt.trades.height:
            tr = bt.trades.filter(~pl.col("censored") & pl.col("pnl").is_not_nan())
            idx = np.clip((tr["exit_ts_ns"].to_numpy() - t0) // bar_ns, 0, n - 1)
            np.add.at(out, idx, tr["pnl"].to_numpy() / capital)
    return out[lo:]


# ---------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(lake_root: str, parts: list[Part], need_trades: bool) -> None:
    lake = Lake(lake_root)
    _WORKER["parts"] = [load_part(lake, p, need_trades) for p in parts]


def _work(args: tuple[Candidate, int]) -> tuple[int, list[dict[str, Any]], np.ndarray]:
    cand, bar_ns = args
    rows: list[dict[str, Any]] = []
    bars = []
    for pd in _WORKER["parts"]:
        _, ev = run_candidate(cand, pd)
        rows.extend(fold_rows(cand, ev, pd.part))
        bars.append(bar_returns(ev, pd, bar_ns, cand.backtest.initial_capital))
    return cand.index, rows, np.concatenate(bars) if bars else np.zeros(0)


# ---------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    sweep_id: str
    sweeps: pl.DataFrame
    summary: pl.DataFrame
    candidates: list[Candidate]
    selected: Candidate | None
    returns: np.ndarray  # bars x candidates
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def sweep_parts(lake: Lake, market: str | None, dates: Sequence[str] | None) -> list[Part]:
    parts = raw_parts(lake)
    if market:
        parts = [p for p in parts if p.market == market]
    if dates:
        want = set(dates)
        parts = [p for p in parts if p.date in want]
    if not parts:
        raise ValueError(
            f"no partitions with book or trade data in {lake.root}"
            + (f" for market {market}" if market else "")
            + (f" on {', '.join(dates)}" if dates else "")
        )
    markets = sorted({p.market for p in parts})
    if len(markets) > 1:
        raise ValueError(
            f"a sweep covers one market; the lake has {', '.join(markets)}: choose one with --market"
        )
    return parts


def run_sweep(
    lake: Lake,
    grid: Grid,
    settings: Settings,
    *,
    market: str | None = None,
    dates: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    compute_features: bool = True,
) -> SweepResult:
    """Run the sweep (module docstring) and write `derived/sweeps` and `derived/sweep_summary`
    (one file per sweep, named by `sweep_id`, in the market's partition of the sweep's last
    day: re-running the same sweep replaces it)."""
    t0 = time.perf_counter()
    parts = sweep_parts(lake, market, dates)
    cands = candidates(grid, settings)
    opts = grid.options
    hold = opts.holdout_days if len(parts) > opts.holdout_days else 0
    sel_parts, hold_parts = (parts[:-hold], parts[-hold:]) if hold else (parts, [])
    secs: dict[str, float] = {}
    if compute_features:
        for p in parts:
            features_step(lake, p, feature_config=settings.features,
                          detector_config=settings.detectors)  # fmt: skip
    secs["features"] = time.perf_counter() - t0
    sweep_id = hashlib.sha256(
        "\n".join(
            [
                grid.canonical(),
                settings.settings_id,
                json.dumps(settings.section("backtest"), sort_keys=True),
                *(p.label for p in parts),
            ]
        ).encode()
    ).hexdigest()[:12]
    need_trades = any(c.backtest.barrier_price == "trade" for c in cands)
    bar_ns = round(opts.bar_seconds * 1e9)
    n_workers = max(1, min(workers or (os.cpu_count() or 1), len(cands)))
    results: list[tuple[int, list[dict[str, Any]], np.ndarray]] = []
    t1 = time.perf_counter()
    if n_workers == 1:
        _init_worker(str(lake.root), sel_parts, need_trades)
        for c in cands:
            results.append(_work((c, bar_ns)))
            if progress:
                progress(len(results), len(cands))
        _WORKER.clear()
    else:
        import multiprocessing as mp

        # spawn, not fork: polars and numba hold threads a fork would copy mid-flight
        with ProcessPoolExecutor(
            n_workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(str(lake.root), sel_parts, need_trades),
        ) as pool:  # fmt: skip
            for r in pool.map(_work, [(c, bar_ns) for c in cands], chunksize=1):
                results.append(r)
                if progress:
                    progress(len(results), len(cands))
    secs["candidates"] = time.perf_counter() - t1
    results.sort(key=lambda r: r[0])
    rows = [row for _, rs, _ in results for row in rs]
    sweeps = _sweeps_frame(sweep_id, rows)
    rets = np.stack([r[2] for r in results], axis=1) if results else np.zeros((0, 0))
    summary, selected = _select(sweep_id, cands, sweeps, rets, opts, sel_parts, hold_parts)
    if selected is not None and hold_parts:
        summary = summary.with_columns(**_holdout(lake, selected, hold_parts, need_trades))
    last = parts[-1]
    name = f"sweep-{sweep_id}.parquet"
    paths = {
        "sweeps": lake.publish(SWEEPS_TABLE, last.venue, last.symbol, last.date, sweeps, name),
        "summary": lake.publish(SUMMARY_TABLE, last.venue, last.symbol, last.date, summary, name),
    }
    secs["total"] = time.perf_counter() - t0
    return SweepResult(sweep_id, sweeps, summary, cands, selected, rets, paths, secs)


def _sweeps_frame(sweep_id: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    from mdpipe.lake import RESULT_SCHEMAS

    schema = RESULT_SCHEMAS[SWEEPS_TABLE]
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([{"sweep_id": sweep_id, **r} for r in rows], schema=schema)


def _select(
    sweep_id: str,
    cands: list[Candidate],
    sweeps: pl.DataFrame,
    rets: np.ndarray,
    opts: SweepOptions,
    sel_parts: list[Part],
    hold_parts: list[Part],
) -> tuple[pl.DataFrame, Candidate | None]:
    pooled = sweeps.filter(pl.col("fold") == -1)
    score = {c.candidate_id: -math.inf for c in cands}
    for (cid,), g in pooled.group_by("candidate_id"):
        v = g["sharpe_oos"].to_numpy()
        v = v[np.isfinite(v)]
        if v.size:
            score[str(cid)] = float(v.mean())
    selected = None
    if cands:
        best = max(range(len(cands)), key=lambda i: (score[cands[i].candidate_id], -i))
        selected = cands[best]
    out: dict[str, Any] = {
        "sweep_id": sweep_id,
        "n_candidates": len(cands),
        "selected_candidate_id": selected.candidate_id if selected else None,
        "selected_params": selected.params_json if selected else None,
        "selected_settings_id": selected.settings_id if selected else None,
        # -inf: no candidate had a finite OOS Sharpe (the first one is then "selected")
        "selected_sharpe_oos": _finite(score[selected.candidate_id]) if selected else math.nan,
        "selection_dates": ",".join(p.date for p in sel_parts),
        "holdout_dates": ",".join(p.date for p in hold_parts),
        "seed": opts.seed,
        "samples": opts.samples,
        "n_bars": int(rets.shape[0]),
        "bar_seconds": float(opts.bar_seconds),
    }
    pbo: dict[str, Any] = {
        "pbo": math.nan, "pbo_slope": math.nan, "pbo_intercept": math.nan,
        "prob_oos_loss": math.nan, "n_splits": 0, "pbo_logits": [], "pbo_is": [], "pbo_oos": [],
    }  # fmt: skip
    if rets.shape[1] >= 2 and rets.shape[0] >= 2 * opts.cscv_blocks:
        r = pbo_cscv(rets, n_blocks=opts.cscv_blocks)
        pbo = {
            "pbo": r.pbo, "pbo_slope": r.slope, "pbo_intercept": r.intercept,
            "prob_oos_loss": r.prob_oos_loss, "n_splits": r.n_splits,
            "pbo_logits": r.logits.tolist(), "pbo_is": r.is_best.tolist(),
            "pbo_oos": r.oos_of_best.tolist(),
        }  # fmt: skip
    out.update(pbo)
    dsr: dict[str, Any] = {k: math.nan for k in ("dsr", "psr", "sr_bar", "sr0", "sr_variance",
                                                   "skew", "kurtosis")}  # fmt: skip
    if selected is not None and rets.shape[0] >= 3:
        trial = np.array([sharpe(rets[:, i]) for i in range(rets.shape[1])])
        d = deflated_sharpe(rets[:, selected.index], trial)
        dsr = {"dsr": d.dsr, "psr": d.psr0, "sr_bar": d.sharpe, "sr0": d.sr0,
               "sr_variance": d.sharpe_variance, "skew": d.skew, "kurtosis": d.kurtosis}  # fmt: skip
    out.update(dsr)
    out["n_trials"] = len(cands)
    for k in ("holdout_n_signals", "holdout_sharpe", "holdout_net_pnl", "holdout_precision",
              "holdout_hit_rate"):  # fmt: skip
        out[k] = math.nan
    from mdpipe.lake import RESULT_SCHEMAS

    return pl.DataFrame([out], schema=RESULT_SCHEMAS[SUMMARY_TABLE]), selected


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan


def _holdout(
    lake: Lake, cand: Candidate, parts: list[Part], need_trades: bool
) -> dict[str, pl.Expr]:
    """The selected candidate on the holdout days, acting on every signal (no threshold is
    fitted there: the holdout is only looked at)."""
    n_sig, pnl, hits, acted, sharpes, wins, trades = 0, 0.0, 0.0, 0.0, [], 0.0, 0.0
    for p in parts:
        _, ev = run_candidate(cand, load_part(lake, p, need_trades))
        if ev is None:
            continue
        m = ev.metrics.filter(
            (pl.col("fold") == -1) & (pl.col("sample") == "full")
            & (pl.col("strategy") == "detector") & (pl.col("signal_type") == "all")
        ).row(0, named=True)  # fmt: skip
        n_sig += int(m["n_signals"])
        pnl += float(m["net_pnl"])
        acted += float(m["n_acted"])
        if math.isfinite(m["precision"]):
            hits += float(m["precision"]) * float(m["n_acted"])
        if math.isfinite(m["win_rate"]):
            wins += float(m["win_rate"]) * float(m["n_trades"])
        trades += float(m["n_trades"])
        sharpes.append(float(m["sharpe"]))
    fin = [s for s in sharpes if math.isfinite(s)]
    return {
        "holdout_n_signals": pl.lit(float(n_sig)),
        "holdout_sharpe": pl.lit(float(np.mean(fin)) if fin else math.nan),
        "holdout_net_pnl": pl.lit(pnl),
        "holdout_precision": pl.lit(hits / acted if acted else math.nan),
        "holdout_hit_rate": pl.lit(wins / trades if trades else math.nan),
    }


def selected_labels(
    lake: Lake, cand: Candidate, parts: Sequence[Part]
) -> list[tuple[Part, pl.DataFrame, pl.DataFrame]]:
    """(part, signals, labels) of one candidate per partition, for training its meta-model."""
    out = []
    for p in parts:
        pd = load_part(lake, p, cand.backtest.barrier_price == "trade")
        sig = detect_on_features(
            pd.features, cand.detectors, settings_id=cand.settings_id, venue=p.venue,
            symbol=p.symbol, warmup=pd.warmup,
        )  # fmt: skip
        labels, _ = run_candidate(cand, pd)
        out.append((p, sig, labels))
    return out


@dataclass
class SweepOutcome:
    result: SweepResult
    report: Path | None
    model_id: str | None
    model_dir: Path | None
    model_error: str | None


def sweep_and_learn(
    lake: Lake,
    grid: Grid,
    settings: Settings,
    *,
    market: str | None = None,
    dates: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    train_model: bool = True,
) -> SweepOutcome:
    """What `mdpipe sweep` and the `sweep` asset do: the sweep, its report page (next to the
    summary file), and a meta-model for the selected candidate trained on the selection days
    (never the holdout) with its own page in the model folder."""
    from mdpipe.core.report import render_model_report, render_sweep_report
    from mdpipe.pipeline.models import train_and_publish, training_rows
    from mdpipe.pipeline.reports import publish

    res = run_sweep(lake, grid, settings, market=market, dates=dates, workers=workers,
                    progress=progress)  # fmt: skip
    out_dir = res.paths["summary"].parent
    files = render_sweep_report(
        res.sweeps, res.summary, title=f"mdpipe sweep {res.sweep_id}",
        file_name=f"sweep-{res.sweep_id}.html",
    )  # fmt: skip
    files = {k if k.endswith(".html") else f"sweep-{res.sweep_id}-{k}": v for k, v in files.items()}
    publish(files, out_dir)
    report = out_dir / f"sweep-{res.sweep_id}.html"
    model_id = mdir = err = None
    if train_model and res.selected is not None:
        cand = res.selected
        sel = [p for p in sweep_parts(lake, market, dates)
               if p.date in res.summary["selection_dates"][0].split(",")]  # fmt: skip
        items = selected_labels(lake, cand, sel)
        try:
            model_id, mdir, model, meta = train_and_publish(
                lake, items, settings_id=cand.settings_id, backtest=cand.backtest,
                params=cand.params, seed=grid.options.seed,
            )  # fmt: skip
        except ValueError as e:  # too few labelled signals, or one outcome only
            err = str(e)
        else:
            rows = training_rows(lake, items)
            publish(
                render_model_report(
                    rows.y[model.oos_index], model.oos_prob, model.importance,
                    meta["side_by_side_oos"], model.cv, title=f"mdpipe meta-model {model_id}",
                ),
                mdir,
            )  # fmt: skip
    return SweepOutcome(res, report, model_id, mdir, err)


__all__ = [
    "SUMMARY_TABLE",
    "SWEEPS_TABLE",
    "Candidate",
    "Grid",
    "SweepOptions",
    "SweepResult",
    "candidates",
    "load_grid",
    "parse_grid",
    "run_sweep",
    "sweep_and_learn",
]
