"""Live alerts in Dagster: channel resources, `alert_job`, and the live-signal sensor.

    live/signals files --(sensor, every MDPIPE_ALERT_SENSOR_INTERVAL s, cursor)--> RunRequest
        (run_key = hash of the new files, or of the due retries) --> alert_job
        --> deliver_alerts op --> ledger claim --> Slack / Discord / Telegram

The sensor is cheap (a few directory listings and, when nothing is new, one SQLite query);
all sending happens in the run, through the channel resources, deduplicated by the ledger
(`mdpipe.alerts.ledger`), so re-evaluated ticks and retried runs never send twice.

Channel resources take their secrets from `dg.EnvVar`, so run config, the UI and the event log
only ever hold the variable's name. An unset variable would make Dagster refuse to load the
resource, so `build_alert_defs` binds `EnvVar(name)` only for the variables that exist (it
checks presence, never reads the value) and leaves the others unset: that channel is skipped
with a log line saying which variables to set. Restart or reload the code location after
changing them.
"""

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import dagster as dg

from mdpipe.alerts.channels import CHANNELS, ChannelClient, FileChannelClient, make_client
from mdpipe.alerts.config import AlertConfig
from mdpipe.alerts.delivery import ChannelReport, DeliveryPolicy, deliver_channel
from mdpipe.alerts.ledger import Ledger, default_ledger_path
from mdpipe.alerts.redact import Redactor
from mdpipe.alerts.source import SignalCursor, read_signals, scan_new_files
from mdpipe.defs.resources import SettingsResource, section_resource
from mdpipe.lake import Lake

if TYPE_CHECKING:
    from mdpipe.settings import Settings

SENSOR_INTERVAL_ENV = "MDPIPE_ALERT_SENSOR_INTERVAL"
DEFAULT_SENSOR_INTERVAL_S = 5
CHANNEL_KEYS = ("slack", "discord", "telegram")
# alerts go ahead of queued pipeline runs (QueuedRunCoordinator dequeues by priority)
RUN_TAGS = {"dagster/priority": "10"}
MAX_FILES_PER_RUN = 200


# ---- channel resources -----------------------------------------------------------------------
class AlertChannelResource(dg.ConfigurableResource):
    """An alert destination. Subclasses build a `ChannelClient`, or None when unconfigured."""

    timeout_s: float = 10.0

    def channel_name(self) -> str:
        raise NotImplementedError

    def build_client(self) -> ChannelClient | None:
        raise NotImplementedError

    def missing_settings(self) -> str:
        return "not configured"

    def secrets(self) -> list[str]:
        return []


class _SharedSetupChannel(AlertChannelResource):
    """A channel whose settings, environment variables and client come from the one table in
    `mdpipe.alerts.channels.CHANNELS` (the same one `mdpipe alerts test` reads)."""

    def _values(self) -> dict[str, str | None]:
        return {k: getattr(self, k, None) for k in CHANNELS[self.channel_name()].env}

    def build_client(self) -> ChannelClient | None:
        mi = getattr(self, "min_interval_s", None)
        return make_client(
            self.channel_name(), self._values(), timeout_s=self.timeout_s, min_interval_s=mi
        )

    def missing_settings(self) -> str:
        return CHANNELS[self.channel_name()].missing(self._values())

    def secrets(self) -> list[str]:
        values = self._values()
        return [v for k in CHANNELS[self.channel_name()].secret if (v := values.get(k))]


class SlackResource(_SharedSetupChannel):
    """Slack: an incoming webhook (`SLACK_WEBHOOK_URL`), or a bot token plus channel
    (`SLACK_BOT_TOKEN`, `SLACK_CHANNEL`); the webhook wins when both are set."""

    webhook_url: str | None = None
    bot_token: str | None = None
    channel: str | None = None
    api_base_url: str = "https://slack.com/api/"
    min_interval_s: float = 1.0

    def channel_name(self) -> str:
        return "slack"


class DiscordResource(_SharedSetupChannel):
    """Discord: a channel webhook (`DISCORD_WEBHOOK_URL`); pacing from Discord's headers."""

    webhook_url: str | None = None
    min_interval_s: float = 0.0

    def channel_name(self) -> str:
        return "discord"


