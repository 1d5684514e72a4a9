"""Hypothesis strategies for the fuzz tests: valid inputs mutated field by field, and raw bytes.

Reports start from `estate.inventory.simulate.fake_report` (schema-valid,
                                                            varied per identity) and get
one to three mutations at paths drawn from the report itself: a hostile value, a deleted or an
extra key, a string with a trailing newline or a lone surrogate, a list past its limit, or raw
JSON that `json.dumps` cannot produce (deep nesting, `1e999`, a 5,000-digit number).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
from functools import cache
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from estate.inventory.fields import BY_PATH
from estate.inventory.filters import FIELDS as FILTER_FIELDS
from estate.inventory.hostlist import COLUMN_KEYS

# --- profiles --------------------------------------------------------------------------------
# `make test` runs a small, derandomised fuzz (the same examples every run, so it cannot flake);
# `make fuzz` sets ESTATE_FUZZ=long: a random search of 30 times as many examples per test
# (ESTATE_FUZZ_EXAMPLES=N sets the count instead). No example database is kept, so nothing
# is written into the repository.

LONG = os.environ.get("ESTATE_FUZZ") == "long"
LONG_EXAMPLES = int(os.environ.get("ESTATE_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: `examples` in the bounded run, more in `make fuzz`."""
    count = (LONG_EXAMPLES or examples * 30) if LONG else examples
    return settings(max_examples=count, derandomize=not LONG, database=None, deadline=None,
                    print_blob=LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- hostile values --------------------------------------------------------------------------

# Raw JSON spliced into the encoded text where a value stood: what json.dumps never writes.
RAW_JSON = ["1e999", "-1e999", "1" * 5000, "-0", "1.0e-400", "NaN", "Infinity", "-Infinity",
            "[" * 5000 + "]" * 5000, "{\"a\":" * 3000 + "1" + "}" * 3000, "[" * 400 + "]" * 400,
            "\"\\ud800\"", "\"\\udfff\\ud800\"", "\"\\u0000\"", "9223372036854775808",
            "-9223372036854775809", "9223372036854775807", "1E400", "0.1e1"]
_MARK = "\x00fuzz-raw-"

EDGE_INTS = [0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
             10**30, 65536, 65537, 100_000, 86400, 86401, 128, 129]
EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 100.0,
               100.00000000000001, -1e-300, 0.5]
EDGE_TEXT = ["", " ", "\n", "\x00", "\x1b[2J", "\u202e", "\u009b", "\ud800", "é" * 300,
             "x" * 65, "x" * 129, "x" * 257, "x" * 1025, "x" * 70_000, "null", "0",
             "estate.report/1\n", "linux\n", "tcp ", "ipv4\x00", "To be filled by O.E.M.",
             "İ" * 40, "\U0001f600" * 70]

# RFC 3339 look-alikes, valid and not: year 0001 and 9999, offsets, leap seconds, newlines.
EDGE_DATES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
              "9999-12-31T23:59:59.999999999Z", "2026-01-31T12:00:00Z\n", "2026-02-29T00:00:00Z",
              "2026-01-31T23:59:60Z", "2026-01-31", "2026-01-31T12:00:00", " 2026-01-31 "]
DATES = st.sampled_from(EDGE_DATES) | st.builds(
    lambda y, mo, d, h, mi, s, frac, suffix: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:"
                                             f"{s:02d}{frac}{suffix}",
    st.sampled_from([1, 2, 1969, 1970, 2026, 2038, 9999]), st.integers(0, 13),
    st.integers(0, 32), st.integers(0, 25), st.integers(0, 60), st.integers(0, 61),
    st.sampled_from(["", ".5", ".123456789", ".1234567890"]),
    st.sampled_from(["Z", "+00:00", "+01:00", "-23:59", "", "z", "\n", "Z\n", "+00:00\n",
                     " ", "-00:00", "+24:00"]))

TEXT = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40), DATES,
                 st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
SCALARS = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS),
                    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(EDGE_FLOATS),
                    st.floats(), TEXT)
VALUES = st.one_of(
    SCALARS,
    st.sampled_from(RAW_JSON).map(lambda raw: _MARK + raw),
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), SCALARS, max_size=3),
)


