"""Benchmark: remote access through the hub versus a direct ssh to the same sshd.

Starts OpenSSH's sshd on a loopback port, a hub, and an agent service offering that sshd; then,
in the same run:
- time to the first shell prompt (a pty, until the prompt appears): direct `ssh` versus
  `estate ssh HOST` (ssh with `ssh -W` to the hub as ProxyCommand once the hub's key is kept,
  through hub and agent) and as a console's very first session (`estate tunnel`, the Python
  relay), in rounds of the three back to back (the order rotating), with each side's median
  and the median and spread of the ratios within a round (on a shared machine the times swing
  by 2x from minute to minute; a ratio within a round compares runs seconds apart);
- a 100 MB copy (`cat > /dev/null` on the endpoint, fed from here): direct versus through,
  alternated (the ratio per pair, as for the prompt), with each process's CPU per MB copied:
  the operator's side (`ssh`, and through the hub the `estate ssh` start and the `ssh -W`
  relay: every process this benchmark waited for), the hub, the agent, and sshd (with the
  session processes it waited for).
Prints each median and the ratio. Needs sshd (apt-get install openssh-server).

Usage: python bench/remote_access.py [--runs 15] [--megabytes 100] [--copies 3] [--no-prompt]
"""

from __future__ import annotations

import argparse
import os
import platform
import pty
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if sys.path[1:2] == [str(Path(__file__).resolve().parent)]:
    del sys.path[1]  # bench/ itself must not shadow packages

from tests.harness import PY, Agent, AgentService, HubProcess, wait_for
from tests.sshd import MISSING, Sshd, keygen

PROMPT_TIMEOUT_S = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15,
                        help="first-prompt rounds (each: direct, through, first session)")
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--copies", type=int, default=3, help="copies each way (median)")
    parser.add_argument("--no-prompt", action="store_true",
                        help="only the copy (e.g. while profiling the relay)")
    args = parser.parse_args()
    if MISSING:
        print(f"remote_access: {MISSING}", file=sys.stderr)
        return 1
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="estate-bench-remote-") as tmp:
        base = Path(tmp)
        # The operator's console folder (known_hubs) lives in the benchmark's own folder.
        os.environ["ESTATE_CONSOLE_CONFIG"] = str(base / "console" / "console.toml")
        sshd = Sshd(base / "sshd").start()
        hub = HubProcess(base / "hub").start()
        agent = Agent(hub, base / "agent")
        service = AgentService(agent, f'remote_access = true\nremote_access_target = '
                                      f'"127.0.0.1:{sshd.port}"\n')
        # Report at the normal pace: the benchmark is about sessions, not reports.
        agent.config.write_text(agent.config.read_text().replace("interval = 1\n",
                                                                 "interval = 300\n"))
        hub.admin("agent", "allow-remote", agent.agent_id)
        service.start()
        try:
            keygen(base / "op")
            hub.admin("operator", "add", "op", "--key", str(base / "op.pub"), "--role", "staff",
                      "--agencies", "all")
            wait_for(lambda: "offers remote access" in hub.log(), 60, what="the agent's offer")
            # The operator's session needs the host's row, which its first report writes.
            wait_for(lambda: hub.admin_json("hosts"), 60, what="the agent's first report")
            known = sshd.known_hosts(base / "known_hosts", agent.agent_id, "127.0.0.1",
                                     f"[127.0.0.1]:{sshd.port}")
            options = sshd.client_options(known)
            direct = ["ssh", *options, "-p", str(sshd.port), f"{sshd.user}@127.0.0.1"]
            through = [PY, "-m", "estate.console.cli", "ssh", "--hub", f"op@{hub.address}", "--key",
                       str(base / "op"), "--hub-key", hub.fingerprint,
                       f"{sshd.user}@{agent.agent_id}", "--", *options]
            prompt(direct)  # warm caches (and the agent's first session) before timing
            prompt(through)
            known_hubs = base / "console" / "known_hubs"

            def python_relay() -> float:  # as the first session ever: no hub key kept yet
                known_hubs.unlink(missing_ok=True)
                return prompt(through)

            if not args.no_prompt:
                report_prompts(paired_prompts(direct, through, python_relay, args.runs))
            size = args.megabytes * 2**20
            assert hub.proc is not None and service.proc is not None and sshd.proc is not None
            pids = {"hub": hub.proc.pid, "agent": service.proc.pid, "sshd": sshd.proc.pid}
            dc, tc = [], []
            for n in range(args.copies):  # alternated, as the prompts are
                for command, into in ((direct, dc), (through, tc))[::1 if n % 2 else -1]:
                    into.append(copy(command, size, pids))
            dt = statistics.median(c.seconds for c in dc)
            tt = statistics.median(c.seconds for c in tc)
            dr, tr = size / dt / 2**20, size / tt / 2**20
            pairs = [d.seconds / t.seconds for d, t in zip(dc, tc, strict=True)]
            print(f"{args.megabytes} MB copy: direct {dr:.0f} MB/s, through the hub "
                  f"{tr:.0f} MB/s (medians of {args.copies}), ratio {tr / dr:.2f}x; ratio per "
                  f"pair: median {statistics.median(pairs):.2f}x (target >= 0.5x), "
                  f"{', '.join(f'{r:.2f}x' for r in pairs)}")
            print("  CPU ms per MB copied (median), direct / through the hub:")
            for name in ("operator", "hub", "agent", "sshd"):
                dm_, tm_ = (statistics.median(c.cpu[name] for c in cs) * 1000 / args.megabytes
                            for cs in (dc, tc))
                print(f"    {name:9} {dm_:6.2f} / {tm_:6.2f}")
            sessions = hub.admin_json("sessions", "--limit", "1")
            print(f"last session recorded: {sessions[0]['bytes_to_host']} bytes to the host, "
                  f"ended: {sessions[0]['end_reason']}")
        finally:
            service.stop()
            hub.kill()
            sshd.stop()
    return 0


