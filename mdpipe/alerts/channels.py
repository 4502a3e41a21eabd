"""Channel clients: one HTTP request per message, classified so delivery can decide what to do.

Each client turns a list of signals into the channel's payload and posts it once; it never
retries by itself (the delivery loop does, with the ledger's knowledge of what was already
sent). Every answer is classified:

  delivered      the API confirmed the message
  rate_limited   429; `retry_after_s` from the Retry-After header or the JSON body
  transient      5xx, 408, or the request could not be sent (refused, DNS, connect timeout):
                 the message certainly was not posted, safe to send again
  rejected       another 4xx (bad token, unknown chat, invalid payload): not posted; a
                 configuration problem, retried later with a long backoff
  uncertain      the request went out but no answer came back (read timeout, connection reset):
                 the message may have been posted. Not re-sent, so a signal is never delivered
                 twice; recorded and reported instead.

The `urllib` distinction this relies on: errors while connecting or sending are wrapped in
`URLError`, errors while waiting for the response (TimeoutError, ConnectionResetError,
RemoteDisconnected) are raised bare.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mdpipe.alerts.message import AlertSignal, render_discord, render_slack, render_telegram
from mdpipe.alerts.redact import Redactor, install_filter, safe_url
from mdpipe.retry import retry_after_s

log = logging.getLogger("mdpipe.alerts")

DELIVERED = "delivered"
RATE_LIMITED = "rate_limited"
TRANSIENT = "transient"
REJECTED = "rejected"
UNCERTAIN = "uncertain"
USER_AGENT = "mdpipe-alerts/0.1"


@dataclass(frozen=True)
class SendResult:
    outcome: str
    status: int | None = None
    retry_after_s: float | None = None
    # pause before the next message to this destination (Discord's bucket headers)
    pause_s: float | None = None
    message_ref: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == DELIVERED


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return str(v)
    return None


def classify_exception(exc: BaseException, redact: Redactor) -> SendResult:
    if isinstance(exc, urllib.error.HTTPError):  # handled by callers; defensive
        return SendResult(TRANSIENT, status=exc.code, error=redact(f"HTTP {exc.code}"))
    if isinstance(exc, urllib.error.URLError):
        return SendResult(TRANSIENT, error=redact(f"could not send: {exc.reason}"))
    if isinstance(
        exc,
        TimeoutError | socket.timeout | ConnectionError | http.client.HTTPException,
    ):
        return SendResult(
            UNCERTAIN,
            error=redact(f"no answer after sending ({type(exc).__name__}: {exc})"),
        )
    if isinstance(exc, OSError):
        return SendResult(TRANSIENT, error=redact(f"could not send: {exc}"))
    # anything else (a malformed URL, a client library error) is a configuration problem; it
    # is not re-raised because its message or traceback can quote the secret URL
    log.error("unexpected %s while sending: %s", type(exc).__name__, redact(exc))
    return SendResult(REJECTED, error=redact(f"{type(exc).__name__}: {exc}"))


def classify_status(
    status: int, headers: Mapping[str, Any], body: str, redact: Redactor
) -> SendResult:
    """Non-2xx answers (and 2xx bodies that say not-ok are handled by each client)."""
    snippet = redact(body[:300])
    if status == 429:
        # the larger of header and body: Telegram rounds the header, the body is exact
        found = [v for v in (retry_after_s(headers), _retry_after_from_body(body)) if v is not None]
        ra = max(found) if found else None
        return SendResult(
            RATE_LIMITED, status=status, retry_after_s=ra, error=f"HTTP 429 rate limited {snippet}"
        )
    if status >= 500 or status == 408:
        return SendResult(TRANSIENT, status=status, error=f"HTTP {status} {snippet}")
    return SendResult(REJECTED, status=status, error=f"HTTP {status} {snippet}")


def _retry_after_from_body(body: str) -> float | None:
    """Discord: {"retry_after": 0.5}; Telegram: {"parameters": {"retry_after": 5}}."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    v = data.get("retry_after")
    if v is None and isinstance(data.get("parameters"), dict):
        v = data["parameters"].get("retry_after")
    try:
        return None if v is None else max(float(v), 0.0)
    except (TypeError, ValueError):
        return None


