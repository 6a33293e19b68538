"""Dual-stack networks on the host for real: IPv6 addresses, routes, TCP, masquerade rule, leases, cleanup.

Every test runs on its own test-only network: bridge hkt<5 hex>, IPv4 subnet
10.2xx.y.0/24 and a random unique local IPv6 /64 (never fd00::/64, which this
host's eth0 uses), in a temp state root and run dir, with its own nft table.
Traffic goes only to addresses inside namespaces the test made (TESTING.md):
the masquerade rule is checked by reading it, never by sending traffic out.
The fixture checks after cleanup that no link, mount, lease, endpoint record
or nft table (ip or ip6) is left.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_network
from hanok.netns import bridge, ipam, namespace, network
from hanok.runtime.errors import InvalidArgument, NetError
from helpers import mounts_under
from test_network import _links, _random_subnet, _remove_everything

TEST_TABLE = "hanoktest6" + secrets.token_hex(3)

# One TCP exchange over IPv6, each end a Python process inside a namespace (nsenter): the server accepts one
# connection and answers with what it read, upper-cased; the client retries until the server listens.
SERVER = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    print("listening", flush=True)
    conn, peer = s.accept()
    with conn:
        data = conn.recv(100)
        conn.sendall(data.upper())
    print(peer[0], flush=True)
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(sys.argv[3].encode())
    print(s.recv(100).decode(), flush=True)
"""


@pytest.fixture(autouse=True)
def _own_nft_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's nft tables (ip and ip6), never the host's `hanok` ones."""
    monkeypatch.setenv("HANOK_NFT_TABLE", TEST_TABLE)


@pytest.fixture(scope="module", autouse=True)
def _host_ipv6_forwarding() -> Iterator[None]:
    """hanok leaves IPv6 forwarding on once a dual-stack network is used (as docker does); the tests put the
    host's value back, as forwarding makes a host ignore router advertisements (its own SLAAC address)."""
    knob = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    before = knob.read_text()
    try:
        yield
    finally:
        knob.write_text(before)


def _random_subnet6() -> str:
    """A random unique local /64 (fdXX:XXXX:XXXX:XXXX::/64), never the host's own fd00::/64."""
    import ipaddress

    while True:
        subnet = ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(56) << 64), 64))
        if subnet != ipaddress.IPv6Network("fd00::/64"):
            return str(subnet)


def _nft_table_exists(family: str) -> bool:
    listed = subprocess.run(["nft", "list", "table", family, TEST_TABLE], capture_output=True, text=True)
    return listed.returncode == 0


def _in_netns(path: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=30)


class Env(test_network.Env):
    """test_network's Env on a dual-stack network."""

    def pool6(self) -> ipam.Pool:
        assert self.config.subnet6 is not None
        return ipam.Pool(self.state_root, self.config.name, self.config.subnet6, self.config.gateway6)


def _make_network(state_root: str, subnet6: str | None = None) -> network.NetworkConfig:
    return network.create_network(state_root, "t6" + secrets.token_hex(4), _random_subnet(),
                                  bridge="hkt" + secrets.token_hex(3)[:5], subnet6=subnet6 or _random_subnet6())


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
    assert not _nft_table_exists("ip") and not _nft_table_exists("ip6")
    assert mounts_under(tmp_path) == []
    assert not os.path.exists(os.path.join(state_root, "net", "ipam", config.name))
    endpoints = Path(state_root, "net", "endpoints")
    assert not endpoints.exists() or list(endpoints.iterdir()) == []


