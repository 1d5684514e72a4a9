"""The front door's known sources, kept in the data folder across a hub restart.

A source that logged in within a day is exempt from early drop and penalties
(`inventory/hub/_door.py`). Held in memory only, that knowledge would be lost exactly when it
matters: right after a restart every agent reconnects at once, connections time out while the
hub catches up, and a site behind one NAT address could be penalised for it. So the hub
writes the known sources (address and age, no more) to `known_sources.json` every minute
when someone logged in, and at stop, and reads them back at start. A missing or unreadable
file means no known sources, never a failed start. Each worker of `serve --workers` keeps
its own file (`known_sources.wI.json`): they would overwrite each other's in one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from estate.inventory.hub._door import MAX_KNOWN_SOURCES, Door
from estate.inventory.private_files import write_private

log = logging.getLogger("estate.hub")

FILE_NAME = "known_sources.json"
SAVE_INTERVAL_S = 60.0
MAX_FILE_BYTES = 64 * MAX_KNOWN_SOURCES  # an address and an age are well under 64 bytes


def file_name(worker: int = 0) -> str:
    """The file of the hub, or of worker `worker` (from 1) of `serve --workers`."""
    return FILE_NAME.replace(".json", f".w{worker}.json") if worker else FILE_NAME


def load(data_dir: Path, door: Door, worker: int = 0) -> int:
    """Give `door` the sources saved by the last run; returns how many."""
    path = data_dir / file_name(worker)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        ages = json.loads(path.read_bytes())
        if not isinstance(ages, dict) or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, (int, float))
                for k, v in ages.items()):
            raise ValueError("expected an object of address: seconds")
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return 0
    door.remember({k: float(v) for k, v in ages.items()})
    return len(door.known_ages())


def save(data_dir: Path, door: Door, worker: int = 0) -> None:
    _write(data_dir / file_name(worker), door.known_ages())


def _write(path: Path, ages: dict[str, float]) -> None:
    write_private(path, json.dumps(ages, separators=(",", ":")).encode())


async def keep(data_dir: Path, door: Door, worker: int = 0) -> None:
    """Save every SAVE_INTERVAL_S when someone logged in since; the hub saves at stop too."""
    saved_at = door.logins
    while True:
        await asyncio.sleep(SAVE_INTERVAL_S)
        if door.logins != saved_at:
            saved_at = door.logins
            try:
                # The ages are taken here, on the event loop that changes them; only the write
                # goes to a thread.
                await asyncio.to_thread(_write, data_dir / file_name(worker),
                                        door.known_ages())
            except OSError as exc:
                log.warning("could not save the known sources: %s", exc)
