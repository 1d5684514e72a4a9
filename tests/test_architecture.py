"""The architecture, checked: each package's public surface is its `__all__`, the platform
collectors are interchangeable, the shared core needs nothing outside the standard library, and
the console and the agent load nothing of the roles they must not reach.

The import boundaries between the roles are import-linter contracts (pyproject.toml's
[tool.importlinter], run by `make lint`); this file checks what those contracts cannot say
(such as what a package's `__init__` loads when one of its modules is imported).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# The folders install as the `estate.*` namespace (pyproject.toml's package-dir).
PACKAGES = sorted(".".join(("estate", *init.parent.relative_to(ROOT).parts))
                  for top in ("agent", "inventory", "console")
                  for init in (ROOT / top).rglob("__init__.py"))
PLATFORMS = ("_linux", "_windows", "_macos", "_other")


def _public_names_defined(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (also inside top-level `if`/`try`), other than by
    importing them, that do not start with `_`."""
    names: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t)
                             if isinstance(n, ast.Name))
            elif isinstance(node, ast.If):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                walk(node.orelse)
                walk(node.finalbody)
                for handler in node.handlers:
                    walk(handler.body)

    walk(tree.body)
    return {name for name in names if not name.startswith("_")}


def test_the_packages_are_found():
    assert {"estate.agent", "estate.agent.collect", "estate.console", "estate.inventory",
            "estate.inventory.export", "estate.inventory.hub",
            "estate.inventory.store"} <= set(PACKAGES)


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages by name (the folders map to `estate.*`): a new
    package folder missing from the list would be left out of the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == PACKAGES


@pytest.mark.parametrize("name", PACKAGES)
def test_each_package_exports_what_its_all_lists(name):
    """As httpx checks `httpx.__all__`: every public name the package's `__init__` defines is
    in `__all__`, and every name in `__all__` exists (re-exports from private modules too)."""
    package = importlib.import_module(name)
    source = Path(package.__file__ or "").read_text(encoding="utf-8")
    defined = _public_names_defined(ast.parse(source))
    exported = list(getattr(package, "__all__", []))
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    assert sorted(defined - set(exported)) == [], f"public in {name} but not in its __all__"
    assert [n for n in exported if not hasattr(package, n)] == [], \
        f"in {name}.__all__ but not defined"


def test_the_platform_collectors_export_the_same_names_with_the_same_parameters():
    """psutil-style: one module per OS, chosen once in agent/collect/__init__.py. Each must
    offer exactly what that switch uses, under the same names, taking the same parameters."""
    modules = {p: importlib.import_module(f"estate.agent.collect.{p}") for p in PLATFORMS}
    linux = modules["_linux"].__all__
    for platform, module in modules.items():
        assert module.__all__ == linux, f"{platform}.__all__ differs from _linux.__all__"
        for name in module.__all__:
            ours, theirs = getattr(module, name), getattr(modules["_linux"], name)
            if callable(theirs):
                assert list(inspect.signature(ours).parameters) == \
                    list(inspect.signature(theirs).parameters), f"{platform}.{name}"
            else:
                assert type(ours) is type(theirs), f"{platform}.{name}"
    switch = ast.parse((ROOT / "agent" / "collect" / "__init__.py").read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(switch) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "_platform"}
    assert used == set(linux)