def encode(doc: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes with raw fragments spliced in; lone surrogates become invalid UTF-8."""
    text = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True)
    if "fuzz-raw-" in text:
        for raw in RAW_JSON:
            text = text.replace(json.dumps(_MARK + raw, ensure_ascii=ascii_only), raw)
    return text.encode("utf-8", "surrogatepass")


# --- reports ---------------------------------------------------------------------------------

@cache
def base_report(index: int) -> dict[str, Any]:
    """A schema-valid simulated report (the hub's own generator), cached per identity."""
    from estate.inventory.simulate import AGENCIES, fake_report

    agency = list(AGENCIES)[index % len(AGENCIES)]
    ident = SimpleNamespace(index=index, agent_id="fuzz-agent", agency=agency, site="Site")
    report = fake_report(ident, 1, 300.0)  # type: ignore[arg-type]
    report["collected_at"] = "2026-01-31T12:00:00Z"
    report["system"]["boot_time"] = "2026-01-30T12:00:00Z"
    report["system"]["users"] = [{"name": "alice", "terminal": "pts/0", "host": None,
                                  "started": "2026-01-31T08:00:00Z"}]
    report["hardware"]["battery"] = {"percent": 50.0, "plugged": True, "seconds_left": 600}
    report["network"]["interfaces"][0]["counters"] = {
        "bytes_sent": 1, "bytes_recv": 2, "packets_sent": 3, "packets_recv": 4,
        "errors_in": 0, "errors_out": 0}
    report["connectivity"]["rates"] = [{"interface": "eth0", "rx_bytes_per_s": 1.5,
                                        "tx_bytes_per_s": 0.0, "window_s": 60.0}]
    report["errors"] = [{"collector": "battery", "reason": "timed out"}]
    return report


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node's path (dict keys and list indexes), the first few items of long lists."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value[:3]):
            out += paths_of(child, (*prefix, i))
    return out


def field_of(path: tuple[Any, ...]) -> Any:
    """The field dictionary's entry for a concrete path, or None."""
    text = ""
    for part in path:
        text += "[]" if isinstance(part, int) else ("." + part if text else part)
    return BY_PATH.get(text)


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> None:
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    old = parent[last]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "extra" and isinstance(old, dict):
        old[value if isinstance(value, str) else "extra"] = None
    elif how == "append" and isinstance(old, str):
        parent[last] = old + (value if isinstance(value, str) else "\n")
    elif how == "overflow" and isinstance(old, list):
        field = field_of(path)
        limit = field.max_items if field else 300
        if old and limit <= 2000:  # a 100,001-package list is fuzzed by size, not here
            parent[last] = old + [copy.deepcopy(old[0]) for _ in range(limit + 1 - len(old))]
    elif how == "nest":
        parent[last] = [old] if isinstance(value, bool) and value else {"v": old}
    elif how == "boundary":
        field = field_of(path)
        if field is not None and field.kind in ("int", "float"):
            edge = {"min": field.minimum, "max": field.maximum}
            bound = edge["max" if value is True else "min"]
            if bound is not None:
                parent[last] = bound + (1 if value is True else -1) * (
                    1 if field.kind == "int" else 1e-9)
        elif field is not None and field.kind == "str":
            parent[last] = "y" * (field.max_len + (1 if value is True else 0))


KEY_PATHS = [("report_id",), ("collected_at",), ("schema",), ("agent", "id"),
             ("agent", "interval_s"), ("system", "boot_time"), ("system", "users", 0, "started"),
             ("system", "hostname"), ("system", "os"), ("hardware", "disks"),
             ("hardware", "disks", 0, "size_bytes"), ("hardware", "memory", "total_bytes"),
             ("hardware", "volumes", 0, "used_percent"), ("hardware", "cpu"),
             ("network", "interfaces", 0, "addresses"), ("network", "interfaces", 0, "mac"),
             ("network", "interfaces", 0, "addresses", 0, "address"), ("software", "packages"),
             ("software", "packages", 0, "name"), ("software", "hash"), ("errors",)]

MUTATIONS = st.tuples(
    st.sampled_from(["replace", "replace", "replace", "delete", "extra", "append", "append",
                     "overflow", "nest", "boundary"]),
    VALUES)


@st.composite
def reports(draw: st.DrawFn, agent_id: str = "fuzz-agent") -> tuple[dict[str, Any], bytes]:
    """(the mutated document, its bytes as sent): JSON, sometimes gzipped, sometimes broken."""
    doc = copy.deepcopy(base_report(draw(st.integers(0, 7))))
    doc["agent"]["id"] = agent_id
    doc["report_id"] = f"{agent_id}:1:{draw(st.integers(1, 10**12))}"
    paths = paths_of(doc)
    for _ in range(draw(st.integers(0, 3))):
        # Half the time, a field the hub keys on (ids, times, lists it walks) rather than any.
        path = draw(st.sampled_from(KEY_PATHS) | st.sampled_from(paths))
        how, value = draw(MUTATIONS)
        try:
            _mutate(doc, path, how, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path's parent
    body = encode(doc, ascii_only=draw(st.booleans()))
    wrap = draw(st.sampled_from(["plain", "plain", "gzip", "gzip+tail", "cut"]))
    if wrap == "gzip":
        body = gzip.compress(body, mtime=0)
    elif wrap == "gzip+tail":
        body = gzip.compress(body, mtime=0) + draw(st.binary(max_size=16))
    elif wrap == "cut":
        body = body[:draw(st.integers(0, len(body)))]
    return doc, body


RAW_BODIES = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b),
    st.binary(max_size=256).map(lambda b: gzip.compress(b, mtime=0)),
    st.recursive(st.one_of(SCALARS, st.sampled_from(RAW_JSON).map(lambda r: _MARK + r)),
                 lambda kids: st.one_of(st.lists(kids, max_size=4),
                                        st.dictionaries(st.text(max_size=10), kids,
                                                        max_size=4)),
                 max_leaves=20).map(encode),
)

# --- operator API ----------------------------------------------------------------------------

API_OPS = ["columns", "summary", "hosts", "host", "changes", "reports", "resolve", "nope",
           "__init__", "_hosts", "store", ""]
API_PARAMS = ["filter", "sort", "reverse", "offset", "after", "limit", "agent_id", "host",
              "since", "x"]


@st.composite
def filters(draw: st.DrawFn) -> str:
    """Filter text: words built from the grammar, plus free text."""
    word = st.builds(
        lambda neg, name, op, value: f"{neg}{name}{op}{value}",
        st.sampled_from(["", "-", "--"]),
        st.one_of(st.sampled_from(sorted(FILTER_FIELDS)),
                  st.from_regex(r"[a-z_]{0,6}", fullmatch=True)),
        st.sampled_from([":", ">=", "<=", ">", "<", "=", "==", ":>", ""]),
        st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "1_0", "0x10", "٣", "",
                                   "16", "-1", "online", "offline", "ready", "1e-400",
                                   "9" * 400]),
                  st.text(max_size=10)))
    words = draw(st.lists(st.one_of(word, st.text(max_size=12)), max_size=6))
    text = " ".join(words)
    if draw(st.integers(0, 20)) == 0:
        text = text + " " * 1000  # past the length limit
    return text


