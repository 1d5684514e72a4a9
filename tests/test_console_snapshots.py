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

from console._client import HubConnection
from console.app import EstateApp

SNAPSHOTS = Path(__file__).parent / "snapshots"
ROWS = [
    ["ag-000000000001", "fire-lt-0412", "Fire & Rescue", "Station 12", "online",
     "Windows 11 Pro 23H2", "20XWCTO1WW", "PF2ABCDE", "11th Gen Intel(R) Core(TM) i5",
     16 * 2**30, 41.0, "10.20.4.17", "2026-11-27T09:00:00.000000Z"],
    ["ag-000000000002", "school-pc-07", "Schools", "École Nord", "offline",
     "Ubuntu 22.04", "OptiPlex 7090", "SN0007", "Intel(R) Core(TM) i5-10505", 8 * 2**30,
     96.5, "10.30.1.7", "2026-11-27T08:15:00.000000Z"],
    ["ag-000000000003", "[red]evil[/red]\x1b[2J", "Schools", "École Nord", "stale",
     "Debian GNU/Linux 12.5", None, None, None, None, None, None,
     "2026-11-26T23:59:00.000000Z"],
]


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
    app = FixedApp(HubConnection("127.0.0.1:1", "snap", None, "SHA256:x"))
    async with app.run_test(size=(160, 24)) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 10)
        await pilot.pause()
        for key in press:
            await pilot.press(key)
        await pilot.pause()
        return _svg(app)


@pytest.mark.parametrize(("name", "press"), [
    ("estate", ()),
    ("estate_filtered", ("slash", *"status:offline", "enter")),
    ("help", ("question_mark",)),
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
