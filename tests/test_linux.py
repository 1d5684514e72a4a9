"""Linux values cross-checked against the OS's own tools on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from estate.agent.collect import _linux

pytestmark = [pytest.mark.linux,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


def test_memory_against_proc_meminfo(live_report):
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    mem = live_report["hardware"]["memory"]
    assert mem["total_bytes"] == meminfo["MemTotal"]
    assert mem["swap_total_bytes"] == meminfo["SwapTotal"]


def test_cpu_count_against_nproc(live_report):
    assert live_report["hardware"]["cpu"]["threads"] == int(_run("nproc", "--all"))


@pytest.mark.skipif(not shutil.which("ip"), reason="iproute2 not installed")
def test_interfaces_against_ip_addr(live_report):
    ours = {n["name"]: n for n in live_report["network"]["interfaces"]}
    theirs = json.loads(_run("ip", "-j", "addr"))
    assert set(ours) == {i["ifname"] for i in theirs}
    for link in theirs:
        nic = ours[link["ifname"]]
        mac = link.get("address")
        expected = None if not mac or set(mac.replace(":", "")) <= {"0"} else mac
        assert nic["mac"] == expected, link["ifname"]
        assert nic["mtu"] == link["mtu"]
        addrs = {(a["address"], a["prefix"]) for a in nic["addresses"]}
        for a in link.get("addr_info", []):
            assert (a["local"], a["prefixlen"]) in addrs, (link["ifname"], a["local"])


@pytest.mark.skipif(not shutil.which("lsblk"), reason="util-linux not installed")
def test_disks_against_lsblk(live_report):
    ours = {d["name"]: d for d in live_report["hardware"]["disks"]}
    theirs = json.loads(_run("lsblk", "-J", "-b", "-d", "-o", "NAME,SIZE,ROTA,TYPE"))
    physical = {d["name"]: d for d in theirs["blockdevices"]
                if d["type"] == "disk" and os.path.exists(f"/sys/block/{d['name']}/device")}
    assert set(ours) == set(physical)
    for name, d in physical.items():
        assert ours[name]["size_bytes"] == int(d["size"]), name
        assert ours[name]["rotational"] == bool(d["rota"]), name


def test_volumes_against_df(live_report):
    ours = {v["mount"]: v for v in live_report["hardware"]["volumes"]}
    lines = _run("df", "-B1", "--output=target,size", *ours).splitlines()[1:]
    for line in lines:
        target, size = line.rsplit(None, 1)
        assert ours[target]["total_bytes"] == int(size), target


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="not a dpkg system")
def test_packages_against_dpkg_query(live_report):
    out = _run("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}:${Architecture}\n")
    installed = {line.split()[1] for line in out.splitlines() if line.startswith("ii")}
    ours = {f"{p['name']}:{p['arch']}" for p in live_report["software"]["packages"]}
    assert ours == installed
    assert live_report["software"]["count"] == len(installed)


def test_os_release(live_report):
    with open("/etc/os-release") as f:
        rel = _linux.parse_os_release(f.read())
    os_ = live_report["system"]["os"]
    assert os_["name"] == rel["NAME"]
    assert os_["version"].startswith(rel["VERSION_ID"])
    assert os_["kernel"] == os.uname().release


def test_default_gateway_from_proc_net_route():
    text = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "wlan0\t00000000\t0104A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
            "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
            "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
    assert _linux.parse_proc_net_route(text) == {"address": "10.0.0.1", "interface": "eth0"}
    assert _linux.parse_proc_net_route(text.splitlines()[0]) is None


def test_rpm_and_dpkg_parsers():
    rpm = "bash\t0:5.1.8-6.el9\tx86_64\ngpg-pubkey\t0:fd431d51-4ae0493b\t(none)\n"
    assert _linux.parse_rpm(rpm) == [
        {"name": "bash", "version": "5.1.8-6.el9", "arch": "x86_64", "publisher": None},
        {"name": "gpg-pubkey", "version": "fd431d51-4ae0493b", "arch": None, "publisher": None},
    ]
    assert _linux.parse_dpkg("ii \tvim\t2:9.0\tamd64\nrc \told\t1\tall\n") == [
        {"name": "vim", "version": "2:9.0", "arch": "amd64", "publisher": None}]
