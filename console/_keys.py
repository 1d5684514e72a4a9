"""Every key binding of the console, described once: the bindings, the help screen and the
keymap file all come from this table.

A keymap file (keymap.toml in the console's config folder, `_paths`, or `--keymap FILE`)
rebinds by id:

    [keys]
    "estate.filter" = "f"
    "table.down" = "down,n"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding, BindingType

from estate.console._paths import config_dir
from estate.console._settings import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Key:
    id: str
    keys: str
    action: str
    description: str
    label: str = ""  # the footer's word, for bindings it shows
    show: bool = False


ESTATE = (
    Key("estate.filter", "slash", "filter", "filter as you type", "Filter", True),
    Key("estate.clear", "escape", "clear_filter", "clear the filter"),
    Key("estate.sort", "s", "sort", "sort by the next column", "Sort", True),
    Key("estate.reverse", "r", "reverse", "reverse the sort", "Reverse", True),
    Key("estate.shell", "x", "shell", "open a shell on the host (estate ssh)", "Shell", True),
    Key("estate.export", "ctrl+s", "export", "export this view: CSV, XLSX or JSON, signed "
                                             "(also :export)"),
    Key("estate.incidents", "i", "incidents", "incidents: open first, then recent"),
    Key("estate.overview", "o", "overview", "estate overview per agency and site"),
    Key("estate.help", "question_mark", "help", "this help", "Help", True),
    Key("estate.palette", "colon", "app.command_palette", "command palette (also ctrl+p)"),
    Key("estate.quit", "q", "app.quit", "quit", "Quit", True),
)
TABLE = (
    Key("table.up", "up,k", "cursor(-1)", "move up"),
    Key("table.down", "down,j", "cursor(1)", "move down"),
    Key("table.page_up", "pageup", "page(-1)", "page up"),
    Key("table.page_down", "pagedown", "page(1)", "page down"),
    Key("table.top", "home,g", "jump(0)", "first host"),
    Key("table.bottom", "end,G", "jump(-1)", "last host"),
    Key("table.open", "enter", "open", "open the host", "Open", True),
)
HOST = (
    Key("host.back", "escape,q", "back", "back to the list", "Back", True),
    Key("host.prev_tab", "left", "tab(-1)", "previous tab"),
    Key("host.next_tab", "right", "tab(1)", "next tab"),
    Key("host.shell", "x", "shell", "open a shell on this host (estate ssh)", "Shell", True),
)
# The incidents list, an incident, and the overview.
BACK = Key("screen.back", "escape,q", "back", "incidents, overview: back", "Back", True)
INCIDENTS = (
    BACK,
    Key("incidents.ack", "a", "ack", "incidents: acknowledge (staff, admin)", "Ack", True),
    Key("incidents.silence", "S", "silence", "incidents: silence for a while (staff, admin)",
        "Silence", True),
)
ALL = {k.id: k for k in (*ESTATE, *TABLE, *HOST, *INCIDENTS)}


def bindings(keys: tuple[Key, ...]) -> list[BindingType]:
    return [Binding(k.keys, k.action, k.label or k.description, show=k.show, id=k.id)
            for k in keys]


def default_keymap_path() -> Path:
    return config_dir() / "keymap.toml"


def load_keymap(path: Path) -> dict[str, str]:
    """The [keys] table of a keymap file, checked.

    Raises:
        ConfigError: unreadable, not TOML, an unknown binding id or a key that is not text.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    extra = set(doc) - {"keys"}
    if extra:
        raise ConfigError(f"{path}: {sorted(extra)[0]}: unknown table (expected [keys])")
    keys = doc.get("keys", {})
    if not isinstance(keys, dict):
        raise ConfigError(f"{path}: keys: expected a table of binding id = \"keys\"")
    for binding_id, value in keys.items():
        if binding_id not in ALL:
            raise ConfigError(f"{path}: keys.{binding_id}: unknown binding (known: "
                             f"{', '.join(sorted(ALL))})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: keys.{binding_id}: expected keys like \"f\" or "
                             f"\"down,n\"")
    return dict(keys)


def help_lines(keymap: dict[str, str]) -> list[tuple[str, str]]:
    """(keys, what) for the help screen, with the keymap applied."""
    return [(keymap.get(k.id, k.keys).replace("question_mark", "?").replace("slash", "/")
             .replace("colon", ":"), k.description) for k in ALL.values()]
