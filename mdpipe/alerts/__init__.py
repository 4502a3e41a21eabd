"""Live alerts: channel clients, formatting, rate limiting, the delivery ledger (Dagster-free).

The Dagster glue (resources, `alert_job`, the live-signal sensor) is in `mdpipe.defs.alerts`.
"""

from mdpipe.alerts.channels import (
    ChannelClient,
    DiscordWebhookClient,
    FileChannelClient,
    SendResult,
    SlackBotClient,
    SlackWebhookClient,
    TelegramClient,
)
from mdpipe.alerts.delivery import ChannelReport, DeliveryPolicy, deliver_channel
from mdpipe.alerts.ledger import Ledger, default_ledger_path
from mdpipe.alerts.message import AlertSignal
from mdpipe.alerts.redact import Redactor
from mdpipe.alerts.source import SignalCursor, read_signals, scan_new_files

__all__ = [
    "AlertSignal",
    "ChannelClient",
    "ChannelReport",
    "DeliveryPolicy",
    "DiscordWebhookClient",
    "FileChannelClient",
    "Ledger",
    "Redactor",
    "SendResult",
    "SignalCursor",
    "SlackBotClient",
    "SlackWebhookClient",
    "TelegramClient",
    "default_ledger_path",
    "deliver_channel",
    "read_signals",
    "scan_new_files",
]
