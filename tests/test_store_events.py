"""The watch's events in the store, on both backends: a sequence per hub written with what it
announces, reads after a cursor per hub (a hub found later read from the start of its run),
seqs that go on across a restart, change events found by their report, and pruning."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from estate.inventory.store import Event, Incoming, Store, iso, utcnow
from tests.stores import ON_POSTGRES, open_test_store

T0 = utcnow().replace(microsecond=0)


@pytest.fixture
def stores(tmp_path):
    """Two hubs' store objects on one store, and a third that only reads."""
    opened = [open_test_store(tmp_path) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def _agents(store: Store, n: int, agency: str = "Council") -> list[str]:
    token_id, secret, _ = store.create_token(agency, "Town Hall", n, timedelta(hours=1),
                                             "admin:test")
    return [store.enrol(token_id, secret, f"ssh-ed25519 K{agency}{i}",
                        f"SHA256:{agency}{i}", f"pc{i}")["agent_id"] for i in range(n)]


def _register(store: Store, hub_id: str) -> None:
    store.register_hub(hub_id, f"{hub_id}.example:2222", 30.0, "1.0", T0)


def _report(store: Store, base: dict, agent_id: str, n: int, **system: str) -> str:
    r = copy.deepcopy(base)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{n}"
    r["collected_at"] = iso(T0 + timedelta(seconds=n))
    r["system"].update(system)
    assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                         T0 + timedelta(seconds=n))]) == ["stored"]
    return r["report_id"]


def _seen(events: list[Event]) -> list[tuple[str, int, str, str]]:
    return [(e.hub_id, e.seq, e.kind, e.agent_id) for e in events]


def test_each_hub_numbers_its_events_and_a_reader_gets_every_hubs_after_its_cursors(
        stores, report):
    hub_a, hub_b, reader = stores
    one, two = _agents(hub_a, 2)
    heads = reader.event_heads()
    assert heads == {}  # no hub yet: nothing to skip
    _register(hub_a, "hub-a")
    _register(hub_b, "hub-b")
    hub_a.agent_connected("hub-a", one, T0)
    hub_b.agent_connected("hub-b", two, T0)
    first = _report(hub_a, report, one, 1)
    second = _report(hub_b, report, two, 2)
    # Hubs registered after the reader's start are read from the start of their run.
    page = reader.events_after(heads)
    assert _seen(page.events) == [("hub-a", 1, "online", one), ("hub-b", 1, "online", two),
                                  ("hub-a", 2, "host", one), ("hub-b", 2, "host", two)]
    assert [e.report_id for e in page.events if e.kind == "host"] == [first, second]
    assert {e.agency for e in page.events} == {"Council"}
    assert page.cursors == {"hub-a": 2, "hub-b": 2} and not page.more
    # After the cursors: only what is new, and nothing twice.
    assert reader.events_after(page.cursors).events == []
    hub_b.agent_disconnected("hub-b", two, 1, T0 + timedelta(seconds=3))
    later = reader.events_after(page.cursors)
    assert _seen(later.events) == [("hub-b", 3, "offline", two)]
    # A hub starting reads from now: every registered hub's newest event.
    assert reader.event_heads() == {"hub-a": 2, "hub-b": 3}


def test_a_rolled_back_batch_announces_nothing_and_leaves_a_gap_readers_step_over(
        stores, report):
    hub_a, _, reader = stores
    (agent,) = _agents(hub_a, 1)
    _register(hub_a, "hub-a")
    heads = reader.event_heads()
    good = copy.deepcopy(report)
    good["agent"]["id"], good["report_id"] = agent, f"{agent}:1:1"
    broken = Incoming(agent, {"report_id": "x"}, b"{}", T0)  # fails inside the transaction
    with pytest.raises(Exception):  # noqa: B017 - whatever the store raises for it
        hub_a.store_reports([Incoming(agent, good, json.dumps(good).encode(), T0), broken])
    assert reader.events_after(heads).events == []
    # Seqs counted for a transaction whose COMMIT then failed are not given out again.
    hub_a._event_seq += 3
    stored = _report(hub_a, report, agent, 2)
    page = reader.events_after(heads)
    assert [(e.seq, e.report_id) for e in page.events] == [(4, stored)]


def test_a_restarted_hub_numbers_on_and_a_reader_keeps_its_cursor(stores, tmp_path, report):
    hub_a, _, reader = stores
    (agent,) = _agents(hub_a, 1)
    _register(hub_a, "hub-a")
    hub_a.agent_connected("hub-a", agent, T0)
    cursors = reader.events_after(reader.event_heads()).cursors
    assert cursors == {"hub-a": 1}
    hub_a.close()
    again = open_test_store(tmp_path)  # the same hub's next run
    try:
        _register(again, "hub-a")  # releases the agent its last run held: announced
        _report(again, report, agent, 1)
        page = reader.events_after(cursors)
        assert [(e.seq, e.kind) for e in page.events] == [(2, "offline"), (3, "host")]
    finally:
        again.close()


