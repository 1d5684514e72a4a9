"""`estate export` and `estate verify`: audit exports and their proof of integrity.

The hub produces the file in the operator's scope and signs its manifest; `estate export`
writes both (`FILE` and `FILE.manifest.json`) after checking that what arrived is what the
hub signed. `estate verify FILE` checks a file against its manifest at any later time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh

from console._client import HubUnreachable, open_connection
from console.remote import add_connection_options
from inventory.export._columns import REPORTS
from inventory.export._register import MAX_REGISTER_BYTES
from inventory.export._writers import FORMATS
from inventory.export.manifest import VerifyError, manifest_path, verify

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXPORT_COMMAND = "estate-export v1"


def export_main(argv: list[str], settings_of: Any) -> int:
    parser = argparse.ArgumentParser(
        prog="estate export",
        description="Export the estate for an audit, produced by the hub in your agencies' "
                    "scope, with a manifest the hub signs (FILE.manifest.json; check it with "
                    "estate verify FILE).",
        epilog="reports: inventory (one row per host), changes (change events; --since), "
               "stale (not seen for --days), unsupported (OS past its vendor's end of "
               "support), reconcile (--register FILE.csv against the estate). Dates are UTC: "
               "2026-03-31 or 2026-03-31T17:00:00Z.")
    add_connection_options(parser)
    parser.add_argument("--report", required=True, choices=tuple(REPORTS))
    parser.add_argument("--format", choices=FORMATS,
                        help="csv, xlsx or json (default: from -o's extension, else csv)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="where to write (default estate-REPORT-DATE.FORMAT here)")
    parser.add_argument("--agency", help="only this agency")
    parser.add_argument("--site", help="only this site")
    parser.add_argument("--filter", default="", help="the console's filter syntax, e.g. "
                                                     "'status:offline os:windows'")
    parser.add_argument("--as-of", metavar="DATE",
                        help="the estate as the hub knew it then (end of day for a date)")
    parser.add_argument("--since", metavar="DATE", help="changes: from this date")
    parser.add_argument("--days", type=int, default=30,
                        help="stale and reconcile: not seen for this many days (default 30)")
    parser.add_argument("--register", type=Path, metavar="FILE.csv",
                        help="reconcile: the asset register (CSV with a header naming serial, "
                             "hostname, asset tag and/or MAC columns)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    args = parser.parse_args(argv)
    args.theme = None
    try:
        settings = settings_of(args)
    except ValueError as exc:
        return _fail(f"{exc}", EXIT_USAGE)
    if settings is None or not settings.get("hub_key"):
        return _fail("no hub configured, or its key is not pinned: pass --hub USER@HOST:PORT "
                     "and --hub-key, or run estate once to set up console.toml", EXIT_USAGE)
    try:
        request, output = build_request(args)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        manifest = asyncio.run(fetch(settings, request, output, _Progress()))
    except (HubUnreachable, ExportFailed) as exc:
        return _fail(str(exc), EXIT_FAIL)
    print(f"estate export: {output} ({manifest['rows']} rows, {manifest['bytes']} bytes) and "
          f"{manifest_path(output).name}; signed by hub {manifest['hub']['fingerprint']}")
    return EXIT_OK


def build_request(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The hub request and the output path, from the command line.

    Raises:
        ValueError: a missing or unusable argument, named.
    """
    fmt = args.format
    if fmt is None:
        suffix = args.output.suffix.lower().lstrip(".") if args.output else ""
        fmt = suffix if suffix in FORMATS else "csv"
    when = (args.as_of or time.strftime("%Y-%m-%d")).replace(":", "")
    output = args.output or Path(f"estate-{args.report}-{when}.{fmt}")
    if output.exists() and not args.force:
        raise ValueError(f"-o: {output} exists (use --force to overwrite)")
    if not output.parent.is_dir():
        raise ValueError(f"-o: folder {output.parent} does not exist")
    request: dict[str, Any] = {"report": args.report, "format": fmt, "file_name": output.name,
                               "filter": args.filter, "days": args.days}
    for key in ("agency", "site", "as_of", "since"):
        if getattr(args, key):
            request[key] = getattr(args, key)
    if args.report == "reconcile":
        if args.register is None:
            raise ValueError("--register FILE.csv: required for the reconcile report")
        try:
            data = args.register.read_bytes()
        except OSError as exc:
            raise ValueError(f"--register: cannot read {args.register}: "
                             f"{exc.strerror}") from None
        if len(data) > MAX_REGISTER_BYTES:
            raise ValueError(f"--register: {args.register} is over {MAX_REGISTER_BYTES} bytes")
        request["register"] = base64.b64encode(data).decode()
        request["register_name"] = args.register.name
    elif args.register is not None:
        raise ValueError("--register: only for --report reconcile")
    return request, output


class ExportFailed(Exception):
    pass


