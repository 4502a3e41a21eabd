"""Raw journal: `<recv ns> <raw JSON>` lines, gzip or plain, the format `mdpipe import` reads.

Reading is shared by the exchange simulator (it replays journals) and the tests; writing is the
capture daemon's lossless record. A journal file is a concatenation of complete gzip members, one
per flush, so after a SIGKILL every member but possibly the one being written is intact and the
reader below stops cleanly at a torn tail instead of raising.
"""

from __future__ import annotations

import gzip
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"


def _iter_gzip_members(blob: bytes) -> Iterator[bytes]:
    """Decompress member after member; a torn last member (killed writer) ends the file."""
    pos = 0
    while pos < len(blob):
        if blob[pos : pos + 2] != GZIP_MAGIC:
            return
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(blob[pos:])
        except zlib.error:
            return
        if not d.eof:
            # truncated member: the part decoded so far may end mid-line, keep whole lines only
            cut = out.rfind(b"\n")
            if cut >= 0:
                yield out[: cut + 1]
            return
        yield out
        pos = len(blob) - len(d.unused_data)


def read_journal_bytes(path: str | Path) -> bytes:
    """The decompressed content of a journal file (plain or multi-member gzip, torn tail ignored)."""
    blob = Path(path).read_bytes()
    if blob[:2] == GZIP_MAGIC:
        return b"".join(_iter_gzip_members(blob))
    return blob


def iter_journal_lines(path: str | Path) -> Iterator[tuple[int, str, int]]:
    """Yield (recv_ts_ns, raw_json_text, line_no) for every well-formed line of a journal.

    Lines without a leading integer timestamp raise ValueError naming the file and line, as bad
    input must never be skipped silently.
    """
    data = read_journal_bytes(path).decode("utf-8")
    for line_no, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        sp = line.find(" ")
        try:
            ts = int(line[:sp])
        except ValueError as exc:
            raise ValueError(
                f"{path}:{line_no}: expected '<recv ns> <json>', got {line[:80]!r}"
            ) from exc
        yield ts, line[sp + 1 :], line_no


@dataclass
class JournalFile:
    path: Path
    hour: str
    lines: int = 0
    bytes: int = 0


class JournalWriter:
    """Appends lines to `<lake>/raw/venue=<v>/date=<D>/<HH>-<seq>.jsonl.gz`, one gzip member per flush.

    `seq` is chosen at open so that an existing file is never reopened: a restarted capture
    (or a second hour in the same run) always gets a new name.
    """

    def __init__(self, lake_root: str | Path, venue: str, *, fsync: bool = True) -> None:
        self.root = Path(lake_root) / "raw" / f"venue={venue}"
        self.fsync = fsync
        self._pending: list[bytes] = []
        self._pending_date_hour: tuple[str, str] | None = None
        self._current: JournalFile | None = None
        self._current_key: tuple[str, str] | None = None
        self.files_written: list[Path] = []
        self.lines_written = 0

    @staticmethod
    def date_hour(recv_ns: int) -> tuple[str, str]:
        t = time.gmtime(recv_ns // 1_000_000_000)
        return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_hour:02d}"

    def _open(self, key: tuple[str, str]) -> JournalFile:
        date, hour = key
        d = self.root / f"date={date}"
        d.mkdir(parents=True, exist_ok=True)
        seq = 0
        for p in d.glob(f"{hour}-*.jsonl.gz"):
            try:
                seq = max(seq, int(p.name.split("-", 1)[1].split(".", 1)[0]) + 1)
            except ValueError:
                continue
        while True:
            path = d / f"{hour}-{seq:04d}.jsonl.gz"
            try:
                # O_EXCL: two writers racing for one name must not share a file
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                seq += 1
                continue
            os.close(fd)
            break
        self.files_written.append(path)
        return JournalFile(path=path, hour=hour)

    def write_lines(self, recv_ns: list[int], texts: list[str]) -> None:
        """Append (recv_ns, raw text) pairs; rolled by the hour of each line's receive time."""
        if not texts:
            return
        # group consecutive lines by (date, hour): lines arrive in receive order
        start = 0
        key = self.date_hour(recv_ns[0])
        boundary_ns = _next_hour_ns(recv_ns[0])
        for i in range(len(texts)):
            if recv_ns[i] >= boundary_ns:
                self._write_member(key, recv_ns[start:i], texts[start:i])
                start = i
                key = self.date_hour(recv_ns[i])
                boundary_ns = _next_hour_ns(recv_ns[i])
        self._write_member(key, recv_ns[start:], texts[start:])

    def _write_member(self, key: tuple[str, str], recv_ns: list[int], texts: list[str]) -> None:
        if not texts:
            return
        if self._current is None or self._current_key != key:
            self._current = self._open(key)
            self._current_key = key
        payload = "".join([f"{t} {s}\n" for t, s in zip(recv_ns, texts, strict=True)]).encode()
        member = gzip.compress(payload, compresslevel=3, mtime=0)
        with open(self._current.path, "ab") as f:
            f.write(member)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._current.lines += len(texts)
        self._current.bytes += len(member)
        self.lines_written += len(texts)


def _next_hour_ns(ns: int) -> int:
    h = 3_600_000_000_000
    return (ns // h + 1) * h
