"""The report schema: strict validation with the field path and the problem in every error."""

from __future__ import annotations

import gzip
import json

import pytest

from estate.inventory.fields import BY_PATH, FIELDS, KINDS
from estate.inventory.report import MAX_REPORT_BYTES, ReportError, parse, validate


def test_live_report_is_valid(report):
    assert validate(report) is report


def test_every_field_is_described_once_with_a_known_kind():
    paths = [f.path for f in FIELDS]
    assert len(paths) == len(set(paths))
    for f in FIELDS:
        assert f.kind in KINDS, f.path
        assert f.description.strip(), f.path
        if f.kind == "list":
            assert f.path + "[]" in BY_PATH, f"{f.path} has no item description"
            assert f.max_items > 0, f.path
        parent = f.path.rsplit(".", 1)[0] if "." in f.path else None
        if parent:
            assert parent in BY_PATH or parent.removesuffix("[]") in BY_PATH, f.path


@pytest.mark.parametrize(
    ("mutate", "path", "problem"),
    [
        (lambda r: r["hardware"]["memory"].update(total_bytes=-1), "hardware.memory.total_bytes",
         "below the minimum"),
        (lambda r: r["hardware"]["memory"].update(total_bytes="16 GB"),
         "hardware.memory.total_bytes", "expected a number"),
        (lambda r: r["hardware"]["memory"].update(total_bytes=True),
         "hardware.memory.total_bytes", "expected a number"),
        (lambda r: r["hardware"]["memory"].update(total_bytes=1.5),
         "hardware.memory.total_bytes", "whole number"),
        (lambda r: r["hardware"]["memory"].update(total_bytes=2**70),
         "hardware.memory.total_bytes", "64-bit"),
        (lambda r: r["health"].update(cpu_percent=float("nan")), "health.cpu_percent",
         "finite"),
        (lambda r: r["health"].update(cpu_percent=100.5), "health.cpu_percent", "above"),
        (lambda r: r["system"].update(hostname="x" * 256), "system.hostname", "over the limit"),
        (lambda r: r["system"].update(hostname="\ud800"), "system.hostname", "surrogate"),
        (lambda r: r["system"].update(extra=1), "system.extra", "unknown field"),
        (lambda r: r["system"].pop("fqdn"), "system.fqdn", "missing"),
        (lambda r: r.update(system=None), "system", "must not be null"),
        (lambda r: r.update(schema="estate.report/2"), "schema", "expected one of"),
        (lambda r: r.update(report_id="x"), "report_id", "AGENT:BOOT_EPOCH:SEQUENCE"),
        (lambda r: r.update(collected_at="yesterday"), "collected_at", "RFC 3339"),
        (lambda r: r.update(collected_at="2026-02-30T00:00:00Z"), "collected_at", "real date"),
        (lambda r: r.update(collected_at="2026-01-01T00:00:00+02:00"), "collected_at",
         "RFC 3339"),
        (lambda r: r["hardware"].update(disks=[{"name": "sda"}]), "hardware.disks[0].model",
         "missing"),
        (lambda r: r["hardware"].update(disks={"name": "sda"}), "hardware.disks",
         "expected a list"),
        (lambda r: r["network"].update(dns_servers=["1.1.1.1"] * 33), "network.dns_servers",
         "over the limit"),
        (lambda r: r["network"].update(dns_servers=[["nested"]]), "network.dns_servers[0]",
         "expected a string"),
        (lambda r: r["system"]["virtualization"].update(type="mainframe"),
         "system.virtualization.type", "expected one of"),
        # A field that may be absent is checked like any other when it is there.
        (lambda r: r["system"].update(windows_timezone=5), "system.windows_timezone",
         "expected a string"),
        (lambda r: r["system"]["os"].update(product="x" * 129), "system.os.product",
         "over the limit"),
        (lambda r: r["software"].update(packages=[{"name": "a", "version": None, "arch": None,
                                                   "publisher": None, "scope": "everyone"}]),
         "software.packages[0].scope", "expected one of"),
        (lambda r: r["software"].update(packages=[{"name": "a", "version": None, "arch": None,
                                                   "scope": "user"}]),
         "software.packages[0].publisher", "missing"),
    ],
)
def test_bad_fields_are_named_with_the_problem(report, mutate, path, problem):
    mutate(report)
    with pytest.raises(ReportError) as err:
        validate(report)
    assert err.value.path == path
    assert problem in err.value.problem
    assert str(err.value).startswith(path)


