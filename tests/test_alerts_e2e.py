"""Alerts end to end: a real hub with `serve --alerts`, simulated agents over SSH on loopback
at three sites, a real SMTP server (aiosmtpd) and a webhook receiver. Killing one site's
agents is exactly one site-outage incident and one notification on each channel; restoring
them resolves it, and the resolution is mailed in the same thread."""

from __future__ import annotations

from estate.inventory.store import Notification
from tests.alert_servers import SmtpServer, WebhookServer
from tests.harness import HubProcess, wait_for
from tests.health_sites import (
    BOUND_S,
    FLAGS,
    PER_SITE,
    SITES,
    of,
    online,
    start_agents,
    wait_for_outage,
)
from tests.stores import open_test_store

RULES = """
[channels.mail]
type = "email"
host = "127.0.0.1"
port = {smtp}
starttls = false
from = "estate@example.org"
to = ["it@example.org"]

[channels.hook]
type = "webhook"
url = "{hook}"

[[rules]]
name = "site-down"
condition = "site_outage"
channels = ["mail", "hook"]
"""


def _queue(folder) -> tuple[dict[str, int], list[Notification], int]:
    """The dispatcher's cursors, every notification, and the newest incident event's id."""
    store = open_test_store(folder)
    try:
        newest = store.db.execute("SELECT MAX(id) FROM incident_events").fetchone()[0] or 0
        return (store.alert_cursors(), store.notifications(["pending", "sent", "failed"]),
                int(newest))
    finally:
        store.close()


def _settled(folder) -> bool:
    """The dispatcher has read every incident event, and everything it queued is sent."""
    cursors, queued, newest = _queue(folder)
    return cursors.get("incident_events", -1) >= newest and \
        all(n.state == "sent" for n in queued)


def test_a_killed_site_is_one_mail_and_one_webhook_and_its_resolution_is_threaded(tmp_path):
    smtp, hook = SmtpServer().start(), WebhookServer()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(smtp=smtp.port, hook=hook.url()))
    hub = HubProcess(tmp_path / "hub", (*FLAGS, "--alerts", str(rules))).start()
    sim = None
    try:
        sim = start_agents(hub, [s for s in SITES for _ in range(PER_SITE)])
        wait_for(lambda: online(hub.data, [i.agent_id for i in sim.idents]), BOUND_S, 0.2,
                 "every simulated agent online")
        wait_for(lambda: "incident_events" in _queue(hub.data)[0], BOUND_S, 0.2,
                 "the dispatcher running")
        agents = sim.at("Fire", "Station 12")
        sim.call(sim.sim.take_down, agents)
        wait_for_outage(hub, "site:Fire/Station 12")
        wait_for(lambda: not online(hub.data, agents, True) and
                 online(hub.data, agents, False), BOUND_S, 0.2, "the site's agents offline")
        wait_for(lambda: len(hook.posts) >= 1 and len(smtp.mails) >= 1, BOUND_S, 0.2,
                 "the outage told")
        wait_for(lambda: _settled(hub.data), BOUND_S, 0.2, "every incident event dispatched")
        [outage] = [i for i in of(hub.data, "site:Fire/Station 12")]
        assert len(smtp.mails) == len(hook.posts) == 1
        (_, _, body), = hook.posts
        assert (body["condition"], body["event"], body["site"]) == \
            ("site_outage", "opened", "Station 12")
        assert body["incident"]["id"] == outage["id"]
        opened = smtp.mails[0]
        assert "Station 12" in opened["Subject"]

        sim.call(sim.sim.bring_up, agents)
        wait_for(lambda: of(hub.data, "site:Fire/Station 12")[0]["state"] == "resolved",
                 BOUND_S, 0.2, "the outage resolved")
        wait_for(lambda: len(hook.posts) >= 2 and len(smtp.mails) >= 2, BOUND_S, 0.2,
                 "the resolution told")
        wait_for(lambda: _settled(hub.data), BOUND_S, 0.2, "every incident event dispatched")
        assert len(smtp.mails) == len(hook.posts) == 2
        assert hook.posts[1][2]["event"] == "resolved"
        resolved = smtp.mails[1]
        assert resolved["In-Reply-To"] == opened["Message-ID"]
        assert resolved["Subject"].startswith("[Estate critical] RESOLVED: ")
        # Both sends audited.
        with hub.store() as store:
            sent = [r for r in store.audit_log(1000) if r.action == "alert_sent"]
        assert {r.target for r in sent} == {"mail", "hook"}
        assert len(hub.admin_json("alerts", "queue", "--state", "sent")) == 4
    finally:
        if sim is not None:
            sim.stop()
        hub.kill()
        smtp.stop()
        hook.close()
