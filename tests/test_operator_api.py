"""The operator API and watch over real SSH: scope enforced on the hub, bad requests answered."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from estate.console._client import ApiFailure, HubConnection, HubUnreachable
from tests.harness import Agent, add_operator, make_report
from tests.stores import open_test_store


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
        add_operator(module_hub, folder, name, role, agencies)
        keys[name] = folder / name
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


# --- the same promises in-process: OperatorApi on a real SQLite store ------------------------
# Fast enough for `make mutate` (tests/mutate.py), which runs them against every mutant of
# inventory/hub/_api.py and the store's scoped reads.

def _store_estate(tmp_path, report):
    """A real store: Fire's two hosts (one named like Health's) and Health's two, each with
    two reports a day apart, the second changing the memory (one change event each)."""
    from datetime import timedelta

    from estate.inventory.store import Incoming, utcnow

    store = open_test_store(tmp_path)
    ids: dict[str, str] = {}
    now = utcnow()
    for n, (agency, name) in enumerate((("Fire & Rescue", "fire-pc"),
                                        ("Fire & Rescue", "shared-pc"),
                                        ("Health Trust", "health-pc"),
                                        ("Health Trust", "shared-pc"))):
        token_id, secret, _ = store.create_token(agency, "Site", 1, timedelta(hours=1), "t")
        agent_id = store.enrol(token_id, secret, f"ssh-ed25519 K{n}", f"SHA256:K{n}",
                               name)["agent_id"]
        ids[f"{agency.split()[0].lower()}{n % 2}"] = agent_id
        for seq, memory in ((1, 2**30), (2, 2**31)):
            r = make_report(report, agent_id, system__hostname=name,
                            hardware__memory__total_bytes=memory)
            r["report_id"] = f"{agent_id}:1:{seq}"
            at = now - timedelta(days=2 - seq)
            r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            body = json.dumps(r).encode()
            assert store.store_reports([Incoming(agent_id, r, body, at)]) == ["stored"]
    return store, ids


def _ask(api, op: str, **params):
    answer = api.handle(json.dumps({"id": 7, "op": op, **params}).encode())
    assert answer["id"] == 7
    return answer


def test_the_api_keeps_to_the_operators_agencies_in_process(tmp_path, report):
    """Alice (Fire & Rescue) gets exactly Fire's rows from every op and paging path; what
    she may not see is `not_found`, audited as `scope_denied` or `not_found`."""
    from estate.inventory.hub._api import OperatorApi

    store, ids = _store_estate(tmp_path, report)
    fire = sorted((ids["fire0"], ids["fire1"]))
    health = sorted((ids["health0"], ids["health1"]))
    audited: list[tuple] = []

    class Audit:
        def record(self, *args):
            audited.append(args)

    alice = OperatorApi(store, {"name": "alice", "role": "staff",
                                "agencies": ["Fire & Rescue"]}, Audit(), "10.0.0.1")
    ok = lambda op, **p: _ask(alice, op, **p)["result"]  # noqa: E731
    summary = ok("summary")
    assert summary["operator"] == "alice"
    assert summary["agencies_in_scope"] == ["Fire & Rescue"]
    assert summary["totals"]["total"] == 2 and list(summary["agencies"]) == ["Fire & Rescue"]
    assert summary["agencies"]["Fire & Rescue"]["counts"]["total"] == 2
    assert summary["agencies"]["Fire & Rescue"]["sites"]["Site"]["total"] == 2
    columns = ok("columns")
    assert [c["key"] for c in columns] == ok("hosts")["columns"]
    assert {"key", "title", "description", "numeric"} == set(columns[0])
    hosts = ok("hosts")
    assert hosts["total"] == 2
    assert [r[1] for r in hosts["rows"]] == ["fire-pc", "shared-pc"]  # by hostname
    assert [r[1] for r in ok("hosts", reverse=True)["rows"]] == ["shared-pc", "fire-pc"]
    assert [r[0] for r in ok("hosts", sort="agent_id")["rows"]] == fire
    assert [r[0] for r in ok("hosts", sort="agent_id", reverse=True)["rows"]] == fire[::-1]
    assert [r[0] for r in ok("hosts", sort="agent_id", offset=1)["rows"]] == fire[1:]
    assert [r[0] for r in ok("hosts", sort="agent_id", limit=1)["rows"]] == fire[:1]
    assert ok("hosts", sort="agent_id", offset=1, limit=1)["total"] == 2
    assert [r[1] for r in ok("hosts", filter="shared")["rows"]] == ["shared-pc"]
    assert ok("hosts", filter="health")["rows"] == []
    for after, want in (("", fire), (fire[0], fire[1:]), (fire[1], []),
                        (health[0], [i for i in fire if i > health[0]])):
        page = ok("hosts", sort="agent_id", after=after)
        assert [r[0] for r in page["rows"]] == want and page["total"] == 2, after
    assert [r[0] for r in ok("hosts", sort="agent_id", after="", limit=1)["rows"]] == fire[:1]
    for bad in ({"filter": "x"}, {"sort": "hostname"}, {"reverse": True}, {"offset": 1}):
        answer = _ask(alice, "hosts", after="", **{"sort": "agent_id", **bad})
        assert answer["error"]["code"] == "bad_request", bad
    assert _ask(alice, "hosts", filter="memory:>>")["error"]["code"] == "bad_filter"

    for agent_id in fire:
        detail = ok("host", agent_id=agent_id)
        assert detail["agent_id"] == agent_id and detail["agency"] == "Fire & Rescue"
        assert detail["report"]["hardware"]["memory"]["total_bytes"] == 2**31
        reports = ok("reports", agent_id=agent_id)
        assert [r["report_id"] for r in reports] == [f"{agent_id}:1:2", f"{agent_id}:1:1"]
        assert [r["report_id"] for r in ok("reports", agent_id=agent_id, limit=1)] == \
            [f"{agent_id}:1:2"]
    reads = [r for r in store.audit_log(since=None) if r["action"] == "host_read"]
    assert sorted((r["actor"], r["target"]) for r in reads) == [("operator:alice", i)
                                                                for i in fire]

    for agent_id in health:
        for op, key in (("host", "agent_id"), ("reports", "agent_id"), ("resolve", "host")):
            answer = _ask(alice, op, **{key: agent_id})
            assert answer == {"id": 7, "ok": False, "error": {
                "code": "not_found", "message": f"no host {agent_id!r} in your agencies"}}
        assert ok("changes", host=agent_id) == []
    assert [a[2] for a in audited] == ["scope_denied"] * 6
    assert audited[0] == ("10.0.0.1", "operator:alice", "scope_denied", health[0],
                          {"op": "host"})
    assert _ask(alice, "host", agent_id="ag-nowhere")["error"]["code"] == "not_found"
    assert _ask(alice, "resolve", host="nowhere")["error"]["code"] == "not_found"
    assert [a[2:4] for a in audited[-2:]] == [("not_found", "ag-nowhere"),
                                              ("not_found", "nowhere")]
    assert audited[-1][4] == {"op": "resolve"}

    assert ok("resolve", host="SHARED-PC") == {
        "agent_id": ids["fire1"], "hostname": "shared-pc", "agency": "Fire & Rescue",
        "site": "Site", "remote": ok("resolve", host=ids["fire1"])["remote"]}
    changes = ok("changes")
    assert sorted(c["agent_id"] for c in changes) == fire
    assert all(c["kind"] and c["report_id"].endswith(":1:2") for c in changes)
    assert [c["agent_id"] for c in ok("changes", host="shared-pc")] == [ids["fire1"]]
    assert [c["agent_id"] for c in ok("changes", host=ids["fire0"])] == [ids["fire0"]]
    assert len(ok("changes", limit=1)) == 1
    assert ok("changes", since="2999-01-01") == []
    assert len(ok("changes", since="2000-01-01")) == 2
    assert _ask(alice, "changes", since="yesterday")["error"]["code"] == "bad_request"

    admin = OperatorApi(store, {"name": "root", "role": "admin", "agencies": None})
    assert _ask(admin, "hosts")["result"]["total"] == 4
    assert sorted(r[0] for r in _ask(admin, "hosts", sort="agent_id", after="")["result"]
                  ["rows"]) == sorted(fire + health)
    shared = _ask(admin, "resolve", host="shared-pc")["error"]
    assert shared["code"] == "ambiguous" and "matches 2 hosts" in shared["message"]
    assert ", ".join(sorted((ids["fire1"], ids["health1"]))) in shared["message"]
    nobody = OperatorApi(store, {"name": "new", "role": "staff", "agencies": []})
    assert _ask(nobody, "hosts")["result"] == {"columns": ok("hosts")["columns"], "total": 0,
                                               "rows": []}
    assert _ask(nobody, "summary")["result"]["totals"]["total"] == 0
    store.close()


def test_api_requests_are_checked_and_answers_bounded_in_process(tmp_path, report):
    """Bad lines get their code and the request's id (when it has a usable one); an answer
    over the limit is replaced by `too_large`; a bug is `internal`, audited, and the next
    request is answered."""
    from estate.inventory.hub._api import OperatorApi

    store, _ = _store_estate(tmp_path, report)
    api = OperatorApi(store, {"name": "alice", "role": "staff",
                              "agencies": ["Fire & Rescue"]})
    for line, code, request_id in (
            (b"\xff", "bad_json", None), (b"not json", "bad_json", None),
            (b"[1]", "bad_request", None), (b'{"op": "hosts"}', "bad_request", None),
            (b'{"id": true, "op": "hosts"}', "bad_request", None),
            (b'{"id": 1.5, "op": "hosts"}', "bad_request", None),
            (json.dumps({"id": "x" * 65, "op": "hosts"}).encode(), "bad_request", None),
            (b'{"id": "a", "op": "nope"}', "unknown_op", "a"),
            (b'{"id": 3, "op": "hosts", "limit": 0}', "bad_request", 3)):
        answer = api.handle(line)
        assert answer["ok"] is False and answer["id"] == request_id, line
        assert answer["error"]["code"] == code, (line, answer)
    assert api.handle(json.dumps({"id": "x" * 64, "op": "columns"}).encode())["ok"]
    assert "columns, summary, hosts, host, changes, reports, resolve" in \
        api.handle(b'{"id": 1, "op": "x"}')["error"]["message"]

    data, code, request_id = api.answer(b'{"id": 9, "op": "columns"}')
    assert (code, request_id) == (None, 9) and data.endswith(b"\n")
    assert json.loads(data)["result"] == api.handle(b'{"id": 9, "op": "columns"}')["result"]
    assert api.answer(b'{"id": 9, "op": "x"}')[1:] == ("unknown_op", 9)
    small = OperatorApi(store, {"name": "alice", "role": "staff",
                                "agencies": ["Fire & Rescue"]}, max_answer=300)
    data, code, request_id = small.answer(b'{"id": "big", "op": "hosts"}')
    assert (code, request_id) == ("too_large", "big") and len(data) <= 300
    assert json.loads(data)["error"]["message"].startswith("the answer is over 300 bytes")
    assert small.handle(b'{"id": 2, "op": "changes"}')["error"]["code"] == "too_large"
    assert small.answer(b'{"id": 1, "op": "host", "agent_id": "x"}')[1] == "not_found"

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    api.store.host_count = broken
    answer = api.handle(b'{"id": 4, "op": "hosts", "sort": "agent_id", "after": ""}')
    assert answer["id"] == 4 and answer["error"]["code"] == "internal"
    (row,) = [r for r in store.audit_log(since=None) if r["action"] == "api_internal"]
    assert row["actor"] == "operator:alice"
    assert json.loads(row["detail"]) == {"op": "hosts", "error": "RuntimeError"}
    assert api.handle(b'{"id": 5, "op": "hosts"}')["ok"]
    store.close()


def test_every_parameter_refusal_names_its_bound_in_process(tmp_path, report):
    """Each op's parameters, refused with the bound the hub applies (the same text for every
    client), and the envelope's own refusals, whole."""
    from estate.inventory.hub._api import OperatorApi

    store, ids = _store_estate(tmp_path, report)
    api = OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]})

    def refusal(line: bytes):
        answer = api.handle(line)
        assert answer["ok"] is False, (line, answer)
        return answer["id"], answer["error"]["code"], answer["error"]["message"]

    def message(op, **params):
        request_id, code, text = refusal(json.dumps({"id": 1, "op": op, **params}).encode())
        assert (request_id, code) == (1, "bad_request"), text
        return text

    text, number = "t" * 2000, "x"
    assert message("hosts", filter=text) == "filter: expected a string of at most 1000"
    assert message("hosts", sort=1) == "sort: expected a string of at most 256"
    assert message("hosts", offset=number) == \
        "offset: expected a whole number from 0 to 10000000"
    assert message("hosts", after=text) == "after: expected a string of at most 64"
    assert message("hosts", limit=number) == "limit: expected a whole number from 1 to 100000"
    assert message("hosts", reverse=1) == "reverse: expected true or false"
    assert message("hosts", sort="agent_id", after="", reverse=True) == \
        "after: only with sort agent_id, no filter, no offset"
    assert message("host", agent_id=text) == "agent_id: expected a string of at most 64"
    assert message("host") == "agent_id: required for host"
    assert message("changes", host=text) == "host: expected a string of at most 255"
    assert message("changes", since=text) == "since: expected a string of at most 40"
    assert message("changes", limit=number) == \
        "limit: expected a whole number from 1 to 100000"
    assert message("changes", since="x" * 40) == \
        "since: expected a date like 2026-01-31 or an ISO time"
    assert message("reports", agent_id=text) == "agent_id: expected a string of at most 64"
    assert message("reports", agent_id="a", limit=number) == \
        "limit: expected a whole number from 1 to 500"
    assert message("reports") == "agent_id: required for reports"
    assert message("resolve", host=text) == "host: expected a string of at most 255"
    assert message("resolve") == "host: required for resolve"
    assert message("incidents", state="closed") == \
        "state: expected one of open, recent, all"
    assert message("incidents", limit=1001) == "limit: expected a whole number from 1 to 1000"
    assert message("incidents", site=text) == "site: expected a string of at most 255"
    assert message("incident") == "incident_id: required (an incident's id)"
    assert message("incident", incident_id="1") == \
        f"incident_id: expected a whole number from 1 to {2**63 - 1}"
    assert message("incident_silence", incident_id=1, minutes=10081) == \
        "minutes: expected a whole number from 1 to 10080"
    assert message("incident_silence", incident_id=1) == \
        "minutes: required for incident_silence (1 to 10080)"
    for op in ("columns", "summary"):
        assert message(op, extra=1) == f"unknown parameter 'extra' for {op}"
    # The bounds themselves are allowed.
    ok = lambda op, **p: _ask(api, op, **p)["ok"]  # noqa: E731
    assert ok("hosts", filter="t" * 1000) and ok("hosts", offset=10**7, limit=100_000)
    assert ok("hosts", sort="agent_id", after="a" * 64)
    assert ok("changes", host="h" * 255, since="2026-01-31T00:00:00.000000+00:00:00.000000"[:40],
              limit=100_000)
    assert ok("reports", agent_id=ids["fire0"], limit=500)
    assert _ask(api, "host", agent_id="a" * 64)["error"]["code"] == "not_found"
    assert _ask(api, "resolve", host="h" * 255)["error"]["code"] == "not_found"

    assert refusal(b"\xff") == (None, "bad_json", "each line must be one JSON object")
    assert refusal(b"[" * 5000) == (None, "bad_json", "each line must be one JSON object")
    assert refusal(b"[]") == (None, "bad_request", "a request is a JSON object")
    assert refusal(b'{"id": "\\ud800", "op": "hosts"}') == (
        None, "bad_request", "id: expected a string or number (64 chars max)")
    assert refusal(json.dumps({"id": 10**63, "op": "x"}).encode())[:2] == (10**63,
                                                                             "unknown_op")
    assert refusal(json.dumps({"id": 10**64, "op": "x"}).encode())[:2] == (None, "bad_request")
    assert refusal(b'{"id": 2}') == (
        2, "unknown_op", "op: expected one of columns, summary, hosts, host, changes, "
                         "reports, resolve, overview, incidents, incident, incident_ack, "
                         "incident_silence")
    small = OperatorApi(store, {"name": "alice", "role": "staff",
                                "agencies": ["Fire & Rescue"]}, max_answer=200)
    data = small.answer(b'{"id": "big", "op": "hosts"}')[0]
    assert json.loads(data) == {"id": "big", "ok": False, "error": {
        "code": "too_large", "message": "the answer is over 200 bytes; lower limit, or page "
                                        "(hosts: after; changes: since or host)"}}
    # Exactly at the limit is an answer; the bound is on the encoded line, newline included.
    line = b'{"id": 1, "op": "reports", "agent_id": "%s", "limit": 1}' % ids["fire0"].encode()
    exact, _, _ = api.answer(line)
    assert OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]},
                       max_answer=len(exact)).answer(line) == (exact, None, 1)
    assert OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]},
                       max_answer=len(exact) - 1).answer(line)[1] == "too_large"
    # Non-ASCII text is sent as UTF-8, not escaped: what is measured is what is sent.
    assert b"\\u" not in api.answer(b'{"id": 1, "op": "hosts", "filter": "\xc3\xa9"}')[0]
    store.close()


