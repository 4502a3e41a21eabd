"""Absorbing frames: pending websocket lines -> normalized batches -> lake, callbacks, consumers.

Every `batch_interval_s` the daemon calls `Absorber.process_pending()`: the lines received since
the last call (websocket frames and REST snapshots, in receive order) are queued for the journal
first, counted per stream, then fed to the venue's normalizer. Each symbol's book rows of the
batch are replayed update by update from the book before the batch (the numba book of
mdpipe.core.book); at the first crossed update the symbol's remaining book rows are withheld and
it resyncs like after a sequence gap. `absorb(batch)` then accounts the batch (gaps, trade-id
holes for backfill, synced books, latency), runs book and trade callbacks, hands the batch to
the event consumers (the online engine) and queues it for the publisher.

Collaborators are explicit: the venue (stream labels and routes), its normalizer, `Status`,
the `Publisher`, a `backfill(symbol, first_id, last_id, gap_ts_ns)` callable for trade-id holes
and `depth_seen`, the set of markets whose depth streamed on the current connection (shared with
the connection, which resets it, and read by the REST resync scheduler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.publisher import Publisher
from mdpipe.capture.status import Status
from mdpipe.core.book import L2Book
from mdpipe.venues import Batch, Normalizer, RawLines, StreamRoute, UnknownStream
from mdpipe.venues.base import TRADE_GAP_PREFIX, Venue

log = logging.getLogger("mdpipe.capture")


class BookView:
    """A synced L2 book handed to book callbacks; sorted lazily, only if asked."""

    __slots__ = ("asks", "bids", "exch_ts_ns", "recv_ts_ns", "symbol", "update_id")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.update_id = 0
        self.exch_ts_ns = 0
        self.recv_ts_ns = 0

    def best_bid(self) -> tuple[float, float] | None:
        if not self.bids:
            return None
        p = max(self.bids)
        return p, self.bids[p]

    def best_ask(self) -> tuple[float, float] | None:
        if not self.asks:
            return None
        p = min(self.asks)
        return p, self.asks[p]

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        b = sorted(self.bids.items(), reverse=True)[:n]
        a = sorted(self.asks.items())[:n]
        return b, a


BookCallback = Callable[[BookView], None]
TradeCallback = Callable[[dict[str, Any]], None]
BatchConsumer = Callable[[Batch], None]
BackfillStarter = Callable[[str, int, int, int], None]  # (symbol, first id, last id, gap ts ns)


class Absorber:
    """Pending lines in, normalized batches out: to the status, callbacks, consumers, publisher."""

    def __init__(
        self,
        config: CaptureConfig,
        venue: Venue,
        normalizer: Normalizer,
        status: Status,
        publisher: Publisher,
        *,
        backfill: BackfillStarter,
        depth_seen: set[str],
        consumers: list[BatchConsumer],
    ) -> None:
        self.config = config
        self.venue = venue
        self.normalizer = normalizer
        self.status = status
        self.publisher = publisher
        self.backfill = backfill
        self.depth_seen = depth_seen
        self.book_callbacks: list[BookCallback] = []
        self.trade_callbacks: list[TradeCallback] = []
        self.consumers = consumers
        self.market_keys: dict[str, str] = {}  # unified symbol -> the venue's stream key
        self.symbol_of_key: dict[str, str] = {}
        self._books: dict[str, BookView] = {}
        self._cross_book: L2Book | None = None  # replays each batch's book rows (lazily made)
        # pending: received, not yet normalized
        self._p_ns: list[int] = []
        self._p_text: list[str] = []
        self._line_no = 0
        self._routes: dict[str, StreamRoute | None] = {}  # stream label -> route (None: not one)

    def set_markets(self, market_keys: dict[str, str]) -> None:
        """The venue's stream key of each symbol, once the markets are loaded."""
        self.market_keys.update(market_keys)
        self.symbol_of_key.update({k: s for s, k in market_keys.items()})

    def warm_up(self) -> None:
        """Load the crossed-book replay's compiled code now rather than inside the first batch."""
        self._cross_book = L2Book()
        self._cross_book.first_crossed(
            None,
            pl.DataFrame(
                {"update_id": [1], "is_snapshot": [True], "side": ["bid"], "price": [1.0]}
            ).with_columns(qty=pl.lit(1.0)),
        )

    def receive(self, recv_ns: int, text: str) -> None:
        """Queue one received line (a websocket frame or a wrapped REST snapshot)."""
        self._p_ns.append(recv_ns)
        self._p_text.append(text)

    @property
    def pending(self) -> int:
        """Lines received and not yet normalized."""
        return len(self._p_ns)

    def resync_all(self, ts_ns: int, detail: str, kind: str) -> None:
        """Every book is unknown: a gap row of `kind` for each symbol, which then resyncs."""
        for sym in self.config.symbols:
            self.absorb(self.normalizer.force_resync(sym, ts_ns, detail, kind=kind))

    def process_pending(self) -> None:
        """Normalize the pending lines (journal queue first), check crossed books, absorb."""
        if not self._p_ns:
            return
        ns, texts = self._p_ns, self._p_text
        self._p_ns, self._p_text = [], []
        n = len(ns)
        first = self._line_no + 1
        self._line_no += n
        recv = pl.Series("recv", ns, dtype=pl.Int64)
        text = pl.Series("text", texts, dtype=pl.String)
        # raw lines are queued for the journal before anything can fail on them
        self.publisher.add_lines(ns, texts)
        self._count_streams(recv, text)
        # the synced books before this batch: the crossed-book check replays the batch from them
        before = {sym: self.normalizer.book_state(sym) for sym in self.config.symbols}
        try:
            batch = self.normalizer.feed(
                RawLines(
                    recv_ts_ns=recv,
                    text=text,
                    line_no=pl.int_range(first, first + n, dtype=pl.Int64, eager=True),
                    source=f"capture:{self.config.venue}",
                )
            )
        except Exception as exc:
            # a normalizer bug must not stop the recording: the lines are in the journal (and
            # can be re-imported once fixed); every book is unknown from here until resynced
            log.exception(
                "normalizer failed on lines %d..%d; resyncing every book", first, first + n - 1
            )
            now = time.time_ns()
            self.status.episode("normalizer_error", "*", repr(exc)[:300], resolved=True)
            detail = f"normalizer error on capture lines {first}..{first + n - 1}: {exc!r}"
            self.resync_all(now, detail[:500], "resync")
            return
        for err in batch.errors:
            self.status.malformed.inc()
            idx = err.line - first
            frame = texts[idx] if 0 <= idx < n else err.content
            self.status.malformed_samples.append(frame[:2000])
            # the whole frame as received, so the log alone shows what the exchange sent
            log.warning("skipped a malformed frame (%s): %r", err.message, frame[:2000])
            self.status.episode("malformed", "*", f"{err.message}: {frame[:300]!r}", resolved=True)
        self._check_crossed(batch, before)
        self.absorb(batch)

    def _count_streams(self, recv: pl.Series, text: pl.Series) -> None:
        df = pl.DataFrame({"recv": recv, "text": text})
        g = (
            df.with_columns(
                stream=self.venue.stream_labels(text), nbytes=pl.col("text").str.len_bytes()
            )
            .group_by("stream")
            .agg(n=pl.len(), b=pl.col("nbytes").sum(), last=pl.col("recv").max())
        )
        for st, n, b, last in g.iter_rows():
            self.status.messages.inc(st, n=n)
            self.status.bytes.inc(st, n=b)
            route = self._route(st)
            sym = None if route is None else self.symbol_of_key.get(route.market_key)
            self.status.stream_seen(st, sym, last)
            if route is not None and route.kind == "depth":
                self.depth_seen.add(route.market_key)

    def _route(self, label: str) -> StreamRoute | None:
        """The venue's route of a stream label; None for `control`, `other` and streams the
        venue does not know (the normalizer reports those frames with file and line)."""
        if label not in self._routes:
            try:
                self._routes[label] = self.venue.route(label)
            except UnknownStream:
                self._routes[label] = None
        return self._routes[label]

    def absorb(self, batch: Batch) -> None:
        """Account a normalized batch, hand it to callbacks and consumers, queue it for publish."""
        gaps = batch.get("gaps")
        if gaps.height:
            for sym, kind, detail, ts, prev, nxt in gaps.select(
                "symbol", "kind", "detail", "ts_ns", "prev_update_id", "next_update_id"
            ).iter_rows():
                if (
                    kind == "sequence_gap"
                    and detail.startswith(TRADE_GAP_PREFIX)
                    and prev is not None
                    and nxt is not None
                    and self.config.backfill_trades
                ):
                    self.backfill(sym, prev + 1, nxt - 1, ts)
                self.status.gaps.inc(sym, kind)
                self.status.episode(kind, sym, detail, resolved=False)
                log.warning("gap %s %s: %s", sym, kind, detail)
        book = batch.get("book")
        if book.height:
            for sym, n in book.group_by("symbol").len().iter_rows():
                self.status.book_rows.inc(sym, n=n)
        for sym in self.config.symbols:
            self.status.set_synced(sym, self.normalizer.is_synced(sym))
        trades = batch.get("trades")
        if trades.height:
            for sym, n in trades.group_by("symbol").len().iter_rows():
                self.status.trades.inc(sym, n=n)
        self._observe_latency(trades, book)
        if self.trade_callbacks and trades.height:
            for row in trades.iter_rows(named=True):
                for fn in self.trade_callbacks:
                    fn(row)
        if self.book_callbacks and book.height:
            self._run_book_callbacks(book)
        for consumer in self.consumers:
            try:
                consumer(batch)
            except Exception:  # a broken consumer must not stop the recording
                log.exception("event consumer %r failed", consumer)
        self.publisher.extend(batch)

    def _observe_latency(self, trades: pl.DataFrame, book: pl.DataFrame) -> None:
        offset = self.status.clock_offset_rest_ns or 0
        frames = []
        if trades.height:
            frames.append(
                trades.select(
                    stream=pl.col("symbol"), kind=pl.lit("trade"), e="exch_ts_ns", r="recv_ts_ns"
                )
            )
        if book.height:
            frames.append(
                book.filter(~pl.col("is_snapshot"))
                .unique(["symbol", "update_id"], keep="first", maintain_order=True)
                .select(
                    stream=pl.col("symbol"), kind=pl.lit("depth"), e="exch_ts_ns", r="recv_ts_ns"
                )
            )
        if not frames:
            return
        df = pl.concat(frames).drop_nulls()
        if df.height == 0:
            return
        # the largest exchange-minus-receive difference is the offset seen by the fastest message
        ev_off = int((df["e"] - df["r"]).max())  # type: ignore[arg-type]
        prev = self.status.clock_offset_events_ns
        self.status.clock_offset_events_ns = ev_off if prev is None else max(prev, ev_off)
        df = df.with_columns(lat=(pl.col("r") + offset - pl.col("e")) / 1e9)
        for (sym, kind), g in df.group_by("stream", "kind"):
            mid = self.market_keys.get(str(sym), str(sym))
            self.status.latency.observe_many(f"{mid}@{kind}", g["lat"].to_numpy())

    def _run_book_callbacks(self, book: pl.DataFrame) -> None:
        cur_key: tuple[str, int, bool] | None = None
        view: BookView | None = None
        cols = (
            "symbol",
            "update_id",
            "is_snapshot",
            "side",
            "price",
            "qty",
            "exch_ts_ns",
            "recv_ts_ns",
        )
        for sym, uid, snap, side, px, qty, ets, rts in book.select(cols).iter_rows():
            key = (sym, uid, snap)
            if key != cur_key:
                if view is not None:
                    self._emit_book(view)
                cur_key = key
                view = self._books.get(sym)
                if view is None:
                    view = self._books[sym] = BookView(sym)
                if snap:
                    view.bids.clear()
                    view.asks.clear()
                view.update_id, view.exch_ts_ns, view.recv_ts_ns = uid, ets, rts
            assert view is not None
            levels = view.bids if side == "bid" else view.asks
            if qty == 0.0:
                levels.pop(px, None)
            else:
                levels[px] = qty
        if view is not None:
            self._emit_book(view)

    def _emit_book(self, view: BookView) -> None:
        for fn in self.book_callbacks:
            fn(view)

    def _check_crossed(
        self, batch: Batch, before: dict[str, tuple[pl.DataFrame, int] | None]
    ) -> None:
        """A crossed book means a diff was lost or mangled: treat it like a sequence gap.

        Checked after every update, not only at the end of the batch: each symbol's book rows
        are replayed (the numba book of mdpipe.core.book) from its book before the batch. At
        the first update after which best bid >= best ask, that update's rows and the symbol's
        later rows of the batch are withheld (the lake's book is never crossed, as after a
        sequence gap no rows follow until the next snapshot), a `sequence_gap` row names the
        update and the prices, and the symbol resyncs.
        """
        book = batch.tables.get("book")
        if book is None or not book.height:
            return
        syms = book["symbol"].unique(maintain_order=True).to_list()
        for sym in syms:
            rows = book if len(syms) == 1 else book.filter(pl.col("symbol") == sym)
            state = before.get(sym)
            if self._cross_book is None:
                self._cross_book = L2Book()
            hit = self._cross_book.first_crossed(None if state is None else state[0], rows)
            if hit is None:
                continue
            row, uid, bid, ask = hit
            prev = int(rows["update_id"][row - 1]) if row else (state[1] if state else None)
            ts = rows["exch_ts_ns"][row]
            last = int(rows["update_id"][-1])
            mine = (pl.col("symbol") == sym).cum_sum()  # 1-based position among sym's rows
            book = book.filter((pl.col("symbol") != sym) | (mine <= row))
            detail = (
                f"crossed book after update {uid}: best bid {bid} >= best ask {ask}; book rows "
                f"of updates {uid}..{last} ({rows.height - row} rows) not written; resyncing"
            )
            gap = self.normalizer.force_resync(
                sym,
                int(ts) if ts is not None else time.time_ns(),
                detail,
                kind="sequence_gap",
                prev_update_id=prev,
            )
            batch.extend(gap)
        if book.height:
            batch.tables["book"] = book
        else:
            batch.tables.pop("book", None)


__all__ = ["Absorber", "BatchConsumer", "BookCallback", "BookView", "TradeCallback"]
