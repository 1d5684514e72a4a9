"""Incidents: the list (open first, then recent), one incident (the hosts affected and its
timeline), and acknowledging or silencing one (staff and admin; the hub decides and audits).

Titles, sites, hostnames and probe names come from agents' reports: every cell is plain
`rich.text.Text`, never markup. Other operators' acknowledgements arrive through the watch
(`incident` events) and show here live.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Label, Static

from estate.console._client import ApiFailure, HubConnection, HubUnreachable
from estate.console._keys import INCIDENTS, bindings
from estate.console._safe import plain

KIND_WORDS = {"site_outage": "site outage", "shared_service": "shared service",
              "host_offline": "host offline"}
# What the silence dialog offers, in minutes (the hub takes 1 to 10080).
SILENCE_CHOICES = ((15, "15 min"), (60, "1 h"), (240, "4 h"), (1440, "24 h"))
LIST_LIMIT = 1000
COLUMNS = ("Kind", "Title", "Site", "Hosts", "Opened", "State", "Acked / silenced")


def ordered(incidents: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Open first, then the most recently updated: the hub's own order."""
    by_update = sorted(incidents.values(), key=lambda i: str(i.get("updated_at") or ""),
                       reverse=True)
    return sorted(by_update, key=lambda i: i.get("state") != "open")


def when(value: Any) -> Text:
    """An ISO time as `YYYY-MM-DD HH:MM` (UTC), or a dim dash."""
    if not value:
        return Text("-", style="dim")
    return Text(plain(value)[:16].replace("T", " "))


def state_text(incident: dict[str, Any]) -> Text:
    state = str(incident.get("state") or "?")
    return Text(plain(state.upper() if state == "open" else state),
                style="bold red" if state == "open" else "green")


def handled_text(incident: dict[str, Any]) -> Text:
    """Who acknowledged it, and until when it is silenced (the hub's words for both)."""
    text = Text()
    if incident.get("acked_by"):
        text.append(f"acked by {_who(incident['acked_by'])}", style="cyan")
    if incident.get("silenced_until"):
        if text:
            text.append(", ")
        # The month and day: a silence lasts a week at most.
        text.append(f"silenced to {plain(incident['silenced_until'])[5:16].replace('T', ' ')}",
                    style="magenta")
    return text if text else Text("-", style="dim")


def _who(actor: Any) -> str:
    """An operator as the hub names them (`operator:duty`), without the prefix."""
    return plain(actor, 64).removeprefix("operator:")


def kind_text(incident: dict[str, Any]) -> Text:
    kind = incident.get("kind")
    return Text(KIND_WORDS.get(kind, plain(kind)) if isinstance(kind, str) else "-")


def place_text(incident: dict[str, Any]) -> Text:
    return Text(f"{plain(incident.get('agency'))} / {plain(incident.get('site'))}")


class SilenceDialog(ModalScreen[int | None]):
    """How long to silence an incident: minutes, or None (cancelled)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    SilenceDialog { align: center middle; }
    #silence { width: 64; height: auto; padding: 1 2; background: $panel; }
    #silence Horizontal { height: auto; margin-top: 1; }
    #silence Button { margin-right: 1; min-width: 10; }
    """

    def __init__(self, title: str) -> None:
        super().__init__()
        self.incident_title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="silence"):
            yield Label(Text(f"Silence: {plain(self.incident_title, 120)}"))
            yield Label("No notifications for it until the time is up; it stays open.")
            with Horizontal():
                for minutes, label in SILENCE_CHOICES:
                    yield Button(label, id=f"m{minutes}")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        self.dismiss(int(button[1:]) if button.startswith("m") else None)


