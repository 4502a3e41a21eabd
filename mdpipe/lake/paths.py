"""Where things live in the lake: its location, partition folders, market keys, file names.

Layout (DESIGN.md, a contract)::

    <lake>/raw/venue=<venue>/date=<YYYY-MM-DD>/<hour>-<seq>[.<writer id>].jsonl.gz
    <lake>/<table>/venue=<venue>/symbol=<BASE-QUOTE>/date=<YYYY-MM-DD>/*.parquet
    <lake>/derived/<asset>/venue=.../symbol=.../date=.../*.parquet
    <lake>/live/signals/venue=.../symbol=.../date=.../*.parquet
    <lake>/mdpipe.duckdb

Roll-ups. A writer that publishes often (capture, every few seconds) names its files
``<prefix>-<19-digit ns>.parquet`` with names increasing in publish order, and later merges a run
of them into one *roll-up* ``<prefix>-<first ns>-to-<last ns>.parquet``
(:meth:`mdpipe.lake.Lake.compact`), which sorts exactly where the first merged file did. A
roll-up *covers* every file of its directory with the same prefix and an ns in
``[first, last]``, and a roll-up of the same prefix lying inside its range (two compactions
that raced). Several writers keep apart by a writer id in the prefix
(``cap-<writer id>-YYYYMMDDTHH``).

The location is a local folder or ``s3://bucket/prefix`` (:func:`object_store_url`,
:mod:`mdpipe.lake.objstore`).
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
JOURNAL_SUFFIX = ".jsonl.gz"  # capture's journal files: <hour>-<seq>[.<writer>].jsonl.gz

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


def object_store_url(location: str | os.PathLike[str]) -> str | None:
    """``s3://bucket/prefix`` (normalised) when ``location`` names an object-store lake, None
    for a local folder. Other URLs (``gs://``, ``file://``, ``http://``) raise
    :class:`LakeLocationError` instead of becoming a folder named ``gs:``."""
    text = os.fspath(location)
    if not text:
        raise LakeLocationError(
            "the lake location is empty: give a local folder or s3://bucket/prefix"
        )
    m = _URL.match(text)
    if m is None:
        return None
    scheme = m["scheme"].lower()
    if scheme == "file":
        raise LakeLocationError(
            f"lake locations are local folders or s3:// URLs, not file:// URLs: {text} "
            f"(give the folder itself, e.g. {text[len('file://') :] or '/'})"
        )
    if scheme != "s3":
        raise LakeLocationError(
            f"object-store lakes must be s3:// URLs: {text} (--lake / ${LAKE_ENV} takes a local "
            "folder or s3://bucket/prefix; GCS, R2 and MinIO are reached through their S3 "
            "interface with AWS_ENDPOINT_URL)"
        )
    rest = text[m.end() :].rstrip("/")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise LakeLocationError(f"the lake URL names no bucket: {text} (s3://bucket/prefix)")
    return f"s3://{rest}"


def local_root(location: str | os.PathLike[str]) -> Path:
    """The absolute local folder of a lake location; any URL raises
    :class:`LakeLocationError` (callers that accept object stores use
    :func:`object_store_url` first)."""
    text = os.fspath(location)
    if object_store_url(text) is not None:
        raise LakeLocationError(f"a local folder is needed here, not an object-store URL: {text}")
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


def underlying_dir(root: Path, table: str, underlying: str, date: str) -> Path:
    """The folder of a day x underlying partition (``tables.UNDERLYING_TABLES``)."""
    if not SAFE_NAME.match(underlying) or "=" in underlying:
        raise ValueError(f"an underlying is a plain asset name like 'BTC', got {underlying!r}")
    return root / table / f"underlying={underlying}" / f"date={date}"


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
    """The files among ``paths`` that a roll-up among ``paths`` (same directory) covers: the
    sequence files in its range, and a roll-up lying inside a wider one of the same prefix (two
    compactions racing on one partition; the wider one holds every row of the narrower)."""
    paths = list(paths)
    ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for p in paths:
        if "-to-" in p.name:
            r = parse_rollup_name(p.name)
            if r is not None:
                ranges.setdefault((str(p.parent), r[0]), []).append((r[1], r[2]))
    if not ranges:
        return set()
    out: set[Path] = set()
    for p in paths:
        seq = parse_sequence_name(p.name)
        if seq is not None:
            for first, last in ranges.get((str(p.parent), seq[0]), ()):
                if first <= seq[1] <= last:
                    out.add(p)
                    break
            continue
        r = parse_rollup_name(p.name)
        if r is not None:
            for first, last in ranges.get((str(p.parent), r[0]), ()):
                if first <= r[1] and r[2] <= last and (first, last) != (r[1], r[2]):
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
