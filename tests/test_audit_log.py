"""The audit log: paged and filtered by `estate-hub audit`, hash-chained and checked by
`estate-hub audit verify`, and every export refusal in it."""

from __future__ import annotations

import json
import sqlite3

import asyncssh
import pytest

from estate.inventory.store import Store
from tests.harness import run, wait_for
from tests.stores import open_test_store, store_env, tamper


def _audit(data, *args: str, check: bool = True):
    return run("-m", "estate.inventory.hub.cli", "audit", *args, "--data", str(data),
               check=check, env=store_env(data))


def _store_with_rows(tmp_path, n: int = 12):
    data = tmp_path / "data"
    store = open_test_store(data)
    for i in range(n):
        store.audit("admin:alice" if i % 2 else "operator:bob",
                    "token_create" if i % 3 else "login", f"t{i}", {"i": i})
    store.close()
    return data


def _tamper(data, sql: str, args: tuple = ()) -> None:
    """Change the log behind the hub's back, as someone with the file or database could (an
    open store's own connection sees the change)."""
    tamper(data, sql, args)


def test_verify_says_ok_with_the_count(tmp_path):
    data = _store_with_rows(tmp_path)
    done = _audit(data, "verify")
    assert "OK: 12 audit rows" in done.stdout


def test_an_edited_row_is_named(tmp_path):
    data = _store_with_rows(tmp_path)
    _tamper(data, "UPDATE audit SET actor = 'admin:mallory' WHERE id = ?", (5,))
    done = _audit(data, "verify", check=False)
    assert done.returncode == 1
    assert "audit row 5 " in done.stderr and "FAILED" in done.stderr


def test_an_edited_row_with_its_hash_recomputed_breaks_the_next_link(tmp_path):
    from estate.inventory.store import audit_hash

    data = _store_with_rows(tmp_path)
    store = open_test_store(data)
    (row,) = store.audit_log(1, before_id=8)
    store.close()
    forged = audit_hash(row.prev_hash, row.id, row.at, "admin:mallory", row.action, row.target,
                        row.detail)
    _tamper(data, "UPDATE audit SET actor = 'admin:mallory', hash = ? WHERE id = 7", (forged,))
    done = _audit(data, "verify", check=False)
    assert done.returncode == 1 and "audit row 8 " in done.stderr


def test_a_deleted_row_is_named(tmp_path):
    data = _store_with_rows(tmp_path)
    _tamper(data, "DELETE FROM audit WHERE id = ?", (4,))
    done = _audit(data, "verify", check=False)
    assert done.returncode == 1
    assert "audit row 4 is missing" in done.stderr


@pytest.mark.sqlite_only("builds a store of schema 5 by hand; no PostgreSQL store predates "
                        "the chain")
def test_rows_from_before_the_chain_are_chained_by_the_migration(tmp_path):
    """A store at schema 5 (no chain) with audit rows: migrated, verify says OK, and new rows
    chain on."""
    from estate.inventory.store._migrations import MIGRATIONS

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = sqlite3.connect(data / "estate.db", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, statements in enumerate(MIGRATIONS[:5], start=1):
        for sql in statements:
            db.execute(sql)
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for i in range(3):
        db.execute("INSERT INTO audit (at, actor, action) VALUES (?, 'admin:old', 'login')",
                   (f"2025-01-0{i + 1}T00:00:00.000000Z",))
    db.execute("""CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""")
    db.close()
    store = open_test_store(data)
    store.audit("admin:new", "login", None)
    assert store.verify_audit() == (4, None, None)
    store.close()
    assert "OK: 4 audit rows" in _audit(data, "verify").stdout


def test_filters_and_paging(tmp_path):
    data = _store_with_rows(tmp_path, 12)
    first = json.loads(_audit(data, "--limit", "5", "--json").stdout)
    assert [r["id"] for r in first] == [12, 11, 10, 9, 8]
    done = _audit(data, "--limit", "5", "--before-id", "8", "--json")
    assert [r["id"] for r in json.loads(done.stdout)] == [7, 6, 5, 4, 3]
    assert "--before-id 3" in done.stderr  # how to get the next page
    last = _audit(data, "--limit", "5", "--before-id", "3", "--json")
    assert [r["id"] for r in json.loads(last.stdout)] == [2, 1]
    assert "--before-id" not in last.stderr  # no more pages
    bob = json.loads(_audit(data, "--actor", "operator:bob", "--action", "login",
                            "--json").stdout)
    assert {(r["actor"], r["action"]) for r in bob} == {("operator:bob", "login")}
    assert [r["id"] for r in bob] == [7, 1]
    store = open_test_store(data)
    middle = store.audit_log()[5]["at"]
    store.close()
    since = json.loads(_audit(data, "--since", middle, "--json").stdout)
    assert min(r["id"] for r in since) == 7
    until = json.loads(_audit(data, "--until", middle, "--json").stdout)
    assert max(r["id"] for r in until) == 6
    table = _audit(data, "--limit", "2").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "AT", "ACTOR"]


def test_the_newest_thousand_do_not_hide_an_older_row(tmp_path):
    data = tmp_path / "data"
    store = open_test_store(data)
    store.audit("operator:alice", "host_read", "ag-000000000001")
    with store._transaction():
        for i in range(1100):
            store._audit("enrol", "enrol_refused", f"tok{i}")
    store.close()
    rows = json.loads(_audit(data, "--action", "host_read", "--json").stdout)
    assert [r["actor"] for r in rows] == ["operator:alice"]


# --- export refusals are audited -------------------------------------------------------------

