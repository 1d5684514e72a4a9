"""One host: overview, hardware, storage, network, probes, software, changes and compliance."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Sparkline, Static, TabbedContent, TabPane

from estate.console._client import ApiFailure, HubConnection, HubUnreachable
from estate.console._keys import HOST, bindings
from estate.console._safe import plain

# Compliance comes last so the number keys of the older tabs stay where staff know them.
TABS = ("overview", "hardware", "storage", "network", "probes", "software", "changes",
        "compliance")
OUTCOME_STYLE = {"pass": "green", "fail": "bold red", "unknown": "yellow"}


def _t(value: Any) -> Text:
    """Any value as plain text: agent strings never become markup or escapes."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(plain(value))


def _size(n: Any) -> Text:
    if not isinstance(n, (int, float)):
        return _t(None)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return Text(f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}")
        n /= 1000
    return Text(str(n))


def _pairs(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        table.add_row(Text(label), value if isinstance(value, Text) else _t(value))
    return table


def _grid(headers: list[str], rows: list[list[Any]]) -> Table:
    table = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(v if isinstance(v, Text) else _t(v) for v in row))
    return table


class HostScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        *bindings(HOST),
        *[Binding(str(i + 1), f"show_tab('{name}')", name.title(), show=False)
          for i, name in enumerate(TABS)],
    ]

    def __init__(self, hub: HubConnection, agent_id: str) -> None:
        super().__init__()
        self.hub, self.agent_id = hub, agent_id
        self.detail: dict[str, Any] | None = None
        self.packages: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Static(Text(f"loading {self.agent_id}…"), id="title")
        with TabbedContent(id="tabs"):
            for name in TABS:
                with TabPane(name.title(), id=name), VerticalScroll():
                    if name == "software":
                        yield Input(placeholder="search packages", id="pkg-filter")
                    if name == "probes":
                        yield Static("", id="probes-body")
                        yield VerticalScroll(id="sparklines")
                    else:
                        yield Static("", id=f"{name}-body")
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(exclusive=True, group="host")
    async def load(self) -> None:
        try:
            self.detail = await self.hub.request("host", agent_id=self.agent_id)
            changes = await self.hub.request("changes", host=self.agent_id, limit=500)
            reports = await self.hub.request("reports", agent_id=self.agent_id, limit=50)
        except (ApiFailure, HubUnreachable) as exc:
            self.query_one("#title", Static).update(Text(f"{self.agent_id}: {exc}",
                                                         style="bold red"))
            return
        self._render_all(changes, reports)

    def hub_event(self, event: dict[str, Any]) -> None:
        """Live: reload when this host reports or changes."""
        row = event.get("row") or {}
        if event.get("agent_id") == self.agent_id or (row and row[0] == self.agent_id):
            self.load()

    def _render_all(self, changes: list[dict[str, Any]], reports: list[dict[str, Any]]) -> None:
        d = self.detail or {}
        r = d.get("report") or {}
        system, hw, net = r.get("system", {}), r.get("hardware", {}), r.get("network", {})
        title = Text()
        title.append(plain(system.get("hostname") or self.agent_id), style="bold")
        title.append(f"   {d.get('agency')} / {d.get('site')}   ")
        status = d.get("status") or "?"
        title.append(status, style={"online": "green", "offline": "bold red",
                                    "stale": "yellow"}.get(status, ""))
        self.query_one("#title", Static).update(title)
        os_ = system.get("os", {})
        self._body("overview", _pairs([
            ("Agent id", d.get("agent_id")), ("Status", d.get("status")),
            ("Agency / site", f"{d.get('agency')} / {d.get('site')}"),
            ("Hostname", system.get("hostname")), ("FQDN", system.get("fqdn")),
            ("OS", " ".join(str(x) for x in (os_.get("name"), os_.get("version")) if x)),
            ("Build / kernel", f"{os_.get('build') or '-'} / {os_.get('kernel') or '-'}"),
            ("Virtualisation", (system.get("virtualization") or {}).get("kind")),
            ("Boot time", system.get("boot_time")), ("Time zone", system.get("timezone")),
            ("Logged in", ", ".join(u["name"] for u in system.get("users", [])) or None),
            ("First seen", d.get("first_seen")), ("Last seen", d.get("last_seen")),
            ("Clock skew", f"{d.get('clock_skew_s') or 0:+.0f} s"),
            ("Same serial/UUID as", d.get("identity_conflict")),
            ("Collector errors", "; ".join(f"{e['collector']}: {e['reason']}"
                                           for e in r.get("errors", [])) or None),
        ]))
        cpu, mem, bios = hw.get("cpu", {}), hw.get("memory", {}), hw.get("bios", {})
        self._body("hardware", _pairs([
            ("Vendor", hw.get("vendor")), ("Model", hw.get("model")),
            ("Serial", hw.get("serial")), ("UUID", hw.get("uuid")),
            ("Chassis", hw.get("chassis")),
            ("BIOS", f"{bios.get('vendor') or '-'} {bios.get('version') or ''} "
                     f"{bios.get('date') or ''}"),
            ("CPU", cpu.get("model")),
            ("Cores / threads", f"{cpu.get('cores') or '-'} / {cpu.get('threads') or '-'}"),
            ("Memory", _size(mem.get("total_bytes"))), ("Swap", _size(mem.get("swap_total_bytes"))),
            ("Battery", None if not hw.get("battery") else
             f"{hw['battery'].get('percent')}%"),
        ]))
        disks = _grid(["Disk", "Model", "Serial", "Size", "SSD"], [
            [x.get("name"), x.get("model"), x.get("serial"), _size(x.get("size_bytes")),
             None if x.get("rotational") is None else not x["rotational"]]
            for x in hw.get("disks", [])])
        volumes = _grid(["Mount", "Type", "Size", "Used", "Free", "Use"], [
            [v.get("mount"), v.get("fstype"), _size(v.get("total_bytes")),
             _size(v.get("used_bytes")), _size(v.get("free_bytes")),
             _t(None) if v.get("used_percent") is None else
             Text(f"{v['used_percent']:.0f}%", style="bold red" if v["used_percent"] > 90
                  else "")] for v in hw.get("volumes", [])])
        self._body("storage", _stack(disks, volumes))
        gw = net.get("default_gateway") or {}
        nics = _grid(["Interface", "MAC", "Addresses", "Speed", "MTU", "Up"], [
            [n.get("name"), n.get("mac"),
             " ".join(f"{a['address']}/{a.get('prefix')}" for a in n.get("addresses", [])),
             f"{n['speed_mbps']} Mb/s" if n.get("speed_mbps") else None, n.get("mtu"),
             n.get("up")] for n in net.get("interfaces", [])])
        self._body("network", _stack(nics, _pairs([
            ("Default gateway", f"{gw.get('address') or '-'} ({gw.get('interface') or '-'})"),
            ("DNS servers", ", ".join(net.get("dns_servers", [])) or None)])))
        self._probes(r, reports)
        self.packages = (d.get("packages") or [])
        self._software("")
        self._body("changes", _grid(["When", "Change", "What", "Old", "New"], [
            [c["at"][:19].replace("T", " "), c["kind"], c.get("subject"), c.get("old_value"),
             c.get("new_value")] for c in reversed(changes)]) if changes else
            Text("No changes recorded yet.", style="dim"))
        self._body("compliance", _compliance(d.get("compliance")))

    def _probes(self, report: dict[str, Any], reports: list[dict[str, Any]]) -> None:
        probes = (report.get("connectivity") or {}).get("probes", [])
        self._body("probes", _grid(["Probe", "Kind", "Target", "OK", "Latency", "Error"], [
            [p.get("name"), p.get("kind"), p.get("target"), p.get("ok"),
             f"{p['latency_ms']:.1f} ms" if p.get("latency_ms") is not None else None,
             p.get("error")] for p in probes]) if probes else
            Text("No probe results in this report (an agent older than built-in probes).",
                 style="dim"))
        box = self.query_one("#sparklines", VerticalScroll)
        box.remove_children()
        history: dict[str, list[float]] = {}
        timed: set[str] = set()  # probes with a latency at least once (not `link`)
        for rep in reversed(reports):
            for p in rep.get("probes", []):
                history.setdefault(p["name"], []).append(p.get("latency_ms") or 0.0)
                if p.get("latency_ms") is not None:
                    timed.add(p["name"])
        for name, values in history.items():
            if name not in timed:
                continue
            box.mount(Static(Text(f"{plain(name)} latency, last {len(values)} reports")))
            box.mount(Sparkline(values))

    @on(Input.Changed, "#pkg-filter")
    def _search(self, event: Input.Changed) -> None:
        self._software(event.value)

    def _software(self, needle: str) -> None:
        needle = needle.lower()
        shown = [p for p in self.packages if needle in (p.get("name") or "").lower()]
        table = _grid(["Package", "Version", "Arch", "Publisher"], [
            [p.get("name"), p.get("version"), p.get("arch"), p.get("publisher")]
            for p in shown[:2000]])
        note = Text(f"{len(shown)} of {len(self.packages)} packages"
                    + (" (first 2000 shown)" if len(shown) > 2000 else ""), style="dim")
        self._body("software", _stack(note, table))

    def _body(self, name: str, renderable: Any) -> None:
        self.query_one(f"#{name}-body", Static).update(renderable)

    def action_shell(self) -> None:
        self.app.open_shell(self.agent_id)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name

    def action_tab(self, delta: int) -> None:
        tabs = self.query_one(TabbedContent)
        current = TABS.index(tabs.active) if tabs.active in TABS else 0
        tabs.active = TABS[(current + delta) % len(TABS)]


