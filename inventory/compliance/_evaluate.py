"""Evaluating a host's report against a policy's controls: pass, fail or unknown per control,
with the fact read and the reason. Unknown facts (null, or no `security` section from an older
agent) are `unknown`, never `pass`.

Facts and reasons are short and stable (they change when the facts do, not with the clock's
every tick), since the store writes a result again only when its text changes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from estate.inventory.compliance._policy import SEVERITIES, Control
from estate.inventory.times import parse_time

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"
OUTCOMES = (PASS, FAIL, UNKNOWN)
MAX_TEXT = 400  # a fact or reason: agents' strings are bounded, their lists are not short
_NO_SECURITY = "the report has no security facts (an agent older than them)"
# A time further ahead of the hub's clock than this is the agent's clock or a lie, not a fact.
_FUTURE_DAYS = 1.0


class Result(NamedTuple):
    control: Control
    outcome: str
    fact: str | None
    reason: str | None


class ComplianceSummary(NamedTuple):
    """A host's results in a line (`HostRow.compliance`, a JSON list on the wire)."""

    share: float | None  # percent of results passing, one decimal; None: no results
    passed: int
    failed: int
    unknown: int
    worst: str | None  # id of the worst failing control (severity, then policy order)
    worst_title: str | None
    failing: str  # ids of the failing controls and their themes, space-separated


Outcome = tuple[str, str | None, str | None]
Check = Callable[[dict[str, Any], dict[str, Any] | None, datetime], Outcome]


def evaluate(controls: Iterable[Control], report: dict[str, Any],
             now: datetime) -> list[Result]:
    """Each control's result for this report (a report as the schema has it: `security` may
    be absent or null), at `now` (the hub's time of receipt)."""
    security = report.get("security")
    if not isinstance(security, dict):
        security = None
    out = []
    for c, check in _compiled(controls):
        outcome, fact, reason = check(report, security, now)
        # Most texts are short and clean: bounded only when they need it.
        if fact is not None and (len(fact) > MAX_TEXT or "\x00" in fact):
            fact = _bounded(fact)
        if reason is not None and (len(reason) > MAX_TEXT or "\x00" in reason):
            reason = _bounded(reason)
        out.append(Result(c, outcome, fact, reason))
    return out


# The checks of a tuple of controls (a policy's, or an agency's), made once: keyed by the
# tuple's id, the tuple kept beside them so its id cannot be reused while the entry lives.
_COMPILED: dict[int, tuple[Any, list[tuple[Control, Check]]]] = {}


def _compiled(controls: Iterable[Control]) -> list[tuple[Control, Check]]:
    if not isinstance(controls, tuple):
        return [(c, _check(c)) for c in controls]
    entry = _COMPILED.get(id(controls))
    if entry is None or entry[0] is not controls:
        if len(_COMPILED) > 10_000:
            _COMPILED.clear()
        entry = _COMPILED[id(controls)] = (controls, [(c, _check(c)) for c in controls])
    return entry[1]


def summarise(results: list[Result]) -> ComplianceSummary:
    return summarise_outcomes((r.outcome, r.control.id, r.control.theme, r.control.severity,
                               r.control.title) for r in results)


def summarise_outcomes(results: Iterable[tuple[str, str, str, str, str]]) -> ComplianceSummary:
    """A host's summary line from its results, in the policy's order: (outcome, control id,
    theme, severity, title) each. The worst failure is the first of the worst severity."""
    passed = failed = unknown = 0
    worst: tuple[int, str, str] | None = None  # (severity rank, id, title)
    failing: list[str] = []
    for outcome, control, theme, severity, title in results:
        if outcome == PASS:
            passed += 1
        elif outcome == FAIL:
            failed += 1
            for word in (control, theme):
                if word not in failing:
                    failing.append(word)
            rank = SEVERITIES.index(severity)
            if worst is None or rank < worst[0]:
                worst = (rank, control, title)
        else:
            unknown += 1
    total = passed + failed + unknown
    return ComplianceSummary(round(100 * passed / total, 1) if total else None, passed,
                             failed, unknown, worst[1] if worst else None,
                             worst[2] if worst else None, " ".join(failing))


def _bounded(text: str | None) -> str | None:
    """At most MAX_TEXT characters, and no NUL (PostgreSQL's text refuses it)."""
    if text is None:
        return None
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


# Checks are made once per control object (keyed by its id, the control kept beside its check
# so the id cannot be reused while the entry lives).
_CHECKS: dict[int, tuple[Control, Check]] = {}


