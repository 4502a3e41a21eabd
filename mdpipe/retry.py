"""Retry policy shared by every outbound HTTP caller (capture's REST calls, alert channels).

Two rules, stated once:

- `retry_after_s(headers)`: the server's `Retry-After` (RFC 9110 section 10.2.3), either
  delay-seconds (`"3"`, `"0.6"`) or an HTTP-date; None when absent or unreadable. Header names
  are matched case-insensitively. A date in the past, or a negative number, means "now" (0.0).
- `backoff_s(attempt, initial_s, max_s)`: exponential backoff with "equal jitter": the step
  doubles per attempt up to `max_s`, and the delay is uniform in [step/2, step], so a fleet that
  failed together spreads out without any member retrying sooner than half a step.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping
from typing import Any


def retry_after_s(headers: Mapping[str, Any], *, now: float | None = None) -> float | None:
    """Seconds to wait according to a `Retry-After` header, or None if there is none."""
    raw = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def backoff_s(
    attempt: int, initial_s: float, max_s: float, *, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (0 for the first retry), with equal jitter."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    step = min(max_s, initial_s * 2.0 ** min(attempt, 64))
    return step / 2 + (rng or random).uniform(0.0, step / 2)


__all__ = ["backoff_s", "retry_after_s"]
