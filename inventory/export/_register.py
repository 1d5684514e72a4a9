"""An existing asset register (CSV) for `reconcile`: columns found by name, rows checked.

Columns are recognised by their header, whatever the case, spaces or punctuation: serial
(`serial`, `serial number`, `sn`), hostname (`hostname`, `host`, `computer name`, `device
name`, `name`), asset tag (`asset tag`, `asset`, `asset number`, `asset id`, `tag`) and MAC
(`mac`, `mac address`). Other columns are ignored. Every problem names its line; a register
with any is refused as a whole, so an auditor never gets a reconciliation of half a file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

from estate.inventory.errors import EstateError

MAX_REGISTER_BYTES = 10 * 1024 * 1024
MAX_REGISTER_ROWS = 200_000
MAX_PROBLEMS = 20

_NAMES = {
    "serial": ("serial", "serialnumber", "serialno", "sn"),
    "hostname": ("hostname", "host", "computername", "devicename", "name"),
    "asset_tag": ("assettag", "asset", "assetnumber", "assetid", "tag"),
    "mac": ("mac", "macaddress"),
}
_MAC = re.compile(r"^[0-9a-f]{12}$")


class RegisterError(EstateError, ValueError):
    """The register cannot be used; the message lists the problems with their lines."""


@dataclass(frozen=True)
class Entry:
    line: int
    serial: str | None
    hostname: str | None
    asset_tag: str | None
    mac: str | None  # normalised: 12 lower-case hex digits


def normal_mac(text: str) -> str:
    return re.sub(r"[^0-9a-f]", "", text.lower())


def parse_register(data: bytes, name: str = "register") -> list[Entry]:
    """The register's rows.

    Raises:
        RegisterError: not UTF-8 CSV, no column to match on, or bad and duplicate rows.
    """
    if len(data) > MAX_REGISTER_BYTES:
        raise RegisterError(f"{name}: {len(data)} bytes, over the limit of "
                            f"{MAX_REGISTER_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RegisterError(f"{name}: not UTF-8 text (byte {exc.start}); save it as "
                            f"CSV UTF-8") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        return _entries(rows, name)
    except csv.Error as exc:
        # The csv module's own refusals (a cell over its 128 KiB field limit, say) name no
        # line unless we do; they are the register's problem, not the hub's.
        raise RegisterError(f"{name}: line {rows.line_num}: not readable as CSV "
                            f"({exc})") from None


def _entries(rows: Iterator[list[str]], name: str) -> list[Entry]:
    header = next(rows, None)
    if not header:
        raise RegisterError(f"{name}: empty; expected a header line naming the columns")
    where = _columns(header)
    if not {"serial", "hostname", "mac"} & set(where):
        raise RegisterError(f"{name}: line 1: no column to match on: expected serial, "
                            f"hostname or MAC (found: {', '.join(h.strip() for h in header)})")
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for number, row in enumerate(rows, start=2):
        if len(entries) >= MAX_REGISTER_ROWS:
            raise RegisterError(f"{name}: more than {MAX_REGISTER_ROWS} rows")
        if not any(cell.strip() for cell in row):
            continue  # blank lines are not rows
        if len(row) != len(header):
            problems.append(f"line {number}: {len(row)} fields, the header has {len(header)}")
            continue
        values = {key: row[i].strip() or None for key, i in where.items()}
        mac = values.get("mac")
        if mac is not None:
            mac = normal_mac(mac)
            if not _MAC.match(mac):
                problems.append(f"line {number}: MAC {values['mac']!r} is not a MAC address")
                continue
        entry = Entry(number, values.get("serial"), values.get("hostname"),
                      values.get("asset_tag"), mac)
        if not (entry.serial or entry.hostname or entry.mac):
            problems.append(f"line {number}: no serial, hostname or MAC to match on")
            continue
        for key, value in (("serial", entry.serial), ("asset tag", entry.asset_tag),
                           ("MAC", entry.mac)):
            if value:
                first = seen.setdefault((key, value.lower()), number)
                if first != number:
                    problems.append(f"line {number}: duplicate {key} {value!r} (also on line "
                                    f"{first})")
        entries.append(entry)
    if problems:
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS \
            else ""
        raise RegisterError(f"{name}: " + "; ".join(problems[:MAX_PROBLEMS]) + more)
    return entries


def _columns(header: list[str]) -> dict[str, int]:
    where: dict[str, int] = {}
    for i, title in enumerate(header):
        squashed = re.sub(r"[^a-z0-9]", "", title.lower())
        for key, names in _NAMES.items():
            if squashed in names and key not in where:
                where[key] = i
    return where
