"""`estate-hub policy check FILE`: validate a compliance policy before a hub starts with it,
and the loading `serve --policy` shares (a bad policy refuses the start, naming each problem)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.hub._cli_args import group
from estate.inventory.protocol import Exit
from estate.inventory.sanitise import quoted

if TYPE_CHECKING:
    from estate.inventory.compliance import Policy


def add_verbs(sub: Any) -> None:
    """Add the `policy` group and its verb."""
    policy = group(sub, "policy", "the compliance policy: check a file before serving it")
    check = policy.add_parser(
        "check", help="validate a policy file and list its controls",
        description="Validate a compliance policy file (TOML) as `serve --policy` would: "
                    "print its controls and per-agency overrides and exit 0, or print each "
                    "problem (naming the control and key) and exit 2.")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=_cmd_check)


def load_or_report(path: Path | None) -> Policy | None:
    """The policy at `path` (None: Estate's own), or None once its problems are printed."""
    from estate.inventory.compliance import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"estate-hub: policy {exc.source}: {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {quoted(problem, 400)[1:-1]}", file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    policy = load_or_report(args.file)
    if policy is None:
        return Exit.USAGE
    print(f"policy {policy.name!r} version {policy.version!r} sha256 {policy.hash}")
    print(f"{len(policy.controls)} controls:")
    for c in policy.controls:
        params = ", ".join(f"{k}={_value(v)}" for k, v in c.params.items())
        print(f"  {c.id:<24} {c.theme:<28} {c.severity:<8} {c.kind}"
              + (f" ({params})" if params else "") + f"  {c.title}")
    for agency, changes in sorted(policy.overrides.items()):
        for ident, change in changes.items():
            what = "disabled" if change.get("enabled") is False else ", ".join(
                f"{k}={_value(v)}" for k, v in change.items() if k != "enabled") or "no change"
            print(f"  agency {agency!r}: {ident}: {what}")
    return Exit.OK


def _value(v: Any) -> str:
    return "[" + ", ".join(map(str, v)) + "]" if isinstance(v, tuple) else str(v)
