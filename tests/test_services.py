"""The systemd units: rated by `systemd-analyze security`, and both services run under them.

There is no running systemd here (a container), so each unit's own settings are applied by a
small launcher instead (this file run as a script): a private mount namespace for
ProtectSystem=strict, ProtectHome=read-only, ReadWritePaths=, PrivateTmp=, PrivateDevices=,
ProtectKernelTunables= and ProtectControlGroups=; a private UTS namespace for ProtectHostname=;
UMask=; CapabilityBoundingSet= and NoNewPrivileges= through prctl; MemoryDenyWriteExecute=
through the kernel's PR_SET_MDWE (Linux 6.3+); and SystemCallFilter=, SystemCallErrorNumber=,
SystemCallArchitectures=native and RestrictAddressFamilies= as a seccomp filter built with
libseccomp from the groups `systemd-analyze syscall-filter` lists. Not applied:
RestrictNamespaces=, ProtectKernelModules=, ProtectKernelLogs=, ProtectClock='s device rule,
LockPersonality=, RestrictSUIDSGID=, RestrictRealtime=, MemoryMax=, CPUQuota=, and for the hub
User=, PrivateUsers=, ProtectProc= and RemoveIPC= (it runs as root without capabilities).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_EXPOSURE = 2.5
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing (Debian: apt-get install systemd)")


def _analyze(unit_file: Path) -> float:
    """`systemd-analyze security --offline=true`'s overall exposure (0 safe … 10 exposed)."""
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit_file)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in done.stderr and done.returncode:
        pytest.skip(f"this systemd-analyze cannot rate unit files offline: {done.stderr[:200]}")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, f"no overall exposure line:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return float(m.group(1))


def _agent_unit(config: Path) -> str:
    from estate.agent.systemd import unit_text

    return unit_text(config, executable="/usr/bin/estate-agent")


def _hub_unit(listen: str, data: Path | None = None) -> str:
    from estate.inventory.hub._systemd import DATA_DIR, unit_text

    return unit_text(listen, data or DATA_DIR, executable="/usr/bin/estate-hub")


@needs_analyze
@pytest.mark.parametrize("config", ["/etc/estate/agent.toml", "/var/lib/estate/agent.toml"])
def test_agent_unit_rates_2_5_or_lower(tmp_path, config):
    unit = tmp_path / "estate-agent.service"
    unit.write_text(_agent_unit(Path(config)))
    assert _analyze(unit) <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize("listen", ["0.0.0.0:2222", "0.0.0.0:22"])
def test_hub_unit_rates_2_5_or_lower(tmp_path, listen):
    unit = tmp_path / "estate-hub.service"
    unit.write_text(_hub_unit(listen))
    assert _analyze(unit) <= MAX_EXPOSURE


def test_hub_install_service_print():
    from tests.harness import run

    unit = run("-m", "estate.inventory.hub.cli", "install-service", "--print", "--listen",
               "0.0.0.0:2222").stdout
    for line in ("User=estate-hub", "StateDirectory=estate-hub", "LimitNOFILE=65536",
                 "CapabilityBoundingSet=\n", "PrivateUsers=yes",
                 "serve --data /var/lib/estate-hub --listen 0.0.0.0:2222"):
        assert line in unit
    low = run("-m", "estate.inventory.hub.cli", "install-service", "--print", "--listen",
              "[::]:22", "--data", "/srv/estate hub").stdout
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in low and "PrivateUsers" not in low
    assert 'ReadWritePaths="/srv/estate hub"' in low and "StateDirectory" not in low
    bad = run("-m", "estate.inventory.hub.cli", "install-service", "--print", "--listen", "2222",
              check=False)
    assert bad.returncode != 0 and "--listen: expected HOST:PORT" in bad.stderr


def test_agent_unit_state_folder():
    etc = _agent_unit(Path("/etc/estate/agent.toml"))
    assert "ReadWritePaths=/etc/estate\n" in etc and "StateDirectory" not in etc
    var = _agent_unit(Path("/var/lib/estate/agent.toml"))
    assert "StateDirectory=estate\n" in var and "ReadWritePaths" not in var
    odd = _agent_unit(Path("/opt/my estate/100%/agent.toml"))
    assert 'run --config "/opt/my estate/100%%/agent.toml"' in odd


