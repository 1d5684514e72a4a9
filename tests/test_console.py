"""The console with Pilot, against a real hub over real SSH: filter, sort, drill down, back,
palette, help, live update, reconnect banner, and agent text that must stay plain."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncssh
import pytest

from estate.console._client import HubConnection
from estate.console._host import HostScreen
from estate.console._safe import plain
from estate.console._table import HostTable
from estate.console.app import EstateApp, HelpScreen
from estate.inventory import simulate
from tests.harness import Agent, HubProcess, make_report

# The escapes come first, so they fall inside the hostname column's width on screen.
EVIL = "\x1b[2J\u202e[red]pwn[/red]\x1b]8;;[link=https://e.vil]x[/link][@click=app.quit]q[/]evil"
EVIL_SHOWN = "\ufffd[2J\ufffd[red]pwn[/red]"  # what an operator must see, literally


@pytest.fixture()
def estate(tmp_path, live_report):
    """A hub with three real agents (one with a hostile hostname) and an admin operator."""
    hub = HubProcess(tmp_path / "hub").start()
    agents = []
    for i, (agency, site, name) in enumerate((("Fire & Rescue", "Station 1", "fire-01"),
                                              ("Schools", "École Nord", "school-01"),
                                              ("Schools", "École Nord", EVIL))):
        agent = Agent(hub, tmp_path / f"agent{i}", hub.token(agency, site))
        report = make_report(live_report, agent.agent_id, system__hostname=name[:255])
        if i == 1:
            report["hardware"]["volumes"][0]["used_percent"] = 95.0
        assert agent.send(report)[0] == 0
        agents.append(agent)
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "op_key"
    key_path.write_bytes(key.export_private_key())
    key_path.chmod(0o600)
    key.write_public_key(str(key_path) + ".pub")
    hub.admin("operator", "add", "ops", "--key", f"{key_path}.pub", "--role", "admin",
              "--agencies", "all")
    yield {"hub": hub, "agents": agents, "key": key_path}
    hub.kill()


def _app(estate) -> EstateApp:
    hub = estate["hub"]
    return EstateApp(HubConnection(hub.address, "ops", estate["key"], hub.fingerprint))


async def _loaded(app: EstateApp, pilot) -> HostTable:
    await asyncio.wait_for(app.loaded.wait(), 30)
    await pilot.pause()
    return app.estate.query_one(HostTable)


def _screen_text(table: HostTable) -> str:
    return "\n".join(table.render_line(y).text for y in range(min(40, table.size.height)))


def _widget_text(widget) -> str:
    """What a widget draws on screen, line by line, as the terminal would receive it."""
    from textual.geometry import Region

    lines = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join(line.text for line in lines)


async def _export_json(app, pilot, out: Path, report: str | None = None) -> None:
    """Through the export dialog (ctrl+s): `report` (default: the dialog's) as JSON to `out`,
    waiting for the file."""
    await pilot.press("ctrl+s")
    await _until(lambda: app.screen.__class__.__name__ == "ExportDialog", pilot)
    if report is not None:
        app.screen.query_one("#report").value = report
    app.screen.query_one("#format").value = "json"
    await pilot.pause()
    app.screen.query_one("#output").value = str(out)
    await pilot.click("#go")
    await _until(lambda: app.last_export == out, pilot, timeout=60)


async def _until(predicate, pilot, timeout: float = 20) -> None:
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out waiting for the console")


def test_filter_sort_drill_down_back_help_palette(estate):
    async def run() -> None:
        app = _app(estate)
        async with app.run_test(size=(200, 40)) as pilot:
            table = await _loaded(app, pilot)
            assert len(app.model.view) == 3
            assert "fire-01" in _screen_text(table)
            await pilot.press("slash", *"disk>90")
            await pilot.pause()
            assert [r[1] for r in app.model.view] == ["school-01"]
            await pilot.press("escape")  # leave the box, then clear
            await pilot.press("escape")
            await pilot.pause()
            assert len(app.model.view) == 3
            await pilot.press("slash", *"status:offline")
            await pilot.pause()
            assert all(r[4] == "offline" for r in app.model.view)
            await pilot.press("escape", "escape")
            # Sort: s moves to the next column, r reverses.
            await pilot.press("s")
            assert app.model.sort_key == "agency"
            await pilot.press("r")
            assert app.model.reverse and app.model.view[0][2] == "Schools"
            # Drill down and back.
            table.focus()
            await pilot.press("home", "enter")
            await _until(lambda: isinstance(app.screen, HostScreen)
                         and app.screen.detail is not None, pilot)
            host: HostScreen = app.screen  # type: ignore[assignment]
            assert host.agent_id == app.model.view[0][0]
            await pilot.press("6")
            assert host.query_one("TabbedContent").active == "software"
            await pilot.press("escape")
            assert app.screen is app.estate
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.press("colon")
            await pilot.pause()
            assert "CommandPalette" in type(app.screen).__name__
            await pilot.press("escape")

    asyncio.run(run())


def test_agent_text_is_never_markup_or_terminal_control(estate):
    async def run() -> None:
        app = _app(estate)
        async with app.run_test(size=(220, 40)) as pilot:
            table = await _loaded(app, pilot)
            await pilot.press("slash", *"pwn")
            await pilot.pause()
            assert len(app.model.view) == 1
            text = _screen_text(table)
            row = [line for line in text.splitlines() if "pwn" in line]
            assert EVIL_SHOWN in text, f"markup and escapes must show as marked text: {row!r}"
            assert "\x1b" not in text and "\u202e" not in text
            table.focus()
            await pilot.press("enter")
            await _until(lambda: isinstance(app.screen, HostScreen)
                         and app.screen.detail is not None, pilot)
            await pilot.pause()
            assert app.is_running, "[@click=app.quit] must not have done anything"
            for part in ("#title", "#overview-body"):
                shown = _widget_text(app.screen.query_one(part))
                assert EVIL_SHOWN in shown, f"{part}: {shown!r}"
                assert "\x1b" not in shown and "\u202e" not in shown, part

    asyncio.run(run())
    assert plain(EVIL).count("\ufffd") == 3


def test_live_update_keeps_the_cursor_and_reconnect_banner(estate, live_report):
    hub, agents = estate["hub"], estate["agents"]

    async def run() -> None:
        app = _app(estate)
        async with app.run_test(size=(200, 40)) as pilot:
            table = await _loaded(app, pilot)
            table.focus()
            await pilot.press("end")
            chosen = table.selected()
            # A host renamed by a new report arrives through the watch.
            report = make_report(live_report, agents[0].agent_id, system__hostname="aaa-first")
            await asyncio.to_thread(agents[0].send, report)
            await _until(lambda: any(r[1] == "aaa-first" for r in app.model.view), pilot)
            await pilot.pause(0.5)
            assert table.selected() == chosen, "the cursor moved with the update"
            # The hub goes away: a banner; it comes back: the banner goes.
            hub.kill()
            banner = app.estate.query_one("#banner")
            await _until(lambda: banner.display, pilot)
            assert "lost" in str(banner.render())
            hub.start()
            await _until(lambda: not banner.display, pilot, timeout=40)
            assert len(app.model.rows) == 3

    asyncio.run(run())


def test_model_filters_twenty_thousand_rows():
    from estate.console._model import HostModel
    from estate.inventory.hostlist import COLUMN_KEYS

    rows = []
    for i, (agency, site) in enumerate(simulate.placements(20_000)):
        rows.append([f"ag-{i:012x}", f"pc-{i:05d}", agency, site,
                     ("online", "offline", "stale")[i % 3],
                     (["ok", 20.0, None], ["degraded", 612.0, "hub"], None)[i % 3],
                     "Windows 11 Pro", "OptiPlex",
                     f"SN{i}", "Intel", 8 * 2**30, float(i % 100), f"10.0.{i // 256}.{i % 256}",
                     "2026-01-01T00:00:00Z", "off", _summary(i % 101)])
    assert len(rows[0]) == len(COLUMN_KEYS)
    model = HostModel()
    model.load(rows)
    disk, compliance = COLUMN_KEYS.index("disk_percent"), COLUMN_KEYS.index("compliance")
    model.set_filter("status:offline disk>90 agency:fire")
    assert model.view and all(r[4] == "offline" and r[disk] > 90 and r[2] == "Fire & Rescue"
                              for r in model.view)
    model.set_filter("net:degraded rtt>500")
    assert len(model.view) == len([r for r in rows if r[4] == "offline"])
    model.set_filter("-status:online")
    assert len(model.view) == 20_000 - len([r for r in rows if r[4] == "online"])
    model.set_filter("compliance<80 fail:firewall")
    assert len(model.view) == len([r for r in rows if r[compliance][0] < 80])
    model.set_filter("")
    model.sort_by("compliance")
    assert model.view[0][compliance][0] == 0.0 and model.view[-1][compliance][0] == 100.0
    summary = model.summary()["compliance"]["totals"]
    assert summary["hosts"] == 20_000 and summary["share"] == round(
        100 * summary["passed"] / (summary["passed"] + summary["failed"]), 1)


def _summary(passed: int) -> list:
    """A compliance summary of 100 controls, `passed` of them passing, the rest failing the
    firewall control."""
    failing = passed < 100
    return [float(passed), passed, 100 - passed, 0, "firewall_on" if failing else None,
            "Firewall on" if failing else None, "firewall_on firewalls" if failing else ""]


@pytest.mark.skipif(sys.platform != "linux", reason="tmux test on Linux")
def test_tmux_embedded_default_shows_this_machine(tmp_path, live_report):
    """The real terminal: `estate` with the embedded default; this machine's hostname
    appears, the filter and the host screen work, and q quits."""
    import shutil
    import subprocess
    import time

    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    session = f"estate-test-{tmp_path.name[-8:]}"
    data = tmp_path / "data"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "45",
                    f"{sys.executable} -m estate.console.cli --data {data}"], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"],
                              capture_output=True, text=True).stdout

    def wait_for_text(text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = screen()
            if text in shown:
                return shown
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared:\n{screen()}")

    def wait_for_gone(text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text not in screen():
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never went away:\n{screen()}")

    hostname = live_report["system"]["hostname"]
    try:
        wait_for_text("This machine")
        wait_for_text(hostname)
        # Each step waits for the screen to show the last one took effect: the footer lists
        # the list's keys ("s Sort") only while the host list, not the filter box, has focus.
        subprocess.run(["tmux", "send-keys", "-t", session, "/"], check=True)
        wait_for_gone("s Sort")
        subprocess.run(["tmux", "send-keys", "-t", session, "-l", hostname], check=True)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        wait_for_text("s Sort")
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        wait_for_text("Agent id")
        subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
        wait_for_text("s Sort")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session],
                                   capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.3)
        assert not alive, f"estate did not quit on q; the screen:\n{screen()}"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the embedded hub or agent outlived the console"


def test_keymap_file_rebinds_and_bad_ids_are_named(estate, tmp_path):
    from estate.console._keys import load_keymap

    bad = tmp_path / "bad.toml"
    bad.write_text('[keys]\n"estate.fliter" = "f"\n')
    with pytest.raises(ValueError, match=r"keys.estate.fliter: unknown binding"):
        load_keymap(bad)
    good = tmp_path / "keymap.toml"
    good.write_text('[keys]\n"estate.filter" = "f"\n"estate.help" = "h"\n')
    keymap = load_keymap(good)

    async def run() -> None:
        hub = estate["hub"]
        app = EstateApp(HubConnection(hub.address, "ops", estate["key"], hub.fingerprint),
                        keymap=keymap)
        async with app.run_test(size=(200, 40)) as pilot:
            await _loaded(app, pilot)
            await pilot.press("f", *"school")
            await pilot.pause()
            assert app.model.filter_text == "school"
            await pilot.press("escape", "escape", "h")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            assert "h " in str(app.screen.query_one("#help").render())

    asyncio.run(run())


def test_embedded_default_stops_its_hub_and_agent_when_killed(tmp_path):
    """SIGTERM (or a closed terminal's SIGHUP) to `estate` stops what it started."""
    import shutil
    import signal
    import subprocess
    import time

    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    data = tmp_path / "data"
    session = f"estate-kill-{tmp_path.name[-8:]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                    f"{sys.executable} -m estate.console.cli --data {data}"], check=True)

    def pids(pattern: str) -> list[int]:
        """Our Python processes matching (not tmux, whose command line holds ours too)."""
        out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
        found = []
        for p in out.stdout.split():
            try:
                argv0 = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0 == sys.executable.encode():
                found.append(int(p))
        return found

    try:
        deadline = time.monotonic() + 60
        while len(pids(f"--data {data}/hub")) + len(pids(f"{data}/agent")) < 2:
            assert time.monotonic() < deadline, "the embedded hub and agent never started"
            time.sleep(0.2)
        (console,) = pids(f"estate.console.cli --data {data}")

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"],
                                  capture_output=True, text=True).stdout

        # The console has drawn its list, so its signal handlers are in place.
        while "This machine" not in screen():
            assert time.monotonic() < deadline, f"the console never drew:\n{screen()}"
            time.sleep(0.2)
        os.kill(console, signal.SIGTERM)
        deadline = time.monotonic() + 45
        while pids(str(data)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                for p in pids(str(data))]
        assert left == [], f"outlived the console: {left}"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        for pid in pids(str(data)):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_s_exports_what_the_view_shows_with_a_signed_manifest(estate, tmp_path):
    """The dialog, then the same code path as `estate export`: the filter goes with it."""
    import json

    from estate.inventory.export.manifest import verify

    out = tmp_path / "view.json"

    async def run() -> None:
        app = _app(estate)
        async with app.run_test(size=(200, 50)) as pilot:
            await _loaded(app, pilot)
            app.estate.query_one("#filter").value = "agency:fire"
            await pilot.pause()
            await _export_json(app, pilot, out)

    asyncio.run(run())
    doc = json.loads(out.read_text())
    assert [r["hostname"] for r in doc["rows"]] == ["fire-01"]
    checked = verify(out)
    assert checked.manifest["filters"]["filter"] == "agency:fire"
    assert checked.fingerprint == estate["hub"].fingerprint


# An agent's reason for a fact it could not read: markup, an action link and terminal control.
EVIL_REASON = "\x1b[2J[red]pwn[/red][@click=app.quit]q[/]"
EVIL_REASON_SHOWN = "\ufffd[2J[red]pwn[/red][@click=app.quit]q[/]"


def _security(firewall_on: bool, platform_reason: str | None = None) -> dict:
    """A complete `security` section: firewall on or off, Secure Boot unknown (with the
    agent's reason), the rest passing the default policy's controls."""
    import time as time_

    now = time_.time()
    iso = lambda t: time_.strftime("%Y-%m-%dT%H:%M:%SZ", time_.gmtime(t))  # noqa: E731
    return {
        "encryption": {"volumes": [{"mount": "/", "device": "/dev/dm-0", "encrypted": True,
                                    "method": "luks2", "protection": None, "percent": None}],
                       "reason": None},
        "firewall": {"enabled": firewall_on, "product": "nftables", "profiles": [],
                     "reason": None},
        "malware": {"product": "clamav", "enabled": True, "realtime": True,
                    "signature_age_days": 1.0,
                    "products": [{"name": "clamav", "enabled": True, "up_to_date": True}],
                    "gatekeeper": None, "xprotect_version": None, "reason": None},
        "updates": {"last_success": iso(now - 86400), "pending": 0, "reboot_required": False,
                    "checked_at": iso(now), "reason": None},
        "platform": {"firmware": "uefi", "secure_boot": None, "tpm_present": True,
                     "tpm_version": "2.0", "reason": platform_reason or "mokutil not found"},
        "accounts": {"admins": ["root"], "auto_login": False, "reason": None},
    }


def test_compliance_column_filters_tree_host_tab_and_export(estate, live_report, tmp_path):
    """Reports with security facts through the real hub: the column shows the worst failing
    control, `fail:` and `compliance<` filter, the tree shows shares, the host tab lists each
    control with an agent's hostile reason as plain text, and the export dialog exports the
    compliance report of the filtered view."""
    import json

    from estate.console._table import compliance_cell
    from estate.inventory.export.manifest import verify
    from estate.inventory.hostlist import COLUMN_KEYS

    fire, school = estate["agents"][0], estate["agents"][1]
    for agent, name, firewall_on, reason in ((fire, "fire-01", False, EVIL_REASON),
                                             (school, "school-01", True, None)):
        report = make_report(live_report, agent.agent_id, system__hostname=name)
        report["security"] = _security(firewall_on, reason)
        assert agent.send(report)[0] == 0
    at = COLUMN_KEYS.index("compliance")
    out = tmp_path / "compliance.json"

    async def run() -> None:
        app = _app(estate)
        async with app.run_test(size=(300, 50)) as pilot:
            table = await _loaded(app, pilot)
            fire_row, school_row = app.model.rows[fire.agent_id], app.model.rows[school.agent_id]
            assert "firewall_on" in fire_row[at][6].split()
            assert "firewall_on" not in school_row[at][6].split()
            assert fire_row[at][0] < school_row[at][0]
            # The column: the worst failing control, or the passing share.
            shown = _screen_text(table)
            for row in (fire_row, school_row):
                line = next(x for x in shown.splitlines() if row[1] in x)
                assert compliance_cell(row[at])[0] in line, line
            # The filters, typed.
            await pilot.press("slash", *"fail:firewall", "enter")
            await pilot.pause()
            assert [r[1] for r in app.model.view] == ["fire-01"]
            await pilot.press("escape")
            app.estate.query_one("#filter").value = ""
            await pilot.pause()
            await pilot.press("slash", *f"compliance<{school_row[at][0]:g}", "enter")
            await pilot.pause()
            assert "fire-01" in [r[1] for r in app.model.view]
            assert "school-01" not in [r[1] for r in app.model.view]
            # A bad word is refused with a message and keeps the last good filter.
            good = app.model.filter_text
            await pilot.press("slash")
            app.estate.query_one("#filter").value = "compliance<eighty"
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            assert app.model.filter_text == good
            assert any("compliance<eighty" in str(n.message) for n in app._notifications)
            # The tree: each agency's share of passing results.
            summary = app.model.summary()["compliance"]["agencies"]
            labels = [str(node.label) for node in app.estate.query_one("Tree").root.children]
            fire_label = next(x for x in labels if x[2:].startswith("Fire & Rescue"))
            assert f" {int(summary['Fire & Rescue']['counts']['share'])}%" in fire_label
            # fire-01's host tab: every control, the agent's reason as it was sent.
            app.estate.query_one("#filter").value = "fail:firewall"
            await pilot.pause()
            table.focus()
            await pilot.press("home", "enter")
            await _until(lambda: isinstance(app.screen, HostScreen)
                         and app.screen.detail is not None, pilot)
            await pilot.press("8")
            await pilot.pause()
            host: HostScreen = app.screen  # type: ignore[assignment]
            assert host.query_one("TabbedContent").active == "compliance"
            body = _widget_text(host.query_one("#compliance-body"))
            for result in host.detail["compliance"]["results"]:
                assert result["control"] in body
            assert "firewall_on" in body and "fail" in body
            assert EVIL_REASON_SHOWN in body, body
            assert "\x1b" not in body
            assert app.is_running, "[@click=app.quit] must not have done anything"
            await pilot.press("escape")
            # The export dialog: the compliance report of what the view shows.
            await _export_json(app, pilot, out, report="compliance")

    asyncio.run(run())
    doc = json.loads(out.read_text())
    assert verify(out).manifest["filters"]["filter"] == "fail:firewall"
    results = [r for r in doc["rows"] if r["level"] == "host"]
    assert {r["hostname"] for r in results} == {"fire-01"}, doc["rows"]
    assert {"control": "firewall_on", "outcome": "fail"}.items() <= next(
        r for r in results if r["control"] == "firewall_on").items()
