"""Independent checks of a lake against the exchange's own top of book.

A plain-Python book rebuild from ``book`` rows, compared with every ``bookTicker`` whose update id
equals the last applied diff's id (Binance's bookTicker and depth streams share update ids).
Used by the tests and by ``mdpipe check``; deliberately written without the vectorised code it
checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class CrossCheck:
    compared: int
    matched: int
    mismatches: list[
        tuple[int, tuple[float, float, float, float], tuple[float, float, float, float]]
    ]

    @property
    def ok(self) -> bool:
        return self.compared > 0 and self.matched == self.compared


def book_vs_bbo(book: pl.DataFrame, bbo: pl.DataFrame) -> CrossCheck:
    """Replay ``book`` rows (one market, in stored order across its date partitions) and compare
    the top of book after every event whose ``update_id`` has a bookTicker."""
    quotes = {
        u: (b, bq, a, aq)
        for u, b, bq, a, aq in bbo.select(
            "update_id", "bid", "bid_qty", "ask", "ask_qty"
        ).iter_rows()
    }
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    compared = matched = 0
    mismatches: list[
        tuple[int, tuple[float, float, float, float], tuple[float, float, float, float]]
    ] = []
    rows = book.select("update_id", "side", "price", "qty", "is_snapshot").rows()
    i, n = 0, len(rows)
    while i < n:
        uid, _, _, _, snap = rows[i]
        j = i
        while j < n and rows[j][0] == uid and rows[j][4] == snap:
            j += 1
        if snap:
            bids.clear()
            asks.clear()
        for _, side, price, qty, _ in rows[i:j]:
            levels = bids if side == "bid" else asks
            if qty == 0:
                levels.pop(price, None)
            else:
                levels[price] = qty
        if not snap and uid in quotes and bids and asks:
            bb, ba = max(bids), min(asks)
            got = (bb, bids[bb], ba, asks[ba])
            compared += 1
            if got == quotes[uid]:
                matched += 1
            elif len(mismatches) < 10:
                mismatches.append((uid, got, quotes[uid]))
        i = j
    return CrossCheck(compared, matched, mismatches)
