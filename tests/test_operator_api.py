"""The operator API and watch over real SSH: scope enforced on the hub, bad requests answered."""

from __future__ import annotations

import asyncio
import json

import asyncssh
import pytest

from console._client import ApiFailure, HubConnection, HubUnreachable
from tests.harness import Agent, make_report


@pytest.fixture(scope="module")
def estate(module_hub, tmp_path_factory, live_report):
    """Two agencies with two hosts each (one hostname in both), every host with a change
    event, and operators scoped to one or all of them."""
    folder = tmp_path_factory.mktemp("operators")
    fire = Agent(module_hub, folder / "fire", module_hub.token("Fire & Rescue", "Station 1"))
    fire2 = Agent(module_hub, folder / "fire2", module_hub.token("Fire & Rescue", "Station 1"))
    health = Agent(module_hub, folder / "health", module_hub.token("Health Trust", "Ward 9"))
    health2 = Agent(module_hub, folder / "health2", module_hub.token("Health Trust", "Ward 9"))
    memory = live_report["hardware"]["memory"]["total_bytes"] or 2**30
    for agent, name in ((fire, "fire-pc"), (fire2, "shared-pc"), (health, "health-pc"),
                        (health2, "shared-pc")):
        for mem in (memory, memory * 2):  # the second report makes a change event
            status, _ = agent.send(make_report(live_report, agent.agent_id,
                                               system__hostname=name,
                                               hardware__memory__total_bytes=mem))
            assert status == 0
    keys = {}
    for name, agencies, role in (("alice", "Fire & Rescue", "staff"),
                                 ("root.admin", "all", "admin"),
                                 ("audrey", "Fire & Rescue", "auditor")):
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = folder / name
        path.write_bytes(key.export_private_key())
        path.chmod(0o600)
        key.write_public_key(str(path) + ".pub")
        module_hub.admin("operator", "add", name, "--key", f"{path}.pub", "--role", role,
                         "--agencies", agencies)
        keys[name] = path
    return {"fire": fire, "fire2": fire2, "health": health, "health2": health2, "keys": keys}


def _connect(hub, estate, name: str) -> HubConnection:
    return HubConnection(hub.address, name, estate["keys"][name], hub.fingerprint)


async def _session(hub, estate, name, body):
    conn = _connect(hub, estate, name)
    await conn.connect()
    try:
        return await body(conn)
    finally:
        await conn.close()


def test_operator_in_agency_a_never_sees_agency_b(module_hub, estate, live_report):
    fire, health = estate["fire"], estate["health"]

    async def body(conn: HubConnection):
        hosts = await conn.request("hosts")
        summary = await conn.request("summary")
        with pytest.raises(ApiFailure) as err:
            await conn.request("host", agent_id=health.agent_id)
        assert err.value.code == "not_found"
        with pytest.raises(ApiFailure):
            await conn.request("reports", agent_id=health.agent_id)
        mine = await conn.request("host", agent_id=fire.agent_id)
        # Watch: one report from each agency; only Fire's arrives.
        events: list[dict] = []

        async def follow():
            async for event in conn.watch():
                events.append(event)

        async def until(condition, what: str) -> None:
            for _ in range(300):  # 30 s at most
                if condition():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}: {events}")

        task = asyncio.ensure_future(follow())
        # The hub says hello once the watcher is subscribed: nothing sent after is missed.
        await until(lambda: any(e.get("type") == "hello" for e in events), "the subscription")
        for agent in (health, fire):
            await asyncio.to_thread(agent.send, make_report(live_report, agent.agent_id,
                                                            system__hostname="renamed"))
        # One writer publishes batches in commit order, so Health's event, had it leaked,
        # would be here before Fire's, which was sent after Health's was acked.
        await until(lambda: any(e.get("type") == "host" and e["row"][0] == fire.agent_id
                                and e["row"][1] == "renamed" for e in events),
                    "Fire's host event")
        task.cancel()
        changes = await conn.request("changes")
        return hosts, summary, changes, mine, events

    hosts, summary, changes, mine, events = asyncio.run(
        _session(module_hub, estate, "alice", body))
    agencies = {row[2] for row in hosts["rows"]}
    assert agencies == {"Fire & Rescue"}
    assert set(summary["agencies"]) == {"Fire & Rescue"}
    assert summary["totals"]["total"] == len(hosts["rows"])
    assert all(c["agency"] == "Fire & Rescue" for c in changes)
    assert any(c["agent_id"] == fire.agent_id for c in changes)
    assert mine["agency"] == "Fire & Rescue"
    hosts_seen = [e for e in events if e.get("type") in ("host", "presence", "change")]
    assert hosts_seen, events
    text = json.dumps(events)
    assert health.agent_id not in text and "Health Trust" not in text
    audit = module_hub.admin_json("audit")
    assert any(a["action"] == "login" and a["actor"] == "operator:alice" for a in audit)
    assert any(a["action"] == "host_read" and a["target"] == fire.agent_id for a in audit)


