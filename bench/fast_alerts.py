"""Signal written -> alert delivered with both paths on: the fast path next to the Dagster daemon.

    .venv/bin/python bench/fast_alerts.py [--signals 20] [--interval 5]

Same method as bench/alerts.py (whose daemon figure, p95 12.26 s, is the baseline this issue
starts from), in one run and on one lake, with `dagster-daemon run` ticking the live-signal
sensor every --interval seconds and launching a process per run the production way throughout:

  sensor only   a signal file is published (what capture's online engine does) and nothing else:
                the baseline, measured again here so the ratio is of the same machine and load;
  + fast path   the same, and the publisher hands the row to `mdpipe.alerts.fastpath.FastPath`
                (exactly what capture's LiveSignals does after publishing);
  serve post    a signal POSTed to a `mdpipe serve` process (its own fast path); latency from
                the request being sent.

Latency: written (file published / POST sent) -> the loopback Slack server receiving the
message naming the signal; Discord and Telegram are checked to receive every signal too.
Signals are spaced uniformly at random within the sensor period, as live signals are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.alerts import arrival, env_for, pct, publish_signal  # noqa: E402
from mdpipe.alerts.channels import clients_from_env  # noqa: E402
from mdpipe.alerts.fastpath import FastPath  # noqa: E402
from mdpipe.alerts.ledger import default_ledger_path  # noqa: E402
from mdpipe.alerts.loopback import FakeChatAPIs  # noqa: E402
from mdpipe.lake import Lake  # noqa: E402

TOKEN = "bench-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, i: int) -> tuple[str, float]:
    body = json.dumps({"timestamp": time.time() - 0.2, "signal_type": "bench_post",
                       "score": 1.0 + i / 100, "symbol": "BTC/USDT", "venue": "binance"})  # fmt: skip
    req = urllib.request.Request(
        url + "/api/v1/signals", data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["signal_id"], t0


def wait_http(url: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signals", type=int, default=20)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    random.seed(11)
    load0 = os.getloadavg()[0]
    n, interval = args.signals, args.interval
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d, FakeChatAPIs() as apis:
        tmp = Path(d)
        home = tmp / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        ws = tmp / "workspace.yaml"
        ws.write_text(
            "load_from:\n  - python_module:\n      module_name: mdpipe.defs.alerts\n"
            f"      attribute: alert_defs\n      working_directory: {ROOT}\n"
        )
        lake = Lake(tmp / "lake")
        env = {**os.environ, **env_for(apis, lake.root, interval), "DAGSTER_HOME": str(home),
               "MDPIPE_API_TOKEN": TOKEN}  # fmt: skip
        env.pop("MDPIPE_ALERT_LEDGER", None)
        dlog = (tmp / "daemon.log").open("wb")
        daemon = subprocess.Popen([str(ROOT / ".venv/bin/dagster-daemon"), "run", "-w", str(ws)],
                                  cwd=ROOT, env=env, stdout=dlog, stderr=subprocess.STDOUT)  # fmt: skip
        port = free_port()
        slog = (tmp / "serve.log").open("wb")
        serve = subprocess.Popen([sys.executable, "-m", "mdpipe.cli", "serve", "--lake",
                                  str(lake.root), "--port", str(port), "--log-level", "warning"],
                                 cwd=ROOT, env=env, stdout=slog, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health", 120)
            sid, _ = publish_signal(lake, 9999, "warmup")  # first tick + first run: not timed
            if arrival(apis, sid, timeout_s=180) is None:
                raise SystemExit("the daemon's warm-up signal never arrived; see daemon.log")
            for phase in ("sensor only", "+ fast path", "serve post"):
                fp = None
                if phase == "+ fast path":
                    clients, _ = clients_from_env(env)
                    fp = FastPath(default_ledger_path(lake.root), clients, name="bench").start()
                lats = []
                for i in range(n):
                    time.sleep(random.uniform(0, interval))
                    if phase == "serve post":
                        sid, t0 = post(url, i)
                    else:
                        sid, t0 = publish_signal(lake, i, phase.replace(" ", "").replace("+", "fp"))
                        if fp is not None:
                            from mdpipe.alerts.message import AlertSignal

                            f = next((lake.root / "live" / "signals").rglob(f"{sid}.parquet"))
                            import polars as pl

                            fp.submit(
                                [
                                    AlertSignal.from_row(r)
                                    for r in pl.read_parquet(f).iter_rows(named=True)
                                ]
                            )
                    t1 = arrival(apis, sid, timeout_s=interval + 120)
                    if t1 is None:
                        print(f"  {phase} {i}: NOT delivered", flush=True)
                        continue
                    lats.append(t1 - t0)
                    print(f"  {phase} {i}: {t1 - t0:.2f} s", flush=True)
                out[phase] = lats
                if fp is not None:
                    fp.stop(30)
            # every channel got every signal, once (the sensor's runs found them delivered)
            end = time.monotonic() + 60
            while time.monotonic() < end and not all(
                len(apis.messages(a)) == len(apis.messages("slack"))
                for a in ("discord", "telegram")
            ):
                time.sleep(0.2)
            counts = {a: len(apis.messages(a)) for a in ("slack", "discord", "telegram")}
            sids = [str(m.body) for m in apis.messages("slack")]
        finally:
            for p in (serve, daemon):
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            dlog.close()
            slog.close()
    base = pct(out["sensor only"], 95)
    rows = [
        f"| {name} | {len(v)}/{n} | {pct(v, 50):.2f} | {pct(v, 95):.2f} | {max(v) if v else float('nan'):.2f} | "
        f"{base / pct(v, 95):.1f}x |"
        for name, v in out.items()
    ]  # fmt: skip
    fast95 = max(pct(out["+ fast path"], 95), pct(out["serve post"], 95))
    verdict = "met" if fast95 <= 2.0 else "NOT met"
    section = f"""
## alerts with the fast path: signal written -> alert delivered ({time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC)

Command: `.venv/bin/python bench/fast_alerts.py --signals {n} --interval {interval}`

Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work: load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}.
`dagster-daemon run` ticks the live-signal sensor every {interval} s and launches a process per
run throughout (both paths on); one lake, one ledger, loopback Slack/Discord/Telegram. Latency =
signal file published (or POST sent to `mdpipe serve`) -> Slack message received; signals spaced
at random within the sensor period. Messages received: {counts} (each signal once per channel;
{len(sids)} Slack messages for {1 + 3 * n} signals incl. the warm-up).

| path | delivered | p50 s | p95 s | max s | p95 vs sensor only |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Target p95 <= 2 s with both paths on: **{verdict}** (fast path p95 {pct(out["+ fast path"], 95):.2f} s,
posted p95 {pct(out["serve post"], 95):.2f} s; the sensor-only path measured in this run: p95 {base:.2f} s,
earlier recorded 12.26 s).
"""
    print(section)
    if not args.no_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
