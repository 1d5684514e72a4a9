"""Any other OS: only what psutil and the Python runtime can tell; the rest is unknown."""

from __future__ import annotations

import platform
import sys
from typing import Any

__all__ = ["DEFAULT_TIMEOUT_S", "cpu_model", "default_gateway", "disks", "dns_servers", "identity",
           "os_info", "software", "timezone", "virtualization"]

DEFAULT_TIMEOUT_S = 5.0


def os_info(problems: list[str]) -> dict[str, Any]:
    family = "bsd" if "bsd" in sys.platform else "other"
    return {"family": family, "name": platform.system() or None,
            "version": platform.version() or None, "build": None,
            "kernel": platform.release() or None, "arch": platform.machine() or None}


def virtualization(problems: list[str]) -> dict[str, Any]:
    return {"kind": None, "type": None, "source": None}


def identity(problems: list[str]) -> dict[str, Any]:
    return {"vendor": None, "model": None, "serial": None, "uuid": None, "chassis": None,
            "bios": {"vendor": None, "version": None, "date": None}}


def cpu_model(problems: list[str]) -> str | None:
    return platform.processor() or None


def disks(problems: list[str]) -> list[dict[str, Any]]:
    return []


def software(problems: list[str]) -> tuple[str | None, list[dict[str, Any]] | None]:
    return None, None


def default_gateway(problems: list[str]) -> dict[str, Any] | None:
    return None


def dns_servers(problems: list[str]) -> list[str]:
    return []


def timezone(problems: list[str]) -> dict[str, str | None]:
    return {"timezone": None}
