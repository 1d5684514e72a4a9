"""Change detection on snapshots: typed events with old and new values."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from estate.inventory.changes import KINDS, TooLarge, diff
from estate.inventory.store import Incoming
from tests.stores import open_test_store


def _pkgs(*items):
    return [{"name": n, "version": v, "arch": "amd64", "publisher": None} for n, v in items]


def test_no_change_no_events(live_report):
    assert diff(live_report, copy.deepcopy(live_report), None, None) == []


def test_hardware_os_and_network_events(live_report):
    old = copy.deepcopy(live_report)
    new = copy.deepcopy(live_report)
    new["hardware"]["serial"] = "NEW-SERIAL"
    new["hardware"]["uuid"] = "11111111-2222-3333-4444-555555555555"
    new["hardware"]["cpu"]["model"] = "Other CPU"
    new["system"]["os"]["version"] = "99.1"
    new["system"]["hostname"] = "renamed"
    nic = new["network"]["interfaces"][0]
    nic["mac"] = "02:00:00:00:00:99"
    nic["addresses"] = [{"family": "ipv4", "address": "10.9.9.9", "prefix": 24}]
    new["network"]["interfaces"].append({**copy.deepcopy(nic), "name": "wlan9"})
    disk = old["hardware"]["disks"][0] if old["hardware"]["disks"] else None
    if disk:
        new["hardware"]["disks"][0] = {**disk, "size_bytes": (disk["size_bytes"] or 0) + 1}
    kinds = {c.kind: c for c in diff(old, new, None, None)}
    assert kinds["serial_changed"].new == "NEW-SERIAL"
    assert "uuid_changed" in kinds and "cpu_changed" in kinds
    assert kinds["os_upgraded"].new.endswith("99.1")
    assert kinds["hostname_changed"].old == live_report["system"]["hostname"]
    assert kinds["mac_changed"].subject == nic["name"]
    assert kinds["ip_changed"].new == ["10.9.9.9/24"]
    assert kinds["nic_added"].subject == "wlan9"
    if disk:
        assert kinds["disk_resized"].subject == disk["name"]
    assert set(kinds) <= set(KINDS)


def test_memory_jitter_is_not_a_change(live_report):
    new = copy.deepcopy(live_report)
    total = live_report["hardware"]["memory"]["total_bytes"]
    new["hardware"]["memory"]["total_bytes"] = int(total * 1.005)
    assert diff(live_report, new, None, None) == []
    new["hardware"]["memory"]["total_bytes"] = total * 2
    (change,) = diff(live_report, new, None, None)
    assert (change.kind, change.old, change.new) == ("memory_changed", total, total * 2)
    assert change.old_text() == str(total)


def test_disks_follow_their_serial_across_ports(live_report):
    old, new = copy.deepcopy(live_report), copy.deepcopy(live_report)
    d = {"name": "sda", "model": "M", "serial": "S1", "size_bytes": 100, "rotational": False}
    old["hardware"]["disks"] = [d]
    new["hardware"]["disks"] = [{**d, "name": "sdb"}]
    assert diff(old, new, None, None) == []
    new["hardware"]["disks"] = []
    (removed,) = diff(old, new, None, None)
    assert removed.kind == "disk_removed" and removed.old["serial"] == "S1"


def test_software_events(live_report):
    old, new = copy.deepcopy(live_report), copy.deepcopy(live_report)
    old["software"]["hash"], new["software"]["hash"] = "a", "b"
    before = _pkgs(("vim", "9.0"), ("curl", "7.88"), ("gone", "1"))
    after = _pkgs(("vim", "9.1"), ("curl", "7.88"), ("new", "2"))
    events = {(c.kind, c.subject, c.old, c.new) for c in diff(old, new, before, after)}
    assert events == {("software_updated", "vim:amd64", "9.0", "9.1"),
                      ("software_removed", "gone:amd64", "1", None),
                      ("software_installed", "new:amd64", None, "2")}
    (unknown,) = diff(old, new, before, None)
    assert unknown.kind == "software_changed"


# --- the change history the API reads: the newest first kept, and a byte budget -------------

def _store_with_changes(folder, base: dict, reports: int, packages: int = 2):
    """A store whose one host changed `packages` package versions in each of `reports`
    reports after its first: that many `software_updated` rows each."""
    store = open_test_store(folder)
    token_id, secret, _ = store.create_token("Schools", "North", 1, timedelta(hours=1),
                                             "admin:test")
    agent_id = store.enrol(token_id, secret, "ssh-ed25519 K", "SHA256:K", "pc")["agent_id"]
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    for seq in range(reports + 1):
        r = copy.deepcopy(base)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = (t0 + timedelta(minutes=seq)).strftime("%Y-%m-%dT%H:%M:%SZ")
        r["software"].update(hash=f"{seq:064x}", packages=_pkgs(
            *((f"p{i}", str(seq)) for i in range(packages))))
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                             t0 + timedelta(minutes=seq))]) == ["stored"]
    return store


def test_the_history_read_keeps_the_newest_thousand_by_default(tmp_path, report):
    store = _store_with_changes(tmp_path, report, reports=11, packages=100)
    every = [c["id"] for c in store.changes()]
    assert len(every) == 1100
    assert [c["id"] for c in store.scoped_changes(None)] == every[-1000:]
    assert [c["id"] for c in store.scoped_changes(["Schools"], limit=3)] == every[-3:]
    store.close()


def test_the_history_read_is_refused_once_it_passes_its_byte_budget(tmp_path, report):
    """Each change counts 200 bytes and its text (about its JSON) against `max_bytes`; a
    read exactly at the budget is answered, one byte more is `TooLarge`, saying the budget."""
    store = _store_with_changes(tmp_path, report, reports=1, packages=2)
    rows = store.scoped_changes(None)
    assert [(c["agency"], c["hostname"], c["kind"]) for c in rows] == [
        ("Schools", report["system"]["hostname"], "software_updated")] * 2
    budget = sum(200 + sum(len(v) for v in c.values() if isinstance(v, str)) for c in rows)
    assert store.scoped_changes(None, max_bytes=budget) == rows
    with pytest.raises(TooLarge) as refused:
        store.scoped_changes(None, max_bytes=budget - 1)
    assert str(refused.value) == f"more than {budget - 1} bytes of changes"
    store.close()
