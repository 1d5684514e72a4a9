"""Export files: CSV, JSON and XLSX, written a row at a time (memory stays flat).

A report of several tables (`_columns.TABLES`) writes its further tables' rows as they come,
interleaved with its own: XLSX on a sheet each, JSON in a member each (spilled to a temporary
file until the document's own rows are done); CSV holds the report's own rows only.

Every text cell that a spreadsheet could take for a formula (it begins with `=`, `+`, `-`, `@`,
a tab or a carriage return) is written with a leading apostrophe: agent-supplied text must never
run as a formula on an auditor's machine. Numbers, dates and booleans are typed values.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import tempfile
import zipfile
from abc import ABC, abstractmethod
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from estate.inventory.export._columns import Column, Table

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

    holds_tables = True  # whether the file holds further tables (CSV: one table only)

    def __init__(self, path: Path, report: str, columns: tuple[Column, ...],
                 meta: dict[str, Any], tables: tuple[Table, ...] = (),
                 sheet: str | None = None) -> None:
        """`tables`: the report's further tables; `sheet`: its own rows' sheet name in
        XLSX (default: the report's name)."""
        self.path, self.report, self.columns, self.meta = path, report, columns, meta
        self.sheet_name = sheet or report
        self.rows = 0
        self.tables = {t.name: t for t in tables}
        self.table_rows = {t.name: 0 for t in tables}

    @abstractmethod
    def row(self, values: list[Any]) -> None:
        """Write one row: values in column order, typed as the columns say."""

    def table_row(self, name: str, values: list[Any]) -> None:
        """Write one row of the further table `name`: values in its columns' order."""
        columns = self.tables[name].columns
        if len(values) != len(columns):
            raise ValueError(f"{len(values)} values for {len(columns)} columns of {name}")
        self.table_rows[name] += 1
        self._table_row(name, values)

    @abstractmethod
    def _table_row(self, name: str, values: list[Any]) -> None:
        """Write one row of a further table, checked and counted."""

    @abstractmethod
    def close(self, about: dict[str, Any]) -> None:
        """Finish the file; `about` describes the export (scope, filters, time, rows)."""


class CsvWriter(ExportWriter):
    """UTF-8 with a byte-order mark (so spreadsheets read accents right), CRLF lines, one
    header row of column titles. One table: the report's own rows."""

    holds_tables = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def _table_row(self, name: str, values: list[Any]) -> None:
        """Not written: a CSV file is one table (the report's own rows)."""

    def close(self, about: dict[str, Any]) -> None:
        self.file.close()


class JsonWriter(ExportWriter):
    """One document: `manifest` (what the export is), `columns` (the data dictionary) and
    `rows` (objects keyed by column), then each further table as a member of its own
    (`{"columns": [...], "rows": [...]}`), then `about`. Dates are ISO 8601 text, sizes
    numbers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file = open(self.path, "w", encoding="utf-8", newline="\n")  # closed in close()
        self.file.write('{"manifest": ' + _json(self.meta) + ',\n"columns": '
                        + _json(_described(self.columns)) + ',\n"rows": [')
        self.encode = _JsonRows(self.columns).encode
        self.table_encode = {t.name: _JsonRows(t.columns).encode for t in self.tables.values()}
        # Further tables' rows until the report's own are done: temporary files beside the
        # export (the hub's private folder), gone when closed.
        self.spills = {name: tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n",
                                                    dir=self.path.parent)
                       for name in self.tables}

    def row(self, values: list[Any]) -> None:
        self.file.write(("\n" if self.rows == 0 else ",\n") + self.encode(values))
        self.rows += 1

    def _table_row(self, name: str, values: list[Any]) -> None:
        self.spills[name].write(("\n" if self.table_rows[name] == 1 else ",\n")
                                + self.table_encode[name](values))

    def close(self, about: dict[str, Any]) -> None:
        self.file.write("\n]")
        for name, spill in self.spills.items():
            self.file.write(",\n" + _json(name) + ': {"columns": '
                            + _json(_described(self.tables[name].columns)) + ', "rows": [')
            spill.seek(0)
            shutil.copyfileobj(spill, self.file)
            spill.close()
            self.file.write("\n]}")
        self.file.write(',\n"about": ' + _json(about) + "}\n")
        self.file.close()


def _described(columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    return [{"key": c.key, "title": c.title, "type": c.type, "unit": c.unit,
             "description": c.description} for c in columns]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _JsonRows:
    """A table's rows as JSON objects keyed by column: the very text `_json` writes for the
    row's dict, written from a template of the keys with each value encoded on its own (no
    dict and no encoder set up for each of a few hundred thousand rows)."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        self.template = "{" + ",".join(_json(c.key).replace("%", "%%") + ":%s"
                                       for c in columns) + "}"
        self.times = [i for i, c in enumerate(columns) if c.type == "datetime"]
        self.width = len(columns)

    def encode(self, values: list[Any]) -> str:
        if len(values) != self.width:
            raise ValueError(f"{len(values)} values for {self.width} columns")
        cells = [_json_value(v) for v in values]
        for i in self.times:
            if values[i] is not None:
                cells[i] = _json_string(_time_text(values[i]))
        return self.template % tuple(cells)


