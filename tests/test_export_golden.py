"""Every report in every format against golden files, from a store built by the store's own
code: non-ASCII names, commas, quotes, newlines, empty fields and formula-looking text.

CSV and JSON are compared byte for byte, XLSX by each cell's value and type. After an intended
change: ESTATE_UPDATE_GOLDEN=1 pytest tests/test_export_golden.py, then review the diff.
"""

from __future__ import annotations

import base64
import json
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncssh
import pytest

from estate.inventory.export import ExportRequest
from estate.inventory.export.manifest import verify
from estate.inventory.export.produce import Producer, run_export
from estate.inventory.simulate import Identity, fake_report
from estate.inventory.store import Incoming, Store
from tests.harness import edit

GOLDEN = Path(__file__).parent / "golden" / "export"
HUB_KEY = Path(__file__).parent / "data" / "export_hub_key"  # a test-only key
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
UPDATE = os.environ.get("ESTATE_UPDATE_GOLDEN") == "1"

REGISTER = (
    "Asset Tag,Serial Number,Computer Name,MAC Address,Notes\r\n"
    "AT-0001,,école-pc,02:00:00:00:00:01,matched by MAC\r\n"
    "AT-0002,SIM00000002,old-name,,\"renamed, \"\"see ticket\"\"\"\r\n"
    "AT-0003,NEVER-SEEN,lost-laptop,,\r\n"
).encode()


@pytest.fixture(scope="module")
def estate(tmp_path_factory) -> Path:
    """Three hosts in three agencies with a history; returns the store's folder."""
    data = tmp_path_factory.mktemp("golden")
    store = Store.open(data)
    counter = iter(range(1, 1000))
    with pytest.MonkeyPatch.context() as mp:  # stable ids, so the files can be compared
        mp.setattr("secrets.token_hex", lambda n: f"{next(counter):0{2 * n}x}")
        places = (("Écoles du Nord", 'Site, "Nord"'), ("Council", "Town Hall"),
                  ("Fire & Rescue", "Station 1"))
        agents = [_enrol(store, agency, site, n) for n, (agency, site) in enumerate(places)]

    def report(n: int, seq: int, **changes: object) -> dict:
        r = fake_report(Identity(n, agents[n], None, *places[n]), seq, 300,  # type: ignore[arg-type]
                        random.Random(seq))
        return edit(r, **changes)

    windows10 = {"system__os": {"family": "windows", "name": "Windows 10 Pro",
                                "version": "22H2", "build": "19045", "kernel": None,
                                "arch": "x86_64"}}
    focal = {"system__os": {"family": "linux", "name": "Ubuntu", "version": "20.04",
                            "build": None, "kernel": "5.4.0", "arch": "x86_64"}}
    bookworm = {"system__os": {"family": "linux", "name": "Debian GNU/Linux", "version": "12",
                               "build": None, "kernel": "6.1.0", "arch": "x86_64"}}
    bullseye = {"system__os": {**bookworm["system__os"], "version": "11"}}
    history = [  # the Council host: upgraded, more memory, new firmware, a day later
        (datetime(2026, 9, 1, 8, 0), report(1, 1, **bullseye)),
        (datetime(2026, 9, 2, 8, 0), report(1, 2, **bookworm,
                                            hardware__memory={"total_bytes": 64 * 2**30,
                                                              "swap_total_bytes": None},
                                            hardware__bios={"vendor": "HP", "version": "1.2.4",
                                                            "date": "2026-08-01"})),
        (datetime(2026, 11, 26, 17, 30), report(2, 1, **focal, system__hostname="+fire-laptop",
                                                hardware__vendor="@vendor")),
        (datetime(2026, 11, 27, 9, 0), report(0, 1, **windows10,
                                              system__hostname='=HYPERLINK("http://x")',
                                              hardware__model="OptiPlex\n7090",
                                              hardware__serial=None)),
    ]
    for at, r in history:
        r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        store.store_reports([Incoming(r["agent"]["id"], r, json.dumps(r).encode(),
                                      at.replace(tzinfo=timezone.utc))])
    store.close()
    return data


def _enrol(store: Store, agency: str, site: str, n: int) -> str:
    token_id, secret, _ = store.create_token(agency, site, 1, timedelta(days=1), "test")
    return store.enrol(token_id, secret, f"ssh-ed25519 KEY{n}", f"SHA256:key{n}",
                       None)["agent_id"]


def _export(data: Path, doc: dict, out: Path) -> dict:
    store = Store.open(data)
    try:
        return run_export(store, ExportRequest.parse(doc), _producer(), out, now=NOW)
    finally:
        store.close()


def _producer() -> Producer:
    key = asyncssh.import_private_key(HUB_KEY.read_bytes())
    return Producer({"name": "auditor.one", "role": "auditor", "agencies": None}, key,
                    key.get_fingerprint("sha256"), "0.1.0")


CASES = [(report, fmt) for report in ("inventory", "changes", "stale", "unsupported",
                                      "reconcile") for fmt in ("csv", "json", "xlsx")]


@pytest.mark.parametrize(("report", "fmt"), CASES)
def test_golden(estate, tmp_path, report, fmt):
    doc = {"report": report, "format": fmt, "file_name": f"{report}.{fmt}"}
    if report == "reconcile":
        doc.update(register=base64.b64encode(REGISTER).decode(), register_name="register.csv",
                   days=60)
    if report == "changes":
        doc["since"] = "2026-08-01"
    out = tmp_path / f"{report}.{fmt}"
    manifest = _export(estate, doc, out)
    got = _xlsx_cells(out) if fmt == "xlsx" else out.read_bytes()
    golden = GOLDEN / (f"{report}.xlsx.json" if fmt == "xlsx" else f"{report}.{fmt}")
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(got)
    assert got == golden.read_bytes(), f"{golden.name} differs (ESTATE_UPDATE_GOLDEN=1)"
    out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest))
    assert verify(out).fingerprint == manifest["hub"]["fingerprint"]


def _xlsx_cells(path: Path) -> bytes:
    """Every sheet's cells as (value, type), as JSON: what a spreadsheet shows and how."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    sheets = {}
    for sheet in book.worksheets:
        sheets[sheet.title] = [[[_plain(c.value), c.data_type, c.number_format]
                                for c in row] for row in sheet.iter_rows()]
    book.close()
    return (json.dumps(sheets, ensure_ascii=False, indent=0) + "\n").encode()


def _plain(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def test_formula_looking_text_is_neutralised_everywhere(estate, tmp_path):
    for fmt in ("csv", "xlsx"):
        out = tmp_path / f"inventory.{fmt}"
        _export(estate, {"report": "inventory", "format": fmt}, out)
        text = out.read_bytes().decode("utf-8-sig") if fmt == "csv" else \
            _xlsx_cells(out).decode()
        for evil in ('=HYPERLINK("http://x")', "+fire-laptop", "@vendor"):
            assert ("'" + evil.replace('"', '""' if fmt == "csv" else '\\"')) in text


def test_hosts_stored_before_facts_were_kept_export_the_same(estate, tmp_path):
    """A store upgraded from before `hosts.facts`: exports derive the facts themselves."""
    import shutil
    import sqlite3

    old = tmp_path / "old"
    shutil.copytree(estate, old)
    with sqlite3.connect(old / "estate.db") as db:  # SQLite's own file: rows as they were then
        db.execute("UPDATE hosts SET facts = NULL")
    out = tmp_path / "inventory.csv"
    _export(old, {"report": "inventory", "format": "csv"}, out)
    assert out.read_bytes() == (GOLDEN / "inventory.csv").read_bytes()
