"""Sources shared by Linux and macOS: resolv.conf and the zoneinfo link."""

from __future__ import annotations

import os

from estate.agent.collect._common import read_text

RESOLV_CONF = "/etc/resolv.conf"
# systemd-resolved's stub lists 127.0.0.53; the real upstream servers are in this file.
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"


def parse_resolv_conf(text: str) -> list[str]:
    servers = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] not in servers:
            servers.append(parts[1])
    return servers[:32]


def dns_servers(problems: list[str]) -> list[str]:
    servers = parse_resolv_conf(read_text(RESOLV_CONF) or "")
    if servers == ["127.0.0.53"]:
        servers = parse_resolv_conf(read_text(RESOLVED_UPSTREAM) or "") or servers
    return servers


def timezone(problems: list[str]) -> dict[str, str | None]:
    """The system section's time zone fields: here only `timezone`, an IANA name."""
    return {"timezone": _zone_name()}


def _zone_name() -> str | None:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz and not tz.startswith("/"):
        return tz
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    name = (read_text("/etc/timezone") or "").strip()
    return name or None