class _IncidentActions(Screen[None]):
    """Acknowledge (`a`) and silence (`S`) the incident a screen has selected."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(INCIDENTS)

    def __init__(self, hub: HubConnection) -> None:
        super().__init__()
        self.hub = hub

    # Hooks each screen overrides: the list acts on its highlighted row, the detail on the
    # incident it shows.
    def selected(self) -> dict[str, Any] | None:
        """The incident `a` and `S` act on; None: none (nothing is done)."""
        return None

    def updated(self, incident: dict[str, Any]) -> None:
        """The hub's answer to an action: the incident as it is now, to show."""

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_ack(self) -> None:
        incident = self.selected()
        if incident is not None and self._may_act("acknowledge"):
            self._act("incident_ack", incident, {}, "acknowledged")

    def action_silence(self) -> None:
        incident = self.selected()
        if incident is None or not self._may_act("silence"):
            return

        def chosen(minutes: int | None) -> None:
            if minutes:
                self._act("incident_silence", incident, {"minutes": minutes},
                          f"silenced for {dict(SILENCE_CHOICES)[minutes]}")
        self.app.push_screen(SilenceDialog(str(incident.get("title") or "")), chosen)

    def _may_act(self, verb: str) -> bool:
        if self.app.readonly:  # type: ignore[attr-defined]
            self.notify(f"read-only console (--readonly): cannot {verb} incidents",
                        severity="warning", timeout=8, markup=False)
            return False
        return True

    @work(group="incident-action")
    async def _act(self, op: str, incident: dict[str, Any], params: dict[str, Any],
                   done: str) -> None:
        try:
            answer = await self.hub.request(op, incident_id=incident["id"], **params)
        except ApiFailure as exc:
            if exc.code == "forbidden":
                self.notify(f"Not allowed: only staff and admin operators may acknowledge or "
                            f"silence incidents. The hub said: {exc}", severity="error",
                            timeout=12, markup=False)
            else:
                self.notify(f"{op.replace('_', ' ')} failed: {exc}", severity="error",
                            timeout=10, markup=False)
            return
        except HubUnreachable as exc:
            self.notify(f"{op.replace('_', ' ')} failed: {exc}", severity="error", timeout=10,
                        markup=False)
            return
        if isinstance(answer, dict):
            self.updated(answer)
            self.app.incident_changed(answer)  # type: ignore[attr-defined]
        self.notify(f"{plain(incident.get('title'), 120)}: {done}", timeout=6, markup=False)


class IncidentsScreen(_IncidentActions):
    """Open incidents first, then those resolved in the last 7 days; Enter opens one."""

    def __init__(self, hub: HubConnection) -> None:
        super().__init__(hub)
        self.incidents: dict[int, dict[str, Any]] = {}
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Static(Text("Incidents: loading…"), id="title")
        table: DataTable[Any] = DataTable(id="incident-list", cursor_type="row",
                                          zebra_stripes=False)
        table.add_columns(*COLUMNS)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.load()

    @work(exclusive=True, group="incidents")
    async def load(self) -> None:
        try:
            answer = await self.hub.request("incidents", state="recent", limit=LIST_LIMIT)
        except (ApiFailure, HubUnreachable) as exc:
            self.query_one("#title", Static).update(Text(f"Incidents: {exc}",
                                                         style="bold red"))
            return
        self.incidents = {i["id"]: i for i in answer if isinstance(i, dict) and "id" in i}
        self.loaded = True
        self._fill()

    def hub_event(self, event: dict[str, Any]) -> None:
        incident = event.get("incident")
        if event.get("type") == "incident" and isinstance(incident, dict) and "id" in incident:
            self.updated(incident)

    def updated(self, incident: dict[str, Any]) -> None:
        self.incidents[incident["id"]] = {**self.incidents.get(incident["id"], {}), **incident}
        if self.loaded:
            self._fill()

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self.incidents.get(int(str(key.value)))

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        chosen = self.selected() if table.row_count else None
        table.clear()
        rows = ordered(self.incidents)
        for i in rows:
            table.add_row(kind_text(i), Text(plain(i.get("title"), 200)), place_text(i),
                          Text(str(i.get("hosts") if isinstance(i.get("hosts"), int) else "-"),
                               justify="right"),
                          when(i.get("opened_at")), state_text(i), handled_text(i),
                          key=str(i["id"]))
        if chosen is not None and chosen["id"] in self.incidents:
            table.move_cursor(row=table.get_row_index(str(chosen["id"])), animate=False)
        open_count = sum(i.get("state") == "open" for i in rows)
        title = Text("Incidents   ", style="bold")
        title.append(f"{open_count} open", style="bold red" if open_count else "green")
        title.append(f"   {len(rows) - open_count} resolved in the last 7 days")
        if not rows:
            title.append("   nothing to show: no incident open or recent in your agencies",
                         style="dim")
        self.query_one("#title", Static).update(title)

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        incident_id = int(str(event.row_key.value))
        self.app.push_screen(IncidentScreen(self.hub, incident_id))


