"""Connectivity probes: loopback targets this test creates, the built-in probes, the probe
rules of inventory/probe_spec.py and the hub policy as the agent holds it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time

import pytest

from estate.agent import probes as probes_module
from estate.agent.config import ProbeConfig
from estate.agent.probe_policy import POLICY_FILE, ProbePolicy
from estate.agent.probes import (
    BUILTIN_TIMEOUTS_S,
    ICMP_NOT_PERMITTED,
    builtin_probes,
    merge_probes,
    run_probes,
)
from estate.inventory.probe_spec import (
    HUB_MAX_TIMEOUT_S,
    HUB_MIN_INTERVAL_S,
    ProbeSpec,
    ProbeSpecError,
    canonical_hash,
    parse_probes,
    sift_hub_probes,
)
from estate.inventory.report import validate


@pytest.fixture()
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.fixture()
def black_hole():
    """A loopback port whose accept queue is full, so new connections get no answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(sock.getsockname())
        fillers.append(c)
    time.sleep(0.05)
    yield sock
    for c in fillers:
        c.close()
    sock.close()


def _tcp(name, addr, timeout=1.0):
    return ProbeConfig(name, "tcp", f"{addr[0]}:{addr[1]}", timeout)


LOOPBACK_ROUTE = {"default_gateway": {"address": "127.0.0.1", "interface": "lo"},
                  "interfaces": [{"name": "lo", "up": True}]}


def test_tcp_ok_refused_and_order(listener):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    results = run_probes((_tcp("up", listener.getsockname()),
                          _tcp("down", ("127.0.0.1", port))), {})
    assert [r["name"] for r in results] == ["up", "down"]
    assert results[0]["ok"] and results[0]["latency_ms"] >= 0 and results[0]["error"] is None
    assert results[0]["source"] == "local"
    assert not results[1]["ok"] and results[1]["latency_ms"] is None
    assert "refused" in results[1]["error"].lower()


def test_dns_resolves_localhost_and_reports_failure():
    ok, bad = run_probes((ProbeConfig("lh", "dns", "localhost", 2.0),
                          ProbeConfig("bad", "dns", "no-such-host.invalid", 2.0)), {})
    assert ok["ok"] and "127.0.0.1" in ok["answers"]
    assert bad["ok"] is False and bad["error"]


def test_gateway_probe_uses_detected_gateway_or_target():
    (res,) = run_probes((ProbeConfig("gw", "gateway", None, 1.0),), LOOPBACK_ROUTE)
    assert res["target"] == "127.0.0.1"
    assert res["ok"] or (res["ok"] is None and res["error"] == ICMP_NOT_PERMITTED)
    (none,) = run_probes((ProbeConfig("gw", "gateway", None, 1.0),), {})
    assert none == {"name": "gw", "kind": "gateway", "target": None, "ok": False,
                    "latency_ms": None, "answers": [], "error": "no default gateway",
                    "source": "local"}


def test_slow_targets_run_concurrently(black_hole):
    """Three probes that each wait out their 1 s timeout take about 1 s together, not 3."""
    addr = black_hole.getsockname()
    start = time.monotonic()
    results = run_probes(tuple(_tcp(f"slow{i}", addr) for i in range(3)), {})
    elapsed = time.monotonic() - start
    assert [r["ok"] for r in results] == [False] * 3
    assert all("no answer within 1 s" in r["error"] for r in results)
    assert elapsed < 0.7 * 3 * 1.0, f"probes ran one after another ({elapsed:.2f} s)"


# --- built-in probes ----------------------------------------------------------------------

def test_the_builtin_probes_follow_the_hub_address():
    def names(hub, rtt):
        return [(p.name, p.kind, p.target) for p in builtin_probes(hub, hub_rtt=rtt)]

    assert names("hub.example:2222", True) == [
        ("hub", "hub", "hub.example:2222"), ("gateway", "gateway", None),
        ("hub-dns", "dns", "hub.example"), ("link", "link", None)]
    # An address is not resolved; without a connection there is no round trip to time.
    assert names("10.0.0.5:2222", True) == [("hub", "hub", "10.0.0.5:2222"),
                                             ("gateway", "gateway", None),
                                             ("link", "link", None)]
    assert names("[::1]:2222", False) == [("gateway", "gateway", None), ("link", "link", None)]
    assert names(None, True) == [("gateway", "gateway", None), ("link", "link", None)]
    assert {p.source for p in builtin_probes("h:1", hub_rtt=True)} == {"builtin"}


