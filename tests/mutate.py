"""`make mutate`: mutation testing of the modules that keep the product's promises.

Runs mutmut (configured in pyproject.toml, `[tool.mutmut]`: the modules, and the fast in-process
tests of each module's layer) from a fresh copy, then prints, per module, how many mutants the
tests killed and the score. A mutant listed in `EQUIVALENT` below behaves exactly like the
original (docs/testing.md says why for each family) and counts as neither killed nor missed.

    .venv/bin/python tests/mutate.py            # the whole run, from scratch
    .venv/bin/python tests/mutate.py --report   # the table again, from the last run
    .venv/bin/python tests/mutate.py --survivors  # also list the surviving mutants
    .venv/bin/python tests/mutate.py --module inventory/store/_common.py  # one module again

It works in `.mutate/` (the tree laid out as the `estate.*` packages, and mutmut's `mutants/`
inside it); `cd .mutate && ../.venv/bin/mutmut show NAME` prints one mutant's diff.

Exit status 1 when a module is under the target (90% of its non-equivalent mutants killed).
Not part of `make test`: it takes tens of minutes on a 2-core machine (docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# mutmut names a module by its path and runs from a copy of the tree; the folders install as
# `estate.agent`, `estate.inventory`, `estate.console` (pyproject.toml's package-dir), so the
# copy is laid out under those names: .mutate/estate/agent, ... (.mutate/ is ignored by git).
STAGE = ROOT / ".mutate"
MUTANTS = STAGE / "mutants"
FOLDERS = ("agent", "console", "inventory")
TARGET = 0.90
KILLED = {1, 3, 37}  # a test failed, pytest hit an internal error, mypy refused the mutant
TIMEOUT = {36, 24, -24, 152, 255}  # the mutant made a test hang: it was caught, too

# The store (inventory/store/) is too big to mutate whole in a run of this length: per module,
# its functions that write reports, changes and the audit log, and its reads scoped to agencies
# (the API's). Enrolment, tokens, operators, presence, pruning and the admin's unscoped reads
# are not run. Modules listed here are mutated in these functions only.
STORE_FUNCTIONS = {
    "inventory/store/_hosts.py": (
        "HostRecords.store_reports", "HostRecords._previous", "HostRecords._store_one",
        "HostRecords._upsert_host", "HostRecords._refresh_identity_conflicts",
        "HostRecords._identity", "HostRecords._sharing",
        "HostRecords.host_rows", "HostRecords.host_count", "HostRecords.summary",
        "HostRecords.host_detail", "HostRecords._conflicts_in_scope",
        "HostRecords.recent_reports", "HostRecords.host_detail_exists",
        "_StatusClock.__call__", "_ordering_time", "_gzipped",
    ),
    "inventory/store/_changes.py": ("ChangeRecords._insert_changes",
                                    "ChangeRecords.scoped_changes"),
    "inventory/store/_audit.py": ("AuditLog._audit", "AuditLog.audit", "AuditLog.verify_audit",
                                  "audit_hash"),
    "inventory/store/_enrolment.py": ("_sha256",),
}

# Mutants that cannot be told from the original by any test (docs/testing.md, "Mutation
# testing", explains each): mutant names, or fnmatch patterns of them.
_FALSY = "None for False: the same falsy value to the function called"
_NEVER_UNSAFE = ("a code point at the changed bound (U+007E, U+007F, U+10000) is never escaped "
                 "here: `~` and U+10000 are safe, DEL is escaped by the pattern before")
_READ_SIZE = ("how many bytes one read() asks for (or all at once): only memory use differs; "
              "the bytes checked and the size refused are the same")
_BUSY_QUEUED = "Busy's `queued` shapes only its default message, and a message is given"
_NO_ACCOUNT = "with burst 0 no account is opened, so there is nothing to change"
_COLUMN_CASE = ("a column name in another case (SQLite reads it the same; an upper-case "
                "AGENT_ID is set to itself on update)")
_BY_POSITION = "SQL raised to upper case in a SELECT whose row is read by position, not name"
_FIRST_WORD = "split(' ') with another maxsplit: the first word is the same"
_SQL_FRAGMENT = ("SQL in another case, in a WHERE fragment without the keywords _sql_recased "
                 "looks for (no column name becomes a key)")
_GZIP_BYTES = ("gzip's level or header time: every reader decompresses the body, so only the "
               "stored bytes differ (their size, the header's mtime)")
_BATCH_RESET = "`_pending` is emptied at the start of every batch, before anything reads it"
_CODEC_CASE = "a codec's name in another case is the same codec"
_CREATE_CASE = ("a CREATE TABLE's column definitions in another case: SQLite reads names, types "
                "and constraints in any case, and the spool reads rows by position")
_ALWAYS_REBOUND = "the loop variable's first value: the loop sets it before a checker can fail"
_STORE_TIME = ("every time a writer gets is the store's fixed-width text (27 characters), which "
               "this bound, or no bound, cuts the same")
_READS_Z = "Python 3.11+'s fromisoformat reads a final Z itself (3.10 would not)"
_POSIX_NEWLINE = ("newline=None writes \\n as os.linesep, which is \\n on POSIX, where the "
                  "tests run (on Windows it would be \\r\\n)")
_TYPED_WRITES = ("the option only affects Worksheet.write(); the writer calls only the typed "
                 "write_string/number/datetime/boolean")
_DEFAULT_NONE = "`default=None` dropped: None is already Params.text's default"
_OP_CHECKED = ("the internal-error branch runs only once `op` is one of OPS (or None): quoted() "
               "never cuts it, `op in OPS` is never false for a name, quoted(None) is quoted('')")
EQUIVALENT: dict[str, str] = {
    "estate.agent.spool.xǁSpoolǁ_connect__mutmut_10": "SQLite's lock wait: only timing shows it",
    "estate.agent.spool.xǁSpoolǁ_connect__mutmut_11": "SQLite's lock wait: only timing shows it",
    "estate.agent.spool.xǁSpoolǁnext_sequence__mutmut_22":
        "the clock's fallback divided by another "
                                                    "constant is still unique per boot",
    "estate.inventory.sanitise.x_dumps__mutmut_4": _FALSY,
    "estate.inventory.sanitise.x_dumps__mutmut_28": _NEVER_UNSAFE,
    "estate.inventory.sanitise.x_dumps__mutmut_29": _NEVER_UNSAFE,
    "estate.inventory.sanitise.x__escape_json_char__mutmut_3": _NEVER_UNSAFE,
    "estate.inventory.sanitise.x__escape_json_char__mutmut_4": _NEVER_UNSAFE,
    "estate.inventory.export.manifest.x_canonical__mutmut_6": _FALSY,
    # Only how much is read at once changes, never what: the same digest, the same refusal.
    "estate.inventory.export.manifest.x_sha256_of__mutmut_8": _READ_SIZE,
    "estate.inventory.export.manifest.x_sha256_of__mutmut_10": _READ_SIZE,
    "estate.inventory.export.manifest.x_sha256_of__mutmut_11": _READ_SIZE,
    "estate.inventory.export.manifest.x_verify__mutmut_11": _READ_SIZE,
    "estate.inventory.export.manifest.x_verify__mutmut_13": _READ_SIZE,
    "estate.inventory.export.manifest.x_verify__mutmut_20": _CODEC_CASE,
    # inventory/hub/_ingest.py
    "estate.inventory.hub._ingest.x_decompress__mutmut_6":
        "wbits 32 (zlib or gzip, detected) reads "
                                                    "the same streams: only a body starting "
                                                    "with the gzip magic gets there",
    "estate.inventory.hub._ingest.x_decompress__mutmut_13": "one byte more read past the limit: "
                                                     "refused the same",
    # Python 3.11's fromisoformat reads every time the schema admits (RFC 3339, UTC), so
    # accept()'s "not a time the hub can read" is unreachable on it (3.10 reaches it).
    "estate.inventory.hub._ingest.x_accept__mutmut_1[1-8]": "unreachable on Python 3.11+",
    # Busy(queued, retry_after, message): `queued` only shapes the default message.
    "estate.inventory.hub._ingest.xǁOverBudgetǁ__init____mutmut_[17]": _BUSY_QUEUED,
    "estate.inventory.hub._ingest.xǁIngestǁaccept__mutmut_[28]": _BUSY_QUEUED,
    "estate.inventory.hub._ingest.xǁIngestǁaccept__mutmut_10": _BUSY_QUEUED,
    "estate.inventory.hub._ingest.xǁAgentBudgetsǁtake__mutmut_50": _FALSY,
    "estate.inventory.hub._ingest.xǁIngestǁclose__mutmut_1": _FALSY,
    # With burst 0 no account is ever opened (take returns first): nothing to charge or give.
    "estate.inventory.hub._ingest.xǁAgentBudgetsǁrefused__mutmut_2": _NO_ACCOUNT,
    "estate.inventory.hub._ingest.xǁAgentBudgetsǁgive_back__mutmut_2": _NO_ACCOUNT,
    "estate.inventory.hub._ingest.xǁAgentBudgetsǁrefused__mutmut_3":
        "with burst 1 an invalid report "
                                                              "costs 1, all charged by take()",
    # inventory/hub/_api.py
    "estate.inventory.hub._api.xǁOperatorApiǁanswer__mutmut_6": _FALSY,
    "estate.inventory.hub._api.xǁOperatorApiǁhandle__mutmut_7": _CODEC_CASE,
    **{f"estate.inventory.hub._api.xǁOperatorApiǁhandle__mutmut_{n}": _OP_CHECKED
       for n in (2, 103, 104, 109)},
    **{f"estate.inventory.hub._api.xǁOperatorApiǁ{function}__mutmut_{n}": _DEFAULT_NONE
       for function, n in (("_hosts", 47), ("_changes", 5), ("_changes", 14))},
    # Rows with no value all get the key (True, x) and every other row (False, value): x is
    # only ever compared with another row's x, equal to it.
    "estate.inventory.hub._api.xǁOperatorApiǁ_hosts__mutmut_11[79]": "the sort key's stand-in for "
                                                              "no value is never compared",
    "estate.inventory.hub._api.xǁOperatorApiǁ_not_found__mutmut_31": "the names probed are at most "
                                                              "255 characters (their "
                                                              "parameters' bound): never cut",
    # inventory/store/_hosts.py
    **{f"estate.inventory.store._hosts.xǁHostRecordsǁ_upsert_host__mutmut_{n}": _COLUMN_CASE
       for n in (
        28, 30, 33, 36, 40, 44, 50, 56, 62, 66, 70, 74, 78,
        84, 90, 94, 103, 105, 109, 111, 113, 119, 121, 127, 138, 155)},
    "estate.inventory.store._hosts.xǁHostRecordsǁ_upsert_host__mutmut_18": _BY_POSITION,
    "estate.inventory.store._hosts.xǁHostRecordsǁ_previous__mutmut_12": _BY_POSITION,
    **{f"estate.inventory.store._hosts.xǁHostRecordsǁhost_rows__mutmut_{n}": _BY_POSITION
       for n in (4, 6, 8, 10)},
    "estate.inventory.store._hosts.xǁHostRecordsǁhost_rows__mutmut_83": _FIRST_WORD,
    "estate.inventory.store._hosts.xǁHostRecordsǁhost_rows__mutmut_89": _FIRST_WORD,
    **{f"estate.inventory.store._hosts.xǁHostRecordsǁ_upsert_host__mutmut_{n}": _FALSY
       for n in (129, 140, 159)},
    **{f"estate.inventory.store.{name}": _BY_POSITION for name in (
        "_audit.xǁAuditLogǁ_audit__mutmut_7", "_audit.xǁAuditLogǁverify_audit__mutmut_9",
        "_hosts.xǁHostRecordsǁ_store_one__mutmut_71", "_hosts.xǁHostRecordsǁ_store_one__mutmut_92",
        "_hosts.xǁHostRecordsǁ_identity__mutmut_8", "_hosts.xǁHostRecordsǁ_sharing__mutmut_8",
        "_hosts.xǁHostRecordsǁhost_count__mutmut_10",
        "_hosts.xǁHostRecordsǁ_conflicts_in_scope__mutmut_18",
        "_hosts.xǁHostRecordsǁrecent_reports__mutmut_14",
        "_hosts.xǁHostRecordsǁhost_detail_exists__mutmut_4",
        # `AS AGENCY`: the rows became `Change(*r)`, read by position (a dict's key before).
        "_changes.xǁChangeRecordsǁscoped_changes__mutmut_5")},
    **{f"estate.inventory.store._changes.xǁChangeRecordsǁscoped_changes__mutmut_{n}": _SQL_FRAGMENT
       for n in (26, 27, 33, 34)},
    "estate.inventory.store._audit.xǁAuditLogǁ_audit__mutmut_24": _FALSY,
    "estate.inventory.store._audit.x_audit_hash__mutmut_3": _FALSY,
    "estate.inventory.store._hosts.x__ordering_time__mutmut_5": _FALSY,
    "estate.inventory.store._audit.x_audit_hash__mutmut_10":
        "the key separator of a JSON list holding "
                                                      "no object is never written",
    "estate.inventory.store._enrolment.x__sha256__mutmut_4": _CODEC_CASE,
    **{f"estate.inventory.store._hosts.xǁHostRecordsǁstore_reports__mutmut_{n}": _BATCH_RESET
       for n in (4, 6)},
    "estate.inventory.store._hosts.xǁ_StatusClockǁ__call____mutmut_3":
        "the threshold computed again "
                                                                "for each host: the same "
                                                                "value, at more cost",
    "estate.inventory.store._hosts.xǁHostRecordsǁ_store_one__mutmut_73": "`changes` is a new empty "
                                                                  "list just before: assigning "
                                                                  "to it is adding to it",
    "estate.inventory.store._hosts.xǁHostRecordsǁ_identity__mutmut_10":
        "every host asked for was just "
                                                                 "written or just found in the "
                                                                 "table: its row is never "
                                                                 "missing",
    **{f"estate.inventory.store._hosts.x__gzipped__mutmut_{n}": _GZIP_BYTES for n in (5, 7, 8, 9,
                                                                                      10)},
    # `" AND 1 = 0"` lowered: SQL in another case, in a fragment with no keyword that
    # _sql_recased looks for.
    "estate.inventory.store._common.x__scoped__mutmut_5": "SQL in another case",
    # agent/spool.py
    **{f"estate.agent.spool.xǁSpoolǁ_connect__mutmut_{n}": _CREATE_CASE
       for n in (35, 36, 38, 39, 45, 46)},
    # inventory/report.py
    "estate.inventory.report.x_parse__mutmut_14": _CODEC_CASE,
    "estate.inventory.report.x__str_checker__mutmut_19": _CODEC_CASE,
    "estate.inventory.report.x__compile__mutmut_3": "the root's path None for '': children() reads "
                                             "both falsy values as the top level",
    "estate.inventory.report.x__compile__mutmut_4": _FALSY,
    "estate.inventory.report.x__object_checker__mutmut_[58]": "rsplit('.') with another maxsplit: "
                                                       "the last part is the same",
    "estate.inventory.report.x__object_checker__mutmut_3[67]": _ALWAYS_REBOUND,
    "estate.inventory.report.x__list_checker__mutmut_19": _ALWAYS_REBOUND,
    "estate.inventory.report.x__list_checker__mutmut_20": _ALWAYS_REBOUND,
    "estate.inventory.report.x__kind_of__mutmut_[23]": "unreachable: _expected() says 'must not be "
                                                "null' before asking _kind_of about None",
    # inventory/sanitise.py
    "estate.inventory.sanitise.x_is_unsafe__mutmut_2":
        "the space's shortcut only: its category (Zs) "
                                                "is safe anyway",
    **{f"estate.inventory.sanitise.x_quoted__mutmut_{n}":
       "a code point at the changed bound (U+0100, "
                                                   "U+10000) is a letter, never escaped"
       for n in (25, 26, 29, 30)},
    # inventory/export/_writers.py
    **{f"estate.inventory.export._writers.x__time_text__mutmut_{n}": _STORE_TIME for n in (2, 7,
                                                                                           8)},
    "estate.inventory.export._writers.x__parse_time__mutmut_[78]": _READS_Z,
    "estate.inventory.export._writers.xǁCsvWriterǁ__init____mutmut_[59]": _POSIX_NEWLINE,
    "estate.inventory.export._writers.xǁJsonWriterǁ__init____mutmut_[59]": _POSIX_NEWLINE,
    "estate.inventory.export._writers.xǁCsvWriterǁ__init____mutmut_13": _CODEC_CASE,
    "estate.inventory.export._writers.xǁJsonWriterǁ__init____mutmut_13": _CODEC_CASE,
    "estate.inventory.export._writers.xǁCsvWriterǁ__init____mutmut_19": "csv's default line "
                                                                 "terminator is \\r\\n too",
    **{f"estate.inventory.export._writers.xǁJsonWriterǁrow__mutmut_{n}":
       "the outer zip's strict: the "
       "inner one has refused a row that does not fit already" for n in (13, 16, 28)},
    "estate.inventory.export._writers.x__json__mutmut_2": _FALSY,
    "estate.inventory.export._writers.xǁXlsxWriterǁclose__mutmut_119": _FALSY,
    **{f"estate.inventory.export._writers.xǁXlsxWriterǁ__init____mutmut_{n}": _TYPED_WRITES
       for n in range(10, 19)},
    "estate.inventory.export._writers.xǁXlsxWriterǁ__init____mutmut_41": "a colour in lower case: "
                                                                  "xlsxwriter writes the same file",
    "estate.inventory.export._writers.xǁXlsxWriterǁclose__mutmut_9[34]":
        "About's column A set with B "
                                                                  "(or B:A): B is set again next, "
                                                                  "the same file",
}
# Modules whose SQL rows are plain tuples: a column name in another case is never a key.
TUPLE_ROWS = {"agent/spool.py"}


def _modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["source_paths"])


def _module_name(path: str) -> str:
    return "estate." + path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _staged(path: str) -> str:
    """A module's path in the staged tree (and in mutmut's `mutants/`)."""
    return f"estate/{path}"


def _stage() -> None:
    """A fresh copy of the tree for mutmut, laid out as the packages install."""
    shutil.rmtree(STAGE, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, STAGE / "estate" / folder, ignore=ignore)
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    config = tomllib.loads(text)["tool"]["mutmut"]
    for path in config["source_paths"]:
        text = text.replace(f'"{path}"', f'"{_staged(path)}"', 1)
    also_copy = ", ".join(f'"{p}"' for p in config["also_copy"])
    text = text.replace(f"also_copy = [{also_copy}]",
                        'also_copy = ["estate", "tests", "pyproject.toml"]')
    (STAGE / "pyproject.toml").write_text(text)


def _patterns() -> dict[str, list[str]]:
    """Per module, the mutant names (fnmatch patterns) that are run and scored."""
    out = {}
    for path in _modules():
        name = _module_name(path)
        if path in STORE_FUNCTIONS:
            out[path] = [f"{name}.x{'ǁ'.join(('', *fn.split('.')))}__mutmut_*" if "." in fn
                         else f"{name}.x_{fn}__mutmut_*" for fn in STORE_FUNCTIONS[path]]
        else:
            out[path] = [f"{name}.*"]
    return out


# Code that runs once, at import: inventory/report.py compiles the schema into nested checker
# functions when it is imported. mutmut records which tests reach a function while they run,
# so it would credit these to whichever test happened to import the module first; every test
# that validates a report goes through them.
IMPORT_TIME = {
    "estate.inventory.report": ("x__compile", "x__object_checker", "x__list_checker",
                                "x__str_checker",
                         "x__bool_checker", "x__datetime_checker", "x__number_checker"),
}
VALIDATES = "estate.inventory.report.x_validate"


def _credit_import_time_code() -> None:
    stats_file = MUTANTS / "mutmut-stats.json"
    stats = json.loads(stats_file.read_text())
    tests = stats["tests_by_mangled_function_name"]
    for module, functions in IMPORT_TIME.items():
        for function in functions:
            tests[f"{module}.{function}"] = sorted(set(tests.get(f"{module}.{function}", []))
                                                   | set(tests[VALIDATES]))
    stats_file.write_text(json.dumps(stats))


def _run(only: list[str] | None = None) -> float:
    # With --module, the other modules keep the results of their last run: mutmut writes a
    # fresh (unrun) record for every module it copies, so theirs are put back afterwards.
    kept = {} if only is None else {
        module: meta.read_bytes() for module in _patterns() if module not in only
        and (meta := MUTANTS / f"{_staged(module)}.meta").exists()}
    _stage()  # a fresh copy: no stale results
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.monotonic()
    patterns = [p for module, patterns in _patterns().items() if only is None or module in only
                for p in patterns]
    # Each mutant's worker imports the mutated modules afresh (pyproject.toml says why); they
    # hold every mutant's code (the store's is 3 MB), so their bytecode must be cached.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    children = ["--max-children", str(os.cpu_count() or 2)]
    # First the copy, the mutants and the record of which tests reach which function (with one
    # quick mutant, as `mutmut run` wants one), then that record corrected, then every mutant.
    try:
        for step in (["run", *children, "estate.inventory.report.x__reject_constant__mutmut_1"],
                     None, ["run", *children, *patterns]):
            if step is None:
                _credit_import_time_code()
                continue
            done = subprocess.run([str(mutmut), *step], cwd=STAGE, env=env, check=False)
            if done.returncode != 0:
                sys.exit(f"mutmut {step[0]} exited {done.returncode}")
    finally:  # kept even when this run failed: they are the other modules' last results
        for module, data in kept.items():
            (MUTANTS / f"{_staged(module)}.meta").parent.mkdir(parents=True, exist_ok=True)
            (MUTANTS / f"{_staged(module)}.meta").write_bytes(data)
    return time.monotonic() - started


# SQLite reads keywords, table and column names in any case, and every alias and value in
# Estate's SQL is lower case already: SQL text lowered is the same statement.
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|BEGIN|COMMIT|ROLLBACK|FROM|"
                  r"WHERE|JOIN|VALUES|ON CONFLICT|ORDER BY|LIMIT)\b")


def _changed_lines(name: str, module: str) -> tuple[str, str]:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=_staged(module)).splitlines()
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return "\n".join(removed), "\n".join(added)


def _sql_recased(old: str, new: str, tuple_rows: bool) -> bool:
    """The mutant only changes the case of SQL keywords and names, outside quoted values:
    lowered anywhere, raised only where no column name becomes a key."""
    if old == new or len(old) != len(new) or not _SQL.search(old):
        return False
    quoted = False
    for a, b in zip(old, new, strict=True):
        quoted ^= a == "'"
        if a != b and (quoted or a.lower() != b.lower()):
            return False
    raised = any(a != b and b.isupper() for a, b in zip(old, new, strict=True))
    return not raised or tuple_rows or "SELECT" not in old.upper()


def _equivalent(name: str, module: str) -> str | None:
    """Why a surviving mutant is equivalent, or None."""
    for pattern, reason in EQUIVALENT.items():
        if fnmatch(name, pattern):
            return reason
    if _sql_recased(*_changed_lines(name, module), module in TUPLE_ROWS):
        return "SQL in another case"
    return None


def report(show_survivors: bool) -> bool:
    """Print the table; True when every module reaches the target."""
    ok = True
    print(f"{'module':32} {'mutants':>7} {'killed':>6} {'equiv':>5} {'missed':>6} "
          f"{'score':>6}")
    survivors: list[str] = []
    for module, patterns in _patterns().items():
        meta_file = MUTANTS / f"{_staged(module)}.meta"
        if not meta_file.exists():
            print(f"{module:32} not run")
            ok = False
            continue
        meta = json.loads(meta_file.read_text())
        codes: dict[str, int | None] = {
            name: code for name, code in meta["exit_code_by_key"].items()
            if any(fnmatch(name, p) for p in patterns)}
        killed = equivalent = 0
        for name, code in codes.items():
            if code in KILLED or code in TIMEOUT:
                killed += 1
            elif code is not None and _equivalent(name, module):
                equivalent += 1
            else:
                survivors.append(f"{name} ({'no tests reach it' if code in (5, 33) else code})")
        counted = len(codes) - equivalent
        score = killed / counted if counted else 1.0
        ok = ok and score >= TARGET
        print(f"{module:32} {len(codes):7} {killed:6} {equivalent:5} "
              f"{counted - killed:6} {score:6.1%}")
    if show_survivors:
        print("\nsurvivors (`cd .mutate && ../.venv/bin/mutmut show NAME` prints one's diff):")
        print("\n".join(f"  {s}" for s in survivors) or "  none")
    return ok


def main() -> None:
    os.chdir(ROOT)
    parser = argparse.ArgumentParser(
        description="Mutation testing of the modules that keep the product's promises "
                    "(docs/testing.md). Without options: every module, from scratch (tens of "
                    "minutes).")
    parser.add_argument("--report", action="store_true",
                        help="print the last run's table again; run nothing")
    parser.add_argument("--survivors", action="store_true",
                        help="also list the surviving mutants")
    parser.add_argument("--module", action="append", choices=_patterns(), metavar="PATH",
                        help="run only this module's mutants again (repeatable; the others "
                             f"keep their last results): one of {', '.join(_patterns())}")
    args = parser.parse_args()
    if not args.report:
        elapsed = _run(args.module)
        print(f"\nmutmut run took {elapsed / 60:.1f} minutes")
    if not STAGE.exists():
        sys.exit("no run to report yet: run tests/mutate.py (or make mutate) first")
    os.chdir(STAGE)  # mutmut reads its results (mutants/) from the working folder
    sys.exit(0 if report(args.survivors) else 1)


if __name__ == "__main__":
    main()
