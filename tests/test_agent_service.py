"""`estate-agent run` against `estate-hub serve`, with the faults of a real estate: real
processes on loopback, killed with signals; every wait bounded."""

from __future__ import annotations

import glob
import gzip
import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from estate.agent.config import AgentConfig, SpoolConfig
from estate.agent.service import Service
from estate.agent.transport import CommandResult, HubError
from estate.inventory.protocol import ChannelExit
from tests.harness import Agent, AgentService, HubProcess, TcpRelay, stored_sequences, wait_for


@pytest.fixture()
def enrolled(hub, tmp_path):
    return Agent(hub, tmp_path / "agent", hub.token("Schools", "St Mary's"))


@pytest.fixture()
def service(enrolled):
    services = []

    def make(**kw):
        s = AgentService(enrolled, **kw)
        services.append(s)
        return s

    yield make
    for s in services:
        s.kill()


def _host(hub: HubProcess, agent_id: str) -> dict:
    hosts = {h["agent_id"]: h for h in hub.admin_json("hosts")}
    return hosts.get(agent_id, {})


def test_service_keeps_the_record_current_and_presence_follows_the_connection(
        hub, enrolled, service):
    svc = service().start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 3, what="3 reports")
    assert _host(hub, enrolled.agent_id)["status"] == "online"
    status = svc.status()
    assert status["connected"] and status["last_ack_at"] and status["spool_reports"] <= 1
    assert svc.stop(signal.SIGTERM) == 0
    wait_for(lambda: _host(hub, enrolled.agent_id).get("status") == "offline",
             timeout=10, what="offline after the agent stopped")
    with hub.db() as db:
        states = [r[0] for r in db.execute("SELECT state FROM presence WHERE agent_id = ? "
                                           "ORDER BY id", (enrolled.agent_id,))]
    assert states[:2] == ["online", "offline"]
    seqs = stored_sequences(hub, enrolled.agent_id)
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), "a report went missing"


def test_hub_killed_and_down_for_a_while_every_report_arrives_once_newest_first(
        hub, enrolled, service):
    svc = service().start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 2, what="2 reports")
    hub.kill()  # SIGKILL, mid-stream
    wait_for(lambda: svc.status().get("spool_reports", 0) >= 4, timeout=30,
             what="reports piling up in the spool while the hub is down")
    before = len(stored_sequences(hub, enrolled.agent_id))
    hub.start()  # same port, same data
    wait_for(lambda: svc.status().get("spool_reports") == 0 and
             svc.status().get("connected"), timeout=60, what="the spool to drain")
    assert svc.stop() == 0
    seqs = stored_sequences(hub, enrolled.agent_id)
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), "lost or duplicated reports"
    assert len(seqs) == len(set(seqs))
    with hub.store() as store:
        rows = list(reversed(store.recent_reports(enrolled.agent_id, None, 1000) or []))
    backlog = [(int(r.report_id.rsplit(":", 1)[1]), r.collected_at, r.received_at)
               for r in rows[before:]]
    first_seq, _, first_received = backlog[0]
    # Every report collected (whole seconds) before the first one arrived was waiting then;
    # the first sent must be the newest of those.
    waiting = [seq for seq, collected, _ in backlog if collected[:19] < first_received[:19]]
    assert first_seq >= max(waiting, default=first_seq), \
        f"the newest report did not go first: {backlog}"
    assert "retrying in" in svc.log()


@pytest.fixture()
def relayed(hub, enrolled):
    """The enrolled agent's config pointed at a TcpRelay in front of the hub."""
    relay = TcpRelay(hub.port)
    text = enrolled.config.read_text()
    assert f'hub = "{hub.address}"' in text
    enrolled.config.write_text(text.replace(f'hub = "{hub.address}"',
                                            f'hub = "{relay.address}"'))
    yield relay
    relay.close()


def _hold_a_report_in_flight(hub, enrolled, relay: TcpRelay) -> int:
    """Let the agent start sending a report that the hub will never see; its sequence."""
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 2, what="2 reports")
    relay.hold()
    # A report's channel, command and gzipped body are kilobytes; keepalives are not.
    wait_for(lambda: relay.held >= 1024, timeout=30, what="a report sent into the void")
    return max(stored_sequences(hub, enrolled.agent_id)) + 1


