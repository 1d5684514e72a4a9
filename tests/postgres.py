"""A throwaway PostgreSQL cluster in a temporary folder, reachable only over its Unix socket.

The real server behind the PostgreSQL store tests. Debian's `postgresql` package provides
`initdb` and `pg_ctl` (`.ci/run` installs it); without it the tests that need it skip, saying how
to install it, except on CI (the CI variable is set), where they fail: there they must run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def _newest_bin() -> Path | None:
    """The bin folder of the newest installed major version (Debian installs them side by side)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
             if os.access(p, os.X_OK) and (p.parent / "pg_ctl").exists()]
    digits = [p for p in found if p.parent.name.isdigit()]
    return max(digits, key=lambda p: int(p.parent.name), default=None)


BIN = _newest_bin()
MISSING = None if BIN else (
    "PostgreSQL's server is needed: apt-get install postgresql (.ci/run installs it)")


def _server_user() -> str:
    """PostgreSQL refuses to run as root: as root, run it as `postgres`, the user Debian's
    package creates along with the server."""
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        raise AssertionError("no postgres user to run PostgreSQL as: reinstall the "
                             "postgresql package") from None


class PostgresCluster:
    """initdb + pg_ctl in a fresh temporary folder; a context manager that removes it all.

    `url` is a libpq URL of the database `estate`; `create_database` gives a test its own.
    """

    def __init__(self, database: str = "estate") -> None:
        if BIN is None:
            raise RuntimeError(MISSING)
        self.bin = BIN
        self.as_root = os.geteuid() == 0
        self.user = _server_user() if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        # Directly under the system temp folder: pytest's own is root's 0700 tree, which the
        # server's user could not enter; a short path also keeps the socket under 107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="estate-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "server.log"
        self.database = database
        self.started = False

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url_for(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={self.user}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.as_root else []
        # cwd: the server's user may not be able to enter the caller's working folder.
        done = subprocess.run([*prefix, *argv], cwd=self.folder, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                                 f"{done.stdout}{done.stderr}\n{self.log()}")
        return done

    def start(self, timeout: float = 60) -> PostgresCluster:
        try:
            if self.as_root:
                shutil.chown(self.folder, self.user, self.user)
            self._make_data()
            self._run(str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-l",
                      str(self.log_path), "-w", "-t", str(int(timeout)), timeout=timeout + 30)
            self.started = True
            self._ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_data(self) -> None:
        # trust for local connections: the socket sits in a 0700 folder nobody else enters.
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                  "--no-locale", "--encoding=UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\n"
                       f"unix_socket_directories = '{self.socket_dir}'\n"
                       # A throwaway cluster outlives no crash of this machine.
                       "fsync = off\n")

    def _ready(self, timeout: float) -> None:
        self.create_database(self.database)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._run(str(self.bin / "createdb"), "-h", str(self.socket_dir), "-U", self.user, name,
                  timeout=60)
        return self.url_for(name)

    def restart(self, timeout: float = 60) -> None:
        """A fast restart, as maintenance or a failover does: every connection is cut."""
        self._run(str(self.bin / "pg_ctl"), "restart", "-D", str(self.data), "-m", "fast",
                  "-l", str(self.log_path), "-w", "-t", str(int(timeout)), timeout=timeout + 30)

    def server_pid(self) -> int:
        """The postmaster's process id, from the first line of its pid file."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stops the server (immediate: its data is thrown away) and removes the folder."""
        try:
            if self.started:
                self.started = False
                pid = self.server_pid()
                try:
                    self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m",
                              "immediate", "-w", "-t", "30", timeout=60)
                except (AssertionError, subprocess.TimeoutExpired):
                    # Never leave a server behind on a removed folder.
                    os.kill(pid, signal.SIGKILL)
                    raise
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class PostgresStandby(PostgresCluster):
    """A streaming hot standby of a running `PostgresCluster`, in a temporary folder of its
    own with its own socket; a context manager that removes it all.

    Made by `pg_basebackup -R -X stream` over the primary's socket (initdb's pg_hba trusts
    local replication; `wal_level = replica` and `max_wal_senders = 10` are the defaults).
    `url` names the primary's database `estate` here; `url_for(db)` any other.
    """

    def __init__(self, primary: PostgresCluster) -> None:
        super().__init__(primary.database)
        self.primary = primary

    def _make_data(self) -> None:
        # --checkpoint=fast: a spread checkpoint would keep the copy waiting for minutes.
        self._run(str(self.bin / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream",
                  "--checkpoint=fast", "--no-sync", "-h", str(self.primary.socket_dir),
                  "-U", self.primary.user)
        with open(self.data / "postgresql.conf", "a") as conf:
            # Later lines win over the primary's copied ones. Feedback: a long read here is
            # not cancelled by the replay of vacuum on the primary.
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n"
                       "hot_standby = on\n"
                       "hot_standby_feedback = on\n")

    def _ready(self, timeout: float) -> None:
        self.wait_caught_up(timeout)

    def __enter__(self) -> PostgresStandby:
        self.start()
        return self

    def _sql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # our own literals

    def pause_replay(self) -> None:
        """Stop applying the primary's changes (they still arrive): reads here show the
        moment of the pause. No change committed on the primary after this call shows."""
        self._sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self._sql("SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 60) -> None:
        """Wait (bounded) until this standby has replayed everything the primary had written
        when called: what was committed there before now reads the same here."""
        import psycopg

        with psycopg.connect(self.primary.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            while True:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                    (target,)).fetchone()
                if done is not None and done[0]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay up to {target} within "
                                         f"{timeout:g} s:\n{self.log()}")
                time.sleep(0.05)


def skip_or_fail_without_postgres() -> None:
    """Skips where PostgreSQL is not installed; on CI (the CI variable is set) fails instead."""
    import pytest

    if MISSING is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{MISSING}; on CI the PostgreSQL tests must run")
    pytest.skip(MISSING)
