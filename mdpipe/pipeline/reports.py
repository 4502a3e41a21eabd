"""Publishing evaluation reports: the core renders them (`mdpipe.core.report`), this writes
each file atomically through the lake's writer, so a reader never sees half a report and
`Lake.remove_stale_tmp` cleans up after a crashed writer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import polars as pl

from mdpipe.core.labels import PricePath
from mdpipe.core.metrics import Evaluation
from mdpipe.core.report import render_report, render_summary_report
from mdpipe.lake import atomic_write_bytes, is_remote


def _dir(out_dir: str | os.PathLike[str]) -> Path:
    """An object-store lake path stays what it is (a UPath, pathlib's API); anything else is
    a local Path."""
    return cast(Path, out_dir) if is_remote(out_dir) else Path(out_dir)


def publish(files: Mapping[str, bytes], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every file under `out_dir` atomically, in the given order; returns the paths."""
    out = _dir(out_dir)
    paths = []
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
        paths.append(out / name)
    return paths


def write_report(
    evaluation: Evaluation,
    path: PricePath,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "mdpipe evaluation",
    gaps: pl.DataFrame | None = None,
    clock_offsets: pl.DataFrame | None = None,
    file_name: str = "report.html",
) -> Path:
    """`render_report` written to `<out_dir>` (the PNGs first, the HTML last); returns the
    HTML path."""
    files = render_report(
        evaluation, path, title=title, gaps=gaps, clock_offsets=clock_offsets,
        file_name=file_name,
    )  # fmt: skip
    publish(files, out_dir)
    return _dir(out_dir) / file_name


def write_summary_report(
    metrics: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "mdpipe evaluation summary",
    report_links: Mapping[str, str] | None = None,
    file_name: str = "summary.html",
) -> Path:
    """`render_summary_report` written to `<out_dir>`; returns the HTML path."""
    files = render_summary_report(
        metrics, title=title, report_links=report_links, file_name=file_name
    )
    publish(files, out_dir)
    return _dir(out_dir) / file_name
