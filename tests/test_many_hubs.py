"""Two real hub processes on one PostgreSQL store, one host key: the hub registry, agents on
each, a SIGKILLed hub's agents offline within its timeout, an agent that moved to the other hub
fenced from the dead hub's late disconnect, and a restart that releases only its own agents."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from estate.inventory.store import utcnow
from tests.harness import (
    Agent,
    AgentService,
    HubProcess,
    TcpRelay,
    add_operator,
    run,
    wait_for,
)
from tests.multihub import WatchThread
from tests.stores import ON_POSTGRES, open_test_store, test_store_url

pytestmark = pytest.mark.skipif(
    not ON_POSTGRES, reason="several hubs share a PostgreSQL store; SQLite has one hub "
                            "(run with ESTATE_TEST_STORE=postgresql, as `make test` does)")

# Fast heartbeats so the test takes seconds. Hub A is taken for dead 3 s after it is killed;
# hub B's long timeout keeps the survivor from sweeping it when it is restarted, so what marks
# its agents offline then is its own restart.
HEARTBEAT = ("--heartbeat", "0.5")
BOUND_S = 90  # generous: the machine is shared; no timing is asserted below it


def _hub(folder: Path, name: str, timeout_s: int, store_url: str) -> HubProcess:
    return HubProcess(folder, extra=("--store", store_url, "--hub-name", name, *HEARTBEAT,
                                     "--hub-timeout", str(timeout_s)))


def _estate_hub(*args: str) -> Any:
    return run("-m", "estate.inventory.hub.cli", *args)


def _holders(folder: Path) -> dict[str, tuple[int, str | None, int]]:
    """Each agent's (connected, holding hub, epoch), read from the store."""
    store = open_test_store(folder)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in store.db.execute(
            "SELECT id, connected, connected_hub, epoch FROM agents")}
    finally:
        store.close()


def _history(folder: Path, agent_id: str) -> list[str]:
    store = open_test_store(folder)
    try:
        return [r[0] for r in store.db.execute(
            "SELECT state FROM presence WHERE agent_id = ? ORDER BY id", (agent_id,))]
    finally:
        store.close()


def _status(hub: HubProcess) -> dict[str, str]:
    """Each host's status (`estate-hub hosts`), read through the first hub's admin verbs
    (each HubProcess names the store of its own folder; both hubs use the first's)."""
    return {h["agent_id"]: h["status"] for h in hub.admin_json("hosts")}


