"""Audit exports: the estate (now or as of a date), its changes, stale and unsupported hosts,
a reconciliation with an asset register, compliance and availability (online share and
outages in a window), as CSV, XLSX or JSON with a signed manifest.

The hub produces the file (so the hash it signs is of the bytes it produced) in the
operator's scope, with `estate.inventory.export.produce`; `estate export` receives and writes it.
This package and its other modules (the request, reports' columns, writers, manifest) load no store:
the console imports them too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from estate.inventory.export._columns import REPORTS
from estate.inventory.export._writers import FORMATS
from estate.inventory.filters import FilterError, compile_filter
from estate.inventory.params import Params, RequestError
from estate.inventory.times import parse_time, utcnow

__all__ = ["DEFAULT_AVAILABILITY_DAYS", "DEFAULT_STALE_DAYS", "FORMATS", "REPORTS",
           "ExportError", "ExportRequest"]

DEFAULT_STALE_DAYS = 30
DEFAULT_AVAILABILITY_DAYS = 30  # the availability window without `since`: these days to `until`


ExportError = RequestError  # a request that cannot be exported; the message names the field


@dataclass(frozen=True)
class ExportRequest:
    report: str
    format: str
    file_name: str
    agency: str | None = None
    site: str | None = None
    filter: str = ""
    as_of: datetime | None = None
    since: datetime | None = None
    days: int = DEFAULT_STALE_DAYS
    register: bytes | None = None
    register_name: str | None = None
    until: datetime | None = None  # availability: the window's end (None: now)

    @classmethod
    def parse(cls, doc: Any) -> ExportRequest:
        """Validate a request as the operator sent it.

        Raises:
            ExportError: naming the field and the problem.
        """
        if not isinstance(doc, dict):
            raise ExportError("bad_request", "the request is a JSON object")
        p = Params(doc, "export", envelope=())
        report = p.text("report", required=True, choices=tuple(REPORTS))
        fmt = p.text("format", required=True, choices=FORMATS)
        text_filter = p.text("filter", default="", max_len=1000)
        try:
            compile_filter(text_filter)
        except FilterError as exc:
            raise ExportError("bad_filter", f"filter: {exc}") from None
        days = p.integer("days", default=DEFAULT_STALE_DAYS, low=0, high=3650)
        encoded = p.text("register", max_len=20 * 1024 * 1024,
                         required=report == "reconcile")
        register = None
        if encoded is not None:
            if report != "reconcile":
                raise ExportError("bad_request", "register: only for the reconcile report")
            try:
                register = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise ExportError("bad_request", "register: expected base64") from None
        since, until, as_of = _time(p, "since"), _time(p, "until"), _time(p, "as_of")
        if since is not None and report not in ("changes", "availability"):
            raise ExportError("bad_request", "since: only for the changes and availability "
                                             "reports")
        if until is not None and report != "availability":
            raise ExportError("bad_request", "until: only for the availability report")
        if as_of is not None and report == "availability":
            raise ExportError("bad_request", "as_of: not for the availability report (its "
                                             "window is since to until)")
        if since is not None and report == "availability" and since >= (until or utcnow()):
            raise ExportError("bad_request", "since: must be before until (the window's end; "
                                             "default now)")
        file_name = _file_name(p.text("file_name", max_len=255), f"estate-{report}.{fmt}")
        request = cls(report, fmt, file_name, p.text("agency", max_len=128),
                      p.text("site", max_len=128), text_filter, as_of, since,
                      days, register, p.text("register_name", max_len=255), until)
        p.done()
        return request


def _file_name(text: str | None, default: str) -> str:
    """The bare name the manifest records: never a path, "", "." or "..", nor control codes."""
    name = Path(text or "").name
    if name in ("", ".", ".."):
        return default  # "." or "dir/" names no file: the manifest still needs one
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise ExportError("bad_request", "file_name: control characters are not allowed")
    return name


def _time(p: Params, key: str) -> datetime | None:
    text = p.text(key, max_len=40)
    if text is None:
        return None
    try:
        value = parse_time(text)
    except ValueError:
        raise ExportError("bad_request", f"{key}: expected a date like 2026-01-31 or "
                                         f"2026-01-31T12:00:00Z, got {text[:40]!r}") from None
    now = utcnow()
    if value > now:
        raise ExportError("bad_request", f"{key}: {text} is in the future")
    if len(text.strip()) == 10 and key in ("as_of", "until"):  # a date: all that day (so far)
        value = min(value.replace(hour=23, minute=59, second=59, microsecond=999999), now)
    return value
