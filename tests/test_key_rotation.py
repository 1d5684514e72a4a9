"""Rotating the hub's host key (`estate-hub key rotate|activate`) with a real hub and real
agent services: agents that reported during the window follow the hub to its new key without
enrolling again; pinning still refuses every key the pinned hub did not announce."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import asyncssh
import pytest

from estate.agent import pins
from estate.agent.config import AgentConfig, load
from tests.harness import Agent, AgentService, HubProcess, stored_sequences, wait_for


def _new_key(path: Path, algorithm: str = "ssh-ed25519") -> str:
    """A new private key in `path` (0600, as `ssh-keygen -N ''` writes it); its fingerprint."""
    key = asyncssh.generate_private_key(algorithm)
    path.touch(mode=0o600)
    path.write_bytes(key.export_private_key())
    return key.get_fingerprint("sha256")


def _pins(agent: Agent) -> tuple[str | None, str | None]:
    cfg = load(agent.config)
    return cfg.hub_key, cfg.hub_key_next


def _restart(hub: HubProcess) -> None:
    """Stop the hub and start it again on the same port: it presents its data folder's key."""
    assert hub.signal(signal.SIGTERM) == 0
    hub.start()


def _rotations(hub: HubProcess) -> list[dict]:
    return [json.loads(row["detail"]) for row in
            reversed(hub.admin_json("audit", "--action", "key_rotate"))]


@pytest.fixture()
def services():
    started: list[AgentService] = []
    yield started
    for s in started:
        s.kill()


def test_agents_follow_the_hub_to_its_next_key_and_one_that_never_heard_refuses_it(
        hub, tmp_path, services):
    old = hub.fingerprint
    follower = Agent(hub, tmp_path / "follower")
    absent = Agent(hub, tmp_path / "absent")  # enrolled, but not running during the window
    svc = AgentService(follower).start()
    services.append(svc)
    wait_for(lambda: stored_sequences(hub, follower.agent_id), what="a first report")
    assert _pins(follower) == (old, None)

    new = _new_key(tmp_path / "next_key")
    hub.admin("key", "rotate", "--new", str(tmp_path / "next_key"))
    # The running hub notices the next key and names it in its acks; the agent pins it too.
    wait_for(lambda: _pins(follower) == (old, new), what="the agent to pin the next key")
    assert "announced its next host key" in svc.log()
    assert hub.admin_json("key", "status") == {
        "current": old, "next": new, "previous": None, "phase": "announcing",
        "token_fingerprints": [old, new]}

    hub.admin("key", "activate")
    _restart(hub)
    assert hub.fingerprint == new
    # The agent accepts the new key, drops the old one and keeps reporting: no new enrolment.
    wait_for(lambda: _pins(follower) == (new, None), what="the agent to pin the new key alone")
    count = len(stored_sequences(hub, follower.agent_id))
    wait_for(lambda: len(stored_sequences(hub, follower.agent_id)) >= count + 2,
             what="reports to the hub's new key")
    assert "presented host key" not in svc.log()

    # An agent that never learned the next key refuses the hub presenting it.
    absent_svc = AgentService(absent).start()
    services.append(absent_svc)
    wait_for(lambda: "pinned" in absent_svc.log(), what="the refusal")
    # The status file is written once the loop's turn ends (after that turn's collection).
    wait_for(lambda: f"presented host key {new}" in (absent_svc.status().get("last_error")
                                                      or ""), what="the refusal's status")
    assert not stored_sequences(hub, absent.agent_id)
    assert _pins(absent) == (old, None)

    hub.admin("key", "rotate", "--finish")
    assert hub.admin_json("key", "status")["phase"] == "none"
    assert not (hub.data / "host_key_ed25519.previous").exists()
    steps = _rotations(hub)
    assert [(d["step"], d["after"]["current"]) for d in steps] == \
        [("next", old), ("activate", new), ("finish", new)]
    assert steps[0]["after"]["next"] == new and steps[1]["after"]["previous"] == old
    assert svc.stop() == 0


