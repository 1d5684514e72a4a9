"""`estate-hub`: run the hub and administer it on the hub's own host.

Admin verbs act on the store directly (SQLite in WAL mode, or PostgreSQL, lets them run beside
`serve`), as whoever can read the data folder or log in to the database: that permission is the
access control. This module parses the command line, runs `serve` and `install-service`, and
dispatches the other verbs to the `_*_verbs.py` modules beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from estate.inventory.hub import (  # each adds its verbs to the parser
    _admin_verbs,
    _alert_verbs,
    _key_verbs,
    _listing_verbs,
    _policy_verbs,
    _probe_verbs,
    _simulate_verb,
    _store_verbs,
)
from estate.inventory.hub._cli_args import (
    _positive_int,
    _seconds,
    _share,
    _store_url,
    parse_listen,
    verb,
    whole_number,
)
from estate.inventory.hub._cli_shared import chosen_store, data_dir, on_stop_signals
from estate.inventory.protocol import Exit

# `serve --workers`: more processes than a machine has cores only add context switches; this
# bounds a typo, not a tuning choice.
MAX_WORKERS = 256
# `serve --commit-delay-ms`: past it an agent's ack waits longer than a commit ever takes.
MAX_COMMIT_DELAY_MS = 100


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
    # `serve --workers` starts each worker with the same arguments.
    args.argv = list(sys.argv[1:] if argv is None else argv)
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

    serve = verb(sub, "serve", "run the hub (SSH gateway, store, change history)")
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
    # Idle cost (docs/benchmarks.md "Idle connections and keepalives"): the kernel's TCP
    # keepalive finds dead peers for almost no hub CPU; the SSH probe is the slow end-to-end
    # backstop, far past the agents' report interval so a reporting agent is never probed.
    serve.add_argument("--keepalive", type=_seconds, default=1800.0, metavar="SECONDS",
                       help="SSH probe of a connection silent this long; 3 missed probes "
                            "close it (default 1800; dead peers are found sooner by "
                            "--tcp-keepalive)")
    serve.add_argument("--tcp-keepalive", type=_tcp_keepalive, default=None,
                       metavar="IDLE:INTERVAL:COUNT",
                       help="TCP keepalive on every connection: after IDLE seconds silent "
                            "the kernel probes every INTERVAL seconds and drops the "
                            "connection after COUNT unanswered probes (default 120:30:4, a "
                            "vanished peer is dropped within 4 minutes)")
    serve.add_argument("--metrics", type=_metrics_address, default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics on http://HOST:PORT/metrics, without "
                            "authentication: keep it on loopback or firewall it (default: "
                            "off; worker I of --workers serves on PORT+I-1)")
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
    serve.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                       help="run N hub processes on the one --listen port (SO_REUSEPORT), "
                            "each its own writer to the store, under one parent that "
                            "restarts a worker that dies; needs a PostgreSQL --store and a "
                            "fixed port (default 1: one process)")
    # Set by the parent of --workers on the command line of each worker it starts.
    serve.add_argument("--worker", type=_worker_count, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--max-agents", type=_count, default=0, metavar="N",
                       help="agents one hub process holds at once; past it an agent logging "
                            "in is told `busy` with a retry_after of 30-90 s, to come back or "
                            "go to another hub; operators are never refused by it (default "
                            "0: no limit)")
    serve.add_argument("--commit-delay-ms", type=_commit_delay, default=5, metavar="MS",
                       help="how long the writer waits after a report for more to share its "
                            "commit, when the last commit held more than one: fewer, larger "
                            "transactions for a longer ack (0 to 100; default 5)")
    serve.add_argument("--hub-name", type=_hub_name, default=None, metavar="NAME",
                       help="this hub's name in the store's registry of hubs (`estate-hub "
                            "hubs`): a restart under the same name marks offline the agents "
                            "its last run held, and no others (default HOSTNAME:PORT)")
    serve.add_argument("--heartbeat", type=_seconds, default=10.0, metavar="SECONDS",
                       help="how often the hub tells the registry it is alive, with the "
                            "agents it holds and its reports/s (default 10)")
    serve.add_argument("--hub-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                       help="a hub silent this long is taken for dead by the others, which "
                            "mark its agents offline: at least twice --heartbeat (default "
                            "30)")
    serve.add_argument("--policy", type=Path, default=None, metavar="FILE",
                       help="the compliance policy (TOML; check it with `estate-hub policy "
                            "check FILE`); default: the one shipped with Estate "
                            "(docs/compliance.md)")
    # Incidents (docs/configuration.md "Incidents and thresholds"): one hub of the store at a
    # time correlates presence and probe failures into site, service and host incidents.
    serve.add_argument("--outage-window", type=_seconds, default=120.0, metavar="SECONDS",
                       help="a site outage is hosts going offline within this long of each "
                            "other (default 120)")
    serve.add_argument("--outage-share", type=_share, default=0.5, metavar="SHARE",
                       help="...at least this share of the site's hosts (default 0.5)")
    serve.add_argument("--outage-min-hosts", type=_positive_int, default=3, metavar="N",
                       help="...and at least N of them (default 3)")
    serve.add_argument("--host-offline-grace", type=_seconds, default=None, metavar="SECONDS",
                       help="a host offline this long outside a site outage opens a host "
                            "incident (default: --outage-window)")
    serve.add_argument("--resolve-hold", type=_seconds, default=300.0, metavar="SECONDS",
                       help="an incident resolves once clear this long; a recurrence within "
                            "it keeps (or reopens) the same incident (default 300)")
    serve.add_argument("--shared-min-hosts", type=_positive_int, default=3, metavar="N",
                       help="online hosts of one site failing the same probe that make a "
                            "shared-service incident (default 3)")
    serve.add_argument("--shared-max-per-site", type=_positive_int, default=8, metavar="N",
                       help="shared-service incidents open at once per site; past it no more "
                            "open there (logged and audited once) (default 8)")
    serve.add_argument("--no-incidents", action="store_true",
                       help="never run the incident correlator on this hub (another hub of "
                            "the same store may)")
    serve.add_argument("--alerts", type=Path, default=None, metavar="FILE",
                       help="alert rules and channels (TOML; check it with `estate-hub alerts "
                            "check FILE`): incidents and host conditions sent by e-mail, "
                            "webhook or syslog (docs/configuration.md); default: no alerts")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="also log asyncssh's own protocol messages")
    serve.set_defaults(func=_cmd_serve)

    # In this order: it is the order `estate-hub --help` lists the verbs in.
    _store_verbs.add_verbs(sub)  # store migrate|copy
    _key_verbs.add_verbs(sub)  # key export|import|rotate|activate|status
    _admin_verbs.add_verbs(sub)  # token, agent, operator
    _listing_verbs.add_verbs(sub)  # hosts, hubs, changes, audit, sessions
    _simulate_verb.add_verbs(sub)
    _policy_verbs.add_verbs(sub)  # policy check
    _probe_verbs.add_verbs(sub)  # probes set|list|clear
    _alert_verbs.add_verbs(sub)  # alerts check|test|queue

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


# --- serve's argument types: each error names the problem -------------------------------

_worker_count = whole_number(1, MAX_WORKERS)
_count = whole_number(0, 1_000_000)
_commit_delay = whole_number(0, MAX_COMMIT_DELAY_MS, "milliseconds")


def _tcp_keepalive(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if not (len(parts) == 3 and all(p.isdigit() for p in parts)
            and 0 < int(parts[0]) <= 7200 and 0 < int(parts[1]) <= 600
            and 0 < int(parts[2]) <= 30):
        raise argparse.ArgumentTypeError(
            f"expected IDLE:INTERVAL:COUNT such as 120:30:4 (IDLE up to 7200 s, INTERVAL up "
            f"to 600 s, COUNT up to 30), got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _metrics_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT such as 127.0.0.1:9464, got "
                                         f"{text!r}")
    return host, int(port)


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


def _hub_name(text: str) -> str:
    if not 1 <= len(text) <= 100 or not text.isprintable() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected 1 to 100 printable characters without "
                                         f"spaces, got {text!r}")
    return text


def _export_store_url(text: str) -> Any:
    url = _store_url(text)
    if url.dialect != "postgresql":
        raise argparse.ArgumentTypeError("an export store is a PostgreSQL standby "
                                         "(postgresql://HOST/DATABASE)")
    return url


# --- verbs ----------------------------------------------------------------------------

def _cmd_serve(args: argparse.Namespace) -> int:
    from estate.inventory.hub._door import DoorLimits
    from estate.inventory.hub._settings import HubSettings
    from estate.inventory.private_files import private_dir
    from estate.inventory.tcp_keepalive import TcpKeepalive

    host, port = parse_listen(args.listen)
    store_url = chosen_store(args)
    if args.export_store is not None and (store_url is None or store_url.dialect != "postgresql"):
        # A standby copies a PostgreSQL primary: there is none of an SQLite store.
        print("estate-hub: --export-store: a standby of a PostgreSQL store; this hub's store "
              "is SQLite (--store postgresql://... to use one)", file=sys.stderr)
        return Exit.USAGE
    if args.hub_timeout < 2 * args.heartbeat:
        # One late heartbeat must not get a live hub's agents marked offline.
        print(f"estate-hub: --hub-timeout {args.hub_timeout:g}: at least twice --heartbeat "
              f"({2 * args.heartbeat:g} s)", file=sys.stderr)
        return Exit.USAGE
    if args.worker > args.workers:
        print(f"estate-hub: --worker {args.worker}: there are {args.workers} workers",
              file=sys.stderr)
        return Exit.USAGE
    if args.workers > 1 and not args.worker:
        # Checked here, in the parent: a worker is only ever started once they passed.
        if store_url is None or store_url.dialect != "postgresql":
            print(f"estate-hub: --workers {args.workers}: several hub processes need a "
                  f"PostgreSQL store (--store postgresql://...); SQLite takes one writer "
                  f"process", file=sys.stderr)
            return Exit.USAGE
        if port == 0:
            print(f"estate-hub: --workers {args.workers}: the workers share one port; give "
                  f"--listen a fixed one, not port 0", file=sys.stderr)
            return Exit.USAGE
    # A bad policy refuses the start, naming each problem, before anything is written.
    policy = _policy_verbs.load_or_report(args.policy)
    if policy is None:
        return Exit.USAGE
    # So do bad alert rules: a hub must not run believing it alerts when it cannot.
    alerts = _alert_verbs.load_or_report(args.alerts) if args.alerts else None
    if args.alerts and alerts is None:
        return Exit.USAGE
    # Refuse an open data folder before the host key or the store is written into it.
    private_dir(data_dir(args))
    _setup_logging(args.verbose, f"w{args.worker}" if args.worker else "")
    if args.workers > 1 and not args.worker:
        return _supervise_workers(args, host, port, store_url)
    settings = HubSettings(data_dir=data_dir(args), store_url=store_url,
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
                           tcp_keepalive=TcpKeepalive(*args.tcp_keepalive or ()),
                           metrics=args.metrics,
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
                           agent_bytes_per_day=args.agent_bytes_per_day * 1024 * 1024,
                           max_agents=args.max_agents, worker=args.worker,
                           commit_delay_ms=args.commit_delay_ms,
                           hub_id=_hub_id(args, port), heartbeat_s=args.heartbeat,
                           hub_timeout_s=args.hub_timeout, policy=policy,
                           incidents=_thresholds(args), alerts=alerts)
    return asyncio.run(_serve(settings, args.workers))


def _thresholds(args: argparse.Namespace) -> Any:
    """The correlator's thresholds from serve's flags; None with --no-incidents."""
    from estate.inventory.health._correlate import Thresholds

    if args.no_incidents:
        return None
    return Thresholds(window_s=args.outage_window, share=args.outage_share,
                      min_hosts=args.outage_min_hosts, grace_s=args.host_offline_grace,
                      hold_s=args.resolve_hold, shared_min_hosts=args.shared_min_hosts,
                      shared_max_per_site=args.shared_max_per_site)


def _hub_id(args: argparse.Namespace, port: int) -> str:
    """This process's name in the store: --hub-name ("": the hub names itself by the port it
    bound); worker I of `serve --workers` appends "/wI" (its port is never 0)."""
    from estate.inventory.hub._settings import default_hub_id

    name = args.hub_name or ""
    return f"{name or default_hub_id(port)}/w{args.worker}" if args.worker else name


def _supervise_workers(args: argparse.Namespace, host: str, port: int, store_url: Any) -> int:
    """`serve --workers N`: make what the workers share once (the host key, the schema),
    then run and watch them (inventory/hub/_workers.py)."""
    from estate.inventory.hub._keys import fingerprint, load_or_create_host_key
    from estate.inventory.hub._workers import Supervisor
    from estate.inventory.store import migrate_store

    data = data_dir(args)
    # Created here, not by the workers: N processes racing to create it would each make
    # their own, and the agents pin one.
    key, created = load_or_create_host_key(data)
    migrate_store(store_url, None)
    print(f"estate-hub: host key {fingerprint(key)} ({'created' if created else 'loaded'})")
    print(f"estate-hub: data in {data}")
    print(f"estate-hub: store {store_url}")
    print(f"estate-hub: starting {args.workers} workers on {host}:{port}", flush=True)

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "estate.inventory.hub.cli", *args.argv,
                "--worker", str(index)]

    def ready() -> None:
        print(f"estate-hub: listening on {host}:{port} with {args.workers} workers",
              flush=True)

    status = Supervisor(command, args.workers).run(ready)
    print("estate-hub: all workers stopped", flush=True)
    return status


def _setup_logging(verbose: bool, worker: str = "") -> None:
    """One line per event on stderr, UTC timestamps: connections, logins, refusals, errors.
    A worker of `serve --workers` names itself on each line (w1, w2, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ " + (f"{worker} " if worker else "")
                                  + "%(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("estate.hub").setLevel(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.INFO if verbose else logging.WARNING)


async def _serve(settings: Any, workers: int = 1) -> int:
    from estate.inventory.hub._hub import Hub
    from estate.inventory.hub._workers import ready_line

    metrics = None
    if settings.metrics is not None:
        from estate.inventory.hub import _metrics

        host, port = settings.metrics
        port += max(0, settings.worker - 1) if port else 0  # one endpoint per worker
        try:
            metrics = _metrics.serve(host, port)
        except OSError as exc:
            print(f"estate-hub: --metrics: cannot listen on {host}:{port}: {exc.strerror}",
                  file=sys.stderr)
            return Exit.FAIL
        shown = f"[{host}]" if ":" in host else host
        print(f"estate-hub: metrics on http://{shown}:{_metrics.bound_port(metrics)}/metrics",
              flush=True)
    hub = Hub(settings)  # registers what the metrics read from it
    try:
        await hub.start()
    except OSError as exc:
        print(f"estate-hub: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return Exit.FAIL
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    if settings.worker:
        # The parent printed the host key, data and store; it waits for this line.
        print(ready_line(settings.worker, workers, settings.hub_id, os.getpid()), flush=True)
        watch = asyncio.get_running_loop().create_task(_stop_when_orphaned(stop))
    else:
        state = "created" if hub.host_key_created else "loaded"
        print(f"estate-hub: host key {hub.fingerprint} ({state})")
        print(f"estate-hub: data in {settings.data_dir}")
        print(f"estate-hub: store {hub.store_name}")
        print(f"estate-hub: listening on {settings.host}:{hub.port}", flush=True)
    await stop.wait()
    if settings.worker:
        watch.cancel()
        print(f"estate-hub: worker {settings.worker} stopping (storing what is queued)",
              flush=True)
    else:
        print("estate-hub: stopping (storing what is queued)", flush=True)
    await hub.stop()
    if metrics is not None:
        _metrics.stop(metrics)
    return Exit.OK


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose parent died (SIGKILL, a crash) stops rather than hold the port on its
    own: nobody would restart its siblings or stop it."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    logging.getLogger("estate.hub").warning("the parent of the workers is gone: stopping")
    stop.set()


def _cmd_install_service(args: argparse.Namespace) -> int:
    import pwd

    from estate.inventory.hub._systemd import DATA_DIR, UNIT_PATH, USER, install, unit_text

    parse_listen(args.listen)
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


if __name__ == "__main__":
    sys.exit(main())
