"""`mdpipe run`: materialise every asset through Dagster, in process, for the lake's partitions.

Order (the same one a backfill needs): markets are registered as `market` partitions, `ticks`
observations are reported, then `features` + `signals` of every partition (oldest day first),
then `labels` -> `cv_folds` -> `evaluation` of every partition (so day D's labels can look into
day D+1's features), then `evaluation_summary`. Each partition is one in-process Dagster run
(`JobDefinition.execute_in_process`) with asset checks evaluated in the same step.

The Dagster instance is the persistent one `dagster dev` shows (`mdpipe.instance`):
`$DAGSTER_HOME` when set, else `./.dagster_home`, created on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mdpipe.lake import Lake

if TYPE_CHECKING:
    from mdpipe.settings import Settings

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunOutcome:
    """What `execute` did: per run, success; failed checks; headline rows per partition."""

    runs: list[tuple[str, str, bool]] = field(default_factory=list)  # (stage, partition, ok)
    failed_checks: list[str] = field(default_factory=list)  # ERROR severity
    warnings: list[str] = field(default_factory=list)  # WARN severity
    notes: list[str] = field(default_factory=list)  # what a partition lacks (e.g. no book)
    lead_lag: list[str] = field(default_factory=list)  # one line per cross-venue pair
    reports: dict[str, str] = field(default_factory=dict)
    summary_report: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in self.runs) and not self.failed_checks


def select_parts(lake: Lake, market: str | None = None, date: str | None = None) -> list[Any]:
    """Partitions with raw data, narrowed to a market (`binance:BTC-USDT`, or the unified
    symbol `BTC/USDT` on any venue) and/or a date."""
    from mdpipe.pipeline.steps import raw_parts

    parts = raw_parts(lake)
    if market:
        parts = [p for p in parts if market in (p.market, p.symbol)]
    if date:
        parts = [p for p in parts if p.date == date]
    return parts


@contextlib.contextmanager
def dagster_instance() -> Iterator[Any]:
    from mdpipe.instance import open_instance

    with open_instance() as inst:
        yield inst


def register_markets(instance: Any, lake: Lake) -> list[str]:
    """Add the lake's markets to the dynamic `market` partitions; returns those added."""
    from mdpipe.defs.partitions import MARKET_DIMENSION
    from mdpipe.defs.sensors import new_markets

    added = new_markets(lake, set(instance.get_dynamic_partitions(MARKET_DIMENSION)))
    if added:
        instance.add_dynamic_partitions(MARKET_DIMENSION, added)
    return added


def report_tick_observations(instance: Any, lake: Lake, parts: Sequence[Any]) -> int:
    import dagster as dg

    from mdpipe.defs.assets import observe_ticks
    from mdpipe.defs.partitions import MARKET_DIMENSION

    wanted = {(p.date, p.market) for p in parts}
    n = 0
    for key, version, meta in observe_ticks(
        lake, set(instance.get_dynamic_partitions(MARKET_DIMENSION))
    ):
        dims = key.keys_by_dimension
        if (dims["date"], dims["market"]) not in wanted:
            continue
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key="ticks",
                partition=str(key),
                metadata=meta,
                tags={"dagster/data_version": version},
            )
        )
        n += 1
    return n


def run_config_for(settings: Settings | None) -> dict[str, Any]:
    """Run config giving the `features`, `detectors` and `backtest` resources every value of
    `settings` (None: the resources' own defaults, i.e. the settings the code location found)."""
    cfg: dict[str, Any] = dict(QUIET_LOGS)
    if settings is not None:
        cfg.update(settings.run_config())
    return cfg


