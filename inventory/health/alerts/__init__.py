"""Alerts: rules (TOML) that route incidents and host conditions to channels (e-mail,
webhooks, syslog) through a queue in the store.

- `_rules.py`: the rules file, parsed and checked (`load_rules`, `RulesError`);
- `_message.py`: one alert as queued and rendered (`Message`), agent text made safe;
- `_dispatch.py`: matching rules against what happened, queuing notifications (`Dispatcher`);
- `_channels.py`: sending one message through one channel (`send`, `SendError`).

The hub's tasks that run them are in `estate.inventory.hub._alerts`.
"""

from __future__ import annotations

from estate.inventory.health.alerts._channels import (
    SendError,
    email_message,
    send,
    syslog_message,
    webhook_payload,
)
from estate.inventory.health.alerts._dispatch import Dispatcher
from estate.inventory.health.alerts._message import Message
from estate.inventory.health.alerts._rules import (
    CONDITIONS,
    Channel,
    EmailChannel,
    Rule,
    Rules,
    RulesError,
    SyslogChannel,
    WebhookChannel,
    load_rules,
    parse_rules,
)

__all__ = [
    "CONDITIONS",
    "Channel",
    "Dispatcher",
    "EmailChannel",
    "Message",
    "Rule",
    "Rules",
    "RulesError",
    "SendError",
    "SyslogChannel",
    "WebhookChannel",
    "email_message",
    "load_rules",
    "parse_rules",
    "send",
    "syslog_message",
    "webhook_payload",
]
