"""`estate-export v1`: an operator's export, produced on the hub and sent down the channel.

Input: one JSON request (`estate.inventory.export.ExportRequest`). Output: JSON lines — `progress`
(`rows`, `total`) while the file is written, then one `manifest` line (the signed manifest),
then exactly `manifest.bytes` bytes of the file. A refused request is one `error` line. The
export runs on a thread of its own with its own read-only handle on the store, so reports,
the API and other exports carry on meanwhile; at most EXPORTS_AT_ONCE run at a time, and
at most EXPORTS_PER_OPERATOR of one operator's and MAX_EXPORTS_QUEUED in all (`_budget.py`)
are queued or running (past either: `busy` with `retry_after`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from estate.inventory.errors import CodedError, StoreUnavailable
from estate.inventory.export import ExportError, ExportRequest
from estate.inventory.export.produce import Horizon, Producer, run_export
from estate.inventory.hub._context import Context
from estate.inventory.protocol import ChannelExit
from estate.inventory.store import Operator, StoreInterface

log = logging.getLogger("estate.hub")

EXPORTS_AT_ONCE = 2
BUSY_RETRY_S = 30
CHUNK = 256 * 1024

_pool = ThreadPoolExecutor(max_workers=EXPORTS_AT_ONCE, thread_name_prefix="export")


class _Gone(Exception):
    """The operator's channel closed (or their access ended): stop producing the file."""


class _Refusal(CodedError):
    """A request refused before its export started; `report` is what it named, if anything."""

    def __init__(self, report: str | None, code: str, message: str) -> None:
        super().__init__(code, message)
        self.report = report


def _parse(body: bytes) -> ExportRequest:
    """The request, read on a worker thread: a reconcile request carries a register of up to
    10 MiB in base64, too much to decode on the event loop."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Refusal(None, "bad_json", "the request is not one JSON object") from None
    try:
        return ExportRequest.parse(doc)
    except ExportError as exc:
        report = doc.get("report") if isinstance(doc, dict) else None
        raise _Refusal(report if isinstance(report, str) else None, exc.code,
                       exc.message) from None


def _produce(store: StoreInterface, data_dir: Path, request: ExportRequest, producer: Producer,
             horizon: Horizon, standby: bool, progress: Callable[[int, int], None],
             gone: Callable[[], bool]) -> tuple[dict[str, Any], Path]:
    """On an export thread: the file in a new private folder, and its manifest.

    Nothing is made for a channel that went away while the export waited its turn, and an
    export stops at its next progress step once its channel is gone.
    """
    if gone():
        raise _Gone
    tmp = Path(tempfile.mkdtemp(prefix="export-", dir=data_dir))
    out = tmp / f"export.{request.format}"

    def checked_progress(rows: int, total: int) -> None:
        if gone():
            raise _Gone
        progress(rows, total)

    try:
        return run_export(store, request, producer, out, checked_progress,
                          horizon=horizon, standby=standby), out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


async def serve_export(ctx: Context, body: bytes, chan: Any, writable: asyncio.Event,
                       gone: Callable[[], bool]) -> tuple[ChannelExit, dict[str, Any] | None]:
    """Run one export for the operator `ctx.peer` on `chan`. Returns (exit status, final
    error document or None).

    `gone()` says whether the channel closed (or the operator's access ended) meanwhile.
    """
    assert ctx.peer.operator is not None
    name = ctx.peer.operator.name
    try:
        request = await asyncio.to_thread(_parse, body)
    except _Refusal as exc:
        _refused(ctx, name, exc.report, exc.code, exc.message)
        return ChannelExit.DATA, {"type": "error", "status": "error", "code": exc.code,
                                  "message": exc.message}
    if (why := ctx.exports.take(name)) is not None:
        _refused(ctx, name, request.report, "busy", why)
        return ChannelExit.TEMPFAIL, {"type": "error", "status": "error", "code": "busy",
                                      "message": why, "retry_after": BUSY_RETRY_S}
    try:
        return await _serve(ctx, ctx.peer.operator, request, chan, writable, gone)
    finally:
        ctx.exports.give(name)


async def _serve(ctx: Context, operator: Operator, request: ExportRequest, chan: Any,
                 writable: asyncio.Event,
                 gone: Callable[[], bool]) -> tuple[ChannelExit, dict[str, Any] | None]:
    name = operator.name
    loop = asyncio.get_running_loop()

    def progress(rows: int, total: int) -> None:
        line = json.dumps({"type": "progress", "rows": rows, "total": total}) + "\n"
        loop.call_soon_threadsafe(chan.write, line.encode())

    producer = Producer(operator, ctx.host_key, ctx.fingerprint, _estate_version())
    horizon = Horizon(ctx.settings.retention.days, ctx.settings.history.days)
    try:
        manifest, out = await loop.run_in_executor(
            _pool, _produce, ctx.store, ctx.settings.data_dir, request, producer, horizon,
            ctx.settings.export_store_url is not None, progress, gone)
    except _Gone:
        log.info("export %s for %s abandoned: its channel closed", request.report, name)
        return ChannelExit.TEMPFAIL, None
    except StoreUnavailable as exc:
        # The store exports read (a standby, with --export-store) is down or cancelled the
        # read: the operator retries; the log names the store and why, in one line.
        log.warning("export %s for %s failed: %s", request.report, name, exc)
        _refused(ctx, name, request.report, "store_unavailable", str(exc))
        return ChannelExit.TEMPFAIL, {"type": "error", "status": "error",
                                      "code": "store_unavailable",
                                      "message": "the hub cannot reach its export store; "
                                                 "retry later", "retry_after": BUSY_RETRY_S}
    except ExportError as exc:
        _refused(ctx, name, request.report, exc.code, exc.message)
        return ChannelExit.DATA, {"type": "error", "status": "error", "code": exc.code,
                                  "message": exc.message}
    except Exception as exc:
        log.exception("export for %s failed", name)
        _refused(ctx, name, request.report, "internal", type(exc).__name__)
        return ChannelExit.TEMPFAIL, {"type": "error", "status": "error", "code": "internal",
                                      "message": "the hub failed to produce the export; "
                                                 "retry later", "retry_after": 30}
    try:
        await ctx.db(ctx.store.audit, f"operator:{name}", "export", request.report,
                     {"format": request.format, "rows": manifest["rows"],
                      "sha256": manifest["sha256"], "filters": manifest["filters"],
                      "as_of": manifest["as_of"]})
        log.info("export %s (%s, %d rows) for %s", request.report, request.format,
                 manifest["rows"], name)
        chan.write((json.dumps({"type": "manifest", "manifest": manifest},
                               ensure_ascii=False) + "\n").encode())
        with open(out, "rb") as f:
            while chunk := f.read(CHUNK):
                await writable.wait()  # the operator's window is full: wait, don't buffer
                if gone():
                    break
                chan.write(chunk)
    finally:
        await asyncio.to_thread(shutil.rmtree, out.parent, True)
    return ChannelExit.OK, None


def _refused(ctx: Context, name: str, report: str | None, code: str, reason: str) -> None:
    """Audit a refused export, coalesced per operator and code: an operator's script
    retrying a bad request every second writes one row a minute, not sixty."""
    ctx.audit.record(f"operator:{name}/{code}", f"operator:{name}", "export_refused",
                     report[:64] if report else None, {"code": code, "reason": reason[:500]})


def _estate_version() -> str:
    """The installed Estate's version (pyproject), as the manifest records it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("estate-inventory")  # the distribution (pyproject.toml `name`)
    except PackageNotFoundError:
        return "unknown"
