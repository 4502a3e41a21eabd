"""A local stand-in for the Slack, Discord and Telegram HTTP APIs on 127.0.0.1.

For tests, benchmarks and offline demos (`mdpipe alerts test` against it), in the spirit of
`mdpipe exchange-sim`: it answers like the real APIs (bodies, status codes, rate-limit headers),
enforces their pacing (Telegram and Slack: about one message per second per chat; a message
within `min_interval_s` of the previous one, default 0.5 s so scheduling jitter on a loaded
machine is not mistaken for a burst, gets 429 and Retry-After; Discord: a bucket of
`discord_bucket` messages per `discord_window_s`, announced in X-RateLimit-* headers), and plays scripted faults on command:
429 with Retry-After, 5xx, slow answers, and dropping the connection after reading the request
(the "did it arrive?" case).

Routes (paths as the real services use them):
    POST /services/T.../B.../X...          Slack incoming webhook      -> 200 "ok"
    POST /api/chat.postMessage             Slack Web API (Bearer)      -> {"ok": true, "ts": ...}
    POST /api/webhooks/<id>/<token>        Discord execute webhook     -> 200 message JSON (wait=true)
    POST /bot<token>/sendMessage           Telegram Bot API            -> {"ok": true, "result": ...}
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Received:
    api: str  # 'slack_webhook' | 'slack_bot' | 'discord' | 'telegram'
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    t: float
    status: int
    ok: bool = True  # the API accepted it: the message is visible in the channel


@dataclass
class Fault:
    """What to do with the next request to an API instead of answering normally."""

    kind: str  # '429' | '500' | '502' | 'slow' | 'drop' | '400'
    seconds: float = 0.0  # Retry-After for 429, delay for slow


@dataclass
class _State:
    received: list[Received] = field(default_factory=list)
    served: list[tuple[str, int]] = field(default_factory=list)  # (api, status) of every answer
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    last_ok: dict[str, float] = field(default_factory=dict)
    blocked_until: dict[str, float] = field(default_factory=dict)
    discord_times: deque[float] = field(default_factory=deque)
    counter: int = 0


class FakeChatAPIs:
    """Run with `start()`; `url` is the base; read `messages(api)`; inject with `fault(...)`."""

    def __init__(
        self,
        *,
        slack_token: str = "xoxb-test-token",
        telegram_token: str = "123456:TEST-telegram-token-abcdefghijkl",
        min_interval_s: float = 0.5,
        discord_bucket: int = 5,
        discord_window_s: float = 2.0,
    ) -> None:
        self.slack_token = slack_token
        self.telegram_token = telegram_token
        self.min_interval_s = min_interval_s
        self.discord_bucket = discord_bucket
        self.discord_window_s = discord_window_s
        self.state = _State()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, port: int | None = None) -> FakeChatAPIs:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", port or self.port or 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port (clients get 'connection refused' until `start()` again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeChatAPIs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- endpoints for clients ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def slack_webhook_url(self) -> str:
        return f"{self.url}/services/T000TEST/B000TEST/SlackSecretPathXyz123"

    @property
    def slack_api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def discord_webhook_url(self) -> str:
        return f"{self.url}/api/webhooks/112233445566/DiscordSecretTokenAbc-987_zz"

    # ---- control -----------------------------------------------------------------------------
    def fault(self, api: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `api` ('slack', 'discord', 'telegram')."""
        with self.lock:
            self.state.faults.setdefault(api, deque()).extend(faults)

    def messages(self, api: str | None = None) -> list[Received]:
        """Requests answered with success (what a user would see in the channel)."""
        with self.lock:
            return [
                r for r in self.state.received if r.ok and (api is None or r.api.startswith(api))
            ]

    def wait_served(self, api: str, n: int, timeout_s: float = 10.0) -> bool:
        """Wait until `n` answers to `api` were served (a slow answer finishes after the
        client gave up); True if they were."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if len(self.statuses(api)) >= n:
                return True
            time.sleep(0.02)
        return False

    def statuses(self, api: str) -> list[int]:
        with self.lock:
            return [s for a, s in self.state.served if a.startswith(api)]

    # ---- request handling (server threads) ---------------------------------------------------
    def _next_fault(self, api: str) -> Fault | None:
        with self.lock:
            q = self.state.faults.get(api.split("_")[0])
            return q.popleft() if q else None

    def handle(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[Any, ...]:
        """(status, headers, body bytes) or ('drop',) to close without answering."""
        route = urlsplit(path).path
        if route.startswith("/services/"):
            api = "slack_webhook"
        elif route == "/api/chat.postMessage":
            api = "slack_bot"
        elif route.startswith("/api/webhooks/"):
            api = "discord"
        elif route.startswith("/bot") and route.endswith("/sendMessage"):
            api = "telegram"
        else:
            return 404, {}, b"not found"
        fault = self._next_fault(api)
        if fault is not None:
            if fault.kind == "slow":
                time.sleep(fault.seconds)
            elif fault.kind == "drop":
                return ("drop",)
            elif fault.kind == "429":
                return self._too_many(api, fault.seconds)
            else:
                status = int(fault.kind)
                return self._record(api, route, headers, body, status, {}, _err_body(api, status))
        if api == "slack_bot" and headers.get("authorization") != f"Bearer {self.slack_token}":
            return self._record(
                api,
                route,
                headers,
                body,
                200,
                {},
                json.dumps({"ok": False, "error": "invalid_auth"}).encode(),
            )
        if api == "telegram" and route != f"/bot{self.telegram_token}/sendMessage":
            data = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return self._record(api, route, headers, body, 401, {}, json.dumps(data).encode())
        now = time.monotonic()
        with self.lock:
            # like the real services: asking again before Retry-After elapsed earns another 429
            blocked = self.state.blocked_until.get(api, 0.0) - now
        if blocked > 0:
            return self._too_many(api, blocked)
        with self.lock:
            if api in ("slack_webhook", "slack_bot", "telegram"):
                last = self.state.last_ok.get(api)
                if last is not None and now - last < self.min_interval_s:
                    wait = self.min_interval_s - (now - last)
                    too_fast = True
                else:
                    too_fast = False
                    self.state.last_ok[api] = now
            else:
                dq = self.state.discord_times
                while dq and dq[0] <= now - self.discord_window_s:
                    dq.popleft()
                too_fast = len(dq) >= self.discord_bucket
                wait = (dq[0] + self.discord_window_s - now) if too_fast else 0.0
                if not too_fast:
                    dq.append(now)
                    remaining = self.discord_bucket - len(dq)
                    reset_after = dq[0] + self.discord_window_s - now
            self.state.counter += 1
            n = self.state.counter
        if too_fast:
            return self._too_many(api, max(wait, 0.05))
        if api == "slack_webhook":
            return self._record(api, route, headers, body, 200, {}, b"ok")
        if api == "slack_bot":
            out = {"ok": True, "channel": body.get("channel"), "ts": f"{time.time():.6f}"}
            return self._record(api, route, headers, body, 200, {}, json.dumps(out).encode())
        if api == "discord":
            h = {
                "X-RateLimit-Limit": str(self.discord_bucket),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": "fakebucket",
            }
            out = {"id": str(10**17 + n), "type": 0, "content": body.get("content", "")}
            return self._record(api, route, headers, body, 200, h, json.dumps(out).encode())
        out = {"ok": True, "result": {"message_id": n, "chat": {"id": body.get("chat_id")}}}
        return self._record(api, route, headers, body, 200, {}, json.dumps(out).encode())

    def _too_many(self, api: str, seconds: float) -> tuple[Any, ...]:
        ra = f"{seconds:.3f}"
        if api == "telegram":
            data: Any = {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {seconds:g}",
                "parameters": {"retry_after": seconds},
            }
            h = {"Retry-After": str(max(1, round(seconds)))} if seconds >= 1 else {}
        elif api == "discord":
            data = {
                "message": "You are being rate limited.",
                "retry_after": seconds,
                "global": False,
            }
            h = {"Retry-After": ra, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": ra}
        elif api == "slack_bot":
            data = {"ok": False, "error": "ratelimited"}
            h = {"Retry-After": ra}
        else:
            data = "rate_limited"
            h = {"Retry-After": ra}
        body = (data if isinstance(data, str) else json.dumps(data)).encode()
        with self.lock:
            self.state.served.append((api, 429))
            until = time.monotonic() + seconds
            self.state.blocked_until[api] = max(self.state.blocked_until.get(api, 0.0), until)
        return 429, h, body

    def _record(
        self,
        api: str,
        route: str,
        headers: dict[str, str],
        body: dict[str, Any],
        status: int,
        h: dict[str, str],
        out: bytes,
    ) -> tuple[Any, ...]:
        with self.lock:
            ok = 200 <= status < 300 and not out.startswith(b'{"ok": false')
            self.state.received.append(Received(api, route, body, headers, time.time(), status, ok))
            self.state.served.append((api, status))
        return status, h, out


def _err_body(api: str, status: int) -> bytes:
    if api == "telegram":
        return json.dumps(
            {"ok": False, "error_code": status, "description": "Bad Gateway"}
        ).encode()
    if api == "discord":
        return json.dumps({"message": "Internal Server Error", "code": 0}).encode()
    return b"internal_error" if api == "slack_webhook" else b'{"ok": false, "error": "fatal_error"}'


def _make_handler(apis: FakeChatAPIs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_raw": raw.decode("utf-8", "replace")}
            headers = {k.lower(): v for k, v in self.headers.items()}
            res = apis.handle(self.path, headers, body if isinstance(body, dict) else {})
            if res[0] == "drop":
                self.close_connection = True
                self.connection.close()
                return
            status, h, out = res
            self.send_response(status)
            ctype = "text/plain" if out[:1] not in (b"{", b"[") else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            for k, v in h.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

    return Handler


__all__ = ["FakeChatAPIs", "Fault", "Received"]
