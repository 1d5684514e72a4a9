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
     "Windows 11 Pro 23H2", "20XWCTO1WW", "PF2ABCDE", "11th Gen Intel(R) Core(TM) i5",
     16 * 2**30, 41.0, "10.20.4.17", "2026-11-27T09:00:00.000000Z", "ready",
     [62.5, 5, 2, 1, "disk_encryption", "Fixed disks encrypted",
      "disk_encryption secure_configuration updates_recent security_update_management"]],
    ["ag-000000000002", "school-pc-07", "Schools", "École Nord", "offline",
     "Ubuntu 22.04", "OptiPlex 7090", "SN0007", "Intel(R) Core(TM) i5-10505", 8 * 2**30,
     96.5, "10.30.1.7", "2026-11-27T08:15:00.000000Z", "allowed",
     [100.0, 8, 0, 0, None, None, ""]],
    ["ag-000000000003", "[red]evil[/red]\x1b[2J", "Schools", "École Nord", "stale",
     "Debian GNU/Linux 12.5", None, None, None, None, None, None,
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
        raise AssertionError(op)


class FixedApp(EstateApp):
    """The real app and screens over fixed rows: no hub, no clock, no randomness."""

    def keep_in_sync(self) -> None:  # type: ignore[override]
        self.call_after_refresh(self._fixed)

    def _fixed(self) -> None:
        self.model.load(ROWS)
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