def test_a_hub_taken_for_dead_is_read_from_its_runs_start_once_it_rejoins(stores):
    hub_a, hub_b, reader = stores
    (agent,) = _agents(hub_a, 1)
    _register(hub_a, "hub-a")
    _register(hub_b, "hub-b")
    hub_b.sweep_hubs("hub-b", T0 + timedelta(minutes=5))  # hub A silent past its timeout
    heads = reader.event_heads()  # a hub starting meanwhile does not know of hub A
    assert "hub-a" not in heads
    hub_a.agent_connected("hub-a", agent, T0)  # alive after all: it goes on writing
    hub_a.rejoin_hub("hub-a", None, 30.0, "1.0", T0, [], T0 + timedelta(minutes=5))
    assert _seen(reader.events_after(heads).events) == [("hub-a", 1, "online", agent)]


def test_a_report_announces_its_changes_and_they_are_found_by_it(stores, report):
    hub_a, _, reader = stores
    (agent,) = _agents(hub_a, 1)
    _register(hub_a, "hub-a")
    heads = reader.event_heads()
    _report(hub_a, report, agent, 1, hostname="before")
    renamed = _report(hub_a, report, agent, 2, hostname="after")
    hosts = [e for e in reader.events_after(heads).events if e.kind == "host"]
    assert [e.change_count for e in hosts] == [0, 1]
    found = reader.report_changes([(e.agent_id, e.at, e.report_id) for e in hosts])
    assert list(found) == [(agent, renamed)]
    (change,) = found[(agent, renamed)]
    assert (change.kind, change.old_value, change.new_value) == (
        "hostname_changed", "before", "after")


def test_a_hub_with_more_than_a_page_holds_back_later_events_of_other_hubs(stores):
    hub_a, hub_b, reader = stores
    agents = _agents(hub_a, 4)
    _register(hub_a, "hub-a")
    _register(hub_b, "hub-b")
    heads = reader.event_heads()
    for n, agent in enumerate(agents[:3]):
        hub_a.agent_connected("hub-a", agent, T0 + timedelta(seconds=n))
    hub_b.agent_connected("hub-b", agents[3], T0 + timedelta(seconds=10))
    page = reader.events_after(heads, limit=2)
    # Hub A's third event is unread: hub B's, later, must not go before it.
    assert _seen(page.events) == [("hub-a", 1, "online", agents[0]),
                                  ("hub-a", 2, "online", agents[1])]
    assert page.more and page.cursors == {"hub-a": 2, "hub-b": heads["hub-b"]}
    rest = reader.events_after(page.cursors, limit=2)
    assert _seen(rest.events) == [("hub-a", 3, "online", agents[2]),
                                  ("hub-b", 1, "online", agents[3])]


def test_pruning_deletes_old_events_but_each_hubs_newest(stores):
    hub_a, hub_b, reader = stores
    agents = _agents(hub_a, 3)
    _register(hub_a, "hub-a")
    _register(hub_b, "hub-b")
    old = T0 - timedelta(hours=3)
    hub_a.agent_connected("hub-a", agents[0], old)
    hub_a.agent_connected("hub-a", agents[1], old)
    hub_b.agent_connected("hub-b", agents[2], old)  # hub B's only event: kept
    hub_a.agent_connected("hub-a", agents[2], T0)
    assert hub_a.prune_events(T0 - timedelta(hours=1), chunk=1) == 2
    left = reader.db.execute("SELECT hub_id, seq FROM events ORDER BY hub_id, seq").fetchall()
    assert [tuple(r) for r in left] == [("hub-a", 3), ("hub-b", 1)]
    assert hub_a.prune_events(T0 + timedelta(hours=1)) == 0  # the newest stay


@pytest.mark.skipif(not ON_POSTGRES, reason="NOTIFY is PostgreSQL's")
def test_one_notification_per_transaction_however_many_events(stores, report):
    hub_a, _, reader = stores
    agents = _agents(hub_a, 3)
    _register(hub_a, "hub-a")
    assert reader.wait_for_events(0.1) is True  # the first call connects and LISTENs
    assert reader.wait_for_events(0.1) is False  # nothing since
    batch = []
    for n, agent in enumerate(agents):
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent, f"{agent}:1:{n}"
        batch.append(Incoming(agent, r, json.dumps(r).encode(), T0))
    assert hub_a.store_reports(batch) == ["stored"] * 3
    assert reader.wait_for_events(5) is True
    assert reader.wait_for_events(0.5) is False  # one for the batch of three