def test_fields_added_later_may_be_absent_or_null(report):
    """An older agent does not send them; a newer one sends them where its OS has them."""
    report["system"]["os"].pop("product", None)
    report["system"].pop("windows_timezone", None)
    package = {"name": "a", "version": "1", "arch": None, "publisher": None}
    report["software"]["packages"] = [package]
    assert validate(report) is report
    report["system"]["os"]["product"] = "Windows 11 Enterprise"
    report["system"]["windows_timezone"] = None
    report["software"]["packages"] = [{**package, "scope": "user"},
                                      {**package, "scope": "machine"}, {**package, "scope": None}]
    assert validate(report) is report


def test_only_nullable_fields_may_be_absent():
    for f in FIELDS:
        assert not f.optional or f.nullable, f"{f.path}: absent reads as null"


def test_not_an_object():
    with pytest.raises(ReportError, match="expected an object, got a list"):
        validate([])


def test_parse_round_trip(report):
    assert parse(json.dumps(report).encode()) == report


def test_parse_refuses_oversized_before_decoding():
    with pytest.raises(ReportError, match="over the limit"):
        parse(b" " * (MAX_REPORT_BYTES + 1))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        # mtime=0: the bytes are the test's id, which must be the same in every run (mutmut
        # and `pytest --lf` select tests by id).
        (gzip.compress(b"{}", mtime=0), "not UTF-8"),
    ],
)
def test_parse_refuses_malformed(data, problem):
    with pytest.raises(ReportError, match=problem):
        parse(data)


def test_markup_and_sql_are_just_text(report):
    # The schema neither strips nor rejects them: the hub stores them as data and the console
    # neutralises them on display. Validation must not choke on them.
    report["system"]["hostname"] = "[red]x[/red]'); DROP TABLE hosts;--\x1b]8;;"
    assert validate(report)["system"]["hostname"].startswith("[red]")


def _set(path: str, value):
    """A change to a report: the value at a dotted path (list items by [n])."""
    def change(r):
        *parents, last = path.replace("[", ".[").split(".")
        for p in parents:
            r = r[int(p[1:-1])] if p.startswith("[") else r[p]
        r[last] = value
    return change


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("collected_at", None, "must not be null"),
        ("collected_at", 5, "expected an RFC 3339 UTC time like 2026-01-31T12:00:00Z"),
        ("system.boot_time", "2026-13-01T00:00:00Z", "not a real date and time"),
        ("hardware.battery", [], "expected an object, got a list"),
        ("hardware.battery", {"plugged": "yes", "percent": None, "seconds_left": None},
         "expected true or false, got a string"),
        ("hardware.disks", None, "must not be null"),
        ("hardware.disks", ["a"] * 257, "257 items, over the limit of 256"),
        ("software.packages", 3, "expected a list, got a number"),
        ("system.hostname", "x" * 256, "256 characters, over the limit of 255"),
        ("system.hostname", "\udc00", "not valid Unicode (lone surrogate)"),
        ("system.hostname", 1.5, "expected a string, got a number"),
        ("system.hostname", True, "expected a string, got a boolean"),
        ("system.hostname", {}, "expected a string, got an object"),
        ("system.hostname", (1,), "expected a string, got tuple"),
        ("system.os.family", "beos", "expected one of linux, windows, macos, bsd, other"),
        ("agent.interval_s", 0, "0 is below the minimum 1"),
        ("agent.interval_s", 86401, "86401 is above the maximum 86400"),
        ("agent.interval_s", -(2**63) - 1, "number out of the 64-bit range"),
        ("hardware.cpu.cores", 2.0, "expected a whole number"),
        ("health.cpu_percent", float("inf"), "expected a finite number"),
        ("health.cpu_percent", None, None),  # nullable: accepted
        ("system.boot_time", None, None),
        ("hardware.battery", None, None),
        ("software.packages", None, None),
        ("agent.interval_s", 86400, None),
        ("agent.interval_s", 2**63 - 1, "9223372036854775807 is above the maximum 86400"),
        ("hardware.disks", ["a"] * 256, "expected an object, got a string"),  # at [0]
        # The 64-bit range is [-2**63, 2**63): its lowest value is in range, then too small.
        ("agent.interval_s", -(2**63), "-9223372036854775808 is below the minimum 1"),
        ("agent.interval_s", 2**63, "number out of the 64-bit range"),
        # Every RFC 3339 UTC form is a real time: fractions, and +00:00 for Z.
        ("collected_at", "2026-01-31T12:00:00.123456789Z", None),
        ("collected_at", "2026-01-31T12:00:00+00:00", None),
        ("hardware.battery", {"plugged": None, "percent": None, "seconds_left": None}, None),
    ],
)
def test_every_refusal_says_exactly_what_is_wrong(report, path, value, problem):
    """The problem text is part of the answer an agent's operator reads: exact, per kind."""
    _set(path, value)(report)
    if problem is None:
        assert validate(report) is report
        return
    with pytest.raises(ReportError) as err:
        validate(report)
    assert err.value.problem == problem
    where = path + "[0]" if problem.startswith("expected an object, got a s") else path
    if path == "hardware.battery" and isinstance(value, dict):
        where = "hardware.battery.plugged"
    assert err.value.path == where
    assert str(err.value) == f"{where}: {problem}"


