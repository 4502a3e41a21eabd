"""The named kernel state: what the bundles hold, and the per-event entry points, which skip
numba's type dispatch and so must see one argument type whatever the caller passes."""

from __future__ import annotations

import numpy as np
import pytest

from mdpipe.core.detectors import DetectorConfig
from mdpipe.core.features import FeatureConfig
from mdpipe.core.kernel import market_stats, new_market_state
from mdpipe.core.online import OnlineEngine, OrderBookFeatureExtractor

MS = 1_000_000
SMALL = FeatureConfig(book_ticks=4096, book_ring_capacity=64, trade_ring_capacity=64)


def _events() -> list[tuple[int, int, list[bool], list[float], list[float], bool]]:
    """(update_id, ts, is_bid, price, qty, is_snapshot) of a small two-sided book's life."""
    out = [(1, 1_000 * MS, [True, True, False, False], [100.0, 99.99, 100.01, 100.02],
            [2.0, 1.0, 1.0, 3.0], True)]  # fmt: skip
    for k in range(2, 40):
        bid = 100.0 + 0.01 * (k % 3)
        out.append((k, (1_000 + 100 * k) * MS, [True, False], [bid, bid + 0.01],
                    [1.0 + k % 4, 2.0], False))  # fmt: skip
    return out


def _replay(engine: OnlineEngine, convert) -> tuple:  # type: ignore[no-untyped-def]
    for uid, ts, is_bid, px, qty, snap in _events():
        engine.on_book_event(uid, ts, ts, *convert(is_bid, px, qty), is_snapshot=snap)
        engine.on_trade(ts + MS, ts + MS, px[0], 0.5, "buy" if uid % 2 else "sell")
    engine.flush()
    return engine.drain_features(), engine.get_stats()


def test_event_arrays_of_any_dtype_or_layout_give_the_same_features() -> None:
    def canonical(b, p, q):  # type: ignore[no-untyped-def]
        return np.array(b, np.bool_), np.array(p), np.array(q)

    def as_lists(b, p, q):  # type: ignore[no-untyped-def]
        return b, p, q

    def other_dtypes(b, p, q):  # type: ignore[no-untyped-def]
        # ints for the sides, float32 sizes, and a strided (non-contiguous) price view
        strided = np.repeat(np.array(p), 2)[::2]
        return np.array(b, np.int8), strided, np.array(q, np.float32)

    want, want_stats = _replay(OnlineEngine(venue="v", symbol="S", feature_config=SMALL), canonical)
    assert want.height == len(_events())
    for convert in (as_lists, other_dtypes):
        got, stats = _replay(OnlineEngine(venue="v", symbol="S", feature_config=SMALL), convert)
        assert got.equals(want), convert.__name__
        assert stats == want_stats


def test_a_two_dimensional_event_array_is_refused_with_its_name() -> None:
    engine = OnlineEngine(venue="v", symbol="S", feature_config=SMALL)
    with pytest.raises(ValueError, match="price must be 1-dimensional, got shape \\(1, 2\\)"):
        engine.on_book_event(
            1, MS, MS, np.array([True, False]), np.array([[100.0, 100.01]]), np.array([1.0, 1.0])
        )
    ob = OrderBookFeatureExtractor(config=SMALL)
    with pytest.raises(ValueError, match="qty must be 1-dimensional"):
        ob.update_arrays(np.array([True]), np.array([100.0]), np.ones((1, 1)), ts_ns=MS)


def test_the_bundles_hold_the_configured_sizes_and_start_empty() -> None:
    fc = FeatureConfig(book_ticks=4096, book_ring_capacity=128, trade_ring_capacity=256,
                       vpin_buckets=7, bocpd_max_run_length=20)  # fmt: skip
    st = new_market_state(fc, DetectorConfig(dynamic_threshold_window=33, cooldown_seconds=1.5))
    assert st.book.book.qty.shape == (2, 4096)
    assert st.book.ring.shape == (128,) and st.trades.ring.shape == (256,)
    assert st.trades.vpin.shape == (7,) and st.book.bocpd.shape[1] == 20
    assert st.detector.scores.shape == (2, 33)
    assert st.detector.params[0]["cooldown_ns"] == 1_500_000_000
    assert st.book.params[0]["warmup_ns"] == 60_000_000_000
    assert st.book.book.info[0]["best_bid"] == -1 and st.book.book.info[0]["best_ask"] == 4096
    stats = market_stats(st)
    assert stats["events"] == 0 and stats["book"]["snapshots"] == 0
    assert stats["trades"] == {"trades": 0, "ring_overflows": 0}


def test_ring_overflows_are_counted_by_name() -> None:
    # 64-slot rings and a burst of 100 events / trades inside one second overflow both.
    engine = OnlineEngine(venue="v", symbol="S", feature_config=SMALL)
    engine.on_book_event(0, MS, MS, np.array([True, False]), np.array([100.0, 100.01]),
                         np.array([1.0, 1.0]), is_snapshot=True)  # fmt: skip
    for k in range(1, 101):
        engine.on_trade(MS + k, MS + k, 100.0, 1.0, "buy")
        engine.on_book_event(k, MS + k, MS + k, np.array([True]), np.array([100.0]),
                             np.array([1.0 + k]))  # fmt: skip
    engine.flush()
    stats = market_stats(engine.state)
    assert stats["book"]["ring_overflows"] == 101 - 64
    assert stats["trades"] == {"trades": 100, "ring_overflows": 100 - 64}