@st.composite
def api_lines(draw: st.DrawFn) -> bytes:
    """One request line: a structured request with hostile parameters, or raw bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(RAW_BODIES)
    request: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        request["id"] = draw(st.one_of(st.integers(), st.text(max_size=70), SCALARS,
                                       st.sampled_from(["\ud800", "x" * 65, 2**70, True])))
    if draw(st.integers(0, 9)):
        request["op"] = draw(st.one_of(st.sampled_from(API_OPS), SCALARS))
    for key in draw(st.lists(st.sampled_from(API_PARAMS), max_size=4, unique=True)):
        request[key] = draw(st.one_of(
            VALUES, filters(), DATES, st.sampled_from(["agent_id", "hostname", "last_seen",
                                                       "ram_bytes", "fuzz", "fire-pc"])))
    return encode(request, ascii_only=draw(st.booleans()))


# --- exports and registers -------------------------------------------------------------------

EXPORT_KEYS = ["report", "format", "filter", "days", "register", "register_name", "since",
               "as_of", "file_name", "agency", "site", "id", "op", "x"]
EXPORT_VALUES = {
    "report": st.sampled_from(["inventory", "changes", "stale", "unsupported", "reconcile",
                               "x"]),
    "format": st.sampled_from(["csv", "json", "xlsx", "pdf"]),
    "file_name": st.sampled_from([".", "..", "/", "a/..", "", "x" * 256, "ok.csv",
                                  "../../etc/passwd", "a\x00b", "\ud800", " ", "a/"]),
    "since": DATES, "as_of": DATES,
}


@st.composite
def registers(draw: st.DrawFn) -> bytes:
    """An asset register: CSV from a grammar (known headers, awkward cells) or raw bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    header = draw(st.lists(st.sampled_from(["serial", "Serial Number", "SN", "host", "name",
                                            "asset tag", "MAC Address", "mac", "notes", "",
                                            "\ufeffserial", "Ser\x00ial"]),
                           min_size=0, max_size=5))
    cell = st.one_of(st.sampled_from(["", "SIM00000001", "02:00:00:00:00:01", "zz:zz",
                                      "\"quoted, \"\"cell\"\"\"", "\"open", "a\nb",
                                      "=HYPERLINK(1)", "\x00", "x" * 131_073]),
                     st.text(max_size=12))
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=6), max_size=6))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = sep.join(",".join(r) for r in [header, *rows])
    return text.encode("utf-8", "surrogatepass")


@st.composite
def export_requests(draw: st.DrawFn) -> Any:
    """An export request as the operator sent it (decoded JSON)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    doc: dict[str, Any] = {}
    import base64

    for key in draw(st.lists(st.sampled_from(EXPORT_KEYS), max_size=8, unique=True)):
        if key == "register":
            doc[key] = draw(st.one_of(registers().map(lambda b: base64.b64encode(b).decode()),
                                      TEXT))
        elif key == "filter":
            doc[key] = draw(st.one_of(filters(), VALUES))
        else:
            doc[key] = draw(st.one_of(EXPORT_VALUES.get(key, VALUES), VALUES))
    if draw(st.booleans()):
        doc.setdefault("report", "inventory")
        doc.setdefault("format", "csv")
    return doc


# --- host-list rows --------------------------------------------------------------------------

ROW_VALUES = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS),
                       st.sampled_from(EDGE_FLOATS), TEXT)
ROWS = st.lists(ROW_VALUES, min_size=len(COLUMN_KEYS), max_size=len(COLUMN_KEYS))