def _tcp_exchange(server_netns: str, server_ip: str, client_netns: str | None, port: int, payload: str,
                  connect_to: tuple[str, int] | None = None) -> str:
    """Run SERVER in `server_netns` on [server_ip]:port and CLIENT (in `client_netns`, or on the host) against
    it, or against `connect_to` (a published port); return the client's address as the server saw it, after
    checking the reply."""
    server = subprocess.Popen(["nsenter", f"--net={server_netns}", sys.executable, "-c", SERVER, server_ip,
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n", server.stderr
        prefix = ["nsenter", f"--net={client_netns}"] if client_netns else []
        address, to_port = connect_to or (server_ip, port)
        client = subprocess.run([*prefix, sys.executable, "-c", CLIENT, address, str(to_port), payload],
                                capture_output=True, text=True, timeout=30)
        assert client.returncode == 0, client.stderr
        assert client.stdout == payload.upper() + "\n"
        peer, _ = server.communicate(timeout=30)
        return peer.strip()
    finally:
        server.kill()
        server.wait()


def test_dual_stack_setup_result_record_addresses_routes_and_hosts(env: Env):
    config = env.config
    assert config.subnet6 is not None and config.gateway6 == config.subnet6.replace("::/64", "::1")
    stored = json.loads(Path(env.state_root, "net", "networks.json").read_text())["networks"][config.name]
    assert (stored["subnet6"], stored["gateway6"]) == (config.subnet6, config.gateway6)
    assert network.get_network(env.state_root, config.name) == config

    result = env.setup("dual-a", hostname="web6")
    ip, ip6 = result["ip"], result["ip6"]
    assert ip6 == config.subnet6.replace("::/64", "::2")
    assert {k: result[k] for k in ("ip6", "prefixLength6", "gateway6")} == {
        "ip6": ip6, "prefixLength6": 64, "gateway6": config.gateway6}
    assert json.loads(Path(env.state_root, "net", "endpoints", "dual-a.json").read_text()) == result
    assert env.setup("dual-a") == result                                   # idempotent
    assert env.pool6().leases() == {"dual-a": ip6}

    inside = _in_netns(result["netns"], "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
    assert inside.split()[1:5] == ["eth0", "inet6", f"{ip6}/64", "scope"] and " nodad" in inside
    routes = _in_netns(result["netns"], "ip", "-6", "route", "show", "default").stdout
    assert routes.split()[:5] == ["default", "via", config.gateway6, "dev", "eth0"]
    on_bridge = subprocess.run(["ip", "-o", "-6", "addr", "show", "dev", config.bridge, "scope", "global"],
                               capture_output=True, text=True).stdout
    assert f"inet6 {config.gateway6}/64 scope global nodad" in on_bridge
    assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "1"
    assert Path(result["files"]["/etc/hosts"]).read_text().endswith(f"{ip}\tweb6\n{ip6}\tweb6\n")


def test_two_sandboxes_talk_over_ipv6_tcp(env: Env):
    a, b = env.setup("talk6-a"), env.setup("talk6-b")
    assert _tcp_exchange(a["netns"], a["ip6"], b["netns"], 5006, "hello over ipv6") == b["ip6"]


def test_host_reaches_sandbox_over_ipv6(env: Env):
    sandbox = env.setup("reach6")
    assert _tcp_exchange(sandbox["netns"], sandbox["ip6"], None, 5007, "from the host") == env.config.gateway6


def test_masquerade_rule_for_the_v6_subnet_is_tagged_and_removed_with_the_network(env: Env):
    from hanok.netns import nat

    env.setup("masq6")
    config = env.config
    assert nat.rules() == [
        {"network": config.name, "kind": "masquerade", "chain": "postrouting",
         "rule": f'ip saddr {config.subnet} oifname != "{config.bridge}" masquerade '
                 f'comment "hanok-network:{config.name}"'},
        {"network": config.name, "kind": "hairpin", "chain": "postrouting",
         "rule": f'ip saddr {config.subnet} oifname "{config.bridge}" ct status dnat masquerade '
                 f'comment "hanok-network:{config.name}"'},
        {"network": config.name, "kind": "masquerade", "chain": "postrouting",
         "rule": f'ip6 saddr {config.subnet6} oifname != "{config.bridge}" masquerade '
                 f'comment "hanok-network:{config.name}"'},
        {"network": config.name, "kind": "hairpin", "chain": "postrouting",
         "rule": f'ip6 saddr {config.subnet6} oifname "{config.bridge}" ct status dnat masquerade '
                 f'comment "hanok-network:{config.name}"'},
    ]
    listed = json.loads(subprocess.run(["nft", "-j", "list", "table", "ip6", TEST_TABLE], capture_output=True,
                                       text=True, check=True).stdout)["nftables"]
    chains = [(item["chain"]["name"], item["chain"].get("hook"), item["chain"].get("type"))
              for item in listed if "chain" in item]
    assert chains == [("postrouting", "postrouting", "nat")]
    assert [item["rule"]["expr"] for item in listed if "rule" in item][0] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                   "right": {"prefix": {"addr": config.subnet6.split("/")[0], "len": 64}}}},
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": config.bridge}},
        {"masquerade": None}]
    env.setup("masq6-b")                                       # a second sandbox adds no rule
    assert len(nat.rules()) == 4
    env.teardown("masq6")
    env.teardown("masq6-b")
    assert len(nat.rules()) == 4                               # shared: they go with the network
    network.remove_network(env.state_root, env.run_dir, config.name)
    assert nat.rules() == []
    assert not _nft_table_exists("ip6") and not _nft_table_exists("ip")


