"""The alert dispatcher over a real store (incidents, reports, sessions written as the hub
writes them), and the sender through a real SMTP server that is down, then up."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from estate.inventory.health.alerts import Dispatcher, Message, parse_rules
from estate.inventory.store import Incoming, iso
from tests.alert_servers import SmtpServer, free_port
from tests.stores import open_test_store

T0 = datetime.now(timezone.utc).replace(microsecond=0)

RULES = """
[channels.mail]
type = "email"
host = "127.0.0.1"
port = {port}
starttls = false
from = "estate@example.org"
to = ["it@example.org"]
timeout = 5

[channels.hook]
type = "webhook"
url = "http://127.0.0.1:9/x"

[[rules]]
name = "council-sites"
condition = "site_outage"
agencies = ["Council"]
channels = ["mail", "hook"]

[[rules]]
name = "all-services"
condition = "shared_service"
channels = ["hook"]

[[rules]]
name = "servers-offline"
condition = "host_offline"
minutes = 15
hosts = "os:debian"
channels = ["mail"]

[[rules]]
name = "disks"
condition = "disk"
percent = 90
agencies = ["Council"]
channels = ["hook"]

[[rules]]
name = "old-os"
condition = "unsupported_os"
channels = ["hook"]

[[rules]]
name = "hardware"
condition = "hardware_changed"
channels = ["hook"]

[[rules]]
name = "sessions"
condition = "remote_session"
sites = ["Town Hall"]
channels = ["hook"]

