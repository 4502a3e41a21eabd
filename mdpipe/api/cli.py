"""`mdpipe serve`: the signals API on uvicorn (127.0.0.1:8000 unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mdpipe.api.app import create_app
    from mdpipe.api.auth import TOKEN_ENV
    from mdpipe.lake import Lake
    from mdpipe.settings import settings_from_args

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lake = Lake.resolve(args.lake or settings.alerts.lake or None)
    lake.root.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, lake)
    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    log = logging.getLogger("mdpipe.api")
    import os

    if not os.environ.get(TOKEN_ENV):
        log.warning("%s is not set: POST /api/v1/signals answers 401 to everyone", TOKEN_ENV)
    log.info("signals API over %s on http://%s:%d (docs at /docs)", lake.root, host, port)
    uvicorn.run(app, host=host, port=port, log_level=str(args.log_level).lower())
    return 0


def register_cli(sub: Any) -> None:
    """Hook called by mdpipe.cli: adds `mdpipe serve`."""
    from mdpipe.settings import add_settings_args

    p = sub.add_parser("serve", help="the signals API: /api/v1/signals, /health, /metrics, /docs")
    p.add_argument("--lake", default=None, help="lake directory (default: $MDPIPE_LAKE or ./lake)")
    p.add_argument("--host", default=None, help="address to bind (default [api] host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default [api] port, 8000)")
    p.add_argument("--log-level", default="info")
    add_settings_args(p)
    p.set_defaults(func=cmd_serve)
