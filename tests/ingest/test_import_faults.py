"""Edited copies of the real recordings: futures rules, gaps, bad input, crashes, CSV dumps."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from mdpipe.cli import main as cli_main
from mdpipe.crosscheck import book_vs_bbo
from mdpipe.ingest import import_paths
from mdpipe.lake import Lake
from mdpipe.venues.base import BookSync
from mdpipe.venues.binance.common import SPOT_RULES, USDM_RULES
from mdpipe.venues.binance.normalizer import fold_book
from tests.conftest import BTC_FILES, ETH_FILES


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def _write(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- futures rules ----------------------------------------------------------------------------


def _as_futures(lines: list[str]) -> list[str]:
    """Re-stamp a spot recording as USD-M futures: every diff gets ``pu`` = the previous diff's
    ``u`` and ``T`` = ``E``, and the snapshot gets ``E``/``T`` (what /fapi/v1/depth returns).
    Ids are kept, so the spot bookTicker cross-check still applies."""
    out, prev_u = [], None
    for line in lines:
        ts, msg = line.split(" ", 1)
        obj = json.loads(msg)
        if "lastUpdateId" in obj:
            obj = {"lastUpdateId": obj["lastUpdateId"], "E": 0, "T": 0, **obj}
        elif obj["data"].get("e") == "depthUpdate":
            d = obj["data"]
            d["T"] = d["E"]
            d["pu"] = prev_u if prev_u is not None else d["U"] - 1
            prev_u = d["u"]
        out.append(f"{ts} {json.dumps(obj, separators=(',', ':'))}")
    return out


def test_futures_recording_is_detected_and_synced_by_pu_chain(tmp_path: Path) -> None:
    src = _write(tmp_path / "btcusdt_fut.gz", _as_futures(_lines(BTC_FILES[0])))
    lake = Lake(tmp_path / "lake")
    report = import_paths([src], lake)
    assert report.ok, report.errors
    stats = report.sync["binanceusdm"]["BTC/USDT:USDT"]
    assert stats["applied"] == 3451 - 2 and stats["dropped"] == 2
    book = lake.read("book", "binanceusdm", "BTC/USDT:USDT")
    bbo = lake.read("bbo", "binanceusdm", "BTC/USDT:USDT")
    check = book_vs_bbo(book, bbo)
    assert check.ok and check.compared > 400
    assert (tmp_path / "lake/book/venue=binanceusdm/symbol=BTC-USDT-USDT").is_dir()


def test_futures_broken_pu_chain_is_a_gap(tmp_path: Path) -> None:
    lines = _as_futures(_lines(BTC_FILES[0]))
    depth_idx = [i for i, ln in enumerate(lines) if '"depthUpdate"' in ln]
    victim = depth_idx[100]
    obj = json.loads(lines[victim].split(" ", 1)[1])
    obj["data"]["pu"] -= 7  # the chain no longer links
    lines[victim] = lines[victim].split(" ", 1)[0] + " " + json.dumps(obj)
    lake = Lake(tmp_path / "lake")
    report = import_paths([_write(tmp_path / "f.gz", lines)], lake)
    gaps = lake.read("gaps", "binanceusdm")
    assert gaps["kind"].to_list() == ["sequence_gap"]
    assert "expected pu=" in gaps["detail"][0]
    assert report.sync["binanceusdm"]["BTC/USDT:USDT"]["applied"] == 100 - 2


def test_sync_rules_differ_between_spot_and_futures() -> None:
    # A diff ending exactly at lastUpdateId: spot drops it (u <= lastUpdateId), futures applies it.
    spot, fut = BookSync(SPOT_RULES), BookSync(USDM_RULES)
    for s in (spot, fut):
        s.on_diff(1, 90, 100, 89)
        s.on_snapshot(2, 100)
    assert spot.applied == 0 and spot.dropped == 1
    assert fut.applied == 1
    # Spot: the first diff may start at lastUpdateId + 1 exactly.
    s = BookSync(SPOT_RULES)
    s.on_snapshot(1, 100)
    assert s.on_diff(2, 101, 105, -1) == ([2], [])
    # ... and must chain by U == previous u + 1 afterwards.
    out, gaps = s.on_diff(3, 107, 110, -1)
    assert out == [] and gaps[0].prev_update_id == 105 and gaps[0].next_update_id == 107


# --- a sequence gap in a spot recording ---------------------------------------------------------


def test_deleted_diff_is_a_gap_and_book_resumes_only_after_a_snapshot(tmp_path: Path) -> None:
    lines = _lines(BTC_FILES[0])
    depth_idx = [i for i, ln in enumerate(lines) if "@depth@100ms" in ln]
    gone_line = depth_idx[500]
    gone = json.loads(lines[gone_line].split(" ", 1)[1])["data"]
    prev = json.loads(lines[depth_idx[499]].split(" ", 1)[1])["data"]
    # A REST snapshot arrives 1000 diffs later: build it from the intact recording's book.
    intact = Lake(tmp_path / "intact")
    import_paths([BTC_FILES[0]], intact)
    book = intact.read("book", "binance", "BTC/USDT")
    resume_line = depth_idx[1500]
    resume_u = json.loads(lines[resume_line].split(" ", 1)[1])["data"]["u"]
    state = fold_book(None, book.filter(pl.col("update_id") <= resume_u))
    snap = {
        "lastUpdateId": resume_u,
        "bids": [
            [f"{p:.8f}", f"{q:.8f}"]
            for p, q in state.filter(pl.col("side") == "bid")
            .sort("price", descending=True)
            .select("price", "qty")
            .rows()
        ],
        "asks": [
            [f"{p:.8f}", f"{q:.8f}"]
            for p, q in state.filter(pl.col("side") == "ask")
            .sort("price")
            .select("price", "qty")
            .rows()
        ],
    }
    ts = lines[resume_line].split(" ", 1)[0]
    edited = lines[:gone_line] + lines[gone_line + 1 : resume_line + 1]
    edited += [f"{ts} {json.dumps(snap)}", *lines[resume_line + 1 :]]
    lake = Lake(tmp_path / "lake")
    report = import_paths([_write(tmp_path / "btcusdt_gap.gz", edited)], lake)
    assert report.ok, report.errors
    gaps = lake.read("gaps", "binance", "BTC/USDT")
    assert gaps.height == 1
    g = gaps.row(0, named=True)
    assert g["kind"] == "sequence_gap"
    assert g["prev_update_id"] == prev["u"]
    assert g["next_update_id"] == json.loads(lines[depth_idx[501]].split(" ", 1)[1])["data"]["U"]
    assert str(gone["U"] - prev["u"] - 1 + gone["u"] - gone["U"] + 1) in g["detail"]
    got = lake.read("book", "binance", "BTC/USDT")
    ids = got["update_id"]
    # No book row between the gap and the snapshot; rows again from the snapshot on.
    assert ids.filter((ids > prev["u"]) & (ids < resume_u)).len() == 0
    assert got.filter(pl.col("is_snapshot") & (pl.col("update_id") == resume_u)).height > 0
    check = book_vs_bbo(got, lake.read("bbo", "binance", "BTC/USDT"))
    assert check.ok  # right before the gap, and right again after the resync


# --- bad input ----------------------------------------------------------------------------------


def test_malformed_and_unknown_lines_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    lines = _lines(ETH_FILES[0])
    lines.insert(100, "1723161254087085768 {not json at all")
    lines.insert(200, '1723161254087085769 {"stream":"ethusdt@kline_1m","data":{"e":"kline"}}')
    lines.insert(300, "garbage-without-a-timestamp")
    path = _write(tmp_path / "ethusdt_bad.gz", lines)
    lake = Lake(tmp_path / "lake")
    report = import_paths([path], lake)
    msgs = [str(e) for e in report.errors]
    assert len(msgs) == 3, msgs
    assert any(f"{path}:101: malformed JSON" in m for m in msgs)
    assert any(f"{path}:201: unknown message" in m and "kline" in m for m in msgs)
    assert any(f"{path}:301: expected '<local receive time" in m for m in msgs)
    assert lake.read("trades", "binance", "ETH/USDT").height == 6106
    assert report.sync["binance"]["ETH/USDT"]["applied"] == 3434 - 2
    # The command line says so and exits non-zero.
    assert cli_main(["import", str(path), "--lake", str(tmp_path / "lake2")]) == 1


def test_truncated_gzip_keeps_the_valid_part(tmp_path: Path) -> None:
    blob = BTC_FILES[0].read_bytes()
    path = tmp_path / "btcusdt_trunc.gz"
    path.write_bytes(blob[: len(blob) // 2])
    lake = Lake(tmp_path / "lake")
    report = import_paths([path], lake)
    assert len(report.errors) == 1
    err = report.errors[0]
    assert err.source == str(path) and "truncated" in err.message
    assert err.line == report.lines + 1  # where the file broke off
    trades = lake.read("trades", "binance", "BTC/USDT")
    assert 0 < trades.height < 9757
    assert (trades["trade_id"].diff().drop_nulls() == 1).all()  # a clean prefix, nothing invented
    assert not list((tmp_path / "lake").rglob(".tmp-*"))


def test_empty_file_and_wrong_csv_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "btcusdt_empty.gz"
    empty.write_bytes(b"")
    csv = tmp_path / "BTCUSDT-trades-2024-08-08.csv"
    csv.write_text("a,b,c\n1,2,3\n")
    lake = Lake(tmp_path / "lake")
    report = import_paths([empty, csv], lake)
    msgs = [str(e) for e in report.errors]
    assert any(m.startswith(f"{empty}:1: empty file") for m in msgs), msgs
    assert any(m.startswith(f"{csv}:1: expected 7 columns") for m in msgs), msgs
    assert not list((tmp_path / "lake").rglob("*.parquet"))


# --- Binance public-data dumps -----------------------------------------------------------------


def _dump_from_lake(lake: Lake, dest: Path, header: bool, micros: bool) -> Path:
    t = lake.read("trades", "binance", "BTC/USDT").sort("trade_id")
    unit = 1_000 if micros else 1_000_000
    out = t.select(
        id="trade_id",
        price="price",
        qty="qty",
        quote_qty=pl.col("price") * pl.col("qty"),
        time=pl.col("exch_ts_ns") // unit,
        is_buyer_maker=pl.col("side") == "sell",
        is_best_match=pl.lit(True),
    )
    out.write_csv(dest, include_header=header)
    return dest


@pytest.mark.parametrize(("header", "micros"), [(True, False), (False, True)])
def test_trade_dump_csv_matches_the_stream(
    lake_with_recordings: Lake, tmp_path: Path, header: bool, micros: bool
) -> None:
    csv = _dump_from_lake(
        lake_with_recordings, tmp_path / "BTCUSDT-trades-2024-08-08.csv", header, micros
    )
    lake = Lake(tmp_path / "lake")
    report = import_paths([csv], lake)
    assert report.ok, report.errors
    got = lake.read("trades", "binance", "BTC/USDT").sort("trade_id")
    want = lake_with_recordings.read("trades", "binance", "BTC/USDT").sort("trade_id")
    assert got.select("trade_id", "price", "qty", "side", "exch_ts_ns").equals(
        want.select("trade_id", "price", "qty", "side", "exch_ts_ns")
    )
    assert got["recv_ts_ns"].null_count() == got.height  # a dump has no receive time


def test_agg_trades_dump(tmp_path: Path) -> None:
    csv = tmp_path / "ETHUSDT-aggTrades-2024-08-08.csv"
    csv.write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match\n"
        "100,2680.5,1.5,1000,1002,1723161255342123,true,true\n"
        "101,2680.6,0.5,1003,1003,1723161255343000,false,true\n"
        "102,oops,0.5,1004,1004,1723161255344000,false,true\n"
    )
    lake = Lake(tmp_path / "lake")
    report = import_paths([csv], lake)
    assert [str(e).split(": ")[0] for e in report.errors] == [f"{csv}:4"]
    a = lake.read("agg_trades", "binance", "ETH/USDT")
    assert a["agg_trade_id"].to_list() == [100, 101]
    assert a["side"].to_list() == ["sell", "buy"]
    assert a["exch_ts_ns"][0] == 1723161255342123000


# --- crash safety -------------------------------------------------------------------------------


def test_writer_killed_mid_publish_leaves_no_visible_partial_file(tmp_path: Path) -> None:
    """A subprocess streams a large partition and is SIGKILLed while writing: readers see the
    files published before, never a partial one."""
    lake_dir = tmp_path / "lake"
    script = textwrap.dedent(f"""
        import numpy as np, polars as pl, sys
        from mdpipe.lake import Lake, Partition, PartitionWriter
        lake = Lake({str(lake_dir)!r})
        n = 200_000
        def frame(i):
            return pl.DataFrame({{"venue": "binance", "symbol": "BTC/USDT",
                "exch_ts_ns": np.arange(n) + i * n + 1723161600 * 10**9,
                "recv_ts_ns": np.arange(n), "trade_id": np.arange(n) + i * n,
                "price": np.full(n, 61000.0), "qty": np.full(n, 0.1), "side": "buy"}})
        lake.publish("trades", "binance", "BTC/USDT", "2024-08-09", frame(0), name="first.parquet")
        w = PartitionWriter(lake, Partition("trades", "binance", "BTC/USDT", "2024-08-09"))
        print("ready", flush=True)
        for i in range(1, 100000):
            w.write(frame(i))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    part = lake_dir / "trades/venue=binance/symbol=BTC-USDT/date=2024-08-09"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the temporary file has real content
        tmps = list(part.glob(".tmp-*"))
        if tmps and tmps[0].stat().st_size > 5_000_000:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lake = Lake(lake_dir)
    assert [p.name for p in lake.files("trades")] == ["first.parquet"]
    assert lake.read("trades").height == 200_000
    lake.build_catalog()
    import duckdb

    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    assert con.execute("select count(*) from trades").fetchone() == (200_000,)
    assert lake.remove_stale_tmp() == 1
