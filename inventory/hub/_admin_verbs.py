"""`estate-hub token|agent|operator ...`: who may enrol, report and log in: enrolment tokens,
enrolled agents (and remote access to their hosts), and operators."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from estate.inventory.hub._cli_args import (
    _duration,
    _name,
    _operator_name,
    _positive_int,
    group,
    verb,
)
from estate.inventory.hub._cli_shared import (
    actor,
    data_dir,
    existing_store,
    outcome,
    print_rows,
    store_or_create,
)
from estate.inventory.protocol import Exit


def add_verbs(sub: Any) -> None:
    """Add the `token`, `agent` and `operator` groups and their verbs."""
    token = group(sub, "token", "enrolment tokens")
    create = verb(token, "create", "create a token agents enrol with")
    create.add_argument("--agency", required=True, type=_name, help="agency the agents join")
    create.add_argument("--site", required=True, type=_name, help="site the agents are at")
    create.add_argument("--uses", type=_positive_int, default=1, metavar="N",
                        help="how many agents may enrol with it (default 1)")
    create.add_argument("--ttl", type=_duration, default=timedelta(hours=24),
                        metavar="DURATION", help="lifetime: 30m, 24h, 7d (default 24h)")
    create.add_argument("--hub-address", metavar="HOST:PORT",
                        help="address agents reach the hub at, carried in the token")
    create.set_defaults(func=_cmd_token_create)
    verb(token, "list", "list tokens and their state", json_flag=True).set_defaults(
        func=_cmd_token_list)
    revoke = verb(token, "revoke", "revoke a token so nobody can enrol with it")
    revoke.add_argument("token_id", metavar="TOKEN_ID")
    revoke.set_defaults(func=_cmd_token_revoke)

    agent = group(sub, "agent", "enrolled agents")
    verb(agent, "list", "list enrolled agents", json_flag=True).set_defaults(
        func=_cmd_agent_list)
    arevoke = verb(agent, "revoke", "revoke an agent: its key is refused at login")
    arevoke.add_argument("agent_id", metavar="AGENT_ID")
    arevoke.set_defaults(func=_cmd_agent_revoke)
    allow = verb(agent, "allow-remote", "allow remote access (estate ssh) to an agent's host; "
                                        "its agent must also set remote_access = true")
    allow.add_argument("agent_id", metavar="AGENT_ID")
    allow.set_defaults(func=_cmd_agent_remote, allowed=True)
    deny = verb(agent, "deny-remote", "deny remote access to an agent's host; its live "
                                      "sessions end within a second")
    deny.add_argument("agent_id", metavar="AGENT_ID")
    deny.set_defaults(func=_cmd_agent_remote, allowed=False)

    operator = group(sub, "operator", "operators: IT staff who use the console and API")
    oadd = verb(operator, "add", "register an operator and the key they log in with")
    oadd.add_argument("name", metavar="NAME", type=_operator_name,
                      help="login name: lower-case letters, digits, . _ -")
    oadd.add_argument("--key", required=True, type=Path, metavar="PUBKEY_FILE",
                      help="the operator's OpenSSH public key (e.g. ~/.ssh/id_ed25519.pub)")
    oadd.add_argument("--role", required=True, choices=("admin", "staff", "auditor"))
    oadd.add_argument("--agencies", required=True, metavar="A,B|all",
                      help="agencies the operator may see, comma-separated, or all")
    oadd.set_defaults(func=_cmd_operator_add)
    verb(operator, "list", "list operators", json_flag=True).set_defaults(
        func=_cmd_operator_list)
    oremove = verb(operator, "remove", "remove an operator: their key is refused from their "
                                       "next login")
    oremove.add_argument("name", metavar="NAME")
    oremove.set_defaults(func=_cmd_operator_remove)


def _cmd_token_create(args: argparse.Namespace) -> int:
    from estate.inventory.hub._keys import load_or_create_host_key
    from estate.inventory.hub._rotation import RotationRefused, read_state
    from estate.inventory.hub._tokens import make_token

    load_or_create_host_key(data_dir(args))
    try:  # during a rotation the token names both keys, so it enrols against either
        fingerprints = read_state(data_dir(args)).token_fingerprints()
    except RotationRefused as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    store = store_or_create(args)
    token_id, secret, expires = store.create_token(args.agency, args.site, args.uses, args.ttl,
                                                   actor())
    print(make_token(token_id, secret, fingerprints, args.hub_address))
    print(f"token {token_id}: {args.uses} use(s) for {args.agency} / {args.site}, expires "
          f"{expires:%Y-%m-%d %H:%M} UTC. Shown once: the hub keeps only its hash.",
          file=sys.stderr)
    return Exit.OK


def _cmd_token_list(args: argparse.Namespace) -> int:
    rows = existing_store(args).tokens()
    return print_rows(args, rows, ("id", "agency", "site", "state", "uses", "max_uses",
                                   "expires_at"))


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    return outcome(existing_store(args).revoke_token(args.token_id, actor()),
                   f"token {args.token_id} revoked", f"no active token {args.token_id!r}")


def _cmd_agent_list(args: argparse.Namespace) -> int:
    from estate.inventory.store import remote_state

    rows = [{**a.as_dict(),
             "state": "revoked" if a.revoked_at else
             "connected" if a.connected else "enrolled",
             "remote": remote_state(a.remote_access, a.remote_offered, a.connected,
                                    a.revoked_at)}
            for a in existing_store(args).agents()]
    return print_rows(args, rows, ("id", "agency", "site", "state", "remote", "enrolled_hostname",
                                   "enrolled_at", "key_fingerprint"))


def _cmd_agent_revoke(args: argparse.Namespace) -> int:
    return outcome(existing_store(args).revoke_agent(args.agent_id, actor()),
                   f"agent {args.agent_id} revoked: its key is refused from its next login",
                   f"no active agent {args.agent_id!r}")


def _cmd_agent_remote(args: argparse.Namespace) -> int:
    verb = "allowed" if args.allowed else "denied"
    return outcome(existing_store(args).set_remote_access(args.agent_id, args.allowed, actor()),
                   f"remote access to {args.agent_id} {verb}",
                   f"no agent {args.agent_id!r}")


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
        store_or_create(args).add_operator(
            args.name, key.export_public_key("openssh").decode().strip(), fp, args.role,
            agencies, actor())
    except ValueError as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    print(f"operator {args.name} ({args.role}, agencies: {args.agencies}) may log in with "
          f"{fp}")
    return Exit.OK


def _cmd_operator_list(args: argparse.Namespace) -> int:
    return print_rows(args, existing_store(args).operators(),
                      ("name", "role", "agencies", "key_fingerprint", "created_at"))


def _cmd_operator_remove(args: argparse.Namespace) -> int:
    return outcome(existing_store(args).remove_operator(args.name, actor()),
                   f"operator {args.name} removed", f"no operator {args.name!r}")

