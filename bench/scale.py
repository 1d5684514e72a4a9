"""Benchmark: many hub workers on one PostgreSQL holding a whole estate of agents, a worker
killed under them, and what each agent, report and connection costs (docs/scale.md).

A throwaway PostgreSQL cluster (tests/postgres.py, fsync on), `estate-hub serve --workers W`
on it, and --agents simulated agents (inventory/simulate.py, asyncssh) enrolled through the
store, in generator processes each under the open-files limit, each binding its connections to
its own loopback source addresses (127.0.1.x and up) so no address runs out of ephemeral ports.
Optionally --real-agents real `estate-agent run` processes (paramiko) join them. Phases:

1. idle: every simulated agent logs in and holds its connection; the workers' RSS per
   connection and their idle CPU per 10,000 connections (their CPU with none subtracted);
2. saturation: --reporters of them send reports back to back (each the next on its ack) for
   --saturation seconds: hub CPU ms per report, reports/s, PostgreSQL commits/s, its CPU and
   WAL per report;
3. a worker killed (SIGKILL) while the reporters report every --kill-interval seconds: the
   time until every agent is connected again (the parent restarts the worker after 1 s, so its
   agents land on the others and on it), and every acked report compared with the store:
   lost (acked, not stored) and doubled (stored twice), target none.

Usage: python bench/scale.py [--agents 2000] [--workers W] [--reporters 200]
       [--saturation 30] [--real-agents 0] [--agent-keepalive SECONDS] [--no-kill]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ and tests/postgres.py, as bench/hub_ingest.py does

from bench._seed import enrol_identities  # noqa: E402
from bench.hub_connections import raise_open_files  # noqa: E402
from bench.hub_ingest import PostgresWatch, durable_cluster  # noqa: E402
from estate.inventory import simulate  # noqa: E402
from estate.inventory.hub._keys import load_or_create_host_key  # noqa: E402
from estate.inventory.hub._settings import HubSettings  # noqa: E402
from estate.inventory.hub._workers import READY_MARK  # noqa: E402
from estate.inventory.store import open_store  # noqa: E402

HUB = [sys.executable, "-m", "estate.inventory.hub.cli"]
AGENT = [sys.executable, "-m", "estate.agent"]
PER_SOURCE = 10_000  # connections per loopback source address: well inside 28,000 ports
SPARE_FDS = 1_000  # a generator's or worker's files besides its connections
STATUS_S = 1.0  # a generator's status line, this often


# --- the generator: one process of simulated agents ----------------------------------------


async def generator(args: argparse.Namespace) -> None:
    """Run the identities in --generator (the first --reporters of them report when told):
    prints a status line every second, obeys `report`, `interval S` and `stop` on stdin, and
    prints each reporter's acked sequence numbers at the end."""
    idents = simulate.load_identities(Path(args.generator))
    key = asyncssh.import_public_key(args.hub_key)
    sources = tuple(args.sources.split(","))

    def simulator(interval_s: float) -> simulate.Simulator:
        return simulate.Simulator(args.hub, key, interval_s=interval_s, reconnect_max_s=30.0,
                                  start_spread_s=0.0, keepalive_s=args.agent_keepalive,
                                  sources=sources, max_connecting=args.connecting)

    idle, reporters = simulator(math.inf), simulator(0.0)
    reporters.stats.acked_seqs = {}
    # A reporter is connected only while it reports; an idle agent all the time.
    tasks = [asyncio.create_task(idle.run_agent(i, first_report_s=math.inf))
             for i in idents[args.reporters:]]
    for task in tasks:
        task.add_done_callback(_said)
    commands: asyncio.Queue[str] = asyncio.Queue()

    async def read_commands() -> None:
        while line := await asyncio.to_thread(sys.stdin.readline):
            await commands.put(line.strip())
        await commands.put("stop")  # the parent went away

    reader = asyncio.create_task(read_commands())
    while True:
        try:
            command = await asyncio.wait_for(commands.get(), STATUS_S)
        except asyncio.TimeoutError:
            command = ""
        if command == "report":
            for i in idents[:args.reporters]:
                tasks.append(asyncio.create_task(reporters.run_agent(i)))
                tasks[-1].add_done_callback(_said)
        elif command.startswith("interval "):
            reporters.interval_s = float(command.split()[1])
        elif command == "stop":
            break
        s, r = idle.stats, reporters.stats
        print(json.dumps({"idle": s.connected, "reporting": r.connected, "acked": r.acked,
                          "sent": r.sent, "errors": r.errors,
                          "reconnects": s.reconnects + r.reconnects}), flush=True)
    idle.stop.set()
    reporters.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    reader.cancel()
    print(json.dumps({"final": True, "acked_seqs": reporters.stats.acked_seqs,
                      "pending": sum(reporters.stats.pending.values()),
                      "errors": reporters.stats.errors}), flush=True)