def test_an_internal_error_is_logged_and_audited_with_what_failed_in_process(
        tmp_path, report, caplog):
    """A bug in one request: logged with the op and operator, audited through the coalescer
    (or the store), answered `internal`; a failing audit is logged too, and the answer stands."""
    import logging

    from estate.inventory.hub._api import OperatorApi

    store, _ = _store_estate(tmp_path, report)
    recorded: list[tuple] = []

    class Audit:
        fail = False

        def record(self, *args):
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
            recorded.append(args)

    audit = Audit()
    api = OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]},
                      audit, "10.0.0.9")

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    store.summary = broken
    internal = {"id": 3, "ok": False, "error": {
        "code": "internal", "message": "the hub failed to answer this request; it is logged, "
                                       "and other requests still work"}}
    with caplog.at_level(logging.ERROR, logger="estate.hub"):
        assert api.handle(b'{"id": 3, "op": "summary"}') == internal
    assert recorded == [("10.0.0.9", "operator:alice", "api_internal", None,
                         {"op": "summary", "error": "KeyError"})]
    assert [r.getMessage() for r in caplog.records] == \
        ['API request "summary" from operator alice failed']
    assert caplog.records[0].exc_info is not None  # with its trace, in the hub's log only
    assert not [r for r in store.audit_log(since=None) if r["action"] == "api_internal"]
    caplog.clear()
    audit.fail = True
    with caplog.at_level(logging.ERROR, logger="estate.hub"):
        assert api.handle(b'{"id": 3, "op": "summary"}') == internal
    assert [r.getMessage() for r in caplog.records] == [
        'API request "summary" from operator alice failed',
        "auditing a failed API request failed"]
    assert caplog.records[1].exc_info is not None
    store.close()


