"""Delivering what the ledger owes a channel: rate limit, retries, digests, at most once.

`deliver_channel` is the whole policy for one channel in one run:

1. rows another run left in `sending` past the lease become `uncertain` (reported, not re-sent);
2. what is due is sent oldest first; when `digest_min` or more are due at once (a burst, or a
   backlog after an outage), up to `digest_max` are folded into one digest message;
3. every request waits for its slot from the shared rate limiter (`min_interval_s` per
   destination, pushed back by Retry-After and by Discord's bucket headers); the slot lives in
   the ledger, so two runs (or the CLI test) share it;
4. 429 waits Retry-After (up to `max_wait_s`, beyond it the channel is left for the next tick);
   transient failures are retried with exponential backoff and jitter up to `max_attempts`;
5. a message that still fails is marked `failed` with its error and a next-attempt time, and the
   channel stops for this run (no point hammering a dead endpoint); the next sensor tick sees
   the due rows and asks for a retry run;
6. an answer that never came (request sent) marks the rows `uncertain`: at most once wins.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mdpipe.alerts.channels import (
    DELIVERED,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNCERTAIN,
    ChannelClient,
    SendResult,
)
from mdpipe.alerts.ledger import Ledger
from mdpipe.retry import backoff_s

log = logging.getLogger("mdpipe.alerts")


@dataclass(frozen=True)
class DeliveryPolicy:
    digest_min: int = 3
    digest_max: int = 25
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    max_wait_s: float = 30.0
    run_budget_s: float = 120.0
    lease_s: float = 600.0
    retry_base_s: float = 5.0
    retry_max_s: float = 900.0

    def __post_init__(self) -> None:
        if not (isinstance(self.digest_min, int) and self.digest_min >= 2):
            raise ValueError(f"digest_min must be an int >= 2, got {self.digest_min!r}")
        if not (isinstance(self.digest_max, int) and self.digest_max >= self.digest_min):
            raise ValueError(
                f"digest_max must be an int >= digest_min ({self.digest_min}), "
                f"got {self.digest_max!r}"
            )
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in (
            "backoff_initial_s",
            "backoff_max_s",
            "max_wait_s",
            "run_budget_s",
            "lease_s",
            "retry_base_s",
            "retry_max_s",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")

    def backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.backoff_initial_s, self.backoff_max_s)

    def next_tick_delay_s(self, attempts_so_far: int, retry_after: float | None) -> float:
        d = min(self.retry_base_s * 2 ** max(attempts_so_far, 0), self.retry_max_s)
        return max(d, retry_after or 0.0)


@dataclass
class ChannelReport:
    channel: str
    destination: str
    signals_delivered: int = 0
    messages: int = 0
    digests: int = 0
    failed: int = 0
    uncertain: int = 0
    recovered_uncertain: int = 0
    requests: int = 0
    rate_limited: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def summary(self) -> str:
        s = (
            f"{self.channel}: {self.signals_delivered} signal(s) in {self.messages} message(s)"
            f" ({self.digests} digest(s)), {self.requests} request(s)"
        )
        if self.rate_limited:
            s += f", {self.rate_limited} rate-limited"
        if self.failed:
            s += f", {self.failed} failed (retried next tick)"
        if self.uncertain or self.recovered_uncertain:
            s += f", {self.uncertain + self.recovered_uncertain} uncertain (not re-sent)"
        return s


def digest_id(signal_ids: list[str]) -> str:
    return hashlib.sha1("|".join(signal_ids).encode()).hexdigest()[:16]


def deliver_channel(
    ledger: Ledger,
    client: ChannelClient,
    *,
    link: str | None,
    run_id: str,
    policy: DeliveryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_delivered: Callable[[ChannelClient, int, float], None] | None = None,
) -> ChannelReport:
    policy = policy or DeliveryPolicy()
    name = client.name
    rep = ChannelReport(channel=name, destination=client.describe())
    rep.recovered_uncertain = ledger.recover_stale(name, policy.lease_s)
    deadline = time.monotonic() + policy.run_budget_s
    while time.monotonic() < deadline:
        due = ledger.due(name, limit=policy.digest_max if policy.digest_max > 1 else 1)
        if not due:
            break
        batch = due if len(due) >= policy.digest_min else due[:1]
        ids = ledger.claim(name, [d.signal_id for d in batch], run_id)
        if not ids:
            continue  # another run claimed them between our read and our claim
        owned = [d for d in batch if d.signal_id in set(ids)]
        signals = [d.signal for d in owned]
        payload = client.render(signals, link)
        result = _send_with_retries(ledger, client, payload, len(ids), run_id, policy, deadline,
                                    sleep, rep)  # fmt: skip
        if result.outcome == DELIVERED:
            did = digest_id(ids) if len(ids) > 1 else None
            ledger.mark_delivered(name, ids, message_ref=result.message_ref, digest_id=did)
            now = time.time_ns()
            rep.signals_delivered += len(ids)
            rep.messages += 1
            rep.digests += 1 if len(ids) > 1 else 0
            for s in signals:
                lat = (now - (s.recv_ts_ns or s.ts_ns)) / 1e9
                rep.latencies_s.append(lat)
                if on_delivered is not None:
                    on_delivered(client, 1, lat)
        elif result.outcome == UNCERTAIN:
            err = result.error or "no answer"
            ledger.mark_uncertain(name, ids, error=err)
            rep.uncertain += len(ids)
            rep.errors.append(err)
            log.error(
                "%s: %d signal(s) may or may not have been delivered (%s); not re-sent",
                name,
                len(ids),
                err,
            )
        else:
            attempts = max(d.attempts for d in owned)
            delay = policy.next_tick_delay_s(attempts, result.retry_after_s)
            err = result.error or result.outcome
            ledger.mark_failed(
                name, ids, error=err, next_attempt_ns=time.time_ns() + int(delay * 1e9)
            )
            rep.failed += len(ids)
            rep.errors.append(err)
            rep.stopped_early = True
            log.warning(
                "%s: delivery failed (%s); %d signal(s) kept for retry in %.0f s",
                name,
                err,
                len(ids),
                delay,
            )
            break
    else:
        rep.stopped_early = True
    return rep


def _send_with_retries(
    ledger: Ledger | None,
    client: ChannelClient,
    payload: object,
    n_signals: int,
    run_id: str,
    policy: DeliveryPolicy,
    deadline: float,
    sleep: Callable[[float], None],
    rep: ChannelReport,
) -> SendResult:
    """Send one payload, retrying 429s after their Retry-After and transient failures with
    backoff, within `policy` and `deadline`. With a ledger the destination's slots and pauses
    are shared with every other sender and each attempt is recorded; without one (`mdpipe
    alerts test`) the waits are kept here."""
    key = client.name
    result = SendResult(TRANSIENT, error="not attempted")
    not_before = 0.0  # monotonic time of the next allowed send, when there is no ledger
    for attempt in range(policy.max_attempts):
        if ledger is not None:
            slot = ledger.reserve_slot(key, client.min_interval_s)
            wait = (slot - time.time_ns()) / 1e9
        else:
            wait = not_before - time.monotonic()
        if wait > 0:
            if time.monotonic() + wait > deadline or wait > policy.max_wait_s:
                return SendResult(
                    RATE_LIMITED,
                    retry_after_s=wait,
                    error=f"next slot in {wait:.1f} s is past this run's budget",
                )
            sleep(wait)
        result = client.post(payload)
        rep.requests += 1
        if ledger is not None:
            ledger.record_attempt(
                key, n_signals, result.outcome, result.status, result.error, run_id
            )
            if result.pause_s:
                ledger.push_back(key, time.time_ns() + int(result.pause_s * 1e9))
        if result.outcome in (DELIVERED, UNCERTAIN, REJECTED):
            return result
        if attempt + 1 == policy.max_attempts:
            break
        if result.outcome == RATE_LIMITED:
            rep.rate_limited += 1
            ra = result.retry_after_s if result.retry_after_s is not None else policy.backoff_s(0)
            if ledger is not None:
                ledger.push_back(key, time.time_ns() + int(ra * 1e9))
            else:
                not_before = time.monotonic() + ra
            if ra > policy.max_wait_s or time.monotonic() + ra > deadline:
                return result
            log.info("%s: 429, waiting %.2f s (Retry-After) before retrying", key, ra)
            continue  # the next round sleeps until the pushed-back slot
        delay = policy.backoff_s(attempt)
        if time.monotonic() + delay > deadline:
            return result
        log.info("%s: %s, retry %d in %.2f s", key, result.error, attempt + 1, delay)
        sleep(delay)
    return result


def send_once_with_retries(
    client: ChannelClient,
    payload: object,
    policy: DeliveryPolicy | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[SendResult, ChannelReport]:
    """One message outside the ledger (`mdpipe alerts test`), with the delivery path's retry
    rules: Retry-After honoured, transient failures retried with backoff. Returns the final
    result and the report (requests made, 429s met)."""
    policy = policy or DeliveryPolicy()
    rep = ChannelReport(channel=client.name, destination=client.describe())
    deadline = time.monotonic() + policy.run_budget_s
    result = _send_with_retries(None, client, payload, 1, "test", policy, deadline, sleep, rep)
    return result, rep


__all__ = [
    "ChannelReport",
    "DeliveryPolicy",
    "deliver_channel",
    "digest_id",
    "send_once_with_retries",
]
