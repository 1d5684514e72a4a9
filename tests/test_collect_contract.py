"""Contract tests: every run yields a complete, typed report; failures become errors."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from estate.agent.collect import collect_report, collectors
from estate.agent.collect._common import clean
from estate.inventory.report import validate


def test_required_sections_and_types(live_report):
    r = live_report
    for section in ("system", "hardware", "network", "connectivity", "software", "health"):
        assert isinstance(r[section], dict)
    assert r["system"]["hostname"]
    assert r["system"]["os"]["family"] in ("linux", "windows", "macos", "bsd", "other")
    assert r["hardware"]["memory"]["total_bytes"] > 0
    assert r["hardware"]["cpu"]["threads"] >= 1
    assert r["network"]["interfaces"], "at least the loopback interface"
    assert r["errors"] == [], r["errors"]


def test_unknown_is_null_never_a_sentinel(live_report):
    """Walk every leaf: no -1, no empty string for "could not tell"."""
    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        else:
            assert value != "", path
            assert not (isinstance(value, int) and not isinstance(value, bool) and value < 0), path
    walk(live_report, "")


def test_interface_speed_unknown_is_null_not_zero(live_report):
    for nic in live_report["network"]["interfaces"]:
        assert nic["speed_mbps"] is None or nic["speed_mbps"] > 0


def test_software_hash_is_stable_and_order_independent(live_report):
    from estate.agent.collect._common import package_hash

    pkgs = live_report["software"]["packages"]
    assert live_report["software"]["hash"] == package_hash(list(reversed(pkgs)))
    changed = [*pkgs, {"name": "zz-new", "version": "1", "arch": None, "publisher": None}]
    assert package_hash(changed) != live_report["software"]["hash"]


def test_a_hanging_collector_is_cut_off_and_reported():
    release = threading.Event()

    def hangs(problems):
        release.wait(60)  # a hung NFS read, until the test lets it go
        return "never"

    def fails(problems):
        raise OSError("device vanished")

    start = time.monotonic()
    report, _ = collect_report(timeout_s=1.0,
                               extra_collectors={"stuck": hangs, "broken": fails})
    elapsed = time.monotonic() - start
    release.set()
    errors = {e["collector"]: e["reason"] for e in report["errors"]}
    assert errors["stuck"] == "timed out after 1 s"
    assert errors["broken"] == "OSError: device vanished"
    assert elapsed < 30, "the collection waited for the hung collector"
    validate(report)
    assert report["hardware"]["memory"]["total_bytes"] > 0, "the rest is complete"


def test_a_hung_mount_costs_its_own_time_limit_only(monkeypatch):
    from estate.agent.collect import _common

    release = threading.Event()
    real = psutil.disk_usage
    part = psutil.disk_partitions(all=False)[0]

    def slow_usage(path):
        if path == part.mountpoint:
            release.wait(60)
        return real(path)

    monkeypatch.setattr(_common, "VOLUME_TIMEOUT_S", 0.3)
    monkeypatch.setattr(psutil, "disk_usage", slow_usage)
    problems: list[str] = []
    vols = _common.volumes(problems)
    release.set()
    hung = next(v for v in vols if v["mount"] == part.mountpoint)
    assert hung["total_bytes"] is None
    assert any("hung mount" in p for p in problems)


def test_a_failing_platform_source_becomes_an_error(monkeypatch):
    """A missing dpkg-query (or any tool) is reported and the rest of the report stands."""
    import estate.agent.collect as facade

    def no_tool(problems):
        raise FileNotFoundError("dpkg-query")

    monkeypatch.setattr(facade._platform, "software", no_tool)
    report, _ = collect_report()
    validate(report)
    assert report["software"] == {"manager": None, "count": None, "hash": None,
                                  "packages": None}
    assert report["errors"][0]["collector"] == "software"
    assert "dpkg-query" in report["errors"][0]["reason"]


def test_collector_names_are_unique_and_stable():
    assert set(collectors()) >= {"os", "identity", "disks", "volumes", "interfaces",
                                 "software", "dns", "default_gateway"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("To be filled by O.E.M.", None), ("Default string", None), ("0", None),
        ("System Serial Number", None), ("00000000-0000-0000-0000-000000000000", None),
        ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", None), ("  ", None), (None, None),
        (" PF2ABCDE\n", "PF2ABCDE"), ("Dell Inc.", "Dell Inc."), ("0A", "0A"),
    ],
)
def test_placeholder_identifiers_are_null(raw, expected):
    assert clean(raw) == expected


def test_sequence_and_agent_id_make_the_report_id(live_report):
    report, _ = collect_report(agent_id="a-123", sequence=7)
    assert report["report_id"] == f"a-123:{int(psutil.boot_time())}:7"
    assert report["agent"]["id"] == "a-123"
