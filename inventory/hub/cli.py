"""`estate-hub`: run the hub and administer it on the hub's own host.

Admin verbs act on the store directly (SQLite in WAL mode, or PostgreSQL, lets them run beside
`serve`), as whoever can read the data folder or log in to the database: that permission is the
access control.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.protocol import Exit

if TYPE_CHECKING:  # the store loads with the verb that uses it, not with every verb
    from estate.inventory.store import CopyProgress, StoreInterface


def default_data_dir() -> Path:
    """$ESTATE_HUB_DATA, else /var/lib/estate-hub as root, else ~/.local/share/estate-hub."""
    env = os.environ.get("ESTATE_HUB_DATA")
    if env:
        return Path(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/estate-hub")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "estate-hub"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return Exit.USAGE
    from estate.inventory import private_files
    from estate.inventory.errors import SchemaTooNew, StoreUnavailable, StoreUrlError

    # Every file the hub or an admin verb creates (store, WAL, host key, logs) is 0600.
    private_files.restrict_umask()
    private_files.allow_open_dirs(getattr(args, "allow_open_data_dir", False))
    try:
        return int(args.func(args))
    except (private_files.OpenDataDir, SchemaTooNew, StoreUnavailable) as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    except StoreUrlError as exc:  # a bad $ESTATE_HUB_STORE (--store is checked by argparse)
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return Exit.OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="estate-hub",
        description="Estate hub: the SSH gateway and store of the estate's inventory. "
                    "Every verb takes --data DIR (default $ESTATE_HUB_DATA, "
                    "/var/lib/estate-hub as root, else ~/.local/share/estate-hub).")
    sub = p.add_subparsers(metavar="COMMAND")

    serve = _verb(sub, "serve", "run the hub (SSH gateway, store, change history)")
    serve.add_argument("--listen", default="127.0.0.1:2222", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:2222; port 0 picks one)")
    serve.add_argument("--export-store", type=_export_store_url, default=None, metavar="URL",
                       help="a PostgreSQL hot standby of --store that exports read from, so "
                            "the hub's writer never waits on an export (default: --store)")
    serve.add_argument("--login-timeout", type=_seconds, default=20.0, metavar="SECONDS",
                       help="drop connections that have not logged in by then (default 20)")
    serve.add_argument("--max-unauthenticated", type=_positive_int, default=200, metavar="N",
                       help="connections allowed to be logging in at once (default 200)")
    # The front door (docs/protocol.md "Connections and logins"): budgets per source address
    # and for connections not yet logged in, checked before any SSH work is done.
    serve.add_argument("--handshake-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                       help="time to finish the key exchange and start logging in (default 10)")
    serve.add_argument("--max-unauthenticated-per-source", type=_positive_int, default=10,
                       metavar="N", help="connections from one address (IPv6: one /64) allowed "
                                         "to be logging in at once (default 10)")
    serve.add_argument("--early-drop", type=_early_drop, default=(20, 30),
                       metavar="START:PERCENT",
                       help="past START connections logging in, drop new ones with PERCENT "
                            "chance, rising to all at --max-unauthenticated (default 20:30)")
    serve.add_argument("--connection-rate", type=_positive_int, default=10, metavar="N",
                       help="new connections a second from one address (default 10)")
    serve.add_argument("--connection-burst", type=_positive_int, default=10, metavar="N",
                       help="new connections from one address at once (default 10)")
    serve.add_argument("--known-source-reserve", type=_count, default=100, metavar="N",
                       help="connections logging in allowed above --max-unauthenticated for "
                            "addresses that logged in within a day (default 100)")
    serve.add_argument("--penalty-after", type=_count, default=5, metavar="N",
                       help="refuse an address (`penalised`) once more than N of its "
                            "connections in a minute end without logging in (default 5; "
                            "0: never)")
    serve.add_argument("--penalty", type=_penalty, default=(30.0, 600.0), metavar="MIN:MAX",
                       help="seconds a penalised address is refused, doubling on each "
                            "repeat up to MAX (default 30:600)")
    serve.add_argument("--watchers-per-operator", type=_positive_int, default=4, metavar="N",
                       help="watch channels one operator may have open across all their "
                            "connections (default 4)")
    serve.add_argument("--max-watchers", type=_positive_int, default=1000, metavar="N",
                       help="watch channels open on the hub at once (default 1000)")
    serve.add_argument("--retention-days", type=_positive_int, default=30, metavar="DAYS",
                       help="keep every report's sample (time, clock skew, probe "
                            "results) this long (default 30)")
    serve.add_argument("--history-days", type=_positive_int, default=400, metavar="DAYS",
                       help="keep full reports (on change, and one a host a day) and change "
                            "history this long, as far as --as-of reaches (default 400; "
                            "never less than --retention-days)")
    serve.add_argument("--keepalive", type=_seconds, default=30.0, metavar="SECONDS",
                       help="probe silent connections this often; 3 missed probes close one "
                            "(default 30)")
    serve.add_argument("--sessions-per-operator", type=_positive_int, default=4, metavar="N",
                       help="remote sessions one operator may have open at once (default 4)")
    serve.add_argument("--sessions-per-host", type=_positive_int, default=2, metavar="N",
                       help="remote sessions open to one host at once (default 2)")
    # The flag's old name, kept working: it now sets what --history-days does.
    serve.add_argument("--change-retention-days", type=_positive_int, dest="history_days",
                       default=argparse.SUPPRESS, action=_Deprecated, help=argparse.SUPPRESS)
    serve.add_argument("--report-burst", type=_count, default=10, metavar="N",
                       help="reports one agent may send back to back before it is told "
                            "`busy` (default 10; 0 turns this and the bytes budget off, "
                            "for load tests)")
    serve.add_argument("--reports-per-interval", type=_positive_int, default=4, metavar="N",
                       help="past the burst, reports one agent may send per its report "
                            "interval, never shorter than --min-report-interval (default 4)")
    serve.add_argument("--min-report-interval", type=_seconds, default=60.0,
                       metavar="SECONDS", help="the shortest report interval the hub "
                       "budgets an agent for, whatever its reports claim (default 60)")
    serve.add_argument("--agent-bytes-per-day", type=_count, default=64, metavar="MIB",
                       help="report bytes one agent may send a day (burst 16 MiB); past it "
                            "`busy` (default 64; 0 turns it off)")
    serve.add_argument("--max-buffered-input", type=_positive_int, default=64, metavar="MIB",
                       help="report and enrol input all channels may hold at once; past it "
                            "a body is told `busy` (default 64)")
    serve.add_argument("--max-export-requests", type=_positive_int, default=32, metavar="MIB",
                       help="export request bodies all channels may hold at once "
                            "(default 32)")
    serve.add_argument("--max-answer-bytes", type=_positive_int, default=128, metavar="MIB",
                       help="API answers all channels may hold while they are written; past "
                            "it an answer is told `busy` (default 128)")
    serve.add_argument("--max-answer-size", type=_positive_int, default=32, metavar="MIB",
                       help="one API answer; past it `too_large` (default 32)")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="also log asyncssh's own protocol messages")
    serve.set_defaults(func=_cmd_serve)

    store = _group(sub, "store", "the store: schema migrations, moving an estate")
    migrate = _verb(store, "migrate", "create the store's schema or bring it to this "
                                      "version (serve also does it when it starts)")
    migrate.set_defaults(func=_cmd_store_migrate)
    copy = _verb(store, "copy", "copy a whole store into another, e.g. from SQLite to "
                                "PostgreSQL")
    copy.description = (
        "Copy every table of a store (--from) into another (--to), keeping ids and the audit "
        "log's hashes. Stop the source's hub first: the source must not change during the "
        "copy; the end check compares every table's row count and the last audit hash and "
        "exits 1 naming what differs. Interrupted, run the same command again: it goes on "
        "where it stopped. The destination is created if empty; it must not hold another "
        "estate.")
    copy.add_argument("--from", dest="source", type=_store_url, default=None, metavar="URL",
                      help="the store to copy (default: --store, $ESTATE_HUB_STORE, else "
                           "estate.db in the data folder)")
    copy.add_argument("--to", dest="destination", type=_store_url, required=True,
                      metavar="URL", help="the store to copy into, e.g. "
                                          "postgresql://HOST/DATABASE")
    copy.set_defaults(func=_cmd_store_copy)

    token = _group(sub, "token", "enrolment tokens")
    create = _verb(token, "create", "create a token agents enrol with")
    create.add_argument("--agency", required=True, type=_name, help="agency the agents join")
    create.add_argument("--site", required=True, type=_name, help="site the agents are at")
    create.add_argument("--uses", type=_positive_int, default=1, metavar="N",
                        help="how many agents may enrol with it (default 1)")
    create.add_argument("--ttl", type=_duration, default=timedelta(hours=24),
                        metavar="DURATION", help="lifetime: 30m, 24h, 7d (default 24h)")
    create.add_argument("--hub-address", metavar="HOST:PORT",
                        help="address agents reach the hub at, carried in the token")
    create.set_defaults(func=_cmd_token_create)
    _verb(token, "list", "list tokens and their state", json_flag=True).set_defaults(
        func=_cmd_token_list)
    revoke = _verb(token, "revoke", "revoke a token so nobody can enrol with it")
    revoke.add_argument("token_id", metavar="TOKEN_ID")
    revoke.set_defaults(func=_cmd_token_revoke)

    agent = _group(sub, "agent", "enrolled agents")
    _verb(agent, "list", "list enrolled agents", json_flag=True).set_defaults(
        func=_cmd_agent_list)
    arevoke = _verb(agent, "revoke", "revoke an agent: its key is refused at login")
    arevoke.add_argument("agent_id", metavar="AGENT_ID")
    arevoke.set_defaults(func=_cmd_agent_revoke)
    allow = _verb(agent, "allow-remote", "allow remote access (estate ssh) to an agent's host; "
                                         "its agent must also set remote_access = true")
    allow.add_argument("agent_id", metavar="AGENT_ID")
    allow.set_defaults(func=_cmd_agent_remote, allowed=True)
    deny = _verb(agent, "deny-remote", "deny remote access to an agent's host; its live "
                                       "sessions end within a second")
    deny.add_argument("agent_id", metavar="AGENT_ID")
    deny.set_defaults(func=_cmd_agent_remote, allowed=False)

    operator = _group(sub, "operator", "operators: IT staff who use the console and API")
    oadd = _verb(operator, "add", "register an operator and the key they log in with")
    oadd.add_argument("name", metavar="NAME", type=_operator_name,
                      help="login name: lower-case letters, digits, . _ -")
    oadd.add_argument("--key", required=True, type=Path, metavar="PUBKEY_FILE",
                      help="the operator's OpenSSH public key (e.g. ~/.ssh/id_ed25519.pub)")
    oadd.add_argument("--role", required=True, choices=("admin", "staff", "auditor"))
    oadd.add_argument("--agencies", required=True, metavar="A,B|all",
                      help="agencies the operator may see, comma-separated, or all")
    oadd.set_defaults(func=_cmd_operator_add)
    _verb(operator, "list", "list operators", json_flag=True).set_defaults(
        func=_cmd_operator_list)
    oremove = _verb(operator, "remove", "remove an operator: their key is refused from their "
                                          "next login")
    oremove.add_argument("name", metavar="NAME")
    oremove.set_defaults(func=_cmd_operator_remove)

    _verb(sub, "hosts", "one line per host: id, hostname, agency, site, status, last seen",
          json_flag=True).set_defaults(func=_cmd_hosts)
    changes = _verb(sub, "changes", "change history, oldest first", json_flag=True)
    changes.add_argument("--host", metavar="H", help="agent id or hostname")
    changes.add_argument("--since", metavar="DATE", type=_date,
                         help="only changes at or after DATE (2026-01-31 or an ISO time, UTC)")
    changes.set_defaults(func=_cmd_changes)
    audit = _verb(sub, "audit", "the audit log, newest first, a page at a time; `audit "
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
    sessions = _verb(sub, "sessions", "remote sessions, newest first: operator, host, start, "
                                      "end, bytes each way, why it ended", json_flag=True)
    sessions.add_argument("--live", action="store_true", help="only sessions still open")
    sessions.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                          help="at most N sessions (default 100)")
    sessions.add_argument("--end", type=_positive_int, metavar="SESSION_ID",
                          help="end a live session (the hub closes it within a second)")
    sessions.set_defaults(func=_cmd_sessions)

    sim = _verb(sub, "simulate", "run N simulated agents against a hub (load tests, demos)")
    sim.add_argument("--agents", type=_positive_int, required=True, metavar="N",
                     help="how many agents (enrolled for real on first use, then reused)")
    sim.add_argument("--hub", default="127.0.0.1:2222", metavar="HOST:PORT",
                     help="the hub to report to (default 127.0.0.1:2222)")
    sim.add_argument("--interval", type=_seconds, default=60.0, metavar="SECONDS",
                     help="seconds between each agent's reports (default 60)")
    sim.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                     help="stop after this long (default: until Ctrl-C)")
    sim.set_defaults(func=_cmd_simulate)

    svc = sub.add_parser(
        "install-service", help="write a systemd unit for `estate-hub serve`",
        description="Write /etc/systemd/system/estate-hub.service (its own system user "
                    "estate-hub, the data folder as its only writable state, no "
                    "capabilities, a system-call filter) and print the next commands.")
    svc.add_argument("--data", type=Path, default=None, metavar="DIR",
                     help="the service's data folder (default /var/lib/estate-hub)")
    svc.add_argument("--listen", default="127.0.0.1:2222", metavar="HOST:PORT",
                     help="address the service listens on (default 127.0.0.1:2222; "
                          "0.0.0.0:2222 for agents on other machines)")
    svc.add_argument("--print", action="store_true", dest="print_only",
                     help="print the unit instead of writing it")
    svc.set_defaults(func=_cmd_install_service)
    return p


class _Deprecated(argparse.Action):
    """A flag's old name: does what the new one does, and says which that is."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"estate-hub: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _group(sub: Any, name: str, help_text: str) -> Any:
    g = sub.add_parser(name, help=help_text, description=help_text)
    return g.add_subparsers(metavar="ACTION", required=True)


