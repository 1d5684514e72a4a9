"""Rows of each report, read through a read-only store handle of their own (an export
thread's), in the operator's scope.

Hosts come either as the hub knows them now or as it knew them at `as_of`: each host's last
full report received by then (kept `--history-days`, one a host a day at least), its
presence then, and whether it was revoked then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.compliance import ComplianceSummary, summarise_outcomes
from estate.inventory.export._eos import support_of
from estate.inventory.export._register import Entry, normal_mac
from estate.inventory.filters import compile_filter
from estate.inventory.store import HostFacts, HostQuery, HostRow, ReaderInterface
from estate.inventory.times import iso, parse_time


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: scope (None: all agencies) and narrowing."""

    scope: list[str] | None
    agency: str | None = None
    site: str | None = None
    filter: str = ""
    as_of: datetime | None = None

    @property
    def query(self) -> HostQuery:
        return HostQuery(self.scope, self.agency, self.site)


class Source:
    def __init__(self, reader: ReaderInterface, now: datetime) -> None:
        self.reader, self.now = reader, now

    # --- hosts ---------------------------------------------------------------------------

    def hosts(self, sel: Selection) -> Iterator[HostFacts]:
        """Hosts in scope, ordered by agency, site, hostname; the filter applied."""
        match = compile_filter(sel.filter) if sel.filter.strip() else None
        hosts = self.reader.hosts_as_of(sel.query, sel.as_of) if sel.as_of else \
            self.reader.hosts_now(sel.query, self.now)
        # As of a date, a host's compliance is the results it had then (the filter's
        # `fail:` and `compliance<N`), read only when the filter asks.
        asks = "compliance" in sel.filter or "fail:" in sel.filter
        then = self._compliance_as_of(sel) if match and sel.as_of and asks else None
        for host in hosts:
            if then is not None:
                host = replace(host, compliance=then.get(host.agent_id))
            if match is None or match(self._list_row(host)):
                yield host

    def _compliance_as_of(self, sel: Selection) -> dict[str, ComplianceSummary]:
        """Each host's compliance summary at `sel.as_of`, from the results kept then."""
        rows: dict[str, list[tuple[str, str, str, str, str]]] = {}
        for r in self.reader.compliance_rows(sel.query, sel.as_of):
            rows.setdefault(r.agent_id, []).append(
                (r.outcome, r.control, r.theme, r.severity, r.title))
        return {agent_id: summarise_outcomes(results) for agent_id, results in rows.items()}

    def pruned_before(self, sel: Selection) -> int:
        """Hosts known at `as_of` whose reports from then are no longer kept (retention)."""
        if sel.as_of is None:
            return 0
        return self.reader.hosts_missing_history(sel.query, sel.as_of)

    @staticmethod
    def _list_row(h: HostFacts) -> HostRow:
        """The host as a host-list row (`estate.inventory.hostlist`), for the shared filter
        syntax."""
        f = h.facts
        ips = f["ips"]
        return HostRow(h.agent_id, h.hostname, h.agency, h.site, h.status,
                       " ".join(x for x in (f["os_name"], f["os_version"]) if x) or None,
                       f["model"], h.serial, f["cpu"], f["ram_bytes"], f["disk_percent"],
                       ips[0] if ips else None, h.last_seen, h.remote, h.compliance)

    # --- the reports ---------------------------------------------------------------------

    def reference(self, sel: Selection) -> datetime:
        """The moment the export describes: as-of, else now."""
        return sel.as_of or self.now

    def inventory(self, sel: Selection) -> Iterator[list[Any]]:
        day = self.reference(sel).date()
        for h in self.hosts(sel):
            f = h.facts
            support = support_of(_os_for_support(f), f["os_version"])
            yield [h.agent_id, h.agency, h.site, f["hostname"], f["fqdn"], f["serial"],
                   f["vendor"], f["model"], f["chassis"], f["cpu"], f["cpu_cores"],
                   f["ram_bytes"], f["storage_bytes"], f["os_family"], f["os_name"],
                   f["os_version"], f["os_build"],
                   support.end_of_support.isoformat() if support else None,
                   (support.end_of_support >= day) if support else None,
                   "; ".join(f["ips"]) or None, "; ".join(f["macs"]) or None,
                   h.first_seen, h.last_seen, h.status]

    def changes(self, sel: Selection, since: datetime | None) -> Iterator[list[Any]]:
        # The hosts in scope first (a few thousand rows), then one plain pass over the
        # changes in id order: no join per change, which is what costs at 200,000 of them.
        if sel.filter.strip():
            hosts = {h.agent_id: (h.hostname, h.agency) for h in self.hosts(sel)}
        else:
            hosts = {h.agent_id: (h.hostname, h.agency)
                     for h in self.reader.host_names(sel.query)}
        # (without as-of, every change is before now: no upper bound)
        for at, agent_id, kind, subject, old, new, _ in self.reader.change_events(sel.as_of,
                                                                                  since):
            host = hosts.get(agent_id)
            if host is not None:
                yield [at, agent_id, host[0], host[1], kind, subject, old, new]

    def stale(self, sel: Selection, days: int) -> Iterator[list[Any]]:
        ref = self.reference(sel)
        before = iso(ref - timedelta(days=days))
        for h in self.hosts(sel):
            if h.last_seen < before:
                ips = h.ips()
                unseen = (ref - parse_time(h.last_seen)).days
                yield [h.agent_id, h.agency, h.site, h.hostname, h.serial, h.last_seen, unseen,
                       ips[0] if ips else None, h.status]

    def unsupported(self, sel: Selection) -> Iterator[list[Any]]:
        day = self.reference(sel).date()
        for h in self.hosts(sel):
            f = h.facts
            support = support_of(_os_for_support(f), f["os_version"])
            if support and support.end_of_support < day:
                yield [h.agent_id, h.agency, h.site, h.hostname, h.serial, f["os_name"],
                       f["os_version"], f["os_build"], support.os,
                       support.end_of_support.isoformat(),
                       (day - support.end_of_support).days, support.source, h.last_seen,
                       h.status]

    def compliance(self, sel: Selection) -> Iterator[list[Any]]:
        """Each host's result per control (now, or as the store kept it at as-of), then a
        summary row per site and per agency. The filter, if any, picks hosts as in lists."""
        wanted = {h.agent_id for h in self.hosts(sel)} if sel.filter.strip() else None
        sites: dict[tuple[str, str], dict[str, Any]] = {}
        agencies: dict[str, dict[str, Any]] = {}
        host: tuple[str, str, str, list[str]] | None = None

        def finish() -> None:  # the last host's results into its site's and agency's counts
            if host is None:
                return
            outcomes = host[3]
            for counts in (sites.setdefault((host[1], host[2]), _counts()),
                           agencies.setdefault(host[1], _counts())):
                counts["hosts"] += 1
                counts["compliant"] += all(o == "pass" for o in outcomes)
                for o in outcomes:
                    counts[o] += 1

        for r in self.reader.compliance_rows(sel.query, sel.as_of):
            if wanted is not None and r.agent_id not in wanted:
                continue
            if host is None or host[0] != r.agent_id:
                finish()
                host = (r.agent_id, r.agency, r.site, [])
            host[3].append(r.outcome)
            yield ["host", r.agent_id, r.agency, r.site, r.hostname, r.control, r.title,
                   r.theme, r.severity, r.outcome, r.fact, r.reason, r.since,
                   None, None, None, None, None, None]
        finish()
        for (agency, site), counts in sorted(sites.items()):
            yield ["site", None, agency, site, *[None] * 9, *_summary_cells(counts)]
        for agency, counts in sorted(agencies.items()):
            yield ["agency", None, agency, *[None] * 10, *_summary_cells(counts)]

    def reconcile(self, sel: Selection, register: list[Entry],
                  days: int) -> Iterator[list[Any]]:
        hosts = list(self.hosts(sel))
        by_serial = {h.serial.lower(): h for h in hosts if h.serial}
        by_name = _index(hosts, lambda h: [_short(h.hostname)] if h.hostname else [])
        by_mac = _index(hosts, lambda h: [normal_mac(m) for m in h.macs()])
        before = iso(self.reference(sel) - timedelta(days=days))
        matched: set[str] = set()
        for e in register:
            host, how = None, None
            if e.serial and e.serial.lower() in by_serial:
                host, how = by_serial[e.serial.lower()], "serial"
            elif e.hostname and len(by_name.get(_short(e.hostname), [])) == 1:
                host, how = by_name[_short(e.hostname)][0], "hostname"
            elif e.mac and len(by_mac.get(e.mac, [])) == 1:
                host, how = by_mac[e.mac][0], "mac"
            register_cells = [e.line, e.asset_tag, e.serial, e.hostname, _mac_text(e.mac)]
            if host is None:
                yield ["register only (never seen)", *register_cells, None, None, None, None,
                       None, None, None, None]
                continue
            matched.add(host.agent_id)
            conflicts = _conflicts(e, host)
            if host.last_seen < before:
                outcome = f"register only (not seen for {days} days)"
            elif conflicts:
                outcome = "in both, conflicting"
            else:
                outcome = "in both"
            yield [outcome, *register_cells, how, host.agent_id, host.agency, host.site,
                   host.hostname, host.serial, host.last_seen, "; ".join(conflicts) or None]
        for h in hosts:
            if h.agent_id not in matched:
                yield ["estate only", None, None, None, None, None, None, h.agent_id,
                       h.agency, h.site, h.hostname, h.serial, h.last_seen, None]


