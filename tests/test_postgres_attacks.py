"""Attacks on a hub whose store is PostgreSQL, by a hostile agent, an operator of another
agency and a local user: each refused or harmless; nothing of it fails anyone else's reports,
the audit chain verifies, no password shows, a lost server costs one batch and a long export
does not stop ingest.

A real hub over real SSH on a throwaway cluster (tests/postgres.py), and stores opened in
process where the attack is on the store itself.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import psycopg
import pytest

from estate.console._client import open_connection
from estate.inventory.errors import StoreUnavailable
from estate.inventory.hub._writer import StoreUnavailable as BatchFailed
from estate.inventory.hub._writer import Writer
from estate.inventory.protocol import Exit
from estate.inventory.store import ENV_VAR, HostQuery, Incoming, Store, StoreUrl, StoreUrlError
from tests.harness import Agent, HubProcess, make_report, run, wait_for
from tests.postgres import PostgresCluster
from tests.test_retention import NOW, _Host

_databases = itertools.count()
WITHIN_S = 15.0  # the hub writes a refusal's first audit row at once; generous when loaded


class PgHub(HubProcess):
    """A hub on a database of its own, whatever backend the rest of the suite runs on; its
    admin verbs find the store through $ESTATE_HUB_STORE."""

    def __init__(self, data: Path, url: str, extra: tuple[str, ...] = ()) -> None:
        super().__init__(data, extra)
        self.url = url

    def store_args(self) -> tuple[str, ...]:
        return ("--store", self.url)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("-m", "estate.inventory.hub.cli", *args, "--data", str(self.data),
                   check=check, env={ENV_VAR: self.url})

    def open_store(self) -> Store:
        return Store.connect(StoreUrl.parse(self.url))


@pytest.fixture(scope="module")
def pg_hub(postgres, tmp_path_factory):
    url = postgres.create_database("attacks_hub")
    hub = PgHub(tmp_path_factory.mktemp("pg-hub") / "data", url,
                ("--report-burst", "0")).start()
    yield hub
    hub.kill()


@pytest.fixture
def pg_store(postgres):
    store = Store.connect(StoreUrl.parse(postgres.create_database(f"attacks_{next(_databases)}")),
                          durable=False)
    yield store
    store.close()


def _incoming(report: dict, at=NOW) -> Incoming:
    return Incoming(report["agent"]["id"], report,
                    gzip.compress(json.dumps(report).encode(), mtime=0), at)


# --- a hostile agent -------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_report_collected_in_year_one_fails_no_one_in_its_batch(backend, postgres, tmp_path,
                                                                 report):
    """The resend window reaches two days before the collection time: before year 1 for a
    report "collected" on 0001-01-01, an overflow that failed every report of the batch."""
    store = (Store.open(tmp_path) if backend == "sqlite" else Store.connect(
        StoreUrl.parse(postgres.create_database(f"attacks_{next(_databases)}")),
        durable=False))
    try:
        honest, hostile = _Host(store, report, "Honest"), _Host(store, report, "Hostile")
        batch = [_incoming(honest.report(NOW)), _incoming(hostile.report(NOW)),
                 _incoming(hostile.report(NOW + timedelta(seconds=1)))]
        batch[1].report["collected_at"] = "0001-01-01T00:00:00Z"
        batch[2].report["collected_at"] = "0001-01-02T23:59:59Z"
        assert store.store_reports(batch) == ["stored"] * 3
        assert store.store_reports(batch[1:2]) == ["duplicate"]  # and its resend is known
    finally:
        store.close()


def test_a_year_one_report_over_ssh_is_stored(pg_hub, tmp_path, live_report):
    agent = Agent(pg_hub, tmp_path / "agent")
    r = make_report(live_report, agent.agent_id, collected_at="0001-01-01T00:00:00Z")
    status, doc = agent.send(r)
    assert (status, doc["status"]) == (0, "stored"), doc
    assert "Traceback" not in pg_hub.log()


def test_a_report_that_breaks_the_store_fails_alone_not_its_batch():
    """Whatever a hostile report finds that the store cannot take, the honest reports that
    shared its batch are stored: the batch is tried again one report at a time."""

    class PoisonedStore:
        def store_reports(self, batch: list[Incoming]) -> list[str]:
            if "hostile" in [i.agent_id for i in batch]:
                raise OverflowError("date value out of range")
            return ["stored"] * len(batch)

    async def db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def scenario() -> list[Any]:
        writer = Writer(db, PoisonedStore())  # type: ignore[arg-type]  # only store_reports is used
        writer.start()
        items = [Incoming(name, {}, b"", NOW) for name in ("a", "hostile", "b")]
        results = await asyncio.gather(*(writer.submit(i) for i in items),
                                       return_exceptions=True)
        await writer.stop()
        return results

    a, hostile, b = asyncio.run(scenario())
    assert (a, b) == ("stored", "stored")
    assert isinstance(hostile, BatchFailed)


# --- an operator of another agency ------------------------------------------------------

def test_a_nul_in_a_probed_host_id_leaves_the_audit_chain_verifiable(pg_hub, tmp_path):
    """PostgreSQL's text holds no NUL: the store writes U+FFFD for it, so an audit row must be
    hashed as it is stored, or any operator (of any agency, on a host of none) could make
    `audit verify` cry tampering by probing for a host id with a NUL in it."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "olga"))
    key.write_public_key(str(tmp_path / "olga.pub"))
    pg_hub.admin("operator", "add", "olga", "--key", str(tmp_path / "olga.pub"), "--role",
                 "staff", "--agencies", "Elsewhere")

    async def probe() -> dict[str, Any]:
        conn = await open_connection(pg_hub.address, "olga", tmp_path / "olga",
                                     pg_hub.fingerprint)
        try:
            proc = await conn.create_process("estate-api v1")
            proc.stdin.write(json.dumps({"id": 1, "op": "host",
                                         "agent_id": "ag-\u0000mallory"}) + "\n")
            return json.loads(await asyncio.wait_for(proc.stdout.readline(), WITHIN_S))
        finally:
            conn.close()

    assert asyncio.run(probe())["error"]["code"] == "not_found"

    def probe_rows() -> list[Any]:
        store = pg_hub.open_store()
        try:
            return [r for r in store.audit_log(actor="operator:olga")
                    if (r.target or "").endswith("mallory")]
        finally:
            store.close()

    rows = wait_for(probe_rows, WITHIN_S, what="the probe's audit row")
    assert rows[0].target == "ag-\ufffdmallory"
    done = pg_hub.admin("audit", "verify", check=False)
    assert done.returncode == Exit.OK, done.stdout + done.stderr


