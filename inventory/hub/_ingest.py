"""Turning the bytes an agent sent into a report the store may keep.

Limits are enforced before parsing: on the bytes received, and while decompressing, so a gzip
bomb is stopped at the limit instead of filling memory.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Any

from inventory.report import MAX_REPORT_BYTES, ReportError, parse
from inventory.store import parse_time, utcnow

MAX_RECEIVED_BYTES = 4 * 1024 * 1024
"""Largest body accepted on the wire, compressed or not."""

MAX_FUTURE = timedelta(days=365)
"""A report collected further ahead of the hub's clock than this is refused (`collected_at`);
closer ones are stored, and ordered by the time received when more than a day ahead."""

_GZIP_MAGIC = b"\x1f\x8b"


def decompress(body: bytes, limit: int = MAX_REPORT_BYTES) -> bytes:
    """The report bytes: gunzipped when gzip, refused when they would exceed `limit`.

    Raises:
        ReportError: corrupt gzip, or more than `limit` bytes once decompressed.
    """
    if not body.startswith(_GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ReportError("", f"corrupt gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ReportError("", f"report decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise ReportError("", "gzip stream is truncated")
    if inflater.unused_data:
        # A second gzip member (or junk) after the report would be stored with it and break
        # every later reader of the stored body (as-of exports).
        raise ReportError("", f"{len(inflater.unused_data)} bytes of trailing data after the "
                              f"gzip stream")
    return out


def accept(body: bytes, agent_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Decode, validate and check a report against its sender's enrolment and the hub clock.

    Raises:
        ReportError: the report is malformed, claims to be from someone else, or was
            collected implausibly far in the future.
    """
    report = parse(decompress(body))
    now = now or utcnow()
    try:
        ahead = parse_time(report["collected_at"]) - now
    except (ValueError, OverflowError):
        raise ReportError("collected_at", "not a time the hub can read") from None
    if ahead > MAX_FUTURE:
        raise ReportError("collected_at", f"{report['collected_at']} is more than "
                                          f"{MAX_FUTURE.days} days ahead of the hub's clock")
    if report["agent"]["id"] != agent_id:
        raise ReportError("agent.id", f"this connection is agent {agent_id}; a report may "
                                      f"not claim to be {report['agent']['id']!r}")
    # The report id is the idempotency key: one agent must not be able to squat another's.
    if not report["report_id"].startswith(f"{agent_id}:"):
        raise ReportError("report_id", f"must start with this agent's id ({agent_id}:)")
    return report
