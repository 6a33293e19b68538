"""netns/nat.py against the real kernel: rules read back exactly, published ports answer for real.

Every test works in its own nft table (nat.TABLE = "hkt<random>", never the host's `hanok`). The `lab`
fixture builds by hand, with `ip`, what netns/bridge.py builds in production: a test bridge with a gateway
address on a random 10.2xx.y.0/24, a veth pair whose inner end is eth0 of a test network namespace, and a
server inside it. Traffic goes only to 127.0.0.1, to this host's own eth0 address and to the test
namespace (TESTING.md); egress masquerade is checked by reading the rules, never by sending traffic out.
Everything is removed afterwards, even on failure, and each test checks its table is gone.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hanok.netns import nat
from hanok.runtime.errors import InvalidArgument, NetError

BUSYBOX = "/bin/busybox"
READY_TIMEOUT = 10.0  # seconds to wait for a server to listen (a deadline, not an assertion)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def _nft_json(table: str) -> list[dict] | None:
    """`nft -j list table ip T` as its rule objects, or None when the table does not exist."""
    listed = _run("nft", "-j", "list", "table", "ip", table, check=False)
    if listed.returncode != 0:
        assert "No such file or directory" in listed.stderr, listed.stderr
        return None
    return [item["rule"] for item in json.loads(listed.stdout)["nftables"] if "rule" in item]


def _host_address() -> str | None:
    """This host's own eth0 IPv4 address (traffic to it is allowed: it is ours)."""
    out = _run("ip", "-4", "-o", "addr", "show", "eth0", check=False).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None


