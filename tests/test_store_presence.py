"""Presence across hubs in the store: the hub registry, connection epochs that fence a hub's
late disconnect, a restarted hub releasing only its own agents, dead hubs swept once."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta

import pytest

from estate.inventory.store import Store, iso, utcnow
from tests.harness import run
from tests.stores import open_test_store, store_env

T0 = utcnow().replace(microsecond=0)
TIMEOUT_S = 30.0


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path)
    yield store
    store.close()


def _agents(store: Store, n: int, agency: str = "Council") -> list[str]:
    token_id, secret, _ = store.create_token(agency, "Town Hall", n, timedelta(hours=1),
                                             "admin:test")
    return [store.enrol(token_id, secret, f"ssh-ed25519 K{i}", f"SHA256:{agency}{i}",
                        f"pc{i}")["agent_id"] for i in range(n)]


def _holder(store: Store, agent_id: str) -> tuple[int, str | None, int]:
    """(connected, the hub holding it, epoch) as the agent's row has them."""
    row = store.db.execute("SELECT connected, connected_hub, epoch FROM agents WHERE id = ?",
                           (agent_id,)).fetchone()
    return row[0], row[1], row[2]


def _history(store: Store, agent_id: str) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT state FROM presence WHERE agent_id = ? "
                                           "ORDER BY id", (agent_id,))]


def _register(store: Store, *hub_ids: str, at=T0) -> None:
    for hub_id in hub_ids:
        store.register_hub(hub_id, f"{hub_id}.example:2222", TIMEOUT_S, "1.0", at)


def test_a_late_disconnect_of_the_hub_an_agent_left_changes_nothing(store):
    (agent,) = _agents(store, 1)
    _register(store, "hub-a", "hub-b")
    on_a = store.agent_connected("hub-a", agent, T0)
    assert (on_a.epoch, on_a.agency) == (1, "Council")
    # The agent reconnects to hub B before hub A notices its old connection is gone.
    on_b = store.agent_connected("hub-b", agent, T0 + timedelta(seconds=1))
    assert on_b.epoch == 2
    assert store.agent_disconnected("hub-a", agent, on_a.epoch, T0 + timedelta(seconds=2)) \
        is None
    assert _holder(store, agent) == (1, "hub-b", 2)
    assert store.agents()[0].connected == 1
    # Hub B's own connection, replaced by a newer one on hub B, is fenced the same way.
    again = store.agent_connected("hub-b", agent, T0 + timedelta(seconds=3))
    assert store.agent_disconnected("hub-b", agent, on_b.epoch, T0) is None
    assert store.agent_disconnected("hub-b", agent, again.epoch,
                                    T0 + timedelta(seconds=4)) == "Council"
    assert _holder(store, agent) == (0, None, 3)
    assert _history(store, agent) == ["online", "online", "online", "offline"]
    assert store.agent_connected("hub-a", "ag-000000000000", T0) is None  # unknown agent


def test_a_restarted_hub_marks_offline_only_the_agents_it_held(store):
    mine, theirs, orphan = _agents(store, 3)
    _register(store, "hub-a", "hub-b")
    store.agent_connected("hub-a", mine, T0)
    store.agent_connected("hub-b", theirs, T0)
    store.set_presence(orphan, True, T0)  # held by no hub (a run before the registry)
    released = store.register_hub("hub-a", "hub-a.example:2222", TIMEOUT_S, "1.1",
                                  T0 + timedelta(seconds=5))
    assert sorted(r.agent_id for r in released) == sorted([mine, orphan])
    assert {r.agency for r in released} == {"Council"}
    assert _holder(store, mine)[:2] == (0, None)
    assert _holder(store, orphan)[:2] == (0, None)
    assert _holder(store, theirs)[:2] == (1, "hub-b")
    assert _history(store, mine) == ["online", "offline"]
    assert _history(store, theirs) == ["online"]
    hub_a, hub_b = store.hubs()
    assert (hub_a.id, hub_a.version, hub_a.started_at) == ("hub-a", "1.1",
                                                           iso(T0 + timedelta(seconds=5)))
    assert hub_b.started_at == iso(T0)