def _check(c: Control) -> Check:
    entry = _CHECKS.get(id(c))
    if entry is None or entry[0] is not c:
        if len(_CHECKS) > 10_000:  # policies reloaded many times in one process (tests)
            _CHECKS.clear()
        entry = _CHECKS[id(c)] = (c, _MAKERS[c.kind](c.params))
    return entry[1]


def _section(security: dict[str, Any] | None, name: str) -> tuple[dict[str, Any], str]:
    """A sub-section (empty when missing) and what to say when its facts are null."""
    section = security.get(name) if security else None
    if not isinstance(section, dict):
        return {}, f"the report has no security.{name} facts"
    reason = section.get("reason")
    return section, reason if isinstance(reason, str) and reason else \
        f"the agent could not tell (security.{name})"


def _os_supported(params: Mapping[str, Any]) -> Check:
    # Loaded with the first check made, not with the hub: the export package stays out of a
    # hub's start (tests/test_architecture.py), and the table is small.
    from estate.inventory.export._eos import support_of

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        os = report["system"]["os"]
        name = os.get("product") or os.get("name")
        version = os.get("version")
        if not name:
            return UNKNOWN, None, "the report names no operating system"
        fact = " ".join(x for x in (name, version) if x)
        support = support_of(name, version)
        if support is None:
            return UNKNOWN, fact, "not in Estate's end-of-support table"
        end = support.end_of_support.isoformat()
        if support.end_of_support < now.date():
            return FAIL, fact, f"{support.os}: vendor support ended {end}"
        return PASS, fact, f"{support.os}: supported until {end}"
    return check


def _updated_within(params: Mapping[str, Any]) -> Check:
    days = params["days"]

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        if security is None:
            return UNKNOWN, None, _NO_SECURITY
        updates, why = _section(security, "updates")
        last = updates.get("last_success")
        if not isinstance(last, str):
            return UNKNOWN, None, why
        fact = f"last_success={last[:19]}"
        try:
            age = (now - parse_time(last)).total_seconds() / 86400
        except (ValueError, OverflowError):
            return UNKNOWN, fact, "not a time"
        if age < -_FUTURE_DAYS:
            return UNKNOWN, fact, "in the future by the hub's clock"
        if age > days:
            return FAIL, fact, f"no update installed in the last {days} days"
        return PASS, fact, f"updates installed within {days} days"
    return check


def _malware_protection(params: Mapping[str, Any]) -> Check:
    max_age = params["max_signature_age_days"]
    realtime_needed = params["require_realtime"]

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        if security is None:
            return UNKNOWN, None, _NO_SECURITY
        m, why = _section(security, "malware")
        product = m.get("product")
        if product == "none":
            return FAIL, "product=none", "no anti-malware product found"
        enabled, realtime, age = m.get("enabled"), m.get("realtime"), \
            m.get("signature_age_days")
        name = product if isinstance(product, str) else "(unknown product)"
        if enabled is False:
            return FAIL, f"product={name}, enabled=false", f"{name} is off"
        if realtime_needed and realtime is False:
            return FAIL, f"product={name}, realtime=false", "real-time protection is off"
        if enabled is None or (realtime_needed and realtime is None):
            return UNKNOWN, f"product={name}", why
        if not isinstance(age, (int, float)):
            return UNKNOWN, f"product={name}", f"signature age unknown: {why}"
        fact = f"product={name}, signature_age_days={age:.0f}"
        if age > max_age:
            return FAIL, fact, f"signatures older than {max_age:g} days"
        return PASS, fact, f"on, signatures within {max_age:g} days"
    return check


def _firewall_on(params: Mapping[str, Any]) -> Check:
    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        if security is None:
            return UNKNOWN, None, _NO_SECURITY
        fw, why = _section(security, "firewall")
        enabled, product = fw.get("enabled"), fw.get("product")
        off = [p.get("name") for p in fw.get("profiles") or ()
               if isinstance(p, dict) and p.get("enabled") is False]
        fact = f"enabled={_word(enabled)}" + (f" ({product})" if product else "") + \
            (f", profiles off: {', '.join(str(n) for n in off)}" if off else "")
        if enabled is False or off:
            return FAIL, fact, "the firewall is off" + (" for some profiles" if off else "")
        if enabled is None:
            return UNKNOWN, fact, why
        return PASS, fact, "the firewall is on"
    return check


