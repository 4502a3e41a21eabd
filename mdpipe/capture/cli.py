"""`mdpipe capture` and `mdpipe exchange-sim`: registered into the `mdpipe` command by
mdpipe.cli's plugin hook, and runnable alone as `python -m mdpipe.capture {capture,exchange-sim} ...`.

Settings come from `mdpipe.settings` (the `[capture]` section for the daemon, `[features]` and
`[detectors]` for the online engine, so live signals use the same values as `mdpipe run`), in
increasing priority: defaults, the settings file (`--config`, `$MDPIPE_CONFIG`, `./mdpipe.toml`),
environment variables `MDPIPE_CAPTURE_<KEY>` (e.g. `MDPIPE_CAPTURE_SYMBOLS=BTC/USDT,ETH/USDT`,
`MDPIPE_CAPTURE_COMPACT_HOURLY=0`, and `MDPIPE_LAKE`), `--set section.key=value`, and the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdpipe.capture.config import CaptureConfig
    from mdpipe.settings import Settings

ENV_PREFIX = "MDPIPE_CAPTURE_"

# CLI flags that set a CaptureConfig field of the same name
_FLAG_FIELDS = (
    "venue",
    "symbols",
    "markets",
    "channels",
    "lake",
    "ws_url",
    "rest_url",
    "metrics_port",
    "metrics_host",
    "flush_interval_s",
    "batch_interval_s",
    "reconnect_initial_s",
    "reconnect_max_s",
    "stale_after_s",
    "max_connection_age_s",
    "clock_sync_interval_s",
    "backfill_max_trades",
    "compact_hourly",
    "backfill_trades",
    "writer_id",
    "spool",
)


def _split_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    return tuple(str(s) for s in v)


def build_config(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    settings: Settings | None = None,
) -> CaptureConfig:
    """The validated CaptureConfig: the settings' `[capture]` section (file < env < --set,
    loaded here unless given) with the command's flags on top."""
    from mdpipe.settings import settings_from_args

    if settings is None:
        settings = settings_from_args(args, environ)
    flags: dict[str, Any] = {}
    for name in _FLAG_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            flags[name] = _split_list(v) if name in ("symbols", "channels", "markets") else v
    return settings.capture_config(**flags)


def add_capture_args(p: argparse.ArgumentParser) -> None:
    from mdpipe.settings import add_settings_args

    p.add_argument(
        "--venue",
        default=None,
        help="a registered venue (ccxt id): binance (default), binanceusdm, binancecoinm",
    )
    p.add_argument(
        "--symbols", default=None, help="comma-separated unified symbols, BTC/USDT,ETH/USDT"
    )
    p.add_argument(
        "--markets",
        default=None,
        help="several venues at once: venue:SYMBOL,... e.g. binance:BTC/USDT,"
        "binanceusdm:BTC/USDT:USDT,binancecoinm:BTC/USD:BTC (replaces --venue/--symbols; "
        "'{venue}' in --ws-url/--rest-url becomes each venue's name)",
    )
    p.add_argument("--lake", default=None, help="lake directory (default: $MDPIPE_LAKE or ./lake)")
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        default=None,
        help="serve Prometheus /metrics and /health on this port",
    )
    p.add_argument("--metrics-host", dest="metrics_host", default=None)
    p.add_argument(
        "--ws-url",
        dest="ws_url",
        default=None,
        help="websocket base URL (a proxy, testnet, or `mdpipe exchange-sim`)",
    )
    p.add_argument("--rest-url", dest="rest_url", default=None, help="REST base URL")
    p.add_argument(
        "--channels",
        default=None,
        help="stream channels per symbol (default: the venue's, e.g. depth@100ms,trade,bookTicker)",
    )
    p.add_argument(
        "--flush-interval",
        dest="flush_interval_s",
        type=float,
        default=None,
        help="seconds between journal + Parquet publishes (default 5)",
    )
    p.add_argument("--batch-interval", dest="batch_interval_s", type=float, default=None)
    p.add_argument(
        "--reconnect-initial",
        dest="reconnect_initial_s",
        type=float,
        default=None,
        help="first reconnect delay in seconds (default 1)",
    )
    p.add_argument(
        "--reconnect-max",
        dest="reconnect_max_s",
        type=float,
        default=None,
        help="largest reconnect delay in seconds (default 60)",
    )
    p.add_argument(
        "--stale-after",
        dest="stale_after_s",
        type=float,
        default=None,
        help="silence watchdog: reconnect after this many quiet seconds (default 10)",
    )
    p.add_argument(
        "--max-connection-age",
        dest="max_connection_age_s",
        type=float,
        default=None,
        help="planned reconnect after this many seconds (default 84600, under 24 h)",
    )
    p.add_argument("--clock-sync-interval", dest="clock_sync_interval_s", type=float, default=None)
    p.add_argument(
        "--compact-hourly",
        dest="compact_hourly",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="roll each partition's files of an hour into one file once the hour is over "
        "(default on; --no-compact-hourly keeps every flush's file)",
    )
    p.add_argument(
        "--backfill-trades",
        dest="backfill_trades",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fetch the trades of a trade-id hole (reconnect, restart) over REST "
        "historicalTrades (default on)",
    )
    p.add_argument(
        "--backfill-max-trades",
        dest="backfill_max_trades",
        type=int,
        default=None,
        help="at most this many trades fetched per hole (default 100000)",
    )
    p.add_argument(
        "--writer-id",
        dest="writer_id",
        default=None,
        help="this capture's name in file names, so several captures write one lake "
        "(default: none for a local lake, host + markets for s3://)",
    )
    p.add_argument(
        "--spool",
        dest="spool",
        default=None,
        help="local folder where an s3:// lake's files wait for upload (default ./spool)",
    )
    add_settings_args(p)
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--no-live-signals",
        dest="no_live_signals",
        action="store_true",
        help="do not run the online engine (no <lake>/live/signals, no alerts)",
    )


