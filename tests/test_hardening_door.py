"""The hub's front door: per-source budgets before login, a handshake deadline, early drop.

Unit tests drive `estate.inventory.hub._door.Door` with an injected clock and coin; the end-to-end
tests run a real hub and attack it from other loopback addresses (the whole of 127.0.0.0/8 is
loopback on Linux) while a legitimate agent logs in from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import asyncssh
import pytest

from estate.inventory.hub._door import (
    EARLY_DROP,
    MAX_KNOWN_SOURCES,
    PENALISED,
    RATE_LIMITED,
    SOURCE_BUSY,
    STARTUPS_FULL,
    Door,
    DoorLimits,
    source_of,
)
from tests.harness import Agent, HubProcess, make_report, wait_for

# The hub's default per-source rate (the harness lifts it for everyone else's tests).
DEFAULT_RATE = ("--connection-rate", "10", "--connection-burst", "10")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _door(coin: float = 0.99, **limits) -> tuple[Door, Clock]:
    clock = Clock()
    return Door(DoorLimits(**limits), clock=clock, coin=lambda: coin), clock


# --- the pure limiter ------------------------------------------------------------------

def test_rate_limit_is_a_token_bucket_per_source():
    door, clock = _door(rate_per_s=10, burst=5, per_source=100)
    for _ in range(5):
        assert door.admit("10.0.0.1") is None
        door.release("10.0.0.1")
    assert door.admit("10.0.0.1") == RATE_LIMITED
    assert door.admit("10.0.0.2") is None, "another address has its own bucket"
    clock.now += 0.1  # one token back at 10 a second
    assert door.admit("10.0.0.1") is None
    assert door.admit("10.0.0.1") == RATE_LIMITED
    clock.now += 60  # refills up to the burst, no further
    assert [door.admit("10.0.0.1") for _ in range(6)].count(None) == 5


def test_refused_attempts_cost_no_token():
    door, _ = _door(rate_per_s=1, burst=2, per_source=1)
    assert door.admit("a") is None
    assert door.admit("a") == SOURCE_BUSY
    door.release("a")
    assert door.admit("a") is None, "the refused attempt did not spend the second token"


def test_pending_per_source_cap_and_release():
    door, _ = _door(rate_per_s=1000, burst=1000, per_source=3, drop_start=100)
    assert [door.admit("a") for _ in range(4)] == [None, None, None, SOURCE_BUSY]
    assert door.admit("b") is None
    assert (door.pending("a"), door.pending_total) == (3, 4)
    door.release("a")
    assert door.admit("a") is None
    for _ in range(3):
        door.release("a")
    door.release("a")  # more releases than admissions change nothing
    assert (door.pending("a"), door.pending_total) == (0, 1)


def test_early_drop_rises_linearly_to_the_cap():
    door, _ = _door(rate_per_s=1000, burst=1000, per_source=1000, drop_start=10,
                    drop_rate=0.3, full=20)
    for _ in range(10):
        assert door.admit("a") is None
    assert door.drop_probability() == pytest.approx(0.3)
    for _ in range(5):
        assert door.admit("a") is None  # the coin says 0.99: past the threshold, still in
    assert door.drop_probability() == pytest.approx(0.3 + 0.7 * 5 / 10)
    door._coin = lambda: 0.5
    assert door.admit("a") == EARLY_DROP  # 0.5 < 0.65
    door._coin = lambda: 0.99
    for _ in range(5):
        assert door.admit("a") is None
    assert door.admit("a") == STARTUPS_FULL
    assert door.drop_probability() == 1.0


def test_no_early_drop_below_the_threshold():
    door, _ = _door(coin=0.0, rate_per_s=1000, burst=1000, per_source=1000, drop_start=10)
    assert all(door.admit("a") is None for _ in range(10))
    assert door.admit("a") == EARLY_DROP


def test_sources_are_addresses_and_ipv6_slash_64s():
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not-an-ip") == "not-an-ip"


def test_memory_follows_active_sources_only():
    door, clock = _door(rate_per_s=10, burst=10)
    for i in range(20_000):
        assert door.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") is None
        door.release(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        clock.now += 0.01
    assert door.tracked_sources() < 5000, "quiet sources' full buckets are forgotten"


def test_refusal_log_lines_are_folded_per_source_and_code():
    door, clock = _door()
    assert door.refusal_to_log("a", RATE_LIMITED) == 0
    assert door.refusal_to_log("a", RATE_LIMITED) is None
    assert door.refusal_to_log("a", SOURCE_BUSY) == 0
    assert door.refusal_to_log("b", RATE_LIMITED) == 0
    for _ in range(10):
        door.refusal_to_log("a", RATE_LIMITED)
    clock.now += 61
    assert door.refusal_to_log("a", RATE_LIMITED) == 11


def test_limits_are_checked():
    with pytest.raises(ValueError):
        DoorLimits(burst=0)
    with pytest.raises(ValueError):
        DoorLimits(drop_rate=1.5)


def test_a_source_whose_connections_keep_failing_is_penalised_doubling_to_a_cap():
    door, clock = _door(rate_per_s=1000, burst=1000, penalty_after=3, penalty_min_s=30,
                        penalty_max_s=100)

    def fail_times(n: int) -> list[bool]:
        out = []
        for _ in range(n):
            assert door.admit("a") is None
            out.append(door.failed("a"))
            door.release("a")
        return out

    assert fail_times(4) == [False, False, False, True], "more than 3 in a minute"
    assert door.admit("a") == PENALISED
    assert door.admit("b") is None, "other sources are not penalised"
    clock.now += 29
    assert door.admit("a") == PENALISED
    clock.now += 1.5
    assert fail_times(4)[-1] is True
    clock.now += 59
    assert door.admit("a") == PENALISED, "a repeat doubles the penalty: 60 s"
    clock.now += 1.5
    fail_times(4)
    clock.now += 99
    assert door.admit("a") == PENALISED, "then 100 s, the cap"
    clock.now += 1.5
    assert door.admit("a") is None
    door.release("a")
    # Failures spread wider than the window never add up to a penalty.
    door2, clock2 = _door(rate_per_s=1000, burst=1000, penalty_after=3)
    for _ in range(10):
        assert door2.admit("c") is None
        assert door2.failed("c") is False
        door2.release("c")
        clock2.now += 30


def test_known_sources_are_never_penalised_or_dropped_early_and_have_a_reserve():
    door, clock = _door(coin=0.0, rate_per_s=1000, burst=1000, per_source=100, drop_start=2,
                        full=4, reserve=2, penalty_after=1)
    door.logged_in("good")
    assert [door.admit("x1"), door.admit("x2"), door.admit("x3")] == [None, None, EARLY_DROP]
    assert [door.admit("good") for _ in range(5)] == [None, None, None, None, STARTUPS_FULL], \
        "known: no early drop, and two reserve slots above full (4)"
    assert door.admit("fresh") == STARTUPS_FULL
    assert [door.failed("good") for _ in range(5)] == [False] * 5
    clock.now += 24 * 3600 + 1  # a day later it is a stranger again
    assert not door.is_known("good")


def test_known_and_penalty_tables_are_bounded():
    door, _ = _door(rate_per_s=1000, burst=1000, penalty_after=1)
    for n in range(MAX_KNOWN_SOURCES + 10):
        door.logged_in(f"s{n}")
    assert not door.is_known("s0") and door.is_known(f"s{MAX_KNOWN_SOURCES + 9}")
    assert door.tracked_penalties() == 0


def test_known_sources_are_saved_privately_and_read_back_with_their_ages(tmp_path):
    from estate.inventory.hub import _known_sources

    door, clock = _door()
    door.logged_in("10.0.0.1")
    clock.now += 3600
    door.logged_in("10.0.0.2")
    _known_sources.save(tmp_path, door)
    path = tmp_path / _known_sources.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    again, later = _door()
    assert _known_sources.load(tmp_path, again) == 2
    assert again.known_ages() == {"10.0.0.1": 3600.0, "10.0.0.2": 0.0}
    later.now += 23 * 3600 + 1  # 10.0.0.1's day ends an hour before 10.0.0.2's
    assert not again.is_known("10.0.0.1") and again.is_known("10.0.0.2")
    for bad in (b"{not json", b'["10.0.0.1"]', b'{"10.0.0.1": "old"}'):
        path.write_bytes(bad)
        assert _known_sources.load(tmp_path, _door()[0]) == 0, bad


# --- against a real hub ----------------------------------------------------------------

def _open(hub: HubProcess, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=10,
                                    source_address=(source, 0))
    sock.settimeout(10)
    return sock


def _first_line(sock: socket.socket) -> bytes:
    """The hub's first line: its SSH version, or a refusal (b"" when cut off before it)."""
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data.split(b"\n", 1)[0]


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_idle_sockets_from_one_address_do_not_lock_out_a_real_agent(tmp_path, live_report):
    """The reported attack: hundreds of idle sockets from one address. Only the per-source
    budget's worth are taken on; the rest are refused with a reason; an agent from another
    address logs in and reports at its first attempt."""
    hub = HubProcess(tmp_path / "hub", ("--connection-rate", "1000", "--connection-burst",
                                        "1000")).start()
    attack: list[socket.socket] = []
    try:
        agent = Agent(hub, tmp_path / "agent", hub.token())
        lines = []
        for _ in range(60):
            attack.append(_open(hub, "127.0.0.2"))
            lines.append(_first_line(attack[-1]))
        served = [line for line in lines if line.startswith(b"SSH-2.0-")]
        assert len(served) == 10, lines
        assert b"Refused source_busy: too many connections from this address" in lines[-1]
        assert agent.send(make_report(live_report, agent.agent_id))[0] == 0
        assert "refused (source_busy)" in hub.log()
        # The ten it took on still stand (until the handshake deadline), none was dropped.
        assert not _closed_within(attack[0], 0.3)
    finally:
        _close_all(attack)
        hub.kill()


