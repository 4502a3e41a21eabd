"""Request and response bodies of the signals API (pydantic; they make the /docs page).

A posted signal is the brief's body: `timestamp` (epoch seconds), `signal_type`, `score`,
`symbol`, and optionally `venue`, `direction`, `price`, `details`. External tools name their
own signal types: any short snake_case name is accepted, not only the detectors' types. Numbers
must be JSON numbers (a string "0.85" is refused rather than guessed at) and finite.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

FIRST_VALID_TS = 1_230_768_000.0  # 2009-01-01T00:00:00Z: nothing we trade is older
SIGNAL_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
SYMBOL_PATTERN = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$"
VENUE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
DetailValue = str | Number | bool | None


class SignalIn(BaseModel):
    """A signal from another tool (`POST /api/v1/signals`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "timestamp": 1696867200.0,
                    "signal_type": "buy_imbalance",
                    "score": 0.85,
                    "symbol": "BTC/USDT",
                }
            ]
        },
    )

    timestamp: Number = Field(description="when the signal happened, epoch seconds (UTC)")
    signal_type: str = Field(
        pattern=SIGNAL_TYPE_PATTERN,
        description="snake_case name chosen by the tool, e.g. buy_imbalance (1-48 chars)",
    )
    score: Number = Field(description="the signal's strength, a finite number")
    symbol: str = Field(
        pattern=SYMBOL_PATTERN, description="unified symbol: BTC/USDT, or BTC/USDT:USDT"
    )
    venue: str | None = Field(
        default=None, pattern=VENUE_PATTERN, description="ccxt id, e.g. binance"
    )
    direction: Literal[1, -1] | None = Field(
        default=None, description="+1 up, -1 down (default: the sign of score)"
    )
    price: Number | None = Field(default=None, gt=0, description="price when it happened")
    details: dict[Annotated[str, Field(max_length=64)], DetailValue] | None = Field(
        default=None, max_length=32, description="up to 32 extra fields shown with the signal"
    )

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, v: float, info: ValidationInfo) -> float:
        ctx = info.context or {}
        now = float(ctx.get("now", time.time()))
        skew = float(ctx.get("max_clock_skew_s", 5.0))
        if v < FIRST_VALID_TS:
            raise ValueError(
                f"must be epoch seconds on or after 2009-01-01 ({FIRST_VALID_TS:.0f}); got {v}"
            )
        if v > now + skew:
            raise ValueError(f"is {v - now:.1f} s in the future (clock skew allowed: {skew} s)")
        return v

    def direction_or_sign(self) -> int:
        if self.direction is not None:
            return int(self.direction)
        return 1 if self.score >= 0 else -1

    def ts_ns(self) -> int:
        # via the decimal text, so 1696867200.123 becomes ...123000000 ns, not ...122999906
        return round(self.timestamp * 1_000_000) * 1000 if math.isfinite(self.timestamp) else 0


class SignalCreated(BaseModel):
    signal_id: str
    source: Literal["api"] = "api"
    venue: str
    symbol: str
    ts_ns: int


class SignalPage(BaseModel):
    signals: list[dict[str, Any]]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next (older) page; null at the end"
    )


class Problem(BaseModel):
    """Every error answer: `detail` says what is wrong, `field` names the field when there is one."""

    detail: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


__all__ = ["FIRST_VALID_TS", "Problem", "SignalCreated", "SignalIn", "SignalPage"]
