"""Monitoring checked by the real tools: promtool on the alerting rules, and a real Prometheus
scraping `mdpipe capture` and `mdpipe serve` during a replay, asked every PromQL expression of
the Grafana dashboard.

Debian's `prometheus` package provides both binaries (`.ci/run` installs it). Where they are
missing the tests skip with the reason, except when MDPIPE_REQUIRE_PROMETHEUS=1 (CI), where a
missing binary is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mdpipe.alerts.loopback import FakeChatAPIs
from mdpipe.lake import Lake
from tests.api.conftest import TOKEN, Served, auth
from tests.sim_thread import SimThread

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "config" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "config" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "mdpipe.json"
FILES = sorted((ROOT / "data" / "binance-spot-2024-08-08").glob("*.gz"))


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        why = f"{binary} not installed (Debian: apt-get install prometheus)"
        if os.environ.get("MDPIPE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(why + "; MDPIPE_REQUIRE_PROMETHEUS=1 says it must be here")
        pytest.skip(why)
    return path


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    test = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], capture_output=True, text=True,
        cwd=RULES_TEST.parent,
    )  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr
    # every alert of rules.yml is exercised by at least one test case that expects it to fire
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {a["alertname"] for c in cases for a in c["alert_rule_test"] if a["exp_alerts"]}
    assert fired == alerts
    conf = subprocess.run(
        [promtool, "check", "config", str(RULES.parent / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert conf.returncode == 0, conf.stdout + conf.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    return [t["expr"] for p in walk(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for the dashboard's variables: every venue, a 1 m rate interval."""
    return expr.replace("$__rate_interval", "1m").replace("$venue", ".*")


# metrics the replay itself must produce (anything else may be legitimately empty: no gap,
# no failed delivery, no reconnect in a clean replay)
FED = (
    "mdpipe_signals_total", "mdpipe_signals_active", "mdpipe_signal_score_bucket",
    "mdpipe_signal_publish_latency_seconds_bucket", "mdpipe_detector_batch_seconds_bucket",
    "mdpipe_detector_events_total", "mdpipe_capture_latency_seconds_bucket",
    "mdpipe_alert_deliveries_total", "mdpipe_alert_messages_total",
    "mdpipe_alert_latency_seconds_bucket", "mdpipe_capture_connected",
    "mdpipe_capture_seconds_since_last_message", "mdpipe_capture_book_synced",
    "mdpipe_capture_messages_total", "mdpipe_capture_write_queue_depth",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:  # 400: the expression does not parse
        return json.loads(e.read())  # type: ignore[no-any-return]


def test_real_prometheus_scrapes_capture_and_serve_and_runs_every_dashboard_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = _need("prometheus")
    from mdpipe.api.app import create_app
    from mdpipe.settings import load_settings

    apis = FakeChatAPIs().start()
    env = {
        "SLACK_WEBHOOK_URL": apis.slack_webhook_url,
        "DISCORD_WEBHOOK_URL": apis.discord_webhook_url,
        "MDPIPE_API_TOKEN": TOKEN,
    }
    lake = Lake(tmp_path / "lake")
    cap_port, prom_port = free_port(), free_port()
    served = Served(create_app(load_settings(environ={}), lake, environ=env)).start()
    api_target = served.url.removeprefix("http://")
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "mdpipe-capture", "static_configs": [{"targets": [f"127.0.0.1:{cap_port}"]}]},
            {"job_name": "mdpipe-api", "static_configs": [{"targets": [api_target]}]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"
    st = SimThread(FILES, speed=40.0, start_grace_s=1.0, limit_events=70_000)
    sim = st.start()
    cap_log = (tmp_path / "capture.log").open("wb")
    cmd = [
        sys.executable, "-m", "mdpipe.cli", "capture", "--venue", "binance",
        "--symbols", "BTC/USDT,ETH/USDT", "--lake", str(lake.root), "--ws-url", sim.ws_url,
        "--rest-url", sim.rest_url, "--metrics-port", str(cap_port), "--flush-interval", "1",
    ]  # fmt: skip
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "TELEGRAM_"))
    }
    cap = subprocess.Popen(
        cmd, cwd=ROOT, stdout=cap_log, stderr=subprocess.STDOUT, env={**child_env, **env}
    )

    def logs():
        return (tmp_path / "capture.log").read_text(errors="replace")[-3000:] + (
            tmp_path / "prometheus.log"
        ).read_text(errors="replace")[-2000:]

    try:
        client = httpx.Client(base_url=served.url, timeout=30)
        posted = 0
        deadline = time.monotonic() + 300
        while not st.finished():
            assert cap.poll() is None and prom.poll() is None, logs()
            assert time.monotonic() < deadline, "the replay did not finish within 300 s"
            if posted < 5:  # a few posts to serve while capture records, so its series exist
                r = client.post("/api/v1/signals", headers=auth(), json={
                    "timestamp": time.time() - 1, "signal_type": "ext_test", "score": 1.0 + posted,
                    "symbol": "BTC/USDT"})  # fmt: skip
                assert r.status_code == 201, r.text
                posted += 1
            st.wait_finished(0.5)  # the replay's end wakes it; the slice bounds the checks above
        # wait until Prometheus holds what the replay fed (a condition, bounded by a deadline)
        missing: list[str] = list(FED)
        while missing:
            missing = [m for m in FED if not query(base, m)["data"]["result"]]
            assert time.monotonic() < deadline + 120, f"never scraped: {missing}\n{logs()}"
            time.sleep(1.0)
        results = {}
        for expr in dashboard_exprs():
            q = grafana_to_promql(expr)
            ans = query(base, q)
            assert ans["status"] == "success", (expr, ans)
            results[expr] = ans["data"]["result"]
        fed = [e for e in results if any(re.search(rf"\b{m.removesuffix('_bucket')}", e) for m in FED)
               and "pending|sending|failed|uncertain" not in e]  # fmt: skip
        empty = [e for e in fed if not results[e]]
        assert not empty, empty
        assert len(fed) >= 20, len(fed)
        # serve is scraped too, and both targets are up
        assert {r["metric"]["job"] for r in query(base, "up == 1")["data"]["result"]} == {
            "mdpipe-capture", "mdpipe-api"}  # fmt: skip
        api = query(base, 'mdpipe_api_requests_total{route="/api/v1/signals",status="201"}')
        assert api["data"]["result"] and float(api["data"]["result"][0]["value"][1]) == posted
        # the alerting rules load and evaluate against the real series without error
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=30) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == 11 and all(rule["health"] in ("ok", "unknown") for rule in rules), (
            rules
        )
        print(f"prometheus: {len(results)} dashboard queries ran, {len(fed)} fed by the replay "
              f"returned data")  # fmt: skip
    finally:
        cap.send_signal(signal.SIGTERM)
        try:
            cap.wait(60)
        except subprocess.TimeoutExpired:
            cap.kill()
        prom.terminate()
        prom.wait(60)
        st.stop()
        served.stop()
        apis.stop()
        cap_log.close()
        prom_log.close()
