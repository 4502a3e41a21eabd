"""Channel clients and the delivery policy against loopback servers that behave like the APIs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mdpipe.alerts.channels import (
    DiscordWebhookClient,
    SlackBotClient,
    SlackWebhookClient,
    TelegramClient,
)
from mdpipe.alerts.delivery import DeliveryPolicy, deliver_channel
from mdpipe.alerts.ledger import Ledger
from mdpipe.alerts.loopback import FakeChatAPIs, Fault
from mdpipe.alerts.redact import Redactor

from .conftest import FAST, make_signal

LINK = "http://dagster.local:3000/runs/run-1"


def clients(apis: FakeChatAPIs) -> dict[str, object]:
    return {
        "slack": SlackWebhookClient(apis.slack_webhook_url),
        "slack_bot": SlackBotClient(apis.slack_token, "C0ALERTS", api_base_url=apis.slack_api_url),
        "discord": DiscordWebhookClient(apis.discord_webhook_url),
        "telegram": TelegramClient(apis.telegram_token, "-100123", api_base_url=apis.url),
    }


def test_each_api_receives_one_formatted_message(apis: FakeChatAPIs, tmp_path: Path) -> None:
    sig = make_signal(0)
    for key, client in clients(apis).items():
        led = Ledger(tmp_path / f"{key}.sqlite")
        led.register([sig], [client.name])  # type: ignore[attr-defined]
        rep = deliver_channel(led, client, link=LINK, run_id="r1", policy=FAST)  # type: ignore[arg-type]
        assert (rep.signals_delivered, rep.messages, rep.failed) == (1, 1, 0), key
    slack = apis.messages("slack_webhook")
    assert len(slack) == 1
    blocks = slack[0].body["blocks"]
    assert blocks[0]["type"] == "header" and "binance BTC/USDT" in blocks[0]["text"]["text"]
    fields = " ".join(f["text"] for f in blocks[1]["fields"])
    assert "*Score*\n1.25" in fields and "61,802.82" in fields and "imbalance_5 = 0.81" in fields
    assert LINK in blocks[-1]["elements"][0]["text"]
    bot = apis.messages("slack_bot")
    assert len(bot) == 1 and bot[0].body["channel"] == "C0ALERTS"
    assert bot[0].headers["authorization"] == f"Bearer {apis.slack_token}"
    (discord,) = apis.messages("discord")
    embed = discord.body["embeds"][0]
    assert embed["title"] == "▲ drift up · binance BTC/USDT" and embed["url"] == LINK
    assert {"name": "Score", "value": "1.25", "inline": True} in embed["fields"]
    assert discord.body["allowed_mentions"] == {"parse": []}
    (tg,) = apis.messages("telegram")
    assert tg.body["parse_mode"] == "HTML" and tg.body["chat_id"] == "-100123"
    assert tg.body["text"].startswith("<b>▲ drift up · binance BTC/USDT</b>\nScore: <b>1.25</b>")
    assert f'<a href="{LINK}">Open in Dagster</a>' in tg.body["text"]


def test_429_waits_retry_after_then_delivers_once(apis: FakeChatAPIs, ledger: Ledger) -> None:
    # the server answers 429 again to anyone who comes back before Retry-After has elapsed,
    # so a single 429 in the log proves the client waited
    apis.fault("telegram", Fault("429", 1.2))
    c = clients(apis)["telegram"]
    ledger.register([make_signal(1)], ["telegram"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)  # type: ignore[arg-type]
    assert rep.signals_delivered == 1 and rep.rate_limited == 1
    assert apis.statuses("telegram") == [429, 200]
    assert len(apis.messages("telegram")) == 1


def test_discord_429_body_retry_after_is_honoured(apis: FakeChatAPIs, ledger: Ledger) -> None:
    apis.fault("discord", Fault("429", 0.6))
    c = clients(apis)["discord"]
    ledger.register([make_signal(2)], ["discord"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)  # type: ignore[arg-type]
    assert rep.signals_delivered == 1
    assert apis.statuses("discord") == [429, 200]


def test_server_errors_are_retried_with_backoff(apis: FakeChatAPIs, ledger: Ledger) -> None:
    apis.fault("slack", Fault("500"), Fault("502"))
    c = clients(apis)["slack"]
    ledger.register([make_signal(3)], ["slack"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)  # type: ignore[arg-type]
    assert apis.statuses("slack") == [500, 502, 200]
    assert rep.signals_delivered == 1 and len(apis.messages("slack")) == 1
    attempts = ledger.attempt_counts()
    assert attempts[("slack", "transient")] == (2, 2) and attempts[("slack", "delivered")] == (1, 1)


def test_slow_answer_within_timeout_is_one_delivery(apis: FakeChatAPIs, ledger: Ledger) -> None:
    apis.fault("telegram", Fault("slow", 1.5))
    c = TelegramClient(apis.telegram_token, "7", api_base_url=apis.url, timeout_s=5)
    ledger.register([make_signal(4)], ["telegram"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)
    assert rep.signals_delivered == 1 and len(apis.messages("telegram")) == 1


@pytest.mark.parametrize("fault", [Fault("slow", 2.5), Fault("drop")])
def test_no_answer_after_sending_is_uncertain_and_never_resent(
    apis: FakeChatAPIs, ledger: Ledger, fault: Fault
) -> None:
    """At most once: a request that went out unanswered may have been posted; it is reported
    as uncertain and not sent again, even by later runs."""
    apis.fault("discord", fault)
    c = DiscordWebhookClient(apis.discord_webhook_url, timeout_s=1)
    ledger.register([make_signal(5)], ["discord"])
    rep = deliver_channel(ledger, c, link=None, run_id="r1", policy=FAST)
    assert rep.uncertain == 1 and rep.signals_delivered == 0
    again = deliver_channel(ledger, c, link=None, run_id="r2", policy=FAST)
    assert again.requests == 0
    (row,) = ledger.rows("discord")
    assert row["status"] == "uncertain" and "no answer" in str(row["last_error"])
    # the slow request was processed by the server after our timeout: one message, not two
    if fault.kind == "slow":
        assert apis.wait_served("discord", 1)
    assert len(apis.messages("discord")) == (1 if fault.kind == "slow" else 0)


def test_burst_is_folded_into_one_digest(apis: FakeChatAPIs, ledger: Ledger) -> None:
    sigs = [make_signal(i) for i in range(7)]
    ledger.register(sigs, ["slack"])
    c = clients(apis)["slack"]
    rep = deliver_channel(ledger, c, link=LINK, run_id="r", policy=FAST)  # type: ignore[arg-type]
    assert (rep.signals_delivered, rep.messages, rep.digests) == (7, 1, 1)
    (msg,) = apis.messages("slack")
    body = msg.body["blocks"][1]["text"]["text"]
    assert msg.body["text"] == "7 signals · binance BTC/USDT"
    assert body.count("\n") == 6 and all(f"score {s.score:.2f}" in body for s in sigs)
    rows = ledger.rows("slack")
    assert {r["status"] for r in rows} == {"delivered"} and len({r["digest_id"] for r in rows}) == 1


def test_digest_splits_past_digest_max(ledger: Ledger) -> None:
    ledger.register([make_signal(i) for i in range(12)], ["telegram"])
    # pacing is not the point here: a server and client agreed on 4 messages a second
    with FakeChatAPIs(min_interval_s=0.1) as apis:
        c = TelegramClient(apis.telegram_token, "1", api_base_url=apis.url, min_interval_s=0.25)
        pol = DeliveryPolicy(digest_min=3, digest_max=5, backoff_initial_s=0.05)
        rep = deliver_channel(ledger, c, link=None, run_id="r", policy=pol)
        # 5 + 5 in digests, then 2 left: below digest_min, sent one by one
        assert (rep.signals_delivered, rep.messages, rep.digests) == (12, 4, 2)
        assert apis.statuses("telegram") == [200] * 4


def test_rate_limiter_keeps_telegram_under_one_per_second(
    apis: FakeChatAPIs, ledger: Ledger
) -> None:
    """The server 429s any message within 0.5 s of the previous one for the chat (back-to-back
    requests arrive within milliseconds); the limiter (1/s) must never provoke that."""
    ledger.register([make_signal(i) for i in range(2)], ["telegram"])
    c = clients(apis)["telegram"]
    pol = DeliveryPolicy(digest_min=10, digest_max=10)
    deliver_channel(ledger, c, link=None, run_id="r1", policy=pol)  # type: ignore[arg-type]
    # a second run right after shares the limiter through the ledger
    ledger.register([make_signal(i) for i in range(2, 4)], ["telegram"])
    deliver_channel(ledger, c, link=None, run_id="r2", policy=pol)  # type: ignore[arg-type]
    assert apis.statuses("telegram") == [200, 200, 200, 200]


def test_discord_pacing_follows_rate_limit_headers(ledger: Ledger) -> None:
    with FakeChatAPIs(discord_bucket=2, discord_window_s=1.0) as apis:
        ledger.register([make_signal(i) for i in range(5)], ["discord"])
        c = DiscordWebhookClient(apis.discord_webhook_url)
        pol = DeliveryPolicy(digest_min=10, digest_max=10)
        rep = deliver_channel(ledger, c, link=None, run_id="r", policy=pol)
        assert rep.signals_delivered == 5
        assert apis.statuses("discord") == [200] * 5  # paused on Remaining: 0, never hit 429


def test_channel_down_keeps_everything_and_delivers_once_back(ledger: Ledger) -> None:
    apis = FakeChatAPIs().start()
    port = apis.port
    c = TelegramClient(apis.telegram_token, "9", api_base_url=apis.url, min_interval_s=0.2)
    apis.stop()  # connection refused from now on
    ledger.register([make_signal(i) for i in range(2)], ["telegram"])
    rep = deliver_channel(ledger, c, link=None, run_id="r1", policy=FAST)
    assert rep.failed == 1 and rep.signals_delivered == 0 and rep.stopped_early
    rows = {r["signal_id"]: r for r in ledger.rows()}
    assert rows["sig00000"]["status"] == "failed" and "Connection refused" in str(
        rows["sig00000"]["last_error"]
    )
    assert rows["sig00001"]["status"] == "pending"  # not tried: the endpoint is known down
    # more signals arrive while the channel is down
    ledger.register([make_signal(i) for i in range(2, 5)], ["telegram"])
    assert ledger.due_token(["telegram"], now_ns=2**62) is not None
    apis.start(port=port)
    try:
        import time

        time.sleep(FAST.retry_base_s * 1.3)  # the failed row's next attempt is due
        rep = deliver_channel(ledger, c, link=None, run_id="r2", policy=FAST)
        assert rep.signals_delivered == 5 and rep.digests == 1
        (msg,) = apis.messages("telegram")
        assert msg.body["text"].startswith("<b>5 signals")
        assert {r["status"] for r in ledger.rows()} == {"delivered"}
        assert ledger.due_token(["telegram"], now_ns=2**62) is None
    finally:
        apis.stop()


def test_concurrent_runs_never_send_a_signal_twice(ledger: Ledger) -> None:
    ledger.register([make_signal(i) for i in range(4)], ["slack"])
    apis = FakeChatAPIs(min_interval_s=0.1).start()
    c = SlackWebhookClient(apis.slack_webhook_url, min_interval_s=0.25)
    pol = DeliveryPolicy(digest_min=10, digest_max=10)
    ts = [
        threading.Thread(
            target=deliver_channel,
            args=(ledger, c),
            kwargs={"link": None, "run_id": f"r{k}", "policy": pol},
        )
        for k in range(3)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    apis.stop()
    texts = [m.body["text"] for m in apis.messages("slack")]
    assert len(texts) == 4 and len(set(texts)) == 4
    assert 429 not in apis.statuses("slack")  # the three runs shared one limiter


def test_rejected_request_is_kept_for_retry_with_redacted_error(
    apis: FakeChatAPIs, ledger: Ledger
) -> None:
    token = "xoxb-0000-wrong-token-value"
    c = SlackBotClient(token, "C1", api_base_url=apis.slack_api_url)
    ledger.register([make_signal(1)], ["slack"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)
    assert rep.failed == 1 and "invalid_auth" in rep.errors[0]
    (row,) = ledger.rows()
    assert row["status"] == "failed" and row["attempts"] == 1 and row["next_attempt_ns"] > 0
    assert token not in str(row) and token not in c.describe()


def test_redactor_masks_configured_and_shaped_secrets() -> None:
    url = "https://hooks.slack.com/services/T1/B2/abcdefSECRET"
    r = Redactor([url, "123456:AAAbbbCCCdddEEEfffGGGhhh"])
    text = (
        f"POST {url} failed; /services/T1/B2/abcdefSECRET; "
        "https://api.telegram.org/bot123456:AAAbbbCCCdddEEEfffGGGhhh/sendMessage; "
        "xoxb-1-2-3 and https://discord.com/api/webhooks/99887766/tok_en-x"
    )
    out = r(text)
    for secret in ("abcdefSECRET", "AAAbbbCCC", "xoxb-1-2-3", "tok_en-x"):
        assert secret not in out
    assert "hooks.slack.com" not in out.split("failed")[0] or "<redacted>" in out


def test_policy_validates_parameters() -> None:
    with pytest.raises(ValueError, match="digest_min"):
        DeliveryPolicy(digest_min=1)
    with pytest.raises(ValueError, match="digest_max"):
        DeliveryPolicy(digest_min=5, digest_max=4)
    with pytest.raises(ValueError, match="max_wait_s"):
        DeliveryPolicy(max_wait_s=0)


def test_slack_bot_429_is_honoured(apis: FakeChatAPIs, ledger: Ledger) -> None:
    apis.fault("slack", Fault("429", 0.7))
    c = clients(apis)["slack_bot"]
    ledger.register([make_signal(6)], ["slack"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)  # type: ignore[arg-type]
    assert rep.signals_delivered == 1 and apis.statuses("slack_bot") == [429, 200]


def test_a_malformed_url_fails_without_quoting_the_secret(ledger: Ledger) -> None:
    c = SlackWebhookClient("hooks.example/services/T1/B2/SECRETxyz123")  # no scheme
    ledger.register([make_signal(7)], ["slack"])
    rep = deliver_channel(ledger, c, link=None, run_id="r", policy=FAST)
    assert rep.failed == 1
    (row,) = ledger.rows()
    assert row["status"] == "failed" and "SECRETxyz123" not in str(row["last_error"])
    assert "SECRETxyz123" not in " ".join(rep.errors)


def test_a_run_that_died_mid_send_leaves_uncertain_rows_not_resends(
    apis: FakeChatAPIs, ledger: Ledger
) -> None:
    ledger.register([make_signal(8)], ["slack"])
    assert ledger.claim("slack", ["sig00008"], "crashed-run") == ["sig00008"]
    c = clients(apis)["slack"]
    pol = DeliveryPolicy(lease_s=0.001)
    import time

    time.sleep(0.01)
    rep = deliver_channel(ledger, c, link=None, run_id="next", policy=pol)  # type: ignore[arg-type]
    assert rep.recovered_uncertain == 1 and rep.requests == 0
    assert ledger.rows()[0]["status"] == "uncertain" and apis.messages("slack") == []