def _said(task: asyncio.Task[None]) -> None:
    """An agent that stopped on an error the simulator does not retry: say it (stderr, the
    generator's log), since that agent would otherwise just never come back."""
    if not task.cancelled() and task.exception() is not None:
        print(f"simulated agent stopped: {task.exception()!r}", file=sys.stderr, flush=True)


# --- the parent: cluster, hub, generators, measurements ------------------------------------


class Generators:
    """The generator processes and their latest status lines."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.status: list[dict[str, Any]] = []
        self.final: list[dict[str, Any]] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, argv: list[str], log: Path) -> None:
        with open(log, "a") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, limit=2**30)  # the final line holds every acked sequence
        self.procs.append(proc)
        self.status.append({})
        self._readers.append(asyncio.create_task(self._read(len(self.procs) - 1, proc)))

    async def _read(self, i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            doc = json.loads(line)
            if doc.get("final"):
                self.final.append(doc)
            else:
                self.status[i] = doc

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.status)

    def tell(self, command: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{command}\n".encode())

    async def stop(self) -> None:
        self.tell("stop")
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()  # ends the generator's stdin reader, which its exit waits for
        await asyncio.gather(*(p.wait() for p in self.procs))
        await asyncio.gather(*self._readers, return_exceptions=True)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()

    def rss_mb(self) -> float:
        return sum(_rss(p.pid) for p in self.procs) / 2**20


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


class Hub:
    """`estate-hub serve --workers W` on the cluster, its output in a log file."""

    def __init__(self, data: Path, url: str, workers: int, log: Path) -> None:
        self.data, self.url, self.workers, self.log = data, url, workers, log
        with socket.create_server(("127.0.0.1", 0)) as s:
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*HUB, "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data),
                 "--store", self.url, "--workers", str(self.workers), "--report-burst", "0",
                 # Every agent here comes from a few loopback addresses, all at once: lift the
                 # front door's per-source and pre-login budgets, which would (rightly) pace them.
                 "--connection-rate", "1000000", "--connection-burst", "1000000",
                 "--max-unauthenticated", "100000", "--max-unauthenticated-per-source",
                 "100000", "--early-drop", "100000:30", "--penalty-after", "0",
                 "--login-timeout", "120", "--handshake-timeout", "60"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while self.log.read_text(errors="replace").count(READY_MARK) < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hub did not start:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def worker_procs(self) -> list[psutil.Process]:
        assert self.proc is not None
        return [c for c in psutil.Process(self.proc.pid).children() if "--worker" in c.cmdline()]

    def rss_mb(self) -> float:
        return sum(_rss(p.pid) for p in self.worker_procs()) / 2**20

    def cpu_s(self) -> float:
        """CPU seconds of the workers alive now (a killed one's are lost: not used across a
        kill)."""
        total = 0.0
        for p in self.worker_procs():
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class RealAgents:
    """`estate-agent run` processes, enrolled for real through the hub."""

    def __init__(self, hub: Hub, folder: Path, n: int, interval_s: float) -> None:
        self.hub, self.folder, self.n, self.interval_s = hub, folder, n, interval_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ids: list[str] = []

    def start(self) -> None:
        from tests.harness import seed_update_cache

        token = subprocess.run(
            [*HUB, "token", "create", "--agency", "Bench", "--site", "Real", "--uses",
             str(self.n), "--data", str(self.hub.data), "--store", self.hub.url],
            capture_output=True, text=True, check=True).stdout.split()[0]
        for i in range(self.n):
            home = self.folder / f"agent{i}"
            home.mkdir(parents=True, mode=0o700)
            done = subprocess.run([*AGENT, "enrol", "--token", token, "--hub",
                                   f"127.0.0.1:{self.hub.port}", "--config",
                                   str(home / "agent.toml")],
                                  capture_output=True, text=True, check=True)
            self.ids.append(re.search(r"enrolled as (ag-[0-9a-f]+)", done.stdout).group(1))
            config = home / "agent.toml"
            head, sep, tables = config.read_text().partition("\n[")
            config.write_text(f"{head.rstrip()}\ninterval = {self.interval_s:g}\n"
                              f"start_delay = 0\nreconnect_max = 30\n{sep}{tables}")
            # One machine holds them all: one daily package query each would be 200 at once.
            seed_update_cache(home)
            with open(home / "agent.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    [*AGENT, "run", "--config", str(config)], stdout=log, stderr=log))

    def connected(self) -> int:
        up = 0
        for i in range(len(self.procs)):
            try:
                doc = json.loads((self.folder / f"agent{i}" / "status.json").read_text())
            except (OSError, ValueError):
                continue
            up += bool(doc.get("connected"))
        return up

    def rss_mb(self) -> float:
        return sum(_rss(p.pid) for p in self.procs) / 2**20

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


async def window(hub: Hub, seconds: float) -> float:
    """The workers' CPU over the next `seconds`, in % of one core."""
    cpu0, t0 = hub.cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (hub.cpu_s() - cpu0) / (time.monotonic() - t0)