def test_unknown_and_missing_members_are_named():
    from estate.inventory.report import ReportError as Error

    with pytest.raises(Error) as err:
        validate({"x" * 65: 1})
    assert (err.value.path, err.value.problem) == ("(long key)", "unknown field")
    with pytest.raises(Error) as err:
        validate({"x" * 64: 1})
    assert err.value.path == "x" * 64
    with pytest.raises(Error) as err:
        validate({})
    assert (err.value.path, err.value.problem) == ("schema", "missing (use null when unknown)")
    assert str(Error("", "bad")) == "report: bad"


def test_null_and_a_renamed_member_are_refused_by_name(report):
    """A report that is JSON null, and an object with the right number of members but one
    unknown in place of one missing: each a ReportError naming where, never a crash."""
    for refuse in (lambda: validate(None), lambda: parse(b"null")):
        with pytest.raises(ReportError) as err:
            refuse()
        assert (err.value.path, err.value.problem) == ("", "must not be null")
        assert str(err.value) == "report: must not be null"
    report["system"]["fqdn_typo"] = report["system"].pop("fqdn")
    with pytest.raises(ReportError) as err:
        validate(report)
    assert (err.value.path, err.value.problem) == ("system.fqdn_typo", "unknown field")


def test_parse_names_each_way_a_body_is_not_a_report(report):
    from estate.inventory.report import make_report_id

    body = json.dumps(report).encode()
    assert parse(body, max_bytes=len(body)) == report  # the limit itself fits
    for data, max_bytes, problem in (
            (body, len(body) - 1, f"report is {len(body)} bytes, over the limit of "
                                  f"{len(body) - 1}"),
            (b"[" * 100_000, MAX_REPORT_BYTES, "report is nested too deeply"),
            (b'{"a": Infinity}', MAX_REPORT_BYTES,
             "report is not valid JSON (Infinity is not a number JSON allows)"),
            (b"\xff", MAX_REPORT_BYTES, "report is not UTF-8 (invalid start byte)"),
            (b'{"report_id": "x"', MAX_REPORT_BYTES, "report is not valid JSON (")):
        with pytest.raises(ReportError) as err:
            parse(data, max_bytes=max_bytes)
        assert err.value.path == "" and err.value.problem.startswith(problem), err.value
    report["report_id"] = "ag-1:1:1\n"
    with pytest.raises(ReportError) as err:
        validate(report)
    assert (err.value.path, err.value.problem) == ("report_id",
                                                   "expected AGENT:BOOT_EPOCH:SEQUENCE")
    assert make_report_id("ag-1", 12.9, 3) == "ag-1:12:3"
    assert make_report_id(None, 1, 2) == "local:1:2" == make_report_id("", 1, 2)
