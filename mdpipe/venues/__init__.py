"""Venues as plug-ins: the contract (:mod:`mdpipe.venues.base`) and the registry.

Capture and import know venues only through here::

    venue = mdpipe.venues.get("binance")          # by ccxt id; unknown -> error listing known
    venue = mdpipe.venues.detect(path)            # which venue reads this file (content / name)
    mdpipe.venues.register(MyVenue())             # a new venue: one folder, one register call

The built-in venues (Binance spot ``binance``, USD-M ``binanceusdm`` and COIN-M ``binancecoinm``, in
``mdpipe/venues/binance/``) register themselves the first time the registry is asked.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mdpipe.lake.journal import GZIP_MAGIC
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
DUMP_SUFFIXES = (".csv", ".zip")  # files that are never line journals

_VENUES: dict[str, Venue] = {}
_BUILTINS_LOADED = [False]


class UnknownVenue(ValueError):
    """A venue name nobody registered, or a file no venue recognises."""


def _load_builtins() -> None:
    if not _BUILTINS_LOADED[0]:
        _BUILTINS_LOADED[0] = True
        import mdpipe.venues.binance  # noqa: F401  (registers binance, binanceusdm, binancecoinm)


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


def underlying(venue: str, symbol: str) -> str:
    """The underlying asset a market of ``venue`` trades (``BTC`` for ``BTC/USDT``,
    ``BTC/USDT:USDT``, ``BTC/USD:BTC``): the venue's own ``underlying(symbol)`` when it has
    one, else the base of the unified symbol (ccxt's ``BASE/QUOTE[:SETTLE]``)."""
    v = _VENUES.get(venue) if _BUILTINS_LOADED[0] else None
    if v is None and venue in names():
        v = _VENUES[venue]
    own = getattr(v, "underlying", None)
    if callable(own):
        return str(own(symbol))
    base, sep, _ = symbol.partition("/")
    if not sep or not base:
        raise ValueError(f"{venue}:{symbol} is not a unified symbol BASE/QUOTE[:SETTLE]")
    return base


def read_head(path: Path, lines: int = HEAD_LINES) -> list[bytes]:
    """The first ``lines`` lines of a journal (gzip or plain); a damaged file gives what could be
    read (the full read reports the damage with its line number)."""
    head: list[bytes] = []
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC  # the journal's rule: compression by content
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            for _ in range(lines):
                line = f.readline()
                if not line:
                    break
                head.append(line)
    except (OSError, EOFError, zlib.error):
        pass
    return head


def messages_of(head: Sequence[bytes]) -> list[bytes]:
    """The message part of ``<receive time> <message>`` journal lines (a line without a receive
    time is kept whole: the venue's sniff judges it)."""
    out = []
    for line in head:
        ts, sep, msg = line.partition(b" ")
        out.append(msg.strip() if sep and ts.isdigit() else line.strip())
    return out


@dataclass(frozen=True)
class Recognised:
    """Which venue reads a file, and how: a dump (``dump`` set) or a line journal."""

    path: Path
    venue: Venue | None  # None: a journal no venue recognises (the caller reports it)
    dump: DumpFile | None = None
    symbol_hint: str | None = None
    head: list[bytes] = field(default_factory=list)  # the journal's first lines, as read


def recognise(path: Path, venue: str | None = None) -> Recognised:
    """Which venue reads ``path``: a dump by its name (``Venue.dump_of``), else a journal by its
    first lines' content (``Venue.sniff``). ``venue`` forces one. Raises :class:`UnknownVenue`
    for an unknown ``venue``, a file several venues claim, or a ``.csv``/``.zip`` no venue
    reads as a dump; a journal nobody recognises comes back with ``venue=None``."""
    _load_builtins()
    candidates = [get(venue)] if venue else [_VENUES[n] for n in sorted(_VENUES)]
    dumps = [(v, d) for v in candidates if (d := v.dump_of(path)) is not None]
    if len(dumps) > 1:
        raise UnknownVenue(
            f"{path}: several venues read this dump ({', '.join(v.name for v, _ in dumps)}); "
            "choose one with --venue"
        )
    if dumps:
        v, d = dumps[0]
        return Recognised(path, v, d, d.symbol_hint)
    if path.suffix in DUMP_SUFFIXES:
        names = "; ".join(f"{v.name}: {v.dump_names}" for v in candidates if v.dump_names)
        raise UnknownVenue(
            f"{path}: no venue reads this file as a dump; dump names read: {names or 'none'}"
        )
    head = read_head(path)
    messages = messages_of(head)
    sniffed = [(v, v.sniff(messages)) for v in candidates]
    if venue:
        return Recognised(path, candidates[0], None, sniffed[0][1].symbol_hint, head)
    hits = [(v, h) for v, h in sniffed if h.recognized]
    if len(hits) > 1:
        raise UnknownVenue(
            f"{path}: the content fits several venues ({', '.join(v.name for v, _ in hits)}); "
            "choose one with --venue"
        )
    if not hits:
        return Recognised(path, None, None, None, head)
    return Recognised(path, hits[0][0], None, hits[0][1].symbol_hint, head)


def detect(source: Path | str | bytes) -> Venue:
    """The one venue that reads ``source``: a file (see :func:`recognise`), or a journal line /
    message. None or several -> :class:`UnknownVenue` saying why."""
    _load_builtins()
    if isinstance(source, Path):
        found = recognise(source)
        if found.venue is None:
            raise UnknownVenue(
                f"{source}: no venue recognises this content (known: {', '.join(names())}); "
                "choose one with --venue"
            )
        return found.venue
    raw = source.encode() if isinstance(source, str) else source
    messages = messages_of(raw.splitlines())
    hits = [v for v in _VENUES.values() if v.sniff(messages).recognized]
    if len(hits) == 1:
        return hits[0]
    why = (
        f"fits several venues ({', '.join(v.name for v in hits)})"
        if hits
        else (f"no venue recognises this content (known: {', '.join(names())})")
    )
    raise UnknownVenue(f"{raw[:80]!r}: {why}; choose one with --venue")


__all__ = [
    "DUMP_SUFFIXES",
    "HEAD_LINES",
    "Batch",
    "DumpFile",
    "JournalHead",
    "LineError",
    "Normalizer",
    "RawLines",
    "Recognised",
    "StreamRoute",
    "Transport",
    "UnknownStream",
    "UnknownVenue",
    "Venue",
    "detect",
    "get",
    "messages_of",
    "names",
    "read_head",
    "recognise",
    "register",
    "underlying",
    "unregister",
]
