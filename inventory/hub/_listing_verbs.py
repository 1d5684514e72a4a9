"""`estate-hub hosts|hubs|changes|audit|sessions`: what the store records, as a table or JSON;
`audit verify` checks the audit log's hash chain and `sessions --end` ends a remote session."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from estate.inventory.hub._cli_args import _date, _positive_int, verb
from estate.inventory.hub._cli_shared import actor, existing_store, outcome, print_rows
from estate.inventory.protocol import Exit


def add_verbs(sub: Any) -> None:
    """Add the verbs that list the store's records."""
    verb(sub, "hosts", "one line per host: id, hostname, agency, site, status, last seen",
         json_flag=True).set_defaults(func=_cmd_hosts)
    hubs = verb(sub, "hubs", "the hub processes sharing this store: name, state, address, "
                             "last heartbeat, agents held, reports/s", json_flag=True)
    hubs.description = (
        "The hub processes that use this store, from its registry: each registers when it "
        "starts, heartbeats every --heartbeat seconds with the agents it holds and the "
        "reports it stored per second, and removes itself when it stops. A hub silent past "
        "its --hub-timeout (killed, its machine down) is shown `dead`; the next heartbeat of "
        "a live hub removes it and marks its agents offline. Several hubs share a "
        "PostgreSQL store; an SQLite store has the one hub.")
    hubs.set_defaults(func=_cmd_hubs)
    changes = verb(sub, "changes", "change history, oldest first", json_flag=True)
    changes.add_argument("--host", metavar="H", help="agent id or hostname")
    changes.add_argument("--since", metavar="DATE", type=_date,
                         help="only changes at or after DATE (2026-01-31 or an ISO time, UTC)")
    changes.set_defaults(func=_cmd_changes)
    audit = verb(sub, "audit", "the audit log, newest first, a page at a time; `audit "
                               "verify` checks its hash chain", json_flag=True)
    audit.add_argument("check", nargs="?", choices=("verify",),
                       help="verify: walk the hash chain; OK with the count, or the first "
                            "bad row and exit 1")
    audit.add_argument("--since", metavar="DATE", type=_date,
                       help="rows at or after DATE (2026-01-31 or an ISO time, UTC)")
    audit.add_argument("--until", metavar="DATE", type=_date, help="rows before DATE")
    audit.add_argument("--actor", metavar="ACTOR", help="rows of this actor only "
                                                        "(e.g. operator:alice, admin:root)")
    audit.add_argument("--action", metavar="ACTION", help="rows of this action only "
                                                          "(e.g. export, enrol_refused)")
    audit.add_argument("--limit", type=_positive_int, default=1000, metavar="N",
                       help="rows per page (default 1000)")
    audit.add_argument("--before-id", type=_positive_int, metavar="ID",
                       help="the page of rows older than row ID (the next page's command is "
                            "printed after each page)")
    audit.set_defaults(func=_cmd_audit)
    sessions = verb(sub, "sessions", "remote sessions, newest first: operator, host, start, "
                                     "end, bytes each way, why it ended", json_flag=True)
    sessions.add_argument("--live", action="store_true", help="only sessions still open")
    sessions.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                          help="at most N sessions (default 100)")
    sessions.add_argument("--end", type=_positive_int, metavar="SESSION_ID",
                          help="end a live session (the hub closes it within a second)")
    sessions.set_defaults(func=_cmd_sessions)


def _cmd_hosts(args: argparse.Namespace) -> int:
    rows = [h.as_dict() for h in existing_store(args).hosts()]
    for r in rows:
        if r["identity_conflict"]:
            r["status"] += " (same serial/uuid as " + r["identity_conflict"] + ")"
        if r["clock_skewed"]:
            r["status"] += f" (agent clock off by {r['clock_skew_s']:+.0f} s)"
    return print_rows(args, rows, ("agent_id", "hostname", "agency", "site", "status",
                                   "last_seen"), widest=80)


def _cmd_hubs(args: argparse.Namespace) -> int:
    from estate.inventory.store import parse_time, utcnow

    now = utcnow()
    rows = []
    for hub in existing_store(args).hubs():
        age_s = (now - parse_time(hub.heartbeat_at)).total_seconds()
        rows.append({**hub.as_dict(), "heartbeat_age_s": round(age_s, 1),
                     "state": "dead" if age_s > hub.timeout_s else "live",
                     "heartbeat": f"{max(age_s, 0):.0f} s ago"})
    if args.json:
        for row in rows:
            del row["heartbeat"]  # heartbeat_at and heartbeat_age_s say it
    return print_rows(args, rows, ("id", "state", "address", "started_at", "heartbeat", "agents",
                                   "reports_per_s", "version"))


def _cmd_changes(args: argparse.Namespace) -> int:
    rows = existing_store(args).changes(args.host, args.since)
    return print_rows(args, rows, ("at", "hostname", "agent_id", "kind", "subject", "old_value",
                                   "new_value"))


def _cmd_audit(args: argparse.Namespace) -> int:

    store = existing_store(args)
    if args.check == "verify":
        count, bad, why = store.verify_audit()
        if bad is None:
            print(f"OK: {count} audit rows, hash chain intact")
            return Exit.OK
        print(f"FAILED: audit row {bad} {why}; the {count} rows before it chain correctly",
              file=sys.stderr)
        return Exit.FAIL
    # One row more than the page shows whether there is a next page.
    rows = store.audit_log(args.limit + 1, args.since, args.until, args.actor, args.action,
                           args.before_id)
    page, more = rows[:args.limit], len(rows) > args.limit
    print_rows(args, page, ("id", "at", "actor", "action", "target", "detail"))
    if more:
        # On stderr, so stdout stays one table or one JSON document.
        print(f"more rows: add --before-id {page[-1]['id']} (with the same filters) for the "
              f"next page", file=sys.stderr)
    return Exit.OK


def _cmd_sessions(args: argparse.Namespace) -> int:
    store = existing_store(args)
    if args.end is not None:
        return outcome(store.request_session_end(args.end, actor()),
                       f"session {args.end}: the hub ends it within a second",
                       f"no live session {args.end}")
    rows = [{**s.as_dict(), "state": "live" if s.ended_at is None else "ended"}
            for s in store.sessions(live_only=args.live, limit=args.limit)]
    return print_rows(args, rows, ("id", "state", "operator", "agent_id", "hostname", "started_at",
                                   "ended_at", "bytes_to_host", "bytes_from_host", "end_reason"))

