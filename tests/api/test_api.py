"""The signals API over real HTTP: posting, bad input, idempotency, rate limit, paging, stream.

Every request goes through uvicorn on 127.0.0.1; every rejected request is shown to leave the
lake (and the idempotency store) exactly as it was.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from mdpipe.api.idempotency import DEFAULT_NAME as IDEM_FILE
from mdpipe.api.idempotency import IdempotencyStore
from mdpipe.lake import Lake

from .conftest import OTHER_TOKEN, TOKEN, ServeFn, auth, lake_files

BRIEF = {
    "timestamp": 1696867200.0,
    "signal_type": "buy_imbalance",
    "score": 0.85,
    "symbol": "BTC/USDT",
}


def test_the_briefs_example_is_stored_read_back_and_documented(
    serve: ServeFn, tmp_path: Path
) -> None:
    _s, c = serve()
    r = c.post("/api/v1/signals", json=BRIEF, headers=auth())
    assert r.status_code == 201, r.text
    sid = r.json()["signal_id"]
    assert r.json() == {"signal_id": sid, "source": "api", "venue": "external",
                        "symbol": "BTC/USDT", "ts_ns": 1696867200 * 10**9}  # fmt: skip
    f = (tmp_path / "lake/live/signals/venue=external/symbol=BTC-USDT/date=2023-10-09"
         / f"api-{sid}.parquet")  # fmt: skip
    row = pl.read_parquet(f).row(0, named=True)
    assert (row["source"], row["signal_type"], row["score"], row["direction"]) == (
        "api",
        "buy_imbalance",
        0.85,
        1,
    )
    one = c.get(f"/api/v1/signals/{sid}").json()
    assert one["signal_id"] == sid and one["source"] == "api" and one["symbol"] == "BTC/USDT"
    page = c.get("/api/v1/signals", params={"source": "api"}).json()
    assert [x["signal_id"] for x in page["signals"]] == [sid] and page["next_cursor"] is None
    assert c.get("/api/v1/signals/nosuchid").status_code == 404
    # the OpenAPI page documents the post's body, the header and the example
    spec = c.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/signals"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["examples"][0] == BRIEF
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert c.get("/docs").status_code == 200
    # optional fields, a venue and a perpetual symbol
    full = {**BRIEF, "venue": "binanceusdm", "symbol": "ETH/USDT:USDT", "direction": -1,
            "price": 1580.5, "details": {"source_tool": "x", "window_s": 5}}  # fmt: skip
    r = c.post("/api/v1/signals", json=full, headers=auth(OTHER_TOKEN))
    assert r.status_code == 201, r.text
    got = c.get(f"/api/v1/signals/{r.json()['signal_id']}").json()
    assert (got["venue"], got["direction"], got["price"]) == ("binanceusdm", -1, 1580.5)
    assert got["details"] == {"source_tool": "x", "window_s": 5}


BAD: list[tuple[str, Any, int, str | None]] = [
    ("score not a number", {**BRIEF, "score": "abc"}, 422, "score"),
    ("score as a string", {**BRIEF, "score": "0.85"}, 422, "score"),
    (
        "score infinite",
        '{"timestamp": 1696867200.0, "signal_type": "x", "score": Infinity, "symbol": "BTC/USDT"}',
        422,
        "score",
    ),
    (
        "score NaN",
        '{"timestamp": 1696867200.0, "signal_type": "x", "score": NaN, "symbol": "BTC/USDT"}',
        422,
        "score",
    ),
    ("type not snake_case", {**BRIEF, "signal_type": "Buy-Imbalance"}, 422, "signal_type"),
    ("type too long", {**BRIEF, "signal_type": "a" * 49}, 422, "signal_type"),
    ("timestamp before 2009", {**BRIEF, "timestamp": 1_000_000_000.0}, 422, "timestamp"),
    ("timestamp in ms", {**BRIEF, "timestamp": 1696867200000.0}, 422, "timestamp"),
    ("symbol malformed", {**BRIEF, "symbol": "btcusdt"}, 422, "symbol"),
    ("direction not +-1", {**BRIEF, "direction": 2}, 422, "direction"),
    ("unknown field", {**BRIEF, "scroe": 1.0}, 422, "scroe"),
    ("missing field", {k: v for k, v in BRIEF.items() if k != "score"}, 422, "score"),
    ("malformed JSON", '{"timestamp": 1696867200.0, "signal_type": ', 422, None),
    ("not an object", "[1, 2]", 422, None),
]


def test_every_bad_input_gets_its_status_and_field_and_stores_nothing(
    serve: ServeFn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _s, c = serve(sets=("api.body_limit_bytes=2048",))
    assert c.post("/api/v1/signals", json=BRIEF, headers=auth()).status_code == 201
    root = tmp_path / "lake"
    before = lake_files(root)
    idem = IdempotencyStore(root / IDEM_FILE)
    for why, body, status, field in BAD:
        content = body if isinstance(body, str) else json.dumps(body)
        r = c.post("/api/v1/signals", content=content, headers={**auth(), "Content-Type": "application/json",
                                                               "Idempotency-Key": f"k-{why}"})  # fmt: skip
        assert r.status_code == status, (why, r.text)
        err = r.json()
        if field is not None:
            assert err["field"] == field, (why, err)
            assert field in err["detail"], (why, err)
        else:
            assert (
                "JSON" in err["detail"]
                or "object" in err["detail"].lower()
                or "dict" in err["detail"].lower()
            ), (why, err)
    future = {**BRIEF, "timestamp": time.time() + 3600}
    r = c.post("/api/v1/signals", json=future, headers=auth())
    assert (
        r.status_code == 422 and r.json()["field"] == "timestamp" and "future" in r.json()["detail"]
    )
    # authorisation: none, wrong, wrong scheme -> 401 (checked before the body)
    for h in ({}, auth("wrong-token"), {"Authorization": f"Basic {TOKEN}"}):
        r = c.post("/api/v1/signals", json=BRIEF, headers=h)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    r = c.post("/api/v1/signals", content="{not json", headers=auth("wrong"))
    assert r.status_code == 401
    # over the body limit -> 413
    big = {**BRIEF, "details": {f"k{i}": "x" * 60 for i in range(30)}}
    r = c.post("/api/v1/signals", json=big, headers=auth())
    assert r.status_code == 413, r.text
    assert "2048" in r.json()["detail"]
    assert lake_files(root) == before
    assert idem.count() == 0  # no key of a rejected request is remembered
    # tokens never reach a log line (ours, uvicorn's, httpx's)
    assert TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text
    assert (
        "invalid token"
        in c.post("/api/v1/signals", json=BRIEF, headers=auth("nope")).json()["detail"]
    )


def test_rate_limit_per_token_answers_429_with_retry_after(serve: ServeFn, tmp_path: Path) -> None:
    _s, c = serve(sets=("api.rate_limit=3/minute",))
    for i in range(3):
        assert (
            c.post("/api/v1/signals", json={**BRIEF, "score": i}, headers=auth()).status_code == 201
        )
    before = lake_files(tmp_path / "lake")
    r = c.post("/api/v1/signals", json=BRIEF, headers=auth())
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert lake_files(tmp_path / "lake") == before
    # the other token has its own budget
    assert c.post("/api/v1/signals", json=BRIEF, headers=auth(OTHER_TOKEN)).status_code == 201


def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    serve: ServeFn, tmp_path: Path
) -> None:
    _s, c = serve()
    h = {**auth(), "Idempotency-Key": "order-42"}
    first = c.post("/api/v1/signals", json=BRIEF, headers=h)
    assert first.status_code == 201
    files = lake_files(tmp_path / "lake")
    again = c.post("/api/v1/signals", json=BRIEF, headers=h)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert lake_files(tmp_path / "lake") == files
    other = c.post("/api/v1/signals", json={**BRIEF, "score": 0.9}, headers=h)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
    assert lake_files(tmp_path / "lake") == files
    # the same key under another token is another request
    third = c.post(
        "/api/v1/signals", json=BRIEF, headers={**auth(OTHER_TOKEN), "Idempotency-Key": "order-42"}
    )
    assert third.status_code == 201 and third.json()["signal_id"] != first.json()["signal_id"]
    ids = c.get("/api/v1/signals", params={"source": "api"}).json()["signals"]
    assert len(ids) == 2


def _batch_and_old_live(lake: Lake) -> None:
    """Batch signals in derived/signals and live files written before `source` existed."""
    base = 1_723_161_600_000_000_000  # 2024-08-09
    for day in range(3):
        for k, (venue, sym) in enumerate((("binance", "BTC/USDT"), ("binance", "ETH/USDT"))):
            n = 7
            ts = [base + day * 86_400 * 10**9 + i * 10**9 + k for i in range(n)]
            df = pl.DataFrame({
                "venue": [venue] * n, "symbol": [sym] * n, "ts_ns": ts,
                "signal_id": [f"b{day}{k}{i:03d}" for i in range(n)],
                "signal_type": ["drift" if i % 2 else "burst" for i in range(n)],
                "direction": [1] * n, "score": [1.5] * n,
            })  # fmt: skip
            date = f"2024-08-{9 + day:02d}"
            lake.replace_partition(
                "derived/signals", venue, sym, date, df.with_columns(source=pl.lit("batch"))
            )
            live = df.with_columns(
                signal_id=pl.col("signal_id").str.replace("b", "l"), ts_ns=pl.col("ts_ns") + 500
            )  # no `source`: a file from before the column
            lake.publish("live/signals", venue, sym, date, live, name=f"sig-{day}-{k}.parquet")


def test_paging_filters_and_old_files(serve: ServeFn, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _batch_and_old_live(lake)
    _s, c = serve(lake=lake)
    assert (
        c.post(
            "/api/v1/signals", json={**BRIEF, "timestamp": 1_723_400_000.0}, headers=auth()
        ).status_code
        == 201
    )
    everything = lake.read("live/signals").height + lake.read("derived/signals").height
    assert everything == 85
    # pages of 10 walk every row exactly once, newest first
    got: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/api/v1/signals", params=params).json()
        got += page["signals"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    keys = [(r["ts_ns"], r["signal_id"], r["source"]) for r in got]
    assert len(keys) == everything == len(set(keys))
    assert keys == sorted(keys, reverse=True)
    assert {r["source"] for r in got} == {"live", "batch", "api"}  # old live files read as live
    by = lambda **p: c.get("/api/v1/signals", params={"limit": 1000, **p}).json()["signals"]  # noqa: E731
    assert {r["source"] for r in by(source="live")} == {"live"} and len(by(source="live")) == 42
    assert len(by(source="batch")) == 42 and len(by(source="api")) == 1
    eth = by(market="binance:ETH/USDT")
    assert len(eth) == 42 and {r["symbol"] for r in eth} == {"ETH/USDT"}
    assert len(by(market="binance:ETH-USDT")) == 42 and len(by(market="ETH/USDT")) == 42
    assert {r["signal_type"] for r in by(signal_type="drift")} == {"drift"}
    day2 = by(since="2024-08-10T00:00:00", until="2024-08-11")
    assert len(day2) == 28 and all(
        "2024-08-10" == time.strftime("%Y-%m-%d", time.gmtime(r["ts_ns"] // 10**9)) for r in day2
    )
    assert len(by(since=1_723_248_000, until=1_723_334_400)) == 28
    for params, field in (({"source": "dagster"}, "source"), ({"since": "yesterday"}, "since"),
                          ({"cursor": "garbage"}, "cursor"), ({"limit": 5000}, "limit"),
                          ({"market": "BTCUSDT"}, "market")):  # fmt: skip
        r = c.get("/api/v1/signals", params=params)
        assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)


def test_stream_health_and_metrics(serve: ServeFn, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _batch_and_old_live(lake)
    s, c = serve(lake=lake)
    events: list[dict[str, Any]] = []
    subscribed = threading.Event()
    got_one = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", s.url + "/api/v1/signals/stream", params={"source": "api"}, timeout=30
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith(":"):
                    subscribed.set()
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    got_one.set()
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert subscribed.wait(30)
    sid = c.post(
        "/api/v1/signals", json={**BRIEF, "timestamp": time.time() - 1}, headers=auth()
    ).json()["signal_id"]
    assert got_one.wait(30), "no event within 30 s"
    assert events[0]["signal_id"] == sid and events[0]["source"] == "api"
    h = c.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["lake"]["reachable"]
    assert h.json()["newest_live_signal"]["signal_id"] == "l21006"  # the newest live row
    m = c.get("/metrics").text
    assert 'mdpipe_api_requests_total{method="POST",route="/api/v1/signals",status="201"} 1.0' in m
    assert 'mdpipe_api_signals_posted_total{signal_type="buy_imbalance"} 1.0' in m
    # capture's health is part of ours when configured; a capture that is down makes us 503
    _s2, c2 = serve(lake=lake, sets=("api.capture_health_url=http://127.0.0.1:9/health",))
    h2 = c2.get("/health")
    assert h2.status_code == 503 and h2.json()["capture"]["healthy"] is False


def test_the_token_variable_is_not_a_setting() -> None:
    from mdpipe.settings import load_settings

    s = load_settings(environ={"MDPIPE_API_TOKEN": TOKEN, "MDPIPE_API_PORT": "8123"})
    assert s.api.port == 8123 and TOKEN not in s.to_toml()