def _compliance(compliance: dict[str, Any] | None) -> Any:
    """Each control of the hub's policy with its outcome, the fact read and why.

    Facts and reasons quote what the agent sent: `_t` shows them as plain text.
    """
    if not compliance:
        return Text("Not evaluated yet: the hub has no compliance results for this host.",
                    style="dim")
    results = compliance.get("results") or []
    policy = compliance.get("policy") or {}
    tally = {"pass": 0, "fail": 0, "unknown": 0}
    for r in results:
        if r.get("outcome") in tally:
            tally[r["outcome"]] += 1
    outcome_line = Text()
    for outcome, n in tally.items():
        outcome_line.append(f"{n} {outcome}   ", style=OUTCOME_STYLE[outcome] if n else "dim")
    head = _pairs([
        ("Policy", f"{plain(policy.get('name'))} {plain(policy.get('version'))} "
                   f"(sha256 {plain(policy.get('hash'))[:12]})"),
        ("Results", outcome_line),
    ])
    table = _grid(["Outcome", "Control", "Title", "Theme", "Severity", "Fact", "Reason",
                   "Since"], [
        [Text(plain(r.get("outcome")), style=OUTCOME_STYLE.get(r.get("outcome") or "", "")),
         r.get("control"), r.get("title"), r.get("theme"), r.get("severity"), r.get("fact"),
         r.get("reason"), _when(r.get("since"))] for r in results])
    return _stack(head, table if results else
                  Text("No control of the policy applies to this host.", style="dim"))


def _when(value: Any) -> Text:
    return _t(None) if not value else Text(plain(value)[:19].replace("T", " "))


def _stack(*renderables: Any) -> Table:
    grid = Table.grid()
    for r in renderables:
        grid.add_row(r)
        grid.add_row(Text(""))
    return grid
