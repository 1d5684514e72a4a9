"""`estate-hub simulate`: N simulated agents reporting to a hub, for load tests and demos
(`inventory/simulate.py` plays the agents)."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from estate.inventory.hub._cli_args import _positive_int, _seconds, parse_listen, verb
from estate.inventory.hub._cli_shared import chosen_store, data_dir, on_stop_signals
from estate.inventory.protocol import Exit

if TYPE_CHECKING:  # the store loads with the verb that uses it, not with every verb
    from estate.inventory.store import StoreInterface


def add_verbs(sub: Any) -> None:
    """Add the `simulate` verb."""
    sim = verb(sub, "simulate", "run N simulated agents against a hub (load tests, demos)")
    sim.add_argument("--agents", type=_positive_int, required=True, metavar="N",
                     help="how many agents (enrolled for real on first use, then reused)")
    sim.add_argument("--hub", default="127.0.0.1:2222", metavar="HOST:PORT",
                     help="the hub to report to (default 127.0.0.1:2222)")
    sim.add_argument("--interval", type=_seconds, default=60.0, metavar="SECONDS",
                     help="seconds between each agent's reports (default 60)")
    sim.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                     help="stop after this long (default: until Ctrl-C)")
    sim.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    parse_listen(args.hub)
    try:
        return asyncio.run(_simulate(args))
    except KeyboardInterrupt:
        return Exit.OK


async def _simulate(args: argparse.Namespace) -> int:
    from estate.inventory import simulate
    from estate.inventory.hub._keys import load_or_create_host_key
    from estate.inventory.store import Store

    data = data_dir(args)
    if chosen_store(args) is None and not Store.exists(data):
        raise SystemExit(f"estate-hub: no hub data in {data}; simulate runs on the hub's host "
                         f"(pass --data)")
    key, _ = load_or_create_host_key(data)
    sim = simulate.Simulator(args.hub, key, interval_s=args.interval)
    idents = await _simulated_identities(sim, args, args.agents)
    on_stop_signals(sim.stop.set)
    print(f"simulate: running {len(idents)} agents against {args.hub}, a report every "
          f"{args.interval:g} s each; Ctrl-C stops", flush=True)
    tasks = [asyncio.create_task(sim.run_agent(i)) for i in idents]
    started = time.monotonic()
    while not sim.stop.is_set():
        try:
            await asyncio.wait_for(sim.stop.wait(), 5)
        except asyncio.TimeoutError:
            pass
        st = sim.stats
        print(f"simulate: {st.connected} connected, {st.acked} reports acked, "
              f"{st.errors} rejected, {st.reconnects} reconnects", flush=True)
        if args.duration and time.monotonic() - started >= args.duration:
            sim.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Exit.OK


async def _simulated_identities(sim: Any, args: argparse.Namespace, n: int) -> list[Any]:
    """Reuse the simulated agents of earlier runs; enrol (for real) the ones missing."""
    from estate.inventory import simulate
    from estate.inventory.hub._tokens import make_token
    from estate.inventory.store import open_store

    data = data_dir(args)
    path = data / "simulated.json"
    idents = simulate.load_identities(path)[:n]
    missing = list(range(len(idents), n))
    if not missing:
        return idents
    where = simulate.placements(n)
    store: StoreInterface = open_store(chosen_store(args), data)
    tokens = {}
    for agency, site in sorted({where[i] for i in missing}):
        uses = sum(1 for i in missing if where[i] == (agency, site))
        token_id, secret, _ = store.create_token(agency, site, uses, timedelta(hours=2),
                                                 "simulate")
        tokens[(agency, site)] = make_token(token_id, secret,
                                            sim.host_key.get_fingerprint("sha256"))
    store.close()
    gate = asyncio.Semaphore(16)
    done = [0]

    async def one(i: int) -> Any:
        async with gate:
            ident = await sim.enrol(i, tokens[where[i]], *where[i])
            done[0] += 1
            if done[0] % 100 == 0 or done[0] == len(missing):
                print(f"simulate: enrolled {done[0]}/{len(missing)}", flush=True)
            return ident

    idents += await asyncio.gather(*(one(i) for i in missing))
    simulate.save_identities(path, idents)
    return idents

