"""Watch across hubs, two real hub processes on one PostgreSQL store: an operator watching on
hub A hears of reports and presence through hub B, and when hub B is SIGKILLed while reports
flow through both, of every stored report exactly once, in order per host; PostgreSQL is asked
to NOTIFY once per committed transaction that wrote events, never once per report."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import Agent, AgentService, HubProcess, TcpRelay, add_operator, run, wait_for
from tests.multihub import WatchThread
from tests.stores import ON_POSTGRES, open_test_store, test_store_url

pytestmark = pytest.mark.skipif(
    not ON_POSTGRES, reason="several hubs share a PostgreSQL store; SQLite has one hub "
                            "(run with ESTATE_TEST_STORE=postgresql, as `make test` does)")

BOUND_S = 90  # generous: the machine is shared; no timing is asserted below it


def _hub(folder: Path, name: str, store_url: str) -> HubProcess:
    # Fast heartbeats, and a short timeout: hub A sweeps the killed hub B within seconds.
    return HubProcess(folder, extra=("--store", store_url, "--hub-name", name,
                                     "--heartbeat", "0.5", "--hub-timeout", "3"))


class _Watch(WatchThread):
    """The watch, and what it heard of each host's reports."""

    def reports(self) -> dict[str, list[str]]:
        """Each host's report ids, in the order their host events came."""
        seen: dict[str, list[str]] = defaultdict(list)
        for event in list(self.events):
            if event.get("type") == "host" and "report_id" in event:
                seen[event["row"][0]].append(event["report_id"])
        return seen


class _Notifications(threading.Thread):
    """A LISTEN of the test's own: how many notifications the hubs' transactions sent."""

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN estate_events")
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for _ in self.conn.notifies(timeout=0.5):
                self.count += 1


def _stored(folder: Path, agent_ids: set[str]) -> dict[str, list[str]]:
    """Each host's stored reports, in the order they were received (any hub)."""
    store = open_test_store(folder)
    try:
        stored: dict[str, list[str]] = defaultdict(list)
        for agent_id, report_id in store.db.execute(
                "SELECT agent_id, report_id FROM samples ORDER BY received_us"):
            if agent_id in agent_ids:  # a sample keeps the id without its agent's prefix
                stored[agent_id].append(agent_id + report_id if report_id.startswith(":")
                                        else report_id)
        return stored
    finally:
        store.close()


def _transactions_with_events(folder: Path) -> int:
    """Committed transactions that wrote events: each row's xmin names its transaction."""
    store = open_test_store(folder)
    try:
        return int(store.db.execute("SELECT COUNT(DISTINCT xmin::text) FROM events"
                                    ).fetchone()[0])
    finally:
        store.close()


def test_a_watch_on_one_hub_sees_every_hubs_events_once_across_a_hubs_death(tmp_path):
    url = test_store_url(tmp_path / "a")
    assert url is not None
    notifications = _Notifications(url)
    notifications.start()
    hub_a = _hub(tmp_path / "a", "hub-a", url).start()
    key = tmp_path / "hub-key"
    run("-m", "estate.inventory.hub.cli", "key", "export", "--out", str(key), "--data",
        str(tmp_path / "a"))
    run("-m", "estate.inventory.hub.cli", "key", "import", str(key), "--data",
        str(tmp_path / "b"))
    hub_b = _hub(tmp_path / "b", "hub-b", url).start()
    relay = TcpRelay(hub_b.port)  # hub B's agents, led to hub A once B is dead
    services: list[AgentService] = []
    watch: _Watch | None = None
    try:
        token = hub_a.token(uses=3)
        on_a = Agent(hub_a, tmp_path / "on-a", token)
        on_b = [Agent(SimpleNamespace(address=relay.address), tmp_path / f"on-b{i}",  # type: ignore[arg-type]
                      token) for i in range(2)]
        agents = {on_a.agent_id, *(a.agent_id for a in on_b)}
        add_operator(hub_a, tmp_path, "olive")
        watch = _Watch(hub_a, "olive", tmp_path / "olive")
        watch.start()
        wait_for(lambda: any(e.get("type") == "hello" for e in watch.events), BOUND_S, 0.2,
                 "a watch on hub A")
        # Every report is sent after the watch began: each must reach it.
        services = [AgentService(a).start() for a in (on_a, *on_b)]

        # A report and a presence that came through hub B, seen on hub A.
        b_id = on_b[0].agent_id
        wait_for(lambda: watch.reports().get(b_id), BOUND_S, 0.2, "a report through hub B")
        assert any(e.get("type") == "presence" and e["agent_id"] == b_id
                   and e["status"] == "online" for e in watch.events)
        wait_for(lambda: all(len(watch.reports().get(a, ())) >= 3 for a in agents), BOUND_S,
                 0.2, "reports flowing from every agent")

        # Hub B dies mid-flow; its agents come back through hub A.
        hub_b.kill()
        relay.target = hub_a.port
        relay.cut()
        stored_before = {a: len(r) for a, r in _stored(tmp_path / "a", agents).items()}
        wait_for(lambda: all(len(r) >= stored_before[a] + 3 for a, r in
                             _stored(tmp_path / "a", agents).items()), BOUND_S, 0.5,
                 "reports of every agent stored after hub B's death")
        for service in services:
            service.kill()
        # Every stored report's host event, once, in the order the host's were stored.
        try:
            wait_for(lambda: watch.reports() == _stored(tmp_path / "a", agents), BOUND_S,
                     0.5, "the watch caught up with the store")
        except AssertionError:
            assert watch.reports() == _stored(tmp_path / "a", agents)  # shows the difference
            raise
        assert not any(e.get("type") == "resync" for e in watch.events)
        wait_for(lambda: "hub hub-b taken for dead" in hub_a.log(), BOUND_S, 0.5,
                 "hub A sweeping the dead hub B")

        # One notification per committed transaction that wrote events (a batch, a
        # presence change), however many reports it held (one batch of several reports is
        # test_store_events'): the two counts meet once the hubs are quiet.
        wait_for(lambda: notifications.count == _transactions_with_events(tmp_path / "a"),
                 BOUND_S, 0.5, "as many notifications as transactions with events")
    finally:
        for service in services:
            service.kill()
        relay.close()
        hub_a.kill()
        hub_b.kill()
        notifications.stop.set()
        notifications.join(10)
        notifications.conn.close()
