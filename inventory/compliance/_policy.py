"""Reading and validating a compliance policy file (TOML): its controls, their conditions and
the per-agency overrides. Every error names the control (or agency) and the key."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.fields import BY_PATH
from estate.inventory.toml_file import TomlFileProblem, parse_toml, read_bounded

DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")

# The five UK Cyber Essentials control themes, in the scheme's order.
THEMES = ("firewalls", "secure_configuration", "user_access_control", "malware_protection",
          "security_update_management")
SEVERITIES = ("critical", "high", "medium", "low")  # worst first
OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in")
MAX_CONTROLS = 200
MAX_NAMES = 64  # in one list parameter (allowed admins, chassis)
MAX_POLICY_BYTES = 1024 * 1024
_ID = re.compile(r"^[a-z0-9_]{1,64}$")
_LEAF_KINDS = ("str", "int", "float", "bool", "datetime")


class PolicyError(EstateError, ValueError):
    """A policy that cannot be used; `problems` lists each one, naming control and key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class _Param:
    kind: str  # int, number, bool, names (a list of short strings)
    default: Any = None
    required: bool = False
    low: float = 0
    high: float = 0


# Each condition kind and its parameters (the generic `fact` kind is checked on its own).
KINDS: dict[str, dict[str, _Param]] = {
    "os_supported": {},
    "updated_within": {"days": _Param("int", required=True, low=1, high=3650)},
    "malware_protection": {"max_signature_age_days": _Param("number", 3.0, low=0, high=365),
                           "require_realtime": _Param("bool", True)},
    "firewall_on": {},
    "disks_encrypted": {"chassis": _Param("names", ("laptop", "tablet", "handheld"))},
    "admins_only": {"allowed": _Param("names", ())},
    "secure_boot_on": {},
    "no_auto_login": {},
    "fact": {},
}
_CONTROL_KEYS = ("id", "title", "theme", "severity", "kind", "description")
_FACT_KEYS = ("path", "op", "value")


@dataclass(frozen=True)
class Control:
    """One control: a named condition over a host's facts."""

    id: str
    title: str
    theme: str
    severity: str
    kind: str
    params: Mapping[str, Any]
    description: str = ""
    position: int = 0  # its place in the policy: reports list controls in this order


@dataclass(frozen=True)
class Policy:
    name: str
    version: str
    hash: str  # sha256 of the file's bytes
    controls: tuple[Control, ...]
    # agency -> control id -> the control's new parameters ({"enabled": False}: disabled)
    overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    # Each overriding agency's controls, made once (evaluation caches its checks per tuple).
    _by_agency: dict[str, tuple[Control, ...]] = field(default_factory=dict, compare=False,
                                                       repr=False)

    def controls_for(self, agency: str | None) -> tuple[Control, ...]:
        """The controls as they apply to an agency: overridden, disabled ones left out."""
        changes = self.overrides.get(agency or "")
        if not changes:
            return self.controls
        made = self._by_agency.get(agency or "")
        if made is None:
            made = self._by_agency[agency or ""] = self._overridden(changes)
        return made

    def _overridden(self, changes: Mapping[str, Mapping[str, Any]]) -> tuple[Control, ...]:
        out = []
        for c in self.controls:
            change = changes.get(c.id)
            if change is None:
                out.append(c)
            elif change.get("enabled", True):
                params = {**c.params, **{k: v for k, v in change.items()
                                         if k not in ("enabled", "severity")}}
                out.append(Control(c.id, c.title, c.theme, change.get("severity", c.severity),
                                   c.kind, params, c.description, c.position))
        return tuple(out)

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "hash": self.hash}


def load_policy(path: Path | None = None) -> Policy:
    """Read and validate a policy file (None: the policy shipped with Estate).

    Raises:
        PolicyError: unreadable, not TOML, or listing every problem found.
    """
    path = path or DEFAULT_POLICY
    source = str(path)
    try:
        data = read_bounded(path, MAX_POLICY_BYTES)
    except TomlFileProblem as exc:
        raise PolicyError(source, [str(exc)]) from None
    return parse_policy(data, source)


def parse_policy(data: bytes, source: str = "policy") -> Policy:
    """A policy from a file's bytes.

    Raises:
        PolicyError: not UTF-8 TOML, or listing every problem found.
    """
    try:
        doc = parse_toml(data, MAX_POLICY_BYTES)
    except TomlFileProblem as exc:
        raise PolicyError(source, [str(exc)]) from None
    problems: list[str] = []
    policy = _Checker(problems).policy(doc, hashlib.sha256(data).hexdigest())
    if problems or policy is None:
        raise PolicyError(source, problems or ["no controls"])
    return policy