def test_teardown_and_gc_leave_no_v6_lease_address_or_link(env: Env):
    first = env.setup("gone6")
    env.teardown("gone6")
    assert env.pool6().leases() == {}
    assert not os.path.exists(os.path.join(env.pool6().dir, "owners", "gone6"))
    assert bridge.host_ifname("gone6") not in _links()
    # a sandbox whose record was lost (a crash after setup): gc finds its IPv6 lease too
    second = env.setup("crashed6")
    assert second["ip6"] != first["ip6"]                       # not reused at once
    os.unlink(os.path.join(env.state_root, "net", "endpoints", "crashed6.json"))
    removed = network.gc(env.state_root, env.run_dir, lambda owner: False)
    assert removed == {"owners": ["crashed6"], "leases": [], "veths": []}
    assert env.pool6().leases() == {}
    assert ipam.Pool(env.state_root, env.config.name, env.config.subnet).leases() == {}
    assert not namespace.exists(env.run_dir, "crashed6")


def test_v6_exhaustion_undoes_the_v4_lease_and_the_namespace(env: Env):
    small = _make_network(env.state_root, subnet6=_random_subnet6().replace("::/64", "::/120"))
    env.bridges.add(small.bridge)
    assert small.subnet6 is not None
    pool6 = ipam.Pool(env.state_root, small.name, small.subnet6, small.gateway6)
    env.setup("keeper", network=small.name)                        # takes ::2
    prefix = small.subnet6.split("/")[0]
    os.makedirs(pool6.dir, exist_ok=True)
    for host in range(3, 256):                                     # everything else: a crashed writer's
        Path(pool6.dir, prefix + format(host, "x")).write_text("x")
    links = env.links()
    with pytest.raises(NetError, match=f"^network {small.name}: no free address in {small.subnet6}$"):
        env.setup("late", network=small.name)
    assert env.links() == links
    assert namespace.list_names(env.run_dir) == ["keeper"]
    assert list(ipam.Pool(env.state_root, small.name, small.subnet).leases()) == ["keeper"]


@pytest.mark.parametrize("subnet6, message", [
    ("fd12:3456::/48", "^bad IPv6 subnet 'fd12:3456::/48': prefix length must be 64-120$"),
    ("fd12:3456::/121", "^bad IPv6 subnet 'fd12:3456::/121': prefix length must be 64-120$"),
    ("fd12:3456::1/64", "^bad IPv6 subnet 'fd12:3456::1/64': fd12:3456::1/64 has host bits set$"),
    ("fe80::/64", r"^bad IPv6 subnet 'fe80::/64': want a unique local \(fd00::/8\) or global unicast"),
    ("ff05::/64", r"^bad IPv6 subnet 'ff05::/64': want a unique local"),
    ("::ffff:0:0/96", r"^bad IPv6 subnet '::ffff:0:0/96': want a unique local"),
    ("10.1.2.0/24", r"^bad IPv6 subnet '10.1.2.0/24': "),
    ("fd12:zz::/64", r"^bad IPv6 subnet 'fd12:zz::/64': "),
])
def test_bad_v6_subnets_are_refused_and_nothing_is_made(env: Env, subnet6: str, message: str):
    before = Path(env.state_root, "net", "networks.json").read_bytes()
    links = _links()
    with pytest.raises(InvalidArgument, match=message) as refused:
        network.create_network(env.state_root, "bad6", _random_subnet(), subnet6=subnet6)
    assert "\n" not in str(refused.value)
    assert Path(env.state_root, "net", "networks.json").read_bytes() == before
    assert _links() - links == set()