async def wait_until(what: str, done: Any, timeout: float, every: float = 0.5) -> float | None:
    """Poll `done()` until true; the seconds it took, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if done():
            return time.monotonic() - t0
        await asyncio.sleep(every)
    print(f"  NOT within {timeout:.0f} s: {what}", flush=True)
    return None


def plan(args: argparse.Namespace, limit: int) -> tuple[int, int]:
    """(generators, workers): each within the open-files limit, with room for a killed
    worker's share to land on the others."""
    per_process = limit - SPARE_FDS
    generators = args.generators or max(2, math.ceil(args.agents / per_process))
    workers = args.workers or max(2, math.ceil(args.agents * 1.3 / per_process))
    return generators, workers


async def run(args: argparse.Namespace, url: str, folder: Path,
              idents: list[simulate.Identity], key: Any, limit: int) -> dict[str, Any]:
    data = folder / "hub"
    n_gen, n_workers = plan(args, limit)
    hub = Hub(data, url, n_workers, folder / "hub.log")
    gens = Generators()
    real = RealAgents(hub, folder / "real", args.real_agents, args.real_interval)
    watch = PostgresWatch(url)
    fig: dict[str, Any] = {"workers": n_workers, "generators": n_gen}
    try:
        hub.start()
        print(f"hub: {n_workers} workers on 127.0.0.1:{hub.port}; bare workers' CPU over "
              f"{args.bare_window:g} s...", flush=True)
        rss0 = hub.rss_mb()
        bare = await window(hub, args.bare_window)
        # Generators: identities split evenly; reporters spread over them.
        chunks = [idents[g::n_gen] for g in range(n_gen)]
        address = 0
        for g, chunk in enumerate(chunks):
            path = folder / f"gen{g}.json"
            simulate.save_identities(path, chunk)
            sources = []
            for _ in range(max(1, math.ceil(len(chunk) / PER_SOURCE))):
                address += 1
                sources.append(f"127.0.{address // 254 + 1}.{address % 254 + 1}")
            reporters = args.reporters // n_gen + (g < args.reporters % n_gen)
            await gens.start(
                [sys.executable, __file__, "--generator", str(path), "--hub",
                 f"127.0.0.1:{hub.port}", "--hub-key",
                 key.export_public_key("openssh").decode().strip(), "--sources",
                 ",".join(sources), "--reporters", str(reporters), "--connecting",
                 str(args.connecting), "--agent-keepalive", f"{args.agent_keepalive:g}"],
                folder / f"gen{g}.log")
        idle_n = len(idents) - args.reporters
        login_cpu0 = hub.cpu_s()
        print(f"{len(idents)} simulated agents in {n_gen} generators ({address} source "
              f"addresses); {idle_n} logging in and staying idle...", flush=True)
        t = await wait_until("every idle agent logged in", lambda: gens.total("idle") >= idle_n,
                             args.timeout, every=2)
        fig["login_s"] = t
        fig["login_ms"] = 1000 * (hub.cpu_s() - login_cpu0) / max(1, gens.total("idle"))
        print(f"  {gens.total('idle')} logged in after "
              f"{t if t is not None else args.timeout:.0f} s; workers' CPU "
              f"{fig['login_ms']:.1f} ms per login", flush=True)
        if args.real_agents:
            await asyncio.to_thread(real.start)
            await wait_until("every real agent connected", lambda: real.connected() >= real.n,
                             args.timeout, every=2)
            print(f"  {real.connected()} of {real.n} real agents (estate-agent run) "
                  f"connected, reporting every {args.real_interval:g} s; their RSS "
                  f"{real.rss_mb():.0f} MB", flush=True)
        await asyncio.sleep(5)  # presence writes and the login's garbage settle
        held = gens.total("idle") + real.connected()
        rss1 = hub.rss_mb()
        watch.begin()
        idle = await window(hub, args.idle_window)
        db_cpu, _, db_commits = watch.end()
        fig.update(held=held, rss0=rss0, rss1=rss1, kb_per_conn=(rss1 - rss0) * 1024 / held,
                   idle=idle, bare=bare, idle_per_10k=(idle - bare) * 10_000 / held,
                   idle_db_cpu=100 * db_cpu / args.idle_window,
                   idle_commits_s=db_commits / args.idle_window, gen_rss=gens.rss_mb())
        print(f"idle: {held} connections; workers' RSS {rss0:.0f} -> {rss1:.0f} MB, "
              f"{fig['kb_per_conn']:.1f} KB per connection; workers' CPU {idle:.2f}% of a core "
              f"({bare:.2f}% with none), {fig['idle_per_10k']:.2f}% per 10,000 connections; "
              f"PostgreSQL {fig['idle_db_cpu']:.2f}% of a core, "
              f"{fig['idle_commits_s']:.1f} commits/s; generators' RSS "
              f"{fig['gen_rss']:.0f} MB", flush=True)

        # Saturation: reporters back to back.
        gens.tell("report")
        await wait_until("every reporter connected",
                         lambda: gens.total("reporting") >= args.reporters, args.timeout)
        await asyncio.sleep(5)
        acked0, cpu0, t0 = gens.total("acked"), hub.cpu_s(), time.monotonic()
        watch.begin()
        await asyncio.sleep(args.saturation)
        wall = time.monotonic() - t0
        db_cpu, wal, commits = watch.end()
        reports = gens.total("acked") - acked0
        cpu = hub.cpu_s() - cpu0
        n = max(1, reports)
        fig.update(reports=reports, per_s=reports / wall, cpu_ms=1000 * cpu / n,
                   hub_cores=cpu / wall, db_cpu_ms=1000 * db_cpu / n, db_cores=db_cpu / wall,
                   wal_kb=wal / 1024 / n, commits_s=commits / wall,
                   per_commit=reports / commits if commits else float("nan"))
        print(f"saturation: {args.reporters} reporters back to back for {wall:.0f} s: "
              f"{fig['per_s']:.0f} reports/s; hub {fig['cpu_ms']:.2f} CPU ms per report "
              f"({fig['hub_cores']:.2f} cores); PostgreSQL {fig['commits_s']:.1f} commits/s "
              f"({fig['per_commit']:.1f} reports each), {fig['db_cpu_ms']:.2f} CPU ms and "
              f"{fig['wal_kb']:.2f} KB WAL per report ({fig['db_cores']:.2f} cores)",
              flush=True)

        gens.tell(f"interval {args.kill_interval:g}")
        await asyncio.sleep(5)
        if args.kill:
            # Those connected now (the whole estate, unless some never logged in in time).
            total = gens.total("idle") + gens.total("reporting") + real.connected()
            victim = min(hub.worker_procs(), key=lambda p: p.cmdline()[-1])
            print(f"kill: SIGKILL worker {victim.cmdline()[-1]} (pid {victim.pid}) under "
                  f"{total} agents, reporters every {args.kill_interval:g} s...", flush=True)
            victim.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            low = [total]

            def back() -> bool:
                up = gens.total("idle") + gens.total("reporting") + real.connected()
                low[0] = min(low[0], up)
                return up >= total and time.monotonic() - t0 > 3

            t = await wait_until("every agent back", back, args.timeout)
            fig.update(dropped=total - low[0], back_s=t)
            print(f"  {total - low[0]} agents dropped (at the lowest); all {total} back "
                  f"{t if t is not None else args.timeout:.1f} s after the kill", flush=True)
        await asyncio.sleep(10)
        await gens.stop()
        fig.update(await asyncio.to_thread(compare, url, gens.final))
        if args.real_agents:
            real.stop()
            fig.update(await asyncio.to_thread(compare_real, url, real.ids))
        print(f"reports: {fig['acked']} acked by the hub, {fig['lost']} of them lost, "
              f"{fig['doubled']} stored twice; {fig['pending']} still unacked at the stop "
              f"(kept by their agents)", flush=True)
        if args.real_agents:
            print(f"real agents: {fig['real_reports']} reports stored, sequences with gaps or "
                  f"doubles: {fig['real_bad']}", flush=True)
        hubs = subprocess.run([*HUB, "hubs", "--data", str(data), "--store", url],
                              capture_output=True, text=True)
        print(hubs.stdout.rstrip() or hubs.stderr.rstrip())
        return fig
    except BaseException:
        print(f"hub log:\n{hub.tail()}", file=sys.stderr)
        raise
    finally:
        gens.kill()
        real.stop()
        watch.close()
        hub.stop()


