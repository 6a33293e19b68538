"""The sandbox network API on the host for real: namespaces, a test bridge, veths, leases.

Every test runs on its own test-only network (bridge hkt<5 hex>, subnet
10.2xx.y.0/24) in a temp state root and run dir, and its fixture checks after
cleanup that no link, mount under the run dir or lease is left. Traffic goes
only to addresses inside namespaces the test made (TESTING.md).
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hanok
import pytest
from hanok.netns import bridge, ipam, namespace, network
from hanok.runtime.errors import BadState, Exists, InvalidArgument, NetError, NotFound
from helpers import BUSYBOX, mounts_under

# nat.py reads its table name at import: these tests (and the children they
# start) use their own table, never the host's `hanok` one.
TEST_TABLE = "hanoktest" + secrets.token_hex(3)


@pytest.fixture(autouse=True)
def _own_nft_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's nft table, for in-process calls and the child processes tests start (not the session's)."""
    monkeypatch.setenv("HANOK_NFT_TABLE", TEST_TABLE)
NAT_AVAILABLE = importlib.util.find_spec("hanok.netns.nat") is not None
NAT_SKIP_REASON = "netns/nat.py is not in the tree yet: masquerade and port mapping are not exercised"
# The killed-setup child imports the same hanok tree as this test.
HANOK_PARENT_DIR = os.path.dirname(os.path.dirname(hanok.__file__))


@dataclass
class Env:
    """One test's state root, run dir and network, and the names of the links it may make.

    Other suites run at the same time and make links of their own, so leak
    checks look only at this test's bridges and its owners' host veths.
    """

    state_root: str
    run_dir: str
    config: network.NetworkConfig
    owners: set[str] = field(default_factory=set)
    bridges: set[str] = field(default_factory=set)

    def setup(self, owner: str, **kwargs) -> dict:
        self.owners.add(owner)
        kwargs.setdefault("network", self.config.name)
        return network.setup(self.state_root, self.run_dir, owner, **kwargs)

    def links(self) -> set[str]:
        """This test's links that exist now."""
        mine = self.bridges | {bridge.host_ifname(owner) for owner in self.owners}
        return _links() & mine

    def teardown(self, owner: str) -> None:
        network.teardown(self.state_root, self.run_dir, owner)

    def pool(self) -> ipam.Pool:
        return ipam.Pool(self.state_root, self.config.name, self.config.subnet, self.config.gateway)


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _random_subnet(prefix: int = 24) -> str:
    return f"10.{random.randint(210, 250)}.{random.randint(0, 255)}.0/{prefix}"


def _make_network(state_root: str, prefix: int = 24) -> network.NetworkConfig:
    name = "t" + secrets.token_hex(4)
    return network.create_network(state_root, name, _random_subnet(prefix), bridge="hkt" + secrets.token_hex(3)[:5],
                                  masquerade=NAT_AVAILABLE)


