"""Exports off a PostgreSQL hot standby (`serve --export-store`), through a real hub: they
read the standby's moment, and a standby that is down fails them in one coded line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from estate.inventory.errors import StoreUnavailable
from estate.inventory.store import open_store
from tests.harness import Agent, HubProcess, make_report, run
from tests.postgres import PostgresStandby
from tests.sshd import keygen

_databases = iter(range(1_000_000))


class _StandbyHub(HubProcess):
    """A hub storing into `primary_url` and exporting off `export_url`; its admin verbs reach
    the primary by $ESTATE_HUB_STORE, whichever backend the rest of the suite runs on."""

    def __init__(self, data: Path, primary_url: str, export_url: str) -> None:
        # Later flags win: these over any --store the harness gives.
        super().__init__(data, ("--report-burst", "0", "--store", primary_url,
                                "--export-store", export_url))
        self.primary_url = primary_url

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("-m", "estate.inventory.hub.cli", *args, "--data", str(self.data),
                   check=check, env={"ESTATE_HUB_STORE": self.primary_url})


def _database(postgres) -> tuple[str, str]:
    """A new database of the session cluster: (its URL, its name)."""
    name = f"export_standby_{next(_databases)}"
    return postgres.create_database(name), name


@pytest.fixture()
def estate(postgres, tmp_path, live_report):
    """A hub storing into the session cluster, exporting off a standby of it; one host
    reported, an admin operator `chief`."""
    primary_url, database = _database(postgres)
    with PostgresStandby(postgres) as standby:
        hub = _StandbyHub(tmp_path / "hub", primary_url, standby.url_for(database))
        try:
            hub.start()
            keygen(tmp_path / "chief")
            hub.admin("operator", "add", "chief", "--key", str(tmp_path / "chief.pub"),
                      "--role", "admin", "--agencies", "all")
            first = Agent(hub, tmp_path / "first")
            assert first.send(make_report(live_report, first.agent_id,
                                          system__hostname="first-pc"))[0] == 0
            standby.wait_caught_up()
            yield {"hub": hub, "standby": standby, "base": tmp_path, "first": first,
                   "report": live_report}
        finally:
            hub.kill()


def _export(env, out, check: bool = True):
    hub = env["hub"]
    return run("-m", "estate.console.cli", "export", "--hub", f"chief@{hub.address}", "--key",
               str(env["base"] / "chief"), "--hub-key", hub.fingerprint, "--report",
               "inventory", "--force", "-o", str(out), check=check)


def _exported_ids(env, out) -> set[str]:
    _export(env, out)
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["store"] == "standby"
    return {row["agent_id"] for row in json.loads(out.read_text())["rows"]}


def _hub_ids(env) -> set[str]:
    """The hosts as the hub's own store (the primary) has them."""
    return {h["agent_id"] for h in env["hub"].admin_json("hosts")}


def test_an_export_shows_the_standby_as_far_as_it_has_replayed(estate, tmp_path):
    standby, first = estate["standby"], estate["first"]
    second = Agent(estate["hub"], tmp_path / "second")
    out = tmp_path / "inventory.json"
    assert _exported_ids(estate, out) == {first.agent_id}
    standby.pause_replay()
    try:
        assert second.send(make_report(estate["report"], second.agent_id,
                                       system__hostname="second-pc"))[0] == 0
        assert _hub_ids(estate) == {first.agent_id, second.agent_id}
        assert _exported_ids(estate, out) == {first.agent_id}
    finally:
        standby.resume_replay()
    standby.wait_caught_up()
    assert _exported_ids(estate, out) == {first.agent_id, second.agent_id}
    about = json.loads(out.read_text())["about"]
    assert "standby" in about["store"], about


def test_a_stopped_standby_fails_exports_in_one_coded_line_and_reports_go_on(estate, tmp_path):
    hub, first = estate["hub"], estate["first"]
    estate["standby"].stop()
    done = _export(estate, tmp_path / "down.json", check=False)
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "estate export: the hub refused: the hub cannot reach its export store; retry later "
        "(store_unavailable)"], done.stderr
    assert not (tmp_path / "down.json").exists()
    assert first.send(make_report(estate["report"], first.agent_id,
                                  system__hostname="renamed-pc"))[0] == 0
    assert {h["hostname"] for h in hub.admin_json("hosts")} == {"renamed-pc"}
    log = hub.log()
    failed = [line for line in log.splitlines() if "export inventory for chief failed" in line]
    assert len(failed) == 1 and "cannot open the store at postgresql:" in failed[0], log
    assert "Traceback" not in log, log
    refused = [a for a in hub.admin_json("audit", "--action", "export_refused")
               if a["actor"] == "operator:chief"]
    assert [json.loads(a["detail"])["code"] for a in refused] == ["store_unavailable"], refused


def test_a_standby_lost_in_the_middle_of_an_export_is_store_unavailable(postgres):
    primary_url, database = _database(postgres)
    with PostgresStandby(postgres) as standby:
        store = open_store(primary_url, export_url=standby.url_for(database))
        try:
            standby.wait_caught_up()
            with store.reader() as reader:
                assert reader.host_count(None) == 0
                standby.stop()
                with pytest.raises(StoreUnavailable, match=r"^the export store failed: \S"):
                    reader.host_count(None)
            assert store.host_count(None) == 0  # the hub's own handle is the primary's
        finally:
            store.close()


@pytest.mark.parametrize(("store", "export_store", "says"), [
    (None, "sqlite:export.db", "--export-store: an export store is a PostgreSQL standby"),
    (None, "postgresql:///estate", "--export-store: a standby of a PostgreSQL store; this "
                                   "hub's store is SQLite"),
    ("sqlite:store.db", "postgresql:///estate", "--export-store: a standby of a PostgreSQL "
                                                "store; this hub's store is SQLite"),
])
def test_an_export_store_is_a_postgresql_standby_of_a_postgresql_store(
        tmp_path, monkeypatch, store, export_store, says):
    monkeypatch.delenv("ESTATE_HUB_STORE", raising=False)
    data = tmp_path / "hub"
    done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(data), "--listen",
               "127.0.0.1:0", *(("--store", store) if store else ()), "--export-store",
               export_store, check=False, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("estate-hub") and says in lines[-1], lines
    if export_store.startswith("postgresql"):  # argparse's refusals print its usage first
        assert len(lines) == 1, lines
    assert not data.exists()
