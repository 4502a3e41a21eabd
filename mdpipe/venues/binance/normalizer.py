"""Binance spot (``binance``), USD-M futures (``binanceusdm``) and COIN-M futures
(``binancecoinm``) normalizer.

Messages handled (combined-stream frames, bare events, and REST depth snapshots)::

    {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":ms,"s":"BTCUSDT","U":first,
        "u":last,"b":[["px","qty"],...],"a":[...]}}            futures add "T" and "pu"
    {"stream":"btcusdt@trade","data":{"e":"trade","E":ms,"s":"BTCUSDT","t":id,"p":"px","q":"qty",
        "T":ms,"m":buyer_is_maker,"M":true}}
    {"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":ms,"s":"BTCUSDT","a":id,"p":"px",
        "q":"qty","f":first_id,"l":last_id,"T":ms,"m":buyer_is_maker}}
    {"stream":"btcusdt@bookTicker","data":{"u":id,"s":"BTCUSDT","b":"px","B":"qty","a":"px",
        "A":"qty"}}                                             futures add "e", "E", "T"
    {"lastUpdateId":id,"bids":[["px","qty"],...],"asks":[...]}  GET /api/v3/depth (spot)
    {"lastUpdateId":id,"E":ms,"T":ms,"bids":...,"asks":...}     GET /fapi/v1/depth (futures)
    {"stream":"btcusdt@depthSnapshot","data":{<REST snapshot>}} the capture journal's wrapper,
                                                                which names the snapshot's symbol
    {"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":ms,"s":"BTCUSDT",
        "p":"mark","i":"index","P":"estimated settle","r":"funding rate","T":next_funding_ms}}
                                        futures only; delivery contracts send "r":"" and "T":0

COIN-M frames are the USD-M ones with ``"s":"BTCUSD_PERP"`` and an extra ``"ps":"BTCUSD"``
(pair); their sizes are contracts (see :mod:`mdpipe.venues.binance.contracts`): ``qty`` keeps
them as sent and ``base_qty`` adds ``qty x contract size / price`` (null on the other venues).

Book sync follows Binance's documented procedure. Spot: buffer diffs until the snapshot; drop
diffs with ``u <= lastUpdateId``; the first applied diff has ``U <= lastUpdateId + 1 <= u``;
every next one has ``U == previous u + 1``. Futures: drop ``u < lastUpdateId``; first applied
``U <= lastUpdateId <= u``; then ``pu == previous u``. Anything else is a sequence gap: a
``gaps`` row is written and no book row is emitted until the next snapshot.

``m = true`` means the buyer was the maker, so the taker (the ``side`` we store) sold.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from mdpipe.lake import SCHEMAS, day_start_ns, empty_frame, split_by_date, with_added_columns
from mdpipe.venues.base import Batch, BookSync, LineError, RawLines, UnknownStream, gap_rows
from mdpipe.venues.binance.common import (
    COINM,
    MS,
    SPOT,
    SPOT_RULES,
    USDM_RULES,
    VENUES,
    channel_kinds,
    route,
    unified_symbol,
)
from mdpipe.venues.binance.contracts import contract_size

_LEVELS = pl.List(pl.List(pl.String))
DEPTH = pl.Struct(
    {"e": pl.String, "E": pl.Int64, "T": pl.Int64, "s": pl.String, "U": pl.Int64,
     "u": pl.Int64, "pu": pl.Int64, "b": _LEVELS, "a": _LEVELS}
)  # fmt: skip
TRADE = pl.Struct(
    {"E": pl.Int64, "s": pl.String, "t": pl.Int64, "p": pl.String, "q": pl.String,
     "T": pl.Int64, "m": pl.Boolean}
)  # fmt: skip
AGG_TRADE = pl.Struct(
    {"E": pl.Int64, "s": pl.String, "a": pl.Int64, "p": pl.String, "q": pl.String,
     "f": pl.Int64, "l": pl.Int64, "T": pl.Int64, "m": pl.Boolean}
)  # fmt: skip
BOOK_TICKER = pl.Struct(
    {"u": pl.Int64, "E": pl.Int64, "T": pl.Int64, "s": pl.String, "b": pl.String,
     "B": pl.String, "a": pl.String, "A": pl.String}
)  # fmt: skip
MARK_PRICE = pl.Struct(
    {"E": pl.Int64, "s": pl.String, "p": pl.String, "i": pl.String, "P": pl.String,
     "r": pl.String, "T": pl.Int64}
)  # fmt: skip
SNAPSHOT = pl.Struct(
    {"lastUpdateId": pl.Int64, "E": pl.Int64, "T": pl.Int64, "bids": _LEVELS, "asks": _LEVELS}
)

# bookTicker in the three shapes Binance sends: spot {"u","s","b","B","a","A"}, USD-M
# {"e","u","s",...,"T","E"} and COIN-M {"u","e","s","ps",...,"T","E"}
_BOOK_TICKER = (
    r'^\{(?:"e":"bookTicker",)?"u":(?<u>\d+),(?:"e":"bookTicker",)?"s":"(?<s>[A-Z0-9_]+)",'
    r'(?:"ps":"[A-Z0-9_]+",)?"b":"(?<b>[0-9.]+)","B":"(?<B>[0-9.]+)",'
    r'"a":"(?<a>[0-9.]+)","A":"(?<A>[0-9.]+)"(?:,"T":(?<T>\d+),"E":(?<E>\d+))?\}$'
)
_DEPTH_HEAD = (
    r'^\{"e":"depthUpdate","E":(?<E>\d+),(?:"T":(?<T>\d+),)?"s":"(?<s>[A-Z0-9_]+)",'
    r'(?:"ps":"[A-Z0-9_]+",)?"U":(?<U>\d+),"u":(?<u>\d+),(?:"pu":(?<pu>-?\d+),)?"b":\['
)
_WRAPPED = r'^\{"stream":"([A-Za-z0-9_.-]+)@([A-Za-z0-9@]+)","data":'
_EVENT_KIND = {
    "depthUpdate": "depth",
    "trade": "trade",
    "aggTrade": "agg_trade",
    "bookTicker": "bbo",
    "markPriceUpdate": "mark",
}
_SPOT_EVENT_KIND = {e: k for e, k in _EVENT_KIND.items() if k != "mark"}
_REQUIRED = {
    "depth": ("E", "s", "U", "u", "b", "a"),
    "trade": ("s", "t", "p", "q", "T", "m"),
    "agg_trade": ("s", "a", "p", "q", "f", "l", "T", "m"),
    "bbo": ("u", "s", "b", "B", "a", "A"),
    "snapshot": ("lastUpdateId", "bids", "asks"),
    "mark": ("E", "s", "p", "i"),
}
_DTYPES = {
    "depth": DEPTH,
    "trade": TRADE,
    "agg_trade": AGG_TRADE,
    "bbo": BOOK_TICKER,
    "snapshot": SNAPSHOT,
    "mark": MARK_PRICE,
}
EXPECTED = (
    "expected a Binance combined-stream frame (depth, trade, aggTrade, bookTicker, markPrice), "
    "a bare event of those kinds, or a REST depth snapshot"
)


@dataclass
class _SymbolState:
    sync: BookSync
    book: pl.DataFrame | None = None  # side, price, qty of the synced book; None when unknown
    book_date: str | None = None
    last_update_id: int | None = None
    last_recv_ns: int = 0
    last_exch_ns: int | None = None
    pending_rows: pl.DataFrame | None = None  # level rows of buffered (undecided) diffs
    last_trade_id: int | None = None
    first_diff: tuple[int, int] | None = None  # (exch ts, U) of the first diff, for no_snapshot
    got_snapshot: bool = False


_LEVEL_COLS = {
    "ev": pl.Int64,
    "exch_ts_ns": pl.Int64,
    "recv_ts_ns": pl.Int64,
    "update_id": pl.Int64,
    "side": pl.String,
    "price": pl.Float64,
    "qty": pl.Float64,
    "is_snapshot": pl.Boolean,
}


class BinanceNormalizer:
    """Stateful, streaming: feed slices of lines in arrival order, then call :meth:`finish`."""

    def __init__(self, venue: str = SPOT) -> None:
        if venue not in VENUES:
            raise ValueError(f"BinanceNormalizer handles {', '.join(VENUES)}, not {venue!r}")
        self.venue = venue
        self.futures = venue != SPOT
        self.inverse = venue == COINM
        self._symbols: dict[str, _SymbolState] = {}
        self._next_ev = 0
        # unified symbol -> USD per contract (inverse markets only; None: unknown)
        self._contract_size: dict[str, float | None] = {}

    def set_contract_size(self, symbol: str, size: float) -> None:
        """USD per contract of an inverse market, from the market's metadata (capture: ccxt's
        ``market["contractSize"]``); it wins over :mod:`~mdpipe.venues.binance.contracts`."""
        if not size > 0:
            raise ValueError(f"contract size of {symbol} must be > 0, got {size!r}")
        self._contract_size[symbol] = float(size)

    # -- public -------------------------------------------------------------------------------
    def awaiting_snapshot(self) -> list[str]:
        return [s for s, st in self._symbols.items() if not st.sync.synced]

    def sync_stats(self) -> dict[str, dict[str, object]]:
        """Per symbol: diffs applied and dropped, the first applied diff, snapshots seen."""
        return {
            sym: {
                "applied": st.sync.applied,
                "dropped": st.sync.dropped,
                "first_applied": st.sync.first_applied,
                "snapshots": st.sync.snapshots,
                "synced": st.sync.synced,
            }
            for sym, st in self._symbols.items()
        }

    def book_state(self, symbol: str) -> tuple[pl.DataFrame, int] | None:
        """The synced book of ``symbol`` after the last batch (side, price, qty) and the update id
        it is at, or None while the book is unknown (before a snapshot, after a gap)."""
        st = self._symbols.get(symbol)
        if st is None or st.book is None or not st.sync.synced or st.last_update_id is None:
            return None
        return st.book, st.last_update_id

    def seed_last_trade_id(self, symbol: str, trade_id: int) -> None:
        """Continue trade-id gap detection from an earlier run (capture restarts)."""
        self._state(symbol).last_trade_id = trade_id

    def rest_trades(
        self, symbol: str, trades: Sequence[Mapping[str, Any]], recv_ts_ns: int
    ) -> pl.DataFrame:
        """`trades` rows of ``symbol`` from a REST trade list (``GET /api/v3/historicalTrades``,
        ``/fapi/v1/historicalTrades``: ``{"id", "price", "qty", "time", "isBuyerMaker", ...}``),
        normalized exactly as stream trades; ``recv_ts_ns`` is when the REST answer arrived.
        Trade-id gap detection is left alone: a backfill fills a hole below the stream's ids."""
        if not trades:
            return empty_frame("trades")
        g = pl.DataFrame(
            {
                "symbol": [symbol] * len(trades),
                "t": [int(t["id"]) for t in trades],
                "p": [str(t["price"]) for t in trades],
                "q": [str(t["qty"]) for t in trades],
                "T": [int(t["time"]) for t in trades],
                "m": [bool(t["isBuyerMaker"]) for t in trades],
                "recv": [recv_ts_ns] * len(trades),
            },
            schema={
                "symbol": pl.String,
                "t": pl.Int64,
                "p": pl.String,
                "q": pl.String,
                "T": pl.Int64,
                "m": pl.Boolean,
                "recv": pl.Int64,
            },
        )
        rows = with_added_columns("trades", self._with_base_qty(self._trade_rows(g)))
        return rows.select(list(SCHEMAS["trades"]))

    def is_synced(self, symbol: str) -> bool:
        st = self._symbols.get(symbol)
        return bool(st and st.sync.synced)

    def force_resync(
        self,
        symbol: str,
        ts_ns: int,
        reason: str,
        kind: str = "resync",
        prev_update_id: int | None = None,
    ) -> Batch:
        """Drop the book of ``symbol`` (e.g. it crossed, or the connection was replaced): a gap row
        is written and book rows stop until the next snapshot. ``prev_update_id``: the last update
        the written book rows reach, when the caller withheld later rows (default: the last
        applied update)."""
        st = self._state(symbol)
        batch = Batch()
        prev = st.last_update_id if prev_update_id is None else prev_update_id
        st.sync.reset()
        st.book = None
        batch.add("gaps", gap_rows(self.venue, symbol, [(ts_ns, kind, reason, prev, None)]))
        batch.count(kind)
        return batch

    def feed(self, lines: RawLines) -> Batch:
        batch = Batch()
        n = lines.text.len()
        if n == 0:
            return batch
        df = pl.DataFrame(
            {
                "recv": lines.recv_ts_ns.cast(pl.Int64),
                "text": lines.text.str.strip_chars_end(),
                "line": lines.line_no.cast(pl.Int64),
            }
        ).with_columns(ev=pl.int_range(self._next_ev, self._next_ev + n, dtype=pl.Int64))
        self._next_ev += n
        df = _classify(df, self.venue)
        bad = df.filter(pl.col("kind").is_null())
        for row in bad.iter_rows(named=True):
            batch.errors.append(
                LineError(
                    lines.source, row["line"], _why_unknown(row["text"], self.venue), row["text"]
                )
            )
        batch.count("control", df.filter(pl.col("kind") == "control").height)
        decoded: dict[str, pl.DataFrame] = {}
        for kind in ("depth", "trade", "agg_trade", "bbo", "snapshot", "mark"):
            part = df.filter(pl.col("kind") == kind)
            if part.height:
                decoded[kind] = self._decode(kind, part, lines, batch)
                batch.count(kind, decoded[kind].height)
        if "trade" in decoded:
            self._trades(decoded["trade"], batch)
        if "agg_trade" in decoded:
            self._agg_trades(decoded["agg_trade"], batch)
        if "bbo" in decoded:
            self._bbo(decoded["bbo"], batch)
        if "mark" in decoded:
            self._mark(decoded["mark"], batch)
        self._book(decoded.get("depth"), decoded.get("snapshot"), lines, batch)
        return batch

    def finish(self) -> Batch:
        """End of input: symbols that never received a snapshot get a ``no_snapshot`` gap."""
        batch = Batch()
        for sym, st in self._symbols.items():
            if not st.got_snapshot and st.first_diff is not None:
                ts, first_u = st.first_diff
                n = len(st.sync.buffer) + st.sync.dropped
                batch.add(
                    "gaps",
                    gap_rows(
                        self.venue,
                        sym,
                        [
                            (
                                ts,
                                "no_snapshot",
                                f"no REST depth snapshot in the input: {n} depth diffs not applied, no book "
                                "rows written (trades are imported)",
                                None,
                                first_u,
                            )
                        ],
                    ),
                )
                batch.count("no_snapshot")
            st.pending_rows = None
        return batch

    # -- internals ------------------------------------------------------------------------------
    def _state(self, symbol: str) -> _SymbolState:
        st = self._symbols.get(symbol)
        if st is None:
            st = self._symbols[symbol] = _SymbolState(
                BookSync(USDM_RULES if self.futures else SPOT_RULES)
            )
        return st

    def _decode(self, kind: str, part: pl.DataFrame, lines: RawLines, batch: Batch) -> pl.DataFrame:
        if kind == "bbo":
            # bookTicker is most of the stream and has a fixed shape per venue: a regex reads it
            # about 3x faster than the JSON decoder; anything else takes the general path.
            fast = part["data"].str.extract_groups(_BOOK_TICKER)
            hit = fast.struct.field("u").is_not_null()
            if hit.all():
                return part.drop("data").with_columns(
                    fast.struct.unnest().with_columns(pl.col("u", "E", "T").cast(pl.Int64))
                )
        if kind == "depth":
            # Depth diffs carry nested [["px","qty"],...] lists that the JSON decoder reads
            # slowly (~16 µs a message). Binance's fixed field order lets a small regex take the
            # header; each level list is cut out by position and split on quotes, leaving the
            # flat [px, qty, px, qty, ...] strings. Any other shape takes the JSON path.
            data = part["data"]
            head = data.str.extract_groups(_DEPTH_HEAD)
            b0 = data.str.find('"b":[', literal=True) + 5
            a0 = data.str.find('],"a":[', literal=True)
            shaped = head.struct.field("u").is_not_null() & data.str.ends_with("]}")
            if shaped.all() and a0.is_not_null().all():
                tail = data.str.len_bytes() - a0 - 9  # after '],"a":[' and before the final ']}'
                out = part.drop("data").with_columns(
                    head.struct.unnest().select(
                        pl.col("E", "T", "U", "u", "pu").cast(pl.Int64), "s"
                    ),
                    b=data.str.slice(b0, a0 - b0).str.split('"').list.gather_every(2, offset=1),
                    a=data.str.slice(a0 + 7, tail).str.split('"').list.gather_every(2, offset=1),
                )
                return _split_levels(out)
        dtype = _DTYPES[kind]
        try:
            dec = part["data"].str.json_decode(dtype)
        except Exception:  # invalid JSON somewhere in the column: find the lines (slow path)
            valid = []
            for line, text in zip(part["line"], part["data"], strict=True):
                try:
                    json.loads(text)
                    valid.append(True)
                except ValueError as e:
                    valid.append(False)
                    batch.errors.append(
                        LineError(lines.source, line, f"malformed JSON ({e})", text)
                    )
            part = part.filter(pl.Series(valid))
            dec = part["data"].str.json_decode(dtype)
        out = part.drop("data").with_columns(dec.struct.unnest())
        missing = pl.any_horizontal([pl.col(c).is_null() for c in _REQUIRED[kind]])
        incomplete = out.filter(missing)
        for row in incomplete.iter_rows(named=True):
            absent = [c for c in _REQUIRED[kind] if row[c] is None]
            batch.errors.append(
                LineError(
                    lines.source,
                    row["line"],
                    f"{kind} message lacks field(s) {', '.join(absent)}",
                    row["text"],
                )
            )
        out = out.filter(~missing)
        return _split_levels(out) if kind == "depth" else out

    def _symbol_col(self, df: pl.DataFrame) -> pl.DataFrame:
        raws = df["s"].unique().to_list()
        mapping = {r: unified_symbol(r, self.venue) for r in raws}
        if self.inverse:
            for r, sym in mapping.items():
                if sym not in self._contract_size:
                    self._contract_size[sym] = contract_size(r)
        return df.with_columns(symbol=pl.col("s").replace_strict(mapping, return_dtype=pl.String))

    def _with_base_qty(self, rows: pl.DataFrame, batch: Batch | None = None) -> pl.DataFrame:
        """``base_qty`` of inverse-contract rows (``symbol``, ``price``, ``qty``): contracts x
        USD per contract / price; null where the contract size is unknown (and counted)."""
        if not self.inverse or rows.height == 0:
            return rows
        sizes = {s: self._contract_size.get(s) for s in rows["symbol"].unique().to_list()}
        usd = pl.col("symbol").replace_strict(sizes, default=None, return_dtype=pl.Float64)
        out = rows.with_columns(base_qty=pl.col("qty") * usd / pl.col("price"))
        if batch is not None and any(v is None for v in sizes.values()):
            batch.count("contract_size_unknown", int(out["base_qty"].null_count()))
        return out

    def _trades(self, t: pl.DataFrame, batch: Batch) -> None:
        t = self._symbol_col(t)
        for (sym,), g in t.group_by("symbol", maintain_order=True):
            st = self._state(str(sym))
            start = st.last_trade_id if st.last_trade_id is not None else -1
            ids = g["t"]
            prev_max = ids.cum_max().shift(1, fill_value=start).clip(lower_bound=start)
            fresh = ids > prev_max
            holes = []
            jumps = g.filter(fresh & (ids > prev_max + 1) & (prev_max >= 0))
            jump_prev = prev_max.filter(fresh & (ids > prev_max + 1) & (prev_max >= 0))
            for (tid, ts), prev in zip(jumps.select("t", "T").iter_rows(), jump_prev, strict=True):
                holes.append(
                    (
                        ts * MS,
                        "sequence_gap",
                        f"trade ids {prev + 1}..{tid - 1} missing ({tid - prev - 1} trades)",
                        prev,
                        tid,
                    )
                )
            batch.add("gaps", gap_rows(self.venue, str(sym), holes))
            batch.count("duplicate_trades", int((~fresh).sum()))
            g = g.filter(fresh)
            if g.height:
                st.last_trade_id = int(g["t"].max())  # type: ignore[arg-type]
            batch.add("trades", self._with_base_qty(self._trade_rows(g), batch))

    def _trade_rows(self, g: pl.DataFrame) -> pl.DataFrame:
        """`trades` rows from decoded trades (symbol, t, p, q, T, m, recv): one implementation
        for the stream and for REST backfills."""
        return g.select(
            venue=pl.lit(self.venue),
            symbol=pl.col("symbol"),
            exch_ts_ns=pl.col("T") * MS,
            recv_ts_ns=pl.col("recv"),
            trade_id=pl.col("t"),
            price=pl.col("p").cast(pl.Float64),
            qty=pl.col("q").cast(pl.Float64),
            side=pl.when(pl.col("m")).then(pl.lit("sell")).otherwise(pl.lit("buy")),
        )

    def _agg_trades(self, t: pl.DataFrame, batch: Batch) -> None:
        t = self._symbol_col(t)
        batch.add(
            "agg_trades",
            t.select(
                venue=pl.lit(self.venue),
                symbol=pl.col("symbol"),
                exch_ts_ns=pl.col("T") * MS,
                recv_ts_ns=pl.col("recv"),
                agg_trade_id=pl.col("a"),
                first_trade_id=pl.col("f"),
                last_trade_id=pl.col("l"),
                price=pl.col("p").cast(pl.Float64),
                qty=pl.col("q").cast(pl.Float64),
                side=pl.when(pl.col("m")).then(pl.lit("sell")).otherwise(pl.lit("buy")),
            ),
        )

    def _bbo(self, q: pl.DataFrame, batch: Batch) -> None:
        q = self._symbol_col(q)
        batch.add(
            "bbo",
            q.select(
                venue=pl.lit(self.venue),
                symbol=pl.col("symbol"),
                exch_ts_ns=pl.coalesce(pl.col("T"), pl.col("E")) * MS,
                recv_ts_ns=pl.col("recv"),
                update_id=pl.col("u"),
                bid=pl.col("b").cast(pl.Float64),
                bid_qty=pl.col("B").cast(pl.Float64),
                ask=pl.col("a").cast(pl.Float64),
                ask_qty=pl.col("A").cast(pl.Float64),
            ),
        )

    def _mark(self, m: pl.DataFrame, batch: Batch) -> None:
        m = self._symbol_col(m)
        batch.add(
            "mark",
            m.select(
                venue=pl.lit(self.venue),
                symbol=pl.col("symbol"),
                # in a markPrice frame `T` is the next funding time, not a trade time
                exch_ts_ns=pl.col("E") * MS,
                recv_ts_ns=pl.col("recv"),
                mark_price=pl.col("p").cast(pl.Float64),
                index_price=pl.col("i").cast(pl.Float64),
                # delivery contracts have no funding: "r":"" and "T":0
                funding_rate=pl.when(pl.col("r") != "").then(pl.col("r")).cast(pl.Float64),
                next_funding_ts_ns=pl.when(pl.col("T") > 0).then(pl.col("T") * MS),
                estimated_settle_price=pl.when(pl.col("P") != "")
                .then(pl.col("P"))
                .cast(pl.Float64),
            ),
        )

    def _book(
        self,
        depth: pl.DataFrame | None,
        snaps: pl.DataFrame | None,
        lines: RawLines,
        batch: Batch,
    ) -> None:
        heads: list[pl.DataFrame] = []
        levels: list[pl.DataFrame] = []
        if depth is not None and depth.height:
            depth = self._symbol_col(depth)
            exch = pl.coalesce(pl.col("T"), pl.col("E")) * MS
            heads.append(
                depth.select(
                    "ev",
                    "line",
                    "symbol",
                    "recv",
                    exch_ts_ns=exch,
                    U="U",
                    u="u",
                    pu=pl.col("pu").fill_null(-1),
                    snap_id=pl.lit(None, pl.Int64),
                )
            )
            for side, col in (("bid", "b"), ("ask", "a")):
                px, qty = f"{col}_px", f"{col}_qty"
                levels.append(
                    depth.select("ev", "recv", "u", exch.alias("exch_ts_ns"), px, qty)
                    .filter(pl.col(px).list.len() > 0)
                    .explode(px, qty)
                    .select(
                        "ev",
                        "exch_ts_ns",
                        recv_ts_ns="recv",
                        update_id="u",
                        side=pl.lit(side),
                        price=pl.col(px).cast(pl.Float64, strict=False),
                        qty=pl.col(qty).cast(pl.Float64, strict=False),
                        is_snapshot=pl.lit(False),
                    )
                )
        if snaps is not None and snaps.height:
            snaps = self._snapshot_symbols(snaps, lines, batch)
            exch = pl.coalesce(pl.col("T"), pl.col("E")) * MS
            heads.append(
                snaps.select(
                    "ev",
                    "line",
                    "symbol",
                    "recv",
                    exch_ts_ns=exch,
                    U=pl.lit(None, pl.Int64),
                    u=pl.lit(None, pl.Int64),
                    pu=pl.lit(None, pl.Int64),
                    snap_id="lastUpdateId",
                )
            )
            for side, col in (("bid", "bids"), ("ask", "asks")):
                levels.append(
                    snaps.select("ev", "recv", "lastUpdateId", exch.alias("exch_ts_ns"), col)
                    .explode(col)
                    .drop_nulls(col)
                    .select(
                        "ev",
                        "exch_ts_ns",
                        recv_ts_ns="recv",
                        update_id="lastUpdateId",
                        side=pl.lit(side),
                        price=pl.col(col)
                        .list.get(0, null_on_oob=True)
                        .cast(pl.Float64, strict=False),
                        qty=pl.col(col)
                        .list.get(1, null_on_oob=True)
                        .cast(pl.Float64, strict=False),
                        is_snapshot=pl.lit(True),
                    )
                )
        if not heads:
            return
        head = pl.concat(heads, how="vertical_relaxed").sort("ev")
        level = (
            pl.concat(levels, how="vertical_relaxed")
            if levels
            else pl.DataFrame(schema=_LEVEL_COLS)
        )
        bad_level = level.filter(pl.col("price").is_null() | pl.col("qty").is_null())
        if bad_level.height:
            bad_heads = head.filter(pl.col("ev").is_in(bad_level["ev"].implode()))
            for line in bad_heads["line"].to_list():
                batch.errors.append(
                    LineError(
                        lines.source, line, "book level is not a [price, qty] pair of decimals"
                    )
                )
            level = level.filter(~pl.col("ev").is_in(bad_level["ev"].implode()))
            head = head.filter(~pl.col("ev").is_in(bad_level["ev"].implode()))
        if head["symbol"].n_unique() == 1:  # the usual case: one market per file
            self._book_symbol(str(head["symbol"][0]), head, level, batch)
            return
        for (sym,), h in head.group_by("symbol", maintain_order=True):
            lv = level.filter(pl.col("ev").is_in(h["ev"].implode()))
            self._book_symbol(str(sym), h, lv, batch)

    def _snapshot_symbols(self, snaps: pl.DataFrame, lines: RawLines, batch: Batch) -> pl.DataFrame:
        hint = lines.symbol_hint
        sym = pl.col("stream_symbol")
        if hint is not None:
            sym = sym.fill_null(pl.lit(hint.lower()))
        snaps = snaps.with_columns(sym.alias("stream_symbol"))
        orphan = snaps.filter(pl.col("stream_symbol").is_null())
        for row in orphan.iter_rows(named=True):
            batch.errors.append(
                LineError(
                    lines.source,
                    row["line"],
                    "REST depth snapshot with no symbol: the file holds several symbols (or none); "
                    'wrap it as {"stream":"<symbol>@depthSnapshot","data":{...}}',
                )
            )
        snaps = snaps.filter(pl.col("stream_symbol").is_not_null())
        return self._symbol_col(snaps.with_columns(s=pl.col("stream_symbol").str.to_uppercase()))

    def _book_symbol(self, sym: str, head: pl.DataFrame, lv: pl.DataFrame, batch: Batch) -> None:
        st = self._state(sym)
        order: list[int] = []
        gaps: list[tuple[int, str, str, int | None, int | None]] = []
        snap_ts: dict[int, int] = {}
        exch_of = {}
        for ev, recv, exch, U, u, pu, snap_id in head.select(
            "ev", "recv", "exch_ts_ns", "U", "u", "pu", "snap_id"
        ).iter_rows():
            if snap_id is None:
                exch_of[ev] = exch
                if st.first_diff is None:
                    st.first_diff = (exch, U)
                st.last_exch_ns = exch
                out, g = st.sync.on_diff(ev, U, u, pu)
            else:
                st.got_snapshot = True
                # A spot snapshot carries no time: it is stamped with the latest exchange time
                # known when it arrived (the last diff's E), or its receive time if none.
                snap_ts[ev] = exch if exch is not None else (st.last_exch_ns or recv)
                out, g = st.sync.on_snapshot(ev, snap_id)
            order.extend(out)
            for gi in g:
                order.append(-1 - len(gaps))  # marker: gap number
                ts = exch_of.get(gi.ev, st.last_exch_ns or recv)
                gaps.append((ts, "sequence_gap", gi.detail, gi.prev_update_id, gi.next_update_id))
        if snap_ts:
            lv = lv.with_columns(
                exch_ts_ns=pl.when(pl.col("is_snapshot"))
                .then(pl.col("ev").replace_strict(snap_ts, default=None, return_dtype=pl.Int64))
                .otherwise(pl.col("exch_ts_ns"))
            )
        all_rows = lv if st.pending_rows is None else pl.concat([st.pending_rows, lv])
        buffered = {b[0] for b in st.sync.buffer}
        st.pending_rows = all_rows.filter(pl.col("ev").is_in(list(buffered))) if buffered else None
        batch.add("gaps", gap_rows(self.venue, sym, gaps))
        batch.count("sequence_gap", len(gaps))
        if not order:
            return
        applied = [e for e in order if e >= 0]
        pos = pl.DataFrame({"ev": applied}, schema={"ev": pl.Int64}).with_row_index("pos")
        if len(applied) == len(order) and all(a < b for a, b in itertools.pairwise(applied)):
            # The usual case: events applied in arrival order, no gap: a stable sort by event
            # (levels of one event keep their order) instead of a join.
            rows = all_rows.filter(pl.col("ev").is_in(pos["ev"].implode())).sort(
                "ev", maintain_order=True
            )
        else:
            rows = all_rows.join(pos, on="ev", how="inner").sort("pos", maintain_order=True)
        # Split the applied sequence at gap markers: the book is unknown from a gap to the next
        # snapshot, so day checkpoints are only written where the book is known.
        segment_starts: list[int] = []
        count = 0
        for e in order:
            if e < 0:
                segment_starts.append(count)
            else:
                count += 1
        out_frames = []
        bounds = [0, *segment_starts, len(pos)]
        ev_pos = pos["ev"]
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            if i > 0:
                st.book = None  # a gap happened before this segment
            if lo == hi:
                continue
            if lo == 0 and hi == len(pos):
                seg = rows
            else:
                seg = rows.filter(pl.col("ev").is_in(ev_pos[lo:hi].implode()))
            out_frames.append(self._with_checkpoints(sym, st, seg))
        if segment_starts and segment_starts[-1] == len(pos):
            st.book = None
        for f in out_frames:
            f = f.with_columns(venue=pl.lit(self.venue), symbol=pl.lit(sym))
            batch.add("book", self._with_base_qty(f, batch))

    def _with_checkpoints(self, sym: str, st: _SymbolState, seg: pl.DataFrame) -> pl.DataFrame:
        """Insert a snapshot of the synced book at each UTC day boundary the segment crosses, so
        every date partition of ``book`` can be replayed on its own."""
        pieces = []
        for date, part in split_by_date(seg, "book").items():
            starts_with_snapshot = bool(part["is_snapshot"][0])
            if (
                st.book is not None
                and st.book_date is not None
                and date > st.book_date
                and not starts_with_snapshot
            ):
                ck = st.book.select(
                    exch_ts_ns=pl.lit(day_start_ns(date), pl.Int64),
                    recv_ts_ns=pl.lit(int(part["recv_ts_ns"][0]), pl.Int64),
                    update_id=pl.lit(st.last_update_id, pl.Int64),
                    side="side",
                    price="price",
                    qty="qty",
                    is_snapshot=pl.lit(True),
                )
                pieces.append(ck)
            pieces.append(part.drop("ev", "pos", strict=False))
            st.book = fold_book(st.book, part)
            st.book_date = date
            st.last_update_id = int(part["update_id"][-1])
            st.last_recv_ns = int(part["recv_ts_ns"][-1])
        return pl.concat(pieces, how="vertical_relaxed")


