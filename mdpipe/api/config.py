"""The `[api]` settings of `mdpipe serve`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$")
_VENUE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class ApiConfig:
    """The signals API (`mdpipe serve`), validated on construction.

    host                    address to bind (127.0.0.1: this machine only).
    port                    TCP port.
    body_limit_bytes        largest request body accepted; larger ones get 413.
    rate_limit              posts per token, in the `limits` notation ("120/minute").
    page_max                largest `limit` of one page of GET /api/v1/signals.
    default_venue           venue stored for a posted signal that names none.
    max_clock_skew_s        a posted timestamp may be this far in the future (clock skew).
    idempotency_ttl_s       an Idempotency-Key is remembered this long.
    stream_poll_s           how often the SSE stream looks for new signal files.
    capture_health_url      capture's /health, reported in ours when set (empty: not checked).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    body_limit_bytes: int = 16_384
    rate_limit: str = "120/minute"
    page_max: int = 1000
    default_venue: str = "external"
    max_clock_skew_s: float = 5.0
    idempotency_ttl_s: float = 86_400.0
    stream_poll_s: float = 0.25
    capture_health_url: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"port must be an int in 0..65535, got {self.port!r}")
        for name in ("body_limit_bytes", "page_max"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("max_clock_skew_s", "idempotency_ttl_s", "stream_poll_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if not _RATE.match(self.rate_limit):
            raise ValueError(
                f"rate_limit must look like '120/minute' (count / second|minute|hour|day), "
                f"got {self.rate_limit!r}"
            )
        if not _VENUE.match(self.default_venue):
            raise ValueError(
                f"default_venue must be a lower-case id like 'external', got {self.default_venue!r}"
            )
        if self.capture_health_url and not self.capture_health_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "capture_health_url must start with http:// or https://, "
                f"got {self.capture_health_url!r}"
            )


__all__ = ["ApiConfig"]
