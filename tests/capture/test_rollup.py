"""Hourly roll-up of capture's files: the lake mechanism on real data, the crash window, and the
real capture rolling periods (shortened from an hour) while it streams and across a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mdpipe.capture.daemon import Capture
from mdpipe.crosscheck import book_vs_bbo
from mdpipe.lake import Lake, Partition, parse_rollup_name, parse_sequence_name
from mdpipe.venues.binance.simulator import ExchangeSim
from tests.capture.conftest import Run, Step, run_capture
from tests.capture.test_capture_live import assert_trades_exactly_once

V, SYM = "binance", "BTC/USDT"
# two consecutive UTC hours the split files are "published" in (any past hours do)
HOURS = (
    int(dt.datetime(2024, 8, 9, 10, tzinfo=dt.UTC).timestamp()) * 10**9,
    int(dt.datetime(2024, 8, 9, 11, tzinfo=dt.UTC).timestamp()) * 10**9,
)


def cap_name(ns: int) -> str:
    """A name as the capture makes it for publish time `ns`."""
    t = dt.datetime.fromtimestamp(ns // 10**9, tz=dt.UTC)
    return f"cap-{t:%Y%m%dT%H}-{ns:019d}.parquet"


def event_starts(df: pl.DataFrame, table: str) -> list[int]:
    """Row positions where an event begins: a book event is a run of rows sharing update_id and
    is_snapshot; a trade is one row."""
    if table != "book":
        return list(range(df.height))
    key = (pl.col("update_id") != pl.col("update_id").shift(1)) | (
        pl.col("is_snapshot") != pl.col("is_snapshot").shift(1)
    )
    return df.with_row_index("i").filter(key.fill_null(True))["i"].to_list()


def split_into_cap_files(
    src: Lake, dst: Lake, table: str, date: str, n_files: int
) -> tuple[pl.DataFrame, list[Path]]:
    """Publish `src`'s partition into `dst` as `n_files` capture-named files cut at event
    boundaries, the first half in HOURS[0] and the rest in HOURS[1]."""
    df = src.read(table, V, SYM, date)
    starts = event_starts(df, table)
    cuts = [starts[round(k * len(starts) / n_files)] for k in range(n_files)] + [df.height]
    paths = []
    for k in range(n_files):
        hour = HOURS[0] if k < n_files // 2 else HOURS[1]
        ns = hour + 1_000_000_000 + k * 7_000_000_001  # strictly increasing inside each hour
        chunk = df.slice(cuts[k], cuts[k + 1] - cuts[k])
        paths.append(dst.publish(table, V, SYM, date, chunk, name=cap_name(ns)))
    return df, paths


def roll_up_by_hour(lake: Lake, part: Partition) -> list[Path]:
    groups: dict[str, list[Path]] = {}
    for path, prefix, _ in lake.sequence_files(part):
        groups.setdefault(prefix, []).append(path)
    out = [lake.compact(part, files) for files in groups.values()]
    return [p for p in out if p is not None]


def duck_count(lake: Lake, view: str) -> int:
    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {view}").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


@pytest.fixture()
def split_lake(lake_with_recordings: Lake, tmp_path: Path) -> tuple[Lake, dict[str, pl.DataFrame]]:
    """BTC/USDT book (both days), trades and bbo of the imported recordings as ~300 capture
    files across two hours (bbo as one file: it is only the cross-check's reference)."""
    src, dst = lake_with_recordings, Lake(tmp_path / "lake")
    before: dict[str, pl.DataFrame] = {}
    for date in ("2024-08-08", "2024-08-09"):
        before[f"book/{date}"], _ = split_into_cap_files(src, dst, "book", date, 60)
        before[f"trades/{date}"], _ = split_into_cap_files(src, dst, "trades", date, 40)
        dst.publish("bbo", V, SYM, date, src.read("bbo", V, SYM, date), name="bbo.parquet")
    return dst, before


def test_compact_merges_each_hour_into_one_file_keeping_rows_order_and_book(
    split_lake: tuple[Lake, dict[str, pl.DataFrame]], lake_with_recordings: Lake
) -> None:
    lake, before = split_lake
    reference = book_vs_bbo(lake_with_recordings.read("book", V, SYM), lake.read("bbo", V, SYM))
    assert reference.ok and reference.compared > 1000
    lake.build_catalog()
    counts = {t: duck_count(lake, t) for t in ("book", "trades")}
    assert counts == {
        "book": sum(df.height for k, df in before.items() if k.startswith("book")),
        "trades": sum(df.height for k, df in before.items() if k.startswith("trades")),
    }

    for key, df in before.items():
        table, date = key.split("/")
        part = Partition(table, V, SYM, date)
        n_before = len(lake.files(table, V, SYM, date))
        rolled = roll_up_by_hour(lake, part)
        files = lake.files(table, V, SYM, date)
        # one file per hour, each a roll-up named after the first file it merged
        assert files == sorted(rolled) and len(files) == 2, (key, files)
        assert n_before >= 40
        hours = [parse_rollup_name(f.name) for f in files]
        assert [h[1] if h else None for h in hours] == sorted(h[1] for h in hours if h)
        assert {h[0] if h else "" for h in hours} == {"cap-20240809T10", "cap-20240809T11"}
        # nothing else left in the directory (no covered file, no temp file)
        d = lake.partition_dir(table, V, SYM, date)
        assert sorted(d.iterdir()) == files
        # identical rows in identical order
        assert_frame_equal(lake.read(table, V, SYM, date), df)

    # the book replays to the exchange's own top of book exactly as before
    after = book_vs_bbo(lake.read("book", V, SYM), lake.read("bbo", V, SYM))
    assert (after.compared, after.matched) == (reference.compared, reference.compared)
    # DuckDB views (glob) count the same rows, with the same catalog and a rebuilt one
    assert {t: duck_count(lake, t) for t in ("book", "trades")} == counts
    lake.build_catalog()
    assert {t: duck_count(lake, t) for t in ("book", "trades")} == counts
    # and each book date partition still starts with a snapshot
    for date in ("2024-08-08", "2024-08-09"):
        assert lake.read("book", V, SYM, date)["is_snapshot"][0]


def test_crash_between_publish_and_unlink_leaves_no_duplicates_for_readers(
    split_lake: tuple[Lake, dict[str, pl.DataFrame]], tmp_path: Path
) -> None:
    lake, before = split_lake
    date = "2024-08-09"
    part = Partition("book", V, SYM, date)
    seq = lake.sequence_files(part)
    first_hour = [p for p, prefix, _ in seq if prefix == "cap-20240809T10"]
    assert len(first_hour) == 30
    # the crash: the roll-up is published, its files not yet unlinked (restore their bytes)
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in first_hour:
        shutil.copy2(p, saved / p.name)
    rollup = lake.compact(part, first_hour)
    assert rollup is not None and not any(p.exists() for p in first_hour)
    for p in first_hour:
        shutil.copy2(saved / p.name, p)
    d = lake.partition_dir("book", V, SYM, date)
    assert len(list(d.glob("*.parquet"))) == 1 + 60  # both: the window a crash can freeze

    # Python readers skip the covered files: no duplicate, same order
    files = lake.files("book", V, SYM, date)
    assert rollup in files and not set(first_hour) & set(files)
    assert len(files) == 1 + 30
    assert_frame_equal(lake.read("book", V, SYM, date), before[f"book/{date}"])
    assert lake.scan("book", V, SYM).collect().height == sum(
        df.height for k, df in before.items() if k.startswith("book")
    )
    # the roll-up is not itself a sequence-named file; the other hour's files are untouched
    assert parse_sequence_name(rollup.name) is None
    assert all(parse_sequence_name(f.name) for f in files if f != rollup)
    assert lake.sequence_files(part)[0][1] == "cap-20240809T11"

    # the next pass finishes the roll-up: the covered files are deleted, nothing else
    assert lake.finish_compactions(part) == 30
    assert not any(p.exists() for p in first_hour) and rollup.exists()
    assert lake.finish_compactions(part) == 0
    assert_frame_equal(lake.read("book", V, SYM, date), before[f"book/{date}"])


def test_compact_refuses_files_of_two_prefixes_or_foreign_names(
    split_lake: tuple[Lake, dict[str, pl.DataFrame]],
) -> None:
    lake, _ = split_lake
    part = Partition("trades", V, SYM, "2024-08-08")
    files = [p for p, _, _ in lake.sequence_files(part)]
    with pytest.raises(ValueError, match="one prefix"):
        lake.compact(part, files)
    with pytest.raises(ValueError, match="not a sequence-named file"):
        lake.compact(part, [lake.partition_dir("bbo", V, SYM, "2024-08-08") / "bbo.parquet"])
    assert [p for p, _, _ in lake.sequence_files(part)] == files  # untouched


# ---- the real capture --------------------------------------------------------------------------


def files_by_period(lake: Lake, roll_ns: int) -> dict[tuple[Path, int], list[str]]:
    """Every capture file of the lake, keyed by (partition dir, roll period of its first ns)."""
    out: dict[tuple[Path, int], list[str]] = {}
    for f in lake.root.rglob("cap-*.parquet"):
        r, s = parse_rollup_name(f.name), parse_sequence_name(f.name)
        ns = r[1] if r else s[1] if s else None
        assert ns is not None, f
        out.setdefault((f.parent, ns // roll_ns), []).append(f.name)
    return out


def newest_name_ns(lake: Lake) -> int:
    best = 0
    for f in lake.root.rglob("cap-*.parquet"):
        r, s = parse_rollup_name(f.name), parse_sequence_name(f.name)
        best = max(best, r[2] if r else s[1] if s else 0)
    return best


def all_rolled(already: int = 0) -> Step:
    """A step: after the replay, wait until every trade is published and a roll-up pass has run
    past the newest file, so every period of the run is over and rolled up. `already`: trades
    an earlier run put in the lake (the capture drops them as duplicates)."""

    async def step(sim: ExchangeSim, cap: Capture) -> None:
        await _all_rolled(sim, cap, already)

    return step


async def _all_rolled(sim: ExchangeSim, cap: Capture, already: int) -> None:
    await asyncio.wait_for(sim.finished.wait(), 120)
    want = sum(len(st.sent_trade_ids) for st in sim.symbols.values()) - already

    await cap.events.wait_for(
        lambda: (
            cap.status.trades.total() >= want
            and cap.is_idle(synced=False, published=True)
            and cap.get_stats()["compacted_before_ns"] > newest_name_ns(cap.lake)
        ),
        60,
    )


def assert_one_file_per_period(run: Run, roll_ns: int) -> dict[tuple[Path, int], list[str]]:
    periods = files_by_period(run.lake, roll_ns)
    several = {k: v for k, v in periods.items() if len(v) > 1}
    assert not several, several
    return periods


def test_capture_rolls_each_period_into_one_file_while_streaming(tmp_path: Path) -> None:
    roll_s = 1.0  # an "hour" of one second: the replay takes several

    def prepare(cap: Capture) -> None:
        cap.roll_period_s = roll_s

    run = asyncio.run(
        run_capture(tmp_path, flush_interval_s=0.2, prepare=prepare, steps=[all_rolled()])
    )
    roll_ns = int(roll_s * 1e9)
    periods = assert_one_file_per_period(run, roll_ns)
    book_dirs = {d for d, _ in periods if "book" in d.parts}
    assert len(book_dirs) == 4  # two symbols x two dates
    book_periods = {p for d, p in periods if d in book_dirs}
    assert len(book_periods) >= 3, periods
    s = run.stats
    assert s["compactions"]["book"] >= 3 and s["compactions"]["trades"] >= 3, s["compactions"]
    assert s["files_compacted"]["book"] > s["compactions"]["book"]
    assert s["compaction_errors"] == 0
    assert sum(s["files_compacted"].values()) + len(periods) - sum(
        s["compactions"].values()
    ) == sum(v for k, v in s["files_published"].items() if k != "raw")
    # the lake is the same lake: every trade once, the book matches the exchange's top of book
    assert_trades_exactly_once(run, "BTC/USDT")
    assert_trades_exactly_once(run, "ETH/USDT")
    btc, eth = run.crosscheck("BTC/USDT"), run.crosscheck("ETH/USDT")
    assert (btc.compared, btc.matched) == (1072, 1072), btc.mismatches
    assert (eth.compared, eth.matched) == (1056, 1056), eth.mismatches
    assert run.gaps().height == 0
    for date in ("2024-08-08", "2024-08-09"):
        assert run.lake.read("book", "binance", "BTC/USDT", date)["is_snapshot"][0]


def test_restart_finishes_an_interrupted_rollup_and_rolls_up_the_previous_run(
    tmp_path: Path,
) -> None:
    # 3 s periods: with flushes every 0.2 s some period holds several files even when a loaded
    # machine stretches flushes to a second apart (1 s periods then held one file each)
    roll_s = 3.0
    roll_ns = int(roll_s * 1e9)

    # run 1 keeps every flush's file (roll-up off), as if it had stopped within its hour
    run1 = asyncio.run(
        run_capture(tmp_path, limit_events=10_000, flush_interval_s=0.2, compact_hourly=False)
    )
    lake = run1.lake
    trades1 = {s: lake.read("trades", V, s) for s in ("BTC/USDT", "ETH/USDT")}
    assert max(len(v) for v in files_by_period(lake, roll_ns).values()) > 1

    # then crashed in a roll-up: a period of BTC trades merged, its files not yet unlinked
    # (the BTC trades period with the most files: which one has several depends on the load)
    periods: dict[tuple[Partition, int], list[Path]] = {}
    for pd in lake.partition_dirs("trades", V, SYM):
        for p, _, ns in lake.sequence_files(pd):
            periods.setdefault((pd, ns // roll_ns), []).append(p)
    (part, _), first = max(periods.items(), key=lambda kv: len(kv[1]))
    assert len(first) > 1, periods
    saved = {p: p.read_bytes() for p in first}
    rollup = lake.compact(part, first)
    for p, data in saved.items():
        p.write_bytes(data)
    assert rollup is not None and all(p.exists() for p in first)
    assert_frame_equal(lake.read("trades", V, SYM), trades1[SYM])  # readers: no duplicate

    def prepare(cap: Capture) -> None:
        cap.roll_period_s = roll_s

    # run 2: the same exchange from the start; its start finishes the roll-up and rolls up
    # every period of run 1 (all over by now), then it rolls its own periods
    already = sum(df.height for df in trades1.values())
    run2 = asyncio.run(
        run_capture(
            tmp_path,
            flush_interval_s=0.2,
            prepare=prepare,
            steps=[all_rolled(already)],
            already_trades=already,
        )
    )
    assert not any(p.exists() for p in first)
    assert run2.stats["covered_files_removed"] == len(first)
    assert_one_file_per_period(run2, roll_ns)
    assert run2.stats["compaction_errors"] == 0
    # run 2 dropped the trades run 1 had (seeded from the lake): every trade exactly once
    assert_trades_exactly_once(run2, "BTC/USDT")
    assert_trades_exactly_once(run2, "ETH/USDT")
    for sym in ("BTC/USDT", "ETH/USDT"):
        rec = run2.gaps(sym).filter(pl.col("kind") == "reconnect")
        assert rec.height == 1 and "capture started after" in rec["detail"][0]
        cc = run2.crosscheck(sym)
        assert cc.compared > 1000 and cc.matched == cc.compared, cc.mismatches


def test_roll_period_must_divide_an_hour(tmp_path: Path) -> None:
    from mdpipe.capture.daemon import CaptureConfig

    cap = Capture(CaptureConfig(symbols=(SYM,), lake=str(tmp_path / "lake")))
    assert cap.roll_period_s == 3600.0
    for bad in (7.0, 0.0, -1.0, 7200.0):
        with pytest.raises(ValueError, match="divide 3600"):
            cap.roll_period_s = bad
    cap.roll_period_s = 0.5
    assert cap.roll_period_s == 0.5


# ---- the online engine's live/signals files ----------------------------------------------------
def _signals(i: int, n: int = 2) -> pl.DataFrame:
    ts = HOURS[0] + i * 10**9
    return pl.DataFrame({
        "venue": [V] * n, "symbol": [SYM] * n, "ts_ns": [ts + k for k in range(n)],
        "signal_id": [f"x{i:03d}{k}" for k in range(n)], "signal_type": ["drift"] * n,
        "direction": [1] * n, "score": [1.5] * n, "recv_ts_ns": [ts] * n,
    })  # fmt: skip


def test_live_signal_files_are_sequence_named_and_rolled_up_by_the_capture_pass(
    tmp_path: Path,
) -> None:
    from mdpipe.capture.config import CaptureConfig
    from mdpipe.capture.live_signals import LiveSignals
    from mdpipe.capture.publisher import Publisher
    from mdpipe.capture.status import Status
    from mdpipe.lake import JournalWriter

    lake = Lake(tmp_path / "lake")
    ls = LiveSignals(lake, V, warm_up=False)
    ls.writer_id = "w1"
    config = CaptureConfig(symbols=(SYM,), lake=str(lake.root))
    pub = Publisher(config, lake, JournalWriter(lake.root, V), Status(V, [SYM]))
    ls.on_file.append(pub.signal_file_published)
    for i in range(4):
        ls._publish(_signals(i))
    files = lake.files("live/signals")
    seqs = [parse_sequence_name(f.name) for f in files]
    assert all(s is not None and s[0].startswith("sig-w1-") for s in seqs)
    ns = [s[1] for s in seqs if s is not None]
    assert len(ns) == 4 and ns == sorted(set(ns))  # one file per publish, increasing names
    part = Partition("live/signals", V, SYM, "2024-08-09")
    assert set(pub._dirty) == {part}
    # the capture's pass once the period is over: one roll-up per prefix (an hour)
    res = pub._compact_sync([part], cutoff=max(ns) + 1)
    prefixes = {s[0] for s in seqs if s is not None}
    assert res.compactions == {"live/signals": len(prefixes)} and res.errors == 0
    assert all(parse_rollup_name(f.name) for f in lake.files("live/signals"))
    assert lake.read("live/signals")["signal_id"].to_list() == [
        f"x{i:03d}{k}" for i in range(4) for k in range(2)
    ]
    # a restarted engine names its files above every name already in the lake, even when its
    # clock is behind them (here: a file named an hour ahead)
    ahead = time.time_ns() + 3600 * 10**9
    lake.publish(
        "live/signals", V, SYM, "2024-08-09", _signals(8), name=f"sig-w1-X-{ahead}.parquet"
    )
    ls2 = LiveSignals(lake, V, warm_up=False)
    ls2._publish(_signals(9))
    newest = max(lake.files("live/signals"), key=lambda f: f.stat().st_mtime_ns)
    seq = parse_sequence_name(newest.name)
    assert seq is not None and seq[1] == ahead + 1
