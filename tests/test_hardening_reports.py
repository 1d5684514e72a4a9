"""Budgets on what reports cost the hub, and reports that must not poison it: change
amplification, report floods, trailing gzip data, far-future timestamps. Real hub processes
over real SSH on loopback; every loop bounded."""

from __future__ import annotations

import gzip
import json
import signal
import statistics
import threading
import time

from inventory.changes import MAX_CHANGES, MAX_SOFTWARE_CHANGES, Change, bounded
from tests.harness import Agent, AgentService, HubProcess, make_report, stored_sequences, wait_for

BIG = 100_000  # the figure: two lists of this many packages, alternated


def _packages(prefix: str, n: int = BIG) -> list[dict]:
    return [{"name": f"{prefix}-{i:06d}", "version": "1.0", "arch": "amd64", "publisher": None}
            for i in range(n)]


def _with_packages(report: dict, packages: list[dict], digest: str) -> dict:
    report["software"] = {**report["software"], "packages": packages, "hash": digest,
                          "count": len(packages)}
    return report


def _change_rows(hub: HubProcess, agent_id: str) -> list[tuple]:
    with hub.db() as db:
        return db.execute("SELECT kind, subject, new_value FROM changes WHERE agent_id = ? "
                          "ORDER BY id", (agent_id,)).fetchall()


# --- change amplification ----------------------------------------------------------------

def test_bounded_summarises_software_then_caps_the_rest():
    many = [Change("software_installed", f"p{i}", None, "1") for i in range(150)] + \
           [Change("software_removed", f"q{i}", "1", None) for i in range(3)]
    out = bounded([Change("hostname_changed", None, "a", "b"), *many])
    assert [c.kind for c in out] == ["hostname_changed", "software_changed"]
    assert out[1].new == {"installed": 150, "removed": 3, "updated": 0}
    few = [Change("software_updated", f"p{i}", "1", "2") for i in range(MAX_SOFTWARE_CHANGES)]
    assert bounded(few) == few  # up to the limit, each is kept
    nics = [Change("nic_added", f"eth{i}", None, None) for i in range(MAX_CHANGES + 50)]
    out = bounded(nics)
    assert len(out) == MAX_CHANGES
    assert out[-1].kind == "changes_summarised" and out[-1].new == {"nic_added": 51}


def test_alternating_big_package_lists_write_bounded_rows_and_do_not_stall_others(
        hub, tmp_path, live_report):
    big = Agent(hub, tmp_path / "big", hub.token())
    other = Agent(hub, tmp_path / "other", hub.token())
    lists = [(_packages("a"), "a" * 64), (_packages("b"), "b" * 64)]
    bodies = [gzip.compress(json.dumps(_with_packages(make_report(live_report, big.agent_id),
                                                      *lists[i % 2])).encode(), 1)
              for i in range(6)]

    def ack_s() -> float:
        started = time.monotonic()
        status, doc = other.send(make_report(live_report, other.agent_id))
        assert (status, doc["status"]) == (0, "stored"), doc
        return time.monotonic() - started

    assert big.send(bodies[0])[0] == 0  # the first list: nothing to compare with yet
    baseline = statistics.median(ack_s() for _ in range(5))

    results: list[tuple[int, dict]] = []
    sender = threading.Thread(target=lambda: results.extend(big.send(b) for b in bodies[1:]))
    sender.start()
    during = []
    while sender.is_alive() and len(during) < 40:
        during.append(ack_s())
    sender.join(300)
    assert not sender.is_alive()
    assert [s for s, _ in results] == [0] * 5, results
    rows = _change_rows(hub, big.agent_id)
    # Without the bound: 200,000 rows per report (1,000,000 here).
    assert len(rows) == 5, rows[:3]
    for kind, subject, new in rows:
        assert (kind, subject) == ("software_changed", "summary")
        assert json.loads(new) == {"installed": BIG, "removed": BIG, "updated": 0}
    with hub.db() as db:  # the full list is kept with the host, and in the stored report
        packages = db.execute("SELECT packages FROM hosts WHERE agent_id = ?",
                              (big.agent_id,)).fetchone()[0]
    assert len(json.loads(packages)) == BIG
    # Another agent's ack waits for at most the big report in hand, not for 200,000 rows
    # each (~27x the baseline here before the bound). A generous ratio: the machine is shared.
    assert during, "no ack measured while the big reports were stored"
    assert statistics.median(during) < 25 * baseline, (baseline, during)


# --- rate limit per agent ------------------------------------------------------------------

def test_a_flood_from_one_agent_gets_busy_and_others_are_served(hub, tmp_path, live_report):
    flooder = Agent(hub, tmp_path / "flooder", hub.token())
    calm = Agent(hub, tmp_path / "calm", hub.token())
    answers = []
    for _ in range(14):  # the default burst is 10
        answers.append(flooder.send(make_report(live_report, flooder.agent_id,
                                                agent__interval_s=300.0)))
    stored = [doc for status, doc in answers if status == 0]
    busy = [doc for status, doc in answers if status != 0]
    assert len(stored) == 10, answers
    assert len(busy) == 4
    for doc in busy:
        assert doc["code"] == "busy" and 1 <= doc["retry_after"] <= 300, doc
        assert "interval" in doc["message"]
    # The flooder stays limited; another agent is served as usual.
    status, doc = flooder.send(make_report(live_report, flooder.agent_id))
    assert (status, doc["code"]) == (75, "busy")
    status, doc = calm.send(make_report(live_report, calm.agent_id))
    assert (status, doc["status"]) == (0, "stored")
    with hub.db() as db:
        assert db.execute("SELECT COUNT(*) FROM reports WHERE agent_id = ?",
                          (flooder.agent_id,)).fetchone()[0] == 10


