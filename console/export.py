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
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from estate.console import _settings
from estate.console._client import HubUnreachable, open_connection
from estate.console._settings import ConfigError, PinnedHub
from estate.console.remote import add_connection_options, connection_settings
from estate.inventory.errors import EstateError
from estate.inventory.export._columns import REPORTS
from estate.inventory.export._register import MAX_REGISTER_BYTES
from estate.inventory.export._writers import FORMATS
from estate.inventory.export.manifest import VerifyError, check_shape, manifest_path, verify
from estate.inventory.protocol import EXPORT_COMMAND, Exit
from estate.inventory.sanitise import plain

__all__ = ["ExportFailed", "ExportOptions", "build_request", "define_export", "define_verify",
           "export_main", "fetch", "verify_main"]


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where: `estate export`'s flags, or the console's export dialog."""

    report: str
    output: Path | None = None  # None: estate-REPORT-DATE.FORMAT in the current folder
    format: str | None = None  # None: from the output's extension, else csv
    filter: str = ""
    agency: str | None = None
    site: str | None = None
    as_of: str | None = None
    since: str | None = None
    until: str | None = None  # availability: the window's end (default now)
    days: int = 30
    register: Path | None = None
    force: bool = False


def define_export(parser: argparse.ArgumentParser) -> None:
    """`estate export`'s arguments (console/cli.py adds them when the verb is used)."""
    parser.description = ("Export the estate for an audit, produced by the hub in your "
                          "agencies' scope, with a manifest the hub signs (FILE.manifest.json; "
                          "check it with estate verify FILE).")
    parser.epilog = ("reports: inventory (one row per host), changes (change events; --since), "
                     "stale (not seen for --days), unsupported (OS past its vendor's end of "
                     "support), reconcile (--register FILE.csv against the estate), "
                     "compliance (results per host and control), availability (online share "
                     "and outages per host and site from --since, default 30 days back, to "
                     "--until, default now). Dates are UTC: 2026-03-31 or "
                     "2026-03-31T17:00:00Z.")
    add_connection_options(parser)
    parser.add_argument("--report", required=True, choices=tuple(REPORTS),
                        help="which report (see below)")
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
    parser.add_argument("--since", metavar="DATE",
                        help="changes and availability: from this date")
    parser.add_argument("--until", metavar="DATE",
                        help="availability: to this date (the end of that day; default now)")
    parser.add_argument("--days", type=int, default=30,
                        help="stale and reconcile: not seen for this many days (default 30)")
    parser.add_argument("--register", type=Path, metavar="FILE.csv",
                        help="reconcile: the asset register (CSV with a header naming serial, "
                             "hostname, asset tag and/or MAC columns)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.set_defaults(run=export_main)


def export_main(args: argparse.Namespace) -> int:
    found = connection_settings(args, "export")  # says on stderr why there is none
    if found is None:
        return Exit.USAGE
    hub, _ = found
    options = ExportOptions(
        report=args.report, output=args.output, format=args.format, filter=args.filter,
        agency=args.agency, site=args.site, as_of=args.as_of, since=args.since,
        until=args.until, days=args.days, register=args.register, force=args.force)
    try:
        request, output = build_request(options)
    except ValueError as exc:
        return _fail(str(exc), Exit.USAGE)
    try:
        manifest = asyncio.run(fetch(hub, request, output, _Progress()))
    except (HubUnreachable, ExportFailed) as exc:
        return _fail(str(exc), Exit.FAIL)
    print(f"estate export: {output} ({manifest['rows']} rows, {manifest['bytes']} bytes) and "
          f"{manifest_path(output).name}; signed by hub "
          f"{plain(manifest['hub']['fingerprint'], 80)}")
    return Exit.OK


def build_request(options: ExportOptions) -> tuple[dict[str, Any], Path]:
    """The hub request and the output path.

    Raises:
        ValueError: a missing or unusable option, named.
    """
    fmt = options.format
    if fmt is None:
        suffix = options.output.suffix.lower().lstrip(".") if options.output else ""
        fmt = suffix if suffix in FORMATS else "csv"
    when = (options.as_of or options.until or time.strftime("%Y-%m-%d")).replace(":", "")
    output = options.output or Path(f"estate-{options.report}-{when}.{fmt}")
    for target in (output, manifest_path(output)):
        # Someone who can write to the folder could point a link at a file of yours.
        if target.is_symlink():
            raise ValueError(f"-o: {target} is a symbolic link; refusing to write through it "
                             f"(remove it, or choose another name)")
    if output.exists() and not options.force:
        raise ValueError(f"-o: {output} exists (use --force to overwrite)")
    if not output.parent.is_dir():
        raise ValueError(f"-o: folder {output.parent} does not exist")
    request: dict[str, Any] = {"report": options.report, "format": fmt, "file_name": output.name,
                               "filter": options.filter, "days": options.days}
    for key in ("agency", "site", "as_of", "since", "until"):
        if getattr(options, key):
            request[key] = getattr(options, key)
    if options.report == "reconcile":
        if options.register is None:
            raise ValueError("--register FILE.csv: required for the reconcile report")
        try:
            data = options.register.read_bytes()
        except OSError as exc:
            raise ValueError(f"--register: cannot read {options.register}: "
                             f"{exc.strerror}") from None
        if len(data) > MAX_REGISTER_BYTES:
            raise ValueError(f"--register: {options.register} is over {MAX_REGISTER_BYTES} bytes")
        request["register"] = base64.b64encode(data).decode()
        request["register_name"] = options.register.name
    elif options.register is not None:
        raise ValueError("--register: only for --report reconcile")
    return request, output


class ExportFailed(EstateError):
    """The hub refused the export, or what arrived is not what it signed; nothing was
    written."""


async def fetch(hub: PinnedHub, request: dict[str, Any], output: Path,
                progress: Any = None) -> dict[str, Any]:
    """Ask the hub for an export; write FILE and FILE.manifest.json. Returns the manifest.

    The file is written beside its final name and moved there only once its SHA-256 matches
    the signed manifest: a cut connection never leaves a half file under the real name. Both
    files go through new files created with O_EXCL|O_NOFOLLOW (a planted file or symlink is
    never written through) and are renamed over their names, which replaces a link planted
    since the check rather than following it.
    """
    conn = await open_connection(hub.address, hub.user, hub.key, hub.hub_key)
    partial = _new_file_beside(output)
    partial_manifest: Path | None = None
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
            with open(partial, "wb") as f:  # ours: created by _new_file_beside
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
            partial_manifest = _new_file_beside(manifest_path(output))
            partial_manifest.write_text(json.dumps(manifest, ensure_ascii=False, indent=1)
                                        + "\n", encoding="utf-8")
            os.replace(partial_manifest, manifest_path(output))
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
            if partial_manifest is not None:
                partial_manifest.unlink(missing_ok=True)
        try:  # let the hub finish the channel cleanly
            await asyncio.wait_for(process.wait(), 10)
        except (asyncio.TimeoutError, asyncssh.Error):
            pass
    if progress:
        progress.done()
    return dict(manifest)


def _new_file_beside(target: Path) -> Path:
    """A new empty 0600 file in `target`'s folder, for writing then renaming over it.

    Exports hold the estate's inventory: only their owner reads them until they choose
    otherwise.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(10):
        path = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
        try:
            os.close(os.open(path, flags, 0o600))
            return path
        except FileExistsError:
            continue
    raise ExportFailed(f"cannot create a temporary file beside {target}")


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
        except (ValueError, RecursionError):
            raise ExportFailed(f"the hub answered {line[:200]!r}, not JSON") from None
        if not isinstance(doc, dict):
            raise ExportFailed(f"the hub answered {line[:200]!r}, not a JSON object")
        if doc.get("type") == "progress" and progress:
            progress(_count(doc.get("rows")), _count(doc.get("total")))
        elif doc.get("type") == "manifest":
            try:  # its fields are printed and its size drives the read: check them first
                return dict(check_shape(doc.get("manifest"), Path("the hub's manifest")))
            except VerifyError as exc:
                raise ExportFailed(str(exc)) from None
        elif doc.get("type") == "error" or doc.get("status") == "error":
            # The hub's words, line by line through the sanitiser: an escape sequence in them
            # must not reach the terminal (a register's problems are one per line).
            raise ExportFailed(f"the hub refused: {_lines(doc.get('message'))} "
                               f"({plain(doc.get('code'), 40)})")


def _lines(text: Any, most: int = 50) -> str:
    return "\n".join(plain(line, 500) for line in str(text).splitlines()[:most])


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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


def define_verify(parser: argparse.ArgumentParser) -> None:
    """`estate verify`'s arguments (console/cli.py adds them when the verb is used)."""
    parser.description = ("Check an export against its manifest (FILE.manifest.json): the "
                          "file's SHA-256 and the hub's signature, by a hub key you pinned. "
                          "Prints who produced it and when; exits 1 if anything does not "
                          "match.")
    parser.add_argument("file", type=Path, metavar="FILE", help="the exported file")
    parser.add_argument("--manifest", type=Path,
                        help="its manifest (default: FILE.manifest.json)")
    # SUPPRESS: a --hub-key before the verb (`estate --hub-key … verify`) is kept.
    parser.add_argument("--hub-key", metavar="SHA256:…", default=argparse.SUPPRESS,
                        help="the hub key the export must be signed by (default: console.toml's "
                             "hub_key and the hubs in known_hubs beside it; with none of "
                             "these, verify fails: a signature by an unpinned key proves "
                             "nothing)")
    parser.set_defaults(run=verify_main)


def verify_main(args: argparse.Namespace) -> int:
    try:
        checked = verify(args.file, args.manifest)
    except VerifyError as exc:
        print(f"estate verify: FAILED: {plain(exc, 4000)}", file=sys.stderr)
        return Exit.FAIL
    # A valid signature proves only that *some* key signed: anyone can re-sign a changed file
    # with a key of their own. Only a key this console pinned makes it the hub's word.
    pinned = {args.hub_key} if args.hub_key else _pinned_keys()
    if checked.fingerprint not in pinned:
        if pinned:
            print(f"estate verify: FAILED: signed by {checked.fingerprint}, not by the expected "
                  f"hub key {', '.join(sorted(plain(p, 80) for p in pinned))}",
                  file=sys.stderr)
        else:
            print(f"estate verify: FAILED: the signature is valid but made by key "
                  f"{checked.fingerprint}, which is not pinned: pass --hub-key with your "
                  f"hub's fingerprint (estate-hub serve prints it), or log in to that hub "
                  f"once with estate", file=sys.stderr)
        return Exit.FAIL
    # Every field below came from a file: plain() keeps its escapes off the terminal.
    m = checked.manifest
    scope = m["scope"]
    agencies = scope["agencies"] if isinstance(scope["agencies"], str) else \
        ", ".join(scope["agencies"])
    filters = {k: v for k, v in m["filters"].items() if v is not None}
    shown_filters = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
    print(f"{args.file}: OK — unchanged since the hub produced it")
    print(f"  report       {plain(m['report'])} ({plain(m['file_format'])}, {m['rows']} rows)")
    print(f"  produced     {plain(m['generated_at'])} by operator {plain(scope['operator'])} "
          f"({plain(scope['role'])}; agencies: {plain(agencies, 2000)})")
    print(f"  as of        {plain(m['as_of'] or 'the time it was produced')}")
    print(f"  filters      {plain(shown_filters, 2000)}")
    print(f"  signed by    hub key {checked.fingerprint} (Estate {plain(m['estate_version'])})")
    print(f"  hub key      matches {checked.fingerprint}"
          f"{'' if args.hub_key else ' (pinned by this console)'}")
    return Exit.OK


def _pinned_keys() -> set[str]:
    """The hub keys this console trusts: console.toml's hub_key and the known_hubs file."""
    from estate.console import _known_hubs

    keys = _known_hubs.fingerprints()
    try:
        config = _settings.load_config()
    except ConfigError:
        return keys  # verify needs no working console.toml: --hub-key works without one
    if config.hub_key:
        keys.add(config.hub_key)
    return keys


def _fail(message: str, status: int) -> int:
    print(f"estate export: {_lines(message)}", file=sys.stderr)
    return status