def test_sockets_held_from_many_addresses_slow_a_real_login_but_do_not_stop_it(tmp_path):
    """Past the early-drop threshold a new connection is dropped at random: a client that
    retries (as the agent and the console do) gets in within a few attempts."""
    hub = HubProcess(tmp_path / "hub", ("--early-drop", "20:30", *DEFAULT_RATE)).start()
    attack: list[socket.socket] = []
    try:
        served = 0
        for n in range(2, 8):  # 6 addresses x 10: past 20 pending, the attacker is dropped too
            for _ in range(10):
                attack.append(_open(hub, f"127.0.0.{n}"))
                served += _first_line(attack[-1]).startswith(b"SSH-2.0-")
        assert 20 < served < 60
        key = asyncssh.generate_private_key("ssh-ed25519")

        async def login() -> int:
            for attempt in range(1, 31):
                try:
                    async with asyncssh.connect(
                            "127.0.0.1", hub.port, username="enrol", client_keys=[key],
                            known_hosts=None, agent_path=None, config=None,
                            login_timeout=10) as conn:
                        res = await conn.run("estate-enrol v1", input="{}")
                        assert res.exit_status == 65  # bad_request: we were let in
                        return attempt
                except (OSError, asyncssh.Error):
                    await asyncio.sleep(0.12)  # stay under the address's 10 a second
            raise AssertionError("never got in")

        attempts = asyncio.run(login())
        assert attempts >= 1
    finally:
        _close_all(attack)
        hub.kill()


