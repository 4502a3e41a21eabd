"""`mdpipe alerts ...`: test the configured channels, inspect the ledger, serve its metrics.

Channels are configured by the same environment variables the Dagster resources read
(SLACK_WEBHOOK_URL | SLACK_BOT_TOKEN + SLACK_CHANNEL, DISCORD_WEBHOOK_URL, TELEGRAM_BOT_TOKEN +
TELEGRAM_CHAT_ID; SLACK_API_BASE_URL and TELEGRAM_API_BASE_URL point at a proxy or a local stand-in).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdpipe.alerts.channels import clients_from_env
from mdpipe.alerts.redact import Redactor

if TYPE_CHECKING:
    from mdpipe.alerts.config import AlertConfig


def _alert_settings(args: argparse.Namespace) -> AlertConfig:
    """The `[alerts]` section of the effective settings (--config, $MDPIPE_CONFIG,
    ./mdpipe.toml, MDPIPE_ALERTS_*, --set)."""
    from mdpipe.settings import settings_from_args

    return settings_from_args(args).alerts


def cmd_test(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        alerts = _alert_settings(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    timeout = args.timeout if args.timeout is not None else alerts.timeout_s
    clients, skipped = clients_from_env(os.environ, timeout_s=timeout)
    redact = Redactor()
    for c in clients:
        redact.include(c.redact)
    table = Table(title="mdpipe alerts test")
    for col in ("channel", "destination", "result", "detail"):
        table.add_column(col)
    text = args.message or (
        f"mdpipe alerts test from {socket.gethostname()} at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: this channel is configured."
    )
    from mdpipe.alerts.delivery import send_once_with_retries

    failed = 0
    policy = alerts.policy()
    for c in clients:
        # the delivery path's rules: 429 waits Retry-After, transient failures back off
        r, rep = send_once_with_retries(c, c.text_payload(text), policy)
        if not r.ok:
            failed += 1
        detail = r.error or (f"message {r.message_ref}" if r.message_ref else "")
        if rep.requests > 1:
            detail = f"{detail} (after {rep.requests} attempts, {rep.rate_limited} rate-limited)"
        status = "[green]sent[/green]" if r.ok else f"[red]{r.outcome}[/red]"
        table.add_row(c.name, redact(c.describe()), status, redact(detail))
    for name, why in skipped:
        table.add_row(name, "-", "[yellow]not configured[/yellow]", why)
    console.print(table)
    if not clients:
        print("no alert channel configured; see docs/alerts.md", file=sys.stderr)
        return 2
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mdpipe.alerts.ledger import Ledger, default_ledger_path
    from mdpipe.lake import Lake

    console = Console()
    try:
        alerts = _alert_settings(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if alerts.ledger_path and not args.lake:
        path = Path(alerts.ledger_path)
    else:
        path = default_ledger_path(Lake.resolve(args.lake or alerts.lake or None).root)
    if not path.exists():
        console.print(f"no delivery ledger yet at {path}")
        return 0
    ledger = Ledger(path)
    table = Table(title=f"delivery ledger {path}")
    for col in ("channel", "status", "signals"):
        table.add_column(col)
    for (ch, st), n in sorted(ledger.status_counts().items()):
        table.add_row(ch, st, str(n))
    console.print(table)
    for row in ledger.rows():
        if row["status"] in ("failed", "uncertain"):
            console.print(
                f"{row['channel']} {row['status']} {row['signal_id']} after "
                f"{row['attempts']} attempt(s): {row['last_error']}"
            )
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from mdpipe.alerts.ledger import default_ledger_path
    from mdpipe.alerts.metrics import alert_registry
    from mdpipe.lake import Lake

    path = default_ledger_path(Lake.resolve(args.lake).root)
    start_http_server(args.port, addr=args.host, registry=alert_registry(path))
    print(f"alert metrics from {path} on http://{args.host}:{args.port}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from mdpipe.alerts.loopback import FakeChatAPIs

    apis = FakeChatAPIs().start(port=args.port)
    print(f"loopback Slack/Discord/Telegram APIs on {apis.url}; export these to use them:")
    print(f"export SLACK_WEBHOOK_URL={apis.slack_webhook_url}")
    print(f"export DISCORD_WEBHOOK_URL={apis.discord_webhook_url}")
    print(f"export TELEGRAM_BOT_TOKEN={apis.telegram_token}")
    print("export TELEGRAM_CHAT_ID=-1")
    print(f"export TELEGRAM_API_BASE_URL={apis.url}", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            msgs = apis.messages()
            for m in msgs[seen:]:
                text = m.body.get("text") or m.body.get("content") or ""
                if not text and m.body.get("embeds"):
                    text = m.body["embeds"][0].get("title", "")
                print(f"[{m.api}] {text.splitlines()[0] if text else m.body}", flush=True)
            seen = len(msgs)
    except KeyboardInterrupt:
        apis.stop()
        return 0


def register_cli(sub: Any) -> None:
    """Hook called by mdpipe.cli: adds `mdpipe alerts {test,status,metrics,sandbox}`."""
    from mdpipe.settings import add_settings_args

    p = sub.add_parser("alerts", help="live alerts: test channels, ledger status, metrics")
    asub = p.add_subparsers(dest="alerts_command", required=True)
    t = asub.add_parser("test", help="send a test message to every configured channel")
    t.add_argument("--message", default=None, help="text to send (default: a short test note)")
    t.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per request (default: [alerts] timeout_s, 10)",
    )
    add_settings_args(t)
    t.set_defaults(func=cmd_test)
    s = asub.add_parser("status", help="delivery ledger: counts, failures, uncertain deliveries")
    s.add_argument("--lake", default=None)
    add_settings_args(s)
    s.set_defaults(func=cmd_status)
    m = asub.add_parser("metrics", help="serve the ledger's Prometheus metrics (no capture)")
    m.add_argument("--lake", default=None)
    m.add_argument("--port", type=int, default=9109)
    m.add_argument("--host", default="127.0.0.1")
    m.set_defaults(func=cmd_metrics)
    x = asub.add_parser(
        "sandbox", help="local stand-ins for the Slack, Discord and Telegram APIs (offline demo)"
    )
    x.add_argument("--port", type=int, default=8766)
    x.set_defaults(func=cmd_sandbox)