def _every_report_arrives_once(hub, svc, agent_id: str, in_flight: int) -> None:
    # The status of this agent process: a killed one's last status.json said its spool was
    # empty before the report in flight was spooled.
    wait_for(lambda: svc.status().get("pid") == svc.proc.pid
             and svc.status().get("spool_reports") == 0 and svc.status().get("connected")
             and max(stored_sequences(hub, agent_id)) > in_flight, timeout=60,
             what="the spool to drain after the fault")
    assert svc.stop() == 0
    seqs = stored_sequences(hub, agent_id)
    assert in_flight in seqs, f"report {in_flight}, in flight at the fault, was lost: {seqs}"
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"lost or duplicated: {seqs}"


def test_a_report_leaves_the_spool_only_after_the_ack_when_the_hub_closes_mid_body(
        hub, enrolled, service, relayed):
    """The connection dies while the real agent is sending: the report stays and is resent."""
    svc = service().start()
    in_flight = _hold_a_report_in_flight(hub, enrolled, relayed)
    relayed.cut()
    wait_for(lambda: "the hub connection failed" in svc.log(), timeout=30,
             what="the agent to see its send fail")
    _every_report_arrives_once(hub, svc, enrolled.agent_id, in_flight)


def test_a_report_survives_a_kill_between_send_and_ack(hub, enrolled, service, relayed):
    """SIGKILL while the agent waits for an ack that never comes: the spool still has it."""
    svc = service().start()
    in_flight = _hold_a_report_in_flight(hub, enrolled, relayed)
    svc.kill()
    relayed.cut()
    svc.start()  # the same agent, the same spool
    _every_report_arrives_once(hub, svc, enrolled.agent_id, in_flight)


class _FakeClient:
    """Stands in for the SSH client only, to fail `run` in ways a live hub rarely does."""

    def __init__(self, outcome):
        self.outcome, self.calls = outcome, 0
        self.transport = self

    def is_active(self) -> bool:
        return True

    def report(self, payload: bytes):
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def close(self) -> None:
        pass


@pytest.mark.parametrize("outcome", [
    HubError("the hub connection failed: EOF mid-body"),
    RuntimeError("a bug between send and ack"),
    CommandResult(ChannelExit.TEMPFAIL, {"code": "busy", "retry_after": 5}),
    CommandResult(77, {"code": "forbidden", "message": "no"}),
], ids=["hub_error", "unexpected", "busy", "refused"])
def test_a_report_leaves_the_spool_only_after_the_ack(tmp_path, outcome):
    """Whatever fails in the send, the report stays; an ack (exit 0) alone removes it."""
    cfg = AgentConfig(path=tmp_path / "agent.toml", agent_id="ag-test", hub="127.0.0.1:1",
                      hub_key="SHA256:" + "A" * 43, key_file=tmp_path / "key",
                      spool=SpoolConfig(path=tmp_path / "spool.db"))
    svc = Service(cfg)
    body = gzip.compress(json.dumps({"report_id": "ag-test:1:1"}).encode())
    svc.spool.put("ag-test:1:1", body)
    svc.client = fake = _FakeClient(outcome)
    try:
        svc._send_one()
    except RuntimeError:
        pass  # the service loop dies on a bug; the report must still be kept
    assert fake.calls == 1
    assert svc.spool.depth()[0] == 1, "the report left the spool without an ack"
    assert svc.spool.newest().body == body
    svc.client = _FakeClient(CommandResult(0, {"status": "stored",
                                               "report_id": "ag-test:1:1"}))
    svc._send_one()
    assert svc.spool.depth() == (0, 0), "an acked report stayed in the spool"
    svc.spool.close()