class IncidentScreen(_IncidentActions):
    """One incident: what, where, its state, the hosts affected and its timeline."""

    def __init__(self, hub: HubConnection, incident_id: int) -> None:
        super().__init__(hub)
        self.incident_id = incident_id
        self.detail: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"incident {self.incident_id}: loading…"), id="title")
        with VerticalScroll():
            yield Static("", id="incident-body")
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(exclusive=True, group="incident")
    async def load(self) -> None:
        try:
            self.detail = await self.hub.request("incident", incident_id=self.incident_id)
        except (ApiFailure, HubUnreachable) as exc:
            self.query_one("#title", Static).update(Text(f"incident {self.incident_id}: {exc}",
                                                         style="bold red"))
            return
        self._fill()

    def hub_event(self, event: dict[str, Any]) -> None:
        incident = event.get("incident")
        if event.get("type") == "incident" and isinstance(incident, dict) \
                and incident.get("id") == self.incident_id:
            self.load()  # the hosts and the timeline come with the detail only

    def selected(self) -> dict[str, Any] | None:
        return self.detail

    def updated(self, incident: dict[str, Any]) -> None:
        self.load()

    def _fill(self) -> None:
        d = self.detail or {}
        title = Text()
        title.append(plain(d.get("title"), 200), style="bold")
        title.append("   ")
        title.append_text(state_text(d))
        self.query_one("#title", Static).update(title)
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        for label, value in (
                ("Kind", kind_text(d)), ("Agency / site", place_text(d)),
                ("Probe", Text(plain(d["probe"])) if d.get("probe") else None),
                ("Opened", when(d.get("opened_at"))), ("Updated", when(d.get("updated_at"))),
                ("Resolved", when(d.get("resolved_at"))), ("Acked / silenced",
                                                           handled_text(d))):
            if value is not None:
                facts.add_row(Text(label), value)
        hosts: list[Any] = d["hosts"] if isinstance(d.get("hosts"), list) else []
        host_table = Table("Hostname", "Agent id", "Since", "Until", box=None,
                           header_style="bold", pad_edge=False,
                           title=Text(f"Hosts affected ({len(hosts)})", style="bold"),
                           title_justify="left")
        for h in hosts:
            host_table.add_row(Text(plain(h.get("hostname") or "-")), Text(plain(h.get(
                "agent_id"))), when(h.get("since")), when(h.get("until")) if h.get("until")
                else Text("still affected", style="red"))
        timeline = Table("When", "Event", "By", "Detail", box=None, header_style="bold",
                         pad_edge=False, title=Text("Timeline", style="bold"),
                         title_justify="left")
        for e in d.get("timeline") or []:
            detail = e.get("detail")
            timeline.add_row(when(e.get("at")), Text(plain(e.get("event"))),
                             Text(_who(e.get("actor")) if e.get("actor") else "hub"),
                             Text(plain(json.dumps(detail, ensure_ascii=False), 300)
                                  if detail else "-"))
        body = Table.grid()
        for part in (facts, Text(""), host_table, Text(""), timeline):
            body.add_row(part)
        self.query_one("#incident-body", Static).update(body)