_json_string = json.encoder.encode_basestring  # what `_json` writes for a str (in C)


def _json_value(value: Any) -> str:
    """`_json(value)`, the common cases first: text, None, booleans, numbers."""
    kind = value.__class__
    if kind is str:
        return _json_string(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return _json(value)


class XlsxWriter(ExportWriter):
    """A workbook in constant-memory mode: the report's sheet (frozen, filterable header;
    typed cells), a sheet per further table, a "Fields" sheet (the data dictionary) and an
    "About" sheet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import xlsxwriter
        import xlsxwriter.workbook

        super().__init__(*args, **kwargs)
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
        # Reports of many rows write them straight as the sheet's XML (`_FastRows`).
        self.main = self._sheet(self.sheet_name, self.columns,
                                self.report in FAST_XLSX_REPORTS)
        # In constant-memory mode each sheet streams to a file of its own: rows of several
        # sheets may come interleaved, each sheet's in order.
        self.more = {t.name: self._sheet(t.name, t.columns,
                                         (self.report, t.name) in FAST_XLSX_TABLES)
                     for t in self.tables.values()}
        # The zip file xlsxwriter makes when the book closes (`Workbook._store_workbook` names
        # its class by this module global), deflated quickly: see `_QuickZipFile`.
        xlsxwriter.workbook.ZipFile = _QuickZipFile

    def _sheet(self, name: str, columns: tuple[Column, ...], fast: bool) -> _Sheet:
        sheet = self.book.add_worksheet(name)
        for i, c in enumerate(columns):
            sheet.write_string(0, i, c.title, self.header)
            sheet.set_column(i, i, _width(c))
        sheet.freeze_panes(1, 0)
        return _Sheet(sheet, columns, [_cell_writer(sheet, self.formats, c) for c in columns],
                      _FastRows(sheet, columns, self.formats) if fast else None)

    def row(self, values: list[Any]) -> None:
        self.rows += 1
        self.main.write(self.rows, values)

    def _table_row(self, name: str, values: list[Any]) -> None:
        self.more[name].write(self.table_rows[name], values)

    def close(self, about: dict[str, Any]) -> None:
        self.main.finish(self.rows)
        for name, more in self.more.items():
            more.finish(self.table_rows[name])
        fields = self.book.add_worksheet("Fields")
        # A report of several tables says which sheet each column is on.
        described = [(self.sheet_name, c) for c in self.columns] + \
            [(t.name, c) for t in self.tables.values() for c in t.columns]
        sheet_column = ("sheet",) if self.tables else ()
        for i, title in enumerate((*sheet_column, "column", "key", "type", "unit",
                                   "description")):
            fields.write_string(0, i, title, self.header)
        for r, (where, c) in enumerate(described, start=1):
            cells = (where,) if self.tables else ()
            for i, v in enumerate((*cells, c.title, c.key, c.type, c.unit or "",
                                   c.description)):
                fields.write_string(r, i, neutralise(v))
        skip = len(sheet_column)
        fields.set_column(0, 1 + skip, 22)
        fields.set_column(4 + skip, 4 + skip, 100)
        fields.freeze_panes(1, 0)
        sheet = self.book.add_worksheet("About")
        sheet.set_column(0, 0, 22)
        sheet.set_column(1, 1, 80)
        for r, (key, value) in enumerate(about.items()):
            sheet.write_string(r, 0, key, self.header)
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            sheet.write_string(r, 1, neutralise(text))
        self.book.close()


class _QuickZipFile(zipfile.ZipFile):
    """A zip file deflated at zlib's level 1 unless told otherwise (zipfile's default is 6).
    A big export's sheets are tens of MB of repetitive XML: level 1 deflates them in a third
    of the time, into a file some 15% larger; the cells are the same."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("compresslevel", 1)
        super().__init__(*args, **kwargs)