def test_a_local_probe_replaces_a_builtin_or_hub_probe_of_its_name():
    builtin = builtin_probes("hub.example:22", hub_rtt=False)
    local = (ProbeSpec("gateway", "gateway", "10.1.1.1"), ProbeSpec("fs", "tcp", "fs:445"))
    hub = (ProbeSpec("fs", "tcp", "other:445", source="hub"),
           ProbeSpec("dc", "dns", "dc.example", source="hub"))
    merged = merge_probes(builtin, local, hub)
    assert [(p.name, p.source) for p in merged] == [
        ("hub-dns", "builtin"), ("link", "builtin"), ("gateway", "local"), ("fs", "local"),
        ("dc", "hub")]


def test_link_is_the_default_route_interfaces_state(monkeypatch):
    link = builtin_probes(None, hub_rtt=False)[-1]
    (up,) = run_probes((link,), LOOPBACK_ROUTE)
    assert up == {"name": "link", "kind": "link", "target": "lo", "ok": True,
                  "latency_ms": None, "answers": [], "error": None, "source": "builtin"}
    (down,) = run_probes((link,), {"default_gateway": {"address": "10.0.0.1",
                                                       "interface": "eth9"},
                                   "interfaces": [{"name": "eth9", "up": False}]})
    assert (down["ok"], down["target"], down["error"]) == (False, "eth9", "interface down")
    (no_route,) = run_probes((link,), {"default_gateway": None, "interfaces": []})
    assert (no_route["ok"], no_route["error"]) == (None, "no default route")
    # The kernel's view counts too: an interface up with its cable out has no carrier.
    sys_net = _fake_sys_class_net(monkeypatch, "eth9", operstate="down", carrier="0")
    (unplugged,) = run_probes((link,), {"default_gateway": {"interface": "eth9"},
                                        "interfaces": [{"name": "eth9", "up": True}]})
    assert unplugged["ok"] is False and "no carrier" in unplugged["error"], sys_net


def _fake_sys_class_net(monkeypatch, name, operstate, carrier):
    """A /sys/class/net stand-in: the kernel's files for an interface this machine lacks."""
    import tempfile

    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, name))
    for leaf, text in (("operstate", operstate), ("carrier", carrier)):
        with open(os.path.join(root, name, leaf), "w") as f:
            f.write(text + "\n")
    monkeypatch.setattr(probes_module, "SYS_CLASS_NET", root)
    monkeypatch.setattr(probes_module.sys, "platform", "linux")
    return root


@pytest.mark.linux
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /sys")
def test_link_agrees_with_the_kernel_for_this_machines_default_route():
    from estate.agent.collect import collect_report

    report, _ = collect_report(probes=probes_module.prober(builtin_probes(None, hub_rtt=False)))
    route = report["network"]["default_gateway"]
    if not route or not route.get("interface"):
        pytest.skip("no IPv4 default route here")
    link = next(p for p in report["connectivity"]["probes"] if p["name"] == "link")
    with open(f"/sys/class/net/{route['interface']}/operstate") as f:
        kernel = f.read().strip()
    assert link["target"] == route["interface"]
    assert link["ok"] is (kernel in ("up", "unknown")), (link, kernel)
    validate(report)


