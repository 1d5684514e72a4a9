"""The correlator's read of who is offline: after its first pass only the agents changed
since are read, and what that gives is what reading everything again gives."""

from __future__ import annotations

from datetime import timedelta

from estate.inventory.store import iso, utcnow
from tests.stores import open_test_store

HOLD = timedelta(seconds=300)


def test_reading_only_the_changed_agents_gives_what_a_whole_read_gives(tmp_path):
    store = open_test_store(tmp_path)
    try:
        start = utcnow() - timedelta(hours=1)
        ids = []
        for agency, site in (("Fire", "Station 1"), ("Health", "Clinic")):
            token_id, secret, _ = store.create_token(agency, site, 4, timedelta(hours=1),
                                                     "admin:test")
            for n in range(4):
                key = f"ssh-ed25519 {agency}{n}"
                ids.append(store.enrol(token_id, secret, key, f"SHA256:{key}",
                                       f"pc-{n}")["agent_id"])
        for agent_id in ids:
            store.set_presence(agent_id, True, start)
        first = store.health_inputs(None, HOLD, start + timedelta(seconds=1))
        assert first.offline == {} and first.revoked == set()

        def later(seconds: float) -> object:
            return start + timedelta(seconds=seconds)

        store.set_presence(ids[0], False, later(10))  # offline
        store.set_presence(ids[1], False, later(10))  # offline, then back
        store.set_presence(ids[1], True, later(20))
        store.set_presence(ids[2], False, later(10))  # offline, then revoked
        assert store.revoke_agent(ids[2], "admin:test")
        store.set_presence(ids[5], False, later(30))
        changed = store.health_inputs(iso(later(1)), HOLD, later(40))
        assert set(changed.offline) == {ids[0], ids[5]}
        assert changed.revoked == {ids[2]}
        assert changed.offline[ids[5]].site == "Clinic"
        assert changed.went_offline == {ids[0], ids[5]}
        whole = store.health_inputs(None, HOLD, later(41))
        assert (changed.offline, changed.revoked) == (whole.offline, whole.revoked)
        assert whole.went_offline == set()  # a correlator's first read: no news to it
        # Nothing changed since: the same, from a read of no agent.
        store.set_presence(ids[0], True, later(50))
        again = store.health_inputs(iso(later(41)), HOLD, later(60))
        assert set(again.offline) == {ids[5]} and again.went_offline == set()
        # Offline again since another time: news again, though read offline before.
        store.set_presence(ids[5], True, later(70))
        store.set_presence(ids[5], False, later(71))
        store.set_presence(ids[0], False, later(71))
        last = store.health_inputs(iso(later(60)), HOLD, later(80))
        assert last.went_offline == {ids[0], ids[5]}
    finally:
        store.close()
