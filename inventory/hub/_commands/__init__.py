"""The commands the hub's SSH server runs, one handler each, in one table keyed by the
protocol's command names. Who may run which is the protocol's `COMMANDS`; a new command is a
name there, a handler module here, and a line in HANDLERS."""

from __future__ import annotations

from estate.inventory.hub._commands.api import ApiCommand
from estate.inventory.hub._commands.base import Channel, Handler
from estate.inventory.hub._commands.enrol import EnrolCommand
from estate.inventory.hub._commands.export import ExportCommand
from estate.inventory.hub._commands.report import ReportCommand
from estate.inventory.hub._commands.report_stream import ReportStreamCommand
from estate.inventory.hub._commands.watch import WatchCommand

__all__ = ["HANDLERS", "Channel", "Handler"]

HANDLERS: dict[str, type[Handler]] = {handler.command: handler for handler in (
    ReportCommand, ReportStreamCommand, EnrolCommand, ApiCommand, WatchCommand, ExportCommand)}