def _split_levels(depth: pl.DataFrame) -> pl.DataFrame:
    """``b``/``a`` as [[px, qty], ...] (JSON path) or a flat [px, qty, px, qty, ...] (fast path)
    -> ``b_px, b_qty, a_px, a_qty`` string lists."""
    cols = {}
    for side in ("b", "a"):
        c = pl.col(side)
        if depth.schema[side] == pl.List(pl.List(pl.String)):
            # A level that is not a pair becomes null, so it is reported, never half-applied.
            pair = pl.element().list.len() == 2
            cols[f"{side}_px"] = c.list.eval(
                pl.when(pair).then(pl.element().list.get(0, null_on_oob=True))
            )
            cols[f"{side}_qty"] = c.list.eval(
                pl.when(pair).then(pl.element().list.get(1, null_on_oob=True))
            )
        else:
            cols[f"{side}_px"] = c.list.gather_every(2)
            cols[f"{side}_qty"] = c.list.gather_every(2, offset=1)
    return depth.with_columns(**cols).drop("b", "a")


def fold_book(book: pl.DataFrame | None, rows: pl.DataFrame) -> pl.DataFrame:
    """The book after applying ``rows`` (applied order) to ``book``: vectorised, last write per
    (side, price) wins, a snapshot run replaces everything before it, zero sizes are removals."""
    snap = rows["is_snapshot"]
    if snap.any():
        starts = rows.with_row_index("i").filter(
            pl.col("is_snapshot")
            & ~(
                pl.col("is_snapshot").shift(1).fill_null(False)
                & (pl.col("update_id") == pl.col("update_id").shift(1))
            )
        )
        rows = rows.slice(int(starts["i"][-1]))
        book = None
    cur = rows.select("side", "price", "qty")
    if book is not None:
        cur = pl.concat([book, cur])
    out = cur.unique(["side", "price"], keep="last", maintain_order=True).filter(pl.col("qty") > 0)
    return out.sort(["side", "price"], descending=[False, False])


