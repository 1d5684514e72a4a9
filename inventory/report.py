"""Report schema `estate.report/1`: strict validation driven by the field dictionary.

Stdlib only, so the agent shares it without pulling in the hub. `validate()` returns the
report unchanged or raises `ReportError` naming the first bad field's path and the problem.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.fields import BY_PATH, Field, children
from estate.inventory.protocol import MAX_REPORT_BYTES

SCHEMA = "estate.report/1"

_INT64 = 2**63
# \Z, not $: `$` also matches before a final newline, so "AGENT:1:2\n" would pass as a second
# id for the same report, and a time ending in a newline would sort after every real time in
# the store (regressions in tests/test_fuzz.py).
_REPORT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}:[0-9]{1,12}:[0-9]{1,20}\Z")
_RFC3339_UTC = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|\+00:00)\Z"
)

__all__ = [
    "MAX_REPORT_BYTES",
    "SCHEMA",
    "ReportError",
    "make_report_id",
    "parse",
    "validate",
]


class ReportError(EstateError, ValueError):
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
        doc = _DECODER.decode(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ReportError("", f"report is not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise ReportError("", "report is nested too deeply") from None
    except ValueError as exc:
        raise ReportError("", f"report is not valid JSON ({exc})") from None
    return validate(doc)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one, not one a report


def validate(report: Any) -> dict[str, Any]:
    """Check a decoded report against the schema.

    Returns:
        The same report object.

    Raises:
        ReportError: on the first field that breaks the schema.
    """
    try:
        _ROOT(report)
    except _Fail as fail:
        raise ReportError(fail.path(), fail.problem) from None
    if not _REPORT_ID.match(report["report_id"]):
        raise ReportError("report_id", "expected AGENT:BOOT_EPOCH:SEQUENCE")
    return report


# The schema is compiled once into nested checker functions: the hub validates every report,
# and a generic walk that formats a path string at every field costs several times more.
# A failing checker raises _Fail; each enclosing checker adds its key on the way out.

Checker = Callable[[Any], None]


class _Fail(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.parts: list[str] = []

    def path(self) -> str:
        out = ""
        for part in reversed(self.parts):
            out += part if part.startswith("[") or not out else "." + part
        return out


def _compile(field: Field | None, path: str = "") -> Checker:
    if field is None:
        return _object_checker(path, nullable=False)
    makers: dict[str, Callable[[Field], Checker]] = {
        "object": lambda f: _object_checker(f.path, f.nullable),
        "list": _list_checker, "str": _str_checker, "datetime": _datetime_checker,
        "bool": _bool_checker, "int": _number_checker, "float": _number_checker,
    }
    return makers[field.kind](field)


# Each checker handles null itself: one call per field, not two.

def _object_checker(path: str, nullable: bool) -> Checker:
    fields = children(path)
    # A string member without choices, the most common kind (every package's name, version,
    # arch, publisher), is checked here when it passes: a function call less per field.
    members = [(c.path.rsplit(".", 1)[-1], _compile(c),
                c.max_len if c.kind == "str" and not c.choices else -1) for c in fields]
    names = frozenset(name for name, _, _ in members)
    required = [c.path.rsplit(".", 1)[-1] for c in fields if not c.optional]

    def check(value: Any) -> None:
        if type(value) is not dict:
            if value is None and nullable:
                return
            raise _Fail(_expected("an object", value))
        if len(value) != len(names) or not names.issuperset(value):
            _unknown_or_missing(value, names, required)
        name = ""
        try:
            for name, member, max_len in members:
                v = value.get(name)  # only an optional member can be absent: null
                if type(v) is not str or len(v) > max_len or not v.isascii():
                    member(v)
        except _Fail as fail:
            fail.parts.append(name)
            raise

    return check


def _unknown_or_missing(value: dict[Any, Any], names: frozenset[str],
                        required: list[str]) -> None:
    for key in value:
        if key not in names:
            fail = _Fail("unknown field")
            fail.parts.append(key if isinstance(key, str) and len(key) <= 64 else "(long key)")
            raise fail
    for name in required:
        if name not in value:
            fail = _Fail("missing (use null when unknown)")
            fail.parts.append(name)
            raise fail


def _list_checker(field: Field) -> Checker:
    item = _compile(BY_PATH[field.path + "[]"])
    limit, nullable = field.max_items, field.nullable

    def check(value: Any) -> None:
        if type(value) is not list:
            if value is None and nullable:
                return
            raise _Fail(_expected("a list", value))
        if len(value) > limit:
            raise _Fail(f"{len(value)} items, over the limit of {limit}")
        i = 0
        try:
            for i, v in enumerate(value):  # noqa: B007 - i names the failing item
                item(v)
        except _Fail as fail:
            fail.parts.append(f"[{i}]")
            raise

    return check


def _str_checker(field: Field) -> Checker:
    limit, choices, nullable = field.max_len, frozenset(field.choices), field.nullable

    def check(value: Any) -> None:
        if type(value) is not str:
            if value is None and nullable:
                return
            raise _Fail(_expected("a string", value))
        if len(value) > limit:
            raise _Fail(f"{len(value)} characters, over the limit of {limit}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Fail("not valid Unicode (lone surrogate)") from None
        if choices and value not in choices:
            raise _Fail(f"expected one of {', '.join(field.choices)}")

    return check


def _bool_checker(field: Field) -> Checker:
    nullable = field.nullable

    def check(value: Any) -> None:
        if type(value) is not bool and not (value is None and nullable):
            raise _Fail(_expected("true or false", value))

    return check


def _datetime_checker(field: Field) -> Checker:
    nullable = field.nullable

    def check(value: Any) -> None:
        if value is None and nullable:
            return
        if value is None:
            raise _Fail("must not be null")
        if not isinstance(value, str) or not _RFC3339_UTC.match(value):
            raise _Fail("expected an RFC 3339 UTC time like 2026-01-31T12:00:00Z")
        try:
            datetime.fromisoformat(value[:19])
        except ValueError:
            raise _Fail("not a real date and time") from None

    return check


def _number_checker(field: Field) -> Checker:
    whole, low, high = field.kind == "int", field.minimum, field.maximum
    nullable = field.nullable

    def check(value: Any) -> None:
        t = type(value)
        if t is not int and t is not float:
            if value is None and nullable:
                return
            raise _Fail(_expected("a number", value))
        if whole and t is not int:
            raise _Fail("expected a whole number")
        if t is float and not math.isfinite(value):
            raise _Fail("expected a finite number")
        if t is int and not -_INT64 <= value < _INT64:
            raise _Fail("number out of the 64-bit range")
        if low is not None and value < low:
            raise _Fail(f"{value} is below the minimum {low:g}")
        if high is not None and value > high:
            raise _Fail(f"{value} is above the maximum {high:g}")

    return check


def _expected(what: str, value: Any) -> str:
    return "must not be null" if value is None else f"expected {what}, got {_kind_of(value)}"


_ROOT = _compile(None)


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