def compare(url: str, finals: list[dict[str, Any]]) -> dict[str, int]:
    """Every acked report against the store: (acked, lost, doubled, pending)."""
    store = open_store(url)
    acked = lost = doubled = 0
    try:
        for doc in finals:
            for agent_id, seqs in doc["acked_seqs"].items():
                stored = Counter(int(r.report_id.rsplit(":", 1)[1]) for r in
                                 store.recent_reports(agent_id, None, 10_000_000) or [])
                acked += len(seqs)
                lost += sum(1 for s in seqs if s not in stored)
                doubled += sum(c - 1 for c in stored.values() if c > 1)
    finally:
        store.close()
    return {"acked": acked, "lost": lost, "doubled": doubled,
            "pending": sum(d["pending"] for d in finals)}


def compare_real(url: str, agent_ids: list[str]) -> dict[str, int]:
    """A real agent numbers its reports 1, 2, 3...: any gap or double shows."""
    store = open_store(url)
    reports = bad = 0
    try:
        for agent_id in agent_ids:
            seqs = sorted(int(r.report_id.rsplit(":", 1)[1])
                          for r in store.recent_reports(agent_id, None, 1_000_000) or [])
            reports += len(seqs)
            bad += seqs != list(range(1, len(seqs) + 1))
    finally:
        store.close()
    return {"real_reports": reports, "real_bad": bad}


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    os_name = platform.platform()
    try:
        os_name = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())[1]
    except (OSError, TypeError):
        pass
    return (f"{os.cpu_count()} CPUs, {mem:.0f} GiB, {os_name}, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())} (UTC)")