def test_idle_sockets_are_closed_after_the_handshake_timeout(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--handshake-timeout", "1",
                                        "--max-unauthenticated-per-source", "2")).start()
    socks: list[socket.socket] = []

    def first_line_of_a_new_one() -> bytes:
        socks.append(_open(hub, "127.0.0.2"))
        return _first_line(socks[-1])

    try:
        silent = _open(hub, "127.0.0.2")
        versioned = _open(hub, "127.0.0.2")  # sends a version line, never a key exchange
        socks += [silent, versioned]
        assert _first_line(silent).startswith(b"SSH-2.0-")
        assert _first_line(versioned).startswith(b"SSH-2.0-")
        versioned.sendall(b"SSH-2.0-stalled\r\n")
        assert first_line_of_a_new_one().startswith(b"Refused source_busy")
        assert _closed_within(silent, 15) and _closed_within(versioned, 15)
        assert "closed (handshake_timeout): no key exchange within 1 s" in hub.log()
        # Their slots are free again.
        wait_for(lambda: first_line_of_a_new_one().startswith(b"SSH-2.0-"),
                 timeout=10, interval=0.2, what="a slot freed by the timeout")
    finally:
        _close_all(socks)
        hub.kill()


def test_a_burst_of_new_connections_from_one_address_is_rate_limited(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--max-unauthenticated-per-source", "100",
                                        *DEFAULT_RATE)).start()
    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(40):
            socks.append(_open(hub, "127.0.0.3"))
        lines = [_first_line(s) for s in socks]
        elapsed = time.monotonic() - started
        served = sum(line.startswith(b"SSH-2.0-") for line in lines)
        # Default budget: 10 at once, 10 a second after that.
        assert 10 <= served <= 10 + 10 * elapsed + 1, (served, elapsed)
        assert any(line.startswith(b"Refused rate_limited") for line in lines)
        assert "refused (rate_limited)" in hub.log()
        # Another address is not held back by this one's burst.
        other = _open(hub, "127.0.0.4")
        socks.append(other)
        assert _first_line(other).startswith(b"SSH-2.0-")
    finally:
        _close_all(socks)
        hub.kill()


