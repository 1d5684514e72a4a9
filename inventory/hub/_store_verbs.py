"""`estate-hub store migrate|copy`: the store's schema, and moving an estate from one store
to another (the work is in `inventory/store`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from estate.inventory.hub._cli_args import _store_url, group, verb
from estate.inventory.hub._cli_shared import chosen_store, data_dir
from estate.inventory.protocol import Exit

if TYPE_CHECKING:  # the store loads with the verb that uses it, not with every verb
    from estate.inventory.store import CopyProgress


def add_verbs(sub: Any) -> None:
    """Add the `store` group and its verbs."""
    store = group(sub, "store", "the store: schema migrations, moving an estate")
    migrate = verb(store, "migrate", "create the store's schema or bring it to this "
                                     "version (serve also does it when it starts)")
    migrate.set_defaults(func=_cmd_store_migrate)
    copy = verb(store, "copy", "copy a whole store into another, e.g. from SQLite to "
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


def _cmd_store_migrate(args: argparse.Namespace) -> int:
    from estate.inventory.store import migrate_store

    url = chosen_store(args)
    before, after = migrate_store(url, None if url else data_dir(args))
    where = url or data_dir(args) / "estate.db"
    if before == after:
        print(f"estate-hub: the store at {where} is at schema version {after}: nothing to do")
    else:
        print(f"estate-hub: migrated the store at {where} from schema version {before} "
              f"to {after}")
    return Exit.OK


def _cmd_store_copy(args: argparse.Namespace) -> int:
    from estate.inventory.errors import StoreCopyRefused
    from estate.inventory.store import copy_store

    source = args.source or chosen_store(args)
    where = source or data_dir(args) / "estate.db"
    try:
        result = copy_store(source, args.destination, None if source else data_dir(args),
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

