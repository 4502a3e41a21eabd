"""The `[alerts]` settings: the delivery policy plus where alerts read and link to."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from mdpipe.alerts.delivery import DeliveryPolicy


@dataclass(frozen=True)
class AlertConfig(DeliveryPolicy):
    """Alert delivery settings (the `[alerts]` section of mdpipe.toml), validated on construction.

    digest_min              signals due at once to one channel from which a digest is sent.
    digest_max              signals listed in one digest message at most.
    max_attempts            sends of one message before it is marked failed.
    backoff_initial_s       first retry delay inside a run (doubles, up to backoff_max_s).
    backoff_max_s           largest retry delay inside a run.
    max_wait_s              longest Retry-After a run waits for; longer ones go to a later run.
    run_budget_s            seconds one alert run may spend sending.
    lease_s                 a message another run left `sending` longer than this becomes
                            `uncertain` (reported, never re-sent: at most once).
    retry_base_s            delay before a later run retries a failed message (doubles).
    retry_max_s             largest such delay.
    lake                    lake the signals are read from (empty: $MDPIPE_LAKE, else ./lake).
    ledger_path             the delivery ledger (empty: <lake>/state/alerts-ledger.sqlite).
    dagster_ui_url          base URL of the Dagster UI that messages link to.
    lookback_s              the sensor re-reads signal files this young (late, out-of-order
                            publishes).
    initial_lookback_s      on its first tick the sensor picks up signals this young.
    timeout_s               seconds per request to a channel (`mdpipe alerts test`).
    fast_path               capture and `mdpipe serve` hand each new signal straight to
                            delivery (same ledger; the sensor still delivers what they miss).
    min_meta_prob           send only signals whose `meta_prob` (the `[meta] model_id` model's
                            P(profit barrier)) is at least this; 0 sends every signal, and
                            signals without a probability are sent only when it is 0.
    """

    lake: str = ""
    ledger_path: str = ""
    dagster_ui_url: str = "http://localhost:3000"
    lookback_s: float = 120.0
    initial_lookback_s: float = 900.0
    timeout_s: float = 10.0
    fast_path: bool = True
    min_meta_prob: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lookback_s", "initial_lookback_s", "timeout_s"):
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not (ok and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        p = self.min_meta_prob
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"min_meta_prob must be a probability in [0, 1], got {p!r}")
        if not self.dagster_ui_url.startswith(("http://", "https://")):
            raise ValueError(
                f"dagster_ui_url must start with http:// or https://, got {self.dagster_ui_url!r}"
            )

    def policy(self) -> DeliveryPolicy:
        """The delivery policy part (what `mdpipe.alerts.delivery` takes)."""
        return DeliveryPolicy(**{f.name: getattr(self, f.name) for f in fields(DeliveryPolicy)})


__all__ = ["AlertConfig"]
