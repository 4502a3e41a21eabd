"""Venue normalizers: raw exchange messages -> canonical lake rows.

One code path for live capture and for import: both hand raw lines (receive time, message text)
to a normalizer's ``feed`` and publish what comes back. A new venue is one module here that
implements :class:`Normalizer` and registers itself in :data:`NORMALIZERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from mdpipe.lake import SCHEMAS, empty_frame


@dataclass(frozen=True)
class LineError:
    """A line that could not be used, with where it was and what was expected."""

    source: str
    line: int
    message: str
    content: str = ""

    def __str__(self) -> str:
        snippet = f": {self.content[:120]!r}" if self.content else ""
        return f"{self.source}:{self.line}: {self.message}{snippet}"


@dataclass
class Batch:
    """Canonical rows produced from one slice of input, in applied order per table."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def get(self, table: str) -> pl.DataFrame:
        return self.tables.get(table, empty_frame(table))

    def add(self, table: str, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        df = df.select(list(SCHEMAS[table]))
        prev = self.tables.get(table)
        self.tables[table] = df if prev is None else pl.concat([prev, df], how="vertical")

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def extend(self, other: Batch) -> None:
        for t, df in other.tables.items():
            self.add(t, df)
        self.errors.extend(other.errors)
        for k, v in other.counts.items():
            self.count(k, v)


@dataclass(frozen=True)
class RawLines:
    """A slice of raw journal input: receive times (ns), message texts and where they came from."""

    recv_ts_ns: pl.Series  # Int64
    text: pl.Series  # String
    line_no: pl.Series  # Int64, 1-based within source
    source: str
    symbol_hint: str | None = None  # raw symbol ("btcusdt") for bare REST snapshots


class Normalizer(Protocol):
    venue: str

    def feed(self, lines: RawLines) -> Batch: ...

    def finish(self) -> Batch: ...

    def awaiting_snapshot(self) -> list[str]: ...

    def force_resync(
        self,
        symbol: str,
        ts_ns: int,
        reason: str,
        kind: str = ...,
        prev_update_id: int | None = ...,
    ) -> Batch: ...

    def sync_stats(self) -> dict[str, dict[str, object]]: ...

    def is_synced(self, symbol: str) -> bool: ...

    def book_state(self, symbol: str) -> tuple[pl.DataFrame, int] | None: ...

    def seed_last_trade_id(self, symbol: str, trade_id: int) -> None: ...

    def rest_trades(
        self, symbol: str, trades: Sequence[Mapping[str, Any]], recv_ts_ns: int
    ) -> pl.DataFrame: ...


NORMALIZERS: dict[str, Callable[[], Normalizer]] = {}


def normalizer_for(venue: str) -> Normalizer:
    from mdpipe.venues import binance  # noqa: F401  (registers binance, binanceusdm)

    try:
        factory = NORMALIZERS[venue]
    except KeyError:
        raise ValueError(
            f"no normalizer for venue {venue!r}; known: {', '.join(sorted(NORMALIZERS))}"
        ) from None
    return factory()
