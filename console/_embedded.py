"""The embedded default: with no hub configured, `estate` runs one on loopback.

A hub on a free loopback port with its data in the user's data folder, this machine's agent
enrolled through the real token flow, the user registered as an admin operator with a key
created for them; so one command shows this machine live. `--simulate N` adds N simulated
agents. Everything it starts is stopped when the console exits.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh

from estate.console._paths import data_dir
from estate.inventory.protocol import ENROL_USER, OPERATOR_NAME

PY = sys.executable


def default_data_dir() -> Path:
    return data_dir()


def _detached() -> dict[str, Any]:
    """Popen's arguments that put a child out of the terminal's reach, so Ctrl-C there stops
    the console, which stops its children in order: a new session on POSIX, a new process
    group on Windows (which has no sessions)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def operator_name() -> str:
    try:
        name = re.sub(r"[^a-z0-9._-]", "", getpass.getuser().lower())
    except (KeyError, OSError):
        name = ""
    return name if OPERATOR_NAME.match(name) and name != ENROL_USER else "admin"


class Embedded:
    def __init__(self, data: Path, simulate: int = 0, log=print) -> None:
        self.data, self.simulate, self.log = data, simulate, log
        self.hub_dir, self.agent_dir = data / "hub", data / "agent"
        self.key_path = data / "operator_key"
        self.user = operator_name()
        self.procs: list[subprocess.Popen[str]] = []
        self.address = ""
        self.fingerprint = ""

    def start(self) -> None:
        # These folders are the embedded default's own: keep them 0700 (an older Estate may
        # have left them 0755), since the hub and the agent refuse folders others can enter.
        # Windows has no such modes: %LOCALAPPDATA% is already its user's alone (its ACL).
        for folder in (self.data, self.hub_dir, self.agent_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.name == "posix":
                os.chmod(folder, 0o700)
        self._start_hub()
        self._ensure_operator()
        self._start_agent()
        if self.simulate:
            self._spawn("simulate", [PY, "-m", "estate.inventory.hub.cli", "simulate", "--agents",
                                     str(self.simulate), "--hub", self.address, "--interval",
                                     "60", "--data", str(self.hub_dir)])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def _spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen[str]:
        fd = os.open(self.data / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as log:
            proc = subprocess.Popen(argv, stderr=log, stdout=kw.pop("stdout", log), text=True,
                                    **_detached(), **kw)
        self.procs.append(proc)
        return proc

    def _start_hub(self) -> None:
        self.log(f"estate: starting the embedded hub (data in {self.hub_dir})")
        proc = self._spawn("hub", [PY, "-m", "estate.inventory.hub.cli", "serve", "--listen",
                                   "127.0.0.1:0", "--data", str(self.hub_dir)],
                           stdout=subprocess.PIPE)
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the embedded hub did not start; see "
                                   f"{self.data / 'hub.log'}")
            if m := re.search(r"host key (SHA256:\S+)", line):
                self.fingerprint = m.group(1)
            if m := re.search(r"listening on (127\.0\.0\.1:\d+)", line):
                self.address = m.group(1)
                return
        raise RuntimeError("the embedded hub did not start in 30 s")

    def _admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "estate.inventory.hub.cli", *args, "--data",
                               str(self.hub_dir)], capture_output=True, text=True, timeout=60)

    def _ensure_operator(self) -> None:
        if not self.key_path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"estate {self.user}")
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
            key.write_public_key(str(self.key_path) + ".pub")
        listed = self._admin("operator", "list", "--json")
        if f'"name": "{self.user}"' not in listed.stdout:
            done = self._admin("operator", "add", self.user, "--key", f"{self.key_path}.pub",
                               "--role", "admin", "--agencies", "all")
            if done.returncode != 0:
                raise RuntimeError(f"could not register operator {self.user}: {done.stderr}")

    def _start_agent(self) -> None:
        """Enrol (again: idempotent for the same key) with a fresh token, then run."""
        config = self.agent_dir / "agent.toml"
        if not config.exists():
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("interval = 60\nstart_delay = 0\nreconnect_max = 30\n")
        token = self._admin("token", "create", "--agency", "This machine", "--site", "Local")
        if token.returncode != 0:
            raise RuntimeError(f"could not create an enrolment token: {token.stderr}")
        # On stdin, not in argv: another local user could read it in `ps`.
        done = subprocess.run([PY, "-m", "estate.agent", "enrol", "--token", "-",
                               "--hub", self.address, "--config", str(config)],
                              input=token.stdout.split()[0] + "\n",
                              capture_output=True, text=True, timeout=120)
        self._admin("token", "revoke", token.stdout.split(".")[1])  # used; keep none lying about
        if done.returncode != 0:
            raise RuntimeError(f"could not enrol this machine's agent: {done.stderr.strip()}")
        self._spawn("agent", [PY, "-m", "estate.agent", "run", "--config", str(config)])
