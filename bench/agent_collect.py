"""Benchmark: how fast and how lean `estate-agent collect` is on this machine.

Prints, over --runs runs (default 20):
- in-process collection without probes (packages included): median and p95;
- what the security-posture collectors add in-process, with a warm updates cache: the six
  run at once as a report runs them (target <= 20 ms), and each alone;
- what the built-in connectivity probes (gateway, hub-dns, link, and hub timed against a
  stand-in that answers at once) add in-process: collection wall and CPU with and without;
- the whole `estate-agent collect` process: wall, CPU (user+sys) and peak RSS, median and p95;
- the same for `facter --json` when facter is installed, run alternately with the agent so
  both see the same machine, and the ratio of their median walls (target <= 0.3).

Usage: python bench/agent_collect.py [--runs N] [--process-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process(runs: int) -> list[float]:
    from estate.agent.collect import collect_report
    from estate.agent.collect._posture import wait_for_refresh

    collect_report()  # warm the page cache and imports, as a running service would be
    wait_for_refresh(300)  # the daily count of pending updates, once
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        report, _ = collect_report()
        times.append((time.perf_counter() - start) * 1000)
        assert report["software"]["packages"] is not None, "packages must be included"
    return times


def security_added(runs: int) -> tuple[list[float], dict[str, list[float]]]:
    """Wall ms of the six security collectors run at once (as collect_report runs them, so
    this is what they add to a report at most), and of each alone; the updates cache warm,
    as a running agent has it, and the process list read afresh every run, as a report
    every few minutes reads it."""
    import tempfile
    from pathlib import Path

    from estate.agent.collect import _posture, collectors
    from estate.agent.collect._runner import run_collectors

    def cold_process_list() -> None:
        if sys.platform.startswith("linux"):
            from estate.agent.collect import _posture_linux

            _posture_linux._processes.expire()

    with tempfile.TemporaryDirectory() as tmp:
        jobs = {name: fn for name, fn in collectors(Path(tmp)).items()
                if name.startswith("security.")}
        run_collectors(jobs, 300)
        _posture.wait_for_refresh(300)
        together: list[float] = []
        alone: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(runs):
            cold_process_list()
            start = time.perf_counter()
            out = run_collectors(jobs, 60)
            together.append((time.perf_counter() - start) * 1000)
            assert all(o.value is not None for o in out.values()), out
            for name, fn in jobs.items():
                cold_process_list()
                start = time.perf_counter()
                fn([])
                alone[name].append((time.perf_counter() - start) * 1000)
    return together, alone


def builtins_added(runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU ms (this process, every thread) of collect_report() without probes and
    with the built-in ones, alternating so both see the same machine. The hub's round trip
    is a stand-in answering at once: on a real connection it waits on the network, not on
    the agent's CPU."""
    from estate.agent.collect import collect_report
    from estate.agent.probes import builtin_probes, prober

    with_builtins = prober(builtin_probes("localhost:2222", hub_rtt=True), lambda t: 0.0)
    collect_report(probes=with_builtins)  # warm
    walls: dict[str, list[float]] = {"without": [], "with": []}
    cpus: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(runs):
        for label, probes in (("without", None), ("with", with_builtins)):
            start, cpu = time.perf_counter(), time.process_time()
            report, _ = collect_report(probes=probes)
            walls[label].append((time.perf_counter() - start) * 1000)
            cpus[label].append((time.process_time() - cpu) * 1000)
        assert len(report["connectivity"]["probes"]) == 4, report["connectivity"]
    return walls, cpus


Figures = tuple[list[float], list[float], list[float]]


def whole_processes(commands: list[tuple[list[str], bool]], runs: int) -> list[Figures]:
    """Wall ms, CPU ms and peak RSS MB of each (argv, must_succeed) child process (with the
    tools it ran), via wait4; the commands take turns run by run, so that a change in the
    machine's load falls on all of them alike."""
    # An installed agent has its bytecode compiled (pip does it): one untimed run writes the
    # cache, which PYTHONDONTWRITEBYTECODE in the caller's environment would otherwise forbid,
    # timing the compiler at every run for each module changed since the last write.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for argv, _ in commands:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    out: list[Figures] = [([], [], []) for _ in commands]
    for _ in range(runs):
        for (argv, must_succeed), (walls, cpus, rss) in zip(commands, out, strict=True):
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append((time.perf_counter() - start) * 1000)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if must_succeed and proc.returncode != 0:
                raise SystemExit(f"{argv[0]} exited {proc.returncode}")
            cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
            rss.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return out


def line(label: str, values: list[float], unit: str) -> str:
    return (f"  {label:<28} median {statistics.median(values):8.1f} {unit:<3}"
            f"  p95 {pct(values, 0.95):8.1f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--process-only", action="store_true",
                        help="time only the whole processes (agent and facter), not the "
                             "in-process figures")
    args = parser.parse_args()
    runs = max(20, args.runs)

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.process_only:
        in_process_figures(runs)
    process_figures(runs)


def in_process_figures(runs: int) -> None:
    print(f"in-process collection, no probes, packages included ({runs} runs):")
    print(line("collect_report()", in_process(runs), "ms"))
    together, alone = security_added(runs)
    print(f"security collection added, warm updates cache ({runs} runs; target <= 20 ms):")
    print(line("six sub-sections at once", together, "ms"))
    for name, values in alone.items():
        print(line(f"{name} alone", values, "ms"))
    walls, cpus = builtins_added(runs)
    print(f"built-in probes added in-process ({runs} runs each, alternating):")
    for label in ("without", "with"):
        print(line(f"wall, {label} built-ins", walls[label], "ms"))
        print(line(f"CPU, {label} built-ins", cpus[label], "ms"))


def process_figures(runs: int) -> None:
    agent = shutil.which("estate-agent", path=os.path.dirname(sys.executable)) or "estate-agent"
    # No config: no hub, so of the built-in probes only gateway and link run.
    os.environ.setdefault("ESTATE_AGENT_CONFIG", os.devnull + ".absent")
    commands = [([agent, "collect"], True)]
    facter = shutil.which("facter")
    if facter:
        # facter exits 1 in a container when it cannot read /proc/1/environ, yet prints
        # its facts; it is timed all the same.
        commands.append(([facter, "--json"], False))
    figures = whole_processes(commands, runs)
    labels = ["whole process `estate-agent collect`", "for scale, `facter --json`"]
    for label, (walls, cpus, rss) in zip(labels[:len(figures)], figures, strict=True):
        print(f"{label} ({runs} runs{', alternating' if facter else ''}):")
        print(line("wall", walls, "ms"))
        print(line("CPU (user+sys)", cpus, "ms"))
        print(line("peak RSS", rss, "MB"))
    if facter:
        ratio = statistics.median(figures[0][0]) / statistics.median(figures[1][0])
        print(f"agent / facter, median wall: {ratio:.2f}x (target <= 0.3)")
    else:
        print("facter is not installed: no comparison (apt-get install facter to add it)")


if __name__ == "__main__":
    main()