# --- the agent under its unit's confinement ------------------------------------------------

def _settings(unit: str) -> dict[str, list[str]]:
    """The [Service] section: each key's values in order (SystemCallFilter= repeats)."""
    section, out = "", {}
    for line in unit.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls in a systemd group, its nested groups included."""
    assert ANALYZE is not None
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    text = subprocess.run([ANALYZE, "syscall-filter", "--no-pager", group], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    calls = set()
    for line in text.splitlines()[1:]:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        calls |= _expand(name, seen) if name.startswith("@") else {name}
    return calls


def _syscalls(values: list[str]) -> list[str]:
    """SystemCallFilter= lines as systemd combines them: the allow list less the `~` ones."""
    allow: set[str] = set()
    deny: set[str] = set()
    for value in values:
        target = deny if value.startswith("~") else allow
        for item in value.lstrip("~").split():
            target |= _expand(item) if item.startswith("@") else {item}
    return sorted(allow - deny)


_CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
         "CAP_SYS_RAWIO": 17}


def confinement(unit: str) -> dict:
    """What the launcher applies, from the unit's own settings."""
    s = _settings(unit)
    rw = [v.strip('"') for v in s.get("ReadWritePaths", [])]
    assert s.get("ProtectSystem") == ["strict"] and s.get("PrivateTmp") == ["yes"]
    return {
        "read_write": rw,
        "private_devices": s.get("PrivateDevices") == ["yes"],
        "umask": int(s["UMask"][0], 8),
        "caps": [_CAPS[c] for c in " ".join(s.get("CapabilityBoundingSet", [])).split()],
        "no_new_privs": s.get("NoNewPrivileges") == ["yes"],
        "mdwe": s.get("MemoryDenyWriteExecute") == ["yes"],
        "syscalls": _syscalls(s["SystemCallFilter"]),
        "errno": getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[0]),
        "families": [int(getattr(socket, f)) for f in
                     " ".join(s.get("RestrictAddressFamilies", [])).split()],
    }


def _launcher_problem() -> str | None:
    """Why the launcher cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "Linux only"
    if os.geteuid() != 0:
        return "the agent unit runs as root; emulating it needs root (mount namespaces)"
    if ANALYZE is None:
        return "systemd-analyze is missing (it lists the system-call groups)"
    if not ctypes.util.find_library("seccomp"):
        return "libseccomp is missing"
    probe = subprocess.run([sys.executable, __file__, json.dumps(
        {"read_write": [], "private_devices": True, "umask": 0o77, "caps": [],
         "no_new_privs": True, "mdwe": False, "syscalls": [], "errno": 1, "families": []}),
        "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode == 126:
        return f"cannot build the sandbox here: {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def launcher_ok():
    problem = _launcher_problem()
    if problem:
        pytest.skip(problem)


def _collect(config: Path, wrapper: tuple[str, ...] = ()) -> dict:
    done = subprocess.run([*wrapper, sys.executable, "-m", "estate.agent", "collect", "--config",
                           str(config)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


PROBES = """
[[probes]]
name = "hub"
kind = "tcp"
target = "{hub}"

[[probes]]
name = "name"
kind = "dns"
target = "localhost"

