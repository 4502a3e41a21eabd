"""The raw journal: one message per line as ``<receive time> <raw message>``, gzip or plain.

``mdpipe capture`` writes it (:class:`JournalWriter`); ``mdpipe import``, the local exchange
simulator and the tests read it, all through :class:`JournalReader`, so one set of rules decides
what a journal holds:

- **Compression** is told by the first two bytes (the gzip magic), not by the file name. A gzip
  journal is a concatenation of complete members (capture writes one per flush).
- **A damaged end** (the member being written when the writer was killed, a truncated download,
  corrupt bytes after the last good member) ends the file: every complete line before the
  damage is kept, the partial line is dropped, and the damage is reported once, naming the
  file and the first line lost. A plain file's last line needs no newline.
- **A line** is ``<receive time> <message>``: an integer time since the epoch in ns, µs or ms
  (told by its size: the bundled recordings are in ns, other recorders write µs or ms), one
  space, then the message text exactly as received. Blank lines are skipped. Line numbers count
  every physical line from 1.
- **A bad line** (no integer time, no space, a time <= 0, bytes that are not UTF-8) is never
  passed on and never silently skipped: it is reported as ``file:line: what was expected``
  with the line's start.

Whether a problem is fatal is the caller's choice: import reports every problem and keeps the
valid part; :func:`iter_journal_lines` raises on the first bad line and, because a killed
writer's torn last member is an expected outcome, logs a damaged end and stops there.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from zlib_ng import zlib_ng  # zlib-compatible, ~4x faster inflate (a ccxt dependency too)

from mdpipe.lake.paths import JOURNAL_SUFFIX, raw_dir

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
LINE_FORMAT = "'<local receive time in ns, µs or ms since the epoch> <raw message>'"
CHUNK_BYTES = 4 << 20  # decompressed text per slice: bounds memory for any file size
_HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class JournalProblem:
    """Something wrong in a journal file, with where it is and what was expected."""

    source: str
    line: int
    message: str
    content: str = ""
    damage: bool = False  # the file's end is damaged (everything from ``line`` on is lost)

    def __str__(self) -> str:
        snippet = f": {self.content[:120]!r}" if self.content else ""
        return f"{self.source}:{self.line}: {self.message}{snippet}"


class JournalError(ValueError):
    """A journal problem raised by a strict reader; ``problem`` says where."""

    def __init__(self, problem: JournalProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


# An epoch time's unit told by its size (10**14 ms is the year 5138; 10**17 us, 5138 too):
# the one rule for journal receive times and for venues' dump timestamps.
MS_BELOW = 10**14
US_BELOW = 10**17


def epoch_ns(t: int) -> int:
    """An epoch time in ms, us or ns (told by size) as ns."""
    return t * (1_000_000 if t < MS_BELOW else 1_000 if t < US_BELOW else 1)


def epoch_ns_expr(t: pl.Expr) -> pl.Expr:
    """:func:`epoch_ns` as a polars expression."""
    return pl.when(t < MS_BELOW).then(t * 1_000_000).when(t < US_BELOW).then(t * 1_000).otherwise(t)


class JournalReader:
    """Reads one journal file in slices of whole lines (memory bounded for any file size).

    :meth:`frames` yields DataFrames with ``recv_ts_ns`` (Int64, ns), ``text`` (the message) and
    ``line`` (1-based line number). Problems are collected in :attr:`problems` as the slices
    are read (within a slice: lines that are not UTF-8 first, then malformed ones). ``on_raw`` sees every byte read from disk (a digest, a progress bar).
    """

    def __init__(
        self, path: str | os.PathLike[str], on_raw: Callable[[bytes], None] | None = None
    ) -> None:
        self.path = Path(path)
        self.source = str(path)
        self.on_raw = on_raw
        self.problems: list[JournalProblem] = []
        self.lines = 0  # physical lines read, blank and bad ones included
        self.messages = 0  # lines passed on

    def frames(self) -> Iterator[pl.DataFrame]:
        damage: list[str] = []
        for text in self._text_slices(damage):
            df = _split_lines(text, self.lines)
            self.lines += df.height
            parsed = self._parse(df)
            self.messages += parsed.height
            yield parsed
        if damage:
            self.problems.append(
                JournalProblem(
                    self.source,
                    self.lines + 1,
                    f"{damage[0]} ({self.lines} lines read)",
                    damage=True,
                )
            )
        elif self.messages == 0 and not self.problems:
            what = "empty file" if self.lines == 0 else "no lines"
            self.problems.append(
                JournalProblem(self.source, 1, f"{what}: expected {LINE_FORMAT} lines")
            )

    def _text_slices(self, damage: list[str]) -> Iterator[str]:
        """Decompressed text in slices ending at line boundaries; a damaged gzip stream keeps
        every complete line before the damage and says what happened in ``damage``."""
        dec = None
        tail = b""
        offset = 0  # compressed bytes read
        with open(self.path, "rb") as f:
            # gzip is told by its magic bytes, before the first read: compressed reads are a
            # quarter of a slice (JSON inflates ~5-20x), plain ones a whole slice
            if f.read(2) == GZIP_MAGIC:
                dec = zlib_ng.decompressobj(wbits=31)
            f.seek(0)
            while True:
                raw = f.read(CHUNK_BYTES // 4 if dec is not None else CHUNK_BYTES)
                if not raw:
                    break
                offset += len(raw)
                if self.on_raw is not None:
                    self.on_raw(raw)
                if dec is not None:
                    pieces = []  # what decoded before any damage in this read is kept
                    try:
                        pieces.append(dec.decompress(raw))
                        while dec.eof and dec.unused_data:  # the next gzip member
                            rest = dec.unused_data
                            dec = zlib_ng.decompressobj(wbits=31)
                            pieces.append(dec.decompress(rest))
                    except zlib_ng.error as e:  # type: ignore[misc]
                        damage.append(
                            f"corrupt gzip data within the first {offset:,} bytes ({e}); "
                            "the rest of the file is lost"
                        )
                    data = b"".join(pieces)
                else:
                    data = raw
                buf = tail + data
                cut = buf.rfind(b"\n")
                if cut < 0:
                    tail = buf
                else:
                    out, tail = buf[: cut + 1], buf[cut + 1 :]
                    yield self._decode(out)
                if damage:
                    break
            if dec is not None and not damage and not dec.eof:
                damage.append(
                    "file ends inside a gzip member (crashed writer or truncated copy); "
                    "the partial last line and anything after it are lost"
                )
        if damage:
            tail = b""  # a partial last line before damage is never a complete message
        if tail.strip():
            yield self._decode(tail + b"\n")

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        # rare: find the offending lines, report them, and blank them (numbering is kept)
        lines = data.split(b"\n")
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                self.problems.append(
                    JournalProblem(
                        self.source,
                        self.lines + i + 1,
                        f"not UTF-8 text (byte {e.start}: {line[e.start : e.start + 1]!r})",
                        line[:120].decode("utf-8", errors="replace"),
                    )
                )
                out.append("")
        return "\n".join(out)

    def _parse(self, df: pl.DataFrame) -> pl.DataFrame:
        """``<receive time> <message>`` -> recv_ts_ns (ns; µs and ms told by size), text, line."""
        df = df.filter(pl.col("raw").str.strip_chars().str.len_bytes() > 0)
        parts = df["raw"].str.splitn(" ", 2)
        df = df.with_columns(
            ts=parts.struct.field("field_0").str.to_integer(strict=False),
            text=parts.struct.field("field_1"),
        )
        good = pl.col("ts").is_not_null() & (pl.col("ts") > 0) & pl.col("text").is_not_null()
        bad = df.filter(~good)
        if bad.height:
            for line, raw in bad.select("line", "raw").iter_rows():
                self.problems.append(
                    JournalProblem(self.source, int(line) + 1, f"expected {LINE_FORMAT}", raw)
                )
            df = df.filter(good)
        recv = epoch_ns_expr(pl.col("ts"))
        return df.select(recv_ts_ns=recv, text="text", line=pl.col("line") + 1)


def _split_lines(text: str, first_line: int) -> pl.DataFrame:
    s = pl.Series("raw", [text]).str.split("\n").explode()
    df = s.to_frame().with_row_index("line", offset=first_line)
    # The slice ends with a newline, so the last element is an empty string.
    return df.slice(0, df.height - 1) if df.height and text.endswith("\n") else df


def iter_journal_lines(
    path: str | os.PathLike[str], problems: list[JournalProblem] | None = None
) -> Iterator[tuple[int, str, int]]:
    """Yield ``(recv_ts_ns, message, line)`` for every good line of a journal, by the rules of
    the module docstring.

    With ``problems`` every problem is appended there and reading goes on. Without it a bad line
    raises :class:`JournalError` naming ``file:line``, and a damaged end (a killed writer's torn
    last member) is logged as a warning after the last complete line.
    """
    reader = JournalReader(path)
    seen = 0
    for frame in reader.frames():
        new = reader.problems[seen:]
        seen = len(reader.problems)
        if problems is not None:
            problems.extend(new)
        elif new:
            raise JournalError(new[0])
        yield from frame.iter_rows()
    # left: a damaged end, or "no lines" (an empty file, e.g. a writer killed right after
    # creating it), both expected after a crash
    for p in reader.problems[seen:]:
        if problems is not None:
            problems.append(p)
        elif p.damage:
            log.warning("%s", p)


def read_journal(path: str | os.PathLike[str]) -> list[tuple[int, str, int]]:
    """Every good line of a journal (see :func:`iter_journal_lines`, strict form)."""
    return list(iter_journal_lines(path))


# ---- writing ----------------------------------------------------------------------------------


@dataclass
class JournalFile:
    path: Path
    hour: str
    lines: int = 0
    bytes: int = 0


class JournalWriter:
    """Appends lines to ``<lake>/raw/venue=<v>/date=<D>/<HH>-<seq>.jsonl.gz``, one gzip member
    per flush, so after a SIGKILL every member but possibly the one being written is intact.

    ``seq`` is chosen at open so that an existing file is never reopened: a restarted capture
    (or a second hour in the same run) always gets a new name. Lines are filed by the UTC date
    and hour of their receive time.
    """

    def __init__(
        self, lake_root: str | Path, venue: str, *, fsync: bool = True, writer_id: str = ""
    ) -> None:
        self.root = Path(lake_root)
        self.venue = venue
        # several captures of one venue share its raw folder: <HH>-<seq>.<writer>.jsonl.gz
        self.suffix = f".{writer_id}" if writer_id else ""
        self.fsync = fsync
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
        d = raw_dir(self.root, self.venue, date)
        d.mkdir(parents=True, exist_ok=True)
        seq = 0
        for p in d.glob(f"{hour}-*{JOURNAL_SUFFIX}"):
            try:
                seq = max(seq, int(p.name.split("-", 1)[1].split(".", 1)[0]) + 1)
            except ValueError:
                continue
        while True:
            path = d / f"{hour}-{seq:04d}{self.suffix}{JOURNAL_SUFFIX}"
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

    @property
    def current_path(self) -> Path | None:
        """The file being appended to (None before the first line and after :meth:`close`)."""
        return self._current.path if self._current is not None else None

    def close(self) -> None:
        """No more appends to the current file (the next line opens a new one)."""
        self._current = None
        self._current_key = None

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
    return (ns // _HOUR_NS + 1) * _HOUR_NS
