"""The delivery ledger: which (signal, channel) pairs were sent, claimed, failed or are in doubt.

Where: a SQLite file, by default `<lake>/state/alerts-ledger.sqlite` (override with
`MDPIPE_ALERT_LEDGER`). It sits next to the data it describes, so it survives wiping the Dagster
instance, and SQLite's locking makes it safe for concurrent runs and the sensor at once (WAL
mode, `BEGIN IMMEDIATE` for every read-modify-write). The lake's catalog ignores `state/`.

Delivery states, per (signal_id, channel):

    pending --claim--> sending --ok--> delivered
       ^                  |----transient / 429 / rejected----> failed --(next tick)--> sending
       |                  '----sent, no answer---------------> uncertain (never re-sent)
       '-- registered once (INSERT OR IGNORE), whatever the sensor or the run retries

A row is claimed (`sending`) in its own transaction right before its HTTP request, so two runs
never send the same pair, and a crash leaves at most one message's rows in `sending`; those are
turned into `uncertain` after a lease, never silently re-sent or dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdpipe.alerts.message import AlertSignal

LEDGER_ENV = "MDPIPE_ALERT_LEDGER"
DEFAULT_NAME = "state/alerts-ledger.sqlite"
STATUSES = ("pending", "sending", "delivered", "failed", "uncertain")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    signal_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    venue TEXT, symbol TEXT, signal_type TEXT,
    ts_ns INTEGER, recv_ts_ns INTEGER,
    signal_json TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT, claimed_ns INTEGER,
    delivered_ns INTEGER, message_ref TEXT, digest_id TEXT,
    last_error TEXT,
    PRIMARY KEY (signal_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (channel, status, next_attempt_ns);
CREATE TABLE IF NOT EXISTS attempts (
    ts_ns INTEGER NOT NULL, channel TEXT NOT NULL, signals INTEGER NOT NULL,
    outcome TEXT NOT NULL, http_status INTEGER, error TEXT, run_id TEXT
);
CREATE TABLE IF NOT EXISTS channel_state (
    key TEXT PRIMARY KEY, next_allowed_ns INTEGER NOT NULL
);
"""


def default_ledger_path(lake_root: str | os.PathLike[str]) -> Path:
    env = os.environ.get(LEDGER_ENV)
    if env:
        return Path(env)
    if not isinstance(lake_root, str | Path):
        # an object-store lake (mdpipe.lake.objstore): SQLite needs a local file
        raise ValueError(
            f"the alert ledger is a local SQLite file and the lake is on an object store "
            f"({lake_root}): set ${LEDGER_ENV} (or alerts.ledger_path) to a local path"
        )
    return Path(lake_root) / DEFAULT_NAME


@dataclass(frozen=True)
class Due:
    signal_id: str
    attempts: int
    signal: AlertSignal