def test_hosts_with_no_value_sort_last_and_first_reversed_in_process(tmp_path, report):
    from estate.inventory.hub._api import OperatorApi
    from estate.inventory.store import Incoming, utcnow

    store, ids = _store_estate(tmp_path, report)
    for key, serial in (("fire0", "B"), ("fire1", None)):
        r = make_report(report, ids[key], hardware__serial=serial)
        assert store.store_reports([Incoming(ids[key], r, json.dumps(r).encode(),
                                             utcnow())]) == ["stored"]
    api = OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]})
    rows = lambda **p: [r[0] for r in _ask(api, "hosts", sort="serial", **p)["result"]["rows"]]  # noqa: E731
    assert rows() == [ids["fire0"], ids["fire1"]]  # no serial: last
    assert rows(reverse=True) == [ids["fire1"], ids["fire0"]]  # and first, reversed
    # Sorted by the column asked for, not by the rows' own order (agent ids are random): the
    # serials run against the ids.
    first, second = sorted((ids["fire0"], ids["fire1"]))
    for agent_id, serial in ((first, "Z"), (second, "A")):
        r = make_report(report, agent_id, hardware__serial=serial)
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                             utcnow())]) == ["stored"]
    assert rows() == [second, first]
    assert rows(reverse=True) == [first, second]
    store.close()


