"""The ``mdpipe`` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mdpipe.lake import Lake, LakeLocationError

if TYPE_CHECKING:
    from mdpipe.ingest import ImportReport

console = Console()
err_console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "binance-spot-2024-08-08"


def _lake_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="lake directory (default: $MDPIPE_LAKE or ./lake)")


def cmd_import(args: argparse.Namespace) -> int:
    from mdpipe.ingest import ImportError_, import_paths

    lake = Lake.resolve(args.lake)
    try:
        report = import_paths(
            args.paths, lake, venue=args.venue, progress=sys.stderr.isatty(), jobs=args.jobs
        )
    except ImportError_ as e:
        err_console.print(f"[red]error:[/red] {e}")
        return 2
    print_import_report(report, lake)
    return 0 if report.ok else 1


def print_import_report(report: ImportReport, lake: Lake) -> None:
    table = Table(title=f"imported into {lake.root}")
    for col in ("table", "venue", "symbol", "date", "rows written"):
        table.add_column(col, justify="right" if col == "rows written" else "left")
    for p, n in sorted(
        report.written.items(), key=lambda kv: (kv[0].table, kv[0].symbol, kv[0].date)
    ):
        table.add_row(p.table, p.venue, p.symbol, p.date, f"{n:,}")
    console.print(table)
    msgs = sum(report.counts.get(k, 0) for k in ("depth", "trade", "agg_trade", "bbo", "snapshot"))
    secs = max(report.seconds, 1e-9)
    console.print(
        f"{len(report.files)} file(s), {report.lines:,} lines, {msgs:,} messages in "
        f"{report.seconds:.2f} s ({msgs / secs:,.0f} msg/s, {report.bytes_read / secs / 1e6:.1f} MB/s)"
    )
    for venue, syms in report.sync.items():
        for sym, st in syms.items():
            first = cast("tuple[int, int, int] | None", st["first_applied"])
            console.print(
                f"book sync {venue} {sym}: {st['snapshots']} snapshot(s), {st['applied']:,} diffs "
                f"applied, {st['dropped']} dropped"
                + (
                    f", first applied U={first[1]} <= {first[0] + 1} <= u={first[2]}"
                    if first
                    else ""
                )
            )
    for (venue, sym), off in report.clock.items():
        # never hidden: a host clock off by a second moves every recv-time-based number
        console.print(
            f"clock {venue} {sym}: receive - exchange time median {off.median_ms:+,.0f} ms "
            f"(5%..95%: {off.p05_ms:+,.0f}..{off.p95_ms:+,.0f} ms, {off.rows:,} rows)"
        )
    gaps = report.gaps
    if gaps is not None and gaps.height:
        console.print(f"[yellow]{gaps.height} gap(s) recorded:[/yellow]")
        for row in gaps.head(20).iter_rows(named=True):
            console.print(f"  {row['symbol']} {row['kind']}: {row['detail']}")
    else:
        console.print("gaps: none")
    if report.errors:
        err_console.print(f"[red]{len(report.errors)} problem(s); the valid part was kept:[/red]")
        for e in report.errors[:30]:
            err_console.print(f"  {e}")
        if len(report.errors) > 30:
            err_console.print(f"  ... and {len(report.errors) - 30} more")


def cmd_catalog(args: argparse.Namespace) -> int:
    lake = Lake.resolve(args.lake)
    path = lake.build_catalog()
    console.print(f"catalog rebuilt: {path}")
    console.print(f'query it: duckdb {path} "select symbol, count(*) from trades group by all"')
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from mdpipe.summary import print_summary

    print_summary(Lake.resolve(args.lake), console)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from mdpipe.settings import settings_from_args

    try:
        settings = settings_from_args(args)
    except ValueError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    text = settings.to_toml()
    if sys.stdout.isatty():
        from rich.syntax import Syntax

        console.print(Syntax(text, "toml", theme="ansi_dark", background_color="default"))
    else:
        sys.stdout.write(text)  # plain, so `mdpipe settings > mdpipe.toml` saves them
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mdpipe.ingest import import_paths
    from mdpipe.settings import settings_from_args
    from mdpipe.summary import print_summary

    try:
        settings = settings_from_args(args)
    except ValueError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    lake = Lake.resolve(args.lake)
    console.rule("[bold]mdpipe demo: importing the bundled Binance recordings")
    report = import_paths(sorted(BUNDLED.glob("*.gz")), lake, progress=sys.stderr.isatty())
    print_import_report(report, lake)
    if not report.ok:
        return 1
    from mdpipe.run import run_pipeline

    console.rule("[bold]materialising every asset through Dagster")
    rc = run_pipeline(lake, console=console, settings=settings)
    console.rule("[bold]summary")
    print_summary(lake, console)
    return rc


def build_parser() -> argparse.ArgumentParser:
    from mdpipe.settings import add_settings_args

    ap = argparse.ArgumentParser(prog="mdpipe", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import recordings and trade dumps into the lake")
    p.add_argument("paths", nargs="+", help="journal files (.gz or plain), CSV/zip dumps, folders")
    p.add_argument(
        "--venue",
        default=None,
        help="force the venue (a registered ccxt id, e.g. binanceusdm) instead of detecting it",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="worker processes decoding files of different markets in parallel "
        "(default: the machine's cores; 1 = serial)",
    )
    _lake_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("catalog", help="rebuild lake/mdpipe.duckdb (a view per table)")
    _lake_arg(p)
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("summary", help="what the lake holds")
    _lake_arg(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("demo", help="import the bundled recording, run the pipeline, summarise")
    _lake_arg(p)
    add_settings_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "settings",
        help="print the effective settings (file, environment, --set) as TOML with settings_id",
    )
    add_settings_args(p)
    p.set_defaults(func=cmd_settings)

    for register in _plugins():
        register(sub)
    return ap


def _plugins() -> list[Callable[[Any], None]]:
    """Subcommands that live in other packages (capture, pipeline, alerts) register here; they
    always ship with mdpipe, and are imported when the parser is built, not at import."""
    from mdpipe.alerts.cli import register_cli as alerts_cli
    from mdpipe.api.cli import register_cli as api_cli
    from mdpipe.capture.cli import register_cli as capture_cli
    from mdpipe.instance import register_cli as instance_cli
    from mdpipe.run import register_cli as run_cli

    return [capture_cli, run_cli, alerts_cli, api_cli, instance_cli, register_sweep]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LakeLocationError as e:  # any command given a lake it cannot use (s3://...)
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2


# ---- mdpipe sweep -------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from mdpipe.pipeline.sweep import load_grid, sweep_and_learn
    from mdpipe.settings import SettingsError, settings_from_args

    try:
        settings = settings_from_args(args)
        grid = load_grid(args.grid)
        if args.seed is not None or args.samples is not None:
            import dataclasses

            opts = dataclasses.replace(
                grid.options,
                **({"seed": args.seed} if args.seed is not None else {}),
                **({"samples": args.samples} if args.samples is not None else {}),
            )
            grid = dataclasses.replace(grid, options=opts)
    except (SettingsError, ValueError) as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    lake = Lake.resolve(args.lake)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console,
    ) as bar:  # fmt: skip
        task = bar.add_task("candidates", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            out = sweep_and_learn(
                lake, grid, settings, market=args.market, dates=args.date or None,
                workers=args.workers, progress=progress, train_model=not args.no_model,
            )  # fmt: skip
        except ValueError as e:
            err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
            return 2
    s = out.result.summary.row(0, named=True)
    table = Table(title=f"sweep {out.result.sweep_id}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k in ("n_candidates", "selected_candidate_id", "selected_params", "selected_sharpe_oos",
              "pbo", "pbo_slope", "dsr", "psr", "sr_bar", "sr0", "selection_dates",
              "holdout_dates", "holdout_n_signals", "holdout_sharpe", "holdout_net_pnl",
              "holdout_precision"):  # fmt: skip
        v = s[k]
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"tables: {out.result.paths['sweeps']}  {out.result.paths['summary']}")
    console.print(f"report: {out.report}")
    if out.model_id:
        console.print(f"meta-model: {out.model_id} in {out.model_dir} (pin it with "
                      f"--set meta.model_id={out.model_id})")  # fmt: skip
    elif out.model_error:
        console.print(f"meta-model not trained: {escape(out.model_error)}")
    return 0


def register_sweep(sub: Any) -> None:
    from mdpipe.settings import add_settings_args

    p = sub.add_parser("sweep", help="try a grid of settings honestly: CV, PBO, DSR, holdout")
    p.add_argument("--grid", required=True, metavar="FILE", help="grid TOML ([sweep] options, "
                   "[detectors]/[backtest] value lists)")  # fmt: skip
    _lake_arg(p)
    p.add_argument("--market", default=None, help="the market, e.g. binance:BTC-USDT")
    p.add_argument("--date", action="append", default=None, help="a UTC day (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random draws")
    p.add_argument("--samples", type=int, default=None, help="N random draws from the grid")
    p.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    p.add_argument("--no-model", action="store_true", help="skip the meta-model")
    add_settings_args(p)
    p.set_defaults(func=cmd_sweep)


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


if __name__ == "__main__":
    raise SystemExit(main())