class Ledger:
    """Thread- and process-safe: every call opens its own short connection."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            yield c
        finally:
            c.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    # ---- registration ------------------------------------------------------------------------
    def register(
        self, signals: Iterable[AlertSignal], channels: Sequence[str], now_ns: int | None = None
    ) -> int:
        """Record signals as owed to channels; pairs already known are left untouched."""
        now = now_ns or time.time_ns()
        rows = [
            (
                s.signal_id,
                ch,
                s.venue,
                s.symbol,
                s.signal_type,
                s.ts_ns,
                s.recv_ts_ns,
                s.to_json(),
                now,
            )
            for s in signals
            for ch in channels
        ]
        if not rows:
            return 0
        with self._tx() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO deliveries (signal_id, channel, venue, symbol, signal_type,"
                " ts_ns, recv_ts_ns, signal_json, created_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return c.total_changes - before

    # ---- claiming ----------------------------------------------------------------------------
    def recover_stale(self, channel: str, lease_s: float, now_ns: int | None = None) -> int:
        """Rows left in `sending` by a run that died: the request may have gone out."""
        now = now_ns or time.time_ns()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE deliveries SET status='uncertain', last_error=? WHERE channel=? AND "
                "status='sending' AND claimed_ns < ?",
                (
                    "claimed by a run that did not finish sending; not re-sent (may be delivered)",
                    channel,
                    now - int(lease_s * 1e9),
                ),
            )
            return cur.rowcount

    def due(self, channel: str, now_ns: int | None = None, limit: int = 1000) -> list[Due]:
        now = now_ns or time.time_ns()
        with self._conn() as c:
            rows = c.execute(
                "SELECT signal_id, attempts, signal_json FROM deliveries WHERE channel=? AND "
                "status IN ('pending','failed') AND next_attempt_ns <= ? "
                "ORDER BY ts_ns, signal_id LIMIT ?",
                (channel, now, limit),
            ).fetchall()
        return [Due(r[0], r[1], AlertSignal.from_json(r[2])) for r in rows]

    def claim(
        self, channel: str, signal_ids: Sequence[str], run_id: str, now_ns: int | None = None
    ) -> list[str]:
        """Atomically move still-due rows to `sending`; returns the ids this caller now owns."""
        now = now_ns or time.time_ns()
        got: list[str] = []
        with self._tx() as c:
            for sid in signal_ids:
                cur = c.execute(
                    "UPDATE deliveries SET status='sending', claimed_by=?, claimed_ns=? WHERE "
                    "signal_id=? AND channel=? AND status IN ('pending','failed')",
                    (run_id, now, sid, channel),
                )
                if cur.rowcount == 1:
                    got.append(sid)
        return got

    def mark_delivered(
        self,
        channel: str,
        signal_ids: Sequence[str],
        *,
        message_ref: str | None,
        digest_id: str | None = None,
        now_ns: int | None = None,
    ) -> None:
        now = now_ns or time.time_ns()
        with self._tx() as c:
            c.executemany(
                "UPDATE deliveries SET status='delivered', delivered_ns=?, message_ref=?, "
                "digest_id=?, attempts=attempts+1, last_error=NULL "
                "WHERE signal_id=? AND channel=?",
                [(now, message_ref, digest_id, sid, channel) for sid in signal_ids],
            )

    def mark_failed(
        self,
        channel: str,
        signal_ids: Sequence[str],
        *,
        error: str,
        next_attempt_ns: int,
    ) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE deliveries SET status='failed', attempts=attempts+1, last_error=?, "
                "next_attempt_ns=? WHERE signal_id=? AND channel=?",
                [(error, next_attempt_ns, sid, channel) for sid in signal_ids],
            )

    def mark_uncertain(self, channel: str, signal_ids: Sequence[str], *, error: str) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE deliveries SET status='uncertain', attempts=attempts+1, last_error=? "
                "WHERE signal_id=? AND channel=?",
                [(error, sid, channel) for sid in signal_ids],
            )

    def record_attempt(
        self,
        channel: str,
        signals: int,
        outcome: str,
        http_status: int | None,
        error: str | None,
        run_id: str | None,
        now_ns: int | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO attempts VALUES (?,?,?,?,?,?,?)",
                (now_ns or time.time_ns(), channel, signals, outcome, http_status, error, run_id),
            )

    # ---- rate limiting shared across runs ---------------------------------------------------
    def reserve_slot(self, key: str, min_interval_s: float, now_ns: int | None = None) -> int:
        """The earliest time (ns) this caller may send to `key`; books the slot after it."""
        now = now_ns or time.time_ns()
        with self._tx() as c:
            row = c.execute(
                "SELECT next_allowed_ns FROM channel_state WHERE key=?", (key,)
            ).fetchone()
            slot = max(now, row[0] if row else 0)
            c.execute(
                "INSERT INTO channel_state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "next_allowed_ns=excluded.next_allowed_ns",
                (key, slot + int(min_interval_s * 1e9)),
            )
            return slot

    def push_back(self, key: str, until_ns: int) -> None:
        """Nobody sends to `key` before `until_ns` (a 429's Retry-After, an empty bucket)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO channel_state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "next_allowed_ns=MAX(next_allowed_ns, excluded.next_allowed_ns)",
                (key, until_ns),
            )

    # ---- reading -----------------------------------------------------------------------------
    def status_counts(self) -> dict[tuple[str, str], int]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT channel, status, COUNT(*) FROM deliveries GROUP BY channel, status"
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def attempt_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(channel, outcome) -> (requests, signals in them)."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT channel, outcome, COUNT(*), SUM(signals) FROM attempts "
                "GROUP BY channel, outcome"
            ).fetchall()
        return {(r[0], r[1]): (int(r[2]), int(r[3] or 0)) for r in rows}

    def delivery_latencies(self) -> dict[str, list[float]]:
        """Seconds from the triggering event's receive time (else its exchange time) to the
        confirmed delivery, per channel."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT channel, (delivered_ns - COALESCE(recv_ts_ns, ts_ns)) / 1e9 "
                "FROM deliveries WHERE status='delivered'"
            ).fetchall()
        out: dict[str, list[float]] = {}
        for ch, lat in rows:
            out.setdefault(ch, []).append(float(lat))
        return out

    def latency_histogram(self, edges: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
        """Per channel: cumulative counts at each edge, total count, sum of seconds; computed in
        SQLite so a scrape costs the same however long the ledger's history is."""
        lat = "(delivered_ns - COALESCE(recv_ts_ns, ts_ns)) / 1e9"
        cols = ", ".join(f"SUM({lat} <= ?)" for _ in edges)
        with self._conn() as c:
            rows = c.execute(
                f"SELECT channel, COUNT(*), SUM({lat}), {cols} FROM deliveries "
                "WHERE status='delivered' GROUP BY channel",
                tuple(float(e) for e in edges),
            ).fetchall()
        return {r[0]: ([int(x or 0) for x in r[3:]], int(r[1]), float(r[2] or 0.0)) for r in rows}

    def rows(self, channel: str | None = None) -> list[dict[str, object]]:
        with self._conn() as c:
            c.row_factory = sqlite3.Row
            q = "SELECT * FROM deliveries"
            args: tuple[str, ...] = ()
            if channel:
                q += " WHERE channel=?"
                args = (channel,)
            return [dict(r) for r in c.execute(q + " ORDER BY ts_ns, signal_id", args)]

    def due_token(self, channels: Sequence[str], now_ns: int | None = None) -> str | None:
        """A fingerprint of what is due now, or None: the retry run's run_key. It changes only
        when a retry has happened (attempts grow), so a re-evaluated tick asks for no new run."""
        if not channels:
            return None
        now = now_ns or time.time_ns()
        marks = ",".join("?" * len(channels))
        with self._conn() as c:
            rows = c.execute(
                f"SELECT signal_id, channel, attempts FROM deliveries WHERE channel IN ({marks}) "
                "AND status IN ('pending','failed') AND next_attempt_ns <= ? "
                "ORDER BY channel, signal_id",
                (*channels, now),
            ).fetchall()
        if not rows:
            return None
        h = hashlib.sha1()
        for r in rows:
            h.update(f"{r[0]}|{r[1]}|{r[2]};".encode())
        return h.hexdigest()[:20]


__all__ = ["LEDGER_ENV", "STATUSES", "Due", "Ledger", "default_ledger_path"]
