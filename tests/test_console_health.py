"""The console's estate health with Pilot, against a real hub over real SSH: the tree's
health marks and incident counts, the header's open incidents, the incidents screen (list,
detail, acknowledge, silence, another operator's action arriving live, an auditor refused),
and the overview screen's figures checked against the store, Enter opening the host list."""

from __future__ import annotations

import asyncio

import pytest

from estate.console._client import ApiFailure, HubConnection
from estate.console._incidents import IncidentScreen, IncidentsScreen, SilenceDialog
from estate.console._overview import OverviewScreen, sparkline
from estate.console.app import EstateApp
from estate.inventory.export._eos import support_of
from estate.inventory.health._correlate import Open
from estate.inventory.store import utcnow
from tests.harness import Agent, HubProcess, add_operator, make_report

# An incident title carries a site's name, which an enrolment token set (printable, but
# markup to Rich): shown as typed.
EVIL_SITE = "[red]Nord[/red] [@click=app.quit]x[/]"
EVIL_SHOWN = EVIL_SITE
HOLDER = "console-test"  # holds the correlator's lease: the incidents here are the test's


@pytest.fixture()
def health(tmp_path, live_report):
    """A hub with four hosts at three sites (one Windows 7, one disk 95% full), two open
    incidents written through the store, and operators: admin, staff of Schools, auditor."""
    hub = HubProcess(tmp_path / "hub")
    with hub.store() as store:  # before the hub starts, so its correlator never runs here
        assert store.take_lease("correlator", HOLDER, 3600, utcnow())
    hub.start()
    try:
        agents = {}
        for name, agency, site in (("fire-01", "Fire & Rescue", "Station 1"),
                                   ("fire-02", "Fire & Rescue", "Station 1"),
                                   ("school-01", "Schools", EVIL_SITE),
                                   ("school-02", "Schools", "Sud")):
            agent = Agent(hub, tmp_path / name, hub.token(agency, site))
            report = make_report(live_report, agent.agent_id, system__hostname=name)
            if name == "fire-02":
                report["system"]["os"].update(name="Windows 7 Professional", version="6.1",
                                              product=None)
            if name == "school-01":
                report["hardware"]["volumes"][0]["used_percent"] = 95.0
            assert agent.send(report)[0] == 0
            agents[name] = agent
        now = utcnow()
        with hub.store() as store:
            school, fire = agents["school-01"].agent_id, agents["fire-01"].agent_id
            store.apply_health([
                Open("site_outage", f"site:Schools/{EVIL_SITE}", "Schools", EVIL_SITE, None,
                     None, f"Site outage at {EVIL_SITE}",
                     [(school, "2026-11-27T09:00:00.000000Z")], {"count": 1}),
                Open("host_offline", f"host:{fire}", "Fire & Rescue", "Station 1", fire, None,
                     "fire-01 offline", [(fire, "2026-11-27T09:05:00.000000Z")],
                     {"count": 1}),
            ], HOLDER, now)
        keys = {name: tmp_path / name for name in ("ops", "other", "schools", "audit")}
        for name, role, agencies in (("ops", "admin", "all"), ("other", "staff", "all"),
                                     ("schools", "staff", "Schools"),
                                     ("audit", "auditor", "all")):
            add_operator(hub, tmp_path, name, role, agencies)
    except BaseException:
        hub.kill()
        raise
    yield {"hub": hub, "agents": agents, "keys": keys}
    hub.kill()


def _connection(health, user: str) -> HubConnection:
    hub = health["hub"]
    return HubConnection(hub.address, user, health["keys"][user], hub.fingerprint)


async def _until(predicate, pilot, timeout: float = 30) -> None:
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out waiting for the console")


def _text(widget) -> str:
    from textual.geometry import Region

    lines = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join(line.text for line in lines)


def _incidents(health) -> dict[str, dict]:
    with health["hub"].store() as store:
        return {i.kind: i.as_dict() for i in store.incidents(None, "all")}


