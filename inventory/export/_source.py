"""Rows of each report, read from the store on a connection of their own (WAL lets an export
read while the hub writes), in the operator's scope.

Hosts come either as the hub knows them now (`hosts` table) or as it knew them at `as_of`:
each host's last report received by then (raw reports are kept `--retention-days`), its
presence then, and whether it was revoked then.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from inventory.export._eos import support_of
from inventory.export._register import Entry, normal_mac
from inventory.facts import facts_of
from inventory.filters import compile_filter
from inventory.store import _StatusClock, iso, parse_time
from inventory.store._common import _scoped
from inventory.store._remote import remote_state


@dataclass
class Host:
    agent_id: str
    agency: str
    site: str
    first_seen: str
    last_seen: str
    status: str
    facts: dict[str, Any]  # `inventory.facts.facts_of` the report of the moment described
    remote: str = "off"

    @property
    def hostname(self) -> str | None:
        return self.facts["hostname"]

    @property
    def serial(self) -> str | None:
        return self.facts["serial"]

    def ips(self) -> list[str]:
        return list(self.facts["ips"])

    def macs(self) -> list[str]:
        return list(self.facts["macs"])


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: scope (None: all agencies) and narrowing."""

    scope: list[str] | None
    agency: str | None = None
    site: str | None = None
    filter: str = ""
    as_of: datetime | None = None