def _verb(sub: Any, name: str, help_text: str, json_flag: bool = False) -> Any:
    v = sub.add_parser(name, help=help_text, description=help_text)
    v.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="hub data folder (default: $ESTATE_HUB_DATA or the hub's default)")
    v.add_argument("--store", type=_store_url, default=None, metavar="URL",
                   help="the store: sqlite:///PATH, or postgresql://HOST/DATABASE with the "
                        "password in ~/.pgpass (default: $ESTATE_HUB_STORE, else estate.db "
                        "in the data folder)")
    v.add_argument("--allow-open-data-dir", action="store_true",
                   help="use a data folder other users can enter (mode not 0700) instead of "
                        "refusing; only when its parent keeps them out")
    if json_flag:
        v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return v


# --- argument types: each error names the problem ---------------------------------------

def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 3600")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1000000, "
                                         f"got {text!r}")
    return int(text)


def _early_drop(text: str) -> tuple[int, int]:
    start, sep, percent = text.partition(":")
    if not (sep and start.isdigit() and percent.isdigit() and int(percent) <= 100
            and 0 < int(start) <= 1_000_000):
        raise argparse.ArgumentTypeError(f"expected START:PERCENT such as 20:30, got {text!r}")
    return int(start), int(percent)


def _penalty(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        pair = (_seconds(low), _seconds(high)) if sep else None
    except argparse.ArgumentTypeError:
        pair = None
    if pair is None or pair[0] > pair[1]:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX seconds such as 30:600, "
                                         f"got {text!r}")
    return pair


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 1000000, "
                                         f"got {text!r}")
    return int(text)