[[probes]]
name = "gateway"
kind = "gateway"
target = "127.0.0.1"
"""


def test_agent_collects_and_reports_under_its_unit(launcher_ok, hub, tmp_path):
    """A real collection, then `run` to a real hub, confined as the unit confines the agent."""
    from tests.harness import Agent, AgentService, stored_sequences, wait_for

    agent = Agent(hub, tmp_path / "agent")
    settings = confinement(_agent_unit(agent.config))
    assert settings["read_write"] == [str(agent.config.parent)]
    wrapper = (sys.executable, __file__, json.dumps(settings))

    # Probes: TCP to the hub, DNS, and ICMP to loopback (a raw socket needs CAP_NET_RAW unless
    # the kernel allows unprivileged ping sockets).
    agent.config.write_text(agent.config.read_text() + PROBES.format(hub=hub.address))
    free = _collect(agent.config)
    confined = _collect(agent.config, wrapper)
    assert confined["errors"] == free["errors"]
    assert [(p["name"], p["ok"], p["error"]) for p in confined["connectivity"]["probes"]] == \
        [(p["name"], True, None) for p in free["connectivity"]["probes"]]
    for section, key in (("system", "os"), ("hardware", "serial"), ("hardware", "uuid"),
                         ("hardware", "disks"), ("software", "hash")):
        assert confined[section][key] == free[section][key], (section, key)
    assert [i["name"] for i in confined["network"]["interfaces"]] == \
        [i["name"] for i in free["network"]["interfaces"]]
    assert confined["network"]["default_gateway"] == free["network"]["default_gateway"]

    svc = AgentService(agent, wrapper=wrapper).start()
    try:
        wait_for(lambda: len(stored_sequences(hub, agent.agent_id)) >= 2, timeout=90,
                 what=f"2 reports from the confined agent; its log:\n{svc.log()[-2000:]}")
        assert svc.stop(signal.SIGTERM) == 0, svc.log()[-2000:]
    finally:
        svc.kill()
    # The confined agent wrote its spool and status in its one writable folder, private
    # (the agent sets these modes itself; UMask=0077 covers what it does not).
    for name in ("spool.db", "status.json"):
        mode = (agent.config.parent / name).stat().st_mode
        assert mode & 0o077 == 0, (name, oct(mode))


def test_hub_serves_under_its_unit(launcher_ok, tmp_path):
    """The hub's settings (less its user and PrivateUsers=, which need systemd) around a real
    `serve`: enrolment and reports over SSH with no capability, the filter and MDWE."""
    from tests.harness import Agent, AgentService, HubProcess, stored_sequences, wait_for

    data = tmp_path / "hub"
    data.mkdir(mode=0o700)
    settings = confinement(_hub_unit("127.0.0.1:0", data))
    assert settings["caps"] == [] and settings["read_write"] == [str(data)]
    hub = HubProcess(data)
    with open(hub.log_path, "a") as log:
        hub.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(settings), sys.executable, "-m",
             "estate.inventory.hub.cli", "serve", "--listen", "127.0.0.1:0", "--data", str(data)],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    try:
        assert hub.proc.stdout is not None
        for _ in range(10):  # bounded: the hub prints three lines before it listens
            line = hub.proc.stdout.readline()
            if m := re.search(r"host key (SHA256:\S+)", line):
                hub.fingerprint = m.group(1)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                hub.port = int(m.group(1))
                break
        assert hub.port, f"the confined hub did not start:\n{hub.log()[-2000:]}"
        agent = Agent(hub, tmp_path / "agent")
        svc = AgentService(agent).start()
        try:
            wait_for(lambda: len(stored_sequences(hub, agent.agent_id)) >= 2, timeout=90,
                     what=f"2 reports stored by the confined hub; its log:\n{hub.log()[-2000:]}")
        finally:
            svc.kill()
        assert hub.signal(signal.SIGTERM) == 0, hub.log()[-2000:]
    finally:
        hub.kill()


# --- the launcher: run as `python test_services.py SETTINGS_JSON COMMAND…` ---------------

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_ST_TO_MS = {2: _MS_NOSUID, 4: _MS_NODEV, 8: _MS_NOEXEC}
_CLONE_NEWNS, _CLONE_NEWUTS = 0x00020000, 0x04000000
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_SET_MDWE = 24, 38, 65
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _sandbox_main(settings: dict, command: list[str]) -> None:  # pragma: no cover - subprocess
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            sys.stderr.write(f"sandbox: {what}: {os.strerror(err)}\n")
            sys.exit(126)

    def mount(src: str | None, dst: str, fstype: str | None, flags: int) -> None:
        check(libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags,
                         None), f"mount {dst}")

    def bind(src: str, dst: str, read_only: bool) -> None:
        mount(src, dst, None, _MS_BIND)
        mount(None, dst, None, _MS_REMOUNT | _MS_BIND | (_MS_RDONLY if read_only else 0))

    check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWUTS), "unshare")
    # Nothing done below may reach the host's mounts.
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    rw = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in settings["read_write"]}
    # The checkout and its .venv may live under /tmp themselves (a CI clone): kept, read-only,
    # through the private /tmp below, as an installed Estate under /usr would be.
    code = {p: os.open(p, os.O_PATH | os.O_DIRECTORY)
            for p in {str(ROOT), str(Path(sys.prefix).resolve())}
            if p.startswith(("/tmp/", "/var/tmp/"))}
    devices = {d: os.open(f"/dev/{d}", os.O_PATH)
               for d in ("null", "zero", "full", "random", "urandom", "tty")}

    # ProtectSystem=strict (and ProtectHome=read-only, ProtectKernelTunables=,
    # ProtectControlGroups=): every mount read-only, this namespace's copy only (MS_BIND).
    with open("/proc/self/mountinfo") as f:
        points = sorted({line.split()[4].replace("\\040", " ") for line in f})
    for point in points:
        if point == "/proc" or point.startswith(("/proc/", "/dev")):
            continue
        flags = sum(ms for st, ms in _ST_TO_MS.items() if os.statvfs(point).f_flag & st)
        libc.mount(None, point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags,
                   None)  # best effort: a mount that refuses stays as it is
    bind("/proc/sys", "/proc/sys", read_only=True)

    # PrivateTmp=: the test's state folder lives under /tmp, so bring it back into the private
    # one (systemd would refuse such a unit; an installed agent keeps its state in /etc).
    for tmp in ("/tmp", "/var/tmp"):
        mount("tmpfs", tmp, "tmpfs", _MS_NOSUID | _MS_NODEV)
    for path, fd in code.items():
        os.makedirs(path, exist_ok=True)
        bind(f"/proc/self/fd/{fd}", path, read_only=True)
    for path, fd in rw.items():
        os.makedirs(path, exist_ok=True)
        bind(f"/proc/self/fd/{fd}", path, read_only=False)
    if settings["private_devices"]:
        mount("tmpfs", "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC)
        for name, fd in devices.items():
            Path(f"/dev/{name}").touch()
            bind(f"/proc/self/fd/{fd}", f"/dev/{name}", read_only=False)
        os.makedirs("/dev/shm")
        mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV)
    for fd in (*code.values(), *rw.values(), *devices.values()):
        os.close(fd)

    os.umask(settings["umask"])
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        if cap not in settings["caps"]:
            check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    if settings["no_new_privs"]:
        check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if settings["mdwe"]:
        # PR_MDWE_REFUSE_EXEC_GAIN: what systemd's MemoryDenyWriteExecute= refuses.
        check(libc.prctl(_PR_SET_MDWE, 1, 0, 0, 0), "PR_SET_MDWE (needs Linux 6.3)")

    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    ctx = seccomp.seccomp_init(0x00050000 | settings["errno"])  # SCMP_ACT_ERRNO(n)
    for name in settings["syscalls"]:
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a call of this architecture
        if name == "socket" and settings["families"]:
            for family in settings["families"]:
                cmp = (_ArgCmp * 1)(_ArgCmp(0, _SCMP_CMP_EQ, family, 0))
                seccomp.seccomp_rule_add_array(ctypes.c_void_p(ctx), _SCMP_ACT_ALLOW, nr, 1, cmp)
            continue
        seccomp.seccomp_rule_add_array(ctypes.c_void_p(ctx), _SCMP_ACT_ALLOW, nr, 0, None)
    if settings["syscalls"]:
        check(seccomp.seccomp_load(ctypes.c_void_p(ctx)), "seccomp_load")
    os.execvp(command[0], command)


if __name__ == "__main__":  # pragma: no cover - the launcher
    _sandbox_main(json.loads(sys.argv[1]), sys.argv[2:])