def execute(
    lake: Lake,
    parts: Sequence[Any],
    *,
    instance: Any,
    settings: Settings | None = None,
    on_step: Any = None,
) -> RunOutcome:
    """Run both stages and the summary for `parts` on `instance` (no printing)."""
    import dagster as dg

    from mdpipe.defs import build_defs
    from mdpipe.defs.assets import LABEL_STAGE_KEYS
    from mdpipe.defs.partitions import partition_key
    from mdpipe.pipeline.steps import report_dir

    t0 = time.perf_counter()
    defs = build_defs(str(lake.root), settings)
    job = defs.resolve_job_def("pipeline_job")
    summary_job = defs.resolve_job_def("summary_job")
    run_config = run_config_for(settings)
    out = RunOutcome()
    feature_keys = [dg.AssetKey("features"), dg.AssetKey("signals")]
    for stage, keys in (("features", feature_keys), ("labels", LABEL_STAGE_KEYS)):
        if stage == "labels":
            # cross-venue signals are labelled with the others: their stage comes first
            run_cross_venue(defs, lake, parts, instance, run_config, out, on_step)
        for part in sorted(parts, key=lambda p: (p.date, p.market)):
            if on_step:
                on_step(stage, part.label)
            res = job.execute_in_process(
                run_config=run_config,
                instance=instance,
                partition_key=str(partition_key(part.date, part.market)),
                asset_selection=keys,
                raise_on_error=False,
                tags={"mdpipe/stage": stage},
            )
            out.runs.append((stage, part.label, res.success))
            for ev in res.get_asset_check_evaluations():
                missing = ev.metadata.get("missing")
                if missing is not None:
                    out.notes.append(f"{part.label}: {getattr(missing, 'value', missing)}")
                if ev.passed:
                    continue
                name = f"{part.label} {ev.asset_key.to_user_string()}.{ev.check_name}"
                if ev.severity == dg.AssetCheckSeverity.WARN:
                    out.warnings.append(name)
                else:
                    out.failed_checks.append(name)
            if stage == "labels":
                rep = report_dir(lake, part) / "report.html"
                if rep.exists():
                    out.reports[part.label] = str(rep)
    if on_step:
        on_step("summary", "all partitions")
    res = summary_job.execute_in_process(
        run_config=dict(QUIET_LOGS), instance=instance, raise_on_error=False
    )
    out.runs.append(("summary", "all", res.success))
    summary = lake.root / "derived" / "evaluation" / "summary.html"
    out.summary_report = str(summary) if summary.exists() else None
    out.seconds = time.perf_counter() - t0
    return out


def run_cross_venue(
    defs: Any,
    lake: Lake,
    parts: Sequence[Any],
    instance: Any,
    run_config: dict[str, Any],
    out: RunOutcome,
    on_step: Any = None,
) -> None:
    """basis, lead_lag and cross_venue_signals of every day x underlying of `parts` with two
    or more markets (registered as `underlying` partitions first)."""
    from mdpipe.defs.crossvenue import UNDERLYING_DIMENSION
    from mdpipe.lake import LEAD_LAG_TABLE
    from mdpipe.pipeline.crossvenue import cross_parts, lead_lag_summary

    todo = cross_parts(lake, sorted({p.date for p in parts}))
    known = set(instance.get_dynamic_partitions(UNDERLYING_DIMENSION))
    new = sorted({c.underlying for c in todo} - known)
    if new:
        instance.add_dynamic_partitions(UNDERLYING_DIMENSION, new)
    job = defs.resolve_job_def("cross_venue_job")
    for cp in todo:
        if on_step:
            on_step("cross", cp.label)
        res = job.execute_in_process(
            run_config=run_config, instance=instance, partition_key=cp.label,
            raise_on_error=False, tags={"mdpipe/stage": "cross_venue"},
        )  # fmt: skip
        out.runs.append(("cross_venue", cp.label, res.success))
        if res.success:
            out.lead_lag.extend(
                lead_lag_summary(lake.read_underlying(LEAD_LAG_TABLE, cp.underlying, cp.date))
            )
        rep = lake.underlying_dir("derived/basis", cp.underlying, cp.date) / "report.html"
        if rep.exists():
            out.reports[f"cross {cp.label}"] = str(rep)


