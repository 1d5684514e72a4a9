"""The resend check finds a report's id through the samples' index on (agent, report id), not
by decoding every sample of the host's last two days: SQLite's whole table's (migration 15);
on PostgreSQL each recent day's partition's, dropped once the check no longer reaches the
day (`_partitions.py`), after which the check still finds a resend there."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from estate.inventory.store import Incoming, iso, utcnow
from estate.inventory.store._partitions import resend_index_name
from estate.inventory.store._samples import (
    _RESENT,
    INSERT_SAMPLES,
    RESEND_INDEXED_DAYS,
    _resend_since,
)
from tests.stores import ON_POSTGRES, open_test_store

T0 = utcnow().replace(microsecond=0)
SAMPLES = 600  # a host's samples in the resend window at a 5-minute interval, and more
TODAY = T0.date().isoformat()
INDEX = resend_index_name(TODAY) if ON_POSTGRES else "samples_report"
T0_US = int(T0.timestamp() * 1e6)
SINCE = _resend_since(T0, T0)  # a report collected and received at T0


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
    rows = [(agent, T0_US - n, f":9:{n}") for n in range(1, SAMPLES + 1)]
    for row in rows:
        store.db.execute("INSERT INTO samples (agent_id, received_us, clock_skew_s, "
                         "report_id, probes) VALUES (?, ?, 0, ?, '[]')", row)
    store.db.execute("ANALYZE")
    return store, agent


def _plan(store, sql: str, args: tuple) -> str:
    explain = "EXPLAIN " if ON_POSTGRES else "EXPLAIN QUERY PLAN "
    return "\n".join(str(list(row)) for row in store.db.execute(explain + sql, args))


def test_the_resend_check_looks_a_report_id_up_in_the_index(tmp_path, report):
    store, agent = _host_with_samples(tmp_path, report)
    try:
        assert INDEX in _plan(store, _RESENT, (agent, SINCE, ":1:1"))
        assert store.db.execute(_RESENT, (agent, SINCE, ":9:300")).fetchone()
        assert not store.db.execute(_RESENT, (agent, SINCE, ":1:1")).fetchone()
        if ON_POSTGRES:  # its many reports' form, in the unchanged batch's one statement
            assert INDEX in _plan(store, INSERT_SAMPLES, ([agent], [T0_US], [0.0], [":1:1"],
                                                          ["[]"], [SINCE]))
    finally:
        store.close()


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's index is a day's partition's")
def test_a_day_the_check_no_longer_reaches_loses_its_index_and_resends_are_still_found(
        tmp_path, report):
    store, agent = _host_with_samples(tmp_path, report)
    try:
        # Pruning keeps the index of every day the check still reaches: the newest few.
        later = [(T0 + timedelta(days=d)).date().isoformat()
                 for d in range(1, RESEND_INDEXED_DAYS + 1)]
        store.prune_reports(T0 - timedelta(days=30), T0 - timedelta(days=400))
        assert INDEX in _plan(store, _RESENT, (agent, SINCE, ":1:1"))
        # Days later (samples are filed by the hub's clock: the newest day is today), this
        # day is out of reach and loses it, and the days since keep theirs; a check
        # reaching the day reads its range.
        store.db.history.ensure("samples", later[:-1])
        store.prune_reports(T0 - timedelta(days=30), T0 - timedelta(days=400))
        assert INDEX in _plan(store, _RESENT, (agent, SINCE, ":1:1"))
        store.db.history.ensure("samples", later[-1:])
        store.prune_reports(T0 - timedelta(days=30), T0 - timedelta(days=400))
        indexed = {r[0] for r in store.db.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'samples_d%_resend'")}
        assert indexed == {resend_index_name(day) for day in later}
        store.db.execute("ANALYZE")
        assert INDEX not in _plan(store, _RESENT, (agent, SINCE, ":1:1"))
        assert store.db.execute(_RESENT, (agent, SINCE, ":9:300")).fetchone()
        r = copy.deepcopy(report)  # the first report, sent again: a resend
        r["agent"]["id"], r["report_id"], r["collected_at"] = agent, f"{agent}:1:0", iso(T0)
        assert store.store_reports([Incoming(agent, r, json.dumps(r).encode(), T0)]) == [
            "duplicate"]
    finally:
        store.close()