class _Checker:
    """Validates a parsed document, collecting every problem rather than stopping at one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        # Controls named but refused: their overrides are not checked (their problems are
        # already told; "no such control" would only confuse).
        self.refused: set[str] = set()

    def bad(self, where: str, key: str, problem: str) -> None:
        self.problems.append(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def policy(self, doc: dict[str, Any], digest: str) -> Policy | None:
        for key in sorted(set(doc) - {"policy", "control", "agency"}):
            self.bad("policy file", key[:64], "unknown key (expected policy, control, agency)")
        head = doc.get("policy")
        if not isinstance(head, dict):
            self.bad("[policy]", "", "missing: a [policy] table with name and version")
            head = {}
        for key in sorted(set(head) - {"name", "version", "description"}):
            self.bad("[policy]", key[:64], "unknown key")
        name = self.text(head, "name", "[policy]", required=True, max_len=128)
        version = self.text(head, "version", "[policy]", required=True, max_len=64)
        self.text(head, "description", "[policy]", max_len=2000)
        raw = doc.get("control")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
            self.bad("policy file", "control", "expected one or more [[control]] tables")
            return None
        if len(raw) > MAX_CONTROLS:
            self.bad("policy file", "control", f"{len(raw)} controls, over {MAX_CONTROLS}")
        controls: list[Control] = []
        for i, c in enumerate(raw[:MAX_CONTROLS]):
            control = self.control(c, i)
            if control is None:
                continue
            if any(x.id == control.id for x in controls):
                self.bad(f"control {control.id}", "id", "duplicate control id")
            controls.append(control)
        overrides = self.overrides(doc.get("agency", {}), {c.id: c for c in controls})
        if name is None or version is None:
            return None
        return Policy(name, version, digest, tuple(controls), overrides)

    def text(self, table: dict[str, Any], key: str, where: str, required: bool = False,
             max_len: int = 256, choices: tuple[str, ...] = ()) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                self.bad(where, key, "required")
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > max_len:
            self.bad(where, key, f"expected text of 1 to {max_len} characters")
            return None
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
            self.bad(where, key, "control characters are not allowed")
            return None
        if choices and value not in choices:
            self.bad(where, key, f"expected one of {', '.join(choices)}, got {value[:64]!r}")
            return None
        return value

    def control(self, c: dict[str, Any], index: int) -> Control | None:
        ident = c.get("id")
        if not isinstance(ident, str) or not _ID.match(ident):
            self.bad(f"control #{index + 1}", "id",
                     "required: 1 to 64 lower-case letters, digits or '_'")
            return None
        where = f"control {ident}"
        kind = self.text(c, "kind", where, required=True, max_len=64, choices=tuple(KINDS))
        allowed = set(_CONTROL_KEYS) | set(KINDS.get(kind or "", {})) | \
            (set(_FACT_KEYS) if kind == "fact" else set())
        for key in sorted(set(c) - allowed):
            self.bad(where, key[:64], "unknown key" + (f" for kind {kind}" if kind else ""))
        title = self.text(c, "title", where, required=True, max_len=128)
        theme = self.text(c, "theme", where, required=True, max_len=64, choices=THEMES)
        severity = self.text(c, "severity", where, required=True, max_len=16,
                             choices=SEVERITIES)
        description = self.text(c, "description", where, max_len=2000) or ""
        if kind is None:
            self.refused.add(ident)
            return None
        params = self.params(c, kind, where, fill_defaults=True)
        if None in (title, theme, severity) or params is None:
            self.refused.add(ident)
            return None
        assert title is not None and theme is not None and severity is not None
        return Control(ident, title, theme, severity, kind, params, description, index)

    def params(self, table: dict[str, Any], kind: str, where: str,
               fill_defaults: bool, base_op: str | None = None) -> dict[str, Any] | None:
        before = len(self.problems)
        out: dict[str, Any] = {}
        for key, spec in KINDS[kind].items():
            if key not in table:
                if spec.required and fill_defaults:
                    self.bad(where, key, f"required for kind {kind}")
                elif fill_defaults:
                    out[key] = spec.default
                continue
            value = self.param(table[key], spec, where, key)
            if value is not None:
                out[key] = value
        if kind == "fact":
            out.update(self.fact(table, where, fill_defaults, base_op))
        return out if len(self.problems) == before else None

    def param(self, value: Any, spec: _Param, where: str, key: str) -> Any:
        if spec.kind == "bool":
            if not isinstance(value, bool):
                self.bad(where, key, "expected true or false")
                return None
            return value
        if spec.kind == "names":
            # Each report matches its up-to-256 admins against every name: 256 x 256
            # patterns cost 0.3 s of hub CPU a report, 64 a quarter of that.
            if not isinstance(value, list) or len(value) > MAX_NAMES or not all(
                    isinstance(v, str) and 0 < len(v) <= 256 for v in value):
                self.bad(where, key, f"expected a list of up to {MAX_NAMES} names (1 to 256 "
                                     f"characters each)")
                return None
            return tuple(value)
        whole = spec.kind == "int"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (whole and not isinstance(value, int)) or not spec.low <= value <= spec.high:
            number = "a whole number" if whole else "a number"
            self.bad(where, key, f"expected {number} from {spec.low:g} to {spec.high:g}")
            return None
        return value

    def fact(self, table: dict[str, Any], where: str, required: bool,
             base_op: str | None = None) -> dict[str, Any]:
        """The generic comparison's path, op and value (`base_op`: the control's own op,
        for an override that changes only the value)."""
        out: dict[str, Any] = {}
        path = table.get("path")
        if path is not None or required:
            f = BY_PATH.get(path) if isinstance(path, str) else None
            if f is None or "[]" in f.path or f.kind not in _LEAF_KINDS or \
                    f.path.split(".")[0] not in ("system", "hardware", "security"):
                self.bad(where, "path", "expected a report field under system, hardware or "
                                        "security that is one value, not a list (see "
                                        "docs/report.md), got " + repr(str(path)[:80]))
            else:
                out["path"] = f.path
        op = table.get("op")
        if op is not None or required:
            if op not in OPERATORS:
                self.bad(where, "op", f"expected one of {', '.join(OPERATORS)}")
            else:
                out["op"] = op
        if ("value" in table or required) and (op is None or op in OPERATORS):
            value = table.get("value")
            op_now = out.get("op", base_op)
            if op_now in ("in", "not_in"):
                if not isinstance(value, list) or not value or len(value) > 256 or not all(
                        _scalar(v) for v in value):
                    self.bad(where, "value", f"expected a list of 1 to 256 values for "
                                             f"op {op_now}")
                else:
                    out["value"] = tuple(value)
            elif not _scalar(value):
                self.bad(where, "value", "expected a string, number or true/false")
            else:
                out["value"] = value
        return out

    def overrides(self, raw: Any, controls: Mapping[str, Control]
                  ) -> dict[str, dict[str, dict[str, Any]]]:
        if not isinstance(raw, dict):
            self.bad("policy file", "agency", 'expected tables like [agency."Name".control_id]')
            return {}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for agency, changes in raw.items():
            where = f"agency {agency[:128]!r}"
            if not agency.strip() or len(agency) > 128:
                self.bad(where, "", "expected an agency name of 1 to 128 characters")
                continue
            if not isinstance(changes, dict):
                self.bad(where, "", "expected tables of controls [agency.\"Name\".control_id]")
                continue
            for ident, change in changes.items():
                cwhere = f"{where} control {ident[:64]}"
                control = controls.get(ident)
                if control is None:
                    if ident not in self.refused:
                        self.bad(cwhere, "", "no such control in this policy")
                    continue
                if not isinstance(change, dict):
                    self.bad(cwhere, "", "expected a table of the control's parameters")
                    continue
                keys = set(KINDS[control.kind]) | {"enabled", "severity"} | \
                    (set(_FACT_KEYS) if control.kind == "fact" else set())
                for key in sorted(set(change) - keys):
                    self.bad(cwhere, key[:64], f"cannot be overridden (expected "
                                               f"{', '.join(sorted(keys))})")
                checked: dict[str, Any] = {}
                if "enabled" in change:
                    if isinstance(change["enabled"], bool):
                        checked["enabled"] = change["enabled"]
                    else:
                        self.bad(cwhere, "enabled", "expected true or false")
                if "severity" in change:
                    severity = self.text(change, "severity", cwhere, choices=SEVERITIES)
                    if severity:
                        checked["severity"] = severity
                params = self.params({k: v for k, v in change.items() if k in keys},
                                     control.kind, cwhere, fill_defaults=False,
                                     base_op=control.params.get("op"))
                if control.kind == "fact" and params is not None:
                    merged = {**control.params, **params}
                    if merged.get("op") in ("in", "not_in") and \
                            not isinstance(merged.get("value"), tuple):
                        self.bad(cwhere, "value", f"expected a list for op {merged['op']}")
                    elif merged.get("op") not in ("in", "not_in") and \
                            isinstance(merged.get("value"), tuple):
                        self.bad(cwhere, "value",
                                 f"expected one value for op {merged['op']}, not a list")
                checked.update(params or {})
                out.setdefault(agency, {})[ident] = checked
        return out


def _scalar(value: Any) -> bool:
    """A value a fact can be compared with: NaN compares false with everything, and no
    report carries an infinite number."""
    return isinstance(value, (str, int, float, bool)) and \
        (not isinstance(value, str) or len(value) <= 256) and \
        (not isinstance(value, float) or math.isfinite(value))