# --- a local user: passwords --------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql:host=192.0.2.1 password=s3cret-Pa55 dbname=estate",  # libpq's key=value form
    "postgres:host=192.0.2.1 dbname=estate password=s3cret-Pa55",
    "postgresql://192.0.2.1/estate?sslpassword=s3cret-Pa55",  # the client key's passphrase
    "postgresql://192.0.2.1/estate password=s3cret-Pa55",  # libpq quotes it refusing spaces
])
def test_a_password_in_any_form_of_url_is_refused_and_never_echoed(url, tmp_path):
    with pytest.raises(StoreUrlError) as refused:
        StoreUrl.parse(url)
    assert "s3cret-Pa55" not in str(refused.value)
    done = run("-m", "estate.inventory.hub.cli", "token", "list", "--data", str(tmp_path),
               "--store", url, check=False)
    assert done.returncode == Exit.USAGE, done.stderr
    assert "s3cret-Pa55" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# --- the server going away, and long reads beside the hub ------------------------------

def _drop_connection(store: Store) -> None:
    """The server ends the store's session, as a restart or failover would."""
    pid = store.db.conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(store.db.url.url, autocommit=True,  # type: ignore[attr-defined]
                         connect_timeout=10) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_lost_server_fails_the_batch_needing_a_new_day_in_one_line_then_reconnects(
        pg_store, report):
    """A report filed under a day with no partition yet (the first after midnight, or one
    collected days ago) makes the store create it before the batch: after the server
    dropped the connection that is `StoreUnavailable` (one line, the agents retry), and the
    next batch reconnects, as every other statement does."""
    host = _Host(pg_store, report)
    host.send(NOW)
    _drop_connection(pg_store)
    late = host.report(NOW + timedelta(days=1))
    with pytest.raises(StoreUnavailable):
        pg_store.store_reports([_incoming(late, NOW + timedelta(days=1))])
    assert pg_store.store_reports([_incoming(late, NOW + timedelta(days=1))]) == ["stored"]
    _drop_connection(pg_store)
    with pytest.raises(StoreUnavailable):
        pg_store.prune_reports(NOW - timedelta(days=30), NOW - timedelta(days=400))
    pg_store.prune_reports(NOW - timedelta(days=30), NOW - timedelta(days=400))