def test_two_hubs_share_presence_and_a_dead_hubs_agents_go_offline(tmp_path):
    url = test_store_url(tmp_path / "a")
    assert url is not None
    hub_a = _hub(tmp_path / "a", "hub-a", 3, url).start()
    # One identity for both hubs: agents pin one host key, whichever hub they reach.
    key = tmp_path / "hub-key"
    _estate_hub("key", "export", "--out", str(key), "--data", str(tmp_path / "a"))
    _estate_hub("key", "import", str(key), "--data", str(tmp_path / "b"))
    hub_b = _hub(tmp_path / "b", "hub-b", 60, url).start()
    relay = TcpRelay(hub_a.port)
    services: list[AgentService] = []
    try:
        assert hub_b.fingerprint == hub_a.fingerprint
        token = hub_a.token(uses=3)
        on_a = Agent(hub_a, tmp_path / "on-a", token)
        on_b = Agent(hub_b, tmp_path / "on-b", token)
        # Reaches hub A through a relay that later leads to hub B: the agent moves hubs.
        moving = Agent(SimpleNamespace(address=relay.address), tmp_path / "moving",  # type: ignore[arg-type]
                       token)
        services = [AgentService(a, interval=AgentService.STEADY_INTERVAL_S).start()
                    for a in (on_a, on_b, moving)]
        add_operator(hub_a, tmp_path, "olive")
        watch = WatchThread(hub_b, "olive", tmp_path / "olive")
        watch.start()
        wait_for(lambda: any(e.get("type") == "hello" for e in watch.events), BOUND_S, 0.2,
                 "a watch on hub B")
        everyone = {on_a.agent_id, on_b.agent_id, moving.agent_id}

        wait_for(lambda: {a for a, s in _status(hub_a).items() if s == "online"} == everyone,
                 BOUND_S, 0.5, "every agent online")
        held = wait_for(lambda: (lambda h: h if h == {"hub-a": 2, "hub-b": 1} else None)(
            {r["id"]: r["agents"] for r in hub_a.admin_json("hubs")}), BOUND_S, 0.5,
            "both hubs listed with the agents they hold")
        assert held == {"hub-a": 2, "hub-b": 1}
        hubs = {r["id"]: r for r in hub_a.admin_json("hubs")}
        assert {r["state"] for r in hubs.values()} == {"live"}
        assert hubs["hub-a"]["address"] == hub_a.address
        assert hubs["hub-b"]["address"] == hub_b.address
        holders = _holders(tmp_path / "a")
        assert holders[on_a.agent_id][1] == holders[moving.agent_id][1] == "hub-a"
        assert holders[on_b.agent_id][1] == "hub-b"
        old_epoch = holders[moving.agent_id][2]

        # Hub A dies without a word; the relay now leads to hub B.
        hub_a.kill()
        relay.target = hub_b.port
        relay.cut()
        # Offline in the store (its host list status turns `stale` anyway once it misses
        # two of its reports).
        wait_for(lambda: _holders(tmp_path / "a")[on_a.agent_id][:2] == (0, None), BOUND_S,
                 0.5, "the dead hub's agent offline")
        assert _history(tmp_path / "a", on_a.agent_id)[-1] == "offline"
        wait_for(lambda: _holders(tmp_path / "a")[moving.agent_id][:2] == (1, "hub-b"),
                 BOUND_S, 0.5, "the moved agent held by hub B")
        wait_for(lambda: [r["id"] for r in hub_a.admin_json("hubs")] == ["hub-b"], BOUND_S,
                 0.5, "the dead hub removed from the registry")
        assert "hub hub-a taken for dead" in hub_b.log()
        # Hub B's watchers hear of the dead hub's agent going offline.
        wait_for(lambda: any(e.get("type") == "presence" and e["agent_id"] == on_a.agent_id
                             for e in watch.events), BOUND_S, 0.2, "the presence event")

        # The dead hub's disconnect of the moved agent, arriving late, changes nothing.
        store = open_test_store(tmp_path / "a")
        try:
            assert store.agent_disconnected("hub-a", moving.agent_id, old_epoch,
                                            utcnow()) is None
        finally:
            store.close()
        time.sleep(2)  # a few heartbeats and reports
        status = _status(hub_a)
        assert status[moving.agent_id] == status[on_b.agent_id] == "online"
        assert _holders(tmp_path / "a")[moving.agent_id][:2] == (1, "hub-b")

        # Hub A comes back under its name; its agent returns to it.
        hub_a.start()
        wait_for(lambda: _holders(tmp_path / "a")[on_a.agent_id][:2] == (1, "hub-a"),
                 BOUND_S, 0.5, "the agent back on hub A")
        a_history = _history(tmp_path / "a", on_a.agent_id)

        # Hub B killed and restarted under its name: its own agents go offline (its long
        # timeout means no sweep did it), hub A's agent does not.
        hub_b.kill()
        hub_b.start()
        wait_for(lambda: "2 agents left connected by an earlier run marked offline"
                 in hub_b.log(), BOUND_S, 0.5, "hub B's restart releasing its agents")
        for agent in (on_b, moving):
            history = wait_for(lambda agent=agent: (lambda h: h if h[-2:] == [
                "offline", "online"] else None)(_history(tmp_path / "a", agent.agent_id)),
                BOUND_S, 0.5, "hub B's agents offline, then back")
            assert history[-2:] == ["offline", "online"]
        assert _history(tmp_path / "a", on_a.agent_id) == a_history
        assert _holders(tmp_path / "a")[on_a.agent_id][:2] == (1, "hub-a")
        wait_for(lambda: set(_status(hub_a).values()) == {"online"}, BOUND_S, 0.5,
                 "every agent online again")
    finally:
        for service in services:
            service.kill()
        relay.close()
        hub_a.kill()
        hub_b.kill()
