"""Collects one inventory report of this machine (schema `estate.report/1`).

One private module per OS with the same function names, chosen once here; what psutil sees
on every OS lives in `_common`. Every collector runs concurrently under a time limit, and a
failure becomes an entry in `report["errors"]`, never an exception.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from estate.agent import __version__
from estate.agent.collect import _common
from estate.agent.collect._common import Sample, package_hash, take_sample
from estate.agent.collect._posture import SECTIONS as SECURITY_SECTIONS
from estate.agent.collect._posture import empty as empty_security_section
from estate.agent.collect._runner import Collector, Outcome, run_collectors
from estate.inventory.report import SCHEMA, make_report_id

if sys.platform.startswith("linux"):
    from estate.agent.collect import _linux as _platform
    from estate.agent.collect import _posture_linux as _posture_platform
elif sys.platform == "win32":
    from estate.agent.collect import _posture_windows as _posture_platform
    from estate.agent.collect import _windows as _platform
elif sys.platform == "darwin":
    from estate.agent.collect import _macos as _platform
    from estate.agent.collect import _posture_macos as _posture_platform
else:
    from estate.agent.collect import _other as _platform
    from estate.agent.collect import _posture_other as _posture_platform

__all__ = ["DEFAULT_TIMEOUT_S", "Sample", "collect_report", "collectors", "take_sample"]

DEFAULT_TIMEOUT_S: float = _platform.DEFAULT_TIMEOUT_S

_EMPTY_IDENTITY = {"vendor": None, "model": None, "serial": None, "uuid": None,
                   "chassis": None, "bios": {"vendor": None, "version": None, "date": None}}
_EMPTY_OS = {"family": None, "name": None, "version": None, "build": None, "kernel": None,
             "arch": None}


def collectors(cache_dir: Path | None = None) -> dict[str, Collector]:
    """Every collector by name; the names appear in `report.errors`.

    Args:
        cache_dir: the agent's state folder, where slow facts (updates) are cached daily;
            None caches them in memory only.
    """
    return {
        "names": _common.names,
        "os": _platform.os_info,
        "boot_time": _common.boot_time,
        "timezone": _platform.timezone,
        "virtualization": _platform.virtualization,
        "users": _common.users,
        "identity": _platform.identity,
        "cpu_model": _platform.cpu_model,
        "cpu": _common.cpu_counts,
        "memory": _common.memory,
        "disks": _platform.disks,
        "volumes": _common.volumes,
        "battery": _common.battery,
        "interfaces": _common.interfaces,
        "default_gateway": _platform.default_gateway,
        "dns": _platform.dns_servers,
        "software": _platform.software,
        # One collector per security sub-section: a hanging tool costs its own sub-section.
        "security.encryption": lambda problems: _posture_platform.encryption(),
        "security.firewall": lambda problems: _posture_platform.firewall(),
        "security.malware": lambda problems: _posture_platform.malware(),
        "security.updates": lambda problems: _posture_platform.updates(cache_dir),
        "security.platform": lambda problems: _posture_platform.platform(),
        "security.accounts": lambda problems: _posture_platform.accounts(),
    }


def collect_report(
    *,
    agent_id: str | None = None,
    sequence: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    probes: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    previous: Sample | None = None,
    extra_collectors: dict[str, Collector] | None = None,
    interval_s: float | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], Sample]:
    """Collect a full report.

    Args:
        agent_id: the enrolled agent id, None before enrolment.
        sequence: report sequence number; defaults to milliseconds of the wall clock.
        timeout_s: time limit shared by all collectors, which run at once.
        probes: runs the configured connectivity probes, given the network section.
        previous: a sample from the last report, so health and rates cover the interval
            between reports; without it they cover this collection.
        extra_collectors: more collectors (tests use this to add a hanging one).
        interval_s: the service's report interval, so the hub can tell when it is stale.
        cache_dir: the agent's state folder, for facts cached between reports (updates,
            refreshed daily); None keeps them in memory only.

    Returns:
        The report, and the sample to pass as `previous` next time.
    """
    first = previous or take_sample()
    jobs = collectors(cache_dir)
    if extra_collectors:
        jobs.update(extra_collectors)
    out = run_collectors(jobs, timeout_s)
    v = {name: o.value for name, o in out.items()}

    names = v["names"] or {"hostname": None, "fqdn": None}
    manager, packages = v["software"] or (None, None)
    cpu = v["cpu"] or {"cores": None, "threads": None, "frequency_mhz": None}
    network = {
        "interfaces": v["interfaces"] or [],
        "default_gateway": v["default_gateway"],
        "dns_servers": v["dns"] or [],
    }
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "report_id": make_report_id(agent_id, int(psutil.boot_time()),
                                    sequence if sequence is not None else time.time_ns() // 10**6),
        "collected_at": _common.iso_utc(time.time()),
        "agent": {"id": agent_id, "version": __version__, "interval_s": interval_s,
                  "dropped_reports": None},
        "system": {
            **names,
            "os": v["os"] or dict(_EMPTY_OS),
            "boot_time": v["boot_time"],
            # {"timezone": ...}, and on Windows the zone's Windows id beside its IANA name
            **(v["timezone"] or {"timezone": None}),
            "virtualization": v["virtualization"] or {"kind": None, "type": None,
                                                      "source": None},
            "users": v["users"] or [],
        },
        "hardware": {
            **(v["identity"] or _EMPTY_IDENTITY),
            "cpu": {"model": v["cpu_model"], **cpu},
            "memory": v["memory"] or {"total_bytes": None, "swap_total_bytes": None},
            "disks": v["disks"] or [],
            "volumes": v["volumes"] or [],
            "battery": v["battery"],
        },
        "network": network,
        "connectivity": {"probes": [], "rates": []},
        "software": {
            "manager": manager,
            "count": len(packages) if packages is not None else None,
            "hash": package_hash(packages) if packages is not None else None,
            "packages": packages,
        },
        "security": _security(out),
        "health": {},
        "errors": _errors(out),
    }
    if probes is not None:
        report["connectivity"]["probes"] = probes(network)
    last = take_sample()
    report["health"] = _common.health(first, last)
    report["connectivity"]["rates"] = _common.rates(first, last)
    return report, last


def _security(outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The security section; a sub-section whose collector failed is null with the reason."""
    section = {}
    for name in SECURITY_SECTIONS:
        o = outcomes[f"security.{name}"]
        section[name] = o.value if o.value is not None else empty_security_section(
            name, "; ".join(o.problems) or "not collected")
    return section


def _errors(outcomes: dict[str, Outcome]) -> list[dict[str, str]]:
    errors = []
    for name, o in outcomes.items():
        for problem in o.problems:
            errors.append({"collector": name, "reason": problem[:1024]})
    return errors[:64]