class TelegramResource(_SharedSetupChannel):
    """Telegram: Bot API sendMessage (`TELEGRAM_BOT_TOKEN`, `TELEGRAM_CHAT_ID`)."""

    bot_token: str | None = None
    chat_id: str | None = None
    api_base_url: str = "https://api.telegram.org"
    min_interval_s: float = 1.0

    def channel_name(self) -> str:
        return "telegram"


class FileChannelResource(AlertChannelResource):
    """Writes messages as JSON lines to a file: swap it in for any channel to dry-run alerts."""

    path: str
    name: str = "file"

    def channel_name(self) -> str:
        return self.name

    def build_client(self) -> ChannelClient | None:
        return FileChannelClient(self.path, name=self.name)


class AlertSettingsBase(SettingsResource):
    """Where signals and the ledger live, how messages link back, and the delivery policy:
    the `[alerts]` settings (`mdpipe.alerts.config.AlertConfig`). `AlertSettingsResource` is
    generated from that dataclass (one field per setting, with its default and description)."""

    def config(self) -> AlertConfig:
        return cast(AlertConfig, self.get())

    def lake_root(self) -> Path:
        return Lake.resolve(self.config().lake or None).root

    def ledger_file(self) -> Path:
        cfg = self.config()
        return Path(cfg.ledger_path) if cfg.ledger_path else default_ledger_path(self.lake_root())

    def policy(self) -> DeliveryPolicy:
        return self.config().policy()


AlertSettingsResource = section_resource("alerts", base=AlertSettingsBase)


# ---- the job ---------------------------------------------------------------------------------
class AlertRunConfig(dg.Config):
    # lake-relative paths of new live/signals files (pydantic copies the default per instance)
    signal_files: list[str] = []  # noqa: RUF012
    # rows of roll-ups emitted before this were history when the sensor started (source.py)
    history_before_ns: int = 0


def _channels(
    slack: AlertChannelResource, discord: AlertChannelResource, telegram: AlertChannelResource
) -> list[AlertChannelResource]:
    return [slack, discord, telegram]


@dg.op(
    description="Register new live signals in the delivery ledger and send everything due to "
    "each configured channel (rate-limited, retried, digested, at most once per channel)."
)
def deliver_alerts(
    context: dg.OpExecutionContext,
    config: AlertRunConfig,
    alert_settings: AlertSettingsBase,
    slack: AlertChannelResource,
    discord: AlertChannelResource,
    telegram: AlertChannelResource,
) -> dict[str, Any]:
    redact = Redactor()
    clients: list[ChannelClient] = []
    for res in _channels(slack, discord, telegram):
        redact.add(*res.secrets())
        client = res.build_client()
        if client is None:
            context.log.info(
                f"alerts: {res.channel_name()} not configured ({res.missing_settings()}); skipped"
            )
            continue
        clients.append(client)
    root = alert_settings.lake_root()
    signals = read_signals(
        root,
        config.signal_files,
        history_before_ns=config.history_before_ns,
        min_meta_prob=alert_settings.config().min_meta_prob,
    )
    ledger = Ledger(alert_settings.ledger_file())
    added = ledger.register(signals, [c.name for c in clients])
    context.log.info(
        f"alerts: {len(signals)} signal(s) from {len(config.signal_files)} file(s), "
        f"{added} new (signal, channel) pair(s); channels: "
        + (", ".join(redact(c.describe()) for c in clients) or "none")
    )
    link = f"{alert_settings.config().dagster_ui_url.rstrip('/')}/runs/{context.run_id}"
    policy = alert_settings.policy()
    reports: list[ChannelReport] = []
    if clients:
        with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="alert") as pool:
            futs = [
                pool.submit(
                    deliver_channel, ledger, c, link=link, run_id=context.run_id, policy=policy
                )
                for c in clients
            ]
            reports = [f.result() for f in futs]
    meta: dict[str, Any] = {"signals_read": len(signals), "pairs_registered": added}
    problems = []
    for rep in reports:
        context.log.info(redact(f"alerts: {rep.summary()}"))
        meta[f"{rep.channel}_delivered"] = rep.signals_delivered
        meta[f"{rep.channel}_messages"] = rep.messages
        meta[f"{rep.channel}_failed"] = rep.failed
        meta[f"{rep.channel}_uncertain"] = rep.uncertain + rep.recovered_uncertain
        meta[f"{rep.channel}_destination"] = redact(rep.destination)
        if rep.latencies_s:
            # triggering event received -> delivery confirmed, the number a trader feels
            meta[f"{rep.channel}_latency_max_s"] = round(max(rep.latencies_s), 3)
        if rep.failed or rep.uncertain or rep.recovered_uncertain:
            problems.append(redact(f"{rep.summary()}: {'; '.join(rep.errors[:3])}"))
    if problems:
        # the ledger already holds the outcome; failing the step makes the run red in the UI
        raise dg.Failure(
            description="alert delivery incomplete (in the ledger: failed messages are retried "
            "on the next tick, uncertain ones are reported and not re-sent): "
            + " | ".join(problems),
            metadata={k: v for k, v in meta.items() if not isinstance(v, list)},
            allow_retries=False,
        )
    context.add_output_metadata(meta)
    return {k: v for k, v in meta.items()}


