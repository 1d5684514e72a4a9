"""`estate-hub key rotate|activate|status`: the hub key's rotation, step by step, audited
(`inventory/hub/_rotation.py` does the work)."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estate.inventory.protocol import Exit

# What a verb gets from `estate-hub`'s CLI: the data folder, the store (opened on demand, for
# the audit row) and who runs it.
Verb = Callable[[argparse.Namespace, Path, Callable[[], Any], str], int]


def add_verbs(key: Any, verb: Callable[..., Any], dispatch: Callable[..., int]) -> None:
    """Add the rotation verbs to the `key` group; `dispatch` runs the chosen one."""
    rotate = verb(key, "rotate", "rotate the hub's host key: announce the next key to agents "
                                 "(--new), or forget the old one once switched (--finish)")
    rotate.description = (
        "Step 1 (--new FILE): record FILE's ed25519 key as this hub's next host key. The "
        "running hub names it in every report ack within seconds, and agents pin it beside "
        "the current key; new tokens name both. Run it on every hub with the same FILE. "
        "Step 2 is `estate-hub key activate`. Step 3 (--finish), once every hub presents "
        "the new key: forget the old one, so new tokens name the new key alone. Every step "
        "is audited (key_rotate).")
    step = rotate.add_mutually_exclusive_group(required=True)
    step.add_argument("--new", type=Path, metavar="FILE",
                      help="an unencrypted OpenSSH ed25519 private key, e.g. made with "
                           "ssh-keygen -t ed25519 -N '' -f FILE")
    step.add_argument("--finish", action="store_true",
                      help="forget the previous key once every hub presents the new one")
    rotate.add_argument("--replace", action="store_true",
                        help="with --new: announce FILE instead of a different next key "
                             "already recorded")
    rotate.set_defaults(func=dispatch, rotation_verb=_rotate)
    activate = verb(key, "activate", "make the next key this hub's host key (restart the "
                                     "hub to present it)")
    activate.set_defaults(func=dispatch, rotation_verb=_activate)
    status = verb(key, "status", "the host key and the rotation under way, if any",
                  json_flag=True)
    status.set_defaults(func=dispatch, rotation_verb=_status)


def _rotate(args: argparse.Namespace, data: Path, store: Callable[[], Any], actor: str) -> int:
    from estate.inventory.hub import _rotation

    if args.finish and args.replace:
        print("estate-hub: --replace goes with --new", file=sys.stderr)
        return Exit.USAGE
    opened = store()  # before any file changes: a step is not taken unless it is audited
    try:
        if args.finish:
            before, after = _rotation.finish(data)
        else:
            before, after = _rotation.set_next(data, args.new, args.replace)
    except _rotation.RotationRefused as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.finish:
        _audit(opened, actor, "finish", before.previous, data, before, after)
        print(f"forgot the previous host key {before.previous}: new tokens name "
              f"{after.current} alone")
        return Exit.OK
    if after == before:
        print(f"{after.next} is already the next host key in {data}: nothing to do")
        return Exit.OK
    _audit(opened, actor, "next", after.next, data, before, after)
    replaced = f" (instead of {before.next})" if before.next else ""
    print(f"recorded {after.next} as the next host key{replaced}: the hub announces it to "
          f"agents within seconds and new tokens name it beside {after.current}. Do the same "
          f"on every hub, let every agent report once, then `estate-hub key activate`")
    return Exit.OK


def _activate(args: argparse.Namespace, data: Path, store: Callable[[], Any],
              actor: str) -> int:
    from estate.inventory.hub import _rotation

    opened = store()
    try:
        before, after = _rotation.activate(data)
    except _rotation.RotationRefused as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return exc.exit_status
    _audit(opened, actor, "activate", after.current, data, before, after)
    print(f"the host key in {data} is now {after.current} (the previous one, {after.previous}, "
          f"is kept as {_rotation.PREVIOUS_KEY_FILE}); restart the hub to present it, then "
          f"`estate-hub key rotate --finish` once every hub does")
    return Exit.OK


def _status(args: argparse.Namespace, data: Path, store: Callable[[], Any], actor: str) -> int:
    from estate.inventory.hub import _rotation
    from estate.inventory.sanitise import dumps

    try:
        state = _rotation.read_state(data)
    except _rotation.RotationRefused as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return exc.exit_status
    doc = {"current": state.current, "next": state.next, "previous": state.previous,
           "phase": state.phase, "token_fingerprints": list(state.token_fingerprints())}
    if args.json:
        print(dumps(doc, indent=1))
        return Exit.OK
    print(f"host key  {state.current}")
    if state.next:
        print(f"next key  {state.next} (announced to agents; `estate-hub key activate` "
              f"switches to it)")
    if state.previous:
        print(f"previous  {state.previous} (still named in tokens; `estate-hub key rotate "
              f"--finish` forgets it)")
    return Exit.OK


def _audit(store: Any, actor: str, step: str, target: str | None, data: Path,
           before: Any, after: Any) -> None:
    """A `key_rotate` row: the step, the keys before and after, and which hub's folder (each
    hub of an estate runs the steps on its own data folder, into the shared store)."""
    store.audit(actor, "key_rotate", target,
                {"step": step, "host": socket.gethostname(), "data": str(data),
                 "before": {"current": before.current, "next": before.next,
                            "previous": before.previous},
                 "after": {"current": after.current, "next": after.next,
                           "previous": after.previous}})