def test_spool_full_drops_the_oldest_and_says_how_many(hub, enrolled, service):
    hub.kill()
    svc = service(extra_config="[spool]\nmax_reports = 3\n").start()
    wait_for(lambda: svc.status().get("spool_reports") == 3 and "dropped" in svc.log(),
             timeout=30, what="the spool to overflow")
    hub.start()
    wait_for(lambda: svc.status().get("spool_reports") == 0, timeout=60, what="drain")
    # A drop made while the last backlog report was on its way is told by the next report:
    # wait for one past the drain before counting.
    drained = len(stored_sequences(hub, enrolled.agent_id))
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) > drained,
             timeout=30, what="a report after the drain")
    assert svc.stop() == 0
    # Every report stored, body or not: one that changed nothing keeps only its sample (and
    # counted from the bodies alone, it was taken for a drop when a later one kept a body).
    seqs = sorted(stored_sequences(hub, enrolled.agent_id))
    # One telling of drops always keeps its body.
    with hub.db() as db:
        bodies = [json.loads(gzip.decompress(r[0])) for r in db.execute(
            "SELECT body FROM reports WHERE agent_id = ? AND body IS NOT NULL",
            (enrolled.agent_id,))]
    told = sum(b["agent"]["dropped_reports"] or 0 for b in bodies)
    missing = max(seqs) - len(seqs)
    assert missing >= 1, "nothing was dropped"
    assert told == missing, f"the hub was told of {told} drops, {missing} happened"


def test_a_corrupt_spool_is_moved_aside_and_the_agent_keeps_running(hub, enrolled, service):
    (enrolled.config.parent / "spool.db").write_bytes(b"this is not a database" * 100)
    svc = service().start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 2, what="reports")
    assert "moved it to spool.db.corrupt-" in svc.log()
    assert list(enrolled.config.parent.glob("spool.db.corrupt-*"))
    assert svc.stop() == 0


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs to fill up (root only, as CI runs)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    # mode=0700: the agent refuses a spool folder that other users may open.
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); run as root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass  # ENOSPC: the disk is full
    return filler


def test_disk_full_on_the_spool_folder_agent_says_so_and_sends_directly(
        hub, enrolled, service, tiny_disk):
    svc = service(extra_config=f'[spool]\npath = "{tiny_disk / "spool.db"}"\n').start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 1, what="a report")
    # A backlog spooled while the hub is away, then the disk fills: the hub's acks for the
    # backlog cannot be deleted from the spool, and new reports cannot be spooled at all.
    hub.kill()
    wait_for(lambda: svc.status().get("spool_reports", 0) >= 2, what="a spooled backlog")
    filler = _fill(tiny_disk)
    backlog = svc.status()["spool_reports"]
    before = len(stored_sequences(hub, enrolled.agent_id))
    hub.start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= before + backlog + 3,
             timeout=30, what=f"the backlog and reports sent directly with a full disk\n"
             f"{svc.log()[-3000:]}")
    assert svc.proc.poll() is None, "the agent died"
    log = svc.log()
    # The reason is named, not only the fallback: SQLite's "database or disk is full".
    assert re.search(r"spool cannot store reports \([^)]*full[^)]*\): sending directly", log), \
        log[-2000:]
    # An acked report the spool could not delete is not sent again (that would spend the
    # agent's report budget at the hub and keep new reports out).
    assert "hub busy" not in log, log[-2000:]
    filler.unlink()
    wait_for(lambda: svc.status().get("spool_reports") == 0, what="the spool emptied")
    assert svc.stop() == 0
    with sqlite3.connect(tiny_disk / "spool.db") as spool:
        assert spool.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_changed_hub_key_is_refused_with_the_reason(hub, enrolled, service):
    svc = service().start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 1, what="a report")
    hub.kill()
    (hub.data / "host_key_ed25519").unlink()
    hub.start()  # same address, new key: an impostor as far as the agent can tell
    wait_for(lambda: "pinned" in svc.log(), timeout=30, what="the refusal")
    count = len(stored_sequences(hub, enrolled.agent_id))
    # Tried again (reconnect_max is 1 s) and refused again: still nothing sent.
    wait_for(lambda: sum("pinned" in line for line in svc.log().splitlines()) >= 3,
             timeout=30, what="two more refusals")
    assert len(stored_sequences(hub, enrolled.agent_id)) == count, "sent to an unpinned key"
    assert "presented host key" in (svc.status().get("last_error") or "")
    assert svc.proc.poll() is None
    assert svc.stop() == 0


