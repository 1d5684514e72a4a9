"""One alert message, as the dispatcher queues it and every channel renders it: plain data,
agent-supplied text already made safe (`estate.inventory.sanitise.plain`: no control, bidi or
line-breaking character survives in a title, a line or a fact)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from estate.inventory.sanitise import plain

TITLE_LIMIT = 200
LINE_LIMIT = 500
MAX_LINES = 40
MAX_FACTS = 20


@dataclass(frozen=True)
class Message:
    """An alert: what happened (`event` of `condition`), where, and the thread it belongs to
    (an incident's messages share one: e-mail threads them)."""

    rule: str
    condition: str
    event: str  # opened, updated, resolved, reopened, firing, cleared, started, changed, test
    severity: str
    title: str
    lines: tuple[str, ...]  # the body, one line each
    at: str  # ISO UTC: when it happened
    thread: str  # "incident:12", "host:ag-..:disk", "session:7", ...
    agency: str | None = None
    site: str | None = None
    facts: tuple[tuple[str, str], ...] = ()  # (name, value) pairs for cards
    incident: dict[str, Any] | None = field(default=None)  # id, kind, subject, state, ...
    host: dict[str, Any] | None = field(default=None)  # agent_id, hostname

    @classmethod
    def make(cls, *, rule: str, condition: str, event: str, severity: str, title: str,
             lines: list[str], at: str, thread: str, agency: str | None = None,
             site: str | None = None, facts: list[tuple[str, Any]] | None = None,
             incident: dict[str, Any] | None = None,
             host: dict[str, Any] | None = None) -> Message:
        """A message with every piece of text made one safe line."""
        return cls(rule, condition, event, severity, plain(title, TITLE_LIMIT),
                   tuple(plain(line, LINE_LIMIT) for line in lines[:MAX_LINES]), at, thread,
                   plain(agency) if agency is not None else None,
                   plain(site) if site is not None else None,
                   tuple((plain(k, 64), plain(v, LINE_LIMIT)) for k, v in (facts or [])
                         if v is not None)[:MAX_FACTS],
                   _safe(incident), _safe(host))

    def text(self) -> str:
        return "\n".join(self.lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Message:
        doc = json.loads(text)
        doc["lines"] = tuple(doc["lines"])
        doc["facts"] = tuple(tuple(f) for f in doc["facts"])
        return cls(**doc)


def _safe(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Text values of a detail object made safe lines; numbers and lists of text kept."""
    if value is None:
        return None
    out: dict[str, Any] = {}
    for key, v in value.items():
        if isinstance(v, str):
            out[key] = plain(v, LINE_LIMIT)
        elif isinstance(v, (list, tuple)):
            out[key] = [plain(x, LINE_LIMIT) if isinstance(x, str) else x for x in v]
        else:
            out[key] = v
    return out