def _tcp_fetch(address: str, port: int, netns: str | None = None) -> str:
    """What busybox nc receives from address:port (from the host, or from inside `netns`)."""
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    done = subprocess.run([*prefix, BUSYBOX, "nc", "-w", "5", address, str(port)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    return done.stdout


def _udp_fetch(address: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"ping", (address, port))
        try:
            return sock.recv(100).decode()
        except socket.timeout:
            return ""


def _route_localnet(bridge: str) -> str:
    with open(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet") as f:
        return f.read().strip()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private nft table for this test; it must be gone at the end (then it is removed anyway)."""
    name = f"hkt{random.randrange(16**6):06x}"
    monkeypatch.setattr(nat, "TABLE", name)
    try:
        yield name
        assert _nft_json(name) is None, f"table ip {name} left behind"
    finally:
        _run("nft", "delete", "table", "ip", name, check=False)


@dataclass
class Lab:
    """A hand-made container network and an outside client.

    The container: namespace `netns` with eth0 = container_ip on `bridge` (gateway address `gateway`),
    serving "hi" on TCP 80 (busybox nc) and its client's address on TCP 81 and UDP 53. The client:
    namespace `outside` joined to the host by its own veth pair (not the bridge), address outside_ip,
    default route through the host's outside_gateway: it plays a machine on the host's LAN.
    """

    bridge: str
    subnet: str
    gateway: str
    netns: str
    container_ip: str
    outside: str
    outside_ip: str
    outside_gateway: str  # the host's address on the client's link


def _free_prefixes(count: int) -> list[str]:
    """`count` prefixes "10.2xx.y." of /24s that no address or route on the host uses."""
    used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    prefixes: list[str] = []
    while len(prefixes) < count:
        prefix = f"10.{random.randrange(200, 250)}.{random.randrange(256)}."
        if prefix not in used and prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _wait_listening(netns: str, port: int, udp: bool = False) -> None:
    """Poll the namespace's socket tables (busybox nc listens on IPv6 ::) until something listens on `port`."""
    tables, state = (("/proc/net/udp", "/proc/net/udp6"), "07") if udp else (("/proc/net/tcp", "/proc/net/tcp6"), "0A")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        lines = _run("ip", "netns", "exec", netns, "cat", *tables).stdout.splitlines()
        if any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == state
               for line in lines if "local_address" not in line):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {netns}")


# Answers every TCP connection on 81 and every UDP datagram on 53 with the address it came from, so tests
# see whether a connection was masqueraded.
WHO_SERVER = """
import selectors, socket
tcp = socket.create_server(("0.0.0.0", 81))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
events = selectors.DefaultSelector()
events.register(tcp, selectors.EVENT_READ)
events.register(udp, selectors.EVENT_READ)
while True:
    for key, _ in events.select():
        if key.fileobj is tcp:
            conn, peer = tcp.accept()
            conn.sendall(f"from {peer[0]}\\n".encode())
            conn.close()
        else:
            data, peer = udp.recvfrom(100)
            udp.sendto(f"udp from {peer[0]}".encode(), peer)
"""


def _add_namespace(netns: str, host_end: str, address: str, gateway: str) -> None:
    """A namespace whose eth0 (address/24) is the peer of `host_end`, default route via `gateway`."""
    _run("ip", "netns", "add", netns)
    _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
    inside = ("ip", "-n", netns)
    _run(*inside, "link", "set", "lo", "up")
    _run(*inside, "addr", "add", address + "/24", "dev", "eth0")
    _run(*inside, "link", "set", "eth0", "up")
    _run(*inside, "route", "add", "default", "via", gateway)


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = f"{random.randrange(16**5):05x}"
    bridge, netns, outside = f"hkt{tag}b", f"hkt{tag}", f"hkt{tag}o"
    prefix, outside_prefix = _free_prefixes(2)
    servers: list[subprocess.Popen] = []
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", prefix + "1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        _add_namespace(netns, f"hkt{tag}h", prefix + "2", prefix + "1")
        _run("ip", "link", "set", f"hkt{tag}h", "master", bridge, "up")
        # br_netfilter is loaded here: a DNATed packet going back to its own port needs hairpin mode
        _run("ip", "link", "set", f"hkt{tag}h", "type", "bridge_slave", "hairpin", "on")
        _add_namespace(outside, f"hkt{tag}x", outside_prefix + "2", outside_prefix + "1")
        _run("ip", "addr", "add", outside_prefix + "1/24", "dev", f"hkt{tag}x")
        _run("ip", "link", "set", f"hkt{tag}x", "up")
        # Routing between the outside client and the bridge: hanok's bridge setup switches this on and
        # leaves it on (netns/bridge.py), so the test does the same.
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        exec_in = ("ip", "netns", "exec", netns)
        servers.append(subprocess.Popen([*exec_in, BUSYBOX, "nc", "-ll", "-p", "80", "-e", "echo", "hi"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        servers.append(subprocess.Popen([*exec_in, sys.executable, "-c", WHO_SERVER],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        _wait_listening(netns, 80)
        _wait_listening(netns, 81)
        _wait_listening(netns, 53, udp=True)
        yield Lab(bridge, prefix + "0/24", prefix + "1", netns, prefix + "2", outside, outside_prefix + "2",
                  outside_prefix + "1")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        # The host ends first: a deleted namespace takes its veths with it only once the kernel's
        # asynchronous cleanup runs, later than a leak check may look.
        for link in (f"hkt{tag}h", f"hkt{tag}x", bridge):
            _run("ip", "link", "del", link, check=False)
        for name in (netns, outside):
            _run("ip", "netns", "del", name, check=False)


def _free_port() -> int:
    return nat.parse_publish("80")[0].host_port


# --- masquerade --------------------------------------------------------------------------------------------

def test_masquerade_rules_are_exact_idempotent_and_removed(table: str) -> None:
    nat.ensure_masquerade("hktnet", "10.231.7.9/24", "hktbr0")
    expected = [
        {"network": "hktnet", "kind": "masquerade", "chain": "postrouting",
         "rule": 'ip saddr 10.231.7.0/24 oifname != "hktbr0" masquerade comment "hanok-network:hktnet"'},
        {"network": "hktnet", "kind": "hairpin", "chain": "postrouting",
         "rule": 'ip saddr 10.231.7.0/24 oifname "hktbr0" ct status dnat masquerade comment "hanok-network:hktnet"'},
    ]
    assert nat.rules() == expected
    assert nat.owners() == set()
    listed = _nft_json(table)
    assert listed is not None
    tagged = [rule for rule in listed if "comment" in rule]
    assert [(rule["chain"], rule["comment"], rule["expr"]) for rule in tagged] == [
        ("postrouting", "hanok-network:hktnet", [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.231.7.0", "len": 24}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "hktbr0"}},
            {"masquerade": None}]),
        ("postrouting", "hanok-network:hktnet", [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.231.7.0", "len": 24}}}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "hktbr0"}},
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"masquerade": None}]),
    ]
    untagged = [(rule["chain"], rule["expr"][-1]) for rule in listed if "comment" not in rule]
    assert untagged == [("prerouting", {"jump": {"target": "portmap"}}),
                        ("output", {"jump": {"target": "portmap"}}),
                        ("guard", {"drop": None})]

    handles = [rule["handle"] for rule in tagged]
    nat.ensure_masquerade("hktnet", "10.231.7.0/24", "hktbr0")  # same thing again: nothing changes
    assert [rule["handle"] for rule in _nft_json(table) or [] if "comment" in rule] == handles

    nat.ensure_masquerade("hktnet", "10.231.8.0/24", "hktbr0")  # moved: replaced, not added
    assert [entry["rule"].split()[2] for entry in nat.rules()] == ["10.231.8.0/24", "10.231.8.0/24"]

    nat.remove_masquerade("hktnet")
    assert _nft_json(table) is None
    nat.remove_masquerade("hktnet")  # idempotent, and no table is created for nothing
    assert _nft_json(table) is None
    assert nat.rules() == []


def test_networks_share_the_table_until_the_last_goes(table: str) -> None:
    nat.ensure_masquerade("hkta", "10.232.1.0/24", "hktbra")
    nat.ensure_masquerade("hktb", "10.232.2.0/24", "hktbrb")
    nat.remove_masquerade("hkta")
    assert {entry["network"] for entry in nat.rules()} == {"hktb"}
    nat.remove_masquerade("hktb")
    assert _nft_json(table) is None


# --- port mapping ------------------------------------------------------------------------------------------

def test_published_port_answers_from_host_outside_and_hairpin(table: str, lab: Lab) -> None:
    port, who_port, udp_port = _free_port(), _free_port(), _free_port()
    host_address = _host_address() or lab.outside_gateway
    assert _tcp_fetch("127.0.0.1", port) == ""  # nothing answers before publishing
    nat.ensure_masquerade("hktnet", lab.subnet, lab.bridge)
    nat.add_ports("hktowner", lab.container_ip, lab.bridge,
                  [nat.PortMapping(80, port), nat.PortMapping(81, who_port), nat.PortMapping(53, udp_port, "udp")])

    # from the host itself (output DNAT); 127.0.0.1 has to be masqueraded to the bridge's address
    assert _tcp_fetch("127.0.0.1", port) == "hi\n"
    assert _tcp_fetch("127.0.0.1", who_port) == f"from {lab.gateway}\n"
    assert _udp_fetch("127.0.0.1", udp_port) == f"udp from {lab.gateway}"
    assert _tcp_fetch(host_address, port) == "hi\n"
    assert _tcp_fetch(host_address, who_port) == f"from {host_address}\n"
    # from outside (prerouting DNAT), to the host's address on that link and to its eth0 address:
    # the container sees the client's own address
    for address in {lab.outside_gateway, host_address}:
        assert _tcp_fetch(address, port, netns=lab.outside) == "hi\n"
        assert _tcp_fetch(address, who_port, netns=lab.outside) == f"from {lab.outside_ip}\n"
    # hairpin: the container reaches its own published port through the host's address, masqueraded
    assert _tcp_fetch(host_address, port, netns=lab.netns) == "hi\n"
    assert _tcp_fetch(host_address, who_port, netns=lab.netns) == f"from {lab.gateway}\n"
    assert _route_localnet(lab.bridge) == "1"

    cip, br = lab.container_ip, lab.bridge
    assert [entry for entry in nat.rules() if "owner" in entry] == [
        {"owner": "hktowner", "kind": "hairpin", "chain": "postrouting",
         "rule": f'oifname "{br}" ip daddr {cip} ct status dnat ip saddr {{ {cip}, 127.0.0.0/8 }} masquerade '
                 'comment "hanok:hktowner"'},
        {"owner": "hktowner", "kind": "localnet-guard", "chain": "input",
         "rule": f'iifname "{br}" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop '
                 'comment "hanok:hktowner"'},
        {"owner": "hktowner", "kind": "dnat", "chain": "portmap",
         "rule": f'tcp dport {port} dnat to {cip}:80 comment "hanok:hktowner"'},
        {"owner": "hktowner", "kind": "dnat", "chain": "portmap",
         "rule": f'tcp dport {who_port} dnat to {cip}:81 comment "hanok:hktowner"'},
        {"owner": "hktowner", "kind": "dnat", "chain": "portmap",
         "rule": f'udp dport {udp_port} dnat to {cip}:53 comment "hanok:hktowner"'},
    ]
    assert nat.owners() == {"hktowner"}
    portmap = [rule["expr"] for rule in _nft_json(table) or [] if rule["chain"] == "portmap"]
    assert portmap == [
        [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}},
         {"dnat": {"addr": cip, "port": 80}}],
        [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": who_port}},
         {"dnat": {"addr": cip, "port": 81}}],
        [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": udp_port}},
         {"dnat": {"addr": cip, "port": 53}}],
    ]

    nat.add_ports("hktowner", lab.container_ip, lab.bridge, [nat.PortMapping(80, port)])  # idempotent
    assert len(nat.rules()) == 7

    nat.remove_ports("hktowner")
    assert nat.owners() == set()
    assert [entry["kind"] for entry in nat.rules()] == ["masquerade", "hairpin"]
    assert _route_localnet(lab.bridge) == "0"
    assert _tcp_fetch("127.0.0.1", port) == ""
    nat.remove_ports("hktowner")  # idempotent
    nat.remove_masquerade("hktnet")
    assert _nft_json(table) is None


def test_host_ip_restricts_the_destination(table: str, lab: Lab) -> None:
    host_address = _host_address()
    if not host_address:
        pytest.skip("this host has no IPv4 address on eth0 to compare 127.0.0.1 with")
    port = _free_port()
    try:
        nat.add_ports("hktowner", lab.container_ip, lab.bridge, nat.parse_publish(f"127.0.0.1:{port}:80"))
        assert _tcp_fetch("127.0.0.1", port) == "hi\n"
        assert _tcp_fetch(host_address, port) == ""
        assert [entry["rule"] for entry in nat.rules() if entry["kind"] == "dnat"] == [
            f'ip daddr 127.0.0.1 tcp dport {port} dnat to {lab.container_ip}:80 comment "hanok:hktowner"']
    finally:
        nat.remove_ports("hktowner")


def test_port_of_another_owner_is_refused_and_nothing_is_added(table: str, lab: Lab) -> None:
    port, other = _free_port(), _free_port()
    try:
        nat.add_ports("hktfirst", lab.container_ip, lab.bridge, [nat.PortMapping(80, port)])
        before = nat.rules()
        with pytest.raises(NetError) as refused:
            nat.add_ports("hktsecond", lab.container_ip, lab.bridge,
                          [nat.PortMapping(80, other), nat.PortMapping(81, port, host_ip="127.0.0.1")])
        assert str(refused.value) == f"port {port}/tcp is already published by container hktfirst"
        assert nat.rules() == before
        nat.add_ports("hktsecond", lab.container_ip, lab.bridge, [nat.PortMapping(80, port, "udp")])
        assert nat.owners() == {"hktfirst", "hktsecond"}
        nat.remove_ports("hktfirst")
        assert _route_localnet(lab.bridge) == "1"  # hktsecond still publishes on this bridge
    finally:
        nat.remove_ports("hktfirst")
        nat.remove_ports("hktsecond")
    assert _route_localnet(lab.bridge) == "0"


def test_missing_bridge_changes_nothing(table: str) -> None:
    with pytest.raises(NetError, match="^bridge hktnosuchbr does not exist$"):
        nat.add_ports("hktowner", "10.233.0.2", "hktnosuchbr", [nat.PortMapping(80, _free_port())])
    assert _nft_json(table) is None


def test_bad_input_is_refused_before_nft(table: str) -> None:
    with pytest.raises(InvalidArgument, match='owner "bad owner"'):
        nat.add_ports("bad owner", "10.233.0.2", "hktbr0", [nat.PortMapping(80, 8080)])
    with pytest.raises(InvalidArgument, match="port 8080/tcp is published twice"):
        nat.add_ports("hktowner", "10.233.0.2", "hktbr0", [nat.PortMapping(80, 8080), nat.PortMapping(81, 8080)])
    with pytest.raises(InvalidArgument, match='subnet "10.0.0.0/33"'):
        nat.ensure_masquerade("hktnet", "10.0.0.0/33", "hktbr0")
    assert _nft_json(table) is None


def test_nft_errors_are_one_line(table: str) -> None:
    nat.ensure_masquerade("hktnet", "10.234.0.0/24", "hktbr0")
    try:
        with pytest.raises(NetError) as failed:
            nat._run(f"delete rule ip {table} postrouting handle 4242\n")
    finally:
        nat.remove_masquerade("hktnet")
    assert str(failed.value) == (f"nft: Could not process rule: No such file or directory "
                                 f"(in `delete rule ip {table} postrouting handle 4242`)")


def test_explained_commands_replay_with_nft(table: str, lab: Lab) -> None:
    """The `--explain` line for a change is a command nft accepts as it is (checked with nft -c)."""
    read_end, write_end = os.pipe()
    from hanok.runtime import explain

    explain.enable(write_end)
    try:
        nat.add_ports("hktowner", lab.container_ip, lab.bridge, [nat.PortMapping(80, _free_port())])
    finally:
        explain.disable()
        os.close(write_end)
    with os.fdopen(read_end) as trace:
        steps = trace.read().splitlines()
    nat.remove_ports("hktowner")
    # the rules (and their 127.0.0.0/8 guards) go in before route_localnet is turned on
    assert steps[1].startswith(f"+ echo 1 > /proc/sys/net/ipv4/conf/{lab.bridge}/route_localnet")
    command = steps[0].removeprefix("+ ").split("    # ")[0]
    assert command.startswith("nft 'add table ip ")
    check = subprocess.run(["sh", "-c", command.replace("nft ", "nft -c ", 1)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


CHURN = """
import sys
from hanok.netns import nat
nat.TABLE, owner, bridge, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for _ in range(10):
    nat.add_ports(owner, "10.235.0.2", bridge, [nat.PortMapping(80, port)])
    nat.remove_ports(owner)
"""


def test_concurrent_owners_never_lose_the_table_under_each_other(table: str, lab: Lab) -> None:
    """Each change lists then changes the table, and the last removal deletes it: the lock keeps that sound."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    churners = [subprocess.Popen([sys.executable, "-c", CHURN, table, f"hktc{n}", lab.bridge, str(40100 + n)],
                                 env=env, stderr=subprocess.PIPE, text=True) for n in range(6)]
    failures = [churner.communicate(timeout=120)[1] for churner in churners if churner.wait(timeout=120) != 0]
    assert failures == []
    assert _nft_json(table) is None
    assert _route_localnet(lab.bridge) == "0"


SEND_UDP = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), ("127.0.0.1", int(sys.argv[1])))
"""


def test_containers_cannot_reach_the_hosts_loopback_services(table: str, lab: Lab) -> None:
    """route_localnet=1 on the bridge must not open the host's 127.0.0.1 services to containers (CVE-2020-8558).

    The container plays an attacker with CAP_NET_ADMIN in its namespace: it routes 127.0.0.1 out of eth0 to
    the gateway, so its datagrams reach the host with destination 127.0.0.1. With route_localnet=1 alone
    they are delivered (the control); with hanok's rules in place they are dropped.
    """
    inside = ("ip", "-n", lab.netns)
    _run(*inside, "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local")
    _run(*inside, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
    _run(*inside, "route", "add", "127.0.0.1", "via", lab.gateway, "dev", "eth0")
    _run("ip", "netns", "exec", lab.netns, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service:
        service.bind(("127.0.0.1", 0))
        service.settimeout(2)
        send = ("ip", "netns", "exec", lab.netns, sys.executable, "-c", SEND_UDP, str(service.getsockname()[1]))

        with open(f"/proc/sys/net/ipv4/conf/{lab.bridge}/route_localnet", "w") as f:
            f.write("1")
        _run(*send, "without guard")
        assert service.recv(100) == b"without guard"

        try:
            nat.add_ports("hktowner", lab.container_ip, lab.bridge, [nat.PortMapping(80, _free_port())])
            _run(*send, "with guard")
            with pytest.raises(socket.timeout):
                service.recv(100)
        finally:
            nat.remove_ports("hktowner")


def test_a_port_a_host_service_listens_on_is_refused(table: str, lab: Lab) -> None:
    """-p 22:22 must not silently hand the host's SSH to a container: the port is tried with bind first."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(NetError, match=f"^port {port}/tcp on 127.0.0.1 is already in use: "):
            nat.add_ports("hktowner", lab.container_ip, lab.bridge, [nat.PortMapping(80, port, "tcp", "127.0.0.1")])
    assert _nft_json(table) is None