def test_a_token_made_during_the_window_enrols_against_either_key(hub, tmp_path):
    old = hub.fingerprint
    new = _new_key(tmp_path / "next_key")
    hub.admin("key", "rotate", "--new", str(tmp_path / "next_key"))
    token = hub.token(uses=2)
    assert f".{old.removeprefix('SHA256:')},{new.removeprefix('SHA256:')}" in token

    before = Agent(hub, tmp_path / "before", token)  # enrols against the old key
    assert _pins(before) == (old, new)
    hub.admin("key", "activate")
    _restart(hub)
    after = Agent(hub, tmp_path / "after", token)  # the same token, against the new key
    assert _pins(after) == (new, None)
    # Tokens made before --finish still name both (a hub not restarted yet presents the old).
    assert f".{old.removeprefix('SHA256:')},{new.removeprefix('SHA256:')}" in hub.token()

    # The agent enrolled before the switch reports (one-shot) to the new key, and pins it.
    assert before.report_cli().returncode == 0
    assert _pins(before) == (new, None)
    hub.admin("key", "rotate", "--finish")
    assert f".{new.removeprefix('SHA256:')}." in hub.token() + "."


def test_only_the_pinned_hub_can_name_a_next_key(hub, tmp_path, services):
    """The next key comes in a report ack, over a connection whose host key the agent already
    pinned: a hub with another key (an impostor at the hub's address, announcing a "next
    key" of its own) is refused before it can tell the agent anything."""
    agent = Agent(hub, tmp_path / "agent")
    pinned = hub.fingerprint
    hub.kill()
    impostor = HubProcess(tmp_path / "impostor")
    impostor.port = hub.port
    impostor.start()
    try:
        _new_key(tmp_path / "theirs")
        impostor.admin("key", "rotate", "--new", str(tmp_path / "theirs"))
        svc = AgentService(agent).start()
        services.append(svc)
        wait_for(lambda: sum("pinned" in line for line in svc.log().splitlines()) >= 2,
                 what="two refusals")
        assert _pins(agent) == (pinned, None)
    finally:
        impostor.kill()

    # The agent reads a next key from its pinned hub's acks alone, and only a fingerprint.
    cfg = AgentConfig(hub_key=pinned)
    assert pins.after_ack(cfg, {"status": "stored"}) is None
    assert pins.after_ack(cfg, {"hub_key_next": "SHA256:short\n\x1b[2J"}) is None
    assert pins.after_ack(cfg, {"hub_key_next": pinned}) is None
    other = "SHA256:" + "B" * 43
    assert pins.after_ack(cfg, {"hub_key_next": other}).hub_key_next == other
    # Nothing announced keeps a next key: hubs learn of it one by one.
    assert pins.after_ack(AgentConfig(hub_key=pinned, hub_key_next=other), {}) is None


def test_every_rotation_step_checks_its_input(hub, tmp_path):
    def refused(*args: str) -> tuple[int, str]:
        done = hub.admin("key", *args, check=False)
        return done.returncode, done.stderr

    hub.admin("key", "export", "--out", str(tmp_path / "current"))
    code, err = refused("rotate", "--new", str(tmp_path / "current"))
    assert code == 2 and "current host key" in err
    _new_key(tmp_path / "ecdsa", "ecdsa-sha2-nistp256")
    code, err = refused("rotate", "--new", str(tmp_path / "ecdsa"))
    assert code == 2 and "ssh-ed25519" in err
    (tmp_path / "junk").write_text("not a key")
    code, err = refused("rotate", "--new", str(tmp_path / "junk"))
    assert code == 2 and "not an unencrypted OpenSSH private key" in err
    code, err = refused("activate")
    assert code == 1 and "no next key" in err
    code, err = refused("rotate", "--finish")
    assert code == 1 and "no rotation to finish" in err

    first = _new_key(tmp_path / "first")
    hub.admin("key", "rotate", "--new", str(tmp_path / "first"))
    again = hub.admin("key", "rotate", "--new", str(tmp_path / "first"))
    assert "nothing to do" in again.stdout
    second = _new_key(tmp_path / "second")
    code, err = refused("rotate", "--new", str(tmp_path / "second"))
    assert code == 1 and f"{first} is already the next key" in err
    code, err = refused("rotate", "--finish")
    assert code == 1 and "not active yet" in err
    hub.admin("key", "rotate", "--new", str(tmp_path / "second"), "--replace")
    assert hub.admin_json("key", "status")["next"] == second
    hub.admin("key", "activate")
    code, err = refused("rotate", "--new", str(tmp_path / "current"))
    assert code == 2 and "not finished" in err  # back to the retiring key: refused
    # Every step that changed something is audited; the refusals changed nothing.
    assert [d["step"] for d in _rotations(hub)] == ["next", "next", "activate"]
