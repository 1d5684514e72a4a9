"""The commands the hub's SSH server runs, one handler each, in one table keyed by the
protocol's command names. Who may run which is the protocol's `COMMANDS`; a new command is a
name there, a handler module here, and a line in HANDLERS."""

from __future__ import annotations

from estate.inventory.hub._commands.api import ApiCommand
from estate.inventory.hub._commands.base import Channel, Handler
from estate.inventory.hub._commands.enrol import EnrolCommand
from estate.inventory.hub._commands.export import ExportCommand
from estate.inventory.hub._commands.report import ReportCommand
from estate.inventory.hub._commands.watch import WatchCommand
from estate.inventory.protocol import (
    API_COMMAND,
    ENROL_COMMAND,
    EXPORT_COMMAND,
    REPORT_COMMAND,
    WATCH_COMMAND,
)

__all__ = ["HANDLERS", "Channel", "Handler"]

HANDLERS: dict[str, type[Handler]] = {
    REPORT_COMMAND: ReportCommand,
    ENROL_COMMAND: EnrolCommand,
    API_COMMAND: ApiCommand,
    WATCH_COMMAND: WatchCommand,
    EXPORT_COMMAND: ExportCommand,
}