def test_a_dead_hub_is_removed_and_its_agents_go_offline_once(store):
    a1, a2, b1 = _agents(store, 3)
    _register(store, "hub-a", "hub-b")
    for agent, hub in ((a1, "hub-a"), (a2, "hub-a"), (b1, "hub-b")):
        store.agent_connected(hub, agent, T0)
    assert store.hub_heartbeat("hub-b", 1, 2.5, T0 + timedelta(seconds=25))
    # Within hub A's timeout nothing happens.
    assert store.sweep_hubs("hub-b", T0 + timedelta(seconds=TIMEOUT_S)) == ([], [])
    later = T0 + timedelta(seconds=TIMEOUT_S + 1)
    sweep = store.sweep_hubs("hub-b", later)
    assert sweep.hubs == ["hub-a"]
    assert sorted(a.agent_id for a in sweep.agents) == sorted([a1, a2])
    assert [h.id for h in store.hubs()] == ["hub-b"]
    assert _holder(store, a1)[:2] == (0, None) and _holder(store, b1)[:2] == (1, "hub-b")
    assert store.sweep_hubs("hub-b", later) == ([], [])  # done once
    assert _history(store, a1) == ["online", "offline"]
    # A hub never sweeps itself, however late its own heartbeat.
    assert store.sweep_hubs("hub-b", T0 + timedelta(days=1)) == ([], [])
    (hub_b,) = store.hubs()
    assert (hub_b.agents, hub_b.reports_per_s, hub_b.timeout_s) == (1, 2.5, TIMEOUT_S)


def test_a_hub_taken_for_dead_takes_back_only_the_agents_nobody_else_took(store):
    kept, moved = _agents(store, 2)
    _register(store, "hub-a", "hub-b")
    for agent in (kept, moved):
        store.agent_connected("hub-a", agent, T0)
    store.hub_heartbeat("hub-b", 0, 0, T0 + timedelta(seconds=40))
    store.sweep_hubs("hub-b", T0 + timedelta(seconds=40))  # hub A paused past its timeout
    store.agent_connected("hub-b", moved, T0 + timedelta(seconds=41))
    assert not store.hub_heartbeat("hub-a", 2, 0, T0 + timedelta(seconds=42))
    taken = store.rejoin_hub("hub-a", "hub-a.example:2222", TIMEOUT_S, "1.0", T0,
                             [kept, moved], T0 + timedelta(seconds=42))
    assert [(h.agent_id, h.epoch) for h in taken] == [(kept, 2)]
    assert _holder(store, kept) == (1, "hub-a", 2)
    assert _holder(store, moved)[:2] == (1, "hub-b")
    assert store.hub_heartbeat("hub-a", 1, 0, T0 + timedelta(seconds=43))
    (hub_a, _) = store.hubs()
    assert hub_a.started_at < hub_a.heartbeat_at  # its first start kept


def test_a_clean_stop_releases_the_hubs_agents_and_removes_it(store):
    mine, theirs = _agents(store, 2)
    _register(store, "hub-a", "hub-b")
    store.agent_connected("hub-a", mine, T0)
    store.agent_connected("hub-b", theirs, T0)
    store.set_remote_offered(mine, True)
    assert [r.agent_id for r in store.unregister_hub("hub-a", T0)] == [mine]
    assert [h.id for h in store.hubs()] == ["hub-b"]
    assert _holder(store, mine)[:2] == (0, None) and _holder(store, theirs)[:2] == (1, "hub-b")
    assert {a.id: a.remote_offered for a in store.agents()}[mine] == 0  # went with it


