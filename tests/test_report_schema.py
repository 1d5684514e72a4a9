"""The report schema: strict validation with the field path and the problem in every error."""

from __future__ import annotations

import gzip
import json

import pytest

from inventory.fields import BY_PATH, FIELDS, KINDS
from inventory.report import MAX_REPORT_BYTES, ReportError, parse, validate


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
    ],
)
def test_bad_fields_are_named_with_the_problem(report, mutate, path, problem):
    mutate(report)
    with pytest.raises(ReportError) as err:
        validate(report)
    assert err.value.path == path
    assert problem in err.value.problem
    assert str(err.value).startswith(path)


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
        (gzip.compress(b"{}"), "not UTF-8"),
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
