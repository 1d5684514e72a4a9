"""Benchmark: compliance for 20,000 hosts.

1. Evaluation: 20,000 varied reports (simulated machines with a varied `security` section)
   against the default policy, in-process: the CPU the hub spends evaluating (target <= 1 s).
2. Storing: the same reports through `store_reports` with the policy applied (evaluation and
   its writes in the ingest transaction), against the same without a policy: ingest's cost.
3. A new policy at start: every host evaluated again from its stored snapshot, in the hub's
   batches (`reevaluate`).
4. The compliance XLSX (and CSV) of 20,000 hosts, produced as the hub produces it
   (`run_export` on a read-only store handle, signed manifest; no SSH), target <= 10 s.

Usage: python bench/compliance.py [--hosts 20000]
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh

from estate.inventory import simulate
from estate.inventory.compliance import (
    DEFAULT_POLICY,
    evaluate,
    load_policy,
    parse_policy,
    summarise,
)
from estate.inventory.export import ExportRequest
from estate.inventory.export.produce import Producer, run_export
from estate.inventory.store import Incoming, open_store, utcnow


def security(rng: random.Random, family: str) -> dict[str, Any]:
    """A plausible, varied security section: most hosts compliant, some not, a few unknown."""
    now = utcnow()

    def maybe(value: Any, unknown: float = 0.03) -> Any:
        return None if rng.random() < unknown else value

    return {
        "encryption": {"volumes": [{"mount": "C:" if family == "windows" else "/",
                                    "device": "dm-0", "encrypted": maybe(rng.random() < 0.9),
                                    "method": "luks2", "protection": None, "percent": None}],
                       "reason": None},
        "firewall": {"enabled": maybe(rng.random() < 0.92), "product": "nftables",
                     "profiles": [], "reason": None},
        "malware": {"product": "defender", "enabled": maybe(True), "realtime": True,
                    "signature_age_days": round(rng.uniform(0, 5), 1), "products": [],
                    "gatekeeper": None, "xprotect_version": None, "reason": None},
        "updates": {"last_success": (now - timedelta(days=rng.uniform(0, 30))).isoformat(),
                    "pending": rng.randint(0, 9), "reboot_required": False,
                    "checked_at": now.isoformat(), "reason": None},
        "platform": {"firmware": "uefi", "secure_boot": maybe(rng.random() < 0.85),
                     "tpm_present": True, "tpm_version": "2.0", "reason": None},
        "accounts": {"admins": ["root"] + (["helpdesk"] if rng.random() < 0.1 else []),
                     "auto_login": maybe(rng.random() < 0.02), "reason": None},
    }


def reports(n: int) -> list[tuple[simulate.Identity, dict[str, Any]]]:
    rng = random.Random(18)
    out = []
    for i, (agency, site) in enumerate(simulate.placements(n)):
        ident = simulate.Identity(i, f"bench-{i:06d}", None, agency, site)  # type: ignore[arg-type]
        r = simulate.fake_report(ident, 1, 300.0)
        r["security"] = security(rng, r["system"]["os"]["family"])
        out.append((ident, r))
    return out


def bench_evaluation(hosts: list[tuple[Any, dict[str, Any]]]) -> float:
    policy = load_policy()
    now = utcnow()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _, r in hosts:
            summarise(evaluate(policy.controls, r, now))
        best = min(best, time.perf_counter() - start)
    return best


def seed(folder: Path, hosts: list[tuple[Any, dict[str, Any]]], with_policy: bool) -> float:
    """Enrol and store every host (batches of 500, as the hub's writer); the time storing."""
    store = open_store(None, folder, durable=False)
    if with_policy:
        store.apply_policy(load_policy(), "bench")
    tokens = {where: store.create_token(*where, len(hosts), timedelta(hours=1), "bench")
              for where in sorted({(i.agency, i.site) for i, _ in hosts})}
    batches, batch = [], []
    for ident, r in hosts:
        token_id, secret, _ = tokens[(ident.agency, ident.site)]
        agent_id = store.enrol(token_id, secret, f"ssh-ed25519 bench{ident.index}",
                               f"SHA256:bench{ident.index}", None)["agent_id"]
        r = copy.deepcopy(r)
        r["agent"]["id"] = agent_id
        batch.append(Incoming(agent_id, r, b"{}", utcnow()))
        if len(batch) == 500:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    start = time.perf_counter()
    for b in batches:
        store.store_reports(b)
    took = time.perf_counter() - start
    store.close()
    return took


def bench_reevaluation(folder: Path) -> float:
    store = open_store(None, folder, durable=False)
    # The default with one parameter changed: a new hash, so every host is evaluated again.
    changed = parse_policy(DEFAULT_POLICY.read_bytes().replace(b"days = 14", b"days = 30"))
    store.apply_policy(changed, "bench")
    start = time.perf_counter()
    while store.reevaluate():
        pass
    took = time.perf_counter() - start
    store.close()
    return took


def bench_export(folder: Path, fmt: str) -> tuple[float, int, int]:
    store = open_store(None, folder, durable=False)
    key = asyncssh.generate_private_key("ssh-ed25519")
    producer = Producer({"name": "bench", "role": "admin", "agencies": None}, key,
                        "SHA256:bench", "bench")
    request = ExportRequest.parse({"report": "compliance", "format": fmt})
    out = folder / f"compliance.{fmt}"
    start = time.perf_counter()
    manifest = run_export(store, request, producer, out)
    took = time.perf_counter() - start
    store.close()
    return took, manifest["rows"], out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          f"{args.hosts} hosts, default policy ({len(load_policy().controls)} controls)")
    hosts = reports(args.hosts)
    took = bench_evaluation(hosts)
    print(f"evaluation, in-process (best of 3): {took:.3f} s "
          f"({took / args.hosts * 1e6:.1f} us a host)  target <= 1 s")
    with tempfile.TemporaryDirectory() as tmp:
        plain = seed(Path(tmp) / "plain", hosts, with_policy=False)
        folder = Path(tmp) / "policy"
        evaluated = seed(folder, hosts, with_policy=True)
        print(f"store_reports, 500 a batch: {plain:.2f} s without a policy, {evaluated:.2f} s "
              f"with it (+{(evaluated - plain) / args.hosts * 1e6:.0f} us a report, first "
              f"results: 8 rows a host)")
        again = bench_reevaluation(folder)
        print(f"a new policy: every host evaluated again from its snapshot: {again:.2f} s")
        for fmt, target in (("xlsx", "<= 10 s"), ("csv", "")):
            took, rows, size = bench_export(folder, fmt)
            print(f"compliance export {fmt.upper()}: {took:.2f} s, {rows} rows, "
                  f"{size / 1e6:.1f} MB  {('target ' + target) if target else ''}")


if __name__ == "__main__":
    main()