def run_pipeline(
    lake: Lake,
    console: Console,
    market: str | None = None,
    date: str | None = None,
    *,
    settings: Settings | None = None,
) -> int:
    """Materialise every asset for the lake's partitions (optionally one market / date), show
    progress, print the headline table and the report paths. Returns the exit code: 0 when
    every run succeeded and no ERROR-severity check failed, 1 otherwise, 2 when there is
    nothing to run."""
    import dagster as dg

    parts = select_parts(lake, market, date)
    if not parts:
        what = " ".join(x for x in (market, date) if x) or "any market"
        console.print(f"[red]no data for {what} in {lake.root}[/red] (run `mdpipe import` first)")
        return 2
    with dagster_instance() as instance:
        added = register_markets(instance, lake)
        if added:
            console.print(f"registered market partitions: {', '.join(added)}")
        n_obs = report_tick_observations(instance, lake, parts)
        console.print(f"observed ticks of {n_obs} partition(s) in {lake.root}")
        if settings is not None:
            console.print(
                f"settings: {settings.source or 'defaults'} (settings_id {settings.settings_id})"
            )
        total = 2 * len(parts) + 1
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            task = progress.add_task("starting", total=total)
            started = [False]

            def on_step(stage: str, label: str) -> None:
                if started[0]:
                    progress.advance(task)
                started[0] = True
                progress.update(task, description=f"{stage:<8} {label}")

            with warnings.catch_warnings():
                # Dagster flags some of its own APIs as beta on every definition load
                warnings.simplefilter("ignore", dg.BetaWarning)
                outcome = execute(
                    lake, parts, instance=instance, settings=settings, on_step=on_step
                )
            progress.update(task, completed=total, description="done")
    print_outcome(console, lake, outcome)
    # Derived tables become DuckDB views (signals, labels, evaluation, ...).
    console.print(f"catalog: {lake.build_catalog()}")
    return 0 if outcome.ok else 1


def headline_frame(lake: Lake, labels: Sequence[str] | None = None) -> pl.DataFrame:
    """Per partition: detector (all signals, and out-of-sample with fitted thresholds), the
    mean in-sample and out-of-sample fold figures, and the two baselines."""
    files = lake.files("derived/evaluation")
    frames = [lake.read_file(f) for f in files]
    frames = [f for f in frames if "fold" in f.columns]
    if not frames:
        return pl.DataFrame()
    m = pl.concat(frames, how="diagonal_relaxed").filter(pl.col("signal_type") == "all")
    if labels is not None:
        m = m.filter(pl.col("partition").is_in(list(labels)))
    cols = [
        "n_signals",
        "precision",
        "precision_at_10",
        "precision_at_50",
        "precision_at_100",
        "net_pnl",
        "sharpe",
        "max_drawdown",
        "win_rate",
        "roc_auc",
    ]
    cols = [c for c in cols if c in m.columns]
    whole = m.filter(pl.col("fold") == -1).with_columns(
        pl.when(pl.col("sample") == "full")
        .then(pl.col("strategy"))
        .otherwise(pl.col("strategy") + " OOS (pooled)")
        .alias("row")
    )
    folds = (
        m.filter(pl.col("fold") >= 0)
        .group_by("partition", "sample")
        .agg([pl.col(c).fill_nan(None).mean() for c in cols])
        .with_columns(("detector " + pl.col("sample") + " (fold mean)").alias("row"))
    )
    out = pl.concat(
        [whole.select("partition", "row", *cols), folds.select("partition", "row", *cols)],
        how="diagonal_relaxed",
    )
    order = {
        "detector": 0,
        "detector in_sample (fold mean)": 1,
        "detector out_of_sample (fold mean)": 2,
        "detector OOS (pooled)": 3,
        "random": 4,
        "always_in": 5,
    }
    return (
        out.with_columns(pl.col("row").replace_strict(order, default=9).alias("_o"))
        .sort("partition", "_o")
        .drop("_o")
    )


