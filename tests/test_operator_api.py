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
    """Two agencies with one host each, and operators scoped to one or all of them."""
    folder = tmp_path_factory.mktemp("operators")
    fire = Agent(module_hub, folder / "fire", module_hub.token("Fire & Rescue", "Station 1"))
    health = Agent(module_hub, folder / "health", module_hub.token("Health Trust", "Ward 9"))
    for agent, name in ((fire, "fire-pc"), (health, "health-pc")):
        status, _ = agent.send(make_report(live_report, agent.agent_id,
                                           system__hostname=name))
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
    return {"fire": fire, "health": health, "keys": keys}


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

        task = asyncio.ensure_future(follow())
        await asyncio.sleep(0.5)
        for agent in (health, fire):
            await asyncio.to_thread(agent.send, make_report(live_report, agent.agent_id,
                                                            system__hostname="renamed"))
        for _ in range(50):
            if any(e.get("type") == "host" for e in events):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
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
    assert [r[2] for r in hosts["rows"]] == ["Health Trust"]


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
        result = await conn.conn.run("estate-report v1", input="{}")
        return result.exit_status, json.loads(result.stdout)

    status, doc = asyncio.run(_session(module_hub, estate, "audrey", body))
    assert (status, doc["code"]) == (77, "forbidden")
