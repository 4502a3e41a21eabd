"""The capture as a Python stream object, its settings, and re-deriving its lake from its journal."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from mdpipe.capture.cli import add_capture_args, build_config
from mdpipe.capture.daemon import BookView, Capture
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.venues import Batch
from tests.capture.conftest import ALL_FILES, recorded_book_tickers, run_capture


def test_callbacks_and_consumers_see_every_event_in_order(tmp_path: Path) -> None:
    tickers = recorded_book_tickers(ALL_FILES)
    books: list[tuple[str, int, tuple[float, float] | None, tuple[float, float] | None]] = []
    crossed: list[int] = []
    trades: list[dict[str, Any]] = []
    batches: list[Batch] = []

    def on_book(b: BookView) -> None:
        bb, ba = b.best_bid(), b.best_ask()
        if bb and ba and bb[0] >= ba[0]:
            crossed.append(b.update_id)
        books.append((b.symbol, b.update_id, bb, ba))

    def prepare(cap: Capture) -> None:
        cap.register_book_callback(on_book)
        cap.register_trade_callback(trades.append)
        cap.register_consumer(batches.append)
        cap.register_consumer(lambda b: 1 / 0)  # a broken consumer must not stop the capture

    run = asyncio.run(run_capture(tmp_path, limit_events=20_000, prepare=prepare))
    assert not crossed
    # the callback's book equals the exchange's own top of book wherever ids line up
    compared = 0
    for _sym, uid, bb, ba in books:
        t = tickers.get(uid)
        if t is not None and bb and ba:
            compared += 1
            assert (bb[0], bb[1], ba[0], ba[1]) == (
                float(t["b"]), float(t["B"]), float(t["a"]), float(t["A"])
            )  # fmt: skip
    assert compared > 100
    per_symbol_ids = {
        s: [u for sym, u, _, _ in books if sym == s] for s in ("BTC/USDT", "ETH/USDT")
    }
    for ids in per_symbol_ids.values():
        assert ids == sorted(ids)  # applied order
    trade_ids = [t["trade_id"] for t in trades if t["symbol"] == "BTC/USDT"]
    assert trade_ids == run.sent_trade_ids("BTC/USDT")
    assert {t["side"] for t in trades} == {"buy", "sell"}
    assert sum(b.get("trades").height for b in batches) == len(trades)
    assert sum(b.get("book").height for b in batches) == sum(run.stats["book_rows"].values())


def test_journal_rederives_the_same_lake_through_mdpipe_import(tmp_path: Path) -> None:
    run = asyncio.run(run_capture(tmp_path, limit_events=30_000))
    journal = [Path(p) for p in run.stats["journal_files"]]
    again = Lake(tmp_path / "reimported")
    report = import_paths(journal, again, venue="binance", catalog=False)
    assert not report.errors, report.errors[:3]
    for table, key in (
        ("trades", ["trade_id"]),
        ("book", ["update_id", "is_snapshot", "side", "price"]),
    ):
        for sym in ("BTC/USDT", "ETH/USDT"):
            a = run.lake.read(table, "binance", sym).sort(key)
            b = again.read(table, "binance", sym).sort(key)
            assert a.height > 0
            assert a.equals(b), (table, sym, a.height, b.height)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_capture_args(p)
    return p.parse_args(argv)


def test_settings_merge_file_env_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "capture.toml"
    cfg.write_text(
        '[capture]\nsymbols = ["BTC/USDT"]\nflush_interval_s = 2.0\nstale_after_s = 7\n'
        'ws_url = "ws://file"\n'
    )
    env = {"MDPIPE_CAPTURE_FLUSH_INTERVAL_S": "3", "MDPIPE_LAKE": "/data/lake"}
    c = build_config(_args(["--config", str(cfg), "--ws-url", "ws://flag"]), env)
    assert c.symbols == ("BTC/USDT",)
    assert c.flush_interval_s == 3.0  # env beats file
    assert c.stale_after_s == 7.0
    assert c.ws_url == "ws://flag"  # flag beats file
    assert c.lake == "/data/lake"
    c = build_config(_args(["--symbols", "BTC/USDT, ETH/USDT", "--lake", "x"]), env)
    assert c.symbols == ("BTC/USDT", "ETH/USDT") and c.lake == "x"
    assert c.compact_hourly is True  # the default
    c = build_config(_args(["--symbols", "BTC/USDT", "--no-compact-hourly"]), env)
    assert c.compact_hourly is False
    c = build_config(_args(["--symbols", "BTC/USDT"]), {"MDPIPE_CAPTURE_COMPACT_HOURLY": "0"})
    assert c.compact_hourly is False
    c = build_config(
        _args(["--symbols", "BTC/USDT", "--compact-hourly"]), {"MDPIPE_CAPTURE_COMPACT_HOURLY": "0"}
    )
    assert c.compact_hourly is True  # flag beats env
    cfg.write_text("[capture]\nsymbols = ['BTC/USDT']\ncompact_hourly = false\n")
    assert build_config(_args(["--config", str(cfg)]), {}).compact_hourly is False
    cfg.write_text("[capture]\nsymbols = ['BTC/USDT']\nflush_interval = 2\n")
    with pytest.raises(
        ValueError, match=r"\[capture\]: unknown key 'flush_interval' \(did you mean"
    ):
        build_config(_args(["--config", str(cfg)]), {})
    # capture settings live in their section of the one settings file
    cfg.write_text("symbols = ['BTC/USDT']\n")
    with pytest.raises(
        ValueError, match=r"'symbols' is outside any section \(it belongs under \[capture\]\)"
    ):
        build_config(_args(["--config", str(cfg)]), {})
    with pytest.raises(ValueError, match="at least one symbol"):
        build_config(_args([]), {})


def test_unknown_symbol_is_a_clear_error(tmp_path: Path) -> None:
    async def run() -> None:
        from mdpipe.capture.daemon import CaptureConfig
        from mdpipe.capture.exchange_sim import ExchangeSim

        sim = ExchangeSim(ALL_FILES[:2], speed=None)
        await sim.start()
        try:
            cap = Capture(
                CaptureConfig(
                    symbols=("DOGE/USDT",),
                    lake=str(tmp_path),
                    ws_url=sim.ws_url,
                    rest_url=sim.rest_url,
                )
            )
            with pytest.raises(ValueError, match="no market"):
                await cap.start()
        finally:
            await sim.stop()

    asyncio.run(run())


def test_a_failed_flush_keeps_its_data_for_the_next_one(tmp_path: Path) -> None:
    """Disk full for a moment: nothing is lost or written twice, journal or lake."""
    import errno

    from mdpipe.lake import iter_journal_lines

    def prepare(cap: Capture) -> None:
        publish, write_lines = cap.lake.publish, cap.journal.write_lines
        calls = {"publish": 0, "journal": 0}

        def flaky_publish(*a: Any, **k: Any) -> Any:
            calls["publish"] += 1
            if calls["publish"] in (3, 4):  # part way through a flush
                raise OSError(errno.ENOSPC, "No space left on device")
            return publish(*a, **k)

        def flaky_journal(*a: Any, **k: Any) -> Any:
            calls["journal"] += 1
            if calls["journal"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_lines(*a, **k)

        cap.lake.publish = flaky_publish  # type: ignore[method-assign]
        cap.journal.write_lines = flaky_journal  # type: ignore[method-assign]

    run = asyncio.run(run_capture(tmp_path, limit_events=15_000, prepare=prepare))
    assert sum(e["kind"] == "flush_error" for e in run.stats["episodes"]) == 3
    for sym in ("BTC/USDT", "ETH/USDT"):
        ids = run.trades(sym)["trade_id"].to_list()
        assert sorted(ids) == run.sent_trade_ids(sym)
        book = run.lake.read("book", "binance", sym)
        assert book.select("update_id", "is_snapshot", "side", "price").is_duplicated().sum() == 0
    journal = [t for f in run.stats["journal_files"] for _, t, _ in iter_journal_lines(f)]
    streamed = [t for t in journal if '@depthSnapshot"' not in t[:40] and '"result"' not in t[:12]]
    assert streamed == [e.frame for e in run.sim.events[:15_000]]
