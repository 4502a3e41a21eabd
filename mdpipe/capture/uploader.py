"""The spool: a capture whose lake is on an object store writes to a local lake (the spool) and
this part uploads its finished files, so an unreachable store delays data and never loses it.

- The capture publishes into the spool exactly as into a local lake (journal first, then
  atomic Parquet), so a crash loses no more than it would locally.
- A pass uploads every finished spool file under the same path in the object-store lake (one
  PUT each: an object appears whole) and then deletes it from the spool. Finished means a
  published Parquet file, or a journal file the writer has moved past (the file being appended
  stays until its hour ends or the capture stops).
- Files go up in publish order (the ns in their names) and a pass stops at the first failure,
  so the bucket always holds a prefix of each writer's sequence. That is what makes the
  compaction job safe while uploads lag: a roll-up ``<prefix>-<first>-to-<last>`` never covers
  a file that arrives later, because a later file has a larger ns.
- While uploads fail the pass records an open ``store_unreachable`` episode (listed by /health,
  which reports unhealthy) and counts ``mdpipe_capture_upload_errors_total``; the first pass
  that succeeds closes it. The spool's size and the age of its oldest file are gauges
  (``mdpipe_capture_spool_bytes``, ``mdpipe_capture_spool_files``,
  ``mdpipe_capture_spool_age_seconds``).
- Files left in the spool by a stopped capture are uploaded by the next start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mdpipe.capture.status import Status
from mdpipe.lake import JournalWriter, Lake, parse_rollup_name, parse_sequence_name
from mdpipe.lake.objstore import upload

log = logging.getLogger("mdpipe.capture")


@dataclass
class SpoolState:
    files: int = 0
    bytes: int = 0
    oldest_age_s: float = 0.0


class Uploader:
    """Moves finished files from the local spool lake into the object-store lake."""

    def __init__(self, spool: Lake, target: Lake, journal: JournalWriter, status: Status) -> None:
        if spool.remote or not target.remote:
            raise ValueError("the spool is a local lake and the target an object-store lake")
        self.spool = spool
        self.target = target
        self.journal = journal
        self.status = status
        self.state = SpoolState()
        self.failing = False

    def waiting(self) -> list[Path]:
        """Finished spool files in upload order (publish ns; journal files by name)."""
        # lake data only (the spool root also holds local state, e.g. the alert ledger)
        listed = self.spool.data_files()
        # read after listing: a journal file opened since is either not listed or current now
        current = self.journal.current_path
        return sorted((p for p in listed if p != current), key=_upload_order)

    def measure(self) -> SpoolState:
        """Spool size and the age of its oldest file (lake data waiting, the journal file being
        appended too)."""
        files = self.spool.data_files()
        now = time.time()
        st = SpoolState()
        for p in files:
            try:
                s = p.stat()
            except FileNotFoundError:  # uploaded meanwhile
                continue
            st.files += 1
            st.bytes += s.st_size
            st.oldest_age_s = max(st.oldest_age_s, now - s.st_mtime)
        self.state = st
        return st

    def upload_pass(self) -> int:
        """Upload what is finished, oldest first; stop at the first failure (retried by the
        next pass). Returns how many files went up. Runs in a worker thread."""
        done = 0
        try:
            for f in self.waiting():
                rel = f.relative_to(self.spool.root).as_posix()
                try:
                    upload(f, self.target.root / rel)
                except FileNotFoundError:
                    if f.exists():
                        raise
                    continue  # not ours to worry about: gone before we read it
                f.unlink()
                done += 1
                self.status.objects_uploaded.inc(rel.split("/", 1)[0])
        except Exception as exc:  # network, credentials, store down: keep the files, alert
            self.status.upload_errors.inc()
            if not self.failing:
                log.error("object store unreachable (%s); data stays in the spool %s",
                          exc, self.spool.root)  # fmt: skip
                self.status.episode(
                    "store_unreachable", "*", f"{self.target.url}: {exc!r}"[:300], resolved=False
                )
            self.failing = True
        else:
            if self.failing:
                log.warning("object store reachable again; spool drained")
                self.status.resolve_open("*", "store_unreachable")
            self.failing = False
        finally:
            self.measure()
            self.status.events.notify()
        return done


def _upload_order(p: Path) -> tuple[int, str]:
    seq = parse_sequence_name(p.name)
    if seq is not None:
        return seq[1], p.as_posix()
    r = parse_rollup_name(p.name)
    if r is not None:
        return r[2], p.as_posix()
    return 0, p.as_posix()  # journal and other files: before the sequence, by path


__all__ = ["SpoolState", "Uploader"]
