"""`estate-hub alerts check|test|queue`: validate a rules file before a hub serves it (and
the loading `serve --alerts` shares), send one test message through a channel, and list the
notifications waiting or given up."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.hub._cli_args import group, verb
from estate.inventory.protocol import Exit
from estate.inventory.sanitise import quoted

if TYPE_CHECKING:
    from estate.inventory.health.alerts import Rules


def add_verbs(sub: Any) -> None:
    """Add the `alerts` group and its verbs."""
    alerts = group(sub, "alerts", "alert rules and channels: check a file, test a channel, "
                                  "list the queue")
    check = alerts.add_parser(
        "check", help="validate a rules file and list its channels and rules",
        description="Validate an alert rules file (TOML) as `serve --alerts` would: print its "
                    "channels and rules and exit 0, or print each problem (naming the "
                    "channel or rule and the key) and exit 1.")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=_cmd_check)
    test = alerts.add_parser(
        "test", help="send one test message through a channel",
        description="Send one test message through CHANNEL of the rules file, for real, and "
                    "say whether it was accepted (exit 0) or why not (exit 1).")
    test.add_argument("channel", metavar="CHANNEL")
    test.add_argument("--rules", type=Path, required=True, metavar="FILE",
                      help="the rules file that defines CHANNEL")
    test.set_defaults(func=_cmd_test)
    queue = verb(alerts, "queue", "notifications waiting to be sent or given up, newest "
                                  "first", json_flag=True)
    queue.add_argument("--state", choices=("pending", "failed", "sent", "all"), default=None,
                       help="only these (default: pending and failed)")
    queue.add_argument("--limit", type=int, default=100, metavar="N",
                       help="at most N notifications (default 100)")
    queue.set_defaults(func=_cmd_queue)


def load_or_report(path: Path) -> Rules | None:
    """The rules at `path`, or None once their problems are printed."""
    from estate.inventory.health.alerts import RulesError, load_rules

    try:
        return load_rules(path)
    except RulesError as exc:
        print(f"estate-hub: alert rules {quoted(exc.source, 200)}: {len(exc.problems)} "
              f"problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {quoted(problem, 400)[1:-1]}", file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    rules = load_or_report(args.file)
    if rules is None:
        return Exit.FAIL
    print(f"alert rules {quoted(str(args.file), 200)} sha256 {rules.hash}")
    print(f"{len(rules.channels)} channels:")
    for name, c in rules.channels.items():
        print(f"  {name:<20} {c.type:<8} {_channel_line(c)}")
    print(f"{len(rules.rules)} rules:")
    for r in rules.rules:
        scope = []
        if r.threshold is not None:
            scope.append(f"over {r.threshold:g}")
        if r.agencies is not None:
            scope.append("agencies " + ", ".join(r.agencies))
        if r.sites is not None:
            scope.append("sites " + ", ".join(r.sites))
        if r.hosts:
            scope.append(f"hosts {r.hosts!r}")
        print(f"  {r.name:<24} {r.condition:<16} {r.severity:<8} -> {', '.join(r.channels)}"
              + (f" ({'; '.join(scope)})" if scope else ""))
    if not rules.rules:
        print("  (none: nothing will be sent)")
    return Exit.OK


def _channel_line(c: Any) -> str:
    from estate.inventory.health.alerts import EmailChannel, WebhookChannel

    if isinstance(c, EmailChannel):
        return (f"{c.host}:{c.port} {'STARTTLS' if c.starttls else 'no TLS'} -> "
                f"{', '.join(c.to)}")
    if isinstance(c, WebhookChannel):
        return f"{c.format} to {_host_of(c.url)}"
    return f"{c.transport} {c.host}:{c.port} facility {c.facility}"


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    return str(urlsplit(url).hostname)  # never the whole URL: it may carry a secret


def _cmd_test(args: argparse.Namespace) -> int:
    from estate.inventory.health.alerts import Message, SendError, send
    from estate.inventory.store import iso, utcnow

    rules = load_or_report(args.rules)
    if rules is None:
        return Exit.FAIL
    channel = rules.channels.get(args.channel)
    if channel is None:
        print(f"estate-hub: alerts test: no channel {quoted(args.channel, 64)} in "
              f"{quoted(str(args.rules), 200)} (channels: {', '.join(rules.channels) or 'none'})",
              file=sys.stderr)
        return Exit.FAIL
    now = iso(utcnow())
    hub = socket.gethostname()
    message = Message.make(
        rule="test", condition="test", event="test", severity="info",
        title=f"Estate test alert from {hub}",
        lines=[f"A test message from estate-hub on {hub}, sent by `estate-hub alerts test "
               f"{args.channel}` at {now}.", "Alerts through this channel reach you."],
        at=now, thread=f"test:{now}", facts=[("Channel", args.channel), ("Hub", hub)])
    try:
        send(channel, message)
    except SendError as exc:
        print(f"estate-hub: alerts test: channel {args.channel}: not sent: "
              f"{quoted(str(exc), 400)[1:-1]}", file=sys.stderr)
        return Exit.FAIL
    print(f"channel {args.channel} ({channel.type}): test message sent")
    return Exit.OK


def _cmd_queue(args: argparse.Namespace) -> int:
    from estate.inventory.health.alerts import Message
    from estate.inventory.hub._cli_shared import existing_store, print_rows

    states = {None: ["pending", "failed"], "all": ["pending", "failed", "sent"]}.get(
        args.state, [args.state])
    rows = []
    for n in existing_store(args).notifications(states, max(1, min(args.limit, 100_000))):
        try:
            title = Message.from_json(n.payload).title
        except (ValueError, TypeError, KeyError):
            title = None
        row = {**n._asdict(), "title": title}
        del row["payload"]
        rows.append(row)
    return print_rows(args, rows, ("id", "state", "channel", "rule", "attempts", "next_at",
                                   "last_error", "title"))
