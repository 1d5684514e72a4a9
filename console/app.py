"""The Estate console: is the estate OK, find any machine, see everything about it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static, Tree

from estate.console import _keys as keys
from estate.console._client import ApiFailure, HubConnection, HubUnreachable
from estate.console._export_dialog import ExportDialog
from estate.console._host import TABS, HostScreen
from estate.console._incidents import IncidentScreen, IncidentsScreen
from estate.console._keys import bindings
from estate.console._model import HostModel
from estate.console._overview import OverviewScreen
from estate.console._safe import plain
from estate.console._settings import PinnedHub
from estate.console._table import SHOWN, HostTable
from estate.console.export import ExportFailed, ExportOptions, build_request, fetch
from estate.console.remote import command_line, shell_command, shell_refusal
from estate.inventory.filters import FilterError
from estate.inventory.hostlist import COLUMN_KEYS

RECONNECT_MAX_S = 30.0
PAGE_ROWS = 2500
INCIDENT_LIMIT = 1000  # open incidents the console follows (the hub's most per request)
# A site's health in the tree: down while the hub has a site outage open there; attention
# with any other open incident, or a host offline or stale; else ok. The mark reads without
# colour (NO_COLOR).
HEALTH_MARKS = {"ok": ("✓", "green"), "attention": ("!", "yellow"), "down": ("✗", "bold red")}
HEALTH_ORDER = ("ok", "attention", "down")


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, bindings: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.lines = list(bindings)

    def compose(self) -> ComposeResult:
        text = Text("Keys\n\n", style="bold")
        for combo, what in self.lines:
            text.append(f"  {combo:<18}", style="bold")
            text.append(f"{what}\n")
        text.append(f"\n  {f'1-{len(TABS)}':<18}host: switch tabs\n")
        text.append("\nTree: ✓ ok, ! attention (an incident open, a host offline or stale), "
                    "✗ down (a site outage open); N inc: open incidents there.\n")
        text.append("\nFilter: free text, field:value (status:offline, os:windows, "
                    "agency:fire), comparisons (disk>90, ram>=16), failing controls "
                    "(fail:encryption, fail:firewall), compliance<80, -word negates.\n")
        # Scrolls (arrows, page keys) when the terminal is shorter than the help.
        with VerticalScroll(id="help-scroll"):
            yield Static(text, id="help")


class EstateScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings(keys.ESTATE)

    def __init__(self, model: HostModel) -> None:
        super().__init__()
        self.model = model
        self._shown_summary: dict[str, Any] | None = None
        self._shown_tree: tuple[Any, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="banner")
        yield Static("connecting…", id="summary")
        with Horizontal():
            yield Tree("Estate", id="agencies")
            with Vertical():
                yield Input(placeholder="filter: text, status:offline, os:windows, disk>90, "
                                        "fail:firewall, compliance<80",
                            id="filter")
                yield HostTable(self.model, id="hosts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner").display = False
        self.query_one(HostTable).focus()

    # --- updates ------------------------------------------------------------------------

    def show(self, summary: dict[str, Any] | None) -> None:
        table = self.query_one(HostTable)
        table.reload()
        if summary is not None:
            self._tree(summary)
        self.show_counts()

    def show_counts(self) -> None:
        """The header line alone (counts, loading progress): cheap, unlike laying out the
        table and the tree again."""
        counts = self.model.counts()
        line = Text()
        line.append("Estate ", style="bold")
        incidents = self.app.open_incident_count  # type: ignore[attr-defined]
        ok = counts["offline"] == 0 and counts["stale"] == 0 and not incidents
        line.append("OK" if ok else "ATTENTION", style="bold green" if ok else "bold red")
        line.append(f"   {counts['total']} hosts   ")
        line.append(f"{counts['online']} online", style="green")
        line.append("   ")
        line.append(f"{counts['offline']} offline", style="red" if counts["offline"] else "")
        line.append("   ")
        line.append(f"{counts['stale']} stale", style="yellow" if counts["stale"] else "")
        shown = len(self.model.view)
        if shown != counts["total"]:
            line.append(f"   showing {shown}", style="italic")
        if self.app.loading:  # type: ignore[attr-defined]
            line.append(f"   {self.app.loading}…", style="italic")  # type: ignore[attr-defined]
        if self.app.readonly:  # type: ignore[attr-defined]
            line.append("   read-only", style="italic")
        # After what the view shows: an 80-column terminal must still say "showing N".
        if incidents is not None:  # None: the hub keeps no incidents (an older hub)
            line.append("   ")
            line.append(f"{incidents} open incident{'' if incidents == 1 else 's'}",
                        style="bold red" if incidents else "")
        # Last: on a narrow terminal what the view shows and the hub's state come first.
        share = self._compliance_share
        if share is not None:
            line.append("   compliance ")
            line.append(f"{int(share)}%", style=_share_style(share))
        self.query_one("#summary", Static).update(line)

    @property
    def _compliance_share(self) -> float | None:
        shown = self._shown_summary or {}
        share = shown.get("compliance", {}).get("totals", {}).get("share")
        return share if isinstance(share, (int, float)) else None

    def _tree(self, summary: dict[str, Any]) -> None:
        # show() runs on every live repaint; rebuilding an unchanged tree would also reset
        # what the operator expanded or selected in it.
        places = self.app.incident_places()  # type: ignore[attr-defined]
        if (summary, places) == self._shown_tree:
            return
        self._shown_summary, self._shown_tree = summary, (summary, places)
        tree = self.query_one(Tree)
        tree.clear()
        tree.root.expand()
        compliance = summary.get("compliance", {}).get("agencies", {})
        for agency, info in sorted(summary.get("agencies", {}).items()):
            shares = compliance.get(agency, {})
            sites = []
            for site, counts in sorted(info["sites"].items()):
                open_here, outage = places.get((agency, site), (0, False))
                sites.append((site, counts, open_here, _health(counts, open_here, outage)))
            agency_open = sum(n for (a, _), (n, _) in places.items() if a == agency)
            worst = max((h for *_, h in sites), key=HEALTH_ORDER.index, default="ok")
            if agency_open and worst == "ok":  # an incident of the agency's, no site's
                worst = "attention"
            node = tree.root.add(_count_label(agency, info["counts"], shares.get("counts"),
                                              agency_open, worst),
                                 data=("agency", agency), expand=True)
            for site, counts, open_here, health in sites:
                node.add_leaf(_count_label(site, counts, shares.get("sites", {}).get(site),
                                           open_here, health),
                              data=("site", agency, site))

    def banner(self, text: str | None) -> None:
        banner = self.query_one("#banner", Static)
        banner.display = text is not None
        if text:
            banner.update(Text(text, style="bold white on red"))

    # --- actions ------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self._apply_filter("")
        self.query_one(HostTable).focus()

    def action_sort(self) -> None:
        keys = [c.key for c in SHOWN]
        current = keys.index(self.model.sort_key) if self.model.sort_key in keys else -1
        self.model.sort_by(keys[(current + 1) % len(keys)])
        self.show(None)

    def action_reverse(self) -> None:
        self.model.sort_by(self.model.sort_key, not self.model.reverse)
        self.show(None)

    def action_shell(self) -> None:
        self.app.open_shell(self.query_one(HostTable).cursor_id)  # type: ignore[attr-defined]

    def action_export(self) -> None:
        self.app.open_export()  # type: ignore[attr-defined]

    def action_incidents(self) -> None:
        self.app.open_incidents()  # type: ignore[attr-defined]

    def action_overview(self) -> None:
        self.app.open_overview()  # type: ignore[attr-defined]

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(keys.help_lines(self.app.keymap_overrides)))  # type: ignore[attr-defined]

    @on(Input.Changed, "#filter")
    def _typed(self, event: Input.Changed) -> None:
        # While typing, a half-written word ("disk>") keeps the last good filter quietly.
        self._apply_filter(event.value, quiet=True)

    @on(Input.Submitted, "#filter")
    def _submitted(self, event: Input.Submitted) -> None:
        if self._apply_filter(event.value):
            self.query_one(HostTable).focus()

    def _apply_filter(self, text: str, quiet: bool = False) -> bool:
        try:
            self.model.set_filter(text)
        except FilterError as exc:
            if not quiet:
                self.notify(str(exc), severity="warning", timeout=4)
            return False
        self.show(None)
        return True

    @on(Tree.NodeSelected)
    def _tree_selected(self, event: Tree.NodeSelected[Any]) -> None:
        data = event.node.data
        box = self.query_one("#filter", Input)
        if not data:
            box.value = ""
        elif data[0] == "agency":
            box.value = f"agency:{_word(data[1])}"
        else:
            box.value = f"agency:{_word(data[1])} site:{_word(data[2])}"
        self.query_one(HostTable).focus()

    @on(HostTable.Opened)
    def _open(self, event: HostTable.Opened) -> None:
        self.app.push_screen(HostScreen(self.app.hub, event.agent_id))  # type: ignore[attr-defined]


def _word(name: str) -> str:
    """The longest word of a name: the filter splits on spaces (agency:fire)."""
    return max(name.lower().split(), key=len)


def _health(counts: dict[str, int], open_incidents: int, outage: bool) -> str:
    if outage:
        return "down"
    if open_incidents or counts.get("offline") or counts.get("stale"):
        return "attention"
    return "ok"


def _count_label(name: str, counts: dict[str, int],
                 compliance: dict[str, Any] | None = None, open_incidents: int = 0,
                 health: str | None = None) -> Text:
    label = Text()
    if health is not None:
        mark, style = HEALTH_MARKS[health]
        label.append(f"{mark} ", style=style)
    label.append(plain(name))
    label.append(f"  {counts['total']}", style="bold")
    # Open incidents, then the share, before the counts of trouble: a narrow tree cuts the
    # end of the label.
    if open_incidents:
        label.append(f" {open_incidents} inc", style="bold red")
    share = (compliance or {}).get("share")
    if isinstance(share, (int, float)):  # None: no host there is evaluated
        label.append(f" {int(share)}%", style=_share_style(share))
    if counts.get("offline"):
        label.append(f" {counts['offline']} off", style="red")
    if counts.get("stale"):
        label.append(f" {counts['stale']} stale", style="yellow")
    return label


def _share_style(share: float) -> str:
    """Green when every result passes, yellow from 80%, red below (the `compliance<80` line
    the filter help suggests)."""
    return "green" if share >= 100 else "yellow" if share >= 80 else "bold red"


class _ExportProgress:
    """Export progress in the header, where the loading progress goes."""

    def __init__(self, app: EstateApp) -> None:
        self.app = app

    def __call__(self, rows: int, total: int) -> None:
        self.app.loading = f"exporting: {rows} of ~{total} rows"
        self.app.estate.show(None)

    def done(self) -> None:
        self.app.loading = None
        self.app.estate.show(None)


class EstateApp(App[None]):
    TITLE = "Estate"
    CSS = """
    #banner { height: 1; }
    #summary { height: 1; padding: 0 1; }
    #agencies { width: 34; border-right: solid $panel; }
    #filter { height: 3; }
    #hosts { height: 1fr; }
    #help { padding: 1 2; width: 90; height: auto; background: $panel; }
    #help-scroll { width: 92; height: auto; max-height: 100%; }
    #title { height: 1; padding: 0 1; }
    HostScreen #tabs { height: 1fr; }
    HostScreen TabPane { height: 1fr; padding: 0; }
    HelpScreen { align: center middle; }
    #incident-list, #overview-table { height: 1fr; }
    #legend { height: auto; padding: 0 1; }
    """

    def __init__(self, hub: HubConnection, readonly: bool = False,
                 keymap: dict[str, str] | None = None) -> None:
        super().__init__()
        self.hub = hub
        self.keymap_overrides = keymap or {}
        self.readonly = readonly
        self.model = HostModel()
        self.estate = EstateScreen(self.model)
        self.loaded = asyncio.Event()  # every host is in the model
        self.usable = asyncio.Event()  # the first page is on screen
        self.loading: str | None = None
        self.last_export: Path | None = None
        # The open incidents in scope, by id, from the hub and then its watch; None while
        # unknown, or when the hub keeps no incidents (an older hub).
        self.incidents: dict[int, dict[str, Any]] | None = None
        self._dirty = False

    def on_mount(self) -> None:
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.push_screen(self.estate)
        self.set_interval(0.25, self._repaint)
        self.keep_in_sync()

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        await self.hub.close()

    def open_shell(self, agent_id: str | None) -> None:
        """Hand the terminal to `estate ssh` for this host; back here when the shell ends."""
        if agent_id is None:
            return
        row = self.model.rows.get(agent_id)
        problem = shell_refusal(agent_id, self.readonly,
                                row[COLUMN_KEYS.index("remote")] if row else None)
        if problem:
            self.notify(problem, severity="warning", timeout=8)
            return
        command = shell_command(self.hub, agent_id)
        try:
            with self.suspend():
                status = subprocess.call(command)  # our own CLI, no shell
                if status != 0:  # leave ssh's message readable before the console repaints
                    input(f"\n[estate] ssh ended with status {status}; press Enter to return "
                          f"to the console ")
        except SuspendNotSupported:
            self.notify(f"this terminal cannot hand over to ssh; run: {command_line(command)}",
                        severity="warning", timeout=15)

    @property
    def open_incident_count(self) -> int | None:
        return None if self.incidents is None else len(self.incidents)

    def incident_places(self) -> dict[tuple[str, str], tuple[int, bool]]:
        """Per (agency, site): open incidents there, and whether one is a site outage."""
        places: dict[tuple[str, str], tuple[int, bool]] = {}
        for i in (self.incidents or {}).values():
            key = (str(i.get("agency")), str(i.get("site") or ""))
            n, outage = places.get(key, (0, False))
            places[key] = (n + 1, outage or i.get("kind") == "site_outage")
        return places

    def incident_changed(self, incident: dict[str, Any]) -> None:
        """An incident as the hub has it now (from the watch, or an action's answer)."""
        if self.incidents is None or not isinstance(incident.get("id"), int):
            return
        if incident.get("state") == "open":
            self.incidents[incident["id"]] = incident
        else:
            self.incidents.pop(incident["id"], None)
        self._dirty = True

    def open_incidents(self) -> None:
        self.push_screen(IncidentsScreen(self.hub))

    def open_overview(self) -> None:
        self.push_screen(OverviewScreen(self.hub))

    def show_place(self, agency: str, site: str | None) -> None:
        """Back to the host list, filtered to an agency or a site (the tree's filter)."""
        while len(self.screen_stack) > 1 and self.screen is not self.estate:
            self.pop_screen()
        word = f"agency:{_word(agency)}"
        if site is not None:
            word += f" site:{_word(site)}"
        self._filter_from_palette(word)
        self.estate.query_one(HostTable).focus()

    def open_export(self) -> None:
        """The export dialog; the export runs in the background with progress in the header."""
        def chosen(choice: ExportOptions | None) -> None:
            if choice:
                self.export(choice)
        self.push_screen(ExportDialog(self.model.filter_text), chosen)

    @work(group="export")
    async def export(self, choice: ExportOptions) -> None:
        try:
            request, output = build_request(choice)
        except ValueError as exc:
            self.notify(f"export: {exc}", severity="error", timeout=10)
            return
        hub = PinnedHub(self.hub.address, self.hub.user, self.hub.hub_key, self.hub.key_path)
        try:
            manifest = await fetch(hub, request, output, _ExportProgress(self))
        except (HubUnreachable, ExportFailed) as exc:
            self.loading = None
            self.notify(f"export failed: {exc}", severity="error", timeout=15)
            return
        self.notify(f"exported {manifest['rows']} rows to {output} and its signed manifest "
                    f"(check with: estate verify {output.name})", timeout=15)
        self.last_export = output

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Export", "export what this view shows: CSV, XLSX or JSON with a "
                                      "signed manifest (ctrl+s)", self.open_export)
        for word, what in (("status:offline", "offline hosts"), ("status:stale", "stale hosts"),
                           ("disk>90", "hosts with a volume over 90% full"),
                           ("compliance<80", "hosts passing under 80% of the compliance "
                                             "controls"),
                           ("fail:encryption", "hosts whose disks fail the encryption "
                                               "control"),
                           ("os:windows", "Windows hosts"), ("", "everything (clear filter)")):
            yield SystemCommand(f"Show {what}", f"filter: {word or '(none)'}",
                                lambda w=word: self._filter_from_palette(w))
        for c in SHOWN:
            yield SystemCommand(f"Sort by {c.title}", c.description,
                                lambda k=c.key: self._sort_from_palette(k))
        yield SystemCommand("Incidents", "open incidents first, then recent ones; "
                                         "acknowledge or silence (i)", self.open_incidents)
        yield SystemCommand("Overview", "the estate per agency and site: online share, "
                                        "incidents, stale, unsupported OS, full disks (o)",
                            self.open_overview)
        yield SystemCommand("Help", "every key binding", self.estate.action_help)

    def _filter_from_palette(self, word: str) -> None:
        self.estate.query_one("#filter", Input).value = word

    def _sort_from_palette(self, key: str) -> None:
        self.model.sort_by(key)
        self.estate.show(None)

    @work(exclusive=True, group="sync")
    async def keep_in_sync(self) -> None:
        """Load everything, then follow the watch; on a lost connection, show a banner and
        reconnect with backoff."""
        delay = 1.0
        while True:
            try:
                if not self.hub.connected:
                    await self.hub.connect()
                # Subscribe first, then load: events that happen during the load wait in
                # the watch channel and are applied after it.
                watch = await self.hub.open_watch()
                await self._load()
                self.estate.banner(None)
                delay = 1.0
                async for event in self.hub.events(watch):
                    await self._event(event)
            except (HubUnreachable, ApiFailure, OSError) as exc:
                self.estate.banner(f" Connection to the hub lost: {exc}. "
                                   f"Reconnecting in {delay:.0f} s… ")
            else:
                self.estate.banner(" Connection to the hub lost. Reconnecting… ")
            await self.hub.close()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _load(self) -> None:
        # Pages keep every answer well under the SSH window (2 MiB); the list is shown and
        # usable from the first page, and fills in while the rest arrive.
        self.model.load([])
        count, shown_at = 0, 0
        # The next page is asked for as soon as a page arrives, before this one is taken
        # in: the hub reads it while the console works (two processes, two cores), instead
        # of each waiting for the other at every page.
        asking = asyncio.ensure_future(self._page(""))
        try:
            while True:
                page = await asking
                if not page["rows"]:
                    break
                count += len(page["rows"])
                if count < page["total"]:
                    asking = asyncio.ensure_future(self._page(page["rows"][-1][0]))
                self.model.extend(page["rows"])
                self.loading = f"loading {count} of {page['total']}" \
                    if count < page["total"] else None
                if count >= page["total"]:
                    break
                # The table and the tree are laid out again for the first page and then
                # each time the rows have doubled (at 100,000 hosts, showing every page
                # cost more than taking the pages in); the header's progress every page.
                if count >= shown_at * 2:
                    self.estate.show(self.model.summary())
                    self.usable.set()
                    shown_at = count
                else:
                    self.estate.show_counts()
                await asyncio.sleep(0)  # let the first page paint before the next arrives
        finally:
            # A page asked for when the load failed or was cancelled: cancelled, or its
            # outcome taken so that asyncio does not report it as never retrieved.
            if not asking.cancel() and not asking.cancelled():
                asking.exception()
        await self._load_incidents()
        self.loading = None
        self.estate.show(self.model.summary())
        self.usable.set()
        self.loaded.set()

    async def _page(self, after: str) -> Any:
        return await self.hub.request("hosts", after=after, limit=PAGE_ROWS, sort="agent_id")

    async def _load_incidents(self) -> None:
        try:
            answer = await self.hub.request("incidents", state="open", limit=INCIDENT_LIMIT)
        except ApiFailure as exc:
            if exc.code != "unknown_op":
                raise
            self.incidents = None  # a hub from before incidents: the header says nothing
            return
        self.incidents = {i["id"]: i for i in answer
                          if isinstance(i, dict) and isinstance(i.get("id"), int)
                          and i.get("state") == "open"}

    async def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("host", "presence") and event.get("row"):
            self.model.upsert(event["row"])
            self._dirty = True
        elif kind == "incident" and isinstance(event.get("incident"), dict):
            self.incident_changed(event["incident"])
        elif kind == "resync":
            await self._load()
        if isinstance(self.screen, (HostScreen, IncidentsScreen, IncidentScreen)):
            self.screen.hub_event(event)

    def _repaint(self) -> None:
        """Live updates are applied at most a few times a second, however many arrive."""
        if self._dirty:
            self._dirty = False
            self.model.refresh()
            self.estate.show(self.model.summary())
