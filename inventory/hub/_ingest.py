"""Turning the bytes an agent sent into a report the store may keep.

Limits are enforced before parsing: on the bytes received, and while decompressing, so a gzip
bomb is stopped at the limit instead of filling memory.
"""

from __future__ import annotations

import zlib
from typing import Any

from inventory.report import MAX_REPORT_BYTES, ReportError, parse

MAX_RECEIVED_BYTES = 4 * 1024 * 1024
"""Largest body accepted on the wire, compressed or not."""

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
    return out


def accept(body: bytes, agent_id: str) -> dict[str, Any]:
    """Decode, validate and check a report against its sender's enrolment.

    Raises:
        ReportError: the report is malformed or claims to be from someone else.
    """
    report = parse(decompress(body))
    if report["agent"]["id"] != agent_id:
        raise ReportError("agent.id", f"this connection is agent {agent_id}; a report may "
                                      f"not claim to be {report['agent']['id']!r}")
    # The report id is the idempotency key: one agent must not be able to squat another's.
    if not report["report_id"].startswith(f"{agent_id}:"):
        raise ReportError("report_id", f"must start with this agent's id ({agent_id}:)")
    return report
