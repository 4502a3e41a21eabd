"""One atomic writer for every lake file, reports included, and the clean-up of what a crashed
writer leaves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from mdpipe.lake import TMP_PREFIX, Lake, atomic_target, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_write_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.html"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.png"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_target(target) as tmp:
        tmp.write_bytes(b"half of the new")
        assert tmp.name.startswith(TMP_PREFIX) and not tmp.name.endswith(".parquet")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.png"]


def test_a_report_writer_killed_before_its_rename_leaves_a_tmp_that_the_lake_removes(
    tmp_path: Path,
) -> None:
    """The evaluation report is written next to the partition's metrics; a process killed
    between writing and renaming (os.replace -> hard exit) leaves a temporary file, which
    `Lake.remove_stale_tmp` must find like any other lake temporary file."""
    lake = Lake(tmp_path / "lake")
    out = lake.partition_dir("derived/evaluation", "binance", "BTC/USDT", "2024-08-08")
    metrics = pl.DataFrame({"partition": ["2024-08-08|binance:BTC-USDT"]})
    lake.replace_partition("derived/evaluation", "binance", "BTC/USDT", "2024-08-08", metrics)
    script = textwrap.dedent(f"""
        import os
        from tests.core.test_report import small_evaluation
        from mdpipe.pipeline.reports import write_report

        ev, path = small_evaluation()
        os.replace = lambda *a, **k: os._exit(17)  # killed between the fsync and the rename
        write_report(ev, path, {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert proc.returncode == 17, proc.stderr.decode()
    left = sorted(p.name for p in out.iterdir())
    tmps = [n for n in left if n.startswith(TMP_PREFIX)]
    assert len(tmps) == 1 and tmps[0].endswith(".png.partial"), left
    assert "report.html" not in left
    assert [p.name for p in lake.files("derived/evaluation")] == ["part-0.parquet"]
    assert lake.remove_stale_tmp() == 1
    assert sorted(p.name for p in out.iterdir()) == ["part-0.parquet"]