class _Sheet:
    """One table's sheet: its columns' typed cell writers, or `_FastRows`."""

    def __init__(self, sheet: Any, columns: tuple[Column, ...], cell: list[Any],
                 fast: _FastRows | None) -> None:
        self.sheet, self.columns, self.cell, self.fast = sheet, columns, cell, fast

    def write(self, r: int, values: list[Any]) -> None:
        """Row `r` (1: the first under the header)."""
        if self.fast is not None:
            self.fast.write(r, values)
            return
        for i, (write, v) in enumerate(zip(self.cell, values, strict=True)):
            if v is not None:
                write(r, i, v)

    def finish(self, rows: int) -> None:
        if self.fast is not None:
            self.fast.flush()
        self.sheet.autofilter(0, 0, max(rows, 1), len(self.columns) - 1)


def _cell_writer(sheet: Any, formats: dict[str, Any], column: Column) -> Any:
    """How a column's cells are written (typed), chosen once per column."""
    kind = column.type
    if kind == "datetime":
        fmt = formats["datetime"]
        return lambda r, i, v: sheet.write_datetime(
            r, i, _parse_time(v).replace(tzinfo=None), fmt)
    if kind == "date":
        fmt = formats["date"]
        return lambda r, i, v: sheet.write_datetime(
            r, i, datetime.combine(date.fromisoformat(v), datetime.min.time()), fmt)
    if kind == "bool":
        return lambda r, i, v: sheet.write_boolean(r, i, bool(v))
    if kind in ("int", "float", "bytes"):
        fmt = formats.get(kind)
        return lambda r, i, v: sheet.write_number(r, i, v, fmt)
    return lambda r, i, v: sheet.write_string(r, i, neutralise(str(v)))


# Reports whose XLSX rows go through `_FastRows`: the compliance report has a row per host and
# control (160,000 for 20,000 hosts), which xlsxwriter's per-cell path writes at ~4x the cost.
FAST_XLSX_REPORTS = frozenset({"compliance", "availability"})
# Further tables (report, table) written the same way: availability's outages (a few a month
# for each of 20,000 hosts).
FAST_XLSX_TABLES = frozenset({("availability", "outages")})
# A string xlsxwriter would write with care (control characters, its `_xHHHH_` escape,
# preserved spaces, rich text, the length limit): such a cell takes its own path. `&`, `<` and
# `>` are escaped here as xlsxwriter escapes them. U+FFFE and U+FFFF are no XML characters:
# written raw, they make the sheet unreadable.
_CAREFUL = re.compile(r"[\x00-\x08\x0b-\x1f\ufffe\uffff]|_x[0-9a-fA-F]{4}_|^\s|\s$|"
                      r"[\ud800-\udfff]")
_XML_ESCAPES = re.compile("[&<>]")


_UNSEEN: Any = object()
_EXCEL_EPOCH = date(1899, 12, 31).toordinal()  # xlsxwriter's (not 1904) epoch
_REMEMBERED = 100_000  # distinct values remembered per column kind (a few MB at most)
_BUFFERED_ROWS = 1000  # rows of sheet XML held before they are written to the sheet's file


