"""A host's last report as the store keeps it: the snapshot, written again only when what it
holds beyond a report's volatile sections changed, and those sections (`hosts.live`) beside it.

Every report carries new volatile values (its id, times, health figures, probe results), so
writing the whole ~4 KB snapshot each time made every report cost its compression and a
TOAST rewrite on PostgreSQL, and a JSONB parse of the facts. Instead the snapshot and the facts
are rewritten when the digest of the report with its volatile sections blanked out
(`stable_digest`, kept in `hosts.snapshot_digest`) differs from the stored one, and otherwise
only the few hundred bytes of `live` are. Readers put the two together (`current_report`):
the same report, key for key and in the same order, as a rewritten snapshot would hold.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The top-level sections that change from one report to the next on a host where nothing
# else does. Everything the host lists, exports, change detection and `facts` read is
# outside them.
VOLATILE = frozenset(("report_id", "collected_at", "agent", "connectivity", "health",
                      "errors"))


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def stable_digest(snapshot: dict[str, Any]) -> str:
    """A digest of the snapshot with its volatile sections blanked out: their keys and their
    place stay in it, so equal digests mean the same keys in the same order."""
    text = _compact({k: None if k in VOLATILE else v for k, v in snapshot.items()})
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def live_text(snapshot: dict[str, Any]) -> str:
    """The snapshot's volatile sections, as `hosts.live` keeps them."""
    return _compact({k: v for k, v in snapshot.items() if k in VOLATILE})


def current_report(snapshot: str, live: str | None) -> dict[str, Any]:
    """The host's last report (without its package list): the snapshot with the volatile
    sections of the reports stored since (`live`; None when the snapshot is the last)."""
    report: dict[str, Any] = json.loads(snapshot)
    if live:
        newer = json.loads(live)
        report = {k: newer[k] if k in newer else v for k, v in report.items()}
    return report
