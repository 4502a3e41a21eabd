"""Which settings configure which channel is stated once (`CHANNELS`) and read by both the CLI
(`clients_from_env`) and the Dagster resources (`channel_resources`)."""

from __future__ import annotations

import dagster as dg
import pytest

from mdpipe.alerts.channels import (
    CHANNELS,
    DiscordWebhookClient,
    SlackBotClient,
    SlackWebhookClient,
    TelegramClient,
    clients_from_env,
)
from mdpipe.defs.alerts import build_alert_defs, channel_resources

ENV = {
    "SLACK_BOT_TOKEN": "xoxb-1",
    "SLACK_CHANNEL": "#alerts",
    "SLACK_API_BASE_URL": "http://127.0.0.1:9/api/",
    "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/discord",
    "TELEGRAM_BOT_TOKEN": "123:abc",
}


def test_cli_and_dagster_agree_on_what_is_configured() -> None:
    clients, skipped = clients_from_env(ENV)
    assert [type(c) for c in clients] == [SlackBotClient, DiscordWebhookClient]
    assert skipped == [("telegram", "TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not")]
    resources = channel_resources(ENV)
    assert set(resources) == set(CHANNELS)
    # the same rule decides whether the Dagster sensor starts running
    sensor = build_alert_defs(ENV, sensor_interval_s=5).get_sensor_def("live_signal_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    quiet = build_alert_defs({"TELEGRAM_BOT_TOKEN": "1:a"}, sensor_interval_s=5)
    assert (
        quiet.get_sensor_def("live_signal_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    )


@pytest.mark.parametrize(
    ("env", "kinds", "hints"),
    [
        ({}, [], ["set SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN and SLACK_CHANNEL"]),
        ({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook"}, [SlackWebhookClient], []),
        (
            {"SLACK_BOT_TOKEN": "xoxb-1"},
            [],
            ["SLACK_BOT_TOKEN is set but SLACK_CHANNEL is not"],
        ),
        (
            {"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_CHAT_ID": "-1"},
            [TelegramClient],
            ["set SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN and SLACK_CHANNEL"],
        ),
    ],
)
def test_slack_choice_and_precise_hints(
    env: dict[str, str], kinds: list[type], hints: list[str]
) -> None:
    clients, skipped = clients_from_env(env)
    assert [type(c) for c in clients if type(c) in (SlackWebhookClient, TelegramClient)] == kinds
    slack_hint = [h for ch, h in skipped if ch == "slack"]
    assert slack_hint == hints
