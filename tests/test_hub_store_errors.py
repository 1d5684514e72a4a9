"""What the administrator sees when a PostgreSQL store is wrong, missing or down: one line
naming the store and an exit status, never a traceback or a password; and `estate-hub store
migrate`, alone or twice at once. A real server (tests/postgres.py)."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from estate.inventory.protocol import Exit
from estate.inventory.store import Store, StoreUrl
from estate.inventory.store._migrations import MIGRATIONS
from tests.harness import PY, run
from tests.postgres import PostgresCluster, skip_or_fail_without_postgres

_databases = itertools.count()


def _hub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "estate.inventory.hub.cli", *args, check=False, env=env)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr, which must not be a traceback's."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture()
def fresh_url(postgres) -> str:
    """A new, empty database of the session cluster."""
    return postgres.create_database(f"admin_errors_{next(_databases)}")


def test_a_missing_database_is_one_line_naming_the_store(postgres, tmp_path):
    url = postgres.url_for("no_such_database")
    done = _hub("token", "list", "--data", str(tmp_path), "--store", url)
    assert done.returncode == Exit.FAIL
    line = _one_line(done)
    assert line.startswith(f"estate-hub: cannot open the store at {url}: ")
    assert "no_such_database" in line.removeprefix(f"estate-hub: cannot open the store at {url}")
    assert done.stdout == ""


def test_a_stopped_server_is_one_line_naming_the_store(tmp_path):
    skip_or_fail_without_postgres()
    with PostgresCluster() as stopped:  # started, then stopped: its URL reaches nothing
        url = stopped.url
    done = _hub("token", "list", "--data", str(tmp_path), "--store", url)
    assert done.returncode == Exit.FAIL
    assert _one_line(done).startswith(f"estate-hub: cannot open the store at {url}: ")


@pytest.mark.parametrize("url", [
    "postgresql://estate:s3cret-Pa55@192.0.2.1/estate",  # TEST-NET: never reached
    "postgresql://192.0.2.1/estate?password=s3cret-Pa55",
])
def test_a_url_with_a_password_is_refused_before_connecting_and_never_echoed(url, tmp_path):
    done = _hub("token", "list", "--data", str(tmp_path), "--store", url)
    assert done.returncode == Exit.USAGE
    assert "s3cret-Pa55" not in done.stdout + done.stderr
    assert "the URL holds a password" in done.stderr and "~/.pgpass" in done.stderr
    assert "Traceback" not in done.stderr
    # The same from the environment: refused, named, not echoed.
    done = _hub("token", "list", "--data", str(tmp_path), env={"ESTATE_HUB_STORE": url})
    assert done.returncode == Exit.USAGE
    assert "s3cret-Pa55" not in done.stdout + done.stderr
    assert _one_line(done).startswith("estate-hub: $ESTATE_HUB_STORE: the URL holds a password")


def test_a_bogus_store_in_the_environment_is_a_usage_error_naming_the_variable(tmp_path):
    done = _hub("token", "list", "--data", str(tmp_path),
                env={"ESTATE_HUB_STORE": "mysql://db.example/estate"})
    assert done.returncode == Exit.USAGE
    assert _one_line(done).startswith("estate-hub: $ESTATE_HUB_STORE: 'mysql' is not a store")
    assert not (tmp_path / "estate.db").exists()


def test_store_migrate_creates_the_schema_then_has_nothing_to_do(fresh_url, tmp_path):
    first = _hub("store", "migrate", "--data", str(tmp_path), "--store", fresh_url)
    assert first.returncode == Exit.OK, first.stderr
    assert first.stdout.splitlines() == [
        f"estate-hub: migrated the store at {fresh_url} from schema version 0 to "
        f"{len(MIGRATIONS)}"]
    again = _hub("store", "migrate", "--data", str(tmp_path), "--store", fresh_url)
    assert again.returncode == Exit.OK, again.stderr
    assert again.stdout.splitlines() == [
        f"estate-hub: the store at {fresh_url} is at schema version {len(MIGRATIONS)}: "
        f"nothing to do"]
    assert not (tmp_path / "estate.db").exists()


def test_two_migrations_at_once_both_succeed_and_apply_each_version_once(fresh_url, tmp_path):
    """The migration lock: the second waits for the first, then finds nothing to do."""
    argv = [PY, "-m", "estate.inventory.hub.cli", "store", "migrate", "--data", str(tmp_path),
            "--store", fresh_url]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [status for status, _, _ in outcomes] == [Exit.OK, Exit.OK], outcomes
    said = sorted(out for _, out, _ in outcomes)
    assert "nothing to do" in said[1] and "from schema version 0" in said[0], said
    store = Store.connect(StoreUrl.parse(fresh_url))
    try:
        versions = [r[0] for r in store.db.execute("SELECT version FROM schema_version "
                                                   "ORDER BY version")]
    finally:
        store.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_serve_refuses_a_schema_newer_than_its_code_in_one_line(fresh_url, tmp_path):
    store = Store.connect(StoreUrl.parse(fresh_url))
    store.db.execute("INSERT INTO schema_version (version) VALUES (999)")
    store.close()
    done = _hub("serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"),
                "--store", fresh_url)
    assert done.returncode == Exit.FAIL
    assert _one_line(done) == (
        f"estate-hub: {fresh_url} has schema version 999, newer than this Estate "
        f"({len(MIGRATIONS)}): upgrade Estate")
    assert "listening" not in done.stdout


def test_the_hub_carries_on_after_the_database_server_restarts(tmp_path, report):
    """A restart (maintenance, a failover) cuts the hub's connection: the report that finds
    out is told to retry (`store_unavailable`, nothing stored), the next one reconnects, and
    the hub never stopped serving."""
    from estate.agent.transport import HubError
    from tests.harness import Agent, HubProcess, make_report, wait_for

    skip_or_fail_without_postgres()
    with PostgresCluster() as server:
        hub = HubProcess(tmp_path / "hub", ("--store", server.url)).start()
        try:
            hub.admin_env = {"ESTATE_HUB_STORE": server.url}
            agent = Agent(hub, tmp_path / "agent", token=_token(hub, server.url))
            assert agent.send(make_report(report, agent.agent_id))[0] == 0
            server.restart()
            answers = []

            def stored_again() -> bool:
                try:
                    status, doc = agent.send(make_report(report, agent.agent_id))
                except HubError as exc:  # the login itself found the connection lost
                    answers.append((None, "store_unavailable" if "store_unavailable" in
                                    str(exc) else str(exc)))
                    return False
                answers.append((status, doc.get("code")))
                return status == 0

            wait_for(stored_again, timeout=60, interval=0.5, what="a report stored again")
            assert all(code == "store_unavailable" for _, code in answers[:-1]), answers
            assert hub.proc is not None and hub.proc.poll() is None
            assert "Traceback" not in hub.log()
        finally:
            hub.kill()


def _token(hub, url: str) -> str:
    done = run("-m", "estate.inventory.hub.cli", "token", "create", "--agency", "Council",
               "--site", "Hall", "--data", str(hub.data), "--store", url)
    return done.stdout.strip().splitlines()[0]
