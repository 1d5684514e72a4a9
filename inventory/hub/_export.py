"""`estate-export v1`: an operator's export, produced on the hub and sent down the channel.

Input: one JSON request (`inventory.export.ExportRequest`). Output: JSON lines — `progress`
(`rows`, `total`) while the file is written, then one `manifest` line (the signed manifest),
then exactly `manifest.bytes` bytes of the file. A refused request is one `error` line. The
export runs on a thread of its own with its own read-only database connection, so reports,
the API and other exports carry on meanwhile; at most EXPORTS_AT_ONCE run at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inventory.export import ExportError, ExportRequest, Producer, run_export

log = logging.getLogger("estate.hub")

EXPORTS_AT_ONCE = 2
CHUNK = 256 * 1024
EXIT_OK, EXIT_DATA, EXIT_TEMPFAIL = 0, 65, 75

_pool = ThreadPoolExecutor(max_workers=EXPORTS_AT_ONCE, thread_name_prefix="export")


async def serve_export(hub: Any, operator: dict[str, Any], body: bytes, chan: Any,
                       writable: asyncio.Event) -> tuple[int, dict[str, Any] | None]:
    """Run one export on `chan`. Returns (exit status, final error document or None)."""
    name = operator["name"]
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _refused(hub, name, None, "bad_json", "the request is not one JSON object")
        return EXIT_DATA, {"type": "error", "status": "error", "code": "bad_json",
                           "message": "the request is one JSON object"}
    try:
        request = ExportRequest.parse(doc)
    except ExportError as exc:
        report = doc.get("report") if isinstance(doc, dict) else None
        _refused(hub, name, report if isinstance(report, str) else None, exc.code,
                 exc.message)
        return EXIT_DATA, {"type": "error", "status": "error", "code": exc.code,
                           "message": exc.message}
    loop = asyncio.get_running_loop()

    def progress(rows: int, total: int) -> None:
        line = json.dumps({"type": "progress", "rows": rows, "total": total}) + "\n"
        loop.call_soon_threadsafe(chan.write, line.encode())

    producer = Producer(operator, hub.host_key, hub.fingerprint, _estate_version())
    with tempfile.TemporaryDirectory(prefix="export-", dir=hub.settings.data_dir) as tmp:
        out = Path(tmp) / f"export.{request.format}"
        try:
            manifest = await loop.run_in_executor(
                _pool, run_export, hub.store.path, request, producer, out, progress)
        except ExportError as exc:
            _refused(hub, name, request.report, exc.code, exc.message)
            return EXIT_DATA, {"type": "error", "status": "error", "code": exc.code,
                               "message": exc.message}
        except Exception as exc:
            log.exception("export for %s failed", name)
            _refused(hub, name, request.report, "internal", type(exc).__name__)
            return EXIT_TEMPFAIL, {"type": "error", "status": "error", "code": "internal",
                                   "message": "the hub failed to produce the export; retry "
                                              "later", "retry_after": 30}
        await hub.db(hub.store.audit, f"operator:{name}", "export", request.report,
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
                chan.write(chunk)
    return EXIT_OK, None


def _refused(hub: Any, name: str, report: str | None, code: str, reason: str) -> None:
    """Audit a refused export, coalesced per operator and code: an operator's script
    retrying a bad request every second writes one row a minute, not sixty."""
    hub.audit.record(f"operator:{name}/{code}", f"operator:{name}", "export_refused",
                     report[:64] if report else None, {"code": code, "reason": reason[:500]})


def _estate_version() -> str:
    """The installed Estate's version (pyproject), as the manifest records it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("estate")
    except PackageNotFoundError:
        return "unknown"
