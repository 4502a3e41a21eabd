"""What an alert says, and how each channel shows it (Slack blocks, Discord embeds, Telegram HTML).

One `AlertSignal` is one row of `live/signals` (DESIGN.md `signals` contract plus the detector
inputs the engine copies into the row). A message carries one signal, or a digest of several when
a burst arrives together: one readable message instead of a wall of notifications that would
also blow every channel's rate limit.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Columns of a signals row that are identity or bookkeeping, not detector inputs worth showing.
_CORE = {
    "venue",
    "symbol",
    "ts_ns",
    "signal_id",
    "signal_type",
    "direction",
    "score",
    "update_id",
    "trigger",
    "trigger_value",
    "threshold",
    "recv_ts_ns",
    "emitted_ns",
    "published_ns",
    "date",
    "price",
    "settings_id",
    "source",
    "details",
}
# Detector inputs shown in a single-signal message, in this order, when present.
SHOWN_INPUTS = (
    "imbalance_5",
    "wmid_drift_5s_bps",
    "trade_imbalance_5s",
    "volume_z_5s",
    "realized_vol_z",
    "spread_bps",
    "vpin",
    "bocpd_cp_prob",
)
DIGEST_MAX_LINES = 25  # keeps a digest under Slack's 3,000-char section and Telegram's 4,096


@dataclass(frozen=True)
class AlertSignal:
    signal_id: str
    venue: str
    symbol: str
    ts_ns: int
    signal_type: str
    direction: int
    score: float
    price: float | None = None
    trigger: str | None = None
    trigger_value: float | None = None
    threshold: float | None = None
    recv_ts_ns: int | None = None
    inputs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AlertSignal:
        missing = [
            c
            for c in ("signal_id", "venue", "symbol", "ts_ns", "signal_type", "direction", "score")
            if row.get(c) is None
        ]
        if missing:
            raise ValueError(f"signal row lacks {missing}: {dict(row)}")
        # the book's mid for detector signals; a posted signal (`mdpipe serve`) states its price
        price = _num(row.get("mid"))
        if price is None:
            price = _num(row.get("price"))
        if price is None and _num(row.get("best_bid")) and _num(row.get("best_ask")):
            price = (float(row["best_bid"]) + float(row["best_ask"])) / 2
        inputs = {
            k: float(v)
            for k, v in row.items()
            if k not in _CORE and k not in ("mid",) and _num(v) is not None
        }
        recv = row.get("recv_ts_ns")
        return cls(
            signal_id=str(row["signal_id"]),
            venue=str(row["venue"]),
            symbol=str(row["symbol"]),
            ts_ns=int(row["ts_ns"]),
            signal_type=str(row["signal_type"]),
            direction=int(row["direction"]),
            score=float(row["score"]),
            price=price,
            trigger=None if row.get("trigger") is None else str(row["trigger"]),
            trigger_value=_num(row.get("trigger_value")),
            threshold=_num(row.get("threshold")),
            recv_ts_ns=None if recv is None else int(recv),
            inputs=inputs,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> AlertSignal:
        return cls(**json.loads(text))

    # ---- wording shared by every channel --------------------------------------------------
    @property
    def market(self) -> str:
        return f"{self.venue} {self.symbol}"

    @property
    def arrow(self) -> str:
        return "▲" if self.direction > 0 else "▼"

    @property
    def side_word(self) -> str:
        return "up" if self.direction > 0 else "down"

    @property
    def title(self) -> str:
        return f"{self.arrow} {self.signal_type} {self.side_word} · {self.market}"

    @property
    def time_text(self) -> str:
        return fmt_time(self.ts_ns)

    def trigger_text(self) -> str:
        if not self.trigger:
            return "-"
        s = self.trigger
        if self.trigger_value is not None:
            s += f" = {fmt_num(self.trigger_value)}"
        if self.threshold is not None:
            s += f" (threshold {fmt_num(self.threshold)})"
        return s

    def shown_inputs(self) -> list[tuple[str, str]]:
        return [(k, fmt_num(self.inputs[k])) for k in SHOWN_INPUTS if k in self.inputs]

    def line(self) -> str:
        """One digest line: time, market, type, direction, score, price, trigger."""
        return (
            f"{self.time_text[11:23]} {self.arrow} {self.market} {self.signal_type} "
            f"score {self.score:.2f} @ {fmt_price(self.price)} ({self.trigger or '-'})"
        )


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_time(ts_ns: int) -> str:
    t = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def fmt_num(v: float) -> str:
    return f"{v:.4g}"


def fmt_price(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:,.2f}" if abs(p) >= 100 else f"{p:.6g}"


def _digest_title(signals: Sequence[AlertSignal]) -> str:
    markets = sorted({s.market for s in signals})
    shown = ", ".join(markets[:3]) + (f" +{len(markets) - 3}" if len(markets) > 3 else "")
    return f"{len(signals)} signals · {shown}"


def _digest_lines(signals: Sequence[AlertSignal]) -> list[str]:
    lines = [s.line() for s in signals[:DIGEST_MAX_LINES]]
    if len(signals) > DIGEST_MAX_LINES:
        lines.append(f"… and {len(signals) - DIGEST_MAX_LINES} more")
    return lines


# ---- Slack ---------------------------------------------------------------------------------
def _slack_escape(s: str) -> str:
    # Slack mrkdwn treats only these three as control characters
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
    """`text` (notification fallback) and Block Kit `blocks`."""
    if not signals:
        raise ValueError("render_slack needs at least one signal")
    blocks: list[dict[str, Any]] = []
    if len(signals) == 1:
        s = signals[0]
        text = f"{s.title}: score {s.score:.2f} @ {fmt_price(s.price)}"
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": s.title[:150]}})
        fields = [
            ("Score", f"{s.score:.2f}"),
            ("Price", fmt_price(s.price)),
            ("Direction", f"{s.arrow} {s.side_word}"),
            ("Fired on", s.trigger_text()),
        ]
        fields += s.shown_inputs()[:6]
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{_slack_escape(k)}*\n{_slack_escape(v)}"}
                    for k, v in fields[:10]
                ],
            }
        )
        ctx = f"{s.time_text} · `{s.signal_id}`"
    else:
        title = _digest_title(signals)
        text = title
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": title[:150]}})
        body = "\n".join(_slack_escape(x) for x in _digest_lines(signals))
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": body[:3000]}})
        ctx = f"{signals[0].time_text} – {signals[-1].time_text}"
    if link:
        ctx += f" · <{link}|Open in Dagster>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": ctx}]})
    return {"text": text, "blocks": blocks}


# ---- Discord -------------------------------------------------------------------------------
GREEN, RED, GREY = 0x2ECC71, 0xE74C3C, 0x95A5A6


def render_discord(signals: Sequence[AlertSignal], link: str | None) -> dict[str, Any]:
    """A webhook body with one embed; mentions disabled so a symbol can never ping anyone."""
    if not signals:
        raise ValueError("render_discord needs at least one signal")
    if len(signals) == 1:
        s = signals[0]
        fields = [
            {"name": "Score", "value": f"{s.score:.2f}", "inline": True},
            {"name": "Price", "value": fmt_price(s.price), "inline": True},
            {"name": "Direction", "value": f"{s.arrow} {s.side_word}", "inline": True},
            {"name": "Fired on", "value": s.trigger_text(), "inline": False},
        ]
        fields += [{"name": k, "value": v, "inline": True} for k, v in s.shown_inputs()]
        embed: dict[str, Any] = {
            "title": s.title[:256],
            "color": GREEN if s.direction > 0 else RED,
            "fields": fields[:25],
            "timestamp": dt.datetime.fromtimestamp(s.ts_ns / 1e9, tz=dt.UTC).isoformat(),
            "footer": {"text": f"{s.time_text} · {s.signal_id}"},
        }
    else:
        embed = {
            "title": _digest_title(signals)[:256],
            "color": GREY,
            "description": "\n".join(_digest_lines(signals))[:4096],
            "footer": {"text": f"{signals[0].time_text} – {signals[-1].time_text}"},
        }
    if link:
        embed["url"] = link
    return {"embeds": [embed], "allowed_mentions": {"parse": []}}


# ---- Telegram ------------------------------------------------------------------------------
def render_telegram(signals: Sequence[AlertSignal], link: str | None) -> str:
    """Text for sendMessage with parse_mode=HTML (only <b>, <code>, <a> are used)."""
    if not signals:
        raise ValueError("render_telegram needs at least one signal")
    e = html.escape
    if len(signals) == 1:
        s = signals[0]
        rows = [
            f"<b>{e(s.title)}</b>",
            f"Score: <b>{s.score:.2f}</b>",
            f"Price: {e(fmt_price(s.price))}",
            f"Fired on: {e(s.trigger_text())}",
        ]
        rows += [f"{e(k)}: {e(v)}" for k, v in s.shown_inputs()]
        rows.append(f"{e(s.time_text)} · <code>{e(s.signal_id)}</code>")
    else:
        rows = [f"<b>{e(_digest_title(signals))}</b>"]
        rows += [e(x) for x in _digest_lines(signals)]
    if link:
        rows.append(f'<a href="{e(link, quote=True)}">Open in Dagster</a>')
    return "\n".join(rows)[:4096]
