"""The estate overview (`o`): is the estate OK, per agency and per site, at a glance.

The hub computes the figures in the operator's scope (`overview` API op); this screen lays
them out, one row per agency followed by its sites, and Enter on a row shows that agency's or
site's hosts in the host list (the `agency:` / `site:` filter).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from estate.console._client import ApiFailure, HubConnection, HubUnreachable
from estate.console._keys import BACK, bindings
from estate.console._safe import plain

REFRESH_S = 30.0  # the figures move slowly; the hub recomputes them on each request
BLOCKS = "▁▂▃▄▅▆▇█"
UNKNOWN = "·"
COLUMNS = ("Agency / site", "Hosts", "Online", "Online, last 24 h", "Incidents", "Stale",
           "Unsupported OS", "Disks >90%", "Worst net")
NET_STYLE = {"ok": "green", "degraded": "yellow", "down": "bold red"}
LEGEND = ("Online, last 24 h: one block per hour, oldest first, the newest ending now; its "
          "height is the share of the hour the hosts were connected (▁ none, █ all; · no "
          "host known then). Online: hosts reporting now. Revoked hosts are left out. "
          "Enter: the hosts of the row in the list.")


def sparkline(shares: list[Any]) -> str:
    """Shares 0..1 as Unicode blocks, on a fixed scale (a full block is 100%): plain text
    that reads without colour."""
    out = []
    for share in shares:
        if isinstance(share, (int, float)) and not isinstance(share, bool):
            out.append(BLOCKS[round(max(0.0, min(1.0, share)) * (len(BLOCKS) - 1))])
        else:
            out.append(UNKNOWN)
    return "".join(out)


def _count(n: Any, style: str) -> Text:
    if not isinstance(n, int) or isinstance(n, bool):
        return Text("-", style="dim", justify="right")
    return Text(str(n), style=style if n else "dim", justify="right")


def _cells(name: Text, f: dict[str, Any]) -> list[Text]:
    share = f.get("online_share")
    online = Text(f"{int(share * 100)}% ({f.get('online')})" if isinstance(share, (int, float))
                  else "-", justify="right",
                  style="" if not isinstance(share, (int, float)) or share >= 0.9 else "yellow")
    net = f.get("worst_net")
    return [name, _count(f.get("hosts"), ""), online,
            Text(sparkline(f.get("sparkline") or [])),
            _count(f.get("open_incidents"), "bold red"), _count(f.get("stale"), "yellow"),
            _count(f.get("unsupported_os"), "yellow"), _count(f.get("disks_over_90"), "yellow"),
            Text(plain(net) if net else "-", style=NET_STYLE.get(net or "", "dim"))]


class OverviewScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings((BACK,))

    def __init__(self, hub: HubConnection) -> None:
        super().__init__()
        self.hub = hub
        self.places: dict[str, tuple[str, str | None]] = {}  # row key -> (agency, site)
        self.answer: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("Estate overview: loading…"), id="title")
        table: DataTable[Any] = DataTable(id="overview-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table
        yield Static(Text(LEGEND, style="dim"), id="legend")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.load()
        self.set_interval(REFRESH_S, self.load)

    @work(exclusive=True, group="overview")
    async def load(self) -> None:
        try:
            self.answer = await self.hub.request("overview")
        except (ApiFailure, HubUnreachable) as exc:
            self.query_one("#title", Static).update(Text(f"Estate overview: {exc}",
                                                         style="bold red"))
            return
        self._fill(self.answer or {})

    def _fill(self, answer: dict[str, Any]) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        self.places = {}
        for a in answer.get("agencies") or []:
            key = f"a{len(self.places)}"
            self.places[key] = (str(a.get("agency")), None)
            table.add_row(*_cells(Text(plain(a.get("agency"), 60), style="bold"), a), key=key)
            for s in a.get("sites") or []:
                key = f"s{len(self.places)}"
                self.places[key] = (str(a.get("agency")), str(s.get("site")))
                table.add_row(*_cells(Text("  " + plain(s.get("site"), 60)), s), key=key)
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1), animate=False)
        title = Text("Estate overview", style="bold")
        estate = answer.get("estate")
        if isinstance(estate, dict):
            share = estate.get("online_share")
            title.append(f"   {estate.get('hosts')} hosts")
            if isinstance(share, (int, float)):
                title.append(f"   {int(share * 100)}% online")
            incidents = estate.get("open_incidents") or 0
            title.append(f"   {incidents} open incidents", style="bold red" if incidents
                         else "green")
            title.append(f"   {sparkline(estate.get('sparkline') or [])}")
        title.append(f"   as of {plain(answer.get('generated_at'))[:16].replace('T', ' ')} UTC",
                     style="dim")
        self.query_one("#title", Static).update(title)

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        place = self.places.get(str(event.row_key.value))
        if place is not None:
            self.app.show_place(*place)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()
