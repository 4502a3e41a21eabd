"""The raw journal: one writer, one reader, one set of rules (mdpipe.lake.journal)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from mdpipe.ingest import import_paths
from mdpipe.lake import (
    JournalError,
    JournalProblem,
    JournalReader,
    JournalWriter,
    Lake,
    iter_journal_lines,
    read_journal,
)

BASE = 1_723_161_600_000_000_000  # 2024-08-09T00:00:00Z in ns
HOUR = 3_600 * 10**9
BUNDLED = Path(__file__).resolve().parents[2] / "data" / "binance-spot-2024-08-08"


def _messages(n: int, start: int = 0) -> list[str]:
    return [f'{{"i":{i},"text":"ünïcode {i}"}}' for i in range(start, start + n)]


def _write_flushes(root: Path, flushes: list[list[str]], t0: int = BASE) -> JournalWriter:
    w = JournalWriter(root, "binance", fsync=False)
    k = 0
    for texts in flushes:
        w.write_lines([t0 + (k + i) * 1000 for i in range(len(texts))], texts)
        k += len(texts)
    return w


def test_writer_and_reader_round_trip_members_and_hours(tmp_path: Path) -> None:
    first, second = _messages(50), _messages(70, 50)
    w = _write_flushes(tmp_path, [first, second])
    w.write_lines([BASE + HOUR + 1], ['{"i":"next hour"}'])  # rolls into a new file
    assert [p.relative_to(tmp_path).as_posix() for p in w.files_written] == [
        "raw/venue=binance/date=2024-08-09/00-0000.jsonl.gz",
        "raw/venue=binance/date=2024-08-09/01-0000.jsonl.gz",
    ]
    got = read_journal(w.files_written[0])
    assert [t for _, t, _ in got] == first + second  # two gzip members, one stream
    assert [ts for ts, _, _ in got] == [BASE + i * 1000 for i in range(120)]
    assert [n for _, _, n in got] == list(range(1, 121))
    # a restarted writer never reopens a file: it takes the next sequence number
    again = _write_flushes(tmp_path, [["{}"]])
    assert again.files_written[0].name == "00-0001.jsonl.gz"


def test_a_torn_last_member_keeps_every_complete_line_and_says_where_it_broke(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a writer killed in the middle of a flush leaves behind."""
    lines = _messages(3000)
    w = _write_flushes(tmp_path, [lines[:1000], lines[1000:2000], lines[2000:]])
    path = w.files_written[0]
    blob = path.read_bytes()
    last_member = len(gzip.compress("".join(f"{BASE} {t}\n" for t in lines[2000:]).encode(), 3))
    path.write_bytes(blob[: len(blob) - last_member // 2])  # cut the last member in half

    reader = JournalReader(path)
    texts = [t for f in reader.frames() for t in f["text"].to_list()]
    assert 2000 <= len(texts) < 3000
    assert texts == lines[: len(texts)]  # a clean prefix: nothing invented, no partial line
    assert reader.lines == len(texts)
    assert reader.problems == [
        JournalProblem(
            str(path),
            len(texts) + 1,
            "file ends inside a gzip member (crashed writer or truncated copy); the partial "
            f"last line and anything after it are lost ({len(texts)} lines read)",
            damage=True,
        )
    ]
    # the lenient iterator gives the same lines and logs the damage instead of raising
    with caplog.at_level(logging.WARNING, logger="mdpipe.lake.journal"):
        assert [t for _, t, _ in iter_journal_lines(path)] == texts
    assert f"{path}:{len(texts) + 1}: file ends inside a gzip member" in caplog.text
    # and `mdpipe import` reports exactly the same problem: one reader, one rule
    report = import_paths([path], Lake(tmp_path / "lake"), venue="binance", catalog=False)
    damage = [e for e in report.errors if "gzip" in e.message]
    assert [(e.source, e.line, e.message) for e in damage] == [
        (p.source, p.line, p.message) for p in reader.problems
    ]


def test_bytes_after_the_last_member_that_are_not_gzip_end_the_file_loudly(
    tmp_path: Path,
) -> None:
    w = _write_flushes(tmp_path, [_messages(10)])
    path = w.files_written[0]
    with open(path, "ab") as f:
        f.write(b"this is not gzip\n" * 3)
    problems: list[JournalProblem] = []
    assert len(list(iter_journal_lines(path, problems))) == 10
    assert len(problems) == 1 and problems[0].damage and problems[0].line == 11
    assert str(problems[0]).startswith(f"{path}:11: corrupt gzip data within the first ")


def test_bad_lines_are_named_by_file_and_line_and_never_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"  # plain text: told by content, not by the name
    path.write_bytes(
        b'1723161600000000000 {"a":1}\n'
        b"\n"  # blank: skipped, but counted
        b'garbage-without-a-time {"a":2}\n'
        b'-5 {"a":3}\n'
        b"1723161600000000001\n"  # no message
        b'1723161600000000002 {"caf\xe9":4}\n'  # latin-1, not UTF-8
        b'1723161600003 {"a":5}'  # ms; the last line of a plain file needs no newline
    )
    problems: list[JournalProblem] = []
    got = list(iter_journal_lines(path, problems))
    assert got == [
        (1723161600000000000, '{"a":1}', 1),
        (1723161600003000000, '{"a":5}', 7),
    ]
    msgs = [str(p) for p in problems]
    expected = "expected '<local receive time in ns, µs or ms since the epoch> <raw message>'"
    assert msgs == [
        f"{path}:6: not UTF-8 text (byte 25: b'\\xe9'): "
        + repr('1723161600000000002 {"caf\ufffd":4}'),
        f"{path}:3: {expected}: " + repr('garbage-without-a-time {"a":2}'),
        f"{path}:4: {expected}: " + repr('-5 {"a":3}'),
        f"{path}:5: {expected}: " + repr("1723161600000000001"),
    ]
    # strict: the first bad line raises, naming the file and the line
    with pytest.raises(JournalError, match=rf"^{path}:6: not UTF-8 text"):
        read_journal(path)
    path.write_bytes(b'1723161600000000000 {"a":1}\nnope\n')
    with pytest.raises(JournalError, match=rf"^{path}:2: expected '<local receive time"):
        read_journal(path)


def test_receive_times_in_us_and_ms_become_ns(tmp_path: Path) -> None:
    path = tmp_path / "units.jsonl"
    path.write_text("1723161600123 {}\n1723161600123456 {}\n1723161600123456789 {}\n")
    assert [ts for ts, _, _ in read_journal(path)] == [
        1723161600123000000,
        1723161600123456000,
        1723161600123456789,
    ]


def test_an_empty_journal_is_reported_and_yields_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "00-0000.jsonl.gz"  # a writer killed right after creating its file
    empty.write_bytes(b"")
    problems: list[JournalProblem] = []
    assert list(iter_journal_lines(empty, problems)) == []
    assert [str(p) for p in problems] == [
        f"{empty}:1: empty file: expected '<local receive time in ns, µs or ms since the "
        "epoch> <raw message>' lines"
    ]
    assert read_journal(empty) == []  # lenient: an expected outcome of a crash
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    reader = JournalReader(blank)
    assert [f.height for f in reader.frames()] == [0]
    assert [p.message.split(":")[0] for p in reader.problems] == ["no lines"]


def test_a_real_recording_reads_the_same_through_the_reader_and_plain_gzip() -> None:
    path = BUNDLED / "ethusdt_20240808.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        plain = [line.rstrip("\n").split(" ", 1) for line in f]
    got = read_journal(path)
    assert len(got) == len(plain) > 10_000
    assert [(str(ts), t) for ts, t, _ in got] == [(a, b) for a, b in plain]


def test_epoch_units_are_told_by_size_one_rule_for_scalars_and_frames() -> None:
    import polars as pl

    from mdpipe.lake import epoch_ns, epoch_ns_expr

    ns = 1_723_161_600_123_456_789  # 2024-08-09 00:00:00.123456789 UTC
    given = [ns // 1_000_000, ns // 1_000, ns]  # ms, us, ns
    want = [ns // 1_000_000 * 1_000_000, ns // 1_000 * 1_000, ns]
    assert [epoch_ns(t) for t in given] == want
    got = pl.DataFrame({"t": given}).select(epoch_ns_expr(pl.col("t")))["t"].to_list()
    assert got == want
