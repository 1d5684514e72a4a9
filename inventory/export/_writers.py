"""Export files: CSV, JSON and XLSX, written a row at a time (memory stays flat).

Every text cell that a spreadsheet could take for a formula (it begins with `=`, `+`, `-`, `@`,
a tab or a carriage return) is written with a leading apostrophe: agent-supplied text must never
run as a formula on an auditor's machine. Numbers, dates and booleans are typed values.
"""

from __future__ import annotations

import csv
import json
import re
from abc import ABC, abstractmethod
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from estate.inventory.export._columns import Column

FORMATS = ("csv", "xlsx", "json")
_FORMULA_START = frozenset("=+-@\t\r")


def neutralise(text: str) -> str:
    """Text a spreadsheet will show as text, never evaluate: a formula's first character, or
    a whole "<r>...</r>", which xlsxwriter's constant-memory mode writes into the sheet's XML
    unescaped as rich text (a hostname could then add cells or break the file), gets a quote
    in front."""
    if text[:1] in _FORMULA_START or (text.startswith("<r>") and text.endswith("</r>")):
        return "'" + text
    return text


def _time_text(value: str) -> str:
    """The store's "2026-11-27T09:00:00.123456Z" as "2026-11-27T09:00:00Z"."""
    return value[:19] + "Z" if len(value) > 19 else value


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


class ExportWriter(ABC):
    """One file: header, rows in column order, then `close(about)`."""

    def __init__(self, path: Path, report: str, columns: tuple[Column, ...],
                 meta: dict[str, Any]) -> None:
        self.path, self.report, self.columns, self.meta = path, report, columns, meta
        self.rows = 0

    @abstractmethod
    def row(self, values: list[Any]) -> None:
        """Write one row: values in column order, typed as the columns say."""

    @abstractmethod
    def close(self, about: dict[str, Any]) -> None:
        """Finish the file; `about` describes the export (scope, filters, time, rows)."""


class CsvWriter(ExportWriter):
    """UTF-8 with a byte-order mark (so spreadsheets read accents right), CRLF lines, one
    header row of column titles."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.file = open(self.path, "w", encoding="utf-8-sig", newline="")  # closed in close()
        self.csv = csv.writer(self.file, lineterminator="\r\n")
        self.csv.writerow([neutralise(c.title) for c in self.columns])
        # Columns by treatment, found once: this runs for every cell of every row. (None is
        # written as an empty field by the csv module itself.)
        self.text = [i for i, c in enumerate(self.columns) if c.type == "text"]
        self.times = [i for i, c in enumerate(self.columns) if c.type == "datetime"]
        self.bools = [i for i, c in enumerate(self.columns) if c.type == "bool"]

    def row(self, values: list[Any]) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
        self.rows += 1
        out = list(values)
        for i in self.text:
            v = out[i]
            if v and v.__class__ is str and v[0] in _FORMULA_START:
                out[i] = "'" + v
        for i in self.times:
            if out[i]:
                out[i] = _time_text(out[i])
        for i in self.bools:
            if out[i] is not None:
                out[i] = "true" if out[i] else "false"
        self.csv.writerow(out)

    def close(self, about: dict[str, Any]) -> None:
        self.file.close()


class JsonWriter(ExportWriter):
    """One document: `manifest` (what the export is), `columns` (the data dictionary) and
    `rows` (objects keyed by column). Dates are ISO 8601 text, sizes numbers."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.file = open(self.path, "w", encoding="utf-8", newline="\n")  # closed in close()
        columns = [{"key": c.key, "title": c.title, "type": c.type, "unit": c.unit,
                    "description": c.description} for c in self.columns]
        self.file.write('{"manifest": ' + _json(self.meta) + ',\n"columns": ' + _json(columns)
                        + ',\n"rows": [')
        self.keys = [c.key for c in self.columns]

    def row(self, values: list[Any]) -> None:
        self.file.write(("\n" if self.rows == 0 else ",\n") + _json(dict(zip(
            self.keys, [_json_cell(c, v) for c, v in zip(self.columns, values, strict=True)],
            strict=True))))
        self.rows += 1

    def close(self, about: dict[str, Any]) -> None:
        self.file.write('\n],\n"about": ' + _json(about) + "}\n")
        self.file.close()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_cell(column: Column, value: Any) -> Any:
    if value is not None and column.type == "datetime":
        return _time_text(value)
    return value


