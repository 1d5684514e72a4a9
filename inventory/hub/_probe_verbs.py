"""`estate-hub probes set|list|clear`: the connectivity probes the hub asks agents to run, per
agency or per site, instead of editing `agent.toml` on every machine.

A policy file holds `[[probes]]` tables exactly as `agent.toml` does, plus an optional
`interval`; the hub's limits apply (`estate.inventory.probe_spec`, hub=True): tcp, dns and icmp
only, one port per tcp probe, at most 16 probes, no interval under 60 s. Each change is
audited; running hubs hand it to agents in their report acks within seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from estate.inventory.hub._cli_args import _name, group, verb
from estate.inventory.hub._cli_shared import (
    actor,
    existing_store,
    outcome,
    print_rows,
    store_or_create,
)
from estate.inventory.protocol import Exit
from estate.inventory.sanitise import plain
from estate.inventory.toml_file import TomlFileProblem, parse_toml, read_bounded

MAX_FILE_BYTES = 1024 * 1024  # 16 probe tables fit in a few KiB; anything larger is a mistake


def add_verbs(sub: Any) -> None:
    """Add the `probes` group and its verbs."""
    probes = group(sub, "probes", "connectivity probes the hub hands agents, per agency or "
                                  "site")
    put = verb(probes, "set", "set (replace) the probe policy of an agency, or of one of its "
                              "sites")
    put.add_argument("--agency", required=True, type=_name, help="the agency")
    put.add_argument("--site", type=_name, default=None,
                     help="one site of the agency: its probes replace the agency's of the "
                          "same name, the others add to them (default: the whole agency)")
    put.add_argument("file", type=Path, metavar="FILE",
                     help="TOML with [[probes]] tables as in agent.toml (name, kind, target, "
                          "timeout) and an optional interval in seconds (60 or more)")
    put.set_defaults(func=_cmd_set)
    show = verb(probes, "list", "list the probe policies", json_flag=True)
    show.add_argument("--agency", type=_name, default=None, help="only this agency's")
    show.set_defaults(func=_cmd_list)
    clear = verb(probes, "clear", "remove the probe policy of an agency, or of one site (an "
                                  "agency's site policies stay when its own is removed)")
    clear.add_argument("--agency", required=True, type=_name, help="the agency")
    clear.add_argument("--site", type=_name, default=None, help="one site of the agency")
    clear.set_defaults(func=_cmd_clear)


def load_policy_file(path: Path) -> list[Any]:
    """The probes of a policy file, checked against the hub's limits.

    Raises:
        ValueError: the file cannot be read, is not TOML, holds other keys than `probes`,
            or a probe breaks a rule; the message names the file, the probe and the key.
    """
    from estate.inventory.probe_spec import ProbeSpecError, parse_probes

    try:
        doc = parse_toml(read_bounded(path, MAX_FILE_BYTES), MAX_FILE_BYTES)
    except TomlFileProblem as exc:
        raise ValueError(f"{path}: {exc}") from None
    for key in doc:
        if key != "probes":
            raise ValueError(f"{path}: {key}: unknown key (a probe policy holds [[probes]] "
                             f"tables only)")
    if not doc.get("probes"):
        raise ValueError(f"{path}: no [[probes]] tables (to remove a policy: estate-hub probes "
                         f"clear)")
    try:
        return parse_probes(doc["probes"], "probes", hub=True)
    except ProbeSpecError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _place(args: argparse.Namespace) -> str:
    return f"agency {args.agency!r}" + (f" site {args.site!r}" if args.site else "")


def _cmd_set(args: argparse.Namespace) -> int:
    from estate.inventory.store import ProbePolicyTooLarge

    try:
        probes = load_policy_file(args.file)
    except ValueError as exc:
        print(f"estate-hub: probes set: {plain(exc, 600)}", file=sys.stderr)
        return Exit.USAGE
    try:
        digest = store_or_create(args).set_probe_policy(args.agency, args.site or "", probes,
                                                        actor())
    except ProbePolicyTooLarge as exc:
        print(f"estate-hub: probes set: {exc}", file=sys.stderr)
        return Exit.FAIL
    print(f"probe policy of {_place(args)}: {len(probes)} probe(s) "
          f"({', '.join(p.name for p in probes)}), sha256 {digest}; agents receive it with "
          f"their next report")
    return Exit.OK


def _cmd_list(args: argparse.Namespace) -> int:
    policies = existing_store(args).probe_policies(args.agency)
    if args.json:
        return print_rows(args, policies, ())
    rows = [{"agency": p.agency, "site": p.site or "(all sites)", "probes": len(p.probes),
             "names": ", ".join(str(t.get("name")) for t in p.probes), "hash": p.hash[:12],
             "set_by": p.set_by, "set_at": p.set_at} for p in policies]
    return print_rows(args, rows, ("agency", "site", "probes", "names", "hash", "set_by",
                                   "set_at"))


def _cmd_clear(args: argparse.Namespace) -> int:
    return outcome(existing_store(args).clear_probe_policy(args.agency, args.site or "",
                                                           actor()),
                   f"probe policy of {_place(args)} cleared: agents are told with their "
                   f"next report",
                   f"no probe policy for {_place(args)}")
