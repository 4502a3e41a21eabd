"""A minimal venue that lives only in the test suite: the proof that a venue is one folder.

Its journal is ``<receive ns> <message>`` lines (the lake's journal format) of its own messages::

    {"ch":"book","m":"TOY-USD","seq":10,"snap":true,"ts":1723161600000,"bids":[["99.5","2"]],"asks":[["100.5","1"]]}
    {"ch":"book","m":"TOY-USD","seq":11,"prev":10,"ts":1723161600100,"bids":[["99.5","0"]],"asks":[]}
    {"ch":"trade","m":"TOY-USD","id":7,"px":"100.5","qty":"0.25","taker":"buy","ts":1723161600050}

Streams are ``<channel>.<market>`` (``book.TOY-USD``). Book sync: a snapshot carries ``seq``;
the first diff after it has ``seq == snapshot seq + 1``; every diff names its predecessor in
``prev``. It has no live transport and no dumps: import only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.lake import SCHEMAS, empty_frame
from mdpipe.venues.base import (
    Batch,
    BookSync,
    DumpFile,
    JournalHead,
    LineError,
    Normalizer,
    RawLines,
    StreamRoute,
    Transport,
    UnknownStream,
    gap_rows,
)

NAME = "toyvenue"
CHANNELS = {"book": "depth", "trade": "trade"}
MS = 1_000_000


@dataclass(frozen=True)
class ToyRules:
    bridge_rule: str = "seq == snapshot seq + 1"

    def covered_by_snapshot(self, last_id: int, u: int) -> bool:
        return u <= last_id

    def bridges(self, last_id: int, U: int, u: int) -> bool:
        return U == last_id + 1

    def continues(self, prev_u: int, U: int, u: int, pu: int) -> bool:
        return pu == prev_u

    def break_detail(self, prev_u: int, U: int, u: int, pu: int) -> str:
        return f"expected prev={prev_u}, got prev={pu} (seq={u})"


def unified(market: str) -> str:
    base, _, quote = market.partition("-")
    if not base or not quote:
        raise ValueError(f"toy markets look like TOY-USD, got {market!r}")
    return f"{base}/{quote}"


@dataclass
class _Book:
    sync: BookSync
    levels: dict[tuple[str, float], float] = field(default_factory=dict)
    update_id: int | None = None
    last_trade_id: int | None = None
    got_snapshot: bool = False


class ToyNormalizer:
    """Per-message Python: a toy, not a template for speed (see the Binance normalizer)."""

    def __init__(self) -> None:
        self.venue = NAME
        self._books: dict[str, _Book] = {}
        self._pending: dict[int, tuple[str, list[dict[str, Any]]]] = {}  # buffered diffs' rows
        self._ev = 0

    def _book(self, symbol: str) -> _Book:
        return self._books.setdefault(symbol, _Book(BookSync(ToyRules())))

    def feed(self, lines: RawLines) -> Batch:
        batch = Batch()
        book_rows: list[dict[str, Any]] = []
        trade_rows: list[dict[str, Any]] = []
        gaps: list[dict[str, Any]] = []
        for recv, text, line in zip(
            lines.recv_ts_ns.to_list(), lines.text.to_list(), lines.line_no.to_list(), strict=True
        ):
            try:
                msg = json.loads(text)
                route = TOY.route(f"{msg['ch']}.{msg['m']}")
                symbol = unified(msg["m"])
            except (ValueError, KeyError, TypeError) as e:
                batch.errors.append(LineError(lines.source, line, f"not a toy message: {e}", text))
                continue
            batch.count(route.kind)
            if route.kind == "trade":
                st = self._book(symbol)
                tid = int(msg["id"])
                if st.last_trade_id is not None and tid > st.last_trade_id + 1:
                    gaps.append(self._gap(symbol, msg["ts"] * MS, st.last_trade_id, tid, "trade"))
                st.last_trade_id = max(tid, st.last_trade_id or tid)
                trade_rows.append(
                    {"venue": NAME, "symbol": symbol, "exch_ts_ns": msg["ts"] * MS,
                     "recv_ts_ns": recv, "trade_id": tid, "price": float(msg["px"]),
                     "qty": float(msg["qty"]), "side": msg["taker"]}
                )  # fmt: skip
                continue
            self._ev += 1
            ev = self._ev
            snap = bool(msg.get("snap"))
            rows = [
                {"venue": NAME, "symbol": symbol, "exch_ts_ns": msg["ts"] * MS,
                 "recv_ts_ns": recv, "update_id": int(msg["seq"]), "side": side,
                 "price": float(px), "qty": float(q), "is_snapshot": snap}
                for side, key in (("bid", "bids"), ("ask", "asks"))
                for px, q in msg[key]
            ]  # fmt: skip
            self._pending[ev] = (symbol, rows)
            st = self._book(symbol)
            if snap:
                st.got_snapshot = True
                order, found = st.sync.on_snapshot(ev, int(msg["seq"]))
            else:
                seq = int(msg["seq"])
                order, found = st.sync.on_diff(ev, seq, seq, int(msg.get("prev", -1)))
            for g in found:
                gaps.append(
                    {"venue": NAME, "symbol": symbol, "ts_ns": msg["ts"] * MS,
                     "kind": "sequence_gap", "detail": g.detail,
                     "prev_update_id": g.prev_update_id, "next_update_id": g.next_update_id}
                )  # fmt: skip
                st.update_id = None
            for e in order:
                sym, applied = self._pending.pop(e)
                book_rows.extend(applied)
                st = self._book(sym)
                if applied and applied[0]["is_snapshot"]:
                    st.levels.clear()
                for r in applied:
                    st.levels[(r["side"], r["price"])] = r["qty"]
                    st.update_id = r["update_id"]
            buffered = {b[0] for s in self._books.values() for b in s.sync.buffer}
            self._pending = {k: v for k, v in self._pending.items() if k in buffered}
        batch.add("trades", pl.DataFrame(trade_rows, schema=SCHEMAS["trades"]))
        batch.add("book", pl.DataFrame(book_rows, schema=SCHEMAS["book"]))
        batch.add("gaps", pl.DataFrame(gaps, schema=SCHEMAS["gaps"]))
        return batch

    @staticmethod
    def _gap(symbol: str, ts: int, prev: int, nxt: int, what: str) -> dict[str, Any]:
        return {"venue": NAME, "symbol": symbol, "ts_ns": ts, "kind": "sequence_gap",
                "detail": f"{what} ids {prev + 1}..{nxt - 1} missing",
                "prev_update_id": prev, "next_update_id": nxt}  # fmt: skip

    def finish(self) -> Batch:
        batch = Batch()
        for sym, st in self._books.items():
            if not st.got_snapshot and st.sync.buffer:
                batch.add(
                    "gaps",
                    gap_rows(NAME, sym, [(0, "no_snapshot", "no toy snapshot", None, None)]),
                )
        return batch

    def awaiting_snapshot(self) -> list[str]:
        return [s for s, st in self._books.items() if not st.sync.synced]

    def force_resync(
        self,
        symbol: str,
        ts_ns: int,
        reason: str,
        kind: str = "resync",
        prev_update_id: int | None = None,
    ) -> Batch:
        st = self._book(symbol)
        prev = st.update_id if prev_update_id is None else prev_update_id
        st.sync.reset()
        st.levels.clear()
        st.update_id = None
        batch = Batch()
        batch.add("gaps", gap_rows(NAME, symbol, [(ts_ns, kind, reason, prev, None)]))
        return batch

    def sync_stats(self) -> dict[str, dict[str, object]]:
        return {
            s: {"applied": st.sync.applied, "dropped": st.sync.dropped,
                "first_applied": st.sync.first_applied, "snapshots": st.sync.snapshots,
                "synced": st.sync.synced}
            for s, st in self._books.items()
        }  # fmt: skip

    def is_synced(self, symbol: str) -> bool:
        st = self._books.get(symbol)
        return bool(st and st.sync.synced)

    def book_state(self, symbol: str) -> tuple[pl.DataFrame, int] | None:
        st = self._books.get(symbol)
        if st is None or not st.sync.synced or st.update_id is None:
            return None
        live = [(side, px, q) for (side, px), q in sorted(st.levels.items()) if q > 0]
        df = pl.DataFrame(live, schema={"side": pl.String, "price": pl.Float64, "qty": pl.Float64})
        return df, st.update_id

    def seed_last_trade_id(self, symbol: str, trade_id: int) -> None:
        self._book(symbol).last_trade_id = trade_id

    def rest_trades(
        self, symbol: str, trades: Sequence[Mapping[str, Any]], recv_ts_ns: int
    ) -> pl.DataFrame:
        return empty_frame("trades")  # the toy exchange has no REST trade history


class ToyVenue:
    name = NAME
    rules = ToyRules()
    default_channels: tuple[str, ...] = tuple(CHANNELS)
    dump_names = ""

    def unified_symbol(self, market_id: str) -> str:
        return unified(market_id)

    def normalizer(self) -> Normalizer:
        return ToyNormalizer()

    def transport(
        self, ws_url: str | None, rest_url: str | None, channels: tuple[str, ...] = ()
    ) -> Transport:
        raise NotImplementedError("toyvenue is import-only: it has no live transport")

    def route(self, stream: str) -> StreamRoute:
        channel, _, market = stream.partition(".")
        if channel not in CHANNELS or not market:
            raise UnknownStream(NAME, stream, "book.<MARKET> or trade.<MARKET>")
        return StreamRoute(CHANNELS[channel], market)

    def stream_labels(self, text: pl.Series) -> pl.Series:
        t = pl.col("text")
        label = pl.concat_str(
            t.str.extract(r'"ch":"([a-z]+)"', 1), pl.lit("."), t.str.extract(r'"m":"([^"]+)"', 1)
        ).fill_null("other")
        return text.rename("text").to_frame().select(label.alias("stream"))["stream"]

    def depth_market(self, text: str) -> str | None:
        if '"ch":"book"' not in text:
            return None
        return str(json.loads(text)["m"])

    def sniff(self, messages: Sequence[bytes]) -> JournalHead:
        first = next((m for m in messages if m.startswith(b"{")), b"")
        if not first.startswith(b'{"ch":'):
            return JournalHead(False)
        return JournalHead(True, json.loads(first).get("m"))

    def dump_of(self, path: Path) -> DumpFile | None:
        return None

    def read_dump(self, path: Path, data: bytes, dump: DumpFile) -> Batch:
        raise NotImplementedError("toyvenue has no dumps")


TOY = ToyVenue()
