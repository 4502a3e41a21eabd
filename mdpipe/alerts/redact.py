"""Keeping channel secrets out of logs, errors, run metadata and the UI.

A webhook URL *is* a credential (whoever has it can post), and so is a bot token, which Telegram
puts in the URL path. Every string that leaves the alerts code (log lines, exception messages,
ledger rows, Dagster metadata) goes through a `Redactor` built from the configured secrets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "<redacted>"
# Tokens that look like credentials even when we were not told about them: Slack tokens and
# webhook paths, Telegram bot tokens, Discord webhook paths.
_PATTERNS = (
    re.compile(r"xox[abposr]-[A-Za-z0-9-]+"),
    re.compile(r"/services/[A-Za-z0-9_/-]+"),
    re.compile(r"/bot\d+:[A-Za-z0-9_-]+"),
    re.compile(r"\b\d{6,}:[A-Za-z0-9_-]{20,}\b"),
    re.compile(r"/api/webhooks/\d+/[A-Za-z0-9_.-]+"),
)


def safe_url(url: str | None) -> str:
    """Scheme and host of a URL, enough to say where a message went, nothing that authorises."""
    if not url:
        return "-"
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASK}"


class Redactor:
    """Replaces every known secret (and everything shaped like one) with a mask."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for s in secrets:
            if not s or len(s) < 4:
                continue
            forms = {s}
            # a URL secret also leaks through its path alone (urllib errors quote the selector)
            parts = urlsplit(s)
            if parts.scheme and parts.path and len(parts.path) > 4:
                forms.add(parts.path)
            for f in forms:
                if f not in self._secrets:
                    self._secrets.append(f)
        # longest first, so a URL is masked whole before its path is
        self._secrets.sort(key=len, reverse=True)

    def include(self, other: Redactor) -> None:
        """Also mask every secret `other` masks."""
        self.add(*other._secrets)

    def __call__(self, text: object) -> str:
        s = str(text)
        for secret in self._secrets:
            if secret in s:
                s = s.replace(secret, MASK)
        for pat in _PATTERNS:
            s = pat.sub(MASK, s)
        return s


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites records through a Redactor (message and arguments)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):
            msg = str(record.msg)
        record.msg = self.redactor(msg)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # the formatted traceback would quote the exception text verbatim
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_filter(logger_names: Iterable[str], redactor: Redactor) -> None:
    """Attach a redacting filter to loggers that might print request URLs (slack_sdk, urllib3)."""
    for name in logger_names:
        lg = logging.getLogger(name)
        for f in list(lg.filters):
            if isinstance(f, RedactingFilter):
                f.redactor.include(redactor)
                break
        else:
            lg.addFilter(RedactingFilter(redactor))
