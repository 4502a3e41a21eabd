"""USD-M futures (`--venue binanceusdm`): `pu` chaining, /fapi REST, unified `BTC/USDT:USDT`.

There is no futures recording in the project, so one is derived from the spot recording: each
depth diff gets the futures fields `T` and `pu` (= the previous diff's `u`). The ids and books are
real; the derivation only adds what the futures protocol carries on top of spot's.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import polars as pl

from mdpipe.capture.exchange_sim import ExchangeSim
from mdpipe.lake import iter_journal_lines
from tests.capture.conftest import BTC_FILES, run_capture, wait_pos

SYMBOL = "BTC/USDT:USDT"


def futures_recording(tmp: Path, max_lines: int = 20_000) -> Path:
    out = tmp / "btcusdt_futures.gz"
    prev_u: int | None = None
    n = 0
    with gzip.open(out, "wt") as f:
        for path in BTC_FILES:
            for ts, text, _ in iter_journal_lines(path):
                if '"depthUpdate"' in text[:80]:
                    frame = json.loads(text)
                    d = frame["data"]
                    d["T"] = d["E"] - 1
                    d["pu"] = prev_u if prev_u is not None else d["U"] - 1
                    prev_u = d["u"]
                    text = json.dumps(frame, separators=(",", ":"))
                f.write(f"{ts} {text}\n")
                n += 1
                if n >= max_lines:
                    return out
    return out


def test_usdm_capture_syncs_with_pu_chaining_and_resyncs_on_a_gap(tmp_path: Path) -> None:
    rec = futures_recording(tmp_path)

    async def inject(sim: ExchangeSim, cap: object) -> None:
        assert sim.futures
        assert "--venue binanceusdm --symbols BTC/USDT:USDT" in sim.capture_command()
        await wait_pos(sim, 10_000)
        await sim.fault("skip", symbol="BTC/USDT", count=2)

    run = asyncio.run(
        run_capture(tmp_path, files=[rec], symbols=(SYMBOL,), venue="binanceusdm", steps=[inject])
    )
    gaps = run.lake.read("gaps", "binanceusdm", SYMBOL)
    assert gaps.height == 1
    g = gaps.row(0, named=True)
    skipped = run.sim.symbols["btcusdt"].skipped_update_ids
    assert g["kind"] == "sequence_gap" and "expected pu=" in g["detail"]
    assert g["prev_update_id"] == skipped[0][0] - 1
    trades = run.lake.read("trades", "binanceusdm", SYMBOL)["trade_id"].to_list()
    assert sorted(trades) == run.sim.symbols["btcusdt"].sent_trade_ids
    book = run.lake.read("book", "binanceusdm", SYMBOL)
    assert book.filter(pl.col("is_snapshot"))["update_id"].n_unique() == 2
    from mdpipe.crosscheck import book_vs_bbo

    cc = book_vs_bbo(book, run.lake.read("bbo", "binanceusdm", SYMBOL))
    assert cc.compared > 100 and cc.matched == cc.compared
