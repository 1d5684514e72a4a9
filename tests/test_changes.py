"""Change detection on snapshots: typed events with old and new values."""

from __future__ import annotations

import copy

from inventory.changes import KINDS, diff


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