def _core_modules() -> list[str]:
    """The shared core, as the import-linter contract names it (one list, kept in one place)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    [core] = [c for c in contracts if c["name"].startswith("The shared core")]
    return sorted(core["source_modules"])


def test_the_shared_core_imports_only_the_standard_library_and_itself():
    """The contract forbids the third-party packages Estate uses; this catches any other one,
    including imports inside functions."""
    core = _core_modules()
    assert {"estate.inventory.errors", "estate.inventory.protocol",
            "estate.inventory.report"} <= set(core)
    outside = []
    for name in core:
        path = ROOT.joinpath(*name.removeprefix("estate.").split(".")).with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module]
            else:
                continue
            outside += [f"{name} imports {module}" for module in imported
                        if module.split(".")[0] not in sys.stdlib_module_names
                        and module not in core and module != "__future__"]
    assert outside == []


def _loaded_by(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """The modules under `forbidden` that importing `modules` loads, in a fresh interpreter:
    import-linter reads import statements, this sees what `__init__` files pull in at runtime."""
    code = (f"import importlib, sys\n"
            f"for name in {modules!r}:\n"
            f"    importlib.import_module(name)\n"
            f"print('\\n'.join(sorted(m for m in sys.modules\n"
            f"                        if any(m == f or m.startswith(f + '.') "
            f"for f in {forbidden!r}))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_console_loads_neither_the_store_nor_the_hub():
    assert _loaded_by(("estate.console.cli", "estate.console.app", "estate.console.export",
                       "estate.console.remote"),
                      ("estate.inventory.store", "estate.inventory.hub")) == []


def test_the_hub_loads_the_export_package_only_for_an_export():
    """The hub's server and its admin verbs start without the export package (xlsxwriter,
    the end-of-support table): the first export loads it."""
    assert _loaded_by(("estate.inventory.hub.cli", "estate.inventory.hub._hub"),
                      ("estate.inventory.export", "estate.inventory.hub._export",
                       "xlsxwriter")) == []


def test_a_hub_on_sqlite_loads_no_postgresql_driver():
    """psycopg is the PostgreSQL backend's alone (`_postgres.py`, loaded by a postgresql://
    store): the SQLite hub, its admin verbs and the store package start without it."""
    assert _loaded_by(("estate.inventory.hub.cli", "estate.inventory.hub._hub",
                       "estate.inventory.store"),
                      ("psycopg", "estate.inventory.store._postgres")) == []
    importers = [path.relative_to(ROOT).as_posix()
                 for folder in ("agent", "inventory", "console")
                 for path in (ROOT / folder).rglob("*.py")
                 if re.search(r"^\s*(import|from) psycopg", path.read_text(), re.MULTILINE)]
    assert importers == ["inventory/store/_postgres.py"]


def test_the_agent_loads_nothing_of_the_hub_its_store_exports_or_the_console():
    assert _loaded_by(("estate.agent.cli", "estate.agent.service"),
                      ("estate.inventory.hub", "estate.inventory.store", "estate.inventory.export",
                       "estate.console")) == []


# --- error codes: every code the hub uses is one the protocol module lists -------------------

def _code_parameters(trees: list[ast.Module]) -> dict[str, set[int]]:
    """Callables that take an error code, and the position of their `code` parameter: every
    function or method with a parameter named `code`, every class whose `__init__` has one or
    that inherits it (`Refused(CodedError)`), and the other names they go by
    (`RequestError as ApiError`, `ExportError = RequestError`)."""
    positions: dict[str, set[int]] = {}
    bases: dict[str, set[str]] = {}
    aliases: dict[str, set[str]] = {}

    def code_position(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int | None:
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if method and names and names[0] in ("self", "cls"):
            names = names[1:]
        return names.index("code") if "code" in names else None

    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(
                    b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                    if isinstance(b, (ast.Name, ast.Attribute)))
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        at = code_position(item, method=True)
                        if at is not None:
                            name = node.name if item.name == "__init__" else item.name
                            positions.setdefault(name, set()).add(at)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                at = code_position(node, method=False)
                if at is not None and not any(a.arg in ("self", "cls") for a in node.args.args):
                    positions.setdefault(node.name, set()).add(at)
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.asname:
                        aliases.setdefault(alias.asname, set()).add(alias.name)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        aliases.setdefault(target.id, set()).add(node.value.id)
    changed = True
    while changed:  # inherited and aliased, to a fixed point
        changed = False
        for name, parents in [*bases.items(), *aliases.items()]:
            if name in positions and name in bases:
                continue  # a class with its own `__init__(..., code, ...)`
            inherited = set().union(*(positions.get(p, set()) for p in parents))
            if inherited - positions.get(name, set()):
                positions.setdefault(name, set()).update(inherited)
                changed = True
    return positions


def _string_literals(node: ast.expr) -> list[str]:
    """The strings an expression is spelled with: a literal, or either side of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _string_literals(node.body) + _string_literals(node.orelse)
    return []