def test_overlapping_v6_subnet_and_small_mtu_are_refused(env: Env):
    before = Path(env.state_root, "net", "networks.json").read_bytes()
    inside = env.config.subnet6.replace("::/64", "::100/120") if env.config.subnet6 else ""
    with pytest.raises(InvalidArgument, match=f"^IPv6 subnet {inside} overlaps network {env.config.name} "
                                              rf"\({env.config.subnet6}\)$"):
        network.create_network(env.state_root, "over6", _random_subnet(), subnet6=inside)
    with pytest.raises(InvalidArgument, match="^bad mtu 1000: IPv6 needs at least 1280$"):
        network.create_network(env.state_root, "tiny6", _random_subnet(), mtu=1000, subnet6=_random_subnet6())
    assert Path(env.state_root, "net", "networks.json").read_bytes() == before


def test_ipv4_only_networks_are_unchanged(env: Env):
    default = network.get_network(env.state_root, network.DEFAULT_NETWORK)
    assert (default.subnet6, default.gateway6) == (None, None)
    plain = network.create_network(env.state_root, "plain4", _random_subnet(), bridge="hkt" + secrets.token_hex(2))
    env.bridges.add(plain.bridge)
    result = env.setup("only4", network=plain.name)
    assert "ip6" not in result and "gateway6" not in result
    assert _in_netns(result["netns"], "ip", "-o", "-6", "addr", "show", "scope", "global").stdout == ""
    assert not os.path.exists(os.path.join(env.state_root, "net", "ipam", plain.name, "ipv6"))


def test_cli_creates_lists_and_inspects_a_dual_stack_network(env: Env):
    """`hanok network create --ipv6-subnet`, run from this tree (PYTHONPATH as the test's own)."""
    subnet6 = _random_subnet6()

    def hanok(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", "import sys; from hanok.cli import hanok_main; sys.exit(hanok_main())",
                "--store", env.state_root, "--state", env.run_dir, "network", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))

    created = hanok("create", "--subnet", _random_subnet(), "--ipv6-subnet", subnet6, "--bridge",
                    "hkt" + secrets.token_hex(2), "cli6")
    assert (created.returncode, created.stdout, created.stderr) == (0, "cli6\n", "")
    env.bridges.add(network.get_network(env.state_root, "cli6").bridge)
    inspected = json.loads(hanok("inspect", "cli6").stdout)
    assert (inspected["subnet6"], inspected["gateway6"]) == (subnet6, subnet6.replace("::/64", "::1"))
    rows = {line.split()[0]: line.split() for line in hanok("ls").stdout.splitlines()[1:]}
    assert rows["cli6"][-1] == subnet6 and rows[network.DEFAULT_NETWORK][-1] == "-"
    refused = hanok("create", "--subnet", _random_subnet(), "--ipv6-subnet", "fd12::/48", "cli6bad")
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        125, "", "hanok: bad IPv6 subnet 'fd12::/48': prefix length must be 64-120\n")
    assert [n.name for n in network.list_networks(env.state_root)] == ["cli6", network.DEFAULT_NETWORK,
                                                                       env.config.name]


def _ip6_rule_handles() -> list[int]:
    listed = subprocess.run(["nft", "-j", "list", "table", "ip6", TEST_TABLE], capture_output=True, text=True)
    if listed.returncode != 0:
        return []
    return [item["rule"]["handle"] for item in json.loads(listed.stdout)["nftables"] if "rule" in item]