class XlsxWriter(ExportWriter):
    """A workbook in constant-memory mode: the report's sheet (frozen, filterable header;
    typed cells), a "Fields" sheet (the data dictionary) and an "About" sheet."""

    def __init__(self, *args: Any) -> None:
        import xlsxwriter

        super().__init__(*args)
        self.book = xlsxwriter.Workbook(str(self.path), {
            "constant_memory": True, "strings_to_formulas": False, "strings_to_urls": False,
            "strings_to_numbers": False})
        created = _parse_time(self.meta["generated_at"]).replace(tzinfo=None)
        self.book.set_properties({"title": f"Estate {self.report} export", "author": "Estate",
                                  "created": created})
        self.header = self.book.add_format({"bold": True, "bg_color": "#DDDDDD"})
        self.formats = {
            "datetime": self.book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
            "date": self.book.add_format({"num_format": "yyyy-mm-dd"}),
            "bytes": self.book.add_format({"num_format": "#,##0"}),
        }
        self.sheet = self.book.add_worksheet(self.report)
        for i, c in enumerate(self.columns):
            self.sheet.write_string(0, i, c.title, self.header)
            self.sheet.set_column(i, i, _width(c))
        self.sheet.freeze_panes(1, 0)

        self.cell = [self._cell_writer(c) for c in self.columns]
        # Reports of many rows write them straight as the sheet's XML (`_FastRows`).
        self.fast = _FastRows(self.sheet, self.columns, self.formats) \
            if self.report in FAST_XLSX_REPORTS else None

    def _cell_writer(self, column: Column) -> Any:
        """How a column's cells are written (typed), chosen once per column."""
        sheet, kind = self.sheet, column.type
        if kind == "datetime":
            fmt = self.formats["datetime"]
            return lambda r, i, v: sheet.write_datetime(
                r, i, _parse_time(v).replace(tzinfo=None), fmt)
        if kind == "date":
            fmt = self.formats["date"]
            return lambda r, i, v: sheet.write_datetime(
                r, i, datetime.combine(date.fromisoformat(v), datetime.min.time()), fmt)
        if kind == "bool":
            return lambda r, i, v: sheet.write_boolean(r, i, bool(v))
        if kind in ("int", "float", "bytes"):
            fmt = self.formats.get(kind)
            return lambda r, i, v: sheet.write_number(r, i, v, fmt)
        return lambda r, i, v: sheet.write_string(r, i, neutralise(str(v)))

    def row(self, values: list[Any]) -> None:
        self.rows += 1
        r = self.rows
        if self.fast is not None:
            self.fast.write(r, values)
            return
        for i, (write, v) in enumerate(zip(self.cell, values, strict=True)):
            if v is not None:
                write(r, i, v)

    def close(self, about: dict[str, Any]) -> None:
        self.sheet.autofilter(0, 0, max(self.rows, 1), len(self.columns) - 1)
        fields = self.book.add_worksheet("Fields")
        for i, title in enumerate(("column", "key", "type", "unit", "description")):
            fields.write_string(0, i, title, self.header)
        for r, c in enumerate(self.columns, start=1):
            for i, v in enumerate((c.title, c.key, c.type, c.unit or "", c.description)):
                fields.write_string(r, i, neutralise(v))
        fields.set_column(0, 1, 22)
        fields.set_column(4, 4, 100)
        fields.freeze_panes(1, 0)
        sheet = self.book.add_worksheet("About")
        sheet.set_column(0, 0, 22)
        sheet.set_column(1, 1, 80)
        for r, (key, value) in enumerate(about.items()):
            sheet.write_string(r, 0, key, self.header)
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            sheet.write_string(r, 1, neutralise(text))
        self.book.close()