def test_admin_with_all_agencies_sees_both(module_hub, estate):
    async def body(conn):
        return await conn.request("hosts", filter="agency:health")

    hosts = asyncio.run(_session(module_hub, estate, "root.admin", body))
    assert sorted(r[0] for r in hosts["rows"]) == sorted(
        (estate["health"].agent_id, estate["health2"].agent_id))
    assert {r[2] for r in hosts["rows"]} == {"Health Trust"}


def _out_of_scope(estate) -> list[str]:
    """Text that must never reach an operator of Fire & Rescue alone."""
    return [estate["health"].agent_id, estate["health2"].agent_id, "Health Trust", "Ward 9",
            "health-pc"]


def _assert_fire_only(answer, estate, what: str) -> None:
    text = json.dumps(answer)
    for secret in _out_of_scope(estate):
        assert secret not in text, f"{what}: {secret!r} of another agency leaked: {text[:300]}"


def test_every_api_op_and_every_paging_path_keeps_to_the_operators_agencies(module_hub,
                                                                             estate):
    """Alice (Fire & Rescue) asks for everything, every way, with Health's data present:
    the rows returned are Fire's, all of them and only them."""
    fire_ids = sorted((estate["fire"].agent_id, estate["fire2"].agent_id))
    health_ids = sorted((estate["health"].agent_id, estate["health2"].agent_id))
    every_id = sorted(fire_ids + health_ids)
    answers: dict[str, object] = {}

    async def body(conn: HubConnection):
        async def ask(what: str, op: str, **params):
            answers[what] = await conn.request(op, **params)
            return answers[what]

        async def refused(what: str, op: str, **params) -> None:
            with pytest.raises(ApiFailure) as err:
                await conn.request(op, **params)
            # The message names only what was asked; whether it exists is not said.
            assert err.value.code == "not_found", what

        await ask("columns", "columns")
        summary = await ask("summary", "summary")
        assert set(summary["agencies"]) == {"Fire & Rescue"}
        assert summary["totals"]["total"] == 2
        hosts = await ask("hosts", "hosts")
        assert sorted(r[0] for r in hosts["rows"]) == fire_ids and hosts["total"] == 2
        for key in ("hostname", "agent_id", "agency", "status"):
            for reverse in (False, True):
                got = await ask(f"hosts sort {key} {reverse}", "hosts", sort=key,
                                reverse=reverse)
                assert sorted(r[0] for r in got["rows"]) == fire_ids, (key, reverse)
        for text in ("agency:health", "health", "ward", "shared-pc"):
            got = await ask(f"hosts filter {text}", "hosts", filter=text)
            assert {r[0] for r in got["rows"]} <= set(fire_ids), text
        # Offset paging, one row a page, beyond the end.
        paged = []
        for offset in range(5):
            got = await ask(f"hosts offset {offset}", "hosts", sort="agent_id", offset=offset,
                            limit=1)
            assert got["total"] == 2
            paged += [r[0] for r in got["rows"]]
        assert paged == fire_ids
        # Keyset paging (`after`, the console's snapshot), from the start and from every id,
        # Health's included: each page holds Fire's hosts after that id and nothing else.
        for limit in (1, 2, 1000):
            after, seen = "", []
            for _ in range(10):
                got = await ask(f"hosts after {after!r} limit {limit}", "hosts",
                                sort="agent_id", after=after, limit=limit)
                assert got["total"] == 2
                if not got["rows"]:
                    break
                seen += [r[0] for r in got["rows"]]
                after = got["rows"][-1][0]
            assert seen == fire_ids, (limit, seen)
        for start in every_id:
            got = await ask(f"hosts after {start}", "hosts", sort="agent_id", after=start)
            assert [r[0] for r in got["rows"]] == [i for i in fire_ids if i > start], start
        for fire_id in fire_ids:
            assert (await ask(f"host {fire_id}", "host", agent_id=fire_id))["agency"] == \
                "Fire & Rescue"
            assert await ask(f"reports {fire_id}", "reports", agent_id=fire_id)
        for health_id in health_ids:
            await refused(f"host {health_id}", "host", agent_id=health_id)
            await refused(f"reports {health_id}", "reports", agent_id=health_id)
            await refused(f"resolve {health_id}", "resolve", host=health_id)
            got = await ask(f"changes host {health_id}", "changes", host=health_id)
            assert got == [], health_id
        await refused("resolve health-pc", "resolve", host="health-pc")
        # A hostname in both agencies names Fire's host alone: not ambiguous, not Health's.
        shared = await ask("resolve shared-pc", "resolve", host="shared-pc")
        assert shared["agent_id"] == estate["fire2"].agent_id
        changes = await ask("changes", "changes")
        assert {c["agent_id"] for c in changes} == set(fire_ids)
        got = await ask("changes shared-pc", "changes", host="shared-pc")
        assert {c["agent_id"] for c in got} == {estate["fire2"].agent_id}
        got = await ask("changes since", "changes", since="2000-01-01", limit=100_000)
        assert {c["agent_id"] for c in got} == set(fire_ids)

    asyncio.run(_session(module_hub, estate, "alice", body))
    for what, answer in answers.items():
        _assert_fire_only(answer, estate, what)


