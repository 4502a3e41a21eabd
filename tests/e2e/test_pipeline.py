"""Every asset materialised through Dagster for the bundled partitions, on a temporary lake.

One module-scoped run (BTC and ETH, 2024-08-08 and 2024-08-09) backs the tests: checks pass,
the day boundary is honest, re-materialising gives identical outputs, run config reaches the
core, parallel runs of two partitions do not conflict, and the report renders in Chromium.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from mdpipe.core.config import BacktestConfig
from mdpipe.core.report import PLOT_NAMES
from mdpipe.defs import build_defs
from mdpipe.defs.assets import LABEL_STAGE_KEYS
from mdpipe.lake import Lake
from mdpipe.pipeline import steps
from mdpipe.run import RunOutcome, execute, register_markets, select_parts
from mdpipe.settings import load_settings

ASSETS = ("features", "signals", "labels", "cv_folds", "evaluation")
PARTS = [f"{d}|binance:{s}-USDT" for d in ("2024-08-08", "2024-08-09") for s in ("BTC", "ETH")]
CHROMIUM = Path("/usr/bin/chromium")


def derived_frames(lake: Lake) -> dict[str, pl.DataFrame]:
    out = {}
    for asset in ASSETS:
        for f in lake.files(steps.derived(asset)):
            out[f"{asset}/{f.parent.parent.name}/{f.parent.name}"] = pl.read_parquet(f)
    return out


def run_all(lake: Lake, instance: dg.DagsterInstance, **kw: Any) -> RunOutcome:
    register_markets(instance, lake)
    return execute(lake, select_parts(lake), instance=instance, **kw)


@pytest.fixture(scope="module")
def piped(lake_with_recordings: Lake, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lake = Lake(tmp_path_factory.mktemp("pipe") / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    instance = dg.DagsterInstance.ephemeral()
    first = run_all(lake, instance)
    frames = derived_frames(lake)
    return {"lake": lake, "instance": instance, "outcome": first, "frames": frames}


def test_every_asset_materialised_with_checks_passing(piped: dict[str, Any]) -> None:
    outcome: RunOutcome = piped["outcome"]
    assert outcome.ok, (outcome.runs, outcome.failed_checks)
    assert not outcome.warnings  # no gaps, clock offsets within bounds on the bundled data
    assert sorted(outcome.reports) == sorted(PARTS)
    frames = piped["frames"]
    assert len(frames) == len(ASSETS) * len(PARTS)
    for key, df in frames.items():
        if key.startswith(("features", "labels", "evaluation")):
            assert df.height > 0, key
    instance: dg.DagsterInstance = piped["instance"]
    for asset in ASSETS:
        mats = instance.get_materialized_partitions(dg.AssetKey(asset))
        assert sorted(mats) == sorted(PARTS), asset
    # the ticks observations were recorded, and the features checks all evaluated and passed
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("features"), "no_crossed_book"), limit=10
    )
    assert len(records) == 4
    assert Path(outcome.summary_report or "").exists()


def test_features_warm_up_from_the_previous_day(piped: dict[str, Any]) -> None:
    frames = piped["frames"]
    day8 = frames["features/symbol=BTC-USDT/date=2024-08-08"]
    day9 = frames["features/symbol=BTC-USDT/date=2024-08-09"]
    assert day8["is_warmup"].sum() > 0  # the first day has nothing to warm up on
    assert day9["is_warmup"].sum() == 0  # day 9 starts warm: day 8 was replayed first
    start9 = steps.Part("2024-08-09", "binance", "BTC/USDT").start_ns
    assert day9["ts_ns"].min() >= start9
    assert day8["ts_ns"].max() < start9


def test_labels_read_the_next_day_or_are_censored(piped: dict[str, Any]) -> None:
    frames = piped["frames"]
    end8 = steps.Part("2024-08-08", "binance", "BTC/USDT").end_ns
    for sym in ("BTC", "ETH"):
        lab8 = frames[f"labels/symbol={sym}-USDT/date=2024-08-08"]
        lab9 = frames[f"labels/symbol={sym}-USDT/date=2024-08-09"]
        # day 8 ends six minutes after the recording starts; its labels run into day 9
        crossing = lab8.filter(pl.col("t_end_ns") > end8)
        assert crossing.height > 0
        assert not crossing["censored"].any()
        # day 9 has no day 10: labels whose horizon passes the last event are censored
        last9 = frames[f"features/symbol={sym}-USDT/date=2024-08-09"]["ts_ns"].max()
        horizon = lab9.filter(pl.col("t_end_ns") > last9)
        assert horizon.height > 0 and horizon["censored"].all()
        assert not lab9.filter(pl.col("t_end_ns") <= last9)["censored"].any()


def test_rematerialising_gives_identical_outputs(piped: dict[str, Any]) -> None:
    lake: Lake = piped["lake"]
    before = piped["frames"]
    again = run_all(lake, piped["instance"])
    assert again.ok
    after = derived_frames(lake)
    assert sorted(after) == sorted(before)
    for key, df in before.items():
        assert after[key].equals(df), key
    # one file per partition: re-running replaced, never appended
    for asset in ASSETS:
        for f in lake.files(steps.derived(asset)):
            assert [p.name for p in f.parent.glob("*.parquet")] == ["part-0.parquet"]
    sig = before["signals/symbol=BTC-USDT/date=2024-08-08"]
    assert sig["signal_id"].n_unique() == sig.height > 0


def test_run_config_reaches_labels_and_evaluation(piped: dict[str, Any], tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(piped["lake"].root, lake.root)
    part = [p for p in select_parts(lake) if p.label == "2024-08-08|binance:BTC-USDT"]
    with dg.DagsterInstance.ephemeral() as instance:
        register_markets(instance, lake)
        free_costs = load_settings(sets=["fee_rate=0", "backtest.slippage_bps=0"], environ={})
        out = execute(lake, part, instance=instance, settings=free_costs)
        assert out.ok
        # `--set` is set once, on the `backtest` resource, and reaches all three assets
        for asset in ("labels", "cv_folds", "evaluation"):
            [rec] = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
            cfg = rec.asset_materialization.metadata["config"].value  # type: ignore[union-attr]
            assert (cfg["fee_rate"], cfg["slippage_bps"]) == (0.0, 0.0), asset
    key = "labels/symbol=BTC-USDT/date=2024-08-08"
    free = pl.read_parquet(lake.files("derived/labels", "binance", "BTC/USDT", "2024-08-08")[0])
    costly = piped["frames"][key]
    both = free.join(costly, on=["signal_id", "ts_ns"], suffix="_costly").filter(
        ~pl.col("censored") & ~pl.col("censored_costly")
    )
    assert both.height == free.filter(~pl.col("censored")).height > 0
    # barriers are on the mid, so costs change the money, not the outcome
    assert (both["barrier"] == both["barrier_costly"]).all()
    # taker fee 0.1 % and 5 bps slippage on each leg: ~0.3 % of notional per round trip
    cost = both["ret"] - both["ret_costly"]
    assert cost.min() > 0.0025 and cost.max() < 0.0035
    with pytest.raises(ValueError, match=r"--set \[backtest\] fee_rate: .*fee_rate is a fraction"):
        load_settings(sets=["fee_rate=2.0"], environ={})


BTC8 = "2024-08-08|binance:BTC-USDT"


def run_label_stage(
    lake: Lake, instance: dg.DagsterInstance, run_config: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    """labels -> cv_folds -> evaluation of BTC 2024-08-08 with raw Dagster run config (what the
    launchpad or `dagster asset materialize --config-json` sends)."""
    register_markets(instance, lake)
    job = build_defs(str(lake.root)).resolve_job_def("pipeline_job")
    return job.execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=BTC8,
        asset_selection=LABEL_STAGE_KEYS,
        raise_on_error=False,
    )


def test_backtest_settings_set_once_reach_labels_folds_and_evaluation(
    piped: dict[str, Any], tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(piped["lake"].root, lake.root)
    settings = {"fee_rate": 0.0, "barrier_price": "trade", "cv_n_folds": 3}
    expected = BacktestConfig.from_mapping(settings).to_dict()
    with dg.DagsterInstance.ephemeral() as instance:
        res = run_label_stage(lake, instance, {"resources": {"backtest": {"config": settings}}})
        assert res.success
        meta = {
            k.to_user_string(): m.metadata
            for k in LABEL_STAGE_KEYS
            for m in [res.asset_materializations_for_node(k.to_user_string())[0]]
        }
    # every asset records the effective settings, and they are the ones set once
    for asset, md in meta.items():
        assert md["config"].value == expected, asset
    # labels: no fee, so a label's return is exactly its price move (spread and slippage are in
    # the entry and exit prices); with the default fee it is 0.1 % of notional per leg lower
    lab = pl.read_parquet(lake.files("derived/labels", "binance", "BTC/USDT", "2024-08-08")[0])
    done = lab.filter(~pl.col("censored"))
    move = (
        pl.col("direction") * (pl.col("exit_price") - pl.col("entry_price")) / pl.col("entry_price")
    )
    assert done.height > 0
    assert done.select(((pl.col("ret") - move).abs() < 1e-12).all()).item()
    costly = piped["frames"]["labels/symbol=BTC-USDT/date=2024-08-08"].filter(~pl.col("censored"))
    assert costly.select(((pl.col("ret") - move).abs() > 1e-3).all()).item()
    # cv_folds: three folds; evaluation: scored on those three folds
    folds = pl.read_parquet(lake.files("derived/cv_folds", "binance", "BTC/USDT", "2024-08-08")[0])
    assert sorted(folds["fold"].unique().to_list()) == [0, 1, 2]
    assert meta["cv_folds"]["folds"].value == 3
    ev = pl.read_parquet(lake.files("derived/evaluation", "binance", "BTC/USDT", "2024-08-08")[0])
    assert sorted(ev.filter(pl.col("fold") >= 0)["fold"].unique().to_list()) == [0, 1, 2]
    # the report states the same settings
    report = steps.report_dir(lake, steps.Part.from_keys(*BTC8.split("|"))) / "report.html"
    html = report.read_text()
    assert '<td class="l">barrier_price</td><td class="l">trade</td>' in html
    assert '<td class="l">fee_rate</td><td class="l">0.0</td>' in html


def test_a_bad_backtest_setting_fails_the_run_with_the_core_message(
    piped: dict[str, Any], tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(piped["lake"].root, lake.root)
    before = {f: f.stat().st_mtime_ns for f in lake.files("derived/labels")}
    bad = {"resources": {"backtest": {"config": {"stop_loss_pct": -1.0}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        res = run_label_stage(lake, instance, bad)
        assert not res.success
        assert not res.get_asset_materialization_events()
        errors = [
            e.event_specific_data.error.to_string()
            for e in res.all_events
            if getattr(e.event_specific_data, "error", None) is not None
        ]
    assert any("BacktestConfig.stop_loss_pct must be > 0, got -1.0" in e for e in errors), errors
    # nothing was read or written: the labels on disk are the previous run's
    assert {f: f.stat().st_mtime_ns for f in lake.files("derived/labels")} == before


def test_two_partitions_in_parallel_processes_do_not_conflict(
    piped: dict[str, Any], lake_with_recordings: Lake, tmp_path: Path
) -> None:
    """Two `mdpipe run` processes (one market each) write into one lake at the same time."""
    lake = Lake(tmp_path / "lake")
    shutil.copytree(lake_with_recordings.root, lake.root)
    env = dict(os.environ)  # both record into the suite's instance (tests/conftest.py)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mdpipe.cli", "run", "--lake", str(lake.root), "--market", m],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for m in ("binance:BTC-USDT", "binance:ETH-USDT")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o
    after = derived_frames(lake)
    assert sorted(after) == sorted(piped["frames"])
    for key, df in piped["frames"].items():
        assert after[key].equals(df), key


# ---------------------------------------------------------------- the report in a real browser


class _Cdp:
    """Just enough of the Chrome DevTools Protocol: commands, and events collected meanwhile."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(
                json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            )


