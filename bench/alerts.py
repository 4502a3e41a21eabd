"""Signal written -> alert delivered, on loopback, through the real Dagster daemon.

    .venv/bin/python bench/alerts.py [--signals 15] [--interval 5]

Two paths, same signals, same loopback Slack/Discord/Telegram (mdpipe.alerts.loopback):

  daemon     `dagster-daemon run` on a temporary DAGSTER_HOME, code location `mdpipe.defs.alerts`:
             the sensor ticks every --interval seconds and each run is launched the production
             way (default run launcher: a fresh process per run). This is what the target is
             about: p95 <= sensor interval + 10 s.
  in-process baseline: the same sensor evaluated in this process every --interval seconds and
             the job executed in process (no daemon, no run process): what the delivery code
             itself costs, so the difference is Dagster's run launch.

Each signal is one file published to <lake>/live/signals at a random point of the sensor period
(so waits are uniformly spread over the interval, as for live signals); latency is the time
from the file's publish to the loopback server receiving the Slack message that names it (the
Discord and Telegram copies are checked too). Appends a section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdpipe.alerts.loopback import FakeChatAPIs  # noqa: E402
from mdpipe.lake import Lake  # noqa: E402


def publish_signal(lake: Lake, i: int, tag: str) -> tuple[str, float]:
    now = time.time_ns()
    sid = f"bench-{tag}-{i:04d}-{now}"
    row = {
        "venue": "binance",
        "symbol": "BTC/USDT",
        "ts_ns": now,
        "signal_id": sid,
        "signal_type": "drift",
        "direction": 1,
        "score": 1.5,
        "update_id": i,
        "trigger": "imbalance_5",
        "trigger_value": 0.8,
        "threshold": 0.5,
        "mid": 61802.5,
        "recv_ts_ns": now,
        "emitted_ns": now,
    }
    date = time.strftime("%Y-%m-%d", time.gmtime(now // 1_000_000_000))
    lake.publish(
        "live/signals", "binance", "BTC/USDT", date, pl.DataFrame([row]), name=f"{sid}.parquet"
    )
    return sid, now / 1e9


def arrival(apis: FakeChatAPIs, sid: str, timeout_s: float) -> float | None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for m in apis.messages("slack"):
            if sid in str(m.body):
                # the other two channels must have it as well (checked, not timed)
                return m.t
        time.sleep(0.05)
    return None


def env_for(apis: FakeChatAPIs, lake: Path, interval: int) -> dict[str, str]:
    return {
        "MDPIPE_LAKE": str(lake),
        "SLACK_WEBHOOK_URL": apis.slack_webhook_url,
        "DISCORD_WEBHOOK_URL": apis.discord_webhook_url,
        "TELEGRAM_BOT_TOKEN": apis.telegram_token,
        "TELEGRAM_CHAT_ID": "-1",
        "TELEGRAM_API_BASE_URL": apis.url,
        "MDPIPE_ALERT_SENSOR_INTERVAL": str(interval),
    }


def measure(apis: FakeChatAPIs, lake: Lake, n: int, interval: int, tag: str) -> list[float]:
    lats = []
    for i in range(n):
        time.sleep(random.uniform(0, interval))
        sid, t0 = publish_signal(lake, i, tag)
        t1 = arrival(apis, sid, timeout_s=interval + 120)
        if t1 is None:
            print(f"  {tag} signal {i}: NOT delivered within {interval + 120} s", flush=True)
            continue
        lats.append(t1 - t0)
        print(f"  {tag} signal {i}: {t1 - t0:.2f} s", flush=True)
    return lats


def run_daemon(n: int, interval: int, tmp: Path) -> tuple[list[float], float]:
    home = tmp / "dagster_home"
    home.mkdir()
    # the project's instance settings (QueuedRunCoordinator, 2 concurrent runs)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    ws = tmp / "workspace.yaml"
    ws.write_text(
        "load_from:\n  - python_module:\n      module_name: mdpipe.defs.alerts\n"
        f"      attribute: alert_defs\n      working_directory: {ROOT}\n"
    )
    lake = Lake(tmp / "lake_daemon")
    with FakeChatAPIs() as apis:
        env = {**os.environ, **env_for(apis, lake.root, interval), "DAGSTER_HOME": str(home)}
        log = (tmp / "daemon.log").open("wb")
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/dagster-daemon"), "run", "-w", str(ws)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            t = time.monotonic()
            sid, _ = publish_signal(lake, 9999, "warmup")  # first tick + first run: not timed
            if arrival(apis, sid, timeout_s=180) is None:
                raise SystemExit("daemon mode: warm-up signal never arrived; see " + str(log.name))
            warm = time.monotonic() - t
            lats = measure(apis, lake, n, interval, "daemon")
            end = time.monotonic() + 30
            while time.monotonic() < end and not all(
                len(apis.messages(a)) == len(apis.messages("slack"))
                for a in ("discord", "telegram")
            ):
                time.sleep(0.1)
            for api in ("discord", "telegram"):
                assert len(apis.messages(api)) == len(apis.messages("slack")), api
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return lats, warm


def run_in_process(n: int, interval: int, tmp: Path) -> list[float]:
    import threading

    import dagster as dg

    from mdpipe.defs.alerts import build_alert_defs, channel_resources, settings_resource

    lake = Lake(tmp / "lake_inproc")
    home = tmp / "dagster_home_inproc"
    home.mkdir()
    with FakeChatAPIs() as apis:
        env = env_for(apis, lake.root, interval)
        os.environ.update(env)
        resources = {**channel_resources(env), "alert_settings": settings_resource(env)}
        defs = build_alert_defs(env, sensor_interval_s=interval, resources=resources)
        sensor = defs.get_sensor_def("live_signal_sensor")
        job = defs.get_job_def("alert_job")
        stop = threading.Event()

        def daemon() -> None:
            with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
                cursor = None
                while not stop.is_set():
                    t = time.monotonic()
                    with dg.build_sensor_context(
                        instance=inst, cursor=cursor, resources=resources
                    ) as ctx:
                        res = sensor(ctx)
                    cursor = res.cursor
                    for req in res.run_requests or []:
                        job.execute_in_process(run_config=req.run_config, instance=inst,
                                               tags={"dagster/run_key": req.run_key or ""},
                                               raise_on_error=False)  # fmt: skip
                    stop.wait(max(0.0, interval - (time.monotonic() - t)))

        th = threading.Thread(target=daemon, daemon=True)
        th.start()
        sid, _ = publish_signal(lake, 9999, "warmup")
        arrival(apis, sid, timeout_s=120)
        lats = measure(apis, lake, n, interval, "in-process")
        stop.set()
        th.join(60)
    return lats


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signals", type=int, default=15)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    random.seed(7)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d:
        tmp = Path(d)
        print(f"daemon mode: dagster-daemon, sensor every {args.interval} s", flush=True)
        d_lats, warm = run_daemon(args.signals, args.interval, tmp)
        print("in-process baseline", flush=True)
        b_lats = run_in_process(args.signals, args.interval, tmp)
    target = args.interval + 10
    dy = (ROOT / "dagster.yaml").read_text()
    m = re.search(r"dequeue_interval_seconds:\s*(\d+)", dy)
    coordinator = (
        "QueuedRunCoordinator, dequeue every " + (m.group(1) if m else "5 (default)") + " s"
    )
    rows = []
    for name, lats in (
        ("dagster-daemon (run per process)", d_lats),
        ("in-process baseline", b_lats),
    ):
        rows.append(
            f"| {name} | {len(lats)}/{args.signals} | {pct(lats, 50):.2f} | {pct(lats, 95):.2f} | "
            f"{max(lats) if lats else float('nan'):.2f} |"
        )
    p95 = pct(d_lats, 95)
    verdict = "met" if len(d_lats) == args.signals and p95 <= target else "NOT met"
    section = f"""
## alerts: signal written -> alert delivered ({time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC)

Command: `.venv/bin/python bench/alerts.py --signals {args.signals} --interval {args.interval}`

Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work: load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}. Instance settings: the project's `dagster.yaml` ({coordinator}).

Loopback Slack webhook + Discord webhook + Telegram (`mdpipe.alerts.loopback`); one signal file per
measurement, published at a random point of the sensor period; latency = file published ->
Slack message received (Discord and Telegram received every message too). First signal (code
location load, first tick, first run) excluded: {warm:.1f} s in daemon mode.

| path | delivered | p50 s | p95 s | max s |
|---|---|---|---|---|
{chr(10).join(rows)}

Target p95 <= sensor interval + 10 s = {target} s: **{verdict}** (p95 {p95:.2f} s). Dagster's run
launch (a new process per run) costs {pct(d_lats, 50) - pct(b_lats, 50):.2f} s at the median over the in-process baseline.
"""
    print(section)
    if not args.no_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
