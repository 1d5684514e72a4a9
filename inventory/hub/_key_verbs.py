"""`estate-hub key export|import|rotate|activate|status`: the hub's host key, its identity
pinned by every agent: copied between the hubs of one estate, and rotated
(`inventory/hub/_rotation_verbs.py`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from estate.inventory.hub import _rotation_verbs
from estate.inventory.hub._cli_args import group, verb
from estate.inventory.hub._cli_shared import actor, chosen_store, data_dir, existing_store
from estate.inventory.protocol import Exit


def add_verbs(sub: Any) -> None:
    """Add the `key` group and its verbs."""
    key = group(sub, "key", "the hub's host key: its identity, pinned by every agent")
    export = verb(key, "export", "write the hub's private host key to a file, to install "
                                 "on another hub with `key import`")
    export.description = (
        "Write the hub's private host key (its identity: every agent and token pins its "
        "fingerprint) to FILE, mode 0600, to install on the other hubs of one estate with "
        "`estate-hub key import`: hubs behind one address must all present the same key. "
        "Anyone holding the file can pose as the hub: move it over a trusted channel and "
        "delete it once imported.")
    export.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="where to write the key (refused if it exists, unless --force)")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(func=_cmd_key_export)
    kimport = verb(key, "import", "install a host key exported from another hub as this "
                                  "hub's (restart the hub to present it)")
    kimport.add_argument("file", type=Path, metavar="FILE",
                         help="an OpenSSH ed25519 private key, as `key export` writes it")
    kimport.add_argument("--replace", action="store_true",
                         help="replace a different host key already in the data folder (it "
                              "is kept beside it as host_key_ed25519.replaced); agents that "
                              "pinned it will refuse this hub")
    kimport.set_defaults(func=_cmd_key_import)
    _rotation_verbs.add_verbs(key, verb, _cmd_key_rotation)  # rotate, activate, status


def _cmd_key_export(args: argparse.Namespace) -> int:
    from estate.inventory.hub._keys import (
        HOST_KEY_FILE,
        fingerprint,
        read_host_key,
        write_new_private_key,
    )

    data = data_dir(args)
    path = data / HOST_KEY_FILE
    if not path.exists():
        print(f"estate-hub: no host key in {data}: this is no hub yet (start `estate-hub "
              f"serve --data {data}` once, or pass --data)", file=sys.stderr)
        return Exit.FAIL
    try:
        key = read_host_key(path)
        write_new_private_key(args.out, key, overwrite=args.force)
    except ValueError as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.FAIL
    except FileExistsError:
        print(f"estate-hub: --out: {args.out} exists; pass --force to overwrite it",
              file=sys.stderr)
        return Exit.FAIL
    except OSError as exc:
        print(f"estate-hub: --out: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return Exit.FAIL
    print(f"estate-hub: {args.out} holds this hub's private host key, its identity "
          f"({fingerprint(key)}): whoever has it can pose as the hub to every agent. Copy it "
          f"to the other hub over a trusted channel, `estate-hub key import` it there, then "
          f"delete it.", file=sys.stderr)
    print(f"wrote the host key {fingerprint(key)} to {args.out}")
    _audit(args, "key_export", fingerprint(key), {"file": str(args.out)})
    return Exit.OK


def _cmd_key_import(args: argparse.Namespace) -> int:
    from estate.inventory.hub._keys import (
        HOST_KEY_FILE,
        fingerprint,
        read_host_key,
        write_new_private_key,
    )
    from estate.inventory.private_files import private_dir

    try:
        key = read_host_key(args.file)
    except ValueError as exc:
        print(f"estate-hub: {exc}", file=sys.stderr)
        return Exit.USAGE
    data = private_dir(data_dir(args))
    path, new = data / HOST_KEY_FILE, fingerprint(key)
    old = None
    if path.exists():
        try:
            old = fingerprint(read_host_key(path))
        except ValueError:
            old = "an unreadable key"  # replacing it is what --replace is for
        if old == new:
            print(f"the host key in {data} is already {new}: nothing to do")
            return Exit.OK
        if not args.replace:
            print(f"estate-hub: {data} already holds a different host key ({old}); agents "
                  f"enrolled with it pin it and would refuse this hub. Pass --replace to "
                  f"replace it anyway", file=sys.stderr)
            return Exit.FAIL
        # Kept, not deleted: a replaced identity cannot be made again.
        os.replace(path, path.with_name(HOST_KEY_FILE + ".replaced"))
    write_new_private_key(path, key, overwrite=True)
    replaced = f", replacing {old} (kept as {HOST_KEY_FILE}.replaced)" if old else ""
    print(f"installed the host key {new} in {data}{replaced}; restart the hub to present it")
    _audit(args, "key_import", new, {"data": str(data), "replaced": old})
    return Exit.OK


def _audit(args: argparse.Namespace, action: str, fingerprint: str,
           detail: dict[str, Any]) -> None:
    """An audit row in the estate's store, with the host the verb ran on. A hub being set up
    has no store in its data folder until `--store` names the shared one: then the verb says
    so rather than create a stray store to record it in."""
    import socket

    from estate.inventory.store import Store

    if chosen_store(args) is None and not Store.exists(data_dir(args)):
        print(f"estate-hub: not audited: no store in {data_dir(args)}; pass --store (the "
              f"estate's) to record this in its audit log", file=sys.stderr)
        return
    store = existing_store(args)
    try:
        store.audit(actor(), action, fingerprint, {**detail, "host": socket.gethostname()})
    finally:
        store.close()


def _cmd_key_rotation(args: argparse.Namespace) -> int:
    """`key rotate|activate|status` (inventory/hub/_rotation_verbs.py)."""
    from estate.inventory.private_files import private_dir

    return int(args.rotation_verb(args, private_dir(data_dir(args)), lambda: existing_store(args),
                                  actor()))