def test_a_probe_out_of_scope_is_audited_as_its_op_reads_the_name_in_process(tmp_path, report):
    """`host` and `reports` take a host id, `resolve` an id or a hostname: the audit row says
    whether what the op would read exists elsewhere, and which op asked; with no source given,
    the row's source is "?"."""
    from estate.inventory.hub._api import OperatorApi

    store, ids = _store_estate(tmp_path, report)
    audited: list[tuple] = []

    class Audit:
        def record(self, *args):
            audited.append(args)

    alice = OperatorApi(store, {"name": "alice", "role": "staff",
                                "agencies": ["Fire & Rescue"]}, Audit())
    for op, key, name in (("host", "agent_id", "health-pc"), ("resolve", "host", "health-pc"),
                          ("reports", "agent_id", ids["health0"]),
                          ("reports", "agent_id", "health-pc")):
        assert _ask(alice, op, **{key: name})["error"]["code"] == "not_found", (op, name)
    assert audited == [
        ("?", "operator:alice", "not_found", "health-pc", {"op": "host"}),  # not an id
        ("?", "operator:alice", "scope_denied", "health-pc", {"op": "resolve"}),
        ("?", "operator:alice", "scope_denied", ids["health0"], {"op": "reports"}),
        ("?", "operator:alice", "not_found", "health-pc", {"op": "reports"})]
    store.close()