def test_enrol_logins_count_against_the_pre_auth_budget_and_agents_do_not(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--max-unauthenticated-per-source", "2",
                                        "--login-timeout", "3")).start()
    try:
        agent = Agent(hub, tmp_path / "agent", hub.token())
        agent_key = asyncssh.read_private_key(agent.key_file)

        async def scenario() -> None:
            def connect(source: str, user: str, key: asyncssh.SSHKey):
                return asyncssh.connect("127.0.0.1", hub.port, username=user,
                                        client_keys=[key], known_hosts=None,
                                        agent_path=None, config=None,
                                        local_addr=(source, 0))

            # Two logged-in agent connections from one address leave its budget untouched.
            agents = [await connect("127.0.0.5", agent.agent_id, agent_key) for _ in range(2)]
            third = await connect("127.0.0.5", agent.agent_id, agent_key)
            third.close()
            # Two idle enrol logins use the whole budget of their address...
            key = asyncssh.generate_private_key("ssh-ed25519")
            enrols = [await connect("127.0.0.6", "enrol", key) for _ in range(2)]
            with pytest.raises((OSError, asyncssh.Error)):
                async with connect("127.0.0.6", "enrol", key):
                    pass
            # ...until the login timeout ends them: enrol must be done by then.
            for conn in enrols:
                await asyncio.wait_for(conn.wait_closed(), 15)
            async with connect("127.0.0.6", "enrol", key):
                pass
            # The third login closed the oldest (an agent keeps at most two connections);
            # the newer one has outlived the login timeout: logged in, it is not timed out.
            await asyncio.wait_for(agents[0].wait_closed(), 15)
            assert not agents[1].is_closed(), "logged-in agents are not timed out"
            agents[1].close()

        asyncio.run(scenario())
        log = hub.log()
        assert "refused (source_busy)" in log
        assert "closed (enrol_timeout)" in log
    finally:
        hub.kill()


def test_a_source_whose_connections_end_without_login_is_penalised(tmp_path):
    """OpenSSH's PerSourcePenalties: connections that end without logging in (here: closed
    at once) more than --penalty-after times in a minute get the address refused for a
    while, with its code, before any SSH work; other addresses are served."""
    hub = HubProcess(tmp_path / "hub", ("--penalty-after", "3", "--penalty", "60:600")).start()
    try:
        def first_line(source: str) -> bytes:
            sock = _open(hub, source)
            try:
                return _first_line(sock)
            finally:
                sock.close()

        for _ in range(4):
            assert first_line("127.0.4.77").startswith(b"SSH-2.0-")
        wait_for(lambda: first_line("127.0.4.77").startswith(b"Refused penalised"),
                 timeout=10, interval=0.2, what="the penalty")
        assert first_line("127.0.4.78").startswith(b"SSH-2.0-")
        wait_for(lambda: "source 127.0.4.77 penalised for 60 s" in hub.log(), timeout=10)
        assert "refused (penalised)" in hub.log()

        def audited() -> int:
            with hub.store() as store:
                return sum(1 for r in store.audit_log(action="connection_refused")
                           if r.target == "penalised")
        wait_for(audited, timeout=10, what="the audit row")  # written by the coalescer
    finally:
        hub.kill()


def test_a_restarted_hub_still_knows_who_logged_in_and_does_not_penalise_them(tmp_path,
                                                                             live_report):
    """After a restart every agent reconnects at once and some connections end before they
    log in: a source that logged in before the restart is not penalised for that."""
    hub = HubProcess(tmp_path / "hub", ("--penalty-after", "2", "--penalty", "60:600")).start()
    try:
        agent = Agent(hub, tmp_path / "agent", hub.token())
        code, _ = agent.send(make_report(live_report, agent.agent_id))
        assert code == 0  # 127.0.0.1 logged in, as an agent
        assert hub.signal(signal.SIGTERM) == 0
        assert "127.0.0.1" in json.loads((hub.data / "known_sources.json").read_text())
        hub.start()
        assert "1 known sources kept from the last run" in hub.log()

        def first_line() -> bytes:
            sock = _open(hub, "127.0.0.1")
            try:
                return _first_line(sock)
            finally:
                sock.close()  # ends without logging in: a failure, for a stranger

        assert all(first_line().startswith(b"SSH-2.0-") for _ in range(6)), \
            "a known source is never penalised"
        assert agent.send(make_report(live_report, agent.agent_id))[0] == 0
    finally:
        hub.kill()


