"""Text from agents, made safe to show: the one sanitiser lives in `estate.inventory.sanitise`.

Callers render the result as plain `rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

from estate.inventory.sanitise import MAX_CELL, REPLACEMENT, plain

__all__ = ["MAX_CELL", "REPLACEMENT", "plain"]