def summary(args: argparse.Namespace, fig: dict[str, Any]) -> None:
    rows = [
        ("simulated agents (+ real)", f"{args.agents} (+{args.real_agents})"),
        ("hub workers / generator processes", f"{fig['workers']} / {fig['generators']}"),
        ("all agents logged in after", _s(fig.get("login_s"))),
        ("hub CPU per login (key exchange, auth, presence)", f"{fig['login_ms']:.1f} ms"),
        ("RSS per idle connection (workers)", f"{fig['kb_per_conn']:.1f} KB"),
        ("idle hub CPU per 10,000 connections",
         f"{fig['idle_per_10k']:.2f}% of a core" if fig["idle_per_10k"] > 0 else
         "none measurable (not above the workers' own with no connection)"),
        ("idle PostgreSQL", f"{fig['idle_db_cpu']:.2f}% of a core, "
                            f"{fig['idle_commits_s']:.1f} commits/s"),
        ("reports/s at saturation", f"{fig['per_s']:.0f}"),
        ("hub CPU per report at saturation", f"{fig['cpu_ms']:.2f} ms"),
        ("PostgreSQL commits/s (reports each)", f"{fig['commits_s']:.1f} "
                                                f"({fig['per_commit']:.1f})"),
        ("PostgreSQL CPU per report", f"{fig['db_cpu_ms']:.2f} ms"),
        ("WAL per report", f"{fig['wal_kb']:.2f} KB"),
    ]
    if "back_s" in fig:
        rows.append(("agents of the killed worker back", f"{_s(fig['back_s'])} "
                                                         f"({fig['dropped']} dropped)"))
    rows.append(("reports lost / doubled (acked)", f"{fig['lost']} / {fig['doubled']} "
                                                   f"({fig['acked']})"))
    if "real_bad" in fig:
        rows.append(("real agents with gaps or doubles", str(fig["real_bad"])))
    print("| figure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _s(seconds: float | None) -> str:
    return "not within the timeout" if seconds is None else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000, help="simulated agents")
    parser.add_argument("--workers", type=int, default=0,
                        help="hub workers (default: enough for the open-files limit, at least 2)")
    parser.add_argument("--generators", type=int, default=0,
                        help="generator processes (default: enough for the open-files limit, "
                             "at least 2)")
    parser.add_argument("--reporters", type=int, default=200,
                        help="simulated agents that report in the saturation and kill phases")
    parser.add_argument("--saturation", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--kill-interval", type=float, default=30.0, metavar="SECONDS",
                        help="the reporters' interval while a worker is killed")
    parser.add_argument("--no-kill", dest="kill", action="store_false")
    parser.add_argument("--real-agents", type=int, default=0,
                        help="real `estate-agent run` processes joining (each ~45 MB)")
    parser.add_argument("--real-interval", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--agent-keepalive", type=float,
                        default=HubSettings.keepalive_interval_s, metavar="SECONDS",
                        help="the simulated agents' own SSH keepalive, 0 for none (default: "
                             "the hub's --keepalive default)")
    parser.add_argument("--connecting", type=int, default=32,
                        help="logins in progress at once per generator")
    parser.add_argument("--idle-window", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--bare-window", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="the longest wait for logins and reconnections")
    # A generator process (started by the parent).
    parser.add_argument("--generator", help=argparse.SUPPRESS)
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    parser.add_argument("--hub-key", help=argparse.SUPPRESS)
    parser.add_argument("--sources", help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit = raise_open_files()
    if args.generator:
        asyncio.run(generator(args))
        return
    args.reporters = min(args.reporters, args.agents)
    # SIGTERM (a timeout, a CI runner) cleans up as Ctrl-C does: the cluster, hub and agents.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from tests.postgres import PostgresCluster

    print(f"machine: {machine()}; open files {limit}", flush=True)
    cluster = PostgresCluster().start()
    try:
        durable_cluster(cluster.url)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            key, _ = load_or_create_host_key(folder / "hub")
            t0 = time.monotonic()
            idents = enrol_identities(cluster.url, args.agents)
            print(f"enrolled {len(idents)} simulated agents through the store in "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
            fig = asyncio.run(run(args, cluster.url, folder, idents, key, limit))
    finally:
        cluster.stop()
    summary(args, fig)


if __name__ == "__main__":
    main()
