"""Where things live in the lake: its location, partition folders, market keys, file names.

Layout (DESIGN.md, a contract)::

    <lake>/raw/venue=<venue>/date=<YYYY-MM-DD>/<hour>-<seq>.jsonl.gz
    <lake>/<table>/venue=<venue>/symbol=<BASE-QUOTE>/date=<YYYY-MM-DD>/*.parquet
    <lake>/derived/<asset>/venue=.../symbol=.../date=.../*.parquet
    <lake>/live/signals/venue=.../symbol=.../date=.../*.parquet
    <lake>/mdpipe.duckdb

Roll-ups. A writer that publishes often (capture, every few seconds) names its files
``<prefix>-<19-digit ns>.parquet`` with names increasing in publish order, and later merges a run
of them into one *roll-up* ``<prefix>-<first ns>-to-<last ns>.parquet``
(:meth:`mdpipe.lake.Lake.compact`), which sorts exactly where the first merged file did. A
roll-up *covers* every file of its directory with the same prefix and an ns in
``[first, last]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

LAKE_ENV = "MDPIPE_LAKE"
DEFAULT_LAKE = "lake"
CATALOG_NAME = "mdpipe.duckdb"
RAW_DIR = "raw"

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.=-]+$")
# a URL scheme as RFC 3986 spells it, followed by "://": s3://, gs://, abfs://, file://, http://
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# see "Roll-ups" above: a sequence-named file, and a roll-up of a run of them
_SEQ_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_.=-]+?)-(?P<ns>[0-9]{19})\.parquet$")
_ROLLUP_NAME = re.compile(
    r"^(?P<prefix>[A-Za-z0-9_.=-]+?)-(?P<first>[0-9]{19})-to-(?P<last>[0-9]{19})\.parquet$"
)


class LakeLocationError(ValueError):
    """A ``--lake`` / ``$MDPIPE_LAKE`` value this version cannot use."""


def local_root(location: str | os.PathLike[str]) -> Path:
    """The absolute local folder of a lake location; a URL (``s3://bucket/prefix``, ``gs://``,
    any ``scheme://``) raises :class:`LakeLocationError` instead of becoming a folder named
    ``s3:`` under the working directory."""
    text = os.fspath(location)
    if not text:
        raise LakeLocationError("the lake location is empty: give a local folder")
    m = _URL.match(text)
    if m is not None:
        scheme = m["scheme"].lower()
        if scheme == "file":
            raise LakeLocationError(
                f"lake locations are local folders, not URLs: {text} "
                f"(give the folder itself, e.g. {text[len('file://') :] or '/'})"
            )
        raise LakeLocationError(
            f"object-store lakes are not supported yet: {text} "
            f"(--lake / ${LAKE_ENV} must be a local folder)"
        )
    return Path(text).absolute()


def symbol_to_path(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC-USDT``; ``BTC/USDT:USDT`` -> ``BTC-USDT-USDT``."""
    return symbol.replace("/", "-").replace(":", "-")


def path_to_symbol(part: str, venue: str) -> str:
    """Inverse of :func:`symbol_to_path` for spot and perpetual symbols."""
    bits = part.split("-")
    if len(bits) == 2:
        return f"{bits[0]}/{bits[1]}"
    if len(bits) == 3:
        return f"{bits[0]}/{bits[1]}:{bits[2]}"
    raise ValueError(f"cannot read a symbol from path part {part!r} (venue {venue})")


def market_key(venue: str, symbol: str) -> str:
    """The Dagster partition key of a market: ``binance:BTC-USDT``."""
    return f"{venue}:{symbol_to_path(symbol)}"


def parse_market_key(key: str) -> tuple[str, str]:
    venue, _, part = key.partition(":")
    if not venue or not part:
        raise ValueError(f"market key {key!r} is not of the form 'venue:BASE-QUOTE'")
    return venue, path_to_symbol(part, venue)


def partition_dir(root: Path, table: str, venue: str, symbol: str, date: str) -> Path:
    return root / table / f"venue={venue}" / f"symbol={symbol_to_path(symbol)}" / f"date={date}"


def raw_dir(root: Path, venue: str, date: str) -> Path:
    """The folder of a venue's raw journal files of one UTC day (by receive time)."""
    return root / RAW_DIR / f"venue={venue}" / f"date={date}"


def parse_sequence_name(name: str) -> tuple[str, int] | None:
    """``cap-20240808T14-1723126512345678901.parquet`` -> ``("cap-20240808T14", 1723...)``;
    None for other names, roll-ups included."""
    m = _SEQ_NAME.match(name)
    if m is None or _ROLLUP_NAME.match(name):
        return None
    return m["prefix"], int(m["ns"])


def parse_rollup_name(name: str) -> tuple[str, int, int] | None:
    """``<prefix>-<first>-to-<last>.parquet`` -> ``(prefix, first, last)``."""
    m = _ROLLUP_NAME.match(name)
    return (m["prefix"], int(m["first"]), int(m["last"])) if m else None


def rollup_name(prefix: str, first_ns: int, last_ns: int) -> str:
    return f"{prefix}-{first_ns:019d}-to-{last_ns:019d}.parquet"


def covered_files(paths: Iterable[Path]) -> set[Path]:
    """The files among ``paths`` that a roll-up among ``paths`` (same directory) covers."""
    paths = list(paths)
    ranges: dict[tuple[Path, str], list[tuple[int, int]]] = {}
    for p in paths:
        if "-to-" in p.name:
            r = parse_rollup_name(p.name)
            if r is not None:
                ranges.setdefault((p.parent, r[0]), []).append((r[1], r[2]))
    if not ranges:
        return set()
    out: set[Path] = set()
    for p in paths:
        seq = parse_sequence_name(p.name)
        if seq is None:
            continue
        for first, last in ranges.get((p.parent, seq[0]), ()):
            if first <= seq[1] <= last:
                out.add(p)
                break
    return out


MODELS_DIR = "models"


def model_dir(root: Path, model_id: str) -> Path:
    """`<lake>/models/<model_id>/`: a trained model's artefact and its metadata."""
    if not SAFE_NAME.match(model_id) or model_id.startswith("."):
        raise ValueError(f"unsafe model id {model_id!r}")
    return Path(root) / MODELS_DIR / model_id


MODEL_FILE = "model.pkl"
MODEL_METADATA_FILE = "metadata.json"


def read_model_bytes(root: Path, model_id: str) -> bytes:
    """The artefact of model `model_id`; a clear error when it is not there."""
    path = model_dir(root, model_id) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"model {model_id!r} not found: {path} does not exist (train one with `mdpipe sweep`)"
        )
    return path.read_bytes()
