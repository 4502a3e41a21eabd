"""The cross-venue step on real data: spot ETH/USDT and USD-M ETH/USDT:USDT of 2024-08-08
(about 5.75 minutes in common): basis against the features mids, the online engine fed by two
markets' online engines gives the batch signals, cross signals are labelled."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdpipe.core.crossvenue import CrossVenueConfig, CrossVenueEngine, Pair
from mdpipe.core.online import OnlineEngine, arrivals
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.pipeline import steps
from mdpipe.pipeline.crossvenue import (
    CrossPart,
    cross_parts,
    crossvenue_step,
    lead_lag_summary,
    markets_by_underlying,
)
from tests.conftest import DATA, ROOT

MULTI = ROOT / "data" / "binance-multi-2024"
DATE = "2024-08-08"
SPOT = ("binance", "ETH/USDT")
PERP = ("binanceusdm", "ETH/USDT:USDT")
# loose enough that the few minutes in common give signals of both triggers
CFG = CrossVenueConfig(
    z_window=600, z_min_count=100, z_threshold=2.5, k_spreads=1.0, leader="binanceusdm",
    signal_cooldown_seconds=5.0, null_shuffles=10,
)  # fmt: skip


def with_mark_frames(src: Path, dst: Path) -> Path:
    """The real USD-M recording with a `markPrice@1s` frame (Binance's documented shape) after
    the first frame of each exchange second: the bundled recordings carry none. Its index is
    the last recorded bookTicker mid less 0.35 USD, its funding 1 bp."""
    last_sec, mid = None, None
    with gzip.open(src, "rt") as f, gzip.open(dst, "wt") as out:
        for line in f:
            out.write(line)
            recv, _, text = line.partition(" ")
            if not text.startswith('{"stream"'):
                continue
            data = json.loads(text)["data"]
            if data.get("e") == "bookTicker":
                mid = (float(data["b"]) + float(data["a"])) / 2
            sec = int(data.get("E", 0)) // 1000
            if not sec or sec == last_sec or mid is None:
                continue
            last_sec = sec
            payload = {
                "e": "markPriceUpdate", "E": sec * 1000 + 1000, "s": data["s"],
                "p": f"{mid - 0.2:.8f}", "P": "0.00000000", "i": f"{mid - 0.35:.8f}",
                "r": "0.00010000", "T": 1723190400000,
            }  # fmt: skip
            frame = {"stream": "ethusdt@markPrice@1s", "data": payload}
            out.write(f"{recv} {json.dumps(frame, separators=(',', ':'))}\n")
    return dst


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake"))
    perp = with_mark_frames(
        MULTI / "usdm_ethusdt_20240808.gz", tmp_path_factory.mktemp("rec") / "usdm_ethusdt.gz"
    )
    report = import_paths([DATA / "ethusdt_20240808.gz", perp], lake)
    assert report.ok, report.errors
    for part in steps.raw_parts(lake):
        steps.features_step(lake, part)
    return lake


@pytest.fixture(scope="module")
def out(lake: Lake) -> object:
    return crossvenue_step(lake, CrossPart(DATE, "ETH"), CFG, settings_id="test")


def test_markets_are_paired_by_the_underlying_their_venue_names(lake: Lake) -> None:
    assert markets_by_underlying(lake, DATE) == {"ETH": [SPOT, PERP]}
    assert CrossPart(DATE, "ETH") in cross_parts(lake)


def test_basis_at_sampled_grid_points_equals_the_features_mids(lake: Lake, out) -> None:  # type: ignore[no-untyped-def]
    basis = out.basis
    assert basis.height > 3000
    assert (basis["ts_ns"] % 100_000_000 == 0).all()
    fa = lake.read("derived/features", *SPOT, DATE).filter(pl.col("mid").is_finite())
    fb = lake.read("derived/features", *PERP, DATE).filter(pl.col("mid").is_finite())
    rng = np.random.default_rng(0)
    for k in rng.choice(basis.height, 25, replace=False):
        row = basis.row(int(k), named=True)
        g = row["ts_ns"]
        ma = fa.filter(pl.col("ts_ns") <= g)["mid"][-1]
        mb = fb.filter(pl.col("ts_ns") <= g)["mid"][-1]
        assert (row["mid_a"], row["mid_b"]) == (ma, mb)
        assert row["basis_bps"] == pytest.approx((mb - ma) / ma * 1e4, rel=1e-12)
    written = lake.read_underlying("derived/basis", "ETH", DATE)
    assert written.equals(basis)


def test_basis_against_the_index_equals_the_mark_table_and_the_report_shows_funding(
    lake: Lake,
    out,  # type: ignore[no-untyped-def]
) -> None:
    basis = out.basis
    mark = lake.read("mark", *PERP, DATE).sort("exch_ts_ns")
    assert mark.height > 200
    assert basis["index_a"].null_count() == basis.height  # spot has no index
    have = basis.filter(pl.col("index_b").is_not_null())
    assert have.height > 0.9 * basis.height
    rng = np.random.default_rng(1)
    for k in rng.choice(have.height, 25, replace=False):
        row = have.row(int(k), named=True)
        idx = mark.filter(pl.col("exch_ts_ns") <= row["ts_ns"])["index_price"][-1]
        assert row["index_b"] == idx
        want = (row["mid_b"] - idx) / idx * 1e4
        assert row["index_basis_b_bps"] == pytest.approx(want, rel=1e-12)
    # the contract columns stay first and unchanged
    assert basis.columns[:10] == [
        "ts_ns", "underlying", "venue_a", "symbol_a", "venue_b", "symbol_b", "mid_a", "mid_b",
        "basis_bps", "basis_z",
    ]  # fmt: skip
    html = out.report.read_text()
    assert "Perpetuals against their index" in html and "No funding rates" not in html
    assert "binanceusdm" in html.split("Perpetuals against their index")[1]


def test_lead_lag_rows_cover_the_lag_grid_and_the_report_is_written(out) -> None:  # type: ignore[no-untyped-def]
    ll = out.lead_lag
    assert ll["lag_ns"].to_list() == CFG.lags_ns.tolist()
    assert ll["hy_corr"].is_finite().all()
    assert out.report.exists() and (out.report.parent / "lead_lag.png").exists()
    (line,) = lead_lag_summary(ll)  # what `mdpipe run` prints per pair
    lag = ll["max_lag_ns"][0] / 1e6
    assert f"binance:ETH/USDT / binanceusdm:ETH/USDT:USDT: HY peak at {lag:+.0f} ms" in line
    assert f"p {ll['p_value'][0]:.3f}" in line


def test_cross_signals_are_written_for_the_follower_and_labelled(lake: Lake, out) -> None:  # type: ignore[no-untyped-def]
    from mdpipe.core.config import BacktestConfig

    sig = out.signals
    assert sig.height > 0
    assert set(sig["trigger"]) == {"basis_z", "leader_move"}
    assert set(zip(sig["venue"], sig["symbol"], strict=True)) == {SPOT}
    assert lake.read("derived/cross_signals", *SPOT, DATE).height == sig.height
    assert lake.read("derived/cross_signals", *PERP, DATE).height == 0
    part = steps.Part(DATE, *SPOT)
    labels = steps.labels_step(lake, part, BacktestConfig()).labels
    assert labels.filter(pl.col("signal_type") == "cross_venue").height == sig.height


def test_live_two_market_replay_gives_the_batch_signals(lake: Lake, out) -> None:  # type: ignore[no-untyped-def]
    """Each market's online engine is fed its arrivals, the two streams interleaved by
    receive time as one capture would see them; every released feature row goes to the
    cross-venue engine."""
    engines, streams = {}, []
    for side, (venue, symbol) in enumerate((SPOT, PERP)):
        engines[side] = OnlineEngine(venue=venue, symbol=symbol)
        book = lake.read("book", venue, symbol, DATE)
        trades = lake.read("trades", venue, symbol, DATE)
        last = -(2**63)
        for kind, args in arrivals(book, trades):
            # arrivals() keeps a market's own order where a receive stamp steps back
            last = max(last, args[2] if kind == "book" else args[1])
            streams.append((last, side, kind, args))
    streams.sort(key=lambda x: (x[0], x[1]))  # stable: each market keeps its order
    pair = Pair("ETH", *SPOT, *PERP)
    cross = CrossVenueEngine(pair, CFG, settings_id="test", leader=1)
    got: list[pl.DataFrame] = []

    def push(side: int, feats: pl.DataFrame) -> None:
        for r in feats.select("ts_ns", "recv_ts_ns", "mid", "best_bid", "best_ask",
                              "spread_bps", "update_id").iter_rows():  # fmt: skip
            o = cross.on_row(side, *r)
            if o is not None:
                got.append(o)

    for k, (_, side, kind, args) in enumerate(streams):
        eng = engines[side]
        if kind == "book":
            *event, snap = args
            eng.on_book_event(*event, is_snapshot=snap)
        else:
            eng.on_trade(*args)
        if k % 64 == 0:  # released rows are handed on in small batches, as capture does
            for s, e in engines.items():
                push(s, e.drain_features())
    for side, eng in engines.items():
        eng.flush()
        push(side, eng.drain_features())
    o = cross.flush()
    if o is not None:
        got.append(o)
    live = pl.concat(got).sort("ts_ns", "venue", "symbol", "signal_id")
    assert cross.timeouts == 0
    assert set(live["source"]) == {"live"}  # the one column that names the driver
    assert live.drop("source").equals(out.signals.drop("source"))