def _why_unknown(text: str, venue: str) -> str:
    try:
        msg = json.loads(text)
    except ValueError as e:
        return f"malformed JSON ({e}); {EXPECTED}"
    stream = msg.get("stream") if isinstance(msg, dict) else None
    if isinstance(stream, str):
        try:
            route(venue, stream)
        except UnknownStream as e:  # never read as some other stream
            return f"unknown message: {e}"
    return f"unknown message: {EXPECTED}"


def _classify(df: pl.DataFrame, venue: str) -> pl.DataFrame:
    """Find each line's kind, symbol (lower case) and data JSON text, without parsing it."""
    wrapped = df["text"].str.extract_groups(_WRAPPED)
    df = df.with_columns(
        stream_symbol=wrapped.struct.field("1").str.to_lowercase(),
        channel=wrapped.struct.field("2"),
    )
    is_wrapped = pl.col("channel").is_not_null()
    prefix_len = pl.col("stream_symbol").str.len_bytes() + pl.col("channel").str.len_bytes() + 21
    inner = pl.col("text").str.slice(prefix_len, pl.col("text").str.len_chars() - prefix_len - 1)
    channel_kind = pl.col("channel").replace_strict(
        channel_kinds(venue), default=None, return_dtype=pl.String
    )
    if df["channel"].null_count() == 0:  # a combined-stream journal: skip the bare-message tests
        return df.with_columns(data=inner, kind=channel_kind)
    data = pl.when(is_wrapped).then(inner).otherwise(pl.col("text"))
    event = pl.col("text").str.extract(r'^\{"e":"([A-Za-z]+)"', 1)
    kind = (
        pl.when(is_wrapped)
        .then(channel_kind)
        .when(event.is_not_null())
        .then(
            event.replace_strict(
                _EVENT_KIND if venue != SPOT else _SPOT_EVENT_KIND,
                default=None,
                return_dtype=pl.String,
            )
        )
        .when(pl.col("text").str.starts_with('{"lastUpdateId":'))
        .then(pl.lit("snapshot"))
        .when(pl.col("text").str.contains(r'^\{"u":\d+,"s":"'))
        .then(pl.lit("bbo"))
        .when(pl.col("text").str.contains(r'^\{"result":.*"id":'))
        .then(pl.lit("control"))
        .otherwise(pl.lit(None, pl.String))
    )
    return df.with_columns(data=data, kind=kind)


__all__ = ["BinanceNormalizer", "BookSync", "unified_symbol"]
