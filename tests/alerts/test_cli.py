"""`mdpipe alerts test` against the loopback APIs, configured by environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdpipe.alerts.loopback import FakeChatAPIs, Fault
from mdpipe.cli import main

ALL = (
    "SLACK_WEBHOOK_URL",
    "SLACK_BOT_TOKEN",
    "SLACK_CHANNEL",
    "SLACK_API_BASE_URL",
    "DISCORD_WEBHOOK_URL",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_CHAT_ID",
    "TELEGRAM_API_BASE_URL",
)


def _env(monkeypatch: pytest.MonkeyPatch, apis: FakeChatAPIs) -> None:
    for k in ALL:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", apis.slack_token)
    monkeypatch.setenv("SLACK_CHANNEL", "C0TEST")
    monkeypatch.setenv("SLACK_API_BASE_URL", apis.slack_api_url)
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", apis.discord_webhook_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", apis.telegram_token)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "-42")
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", apis.url)
    monkeypatch.setenv("COLUMNS", "200")


def test_alerts_test_sends_one_message_per_channel(
    apis: FakeChatAPIs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, apis)
    assert main(["alerts", "test", "--message", "hello from the test"]) == 0
    out = capsys.readouterr().out
    assert out.count("sent") == 3
    for api in ("slack_bot", "discord", "telegram"):
        (m,) = apis.messages(api)
        assert "hello from the test" in (m.body.get("text") or m.body.get("content"))
    assert apis.messages("slack_bot")[0].body["channel"] == "C0TEST"
    for secret in (apis.slack_token, "DiscordSecretTokenAbc", apis.telegram_token):
        assert secret not in out


def test_alerts_test_reports_a_failing_channel(
    apis: FakeChatAPIs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, apis)
    # a channel that stays down through every attempt ([alerts] max_attempts, default 4)
    apis.fault("telegram", *[Fault("502")] * 4)
    assert main(["alerts", "test", "--set", "alerts.backoff_initial_s=0.05"]) == 1
    out = capsys.readouterr().out
    assert out.count("sent") == 2 and "transient" in out and "HTTP 502" in out
    assert "after 4 attempts" in out
    assert apis.statuses("telegram") == [502] * 4


def test_alerts_test_honours_retry_after_and_retries_transient_failures(
    apis: FakeChatAPIs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, apis)
    # Telegram: 429 with Retry-After; asking again before it elapsed would earn another 429
    # from the loopback server, so a clean [429, 200] shows the wait was honoured
    apis.fault("telegram", Fault("429", 1.0))
    apis.fault("discord", Fault("503"), Fault("502"))
    assert main(["alerts", "test", "--set", "alerts.backoff_initial_s=0.05"]) == 0
    out = capsys.readouterr().out
    assert out.count("sent") == 3
    assert apis.statuses("telegram") == [429, 200]
    assert apis.statuses("discord") == [503, 502, 200]
    assert "after 2 attempts, 1 rate-limited" in out and "after 3 attempts" in out
    assert len(apis.messages("telegram")) == 1 and len(apis.messages("discord")) == 1


def test_alerts_test_without_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k in ALL:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["alerts", "test"]) == 2
    out = capsys.readouterr().out
    assert out.count("not configured") == 3 and "set DISCORD_WEBHOOK_URL" in out


def test_alerts_status_lists_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mdpipe.alerts.channels import TelegramClient
    from mdpipe.alerts.delivery import deliver_channel
    from mdpipe.alerts.ledger import Ledger

    from .conftest import FAST, make_signal

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MDPIPE_ALERT_LEDGER", raising=False)
    lake = tmp_path / "lake"
    assert main(["alerts", "status", "--lake", str(lake)]) == 0
    assert "no delivery ledger yet" in capsys.readouterr().out
    ledger = Ledger(lake / "state" / "alerts-ledger.sqlite")
    ledger.register([make_signal(0)], ["telegram"])
    dead = TelegramClient("123:abcdefghijklmnopqrstuvwxyz", "1", api_base_url="http://127.0.0.1:9")
    deliver_channel(ledger, dead, link=None, run_id="r", policy=FAST)
    assert main(["alerts", "status", "--lake", str(lake)]) == 0
    out = capsys.readouterr().out
    assert "telegram failed sig00000 after 1 attempt(s): could not send" in out
    assert "abcdefghijklmnop" not in out
