"""`estate-hub serve --workers N`: the parent that starts N hub processes on one port, restarts
one that dies and stops them all when asked.

Each worker is `estate-hub serve` itself (the same arguments plus a hidden worker index), a
whole hub with its own single writer to the shared PostgreSQL store, listening with
SO_REUSEPORT so the kernel spreads new connections over the workers. The parent holds no
connection and no store: it only watches. It learns that a worker is up from the worker's
"ready" line on stdout (passed on to its own stdout), forwards SIGTERM and SIGINT to every
worker, and restarts a worker that dies with a delay doubling from RESTART_MIN_S to
RESTART_MAX_S (back to the minimum once a worker has run STEADY_S). A worker that fails before
its first ready line (a port taken, a store refused) stops the whole start: restarting it would
only fail again, and the service manager is the one to retry.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from estate.inventory.protocol import Exit

log = logging.getLogger("estate.hub")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
STEADY_S = 60.0
POLL_S = 0.2
READY_MARK = " ready: hub id "  # in a worker's "estate-hub: worker I of N ready: ..." line


def ready_line(index: int, count: int, hub_id: str, pid: int) -> str:
    """The line a worker prints on stdout once it listens; the parent waits for it."""
    return f"estate-hub: worker {index} of {count}{READY_MARK}{hub_id}, pid {pid}"


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[str] | None = None
    started_at: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    delay_s: float = 0.0  # the next restart's delay; 0 until the worker first dies
    restart_at: float | None = None


class Supervisor:
    """Runs `count` workers; `command(i)` is worker i's argv (i from 1)."""

    def __init__(self, command: Callable[[int], list[str]], count: int,
                 out: IO[str] | None = None) -> None:
        self.command, self.count = command, count
        self.out = out or sys.stdout
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self.stopping = threading.Event()
        self._out_lock = threading.Lock()

    def run(self, on_ready: Callable[[], None]) -> int:
        """Start the workers, call `on_ready` once all listen, and supervise them until
        SIGTERM or SIGINT; returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._asked_to_stop)
        for worker in self.workers:
            self._start(worker)
        if not self._all_ready():
            self._stop_all(signal.SIGTERM)
            return Exit.FAIL if not self.stopping.is_set() else Exit.OK
        on_ready()
        while not self.stopping.wait(POLL_S):
            for worker in self.workers:
                self._watch(worker)
        self._stop_all(None)
        return Exit.OK

    # --- starting and watching ------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        worker.ready.clear()
        worker.restart_at = None
        worker.started_at = time.monotonic()
        worker.proc = subprocess.Popen(self.command(worker.index), stdout=subprocess.PIPE,
                                       text=True, bufsize=1)
        threading.Thread(target=self._relay, args=(worker, worker.proc),
                         name=f"worker-{worker.index}-stdout", daemon=True).start()

    def _relay(self, worker: _Worker, proc: subprocess.Popen[str]) -> None:
        """Pass the worker's stdout on, line by line, and notice its ready line."""
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._out_lock:
                self.out.write(line)
                self.out.flush()
            if READY_MARK in line and proc is worker.proc:
                worker.ready.set()
        proc.stdout.close()

    def _all_ready(self) -> bool:
        """Wait for every first ready line; False if a worker exited before its own."""
        for worker in self.workers:
            assert worker.proc is not None
            while not worker.ready.wait(POLL_S):
                if self.stopping.is_set():
                    return False
                status = worker.proc.poll()
                if status is not None:
                    print(f"estate-hub: worker {worker.index} exited ({_how(status)}) before "
                          f"it was listening; stopping the others", file=sys.stderr,
                          flush=True)
                    return False
        return True

    def _watch(self, worker: _Worker) -> None:
        assert worker.proc is not None
        now = time.monotonic()
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                self._start(worker)
                log.info("worker %d restarted (pid %d)", worker.index, worker.proc.pid)
            return
        status = worker.proc.poll()
        if status is None:
            return
        lived = now - worker.started_at
        worker.delay_s = RESTART_MIN_S if lived >= STEADY_S or not worker.delay_s \
            else min(RESTART_MAX_S, worker.delay_s * 2)
        worker.restart_at = now + worker.delay_s
        log.warning("worker %d (pid %d) died after %.0f s (%s); restarting it in %g s",
                    worker.index, worker.proc.pid, lived, _how(status), worker.delay_s)

    # --- stopping -------------------------------------------------------------------------

    def _asked_to_stop(self, signum: int, _frame: object) -> None:
        first = not self.stopping.is_set()
        self.stopping.set()
        if first:
            log.info("stopping %d workers (%s)", self.count, signal.Signals(signum).name)
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                try:
                    worker.proc.send_signal(signum)
                except ProcessLookupError:
                    pass  # it ended between the poll and the signal

    def _stop_all(self, signum: int | None) -> None:
        """Wait for every worker to end (sending `signum` first, if given): each stores what
        it has queued before it exits, as a single hub does on SIGTERM."""
        if signum is not None:
            self._signal_all(signum)
        for worker in self.workers:
            if worker.proc is not None:
                worker.proc.wait()


def _how(status: int) -> str:
    """A child's wait status, as a person reads it."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