def _libfaketime() -> str | None:
    """libfaketime (Debian's libfaketime package), preloaded into the agent alone."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


@pytest.mark.skipif(not _libfaketime(), reason="needs libfaketime "
                    "(apt-get install faketime; .ci/run installs it)")
def test_agent_clock_jump_does_not_move_received_at_and_is_flagged(hub, enrolled, service):
    svc = service(env={"LD_PRELOAD": _libfaketime(), "FAKETIME": "+3h",
                       "FAKETIME_DONT_FAKE_MONOTONIC": "1"}).start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 1, what="a report")
    assert svc.stop() == 0
    with hub.store() as store:
        (first, *_) = store.recent_reports(enrolled.agent_id, None, 1) or []
    received, collected, skew = first.received_at, first.collected_at, first.clock_skew_s
    now = time.strftime("%Y-%m-%dT%H", time.gmtime())
    assert received.startswith(now[:10]) and abs(skew - 3 * 3600) < 120
    assert collected > received
    host = _host(hub, enrolled.agent_id)
    assert host["clock_skewed"] is True
    assert "agent clock off by +10" in hub.admin("hosts").stdout


def test_status_and_install_service_print(enrolled, tmp_path):
    from tests.harness import run

    never = run("-m", "estate.agent", "status", "--config", str(enrolled.config), check=False)
    assert never.returncode == 1 and "has not run" in never.stdout
    unit = run("-m", "estate.agent", "install-service", "--print", "--config",
               str(enrolled.config)).stdout
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict",
                 f"ReadWritePaths={enrolled.config.parent.resolve()}",
                 f"run --config {enrolled.config.resolve()}"):
        assert line in unit


def test_sighup_reloads_the_config(hub, enrolled, service):
    svc = service().start()
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) >= 1, what="a report")
    text = enrolled.config.read_text().replace("interval = 1\n", "interval = 2\n")
    enrolled.config.write_text(text + "\nbogus_key = 1\n")
    svc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running config" in svc.log(), timeout=10, what="refusal")
    enrolled.config.write_text(text)
    svc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in svc.log(), timeout=10, what="reload")
    assert svc.stop() == 0


# --- connectivity: the built-in probes and the hub's probe policy ---------------------------

def _last_report(hub: HubProcess, agent_id: str) -> dict:
    with hub.store() as store:
        detail = store.host_detail(agent_id, None)
    return detail.report if detail else {}


def _probes_of(hub: HubProcess, agent_id: str, *names: str) -> dict | None:
    """The last report's probes by name, once it has all of `names` and the hub one ran."""
    probes = {p["name"]: p for p in _last_report(hub, agent_id).get("connectivity", {})
              .get("probes", [])}
    if not set(names) <= set(probes) or probes["hub"]["ok"] is None:
        return None  # the first report may come before the connection (start delay)
    return probes


def test_with_no_configuration_the_agent_reports_hub_gateway_dns_and_link(
        hub, enrolled, service):
    """The hub by name, so its name is resolved too; the round trip is timed on the agent's
    own connection, which the hub answers without logging anything for it."""
    text = enrolled.config.read_text()
    enrolled.config.write_text(text.replace(f'hub = "{hub.address}"',
                                            f'hub = "localhost:{hub.port}"'))
    svc = service().start()
    probes = wait_for(lambda: _probes_of(hub, enrolled.agent_id, "hub", "gateway", "hub-dns",
                                         "link"), timeout=60, what="the built-in probes")
    assert svc.stop() == 0
    rtt = probes["hub"]
    assert (rtt["kind"], rtt["target"], rtt["ok"], rtt["error"], rtt["source"]) == \
        ("hub", f"localhost:{hub.port}", True, None, "builtin")
    assert rtt["latency_ms"] > 0
    dns = probes["hub-dns"]
    assert (dns["kind"], dns["target"], dns["ok"]) == ("dns", "localhost", True)
    assert "127.0.0.1" in dns["answers"]
    gateway, link = probes["gateway"], probes["link"]
    assert gateway["kind"] == "gateway" and (gateway["ok"] is not None or gateway["error"])
    assert link["kind"] == "link" and (link["ok"] is not None or link["error"])
    report = _last_report(hub, enrolled.agent_id)
    assert report["agent"]["probe_policy"] == "", "no hub policy held yet"
    assert [p["source"] for p in report["connectivity"]["probes"]] == ["builtin"] * 4
    assert "keepalive" not in hub.log() and "refus" not in hub.log().lower(), hub.log()


