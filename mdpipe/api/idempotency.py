"""Idempotency-Key answers, kept in SQLite next to the ledger (`<lake>/state/api-idempotency.sqlite`).

The semantics of the IETF draft "The Idempotency-Key HTTP Header Field": a key names one
request of one client (here: of one token); repeating it with the same body returns the first
answer without doing anything again; repeating it with another body is an error (422); while
the first request is still being processed a repeat gets 409.

A request `begin`s (row `in_progress`, in its own transaction, so two concurrent requests with
one key cannot both proceed), stores its signal, then `finish`es with the answer, or `abort`s
(row deleted) when it was rejected or failed: nothing is remembered for a request that stored
nothing. A process that dies mid-request leaves an `in_progress` row; after `stale_s` a repeat
takes it over, and since the signal's id and file name follow from the key, redoing the write
replaces the same file rather than adding a second signal.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    token TEXT NOT NULL, key TEXT NOT NULL, body_sha TEXT NOT NULL,
    state TEXT NOT NULL, status INTEGER, response TEXT, created_ns INTEGER NOT NULL,
    PRIMARY KEY (token, key)
);
"""
DEFAULT_NAME = "state/api-idempotency.sqlite"


@dataclass(frozen=True)
class Begun:
    outcome: str  # 'new' | 'replay' | 'conflict' | 'in_progress'
    status: int | None = None
    response: str | None = None


class IdempotencyStore:
    def __init__(self, path: str | Path, *, ttl_s: float = 86_400.0, stale_s: float = 60.0):
        self.path = Path(path)
        self.ttl_ns = int(ttl_s * 1e9)
        self.stale_ns = int(stale_s * 1e9)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            yield c
        finally:
            c.close()

    def begin(self, token: str, key: str, body_sha: str) -> Begun:
        now = time.time_ns()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM idempotency WHERE created_ns < ?", (now - self.ttl_ns,))
                row = c.execute(
                    "SELECT body_sha, state, status, response, created_ns FROM idempotency "
                    "WHERE token=? AND key=?",
                    (token, key),
                ).fetchone()
                if row is None or (row[1] == "in_progress" and row[4] < now - self.stale_ns):
                    c.execute(
                        "INSERT OR REPLACE INTO idempotency (token, key, body_sha, state, "
                        "created_ns) VALUES (?,?,?,'in_progress',?)",
                        (token, key, body_sha, now),
                    )
                    out = Begun("new")
                elif row[0] != body_sha:
                    out = Begun("conflict")
                elif row[1] == "in_progress":
                    out = Begun("in_progress")
                else:
                    out = Begun("replay", int(row[2]), str(row[3]))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return out

    def finish(self, token: str, key: str, status: int, response: str) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE idempotency SET state='done', status=?, response=? WHERE token=? AND key=?",
                (status, response, token, key),
            )

    def abort(self, token: str, key: str) -> None:
        with self._conn() as c:
            c.execute(
                "DELETE FROM idempotency WHERE token=? AND key=? AND state='in_progress'",
                (token, key),
            )

    def count(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0])


__all__ = ["DEFAULT_NAME", "Begun", "IdempotencyStore"]
