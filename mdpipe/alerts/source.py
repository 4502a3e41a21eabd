"""Finding new live signals: a cheap cursor over `<lake>/live/signals/.../*.parquet`.

Files there are immutable and appear atomically (mdpipe.lake publishes them with one rename),
so "new" means "a file not seen before". The cursor keeps a watermark (the newest modification
time seen) and the names of the files within `lookback_s` under it. The lookback exists because
a file's mtime is set while it is written, before its rename: a slow writer can make a file
appear *after* a newer one was already seen, and a bare watermark would skip it for ever.
Only date partitions whose directory changed past the watermark are listed, so a tick costs a
stat per partition and a listing of the few that changed, however long the lake's history is.

Roll-ups. Capture and the compaction job merge an hour of `sig-...` files into one roll-up
(`Lake.compact`) and delete them. A roll-up is a new file to the cursor, so a signal whose small
file was rolled up before any tick saw it is still found (never missed). The roll-up also holds
signals already seen: the ledger registers each (signal, channel) once
(`Ledger.register` ignores known pairs), so they are not alerted twice. Rows of a roll-up
emitted before the cursor's origin (its first tick's floor, less the lookback) were history
when the cursor started and stay history (`read_signals(..., history_before_ns=)`). A file
listed by one tick and rolled up before it is read is skipped: its roll-up is the next tick's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import polars as pl

from mdpipe.alerts.message import AlertSignal
from mdpipe.lake import TMP_PREFIX, Lake, is_remote
from mdpipe.lake.objstore import find_with_mtimes
from mdpipe.lake.paths import parse_rollup_name

SIGNALS_TABLE = "live/signals"


@dataclass(frozen=True)
class SignalCursor:
    watermark_ns: int = 0
    recent: frozenset[str] = field(default_factory=frozenset)
    # the floor of the first tick: what was older then is history (see "Roll-ups" above)
    origin_ns: int = 0

    def dumps(self) -> str:
        return json.dumps(
            {"wm": self.watermark_ns, "recent": sorted(self.recent), "origin": self.origin_ns}
        )

    @classmethod
    def loads(cls, text: str | None) -> SignalCursor | None:
        if not text:
            return None
        try:
            d = json.loads(text)
            wm = int(d["wm"])
            # a cursor from before roll-ups of signals: its watermark is where it stands
            origin = int(d.get("origin", wm))
            return cls(wm, frozenset(str(x) for x in d.get("recent", [])), origin)
        except (ValueError, KeyError, TypeError):
            return None

    def history_before_ns(self, lookback_s: float) -> int:
        """Rows of a roll-up emitted before this are history, not alerts."""
        return self.origin_ns - int(lookback_s * 1e9)


def is_rollup(rel: str) -> bool:
    """Whether a lake-relative signal file is a roll-up of several published files."""
    return parse_rollup_name(rel.rsplit("/", 1)[-1]) is not None


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
    remote = is_remote(lake_root)
    # an object-store root is a UPath, which has pathlib's API (see mdpipe.lake.objstore)
    root = cast(Path, lake_root) if remote else Path(lake_root)
    now = now_ns or time.time_ns()
    lb = int(lookback_s * 1e9)
    if cursor is None:
        start = now - int(initial_lookback_s * 1e9)
        cursor = SignalCursor(watermark_ns=start, origin_ns=start)
    floor = cursor.watermark_ns - lb
    seen: list[tuple[int, str]] = []
    if remote:
        # an object-store lake: one listing with every object's time (no folder times there)
        for f, m in find_with_mtimes(root / SIGNALS_TABLE, ".parquet"):
            if m > floor and not f.name.startswith(TMP_PREFIX):
                seen.append((m, f.relative_to(root).as_posix()))
    for d in [] if remote else _date_dirs(root / SIGNALS_TABLE, floor):
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
    return new, SignalCursor(wm, recent, cursor.origin_ns)


def read_signals(
    lake_root: str | os.PathLike[str],
    files: Iterable[str],
    *,
    history_before_ns: int = 0,
    min_meta_prob: float = 0.0,
) -> list[AlertSignal]:
    """Signals of the given files, oldest first, each signal_id once. A file gone since it was
    listed (rolled up) is skipped; rows of a roll-up emitted before `history_before_ns` are
    left out (see "Roll-ups" above). With `min_meta_prob` > 0 only those whose `meta_prob`
    reaches it (a signal without one never does)."""
    remote = is_remote(lake_root)
    lake = Lake(str(lake_root)) if remote else None  # s3://bucket/prefix
    root = cast(Path, lake.root) if lake is not None else Path(lake_root)
    frames = []
    for rel in files:
        if remote:
            if ".." in rel.split("/") or rel.startswith("/"):
                raise ValueError(f"signal file {rel!r} is outside the lake {root}")
            p = root / rel
        else:
            p = (root / rel).resolve()
            if root.resolve() not in p.parents:
                raise ValueError(f"signal file {rel!r} is outside the lake {root}")
        try:
            df = lake.read_file(p) if lake is not None else pl.read_parquet(p)
        except FileNotFoundError:
            continue  # rolled up since it was listed: the roll-up is a new file
        if history_before_ns and is_rollup(rel) and "emitted_ns" in df.columns:
            df = df.filter(
                pl.col("emitted_ns").is_null() | (pl.col("emitted_ns") >= history_before_ns)
            )
        frames.append(df)
    return _signals(frames, min_meta_prob)


def _signals(frames: list[pl.DataFrame], min_meta_prob: float = 0.0) -> list[AlertSignal]:
    if not frames:
        return []
    df = pl.concat(frames, how="diagonal_relaxed").unique("signal_id", keep="first")
    df = df.sort("ts_ns", "signal_id")
    if min_meta_prob > 0:
        if "meta_prob" not in df.columns:
            return []
        df = df.filter(pl.col("meta_prob").fill_null(-1.0) >= min_meta_prob)
    return [AlertSignal.from_row(r) for r in df.iter_rows(named=True)]


__all__ = ["SIGNALS_TABLE", "SignalCursor", "is_rollup", "read_signals", "scan_new_files"]
