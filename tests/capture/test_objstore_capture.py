"""Two captures of different markets write one s3:// lake (moto's S3 server on 127.0.0.1) while
the Dagster compaction job rolls their files up; the store is stopped for a while and comes
back. Every trade and book row the captures published is in the bucket exactly once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from mdpipe.capture.daemon import Capture, CaptureConfig
from mdpipe.defs.compaction import COMPACTION_TAG, compaction_job, compaction_run_request
from mdpipe.defs.resources import LakeResource
from mdpipe.lake import Lake, parse_rollup_name
from mdpipe.venues.binance.simulator import ExchangeSim
from tests.capture.conftest import BTC_FILES, ETH_FILES
from tests.conftest import S3Server

DATES = ("2024-08-08", "2024-08-09")
MARKETS = {"BTC/USDT": "binance:BTC-USDT", "ETH/USDT": "binance:ETH-USDT"}


class CompactionLoop:
    """The compaction job for every partition of both markets, over and over in a thread,
    until stopped (runs that fail while the store is down are just failed runs)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.instance = dg.DagsterInstance.ephemeral()
        self.instance.add_dynamic_partitions("market", list(MARKETS.values()))
        self.stop_flag = threading.Event()
        self.passes = 0
        self.succeeded = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def run_once(self) -> int:
        ok = 0
        for date in DATES:
            for market in MARKETS.values():
                req = compaction_run_request(date, market)
                assert req.tags[COMPACTION_TAG] == f"{date}|{market}"
                res = compaction_job.execute_in_process(
                    instance=self.instance,
                    partition_key=req.partition_key,
                    tags=req.tags,
                    resources={"lake": LakeResource(path=self.url)},
                    raise_on_error=False,
                )
                ok += int(res.success)
        self.passes += 1
        self.succeeded += ok
        return ok

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            self.run_once()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(600)


def capture_for(sim: ExchangeSim, symbol: str, url: str, spool: Path) -> Capture:
    return Capture(
        CaptureConfig(
            symbols=(symbol,),
            lake=url,
            spool=str(spool),
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            flush_interval_s=0.3,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.4,
        )
    )


async def run_two_captures(server: S3Server, url: str, spool: Path) -> dict[str, Any]:
    sims = {
        "BTC/USDT": ExchangeSim(BTC_FILES, limit_events=12_000, start_grace_s=1.0),
        "ETH/USDT": ExchangeSim(ETH_FILES, limit_events=12_000, start_grace_s=1.0),
    }
    for sim in sims.values():
        await sim.start()
    caps = {sym: capture_for(sim, sym, url, spool) for sym, sim in sims.items()}
    compaction = CompactionLoop(url)
    out: dict[str, Any] = {"caps": caps, "sims": sims, "compaction": compaction}
    try:
        for cap in caps.values():
            await cap.start()
        # both captures have objects in the bucket; then compaction runs alongside them
        for cap in caps.values():
            await cap.events.wait_for(lambda c=cap: c.status.objects_uploaded.total() > 0, 120)
        compaction.start()
        # the store goes away: uploads fail, the data waits in the spools, health says why
        server.stop()
        for cap in caps.values():
            await cap.events.wait_for(
                lambda c=cap: c.status.upload_errors.total() > 0 and c.status.spool is not None
                and c.status.spool()[0] > 0,
                300,
            )  # fmt: skip
            healthy, body = cap.health()
            assert not healthy
            assert any(r.startswith("object store unreachable") for r in body["reasons"])
            out.setdefault("spooled", []).append(cap.status.spool()[0])  # type: ignore[misc]
        # the store comes back: the next passes drain the spools and close the episode
        server.start()
        for sym, cap in caps.items():
            await asyncio.wait_for(sims[sym].finished.wait(), 300)
            await cap.events.wait_for(
                lambda c=cap: c.is_idle(synced=True) and not c.uploader.failing,  # type: ignore[union-attr]
                300,
            )
    finally:
        for cap in caps.values():
            await cap.stop()
        for sim in sims.values():
            await sim.stop()
        compaction.stop()
    return out


@pytest.fixture(scope="module")
def two_captures(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[str, Any]:
    import boto3

    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    try:
        boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket="two-captures")
        url = "s3://two-captures/lake"
        out = asyncio.run(run_two_captures(s3_server, url, tmp_path_factory.mktemp("spool")))
        out["lake"] = Lake(url)
        out["final_compaction"] = out["compaction"].run_once()
        yield out
    finally:
        mp.undo()


@pytest.mark.parametrize("symbol", list(MARKETS))
def test_every_trade_and_book_row_once_after_an_outage(
    two_captures: dict[str, Any], symbol: str
) -> None:
    lake: Lake = two_captures["lake"]
    cap: Capture = two_captures["caps"][symbol]
    sim: ExchangeSim = two_captures["sims"][symbol]
    assert min(two_captures["spooled"]) > 0  # the outage really held data back
    trades = lake.read("trades", "binance", symbol)
    ids = trades["trade_id"].to_list()
    assert len(ids) == len(set(ids)), "a trade is in the bucket twice"
    assert sorted(ids) == sorted(sim.symbols[symbol.replace("/", "").lower()].sent_trade_ids)
    book = lake.read("book", "binance", symbol)
    key = ["update_id", "side", "price", "is_snapshot"]
    assert book.height == book.select(key).unique().height, "a book row is in the bucket twice"
    assert book.height == cap.status.rows_published.value("book")  # nothing lost
    assert trades.height == cap.status.rows_published.value("trades")
    # the spool is empty, the episode closed, the upload counters add up
    assert cap.status.spool is not None and cap.status.spool()[:2] == (0, 0)
    assert cap.status.upload_errors.total() > 0
    closed = [e for e in cap.episodes if e.kind == "store_unreachable"]
    assert closed and all(e.resolved_ns is not None for e in closed)


def test_files_carry_writer_ids_and_compaction_rolled_them_up(
    two_captures: dict[str, Any],
) -> None:
    lake: Lake = two_captures["lake"]
    writers = {sym: cap.writer_id for sym, cap in two_captures["caps"].items()}
    assert len(set(writers.values())) == 2 and all(writers.values())
    for sym, writer in writers.items():
        files = lake.files("book", "binance", sym)
        assert files and all(f.name.startswith(f"cap-{writer}-") for f in files)
        assert any(parse_rollup_name(f.name) for f in files), "nothing was rolled up"
    raw = [f.name for f in (lake.root / "raw").rglob("*.jsonl.gz")]
    assert {n.split(".", 1)[1].removesuffix(".jsonl.gz") for n in raw} == set(writers.values())
    assert two_captures["compaction"].succeeded > 0 and two_captures["final_compaction"] == 4


def test_a_compaction_after_everything_changes_no_row(two_captures: dict[str, Any]) -> None:
    lake: Lake = two_captures["lake"]
    before = {s: lake.read("book", "binance", s).height for s in MARKETS}
    assert two_captures["compaction"].run_once() == 4
    assert {s: lake.read("book", "binance", s).height for s in MARKETS} == before
    assert lake.read("trades").select(pl.len()).item() == sum(
        c.status.rows_published.value("trades") for c in two_captures["caps"].values()
    )