def test_a_well_behaved_agent_catching_up_loses_nothing(tmp_path):
    """A real agent whose spool filled while the hub was down drains it through `busy`
    answers: every report arrives once, none is dropped."""
    hub = HubProcess(tmp_path / "hub", ("--report-burst", "2",
                                        "--reports-per-interval", "2")).start()
    svc = None
    try:
        agent = Agent(hub, tmp_path / "agent", hub.token())
        svc = AgentService(agent).start()
        wait_for(lambda: len(stored_sequences(hub, agent.agent_id)) >= 1, timeout=60,
                 what="a first report")
        hub.signal(signal.SIGTERM)
        time.sleep(6)  # ~6 reports spool up, more than the burst
        hub.start()
        wait_for(lambda: "busy" in svc.log(), timeout=90, what="a busy answer while catching up")

        def gaps() -> tuple[list[int], set[int]]:
            seqs = stored_sequences(hub, agent.agent_id)
            return seqs, set(range(min(seqs), max(seqs))) - set(seqs)

        # The backlog drains (newest first) through `busy` answers until no report is missing.
        wait_for(lambda: max(gaps()[0]) >= 8 and not gaps()[1], timeout=120, interval=0.5,
                 what="the spool to drain with no report missing")
        seqs, _ = gaps()
        assert len(seqs) == len(set(seqs)), "a report was stored twice"
    finally:
        if svc:
            svc.kill()
        hub.kill()


# --- stored reports that must not poison anything -------------------------------------------

def test_gzip_with_trailing_member_is_refused(hub, tmp_path, live_report):
    agent = Agent(hub, tmp_path / "agent", hub.token())
    report = make_report(live_report, agent.agent_id)
    body = gzip.compress(json.dumps(report).encode()) + gzip.compress(b"not a report")
    status, doc = agent.send(body)
    assert status == 65
    assert (doc["code"], doc["path"]) == ("invalid_report", "")
    assert "trailing" in doc["message"]
    assert agent.send(report)[1]["status"] == "stored"  # the same report, clean, is fine


def test_as_of_export_skips_and_counts_an_unreadable_stored_report(tmp_path, live_report):
    """A bad body written straight into the store (a test about SQLite): the as-of export
    still answers, leaves that host out and counts it in the manifest."""
    import sqlite3
    from datetime import timedelta

    from inventory.export import ExportRequest, Producer, run_export
    from inventory.hub._keys import load_or_create_host_key
    from inventory.store import Incoming, Store, utcnow

    data = tmp_path / "data"
    store = Store.open(data)
    token_id, secret, _ = store.create_token("Council", "Town Hall", 2, timedelta(hours=1), "t")
    ids = [store.enrol(token_id, secret, f"ssh-ed25519 KEY{i}", f"SHA256:k{i}", None)
           ["agent_id"] for i in range(2)]
    for agent_id in ids:
        report = make_report(live_report, agent_id)
        store.store_reports([Incoming(agent_id, report, json.dumps(report).encode(),
                                      utcnow() - timedelta(minutes=5))])
    store.close()
    db = sqlite3.connect(data / "estate.db")
    db.execute("UPDATE reports SET body = ? WHERE agent_id = ?",
               (gzip.compress(b"{}") + b"\x1f\x8bjunk", ids[0]))
    db.commit()
    db.close()

    key, _ = load_or_create_host_key(data)
    operator = {"name": "alice", "role": "admin", "agencies": None}
    request = ExportRequest.parse({"report": "inventory", "format": "json",
                                   "as_of": (utcnow() - timedelta(minutes=1)).isoformat()})
    out = tmp_path / "out.json"
    manifest = run_export(data / "estate.db", request, Producer(operator, key, "fp", "test"),
                          out)
    assert manifest["rows"] == 1 and manifest["skipped_unreadable"] == 1
    doc = json.loads(out.read_text())
    assert [r["agent_id"] for r in doc["rows"]] == [ids[1]]
    assert "could not be read" in doc["about"]["skipped"]


# --- timestamps ----------------------------------------------------------------------------

def test_far_future_report_does_not_freeze_the_host(hub, tmp_path, live_report):
    agent = Agent(hub, tmp_path / "agent", hub.token())
    future = make_report(live_report, agent.agent_id, system__hostname="from-the-future",
                         collected_at="9999-12-31T23:59:59Z")
    status, doc = agent.send(future)
    # More than a year ahead: refused, naming the field.
    assert status == 65 and (doc["code"], doc["path"]) == ("invalid_report", "collected_at")
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 200 * 86400))
    ahead = make_report(live_report, agent.agent_id, system__hostname="ahead",
                        collected_at=soon)
    assert agent.send(ahead)[1]["status"] == "stored"  # within a year: stored, clamped
    normal = make_report(live_report, agent.agent_id, system__hostname="normal")
    assert agent.send(normal)[1]["status"] == "stored"
    hosts = {h["agent_id"]: h for h in hub.admin_json("hosts")}
    assert hosts[agent.agent_id]["hostname"] == "normal"
    skews = {h["agent_id"]: h["clock_skew_s"] for h in hub.admin_json("hosts")}
    assert abs(skews[agent.agent_id]) < 86400  # the normal report's skew