def test_an_agent_logging_in_just_after_a_server_restart_is_not_refused(tmp_path, report):
    """The login's key lookup may be the first statement on the connection the restart cut:
    failed, the agent was told its login was refused (unknown, revoked or not enrolled)
    and waited minutes to try again; the lookup runs again on a new connection instead."""
    with PostgresCluster() as server:
        hub = PgHub(tmp_path / "hub", server.url).start()
        try:
            agent = Agent(hub, tmp_path / "agent")
            assert agent.send(make_report(report, agent.agent_id))[0] == 0
            server.restart()
            status, doc = agent.send(make_report(report, agent.agent_id))
            assert (status, doc["status"]) == (0, "stored"), doc
            assert "Traceback" not in hub.log()
        finally:
            hub.kill()


@pytest.mark.parametrize("export", ["hosts_now", "hosts_as_of"])
def test_an_export_reading_beside_the_hub_does_not_hold_up_its_pruning(pg_store, report,
                                                                        export):
    """An export on the primary reads in one snapshot for as long as it runs. Pruning runs on
    the hub's store thread: waiting there for the export (a day's DROP behind its lock)
    would stop every agent's reports for as long as any operator's export runs. The pack
    runs apart, but its REINDEX CONCURRENTLY would wait for the export's snapshot, holding
    its lock on the day meanwhile. Both leave that work to their next round instead."""
    host = _Host(pg_store, report)
    now = NOW
    for back in range(6, -1, -1):
        host.send(now - timedelta(days=back, minutes=1))
    reader = pg_store.reader()
    finished: list[int] = []
    try:
        rows = list(getattr(reader, export)(HostQuery(None), now))
        assert len(rows) == 1  # the export's snapshot and locks are held from here
        time.sleep(1.5)  # an export's transaction, not a batch of reports (`_partitions.py`)
        pruning = threading.Thread(target=lambda: finished.append(pg_store.prune_reports(
            now - timedelta(days=3), now - timedelta(days=3)) + pg_store.pack_history()))
        pruning.start()
        pruning.join(60)
        assert finished, "pruning waited on the export"
        assert not _packed_days(pg_store)
    finally:
        reader.close()
    # With the export over, a next round does what this one left. The export's server
    # process ends a moment after its client closes, and a round that still sees its
    # transaction leaves the packing to the round after: waited for, a round at a time.
    def packed_by_a_next_round() -> bool:
        pg_store.prune_reports(now - timedelta(days=3), now - timedelta(days=3))
        pg_store.pack_history()
        return _packed_days(pg_store) >= 1

    wait_for(packed_by_a_next_round, WITHIN_S, 0.2, "a prune after the export packing")
    days = {r[0][:10] for r in pg_store.db.execute("SELECT received_at FROM reports")}
    assert min(days) >= (now - timedelta(days=3)).date().isoformat()


def _packed_days(store: Store) -> int:
    """The days of samples whose index was packed (`_partitions.py` marks them)."""
    return int(store.db.execute(
        "SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'samples_d%' "
        "AND obj_description(oid, 'pg_class') IS NOT NULL").fetchone()[0])

