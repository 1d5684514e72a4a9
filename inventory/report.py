"""Report schema `estate.report/1`: strict validation driven by the field dictionary.

Stdlib only, so the agent shares it without pulling in the hub. `validate()` returns the
report unchanged or raises `ReportError` naming the first bad field's path and the problem.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from inventory.fields import BY_PATH, FIELDS, Field, children

SCHEMA = "estate.report/1"
MAX_REPORT_BYTES = 8 * 1024 * 1024
"""Largest uncompressed report accepted; a report of 5,000 packages is about 400 KB."""

_INT64 = 2**63
_REPORT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}:[0-9]{1,12}:[0-9]{1,20}$")
_RFC3339_UTC = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|\+00:00)$"
)

__all__ = [
    "MAX_REPORT_BYTES",
    "SCHEMA",
    "ReportError",
    "make_report_id",
    "parse",
    "validate",
]


class ReportError(ValueError):
    """A report that breaks the schema.

    Attributes:
        path: where, as a field path with list indexes (`hardware.disks[2].size_bytes`).
        problem: what is wrong, in words.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'report'}: {problem}")
        self.path = path
        self.problem = problem


def make_report_id(agent_id: str | None, boot_epoch: int, sequence: int) -> str:
    """Build a report id: unique per agent, boot and sequence number."""
    return f"{agent_id or 'local'}:{int(boot_epoch)}:{int(sequence)}"


def parse(data: bytes, max_bytes: int = MAX_REPORT_BYTES) -> dict[str, Any]:
    """Decode and validate a report from JSON bytes.

    Raises:
        ReportError: too large, not UTF-8 JSON, nested too deep, or invalid.
    """
    if len(data) > max_bytes:
        raise ReportError("", f"report is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ReportError("", f"report is not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise ReportError("", "report is nested too deeply") from None
    except ValueError as exc:
        raise ReportError("", f"report is not valid JSON ({exc})") from None
    return validate(doc)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def validate(report: Any) -> dict[str, Any]:
    """Check a decoded report against the schema.

    Returns:
        The same report object.

    Raises:
        ReportError: on the first field that breaks the schema.
    """
    if not isinstance(report, dict):
        raise ReportError("", f"expected an object, got {_kind_of(report)}")
    _check_object(report, "", "")
    if not _REPORT_ID.match(report["report_id"]):
        raise ReportError("report_id", "expected AGENT:BOOT_EPOCH:SEQUENCE")
    return report


# Members of every object path, computed once: validation runs for every report on the hub.
_MEMBERS: dict[str, dict[str, Field]] = {
    f.path: {c.path.rsplit(".", 1)[-1]: c for c in children(f.path)}
    for f in FIELDS if f.kind == "object"
}
_MEMBERS[""] = {c.path: c for c in children("")}


def _check_object(obj: dict[str, Any], schema_path: str, where: str) -> None:
    members = _MEMBERS[schema_path]
    for key in obj:
        if key not in members:
            name = key if isinstance(key, str) and len(key) <= 64 else "(long key)"
            raise ReportError(_join(where, name), "unknown field")
    for name, field in members.items():
        here = _join(where, name)
        if name not in obj:
            raise ReportError(here, "missing (use null when unknown)")
        _check_value(obj[name], field, here)


def _check_value(value: Any, field: Field, where: str) -> None:
    if value is None:
        if not field.nullable:
            raise ReportError(where, "must not be null")
        return
    kind = field.kind
    if kind == "object":
        if not isinstance(value, dict):
            raise ReportError(where, f"expected an object, got {_kind_of(value)}")
        _check_object(value, field.path, where)
    elif kind == "list":
        if not isinstance(value, list):
            raise ReportError(where, f"expected a list, got {_kind_of(value)}")
        if len(value) > field.max_items:
            raise ReportError(where, f"{len(value)} items, over the limit of {field.max_items}")
        item = BY_PATH[field.path + "[]"]
        for i, v in enumerate(value):
            _check_value(v, item, f"{where}[{i}]")
    elif kind == "str":
        _check_str(value, field, where)
    elif kind == "datetime":
        _check_datetime(value, where)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ReportError(where, f"expected true or false, got {_kind_of(value)}")
    else:
        _check_number(value, field, where)


def _check_str(value: Any, field: Field, where: str) -> None:
    if not isinstance(value, str):
        raise ReportError(where, f"expected a string, got {_kind_of(value)}")
    if len(value) > field.max_len:
        raise ReportError(where, f"{len(value)} characters, over the limit of {field.max_len}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ReportError(where, "not valid Unicode (lone surrogate)") from None
    if field.choices and value not in field.choices:
        raise ReportError(where, f"expected one of {', '.join(field.choices)}")


def _check_datetime(value: Any, where: str) -> None:
    if not isinstance(value, str) or not _RFC3339_UTC.match(value):
        raise ReportError(where, "expected an RFC 3339 UTC time like 2026-01-31T12:00:00Z")
    try:
        datetime.fromisoformat(value[:19])
    except ValueError:
        raise ReportError(where, "not a real date and time") from None


def _check_number(value: Any, field: Field, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(where, f"expected a number, got {_kind_of(value)}")
    if field.kind == "int" and not isinstance(value, int):
        raise ReportError(where, "expected a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ReportError(where, "expected a finite number")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise ReportError(where, "number out of the 64-bit range")
    if field.minimum is not None and value < field.minimum:
        raise ReportError(where, f"{value} is below the minimum {field.minimum:g}")
    if field.maximum is not None and value > field.maximum:
        raise ReportError(where, f"{value} is above the maximum {field.maximum:g}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
