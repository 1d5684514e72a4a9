"""What `estate-hub`'s verbs share at run time: the data folder, the store it names, who runs
the verb (for the audit log), tables on stdout, and stopping on SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.protocol import Exit

if TYPE_CHECKING:  # the store loads with the verb that uses it, not with every verb
    from estate.inventory.store import StoreInterface


def default_data_dir() -> Path:
    """$ESTATE_HUB_DATA, else /var/lib/estate-hub as root, else ~/.local/share/estate-hub."""
    env = os.environ.get("ESTATE_HUB_DATA")
    if env:
        return Path(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/estate-hub")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "estate-hub"


def data_dir(args: argparse.Namespace) -> Path:
    """--data, else the default data folder."""
    return args.data or default_data_dir()


def chosen_store(args: argparse.Namespace) -> Any:
    """--store, else $ESTATE_HUB_STORE, else None (the data folder's SQLite file)."""
    from estate.inventory.store import ENV_VAR, StoreUrl

    if getattr(args, "store", None) is not None:
        return args.store
    env = os.environ.get(ENV_VAR)
    return StoreUrl.parse(env, f"${ENV_VAR}") if env else None


def existing_store(args: argparse.Namespace) -> StoreInterface:
    """The store, refused (exit 1) when no hub has made one in the data folder yet."""
    from estate.inventory.store import Store, open_store

    data, url = data_dir(args), chosen_store(args)
    if url is None and not Store.exists(data):
        raise SystemExit(f"estate-hub: no hub data in {data} (run `estate-hub serve --data "
                         f"{data}` once, or pass --data or --store)")
    return open_store(url, data)


def store_or_create(args: argparse.Namespace) -> StoreInterface:
    """The store, made if there is none yet (`token create` and `operator add` come first)."""
    from estate.inventory.store import open_store

    return open_store(chosen_store(args), data_dir(args))


def actor() -> str:
    """Who runs the verb, as the audit log names them: admin:LOGIN."""
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"admin:uid{os.getuid()}"


def outcome(done: bool, success: str, missing: str) -> int:
    """Report a verb that acts on one record: what happened, or that there was none."""
    if done:
        print(success)
        return Exit.OK
    print(f"estate-hub: {missing}", file=sys.stderr)
    return Exit.FAIL


def print_rows(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]],
               columns: tuple[str, ...], widest: int = 48) -> int:
    """`rows` as one JSON document with --json, else as a table of `columns`."""
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


def on_stop_signals(stop: Callable[[], object]) -> None:
    """SIGTERM and SIGINT call `stop` on the running loop; on Windows, whose event loops take
    no signal handlers, through signal.signal (an embedded default there runs a hub too)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
        except NotImplementedError:
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop))