# Reports whose XLSX rows go through `_FastRows`: the compliance report has a row per host and
# control (160,000 for 20,000 hosts), which xlsxwriter's per-cell path writes at ~4x the cost.
FAST_XLSX_REPORTS = frozenset({"compliance"})
# A string xlsxwriter would write with care (escapes, control characters, its `_xHHHH_`
# escape, preserved spaces, rich text, the length limit): such a cell takes its own path.
# U+FFFE and U+FFFF are no XML characters: written raw, they make the sheet unreadable.
_CAREFUL = re.compile(r"[&<>\x00-\x08\x0b-\x1f\ufffe\uffff]|_x[0-9a-fA-F]{4}_|^\s|\s$|"
                      r"[\ud800-\udfff]")


_UNSEEN: Any = object()
_REMEMBERED = 100_000  # distinct values remembered per column kind (a few MB at most)


class _FastRows:
    """Rows written as the XML xlsxwriter writes for them in constant-memory mode, byte for
    byte (tests/test_compliance.py compares the two), without its per-cell bookkeeping. Cells
    with anything to escape are handed to xlsxwriter's own cell writer."""

    def __init__(self, sheet: Any, columns: tuple[Column, ...],
                 formats: dict[str, Any]) -> None:
        from xlsxwriter.utility import xl_col_to_name
        from xlsxwriter.worksheet import CellStringTuple

        self.sheet, self.string_cell = sheet, CellStringTuple
        self.kinds = [c.type for c in columns]
        if not set(self.kinds) <= {"text", "int", "float", "datetime"}:
            raise ValueError("_FastRows writes text, int, float and datetime columns only")
        self.letters = [xl_col_to_name(i) for i in range(len(columns))]
        # Style indexes are numbered in order of first use: taken when first written, as
        # xlsxwriter takes them.
        self.datetime_format = formats["datetime"]
        self.datetime_style: int | None = None
        self.started = False
        # Most text repeats from row to row (agency, site, control, title, outcome, reason)
        # and a host's results share their times: each distinct value is checked and
        # converted once. Bounded: past the limit new values are just not remembered.
        self.texts: dict[str, str | None] = {}  # value -> its cell's text, None: careful
        self.times: dict[str, float] = {}

    def write(self, r: int, values: list[Any]) -> None:
        if len(values) != len(self.kinds):
            raise ValueError(f"{len(values)} values for {len(self.kinds)} columns")
        sheet = self.sheet
        if not self.started:  # the header row, which xlsxwriter holds until the next row
            sheet._write_single_row(r)
            self.started = True
        n = r + 1
        parts = [f'<row r="{n}">']
        for i, v in enumerate(values):
            if v is None:
                continue
            kind = self.kinds[i]
            if kind == "text":
                value = str(v)
                text = self.texts.get(value, _UNSEEN)
                if text is _UNSEEN:
                    text = neutralise(value)
                    if _CAREFUL.search(text) or len(text) > 16_000:
                        text = None
                    if len(self.texts) < _REMEMBERED:
                        self.texts[value] = text
                if text is None:
                    # xlsxwriter's own cell writer, into the same file, in order.
                    sheet.fh.write("".join(parts))
                    parts = []
                    sheet._write_cell(r, i, self.string_cell(neutralise(value), None))
                else:
                    parts.append(f'<c r="{self.letters[i]}{n}" t="inlineStr"><is><t>{text}'
                                 f'</t></is></c>')
            elif kind == "datetime":
                if self.datetime_style is None:
                    self.datetime_style = self.datetime_format._get_xf_index()
                number = self.times.get(v)
                if number is None:
                    number = sheet._convert_date_time(_parse_time(v).replace(tzinfo=None))
                    if len(self.times) < _REMEMBERED:
                        self.times[v] = number
                parts.append(f'<c r="{self.letters[i]}{n}" s="{self.datetime_style}">'
                             f'<v>{number:.16G}</v></c>')
            else:
                parts.append(f'<c r="{self.letters[i]}{n}"><v>{v:.16G}</v></c>')
        parts.append("</row>")
        sheet.fh.write("".join(parts))
        sheet._check_dimensions(r, 0)
        sheet.previous_row = r


def _width(column: Column) -> float:
    wide = {"datetime": 20, "date": 12, "bool": 10, "int": 12, "bytes": 18, "float": 12}
    return max(len(column.title) + 2, wide.get(column.type, 24))


WRITERS: dict[str, type[ExportWriter]] = {"csv": CsvWriter, "json": JsonWriter,
                                          "xlsx": XlsxWriter}