class _FastRows:
    """Rows written as the XML xlsxwriter writes for them in constant-memory mode, byte for
    byte (tests/test_compliance.py and tests/test_export_availability.py compare the two),
    without its per-cell bookkeeping. Cells with anything to escape beyond `&<>` are handed
    to xlsxwriter's own cell writer.

    Rows are held (`_BUFFERED_ROWS`) and written to the sheet's file together; the sheet's
    row count and dimensions are brought up to date whenever they are (`flush`), which
    must happen before anything else writes to that file (xlsxwriter's cell writer, the
    workbook's close).
    """

    def __init__(self, sheet: Any, columns: tuple[Column, ...],
                 formats: dict[str, Any]) -> None:
        from xlsxwriter.utility import xl_col_to_name
        from xlsxwriter.worksheet import CellStringTuple

        self.sheet, self.string_cell = sheet, CellStringTuple
        self.kinds = [c.type for c in columns]
        if not set(self.kinds) <= {"text", "int", "float", "datetime", "bool"}:
            raise ValueError("_FastRows writes text, int, float, datetime and bool columns "
                             "only")
        # Each cell's XML up to its row number: '<c r="B'.
        self.heads = [f'<c r="{xl_col_to_name(i)}' for i in range(len(columns))]
        # Style indexes are numbered in order of first use: taken when first written, as
        # xlsxwriter takes them.
        self.datetime_format = formats["datetime"]
        self.datetime_tail: str | None = None  # '" s="2"><v>'
        self.started = False
        self.held: list[str] = []
        self.last = 0  # the last row held
        # Most text repeats from row to row (agency, site, control, title, outcome, reason)
        # and a host's results share their times: each distinct value is checked and
        # converted once. Bounded: past the limit new values are just not remembered.
        self.texts: dict[str, str | None] = {}  # value -> its cell after the row number
        self.times: dict[str, str] = {}  # value -> its serial number's text

    def _excel_time(self, text: str) -> float:
        """The serial number xlsxwriter writes for a time: for the store's own text
        ("2026-11-01T09:30:00.123456Z", after 1900) by its parts with xlsxwriter's very
        arithmetic (so the same bits); else through xlsxwriter."""
        if len(text) != 27 or text[10] != "T" or text[26] != "Z" or text < "1901":
            return float(self.sheet._convert_date_time(_parse_time(text).replace(tzinfo=None)))
        t = _FROM_ISO(text)  # parsed in C: a few hundred thousand of them an export
        # xlsxwriter: days + (seconds + microseconds / 1e6) / 86400, then + 1 past 1900-02-28
        # (Excel's 1900 leap year).
        return (t.toordinal() - _EXCEL_EPOCH) + (
            float(t.hour * 3600 + t.minute * 60 + t.second)
            + float(t.microsecond) / 1e6) / (60 * 60 * 24) + 1

    def _text_tail(self, value: str) -> str | None:
        """A text cell's XML after its row number, None when xlsxwriter must write it."""
        text = neutralise(value)
        if _CAREFUL.search(text) or len(text) > 16_000:
            return None
        if _XML_ESCAPES.search(text):
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f'" t="inlineStr"><is><t>{text}</t></is></c>'

    def write(self, r: int, values: list[Any]) -> None:
        kinds = self.kinds
        if len(values) != len(kinds):
            raise ValueError(f"{len(values)} values for {len(kinds)} columns")
        if not self.started:  # the header row, which xlsxwriter holds until the next row
            self.sheet._write_single_row(r)
            self.started = True
        n = str(r + 1)
        heads, texts, times = self.heads, self.texts, self.times
        parts = ['<row r="', n, '">']
        for i, v in enumerate(values):
            if v is None:
                continue
            kind = kinds[i]
            if kind == "text":
                value = v if v.__class__ is str else str(v)
                tail = texts.get(value, _UNSEEN)
                if tail is _UNSEEN:
                    tail = self._text_tail(value)
                    if len(texts) < _REMEMBERED:
                        texts[value] = tail
                if tail is None:
                    # xlsxwriter's own cell writer, into the same file, in order.
                    self.held.append("".join(parts))
                    parts = []
                    self.flush(r)
                    self.sheet._write_cell(r, i, self.string_cell(neutralise(value), None))
                    continue
                parts += (heads[i], n, tail)
            elif kind == "datetime":
                if self.datetime_tail is None:
                    self.datetime_tail = f'" s="{self.datetime_format._get_xf_index()}"><v>'
                number = times.get(v)
                if number is None:
                    number = f"{self._excel_time(v):.16G}"
                    if len(times) < _REMEMBERED:
                        times[v] = number
                parts += (heads[i], n, self.datetime_tail, number, "</v></c>")
            elif kind == "bool":
                parts += (heads[i], n, '" t="b"><v>1</v></c>' if v else
                          '" t="b"><v>0</v></c>')
            else:
                parts += (heads[i], n, f'"><v>{v:.16G}</v></c>')
        parts.append("</row>")
        self.held.append("".join(parts))
        self.last = r
        if len(self.held) >= _BUFFERED_ROWS:
            self.flush(r)

    def flush(self, r: int | None = None) -> None:
        """Write the rows held, up to row `r` (default: the last held)."""
        r = self.last if r is None else r
        if self.held:
            self.sheet.fh.write("".join(self.held))
            self.held = []
        if self.started:
            self.sheet._check_dimensions(r, 0)
            self.sheet.previous_row = r


_FROM_ISO = datetime.fromisoformat


def _width(column: Column) -> float:
    wide = {"datetime": 20, "date": 12, "bool": 10, "int": 12, "bytes": 18, "float": 12}
    return max(len(column.title) + 2, wide.get(column.type, 24))


WRITERS: dict[str, type[ExportWriter]] = {"csv": CsvWriter, "json": JsonWriter,
                                          "xlsx": XlsxWriter}