class Source:
    def __init__(self, db: sqlite3.Connection, now: datetime) -> None:
        self.db, self.now = db, now
        # Stored reports an as-of export could not read (a corrupt body), skipped rather
        # than failing the whole export; the manifest counts them.
        self.skipped_unreadable = 0

    # --- hosts ---------------------------------------------------------------------------

    def hosts(self, sel: Selection) -> Iterator[Host]:
        """Hosts in scope, ordered by agency, site, hostname; the filter applied."""
        match = compile_filter(sel.filter) if sel.filter.strip() else None
        hosts = self._as_of(sel) if sel.as_of else self._current(sel)
        for host in hosts:
            if match is None or match(self._list_row(host)):
                yield host

    def _where(self, sel: Selection, sql: str, args: list[Any]) -> tuple[str, list[Any]]:
        sql, args = _scoped(sql, args, sel.scope)
        if sel.agency:
            sql += " AND a.name = ?"
            args.append(sel.agency)
        if sel.site:
            sql += " AND s.name = ?"
            args.append(sel.site)
        return sql, args

    def _current(self, sel: Selection) -> Iterator[Host]:
        sql, args = self._where(sel, (
            "SELECT h.agent_id, a.name, s.name, h.first_seen, h.last_seen, h.interval_s, "
            "g.connected, g.revoked_at, g.remote_access, g.remote_offered, h.facts, "
            # Hosts last stored before facts were kept: their whole snapshot, once.
            "CASE WHEN h.facts IS NULL THEN h.snapshot END "
            "FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE 1 = 1"), [])
        status_of = _StatusClock(self.now)
        cursor = self.db.cursor()
        cursor.row_factory = None
        for r in cursor.execute(sql + " ORDER BY a.name, s.name, h.hostname, h.agent_id",
                                args):
            facts = json.loads(r[10]) if r[10] else facts_of(json.loads(r[11]))
            yield Host(r[0], r[1], r[2], r[3], r[4], status_of(r[7], r[4], r[6], r[5]),
                       facts, remote_state(r[8], r[9], r[6], r[7]))

    def _as_of(self, sel: Selection) -> Iterator[Host]:
        assert sel.as_of is not None
        at = iso(sel.as_of)
        sql, args = self._where(sel, (
            "SELECT h.agent_id, a.name, s.name, h.first_seen, r.received_at, h.interval_s, "
            "g.revoked_at, r.body FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "JOIN reports r ON r.agent_id = h.agent_id AND r.received_at = "
            "(SELECT MAX(received_at) FROM reports WHERE agent_id = h.agent_id "
            "AND received_at <= ?) WHERE h.first_seen <= ?"), [at, at])
        status_of = _StatusClock(sel.as_of)
        rows = self.db.execute(sql + " ORDER BY a.name, s.name, h.hostname, h.agent_id", args)
        for r in rows.fetchall():
            try:
                facts = facts_of(json.loads(gzip.decompress(r[7])))
            except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
                # One bad body must not cost every operator in scope their export.
                self.skipped_unreadable += 1
                continue
            revoked = r[6] if r[6] and r[6] <= at else None
            presence = self.db.execute("SELECT state FROM presence WHERE agent_id = ? AND "
                                       "at <= ? ORDER BY at DESC, id DESC LIMIT 1",
                                       (r[0], at)).fetchone()
            connected = 1 if presence and presence[0] == "online" else 0
            yield Host(r[0], r[1], r[2], r[3], r[4], status_of(revoked, r[4], connected, r[5]),
                       facts)

    def pruned_before(self, sel: Selection) -> int:
        """Hosts known at `as_of` whose reports from then are no longer kept (retention)."""
        if sel.as_of is None:
            return 0
        at = iso(sel.as_of)
        sql, args = self._where(sel, (
            "SELECT COUNT(*) FROM hosts h JOIN agencies a ON a.id = h.agency_id "
            "JOIN sites s ON s.id = h.site_id WHERE h.first_seen <= ? AND NOT EXISTS "
            "(SELECT 1 FROM reports r WHERE r.agent_id = h.agent_id AND r.received_at <= ?)"),
            [at, at])
        return int(self.db.execute(sql, args).fetchone()[0])

    @staticmethod
    def _list_row(h: Host) -> list[Any]:
        """The host as a host-list row (`inventory.hostlist`), for the shared filter syntax."""
        f = h.facts
        ips = f["ips"]
        return [h.agent_id, h.hostname, h.agency, h.site, h.status,
                " ".join(x for x in (f["os_name"], f["os_version"]) if x) or None,
                f["model"], h.serial, f["cpu"], f["ram_bytes"], f["disk_percent"],
                ips[0] if ips else None, h.last_seen, h.remote]

    # --- the reports ---------------------------------------------------------------------

    def reference(self, sel: Selection) -> datetime:
        """The moment the export describes: as-of, else now."""
        return sel.as_of or self.now

    def inventory(self, sel: Selection) -> Iterator[list[Any]]:
        day = self.reference(sel).date()
        for h in self.hosts(sel):
            f = h.facts
            support = support_of(f["os_name"], f["os_version"])
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
            sql, args = self._where(sel, (
                "SELECT h.agent_id, h.hostname, a.name FROM hosts h "
                "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
                "WHERE 1 = 1"), [])
            hosts = {r[0]: (r[1], r[2]) for r in self.db.execute(sql, args)}
        sql = "SELECT at, agent_id, kind, subject, old_value, new_value FROM changes WHERE 1 = 1"
        args = []
        if sel.as_of is not None:  # (without, every change is before now: no condition)
            sql += " AND at <= ?"
            args.append(iso(sel.as_of))
        if since is not None:
            sql += " AND at >= ?"
            args.append(iso(since))
        cursor = self.db.cursor()
        cursor.row_factory = None
        for at, agent_id, kind, subject, old, new in cursor.execute(sql + " ORDER BY id", args):
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
            support = support_of(f["os_name"], f["os_version"])
            if support and support.end_of_support < day:
                yield [h.agent_id, h.agency, h.site, h.hostname, h.serial, f["os_name"],
                       f["os_version"], f["os_build"], support.os,
                       support.end_of_support.isoformat(),
                       (day - support.end_of_support).days, support.source, h.last_seen,
                       h.status]

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


def _mac_text(mac: str | None) -> str | None:
    """A normalised MAC (12 hex digits) as people write it: 02:00:00:00:00:01."""
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2)) if mac else None


def _short(name: str) -> str:
    return name.lower().split(".", 1)[0]


def _index(hosts: list[Host], keys: Callable[[Host], list[str]]) -> dict[str, list[Host]]:
    index: dict[str, list[Host]] = {}
    for h in hosts:
        for key in keys(h):
            index.setdefault(key, []).append(h)
    return index


def _conflicts(e: Entry, h: Host) -> list[str]:
    out = []
    if e.serial and (h.serial or "").lower() != e.serial.lower():
        out.append(f"serial: {e.serial} / {h.serial or '(none)'}")
    if e.hostname and h.hostname and _short(e.hostname) != _short(h.hostname):
        out.append(f"hostname: {e.hostname} / {h.hostname}")
    if e.mac and e.mac not in {normal_mac(m) for m in h.macs()}:
        out.append(f"mac: {_mac_text(e.mac)} / {', '.join(h.macs()) or '(none)'}")
    return out