def cmd_capture(args: argparse.Namespace) -> int:
    from mdpipe.capture.multi import make_capture

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mdpipe.settings import settings_from_args

    try:
        settings = settings_from_args(args)
        config = build_config(args, settings=settings)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cap = make_capture(config)
    try:
        meta_model = _pinned_model(cap.lake, settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: [meta] model_id: {exc}", file=sys.stderr)
        return 2
    fast_path = None
    if not getattr(args, "no_live_signals", False):
        from mdpipe.capture.live_signals import attach_live_signals

        ls = attach_live_signals(
            cap,
            feature_config=settings.features,
            detector_config=settings.detectors,
            cross_venue_config=settings.cross_venue,
            meta_model=meta_model,
        )
        if ls is not None:
            fast_path = _attach_fast_path(cap, ls, settings)
        logging.getLogger("mdpipe.capture").info(
            "live signals with settings_id %s (%s)",
            settings.settings_id,
            settings.source or "default settings",
        )

    async def run() -> None:
        await cap.run_until_signal()

    import ccxt

    try:
        asyncio.run(run())
    except (ValueError, ccxt.ExchangeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if fast_path is not None:
        fast_path.stop(10.0)
    stats = cap.get_stats()
    print(
        f"capture stopped: {stats['messages_total']:,} messages, "
        f"{sum(stats['trades'].values()):,} trades, gaps {stats['gaps_total']}, "
        f"reconnects {stats['reconnects_total']}, files {stats['files_published']}",
        flush=True,
    )
    return 0


def _attach_fast_path(cap: Any, ls: Any, settings: Settings) -> Any:
    """Hand each published live signal straight to delivery (`mdpipe.alerts.fastpath`) when
    a channel is configured in the environment and `[alerts] fast_path` is on."""
    from mdpipe.alerts.fastpath import FastPath

    log = logging.getLogger("mdpipe.capture")
    try:
        fp = FastPath.from_settings(
            cap.lake.root, settings.alerts, name="capture", registry=cap.registry
        )
    except (ValueError, OSError):
        log.exception("alerts fast path unavailable: the Dagster sensor alone delivers")
        return None
    if fp is None:
        log.info("alerts fast path off (no channel configured, or [alerts] fast_path = false)")
        return None
    ls.listeners.append(fp.submit_frame)
    log.info("alerts fast path on: %s", ", ".join(c.name for c in fp.clients))
    return fp


def add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recording", nargs="+", required=True, help="raw journal files (gz or plain)")
    p.add_argument("--speed", default="1", help="replay speed factor, or 'max' (default 1)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free)")
    p.add_argument(
        "--exit-when-finished",
        action="store_true",
        help="exit once the whole recording was replayed",
    )
    p.add_argument(
        "--retime",
        action="store_true",
        help="move exchange times (E, T, serverTime) to now, keeping the recorded clock offset, "
        "so latency and clock-offset metrics are meaningful (frames are then not byte-identical)",
    )


def cmd_exchange_sim(args: argparse.Namespace) -> int:
    from mdpipe.venues.binance.simulator import parse_speed, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        speed = parse_speed(args.speed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve(
                args.recording,
                speed=speed,
                port=args.port,
                print_fn=lambda s: print(s, flush=True),
                exit_when_finished=args.exit_when_finished,
                retime=args.retime,
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0


def register_cli(sub: Any) -> None:
    """Hook called by mdpipe.cli to add `capture` and `exchange-sim`."""
    p = sub.add_parser("capture", help="live capture daemon: websocket -> raw journal + lake")
    add_capture_args(p)
    p.set_defaults(func=cmd_capture)
    p = sub.add_parser("exchange-sim", help="a local Binance on 127.0.0.1 replaying a recording")
    add_sim_args(p)
    p.set_defaults(func=cmd_exchange_sim)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdpipe.capture")
    sub = ap.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = ap.parse_args(argv)
    from mdpipe.lake import LakeLocationError

    try:
        return int(args.func(args) or 0)
    except LakeLocationError as exc:  # --lake / $MDPIPE_LAKE is a URL (s3://...)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _pinned_model(lake: Any, settings: Any) -> Any:
    """The meta-model `[meta] model_id` pins, loaded once at start (None when unset); a
    missing model is an error at start, not a silent null `meta_prob`."""
    if settings.meta.model_id is None:
        return None
    from mdpipe.core.meta import MetaModel
    from mdpipe.lake.paths import read_model_bytes

    return MetaModel.from_bytes(read_model_bytes(lake.root, settings.meta.model_id))
