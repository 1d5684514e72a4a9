"""The hub end to end: real `estate-hub serve`, real `estate-agent`, real SSH on loopback."""

from __future__ import annotations

import json
import signal
import time

import paramiko
import pytest

from estate.agent.transport import HubError
from tests.harness import Agent, HubProcess, make_report, tcp_queues, wait_for


def test_agent_enrols_reports_and_shows_in_hosts(hub, tmp_path, live_report):
    agent = Agent(hub, tmp_path / "agent", hub.token("Fire & Rescue", "Station 12 – Nord"))
    config = agent.config.read_text()
    assert f'hub_key = "{hub.fingerprint}"' in config
    assert (agent.key_file.stat().st_mode & 0o777) == 0o600
    first = agent.report_cli()
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "stored"
    assert agent.report_cli().returncode == 0
    (host,) = hub.admin_json("hosts")
    assert host["agent_id"] == agent.agent_id
    assert (host["agency"], host["site"]) == ("Fire & Rescue", "Station 12 – Nord")
    assert host["hostname"] == live_report["system"]["hostname"]
    assert host["status"] in ("online", "offline")
    with hub.store() as store:
        assert store.report_count() == 2
        actions = [r.action for r in reversed(store.audit_log())]
    # A new store's first hub records the compliance policy it starts with.
    assert actions == ["policy_changed", "token_create", "enrol"]
    table = hub.admin("hosts").stdout
    assert agent.agent_id in table and "Station 12 – Nord" in table


