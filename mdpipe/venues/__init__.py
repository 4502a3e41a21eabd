"""Venues as plug-ins: the contract (:mod:`mdpipe.venues.base`) and the registry.

Capture and import know venues only through here::

    venue = mdpipe.venues.get("binance")          # by ccxt id; unknown -> error listing known
    venue = mdpipe.venues.detect(path)            # which venue reads this file (content / name)
    mdpipe.venues.register(MyVenue())             # a new venue: one folder, one register call

The built-in venues (Binance spot ``binance`` and USD-M ``binanceusdm``, in
``mdpipe/venues/binance/``) register themselves the first time the registry is asked.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

from mdpipe.venues.base import (
    Batch,
    DumpFile,
    JournalHead,
    LineError,
    Normalizer,
    RawLines,
    StreamRoute,
    Transport,
    UnknownStream,
    Venue,
)

HEAD_LINES = 2000  # journal lines a venue sees to recognise a file

_VENUES: dict[str, Venue] = {}
_BUILTINS_LOADED = [False]


class UnknownVenue(ValueError):
    """A venue name nobody registered, or a file no venue recognises."""


def _load_builtins() -> None:
    if not _BUILTINS_LOADED[0]:
        _BUILTINS_LOADED[0] = True
        import mdpipe.venues.binance  # noqa: F401  (registers binance, binanceusdm)


def register(venue: Venue, *, replace: bool = False) -> Venue:
    """Make ``venue`` known to capture and import under ``venue.name``."""
    if not isinstance(venue, Venue):
        missing = [
            a
            for a in (
                "name", "rules", "default_channels", "unified_symbol", "normalizer", "transport",
                "route", "stream_labels", "depth_market", "sniff", "dump_of", "read_dump",
                "dump_names",
            )
            if not hasattr(venue, a)
        ]  # fmt: skip
        raise TypeError(f"{venue!r} is not a Venue: it lacks {', '.join(missing)}")
    name = venue.name
    if not name or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a venue name is a lower-case ccxt-style id like 'binance', got {name!r}")
    if name in _VENUES and _VENUES[name] is not venue and not replace:
        raise ValueError(f"venue {name!r} is already registered ({_VENUES[name]!r})")
    _VENUES[name] = venue
    return venue


def unregister(name: str) -> None:
    """Forget a venue (tests that register their own)."""
    _VENUES.pop(name, None)


def names() -> list[str]:
    _load_builtins()
    return sorted(_VENUES)


def get(name: str) -> Venue:
    _load_builtins()
    try:
        return _VENUES[name]
    except KeyError:
        raise UnknownVenue(f"unknown venue {name!r}; known: {', '.join(sorted(_VENUES))}") from None


def normalizer_for(venue: str) -> Normalizer:
    return get(venue).normalizer()


def read_head(path: Path, lines: int = HEAD_LINES) -> list[bytes]:
    """The first ``lines`` lines of a journal (gzip or plain); a damaged file gives what could be
    read (the full read reports the damage with its line number)."""
    head: list[bytes] = []
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for _ in range(lines):
                line = f.readline()
                if not line:
                    break
                head.append(line)
    except (OSError, EOFError, zlib.error):
        pass
    return head


def _messages(head: Sequence[bytes]) -> list[bytes]:
    """The message part of ``<receive time> <message>`` journal lines."""
    out = []
    for line in head:
        ts, sep, msg = line.partition(b" ")
        out.append(msg.strip() if sep and ts.isdigit() else line.strip())
    return out


def detect(source: Path | str | bytes) -> Venue:
    """The one venue that reads ``source``: a file (dump by name, else journal by content), or a
    journal line / message. None or several -> :class:`UnknownVenue` saying why."""
    _load_builtins()
    venues = list(_VENUES.values())
    if isinstance(source, Path):
        dumps = [v for v in venues if v.dump_of(source) is not None]
        if len(dumps) == 1:
            return dumps[0]
        if len(dumps) > 1:
            raise UnknownVenue(
                f"{source}: several venues read this dump ({', '.join(v.name for v in dumps)}); "
                "choose one with --venue"
            )
        messages = _messages(read_head(source))
        where = str(source)
    else:
        raw = source.encode() if isinstance(source, str) else source
        messages = _messages(raw.splitlines())
        where = repr(raw[:80])
    hits = [v for v in venues if v.sniff(messages).recognized]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UnknownVenue(
            f"{where}: the content fits several venues ({', '.join(v.name for v in hits)}); "
            "choose one with --venue"
        )
    raise UnknownVenue(
        f"{where}: no venue recognises this content (known: {', '.join(sorted(_VENUES))}); "
        "choose one with --venue"
    )


__all__ = [
    "HEAD_LINES",
    "Batch",
    "DumpFile",
    "JournalHead",
    "LineError",
    "Normalizer",
    "RawLines",
    "StreamRoute",
    "Transport",
    "UnknownStream",
    "UnknownVenue",
    "Venue",
    "detect",
    "get",
    "names",
    "normalizer_for",
    "read_head",
    "register",
    "unregister",
]
