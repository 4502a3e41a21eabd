"""``mdpipe import --jobs N``: files of different markets decoded in worker processes.

The lake and the import report must equal the serial import (``jobs=1``) exactly, on every
bundled recording (spot, COIN-M, USD-M; the ``..._20240808`` then ``..._20240809`` pairs chain
their depth ids, so each market's files stay in one worker, in order). Bad input in one file
gives the serial import's precise error and leaves the lake as it was.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from mdpipe.cli import main as cli_main
from mdpipe.ingest import ImportError_, ImportReport, import_paths
from mdpipe.lake import Lake
from tests.conftest import BTC_FILES, ETH_FILES

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "data" / "binance-spot-2024-08-08").glob("*.gz")) + sorted(
    (ROOT / "data" / "binance-multi-2024").glob("*.gz")
)


def _lake_files(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every Parquet file of the lake (relative path -> frame); no hidden temporary file left."""
    root = Path(lake.root)
    assert not [p for p in root.rglob("*") if p.is_file() and p.name.startswith(".tmp")]
    return {str(p.relative_to(root)): pl.read_parquet(p) for p in sorted(root.rglob("*.parquet"))}


def _assert_same(a: tuple[Lake, ImportReport], b: tuple[Lake, ImportReport]) -> None:
    (la, ra), (lb, rb) = a, b
    fa, fb = _lake_files(la), _lake_files(lb)
    assert list(fa) == list(fb)
    for name, frame in fa.items():
        assert frame.equals(fb[name]), name
    assert ra.written == rb.written
    assert ra.counts == rb.counts
    assert ra.sync == rb.sync
    assert ra.clock == rb.clock
    assert [str(e) for e in ra.errors] == [str(e) for e in rb.errors]
    assert (ra.lines, ra.bytes_read, ra.files) == (rb.lines, rb.bytes_read, rb.files)
    if ra.gaps is None:
        assert rb.gaps is None
    else:
        assert rb.gaps is not None and ra.gaps.equals(rb.gaps)