[[rules]]
name = "drops"
condition = "spool_dropped"
channels = ["hook"]
"""


class Estate:
    """A store with a hub registered (so reports announce watch events) and two agencies."""

    def __init__(self, tmp_path, report: dict, port: int = 25) -> None:
        self.store = open_test_store(tmp_path / "store")
        self.store.register_hub("hub-a", None, 30, "test", T0)
        self.report = report
        report["hardware"]["volumes"] = [{**(report["hardware"]["volumes"] or [{}])[0],
                                          "used_percent": 40.0}] \
            if report["hardware"]["volumes"] else report["hardware"]["volumes"]
        self.rules = parse_rules(RULES.format(port=port).encode())
        self.dispatcher = Dispatcher(self.rules)
        self.seq = 0
        self.agents = {}
        for agency, site, name in (("Council", "Town Hall", "th-1"), ("Fire", "Station 12",
                                                                     "st-1")):
            token_id, secret, _ = self.store.create_token(agency, site, 1, timedelta(days=1),
                                                          "admin:test")
            agent = self.store.enrol(token_id, secret, f"ssh-ed25519 AAAA{name}",
                                     f"SHA256:{name}", name)["agent_id"]
            self.agents[name] = agent
            self.send(name)

    def send(self, name: str, os_version: str = "12", **changes) -> None:
        self.seq += 1
        r = copy.deepcopy(self.report)
        agent_id = self.agents[name]
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{self.seq}"
        at = T0 + timedelta(seconds=self.seq)
        r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        r["system"]["hostname"] = name
        r["system"]["os"].update({"name": "Debian GNU/Linux", "version": os_version,
                                  "build": None})
        r["system"]["os"].pop("product", None)
        for path, value in changes.items():
            where = r
            keys = path.split("__")
            for key in keys[:-1]:
                where = where[key]
            where[keys[-1]] = value
        assert self.store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                                  at)]) == ["stored"]

    def incident(self, kind: str, agency: str, site: str, event: str = "opened",
                 incident_id: int | None = None, agent_id: str | None = None,
                 at: datetime | None = None, silenced_until: str | None = None) -> int:
        """An incident event as the correlator writes one (its own tables, one transaction)."""
        at_text = iso(at or T0)
        db = self.store.db
        with self.store._transaction():
            if incident_id is None:
                incident_id = int(db.execute(
                    "INSERT INTO incidents (kind, subject, agency, site, agent_id, title, state, "
                    "opened_at, updated_at, hosts) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, 3) "
                    "RETURNING id", (kind, f"{kind}:{agency}/{site}/{self._next()}",
                                     agency, site,
                                     agent_id, f"{kind} at {site}", at_text, at_text)
                ).fetchone()[0])
                for name, agent in self.agents.items():
                    db.execute("INSERT INTO incident_hosts (incident_id, agent_id, since) "
                               "VALUES (?, ?, ?)", (incident_id, agent, at_text))
                    del name
            if event == "resolved":
                db.execute("UPDATE incidents SET state = 'resolved', resolved_at = ? "
                           "WHERE id = ?", (at_text, incident_id))
            db.execute("UPDATE incidents SET silenced_until = ? WHERE id = ?",
                       (silenced_until, incident_id))
            db.execute("INSERT INTO incident_events (incident_id, at, event, detail) "
                       "VALUES (?, ?, ?, '{}')", (incident_id, at_text, event))
        return incident_id

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def dispatch(self, now: datetime | None = None) -> list[tuple[str, str, Message]]:
        """One pass; the notifications it queued: (channel, rule, message)."""
        before = {n.id for n in self.store.notifications(["pending"], 100_000)}
        self.dispatcher.run_pass(self.store, now or datetime.now(timezone.utc))
        return [(n.channel, n.rule, Message.from_json(n.payload))
                for n in reversed(self.store.notifications(["pending"], 100_000))
                if n.id not in before]


@pytest.fixture()
def estate(tmp_path, report):
    e = Estate(tmp_path, report)
    yield e
    e.store.close()


def test_the_first_pass_starts_from_now_and_each_transition_is_told_once_per_channel(estate):
    estate.incident("site_outage", "Council", "Town Hall")  # before the dispatcher ran
    assert estate.dispatch() == []
    incident = estate.incident("site_outage", "Council", "Town Hall")
    told = estate.dispatch()
    assert [(c, r, m.event) for c, r, m in told] == [("mail", "council-sites", "opened"),
                                                    ("hook", "council-sites", "opened")]
    message = told[0][2]
    assert message.thread == f"incident:{incident}" and message.severity == "critical"
    assert message.agency == "Council" and message.site == "Town Hall"
    assert "th-1" in message.lines[-1] and message.incident["hosts"] == 3
    assert estate.dispatch() == []  # nothing new: nothing told again
    # Hosts added in the first minute are the same news as the opening: not told again.
    estate.incident("site_outage", "Council", "Town Hall", "hosts_changed", incident,
                    at=T0 + timedelta(seconds=20))
    assert estate.dispatch() == []
    estate.incident("site_outage", "Council", "Town Hall", "hosts_changed", incident,
                    at=T0 + timedelta(minutes=5))
    estate.incident("site_outage", "Council", "Town Hall", "acknowledged", incident)
    estate.incident("site_outage", "Council", "Town Hall", "resolved", incident)
    told = estate.dispatch()
    assert [(c, m.event) for c, _, m in told] == [("mail", "updated"), ("hook", "updated"),
                                                  ("mail", "resolved"), ("hook", "resolved")]
    assert told[2][2].title.startswith("RESOLVED: ")


def test_a_flapping_host_makes_one_update_a_minute_not_one_a_flap(estate):
    """A hostile (or broken) agent going off and on inside an open incident changes its hosts
    every pass: the channels hear of it once per UPDATE_QUIET, then at the resolution."""
    estate.dispatch()
    incident = estate.incident("site_outage", "Council", "Town Hall")
    estate.dispatch()
    for second in range(120, 300, 2):  # a flap every 2 s for 3 minutes
        estate.incident("site_outage", "Council", "Town Hall", "hosts_changed", incident,
                        at=T0 + timedelta(seconds=second))
    estate.incident("site_outage", "Council", "Town Hall", "resolved", incident,
                    at=T0 + timedelta(seconds=301))
    told = [m.event for c, _, m in estate.dispatch() if c == "mail"]
    assert told == ["updated"] * 3 + ["resolved"]


def test_a_rule_scoped_to_one_agency_never_fires_for_another(estate):
    estate.dispatch()
    estate.incident("site_outage", "Fire", "Station 12")
    estate.incident("shared_service", "Fire", "Station 12")
    told = estate.dispatch()
    assert [(c, r, m.condition) for c, r, m in told] == [("hook", "all-services",
                                                         "shared_service")]
    # Host conditions too: a full disk at Fire is not Council's rule's business.
    estate.send("st-1", hardware__volumes=[{**estate.report["hardware"]["volumes"][0],
                                           "used_percent": 97.0}]
                if estate.report["hardware"]["volumes"] else [])
    assert [r for _, r, _ in estate.dispatch()] == []


def test_a_silenced_incident_tells_only_its_resolution(estate):
    estate.dispatch()
    incident = estate.incident("site_outage", "Council", "Town Hall")
    estate.dispatch()
    later = iso(T0 + timedelta(hours=1))
    estate.incident("site_outage", "Council", "Town Hall", "hosts_changed", incident,
                    at=T0 + timedelta(minutes=5), silenced_until=later)
    assert estate.dispatch() == []
    estate.incident("site_outage", "Council", "Town Hall", "resolved", incident,
                    silenced_until=later)
    assert [m.event for _, _, m in estate.dispatch()] == ["resolved", "resolved"]


def test_host_conditions_fire_once_and_clear(estate):
    if not estate.report["hardware"]["volumes"]:
        pytest.skip("this machine reports no volumes")
    volume = estate.report["hardware"]["volumes"][0]
    estate.dispatch()  # the first pass: from now on
    estate.send("th-1", hardware__volumes=[{**volume, "used_percent": 95.0}])
    (told,) = estate.dispatch()
    assert told[:2] == ("hook", "disks")
    assert told[2].event == "firing" and told[2].title == "Disk over 90% full on th-1"
    assert "95% used" in told[2].lines[1]
    estate.send("th-1", hardware__volumes=[{**volume, "used_percent": 96.0}])
    assert estate.dispatch() == []  # still true: no repeat per report
    estate.send("th-1", hardware__volumes=[{**volume, "used_percent": 50.0}])
    (told,) = estate.dispatch()
    assert told[2].event == "cleared" and told[2].thread == f"host:{estate.agents['th-1']}:disk"
    # An OS past its vendor's support, once; the spool's drops, once per run of them.
    estate.send("st-1", agent__dropped_reports=4)
    assert [r for _, r, _ in estate.dispatch()] == ["drops"]
    estate.send("st-1", agent__dropped_reports=0)
    assert estate.dispatch() == []  # spool drops clear without a message


def test_an_unsupported_os_is_told_once_when_it_appears(estate):
    estate.dispatch()
    estate.send("st-1")
    assert estate.dispatch() == []  # Debian 12: supported
    estate.send("st-1", os_version="10")  # out of support since 2024
    (told,) = estate.dispatch()
    assert told[1] == "old-os" and "Debian 10 buster" in told[2].lines[1]
    estate.send("st-1", os_version="10")
    assert estate.dispatch() == []  # once
    estate.send("st-1")  # back on a supported OS: cleared without a message
    assert estate.dispatch() == []


def test_host_offline_longer_than_the_rule_says_is_told_once_then_resolved(estate):
    estate.dispatch()
    agent = estate.agents["th-1"]
    incident = estate.incident("host_offline", "Council", "Town Hall", agent_id=agent,
                               at=T0 - timedelta(minutes=5))
    assert estate.dispatch() == []  # not 15 minutes yet
    (told,) = estate.dispatch(T0 + timedelta(minutes=11))
    assert told[:2] == ("mail", "servers-offline")
    assert told[2].title == "Host th-1 offline for over 15 min"
    assert told[2].thread == f"incident:{incident}"
    assert estate.dispatch(T0 + timedelta(minutes=20)) == []  # told once
    estate.incident("host_offline", "Council", "Town Hall", "resolved", incident,
                    agent_id=agent)
    (told,) = estate.dispatch(T0 + timedelta(minutes=21))
    assert told[2].event == "resolved" and told[2].thread == f"incident:{incident}"


def test_a_host_the_rules_filter_leaves_out_is_never_told(estate):
    rules = RULES.format(port=25).replace('hosts = "os:debian"', 'hosts = "os:windows"')
    estate.dispatcher = Dispatcher(parse_rules(rules.encode()))
    estate.dispatch()
    agent = estate.agents["th-1"]
    incident = estate.incident("host_offline", "Council", "Town Hall", agent_id=agent,
                               at=T0 - timedelta(minutes=30))
    assert estate.dispatch() == []
    estate.incident("host_offline", "Council", "Town Hall", "resolved", incident,
                    agent_id=agent)
    assert estate.dispatch() == []


def test_hardware_changes_and_remote_sessions_are_told(estate):
    estate.dispatch()
    estate.send("st-1", hardware__serial="NEW-SERIAL-1")
    (told,) = estate.dispatch()
    assert told[1] == "hardware"
    assert told[2].title.startswith("Hardware changed on st-1: System serial number changed")
    assert "-> NEW-SERIAL-1" in told[2].lines[1]
    estate.store.set_remote_access(estate.agents["th-1"], True, "admin:test")
    estate.store.set_remote_access(estate.agents["st-1"], True, "admin:test")
    estate.store.session_started("olive", estate.agents["th-1"], "192.0.2.1:5000",
                                 datetime.now(timezone.utc))
    estate.store.session_started("olive", estate.agents["st-1"], "192.0.2.1:5001",
                                 datetime.now(timezone.utc))
    assert estate.dispatch() == []  # read once a few seconds old (other hubs' rows)
    (told,) = estate.dispatch(datetime.now(timezone.utc) + timedelta(seconds=30))
    assert told[1] == "sessions"  # the Town Hall one: the rule is scoped to that site
    assert told[2].title == "Remote session to th-1 by olive"


def test_a_full_channel_queue_drops_new_notifications_audited_once_per_episode(estate, caplog):
    """A channel down while incidents pour in: its queue stops at the bound (the other
    channels' do not), one warning when it fills, one audit row with the count once it
    drains, and queuing resumes."""
    estate.dispatcher = Dispatcher(estate.rules, max_pending=3)
    caplog.set_level("WARNING", logger="estate.hub.alerts")
    estate.dispatch()
    for _ in range(5):
        estate.incident("shared_service", "Fire", "Station 12")  # the hook only
    assert [c for c, _, _ in estate.dispatch()] == ["hook"] * 3
    for _ in range(4):
        estate.incident("shared_service", "Fire", "Station 12")
    assert estate.dispatch() == []
    estate.incident("site_outage", "Council", "Town Hall")  # mail and hook
    assert [c for c, _, _ in estate.dispatch()] == ["mail"]
    pending = estate.store.notifications(["pending"], 1000)
    assert sorted(n.channel for n in pending) == ["hook"] * 3 + ["mail"]
    full = [r.getMessage() for r in caplog.records]
    assert len(full) == 1 and full[0].startswith('alerts: channel "hook" has 3 notifications')
    assert estate.store.audit_log(100, action="alert_dropped") == []
    # One is sent: below the bound, the episode ends (audited with its count), queuing resumes.
    estate.store.notification_sent(min(n.id for n in pending if n.channel == "hook"), T0)
    assert estate.dispatch() == []
    (row,) = estate.store.audit_log(100, action="alert_dropped")
    detail = json.loads(row.detail)
    assert (row.actor, row.target, detail["dropped"], detail["bound"]) == ("hub", "hook", 7, 3)
    assert detail["since"].endswith("Z")
    assert "queuing resumes; 7 were dropped" in caplog.records[-1].getMessage()
    estate.incident("shared_service", "Fire", "Station 12")
    estate.incident("shared_service", "Fire", "Station 12")
    assert [c for c, _, _ in estate.dispatch()] == ["hook"]  # a new episode begins
    assert len(caplog.records) == 3
    assert len(estate.store.audit_log(100, action="alert_dropped")) == 1


# --- the sender ---------------------------------------------------------------------------

def test_an_smtp_server_that_is_down_delays_mail_but_loses_none(tmp_path, report):
    from estate.inventory.hub._alerts import Alerts
    from estate.inventory.hub._audit import AuditCoalescer
    from estate.inventory.hub._store_thread import StoreThread
    from estate.inventory.hub._tasks import Tasks

    port = free_port()
    estate = Estate(tmp_path, report, port)
    smtp = SmtpServer(port=port)

    async def scenario() -> Alerts:
        db, tasks = StoreThread(), Tasks()
        audit = AuditCoalescer(lambda rows: db(estate.store.audit_many, rows), window_s=60)
        rules = parse_rules(RULES.format(port=port).replace('"mail", "hook"', '"mail"')
                            .encode())
        alerts = Alerts(db, estate.store, tasks, audit, rules, poll_s=0.1,
                        backoff_first_s=0.2, backoff_cap_s=0.5)
        tasks.spawn(audit.run())
        tasks.spawn(alerts.run("hub-a"))
        try:
            await _until(db, lambda: alerts.held and estate.store.alert_cursors())
            first = await db(estate.incident, "site_outage", "Council", "Town Hall")
            await db(estate.incident, "site_outage", "Council", "Town Hall", "resolved", first)
            # Down: tried, failed, waiting; nothing lost.
            await _until(db, lambda: any(n.attempts >= 2 for n in
                                         estate.store.notifications(["pending"])))
            assert await db(estate.store.notifications, ["sent", "failed"]) == []
            smtp.start()
            await _until(db, lambda: len(smtp.mails) == 2)
            await _until(db, lambda: not estate.store.notifications(["pending"]))
        finally:
            tasks.stopping = True
            await alerts.stop()
            tasks.cancel_all()
            await audit.close()
            db.shutdown()
        return alerts

    try:
        alerts = asyncio.run(scenario())
    finally:
        smtp.stop()
    opened, resolved = smtp.mails
    assert opened["Subject"].endswith("site_outage at Town Hall")
    assert resolved["In-Reply-To"] == opened["Message-ID"]
    assert [n.state for n in estate.store.notifications(["sent", "failed"])] == ["sent"] * 2
    assert alerts.sent == 2 and alerts.failed == 0
    actions = [r.action for r in estate.store.audit_log(1000)]
    assert "alert_send_failed" in actions and actions.count("alert_sent") >= 1
    estate.store.close()


def test_a_notification_unsent_too_long_is_given_up_and_audited(tmp_path, report):
    from estate.inventory.hub._alerts import Alerts
    from estate.inventory.hub._audit import AuditCoalescer
    from estate.inventory.hub._store_thread import StoreThread
    from estate.inventory.hub._tasks import Tasks

    port = free_port()  # nothing listens: never sent
    estate = Estate(tmp_path, report, port)

    async def scenario() -> None:
        db, tasks = StoreThread(), Tasks()
        audit = AuditCoalescer(lambda rows: db(estate.store.audit_many, rows))
        rules = parse_rules(RULES.format(port=port).replace('"mail", "hook"', '"mail"')
                            .encode())
        alerts = Alerts(db, estate.store, tasks, audit, rules, poll_s=0.1,
                        backoff_first_s=0.2, backoff_cap_s=0.2,
                        give_up_after=timedelta(seconds=1))
        tasks.spawn(alerts.run("hub-a"))
        try:
            await _until(db, lambda: alerts.held and estate.store.alert_cursors())
            await db(estate.incident, "site_outage", "Council", "Town Hall")
            await _until(db, lambda: estate.store.notifications(["failed"]))
        finally:
            tasks.stopping = True
            await alerts.stop()
            tasks.cancel_all()
            await audit.close()
            db.shutdown()

    asyncio.run(scenario())
    (failed,) = estate.store.notifications(["failed"])
    assert failed.channel == "mail" and failed.last_error
    row = next(r for r in estate.store.audit_log(100) if r.action == "alert_failed")
    assert row.target == "mail" and json.loads(row.detail)["rule"] == "council-sites"
    estate.store.close()


def test_a_channel_failing_with_a_long_queue_does_not_starve_the_others(tmp_path, report):
    """A flood of incidents while the webhook fails: the mail of every one still goes out
    (the due queue is read past the failing channel's backlog)."""
    from estate.inventory.hub._alerts import DUE_AT_ONCE, Alerts
    from estate.inventory.hub._audit import AuditCoalescer
    from estate.inventory.hub._store_thread import StoreThread
    from estate.inventory.hub._tasks import Tasks

    port = free_port()
    estate = Estate(tmp_path, report, port)  # the hook's port 9: refused, every time
    smtp = SmtpServer(port=port).start()
    flood = DUE_AT_ONCE + 20

    def open_many() -> None:
        for _ in range(flood):
            estate.incident("site_outage", "Council", "Town Hall")

    async def scenario() -> None:
        db, tasks = StoreThread(), Tasks()
        audit = AuditCoalescer(lambda rows: db(estate.store.audit_many, rows), window_s=60)
        rules = parse_rules(RULES.format(port=port).encode())
        alerts = Alerts(db, estate.store, tasks, audit, rules, poll_s=0.1,
                        backoff_first_s=600, backoff_cap_s=600)
        tasks.spawn(audit.run())
        tasks.spawn(alerts.run("hub-a"))
        try:
            await _until(db, lambda: alerts.held and estate.store.alert_cursors())
            await db(open_many)
            await _until(db, lambda: len([n for n in estate.store.notifications(["sent"], 1000)
                                          if n.channel == "mail"]) == flood, timeout=120)
        finally:
            tasks.stopping = True
            await alerts.stop()
            tasks.cancel_all()
            await audit.close()
            db.shutdown()

    try:
        asyncio.run(scenario())
    finally:
        smtp.stop()
    pending = estate.store.notifications(["pending"], 1000)
    assert {n.channel for n in pending} == {"hook"} and len(pending) == flood
    estate.store.close()


async def _until(db, condition, timeout: float = 60) -> None:
    """Wait for `condition`, checked on the store thread (the store's one thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await db(lambda: bool(condition())):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
