"""One sanitiser for text that came from an agent, a hub or a file, before any terminal sees it.

Hostnames, OS names, package names, refusal reasons and manifest fields may be chosen by an
attacker. Control characters (ANSI/OSC escapes start with one: C0, DEL and the C1 range such
as U+009B CSI and U+009D OSC), bidi overrides and isolates (U+202E...), line separators and
other invisible format characters must never reach a terminal or a log as themselves: they
could move the cursor, clear the screen, draw a fake prompt or forge a log line.

- `plain`: one line for a screen, every such character replaced with U+FFFD.
- `quoted`: for logs and messages, the text in quotes with such characters escaped (\\x1b,
  \\u202e), so the reader sees exactly what was sent and a newline cannot start a new line.
- `dumps`: JSON for `--json` output, with the same characters as JSON escapes (`\\u202e`).

Stdlib only: the agent, the hub and the console all use it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

__all__ = ["MAX_CELL", "REPLACEMENT", "dumps", "escaped", "is_unsafe", "plain", "quoted"]

REPLACEMENT = "\ufffd"
MAX_CELL = 512


def is_unsafe(c: str) -> bool:
    """True for a character no terminal or log may receive as itself."""
    if c == " ":
        return False
    category = unicodedata.category(c)
    # Cc: controls (C0, DEL, C1); Cf: format (bidi overrides, zero-width); Cs/Co/Cn:
    # surrogates, private use, unassigned; Zl/Zp: line and paragraph separators.
    return category[0] == "C" or category in ("Zl", "Zp")


def plain(value: Any, limit: int = MAX_CELL) -> str:
    """A one-line string with every control and format character replaced by U+FFFD."""
    if value is None:
        return ""
    text = str(value)[:limit]
    if text.isascii() and text.isprintable():
        return text  # the common case, fast
    return "".join(REPLACEMENT if is_unsafe(c) else c for c in text)


def escaped(text: str) -> str:
    """`text` with each unsafe character written as the `\\u` escape of its code point
    (`\\u001b`, `\\u202e`) and nothing else changed: for messages that quote their parts
    themselves (a probe's key path, a problem naming a value)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if is_unsafe(c) else c for c in text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quoted(value: Any, limit: int = 200) -> str:
    """`value` in double quotes, unsafe characters and quotes escaped, cut at `limit`.

    For log lines and error messages: a newline or an escape sequence in untrusted text shows
    as `\\n` or `\\x1b`, so it can neither forge a line nor drive the reader's terminal.
    """
    text = "" if value is None else str(value)
    cut = len(text) > limit
    out = []
    for c in text[:limit]:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[c])
        elif is_unsafe(c):
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + ('..."' if cut else '"')


# json.dumps(ensure_ascii=False) escapes C0 controls but passes DEL, C1 and format characters
# through; these are escaped after the fact (they can only occur inside JSON strings).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                             "\u2060-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")


def dumps(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text that keeps non-ASCII names readable but escapes what a terminal obeys."""
    text = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys,
                      default=str)
    text = _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if text.isascii():
        return text
    # Rare characters outside the fast pattern (private use, unassigned): escape them too.
    return "".join(_escape_json_char(c) if ord(c) > 0x7e and is_unsafe(c) else c
                   for c in text)


def _escape_json_char(c: str) -> str:
    code = ord(c)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells astral characters as a UTF-16 surrogate pair
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"
