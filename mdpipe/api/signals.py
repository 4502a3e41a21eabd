"""Signals through the lake: reading pages newest first, and storing a posted signal.

Reading. Live and posted signals are in `live/signals`, batch ones in `derived/signals`, both
partitioned by the UTC day of `ts_ns`. A page newest first therefore needs only the newest date
partitions: dates are visited newest first (from the directory tree, no file opened), their
files read and filtered, and the walk stops once a date completes the page, since every row of
an older date is older. A lake of a million signals answers its newest 1,000 from one or two
days of files (bench/api_bench.py).

Partitions, not files. A day of `live/signals` is a few hourly roll-ups plus the current hour's
small files (one per signal batch until the roll-up). The API keeps each partition's rows as one
frame (`FileCache.partition`), valid while the partition folder's modification time is the one
it was built at: publishing a file or a roll-up changes it. A change that only adds files (the
usual case: a new batch) appends their rows to the frame; one that removes files (a roll-up)
rebuilds it from the decoded-file cache. A frame is trusted only when the folder's time was
older than `MTIME_SETTLE_NS` when it was listed, so a file added within the filesystem's time
granularity of a listing can never hide behind an unchanged time. A file listed and then
deleted by a roll-up before it is read makes the query list the partition again.

Order and cursor. Rows are ordered by (`ts_ns`, `signal_id`, `source`) descending; the cursor
is that key of a page's last row, so paging is stable while new signals arrive (they sort
before the cursor and never shift later pages).

Writing. A posted signal is one row of the live `signals` contract (`source = 'api'`,
`settings_id` null: no detector settings produced it) plus `price` and `details`, published
atomically through `Lake.publish` as `api-<signal_id>.parquet`: the name is fixed by the id,
so writing the same signal twice (an Idempotency-Key retried after a crash) replaces the file
with the same bytes rather than adding a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mdpipe.lake import (
    SIGNAL_SOURCES,
    Lake,
    Partition,
    date_of_ns,
    parse_market_key,
    with_signal_source,
)

LIVE_TABLE = "live/signals"
BATCH_TABLE = "derived/signals"
# which table holds which sources
TABLE_SOURCES = {LIVE_TABLE: ("live", "api"), BATCH_TABLE: ("batch",)}
API_FILE_PREFIX = "api-"
# a folder time at least this old when it was listed cannot be shared by a later change
# (filesystem times are coarse: a jiffy on ext4)
MTIME_SETTLE_NS = 1_000_000_000
LIST_ATTEMPTS = 5  # listings of one partition a query tries while roll-ups delete files


class QueryError(ValueError):
    """A query parameter that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SignalQuery:
    venue: str | None = None
    symbol: str | None = None
    signal_type: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    source: str | None = None
    limit: int = 100
    # (ts_ns, signal_id, source) of the previous page's last row
    after: tuple[int, str, str] | None = None


def parse_market(text: str) -> tuple[str | None, str]:
    """`binance:BTC/USDT`, `binance:BTC-USDT` or a bare `BTC/USDT` -> (venue or None, symbol)."""
    if ":" in text and "/" not in text.split(":", 1)[0]:
        try:
            venue, symbol = parse_market_key(text)
        except ValueError:
            venue, _, symbol = text.partition(":")
        if not venue or not symbol:
            raise QueryError(
                "market", f"expected venue:SYMBOL such as binance:BTC/USDT, got {text!r}"
            )
        return venue, symbol
    if "/" not in text:
        raise QueryError(
            "market", f"expected venue:SYMBOL or SYMBOL such as BTC/USDT, got {text!r}"
        )
    return None, text


