"""Export files: CSV, JSON and XLSX, written a row at a time (memory stays flat).

Every text cell that a spreadsheet could take for a formula (it begins with `=`, `+`, `-`, `@`,
a tab or a carriage return) is written with a leading apostrophe: agent-supplied text must never
run as a formula on an auditor's machine. Numbers, dates and booleans are typed values.
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from estate.inventory.export._columns import Column

FORMATS = ("csv", "xlsx", "json")
_FORMULA_START = frozenset("=+-@\t\r")


def neutralise(text: str) -> str:
    """Text a spreadsheet will show as text, never evaluate."""
    return "'" + text if text[:1] in _FORMULA_START else text


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


def _width(column: Column) -> float:
    wide = {"datetime": 20, "date": 12, "bool": 10, "int": 12, "bytes": 18, "float": 12}
    return max(len(column.title) + 2, wide.get(column.type, 24))


WRITERS: dict[str, type[ExportWriter]] = {"csv": CsvWriter, "json": JsonWriter,
                                          "xlsx": XlsxWriter}