def _counts() -> dict[str, int]:
    return {"hosts": 0, "compliant": 0, "pass": 0, "fail": 0, "unknown": 0}


def _summary_cells(c: dict[str, int]) -> list[Any]:
    """hosts, compliant, passed, failed, unknown, share (percent, one decimal)."""
    total = c["pass"] + c["fail"] + c["unknown"]
    return [c["hosts"], c["compliant"], c["pass"], c["fail"], c["unknown"],
            round(100 * c["pass"] / total, 1) if total else None]


def _os_for_support(facts: dict[str, Any]) -> str | None:
    """The name the end-of-support table matches: the English product the agent identified
    from the OS's numbers where it did, else the display name, which a localised Windows
    writes in its own language ("Windows 11 Entreprise")."""
    return facts.get("os_product") or facts["os_name"]


def _mac_text(mac: str | None) -> str | None:
    """A normalised MAC (12 hex digits) as people write it: 02:00:00:00:00:01."""
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2)) if mac else None


def _short(name: str) -> str:
    return name.lower().split(".", 1)[0]


def _index(hosts: list[HostFacts],
           keys: Callable[[HostFacts], list[str]]) -> dict[str, list[HostFacts]]:
    index: dict[str, list[HostFacts]] = {}
    for h in hosts:
        for key in keys(h):
            index.setdefault(key, []).append(h)
    return index


def _conflicts(e: Entry, h: HostFacts) -> list[str]:
    out = []
    if e.serial and (h.serial or "").lower() != e.serial.lower():
        out.append(f"serial: {e.serial} / {h.serial or '(none)'}")
    if e.hostname and h.hostname and _short(e.hostname) != _short(h.hostname):
        out.append(f"hostname: {e.hostname} / {h.hostname}")
    if e.mac and e.mac not in {normal_mac(m) for m in h.macs()}:
        out.append(f"mac: {_mac_text(e.mac)} / {', '.join(h.macs()) or '(none)'}")
    return out
