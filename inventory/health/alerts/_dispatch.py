"""The alert dispatcher: one pass reads what happened since its cursors (incident events,
remote sessions started, the hosts whose reports the watch events announce), matches the
rules against it and queues one notification per rule and channel, in one transaction with
its new cursors. It runs on the store thread of the hub holding the "alerts" lease; sending is
the sender's job (`estate.inventory.hub._alerts`), so nothing here waits on a network.

What each condition reads (docs/configuration.md, "Alert rules and channels"):
- site_outage, shared_service: incident events, one notification per transition (opened,
  hosts changed, resolved, reopened); none while the incident is silenced, but its resolution;
  none for hosts changed in the first UPDATE_QUIET after it opened, and one per UPDATE_QUIET
  at most after that;
- host_offline: open host incidents older than the rule's minutes (told once, a firing row),
  and their resolution;
- disk, clock_skew, spool_dropped, unsupported_os: the facts of each host that reported since
  the last pass; told once when the condition becomes true, cleared when it is false again
  (disk and clock_skew tell the clearing too);
- remote_session: sessions started; hardware_changed: a report's serial or disk changes.

A channel's queue is bounded (`MAX_PENDING_PER_CHANNEL`): while it is full, what would be
queued for it is dropped (warned once when it fills, audited `alert_dropped` with the count
once it has drained below the bound, when queuing resumes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from estate.inventory.health.alerts._message import Message
from estate.inventory.health.alerts._rules import Rule, Rules
from estate.inventory.sanitise import quoted
from estate.inventory.store import MAX_PENDING_PER_CHANNEL, iso, parse_time, queue_full_episodes

if TYPE_CHECKING:
    from estate.inventory.store import (
        AlertHost,
        AlertIncidentEvent,
        AlertSession,
        ChangeNotice,
        HostRow,
        StoreInterface,
    )

# Incident events read per pass (the rest next pass, a second later).
INCIDENT_EVENTS_AT_ONCE = 500
# Pages of watch events read per pass, EVENTS_AT_ONCE events of each hub a page.
EVENT_PAGES = 5
EVENTS_AT_ONCE = 2000
# Sessions are read once this old (see `alert_sessions`: rows any hub writes).
SESSION_LAG = timedelta(seconds=5)
HARDWARE_KINDS = ("serial_changed", "disk_added", "disk_removed", "disk_resized")
# A site seldom goes down in one instant: the hosts the correlator adds to an incident this
# soon after it opened are not told as an update of their own (the opening's message and the
# next update or the resolution carry the count), so one outage is one message.
UPDATE_QUIET = timedelta(seconds=60)
# And later, one update per incident per UPDATE_QUIET at most: a host flapping inside an open
# incident (a hostile or broken agent) changes its hosts every correlator pass. The next
# update or the resolution carries the count. Incidents remembered, at most (then forgotten
# all at once: at worst one message more each).
UPDATES_REMEMBERED = 10_000
# Host conditions whose end is told too (the others are news once: an OS that went out of
# support, a spool that dropped reports).
TELLS_CLEARING = ("disk", "clock_skew")
INCIDENT_EVENTS = {"opened": "opened", "hosts_changed": "updated", "resolved": "resolved",
                   "reopened": "reopened"}
_KIND_LABEL = {"site_outage": "Site outage", "shared_service": "Shared service failing",
               "host_offline": "Host offline"}

Queued = tuple[str, str, str, str]  # channel, rule, thread, payload

log = logging.getLogger("estate.hub.alerts")


def _name(row: HostRow) -> str:
    return row.hostname or row.agent_id


def _host(row: HostRow) -> dict[str, Any]:
    return {"agent_id": row.agent_id, "hostname": row.hostname, "os": row.os,
            "status": row.status}


class Dispatcher:
    """Matches rules against what happened; `run_pass` on the store thread."""

    def __init__(self, rules: Rules, today: Callable[[], date] | None = None,
                 max_pending: int = MAX_PENDING_PER_CHANNEL) -> None:
        from estate.inventory.filters import compile_filter

        self.rules = rules
        self.max_pending = max_pending  # notifications pending per channel, at most
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        # Each rule's `hosts` filter, compiled once (the rules file was checked).
        self._filters = {r.name: compile_filter(r.hosts) for r in rules.rules if r.hosts}
        self._started = False
        self._updated: dict[int, datetime] = {}  # incident id -> when an update was last told

    # --- a pass -------------------------------------------------------------------------

    def run_pass(self, store: StoreInterface, now: datetime) -> int:
        """Read, match and queue; the notifications queued."""
        if not self._started:
            # Rules gone from the file leave no firing rows to tell a clearing for.
            store.forget_alerts([r.name for r in self.rules.rules], [])
            self._started = True
        cursors = store.alert_cursors()
        new: dict[str, int] = {}
        for name, head in store.alert_heads().items() if not cursors else ():
            new[name] = head  # a dispatcher's first pass tells from now on
        position = {**cursors, **new}
        out: list[Queued] = []
        fire: list[tuple[str, str, str]] = []
        clear: list[tuple[str, str, str]] = []
        self._incidents(store, position, new, out, clear)
        self._offline(store, now, out, fire)
        self._sessions(store, now, position, new, out)
        self._reports(store, cursors, new, out, fire, clear)
        # A channel whose queue was full is looked at every pass, to see it drain.
        if not (out or new or fire or clear or queue_full_episodes(cursors)):
            return 0
        done = store.queue_alerts(out, new, fire, clear, now, self.max_pending)
        for channel in done.filled:
            log.warning("alerts: channel %s has %d notifications waiting, the most one "
                        "channel queues: new ones for it are dropped until it catches up "
                        "(is it down?)", quoted(channel, 64), self.max_pending)
        for channel, count in done.drained.items():
            log.warning("alerts: channel %s is below %d notifications waiting again: "
                        "queuing resumes; %d were dropped (audited alert_dropped)",
                        quoted(channel, 64), self.max_pending, count)
        return len(done.ids)

    def _queue(self, out: list[Queued], rule: Rule, message: Message) -> None:
        payload = message.to_json()
        out.extend((channel, rule.name, message.thread, payload) for channel in rule.channels)

    def _matches(self, rule: Rule, row: HostRow) -> bool:
        match = self._filters.get(rule.name)
        return rule.in_scope(row.agency, row.site) and (match is None or match(row))

    # --- incidents ----------------------------------------------------------------------

    def _incidents(self, store: StoreInterface, position: dict[str, int],
                   new: dict[str, int], out: list[Queued],
                   clear: list[tuple[str, str, str]]) -> None:
        events = store.alert_incident_events(position.get("incident_events", 0),
                                             INCIDENT_EVENTS_AT_ONCE)
        if not events:
            return
        new["incident_events"] = events[-1].id
        site_rules = self.rules.by_condition("site_outage", "shared_service")
        offline_rules = self.rules.by_condition("host_offline")
        for e in events:
            told = INCIDENT_EVENTS.get(e.event)
            if told is None:
                continue  # acknowledged, silenced: people did it, nobody needs telling
            if e.kind == "host_offline":
                if told == "resolved" and e.agent_id:
                    self._offline_resolved(store, e, offline_rules, out, clear)
                continue
            silenced = e.silenced_until is not None and e.silenced_until > e.at
            if silenced and told != "resolved":
                continue
            if told == "updated" and parse_time(e.at) - parse_time(e.opened_at) < UPDATE_QUIET:
                continue
            if told == "updated" and not self._update_due(e.incident_id, parse_time(e.at)):
                continue
            if told == "resolved":
                self._updated.pop(e.incident_id, None)
            for rule in site_rules:
                if rule.condition == e.kind and rule.in_scope(e.agency, e.site):
                    self._queue(out, rule, _incident_message(rule, e, told))

    def _update_due(self, incident_id: int, at: datetime) -> bool:
        """True when an update of this incident may be told at `at` (none in UPDATE_QUIET)."""
        last = self._updated.get(incident_id)
        if last is not None and at - last < UPDATE_QUIET:
            return False
        if len(self._updated) >= UPDATES_REMEMBERED:
            self._updated.clear()
        self._updated[incident_id] = at
        return True

    def _offline(self, store: StoreInterface, now: datetime, out: list[Queued],
                 fire: list[tuple[str, str, str]]) -> None:
        for rule in self.rules.by_condition("host_offline"):
            assert rule.threshold is not None
            due = store.alert_offline_hosts(now - timedelta(minutes=rule.threshold),
                                            rule.name)
            if not due:
                continue
            rows = {r.agent_id: r for r in store.host_rows(None, [d.agent_id for d in due])}
            for d in due:
                row = rows.get(d.agent_id)
                if row is None or not self._matches(rule, row):
                    # Out of the rule's scope: marked, so it is not looked at every pass.
                    fire.append((rule.name, d.agent_id, "host_offline:ignored"))
                    continue
                fire.append((rule.name, d.agent_id, "host_offline"))
                minutes = f"{rule.threshold:g}"
                self._queue(out, rule, Message.make(
                    rule=rule.name, condition="host_offline", event="opened",
                    severity=rule.severity,
                    title=f"Host {_name(row)} offline for over {minutes} min",
                    lines=[f"{_name(row)} ({row.agency} / {row.site}) has been offline since "
                           f"{d.opened_at}.", d.title],
                    at=iso(now), thread=f"incident:{d.incident_id}", agency=row.agency,
                    site=row.site, facts=[("Agency", row.agency), ("Site", row.site),
                                          ("Offline since", d.opened_at),
                                          ("Incident", f"#{d.incident_id}")],
                    incident={"id": d.incident_id, "kind": "host_offline", "state": "open",
                              "opened_at": d.opened_at},
                    host=_host(row)))

    def _offline_resolved(self, store: StoreInterface, e: AlertIncidentEvent,
                          rules: list[Rule], out: list[Queued],
                          clear: list[tuple[str, str, str]]) -> None:
        assert e.agent_id is not None
        for rule in rules:
            if store.alert_firing(rule.name, "host_offline", [e.agent_id]):
                clear.append((rule.name, e.agent_id, "host_offline"))
                self._queue(out, rule, Message.make(
                    rule=rule.name, condition="host_offline", event="resolved",
                    severity=rule.severity, title=f"RESOLVED: {e.title}",
                    lines=[f"{e.title}: back online at {e.at}."], at=e.at,
                    thread=f"incident:{e.incident_id}", agency=e.agency, site=e.site,
                    facts=[("Agency", e.agency), ("Site", e.site),
                           ("Offline since", e.opened_at), ("Resolved", e.resolved_at),
                           ("Incident", f"#{e.incident_id}")],
                    incident=_incident(e), host={"agent_id": e.agent_id}))
            if store.alert_firing(rule.name, "host_offline:ignored", [e.agent_id]):
                clear.append((rule.name, e.agent_id, "host_offline:ignored"))

    # --- remote sessions ----------------------------------------------------------------

    def _sessions(self, store: StoreInterface, now: datetime, position: dict[str, int],
                  new: dict[str, int], out: list[Queued]) -> None:
        rules = self.rules.by_condition("remote_session")
        if not rules:
            return
        sessions = store.alert_sessions(position.get("remote_sessions", 0), now - SESSION_LAG)
        if not sessions:
            return
        new["remote_sessions"] = sessions[-1].id
        rows = {r.agent_id: r for r in store.host_rows(None, list({s.agent_id
                                                                   for s in sessions}))}
        for s in sessions:
            row = rows.get(s.agent_id)
            for rule in rules:
                if row is None or not self._matches(rule, row):
                    continue
                self._queue(out, rule, _session_message(rule, s, row))

    # --- reporting hosts ----------------------------------------------------------------

    def _reports(self, store: StoreInterface, cursors: dict[str, int], new: dict[str, int],
                 out: list[Queued], fire: list[tuple[str, str, str]],
                 clear: list[tuple[str, str, str]]) -> None:
        host_rules = self.rules.by_condition("disk", "clock_skew", "spool_dropped",
                                             "unsupported_os")
        hardware_rules = self.rules.by_condition("hardware_changed")
        if not host_rules and not hardware_rules:
            return
        hubs = {k.removeprefix("events:"): v for k, v in cursors.items()
                if k.startswith("events:")}
        if not hubs:
            # The first pass reads from now: every hub's newest event.
            new.update({f"events:{h}": seq for h, seq in store.event_heads().items()})
            return
        reported: dict[str, list[tuple[str, str, int]]] = {}
        for _ in range(EVENT_PAGES):
            page = store.events_after(hubs, EVENTS_AT_ONCE)
            for event in page.events:
                if event.kind == "host" and event.report_id:
                    reported.setdefault(event.agent_id, []).append(
                        (event.at, event.report_id, event.change_count))
            hubs = page.cursors
            if not page.more:
                break
        new.update({f"events:{h}": seq for h, seq in hubs.items()
                    if cursors.get(f"events:{h}") != seq})
        if not reported:
            return
        hosts = store.alert_hosts(list(reported))
        today = self._today()
        for rule in host_rules:
            firing = store.alert_firing(rule.name, rule.condition,
                                        [h.row.agent_id for h in hosts])
            for host in hosts:
                agent_id = host.row.agent_id
                ok = host.row.status != "revoked" and self._matches(rule, host.row)
                news = _condition(rule, host, today) if ok else None
                if news is not None and agent_id not in firing:
                    fire.append((rule.name, agent_id, rule.condition))
                    self._queue(out, rule, _host_message(rule, host, "firing", news))
                elif news is None and agent_id in firing:
                    clear.append((rule.name, agent_id, rule.condition))
                    if ok and rule.condition in TELLS_CLEARING:
                        self._queue(out, rule, _host_message(rule, host, "cleared", ""))
        if hardware_rules:
            self._hardware(store, reported, hosts, hardware_rules, out)

    def _hardware(self, store: StoreInterface, reported: dict[str, list[tuple[str, str, int]]],
                  hosts: Sequence[AlertHost], rules: list[Rule], out: list[Queued]) -> None:
        wanted = [(agent_id, at, report_id) for agent_id, reports in reported.items()
                  for at, report_id, count in reports if count]
        if not wanted:
            return
        rows = {h.row.agent_id: h.row for h in hosts}
        found = store.report_changes(wanted)
        for (agent_id, _report), changes in found.items():
            hardware = [c for c in changes if c.kind in HARDWARE_KINDS]
            row = rows.get(agent_id)
            if not hardware or row is None:
                continue
            for rule in rules:
                if self._matches(rule, row):
                    self._queue(out, rule, _hardware_message(rule, row, hardware))


# --- conditions ---------------------------------------------------------------------------

def _condition(rule: Rule, host: AlertHost, today: date) -> str | None:
    """What makes the rule's condition true of this host (a line for the message), or None
    when it is not."""
    c = rule.condition
    if c == "disk":
        assert rule.threshold is not None
        if host.disk_percent is not None and host.disk_percent > rule.threshold:
            return f"Fullest volume {host.disk_percent:.0f}% used (rule: over " \
                   f"{rule.threshold:g}%)."
    elif c == "clock_skew":
        assert rule.threshold is not None
        if host.clock_skew_s is not None and abs(host.clock_skew_s) > rule.threshold:
            return f"Clock {host.clock_skew_s:+.0f} s off the hub's (rule: over " \
                   f"{rule.threshold:g} s)."
    elif c == "spool_dropped":
        if host.dropped_reports:
            return f"The agent's spool dropped {host.dropped_reports} reports (full or too " \
                   f"old) since it last told the hub."
    elif c == "unsupported_os":
        from estate.inventory.export._eos import support_of

        # The English product the agent identified first, as the exports match it.
        support = support_of(host.os_product or host.os_name, host.os_version)
        if support is not None and support.end_of_support < today:
            return f"{support.os}: vendor support ended {support.end_of_support.isoformat()} " \
                   f"({support.source})."
    return None


# --- messages -----------------------------------------------------------------------------

def _incident(e: AlertIncidentEvent) -> dict[str, Any]:
    return {"id": e.incident_id, "kind": e.kind, "subject": e.subject, "state": e.state,
            "title": e.title, "opened_at": e.opened_at, "resolved_at": e.resolved_at,
            "hosts": e.hosts, "hostnames": list(e.hostnames), "probe": e.probe}


def _incident_message(rule: Rule, e: AlertIncidentEvent, told: str) -> Message:
    label = _KIND_LABEL.get(e.kind, e.kind)
    head = {"opened": "", "updated": "UPDATE: ", "resolved": "RESOLVED: ",
            "reopened": "REOPENED: "}[told]
    shown = ", ".join(e.hostnames)
    more = e.hosts - len(e.hostnames)
    lines = [f"{label} at {e.agency} / {e.site}: {e.title}.",
             {"opened": f"Opened {e.opened_at}.", "updated": f"Hosts changed at {e.at}.",
              "resolved": f"Resolved {e.resolved_at or e.at} (opened {e.opened_at}).",
              "reopened": f"Reopened {e.at} (first opened {e.opened_at})."}[told]]
    if told != "resolved":
        lines.append(f"Hosts affected: {e.hosts}" + (f": {shown}" if shown else "")
                     + (f" and {more} more" if more > 0 else "") + ".")
    return Message.make(
        rule=rule.name, condition=e.kind, event=told, severity=rule.severity,
        title=f"{head}{e.title}", lines=lines, at=e.at, thread=f"incident:{e.incident_id}",
        agency=e.agency, site=e.site,
        facts=[("Agency", e.agency), ("Site", e.site), ("Hosts", str(e.hosts)),
               ("Probe", e.probe), ("Opened", e.opened_at), ("Resolved", e.resolved_at),
               ("Incident", f"#{e.incident_id}")],
        incident=_incident(e))


_HOST_TITLES = {
    ("disk", "firing"): "Disk over {t}% full on {h}",
    ("disk", "cleared"): "Disk back under {t}% on {h}",
    ("clock_skew", "firing"): "Clock over {t} s off on {h}",
    ("clock_skew", "cleared"): "Clock back within {t} s on {h}",
    ("spool_dropped", "firing"): "Reports dropped by the agent on {h}",
    ("unsupported_os", "firing"): "Unsupported operating system on {h}",
}


def _host_message(rule: Rule, host: AlertHost, event: str, why: str) -> Message:
    row = host.row
    title = _HOST_TITLES[(rule.condition, event)].format(
        t=f"{rule.threshold:g}" if rule.threshold is not None else "", h=_name(row))
    lines = [f"{_name(row)} ({row.agency} / {row.site}).", why or "The condition is clear "
             "again."]
    return Message.make(
        rule=rule.name, condition=rule.condition, event=event, severity=rule.severity,
        title=title, lines=lines, at=row.last_seen,
        thread=f"host:{row.agent_id}:{rule.condition}", agency=row.agency, site=row.site,
        facts=[("Host", _name(row)), ("Agency", row.agency), ("Site", row.site),
               ("OS", row.os), ("Disk", f"{host.disk_percent:.0f}%"
                                if host.disk_percent is not None else None),
               ("Clock skew", f"{host.clock_skew_s:+.1f} s"
                if host.clock_skew_s is not None else None),
               ("Agent", row.agent_id)],
        host=_host(row))


def _session_message(rule: Rule, s: AlertSession, row: HostRow) -> Message:
    return Message.make(
        rule=rule.name, condition="remote_session", event="started", severity=rule.severity,
        title=f"Remote session to {_name(row)} by {s.operator}",
        lines=[f"{s.operator} opened a remote session to {_name(row)} ({row.agency} / "
               f"{row.site}) at {s.started_at}" + (f" from {s.peer}." if s.peer else ".")],
        at=s.started_at, thread=f"session:{s.id}", agency=row.agency, site=row.site,
        facts=[("Host", _name(row)), ("Operator", s.operator), ("From", s.peer),
               ("Session", f"#{s.id}")],
        host=_host(row))


def _hardware_message(rule: Rule, row: HostRow, changes: list[ChangeNotice]) -> Message:
    from estate.inventory.changes import KINDS

    lines = [f"{_name(row)} ({row.agency} / {row.site}) reported hardware changes:"]
    for c in changes:
        lines.append(f"{KINDS.get(c.kind, c.kind)}" + (f" {c.subject}" if c.subject else "")
                     + f": {c.old_value or '-'} -> {c.new_value or '-'}")
    return Message.make(
        rule=rule.name, condition="hardware_changed", event="changed", severity=rule.severity,
        title=f"Hardware changed on {_name(row)}: "
              + ", ".join(sorted({KINDS.get(c.kind, c.kind) for c in changes})),
        lines=lines, at=changes[0].at, thread=f"host:{row.agent_id}:hardware:{changes[0].id}",
        agency=row.agency, site=row.site,
        facts=[("Host", _name(row)), ("Agency", row.agency), ("Site", row.site),
               ("Agent", row.agent_id)],
        host=_host(row))