ROW_NAMES = {
    "detector": "detector",
    "detector in_sample (fold mean)": "IS fold mean",
    "detector out_of_sample (fold mean)": "OOS fold mean",
    "detector OOS (pooled)": "OOS pooled",
    "random": "random",
    "always_in": "always in",
}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e6:
            return f"{v:.0f}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_outcome(console: Console, lake: Lake, outcome: RunOutcome) -> None:
    bad = [f"{stage} {label}" for stage, label, ok in outcome.runs if not ok]
    head = headline_frame(lake, sorted(outcome.reports) or None)
    if head.height:
        short = {
            "n_signals": "signals",
            "precision": "prec",
            "precision_at_10": "p@10",
            "precision_at_50": "p@50",
            "precision_at_100": "p@100",
            "net_pnl": "net PnL",
            "sharpe": "Sharpe",
            "max_drawdown": "max DD",
            "win_rate": "win",
            "roc_auc": "AUC",
        }
        console.print(
            "[bold]evaluation headline[/bold] (costs included; IS/OOS: thresholds fitted on "
            "train folds, scored on test folds; baselines: random, always-in)"
        )
        for (label,), rows in head.partition_by("partition", as_dict=True).items():
            table = Table(title=str(label), box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
            table.add_column("", justify="left", no_wrap=True)
            # columns with no value at all (e.g. p@100 with fewer than 100 signals) are dropped
            cols = [
                c
                for c in head.columns
                if c not in ("partition", "row")
                and rows[c].fill_nan(None).null_count() < rows.height
            ]
            for c in cols:
                table.add_column(short.get(c, c), justify="right", no_wrap=True)
            for row in rows.iter_rows(named=True):
                table.add_row(ROW_NAMES.get(row["row"], row["row"]), *[_fmt(row[c]) for c in cols])
            console.print(table)
    for label, path in sorted(outcome.reports.items()):
        console.print(f"report {label}: {path}", soft_wrap=True)
    if outcome.summary_report:
        console.print(f"[bold]summary report:[/bold] {outcome.summary_report}", soft_wrap=True)
    for line in outcome.lead_lag:
        console.print(line, soft_wrap=True, highlight=False)
    for note in outcome.notes:
        console.print(f"[cyan]note:[/cyan] {note}", soft_wrap=True)
    for w in outcome.warnings:
        console.print(f"[yellow]check warning:[/yellow] {w}")
    for f in outcome.failed_checks:
        console.print(f"[red]check failed:[/red] {f}")
    for b in bad:
        console.print(f"[red]run failed:[/red] {b}")
    n = len(outcome.runs)
    console.print(
        f"{n - len(bad)}/{n} Dagster runs succeeded in {outcome.seconds:.1f} s"
        + ("" if outcome.ok else " [red](see above)[/red]")
    )


def cmd_run(args: argparse.Namespace) -> int:
    from mdpipe.settings import settings_from_args

    console = Console()
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        Console(stderr=True).print(
            f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False
        )
        return 2
    return run_pipeline(Lake.resolve(args.lake), console, args.market, args.date, settings=settings)


def register_cli(subparsers: Any) -> None:
    from mdpipe.settings import add_settings_args

    p = subparsers.add_parser(
        "run",
        help="materialise every asset (through Dagster, in process) for the lake's partitions",
    )
    p.add_argument("--lake", default=None, help="lake directory (default: $MDPIPE_LAKE or ./lake)")
    p.add_argument("--market", default=None, help="only this market, e.g. binance:BTC-USDT")
    p.add_argument("--date", default=None, help="only this UTC day, YYYY-MM-DD")
    add_settings_args(p)
    p.set_defaults(func=cmd_run)


__all__ = ["register_cli", "run_pipeline"]
