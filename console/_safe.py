"""Text from agents, made safe to show: never markup, never terminal control.

Hostnames, OS names and package names come from endpoints, which an attacker may control.
Control characters (ANSI/OSC escapes start with one), bidi overrides and isolates, and other
invisible format characters are replaced with U+FFFD so they cannot move, colour or link
anything; callers render the result as plain `rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

import unicodedata
from typing import Any

REPLACEMENT = "\ufffd"
MAX_CELL = 512


def plain(value: Any, limit: int = MAX_CELL) -> str:
    """A one-line string with every control and format character neutralised."""
    if value is None:
        return ""
    text = str(value)[:limit]
    if text.isascii() and text.isprintable():
        return text  # the common case, fast
    return "".join(c if _visible(c) else REPLACEMENT for c in text)


def _visible(c: str) -> bool:
    if c == " ":
        return True
    category = unicodedata.category(c)
    # Cc: controls (ESC, CR, NUL...); Cf: format (bidi overrides, zero-width); Cs/Co/Cn:
    # surrogates, private use, unassigned; Zl/Zp: line and paragraph separators.
    return category[0] != "C" and category not in ("Zl", "Zp")
