"""The console's export dialog (`ctrl+s`, `:export`): what the current view shows, exported.

It asks for the report (inventory, compliance, availability, ...), format, file, an optional
as-of date (availability: the window's end) and since (changes, availability); the current
filter goes with the request. The export is `estate export`'s own code path
(`estate.console.export.fetch`): the hub produces the file in the operator's scope and signs
its manifest, and both are written next to each other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from estate.console.export import ExportOptions
from estate.inventory.export._columns import REPORTS
from estate.inventory.export._writers import FORMATS


class ExportDialog(ModalScreen[ExportOptions | None]):
    """Returns the export chosen, or None (cancelled)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    ExportDialog { align: center middle; }
    #export { width: 80; height: auto; padding: 1 2; background: $panel; }
    #export Label { margin-top: 1; }
    #buttons { height: auto; margin-top: 1; }
    #dates { height: auto; }
    #dates Input { width: 1fr; }
    """

    def __init__(self, filter_text: str) -> None:
        super().__init__()
        self.filter_text = filter_text

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Label(f"Export what this view shows (filter: {self.filter_text or 'none'})")
            yield Label("Report")
            yield Select([(r, r) for r in REPORTS], value="inventory", allow_blank=False,
                         id="report")
            yield Label("Format")
            yield Select([(f, f) for f in FORMATS], value="xlsx", allow_blank=False,
                         id="format")
            yield Label("File (a manifest is written beside it)")
            yield Input(str(_default_path("inventory", "xlsx")), id="output")
            yield Label("As of, e.g. 2026-03-31 (availability: the window's end), and since "
                        "(UTC)")
            with Horizontal(id="dates"):
                yield Input("", placeholder="as of: now", id="as-of")
                yield Input("", placeholder="since (availability: 30 days back)", id="since")
            yield Label("Asset register (reconcile only): a CSV file")
            yield Input("", placeholder="register.csv", id="register")
            with Horizontal(id="buttons"):
                yield Button("Export", variant="primary", id="go")
                yield Button("Cancel", id="cancel")

    @on(Select.Changed)
    def _choice(self, event: Select.Changed) -> None:
        report = str(self.query_one("#report", Select).value)
        fmt = str(self.query_one("#format", Select).value)
        self.query_one("#output", Input).value = str(_default_path(report, fmt))

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#go")
    @on(Input.Submitted)
    def _go(self) -> None:
        register = self.query_one("#register", Input).value.strip()
        as_of = self.query_one("#as-of", Input).value.strip() or None
        since = self.query_one("#since", Input).value.strip() or None
        report = str(self.query_one("#report", Select).value)
        # Availability covers a window: the as-of date is its end.
        until, as_of = (as_of, None) if report == "availability" else (None, as_of)
        self.dismiss(ExportOptions(
            report=report,
            format=str(self.query_one("#format", Select).value),
            output=Path(self.query_one("#output", Input).value).expanduser(),
            filter=self.filter_text,
            as_of=as_of,
            since=since,
            until=until,
            register=Path(register).expanduser() if register else None))


def _default_path(report: str, fmt: str) -> Path:
    return Path.cwd() / f"estate-{report}-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
