"""The live-signal sensor and alert_job on a real Dagster instance, against loopback APIs.

The Dagster daemon's part is played by `tick()`: evaluate the sensor, then launch each run
request unless a run with its run_key already exists (what the daemon does), executing the job
in process on the same instance.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs, Received
from mdpipe.defs.alerts import (
    AlertSettingsResource,
    build_alert_defs,
    channel_resources,
)
from mdpipe.lake import Lake

from .conftest import make_signal, publish_signals

SENSOR = "live_signal_sensor"


class Harness:
    def __init__(self, tmp: Path, env: dict[str, str], instance: dg.DagsterInstance) -> None:
        self.lake = Lake(tmp / "lake")
        self.env = env
        self.instance = instance
        self.resources: dict[str, Any] = {
            **channel_resources(env),
            "alert_settings": AlertSettingsResource(
                lake=dg.EnvVar("MDPIPE_LAKE"),
                dagster_ui_url=dg.EnvVar("MDPIPE_DAGSTER_URL"),
                backoff_initial_s=0.05,
                retry_base_s=0.2,
            ),
        }
        self.defs = build_alert_defs(env, sensor_interval_s=1, resources=self.resources)
        self.cursor: str | None = None
        self.launched: list[dg.ExecuteInProcessResult] = []

    def evaluate(self, cursor: str | None) -> dg.SensorResult:
        sensor = self.defs.get_sensor_def(SENSOR)
        with dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources
        ) as ctx:
            return sensor(ctx)  # type: ignore[no-any-return]

    def tick(self, cursor: str | None = ...) -> tuple[dg.SensorResult, list[str]]:  # type: ignore[assignment]
        """One daemon tick: evaluate, launch what is not launched yet, advance the cursor."""
        res = self.evaluate(self.cursor if cursor is ... else cursor)
        launched = []
        for req in res.run_requests or []:
            if self.run_exists(req.run_key):
                continue
            launched.append(self.launch(req.run_config, req.run_key, req.tags))
        if cursor is ...:
            self.cursor = res.cursor
        return res, launched

    def run_exists(self, run_key: str | None) -> bool:
        runs = self.instance.get_runs(
            filters=dg.RunsFilter(
                tags={"dagster/run_key": run_key or "", "dagster/sensor_name": SENSOR}
            )
        )
        return bool(runs)

    def launch(self, run_config: Any, run_key: str | None, tags: dict[str, str]) -> str:
        job = self.defs.get_job_def("alert_job")
        result = job.execute_in_process(
            run_config=run_config,
            instance=self.instance,
            tags={**tags, "dagster/run_key": run_key or "", "dagster/sensor_name": SENSOR},
            raise_on_error=False,
        )
        self.launched.append(result)
        return result.run_id


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        yield inst


def _env(tmp: Path, apis: FakeChatAPIs, tg: FakeChatAPIs) -> dict[str, str]:
    return {
        "MDPIPE_LAKE": str(tmp / "lake"),
        "MDPIPE_DAGSTER_URL": "http://dagster.test:3000",
        "SLACK_WEBHOOK_URL": apis.slack_webhook_url,
        "DISCORD_WEBHOOK_URL": apis.discord_webhook_url,
        "TELEGRAM_BOT_TOKEN": tg.telegram_token,
        "TELEGRAM_CHAT_ID": "-100777",
        "TELEGRAM_API_BASE_URL": tg.url,
    }


def _setenv(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_API_BASE_URL", "MDPIPE_ALERT_LEDGER"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def covered(msgs: list[Received]) -> int:
    """Signals a channel's messages announce: 1 per single message, N per 'N signals' digest."""
    n = 0
    for m in msgs:
        text = m.body.get("text") or m.body["embeds"][0]["title"]
        hit = re.match(r"(?:<b>)?(\d+) signals", text)
        n += int(hit.group(1)) if hit else 1
    return n


SECRETS_OF = ("SlackSecretPathXyz123", "DiscordSecretTokenAbc-987_zz", "TEST-telegram-token")