async def fetch(settings: dict[str, Any], request: dict[str, Any], output: Path,
                progress: Any = None) -> dict[str, Any]:
    """Ask the hub for an export; write FILE and FILE.manifest.json. Returns the manifest.

    The file is written beside its final name and moved there only once its SHA-256 matches
    the signed manifest: a cut connection never leaves a half file under the real name.
    """
    conn = await open_connection(settings["address"], settings["user"], settings.get("key"),
                                 settings["hub_key"])
    partial = output.with_name(f".{output.name}.partial")
    async with conn:
        try:
            process = await conn.create_process(EXPORT_COMMAND, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise ExportFailed(f"the hub refused the export channel ({exc})") from None
        process.stdin.write(json.dumps(request).encode())
        process.stdin.write_eof()
        manifest = await _header(process, progress)
        digest = hashlib.sha256()
        received = 0
        try:
            with open(partial, "wb") as f:
                while received < manifest["bytes"]:
                    chunk = await process.stdout.read(min(1 << 20, manifest["bytes"] - received))
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            if received != manifest["bytes"] or digest.hexdigest() != manifest["sha256"]:
                raise ExportFailed(f"the export arrived incomplete or changed ({received} of "
                                   f"{manifest['bytes']} bytes); nothing was written")
            manifest_path(output).write_text(json.dumps(manifest, ensure_ascii=False,
                                                        indent=1) + "\n", encoding="utf-8")
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
        try:  # let the hub finish the channel cleanly
            await asyncio.wait_for(process.wait(), 10)
        except (asyncio.TimeoutError, asyncssh.Error):
            pass
    if progress:
        progress.done()
    return dict(manifest)


async def _header(process: Any, progress: Any) -> dict[str, Any]:
    """Progress lines until the manifest; an error line ends it."""
    while True:
        line = await process.stdout.readline()
        if not line:
            status = await process.wait()
            raise ExportFailed(f"the hub closed the export without an answer (exit "
                               f"{status.exit_status})")
        try:
            doc = json.loads(line)
        except ValueError:
            raise ExportFailed(f"the hub answered {line[:200]!r}, not JSON") from None
        if doc.get("type") == "progress" and progress:
            progress(doc.get("rows", 0), doc.get("total", 0))
        elif doc.get("type") == "manifest":
            return dict(doc["manifest"])
        elif doc.get("type") == "error" or doc.get("status") == "error":
            raise ExportFailed(f"the hub refused: {doc.get('message')} ({doc.get('code')})")


class _Progress:
    """A one-line progress bar on a terminal (stderr); silent when not a terminal."""

    def __init__(self) -> None:
        self.shown = sys.stderr.isatty()

    def __call__(self, rows: int, total: int) -> None:
        if not self.shown:
            return
        width = 30
        filled = int(width * min(rows, total) / total) if total else 0
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {rows} rows")
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")


def verify_main(argv: list[str], settings_of: Any) -> int:
    parser = argparse.ArgumentParser(
        prog="estate verify",
        description="Check an export against its manifest (FILE.manifest.json): the file's "
                    "SHA-256 and the hub's signature. Prints who produced it and when; exits 1 "
                    "if anything does not match.")
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--manifest", type=Path, help="default: FILE.manifest.json")
    parser.add_argument("--hub-key", metavar="SHA256:…",
                        help="the hub key the export must be signed by (default: console.toml's "
                             "hub_key, if any)")
    args = parser.parse_args(argv)
    try:
        checked = verify(args.file, args.manifest)
    except VerifyError as exc:
        print(f"estate verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAIL
    m = checked.manifest
    scope = m["scope"]
    agencies = scope["agencies"] if isinstance(scope["agencies"], str) else \
        ", ".join(scope["agencies"])
    print(f"{args.file}: OK — unchanged since the hub produced it")
    print(f"  report       {m['report']} ({m['file_format']}, {m['rows']} rows)")
    print(f"  produced     {m['generated_at']} by operator {scope['operator']} "
          f"({scope['role']}; agencies: {agencies})")
    print(f"  as of        {m['as_of'] or 'the time it was produced'}")
    filters = {k: v for k, v in m["filters"].items() if v is not None}
    print(f"  filters      {', '.join(f'{k}={v}' for k, v in filters.items()) or 'none'}")
    print(f"  signed by    hub key {checked.fingerprint} (Estate {m['estate_version']})")
    expected = args.hub_key or _pinned_key(settings_of)
    if expected and expected != checked.fingerprint:
        print(f"estate verify: FAILED: signed by {checked.fingerprint}, not by the expected "
              f"hub key {expected}", file=sys.stderr)
        return EXIT_FAIL
    compared = f"matches {expected}" if expected else \
        "not compared: pass --hub-key with your hub's fingerprint"
    print(f"  hub key      {compared}")
    return EXIT_OK


def _pinned_key(settings_of: Any) -> str | None:
    try:
        settings = settings_of(argparse.Namespace(hub=None, key=None, hub_key=None, theme=None))
    except ValueError:
        return None
    return settings.get("hub_key") if settings else None


def _fail(message: str, status: int) -> int:
    print(f"estate export: {message}", file=sys.stderr)
    return status