def paired_prompts(direct: list[str], through: list[str], python_relay: Callable[[], float],
                   rounds: int) -> list[tuple[float, float, float]]:
    """`rounds` rounds of (direct, through the hub, a console's first session), timed back to
    back, in an order that rotates from round to round so no side always runs first.

    On a shared machine the time to a prompt swings by 2x from minute to minute; a ratio
    within a round compares runs a second apart, under the same load.
    """
    takes: list[Callable[[], float]] = [lambda: prompt(direct), lambda: prompt(through),
                                        python_relay]
    rows = []
    for n in range(rounds):
        order = [(n + i) % 3 for i in range(3)]
        seconds = [0.0, 0.0, 0.0]
        for i in order:
            seconds[i] = takes[i]()
        rows.append((seconds[0], seconds[1], seconds[2]))
    return rows


def report_prompts(rows: list[tuple[float, float, float]]) -> None:
    """Each side's median, and the median and spread of the per-round ratios."""
    def spread(values: list[float]) -> str:
        q = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
             else values * 3)
        return f"quartiles {q[0]:.2f}-{q[2]:.2f}x, range {min(values):.2f}-{max(values):.2f}x"

    d = [r[0] for r in rows]
    for name, column, note in (("through the hub", 1, "target <= 1.5x"),
                               ("a console's very first session (Python relay)", 2, "")):
        side = [r[column] for r in rows]
        ratios = [r[column] / r[0] for r in rows]
        print(f"first prompt, {name}: {statistics.median(side) * 1000:.0f} ms against direct "
              f"{statistics.median(d) * 1000:.0f} ms (medians); ratio per round: median "
              f"{statistics.median(ratios):.2f}x{f' ({note})' if note else ''}, "
              f"{spread(ratios)}; {len(rows)} rounds")


def prompt(command: list[str]) -> float:
    """Seconds from starting `command -tt` until the remote shell prints its prompt."""
    master, slave = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "-tt"], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "TERM": "dumb"})
    os.close(slave)
    seen = b""
    try:
        deadline = started + PROMPT_TIMEOUT_S
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
                if seen.rstrip().endswith((b"#", b"$")):
                    return time.perf_counter() - started
        raise RuntimeError(f"no prompt within {PROMPT_TIMEOUT_S:g} s: {seen[-300:]!r}")
    finally:
        os.write(master, b"exit\n")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


class Copied:
    """One copy: its wall time, and the CPU seconds each process spent meanwhile."""

    def __init__(self, seconds: float, cpu: dict[str, float]) -> None:
        self.seconds, self.cpu = seconds, cpu


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, all its threads and the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def copy(command: list[str], size: int, pids: dict[str, int]) -> Copied:
    """Send `size` bytes to `cat > /dev/null` on the endpoint."""
    block = os.urandom(1 << 20)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before["operator"] = children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "cat > /dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    sent = 0
    while sent < size:
        proc.stdin.write(block)
        sent += len(block)
    proc.stdin.close()
    if proc.wait(timeout=600) != 0:
        raise RuntimeError(f"copy failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    seconds = time.perf_counter() - started
    if proc.stderr:
        proc.stderr.close()
    # The session's sshd process is waited for by sshd shortly after the copy ends.
    time.sleep(0.3)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["operator"] = children_cpu() - before["operator"]
    return Copied(seconds, cpu)


if __name__ == "__main__":
    sys.exit(main())