def test_sensor_job_dedup_outage_and_secrets(
    tmp_path: Path,
    apis: FakeChatAPIs,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tg = FakeChatAPIs().start()  # Telegram on its own server, so it can go down alone
    try:
        env = _env(tmp_path, apis, tg)
        _setenv(monkeypatch, env)
        h = Harness(tmp_path, env, instance)
        chans = ("slack", "discord", "telegram")

        # nothing yet: the sensor skips and says why
        res, runs = h.tick()
        assert not runs and res.skip_reason and "no new live signals" in str(res.skip_reason)

        # 1. one signal -> one run -> one formatted message per channel
        publish_signals(h.lake, [make_signal(0)], "sig-a.parquet")
        before = h.cursor
        res, runs = h.tick()
        assert len(runs) == 1 and h.launched[-1].success
        key = res.run_requests[0].run_key
        assert len(apis.messages("slack")) == 1 and len(apis.messages("discord")) == 1
        (tmsg,) = tg.messages("telegram")
        assert f"http://dagster.test:3000/runs/{runs[0]}" in tmsg.body["text"]

        # 2. the same tick evaluated again (daemon restart before the cursor was stored):
        #    same run_key, so no second run; and a manual re-execution of that run sends nothing
        res2, runs2 = h.tick(cursor=before)
        assert res2.run_requests[0].run_key == key and runs2 == []
        h.launch(res.run_requests[0].run_config, key + "-rerun", {})
        assert h.launched[-1].success
        assert [len(apis.messages(c)) for c in ("slack", "discord")] == [1, 1]
        assert len(tg.messages("telegram")) == 1
        res, runs = h.tick()
        assert not runs and res.skip_reason

        # 3. Telegram goes down; a burst arrives; Slack and Discord get a digest, Telegram's
        #    rows are kept as failed/pending and the run is marked failed (visible in the UI)
        port = tg.port
        tg.stop()
        publish_signals(
            h.lake, [make_signal(i, symbol="ETH/USDT") for i in range(1, 5)], "sig-b.parquet"
        )
        res, runs = h.tick()
        assert len(runs) == 1 and not h.launched[-1].success
        assert covered(apis.messages("slack")) == 5 and covered(apis.messages("discord")) == 5
        statuses = {
            r["status"] for r in Ledger(h.lake.root / "state/alerts-ledger.sqlite").rows("telegram")
        }
        assert statuses == {"delivered", "failed"}

        # 4. still down at the next tick: a retry run, failing again, nothing lost
        time.sleep(0.3)
        res, runs = h.tick()
        assert len(runs) == 1 and res.run_requests[0].run_key.startswith("retry-")
        assert not h.launched[-1].success

        # 5. back up: the next retry delivers the whole backlog once, in one digest
        tg.start(port=port)
        time.sleep(0.9)  # the failed row's next attempt (backoff doubles per attempt) is due
        deadline = time.monotonic() + 20
        while covered(tg.messages("telegram")) < 5 and time.monotonic() < deadline:
            h.tick()
            time.sleep(0.2)
        assert covered(tg.messages("telegram")) == 5
        assert len(tg.messages("telegram")) == 2  # the first single, then one digest of 4
        res, runs = h.tick()
        assert not runs  # nothing due any more
        for c, server in zip(chans, (apis, apis, tg), strict=True):
            assert covered(server.messages(c)) == 5, c  # every signal once, none twice
        ledger = Ledger(h.lake.root / "state/alerts-ledger.sqlite")
        assert {r["status"] for r in ledger.rows()} == {"delivered"} and len(ledger.rows()) == 15

        # 6. no secret anywhere: run records, event logs, instance storage, Python logs
        texts: list[str] = []
        for run in instance.get_runs():
            texts.append(repr(run.run_config))
            texts.append(repr(run.tags))
            texts.extend(repr(e) for e in instance.all_logs(run.run_id))
        for f in Path(instance.root_directory).rglob("*"):
            if f.is_file():
                texts.append(f.read_bytes().decode("utf-8", "replace"))
        texts.append(caplog.text)
        blob = "\n".join(texts)
        assert "TELEGRAM_BOT_TOKEN" in blob or "alerts:" in blob  # we did scan real content
        for secret in SECRETS_OF:
            assert secret not in blob, secret
        assert "Connection refused" in blob  # the failures themselves are recorded
    finally:
        tg.stop()


def test_unconfigured_channels_are_skipped_with_a_log_line(
    tmp_path: Path,
    apis: FakeChatAPIs,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "MDPIPE_LAKE": str(tmp_path / "lake"),
        "MDPIPE_DAGSTER_URL": "http://dagster.test:3000",
        "SLACK_WEBHOOK_URL": apis.slack_webhook_url,
    }
    for k in ("DISCORD_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    _setenv(monkeypatch, env)
    h = Harness(tmp_path, env, instance)
    sensor = h.defs.get_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    publish_signals(h.lake, [make_signal(0), make_signal(1)], "sig-a.parquet")
    _, runs = h.tick()
    assert len(runs) == 1 and h.launched[-1].success
    logs = " ".join(e.message for e in instance.all_logs(runs[0]) if e.message)
    assert "discord not configured (set DISCORD_WEBHOOK_URL); skipped" in logs
    assert "telegram not configured (set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID); skipped" in logs
    assert len(apis.messages("slack")) == 2


def test_no_channel_at_all_skips_and_leaves_the_sensor_off(tmp_path: Path) -> None:
    defs = build_alert_defs({"MDPIPE_LAKE": str(tmp_path)}, sensor_interval_s=3)
    sensor = defs.get_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 3
    with pytest.raises(ValueError, match="MDPIPE_ALERT_SENSOR_INTERVAL"):
        build_alert_defs({"MDPIPE_ALERT_SENSOR_INTERVAL": "soon"})


def test_a_backlog_of_files_is_split_into_several_runs(
    tmp_path: Path, apis: FakeChatAPIs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mdpipe.defs.alerts as alerts

    monkeypatch.setattr(alerts, "MAX_FILES_PER_RUN", 2)
    lake = Lake(tmp_path / "lake")
    for i in range(5):
        publish_signals(lake, [make_signal(i)], f"s{i}.parquet")
    settings = AlertSettingsResource(lake=str(lake.root))
    chans = list(channel_resources({"SLACK_WEBHOOK_URL": apis.slack_webhook_url}).values())
    reqs, cursor, skip = alerts.evaluate_live_signals(None, settings, chans)
    assert skip is None and [
        len(r.run_config["ops"]["deliver_alerts"]["config"]["signal_files"]) for r in reqs
    ] == [2, 2, 1]
    assert len({r.run_key for r in reqs}) == 3
    again, _, _ = alerts.evaluate_live_signals(None, settings, chans)
    assert [r.run_key for r in again] == [r.run_key for r in reqs]  # re-evaluation: same keys
    assert alerts.evaluate_live_signals(cursor, settings, chans)[0] == []


def test_a_file_channel_swaps_in_for_a_real_one(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resources are swappable: a dry run writes the messages to a file instead of Slack."""
    import json

    from mdpipe.defs.alerts import FileChannelResource

    for k in ("SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN", "DISCORD_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "dry-run.jsonl"
    settings = AlertSettingsResource(lake=str(tmp_path / "lake"))
    resources = {
        **channel_resources({}),
        "slack": FileChannelResource(path=str(out), name="dry-run"),
        "alert_settings": settings,
    }
    defs = build_alert_defs({}, sensor_interval_s=2, resources=resources)
    assert defs.get_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.RUNNING
    publish_signals(Lake(tmp_path / "lake"), [make_signal(0)], "a.parquet")
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        res = defs.get_sensor_def(SENSOR)(ctx)
    (req,) = res.run_requests
    result = defs.get_job_def("alert_job").execute_in_process(
        run_config=req.run_config, instance=instance
    )
    assert result.success
    (line,) = out.read_text().splitlines()
    msg = json.loads(line)
    assert msg["signals"] == ["sig00000"] and "<b>▲ drift up" in msg["telegram"]