def _remove_everything(state_root: str, run_dir: str) -> None:
    """Tear down every owner, then every network; unmount the netns dir's own bind mount."""
    try:
        network.gc(state_root, run_dir, lambda owner: False)
    finally:
        for config in network.list_networks(state_root):
            if config.name != network.DEFAULT_NETWORK:
                network.remove_network(state_root, run_dir, config.name)
        netns_dir = os.path.join(run_dir, "netns")
        while mounts_under(Path(netns_dir)):
            subprocess.run(["umount", "-l", netns_dir], check=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    state_root, run_dir = str(tmp_path / "state"), str(tmp_path / "run")
    os.makedirs(run_dir)
    config = _make_network(state_root)
    env = Env(state_root, run_dir, config, bridges={config.bridge})
    try:
        yield env
    finally:
        _remove_everything(state_root, run_dir)
    assert env.links() == set()
    if NAT_AVAILABLE:
        from hanok.netns import nat

        assert nat.rules() == []                                  # this module's own nft table
    assert mounts_under(tmp_path) == []
    assert not os.path.exists(os.path.join(state_root, "net", "ipam", config.name))
    endpoints = Path(state_root, "net", "endpoints")
    assert not endpoints.exists() or list(endpoints.iterdir()) == []


def _in_netns(path: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=20,
                          **kwargs)


def _send_until_accepted(netns_path: str | None, ip: str, port: int, payload: str) -> None:
    """Connect with busybox nc (from the host when netns_path is None) until the listener is up."""
    prefix = ["nsenter", f"--net={netns_path}"] if netns_path else []
    for _ in range(200):
        done = subprocess.run([*prefix, str(BUSYBOX), "nc", "-w", "2", ip, str(port)], input=payload,
                              capture_output=True, text=True, timeout=20)
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing accepted on {ip}:{port}: {done.stderr}")


def _listen_once(netns_path: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net={netns_path}", str(BUSYBOX), "nc", "-l", "-p", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_owner_gone(env: Env, owner: str) -> None:
    assert bridge.host_ifname(owner) not in _links()
    assert owner not in env.pool().leases()
    assert not os.path.lexists(network.netns_path(env.run_dir, owner))
    assert not os.path.exists(os.path.join(env.state_root, "net", "endpoints", owner + ".json"))


def test_bridge_setup_result_and_record(env: Env):
    result = env.setup("box-a")
    ip = result["ip"]
    assert result == {"mode": "bridge", "network": env.config.name, "netns": network.netns_path(env.run_dir, "box-a"),
                      "interface": "eth0", "ip": ip, "prefixLength": 24, "gateway": env.config.gateway,
                      "mac": bridge.mac_for(ip), "hostInterface": bridge.host_ifname("box-a"), "ports": []}
    assert ip == env.config.gateway.rsplit(".", 1)[0] + ".2"
    with open(os.path.join(env.state_root, "net", "endpoints", "box-a.json")) as f:
        assert json.load(f) == result
    assert env.setup("box-a") == result                                # idempotent
    inside = _in_netns(result["netns"], "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"inet {ip}/24" in inside
    routes = _in_netns(result["netns"], "ip", "route", "show", "default").stdout
    assert routes.strip() == f"default via {env.config.gateway} dev eth0"
    host_end = result["hostInterface"]
    assert Path(f"/sys/class/net/{host_end}/brport/hairpin_mode").read_text().strip() == "1"
    assert os.path.realpath(f"/sys/class/net/{host_end}/master").endswith("/" + env.config.bridge)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert Path(f"/sys/class/net/{env.config.bridge}/address").read_text().strip() == bridge.mac_for(
        env.config.gateway)
    if NAT_AVAILABLE:
        from hanok.netns import nat

        assert [rule["network"] for rule in nat.rules()] == [env.config.name] * len(nat.rules()) != []
    env.teardown("box-a")
    _assert_owner_gone(env, "box-a")


def test_two_sandboxes_talk_over_tcp(env: Env):
    a, b = env.setup("talk-a"), env.setup("talk-b")
    listener = _listen_once(a["netns"], 5000)
    try:
        _send_until_accepted(b["netns"], a["ip"], 5000, "hello from b\n")
        out, _ = listener.communicate(timeout=20)
    finally:
        listener.kill()
        listener.wait()
    assert out == "hello from b\n"


def test_host_reaches_sandbox(env: Env):
    sandbox = env.setup("reach")
    ping = subprocess.run([str(BUSYBOX), "ping", "-c", "1", "-W", "5", sandbox["ip"]], capture_output=True,
                          text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    listener = _listen_once(sandbox["netns"], 5001)
    try:
        _send_until_accepted(None, sandbox["ip"], 5001, "from the host\n")
        out, _ = listener.communicate(timeout=20)
    finally:
        listener.kill()
        listener.wait()
    assert out == "from the host\n"


def test_none_mode_has_only_lo(env: Env):
    result = env.setup("lonely", mode="none")
    assert result["mode"] == "none" and result["ip"] is None and result["network"] is None
    links = _in_netns(result["netns"], "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and ": lo: <LOOPBACK,UP,LOWER_UP>" in links[0]
    assert env.pool().leases() == {}
    env.teardown("lonely")
    _assert_owner_gone(env, "lonely")


def test_host_mode_makes_nothing(env: Env):
    assert env.setup("hosted", mode="host") == {"mode": "host"}
    assert env.links() == set()
    assert namespace.list_names(env.run_dir) == []


def test_dns_files_with_hostname(env: Env):
    result = env.setup("named", hostname="web1")
    files = result["files"]
    assert sorted(files) == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert Path(files["/etc/hostname"]).read_text() == "web1\n"
    assert f"{result['ip']}\tweb1\n" in Path(files["/etc/hosts"]).read_text()
    env.teardown("named")
    assert not any(os.path.exists(p) for p in files.values())


def test_30_concurrent_setups_get_distinct_addresses(env: Env):
    owners = [f"many-{n}" for n in range(30)]
    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(env.setup, owners))
    addresses = [r["ip"] for r in results]
    assert len(set(addresses)) == 30
    assert env.pool().leases() == dict(zip(owners, addresses))
    assert {bridge.host_ifname(o) for o in owners} <= _links()
    assert namespace.list_names(env.run_dir) == sorted(owners)
    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(env.teardown, owners))
    for owner in owners:
        _assert_owner_gone(env, owner)


KILLED_SETUP = """
import sys, time
from hanok.netns import bridge, ipam, network

state_root, run_dir, owner, net, where = sys.argv[1:]

def block(*args, **kwargs):
    print("blocked", flush=True)
    time.sleep(3600)

if where == "before-lease":
    ipam.Pool.allocate = block
else:
    attach = bridge.attach
    def attach_then_block(*args, **kwargs):
        attach(*args, **kwargs)
        block()
    bridge.attach = attach_then_block
network.setup(state_root, run_dir, owner, network=net)
"""


@pytest.mark.parametrize("where", ["before-lease", "after-veth"])
def test_setup_killed_half_way_then_gc_leaves_nothing(env: Env, where: str):
    env.setup("survivor")
    env.owners.add("victim")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_SETUP), env.state_root, env.run_dir,
                              "victim", env.config.name, where], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=HANOK_PARENT_DIR))
    try:
        assert child.stdout is not None and child.stdout.readline() == "blocked\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert namespace.exists(env.run_dir, "victim")
    if where == "after-veth":
        assert bridge.host_ifname("victim") in _links()
        assert "victim" in env.pool().leases()
    removed = network.gc(env.state_root, env.run_dir, lambda owner: owner == "survivor")
    assert removed == {"owners": ["victim"], "leases": [], "veths": []}
    _assert_owner_gone(env, "victim")
    assert "survivor" in env.pool().leases() and bridge.host_ifname("survivor") in _links()