def test_changes_after_hardware_and_package_change(module_hub, module_agent, live_report):
    agent = module_agent
    base = make_report(live_report, agent.agent_id)
    assert agent.send(base)[1]["status"] == "stored"
    pkgs = base["software"]["packages"]
    new_pkgs = [*pkgs[1:], {"name": "estate-test-pkg", "version": "1.0", "arch": "all",
                            "publisher": None}]
    from estate.agent.collect._common import package_hash

    memory = base["hardware"]["memory"]["total_bytes"] * 2
    disk = {"name": "sdz", "model": "Test Disk", "serial": "TD-1", "size_bytes": 10**12,
            "rotational": False}
    changed = make_report(base, agent.agent_id, hardware__memory__total_bytes=memory,
                          hardware__disks=[*base["hardware"]["disks"], disk],
                          software__packages=new_pkgs, software__hash=package_hash(new_pkgs))
    assert agent.send(changed)[1]["status"] == "stored"
    # Unchanged software is not resent: the hub keeps the list and emits nothing for it.
    quiet = make_report(changed, agent.agent_id, software__packages=None)
    assert agent.send(quiet)[1]["status"] == "stored"

    events = module_hub.admin_json("changes", "--host", agent.agent_id)
    kinds = {(e["kind"], e["subject"]) for e in events}
    assert ("memory_changed", None) in kinds
    assert ("disk_added", "sdz") in kinds
    assert ("software_installed", "estate-test-pkg:all") in kinds
    removed = pkgs[0]["name"] + (f":{pkgs[0]['arch']}" if pkgs[0]["arch"] else "")
    assert ("software_removed", removed) in kinds
    mem = next(e for e in events if e["kind"] == "memory_changed")
    assert (int(mem["old_value"]), int(mem["new_value"])) == (memory // 2, memory)
    assert all(e["report_id"] == changed["report_id"] for e in events)
    since = module_hub.admin_json("changes", "--since", "2999-01-01")
    assert since == []
    assert "memory_changed" in module_hub.admin("changes", "--host", agent.agent_id).stdout


def test_resent_report_is_a_duplicate_not_a_second_row(module_hub, module_agent, live_report):
    report = make_report(live_report, module_agent.agent_id)
    assert module_agent.send(report) == (0, {"status": "stored",
                                             "report_id": report["report_id"]})
    assert module_agent.send(report) == (0, {"status": "duplicate",
                                             "report_id": report["report_id"]})
    assert module_hub.report_ids(module_agent.agent_id).count(report["report_id"]) == 1


def test_an_older_backlog_report_does_not_roll_the_host_back(module_hub, module_agent,
                                                            live_report):
    newer = make_report(live_report, module_agent.agent_id)
    older = make_report(live_report, module_agent.agent_id, system__hostname="old-name",
                        collected_at="2020-01-01T00:00:00Z")
    assert module_agent.send(newer)[1]["status"] == "stored"
    assert module_agent.send(older)[1]["status"] == "stored"
    hosts = {h["agent_id"]: h for h in module_hub.admin_json("hosts")}
    assert hosts[module_agent.agent_id]["hostname"] == live_report["system"]["hostname"]
    assert hosts[module_agent.agent_id]["clock_skew_s"] is not None


def test_cloned_machines_are_flagged_not_merged(hub, tmp_path, live_report):
    a = Agent(hub, tmp_path / "a", hub.token())
    b = Agent(hub, tmp_path / "b", hub.token())
    for agent in (a, b):
        r = make_report(live_report, agent.agent_id, hardware__serial="CLONE-123")
        assert agent.send(r)[1]["status"] == "stored"
    hosts = {h["agent_id"]: h for h in hub.admin_json("hosts")}
    assert len(hosts) == 2
    assert hosts[a.agent_id]["identity_conflict"] == b.agent_id
    assert hosts[b.agent_id]["identity_conflict"] == a.agent_id
    assert "same serial/uuid" in hub.admin("hosts").stdout


def _send_without_reading_ack(agent: Agent, body: bytes, eof: bool) -> paramiko.Transport:
    client = agent.client()
    client.connect()
    chan = client.transport.open_session()
    chan.exec_command("estate-report v1")
    chan.sendall(body)
    if eof:
        chan.shutdown_write()
    return client.transport


def _stored(hub: HubProcess, report_id: str) -> bool:
    return report_id in hub.report_ids(report_id.rsplit(":", 2)[0])


def test_sigkill_after_commit_before_ack_then_resend_is_duplicate(hub, tmp_path, live_report):
    agent = Agent(hub, tmp_path / "agent", hub.token())
    report = make_report(live_report, agent.agent_id)
    transport = _send_without_reading_ack(agent, json.dumps(report).encode(), eof=True)
    deadline = time.monotonic() + 30
    while not _stored(hub, report["report_id"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _stored(hub, report["report_id"])
    hub.kill()  # committed; the agent never read an ack
    transport.close()
    hub.start()
    assert agent.send(report)[1]["status"] == "duplicate"
    with hub.store() as store:
        assert store.report_count() == 1


@pytest.mark.skipif(tcp_queues(0) is None, reason="reads /proc/net/tcp (Linux)")
def test_sigkill_before_the_report_is_complete_stores_nothing(hub, tmp_path, live_report):
    agent = Agent(hub, tmp_path / "agent", hub.token())
    report = make_report(live_report, agent.agent_id)
    body = json.dumps(report).encode()
    transport = _send_without_reading_ack(agent, body[: len(body) // 2], eof=False)

    def hub_has_read_everything() -> bool:
        queues = tcp_queues(hub.port)
        assert queues is not None
        unread, unacked = queues
        return bool(unread) and not any(unread) and not any(unacked)

    # The half body is in the hub process, not on the way: the kernel holds no byte of it
    # on either side. (The hub reads SSH packets as they come, into the channel's buffer.)
    wait_for(hub_has_read_everything, timeout=30, what="the hub to read the half body")
    hub.kill()
    transport.close()
    hub.start()
    assert not _stored(hub, report["report_id"])
    assert agent.send(report)[1]["status"] == "stored"


def test_sigkill_under_load_loses_no_acked_report_and_stores_none_twice(hub, tmp_path,
                                                                        live_report):
    """Many agents' reports in flight when the hub dies: every acked one is stored, and
    resending everything afterwards stores each report exactly once."""
    import threading

    # Reports back to back from each agent: the per-agent rate limit is off for this test.
    hub.kill()
    hub.extra = ("--report-burst", "0")
    hub.start()
    token = hub.token(uses=AGENTS_UNDER_LOAD)
    agents = [Agent(hub, tmp_path / f"agent{i}", token) for i in range(AGENTS_UNDER_LOAD)]
    reports = {a.agent_id: [make_report(live_report, a.agent_id) for _ in range(10)]
               for a in agents}
    acked: list[str] = []
    failures: list[tuple[bool, BaseException]] = []  # (after the kill?, what)
    lock = threading.Lock()
    killing = threading.Event()

    def sender(agent: Agent) -> None:
        for r in reports[agent.agent_id]:
            try:
                status, doc = agent.send(r)
            except BaseException as exc:  # judged below, not hidden
                with lock:
                    failures.append((killing.is_set(), exc))
                return
            with lock:
                if status == 0:
                    acked.append(doc["report_id"])
                else:
                    failures.append((killing.is_set(), AssertionError(f"{status} {doc}")))

    threads = [threading.Thread(target=sender, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 2 * AGENTS_UNDER_LOAD, timeout=60,
             what="reports from every agent in flight")
    killing.set()
    hub.kill()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sender hung on a dead hub"
    # Before the kill nothing may fail; after it, only the connection may.
    assert [e for after, e in failures if not after] == [], failures
    assert all(isinstance(e, HubError) for _, e in failures), failures
    hub.start()
    stored = {r for agent_id in reports for r in hub.report_ids(agent_id)}
    assert set(acked) <= stored, "an acknowledged report was lost"
    assert {r.rsplit(":", 2)[0] for r in acked} == set(reports), "not every agent was heard"
    everything = [r for rs in reports.values() for r in rs]
    for agent in agents:
        for r in reports[agent.agent_id]:
            status, doc = agent.send(r)
            assert status == 0
            assert doc["status"] == ("duplicate" if r["report_id"] in stored else "stored")
    # Each exactly once.
    assert sorted(r for agent_id in reports for r in hub.report_ids(agent_id)) == \
        sorted(r["report_id"] for r in everything)


AGENTS_UNDER_LOAD = 6


def test_sigterm_stops_cleanly(hub):
    assert hub.signal(signal.SIGTERM) == 0