def test_a_saved_hub_policy_runs_after_a_restart_unless_hub_probes_are_refused(
        hub, enrolled, service):
    """The policy the agent took from an ack (kept in its folder) runs with the built-in and
    local probes after a restart, marked `hub`; `accept_hub_probes = false` runs none of it
    and reports no policy hash, so the hub sends none."""
    from estate.agent.probe_policy import POLICY_FILE, ProbePolicy

    policy = {"hash": "cd" * 32, "probes": [
        {"name": "dns-local", "kind": "dns", "target": "localhost"},
        {"name": "hub-port", "kind": "tcp", "target": hub.address}]}
    ProbePolicy(enrolled.config.parent, enabled=True).receive(policy)
    assert (enrolled.config.parent / POLICY_FILE).exists()
    svc = service(extra_config='\n[[probes]]\nname = "own"\nkind = "tcp"\n'
                               f'target = "{hub.address}"\n').start()

    def with_policy() -> dict | None:
        report = _last_report(hub, enrolled.agent_id)
        probes = report.get("connectivity", {}).get("probes", [])
        return report if any(p["source"] == "hub" for p in probes) else None

    report = wait_for(with_policy, timeout=60, what="a report with the hub's probes")
    assert svc.stop() == 0
    assert report["agent"]["probe_policy"] == "cd" * 32
    got = [(p["name"], p["source"], p["ok"]) for p in report["connectivity"]["probes"]]
    assert got[-3:] == [("own", "local", True), ("dns-local", "hub", True),
                        ("hub-port", "hub", True)], got

    text = enrolled.config.read_text()
    enrolled.config.write_text(text.replace("[[probes]]", "accept_hub_probes = false\n\n"
                                                          "[[probes]]", 1))
    seen = len(stored_sequences(hub, enrolled.agent_id))
    svc.start()  # the same service, its config edited
    wait_for(lambda: len(stored_sequences(hub, enrolled.agent_id)) > seen + 1,
             timeout=60, what="reports with hub probes refused")
    assert svc.stop() == 0
    report = _last_report(hub, enrolled.agent_id)
    assert "probe_policy" not in report["agent"]
    assert {p["source"] for p in report["connectivity"]["probes"]} == {"builtin", "local"}


def test_a_policy_set_on_the_hub_reaches_the_agent_within_the_limits(
        hub, enrolled, service, tmp_path):
    """`estate-hub probes set` for the agent's agency: the next ack carries it, the agent
    keeps it in its folder and runs it (marked `hub`), and reports the hash it holds;
    clearing it on the hub clears it on the agent."""
    from estate.agent.probe_policy import POLICY_FILE

    policy_file = tmp_path / "probes.toml"
    policy_file.write_text(f'[[probes]]\nname = "hub-port"\nkind = "tcp"\n'
                           f'target = "{hub.address}"\n\n'
                           '[[probes]]\nname = "resolver"\nkind = "dns"\n'
                           'target = "localhost"\ninterval = 3600\n')
    hub.admin("probes", "set", "--agency", "Schools", str(policy_file))
    svc = service().start()

    def hub_probes() -> list | None:
        report = _last_report(hub, enrolled.agent_id)
        got = [(p["name"], p["ok"]) for p in report.get("connectivity", {}).get("probes", [])
               if p.get("source") == "hub"]
        return got if got and report["agent"].get("probe_policy") else None

    assert wait_for(hub_probes, timeout=60, what="the hub's probes in a report") == [
        ("hub-port", True), ("resolver", True)]
    saved = json.loads((enrolled.config.parent / POLICY_FILE).read_text())
    held = _last_report(hub, enrolled.agent_id)["agent"]["probe_policy"]
    assert saved["hash"] == held and len(held) == 64
    assert [p["name"] for p in saved["probes"]] == ["hub-port", "resolver"]

    hub.admin("probes", "clear", "--agency", "Schools")
    wait_for(lambda: _last_report(hub, enrolled.agent_id)["agent"].get("probe_policy") == ""
             and hub_probes() is None, timeout=60, what="the cleared policy on the agent")
    assert svc.stop() == 0
    assert json.loads((enrolled.config.parent / POLICY_FILE).read_text()) == \
        {"hash": "", "probes": []}