def _disks_encrypted(params: Mapping[str, Any]) -> Check:
    chassis_needing = {c.lower() for c in params["chassis"]}

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        chassis = report["hardware"].get("chassis")
        if not isinstance(chassis, str):
            return UNKNOWN, None, "chassis unknown: cannot tell whether encryption is required"
        if chassis.lower() not in chassis_needing:
            return PASS, f"chassis={chassis}", "not required for this chassis"
        if security is None:
            return UNKNOWN, f"chassis={chassis}", _NO_SECURITY
        enc, why = _section(security, "encryption")
        volumes = enc.get("volumes")
        if not isinstance(volumes, list):
            return UNKNOWN, f"chassis={chassis}", why
        if not volumes:
            return UNKNOWN, f"chassis={chassis}", "no fixed volumes reported"
        clear = [v.get("mount") for v in volumes if v.get("encrypted") is False]
        suspended = [v.get("mount") for v in volumes
                     if v.get("encrypted") is True and v.get("protection") == "off"]
        unsure = [v.get("mount") for v in volumes if v.get("encrypted") is None]
        if clear:
            return FAIL, "not encrypted: " + ", ".join(map(str, clear)), \
                f"{len(clear)} of {len(volumes)} fixed volumes not encrypted"
        if suspended:
            return FAIL, "protection off: " + ", ".join(map(str, suspended)), \
                "encrypted, but protection is suspended"
        if unsure:
            return UNKNOWN, "unknown: " + ", ".join(map(str, unsure)), why
        return PASS, f"{len(volumes)} fixed volumes encrypted", "every fixed volume encrypted"
    return check


def _admins_only(params: Mapping[str, Any]) -> Check:
    allowed = [p.lower() for p in params["allowed"]]

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        if security is None:
            return UNKNOWN, None, _NO_SECURITY
        accounts, why = _section(security, "accounts")
        admins = accounts.get("admins")
        if not isinstance(admins, list):
            return UNKNOWN, None, why
        unexpected = [a for a in admins if isinstance(a, str)
                      and not any(fnmatchcase(a.lower(), p) for p in allowed)]
        if unexpected:
            return FAIL, "unexpected: " + ", ".join(unexpected), \
                f"{len(unexpected)} local admin account(s) not in the allowed list"
        return PASS, f"{len(admins)} admin account(s), all allowed", "no unexpected admins"
    return check


def _flag(section_name: str, key: str, good: bool, fail_text: str,
          pass_text: str) -> Callable[[Mapping[str, Any]], Check]:
    """A control passing when one boolean fact has the `good` value."""
    def make(params: Mapping[str, Any]) -> Check:
        def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
            if security is None:
                return UNKNOWN, None, _NO_SECURITY
            section, why = _section(security, section_name)
            value = section.get(key)
            fact = f"{key}={_word(value)}"
            if section_name == "platform" and section.get("firmware"):
                fact += f", firmware={section['firmware']}"
            if not isinstance(value, bool):
                return UNKNOWN, fact, why
            return (PASS, fact, pass_text) if value is good else (FAIL, fact, fail_text)
        return check
    return make


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge,
    "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b,
}


def _fact(params: Mapping[str, Any]) -> Check:
    path, op, expected = params["path"], params["op"], params["value"]
    keys = path.split(".")
    compare = _COMPARE[op]

    def check(report: dict[str, Any], security: Any, now: datetime) -> Outcome:
        if keys[0] == "security" and security is None:
            return UNKNOWN, None, _NO_SECURITY
        value: Any = report
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if value is None:
            return UNKNOWN, None, f"{path} not reported"
        fact = f"{path}={_word(value)}"
        try:
            ok = compare(value, expected)
        except TypeError:
            return UNKNOWN, fact, f"cannot compare with {expected!r}"
        want = f"{op} {list(expected) if isinstance(expected, tuple) else expected!r}"
        return (PASS, fact, f"{want} holds") if ok else (FAIL, fact, f"expected {want}")
    return check


def _word(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_MAKERS: dict[str, Callable[[Mapping[str, Any]], Check]] = {
    "os_supported": _os_supported,
    "updated_within": _updated_within,
    "malware_protection": _malware_protection,
    "firewall_on": _firewall_on,
    "disks_encrypted": _disks_encrypted,
    "admins_only": _admins_only,
    "secure_boot_on": _flag("platform", "secure_boot", True, "Secure Boot is off",
                            "Secure Boot is on"),
    "no_auto_login": _flag("accounts", "auto_login", False, "automatic login is on",
                           "automatic login is off"),
    "fact": _fact,
}