def test_bad_requests_get_codes_and_the_channel_stays_usable(module_hub, estate):
    async def body(conn: HubConnection):
        proc = conn._api
        conn._reader.cancel()  # read the raw answers here instead
        await asyncio.sleep(0)
        answers = []
        for line in ("not json", "[1, 2]", '{"id": 1, "op": "drop_tables"}',
                     '{"id": 2, "op": "hosts", "limit": -1}',
                     '{"id": 3, "op": "hosts", "filter": "colour:red"}',
                     '{"id": 4, "op": "hosts", "bogus": 1}', '{"op": "summary"}',
                     '{"id": 5, "op": "hosts", "filter": "x' + "y" * 70000 + '"}'):
            proc.stdin.write(line + "\n")
        # Our own request ids are numbers; these answers come first, in order.
        for _ in range(8):
            answers.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)))
        conn._reader = asyncio.ensure_future(conn._read_answers())
        still = await conn.request("summary")
        return answers, still

    answers, still = asyncio.run(_session(module_hub, estate, "alice", body))
    codes = [a["error"]["code"] for a in answers]
    assert codes == ["bad_json", "bad_request", "unknown_op", "bad_request", "bad_filter",
                     "bad_request", "bad_request", "line_too_long"]
    assert "unknown field 'colour'" in answers[4]["error"]["message"]
    assert still["totals"]["total"] >= 1


def test_wrong_key_and_pinning(module_hub, estate):
    conn = HubConnection(module_hub.address, "alice", estate["keys"]["audrey"],
                         module_hub.fingerprint)
    with pytest.raises(HubUnreachable, match="refused the login"):
        asyncio.run(conn.connect())
    impostor = HubConnection(module_hub.address, "alice", estate["keys"]["alice"],
                             "SHA256:" + "A" * 43)
    with pytest.raises(HubUnreachable, match="pinned"):
        asyncio.run(impostor.connect())


def test_operator_cannot_run_agent_commands(module_hub, estate):
    async def body(conn: HubConnection):
        # No input: the hub refuses at the command and may close before any would arrive.
        result = await conn.conn.run("estate-report v1")
        return result.exit_status, json.loads(result.stdout)

    status, doc = asyncio.run(_session(module_hub, estate, "audrey", body))
    assert (status, doc["code"]) == (77, "forbidden")
