"""The capture's one counter API: declared once, read by /stats, /health and Prometheus alike."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mdpipe.capture.metrics import METRIC_NAMES
from mdpipe.capture.status import Events, Status


def scrape(st: Status) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(st.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_every_documented_metric_is_declared_once_and_nothing_else_is_exported() -> None:
    st = Status("binance", ("BTC/USDT",))
    exported = {
        f.name + "_total" if f.type == "counter" else f.name
        for f in st.registry.collect()
        if f.name.startswith("mdpipe_capture")
    }
    assert exported == set(METRIC_NAMES)
    proms = [c.prom for c in st.counters() if c.prom is not None]
    assert len(proms) == len(set(proms))


def test_stats_and_prometheus_read_the_same_counts() -> None:
    st = Status("binance", ("BTC/USDT", "ETH/USDT"))
    st.messages.inc("btcusdt@trade", n=5)
    st.messages.inc("btcusdt@trade", n=2)
    st.snapshot_errors.inc("ETH/USDT", "429")
    st.snapshot_errors.inc("BTC/USDT", "429")
    st.snapshots.inc("ETH/USDT")
    st.snapshots.inc("ETH/USDT")
    st.snapshots.inc("BTC/USDT")
    st.gaps.inc("ETH/USDT", "sequence_gap")
    stats = st.as_dict()
    assert stats["messages"] == {"btcusdt@trade": 7} and stats["messages_total"] == 7
    assert stats["snapshot_errors"] == {"429": 2}
    assert stats["snapshots"] == {"ETH/USDT": 2, "BTC/USDT": 1}
    assert stats["resyncs"] == {"ETH/USDT": 1, "BTC/USDT": 0}
    assert stats["gaps"] == {"ETH/USDT": {"sequence_gap": 1}} and stats["gaps_total"] == 1
    m = scrape(st)
    v = (("venue", "binance"),)
    assert m[("mdpipe_capture_messages_total", (("stream", "btcusdt@trade"), *v))] == 7
    assert m[("mdpipe_capture_resyncs_total", (("symbol", "ETH/USDT"), *v))] == 1
    assert m[("mdpipe_capture_resyncs_total", (("symbol", "BTC/USDT"), *v))] == 0
    assert (
        m[("mdpipe_capture_snapshot_errors_total", (("status", "429"), ("symbol", "ETH/USDT"), *v))]
        == 1
    )
    assert m[("mdpipe_capture_book_synced", (("symbol", "ETH/USDT"), *v))] == 0
    st.set_synced("ETH/USDT", True)
    assert scrape(st)[("mdpipe_capture_book_synced", (("symbol", "ETH/USDT"), *v))] == 1


def test_a_counter_names_its_labels_when_called_wrong() -> None:
    st = Status("binance", ("BTC/USDT",))
    with pytest.raises(ValueError, match=r"mdpipe_capture_gaps.*\('symbol', 'kind'\)"):
        st.gaps.inc("BTC/USDT")


def test_health_lists_open_episodes_until_the_book_is_synced() -> None:
    st = Status("binance", ("BTC/USDT",))
    st.connected = True
    st.stream_seen("btcusdt@depth", "BTC/USDT", time.time_ns())
    st.episode("sequence_gap", "BTC/USDT", "expected U=5", resolved=False)
    ok, body = st.health(stale_after_s=10.0)
    assert not ok and body["reasons"] == ["BTC/USDT: book not synced (waiting for a snapshot)"]
    assert [e["kind"] for e in body["open_episodes"]] == ["sequence_gap"]
    st.set_synced("BTC/USDT", True)
    ok, body = st.health(stale_after_s=10.0)
    assert ok and body["open_episodes"] == []
    assert body["recent_episodes"][0]["resolved_ns"] is not None


def test_events_wake_a_waiter_on_each_change_and_time_out_otherwise() -> None:
    async def main() -> None:
        ev = Events()
        state = {"n": 0}
        waiter = asyncio.create_task(ev.wait_for(lambda: state["n"] >= 2, timeout=10))
        for _ in range(2):
            await asyncio.sleep(0)
            state["n"] += 1
            ev.notify()
        await waiter
        with pytest.raises(TimeoutError):
            await ev.wait_for(lambda: False, timeout=0.05)

    asyncio.run(main())


def test_spool_gauges_are_exported_only_with_a_spool_and_health_names_the_outage() -> None:
    from mdpipe.capture.metrics import SPOOL_METRIC_NAMES

    st = Status("binance", ("BTC/USDT",))
    names = {f.name for f in st.registry.collect()}
    assert not names & set(SPOOL_METRIC_NAMES)
    st.spool = lambda: (3, 4096, 12.5)
    st.episode("store_unreachable", "*", "s3://b/lake: EndpointConnectionError", resolved=False)
    samples = scrape(st)
    assert samples[("mdpipe_capture_spool_files", (("venue", "binance"),))] == 3
    assert samples[("mdpipe_capture_spool_bytes", (("venue", "binance"),))] == 4096
    assert samples[("mdpipe_capture_spool_age_seconds", (("venue", "binance"),))] == 12.5
    _, body = st.health(10.0)
    assert "object store unreachable: 3 file(s) waiting in the spool" in body["reasons"]
    assert st.as_dict()["spool"]["files"] == 3
    st.resolve_open("*", "store_unreachable")
    _, body = st.health(10.0)
    assert not any(r.startswith("object store") for r in body["reasons"])
    assert all(e.resolved_ns is not None for e in st.episodes)


def test_the_spool_alert_rules_are_valid_and_use_exported_metrics() -> None:
    import re
    import shutil
    import subprocess
    from pathlib import Path

    from mdpipe.capture.metrics import SPOOL_METRIC_NAMES

    rules = Path(__file__).resolve().parents[2] / "config" / "prometheus" / "alerts.yml"
    used = set(re.findall(r"mdpipe_capture_[a-z_]+", rules.read_text()))
    assert used and used <= set(METRIC_NAMES) | set(SPOOL_METRIC_NAMES)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