def test_two_hubs_sweeping_at_once_mark_each_agent_offline_once(tmp_path):
    stores = [open_test_store(tmp_path), open_test_store(tmp_path)]
    try:
        agents = _agents(stores[0], 20)
        _register(stores[0], "dead", "live-1", "live-2")
        for agent in agents:
            stores[0].agent_connected("dead", agent, T0)
        later = T0 + timedelta(seconds=TIMEOUT_S + 5)
        for live in ("live-1", "live-2"):
            stores[0].hub_heartbeat(live, 0, 0, later)
        start = threading.Barrier(2)
        sweeps: dict[str, object] = {}

        def sweep(store: Store, hub_id: str) -> None:
            start.wait()
            sweeps[hub_id] = store.sweep_hubs(hub_id, later)

        threads = [threading.Thread(target=sweep, args=(s, f"live-{i + 1}"))
                   for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        swept = [s for s in sweeps.values() if s.hubs]  # type: ignore[attr-defined]
        assert len(sweeps) == 2 and len(swept) == 1
        assert swept[0].hubs == ["dead"]
        assert sorted(a.agent_id for a in swept[0].agents) == sorted(agents)
        for agent in agents:
            assert _history(stores[0], agent) == ["online", "offline"]
    finally:
        for s in stores:
            s.close()


def test_estate_hub_hubs_lists_the_registry_and_marks_the_silent_dead(tmp_path):
    store = open_test_store(tmp_path)
    now = utcnow()
    store.register_hub("old-hub", "10.0.0.1:2222", 30, "1.0", now - timedelta(minutes=5))
    store.register_hub("new-hub", "10.0.0.2:2222", 30, "1.1", now - timedelta(seconds=20))
    store.hub_heartbeat("new-hub", 7, 1.5, now - timedelta(seconds=2))
    store.close()
    env = store_env(tmp_path)
    table = run("-m", "estate.inventory.hub.cli", "hubs", "--data", str(tmp_path), env=env)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "ADDRESS", "STARTED_AT", "HEARTBEAT", "AGENTS",
                                "REPORTS_PER_S", "VERSION"]
    assert lines[1].split()[:3] == ["new-hub", "live", "10.0.0.2:2222"]
    assert lines[1].split()[-3:] == ["7", "1.5", "1.1"]
    assert lines[2].split()[:3] == ["old-hub", "dead", "10.0.0.1:2222"]
    assert re.search(r"  3\d\d s ago  ", lines[2])  # 5 minutes and the time to get here
    done = run("-m", "estate.inventory.hub.cli", "hubs", "--json", "--data", str(tmp_path),
               env=env)
    rows = json.loads(done.stdout)
    assert [(r["id"], r["state"], r["agents"]) for r in rows] == [("new-hub", "live", 7),
                                                                 ("old-hub", "dead", 0)]
    assert 1 < rows[0]["heartbeat_age_s"] < 60 and rows[1]["heartbeat_age_s"] >= 300
    assert set(rows[0]) == {"id", "address", "started_at", "heartbeat_at", "timeout_s",
                            "agents", "reports_per_s", "version", "heartbeat_age_s", "state"}
    helped = run("-m", "estate.inventory.hub.cli", "hubs", "--help").stdout
    assert "dead" in helped and "--hub-timeout" in helped


@pytest.mark.parametrize(("flags", "message"), [
    (("--hub-name", "two words"), "argument --hub-name: expected 1 to 100 printable "
                                  "characters without spaces, got 'two words'"),
    (("--hub-name", "x" * 101), "argument --hub-name: expected 1 to 100"),
    (("--hub-name", "bell\a"), "argument --hub-name: expected 1 to 100"),
    (("--hub-name", ""), "argument --hub-name: expected 1 to 100"),
    (("--heartbeat", "10", "--hub-timeout", "15"),
     "--hub-timeout 15: at least twice --heartbeat (20 s)"),
])
def test_bad_hub_registry_flags_are_refused_naming_the_flag(tmp_path, flags, message):
    done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(tmp_path / "hub"),
               "--listen", "127.0.0.1:0", *flags, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "hub").exists()  # refused before anything was written


def test_a_hub_ends_only_the_remote_sessions_it_relayed_at_restart_or_death(store):
    """A hub's start ends the sessions its previous run relayed (maybe killed), a dead hub's
    are ended by the sweep; a live hub's sessions are left alone either way."""
    host_a, host_b = _agents(store, 2)
    _register(store, "hub-a", "hub-b")
    on_a = store.session_started("olive", host_a, "192.0.2.1:5000", T0, "hub-a")
    on_b = store.session_started("olive", host_b, "192.0.2.1:5001", T0, "hub-b")

    def live() -> set[int]:
        return {s.id for s in store.sessions(live_only=True)}

    store.register_hub("hub-a", "hub-a.example:2222", TIMEOUT_S, "1.1", T0)  # restarted
    assert live() == {on_b}
    ended = {s.id: s for s in store.sessions()}
    assert ended[on_a].end_reason == "hub restarted"
    # Hub B falls silent; hub A sweeps it.
    late = T0 + timedelta(seconds=TIMEOUT_S + 1)
    store.hub_heartbeat("hub-a", 0, 0.0, late)
    assert store.sweep_hubs("hub-a", late).hubs == ["hub-b"]
    assert live() == set()
    assert {s.id: s for s in store.sessions()}[on_b].end_reason == "hub stopped responding"
