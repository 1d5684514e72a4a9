"""The resend check finds a report's id through the samples' index on (agent, report id)
(migration 15), not by decoding every sample of the host's last two days. SQLite only: on
PostgreSQL the index would cost more bytes than the store's growth target leaves room for
(`_migrations._resend_index`)."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from estate.inventory.store import Incoming, iso, utcnow
from estate.inventory.store._samples import _RESENT
from tests.stores import ON_POSTGRES, open_test_store

T0 = utcnow().replace(microsecond=0)
SAMPLES = 600  # a host's samples in the resend window at a 5-minute interval, and more
INDEX = "samples_report"


def _host_with_samples(tmp_path, report):
    """A store, and a host of it with `SAMPLES` samples in the resend window, its statistics
    gathered (the planner chooses by them)."""
    store = open_test_store(tmp_path)
    token_id, secret, _ = store.create_token("Council", "Town Hall", 1, timedelta(hours=1),
                                             "admin:test")
    agent = store.enrol(token_id, secret, "ssh-ed25519 K", "SHA256:k", "pc")["agent_id"]
    r = copy.deepcopy(report)
    r["agent"]["id"], r["report_id"], r["collected_at"] = agent, f"{agent}:1:0", iso(T0)
    assert store.store_reports([Incoming(agent, r, json.dumps(r).encode(), T0)]) == ["stored"]
    # Earlier samples of the same day (a partition exists for it on PostgreSQL).
    rows = [(agent, int(T0.timestamp() * 1e6) - n, f":9:{n}") for n in range(1, SAMPLES + 1)]
    for row in rows:
        store.db.execute("INSERT INTO samples (agent_id, received_us, clock_skew_s, "
                         "report_id, probes) VALUES (?, ?, 0, ?, '[]')", row)
    store.db.execute("ANALYZE")
    return store, agent


def _plan(store, sql: str, args: tuple) -> str:
    explain = "EXPLAIN " if ON_POSTGRES else "EXPLAIN QUERY PLAN "
    return "\n".join(str(list(row)) for row in store.db.execute(explain + sql, args))


@pytest.mark.sqlite_only("the index is SQLite's alone")
def test_the_resend_check_looks_a_report_id_up_in_the_index(tmp_path, report):
    store, agent = _host_with_samples(tmp_path, report)
    try:
        since = int((T0 - timedelta(days=2)).timestamp() * 1e6)
        assert INDEX in _plan(store, _RESENT, (agent, since, ":1:1"))
    finally:
        store.close()