def test_every_export_refusal_is_audited(module_hub, tmp_path):
    import asyncio

    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "k.pub").write_bytes(key.export_public_key())
    module_hub.admin("operator", "add", "exporter", "--key", str(tmp_path / "k.pub"),
                     "--role", "admin", "--agencies", "all")

    async def export(body: bytes) -> dict:
        async with asyncssh.connect(
                "127.0.0.1", module_hub.port, username="exporter", client_keys=[key],
                known_hosts=None) as conn:
            done = await conn.run("estate-export v1", input=body, encoding=None)
            return json.loads(done.stdout.decode().splitlines()[-1])

    cases = [(b"{not json", "bad_json"),
             (json.dumps({"report": "inventory"}).encode(), "bad_request"),
             (json.dumps({"report": "inventory", "format": "csv",
                          "filter": "nosuchfield:x"}).encode(), "bad_filter")]
    for body, code in cases:
        assert asyncio.run(export(body))["code"] == code

    def rows():
        return [json.loads(r["detail"]) for r in module_hub.admin_json(
            "audit", "--actor", "operator:exporter", "--action", "export_refused")]

    found = wait_for(lambda: (r := rows()) and len(r) >= 3 and r, timeout=10,
                     what="three export_refused rows")
    assert {d["code"] for d in found} == {"bad_json", "bad_request", "bad_filter"}


# --- the chain in-process: what `verify` reports, and the format every row is hashed in ------

def _store_with_chain(folder, n: int = 5) -> Store:
    store = open_test_store(folder)
    for i in range(n):
        store.audit("admin:alice", "login", f"t{i}", {"i": i})
    return store


def test_verify_names_the_first_bad_row_and_what_is_wrong_with_it(tmp_path):
    from estate.inventory.store import audit_hash

    intact = _store_with_chain(tmp_path / "intact")
    assert tuple(intact.verify_audit()) == (5, None, None)
    intact.close()

    edited = _store_with_chain(tmp_path / "edited")
    _tamper(tmp_path / "edited", "UPDATE audit SET actor = 'admin:mallory' WHERE id = 3")
    assert tuple(edited.verify_audit()) == (
        2, 3, "its hash does not match its contents (changed)")
    edited.close()

    # Row 3 edited and its hash recomputed: it checks out, the link after it does not.
    rehashed = _store_with_chain(tmp_path / "rehashed")
    row = next(r for r in rehashed.audit_log() if r["id"] == 3)
    forged = audit_hash(row["prev_hash"], 3, row["at"], "admin:mallory", row["action"],
                        row["target"], row["detail"])
    _tamper(tmp_path / "rehashed",
            "UPDATE audit SET actor = 'admin:mallory', hash = ? WHERE id = 3", (forged,))
    assert tuple(rehashed.verify_audit()) == (
        3, 4, "does not chain to the row before it (changed or inserted)")
    rehashed.close()

    deleted = _store_with_chain(tmp_path / "deleted")
    _tamper(tmp_path / "deleted", "DELETE FROM audit WHERE id = 2")
    assert tuple(deleted.verify_audit()) == (1, 2, "is missing (deleted)")
    deleted.close()

    # The newest row's hash erased: it is the one named, and a row written after it chains
    # to what it found there (nothing), not to a value of its own.
    erased = _store_with_chain(tmp_path / "erased")
    _tamper(tmp_path / "erased", "UPDATE audit SET hash = NULL WHERE id = 5")
    erased.audit("admin:alice", "logout", None)
    assert tuple(erased.verify_audit()) == (
        4, 5, "its hash does not match its contents (changed)")
    assert erased.audit_log(1)[0]["prev_hash"] == ""
    erased.close()


def test_audit_rows_keep_their_detail_as_sorted_utf8_json_or_none(tmp_path):
    """The detail is stored as JSON with sorted keys and characters as they are: the text
    the hash covers and `estate-hub audit --json` shows. No detail (or an empty one) is none."""
    store = open_test_store(tmp_path / "data")
    store.audit("admin:zoë", "operator_add", "chloé", {"role": "admin", "agencies": ["Santé"]})
    store.audit("admin:zoë", "login", None)
    store.audit("admin:zoë", "login", None, {})
    rows = store.audit_log()
    assert [(r["actor"], r["action"], r["target"], r["detail"]) for r in rows] == [
        ("admin:zoë", "login", None, None),
        ("admin:zoë", "login", None, None),
        ("admin:zoë", "operator_add", "chloé", '{"agencies": ["Santé"], "role": "admin"}')]
    assert tuple(store.verify_audit()) == (3, None, None)
    store.close()


def test_the_audit_hash_is_sha256_of_the_previous_hash_and_the_rows_compact_json():
    """The format every stored row was hashed in: changing it would fail every existing
    log's verification, so it is spelled out here rather than recomputed by the code."""
    import hashlib

    from estate.inventory.store import audit_hash

    genesis = "0" * 64
    canonical = '[1,"2026-01-31T12:00:00.000000Z","admin:zoë","login",null,"{\\"a\\": \\"é\\"}"]'
    assert audit_hash(genesis, 1, "2026-01-31T12:00:00.000000Z", "admin:zoë", "login", None,
                      '{"a": "é"}') == \
        hashlib.sha256(f"{genesis}\n{canonical}".encode()).hexdigest()


def test_an_audit_row_is_chained_only_inside_a_write_transaction(tmp_path):
    """Outside BEGIN IMMEDIATE two processes could chain to the same row: refused, saying so."""
    store = open_test_store(tmp_path / "data")
    with pytest.raises(AssertionError,
                       match=r"^audit rows are chained inside a write transaction$"):
        store._audit("admin:alice", "login", None)
    assert store.audit_log() == []
    store.close()