def post_json(
    url: str, body: Mapping[str, Any], timeout_s: float, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """POST JSON with urllib; returns (status, headers, body) for every HTTP answer, raising
    only when there is no HTTP answer (see the module docstring for what that means)."""
    data = json.dumps(body).encode("utf-8")
    h = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace") if e.fp is not None else ""
        return e.code, dict(e.headers.items()) if e.headers else {}, text


class ChannelClient(ABC):
    """One destination (a Slack channel, a Discord webhook, a Telegram chat)."""

    #: ledger key: a (signal, channel) pair is delivered at most once
    name: str = "channel"
    #: minimum seconds between two messages to this destination (0: from response headers)
    min_interval_s: float = 1.0

    def __init__(self, *, timeout_s: float = 10.0, secrets: Sequence[str | None] = ()) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.redact = Redactor(secrets)
        # logger filters see only records created on that exact logger, hence the full names
        install_filter(
            ("slack_sdk.webhook", "slack_sdk.web", "urllib3.connectionpool", "mdpipe.alerts"),
            self.redact,
        )

    @abstractmethod
    def describe(self) -> str:
        """Where messages go, with secrets masked (safe to log and to show in the UI)."""

    @abstractmethod
    def render(self, signals: Sequence[AlertSignal], link: str | None) -> Any:
        """The channel's payload for one message about these signals."""

    @abstractmethod
    def post(self, payload: Any) -> SendResult:
        """Send one payload once; never raises for network or HTTP failures."""

    def send_text(self, text: str) -> SendResult:
        """A plain test message (`mdpipe alerts test`)."""
        return self.post(self.text_payload(text))

    @abstractmethod
    def text_payload(self, text: str) -> Any: ...

    def _guard(self, fn: Any) -> SendResult:
        try:
            return fn()
        except Exception as exc:  # classified: every network failure becomes a SendResult
            return classify_exception(exc, self.redact)


class SlackWebhookClient(ChannelClient):
    """Slack incoming webhook through slack-sdk's WebhookClient; answers `ok` on success."""

    name = "slack"

    def __init__(self, webhook_url: str, *, timeout_s: float = 10.0, min_interval_s: float = 1.0):
        super().__init__(timeout_s=timeout_s, secrets=[webhook_url])
        from slack_sdk.webhook import WebhookClient

        self.min_interval_s = min_interval_s
        self._url = webhook_url
        # no built-in retry handlers: a retried POST must go through the ledger, not around it
        self._client = WebhookClient(
            webhook_url,
            timeout=max(1, round(timeout_s)),
            retry_handlers=[],
            logger=logging.getLogger("slack_sdk.webhook"),
        )

    def describe(self) -> str:
        return f"slack incoming webhook {safe_url(self._url)}"

    def render(self, signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
        return render_slack(signals, link)

    def text_payload(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def post(self, payload: dict[str, Any]) -> SendResult:
        def go() -> SendResult:
            r = self._client.send(text=payload.get("text"), blocks=payload.get("blocks"))
            body = r.body if isinstance(r.body, str) else str(r.body)
            if r.status_code == 200:
                return SendResult(DELIVERED, status=200, message_ref=body[:40] or "ok")
            return classify_status(r.status_code, r.headers or {}, body, self.redact)

        return self._guard(go)


class SlackBotClient(ChannelClient):
    """Slack Web API chat.postMessage with a bot token (xoxb-...) into one channel."""

    name = "slack"

    def __init__(
        self,
        bot_token: str,
        channel: str,
        *,
        api_base_url: str = "https://slack.com/api/",
        timeout_s: float = 10.0,
        min_interval_s: float = 1.0,
    ) -> None:
        if not channel:
            raise ValueError("a Slack bot token needs SLACK_CHANNEL (a channel id or #name)")
        super().__init__(timeout_s=timeout_s, secrets=[bot_token])
        from slack_sdk import WebClient

        self.min_interval_s = min_interval_s
        self.channel = channel
        self._base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._client = WebClient(
            token=bot_token,
            base_url=self._base,
            timeout=max(1, round(timeout_s)),
            retry_handlers=[],
            logger=logging.getLogger("slack_sdk.web"),
        )

    def describe(self) -> str:
        return f"slack bot chat.postMessage to {self.channel} via {safe_url(self._base)}"

    def render(self, signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
        return render_slack(signals, link)

    def text_payload(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def post(self, payload: dict[str, Any]) -> SendResult:
        from slack_sdk.errors import SlackApiError

        def go() -> SendResult:
            try:
                r = self._client.api_call(
                    "chat.postMessage",
                    json={"channel": self.channel, "unfurl_links": False, **payload},
                )
            except SlackApiError as e:
                resp = e.response
                body = json.dumps(resp.data) if isinstance(resp.data, dict) else str(resp.data)
                if resp.status_code == 200:  # {"ok": false, "error": "channel_not_found"}
                    return SendResult(REJECTED, status=200, error=self.redact(body[:300]))
                return classify_status(resp.status_code, resp.headers or {}, body, self.redact)
            except json.JSONDecodeError:
                # a non-JSON body (a proxy's 502 page): not a Slack answer, nothing was posted
                return SendResult(TRANSIENT, error="non-JSON answer from the Slack API")
            return SendResult(DELIVERED, status=r.status_code, message_ref=str(r.get("ts")))

        return self._guard(go)


class DiscordWebhookClient(ChannelClient):
    """Discord execute-webhook with `wait=true` (the answer carries the message id)."""

    name = "discord"

    def __init__(self, webhook_url: str, *, timeout_s: float = 10.0, min_interval_s: float = 0.0):
        super().__init__(timeout_s=timeout_s, secrets=[webhook_url])
        self.min_interval_s = min_interval_s
        self._url = webhook_url

    def describe(self) -> str:
        return f"discord webhook {safe_url(self._url)}"

    def render(self, signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
        return render_discord(signals, link)

    def text_payload(self, text: str) -> dict[str, Any]:
        return {"content": text, "allowed_mentions": {"parse": []}}

    def post(self, payload: dict[str, Any]) -> SendResult:
        sep = "&" if "?" in self._url else "?"

        def go() -> SendResult:
            status, headers, body = post_json(
                self._url + sep + "wait=true", payload, self.timeout_s
            )
            # Discord announces its bucket: when none is left, wait for the reset before the next
            remaining = _header(headers, "X-RateLimit-Remaining")
            reset_after = _header(headers, "X-RateLimit-Reset-After")
            pause = None
            if remaining is not None and reset_after is not None:
                try:
                    if int(float(remaining)) <= 0:
                        pause = max(float(reset_after), 0.0)
                except ValueError:
                    pause = None
            if 200 <= status < 300:
                ref = None
                try:
                    ref = str(json.loads(body).get("id")) if body else None
                except (ValueError, AttributeError):
                    ref = None
                return SendResult(DELIVERED, status=status, pause_s=pause, message_ref=ref)
            r = classify_status(status, headers, body, self.redact)
            return SendResult(
                r.outcome,
                status=r.status,
                retry_after_s=r.retry_after_s,
                pause_s=pause,
                error=r.error,
            )

        return self._guard(go)


class TelegramClient(ChannelClient):
    """Telegram Bot API sendMessage with parse_mode=HTML."""

    name = "telegram"

    def __init__(
        self,
        bot_token: str,
        chat_id: str,
        *,
        api_base_url: str = "https://api.telegram.org",
        timeout_s: float = 10.0,
        min_interval_s: float = 1.0,
    ) -> None:
        if not chat_id:
            raise ValueError("Telegram needs TELEGRAM_CHAT_ID as well as TELEGRAM_BOT_TOKEN")
        super().__init__(timeout_s=timeout_s, secrets=[bot_token])
        self.min_interval_s = min_interval_s
        self.chat_id = str(chat_id)
        self._base = api_base_url.rstrip("/")
        self._url = f"{self._base}/bot{quote(bot_token, safe=':')}/sendMessage"
        self.redact.add(self._url)

    def describe(self) -> str:
        return f"telegram sendMessage to chat {self.chat_id} via {safe_url(self._base)}"

    def render(self, signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
        return {"text": render_telegram(signals, link), "parse_mode": "HTML"}

    def text_payload(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def post(self, payload: dict[str, Any]) -> SendResult:
        def go() -> SendResult:
            body = {"chat_id": self.chat_id, "disable_web_page_preview": True, **payload}
            status, headers, text = post_json(self._url, body, self.timeout_s)
            if status == 200:
                try:
                    data = json.loads(text)
                except ValueError:
                    return SendResult(TRANSIENT, status=status, error="non-JSON answer")
                if data.get("ok"):
                    mid = (data.get("result") or {}).get("message_id")
                    return SendResult(DELIVERED, status=200, message_ref=str(mid))
                return SendResult(REJECTED, status=200, error=self.redact(text[:300]))
            return classify_status(status, headers, text, self.redact)

        return self._guard(go)


class FileChannelClient(ChannelClient):
    """Appends each message as a JSON line to a file: the credential-free stand-in for demos
    and dry runs (swap it in for any real channel resource)."""

    min_interval_s = 0.0

    def __init__(self, path: str | Path, *, name: str = "file") -> None:
        super().__init__(timeout_s=1.0)
        self.name = name
        self.path = Path(path)

    def describe(self) -> str:
        return f"file {self.path}"

    def render(self, signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
        return {
            "signals": [s.signal_id for s in signals],
            "slack": render_slack(signals, link),
            "telegram": render_telegram(signals, link),
        }

    def text_payload(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def post(self, payload: dict[str, Any]) -> SendResult:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ts_ns": time.time_ns(), **payload}) + "\n")
        return SendResult(DELIVERED, message_ref=str(self.path))


__all__ = [
    "DELIVERED",
    "RATE_LIMITED",
    "REJECTED",
    "TRANSIENT",
    "UNCERTAIN",
    "ChannelClient",
    "DiscordWebhookClient",
    "FileChannelClient",
    "SendResult",
    "SlackBotClient",
    "SlackWebhookClient",
    "TelegramClient",
]


# ---- which settings configure which channel (stated once; the CLI and Dagster both read it) ----
@dataclass(frozen=True)
class ChannelSetup:
    """How a channel is configured: its settings, the environment variable of each, and the
    groups of settings any one of which is enough (the first complete group wins)."""

    name: str
    env: Mapping[str, str]  # setting -> environment variable
    groups: tuple[tuple[str, ...], ...]  # alternatives, in order of preference
    secret: tuple[str, ...]  # settings whose values are redacted

    def missing(self, values: Mapping[str, str | None]) -> str:
        """What to set, naming a half-configured group precisely."""
        for group in self.groups:
            have = [s for s in group if values.get(s)]
            if have and len(have) < len(group):
                lack = [self.env[s] for s in group if not values.get(s)]
                return f"{', '.join(self.env[s] for s in have)} is set but {', '.join(lack)} is not"
        return "set " + ", or ".join(" and ".join(self.env[s] for s in g) for g in self.groups)

    def complete_group(self, values: Mapping[str, str | None]) -> tuple[str, ...] | None:
        return next((g for g in self.groups if all(values.get(s) for s in g)), None)

    def from_env(self, environ: Mapping[str, str]) -> dict[str, str | None]:
        return {s: (environ.get(var) or None) for s, var in self.env.items()}


CHANNELS: dict[str, ChannelSetup] = {
    "slack": ChannelSetup(
        "slack",
        {
            "webhook_url": "SLACK_WEBHOOK_URL",
            "bot_token": "SLACK_BOT_TOKEN",
            "channel": "SLACK_CHANNEL",
            "api_base_url": "SLACK_API_BASE_URL",
        },
        (("webhook_url",), ("bot_token", "channel")),
        ("webhook_url", "bot_token"),
    ),
    "discord": ChannelSetup(
        "discord", {"webhook_url": "DISCORD_WEBHOOK_URL"}, (("webhook_url",),), ("webhook_url",)
    ),
    "telegram": ChannelSetup(
        "telegram",
        {
            "bot_token": "TELEGRAM_BOT_TOKEN",
            "chat_id": "TELEGRAM_CHAT_ID",
            "api_base_url": "TELEGRAM_API_BASE_URL",
        },
        (("bot_token", "chat_id"),),
        ("bot_token",),
    ),
}
DEFAULT_MIN_INTERVAL_S = {"slack": 1.0, "discord": 0.0, "telegram": 1.0}


def make_client(
    name: str,
    values: Mapping[str, str | None],
    *,
    timeout_s: float = 10.0,
    min_interval_s: float | None = None,
) -> ChannelClient | None:
    """The client a channel's settings describe, or None when no group is complete."""
    setup = CHANNELS[name]
    group = setup.complete_group(values)
    if group is None:
        return None
    gap = DEFAULT_MIN_INTERVAL_S[name] if min_interval_s is None else min_interval_s

    # values are passed on as they are: inside Dagster they may be unresolved `EnvVar`s
    def v(key: str) -> str:
        value = values[key]
        assert value is not None  # the complete group has it
        return value

    def base(default: str) -> str:
        return values.get("api_base_url") or default

    if name == "slack" and group == ("webhook_url",):
        return SlackWebhookClient(v("webhook_url"), timeout_s=timeout_s, min_interval_s=gap)
    if name == "slack":
        return SlackBotClient(
            v("bot_token"),
            v("channel"),
            api_base_url=base("https://slack.com/api/"),
            timeout_s=timeout_s,
            min_interval_s=gap,
        )
    if name == "discord":
        return DiscordWebhookClient(v("webhook_url"), timeout_s=timeout_s, min_interval_s=gap)
    return TelegramClient(
        v("bot_token"),
        v("chat_id"),
        api_base_url=base("https://api.telegram.org"),
        timeout_s=timeout_s,
        min_interval_s=gap,
    )


def clients_from_env(
    environ: Mapping[str, str], *, timeout_s: float = 10.0
) -> tuple[list[ChannelClient], list[tuple[str, str]]]:
    """(configured clients, [(channel, what to set)] for the unconfigured ones)."""
    clients: list[ChannelClient] = []
    skipped: list[tuple[str, str]] = []
    for name, setup in CHANNELS.items():
        values = setup.from_env(environ)
        client = make_client(name, values, timeout_s=timeout_s)
        if client is None:
            skipped.append((name, setup.missing(values)))
        else:
            clients.append(client)
    return clients, skipped
