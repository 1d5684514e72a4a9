"""Benchmark: audit exports of 20,000 hosts and 200,000 change events.

Seeds a hub's store (20,000 enrolled hosts with a realistic report each, through the store's
own code; 200,000 change events), starts the real hub, and runs the real `estate export` CLI
over SSH as an admin operator: inventory as CSV and XLSX, changes as CSV. Prints each export's
wall time (CLI start to file and manifest written, so Python's start and the SSH login are
in it), the CLI's peak RSS (sampled every 10 ms), the hub's RSS afterwards, and checks each
file with `estate verify`.

With `--store postgresql://...` (an empty database to throw away) or `--postgres` (a throwaway
cluster started here, `tests/postgres.py`), the same run then does it all again on that
PostgreSQL store, and prints both side by side.

Usage: python bench/export.py [--hosts 20000] [--changes 200000] [--store URL | --postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh
import psutil

from bench._seed import seed
from estate.inventory.store import ENV_VAR, ChangeEvent, iso, open_store, utcnow
from tests.harness import HubProcess

KINDS = ("software_updated", "software_added", "software_removed", "ip_changed",
         "memory_changed", "disk_added", "os_upgraded")
CASES = (("inventory", "csv", 2.0), ("inventory", "xlsx", 10.0), ("changes", "csv", 5.0))


def add_changes(data: Path, n: int, url: str | None = None) -> None:
    """N change events spread over the seeded hosts and the last 90 days."""
    store = open_store(url, data, durable=False)
    agents = sorted(h.agent_id for h in store.host_rows(None))
    rng = random.Random(7)
    now = utcnow().timestamp()
    rows = []
    for i in range(n):
        at = iso(utcnow().fromtimestamp(now - rng.uniform(0, 90 * 86400), tz=utcnow().tzinfo))
        kind = rng.choice(KINDS)
        rows.append(ChangeEvent(at, rng.choice(agents), kind, f"package-{i % 500}",
                                f"1.{i % 9}", f"1.{i % 9 + 1}", "bench"))
    rows.sort(key=lambda r: r.at)
    store.record_changes(rows)
    store.close()


def export(hub: HubProcess, key: Path, report: str, fmt: str, out: Path) -> tuple[float, float]:
    """(seconds, CLI peak RSS in MB) for one `estate export`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "estate.console.cli", "export", "--hub", f"bench@{hub.address}",
         "--key", str(key), "--hub-key", hub.fingerprint, "--report", report, "--format", fmt,
         "-o", str(out)], stdout=subprocess.DEVNULL)
    # Sampled, not getrusage: a forked child's maxrss counts this (large) parent's pages.
    peak = 0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if proc.wait() != 0:
        raise RuntimeError(f"export {report} {fmt} failed ({proc.returncode})")
    return elapsed, peak / 2**20


@contextlib.contextmanager
def store_in_env(url: str | None) -> Iterator[None]:
    """The hub and its admin verbs on the store `url` ($ESTATE_HUB_STORE), else on SQLite."""
    before = os.environ.pop(ENV_VAR, None)
    if url:
        os.environ[ENV_VAR] = url
    try:
        yield
    finally:
        os.environ.pop(ENV_VAR, None)
        if before is not None:
            os.environ[ENV_VAR] = before


def run_exports(base: Path, name: str, url: str | None,
                args: argparse.Namespace) -> dict[tuple[str, str], float]:
    """Seed a store, start a hub on it, run the three exports; their seconds."""
    data = base / name
    times = {}
    with store_in_env(url):
        t = time.perf_counter()
        seed(data, args.hosts, url)
        add_changes(data, args.changes, url)
        print(f"{name}: seeded {args.hosts} hosts and {args.changes} changes in "
              f"{time.perf_counter() - t:.0f} s")
        key = asyncssh.generate_private_key("ssh-ed25519")
        (base / "bench").write_bytes(key.export_private_key())
        (base / "bench").chmod(0o600)
        key.write_public_key(str(base / "bench.pub"))
        hub = HubProcess(data).start()
        try:
            hub.admin("operator", "add", "bench", "--key", str(base / "bench.pub"), "--role",
                      "admin", "--agencies", "all")
            hub_proc = psutil.Process(hub.proc.pid) if hub.proc else None
            for report, fmt, target in CASES:
                out = base / f"{name}-{report}.{fmt}"
                seconds, rss = export(hub, base / "bench", report, fmt, out)
                times[(report, fmt)] = seconds
                ok = subprocess.run([sys.executable, "-m", "estate.console.cli", "verify", str(out),
                                     "--hub-key", hub.fingerprint],
                                    capture_output=True).returncode == 0
                print(f"{name}: {report} {fmt}: {seconds:.2f} s (target <= {target:g} s), "
                      f"{out.stat().st_size / 2**20:.1f} MB, CLI peak RSS {rss:.0f} MB "
                      f"(target <= 200 MB), verify {'OK' if ok else 'FAILED'}")
            if hub_proc:
                print(f"{name}: hub RSS after the exports: "
                      f"{hub_proc.memory_info().rss / 2**20:.0f} MB")
        finally:
            hub.kill()
            (base / "bench").unlink()
            (base / "bench.pub").unlink()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=200_000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", metavar="URL",
                       help="also on this PostgreSQL store (an empty database to throw away)")
    where.add_argument("--postgres", action="store_true",
                       help="also on PostgreSQL, in a throwaway cluster started here")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    cluster = None
    url = args.store
    if args.postgres:
        from tests.postgres import PostgresCluster

        cluster = PostgresCluster().start()
        url = cluster.url
    try:
        with tempfile.TemporaryDirectory(prefix="estate-bench-export-") as tmp:
            results = {"SQLite": run_exports(Path(tmp), "SQLite", None, args)}
            if url:
                results["PostgreSQL"] = run_exports(Path(tmp), "PostgreSQL", url, args)
    finally:
        if cluster:
            cluster.stop()
    if url:
        print(f"{'export':<18}{'target':>8}{'SQLite':>9}{'PostgreSQL':>12}")
        for report, fmt, target in CASES:
            print(f"{report + ' ' + fmt:<18}{target:>7g}s{results['SQLite'][(report, fmt)]:>8.2f}s"
                  f"{results['PostgreSQL'][(report, fmt)]:>11.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
