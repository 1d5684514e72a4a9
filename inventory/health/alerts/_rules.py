"""Reading and validating an alert rules file (TOML): its channels and its rules. Every error
names the channel or rule and the key, like the compliance policy's."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from estate.inventory.errors import EstateError
from estate.inventory.toml_file import TomlFileProblem, parse_toml, read_bounded

MAX_RULES_BYTES = 256 * 1024
MAX_RULES = 200
MAX_CHANNELS = 32
MAX_RECIPIENTS = 50
MAX_SCOPE_NAMES = 200  # agencies or sites one rule names
MAX_HEADERS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An addr-spec without comments or quoting: enough for alert recipients, and nothing that
# could end a header (no spaces, no CR/LF, no commas or angle brackets).
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
# The headers a webhook's own settings may not replace: the sender writes them.
_RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding",
                     "connection")

SEVERITIES = ("critical", "high", "medium", "low", "info")  # worst first
FORMATS = ("generic", "teams", "slack")
FACILITIES = {name: code for code, name in enumerate((
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
    "local3", "local4", "local5", "local6", "local7"))}


@dataclass(frozen=True)
class ConditionSpec:
    """What a condition reads and the one number it takes, if any."""

    source: str  # incident, host_offline, host (facts of reporting hosts), event
    threshold: str | None = None  # its key in a rule: minutes, percent or seconds
    low: float = 0
    high: float = 0
    severity: str = "medium"  # when the rule says none
    hosts_filter: bool = True  # whether a rule may pick hosts with `hosts`


CONDITIONS: dict[str, ConditionSpec] = {
    "site_outage": ConditionSpec("incident", severity="critical", hosts_filter=False),
    "shared_service": ConditionSpec("incident", severity="high", hosts_filter=False),
    "host_offline": ConditionSpec("host_offline", "minutes", 1, 10080, "high"),
    "disk": ConditionSpec("host", "percent", 1, 100, "medium"),
    "clock_skew": ConditionSpec("host", "seconds", 1, 86400, "medium"),
    "spool_dropped": ConditionSpec("host", severity="medium"),
    "unsupported_os": ConditionSpec("host", severity="medium"),
    "remote_session": ConditionSpec("event", severity="info"),
    "hardware_changed": ConditionSpec("event", severity="medium"),
}


class RulesError(EstateError, ValueError):
    """A rules file that cannot be used; `problems` lists each one, naming channel or rule
    and key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class EmailChannel:
    name: str
    host: str
    sender: str  # the rules file's `from`
    to: tuple[str, ...]
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    ca_file: str | None = None  # a private CA the server's certificate is checked against
    timeout_s: float = 30.0
    type: str = "email"

    def password(self) -> str | None:
        """The login password, read when sending (a rotated file is picked up).

        Raises:
            OSError: the file cannot be read.
        """
        if self.password_file:
            return Path(self.password_file).read_text(encoding="utf-8").strip("\r\n")
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


@dataclass(frozen=True)
class WebhookChannel:
    name: str
    url: str
    format: str = "generic"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 10.0
    type: str = "webhook"


@dataclass(frozen=True)
class SyslogChannel:
    name: str
    host: str
    port: int = 514
    transport: str = "udp"
    facility: str = "daemon"
    app_name: str = "estate-hub"
    timeout_s: float = 10.0
    type: str = "syslog"


Channel = EmailChannel | WebhookChannel | SyslogChannel


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str
    channels: tuple[str, ...]
    severity: str
    agencies: tuple[str, ...] | None = None  # None: every agency
    sites: tuple[str, ...] | None = None  # None: every site of those agencies
    hosts: str | None = None  # a host-list filter (`estate.inventory.filters`)
    threshold: float | None = None  # minutes, percent or seconds, by condition

    def in_scope(self, agency: str, site: str) -> bool:
        return (self.agencies is None or agency in self.agencies) and \
            (self.sites is None or site in self.sites)


