"""The wire protocol's names and numbers, in one place: commands, exit statuses, error codes,
size limits. Standard library only: the agent, the hub and the console all import it.

Two kinds of exit status, kept apart on purpose: a *process* (`estate`, `estate-agent`,
`estate-hub`) exits as command-line tools do (2 for a usage error, as argparse does); an SSH
*channel* on the hub exits with sysexits.h codes, so a client tells "fix your data" (65) from
"retry later" (75) without parsing text. docs/protocol.md ("Errors") lists them.
"""

from __future__ import annotations

import re
from enum import IntEnum

__all__ = [
    "AGENT_ID", "API_COMMAND", "API_ERROR_CODES", "COMMANDS", "CONNECTION_REFUSAL_CODES",
    "ENROL_COMMAND", "ENROL_USER", "ERROR_CODES", "EXPORT_COMMAND", "HUB_USER_PREFIX",
    "INPUT_REFUSAL_CODES", "MAX_API_LINE_BYTES", "MAX_ENROL_BYTES", "MAX_EXPORT_REQUEST_BYTES",
    "MAX_RECEIVED_BYTES", "MAX_REPORT_BYTES", "OPERATOR_NAME", "REMOTE_REFUSAL_CODES",
    "REPORT_COMMAND", "REPORT_STREAM_COMMAND", "WATCH_COMMAND", "ChannelExit", "Exit",
    "busy_retry_after",
]

# --- commands: what a client runs on the hub's SSH server, and who may run it -----------------
REPORT_COMMAND = "estate-report v1"
# One channel per agent connection carrying framed reports and their acks for as long as the
# connection lives (docs/protocol.md, "Report stream"); v1 stays accepted for older agents.
REPORT_STREAM_COMMAND = "estate-report v2"
ENROL_COMMAND = "estate-enrol v1"
API_COMMAND = "estate-api v1"
WATCH_COMMAND = "estate-watch v1"
EXPORT_COMMAND = "estate-export v1"
COMMANDS = {REPORT_COMMAND: "agent", REPORT_STREAM_COMMAND: "agent", ENROL_COMMAND: "enrol",
            API_COMMAND: "operator", WATCH_COMMAND: "operator", EXPORT_COMMAND: "operator"}
ENROL_USER = "enrol"  # the user name a not-yet-enrolled agent logs in as, with any key
# The other user names on the hub: an enrolled agent's id, or an operator's name.
AGENT_ID = re.compile(r"^ag-[0-9a-f]{12}$")
OPERATOR_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
# Another hub of the same estate logs in as `hub:<its --hub-name>` with the hub identity (the
# host key every hub presents), to carry remote sessions to the agents this hub holds.
HUB_USER_PREFIX = "hub:"


class Exit(IntEnum):
    """A command-line process's exit status."""

    OK = 0
    FAIL = 1
    USAGE = 2


class ChannelExit(IntEnum):
    """An SSH channel's exit status on the hub (sysexits.h)."""

    OK = 0
    USAGE = 64  # no such command
    DATA = 65  # fix your data; do not retry as is
    TEMPFAIL = 75  # retry later, after `retry_after`
    NOPERM = 77  # not allowed


# --- error codes: stable for clients. Every code the hub uses is in one of the sets below
# (tests/test_architecture.py checks the code for literals that are not).

# Codes that end a channel, with the exit status each one ends it with.
ERROR_CODES: dict[str, ChannelExit] = {
    "unknown_command": ChannelExit.USAGE,
    "invalid_report": ChannelExit.DATA,
    # A report that sent its package list by hash only (`software.packages` null) while the
    # hub holds another list for the host: nothing stored; send the same report in full.
    "need_full": ChannelExit.DATA,
    "too_large": ChannelExit.DATA,
    "bad_request": ChannelExit.DATA,
    "bad_json": ChannelExit.DATA,  # an export request that is not JSON
    "bad_filter": ChannelExit.DATA,
    "bad_register": ChannelExit.DATA,
    "too_many_bad_lines": ChannelExit.DATA,  # an API channel cut off
    "token_wrong_hub": ChannelExit.DATA,
    "key_mismatch": ChannelExit.DATA,
    "busy": ChannelExit.TEMPFAIL,
    "store_unavailable": ChannelExit.TEMPFAIL,
    "timeout": ChannelExit.TEMPFAIL,
    "internal": ChannelExit.TEMPFAIL,
    "too_many_watchers": ChannelExit.TEMPFAIL,
    "forbidden": ChannelExit.NOPERM,
    "access_ended": ChannelExit.NOPERM,
    "token_invalid": ChannelExit.NOPERM,
    "token_expired": ChannelExit.NOPERM,
    "token_revoked": ChannelExit.NOPERM,
    "token_used_up": ChannelExit.NOPERM,
    "key_revoked": ChannelExit.NOPERM,
}

# Codes an `estate-api v1` answer carries (`{"ok": false, "error": {"code", ...}}`) while the
# channel goes on serving requests.
API_ERROR_CODES = frozenset({
    "bad_json", "bad_request", "unknown_op", "bad_filter", "line_too_long", "not_found",
    "ambiguous", "too_large", "busy", "internal",
    "forbidden",  # an auditor acknowledging or silencing an incident
})

# Codes a connection or channel is refused with before any command runs, at the start of the
# refusal's text: the front door's `Refused CODE: why` line (`hub/_door.py`), a channel-open
# failure's reason, a disconnect's reason.
CONNECTION_REFUSAL_CODES = frozenset({
    "rate_limited", "source_busy", "early_drop", "startups_full", "penalised",
    "too_many_channels", "too_many_auth_attempts", "store_unavailable",
    "busy",  # an agent past `serve --max-agents`: its disconnect reason ends `retry_after=N`
})

BUSY_DEFAULT_RETRY_S = 60  # a `busy` login refusal that names no retry_after


def busy_retry_after(reason: str) -> int | None:
    """The seconds a `busy` login refusal (a disconnect reason `busy: ...; retry_after=N`)
    asks the client to wait; None when `reason` is another refusal."""
    if reason.partition(":")[0] != "busy":
        return None
    m = re.search(r"\bretry_after=(\d{1,6})\b", reason)
    return int(m.group(1)) if m else BUSY_DEFAULT_RETRY_S


# Why the hub refused an operator's remote session: the `code` of its `remote_refused` audit
# row (the operator's ssh is told the message, as the channel-open failure's text).
REMOTE_REFUSAL_CODES = frozenset({
    "forbidden_role", "bad_port", "unknown_host", "ambiguous_host", "revoked", "not_allowed",
    "not_offered", "operator_limit", "host_limit", "agent_failed",
})

# Which input budget refused a body: the `code` of its `input_refused` audit row (the client
# is told `busy`).
INPUT_REFUSAL_CODES = frozenset({"input_per_sender", "input_total"})

# --- size limits on the wire ------------------------------------------------------------------
MAX_REPORT_BYTES = 8 * 1024 * 1024
"""Largest uncompressed report accepted; a report of 5,000 packages is about 400 KB."""
MAX_RECEIVED_BYTES = 4 * 1024 * 1024
"""Largest report body accepted on the wire, compressed or not."""
MAX_ENROL_BYTES = 16 * 1024
MAX_EXPORT_REQUEST_BYTES = 16 * 1024 * 1024  # a reconcile request carries the register
MAX_API_LINE_BYTES = 64 * 1024  # one `estate-api v1` request line
