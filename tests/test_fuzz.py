"""Fuzz the parsers that take remote input: reports, API request lines, filters, exports.

Each parser either returns a valid value or raises its documented error (`ReportError` with a
path, `RequestError` with a code, `FilterError`, `RegisterError`), never another exception; a
report that validates must also survive the store, facts and change detection. `make test`
runs a small derandomised fuzz; `make fuzz` (ESTATE_FUZZ=long) runs 30 times as many.
The plain example tests at the end are the inputs the fuzz found, kept as regressions.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estate.inventory.changes import diff, state_changes, state_digest
from estate.inventory.export import ExportError, ExportRequest
from estate.inventory.export._register import Entry, RegisterError, parse_register
from estate.inventory.facts import facts_of
from estate.inventory.filters import FilterError, compile_filter
from estate.inventory.hub._api import OperatorApi
from estate.inventory.hub._ingest import accept
from estate.inventory.report import ReportError, make_report_id, validate
from estate.inventory.store import Incoming, Store, iso, parse_time
from tests.fuzz_strategies import (
    DATES,
    RAW_BODIES,
    ROWS,
    api_lines,
    base_report,
    encode,
    export_requests,
    filters,
    fuzz,
    registers,
    reports,
)

# A failing example may hold a 128 KiB register cell; hypothesis warns about printing it.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

API_CODES = {"bad_json", "bad_request", "unknown_op", "bad_filter", "not_found", "ambiguous",
             "internal"}
NOW = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _fast(data: Path) -> Store:
    # The fuzz checks what the store does with a report, not that it survives a power cut.
    return Store.open(data, durable=False)


def _enrol(store: Store, agency: str, n: int) -> str:
    token_id, secret, _ = store.create_token(agency, "Site", 1, timedelta(days=1), "fuzz")
    return store.enrol(token_id, secret, f"ssh-ed25519 FUZZ{n}", f"SHA256:fuzz{n}",
                       None)["agent_id"]


def _store_report(store: Store, agent_id: str, report: dict[str, Any], body: bytes) -> str:
    return store.store_reports([Incoming(agent_id, report, body, NOW)])[0]


def _refusal_is_clear(exc: ReportError) -> None:
    assert isinstance(exc.path, str) and isinstance(exc.problem, str) and exc.problem
    str(exc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = _fast(tmp_path_factory.mktemp("fuzz-store"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def api_store(tmp_path_factory):
    """A store with a few hosts in two agencies, two of them sharing a hostname."""
    s = _fast(tmp_path_factory.mktemp("fuzz-api"))
    for n, agency in enumerate(["Fire & Rescue", "Fire & Rescue", "Health Trust"]):
        agent_id = _enrol(s, agency, n)
        r = copy.deepcopy(base_report(n))
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:1"
        r["system"]["hostname"] = "fire-pc" if n < 2 else "health-pc"
        _store_report(s, agent_id, r, encode(r))
    yield s
    s.close()


# --- reports ---------------------------------------------------------------------------------

@fuzz(300)
@given(RAW_BODIES)
def test_any_bytes_are_a_report_or_a_report_error(body):
    try:
        report = accept(body, "fuzz-agent")
    except ReportError as exc:
        _refusal_is_clear(exc)
        return
    validate(report)


_counter = itertools.count()


@fuzz(300)
@given(st.data())
def test_a_mutated_report_is_refused_with_a_path_or_survives_the_store(store, data):
    n = next(_counter)
    agent_id = _enrol(store, "Schools", 1000 + n)
    _, body = data.draw(reports(agent_id))
    try:
        report = accept(body, agent_id)
    except ReportError as exc:
        _refusal_is_clear(exc)
        return
    _survives(store, agent_id, report, body)


def _survives(store: Store, agent_id: str, report: dict[str, Any], body: bytes) -> None:
    """Everything the hub does with a valid report, none of which may raise."""
    validate(json.loads(json.dumps(report)))  # what the store keeps must still validate
    # One report, one id: the id is the canonical form of its parts (no "A:1:2\n" twin).
    agent, boot, seq = report["report_id"].rsplit(":", 2)
    assert make_report_id(agent, int(boot), int(seq)) == report["report_id"]
    # Times are compared as text in the store, so an accepted time has exactly one form.
    for when in _times(report):
        assert parse_time(when).isoformat()[:19] == when[:19] and when.strip() == when
    json.dumps(facts_of(report), ensure_ascii=False).encode("utf-8")
    state_digest(report)
    first = copy.deepcopy(base_report(0))
    first["agent"]["id"], first["report_id"] = agent_id, f"{agent_id}:0:0"
    first["collected_at"] = "2000-01-01T00:00:00Z"  # so the fuzzed report is the newer one
    for old, new in ((first, report), (report, first)):
        for change in state_changes(old, new) + diff(
                old, new, old["software"]["packages"], new["software"]["packages"]):
            change.old_text(), change.new_text()
    assert _store_report(store, agent_id, first, encode(first)) == "stored"
    assert _store_report(store, agent_id, report, body) in ("stored", "duplicate")
    detail = store.host_detail(agent_id, None)
    # As the API sends them: rows as lists, records as objects.
    for answer in (store.host_rows(None, [agent_id]), detail and detail.as_dict(),
                   [r.as_dict() for r in store.recent_reports(agent_id, None, 5) or []],
                   [c.as_dict() for c in store.scoped_changes(None, agent_id, None, 100)]):
        json.dumps(answer, ensure_ascii=False, default=str).encode("utf-8")


def _times(report: dict[str, Any]) -> list[str]:
    system = report["system"]
    return [t for t in (report["collected_at"], system["boot_time"],
                        *(u["started"] for u in system["users"])) if t is not None]


# --- the operator API ------------------------------------------------------------------------

OPERATORS = [{"name": "root.admin", "role": "admin", "agencies": None},
             {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]},
             {"name": "nobody", "role": "auditor", "agencies": []}]


@fuzz(300)
@given(api_lines(), st.sampled_from(OPERATORS))
def test_every_api_line_gets_one_answer(api_store, line, operator):
    answer = OperatorApi(api_store, operator).handle(line)
    assert isinstance(answer, dict) and isinstance(answer["ok"], bool)
    if not answer["ok"]:
        assert answer["error"]["code"] in API_CODES
    json.dumps(answer, ensure_ascii=False).encode("utf-8")  # as the hub writes it


@fuzz(250)
@given(filters(), st.lists(ROWS, max_size=4))
def test_a_filter_compiles_or_is_refused_and_never_raises_on_a_row(api_store, text, rows):
    try:
        match = compile_filter(text)
    except FilterError as exc:
        assert str(exc)
        return
    for row in [*api_store.host_rows(None), *rows]:
        assert match(row) in (True, False)


# --- exports ---------------------------------------------------------------------------------

@fuzz(300)
@given(export_requests())
def test_an_export_request_parses_or_is_refused_with_a_code(doc):
    try:
        request = ExportRequest.parse(doc)
    except ExportError as exc:
        assert exc.code in ("bad_request", "bad_filter") and exc.message
        return
    assert request.file_name and request.file_name not in (".", "..")
    assert "/" not in request.file_name and "\x00" not in request.file_name
    if request.register is not None:
        _register_or_error(request.register)


@fuzz(300)
@given(registers())
def test_a_register_parses_or_is_refused(data):
    _register_or_error(data)


def _register_or_error(data: bytes) -> None:
    try:
        entries = parse_register(data, "register.csv")
    except RegisterError as exc:
        assert str(exc).startswith("register.csv")
        return
    assert all(isinstance(e, Entry) and (e.serial or e.hostname or e.mac) for e in entries)


# --- times -----------------------------------------------------------------------------------

@fuzz(300)
@given(st.one_of(DATES, st.text(max_size=40),
                 st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.+-Z]{0,20})?",
                               fullmatch=True)))
def test_parse_time_gives_a_time_the_store_can_write(text):
    try:
        t = parse_time(text)
    except ValueError:
        return
    assert t.tzinfo is not None
    iso(t)  # every time accepted is written in the store's format somewhere


# --- regressions: the exact inputs the fuzz found --------------------------------------------

def _report_with(**fields: Any) -> bytes:
    report = copy.deepcopy(base_report(0))
    report.update(fields)
    return encode(report)


@pytest.mark.parametrize("field, value", [("report_id", "fuzz-agent:1:1\n"),
                                          ("collected_at", "2026-01-31T12:00:00Z\n")])
def test_a_trailing_newline_is_not_a_second_form_of_an_id_or_a_time(field, value):
    with pytest.raises(ReportError) as err:
        accept(_report_with(**{field: value}), "fuzz-agent")
    assert err.value.path == field


@pytest.mark.parametrize("line", [b'{"id": 1, "op": "host", "agent_id": "\\ud800"}',
                                  b'{"id": 1, "op": "resolve", "host": "x\\udfff"}',
                                  b'{"id": 1, "op": "changes", "host": "\\ud800"}'])
def test_a_lone_surrogate_in_a_parameter_is_a_bad_request(api_store, line):
    answer = OperatorApi(api_store, OPERATORS[0]).handle(line)
    assert answer["error"]["code"] == "bad_request"
    assert "not valid Unicode" in answer["error"]["message"]


def test_a_register_cell_past_the_csv_field_limit_is_a_register_error():
    with pytest.raises(RegisterError, match=r"register.csv: line 2: not readable as CSV"):
        parse_register(b"serial\n" + b"a" * 200_000 + b"\n", "register.csv")


@pytest.mark.parametrize("name", [".", "..", "/", ""])
def test_an_export_file_name_that_names_no_file_gets_the_default(name):
    request = ExportRequest.parse({"report": "inventory", "format": "csv", "file_name": name})
    assert request.file_name == "estate-inventory.csv"


def test_an_export_file_name_with_control_characters_is_refused():
    with pytest.raises(ExportError, match="file_name: control characters"):
        ExportRequest.parse({"report": "inventory", "format": "csv", "file_name": "a\x1b[2Jb"})


def test_an_export_register_with_a_lone_surrogate_name_is_refused():
    with pytest.raises(ExportError, match="register_name: not valid Unicode"):
        ExportRequest.parse({"report": "reconcile", "format": "csv", "register_name": "\ud800",
                             "register": base64.b64encode(b"serial\nA1\n").decode()})


# Found in code other engineers own (inventory/hub/_api.py, inventory/store/_common.py): kept
# here as the exact inputs, so the fix is checked wherever it lands.

def test_a_deeply_nested_api_line_gets_an_answer(api_store):
    line = b'{"filter": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = OperatorApi(api_store, OPERATORS[1]).handle(line)
    assert answer["error"]["code"] == "bad_json", answer  # not `internal`: it is the client's


def test_an_api_request_id_with_a_lone_surrogate_gets_an_answer_the_hub_can_write(api_store):
    answer = OperatorApi(api_store, OPERATORS[0]).handle(b'{"id": "\\ud800", "op": "columns"}')
    json.dumps(answer, ensure_ascii=False).encode("utf-8")


def test_a_time_before_year_1_in_utc_is_refused_not_an_overflow():
    with pytest.raises(ValueError):
        iso(parse_time("0001-01-01T00:00:00+01:00"))


def test_the_store_time_format_is_fixed_width_before_year_1000():
    # iso() uses strftime("%Y"), which glibc does not pad: year 999 comes out as "999-...",
    # which sorts after "2026-..." as text. Reached by any accepted time before year 1000
    # (a report's boot_time "0001-01-01T00:00:00Z", an export's since="0500-01-01").
    assert iso(parse_time("0999-12-31T00:00:00Z")).startswith("0999-12-31T00:00:00")