@dataclass(frozen=True)
class Rules:
    source: str
    hash: str  # sha256 of the file's bytes
    channels: dict[str, Channel]
    rules: tuple[Rule, ...]

    def by_condition(self, *conditions: str) -> list[Rule]:
        return [r for r in self.rules if r.condition in conditions]


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file.

    Raises:
        RulesError: unreadable, not TOML, or listing every problem found.
    """
    source = str(path)
    try:
        data = read_bounded(path, MAX_RULES_BYTES)
    except TomlFileProblem as exc:
        raise RulesError(source, [str(exc)]) from None
    return parse_rules(data, source)


def parse_rules(data: bytes, source: str = "rules") -> Rules:
    """Rules from a file's bytes.

    Raises:
        RulesError: not UTF-8 TOML, or listing every problem found.
    """
    try:
        doc = parse_toml(data, MAX_RULES_BYTES)
    except TomlFileProblem as exc:
        raise RulesError(source, [str(exc)]) from None
    problems: list[str] = []
    rules = _Checker(problems).rules(doc, source, hashlib.sha256(data).hexdigest())
    if problems:
        raise RulesError(source, problems)
    return rules


class _Checker:
    """Validates a parsed document, collecting every problem rather than stopping at one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def bad(self, where: str, key: str, problem: str) -> None:
        self.problems.append(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def rules(self, doc: dict[str, Any], source: str, digest: str) -> Rules:
        for key in sorted(set(doc) - {"channels", "rules"}):
            self.bad("rules file", key[:64], "unknown key (expected channels, rules)")
        raw_channels = doc.get("channels", {})
        channels: dict[str, Channel] = {}
        if not isinstance(raw_channels, dict):
            self.bad("rules file", "channels", "expected [channels.NAME] tables")
            raw_channels = {}
        if len(raw_channels) > MAX_CHANNELS:
            self.bad("rules file", "channels", f"{len(raw_channels)} channels, over "
                                               f"{MAX_CHANNELS}")
        for name, table in list(raw_channels.items())[:MAX_CHANNELS]:
            if not _NAME.match(name):
                self.bad(f"channel {name[:64]!r}", "", "a name is 1 to 64 letters, digits, "
                                                       "'_', '.' or '-'")
                continue
            if not isinstance(table, dict):
                self.bad(f"channel {name}", "", "expected a table")
                continue
            channel = self.channel(name, table)
            if channel is not None:
                channels[name] = channel
        raw_rules = doc.get("rules", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            self.bad("rules file", "rules", "expected [[rules]] tables")
            raw_rules = []
        if len(raw_rules) > MAX_RULES:
            self.bad("rules file", "rules", f"{len(raw_rules)} rules, over {MAX_RULES}")
        rules: list[Rule] = []
        for i, table in enumerate(raw_rules[:MAX_RULES]):
            rule = self.rule(table, i, set(raw_channels))
            if rule is None:
                continue
            if any(r.name == rule.name for r in rules):
                self.bad(f"rule {rule.name}", "name", "duplicate rule name")
            rules.append(rule)
        return Rules(source, digest, channels, tuple(rules))

    # --- channels ---------------------------------------------------------------------

    def channel(self, name: str, t: dict[str, Any]) -> Channel | None:
        where = f"channel {name}"
        kind = self.text(t, "type", where, required=True, choices=("email", "webhook",
                                                                   "syslog"))
        before = len(self.problems)
        keys = {"email": {"host", "port", "starttls", "username", "password_file",
                          "password_env", "from", "to", "timeout", "ca_file"},
                "webhook": {"url", "format", "headers", "timeout"},
                "syslog": {"host", "port", "transport", "facility", "app_name", "timeout"},
                }.get(kind or "", set())
        for key in sorted(set(t) - keys - {"type"}):
            self.bad(where, key[:64], "unknown key" + (f" for type {kind}" if kind else ""))
        if kind == "email":
            made: Channel | None = self.email(name, t, where)
        elif kind == "webhook":
            made = self.webhook(name, t, where)
        elif kind == "syslog":
            made = self.syslog(name, t, where)
        else:
            return None
        return made if len(self.problems) == before else None

    def email(self, name: str, t: dict[str, Any], where: str) -> EmailChannel | None:
        host = self.host(t, where)
        port = self.number(t, "port", where, 587, 1, 65535, whole=True)
        starttls = self.flag(t, "starttls", where, True)
        username = self.text(t, "username", where, max_len=256)
        password_file = self.text(t, "password_file", where, max_len=4096)
        password_env = self.text(t, "password_env", where, max_len=128)
        ca_file = self.text(t, "ca_file", where, max_len=4096)
        sender = self.text(t, "from", where, required=True, max_len=320)
        if sender is not None and not _ADDRESS.match(sender):
            self.bad(where, "from", "expected an e-mail address like estate@example.org")
        to = self.names(t, "to", where, MAX_RECIPIENTS, required=True, max_len=320)
        for address in to or ():
            if not _ADDRESS.match(address):
                self.bad(where, "to", f"{address[:64]!r} is not an e-mail address like "
                                      f"it@example.org")
        timeout = self.number(t, "timeout", where, 30.0, 1, 300)
        if password_file and password_env:
            self.bad(where, "password_file", "give password_file or password_env, not both")
        if (password_file or password_env) and not username:
            self.bad(where, "username", "required with a password")
        if username and not starttls:
            # A login over plain SMTP hands the password to anyone on the path.
            self.bad(where, "starttls", "must be true when logging in (username): the "
                                        "password is never sent without TLS")
        if username and not (password_file or password_env):
            self.bad(where, "password_file", "required with a username (or password_env)")
        if password_file and not os.access(password_file, os.R_OK):
            self.bad(where, "password_file", f"cannot read {password_file[:200]!r}")
        if ca_file and not os.access(ca_file, os.R_OK):
            self.bad(where, "ca_file", f"cannot read {ca_file[:200]!r}")
        if host is None or sender is None or to is None or port is None or \
                starttls is None or timeout is None:
            return None
        return EmailChannel(name, host, sender, tuple(to), int(port), starttls, username,
                            password_file, password_env, ca_file, timeout)

    def webhook(self, name: str, t: dict[str, Any], where: str) -> WebhookChannel | None:
        url = self.text(t, "url", where, required=True, max_len=2048)
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.bad(where, "url", "expected an http:// or https:// URL with a host")
        fmt = self.text(t, "format", where, choices=FORMATS) or "generic"
        headers: list[tuple[str, str]] = []
        raw = t.get("headers", {})
        if not isinstance(raw, dict) or len(raw) > MAX_HEADERS:
            self.bad(where, "headers", f"expected a table of up to {MAX_HEADERS} "
                                       f"name = \"value\" pairs")
            raw = {}
        for key, value in raw.items():
            if not _HEADER_NAME.match(key) or key.lower() in _RESERVED_HEADERS:
                self.bad(where, f"headers.{key[:64]}", "not a header name this channel may "
                                                       "set")
            elif not isinstance(value, str) or len(value) > 4096 or \
                    any(ord(c) < 32 or ord(c) == 127 for c in value):
                self.bad(where, f"headers.{key}", "expected text of up to 4096 characters, "
                                                  "no control characters")
            else:
                headers.append((key, value))
        timeout = self.number(t, "timeout", where, 10.0, 1, 300)
        if url is None or timeout is None:
            return None
        return WebhookChannel(name, url, fmt, tuple(headers), timeout)

    def syslog(self, name: str, t: dict[str, Any], where: str) -> SyslogChannel | None:
        host = self.host(t, where)
        port = self.number(t, "port", where, 514, 1, 65535, whole=True)
        transport = self.text(t, "transport", where, choices=("udp", "tcp")) or "udp"
        facility = self.text(t, "facility", where, choices=tuple(FACILITIES)) or "daemon"
        app_name = self.text(t, "app_name", where, max_len=48) or "estate-hub"
        if not app_name.isascii() or " " in app_name:
            self.bad(where, "app_name", "expected printable ASCII without spaces (RFC 5424)")
        timeout = self.number(t, "timeout", where, 10.0, 1, 300)
        if host is None or port is None or timeout is None:
            return None
        return SyslogChannel(name, host, int(port), transport, facility, app_name, timeout)

    # --- rules --------------------------------------------------------------------------

    def rule(self, t: dict[str, Any], index: int, channel_names: set[str]) -> Rule | None:
        name = t.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            self.bad(f"rule #{index + 1}", "name", "required: 1 to 64 letters, digits, '_', "
                                                   "'.' or '-'")
            return None
        where = f"rule {name}"
        before = len(self.problems)
        condition = self.text(t, "condition", where, required=True, choices=tuple(CONDITIONS))
        spec = CONDITIONS.get(condition or "")
        allowed = {"name", "condition", "channels", "agencies", "sites", "severity"}
        if spec is not None:
            allowed |= {spec.threshold} if spec.threshold else set()
            allowed |= {"hosts"} if spec.hosts_filter else set()
        for key in sorted(set(t) - allowed):
            hint = ""
            if spec is not None and key == "hosts":
                hint = f": {condition} is about a site, not hosts"
            elif spec is not None and key in ("minutes", "percent", "seconds"):
                hint = f" for condition {condition}"
            self.bad(where, key[:64], "unknown key" + hint)
        channels = self.names(t, "channels", where, MAX_CHANNELS, required=True, max_len=64)
        for channel in channels or ():
            if channel not in channel_names:
                self.bad(where, "channels", f"no channel named {channel[:64]!r} (define it "
                                            f"as [channels.{channel[:64]}])")
        if channels is not None and not channels:
            self.bad(where, "channels", "name at least one channel")
        agencies = self.names(t, "agencies", where, MAX_SCOPE_NAMES, max_len=128)
        sites = self.names(t, "sites", where, MAX_SCOPE_NAMES, max_len=128)
        for key, names in (("agencies", agencies), ("sites", sites)):
            if names is not None and not names:
                self.bad(where, key, "an empty list would match nothing (leave it out for "
                                     "all)")
        severity = self.text(t, "severity", where, choices=SEVERITIES)
        hosts = self.text(t, "hosts", where, max_len=1000)
        if hosts is not None:
            from estate.inventory.filters import FilterError, compile_filter

            try:
                compile_filter(hosts)
            except FilterError as exc:
                self.bad(where, "hosts", str(exc))
        threshold = None
        if spec is not None and spec.threshold:
            threshold = self.number(t, spec.threshold, where, None, spec.low, spec.high,
                                    whole=spec.threshold == "minutes", required=True)
        if len(self.problems) != before or condition is None or spec is None or \
                channels is None:
            return None
        return Rule(name, condition, tuple(channels), severity or spec.severity,
                    tuple(agencies) if agencies is not None else None,
                    tuple(sites) if sites is not None else None, hosts,
                    float(threshold) if threshold is not None else None)

    # --- values -------------------------------------------------------------------------

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

    def host(self, t: dict[str, Any], where: str) -> str | None:
        host = self.text(t, "host", where, required=True, max_len=253)
        if host is not None and not _HOST.match(host):
            self.bad(where, "host", "expected a host name or IP address")
            return None
        return host

    def names(self, t: dict[str, Any], key: str, where: str, most: int,
              required: bool = False, max_len: int = 128) -> list[str] | None:
        value = t.get(key)
        if value is None:
            if required:
                self.bad(where, key, "required")
            return None
        if not isinstance(value, list) or len(value) > most or not all(
                isinstance(v, str) and 0 < len(v) <= max_len and v.isprintable()
                for v in value):
            self.bad(where, key, f"expected a list of up to {most} names (1 to {max_len} "
                                 f"printable characters each)")
            return None
        return list(value)

    def flag(self, t: dict[str, Any], key: str, where: str, default: bool) -> bool | None:
        value = t.get(key, default)
        if not isinstance(value, bool):
            self.bad(where, key, "expected true or false")
            return None
        return value

    def number(self, t: dict[str, Any], key: str, where: str, default: float | None,
               low: float, high: float, whole: bool = False,
               required: bool = False) -> float | None:
        if key not in t:
            if required:
                self.bad(where, key, "required")
            return default
        value = t[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (whole and not isinstance(value, int)) or not low <= value <= high:
            number = "a whole number" if whole else "a number"
            self.bad(where, key, f"expected {number} from {low:g} to {high:g}")
            return None
        return value