@pytest.fixture(scope="module")
def serial_and_parallel(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[tuple[Lake, ImportReport], tuple[Lake, ImportReport]]:
    out = []
    for jobs in (1, 2):
        lake = Lake(tmp_path_factory.mktemp(f"jobs{jobs}") / "lake")
        out.append((lake, import_paths(BUNDLED, lake, jobs=jobs, catalog=False)))
    return out[0], out[1]


def test_parallel_import_equals_serial_on_every_bundled_recording(
    serial_and_parallel: tuple[tuple[Lake, ImportReport], tuple[Lake, ImportReport]],
) -> None:
    serial, parallel = serial_and_parallel
    _assert_same(serial, parallel)
    report = parallel[1]
    assert report.ok
    # every market of both folders is there, books synced across the day boundary
    assert {(v, s) for v, syms in report.sync.items() for s in syms} >= {
        ("binance", "BTC/USDT"),
        ("binance", "ETH/USDT"),
        ("binancecoinm", "BTC/USD:BTC"),
        ("binancecoinm", "ETH/USD:ETH"),
        ("binanceusdm", "BTC/USDT:USDT"),
        ("binanceusdm", "ETH/USDT:USDT"),
    }
    assert {p.table for p in report.written} >= {"trades", "book", "bbo"}


def test_a_second_parallel_import_rewrites_identical_files(
    serial_and_parallel: tuple[tuple[Lake, ImportReport], tuple[Lake, ImportReport]],
) -> None:
    lake, first = serial_and_parallel[1]
    before = _lake_files(lake)
    again = import_paths(BUNDLED, lake, jobs=2, catalog=False)
    assert again.written == first.written  # the same names, so nothing is duplicated
    after = _lake_files(lake)
    assert list(before) == list(after)
    assert all(before[k].equals(after[k]) for k in before)


def _zip_with_two_csvs(path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.csv", "1,2\n")
        z.writestr("b.csv", "3,4\n")
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_file_that_cannot_be_read_aborts_with_its_error_and_the_lake_unchanged(
    tmp_path: Path, jobs: int
) -> None:
    lake = Lake(tmp_path / "lake")
    import_paths([ETH_FILES[0]], lake, jobs=1, catalog=False)
    before = _lake_files(lake)
    bad = _zip_with_two_csvs(tmp_path / "BTCUSDT-trades-2024-08-08.zip")
    with pytest.raises(ImportError_) as err:
        import_paths([*BTC_FILES, *ETH_FILES, bad], lake, jobs=jobs, catalog=False)
    assert str(err.value) == (f"{bad}: expected one .csv inside the zip, found ['a.csv', 'b.csv']")
    after = _lake_files(lake)
    assert list(before) == list(after)
    assert all(before[k].equals(after[k]) for k in before)
    # the command line says the same and exits 2
    assert (
        cli_main(
            [
                "import",
                str(bad),
                *map(str, ETH_FILES),
                "--jobs",
                "2",
                "--lake",
                str(tmp_path / "lake2"),
            ]
        )
        == 2
    )
    assert not list((tmp_path / "lake2").rglob("*.parquet"))


def test_bad_lines_in_one_file_are_reported_as_serially(tmp_path: Path) -> None:
    with gzip.open(ETH_FILES[1], "rt") as f:
        lines = f.read().splitlines()
    lines.insert(50, "1723161254087085768 {not json at all")
    lines.insert(150, "garbage-without-a-timestamp")
    bad = tmp_path / "ethusdt_20240809.gz"
    bad.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    files = [*BTC_FILES, ETH_FILES[0], bad]
    runs = []
    for jobs in (1, 2):
        lake = Lake(tmp_path / f"lake{jobs}")
        runs.append((lake, import_paths(files, lake, jobs=jobs, catalog=False)))
    _assert_same(runs[0], runs[1])
    msgs = [str(e) for e in runs[1][1].errors]
    assert len(msgs) == 2 and all(m.startswith(f"{bad}:") for m in msgs), msgs
    assert any(f"{bad}:51: malformed JSON" in m for m in msgs)


def test_a_journal_of_several_markets_is_decoded_with_them(tmp_path: Path) -> None:
    """A capture-style journal multiplexing BTC and ETH (its first stream BTC) beside a later ETH
    file: the parallel grouping sees ETH in both groups, merges them and decodes them again as
    one ordered stream, so the result still equals the serial import."""
    mixed = tmp_path / "mixed_20240808.gz"
    with gzip.open(BTC_FILES[0], "rb") as a, gzip.open(ETH_FILES[0], "rb") as b:
        mixed.write_bytes(gzip.compress(a.read() + b.read()))
    files = [mixed, BTC_FILES[1], ETH_FILES[1]]
    runs = []
    for jobs in (1, 2):
        lake = Lake(tmp_path / f"lake{jobs}")
        runs.append((lake, import_paths(files, lake, jobs=jobs, catalog=False)))
    _assert_same(runs[0], runs[1])
    report = runs[1][1]
    assert {"BTC/USDT", "ETH/USDT"} <= set(report.sync["binance"])
    eth_dates = {p.date for p in report.written if p.symbol == "ETH/USDT" and p.table == "trades"}
    assert eth_dates == {"2024-08-08", "2024-08-09"}


def test_parallel_import_into_s3_equals_the_serial_local_one(
    s3_lake_url: str, tmp_path: Path
) -> None:
    """Workers write to the object-store lake the parent process was pointed at (the AWS
    variables are handed to them: the worker server may predate them), publishing once."""
    from tests.lake.test_objstore import lake_frames

    files = [*BTC_FILES, *ETH_FILES]
    local = Lake(tmp_path / "lake")
    serial = import_paths(files, local, jobs=1, catalog=False)
    s3 = Lake(s3_lake_url)
    parallel = import_paths(files, s3, jobs=2, catalog=False)
    assert parallel.written == serial.written and parallel.sync == serial.sync
    a, b = lake_frames(local), lake_frames(s3)
    assert list(a) == list(b)
    assert all(a[k].equals(b[k]) for k in a)