# --- the spool itself, in-process (fast enough for `make mutate`) ----------------------------

def test_the_spool_keeps_reports_newest_first_until_acked_and_bounds_itself(tmp_path,
                                                                            caplog):
    """Newest first; an ack removes that report alone; a repeated id is kept once; over a
    bound the oldest go and are counted until a report that told the hub is acked."""
    from estate.agent.spool import Spool, SpoolLimits

    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_reports=3, max_bytes=25))
    assert spool.newest() is None and spool.depth() == (0, 0)
    assert spool.unreported_drops() == 0
    assert [spool.next_sequence() for _ in range(3)] == [1, 2, 3]
    spool.put("a:1:1", b"1234567890")
    spool.put("a:1:1", b"other body")  # the same report again: kept once, as first put
    assert spool.depth() == (1, 10)
    spool.put("a:1:2", b"abcdefghij")
    newest = spool.newest()
    assert (newest.report_id, newest.body) == ("a:1:2", b"abcdefghij")
    spool.ack(newest.seq)
    assert spool.depth() == (1, 10) and spool.newest().report_id == "a:1:1"
    spool.put("a:1:3", b"x" * 10)
    assert spool.depth() == (2, 20) and spool.unreported_drops() == 0
    with caplog.at_level("WARNING", logger="estate.agent"):
        spool.put("a:1:4", b"y" * 10)  # 30 bytes > 25: the oldest goes
    assert "dropped the 1 oldest report(s)" in caplog.text
    assert spool.depth() == (2, 20) and spool.unreported_drops() == 1
    ids = []
    while (item := spool.newest()) is not None:
        ids.append(item.report_id)
        spool.ack(item.seq)
    assert ids == ["a:1:4", "a:1:3"]
    spool.drops_reported(0)
    assert spool.unreported_drops() == 1
    spool.drops_reported(1)
    assert spool.unreported_drops() == 0
    for n in range(5):  # by count: 3 at most; one report alone may pass max_bytes
        spool.put(f"b:1:{n}", b"z" * 30 if n == 4 else b"z")
    assert spool.depth() == (1, 30) and spool.unreported_drops() == 4
    spool.close()
    again = Spool(tmp_path / "spool.db")  # counters and reports survive a restart
    assert again.next_sequence() == 4 and again.unreported_drops() == 4
    assert again.newest().report_id == "b:1:4"
    assert again.limits == SpoolLimits()
    again.close()


def test_old_reports_leave_the_spool_and_a_corrupt_one_is_moved_aside(tmp_path, caplog,
                                                                         monkeypatch):
    from estate.agent import spool as spool_module
    from estate.agent.spool import Spool, SpoolFull, SpoolLimits

    path = tmp_path / "spool.db"
    spool = Spool(path, SpoolLimits(max_age_s=60))
    spool.put("a:1:1", b"old")
    real_time = time.time
    monkeypatch.setattr(spool_module.time, "time", lambda: real_time() + 61)
    spool.put("a:1:2", b"new")  # the first is now older than max_age_s
    assert spool.depth() == (1, 3) and spool.unreported_drops() == 1
    monkeypatch.setattr(spool_module.time, "time", real_time)
    spool.put("a:1:3", b"newer")
    assert spool.depth() == (2, 8) and spool.unreported_drops() == 1  # 59 s old: kept
    spool.db.execute("PRAGMA query_only=ON")  # a read-only disk, as SQLite sees it
    with pytest.raises(SpoolFull):
        spool.put("a:1:4", b"lost")
    assert not spool.db.in_transaction
    assert spool.next_sequence() > 10**12  # the spool cannot count: a time stands in
    spool.close()

    path.write_bytes(b"not a database" * 100)
    with caplog.at_level("ERROR", logger="estate.agent"):
        fresh = Spool(path)
    assert fresh.depth() == (0, 0) and fresh.next_sequence() == 1
    (aside,) = tmp_path.glob("spool.db.corrupt-*")
    assert aside.read_bytes() == b"not a database" * 100
    assert f"moved it to {aside.name}" in caplog.text and "unusable" in caplog.text
    fresh.close()