def _codes_used(root: Path) -> dict[str, list[str]]:
    """Every string literal `root`'s code uses as an error code, with where: the `code`
    argument of any callable that takes one (`CodedError` and its subclasses, `Channel.fail`,
    `error_line`, ...), a `"code":` value in a dict literal, `code = ...`, `x.code == ...`."""
    files = sorted(root.rglob("*.py"))
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in files]
    takes_code = _code_parameters(trees)
    found: dict[str, list[str]] = {}
    for path, tree in zip(files, trees, strict=True):
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else \
                    func.attr if isinstance(func, ast.Attribute) else ""
                values += [node.args[at] for at in takes_code.get(name, ())
                           if at < len(node.args) and not isinstance(node.args[at], ast.Starred)]
                values += [kw.value for kw in node.keywords if kw.arg == "code"]
            elif isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values, strict=True)
                           if isinstance(k, ast.Constant) and k.value == "code"]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                    values.append(node.value)
            elif isinstance(node, ast.Compare):
                left = node.left
                if (isinstance(left, ast.Name) and left.id == "code") or \
                        (isinstance(left, ast.Attribute) and left.attr == "code"):
                    values += node.comparators
            for value in values:
                for code in _string_literals(value):
                    found.setdefault(code, []).append(f"{where}:{value.lineno}")
    return found


def _listed_codes() -> set[str]:
    from estate.inventory import protocol

    return (set(protocol.ERROR_CODES) | protocol.API_ERROR_CODES
            | protocol.CONNECTION_REFUSAL_CODES | protocol.REMOTE_REFUSAL_CODES
            | protocol.INPUT_REFUSAL_CODES)


def test_every_error_code_the_code_uses_is_listed_in_the_protocol_module():
    """A new code cannot be sent (or audited) without its place in `estate.inventory.protocol`:
    channel-ending (with its exit status), an API answer, a refused connection, a refused
    remote session or a refused input."""
    used = _codes_used(ROOT / "inventory")
    # The scan finds what it should: codes of each kind, from each way of naming one.
    assert {"too_many_watchers", "access_ended", "not_found", "ambiguous", "bad_register",
            "token_used_up", "host_limit", "agent_failed", "too_many_channels",
            "input_per_sender", "line_too_long", "bad_json"} <= set(used)
    unlisted = {code: where for code, where in used.items() if code not in _listed_codes()}
    assert unlisted == {}


def test_every_listed_error_code_is_used():
    """No stale entries: each listed code is spelled somewhere in the hub's code, as a literal
    or at the start of a refusal's text (`"too_many_channels: ..."`)."""
    texts = {node.value for path in (ROOT / "inventory").rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    unused = sorted(code for code in _listed_codes()
                    if code not in texts and not any(t.startswith(f"{code}:") for t in texts))
    assert unused == []


def test_the_error_code_sets_agree_with_the_hub():
    from estate.inventory import protocol
    from estate.inventory.hub import _door
    from estate.inventory.hub._commands.api import INVALID_LINE_CODES

    assert set(_door.MESSAGES) <= protocol.CONNECTION_REFUSAL_CODES
    assert INVALID_LINE_CODES <= protocol.API_ERROR_CODES
    # An API answer's code that also ends channels means the same there.
    assert {"bad_json", "bad_request", "too_large", "busy", "internal"} <= \
        protocol.API_ERROR_CODES & set(protocol.ERROR_CODES)


def test_the_protocol_docs_errors_table_lists_every_channel_error_code():
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            # `code` (with `path`): the parenthesis says what comes with it, not a code.
            for code in re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", cells[2])):
                documented[code] = int(cells[0])
    from estate.inventory.protocol import ERROR_CODES

    assert documented == {code: int(status) for code, status in ERROR_CODES.items()}
