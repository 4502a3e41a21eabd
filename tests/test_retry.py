"""The one retry policy: Retry-After parsing and equal-jitter backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdpipe.retry import backoff_s, retry_after_s


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.6"}, 0.6),
        ({"RETRY-AFTER": "-2"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
    ],
)
def test_retry_after_delay_seconds(headers: dict[str, str], want: float | None) -> None:
    assert retry_after_s(headers) == want


def test_retry_after_http_date_counts_from_now() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}
    assert retry_after_s(headers, now=now) == pytest.approx(30.0)
    assert retry_after_s(headers, now=now + 60) == 0.0  # a date in the past means now


@given(
    attempt=st.integers(0, 200),
    initial=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 600.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_is_equal_jitter_within_half_a_step(
    attempt: int, initial: float, cap: float, seed: int
) -> None:
    step = min(cap, initial * 2.0**attempt)
    d = backoff_s(attempt, initial, cap, rng=random.Random(seed))
    assert step / 2 <= d <= step


def test_backoff_rejects_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff_s(-1, 0.5, 8.0)