def test_answers_are_compact_utf8_lines_whole_in_process(tmp_path, report):
    """The line sent is compact JSON in UTF-8, refusals and `too_large` alike, and a request
    whose answer is too large keeps its id; a hosts page names its columns; a refused sort or
    filter says why."""
    from estate.inventory.hostlist import COLUMN_KEYS
    from estate.inventory.hub._api import OperatorApi

    store, _ = _store_estate(tmp_path, report)
    alice = {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]}
    api = OperatorApi(store, alice)
    assert api.answer('{"id": 1, "op": "host", "agent_id": "é"}'.encode()) == (
        '{"id":1,"ok":false,"error":{"code":"not_found","message":"no host \'é\' in your '
        'agencies"}}\n'.encode(), "not_found", 1)
    small = OperatorApi(store, alice, max_answer=200)
    too_large = (b'{"id":"big","ok":false,"error":{"code":"too_large","message":"the answer '
                 b'is over 200 bytes; lower limit, or page (hosts: after; changes: since or '
                 b'host)"}}\n')
    assert small.answer(b'{"id": "big", "op": "hosts"}') == (too_large, "too_large", "big")
    # The store refuses a long list of changes before the answer is built: the same answer.
    assert small.answer(b'{"id": "big", "op": "changes"}') == (too_large, "too_large", "big")

    page = _ask(api, "hosts", sort="agent_id", after="")["result"]
    assert page["columns"] == list(COLUMN_KEYS) and page["total"] == len(page["rows"]) == 2
    assert _ask(api, "hosts", sort="nope")["error"] == {
        "code": "bad_request", "message": f"sort: expected one of {', '.join(COLUMN_KEYS)}"}
    refused = _ask(api, "hosts", filter="memory:>>")["error"]
    assert refused["code"] == "bad_filter"
    assert refused["message"].startswith("'memory:>>': unknown field 'memory' (fields: ")
    store.close()


