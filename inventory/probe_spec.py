"""Connectivity probe specifications: parsing `[[probes]]` tables, their limits, the policy hash.

One set of rules for the three places a probe table is read: the agent's `agent.toml` (local
probes), `estate-hub probes set` (a hub policy) and the agent again when a hub policy arrives in
an ack (it enforces the hub limits whatever the hub says). Standard library only: the agent
imports it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from estate.inventory.errors import EstateError

__all__ = ["BUILTIN_NAMES", "HUB_KINDS", "HUB_MAX_TIMEOUT_S", "HUB_MIN_INTERVAL_S", "LOCAL_KINDS",
           "MAX_HUB_PROBES", "MAX_LOCAL_PROBES", "SOURCES", "ProbeSpec", "ProbeSpecError",
           "canonical_hash", "is_ip", "parse_hostport", "parse_probe", "parse_probes",
           "sift_hub_probes"]

LOCAL_KINDS = ("tcp", "dns", "gateway")
# A hub may ask every agent of an agency for these only: a connect, a lookup, one echo. Nothing
# that reads a reply's content or sends more than one packet per probe.
HUB_KINDS = ("tcp", "dns", "icmp")
MAX_LOCAL_PROBES = 64
MAX_HUB_PROBES = 16
# 15,000 agents probing one target every minute is 250 connections a second: the floor keeps
# a central policy from turning the estate into a load generator (or a scanner).
HUB_MIN_INTERVAL_S = 60.0
# The agent runs its probes together before each report and waits for the slowest: a hub
# probe's timeout delays every report of every agent of its agency. 10 s is ample for one
# connect, lookup or echo on any working network; an endpoint owner's agent.toml may still
# allow a probe up to MAX_TIMEOUT_S (their own host, their own choice).
HUB_MAX_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
MAX_INTERVAL_S = 7 * 86400.0
# The probes every agent runs with no configuration (agent/probes.py); a hub probe may not
# take their names, a local one may (the endpoint owner's config has the last word).
BUILTIN_NAMES = ("hub", "gateway", "hub-dns", "link")
SOURCES = ("builtin", "local", "hub")
DEFAULT_TIMEOUT_S = 2.0

_LOCAL_KEYS = ("name", "kind", "target", "timeout")
_HUB_KEYS = ("name", "kind", "target", "timeout", "interval")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class ProbeSpecError(EstateError, ValueError):
    """A probe table breaks a rule. `path` is the key path ("probes[3].interval"), `probe`
    the probe's name when it has one, `problem` what is wrong; the message names all three:
    `probes[3] ("dns-ext").interval: 1 s is faster than the 60 s floor`."""

    def __init__(self, path: str, problem: str, probe: str | None = None) -> None:
        # Names and keys come from files and from the hub: escaped, so that no control or
        # bidi character reaches the log or terminal this message is written to. Imported
        # here: a valid config, which `estate-agent collect` reads at every run, needs none.
        from estate.inventory.sanitise import dumps, escaped

        where = escaped(path)
        head, dot, key = where.rpartition(".")
        if probe is not None and dot and head.endswith("]"):
            where = f"{head} ({dumps(probe)}).{key}"
        super().__init__(f"{where}: {escaped(problem)}")
        self.path, self.problem, self.probe = path, problem, probe


class ProbeSpec(NamedTuple):
    """One probe to run. `target` None: the kind's default (the default gateway);
    `interval_s` None: with every report; `source`: one of SOURCES. A NamedTuple, not a
    dataclass: the agent's one-shot `estate-agent collect` loads it, and `dataclasses`
    imports `inspect`."""

    name: str
    kind: str
    target: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S
    interval_s: float | None = None
    source: str = "local"

    def as_table(self) -> dict[str, Any]:
        """The `[[probes]]` table this spec reads back from (what an ack carries)."""
        table: dict[str, Any] = {"name": self.name, "kind": self.kind, "timeout": self.timeout_s}
        if self.target is not None:
            table["target"] = self.target
        if self.interval_s is not None:
            table["interval"] = self.interval_s
        return table


def parse_probes(tables: object, where: str = "probes", hub: bool = False) -> list[ProbeSpec]:
    """Every probe of a `[[probes]]` list, checked against the local or the hub limits.

    Args:
        tables: the list of TOML tables (or the JSON objects of an ack).
        where: the list's key path, "probes" in agent.toml and policy files.
        hub: apply the hub's limits (kinds, count, interval, timeout, targets) instead of the
            local ones.

    Raises:
        ProbeSpecError: naming the probe (index and name), the key and the problem.
    """
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ProbeSpecError(where, "expected a list of tables ([[probes]])")
    if hub and len(tables) > MAX_HUB_PROBES:
        raise ProbeSpecError(where, f"{len(tables)} probes, over the hub limit of "
                                    f"{MAX_HUB_PROBES}")
    specs = [parse_probe(t, f"{where}[{i}]", hub) for i, t in enumerate(tables)]
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ProbeSpecError(f"{where}[{i}].name", f"duplicate probe name {spec.name!r}",
                                 spec.name)
        seen.add(spec.name)
    if len(specs) > MAX_LOCAL_PROBES:
        raise ProbeSpecError(where, f"{len(specs)} probes, over the limit of {MAX_LOCAL_PROBES}")
    return specs


def parse_probe(table: object, where: str, hub: bool = False) -> ProbeSpec:
    """One `[[probes]]` table; `where` is its key path ("probes[3]").

    Raises:
        ProbeSpecError: as parse_probes.
    """
    if not isinstance(table, dict):
        raise ProbeSpecError(where, "expected a table")
    r = _Table(table, where)
    r.only(_HUB_KEYS if hub else _LOCAL_KEYS)
    name = _text(r, "name", 64, required=True)
    r.name = name
    kind = _text(r, "kind", 256, required=True)
    kinds = HUB_KINDS if hub else LOCAL_KINDS
    if kind not in kinds:
        raise r.error("kind", f"expected one of {', '.join(kinds)}, got {kind!r}")
    assert name is not None and kind is not None  # required=True
    if hub and name in BUILTIN_NAMES:
        raise r.error("name", f"{name!r} is the name of a built-in probe every agent runs "
                              f"({', '.join(BUILTIN_NAMES)})")
    target = _text(r, "target", 255)
    if kind in ("tcp", "dns") or (hub and kind == "icmp"):
        if not target:
            raise r.error("target", f"required for a {kind} probe")
    if kind == "tcp":
        try:
            host, _ = parse_hostport(target or "")
        except ValueError as exc:
            problem = str(exc)
            if hub and _looks_like_many_ports(target or ""):
                problem = f"a hub probe connects to one port: no ranges or lists ({exc})"
            raise r.error("target", problem) from None
        if hub and not (is_ip(host) or _is_hostname(host)):
            raise r.error("target", f"expected a host name or an IP address, got {host!r}")
    elif kind == "dns" and hub and not _is_hostname(target or ""):
        raise r.error("target", f"expected a host name to resolve, got {target!r}")
    elif kind == "icmp" and target != "gateway":
        try:
            ipaddress.IPv4Address(target or "")
        except ValueError:
            raise r.error("target", f'expected an IPv4 address or "gateway", got {target!r}') \
                from None
    timeout = _number(r, "timeout", 0.1, MAX_TIMEOUT_S) or DEFAULT_TIMEOUT_S
    if hub and timeout > HUB_MAX_TIMEOUT_S:
        raise r.error("timeout", f"{timeout:g} s is longer than the {HUB_MAX_TIMEOUT_S:g} s a "
                                 f"hub probe may wait (it delays every report)")
    interval = None
    if hub:
        interval = _number(r, "interval", 0, MAX_INTERVAL_S)
        if interval is not None and interval < HUB_MIN_INTERVAL_S:
            raise r.error("interval", f"{interval:g} s is faster than the "
                                      f"{HUB_MIN_INTERVAL_S:g} s floor")
    return ProbeSpec(name, kind, target, timeout, interval, "hub" if hub else "local")


def sift_hub_probes(tables: object, where: str = "probe_policy.probes"
                    ) -> tuple[list[ProbeSpec], list[str]]:
    """A policy as the agent takes it: every probe within the hub limits, and why each other
    one was dropped (a hub that breaks the limits loses those probes, not the rest).

    Returns:
        The probes kept, in order (at most MAX_HUB_PROBES, names unique), and the reasons.
    """
    if not isinstance(tables, list):
        return [], [f"{where}: expected a list of tables, got {type(tables).__name__}"]
    kept: list[ProbeSpec] = []
    dropped: list[str] = []
    for i, table in enumerate(tables):
        try:
            spec = parse_probe(table, f"{where}[{i}]", hub=True)
        except ProbeSpecError as exc:
            dropped.append(str(exc))
            continue
        if any(k.name == spec.name for k in kept):
            dropped.append(f"{where}[{i}].name: duplicate probe name {spec.name!r}")
        elif len(kept) >= MAX_HUB_PROBES:
            dropped.append(f"{where}[{i}]: over the hub limit of {MAX_HUB_PROBES} probes")
        else:
            kept.append(spec)
    return kept, dropped


def canonical_hash(probes: Sequence[ProbeSpec | dict[str, Any]]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of the probes' tables, in
    order; "" for none. The hub and its agents compare policies by this.

    Args:
        probes: parsed specs, or their tables as an ack carries them (`ProbeSpec.as_table`).
    """
    if not probes:
        return ""
    import hashlib  # here: the agent's one-shot collection never compares policies

    tables = [p.as_table() if isinstance(p, ProbeSpec) else p for p in probes]
    text = json.dumps(tables, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def parse_hostport(text: str) -> tuple[str, int]:
    """Split "host:port" or "[v6addr]:port".

    Raises:
        ValueError: with a message that shows the expected form.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def _looks_like_many_ports(target: str) -> bool:
    port = target.rpartition(":")[2]
    return any(c in port for c in "-,") or " " in port


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address, not a name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    """A DNS name (letters, digits, '-' and '_' in dot-separated labels), not an address."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or is_ip(name):
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


class _Table:
    def __init__(self, table: dict[str, Any], where: str) -> None:
        self.table, self.where = table, where
        self.name: str | None = None  # known once the name is read: errors then show it

    def error(self, key: str, problem: str) -> ProbeSpecError:
        return ProbeSpecError(f"{self.where}.{key}", problem, self.name)

    def only(self, allowed: tuple[str, ...]) -> None:
        for key in self.table:
            if key not in allowed:
                name = self.table.get("name")
                raise ProbeSpecError(f"{self.where}.{str(key)[:64]}",
                                     f"unknown key (expected one of: {', '.join(allowed)})",
                                     name if isinstance(name, str) else None)


def _text(r: _Table, key: str, max_len: int, required: bool = False) -> str | None:
    value = r.table.get(key)
    if value is None:
        if required:
            raise r.error(key, "required")
        return None
    if not isinstance(value, str):
        raise r.error(key, f"expected a string, got {type(value).__name__} {value!r}")
    if not value or len(value) > max_len:
        raise r.error(key, f"expected 1 to {max_len} characters")
    if not value.isprintable():  # a name or target shown in logs, lists and alerts
        raise r.error(key, f"expected printable text, got {value!r}")
    return value


def _number(r: _Table, key: str, low: float, high: float) -> float | None:
    value = r.table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise r.error(key, f"expected a number of seconds from {low:g} to {high:g}, "
                           f"got {value!r}")
    return float(value)