def encode_cursor(key: tuple[int, str, str]) -> str:
    raw = json.dumps([key[0], key[1], key[2]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts, sid, src = json.loads(raw)
        return int(ts), str(sid), str(src)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise QueryError("cursor", "not a cursor this API handed out (use next_cursor)") from None


def _tables_for(source: str | None) -> list[str]:
    if source is None:
        return [LIVE_TABLE, BATCH_TABLE]
    if source not in SIGNAL_SOURCES:
        raise QueryError("source", f"expected one of {', '.join(SIGNAL_SOURCES)}, got {source!r}")
    return [t for t, srcs in TABLE_SOURCES.items() if source in srcs]


def _date_floor(ns: int | None) -> str | None:
    return None if ns is None else date_of_ns(ns)


class FileCache:
    """Decoded signal files, keyed by (path, mtime, size), least recently used out first.

    A lake file never changes once published (a replaced partition or a re-written posted
    signal is a new file with a new mtime), so a decoded copy is right for as long as its key
    is; the API's pages mostly hit the newest few files, read again on every request otherwise.
    """

    def __init__(self, max_rows: int = 2_000_000, max_partitions: int = 256) -> None:
        self.max_rows = max_rows
        self.max_partitions = max_partitions
        self._frames: OrderedDict[tuple[str, int, int], pl.DataFrame] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        # partition folder -> (its mtime when listed, trusted, its files, their rows as one frame)
        self._parts: OrderedDict[
            str, tuple[int, bool, frozenset[tuple[str, int, int]], pl.DataFrame]
        ] = OrderedDict()
        self.partition_hits = 0
        self.partition_builds = 0

    def partition(self, lake: Lake, table: str, part: Partition) -> pl.DataFrame:
        """Every row of a partition as one frame (see "Partitions, not files" above)."""
        d = lake.partition_dir(table, part.venue, part.symbol, part.date)
        for _ in range(LIST_ATTEMPTS):
            try:
                return self._partition(lake, table, part, d)
            except FileNotFoundError:
                continue  # a roll-up removed a listed file: list again
        return self._partition(lake, table, part, d)

    def _partition(self, lake: Lake, table: str, part: Partition, d: Path) -> pl.DataFrame:
        key = str(d)
        try:
            mtime = os.stat(d).st_mtime_ns
        except FileNotFoundError:
            return pl.DataFrame()
        with self._lock:
            hit = self._parts.get(key)
            if hit is not None:
                self._parts.move_to_end(key)
                if hit[0] == mtime and hit[1]:
                    self.partition_hits += 1
                    return hit[3]
        listed_ns = time.time_ns()
        files = lake.files(table, part.venue, part.symbol, part.date)
        # a file's identity is its (path, mtime, size): a file re-published under its name
        # (replace_partition, a retried post) is another file
        ids = {f: _file_id(f) for f in files}
        names = frozenset(ids.values())
        if hit is not None and hit[2] <= names:
            # only additions (a new batch): append their rows
            added = [f for f in files if ids[f] not in hit[2]]
            frame = _stack([hit[3], *(self.read(table, f) for f in added)])
        else:
            frame = _stack([self.read(table, f) for f in files])
        self.partition_builds += 1
        # trusted: served without listing while the folder time stays the same
        trusted = listed_ns - mtime >= MTIME_SETTLE_NS
        with self._lock:
            self._parts[key] = (mtime, trusted, names, frame)
            self._parts.move_to_end(key)
            while len(self._parts) > self.max_partitions:
                self._parts.popitem(last=False)
        return frame

    def read(self, table: str, path: Path) -> pl.DataFrame:
        key = _file_id(path)
        with self._lock:
            hit = self._frames.get(key)
            if hit is not None:
                self._frames.move_to_end(key)
                return hit
        df = with_signal_source(table, pl.scan_parquet(path, hive_partitioning=False)).collect()
        with self._lock:
            if key not in self._frames:
                self._frames[key] = df
                self._rows += df.height
            while self._rows > self.max_rows and len(self._frames) > 1:
                _, old = self._frames.popitem(last=False)
                self._rows -= old.height
        return df


def _file_id(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size)


def _stack(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames of one table as one: those of one schema stacked without copying, then united by
    column name (signal files gained columns over time)."""
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame()
    groups: dict[tuple[tuple[str, Any], ...], list[pl.DataFrame]] = {}
    for f in frames:
        groups.setdefault(tuple(f.schema.items()), []).append(f)
    stacked = [pl.concat(g, how="vertical", rechunk=False) for g in groups.values()]
    return stacked[0] if len(stacked) == 1 else pl.concat(stacked, how="diagonal_relaxed")


def query_signals(
    lake: Lake, q: SignalQuery, cache: FileCache | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """(rows newest first, the next page's cursor or None)."""
    page, nxt = query_page(lake, q, cache)
    return to_json_rows(page), nxt


def query_page(
    lake: Lake, q: SignalQuery, cache: FileCache | None = None
) -> tuple[pl.DataFrame, str | None]:
    """(the page as a frame, newest first; the next page's cursor or None)."""
    tables = _tables_for(q.source)
    hi_ns = q.until_ns
    if q.after is not None:
        hi_ns = q.after[0] if hi_ns is None else min(hi_ns, q.after[0])
    lo_date, hi_date = _date_floor(q.since_ns), _date_floor(hi_ns)
    # partitions from the directory tree alone; files are listed only for the dates visited
    by_date: dict[str, list[tuple[str, Partition]]] = {}
    for table in tables:
        for part in lake.partition_dirs(table, q.venue, q.symbol):
            if (lo_date and part.date < lo_date) or (hi_date and part.date > hi_date):
                continue
            by_date.setdefault(part.date, []).append((table, part))
    frames: list[pl.DataFrame] = []
    have = 0
    for date in sorted(by_date, reverse=True):
        if cache is not None and not lake.remote:
            day = _cut([cache.partition(lake, table, part) for table, part in by_date[date]], q)
        else:
            files = [
                (table, f)
                for table, part in by_date[date]
                for f in lake.files(table, part.venue, part.symbol, part.date)
            ]
            day = _read_day(files, q, cache) if files else None
        if day is not None and day.height:
            frames.append(day)
            have += day.height
        if have > q.limit:
            break
    if not frames:
        return pl.DataFrame(), None
    rows = pl.concat(frames, how="diagonal_relaxed")
    rows = rows.sort(["ts_ns", "signal_id", "source"], descending=True)
    rows = rows.unique(["signal_id", "source"], keep="first", maintain_order=True)
    page = rows.head(q.limit)
    nxt = None
    if rows.height > q.limit:
        last = page.row(page.height - 1, named=True)
        nxt = encode_cursor((int(last["ts_ns"]), str(last["signal_id"]), str(last["source"])))
    return page, nxt


def _conditions(q: SignalQuery) -> list[pl.Expr]:
    conds = []
    if q.signal_type is not None:
        conds.append(pl.col("signal_type") == q.signal_type)
    if q.source is not None:
        conds.append(pl.col("source") == q.source)
    if q.since_ns is not None:
        conds.append(pl.col("ts_ns") >= q.since_ns)
    if q.until_ns is not None:
        conds.append(pl.col("ts_ns") < q.until_ns)
    if q.after is not None:
        ts, sid, src = q.after
        conds.append(
            (pl.col("ts_ns") < ts)
            | ((pl.col("ts_ns") == ts) & (pl.col("signal_id") < sid))
            | ((pl.col("ts_ns") == ts) & (pl.col("signal_id") == sid) & (pl.col("source") < src))
        )
    return conds


KEYS = ["ts_ns", "signal_id", "source"]


def _cut(frames: list[pl.DataFrame], q: SignalQuery) -> pl.DataFrame | None:
    """The newest `limit + 1` rows of partition frames that match the query."""
    conds = _conditions(q)
    cut = []
    for df in frames:
        if not df.height:
            continue
        if conds:
            df = df.filter(pl.all_horizontal(conds))
        cut.append(df.top_k(q.limit + 1, by=KEYS))
    if not cut:
        return None
    return pl.concat(cut, how="diagonal_relaxed").top_k(q.limit + 1, by=KEYS)


def _read_day(
    files: list[tuple[str, Path]], q: SignalQuery, cache: FileCache | None
) -> pl.DataFrame:
    conds = _conditions(q)
    keys = KEYS
    cond = pl.all_horizontal(conds) if conds else None
    if cache is not None:
        # frames of one schema are stacked first (many one-signal files stack in one step),
        # then filtered and cut once per schema
        groups: dict[tuple[tuple[str, Any], ...], list[pl.DataFrame]] = {}
        for table, f in files:
            df = cache.read(table, f)
            groups.setdefault(tuple(df.schema.items()), []).append(df)
        cut = []
        for frames_of_schema in groups.values():
            df = pl.concat(frames_of_schema, how="vertical", rechunk=False)
            if cond is not None:
                df = df.filter(cond)
            cut.append(df.top_k(q.limit + 1, by=keys))
        return pl.concat(cut, how="diagonal_relaxed").top_k(q.limit + 1, by=keys)
    frames = []
    for table, f in files:
        lf = with_signal_source(table, pl.scan_parquet(f, hive_partitioning=False))
        if conds:
            lf = lf.filter(pl.all_horizontal(conds))
        # only the newest rows of a file can make the page: cut each file before uniting them
        frames.append(lf.top_k(q.limit + 1, by=keys))
    return pl.concat(pl.collect_all(frames), how="diagonal_relaxed").top_k(q.limit + 1, by=keys)


def find_signal(lake: Lake, signal_id: str) -> dict[str, Any] | None:
    """The row of `signal_id` (live before api before batch when several sources share it)."""
    for table in (LIVE_TABLE, BATCH_TABLE):
        lf = lake.scan(table)
        if "signal_id" not in lf.collect_schema().names():
            continue
        got = lf.filter(pl.col("signal_id") == signal_id).head(1).collect()
        if got.height:
            return jsonable(got.row(0, named=True))
    return None


def newest_live(lake: Lake, cache: FileCache | None = None) -> dict[str, Any] | None:
    """The newest signal the online engine wrote (what `/health` reports the age of)."""
    rows, _ = query_signals(lake, SignalQuery(source="live", limit=1), cache)
    return rows[0] if rows else None


def page_json(page: pl.DataFrame, next_cursor: str | None) -> bytes:
    """The `SignalPage` body, serialised by polars (a page of 1,000 rows in a few ms) unless a
    row carries `details`, which are objects in the answer and JSON text in the lake."""
    tail = json.dumps(next_cursor).encode()
    if page.width == 0:
        return b'{"signals": [], "next_cursor": ' + tail + b"}"
    if "details" in page.columns and page["details"].null_count() < page.height:
        body = json.dumps(to_json_rows(page)).encode()
    else:
        floats = [c for c, t in page.schema.items() if t.is_float()]
        if floats:
            page = page.with_columns(pl.col(floats).fill_nan(None))
        body = page.write_json().encode()
    return b'{"signals": ' + body + b', "next_cursor": ' + tail + b"}"


def to_json_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN (which JSON lacks) as null, `details` parsed."""
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    if floats:
        frame = frame.with_columns(pl.col(floats).fill_nan(None))
    rows = frame.to_dicts()
    if "details" in frame.columns:
        for r in rows:
            if isinstance(r.get("details"), str):
                with contextlib.suppress(ValueError):
                    r["details"] = json.loads(r["details"])
    return rows


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, float) and v != v:  # NaN: JSON has no such number
            v = None
        out[k] = v
    if isinstance(out.get("details"), str):
        with contextlib.suppress(ValueError):
            out["details"] = json.loads(out["details"])
    return out


# ---- writing ---------------------------------------------------------------------------------
def api_signal_id(token_fingerprint: str, idempotency_key: str | None) -> str:
    """The id of a posted signal: fixed by (token, Idempotency-Key) when the client sent a key,
    so a retried post names the same signal; random otherwise. 20 hex digits, like the
    detectors' ids."""
    if idempotency_key is None:
        return uuid.uuid4().hex[:20]
    key = f"api|{token_fingerprint}|{idempotency_key}".encode()
    return hashlib.blake2b(key, digest_size=10).hexdigest()


def posted_row(
    *,
    signal_id: str,
    venue: str,
    symbol: str,
    ts_ns: int,
    signal_type: str,
    direction: int,
    score: float,
    price: float | None,
    details: dict[str, Any] | None,
    recv_ts_ns: int,
) -> pl.DataFrame:
    """One `live/signals` row for a posted signal (the live columns, then `price`, `details`)."""
    from mdpipe.capture.live_signals import conform_live_signals

    base = pl.DataFrame(
        {
            "venue": [venue],
            "symbol": [symbol],
            "ts_ns": [ts_ns],
            "signal_id": [signal_id],
            "signal_type": [signal_type],
            "direction": [direction],
            "score": [score],
            "source": ["api"],
            "recv_ts_ns": [recv_ts_ns],
            "emitted_ns": [time.time_ns()],
        }
    )
    row = conform_live_signals(base)
    return row.with_columns(
        price=pl.lit(price, dtype=pl.Float64),
        details=pl.lit(
            None if details is None else json.dumps(details, sort_keys=True), dtype=pl.String
        ),
    )


def store_posted(lake: Lake, row: pl.DataFrame) -> Path:
    """Publish a posted signal's row atomically under its id's file name."""
    r = row.row(0, named=True)
    date = date_of_ns(int(r["ts_ns"]))
    name = f"{API_FILE_PREFIX}{r['signal_id']}.parquet"
    return lake.publish(LIVE_TABLE, str(r["venue"]), str(r["symbol"]), date, row, name=name)


def iter_rows(frame: pl.DataFrame) -> Iterable[dict[str, Any]]:
    for r in frame.iter_rows(named=True):
        yield jsonable(r)


__all__ = [
    "BATCH_TABLE",
    "LIVE_TABLE",
    "FileCache",
    "QueryError",
    "SignalQuery",
    "api_signal_id",
    "decode_cursor",
    "encode_cursor",
    "find_signal",
    "jsonable",
    "newest_live",
    "page_json",
    "parse_market",
    "posted_row",
    "query_page",
    "query_signals",
    "store_posted",
]