def test_changes_and_reports_answer_their_default_limits_in_process(tmp_path, report):
    """Without `limit`, `changes` answers the newest 1,000 (of more) and `reports` a host's
    newest 50 (of more)."""
    from estate.inventory.hub._api import OperatorApi
    from estate.inventory.store import Incoming, utcnow

    store, ids = _store_estate(tmp_path, report)
    api = OperatorApi(store, {"name": "alice", "role": "staff", "agencies": ["Fire & Rescue"]})
    # Each report after the first swaps 200 disks for 200 others: 200 change events (the
    # most one report records), so 5 of them make 1,000, beside the estate's 2.
    disks = [[{"name": f"d{n}-{i}", "size_bytes": 2**30} for i in range(200)]
             for n in range(6)]
    batch = []
    for n in range(6):
        r = make_report(report, ids["fire0"], hardware__disks=disks[n])
        batch.append(Incoming(ids["fire0"], r, json.dumps(r).encode(), utcnow()))
    for _ in range(49):  # fire1: 51 reports in all
        r = make_report(report, ids["fire1"])
        batch.append(Incoming(ids["fire1"], r, json.dumps(r).encode(), utcnow()))
    store.store_reports(batch)
    everything = _ask(api, "changes", limit=100_000)["result"]
    assert len(everything) > 1000
    assert _ask(api, "changes")["result"] == everything[-1000:]
    reports = _ask(api, "reports", agent_id=ids["fire1"], limit=500)["result"]
    assert len(reports) == 51
    assert _ask(api, "reports", agent_id=ids["fire1"])["result"] == reports[:50]
    store.close()


def test_hosts_answers_at_most_100000_rows_by_default_in_process():
    """An unpaged `hosts` answer holds 100,000 rows at most, by default too; `total` counts
    every match. A stand-in store: a real one with 100,001 hosts takes minutes to fill."""
    from estate.inventory.hostlist import COLUMN_KEYS
    from estate.inventory.hub._api import OperatorApi

    class Store:
        def __init__(self) -> None:
            self.rows = [(f"ag-{n:06}", f"pc-{n:06}", *[None] * (len(COLUMN_KEYS) - 2))
                         for n in range(100_001)]

        def host_rows(self, scope, agent_ids=None, page=None):
            return self.rows[:page[1]] if page else list(self.rows)

        def host_count(self, scope):
            return len(self.rows)

    api = OperatorApi(Store(), {"name": "root", "role": "admin", "agencies": None})
    for params in ({}, {"sort": "agent_id", "after": ""}):
        answer = _ask(api, "hosts", **params)["result"]
        assert answer["total"] == 100_001, params
        assert [r[0] for r in answer["rows"]] == [f"ag-{n:06}" for n in range(100_000)], params