@dg.job(
    description="Deliver live signals to Slack, Discord and Telegram (requested by "
    "live_signal_sensor; safe to re-run: the ledger sends each signal once per channel).",
    tags={"mdpipe/kind": "alerts"},
    # one step: the default multiprocess executor would start a second process per run,
    # seconds of latency for nothing
    executor_def=dg.in_process_executor,
)
def alert_job() -> None:
    deliver_alerts()


# ---- the sensor ------------------------------------------------------------------------------
def evaluate_live_signals(
    cursor_text: str | None,
    settings: AlertSettingsBase,
    channels: list[AlertChannelResource],
    now_ns: int | None = None,
) -> tuple[list[dg.RunRequest], str, str | None]:
    """(run requests, new cursor, skip reason): the sensor's logic, callable without a context."""
    root = settings.lake_root()
    new, cursor = scan_new_files(
        root,
        SignalCursor.loads(cursor_text),
        lookback_s=settings.config().lookback_s,
        initial_lookback_s=settings.config().initial_lookback_s,
        now_ns=now_ns,
    )
    configured = [r.channel_name() for r in channels if r.build_client() is not None]
    if not configured:
        return (
            [],
            cursor.dumps(),
            "no alert channel configured: "
            + "; ".join(f"{r.channel_name()}: {r.missing_settings()}" for r in channels),
        )
    if new:
        reqs = []
        # a backlog (the sensor was off for a day) becomes several runs, each with a small
        # run config, rather than one run whose config lists thousands of files
        for i in range(0, len(new), MAX_FILES_PER_RUN):
            chunk = new[i : i + MAX_FILES_PER_RUN]
            key = "signals-" + hashlib.sha1("\n".join(chunk).encode()).hexdigest()[:20]
            reqs.append(
                dg.RunRequest(
                    run_key=key,
                    run_config=dg.RunConfig(
                        ops={
                            "deliver_alerts": AlertRunConfig(
                                signal_files=chunk,
                                history_before_ns=cursor.history_before_ns(
                                    settings.config().lookback_s
                                ),
                            )
                        }
                    ),
                    tags={
                        **RUN_TAGS,
                        "mdpipe/alert_reason": "signals",
                        "mdpipe/signal_files": str(len(chunk)),
                    },
                )
            )
        return reqs, cursor.dumps(), None
    ledger_file = settings.ledger_file()
    token = Ledger(ledger_file).due_token(configured, now_ns) if ledger_file.exists() else None
    if token:
        req = dg.RunRequest(
            run_key=f"retry-{token}",
            run_config=dg.RunConfig(ops={"deliver_alerts": AlertRunConfig(signal_files=[])}),
            tags={**RUN_TAGS, "mdpipe/alert_reason": "retry"},
        )
        return [req], cursor.dumps(), None
    return [], cursor.dumps(), "no new live signals and nothing due for retry"