def _audit_actions(health) -> list[tuple[str, str]]:
    with health["hub"].store() as store:
        return [(r.actor, r.action) for r in store.audit_log(10_000)
                if r.action.startswith("incident_")]


def test_tree_header_incidents_ack_silence_and_live_updates(health):
    async def run() -> None:
        app = EstateApp(_connection(health, "ops"))
        async with app.run_test(size=(200, 45)) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.pause()
            # The header: open incidents in scope, as words.
            assert "2 open incidents" in str(app.estate.query_one("#summary").render())
            assert "ATTENTION" in str(app.estate.query_one("#summary").render())
            # The tree: the site with the outage is down, with its count; marks read
            # without colour.
            labels = {str(leaf.label) for node in app.estate.query_one("Tree").root.children
                      for leaf in (node, *node.children)}
            assert any(x.startswith(f"✗ {EVIL_SHOWN}") and " 1 inc" in x for x in labels), \
                labels
            assert any(x.startswith("! Station 1") and " 1 inc" in x for x in labels), labels
            assert any(x.startswith("! Sud") for x in labels), labels  # offline, no incident
            assert any(x.startswith("✗ Schools") and " 1 inc" in x for x in labels), labels
            # The incidents screen: open first, each a row; the title shown as typed.
            await pilot.press("i")
            await _until(lambda: isinstance(app.screen, IncidentsScreen)
                         and app.screen.loaded, pilot)
            screen: IncidentsScreen = app.screen  # type: ignore[assignment]
            await pilot.pause()
            table_text = _text(screen.query_one("#incident-list"))
            assert EVIL_SHOWN in table_text and "\x1b" not in table_text
            assert "site outage" in table_text and "host offline" in table_text
            assert "OPEN" in table_text
            # Acknowledge the first row.
            first = screen.selected()
            assert first is not None
            await pilot.press("a")
            await _until(lambda: (screen.incidents[first["id"]].get("acked_by") or "")
                         .endswith("ops"), pilot)
            # Silence it for an hour, through the dialog.
            await pilot.press("S")
            await _until(lambda: isinstance(app.screen, SilenceDialog), pilot)
            await pilot.click("#m60")
            await _until(lambda: screen.incidents[first["id"]].get("silenced_until"), pilot)
            stored = {i["id"]: i for i in _incidents(health).values()}[first["id"]]
            assert stored["acked_by"] and stored["silenced_until"]
            assert stored["silenced_until"] > stored["acked_at"]
            # Another operator acknowledges the other incident: it shows here live.
            second = next(i for i in screen.incidents.values() if i["id"] != first["id"])
            other = _connection(health, "other")
            await other.connect()
            try:
                await other.request("incident_ack", incident_id=second["id"])
            finally:
                await other.close()
            await _until(lambda: (screen.incidents[second["id"]].get("acked_by") or "")
                         .endswith("other"), pilot)
            assert "other" in _text(screen.query_one("#incident-list"))
            # Enter: the incident, its hosts and its timeline.
            screen.query_one("#incident-list").focus()
            await pilot.press("home", "enter")
            await _until(lambda: isinstance(app.screen, IncidentScreen)
                         and app.screen.detail is not None, pilot)
            detail: IncidentScreen = app.screen  # type: ignore[assignment]
            await pilot.pause()
            body = _text(detail.query_one("#incident-body"))
            host = next(h for h in detail.detail["hosts"])  # type: ignore[index]
            assert host["hostname"] in body
            assert "acknowledged" in body and "opened" in body
            assert "\x1b" not in body
            await pilot.press("escape", "escape")
            assert app.screen is app.estate

    asyncio.run(run())
    actions = _audit_actions(health)
    assert any(a == "incident_ack" and "ops" in actor for actor, a in actions), actions
    assert any(a == "incident_silence" and "ops" in actor for actor, a in actions), actions
    assert any(a == "incident_ack" and "other" in actor for actor, a in actions), actions


