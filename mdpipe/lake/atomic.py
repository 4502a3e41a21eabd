"""Atomic publishing: the one way any file appears in the lake (Parquet, journal excepted).

A file is written under a hidden temporary name in its final directory, fsynced, renamed over
its final name with one ``os.replace``, and the directory is fsynced. A reader (DuckDB, polars, a
browser opening a report, another process) therefore sees the old file or the new one, never a
half-written one, and a crashed writer leaves at most a ``.tmp-*`` file, which no ``*.parquet``
glob matches and :meth:`mdpipe.lake.Lake.remove_stale_tmp` deletes.

On an object store (:mod:`mdpipe.lake.objstore`) there is no rename: the temporary file is local
(in the system's temporary folder) and the publish is its upload under the final key, one PUT,
so the object appears whole or not at all and no ``.tmp-*`` object ever exists.

The raw journal is the exception: it is appended to (one gzip member per flush) so that a crash
loses at most the member being written; see :mod:`mdpipe.lake.journal`.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mdpipe.lake.objstore import is_remote, upload

TMP_PREFIX = ".tmp-"  # every temporary file in the lake starts with this, and only those


def tmp_path_for(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (never ``*.parquet``, never reused); for
    an object-store ``path``, a local file in the system's temporary folder."""
    name = f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}.partial"
    if is_remote(path):
        return Path(tempfile.gettempdir()) / name
    return path.with_name(name)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it to ``final`` (same directory) and fsync the directory; for an
    object-store ``final``, upload ``tmp`` as ``final`` and remove it."""
    if is_remote(final):
        try:
            upload(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path for the caller to write ``path``'s content to; when the block ends
    normally the file is published as ``path`` (:func:`commit`), when it raises the temporary
    file is removed and ``path`` is left as it was."""
    if not is_remote(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Make ``data`` the content of ``path`` atomically (see the module docstring)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


__all__ = [
    "TMP_PREFIX",
    "atomic_target",
    "atomic_write_bytes",
    "commit",
    "fsync_dir",
    "tmp_path_for",
]
