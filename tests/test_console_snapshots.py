"""SVG snapshots of the main screens, with fixed data so the picture is repeatable.

A failing snapshot shows a change in how the console looks. If the change is intended,
regenerate with `ESTATE_UPDATE_SNAPSHOTS=1 make test` and review the new SVGs in the diff.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from estate.console._client import HubConnection
from estate.console.app import EstateApp

SNAPSHOTS = Path(__file__).parent / "snapshots"
ROWS = [
    ["ag-000000000001", "fire-lt-0412", "Fire & Rescue", "Station 12", "online",
     ["ok", 23.4, None], "Windows 11 Pro 23H2", "20XWCTO1WW", "PF2ABCDE",
     "11th Gen Intel(R) Core(TM) i5", 16 * 2**30, 41.0, "10.20.4.17",
     "2026-11-27T09:00:00.000000Z", "ready",
     [62.5, 5, 2, 1, "disk_encryption", "Fixed disks encrypted",
      "disk_encryption secure_configuration updates_recent security_update_management"]],
    ["ag-000000000002", "school-pc-07", "Schools", "École Nord", "offline",
     ["degraded", 812.0, "gateway"], "Ubuntu 22.04", "OptiPlex 7090", "SN0007",
     "Intel(R) Core(TM) i5-10505", 8 * 2**30, 96.5, "10.30.1.7",
     "2026-11-27T08:15:00.000000Z", "allowed",
     [100.0, 8, 0, 0, None, None, ""]],
    ["ag-000000000003", "[red]evil[/red]\x1b[2J", "Schools", "École Nord", "stale",
     ["down", None, "link"], "Debian GNU/Linux 12.5", None, None, None, None, None, None,
     "2026-11-26T23:59:00.000000Z", "off", None],  # not evaluated
]
# A host's results as the hub's `host` answer carries them; the reasons quote agent text.
COMPLIANCE = {
    "policy": {"name": "Estate default (Cyber Essentials basics)", "version": "1",
               "hash": "3f2a9c0d" * 8},
    "results": [
        {"control": control, "title": title, "theme": theme, "severity": severity,
         "outcome": outcome, "fact": fact, "reason": reason,
         "since": "2026-11-20T10:00:00.000000Z"}
        for control, title, theme, severity, outcome, fact, reason in (
            ("firewall_on", "Firewall on", "firewalls", "high", "pass",
             "enabled=true (windows)", "the firewall is on"),
            ("disk_encryption", "Fixed disks encrypted", "secure_configuration", "high",
             "fail", "not encrypted: D:", "1 of 2 fixed volumes not encrypted"),
            ("secure_boot", "Secure Boot on", "secure_configuration", "medium", "unknown",
             "secure_boot=unknown", "[red]pwn[/red]\x1b[2J Confirm-SecureBootUEFI failed"),
            ("updates_recent", "Updated within 14 days", "security_update_management",
             "high", "fail", "last_success=2026-10-01T00:00:00",
             "no update installed in the last 14 days"),
        )],
}


# Incidents as the hub's `incidents` answer has them: open first; titles quote site names.
INCIDENTS = [
    {"id": 7, "kind": "site_outage", "subject": "site:Fire & Rescue/Station 12",
     "title": "Site outage at Station 12", "agency": "Fire & Rescue", "site": "Station 12",
     "agent_id": None, "probe": None, "state": "open",
     "opened_at": "2026-11-27T08:52:10.000000Z", "updated_at": "2026-11-27T08:58:00.000000Z",
     "resolved_at": None, "hosts": 14, "acked_by": "operator:duty", "acked_at":
     "2026-11-27T08:55:00.000000Z", "silenced_until": None, "silenced_by": None},
    {"id": 5, "kind": "shared_service", "subject": "service:Schools/École Nord/hub-dns",
     "title": "hub-dns (dns estate-hub.example) failing at École Nord", "agency": "Schools",
     "site": "École Nord", "agent_id": None, "probe": "hub-dns", "state": "open",
     "opened_at": "2026-11-27T07:10:00.000000Z", "updated_at": "2026-11-27T07:40:00.000000Z",
     "resolved_at": None, "hosts": 3, "acked_by": None, "acked_at": None,
     "silenced_until": "2026-11-27T11:40:00.000000Z", "silenced_by": "operator:duty"},
    {"id": 3, "kind": "host_offline", "subject": "host:ag-000000000003",
     "title": "[red]evil[/red]\x1b[2J offline", "agency": "Schools", "site": "École Nord",
     "agent_id": "ag-000000000003", "probe": None, "state": "resolved",
     "opened_at": "2026-11-26T22:00:00.000000Z", "updated_at": "2026-11-26T23:30:00.000000Z",
     "resolved_at": "2026-11-26T23:30:00.000000Z", "hosts": 1, "acked_by": None,
     "acked_at": None, "silenced_until": None, "silenced_by": None},
]
INCIDENT_DETAIL = {
    **INCIDENTS[0],
    "hosts": [{"agent_id": f"ag-0000000001{i:02d}", "hostname": f"fire-st12-{i:02d}",
               "since": "2026-11-27T08:51:00.000000Z",
               "until": "2026-11-27T08:58:00.000000Z" if i == 3 else None}
              for i in range(1, 5)],
    "timeline": [
        {"at": "2026-11-27T08:52:10.000000Z", "event": "opened", "actor": None,
         "detail": {"count": 4, "hosts": ["ag-000000000101", "ag-000000000102"]}},
        {"at": "2026-11-27T08:55:00.000000Z", "event": "acknowledged",
         "actor": "operator:duty", "detail": None},
        {"at": "2026-11-27T08:58:00.000000Z", "event": "hosts_changed", "actor": None,
         "detail": {"added": [], "count": 3, "recovered": ["ag-000000000103"]}},
    ],
}


def _figures(hosts: int, online: int, dip: int, **more: object) -> dict:
    """An overview row: 24 hourly shares, all online but a dip `dip` hours ago."""
    spark = [1.0] * 24
    if dip:
        spark[24 - dip] = 0.25
    return {"hosts": hosts, "online": online, "online_share": round(online / hosts, 3),
            "sparkline": spark, "open_incidents": 0, "stale": 0, "unsupported_os": 0,
            "disks_over_90": 0, "worst_net": "ok", **more}


OVERVIEW = {
    "agencies": [
        {"agency": "Fire & Rescue", **_figures(40, 26, 1, open_incidents=1,
                                               worst_net="degraded"),
         "sites": [{"site": "Station 12", **_figures(14, 0, 1, open_incidents=1,
                                                     worst_net=None)},
                   {"site": "Station 3", **_figures(26, 26, 0, worst_net="degraded")}]},
        {"agency": "Schools", **_figures(120, 101, 0, open_incidents=1, stale=4,
                                         unsupported_os=2, disks_over_90=3),
         "sites": [{"site": "École Nord", **_figures(60, 49, 0, open_incidents=1, stale=4,
                                                     unsupported_os=2, disks_over_90=3)},
                   {"site": "[red]Sud[/red]", **{**_figures(60, 52, 0),
                                                 "sparkline": [None] * 20 + [1.0] * 4}}]},
    ],
    "estate": _figures(160, 127, 1, open_incidents=2, stale=4, unsupported_os=2,
                       disks_over_90=3, worst_net="degraded"),
    "generated_at": "2026-11-27T09:00:00.000000Z",
}


def _detail() -> dict:
    """A host's record as the hub's `host` answer gives it, with nothing that varies."""
    import random

    from estate.inventory import simulate

    ident = simulate.Identity(7, "ag-000000000001", None, "Fire & Rescue", "Station 12")  # type: ignore[arg-type]
    report = simulate.fake_report(ident, 1, 300.0, random.Random(1))
    report["collected_at"] = "2026-11-27T09:00:00Z"
    report["system"]["boot_time"] = "2026-11-20T07:30:00Z"
    report["system"]["hostname"] = "fire-lt-0412"
    packages = report["software"]["packages"][:5]
    report["software"]["packages"] = None
    return {"agent_id": "ag-000000000001", "agency": "Fire & Rescue", "site": "Station 12",
            "status": "online", "first_seen": "2026-11-01T08:00:00.000000Z",
            "last_seen": "2026-11-27T09:00:00.000000Z", "enrolled_at": "2026-11-01",
            "clock_skew_s": 0.4, "identity_conflict": None, "report": report,
            "packages": packages, "compliance": COMPLIANCE}


class FixedHub(HubConnection):
    """Answers the host screen's requests with fixed data (the real client is tested
    against a real hub in test_console.py; here only the picture matters)."""

    async def request(self, op: str, **params):  # type: ignore[no-untyped-def]
        if op == "host":
            return _detail()
        if op == "changes":
            return [{"id": 1, "at": "2026-11-20T10:00:00.000000Z", "agent_id": "x",
                     "hostname": "fire-lt-0412", "agency": "Fire & Rescue",
                     "kind": "memory_changed", "subject": None, "old_value": "8589934592",
                     "new_value": "17179869184"}]
        if op == "reports":
            return [{"report_id": f"x:1:{i}", "received_at": "", "collected_at": "",
                     "clock_skew_s": 0, "probes": [{"name": "file-server", "ok": True,
                                                    "latency_ms": float(5 + i % 7)}]}
                    for i in range(20)]
        if op == "incidents":
            return INCIDENTS
        if op == "incident":
            return INCIDENT_DETAIL
        if op == "overview":
            return OVERVIEW
        raise AssertionError(op)


class FixedApp(EstateApp):
    """The real app and screens over fixed rows: no hub, no clock, no randomness."""

    def keep_in_sync(self) -> None:  # type: ignore[override]
        self.call_after_refresh(self._fixed)

    def _fixed(self) -> None:
        self.model.load(ROWS)
        self.incidents = {i["id"]: i for i in INCIDENTS if i["state"] == "open"}
        self.estate.show(self.model.summary())
        self.loaded.set()


def _svg(app: EstateApp) -> str:
    svg = app.export_screenshot(title="Estate")
    return re.sub(r"terminal-\d+", "terminal", svg)  # ids vary between runs


async def _shoot(press: tuple[str, ...]) -> str:
    app = FixedApp(FixedHub("127.0.0.1:1", "snap", None, "SHA256:x"))
    async with app.run_test(size=(160, 24)) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 10)
        await pilot.pause()
        for key in press:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause(0.2)
        return _svg(app)


@pytest.mark.parametrize(("name", "press"), [
    ("estate", ()),
    ("estate_filtered", ("slash", *"status:offline", "enter")),
    ("help", ("question_mark",)),
    ("host_overview", ("home", "enter")),
    ("host_storage", ("home", "enter", "3")),
    ("host_probes", ("home", "enter", "5")),
    ("host_compliance", ("home", "enter", "8")),
    ("incidents", ("i",)),
    ("incident", ("i", "enter")),
    ("overview", ("o",)),
])
def test_snapshot(name, press):
    svg = asyncio.run(_shoot(press))
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("ESTATE_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(svg, encoding="utf-8")
        if not os.environ.get("ESTATE_UPDATE_SNAPSHOTS"):
            pytest.fail(f"{path.name} was missing and has been written: review and commit it")
    assert svg == path.read_text(encoding="utf-8"), (
        f"{name} looks different; if intended: ESTATE_UPDATE_SNAPSHOTS=1 make test")
    assert "\x1b" not in svg