def _duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d{1,6})([mhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 24h or 7d, got {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    value = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
    if not timedelta(minutes=1) <= value <= timedelta(days=365):
        raise argparse.ArgumentTypeError("expected a duration from 1m to 365d")
    return value


def _name(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError("expected 1 to 128 printable characters")
    return text


def _date(text: str) -> Any:
    from estate.inventory.store import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-01-31 or "
                                         f"2026-01-31T12:00:00Z, got {text!r}") from None


def _operator_name(text: str) -> str:
    from estate.inventory.protocol import ENROL_USER, OPERATOR_NAME

    if not OPERATOR_NAME.match(text) or text == ENROL_USER:
        raise argparse.ArgumentTypeError(
            f"expected 1 to 32 lower-case letters, digits, '.', '_' or '-', starting with a "
            f"letter (and not 'enrol'), got {text!r}")
    return text


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"estate-hub: --listen: expected HOST:PORT, got {text!r}")
    return host, int(port)


# --- verbs ----------------------------------------------------------------------------

def _data(args: argparse.Namespace) -> Path:
    return args.data or default_data_dir()


def _store_url(text: str) -> Any:
    from estate.inventory.store import StoreUrl, StoreUrlError

    try:
        return StoreUrl.parse(text)
    except StoreUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--store: ")) from None


def _export_store_url(text: str) -> Any:
    url = _store_url(text)
    if url.dialect != "postgresql":
        raise argparse.ArgumentTypeError("an export store is a PostgreSQL standby "
                                         "(postgresql://HOST/DATABASE)")
    return url


def _chosen_store(args: argparse.Namespace) -> Any:
    """--store, else $ESTATE_HUB_STORE, else None (the data folder's SQLite file)."""
    from estate.inventory.store import ENV_VAR, StoreUrl

    if getattr(args, "store", None) is not None:
        return args.store
    env = os.environ.get(ENV_VAR)
    return StoreUrl.parse(env, f"${ENV_VAR}") if env else None


def _store(args: argparse.Namespace) -> StoreInterface:
    from estate.inventory.store import Store, open_store

    data, url = _data(args), _chosen_store(args)
    if url is None and not Store.exists(data):
        raise SystemExit(f"estate-hub: no hub data in {data} (run `estate-hub serve --data "
                         f"{data}` once, or pass --data or --store)")
    return open_store(url, data)


def _actor() -> str:
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"admin:uid{os.getuid()}"


def _cmd_serve(args: argparse.Namespace) -> int:
    from estate.inventory.hub._door import DoorLimits
    from estate.inventory.hub._settings import HubSettings
    from estate.inventory.private_files import private_dir

    host, port = _parse_listen(args.listen)
    store_url = _chosen_store(args)
    if args.export_store is not None and (store_url is None or store_url.dialect != "postgresql"):
        # A standby copies a PostgreSQL primary: there is none of an SQLite store.
        print("estate-hub: --export-store: a standby of a PostgreSQL store; this hub's store "
              "is SQLite (--store postgresql://... to use one)", file=sys.stderr)
        return Exit.USAGE
    # Refuse an open data folder before the host key or the store is written into it.
    private_dir(_data(args))
    _setup_logging(args.verbose)
    settings = HubSettings(data_dir=_data(args), store_url=store_url,
                           export_store_url=args.export_store, host=host, port=port,
                           login_timeout_s=args.login_timeout,
                           max_unauthenticated=args.max_unauthenticated,
                           handshake_timeout_s=args.handshake_timeout,
                           door=DoorLimits(rate_per_s=args.connection_rate,
                                           burst=args.connection_burst,
                                           per_source=args.max_unauthenticated_per_source,
                                           drop_start=args.early_drop[0],
                                           drop_rate=args.early_drop[1] / 100,
                                           reserve=args.known_source_reserve,
                                           penalty_after=args.penalty_after,
                                           penalty_min_s=args.penalty[0],
                                           penalty_max_s=args.penalty[1]),
                           watchers_per_operator=args.watchers_per_operator,
                           max_watchers=args.max_watchers,
                           keepalive_interval_s=args.keepalive,
                           retention=timedelta(days=args.retention_days),
                           sessions_per_operator=args.sessions_per_operator,
                           sessions_per_host=args.sessions_per_host,
                           history=timedelta(days=args.history_days),
                           report_burst=args.report_burst,
                           max_buffered_input=args.max_buffered_input * 1024 * 1024,
                           max_export_requests=args.max_export_requests * 1024 * 1024,
                           max_answer_bytes=args.max_answer_bytes * 1024 * 1024,
                           max_answer_size=args.max_answer_size * 1024 * 1024,
                           reports_per_interval=args.reports_per_interval,
                           min_report_interval_s=args.min_report_interval,
                           agent_bytes_per_day=args.agent_bytes_per_day * 1024 * 1024)
    return asyncio.run(_serve(settings))


def _setup_logging(verbose: bool) -> None:
    """One line per event on stderr, UTC timestamps: connections, logins, refusals, errors."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s",
                                  "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("estate.hub").setLevel(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.INFO if verbose else logging.WARNING)


async def _serve(settings: Any) -> int:
    from estate.inventory.hub._hub import Hub

    hub = Hub(settings)
    try:
        await hub.start()
    except OSError as exc:
        print(f"estate-hub: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return Exit.FAIL
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = "created" if hub.host_key_created else "loaded"
    print(f"estate-hub: host key {hub.fingerprint} ({state})")
    print(f"estate-hub: data in {settings.data_dir}")
    print(f"estate-hub: store {hub.store_name}")
    print(f"estate-hub: listening on {settings.host}:{hub.port}", flush=True)
    await stop.wait()
    print("estate-hub: stopping (storing what is queued)", flush=True)
    await hub.stop()
    return Exit.OK


def _cmd_store_migrate(args: argparse.Namespace) -> int:
    from estate.inventory.store import migrate_store

    url = _chosen_store(args)
    before, after = migrate_store(url, None if url else _data(args))
    where = url or _data(args) / "estate.db"
    if before == after:
        print(f"estate-hub: the store at {where} is at schema version {after}: nothing to do")
    else:
        print(f"estate-hub: migrated the store at {where} from schema version {before} "
              f"to {after}")
    return Exit.OK


def _cmd_store_copy(args: argparse.Namespace) -> int:
    from estate.inventory.errors import StoreCopyRefused
    from estate.inventory.store import copy_store

    source = args.source or _chosen_store(args)
    where = source or _data(args) / "estate.db"
    try:
        result = copy_store(source, args.destination, None if source else _data(args),
                            progress=_CopyProgressLines())
    except StoreCopyRefused as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    if result.differences:
        print(f"estate-hub: the copy differs from the source in: "
              f"{'; '.join(result.differences)} (was either store written during the copy?)",
              file=sys.stderr)
        return Exit.FAIL
    print(f"estate-hub: copied the store at {where} to {args.destination}: {result.rows} "
          f"rows in {len(result.counts)} tables; the row counts and the last audit hash match")
    return Exit.OK


class _CopyProgressLines:
    """`store copy`'s progress on stderr: a line when a table is done, and every few seconds
    while a long one is copied."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self.last_line = time.monotonic()

    def __call__(self, step: CopyProgress) -> None:
        now = time.monotonic()
        if not step.done and now - self.last_line < self.EVERY_S:
            return
        self.last_line = now
        pace = f", {step.rows_per_s:,.0f} rows/s" if step.rows_per_s else ""
        print(f"estate-hub: {step.table}: {step.copied:,} / {step.total:,} rows{pace}",
              file=sys.stderr, flush=True)


def _cmd_token_create(args: argparse.Namespace) -> int:
    from estate.inventory.hub._keys import fingerprint, load_or_create_host_key
    from estate.inventory.hub._tokens import make_token

    key, _ = load_or_create_host_key(_data(args))
    store = _store_or_create(args)
    token_id, secret, expires = store.create_token(args.agency, args.site, args.uses, args.ttl,
                                                   _actor())
    print(make_token(token_id, secret, fingerprint(key), args.hub_address))
    print(f"token {token_id}: {args.uses} use(s) for {args.agency} / {args.site}, expires "
          f"{expires:%Y-%m-%d %H:%M} UTC. Shown once: the hub keeps only its hash.",
          file=sys.stderr)
    return Exit.OK


def _store_or_create(args: argparse.Namespace) -> StoreInterface:
    from estate.inventory.store import open_store

    return open_store(_chosen_store(args), _data(args))


def _cmd_token_list(args: argparse.Namespace) -> int:
    rows = _store(args).tokens()
    return _print(args, rows, ("id", "agency", "site", "state", "uses", "max_uses",
                               "expires_at"))


def _outcome(done: bool, success: str, missing: str) -> int:
    """Report a verb that acts on one record: what happened, or that there was none."""
    if done:
        print(success)
        return Exit.OK
    print(f"estate-hub: {missing}", file=sys.stderr)
    return Exit.FAIL


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    return _outcome(_store(args).revoke_token(args.token_id, _actor()),
                    f"token {args.token_id} revoked", f"no active token {args.token_id!r}")


def _cmd_agent_list(args: argparse.Namespace) -> int:
    from estate.inventory.store import remote_state

    rows = [{**a.as_dict(),
             "state": "revoked" if a.revoked_at else
             "connected" if a.connected else "enrolled",
             "remote": remote_state(a.remote_access, a.remote_offered, a.connected,
                                    a.revoked_at)}
            for a in _store(args).agents()]
    return _print(args, rows, ("id", "agency", "site", "state", "remote", "enrolled_hostname",
                               "enrolled_at", "key_fingerprint"))


def _cmd_agent_revoke(args: argparse.Namespace) -> int:
    return _outcome(_store(args).revoke_agent(args.agent_id, _actor()),
                    f"agent {args.agent_id} revoked: its key is refused from its next login",
                    f"no active agent {args.agent_id!r}")


def _cmd_agent_remote(args: argparse.Namespace) -> int:
    verb = "allowed" if args.allowed else "denied"
    return _outcome(_store(args).set_remote_access(args.agent_id, args.allowed, _actor()),
                    f"remote access to {args.agent_id} {verb}",
                    f"no agent {args.agent_id!r}")


def _cmd_sessions(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.end is not None:
        return _outcome(store.request_session_end(args.end, _actor()),
                        f"session {args.end}: the hub ends it within a second",
                        f"no live session {args.end}")
    rows = [{**s.as_dict(), "state": "live" if s.ended_at is None else "ended"}
            for s in store.sessions(live_only=args.live, limit=args.limit)]
    return _print(args, rows, ("id", "state", "operator", "agent_id", "hostname", "started_at",
                               "ended_at", "bytes_to_host", "bytes_from_host", "end_reason"))


def _cmd_operator_add(args: argparse.Namespace) -> int:
    import asyncssh

    try:
        key = asyncssh.import_public_key(args.key.read_bytes())
    except OSError as exc:
        print(f"estate-hub: --key: cannot read {args.key}: {exc.strerror}", file=sys.stderr)
        return Exit.USAGE
    except (asyncssh.KeyImportError, ValueError) as exc:
        print(f"estate-hub: --key: {args.key} is not an OpenSSH public key ({exc})",
              file=sys.stderr)
        return Exit.USAGE
    agencies = None if args.agencies.strip() == "all" else \
        [a.strip() for a in args.agencies.split(",") if a.strip()]
    if agencies is not None and not agencies:
        print("estate-hub: --agencies: name at least one agency, or all", file=sys.stderr)
        return Exit.USAGE
    fp = key.get_fingerprint("sha256")
    try:
        _store_or_create(args).add_operator(
            args.name, key.export_public_key("openssh").decode().strip(), fp, args.role,
            agencies, _actor())
    except ValueError as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    print(f"operator {args.name} ({args.role}, agencies: {args.agencies}) may log in with "
          f"{fp}")
    return Exit.OK


def _cmd_operator_list(args: argparse.Namespace) -> int:
    return _print(args, _store(args).operators(), ("name", "role", "agencies",
                                                   "key_fingerprint", "created_at"))


def _cmd_operator_remove(args: argparse.Namespace) -> int:
    return _outcome(_store(args).remove_operator(args.name, _actor()),
                    f"operator {args.name} removed", f"no operator {args.name!r}")


def _cmd_hosts(args: argparse.Namespace) -> int:
    rows = [h.as_dict() for h in _store(args).hosts()]
    for r in rows:
        if r["identity_conflict"]:
            r["status"] += " (same serial/uuid as " + r["identity_conflict"] + ")"
        if r["clock_skewed"]:
            r["status"] += f" (agent clock off by {r['clock_skew_s']:+.0f} s)"
    return _print(args, rows, ("agent_id", "hostname", "agency", "site", "status",
                               "last_seen"), widest=80)


def _cmd_changes(args: argparse.Namespace) -> int:
    rows = _store(args).changes(args.host, args.since)
    return _print(args, rows, ("at", "hostname", "agent_id", "kind", "subject", "old_value",
                               "new_value"))


def _cmd_audit(args: argparse.Namespace) -> int:

    store = _store(args)
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
    _print(args, page, ("id", "at", "actor", "action", "target", "detail"))
    if more:
        # On stderr, so stdout stays one table or one JSON document.
        print(f"more rows: add --before-id {page[-1]['id']} (with the same filters) for the "
              f"next page", file=sys.stderr)
    return Exit.OK


def _cmd_install_service(args: argparse.Namespace) -> int:
    import pwd

    from estate.inventory.hub._systemd import DATA_DIR, UNIT_PATH, USER, install, unit_text

    _parse_listen(args.listen)
    # Not default_data_dir(): that depends on who runs this verb, the unit on nobody.
    data = (args.data or DATA_DIR).absolute()
    if args.print_only:
        sys.stdout.write(unit_text(args.listen, data))
        return Exit.OK
    try:
        path = install(args.listen, data)
    except OSError as exc:
        print(f"estate-hub: cannot write {UNIT_PATH}: {exc.strerror} (run as root, or use "
              f"--print)", file=sys.stderr)
        return Exit.FAIL
    steps = []
    try:
        pwd.getpwnam(USER)
    except KeyError:
        steps.append(f"useradd --system --home-dir {data} --shell /usr/sbin/nologin {USER}")
    if not str(data).startswith("/var/lib/"):
        steps.append(f"install -d -o {USER} -g {USER} -m 0700 {data}")
    steps.append("systemctl daemon-reload && systemctl enable --now estate-hub")
    print(f"wrote {path}. Then:\n" + "".join(f"  {s}\n" for s in steps)
          + f"Admin verbs run as the hub's user: sudo -u {USER} estate-hub hosts --data {data}")
    return Exit.OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    _parse_listen(args.hub)
    try:
        return asyncio.run(_simulate(args))
    except KeyboardInterrupt:
        return Exit.OK


async def _simulate(args: argparse.Namespace) -> int:
    from estate.inventory import simulate
    from estate.inventory.hub._keys import load_or_create_host_key
    from estate.inventory.store import Store

    data = _data(args)
    if _chosen_store(args) is None and not Store.exists(data):
        raise SystemExit(f"estate-hub: no hub data in {data}; simulate runs on the hub's host "
                         f"(pass --data)")
    key, _ = load_or_create_host_key(data)
    sim = simulate.Simulator(args.hub, key, interval_s=args.interval)
    idents = await _simulated_identities(sim, args, args.agents)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop.set)
    print(f"simulate: running {len(idents)} agents against {args.hub}, a report every "
          f"{args.interval:g} s each; Ctrl-C stops", flush=True)
    tasks = [asyncio.create_task(sim.run_agent(i)) for i in idents]
    started = time.monotonic()
    while not sim.stop.is_set():
        try:
            await asyncio.wait_for(sim.stop.wait(), 5)
        except asyncio.TimeoutError:
            pass
        st = sim.stats
        print(f"simulate: {st.connected} connected, {st.acked} reports acked, "
              f"{st.errors} rejected, {st.reconnects} reconnects", flush=True)
        if args.duration and time.monotonic() - started >= args.duration:
            sim.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Exit.OK


async def _simulated_identities(sim: Any, args: argparse.Namespace, n: int) -> list[Any]:
    """Reuse the simulated agents of earlier runs; enrol (for real) the ones missing."""
    from estate.inventory import simulate
    from estate.inventory.hub._tokens import make_token
    from estate.inventory.store import open_store

    data = _data(args)
    path = data / "simulated.json"
    idents = simulate.load_identities(path)[:n]
    missing = list(range(len(idents), n))
    if not missing:
        return idents
    where = simulate.placements(n)
    store: StoreInterface = open_store(_chosen_store(args), data)
    tokens = {}
    for agency, site in sorted({where[i] for i in missing}):
        uses = sum(1 for i in missing if where[i] == (agency, site))
        token_id, secret, _ = store.create_token(agency, site, uses, timedelta(hours=2),
                                                 "simulate")
        tokens[(agency, site)] = make_token(token_id, secret,
                                            sim.host_key.get_fingerprint("sha256"))
    store.close()
    gate = asyncio.Semaphore(16)
    done = [0]

    async def one(i: int) -> Any:
        async with gate:
            ident = await sim.enrol(i, tokens[where[i]], *where[i])
            done[0] += 1
            if done[0] % 100 == 0 or done[0] == len(missing):
                print(f"simulate: enrolled {done[0]}/{len(missing)}", flush=True)
            return ident

    idents += await asyncio.gather(*(one(i) for i in missing))
    simulate.save_identities(path, idents)
    return idents


def _print(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]],
           columns: tuple[str, ...], widest: int = 48) -> int:
    from estate.inventory.sanitise import dumps

    if args.json:
        # Hostnames, failure reasons and audit details come from agents and clients: dumps
        # escapes the C1 controls and bidi overrides that plain JSON passes through.
        print(dumps([dict(r) for r in rows], indent=1))
        return Exit.OK
    if not rows:
        print("(none)")
        return Exit.OK
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [min(widest, max(len(c), *(len(row[i]) for row in table)))
              for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v[:w].ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def _cell(value: Any) -> str:
    """Plain one-line text: agent-supplied strings must not move or colour the terminal."""
    from estate.inventory.sanitise import plain

    return "-" if value is None else plain(value)


if __name__ == "__main__":
    sys.exit(main())