def test_an_auditor_is_refused_with_a_clear_message(health):
    async def run() -> None:
        app = EstateApp(_connection(health, "audit"))
        async with app.run_test(size=(200, 45)) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("i")
            await _until(lambda: isinstance(app.screen, IncidentsScreen)
                         and app.screen.loaded, pilot)
            await pilot.pause()
            await pilot.press("a")
            await _until(lambda: any("Not allowed" in str(n.message)
                                     for n in app._notifications), pilot)
            message = next(str(n.message) for n in app._notifications
                           if "Not allowed" in str(n.message))
            assert "staff and admin" in message and "forbidden" in message

    asyncio.run(run())
    assert not any(i["acked_by"] for i in _incidents(health).values())


def test_overview_figures_match_the_store_and_enter_filters_the_list(health):
    hub = health["hub"]
    with hub.store() as store:
        rows = store.host_rows(None)
        open_incidents = store.incidents(None, "open")
        detail = {r.agent_id: store.host_detail(r.agent_id, None) for r in rows}

    def expected(agency: str, site: str | None) -> dict:
        mine = [r for r in rows if r.agency == agency and site in (None, r.site)]
        unsupported = 0
        for r in mine:
            os_ = detail[r.agent_id].report["system"]["os"]  # type: ignore[union-attr]
            s = support_of(os_.get("product") or os_["name"], os_["version"])
            unsupported += bool(s and s.end_of_support < utcnow().date())
        return {"hosts": len(mine), "online": sum(r.status == "online" for r in mine),
                "stale": sum(r.status == "stale" for r in mine),
                "disks_over_90": sum((r.disk_percent or 0) > 90 for r in mine),
                "unsupported_os": unsupported,
                "open_incidents": sum(i.agency == agency and site in (None, i.site)
                                      for i in open_incidents)}

    async def run() -> None:
        app = EstateApp(_connection(health, "ops"))
        async with app.run_test(size=(200, 45)) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("o")
            await _until(lambda: isinstance(app.screen, OverviewScreen)
                         and app.screen.answer is not None, pilot)
            screen: OverviewScreen = app.screen  # type: ignore[assignment]
            answer = screen.answer
            assert answer is not None
            assert [a["agency"] for a in answer["agencies"]] == ["Fire & Rescue", "Schools"]
            for a in answer["agencies"]:
                assert {k: a[k] for k in expected(a["agency"], None)} == \
                    expected(a["agency"], None), a
                for s in a["sites"]:
                    assert {k: s[k] for k in expected(a["agency"], s["site"])} == \
                        expected(a["agency"], s["site"]), s
                    assert len(s["sparkline"]) == 24
            fire = answer["agencies"][0]
            assert fire["unsupported_os"] == 1
            assert answer["agencies"][1]["disks_over_90"] == 1
            await pilot.pause()
            shown = _text(screen.query_one("#overview-table"))
            assert sparkline(fire["sparkline"]) in shown
            assert EVIL_SHOWN in shown and "\x1b" not in shown
            # Enter on the Schools / Sud row: the host list, filtered to it.
            rows_shown = list(screen.places.items())
            index = next(i for i, (_, place) in enumerate(rows_shown)
                         if place == ("Schools", "Sud"))
            table = screen.query_one("#overview-table")
            table.move_cursor(row=index)
            await pilot.press("enter")
            await _until(lambda: app.screen is app.estate, pilot)
            await pilot.pause()
            assert app.model.filter_text == "agency:schools site:sud"
            assert [r[1] for r in app.model.view] == ["school-02"]

    asyncio.run(run())

    async def scoped() -> None:
        conn = _connection(health, "schools")
        await conn.connect()
        try:
            answer = await conn.request("overview")
            assert [a["agency"] for a in answer["agencies"]] == ["Schools"]
            assert answer["estate"]["open_incidents"] == 1
            with pytest.raises(ApiFailure, match=r"unexpected|bad_request|unknown"):
                await conn.request("overview", agency="Fire & Rescue")
        finally:
            await conn.close()

    asyncio.run(scoped())


def test_sparkline_is_plain_blocks():
    assert sparkline([0.0, 0.5, 1.0, None, 2.0, -1, True]) == "▁▅█·█▁·"
