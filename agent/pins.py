"""The hub keys an agent pins, and how a rotation of the hub's key moves them.

The agent pins the key its enrolment token named (`hub_key`). While the hub's administrator
rotates it, the hub names its next key in each report ack (`hub_key_next`); that ack comes
over a connection whose key the agent already pinned, so only the pinned hub can add a key.
The agent keeps the next key beside the current one (both accepted) and, once it has
connected to a hub presenting it, pins it alone. Both live in `agent.toml`, rewritten here.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from estate.agent.config import AgentConfig, is_fingerprint
from estate.inventory.private_files import write_private
from estate.inventory.sanitise import quoted

log = logging.getLogger("estate.agent")

_PIN_LINE = re.compile(r"^\s*(hub_key|hub_key_next)\s*=")


def after_connect(cfg: AgentConfig, presented: str | None) -> AgentConfig | None:
    """The pins once connected to a hub presenting `presented`: the next key alone when it
    is that one (the hub switched), else None (no change)."""
    if cfg.hub_key_next and presented == cfg.hub_key_next:
        log.info("the hub presents its next host key %s: pinned alone now, %s dropped",
                 presented, cfg.hub_key)
        return cfg._replace(hub_key=presented, hub_key_next=None)
    return None


def after_ack(cfg: AgentConfig, ack: dict[str, Any]) -> AgentConfig | None:
    """The pins once the pinned hub acked a report: its announced next key beside the
    current one, or None (nothing announced, already pinned, or not a fingerprint).

    Nothing announced leaves a next key pinned: hubs learn of the next key one by one, and an
    agent told by one must still accept the key after a report acked by another.
    """
    announced = ack.get("hub_key_next")
    if announced is None or announced in (cfg.hub_key, cfg.hub_key_next):
        return None
    if not is_fingerprint(announced):
        log.warning("the hub announced a next host key that is not a fingerprint (%s): "
                    "ignored", quoted(announced, 100))
        return None
    log.info("the hub announced its next host key %s: pinned beside %s until the hub "
             "presents it", announced, cfg.hub_key)
    return cfg._replace(hub_key_next=announced)


def save(cfg: AgentConfig) -> None:
    """Write `cfg`'s pins into its config file, keeping every other line as it is.

    Raises:
        OSError: the file cannot be read or replaced.
    """
    assert cfg.path is not None and cfg.hub_key is not None
    write_private(cfg.path, pinned_text(cfg.path.read_text(encoding="utf-8"), cfg.hub_key,
                                        cfg.hub_key_next).encode("utf-8"))


def pinned_text(text: str, hub_key: str, hub_key_next: str | None) -> str:
    """`text` (an agent.toml) with its `hub_key` line replaced by these pins, at the same
    place (top-level keys must come before the first table)."""
    pins = f"hub_key = {json.dumps(hub_key)}\n"
    if hub_key_next:
        pins += f"hub_key_next = {json.dumps(hub_key_next)}\n"
    out, placed = [], False
    for line in text.splitlines(True):
        if _PIN_LINE.match(line):
            if not placed:
                out.append(pins)
                placed = True
            continue
        out.append(line)
    return "".join(out) if placed else pins + "".join(out)


def saved_or_logged(cfg: AgentConfig) -> AgentConfig:
    """`save(cfg)`; when the file cannot be written, say so: the pins hold in memory only."""
    try:
        save(cfg)
    except OSError as exc:
        log.error("cannot write the hub key pins to %s (%s): they hold until the agent "
                  "stops; fix the file's permissions", cfg.path, exc.strerror or exc)
    return cfg
