"""A host's connectivity verdict from its report's probe results: the `hosts.net` value.

`net_verdict(report)` reads `connectivity.probes` and says `ok`, `degraded` or `down`, with
the hub round-trip time and the worst failing probe; `transition_key` is what must change for
the verdict's time (`hosts.net_at`) to move, so readers of changes see flips, not reports.
Pure: no store, no clock; it runs for every report the hub stores, so it stays cheap.
"""

from __future__ import annotations

import json
import re
from typing import Any

RTT_DEGRADED_MS = 500.0
"""A hub round trip slower than this reads `degraded`. Half a second is where interactive
work over the link (estate ssh, remote desktop, a web application) is felt as lag; healthy
terrestrial links, even through a VPN across a country, stay well under 150 ms, so past 500 ms
the link is congested or failing. A geostationary satellite link (about 600 ms) reads degraded
on purpose: it is the slowest link in the estate and staff should see it."""

SEVERITY = ("link", "gateway", "hub-dns", "hub")
"""The built-in probes, the most telling failure first: a link down explains a gateway that
does not answer, which explains a hub name that does not resolve, and so on. Any other
probe (local or from the hub's policy) comes after them, by name."""

MAX_FAILING = 16  # failing probes kept in the verdict: the few worst tell the story

_RANK = {name: i for i, name in enumerate(SEVERITY)}
_OTHER = len(SEVERITY)
# The head of a verdict as `to_text` writes it when no probe is named (most hosts, most of the
# time): read without a JSON parse, which the host list would pay for every host.
_QUIET_HEAD = re.compile(r'\{"state":"(ok|degraded|down)","rtt_ms":(null|\d+(?:\.\d+)?'
                         r'(?:[eE][-+]?\d+)?),"worst":null[,}]')


def net_verdict(report: dict[str, Any]) -> dict[str, Any] | None:
    """The `hosts.net` value for a validated report: state, rtt_ms, worst, failing, at.

    Down when the `link` probe failed or every probe that ran failed; degraded when any probe
    failed or the hub round trip is over RTT_DEGRADED_MS; ok otherwise. A probe whose `ok` is
    null could not run here (say, ICMP not permitted): it is neither a failure nor a success.

    Returns:
        None when the report has no probe that ran: nothing to judge by.
    """
    probes = (report.get("connectivity") or {}).get("probes") or ()
    ran = failed = 0
    failing: list[dict[str, Any]] = []
    rtt_ms: float | None = None
    link_down = False
    for p in probes:
        ok = p.get("ok")
        name = p.get("name")
        if name == "hub" and p.get("kind") == "hub":
            latency = p.get("latency_ms")
            if isinstance(latency, (int, float)) and not isinstance(latency, bool):
                rtt_ms = float(latency)
        if ok is None:
            continue
        ran += 1
        if ok is False:
            failed += 1
            link_down = link_down or name == "link"
            failing.append(p)
    if not ran:
        return None
    if failing:
        # Worst first: the built-ins by severity, then the others by name.
        failing.sort(key=_severity)
    slow = rtt_ms is not None and rtt_ms > RTT_DEGRADED_MS
    if link_down or failed == ran:
        state = "down"
    elif failed or slow:
        state = "degraded"
    else:
        state = "ok"
    worst = failing[0].get("name") if failing else ("hub" if slow else None)
    return {"state": state, "rtt_ms": rtt_ms, "worst": worst,
            "failing": [{"name": p.get("name"), "kind": p.get("kind"),
                         "target": p.get("target"), "error": p.get("error")}
                        for p in failing[:MAX_FAILING]],
            "at": report.get("collected_at")}


def to_text(net: dict[str, Any] | None) -> str | None:
    """The verdict as `hosts.net` keeps it: compact JSON, keys in `net_verdict`'s order."""
    if net is None:
        return None
    return json.dumps(net, ensure_ascii=False, separators=(",", ":"))


def from_text(text: str | None) -> dict[str, Any] | None:
    """A stored `hosts.net` read back; None for none, or for a damaged value."""
    if not text:
        return None
    try:
        net = json.loads(text)
    except ValueError:
        return None
    return net if isinstance(net, dict) else None


def row_of_text(text: str | None) -> tuple[str, float | None, str | None] | None:
    """`row_value` of a stored `hosts.net`; a verdict naming no probe is read without a JSON
    parse."""
    if not text:
        return None
    if (m := _QUIET_HEAD.match(text)) is not None:
        return m[1], None if m[2] == "null" else float(m[2]), None
    try:
        return row_value(json.loads(text))
    except ValueError:  # not JSON (a damaged row): unknown, not a failed read of the list
        return None


def transition_key(net: dict[str, Any] | None) -> int:
    """What `hosts.net_at` follows: the state and the failing set (name, kind, target), not
    the round-trip time, the errors' text or the report's time, which change every report.

    A hash, as the store keeps one per host in memory; equal verdicts hash equal within a
    process, which is as long as the store's cache of it lives.
    """
    if net is None:
        return hash(None)
    return hash((net.get("state"), tuple((f.get("name"), f.get("kind"), f.get("target"))
                                         for f in net.get("failing") or ())))


def row_value(net: dict[str, Any] | None) -> tuple[str, float | None, str | None] | None:
    """The host list's `net` cell: (state, rtt_ms, worst), or None when unknown."""
    if not isinstance(net, dict) or not isinstance(state := net.get("state"), str):
        return None
    rtt = net.get("rtt_ms")
    worst = net.get("worst")
    return (state, float(rtt) if isinstance(rtt, (int, float)) and not isinstance(rtt, bool)
            else None, worst if isinstance(worst, str) else None)


def _severity(p: dict[str, Any]) -> tuple[int, str]:
    name = p.get("name")
    name = name if isinstance(name, str) else ""
    return _RANK.get(name, _OTHER), name