def test_report_opens_in_headless_chromium_with_its_plots(
    piped: dict[str, Any], tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            "/usr/bin/chromium is absent (apt-get install -y chromium); .ci/run installs it"
        )
    report = Path(piped["outcome"].reports["2024-08-08|binance:BTC-USDT"])
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,2000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited early"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        cdp = _Cdp(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            cdp.call(f"{domain}.enable")
        cdp.call("Page.navigate", url=report.as_uri())
        cdp.wait_for("Page.loadEventFired")
        res = cdp.call(
            "Runtime.evaluate",
            expression="JSON.stringify({title: document.title,"
            " figures: Array.from(document.querySelectorAll('figure')).map(f => f.id),"
            " images: Array.from(document.images).map(i => [i.complete, i.naturalWidth,"
            " i.naturalHeight]), tables: document.querySelectorAll('table').length})",
            returnByValue=True,
        )
        info = json.loads(res["result"]["value"])
        shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        errors = [
            e
            for e in cdp.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        ]
        cdp.ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not errors, errors
    assert "2024-08-08|binance:BTC-USDT" in info["title"]
    assert {f"fig-{n}" for n in PLOT_NAMES} <= set(info["figures"])
    assert len(info["images"]) >= len(PLOT_NAMES)
    for complete, w, h in info["images"]:
        assert complete and w > 100 and h > 100  # every embedded PNG decoded and has a size
    assert info["tables"] >= 3
    assert (tmp_path / "report.png").stat().st_size > 50_000