def _make_sensor(interval_s: int, default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="live_signal_sensor",
        job=alert_job,
        minimum_interval_seconds=interval_s,
        default_status=default_status,
        description="New files under <lake>/live/signals past the cursor, or ledger rows due "
        "for retry -> one alert_job run (run_key dedups re-evaluated ticks).",
    )
    def live_signal_sensor(
        context: dg.SensorEvaluationContext,
        alert_settings: AlertSettingsBase,
        slack: AlertChannelResource,
        discord: AlertChannelResource,
        telegram: AlertChannelResource,
    ) -> dg.SensorResult:
        reqs, cursor, skip = evaluate_live_signals(
            context.cursor, alert_settings, _channels(slack, discord, telegram)
        )
        if skip:
            return dg.SensorResult(skip_reason=skip, cursor=cursor)
        return dg.SensorResult(run_requests=reqs, cursor=cursor)

    return live_signal_sensor


# ---- wiring ----------------------------------------------------------------------------------
def _env(environ: Mapping[str, str], name: str) -> Any:
    """`EnvVar(name)` if the variable is set (its value is not read here), else None."""
    return dg.EnvVar(name) if environ.get(name) else None


def channel_resources(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One resource per channel, each setting bound to its environment variable when set."""
    env = os.environ if environ is None else environ
    kinds = {"slack": SlackResource, "discord": DiscordResource, "telegram": TelegramResource}
    return {
        name: kinds[name](**{k: _env(env, var) for k, var in setup.env.items() if env.get(var)})
        for name, setup in CHANNELS.items()
    }


def settings_resource(
    environ: Mapping[str, str] | None = None, settings: "Settings | None" = None
) -> AlertSettingsBase:
    """The `alert_settings` resource: `settings`' `[alerts]` values (None: the defaults), with
    the lake, ledger and UI URL taken from their environment variables when those are set."""
    env = os.environ if environ is None else environ
    cls = (
        AlertSettingsResource
        if settings is None
        else section_resource("alerts", settings, base=AlertSettingsBase)
    )
    kw: dict[str, Any] = {}
    for field, name in (
        ("lake", "MDPIPE_LAKE"),
        ("ledger_path", "MDPIPE_ALERT_LEDGER"),
        ("dagster_ui_url", "MDPIPE_DAGSTER_URL"),
    ):
        if env.get(name):
            kw[field] = dg.EnvVar(name)
    return cls(**kw)


def build_alert_defs(
    environ: Mapping[str, str] | None = None,
    *,
    sensor_interval_s: int | None = None,
    resources: Mapping[str, Any] | None = None,
    settings: "Settings | None" = None,
) -> dg.Definitions:
    """The alert job, sensor and resources. `resources` overrides any of them (tests, dry runs
    with `FileChannelResource`)."""
    env = os.environ if environ is None else environ
    if sensor_interval_s is None:
        raw = env.get(SENSOR_INTERVAL_ENV, str(DEFAULT_SENSOR_INTERVAL_S))
        try:
            sensor_interval_s = int(float(raw))
        except ValueError:
            raise ValueError(
                f"{SENSOR_INTERVAL_ENV} must be a number of seconds, got {raw!r}"
            ) from None
    if sensor_interval_s < 1:
        raise ValueError(f"the sensor interval must be >= 1 s, got {sensor_interval_s}")
    res: dict[str, Any] = {
        "alert_settings": settings_resource(env, settings),
        **channel_resources(env),
        **dict(resources or {}),
    }
    any_channel = any(
        isinstance(r, FileChannelResource) or _has_secret_env(k, env)
        for k, r in res.items()
        if k in CHANNEL_KEYS
    )
    # runs by default only when a channel is configured, so a fresh checkout stays quiet
    status = dg.DefaultSensorStatus.RUNNING if any_channel else dg.DefaultSensorStatus.STOPPED
    return dg.Definitions(
        jobs=[alert_job],
        sensors=[_make_sensor(sensor_interval_s, status)],
        resources=res,
    )


def _has_secret_env(key: str, env: Mapping[str, str]) -> bool:
    setup = CHANNELS[key]
    return setup.complete_group(setup.from_env(env)) is not None


alert_defs = build_alert_defs()

__all__ = [
    "AlertChannelResource",
    "AlertRunConfig",
    "AlertSettingsBase",
    "AlertSettingsResource",
    "DiscordResource",
    "FileChannelResource",
    "SlackResource",
    "TelegramResource",
    "alert_defs",
    "alert_job",
    "build_alert_defs",
    "deliver_alerts",
    "evaluate_live_signals",
]