def test_v6_masquerade_is_idempotent_replaced_and_its_table_goes_with_the_last_rule():
    from hanok.netns import nat

    try:
        nat.ensure_masquerade("hkt6a", "fd12:3456:0:1::9/64", "hkt6bra")
        nat.ensure_masquerade("hkt6a", "10.236.1.0/24", "hkt6bra")
        handles = _ip6_rule_handles()
        assert len(handles) == 2
        nat.ensure_masquerade("hkt6a", "fd12:3456:0:1::/64", "hkt6bra")     # the same again: nothing changes
        assert _ip6_rule_handles() == handles
        nat.ensure_masquerade("hkt6b", "fd12:3456:0:2::/64", "hkt6brb")
        nat.ensure_masquerade("hkt6a", "fd12:3456:0:3::/64", "hkt6bra")     # moved: replaced, not added
        assert [rule["rule"].split()[2] for rule in nat.rules() if rule["rule"].startswith("ip6 ")] == [
            "fd12:3456:0:2::/64", "fd12:3456:0:2::/64", "fd12:3456:0:3::/64", "fd12:3456:0:3::/64"]
        nat.remove_masquerade("hkt6a")
        assert {rule["network"] for rule in nat.rules()} == {"hkt6b"}
        assert not _nft_table_exists("ip")                                  # its IPv4 rules were the last
        nat.remove_masquerade("hkt6b")
        assert not _nft_table_exists("ip6")
        nat.remove_masquerade("hkt6b")                                      # idempotent, creates nothing
        assert not _nft_table_exists("ip6") and nat.rules() == []
    finally:
        for name in ("hkt6a", "hkt6b"):
            nat.remove_masquerade(name)


# --- ports published over IPv6 ---------------------------------------------------------------------------------

def _free_port() -> int:
    """A port no host service uses over TCP or UDP in either family, below the ephemeral range (so the kernel
    does not hand it out while the test holds it published)."""
    import socket

    while True:
        port = random.randint(20000, 30000)
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET6, kind) as probe:
                    probe.bind(("::", port))          # dual-stack socket: free for IPv4 too
        except OSError:
            continue
        return port


@contextlib.contextmanager
def _listening(netns: str, port: int) -> Iterator[None]:
    """A TCP listener on [::]:port in `netns` (both families) for the block."""
    code = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET6)\n"
            "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('::', {port}))\n"
            "s.listen(8)\n"
            "print('listening', flush=True)\n"
            "time.sleep(60)\n")
    server = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", code], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        yield
    finally:
        server.kill()
        server.wait()


