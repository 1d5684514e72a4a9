"""The host list: a virtual table that renders only the visible rows.

Textual's stock DataTable measures every cell of every row (seconds for 10,000 rows); this
widget keeps the rows in `HostModel` and draws a line only when Textual asks for it.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from estate.console._keys import TABLE, bindings
from estate.console._model import KEY_INDEX, HostModel, compliance_counts, compliance_share
from estate.console._safe import plain
from estate.inventory.hostlist import HOST_COLUMNS

WIDTHS = {"agent_id": 15, "hostname": 22, "agency": 17, "site": 18, "status": 8, "net": 22,
          "os": 24,
          "model": 20, "serial": 14, "cpu": 26, "ram_bytes": 7, "disk_percent": 6, "ip": 15,
          "last_seen": 19, "remote": 7, "compliance": 21}
# Connectivity beside status: together they say whether the host is reachable and how well.
# Remote access next, where staff look before pressing the ssh key; compliance next, so a
# failing control shows without scrolling sideways.
_SHOWN_ORDER = ("hostname", "agency", "site", "status", "net", "remote", "compliance", "os",
                "model", "serial", "cpu", "ram_bytes", "disk_percent", "ip", "last_seen")
SHOWN = [next(c for c in HOST_COLUMNS if c.key == key) for key in _SHOWN_ORDER]
# Numbers line up on the right; compliance mixes a share with a control's name, so it reads
# from the left.
RIGHT = {c.key for c in SHOWN if c.numeric and c.key != "compliance"}
STATUS_STYLE = {"online": Style(color="green"), "offline": Style(color="red", bold=True),
                "stale": Style(color="yellow"), "revoked": Style(color="magenta")}
COMPLIANCE_STYLE = {"fail": Style(color="red", bold=True), "unknown": Style(color="yellow"),
                    "pass": Style(color="green")}
NET_STYLE = {"ok": Style(color="green"), "degraded": Style(color="yellow"),
             "down": Style(color="red", bold=True)}
HEADER = Style(bold=True, reverse=True)
CURSOR = Style(reverse=True)


def cell_text(key: str, value: Any) -> str:
    if key == "compliance":
        return compliance_cell(value)[0]
    if key == "net":
        return net_cell(value)[0]
    if value is None:
        return "-"
    if key == "ram_bytes":
        return f"{value / 2**30:.0f} GB"
    if key == "disk_percent":
        return f"{value:.0f}%"
    if key == "last_seen":
        return plain(str(value)[:19].replace("T", " "))
    return plain(value)  # agent text: never markup, never terminal control


def compliance_cell(summary: Any) -> tuple[str, str | None]:
    """The compliance column's text and its kind (pass, fail, unknown; None: not evaluated).

    The worst failing control when any fails (and how many more fail), else the passing share;
    empty when the host is not evaluated.
    """
    share, counts = compliance_share(summary), compliance_counts(summary)
    if share is None or counts is None:  # not evaluated, or no control applies
        return "", None
    _, failed, unknown = counts
    worst = summary[4] if len(summary) > 4 else None
    if failed and worst:
        more = f" +{failed - 1}" if failed > 1 else ""
        # Control ids come from the hub's policy, not the agent; plain() all the same.
        return plain(worst, 64) + more, "fail"
    # Rounded down: 99.6% with an unknown control must not read as 100%.
    return f"{int(share)}%", ("unknown" if unknown else "pass")


def net_cell(net: Any) -> tuple[str, str | None]:
    """The net column's text and its state: "ok 23ms", "degraded gateway 812ms", "down link";
    "-" and None when unknown. The state is in words, so the colour only repeats it."""
    if not isinstance(net, (list, tuple)) or len(net) < 3 or net[0] not in NET_STYLE:
        return "-", None
    state, rtt, worst = net[0], net[1], net[2]
    parts = [state]
    if state != "ok" and isinstance(worst, str):
        parts.append(plain(worst, 64))  # a probe's name: the agent's text
    if isinstance(rtt, (int, float)) and not isinstance(rtt, bool):
        parts.append(f"{rtt:.0f}ms")
    return " ".join(parts), state


class HostTable(ScrollView, can_focus=True):
    """Rows of `model.view`; the cursor follows its host across updates."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(TABLE)

    class Opened(Message):
        def __init__(self, agent_id: str) -> None:
            super().__init__()
            self.agent_id = agent_id

    def __init__(self, model: HostModel, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model
        self.cursor = 0
        self.cursor_id: str | None = None
        self.line_width = sum(WIDTHS[c.key] + 1 for c in SHOWN)

    # --- data ---------------------------------------------------------------------------

    def reload(self) -> None:
        """After the model's view changed: keep the cursor on the same host if it is there."""
        view = self.model.view
        if self.cursor_id is not None:
            # Found at C speed (a Python loop over 100,000 rows on every page of a load and
            # every live repaint adds up): the view holds the model's own row objects, and
            # their agent ids when it was made before the last live update.
            row = self.model.rows.get(self.cursor_id)
            try:
                if row is None:
                    raise ValueError
                self.cursor = view.index(row)
            except ValueError:
                try:
                    self.cursor = list(map(itemgetter(0), view)).index(self.cursor_id)
                except ValueError:  # filtered out: the cursor stays where it was
                    self.cursor = min(self.cursor, max(0, len(view) - 1))
        self.cursor = min(self.cursor, max(0, len(view) - 1))
        self.cursor_id = view[self.cursor][0] if view else None
        self.virtual_size = Size(self.line_width, len(view) + 1)
        self.refresh()

    def selected(self) -> str | None:
        return self.cursor_id

    # --- drawing ------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            strip = self._header()
        else:
            index = scroll_y + y - 1
            if index >= len(self.model.view):
                return Strip.blank(width)
            strip = self._row(self.model.view[index], index == self.cursor)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width)

    def _header(self) -> Strip:
        arrow = " v" if self.model.reverse else " ^"
        segments = []
        for c in SHOWN:
            title = c.title + (arrow if c.key == self.model.sort_key else "")
            segments.append(Segment(_fit(title, WIDTHS[c.key], c.key in RIGHT) + " ", HEADER))
        return Strip(segments)

    def _row(self, row: list[Any], selected: bool) -> Strip:
        segments = []
        for c in SHOWN:
            value = row[KEY_INDEX[c.key]]
            if c.key == "compliance":
                shown, kind = compliance_cell(value)
                text = _fit(shown, WIDTHS[c.key])
                style = COMPLIANCE_STYLE.get(kind) if kind else None
            elif c.key == "net":
                shown, state = net_cell(value)
                text = _fit(shown, WIDTHS[c.key])
                style = NET_STYLE.get(state) if state else None
            else:
                text = _fit(cell_text(c.key, value), WIDTHS[c.key], c.key in RIGHT)
                style = STATUS_STYLE.get(value) if c.key == "status" else None
            if selected:
                style = CURSOR + style if style else CURSOR
            segments.append(Segment(text + " ", style))
        return Strip(segments)

    # --- keys ---------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self._move(len(self.model.view) - 1 if where < 0 else 0)

    def action_open(self) -> None:
        if self.cursor_id:
            self.post_message(self.Opened(self.cursor_id))

    def _move(self, index: int) -> None:
        view = self.model.view
        if not view:
            return
        self.cursor = max(0, min(len(view) - 1, index))
        self.cursor_id = view[self.cursor][0]
        # Keep the cursor visible: the header takes the first line.
        top = self.scroll_offset.y
        visible = max(1, self.size.height - 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)
        self.refresh()


def _fit(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        return text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)
