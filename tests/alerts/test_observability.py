"""Every metric the Grafana dashboard queries is exported by the code; configs are well-formed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from mdpipe.alerts.channels import FileChannelClient
from mdpipe.alerts.delivery import deliver_channel
from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.metrics import (
    ALERT_METRIC_NAMES,
    SIGNAL_METRIC_NAMES,
    LedgerCollector,
    SignalMetrics,
)
from mdpipe.capture.status import Status

from .conftest import make_signal

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "mdpipe.json"


def _exprs(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                out.append(v)
            else:
                out.extend(_exprs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_exprs(v))
    return out


def dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    return {m for e in _exprs(dash) for m in re.findall(r"\bmdpipe_[a-z0-9_]+", e)}


def exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for fam in registry.collect():
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count"))
    return names


def test_every_dashboard_metric_is_exported(tmp_path: Path) -> None:
    # the registry the capture process serves: capture metrics + the online engine's + ledger's
    reg = Status("binance", ("BTC/USDT",)).registry
    sm = SignalMetrics(reg)
    sm.signals.labels("binance", "BTC/USDT", "drift").inc()
    sm.active.add("binance", "BTC/USDT", "drift", 0)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    # triggering events received 3 s before delivery: the latency histogram must say so
    received = time.time_ns() - 3_000_000_000
    ledger.register([make_signal(i, recv_ns=received) for i in range(2)], ["file"])
    deliver_channel(ledger, FileChannelClient(tmp_path / "out.jsonl"), link=None, run_id="r")
    reg.register(LedgerCollector(ledger.path))
    names = exported(reg)
    wanted = dashboard_metrics()
    assert len(wanted) >= 20
    missing = sorted(wanted - names)
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"
    # the documented name lists are what is exported
    for n in SIGNAL_METRIC_NAMES + ALERT_METRIC_NAMES:
        assert n in names, n
    # and the panels are all there
    for must in (
        "mdpipe_signals_total",
        "mdpipe_signals_active",
        "mdpipe_signal_score_bucket",
        "mdpipe_signal_publish_latency_seconds_bucket",
        "mdpipe_detector_batch_seconds_bucket",
        "mdpipe_alert_deliveries_total",
        "mdpipe_alert_failures_total",
        "mdpipe_alert_latency_seconds_bucket",
        "mdpipe_capture_gaps_total",
        "mdpipe_capture_resyncs_total",
        "mdpipe_capture_reconnects_total",
        "mdpipe_capture_seconds_since_last_message",
        "mdpipe_capture_clock_offset_seconds",
    ):
        assert must in wanted, must
    text = generate_latest(reg).decode()
    assert 'mdpipe_alert_deliveries_total{channel="file"} 2.0' in text
    assert 'mdpipe_alert_latency_seconds_count{channel="file"} 2.0' in text
    assert 'mdpipe_alert_latency_seconds_bucket{channel="file",le="2.0"} 0.0' in text
    assert 'mdpipe_alert_latency_seconds_bucket{channel="file",le="5.0"} 2.0' in text
    assert 'mdpipe_alert_queue{channel="file",status="delivered"} 2.0' in text


def test_dashboard_is_provisioning_ready() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    ds = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = ds["datasources"][0]["uid"]
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == uid
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    prov = yaml.safe_load((ROOT / "config/grafana/provisioning/dashboards/mdpipe.yml").read_text())
    assert prov["providers"][0]["type"] == "file"


def test_prometheus_scrapes_the_capture_process() -> None:
    cfg = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "mdpipe-capture"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9100"]