def _refused(address: str, port: int) -> bool:
    """Whether a TCP connection from the host to address:port is refused (not answered, not left hanging)."""
    import socket

    try:
        with socket.create_connection((address, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def _port_rules(owner: str) -> list[str]:
    from hanok.netns import nat

    return [rule["rule"] for rule in nat.rules() if rule.get("owner") == owner]


def test_a_port_published_without_host_ip_answers_on_both_families_and_hairpins(env: Env):
    from hanok.netns import nat
    from hanok.netns.nat import PortMapping

    port = _free_port()
    config = env.config
    web = env.setup("web6", ports=[PortMapping(80, port)])
    peer = env.setup("peer6")
    ip, ip6 = web["ip"], web["ip6"]
    assert _port_rules("web6") == [                            # in table order: ip (postrouting, input,
        f'oifname "{config.bridge}" ip daddr {ip} ct status dnat ip saddr {{ {ip}, 127.0.0.0/8 }} '
        'masquerade comment "hanok:web6"',                      # portmap), then ip6 (postrouting, portmap)
        f'iifname "{config.bridge}" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop '
        'comment "hanok:web6"',
        f'tcp dport {port} dnat to {ip}:80 comment "hanok:web6"',
        f'oifname "{config.bridge}" ip6 daddr {ip6} ct status dnat ip6 saddr {ip6} masquerade comment "hanok:web6"',
        f'tcp dport {port} dnat to [{ip6}]:80 comment "hanok:web6"',
    ]
    # the host through its own IPv6 address (the bridge's gateway): DNAT in output, no masquerade needed
    assert _tcp_exchange(web["netns"], "::", None, 80, "v6 from the host",
                         connect_to=(config.gateway6, port)) == config.gateway6
    # and through its IPv4 address, the same dual-stack socket seeing an IPv4-mapped peer
    assert _tcp_exchange(web["netns"], "::", None, 80, "v4 from the host",
                         connect_to=(config.gateway, port)) == f"::ffff:{config.gateway}"
    # a neighbour through the host's address: hairpin, masqueraded to the bridge's address
    assert _tcp_exchange(web["netns"], "::", peer["netns"], 80, "v6 hairpin",
                         connect_to=(config.gateway6, port)) == config.gateway6
    # ::1 is never DNATed: refused at once by the host (nothing listens there), not left hanging
    assert _refused("::1", port)
    env.teardown("web6")
    assert _port_rules("web6") == []
    assert [rule["kind"] for rule in nat.rules() if rule["rule"].startswith("ip6 ")] == ["masquerade", "hairpin"]


def test_host_ip_picks_the_family(env: Env):
    from hanok.netns.nat import PortMapping

    port4, port6, port_addr = _free_port(), _free_port(), _free_port()
    gateway6 = env.config.gateway6
    web = env.setup("fam6", ports=[PortMapping(80, port4, "tcp", "0.0.0.0"), PortMapping(80, port6, "tcp", "::"),
                                   PortMapping(81, port_addr, "udp", gateway6)])
    assert [rule for rule in _port_rules("fam6") if " dnat to " in rule] == [
        f'tcp dport {port4} dnat to {web["ip"]}:80 comment "hanok:fam6"',
        f'tcp dport {port6} dnat to [{web["ip6"]}]:80 comment "hanok:fam6"',
        f'ip6 daddr {gateway6} udp dport {port_addr} dnat to [{web["ip6"]}]:81 comment "hanok:fam6"',
    ]
    assert web["ports"] == [
        {"containerPort": 80, "hostPort": port4, "protocol": "tcp", "hostIP": "0.0.0.0"},
        {"containerPort": 80, "hostPort": port6, "protocol": "tcp", "hostIP": "::"},
        {"containerPort": 81, "hostPort": port_addr, "protocol": "udp", "hostIP": gateway6},
    ]
    # IPv6 only: answered over IPv6, while the host's IPv4 address is not DNATed: with the container
    # listening on both families, the host itself refuses the connection
    assert _tcp_exchange(web["netns"], "::", None, 80, "six", connect_to=(gateway6, port6)) == gateway6
    with _listening(web["netns"], 80):
        assert _refused(env.config.gateway, port6)
        assert not _refused(web["ip"], 80)                      # the listener answers when reached directly


def test_one_port_in_two_families_for_two_owners_and_clashes_named(env: Env):
    from hanok.netns.nat import PortMapping

    port = _free_port()
    env.setup("only4", ports=[PortMapping(80, port, "tcp", "0.0.0.0")])
    env.setup("only6", ports=[PortMapping(80, port, "tcp", "::")])          # the other family: no clash
    links = env.links()
    with pytest.raises(NetError, match=f"^port {port}/tcp is already published by container only4$"):
        env.setup("late", ports=[PortMapping(80, port)])                     # both families: clashes
    with pytest.raises(NetError, match=f"^port {port}/tcp is already published by container only6$"):
        env.setup("late", ports=[PortMapping(80, port, "tcp", env.config.gateway6)])
    assert env.links() == links and _port_rules("late") == []
    assert not namespace.exists(env.run_dir, "late")
    assert "late" not in env.pool6().leases() and "late" not in env.pool().leases()


def test_an_ipv6_host_ip_on_an_ipv4_network_is_refused_and_nothing_is_left(env: Env):
    from hanok.netns.nat import PortMapping

    plain = network.create_network(env.state_root, "plain6p", _random_subnet(), bridge="hkt" + secrets.token_hex(2))
    env.bridges.add(plain.bridge)
    env.setup("keeper4", network=plain.name)                   # the bridge exists: only the new owner's things
    links = env.links()
    with pytest.raises(InvalidArgument, match=r"^host IP :: is IPv6, but the container has no IPv6 address "):
        env.setup("v6on4", network=plain.name, ports=[PortMapping(80, _free_port(), "tcp", "::")])
    assert env.links() == links
    assert not namespace.exists(env.run_dir, "v6on4")
    assert list(ipam.Pool(env.state_root, plain.name, plain.subnet).leases()) == ["keeper4"]
    assert _port_rules("v6on4") == []
    assert not os.path.exists(os.path.join(env.state_root, "net", "endpoints", "v6on4.json"))
