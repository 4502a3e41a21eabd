"""`mdpipe capture` and `mdpipe exchange-sim`: registered into the `mdpipe` command by
mdpipe.cli's plugin hook, and runnable alone as `python -m mdpipe.capture {capture,exchange-sim} ...`.

Settings come from, in increasing priority: defaults, a TOML config file (`--config`, keys as in
CaptureConfig, e.g. `symbols = ["BTC/USDT"]`, `flush_interval_s = 5`), environment variables
`MDPIPE_CAPTURE_<KEY>` (e.g. `MDPIPE_CAPTURE_SYMBOLS=BTC/USDT,ETH/USDT`,
`MDPIPE_CAPTURE_COMPACT_HOURLY=0`, `MDPIPE_CAPTURE_BACKFILL_TRADES=0`, and `MDPIPE_LAKE`), and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

ENV_PREFIX = "MDPIPE_CAPTURE_"

# CLI flag -> CaptureConfig field, for the options that are plain values
_FLAGS = {
    "venue": str,
    "lake": str,
    "ws_url": str,
    "rest_url": str,
    "metrics_port": int,
    "metrics_host": str,
    "flush_interval_s": float,
    "batch_interval_s": float,
    "reconnect_initial_s": float,
    "reconnect_max_s": float,
    "stale_after_s": float,
    "max_connection_age_s": float,
    "clock_sync_interval_s": float,
    "backfill_max_trades": int,
}
# CLI flag -> CaptureConfig field, for the on/off options (--x / --no-x)
_BOOL_FLAGS = ("compact_hourly", "backfill_trades")
_BOOL_FIELDS = ("fsync", "compact_hourly", "backfill_trades")


def _split_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    return tuple(str(s) for s in v)


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    """Merge config file, environment and flags into a validated CaptureConfig."""
    from mdpipe.capture.config import CaptureConfig

    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(CaptureConfig)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config, "rb") as f:
            data = tomllib.load(f)
        data = data.get("capture", data)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{args.config}: unknown capture settings {unknown}")
        values.update(data)
    if env.get("MDPIPE_LAKE"):
        values["lake"] = env["MDPIPE_LAKE"]
    for name in fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    for name in (*_FLAGS, *_BOOL_FLAGS, "symbols", "channels"):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    for name in ("symbols", "channels"):
        if name in values:
            values[name] = _split_list(values[name])
    for name, typ in _FLAGS.items():
        if name in values and values[name] is not None and not isinstance(values[name], typ):
            try:
                values[name] = typ(values[name])
            except ValueError:
                raise ValueError(f"{name}: expected {typ.__name__}, got {values[name]!r}") from None
    for name in _BOOL_FIELDS:
        if name in values and isinstance(values[name], str):
            values[name] = values[name].strip().lower() not in ("0", "false", "no", "off")
    return CaptureConfig(**values)


def add_capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--venue", default=None, help="a registered venue (ccxt id): binance (default), binanceusdm"
    )
    p.add_argument(
        "--symbols", default=None, help="comma-separated unified symbols, BTC/USDT,ETH/USDT"
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
    p.add_argument("--config", default=None, help="TOML file with capture settings")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--no-live-signals",
        dest="no_live_signals",
        action="store_true",
        help="do not run the online engine (no <lake>/live/signals, no alerts)",
    )


def cmd_capture(args: argparse.Namespace) -> int:
    from mdpipe.capture.daemon import Capture

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = build_config(args)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cap = Capture(config)
    if not getattr(args, "no_live_signals", False):
        from mdpipe.capture.live_signals import attach_live_signals

        attach_live_signals(cap)

    async def run() -> None:
        await cap.run_until_signal()

    import ccxt

    try:
        asyncio.run(run())
    except (ValueError, ccxt.ExchangeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = cap.get_stats()
    print(
        f"capture stopped: {stats['messages_total']:,} messages, "
        f"{sum(stats['trades'].values()):,} trades, gaps {stats['gaps_total']}, "
        f"reconnects {stats['reconnects_total']}, files {stats['files_published']}",
        flush=True,
    )
    return 0


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
    return int(args.func(args) or 0)
