"""What `mdpipe capture` can be told: one validated, frozen structure."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
from dataclasses import dataclass

VENUE_PLACEHOLDER = "{venue}"  # in ws_url / rest_url: replaced by each venue's name


@dataclass(frozen=True)
class CaptureConfig:
    """Everything `mdpipe capture` can be told (the `[capture]` section of mdpipe.toml);
    validated on construction.

    venue                   ccxt venue id: binance (spot), binanceusdm (USD-M futures) or
                            binancecoinm (COIN-M futures).
    symbols                 unified symbols to record, e.g. ["BTC/USDT", "ETH/USDT"].
    markets                 several venues in one capture: ["binance:BTC/USDT",
                            "binancecoinm:BTC/USD:BTC"] (venue:symbol); set, it replaces venue
                            and symbols. Each venue gets its own connection, sync, gaps and
                            health; one online engine sees them all. A "{venue}" in ws_url or
                            rest_url becomes each venue's name.
    lake                    lake directory (unset: $MDPIPE_LAKE, else ./lake).
    lake                    lake directory or s3://bucket/prefix (unset: $MDPIPE_LAKE, else
                            ./lake).
    ws_url, rest_url        websocket and REST base URLs (unset: the venue's; set them for a
                            proxy, a testnet or `mdpipe exchange-sim`).
    metrics_port            serve /metrics, /health and /stats on this port (unset: off).
    metrics_host            address the metrics server binds.
    channels                stream channels per symbol (empty: the venue's own, e.g.
                            depth@100ms, trade, bookTicker (+ markPrice@1s for futures)); a
                            "venue:channel" entry applies to that venue only, and a venue with
                            such entries gets exactly those (e.g. "binanceusdm:depth@0ms").
    flush_interval_s        seconds between journal + Parquet publishes.
    batch_interval_s        seconds between normalized batches handed to the online engine.
    reconnect_initial_s     first reconnect delay (doubles, jittered).
    reconnect_max_s         largest reconnect delay.
    stale_after_s           silence watchdog: reconnect after this many quiet seconds.
    max_connection_age_s    planned make-before-break reconnect after this many seconds.
    clock_sync_interval_s   seconds between exchange clock-offset measurements.
    connect_timeout_s       seconds a connection attempt may take.
    fsync                   fsync every published file before it is renamed into place.
    compact_hourly          merge each partition's files of an hour into one once it is over.
    backfill_trades         fetch the trades of a trade-id hole over REST (historicalTrades).
    backfill_max_trades     at most this many trades fetched per hole.
    writer_id               this capture's name in file names (letters, digits, '_', '.'), so
                            several captures write one lake without conflicts; empty: none for a
                            local lake, host + markets for an object-store lake.
    spool                   local folder an object-store lake's files wait in before upload
                            (default ./spool); one subfolder per writer_id.
    """

    venue: str = "binance"
    symbols: tuple[str, ...] = ()
    markets: tuple[str, ...] = ()
    lake: str | None = None
    ws_url: str | None = None
    rest_url: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    channels: tuple[str, ...] = ()
    flush_interval_s: float = 5.0
    batch_interval_s: float = 0.1
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    stale_after_s: float = 10.0
    # Binance closes every connection after 24 h; reconnecting on our own schedule first means
    # the hole is ours, announced and resynced, instead of a surprise mid-burst
    max_connection_age_s: float = 23.5 * 3600
    clock_sync_interval_s: float = 300.0
    connect_timeout_s: float = 15.0
    fsync: bool = True
    # merge each partition's files of an hour into one file once the hour is over
    compact_hourly: bool = True
    # fetch the trades of a trade-id hole over REST (historicalTrades), at most this many a hole
    backfill_trades: bool = True
    backfill_max_trades: int = 100_000
    # several captures, one lake: a writer id in every file name (see effective_writer_id)
    writer_id: str = ""
    # an object-store lake's files wait here (per writer id) until uploaded
    spool: str = "spool"

    def __post_init__(self) -> None:
        self.by_venue()  # validates markets
        if not self.symbols and not self.markets:
            raise ValueError("capture needs at least one symbol, e.g. symbols=('BTC/USDT',)")
        if any("/" not in s for s in self.symbols):
            raise ValueError(
                f"symbols are ccxt unified symbols like 'BTC/USDT', got {self.symbols}"
            )
        for name in (
            "flush_interval_s",
            "batch_interval_s",
            "reconnect_initial_s",
            "reconnect_max_s",
            "stale_after_s",
            "max_connection_age_s",
            "clock_sync_interval_s",
            "connect_timeout_s",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_initial_s "
                f"({self.reconnect_initial_s})"
            )
        if self.batch_interval_s > self.flush_interval_s:
            raise ValueError("batch_interval_s must not exceed flush_interval_s")
        if not (
            isinstance(self.backfill_max_trades, int)
            and not isinstance(self.backfill_max_trades, bool)
            and self.backfill_max_trades > 0
        ):
            raise ValueError(
                f"backfill_max_trades must be a positive integer, got {self.backfill_max_trades!r}"
            )
        if self.writer_id and not _WRITER_ID.match(self.writer_id):
            raise ValueError(
                f"writer_id may hold letters, digits, '_' and '.', got {self.writer_id!r}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0..65535, got {self.metrics_port}")

    def by_venue(self) -> dict[str, tuple[str, ...]]:
        """The symbols to record per venue: from `markets` when set, else {venue: symbols}."""
        if not self.markets:
            return {self.venue: self.symbols}
        out: dict[str, list[str]] = {}
        for m in self.markets:
            venue, sep, symbol = m.partition(":")
            if not sep or not venue or "/" not in symbol:
                raise ValueError(
                    f"markets are venue:SYMBOL with a ccxt unified symbol, e.g. "
                    f"'binancecoinm:BTC/USD:BTC', got {m!r}"
                )
            if symbol in out.setdefault(venue, []):
                raise ValueError(f"market {m!r} is listed twice")
            out[venue].append(symbol)
        return {v: tuple(s) for v, s in out.items()}

    def for_venue(self, venue: str) -> CaptureConfig:
        """The one-venue configuration of `venue` (its symbols; URLs with "{venue}" filled in;
        no metrics server of its own: a multi-venue capture serves one for all)."""
        symbols = self.by_venue()[venue]
        multi = len(self.by_venue()) > 1

        def url(u: str | None) -> str | None:
            return None if u is None else u.replace(VENUE_PLACEHOLDER, venue)

        own = tuple(c.partition(":")[2] for c in self.channels if c.startswith(venue + ":"))
        shared = tuple(c for c in self.channels if ":" not in c)
        return dataclasses.replace(
            self,
            venue=venue,
            symbols=symbols,
            markets=(),
            channels=own or shared,
            ws_url=url(self.ws_url),
            rest_url=url(self.rest_url),
            metrics_port=None if multi else self.metrics_port,
        )


_WRITER_ID = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


def effective_writer_id(config: CaptureConfig, remote: bool) -> str:
    """``writer_id`` if set; else none for a local lake (names as before) and, for an
    object-store lake, the host name and a short hash of the venue and symbols: stable across
    restarts (the spool is found again) and distinct for captures of other markets."""
    if config.writer_id or not remote:
        return config.writer_id
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
    markets = ",".join([config.venue, *sorted(config.symbols)]).encode()
    return f"{host}.{hashlib.sha1(markets).hexdigest()[:8]}"
