"""OpenSSH's real sshd on a loopback port, with its own host key, config and authorized key.

The endpoint of remote-access tests and benchmarks. Debian's `openssh-server` provides it
(`.ci/run` installs it); without it the tests that need it skip, saying how to install it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                     if os.access(p, os.X_OK)), None)
SSH = shutil.which("ssh")
MISSING = None if SSHD and SSH and shutil.which("ssh-keygen") else (
    "OpenSSH's sshd and ssh are needed: apt-get install openssh-server openssh-client "
    "(.ci/run installs them)")


def keygen(path: Path) -> str:
    """A new ed25519 key pair at `path`; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, capture_output=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """sshd -D on 127.0.0.1:PORT; `user_key` may log in as the current user."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.user = getpass.getuser()
        self.host_key_pub = keygen(folder / "host_ed25519")
        self.user_key = folder / "user_ed25519"
        (folder / "authorized_keys").write_text(keygen(self.user_key) + "\n")
        self.port = free_port()
        self.log_path = folder / "sshd.log"
        self.config = folder / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {folder / 'host_ed25519'}\nPidFile {folder / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel VERBOSE\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> Sshd:
        assert SSHD is not None
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd did not listen in time:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def known_hosts(self, path: Path, *names: str) -> Path:
        """A known_hosts file that trusts this sshd's key under `names`."""
        path.write_text("".join(f"{n} {self.host_key_pub}\n" for n in names))
        return path

    def client_options(self, known_hosts: Path) -> list[str]:
        """ssh options for a non-interactive login with the test key and a pinned host key."""
        return ["-F", "/dev/null", "-i", str(self.user_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"]

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server process the test started, SIGKILL it if it lingers past 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
