"""The docs stay true: the field table in docs/report.md is the field dictionary."""

from __future__ import annotations

from estate.inventory.fields import markdown_table
from tests.conftest import ROOT


def test_report_doc_matches_the_field_dictionary():
    doc = (ROOT / "docs/report.md").read_text(encoding="utf-8")
    assert doc.endswith(markdown_table()), "regenerate the table in docs/report.md"


def test_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    assert "make run" in head and "make test" in head
