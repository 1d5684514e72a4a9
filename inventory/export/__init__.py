"""Audit exports: the estate (now or as of a date), its changes, stale and unsupported hosts,
and a reconciliation with an asset register, as CSV, XLSX or JSON with a signed manifest.

The hub produces the file (so the hash it signs is of the bytes it produced) in the
operator's scope; `estate export` receives and writes it.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from inventory.export._columns import REPORTS
from inventory.export._eos import table
from inventory.export._register import RegisterError, parse_register
from inventory.export._source import Selection, Source
from inventory.export._writers import FORMATS, WRITERS
from inventory.export.manifest import MANIFEST_FORMAT, sha256_of, sign
from inventory.filters import FilterError, compile_filter
from inventory.params import Params, RequestError
from inventory.store import iso, parse_time, utcnow

__all__ = ["FORMATS", "REPORTS", "ExportError", "ExportRequest", "run_export"]

PROGRESS_EVERY = 2000  # rows between progress messages
DEFAULT_STALE_DAYS = 30


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
        since = _time(p, "since")
        if since is not None and report != "changes":
            raise ExportError("bad_request", "since: only for the changes report")
        file_name = _file_name(p.text("file_name", max_len=255), f"estate-{report}.{fmt}")
        request = cls(report, fmt, file_name, p.text("agency", max_len=128),
                      p.text("site", max_len=128), text_filter, _time(p, "as_of"), since,
                      days, register, p.text("register_name", max_len=255))
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
    if len(text.strip()) == 10 and key == "as_of":  # a date: the whole of that day (so far)
        value = min(value.replace(hour=23, minute=59, second=59, microsecond=999999), now)
    return value


@dataclass(frozen=True)
class Producer:
    """Who asks and who signs: the operator's record and the hub's key."""

    operator: dict[str, Any]  # name, role, agencies (None: all)
    host_key: Any  # asyncssh.SSHKey
    fingerprint: str
    version: str


def run_export(db_path: Path, request: ExportRequest, producer: Producer, out: Path,
               progress: Callable[[int, int], None] | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """Write the export to `out` and return its signed manifest.

    Runs on a thread of its own with a read-only connection: the hub keeps serving. `now`
    is the hub's clock (tests fix it to compare files byte for byte).

    Raises:
        ExportError: a register that cannot be used.
    """
    now = now or utcnow()
    register = None
    if request.report == "reconcile":
        assert request.register is not None
        try:
            register = parse_register(request.register, request.register_name or "register")
        except RegisterError as exc:
            raise ExportError("bad_register", str(exc)) from None
    scope = producer.operator["agencies"]
    sel = Selection(scope, request.agency, request.site, request.filter, request.as_of)
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        source = Source(db, now)
        total = _total(db, request, sel, register)
        meta = _describe(request, producer, now, scope)
        writer = WRITERS[request.format](out, request.report, REPORTS[request.report], meta)
        for row in _rows(source, request, sel, register):
            writer.row(row)
            if progress and writer.rows % PROGRESS_EVERY == 0:
                progress(writer.rows, total)
        pruned = source.pruned_before(sel)
        unreadable = source.skipped_unreadable
    finally:
        db.close()
    about = {**_about(meta), "rows": str(writer.rows)}
    if pruned:
        about["note"] = (f"{pruned} host(s) known at the as-of date are missing: their reports "
                         f"from then are older than the hub's report retention")
    if unreadable:
        about["skipped"] = (f"{unreadable} host(s) left out: their stored report from then "
                            f"could not be read")
    writer.close(about)
    if progress:
        progress(writer.rows, max(total, writer.rows))
    manifest = {**meta, "sha256": sha256_of(out), "bytes": out.stat().st_size,
                "rows": writer.rows, "hosts_missing_history": pruned,
                "skipped_unreadable": unreadable}
    return sign(manifest, producer.host_key)


def _rows(source: Source, request: ExportRequest, sel: Selection,
          register: Any) -> Iterator[list[Any]]:
    if request.report == "inventory":
        return source.inventory(sel)
    if request.report == "changes":
        return source.changes(sel, request.since)
    if request.report == "stale":
        return source.stale(sel, request.days)
    if request.report == "unsupported":
        return source.unsupported(sel)
    return source.reconcile(sel, register, request.days)


def _total(db: sqlite3.Connection, request: ExportRequest, sel: Selection,
           register: Any) -> int:
    """Roughly how many rows to expect, for a progress bar (hosts or changes in scope)."""
    from inventory.store._common import _scoped

    table_name = "changes c JOIN hosts h ON h.agent_id = c.agent_id" \
        if request.report == "changes" else "hosts h"
    sql, args = _scoped(f"SELECT COUNT(*) FROM {table_name} "  # noqa: S608 - literals only
                        "JOIN agencies a ON a.id = h.agency_id WHERE 1 = 1", [], sel.scope)
    count = int(db.execute(sql, args).fetchone()[0])
    return count + (len(register) if register else 0)


def _describe(request: ExportRequest, producer: Producer, now: datetime,
              scope: list[str] | None) -> dict[str, Any]:
    """What the export is: the manifest's fields that do not depend on the file's bytes."""
    op = producer.operator
    return {
        "format": MANIFEST_FORMAT,
        "file": request.file_name,
        "file_format": request.format,
        "report": request.report,
        "scope": {"operator": op["name"], "role": op["role"],
                  "agencies": "all" if scope is None else sorted(scope)},
        "filters": {"agency": request.agency, "site": request.site,
                    "filter": request.filter or None, "since": _iso(request.since),
                    "days": request.days if request.report in ("stale", "reconcile") else None,
                    "register": request.register_name if request.register else None},
        "as_of": _iso(request.as_of),
        "generated_at": iso(now)[:19] + "Z",
        "estate_version": producer.version,
        "end_of_support_table": table()[0],
        "hub": {"fingerprint": producer.fingerprint,
                "public_key": producer.host_key.export_public_key("openssh").decode().strip()},
    }


def _iso(value: datetime | None) -> str | None:
    return iso(value)[:19] + "Z" if value else None


def _about(meta: dict[str, Any]) -> dict[str, Any]:
    """The "About" sheet (XLSX) and member (JSON): plain text an auditor reads first."""
    scope = meta["scope"]
    agencies = scope["agencies"]
    filters = {k: v for k, v in meta["filters"].items() if v is not None}
    return {
        "report": meta["report"],
        "scope": f"operator {scope['operator']} ({scope['role']}), agencies: "
                 f"{agencies if isinstance(agencies, str) else ', '.join(agencies)}",
        "filters": ", ".join(f"{k}={v}" for k, v in filters.items()) or "none",
        "as of": meta["as_of"] or f"now ({meta['generated_at']})",
        "generated at": meta["generated_at"],
        "hub": meta["hub"]["fingerprint"],
        "Estate version": meta["estate_version"],
        "end-of-support table": meta["end_of_support_table"],
        "integrity": "the hub signed a manifest of this file (FILE.manifest.json); check it "
                     "with: estate verify FILE",
    }