def test_icmp_not_permitted_is_null_with_the_reason(monkeypatch):
    """The socket seam refuses as the kernel does (the subprocess test below uses the
    kernel itself where it can)."""
    def refused():
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(probes_module, "_icmp_socket", refused)
    gateway = builtin_probes(None, hub_rtt=False)[0]
    res, ping = run_probes((gateway, ProbeSpec("ping", "icmp", "10.9.8.7", 1.0, None, "hub")),
                           LOOPBACK_ROUTE)
    assert res == {"name": "gateway", "kind": "gateway", "target": "127.0.0.1", "ok": None,
                   "latency_ms": None, "answers": [], "error": ICMP_NOT_PERMITTED,
                   "source": "builtin"}
    assert (ping["ok"], ping["target"], ping["error"]) == (None, "10.9.8.7", ICMP_NOT_PERMITTED)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.geteuid() == 0
                         and shutil.which("unshare") and shutil.which("setpriv")),
                    reason="needs root, unshare and setpriv to take ICMP away")
def test_icmp_refused_by_the_kernel_is_null_with_the_reason():
    """A new network namespace (ping_group_range "1 0": no group may open ICMP datagram
    sockets) and no CAP_NET_RAW: the kernel refuses both kinds of ICMP socket."""
    code = ("import json; from estate.agent.probes import builtin_probes, run_probes; "
            "print(json.dumps(run_probes(builtin_probes(None, hub_rtt=False)[:1], "
            "{'default_gateway': {'address': '127.0.0.1', 'interface': 'lo'}})))")
    done = subprocess.run(["unshare", "-n", "setpriv", "--bounding-set", "-net_raw",
                           "--inh-caps", "-net_raw", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    (res,) = json.loads(done.stdout)
    assert (res["ok"], res["target"], res["error"]) == (None, "127.0.0.1", ICMP_NOT_PERMITTED)
    assert "ping_group_range" in res["error"]


def test_no_default_gateway_is_null_for_the_builtin_probe():
    gateway = builtin_probes(None, hub_rtt=False)[0]
    (res,) = run_probes((gateway,), {"default_gateway": None})
    assert (res["ok"], res["error"]) == (None, "no default route")
    (p2p,) = run_probes((gateway,), {"default_gateway": {"address": None, "interface": "utun3"}})
    assert p2p["ok"] is None and "point-to-point" in p2p["error"]


def test_the_hub_probe_times_what_it_is_given_and_says_why_not():
    hub = builtin_probes("hub.example:2222", hub_rtt=True)[0]
    (ok,) = run_probes((hub,), {}, lambda timeout_s: 12.345)
    assert (ok["ok"], ok["latency_ms"], ok["target"]) == (True, 12.35, "hub.example:2222")
    (silent,) = run_probes((hub,), {}, lambda timeout_s: None)
    assert (silent["ok"], silent["error"]) == (False, "no answer within 5 s")

    def lost(timeout_s):
        raise OSError("not connected: the hub connection failed")

    (gone,) = run_probes((hub,), {}, lost)
    assert (gone["ok"], gone["error"]) == (False, "not connected: the hub connection failed")
    (none,) = run_probes((hub,), {})
    assert none["ok"] is None


def test_every_builtin_result_is_a_valid_report_field():
    from estate.agent.collect import collect_report

    probes = merge_probes(builtin_probes("localhost:22", hub_rtt=True),
                          (ProbeSpec("fs", "tcp", "127.0.0.1:9"),),
                          (ProbeSpec("p", "icmp", "127.0.0.1", 1.0, 60.0, "hub"),))
    report, _ = collect_report(probes=probes_module.prober(probes, lambda t: 0.5))
    validate(report)
    got = [(p["name"], p["source"]) for p in report["connectivity"]["probes"]]
    assert got == [("hub", "builtin"), ("gateway", "builtin"), ("hub-dns", "builtin"),
                   ("link", "builtin"), ("fs", "local"), ("p", "hub")]


# --- probe_spec: the rules -----------------------------------------------------------------

def _hub_tables(n):
    return [{"name": f"p{i}", "kind": "tcp", "target": f"10.0.0.{i % 250 + 1}:443"}
            for i in range(n)]


@pytest.mark.parametrize(("tables", "message"), [
    (_hub_tables(100), "probes: 100 probes, over the hub limit of 16"),
    ([{"name": "scan", "kind": "tcp", "target": "10.0.0.1:1-1024"}],
     'probes[0] ("scan").target: a hub probe connects to one port: no ranges or lists'),
    ([{"name": "ok", "kind": "dns", "target": "a.example"},
      {"name": "multi", "kind": "tcp", "target": "host:22,80"}],
     'probes[1] ("multi").target: a hub probe connects to one port'),
    ([*_hub_tables(3), {"name": "dns-ext", "kind": "dns", "target": "example.org", "interval": 1}],
     'probes[3] ("dns-ext").interval: 1 s is faster than the 60 s floor'),
    ([{"name": "gw", "kind": "gateway"}],
     'probes[0] ("gw").kind: expected one of tcp, dns, icmp, got \'gateway\''),
    ([{"name": "slow", "kind": "tcp", "target": "h:1", "timeout": 30}],
     'probes[0] ("slow").timeout: 30 s is longer than the 10 s a hub probe may wait'),
    ([{"name": "hub", "kind": "dns", "target": "x.example"}],
     'probes[0] ("hub").name: \'hub\' is the name of a built-in probe'),
    ([{"name": "cidr", "kind": "tcp", "target": "10.0.0.0/24:22"}],
     'probes[0] ("cidr").target: expected a host name or an IP address'),
    ([{"name": "d", "kind": "dns", "target": "10.0.0.1"}],
     'probes[0] ("d").target: expected a host name to resolve'),
    ([{"name": "i", "kind": "icmp", "target": "10.0.0.0/8"}],
     'probes[0] ("i").target: expected an IPv4 address or "gateway"'),
    ([{"name": "x", "kind": "tcp", "target": "h:1", "colour": 1}],
     'probes[0] ("x").colour: unknown key'),
    ([{"name": "x", "kind": "dns", "target": "a.example"},
      {"name": "x", "kind": "dns", "target": "b.example"}],
     'probes[1] ("x").name: duplicate probe name'),
])
def test_a_hub_policy_over_the_limits_is_refused_naming_probe_and_key(tables, message):
    with pytest.raises(ProbeSpecError) as err:
        parse_probes(tables, "probes", hub=True)
    assert str(err.value).startswith(message), str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_hub_policy_within_the_limits_parses():
    specs = parse_probes([
        {"name": "dc", "kind": "tcp", "target": "dc01.council.example:389", "timeout": 1},
        {"name": "ext", "kind": "dns", "target": "example.org", "interval": 600,
         "timeout": HUB_MAX_TIMEOUT_S},
        {"name": "core", "kind": "icmp", "target": "10.0.0.1"},
        {"name": "gw2", "kind": "icmp", "target": "gateway", "interval": HUB_MIN_INTERVAL_S},
        {"name": "v6", "kind": "tcp", "target": "[2001:db8::1]:443"},
        *_hub_tables(11)], hub=True)
    assert len(specs) == 16 and {s.source for s in specs} == {"hub"}
    assert specs[0] == ProbeSpec("dc", "tcp", "dc01.council.example:389", 1.0, None, "hub")
    assert specs[1].interval_s == 600.0


def test_local_probes_keep_their_rules():
    """agent.toml: tcp, dns, gateway; no interval; 64 at most; built-in names allowed."""
    assert parse_probes([{"name": "gateway", "kind": "gateway"}])[0].source == "local"
    with pytest.raises(ProbeSpecError, match=r"probes\[0\] \(\"x\"\)\.kind: expected one of "
                                             r"tcp, dns, gateway"):
        parse_probes([{"name": "x", "kind": "icmp", "target": "10.0.0.1"}])
    with pytest.raises(ProbeSpecError, match="interval: unknown key"):
        parse_probes([{"name": "x", "kind": "dns", "target": "a", "interval": 60}])
    assert parse_probes([{"name": "slow", "kind": "tcp", "target": "h:1", "timeout": 60}]
                        )[0].timeout_s == 60.0  # the endpoint owner's own limit
    with pytest.raises(ProbeSpecError, match=r"timeout: expected a number of seconds from 0.1 "
                                             r"to 60, got 61"):
        parse_probes([{"name": "slow", "kind": "tcp", "target": "h:1", "timeout": 61}])
    many = [{"name": f"p{i}", "kind": "dns", "target": "a"} for i in range(65)]
    with pytest.raises(ProbeSpecError, match="65 probes, over the limit of 64"):
        parse_probes(many)
    assert len(parse_probes(many[:64])) == 64


def test_the_policy_hash_is_canonical():
    a = parse_probes([{"name": "dc", "kind": "tcp", "target": "dc:389", "timeout": 2}],
                     hub=True)
    b = parse_probes([{"timeout": 2.0, "target": "dc:389", "kind": "tcp", "name": "dc"}],
                     hub=True)
    assert canonical_hash(a) == canonical_hash(b)
    text = '[{"kind":"tcp","name":"dc","target":"dc:389","timeout":2.0}]'
    import hashlib

    assert canonical_hash(a) == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_hash([]) == ""
    assert canonical_hash([p.as_table() for p in a]) == canonical_hash(a), "as an ack has them"
    assert canonical_hash(a) != canonical_hash(parse_probes(
        [{"name": "dc", "kind": "tcp", "target": "dc:389", "timeout": 2, "interval": 60}],
        hub=True))


def test_the_agent_keeps_what_fits_and_drops_the_rest_with_reasons():
    tables = [{"name": "scan", "kind": "tcp", "target": "10.0.0.1:1-1024"},
              {"name": "fast", "kind": "dns", "target": "a.example", "interval": 1},
              "not a table", {"name": "slow", "kind": "tcp", "target": "h:1", "timeout": 60},
              *_hub_tables(20)]
    kept, dropped = sift_hub_probes(tables)
    assert [k.name for k in kept] == [f"p{i}" for i in range(16)]
    assert len(dropped) == 4 + 4
    assert dropped[0].startswith('probe_policy.probes[0] ("scan").target: a hub probe '
                                 'connects to one port')
    assert dropped[1] == ('probe_policy.probes[1] ("fast").interval: 1 s is faster than the '
                          '60 s floor')
    assert dropped[3] == ('probe_policy.probes[3] ("slow").timeout: 60 s is longer than the '
                          '10 s a hub probe may wait (it delays every report)')
    assert dropped[-1] == "probe_policy.probes[23]: over the hub limit of 16 probes"
    assert sift_hub_probes("all") == ([], ["probe_policy.probes: expected a list of tables, "
                                           "got str"])


# --- the hub's policy on the agent ---------------------------------------------------------

POLICY = {"hash": "ab" * 32, "probes": [
    {"name": "dc", "kind": "tcp", "target": "127.0.0.1:9", "timeout": 0.5},
    {"name": "daily", "kind": "dns", "target": "localhost", "interval": 86400},
    {"name": "scan", "kind": "tcp", "target": "10.0.0.1:1-1024"},
    {"name": "slow", "kind": "tcp", "target": "127.0.0.1:9", "timeout": 60}]}


def test_a_received_policy_is_kept_private_and_survives_a_restart(tmp_path, caplog):
    tmp_path.chmod(0o700)
    policy = ProbePolicy(tmp_path, enabled=True)
    assert policy.reported_hash == ""
    with caplog.at_level(logging.INFO, "estate.agent"):
        policy.receive(POLICY)
    assert 'hub probe dropped, over the agent\'s limits: probe_policy.probes[2] ("scan")' \
        in caplog.text
    assert 'probe_policy.probes[3] ("slow").timeout: 60 s is longer than the 10 s a hub ' \
        'probe may wait' in caplog.text
    assert policy.reported_hash == "ab" * 32, "the hub's hash, though probes were dropped"
    path = tmp_path / POLICY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ProbePolicy(tmp_path, enabled=True)
    assert again.reported_hash == "ab" * 32
    assert [(p.name, p.interval_s) for p in again.probes] == [("dc", None), ("daily", 86400.0)]
    again.receive({"hash": "", "probes": []})
    assert ProbePolicy(tmp_path, enabled=True).probes == ()


def test_a_malformed_policy_changes_nothing(tmp_path, caplog):
    tmp_path.chmod(0o700)
    policy = ProbePolicy(tmp_path, enabled=True)
    policy.receive(POLICY)
    for bad in (None, [], {"hash": "not-hex", "probes": []}, {"probes": []}):
        policy.receive(bad)
    assert policy.reported_hash == "ab" * 32 and len(policy.probes) == 2
    assert "not one (no valid hash)" in caplog.text
    (tmp_path / POLICY_FILE).write_text("{broken")
    assert ProbePolicy(tmp_path, enabled=True).reported_hash == ""


def test_a_hostile_hub_policy_cannot_put_terminal_codes_or_floods_in_the_agents_log(
        tmp_path, caplog):
    from estate.inventory.sanitise import is_unsafe

    tmp_path.chmod(0o700)
    evil = "\x1b]0;owned\x07\u202e\x9b2J"
    tables = [{"name": f"n{evil}", "kind": "tcp", "target": "127.0.0.1:9"},
              {"name": "k", "kind": "tcp", "target": "127.0.0.1:9", f"x{evil}" * 500: 1},
              {"name": f"dc{evil}", "kind": "bogus"}]
    kept, dropped = sift_hub_probes(tables)
    assert kept == [] and len(dropped) == 3
    assert dropped[0].startswith("probe_policy.probes[0].name: expected printable text")
    with caplog.at_level(logging.INFO, "estate.agent"):
        ProbePolicy(tmp_path, enabled=True).receive({"hash": "", "probes": tables})
    assert not any(is_unsafe(c) for c in caplog.text if c != "\n")
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    with pytest.raises(ProbeSpecError, match="expected printable text"):
        parse_probes([{"name": "a\nb", "kind": "tcp", "target": "127.0.0.1:9"}])


def test_a_saved_policy_too_large_to_be_one_is_not_read(tmp_path, caplog):
    tmp_path.chmod(0o700)
    path = tmp_path / POLICY_FILE
    with path.open("wb") as f:  # sparse: the agent must not read it whole to learn that
        f.truncate(1 << 30)
    assert ProbePolicy(tmp_path, enabled=True).reported_hash == ""
    assert "too large" in caplog.text


def test_accept_hub_probes_false_reports_no_hash_and_runs_none(tmp_path, caplog):
    tmp_path.chmod(0o700)
    ProbePolicy(tmp_path, enabled=True).receive(POLICY)
    off = ProbePolicy(tmp_path, enabled=False)
    assert off.reported_hash is None
    off.receive(POLICY)
    assert "accept_hub_probes is false: ignored" in caplog.text
    results = off.prober(None, (), 300.0, None)({})
    assert {r["source"] for r in results} == {"builtin"}


def test_a_hub_probe_with_an_interval_runs_once_per_interval(tmp_path):
    tmp_path.chmod(0o700)
    policy = ProbePolicy(tmp_path, enabled=True)
    policy.receive(POLICY)

    def report(now):
        results = policy.prober(None, (), 300.0, None, now=now)({})
        return {r["name"]: r for r in results if r["source"] == "hub"}

    first = report(1000.0)
    assert set(first) == {"dc", "daily"} and first["daily"]["ok"]
    policy.last["dc"] = (1000.0, {**first["dc"], "error": "marker"})
    policy.last["daily"] = (1000.0, {**first["daily"], "error": "marker"})
    later = report(1300.0)
    # dc (every report) ran again; daily repeats its last result until a day has passed.
    assert later["dc"]["error"] != "marker" and later["daily"]["error"] == "marker"
    assert report(1000.0 + 86400)["daily"]["error"] is None


def test_no_probe_waits_longer_than_half_the_report_interval(tmp_path):
    tmp_path.chmod(0o700)
    asked: list[float] = []

    def round_trip(timeout_s: float) -> float:
        asked.append(timeout_s)
        return 1.0

    policy = ProbePolicy(tmp_path, enabled=True)
    policy.prober("127.0.0.1:2222", (), 1.0, round_trip)({})
    policy.prober("127.0.0.1:2222", (), 300.0, round_trip)({})
    # The hub probe's own 5 s timeout, cut to 0.5 s for an agent reporting every second.
    assert asked == [0.5, BUILTIN_TIMEOUTS_S["hub"]]