def test_gc_removes_orphan_veth(env: Env):
    sandbox = env.setup("orphan")
    os.unlink(os.path.join(env.state_root, "net", "endpoints", "orphan.json"))
    env.pool().release("orphan")
    # Keep the namespace alive in a process while its bind mount goes, so the
    # veth outlives every record of its owner.
    holder = subprocess.Popen(["nsenter", f"--net={sandbox['netns']}", "sleep", "60"])
    try:
        for _ in range(500):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.01)
        namespace.remove(env.run_dir, "orphan")
        assert network.gc(env.state_root, env.run_dir, lambda owner: True) == {
            "owners": [], "leases": [], "veths": [bridge.host_ifname("orphan")]}
        assert bridge.host_ifname("orphan") not in _links()
    finally:
        holder.kill()
        holder.wait()


def test_record_without_namespace_is_set_up_again(env: Env):
    first = env.setup("rebooted")
    namespace.remove(env.run_dir, "rebooted")                  # what a reboot does to run_dir
    again = env.setup("rebooted")
    assert namespace.exists(env.run_dir, "rebooted")
    assert again["ip"] != first["ip"] and env.pool().leases() == {"rebooted": again["ip"]}
    assert _in_netns(again["netns"], "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout.count("inet ") == 1


def test_teardown_removes_a_record_a_killed_writer_left_half_written(env: Env):
    env.setup("killed")
    endpoints = os.path.join(env.state_root, "net", "endpoints")
    stale = os.path.join(endpoints, "killed.json.tmp-4194304")
    with open(stale, "w") as f:
        f.write('{"netw')
    env.teardown("killed")
    assert not os.path.exists(stale)
    _assert_owner_gone(env, "killed")


@pytest.mark.parametrize("damage", [b"", b'{"mode": "bri', b"[1, 2]", b'{"mode": "no\xff\xfe'])
def test_an_unreadable_record_is_handled_like_a_setup_that_died(env: Env, damage: bytes):
    """Records are not fsynced: after a power loss one may be empty or cut short."""
    first = env.setup("damaged")
    record = os.path.join(env.state_root, "net", "endpoints", "damaged.json")
    Path(record).write_bytes(damage)
    again = env.setup("damaged")                    # set up afresh, the leftovers torn down first
    assert namespace.exists(env.run_dir, "damaged") and env.pool().leases() == {"damaged": again["ip"]}
    assert again["ip"] != first["ip"]
    Path(record).write_bytes(damage)
    assert network.gc(env.state_root, env.run_dir, lambda owner: False)["owners"] == ["damaged"]
    _assert_owner_gone(env, "damaged")
    env.setup("damaged")
    Path(record).write_bytes(damage)
    env.teardown("damaged")                         # every trace looked for
    _assert_owner_gone(env, "damaged")


def test_teardown_is_idempotent(env: Env):
    env.setup("twice")
    env.teardown("twice")
    env.teardown("twice")
    env.teardown("never-set-up")
    _assert_owner_gone(env, "twice")


def test_bad_input_leaves_nothing_behind(env: Env):
    env.owners.update({"lost", "odd"})
    networks = network.list_networks(env.state_root)
    with pytest.raises(InvalidArgument, match="bad subnet '10.250.0.1/24'"):
        network.create_network(env.state_root, "bad", "10.250.0.1/24")
    with pytest.raises(InvalidArgument, match=f"overlaps network {env.config.name}"):
        network.create_network(env.state_root, "overlap", env.config.subnet)
    with pytest.raises(InvalidArgument, match="bad bridge name 'waytoolongbridgename'"):
        network.create_network(env.state_root, "longbr", _random_subnet(), bridge="waytoolongbridgename")
    with pytest.raises(Exists, match=f"network {env.config.name} already exists"):
        network.create_network(env.state_root, env.config.name, _random_subnet())
    with pytest.raises(NotFound, match="network nosuch not found"):
        env.setup("lost", network="nosuch")
    with pytest.raises(InvalidArgument, match="bad network mode 'weird'"):
        env.setup("odd", mode="weird")
    with pytest.raises(InvalidArgument, match="bad owner id"):
        env.setup("bad/owner")
    assert network.list_networks(env.state_root) == networks
    assert env.links() == set()
    assert namespace.list_names(env.run_dir) == []


def test_exhausted_subnet_undoes_the_failed_setup(env: Env):
    tiny = _make_network(env.state_root, prefix=30)            # gateway .1, one address: .2
    env.bridges.add(tiny.bridge)
    env.setup("first", network=tiny.name)
    links = env.links()
    with pytest.raises(NetError, match=f"network {tiny.name}: no free address in {tiny.subnet}"):
        env.setup("second", network=tiny.name)
    assert env.links() == links
    assert namespace.list_names(env.run_dir) == ["first"]
    assert list(ipam.Pool(env.state_root, tiny.name, tiny.subnet).leases()) == ["first"]
    with pytest.raises(BadState, match=f"network {tiny.name} has 1 active endpoints"):
        network.remove_network(env.state_root, env.run_dir, tiny.name)
    env.teardown("first")
    network.remove_network(env.state_root, env.run_dir, tiny.name)
    assert not os.path.exists(f"/sys/class/net/{tiny.bridge}")


@pytest.mark.skipif(not NAT_AVAILABLE, reason=NAT_SKIP_REASON)
def test_published_ports_are_tagged_and_removed(env: Env):
    from hanok.netns import nat

    result = env.setup("published", ports=[nat.PortMapping(container_port=80, host_port=18080)])
    assert result["ports"] == [nat.PortMapping(container_port=80, host_port=18080).to_dict()]
    assert "published" in nat.owners()
    env.teardown("published")
    assert "published" not in nat.owners()


def test_attach_failing_inside_the_namespace_deletes_the_pair(env: Env):
    result = env.setup("base")                                  # the bridge exists from here on
    path = namespace.create(env.run_dir, "unroutable")
    try:
        with pytest.raises(NetError, match="cannot configure eth0 in .*unroutable: Network is unreachable"):
            bridge.attach(path, env.config.bridge, bridge.host_ifname("unroutable"), address_cidr="10.209.0.2/24",
                          gateway="192.0.2.1")
        assert bridge.host_ifname("unroutable") not in _links()
        assert len(_in_netns(path, "ip", "-o", "link").stdout.splitlines()) == 1    # only lo again
    finally:
        namespace.remove(env.run_dir, "unroutable")
    assert result["hostInterface"] in _links()


def test_a_bridge_hanok_did_not_make_is_never_used_or_deleted(env: Env):
    """`network create --bridge br0` must not take over (and later delete) a bridge the host uses."""
    foreign = "hkt" + os.urandom(3).hex() + "f"
    subprocess.run(["ip", "link", "add", foreign, "type", "bridge"], check=True)
    try:
        network.create_network(env.state_root, "foreign", _random_subnet(), bridge=foreign)
        with pytest.raises(NetError, match=f"^bridge {foreign} exists and was not made by hanok"):
            network.setup(env.state_root, env.run_dir, "owner-f", network="foreign")
        _assert_owner_gone(env, "owner-f")
        network.remove_network(env.state_root, env.run_dir, "foreign")
        assert os.path.isdir(f"/sys/class/net/{foreign}")  # still there: not ours to delete
        assert subprocess.run(["ip", "-4", "-o", "addr", "show", foreign], capture_output=True,
                              text=True).stdout == ""  # and no address was added to it
    finally:
        subprocess.run(["ip", "link", "del", foreign], capture_output=True)
