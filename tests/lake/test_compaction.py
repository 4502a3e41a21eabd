"""The compaction job's core (`mdpipe.pipeline.compaction`) on a local lake: each writer's files
of an hour become one roll-up, rows unchanged; a roll-up inside a wider one (two compactions
racing) is covered, so no row is read twice."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from mdpipe.lake import Lake, covered_files, parse_rollup_name, rollup_name
from mdpipe.pipeline.compaction import HOUR_NS, compact_partition

T0 = 1_723_161_600 * 1_000_000_000  # 2024-08-09 00:00 UTC


def trades(first_id: int, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "venue": ["binance"] * n,
            "symbol": ["BTC/USDT"] * n,
            "exch_ts_ns": [T0 + i for i in range(n)],
            "recv_ts_ns": [T0 + i + 5 for i in range(n)],
            "trade_id": list(range(first_id, first_id + n)),
            "price": [60_000.0 + i for i in range(n)],
            "qty": [0.1] * n,
            "side": ["buy", "sell"] * (n // 2),
        }
    )


def test_each_writers_hour_becomes_one_rollup_with_the_same_rows(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for w, writer in enumerate(("hostA.1", "hostB.2")):
        for k in range(6):  # three files in each of two hours
            ns = T0 + (k // 3) * HOUR_NS + k * 1000 + w
            name = f"cap-{writer}-20240809T0{k // 3}-{ns:019d}.parquet"
            lake.publish("trades", "binance", "BTC/USDT", "2024-08-09",
                         trades(10_000 * w + 10 * k, 4), name=name)  # fmt: skip
    before = lake.read("trades").sort("trade_id")
    stats = compact_partition(lake, "binance", "BTC/USDT", "2024-08-09")
    assert stats.rollups == {"trades": 4} and stats.files == {"trades": 12}
    files = lake.files("trades")
    assert len(files) == 4 and all(parse_rollup_name(f.name) for f in files)
    assert_frame_equal(lake.read("trades").sort("trade_id"), before)
    # nothing left to do: a second run changes nothing
    assert compact_partition(lake, "binance", "BTC/USDT", "2024-08-09").rollups == {}


def test_a_rollup_inside_a_wider_one_is_covered(tmp_path: Path) -> None:
    d = tmp_path / "trades" / "venue=binance" / "symbol=BTC-USDT" / "date=2024-08-09"
    narrow = d / rollup_name("cap-w.1-20240809T00", T0 + 1, T0 + 5)
    wide = d / rollup_name("cap-w.1-20240809T00", T0 + 1, T0 + 9)
    other = d / rollup_name("cap-w.2-20240809T00", T0 + 1, T0 + 5)  # another writer
    assert covered_files([narrow, wide, other]) == {narrow}
