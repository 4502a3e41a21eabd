"""Finding new live signals: a cheap cursor over `<lake>/live/signals/.../*.parquet`.

Files there are immutable and appear atomically (mdpipe.lake publishes them with one rename),
so "new" means "a file not seen before". The cursor keeps a watermark (the newest modification
time seen) and the names of the files within `lookback_s` under it. The lookback exists because
a file's mtime is set while it is written, before its rename: a slow writer can make a file
appear *after* a newer one was already seen, and a bare watermark would skip it for ever.
Only date partitions whose directory changed past the watermark are listed, so a tick costs a
stat per partition and a listing of the few that changed, however long the lake's history is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mdpipe.alerts.message import AlertSignal
from mdpipe.lake import TMP_PREFIX

SIGNALS_TABLE = "live/signals"


@dataclass(frozen=True)
class SignalCursor:
    watermark_ns: int = 0
    recent: frozenset[str] = field(default_factory=frozenset)

    def dumps(self) -> str:
        return json.dumps({"wm": self.watermark_ns, "recent": sorted(self.recent)})

    @classmethod
    def loads(cls, text: str | None) -> SignalCursor | None:
        if not text:
            return None
        try:
            d = json.loads(text)
            return cls(int(d["wm"]), frozenset(str(x) for x in d.get("recent", [])))
        except (ValueError, KeyError, TypeError):
            return None


def _date_dirs(base: Path, floor_ns: int) -> Iterable[Path]:
    """Date partitions changed after `floor_ns`. A directory's mtime moves whenever a file is
    renamed into it, so one stat per partition skips the untouched ones; partitions are not
    pruned by their date because a replay publishes signals dated in the past."""
    if not base.is_dir():
        return
    for v in base.iterdir():
        if not (v.is_dir() and v.name.startswith("venue=")):
            continue
        for s in v.iterdir():
            if not (s.is_dir() and s.name.startswith("symbol=")):
                continue
            for d in s.iterdir():
                if not (d.is_dir() and d.name.startswith("date=")):
                    continue
                try:
                    if d.stat().st_mtime_ns > floor_ns:
                        yield d
                except FileNotFoundError:
                    continue


def scan_new_files(
    lake_root: str | os.PathLike[str],
    cursor: SignalCursor | None,
    *,
    lookback_s: float = 120.0,
    initial_lookback_s: float = 900.0,
    now_ns: int | None = None,
) -> tuple[list[str], SignalCursor]:
    """(new files relative to the lake root, oldest first; the advanced cursor).

    Without a cursor (the sensor's first tick) files older than `initial_lookback_s` are history,
    not alerts: turning the sensor on must not replay a week of signals into a chat.
    """
    root = Path(lake_root)
    now = now_ns or time.time_ns()
    lb = int(lookback_s * 1e9)
    if cursor is None:
        cursor = SignalCursor(watermark_ns=now - int(initial_lookback_s * 1e9))
    floor = cursor.watermark_ns - lb
    seen: list[tuple[int, str]] = []
    for d in _date_dirs(root / SIGNALS_TABLE, floor):
        for f in d.iterdir():
            if f.suffix != ".parquet" or f.name.startswith(TMP_PREFIX):
                continue
            try:
                m = f.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if m > floor:
                seen.append((m, f.relative_to(root).as_posix()))
    seen.sort()
    new = [rel for m, rel in seen if rel not in cursor.recent]
    wm = max([cursor.watermark_ns, *(m for m, _ in seen)])
    recent = frozenset(rel for m, rel in seen if m > wm - lb)
    return new, SignalCursor(wm, recent)


def read_signals(
    lake_root: str | os.PathLike[str], files: Iterable[str], *, min_meta_prob: float = 0.0
) -> list[AlertSignal]:
    """Signals of the given files, oldest first, each signal_id once; with `min_meta_prob` > 0
    only those whose `meta_prob` reaches it (a signal without one never does)."""
    root = Path(lake_root)
    frames = []
    for rel in files:
        p = (root / rel).resolve()
        if root.resolve() not in p.parents:
            raise ValueError(f"signal file {rel!r} is outside the lake {root}")
        if p.exists():
            frames.append(pl.read_parquet(p))
    if not frames:
        return []
    df = pl.concat(frames, how="diagonal_relaxed").unique("signal_id", keep="first")
    df = df.sort("ts_ns", "signal_id")
    if min_meta_prob > 0:
        if "meta_prob" not in df.columns:
            return []
        df = df.filter(pl.col("meta_prob").fill_null(-1.0) >= min_meta_prob)
    return [AlertSignal.from_row(r) for r in df.iter_rows(named=True)]


__all__ = ["SIGNALS_TABLE", "SignalCursor", "read_signals", "scan_new_files"]
