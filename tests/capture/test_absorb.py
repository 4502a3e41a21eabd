"""The absorbing part on its own: recorded lines in, no network, no event loop.

The altered BTCUSDT recording of test_crossed_book (a diff F1 that crosses the book, and F2 that
uncrosses it, in one batch) is fed straight into an `Absorber` with the real Binance normalizer,
`Status` and `Publisher`; the batch the consumers get must already have the crossing withheld.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mdpipe.capture.absorb import Absorber, BookView
from mdpipe.capture.config import CaptureConfig
from mdpipe.capture.publisher import Publisher
from mdpipe.capture.status import Status
from mdpipe.lake import JournalWriter, Lake, iter_journal_lines
from mdpipe.venues import Batch
from mdpipe.venues import get as get_venue
from tests.capture.test_crossed_book import SYM, build_altered_recording

KEY = "btcusdt"


def is_diff(text: str, u: int) -> bool:
    return text.startswith('{"stream":"btcusdt@depth') and f'"u":{u},' in text


def test_absorber_withholds_a_crossing_inside_one_batch_and_resyncs(tmp_path: Path) -> None:
    alt = build_altered_recording(tmp_path)
    config = CaptureConfig(symbols=(SYM,), lake=str(tmp_path / "lake"))
    venue = get_venue(config.venue)
    normalizer = venue.normalizer()
    status = Status(config.venue, config.symbols)
    lake = Lake.resolve(config.lake)
    publisher = Publisher(config, lake, JournalWriter(lake.root, config.venue), status)
    batches: list[Batch] = []
    holes: list[tuple[str, int, int, int]] = []
    depth_seen: set[str] = set()
    absorber = Absorber(
        config,
        venue,
        normalizer,
        status,
        publisher,
        backfill=lambda *hole: holes.append(hole),
        depth_seen=depth_seen,
        consumers=[batches.append],
    )
    absorber.set_markets({SYM: KEY})
    crossed_views: list[tuple[int, float, float]] = []

    def on_book(view: BookView) -> None:
        bid, ask = view.best_bid(), view.best_ask()
        if bid is not None and ask is not None and bid[0] >= ask[0]:
            crossed_views.append((view.update_id, bid[0], ask[0]))

    absorber.book_callbacks.append(on_book)

    # every line up to F2 (which follows F1 directly), snapshots wrapped as the capture does
    fed = 0
    for ns, text, _ in iter_journal_lines(alt.path):
        if text.startswith('{"lastUpdateId"'):
            text = '{"stream":"' + KEY + '@depthSnapshot","data":' + text + "}"
        absorber.receive(ns, text)
        fed += 1
        if is_diff(text, alt.f2["u"]):
            break
        if fed % 500 == 0 and not is_diff(text, alt.f1["u"]):
            absorber.process_pending()
            assert absorber.pending == 0
    assert absorber.pending > 0
    absorber.process_pending()
    assert absorber.pending == 0

    gaps = pl.concat([b.get("gaps") for b in batches])
    crossing = gaps.filter(pl.col("detail").str.starts_with("crossed book"))
    assert crossing.height == 1, gaps
    row = crossing.row(0, named=True)
    assert (row["symbol"], row["kind"], row["prev_update_id"]) == (SYM, "sequence_gap", alt.prev_u)
    assert row["detail"].startswith(
        f"crossed book after update {alt.f1['u']}: best bid {alt.bid} >= best ask {alt.best_ask}"
    )
    book = pl.concat([b.get("book") for b in batches])
    assert book.filter(pl.col("update_id") == alt.prev_u).height > 0  # synced up to F1
    assert book.filter(pl.col("update_id").is_in([alt.f1["u"], alt.f2["u"]])).height == 0
    assert crossed_views == []
    assert not normalizer.is_synced(SYM) and status.synced[SYM] is False
    assert status.gaps.value(SYM, "sequence_gap") == 1
    assert KEY in depth_seen
    assert holes == []  # no trade id is missing from the recording
    assert publisher.unpublished and publisher.lines_waiting == fed