def test_the_spool_bounds_are_inclusive_and_its_failures_are_spoolfull(tmp_path, caplog):
    """Exactly max_reports and exactly max_bytes fit; a failure inside a write rolls back
    and says SpoolFull with SQLite's reason; a broken counter falls back to the clock."""
    from estate.agent.spool import Spool, SpoolFull, SpoolLimits

    spool = Spool(tmp_path / "spool.db", SpoolLimits(max_reports=2, max_bytes=10))
    spool.put("a:1:1", b"12345")
    with caplog.at_level("WARNING", logger="estate.agent"):
        spool.put("a:1:2", b"67890")
        assert spool.depth() == (2, 10) and spool.unreported_drops() == 0
        assert caplog.messages == []
        spool.put("a:1:3", b"x")
    assert caplog.messages == ["spool full: dropped the 1 oldest report(s)"]
    assert spool.depth() == (2, 6) and spool.newest().report_id == "a:1:3"
    spool.db.execute("DROP TABLE outbox")  # fails inside the transaction, after BEGIN
    with pytest.raises(SpoolFull, match=r"^no such table: outbox$"):
        spool.put("a:1:4", b"y")
    assert not spool.db.in_transaction
    spool.db.execute("DROP TABLE meta")
    sequence = spool.next_sequence()
    assert type(sequence) is int and abs(sequence - time.time() * 1000) < 60_000
    assert not spool.db.in_transaction
    spool.close()


def test_a_corrupt_spool_is_logged_with_where_it_went(tmp_path, caplog):
    from estate.agent.spool import Spool

    path = tmp_path / "spool.db"
    path.write_bytes(b"garbage" * 200)
    with caplog.at_level("ERROR", logger="estate.agent"):
        spool = Spool(path)
    (aside,) = tmp_path.glob("spool.db.corrupt-*[0-9]")
    (message,) = caplog.messages
    assert message.startswith(f"spool {path} is unusable (")
    assert message.endswith(f"); moved it to {aside.name} and started a new one")
    assert "None" not in message
    spool.close()


def _break_the_freelist(path) -> None:
    """A spool SQLite still opens, but whose header names a table's page as free."""
    import struct

    data = bytearray(path.read_bytes())
    data[32:40] = struct.pack(">II", 2, 1)  # freelist trunk page, free page count
    path.write_bytes(bytes(data))


def test_a_corrupt_spool_is_moved_aside_with_its_wal_and_shm(tmp_path):
    """The journal files go with the database they belong to (here kept by a reader that
    still has the old spool open): the evidence stays whole and no stale WAL sits beside the
    fresh spool."""
    import sqlite3

    from estate.agent.spool import Spool

    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.put("a:1:1", b"report")
    spool.close()
    _break_the_freelist(path)
    reader = sqlite3.connect(path)
    reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens -wal and -shm
    try:
        fresh = Spool(path)
        (aside,) = tmp_path.glob("spool.db.corrupt-*[0-9]")
        assert {p.name for p in tmp_path.glob("spool.db.corrupt-*")} == {
            aside.name, f"{aside.name}-wal", f"{aside.name}-shm"}
        fresh.put("a:1:2", b"kept")
        assert fresh.depth() == (1, 4)
        fresh.close()
    finally:
        reader.close()


def test_a_spool_that_fails_its_quick_check_says_what_the_check_found(tmp_path, caplog):
    """A spool SQLite can open but whose pages are inconsistent: the log names quick_check
    and what it reported, so the moved-aside file can be understood later."""
    from estate.agent.spool import Spool

    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.put("a:1:1", b"report")
    spool.close()
    _break_the_freelist(path)
    with caplog.at_level("ERROR", logger="estate.agent"):
        fresh = Spool(path)
    (message,) = caplog.messages
    assert f"spool {path} is unusable (quick_check: *** in database main ***" in message
    assert fresh.depth() == (0, 0) and len(list(tmp_path.glob("spool.db.corrupt-*"))) == 1
    fresh.close()