def test_a_flood_from_many_addresses_does_not_lock_out_a_client_known_to_the_hub(tmp_path):
    """Finding 6: sockets held from 20 addresses (re-opened as they close) fill the pre-auth
    budget, so fresh addresses are refused; a client that logged in before from 127.0.0.1
    still gets in, through the reserve. Penalties are off here, so the reserve alone does it."""
    hub = HubProcess(tmp_path / "hub", ("--max-unauthenticated", "40", "--early-drop", "10:30",
                                        "--max-unauthenticated-per-source", "2",
                                        "--known-source-reserve", "20",
                                        "--penalty-after", "0")).start()
    try:
        agent = Agent(hub, tmp_path / "agent", hub.token())
        key = asyncssh.read_private_key(agent.key_file)

        def connect(source: str):
            return asyncssh.connect("127.0.0.1", hub.port, username=agent.agent_id,
                                    client_keys=[key], known_hosts=None, agent_path=None,
                                    config=None, local_addr=(source, 0), login_timeout=10)

        async def scenario() -> tuple[int, int]:
            async with connect("127.0.0.1"):
                pass  # logged in once: 127.0.0.1 is known
            stop = asyncio.Event()
            held = [0]

            async def holder(source: str) -> None:
                while not stop.is_set():
                    try:
                        reader, writer = await asyncio.open_connection(
                            "127.0.0.1", hub.port, local_addr=(source, 0))
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                    try:
                        if (await reader.readline()).startswith(b"SSH-2.0-"):
                            held[0] += 1
                            try:
                                await reader.read()  # held until the hub closes it
                            finally:
                                held[0] -= 1
                    except OSError:
                        pass
                    finally:
                        writer.close()
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(holder(f"127.0.4.{n}"))
                     for n in range(1, 25) for _ in range(3)]
            try:
                for _ in range(100):
                    if held[0] >= 40:
                        break
                    await asyncio.sleep(0.1)
                assert held[0] >= 40, held[0]
                # A fresh address is locked out by the flood...
                with pytest.raises((OSError, asyncssh.Error)):
                    async with connect("127.0.5.1"):
                        pass
                # ...the known client is not (bounded retries: once or twice is enough).
                for attempt in range(1, 6):
                    try:
                        async with connect("127.0.0.1"):
                            return attempt, held[0]
                    except (OSError, asyncssh.Error):
                        await asyncio.sleep(0.2)
                raise AssertionError("the known client was locked out")
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        attempt, held = asyncio.run(scenario())
        assert attempt <= 5 and held >= 40
    finally:
        hub.kill()


def test_key_spraying_is_cut_off_after_six_refused_keys_and_logged_once(tmp_path):
    """Finding 7 (OpenSSH's MaxAuthTries): one connection offering many keys is cut off after
    six are refused; the log gets one line with the count, not a line per key."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(30)]

        async def spray() -> None:
            with pytest.raises((OSError, asyncssh.Error)):
                async with asyncssh.connect(
                        "127.0.0.1", hub.port, username="ag-000000000000", client_keys=keys,
                        known_hosts=None, agent_path=None, config=None, login_timeout=20,
                        local_addr=("127.0.0.9", 0)):
                    pass

        asyncio.run(spray())
        wait_for(lambda: "key(s) refused" in hub.log(), timeout=10)
        log = hub.log()
        assert "too_many_auth_attempts" in log
        assert log.count('login refused for user "ag-000000000000": 6 key(s) refused') == 1
        assert "refused user" not in log, "no line per key"
        def rows() -> list:
            with hub.store() as store:
                return [r.detail for r in store.audit_log(action="login_failed")]
        wait_for(rows, timeout=10, what="the audit row")  # written by the coalescer
        assert len(rows()) == 1 and '"keys_refused": 6' in rows()[0], rows()
    finally:
        hub.kill()
