"""A batch of reports that only repeat their host's last: written together (on PostgreSQL in
one statement with their events, prepared once and run by its generic plan), a resend among
them still refused, and a hub's listener deaf to its own writer (its hub wakes its reader
itself)."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from estate.inventory.store import Incoming, Store, iso, utcnow
from tests.stores import ON_POSTGRES, open_test_store

T0 = utcnow().replace(microsecond=0)


@pytest.fixture
def stores(tmp_path):
    """A hub's store object and another that only reads, on one store."""
    opened = [open_test_store(tmp_path) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def _agents(store: Store, n: int) -> list[str]:
    token_id, secret, _ = store.create_token("Council", "Town Hall", n, timedelta(hours=1),
                                             "admin:test")
    return [store.enrol(token_id, secret, f"ssh-ed25519 K{i}", f"SHA256:k{i}",
                        f"pc{i}")["agent_id"] for i in range(n)]


def _incoming(base: dict, agent_id: str, n: int) -> Incoming:
    r = copy.deepcopy(base)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{n}"
    r["collected_at"] = iso(T0 + timedelta(seconds=n))
    return Incoming(agent_id, r, json.dumps(r).encode(), T0 + timedelta(seconds=n))


def test_unchanged_reports_go_together_and_a_resend_among_them_is_refused(stores, report):
    hub, reader = stores
    agents = _agents(hub, 3)
    hub.register_hub("hub-a", None, 30.0, "1.0", T0)
    assert hub.store_reports([_incoming(report, a, 1) for a in agents]) == ["stored"] * 3
    cursors = reader.event_heads()
    # The first two hosts report again, unchanged; the third's first report comes again.
    batch = [_incoming(report, a, 2) for a in agents[:2]] + [_incoming(report, agents[2], 1)]
    assert hub.store_reports(batch) == ["stored", "stored", "duplicate"]
    page = reader.events_after(cursors)
    assert [(e.kind, e.agent_id, e.report_id, e.change_count) for e in page.events] == [
        ("host", a, f"{a}:1:2", 0) for a in agents[:2]]
    assert reader.report_count() == 5
    seen = {h.agent_id: h.last_seen for h in reader.hosts()}
    assert seen == {agents[0]: iso(T0 + timedelta(seconds=2)),
                    agents[1]: iso(T0 + timedelta(seconds=2)),
                    agents[2]: iso(T0 + timedelta(seconds=1))}
    # The next unchanged report of the third host is stored as ever.
    assert hub.store_reports([_incoming(report, agents[2], 3)]) == ["stored"]
    assert [e.report_id for e in reader.events_after(page.cursors).events] == [
        f"{agents[2]}:1:3"]


@pytest.mark.skipif(not ON_POSTGRES, reason="NOTIFY is PostgreSQL's")
def test_a_listener_passes_over_its_own_writers_notifications(stores, report):
    hub, other = stores
    (agent,) = _agents(hub, 1)
    hub.register_hub("hub-a", None, 30.0, "1.0", T0)
    other.register_hub("hub-b", None, 30.0, "1.0", T0)
    assert hub.wait_for_events(0.1) is True  # the first call connects and LISTENs
    assert hub.store_reports([_incoming(report, agent, 1)]) == ["stored"]
    assert hub.wait_for_events(0.5) is False  # its own commit: its hub has woken its reader
    assert other.store_reports([_incoming(report, agent, 2)]) == ["stored"]
    assert hub.wait_for_events(5) is True


@pytest.mark.skipif(not ON_POSTGRES, reason="prepared statements' plans are PostgreSQL's")
def test_a_batch_of_one_runs_the_prepared_generic_plan_not_a_new_plan_each_time(stores, report):
    """A quiet hub commits its reports one at a time. Left to choose, the server plans the
    batch statement anew for each (it judges a plan for one row cheaper than the generic one),
    which costs it more CPU than the rest of the write."""
    hub, _ = stores
    (agent,) = _agents(hub, 1)
    for n in range(1, 14):  # psycopg prepares a statement at its sixth run
        assert hub.store_reports([_incoming(report, agent, n)]) == ["stored"]
    generic, custom = hub.db.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
        "WHERE statement LIKE 'WITH written AS%'").fetchone()
    assert custom == 0 and generic >= 5
