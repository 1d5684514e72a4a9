"""Producing an export on the hub: the rows of the report asked for, read from a read-only
store handle, written in the format asked for, and the signed manifest of the file. The hub
alone runs this (it needs the store); the console imports only the rest of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.export import (
    DEFAULT_AVAILABILITY_DAYS,
    REPORTS,
    ExportError,
    ExportRequest,
)
from estate.inventory.export._columns import TABLES
from estate.inventory.export._eos import table
from estate.inventory.export._register import RegisterError, parse_register
from estate.inventory.export._source import Selection, Source
from estate.inventory.export._writers import WRITERS
from estate.inventory.export.manifest import MANIFEST_FORMAT, sha256_of, sign
from estate.inventory.times import iso, utcnow

if TYPE_CHECKING:
    from estate.inventory.store import ReaderInterface, StoreInterface

__all__ = ["PROGRESS_EVERY", "Horizon", "Producer", "run_export"]

PROGRESS_EVERY = 2000  # rows between progress messages

AVAILABILITY_COUNTING = (
    "a host is online while its agent's connection to a hub is up (the hub's presence "
    "history, kept for good); it is counted from the window's start, or its enrolment if "
    "later, to the window's end, or the revocation of its key if sooner; a host with no "
    "presence history by then counts as offline until it first connects; an outage still "
    "open at the window's end ends there and is marked ongoing")


@dataclass(frozen=True)
class Producer:
    """Who asks and who signs: the operator's record and the hub's key."""

    operator: Mapping[str, Any]  # name, role, agencies (None: all): an `Operator` record
    host_key: Any  # asyncssh.SSHKey
    fingerprint: str
    version: str


@dataclass(frozen=True)
class Horizon:
    """How far back the hub keeps reports (`--retention-days`, `--history-days`): what an
    as-of export can reach, which its manifest states."""

    retention_days: int  # every report's sample (time, skew, probes)
    history_days: int  # full reports (on change, one a host a day) and change events


def run_export(store: StoreInterface, request: ExportRequest, producer: Producer, out: Path,
               progress: Callable[[int, int], None] | None = None,
               now: datetime | None = None,
               horizon: Horizon | None = None, standby: bool = False) -> dict[str, Any]:
    """Write the export to `out` and return its signed manifest.

    Runs on a thread of its own with a read-only handle on the store (`store.reader()`): the
    hub keeps serving. `now` is the hub's clock (tests fix it to compare files byte for
    byte). `horizon` is the hub's; an as-of export's manifest and About state it.
    `standby`: the reader is on the hub's export store (`--export-store`), which the
    manifest (`"store": "standby"`) and About state.

    Raises:
        ExportError: a register that cannot be used.
        StoreUnavailable: the store the reader is on cannot be reached (or cancelled the read).
    """
    now = now or utcnow()
    if request.report == "availability":  # the window, as the manifest states it
        until = request.until or now
        request = replace(request, until=until, since=request.since or
                          until - timedelta(days=DEFAULT_AVAILABILITY_DAYS))
    register = None
    if request.report == "reconcile":
        assert request.register is not None
        try:
            register = parse_register(request.register, request.register_name or "register")
        except RegisterError as exc:
            raise ExportError("bad_register", str(exc)) from None
    scope = producer.operator["agencies"]
    sel = Selection(scope, request.agency, request.site, request.filter, request.as_of)
    with store.reader() as reader:
        source = Source(reader, now)
        total = _total(reader, request, sel, register)
        meta = _describe(request, producer, now, scope, horizon)
        if request.report == "compliance":
            # The policy the results were evaluated against (as of the date asked for).
            meta["policy"] = reader.compliance_policy(request.as_of)
        if standby:
            meta["store"] = "standby"
        sheet, tables = TABLES.get(request.report, (None, ()))
        writer = WRITERS[request.format](out, request.report, REPORTS[request.report], meta,
                                         tables, sheet)
        # A file of one table (CSV) is not handed the others' rows: none are built.
        further = writer.table_row if writer.holds_tables else None
        for row in _rows(source, request, sel, register, further):
            writer.row(row)
            if progress and writer.rows % PROGRESS_EVERY == 0:
                progress(writer.rows, total)
        pruned = source.pruned_before(sel)
        unreadable = reader.skipped_unreadable
    about = {**_about(meta), "rows": str(writer.rows)}
    held = writer.table_rows if writer.holds_tables else {}
    about.update((f"{name} rows", str(count)) for name, count in held.items())
    if pruned:
        about["note"] = (f"{pruned} host(s) known at the as-of date are missing: their reports "
                         f"from then are older than the hub's history (--history-days)")
    if unreadable:
        about["skipped"] = (f"{unreadable} host(s) left out: their stored report from then "
                            f"could not be read")
    writer.close(about)
    if progress:
        progress(writer.rows, max(total, writer.rows))
    manifest = {**meta, "sha256": sha256_of(out), "bytes": out.stat().st_size,
                "rows": writer.rows, "hosts_missing_history": pruned,
                "skipped_unreadable": unreadable, **({"tables": held} if held else {})}
    return sign(manifest, producer.host_key)


def _rows(source: Source, request: ExportRequest, sel: Selection, register: Any,
          table_row: Callable[[str, list[Any]], None] | None) -> Iterator[list[Any]]:
    """The report's own rows; a report of several tables hands the others to `table_row`
    (None: the file holds the report's own rows only)."""
    if request.report == "inventory":
        return source.inventory(sel)
    if request.report == "changes":
        return source.changes(sel, request.since)
    if request.report == "stale":
        return source.stale(sel, request.days)
    if request.report == "unsupported":
        return source.unsupported(sel)
    if request.report == "compliance":
        return source.compliance(sel)
    if request.report == "availability":
        assert request.since is not None and request.until is not None
        return source.availability(sel, request.since, request.until, table_row)
    return source.reconcile(sel, register, request.days)


def _total(reader: ReaderInterface, request: ExportRequest, sel: Selection,
           register: Any) -> int:
    """Roughly how many rows to expect, for a progress bar (hosts or changes in scope)."""
    count = reader.change_count(sel.scope) if request.report == "changes" else \
        reader.host_count(sel.scope)
    return count + (len(register) if register else 0)


def _describe(request: ExportRequest, producer: Producer, now: datetime,
              scope: list[str] | None, horizon: Horizon | None = None) -> dict[str, Any]:
    """What the export is: the manifest's fields that do not depend on the file's bytes.

    An as-of export also says how far back the hub keeps reports (`history_days`: the
    state of hosts; `retention_days`: their every report); others are as they always were.
    """
    op = producer.operator
    meta: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "file": request.file_name,
        "file_format": request.format,
        "report": request.report,
        "scope": {"operator": op["name"], "role": op["role"],
                  "agencies": "all" if scope is None else sorted(scope)},
        "filters": {"agency": request.agency, "site": request.site,
                    "filter": request.filter or None, "since": _iso(request.since),
                    "days": request.days if request.report in ("stale", "reconcile") else None,
                    "register": request.register_name if request.register else None,
                    **({"until": _iso(request.until)} if request.report == "availability"
                       else {})},
        "as_of": _iso(request.as_of),
        "generated_at": _iso(now),
        "estate_version": producer.version,
        "end_of_support_table": table()[0],
        "hub": {"fingerprint": producer.fingerprint,
                "public_key": producer.host_key.export_public_key("openssh").decode().strip()},
    }
    if request.as_of and horizon:
        meta.update(history_days=horizon.history_days, retention_days=horizon.retention_days)
    return meta


def _policy_text(policy: dict[str, str] | None) -> str:
    if policy is None:
        return "none: the hub has not evaluated any host"
    return f"{policy['name']} version {policy['version']} (sha256 {policy['hash']})"


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
        **({"window": f"{meta['filters']['since']} to {meta['filters']['until']}",
            "counting": AVAILABILITY_COUNTING}
           if meta["report"] == "availability" else
           {"as of": meta["as_of"] or f"now ({meta['generated_at']})"}),
        **({"store": "a standby of the hub's store: it shows the estate as the standby had "
                     "replayed it, which may trail the hub by its replication delay"}
           if meta.get("store") == "standby" else {}),
        **({"history kept": f"{meta['history_days']} days of full reports and changes, "
                            f"{meta['retention_days']} days of every report's time and probes"}
           if "history_days" in meta else {}),
        "generated at": meta["generated_at"],
        "hub": meta["hub"]["fingerprint"],
        "Estate version": meta["estate_version"],
        "end-of-support table": meta["end_of_support_table"],
        **({"policy": _policy_text(meta["policy"])} if "policy" in meta else {}),
        "integrity": "the hub signed a manifest of this file (FILE.manifest.json); check it "
                     "with: estate verify FILE",
    }
