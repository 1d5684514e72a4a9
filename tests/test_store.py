"""The store on its own: migrations, tokens and the append-only audit log."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import timedelta

import pytest

from agent.enrol import parse_token
from inventory.hub._tokens import make_token, split_token
from inventory.store import EnrolError, Incoming, Store, utcnow
from inventory.store._migrations import MIGRATIONS


def test_migrations_apply_once_and_record_the_version(tmp_path):
    store = Store.open(tmp_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    again = Store.open(tmp_path)  # reopening applies nothing twice
    assert again.schema_version() == len(MIGRATIONS)
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "estate.db")
    with db:
        db.execute("INSERT INTO schema_version VALUES (999)")
    db.close()
    with pytest.raises(RuntimeError, match="upgrade Estate"):
        Store.open(tmp_path)


def test_audit_log_is_append_only(tmp_path):
    store = Store.open(tmp_path)
    store.create_token("Schools", "St Mary's", 1, timedelta(hours=1), "admin:test")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert store.audit_log()[0]["action"] == "token_create"


def test_enrol_is_idempotent_for_the_same_key_and_counts_uses(tmp_path):
    store = Store.open(tmp_path)
    token_id, secret, _ = store.create_token("Schools", "École Nord", 1, timedelta(hours=1),
                                             "admin:test")
    first = store.enrol(token_id, secret, "ssh-ed25519 AAAA", "SHA256:k1", "pc1")
    again = store.enrol(token_id, secret, "ssh-ed25519 AAAA", "SHA256:k1", "pc1")
    assert first["new"] and not again["new"] and first["agent_id"] == again["agent_id"]
    with pytest.raises(EnrolError) as err:
        store.enrol(token_id, secret, "ssh-ed25519 BBBB", "SHA256:k2", "pc2")
    assert err.value.code == "token_used_up"
    assert [t["uses"] for t in store.tokens()] == [1]
    assert store.agent_fingerprint(first["agent_id"]) == "SHA256:k1"
    store.revoke_agent(first["agent_id"], "admin:test")
    assert store.agent_fingerprint(first["agent_id"]) is None


def test_token_format_is_shared_by_hub_and_agent():
    token = make_token("ab12cd34", "s3cr3t-_x", "SHA256:abc+/def", "hub.example:2222")
    assert split_token(token) == ("ab12cd34", "s3cr3t-_x", "SHA256:abc+/def")
    assert parse_token(token) == ("SHA256:abc+/def", "hub.example:2222")
    assert parse_token(make_token("i", "s", "SHA256:f")) == ("SHA256:f", None)
    with pytest.raises(ValueError):
        split_token("EST2.a.b.c")


def _enrolled(store: Store, agency: str = "Schools", site: str = "St Mary's") -> str:
    token_id, secret, _ = store.create_token(agency, site, 1, timedelta(hours=1), "admin:test")
    key = f"ssh-ed25519 {agency}{site}"
    return store.enrol(token_id, secret, key, f"SHA256:{key}", "pc")["agent_id"]


def test_a_report_id_is_stored_once_whatever_comes_again(tmp_path, report):
    """Idempotency by report_id: a resent report (after a lost ack) is answered `duplicate`
    and changes nothing, in a later batch or in the same one, even if its body differs."""
    store = Store.open(tmp_path)
    agent_id = _enrolled(store)
    report["agent"]["id"] = agent_id
    report["report_id"] = f"{agent_id}:1:1"

    def incoming(r):
        body = json.dumps(r).encode()
        return Incoming(agent_id, copy.deepcopy(r), body, utcnow())

    first = incoming(report)
    assert store.store_reports([first]) == ["stored"]
    changes_before = store.changes()
    assert store.store_reports([first]) == ["duplicate"]
    # Same id, other content (a buggy or replayed sender): still the first one counts.
    altered = copy.deepcopy(report)
    altered["system"]["hostname"] = "replayed-name"
    altered["hardware"]["memory"]["total_bytes"] = 12345
    assert store.store_reports([incoming(altered)]) == ["duplicate"]
    second = copy.deepcopy(report)
    second["report_id"] = f"{agent_id}:1:2"
    assert store.store_reports([incoming(second), incoming(second)]) == ["stored",
                                                                          "duplicate"]
    rows = store.db.execute("SELECT report_id, COUNT(*) FROM reports GROUP BY report_id "
                            "ORDER BY report_id").fetchall()
    assert [tuple(r) for r in rows] == [(f"{agent_id}:1:1", 1), (f"{agent_id}:1:2", 1)]
    (host,) = store.hosts()
    assert host["hostname"] == report["system"]["hostname"]
    assert store.changes() == changes_before, "a duplicate made change events"
    store.close()
