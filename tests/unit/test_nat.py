"""netns/nat.py without root: docker -p parsing, the exact nft text hanok sends, and how listings are read."""
from __future__ import annotations

import json

import pytest
from hanok.netns import nat
from hanok.netns.nat import PortMapping
from hanok.runtime.errors import InvalidArgument

# --- PortMapping ---------------------------------------------------------------------------------------------

def test_port_mapping_is_a_frozen_value() -> None:
    mapping = PortMapping(80, 8080)
    assert mapping == PortMapping(container_port=80, host_port=8080, protocol="tcp", host_ip="")
    assert mapping != PortMapping(80, 8080, "udp")
    assert len({mapping, PortMapping(80, 8080)}) == 1
    assert repr(mapping) == "PortMapping(container_port=80, host_port=8080, protocol='tcp', host_ip='')"
    assert mapping.to_dict() == {"containerPort": 80, "hostPort": 8080, "protocol": "tcp", "hostIP": ""}
    with pytest.raises(AttributeError, match="immutable"):
        mapping.host_port = 9090  # type: ignore[misc]


# --- parse_publish -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("8080:80", [PortMapping(80, 8080)]),
    ("8080:80/udp", [PortMapping(80, 8080, "udp")]),
    (" 8080:80/TCP ", [PortMapping(80, 8080)]),
    ("127.0.0.1:8080:80", [PortMapping(80, 8080, "tcp", "127.0.0.1")]),
    ("0.0.0.0:8080:80", [PortMapping(80, 8080, "tcp", "0.0.0.0")]),       # IPv4 only, as in docker
    ("[::]:8080:80", [PortMapping(80, 8080, "tcp", "::")]),                 # IPv6 only
    ("[FD12:0:0::0009]:53:53/udp", [PortMapping(53, 53, "udp", "fd12::9")]),
    ("[2001:db8::1]:9000-9001:90-91", [PortMapping(90, 9000, "tcp", "2001:db8::1"),
                                       PortMapping(91, 9001, "tcp", "2001:db8::1")]),
    ("192.168.001.010:53:53/udp", [PortMapping(53, 53, "udp", "192.168.1.10")]),
    ("8000-8002:80-82", [PortMapping(80, 8000), PortMapping(81, 8001), PortMapping(82, 8002)]),
    ("127.0.0.1:9000-9001:9000-9001/udp",
     [PortMapping(9000, 9000, "udp", "127.0.0.1"), PortMapping(9001, 9001, "udp", "127.0.0.1")]),
    ("65535:1", [PortMapping(1, 65535)]),
])
def test_parse_publish_with_host_ports(spec: str, expected: list[PortMapping]) -> None:
    assert nat.parse_publish(spec) == expected


@pytest.mark.parametrize("spec, container_ports, protocol, host_ip", [
    ("80", [80], "tcp", ""),
    ("53/udp", [53], "udp", ""),
    ("0:80", [80], "tcp", ""),
    ("127.0.0.1::80", [80], "tcp", "127.0.0.1"),
    ("127.0.0.1::5000-5002/udp", [5000, 5001, 5002], "udp", "127.0.0.1"),
    ("[::]::80", [80], "tcp", "::"),
])
def test_parse_publish_picks_distinct_free_host_ports(spec: str, container_ports: list[int], protocol: str,
                                                      host_ip: str) -> None:
    mappings = nat.parse_publish(spec)
    assert [(m.container_port, m.protocol, m.host_ip) for m in mappings] == \
        [(port, protocol, host_ip) for port in container_ports]
    host_ports = [m.host_port for m in mappings]
    assert all(1 <= port <= 65535 for port in host_ports)
    assert len(set(host_ports)) == len(host_ports)


def test_parse_publish_host_range_for_one_port_takes_a_free_port_of_the_range() -> None:
    [mapping] = nat.parse_publish("127.0.0.1:40000-40009:80")
    assert (mapping.container_port, mapping.host_ip) == (80, "127.0.0.1")
    assert 40000 <= mapping.host_port <= 40009


@pytest.mark.parametrize("spec, message", [
    ("", 'invalid port mapping "": container port "" is not a port (1-65535) or a range of ports'),
    ("http", 'invalid port mapping "http": container port "http" is not a port'),
    ("8080:", 'invalid port mapping "8080:": container port "" is not a port'),
    ("x:80", 'invalid port mapping "x:80": host port "x" is not a port'),
    ("0", 'invalid port mapping "0": container port "0" is not a port'),
    ("65536:80", 'invalid port mapping "65536:80": host port "65536" is not a port'),
    ("8080:+80", 'invalid port mapping "8080:+80": container port "+80" is not a port'),
    ("90-80", 'invalid port mapping "90-80": container port "90-80" is not a port'),
    ("80/sctp", 'invalid port mapping "80/sctp": protocol "sctp" is not tcp or udp'),
    ("80/", 'invalid port mapping "80/": protocol "" is not tcp or udp'),
    ("1:2:3:4", 'invalid port mapping "1:2:3:4": expected [[hostIP:]hostPort:]containerPort[/protocol] '
                '(an IPv6 hostIP in brackets: [::]:8080:80)'),
    ("::1:80:80", 'invalid port mapping "::1:80:80": expected [[hostIP:]hostPort:]containerPort'),
    ("[::1]:80:80", 'invalid port mapping "[::1]:80:80": host IP "::1" is the IPv6 loopback, which the kernel '
                    "never routes to a container: publish on 127.0.0.1 instead"),
    ("[::ffff:10.1.2.3]:80:80", 'invalid port mapping "[::ffff:10.1.2.3]:80:80": host IP "::ffff:10.1.2.3" is an '
                                "IPv4-mapped address: give the IPv4 address itself"),
    ("[fd12::zz]:80:80", 'invalid port mapping "[fd12::zz]:80:80": host IP "fd12::zz" is not an IPv6 address'),
    ("[fe80::1%eth0]:80:80", 'invalid port mapping "[fe80::1%eth0]:80:80": host IP "fe80::1%eth0" is not an IPv6'),
    ("[FE80::1]:80:80", 'invalid port mapping "[FE80::1]:80:80": host IP "FE80::1" is link-local (it needs an '
                        "interface): publish on a global or unique local address"),
    ("[febf::1]:80:80", 'invalid port mapping "[febf::1]:80:80": host IP "febf::1" is link-local'),
    ("[10.1.2.3]:80:80", 'invalid port mapping "[10.1.2.3]:80:80": host IP "10.1.2.3" in brackets is not an IPv6'),
    ("[fd12::1]:80", 'invalid port mapping "[fd12::1]:80": expected [IPv6 address]:[hostPort]:containerPort'),
    ("[fd12::1:80:80", 'invalid port mapping "[fd12::1:80:80": expected [IPv6 address]:[hostPort]:containerPort'),
    ("[fd12::1]8080:80", 'invalid port mapping "[fd12::1]8080:80": expected [IPv6 address]:'),
    ("localhost:80:80", 'invalid port mapping "localhost:80:80": host IP "localhost" is not an IPv4 address'),
    ("1.2.3:80:80", 'invalid port mapping "1.2.3:80:80": host IP "1.2.3" is not an IPv4 address'),
    ("256.1.1.1:80:80", 'invalid port mapping "256.1.1.1:80:80": host IP "256.1.1.1" is not an IPv4 address'),
    ("8000-8002:80-81", 'invalid port mapping "8000-8002:80-81": host ports "8000-8002" and container ports '
                        '"80-81" are ranges of different lengths'),
    ("1000-1200", 'invalid port mapping "1000-1200": give host ports for ranges longer than 100'),
])
def test_parse_publish_names_the_bad_part(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        nat.parse_publish(spec)
    assert str(refused.value).startswith(message)


# --- validation --------------------------------------------------------------------------------------------

def test_subnet_is_normalized_to_its_network() -> None:
    assert nat._subnet("10.88.3.7/16") == "10.88.0.0/16"
    assert nat._subnet("10.88.3.7/32") == "10.88.3.7/32"
    assert nat._subnet("10.88.3.7/0") == "0.0.0.0/0"
    for bad in ("10.88.0.0", "10.88.0.0/33", "10.88.0.0/x", "10.88.0/16"):
        with pytest.raises(InvalidArgument, match=f'subnet "{bad}"'):
            nat._subnet(bad)


def test_names_are_kept_to_what_an_nft_comment_can_hold() -> None:
    assert nat._name("0123abcd-pod_1.x", "owner") == "0123abcd-pod_1.x"
    for bad in ("", 'a"b', "a b", "a\\b", "x" * 101, "ünï"):
        with pytest.raises(InvalidArgument, match="owner"):
            nat._name(bad, "owner")
    assert nat._bridge("hanok0") == "hanok0"
    for bad in ("", "a" * 16, "br/0", "br:0", 'br"0'):
        with pytest.raises(InvalidArgument, match="bridge name"):
            nat._bridge(bad)


def test_mappings_from_callers_are_checked_and_normalized() -> None:
    assert nat._checked(PortMapping(80, 8080, "udp", "0.0.0.0")) == PortMapping(80, 8080, "udp", "0.0.0.0")
    assert nat._checked(PortMapping(80, 8080, "udp", "FD12:0::1")) == PortMapping(80, 8080, "udp", "fd12::1")
    with pytest.raises(InvalidArgument, match='protocol "sctp"'):
        nat._checked(PortMapping(80, 8080, "sctp"))
    with pytest.raises(InvalidArgument, match='host port "0"'):
        nat._checked(PortMapping(80, 0))
    with pytest.raises(InvalidArgument, match='container port "80"'):
        nat._checked(PortMapping("80", 8080))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match='host IP "::1" is the IPv6 loopback'):
        nat._checked(PortMapping(80, 8080, host_ip="::1"))
    with pytest.raises(InvalidArgument, match='host IP "localhost" is not an IPv4 address'):
        nat._checked(PortMapping(80, 8080, host_ip="localhost"))


@pytest.mark.parametrize("host_ip, has_ip6, families", [
    ("", False, ("ip",)), ("", True, ("ip", "ip6")),
    ("0.0.0.0", True, ("ip",)), ("10.1.2.3", True, ("ip",)), ("10.1.2.3", False, ("ip",)),
    ("::", True, ("ip6",)), ("fd12::1", True, ("ip6",)),
])
def test_a_mapping_lands_in_the_families_its_host_ip_names(host_ip: str, has_ip6: bool,
                                                          families: tuple[str, ...]) -> None:
    assert nat._families(host_ip, has_ip6) == families


@pytest.mark.parametrize("host_ip", ["::", "fd12::1"])
def test_an_ipv6_host_ip_needs_a_dual_stack_container(host_ip: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^host IP {host_ip} is IPv6, but the container has no IPv6 "
                                              r"address \(publish on IPv6 from a network made with --ipv6-subnet\)$"):
        nat._families(host_ip, False)


def test_host_ips_overlap_within_a_family_when_equal_or_a_wildcard() -> None:
    assert nat._overlaps("", "10.1.2.3") and nat._overlaps("0.0.0.0", "10.1.2.3") and nat._overlaps("::", "fd12::1")
    assert nat._overlaps("fd12::1", "fd12::1") and not nat._overlaps("fd12::1", "fd12::2")
    assert not nat._overlaps("10.1.2.3", "10.1.2.4")


# --- nft script text -----------------------------------------------------------------------------------------

def test_skeleton_commands() -> None:
    assert nat._skeleton_commands("hanok") == [
        "add table ip hanok",
        "add chain ip hanok prerouting { type nat hook prerouting priority dstnat; policy accept; }",
        "add chain ip hanok output { type nat hook output priority -100; policy accept; }",
        "add chain ip hanok postrouting { type nat hook postrouting priority srcnat; policy accept; }",
        "add chain ip hanok input { type filter hook input priority filter; policy accept; }",
        "add chain ip hanok guard { type filter hook prerouting priority raw; policy accept; }",
        'add rule ip hanok guard ip daddr 127.0.0.0/8 iifname != "lo" drop',
        "add chain ip hanok portmap",
        "add rule ip hanok prerouting fib daddr type local jump portmap",
        "add rule ip hanok output fib daddr type local jump portmap",
    ]


def test_masquerade_commands() -> None:
    assert nat._masquerade_commands("hanok", "default", "10.88.0.0/16", "hanok0") == [
        'add rule ip hanok postrouting ip saddr 10.88.0.0/16 oifname != "hanok0" masquerade '
        'comment "hanok-network:default"',
        'add rule ip hanok postrouting ip saddr 10.88.0.0/16 oifname "hanok0" ct status dnat masquerade '
        'comment "hanok-network:default"',
    ]


def test_port_commands() -> None:
    assert nat._dnat_command("hanok", "c1", "10.88.0.5", PortMapping(80, 8080)) == \
        'add rule ip hanok portmap tcp dport 8080 dnat to 10.88.0.5:80 comment "hanok:c1"'
    assert nat._dnat_command("hanok", "c1", "10.88.0.5", PortMapping(53, 5353, "udp", "127.0.0.1")) == \
        'add rule ip hanok portmap ip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.5:53 comment "hanok:c1"'
    assert nat._dnat_command("hanok", "c1", "10.88.0.5", PortMapping(80, 8080, "tcp", "0.0.0.0")) == \
        'add rule ip hanok portmap tcp dport 8080 dnat to 10.88.0.5:80 comment "hanok:c1"'
    assert nat._owner_commands("hanok", "c1", "10.88.0.5", "hanok0") == [
        'add rule ip hanok postrouting oifname "hanok0" ip daddr 10.88.0.5 ct status dnat '
        'ip saddr { 127.0.0.0/8, 10.88.0.5 } masquerade comment "hanok:c1"',
        'add rule ip hanok input iifname "hanok0" ip daddr 127.0.0.0/8 ct state != { established, related } drop '
        'comment "hanok:c1"',
    ]


def test_ipv6_subnet_is_normalized_to_its_network_as_nft_prints_it() -> None:
    assert nat._subnet6("fd12:3456:0:1::7/64") == "fd12:3456:0:1::/64"
    assert nat._subnet6("FD12:0000:0000:0000:0000:0000:0000:0100/120") == "fd12::100/120"
    assert nat._subnet6("2001:db8::/48") == "2001:db8::/48"
    for bad in ("fd12::", "fd12::/129", "fd12::/x", "fd12:::1/64", "10.88.0.0/16", "fd12::/064x"):
        with pytest.raises(InvalidArgument, match=f'^subnet "{bad}" is not an IPv6 network such as fd00:1::/64$'):
            nat._subnet6(bad)


def test_ipv6_masquerade_commands() -> None:
    assert nat._skeleton6_commands("hanok") == [
        "add table ip6 hanok",
        "add chain ip6 hanok postrouting { type nat hook postrouting priority srcnat; policy accept; }",
    ]
    assert nat._masquerade6_commands("hanok", "dual", "fd12:3456:0:1::/64", "hk-dual") == [
        'add rule ip6 hanok postrouting ip6 saddr fd12:3456:0:1::/64 oifname != "hk-dual" masquerade '
        'comment "hanok-network:dual"',
        'add rule ip6 hanok postrouting ip6 saddr fd12:3456:0:1::/64 oifname "hk-dual" ct status dnat masquerade '
        'comment "hanok-network:dual"',
    ]


def test_ipv6_port_commands() -> None:
    assert nat._portmap6_commands("hanok") == [
        "add chain ip6 hanok prerouting { type nat hook prerouting priority dstnat; policy accept; }",
        "add chain ip6 hanok output { type nat hook output priority -100; policy accept; }",
        "add chain ip6 hanok portmap",
        "add rule ip6 hanok prerouting fib daddr type local jump portmap",
        "add rule ip6 hanok output ip6 daddr != ::1 fib daddr type local jump portmap",
    ]
    assert nat._dnat_command("hanok", "c1", "fd12::2", PortMapping(80, 8080), "ip6") == \
        'add rule ip6 hanok portmap tcp dport 8080 dnat to [fd12::2]:80 comment "hanok:c1"'
    assert nat._dnat_command("hanok", "c1", "fd12::2", PortMapping(80, 8080, "tcp", "::"), "ip6") == \
        'add rule ip6 hanok portmap tcp dport 8080 dnat to [fd12::2]:80 comment "hanok:c1"'
    assert nat._dnat_command("hanok", "c1", "fd12::2", PortMapping(53, 53, "udp", "fd12::9"), "ip6") == \
        'add rule ip6 hanok portmap ip6 daddr fd12::9 udp dport 53 dnat to [fd12::2]:53 comment "hanok:c1"'
    assert nat._owner6_commands("hanok", "c1", "fd12::2", "hk-dual") == [
        'add rule ip6 hanok postrouting oifname "hk-dual" ip6 daddr fd12::2 ct status dnat ip6 saddr fd12::2 '
        'masquerade comment "hanok:c1"',
    ]


def test_ipv6_rules_are_deleted_in_their_own_table() -> None:
    [rule] = nat._parse_listing(json.dumps(LISTING6))
    assert nat._delete_commands("hanok", [rule], "ip6") == ["delete rule ip6 hanok postrouting handle 3"]
    assert nat._delete_commands("hanok", [rule]) == ["delete rule ip hanok postrouting handle 3"]


# --- reading listings ----------------------------------------------------------------------------------------

# `nft -j list table ip hanok` as libnftables 1.0.6 prints it, plus one rule tagged by someone else
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "hanok", "handle": 2}},
    {"chain": {"family": "ip", "table": "hanok", "name": "prerouting", "handle": 1, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "prerouting", "handle": 5, "expr": [
        {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
        {"jump": {"target": "portmap"}}]}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "postrouting", "handle": 10, "comment": "hanok:abc",
              "expr": [
                  {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "hanok0"}},
                  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                             "right": "10.88.0.2"}},
                  {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                             "right": {"set": ["10.88.0.2", {"prefix": {"addr": "127.0.0.0", "len": 8}}]}}},
                  {"masquerade": None}]}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "postrouting", "handle": 11,
              "comment": "hanok-network:default", "expr": [
                  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                             "right": {"prefix": {"addr": "10.88.0.0", "len": 16}}}},
                  {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "hanok0"}},
                  {"masquerade": None}]}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "postrouting", "handle": 12, "comment": "someone else",
              "expr": [{"masquerade": None}]}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "input", "handle": 13, "comment": "hanok:abc", "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "hanok0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
        {"match": {"op": "!=", "left": {"ct": {"key": "state"}}, "right": {"set": ["established", "related"]}}},
        {"drop": None}]}},
    {"rule": {"family": "ip", "table": "hanok", "chain": "portmap", "handle": 7, "comment": "hanok:abc", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.2"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"dnat": {"addr": "10.88.0.2", "port": 80}}]}},
]}


# `nft -j list table ip6 hanok` with a dual-stack network's one rule
LISTING6 = {"nftables": [
    {"table": {"family": "ip6", "name": "hanok", "handle": 7}},
    {"chain": {"family": "ip6", "table": "hanok", "name": "postrouting", "handle": 1, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"rule": {"family": "ip6", "table": "hanok", "chain": "postrouting", "handle": 3,
              "comment": "hanok-network:dual", "expr": [
                  {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                             "right": {"prefix": {"addr": "fd12:3456:0:1::", "len": 64}}}},
                  {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "hk-dual"}},
                  {"masquerade": None}]}},
]}


# the same table once a container published a port over IPv6 (libnftables 1.0.6)
LISTING6_PORTS = {"nftables": [
    *LISTING6["nftables"],
    {"chain": {"family": "ip6", "table": "hanok", "name": "portmap", "handle": 4}},
    {"rule": {"family": "ip6", "table": "hanok", "chain": "portmap", "handle": 6, "comment": "hanok:c1", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "fd12::9"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"dnat": {"addr": "fd12:3456:0:1::2", "port": 80}}]}},
]}


def test_ipv6_listing_yields_dnat_facts_and_chain_names() -> None:
    chains: set[str] = set()
    masquerade, dnat = nat._parse_listing(json.dumps(LISTING6_PORTS), chains)
    assert chains == {"postrouting", "portmap"}
    assert (dnat.chain, dnat.handle, dnat.tag, dnat.kind) == ("portmap", 6, "hanok:c1", "dnat")
    assert dnat.facts == {"daddr": "fd12::9", "protocol": "tcp", "dport": 8080, "dnat_addr": "fd12:3456:0:1::2",
                          "dnat_port": 80}
    assert masquerade.kind == "masquerade"


def test_ipv6_listing_yields_the_facts_ensure_masquerade_compares() -> None:
    [rule] = nat._parse_listing(json.dumps(LISTING6))
    assert (rule.chain, rule.handle, rule.tag, rule.kind) == ("postrouting", 3, "hanok-network:dual", "masquerade")
    assert rule.facts == {"saddr": "fd12:3456:0:1::/64", "oifname": "hk-dual", "oifname_op": "!="}
    assert rule.facts["saddr"] == nat._subnet6("fd12:3456:0:1::/64")


def test_listing_yields_tagged_rules_with_their_facts() -> None:
    found = nat._parse_listing(json.dumps(LISTING))
    assert [(rule.chain, rule.handle, rule.tag, rule.kind, rule.facts) for rule in found] == [
        ("postrouting", 10, "hanok:abc", "hairpin",
         {"oifname": "hanok0", "oifname_op": "==", "daddr": "10.88.0.2"}),
        ("postrouting", 11, "hanok-network:default", "masquerade",
         {"saddr": "10.88.0.0/16", "oifname": "hanok0", "oifname_op": "!="}),
        ("input", 13, "hanok:abc", "localnet-guard",
         {"iifname": "hanok0", "iifname_op": "==", "daddr": "127.0.0.0/8"}),
        ("portmap", 7, "hanok:abc", "dnat",
         {"daddr": "192.0.2.2", "protocol": "tcp", "dport": 8080, "dnat_addr": "10.88.0.2", "dnat_port": 80}),
    ]
    assert nat._delete_commands("hanok", found[:2]) == ["delete rule ip hanok postrouting handle 10",
                                                        "delete rule ip hanok postrouting handle 11"]


def test_rule_texts_by_handle() -> None:
    listing = """table ip hanok { # handle 2
\tchain prerouting { # handle 1
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local jump portmap # handle 5
\t}

\tchain portmap { # handle 4
\t\ttcp dport 8080 dnat to 10.88.0.2:80 comment "hanok:abc" # handle 7
\t}
}
"""
    assert nat._parse_rule_texts(listing) == {
        5: "fib daddr type local jump portmap",
        7: 'tcp dport 8080 dnat to 10.88.0.2:80 comment "hanok:abc"',
    }


def test_nft_errors_are_condensed_to_one_line() -> None:
    error = """Error: Could not process rule: No such file or directory
delete rule ip hanok postrouting handle 99
                                        ^^
Error: Could not process rule: No such file or directory
delete rule ip hanok postrouting handle 99
            ^^^^^
Error: syntax error, unexpected newline
add rule ip hanok portmap tcp dport
                                   ^
"""
    assert nat._condense(error) == (
        "nft: Could not process rule: No such file or directory (in `delete rule ip hanok postrouting handle 99`); "
        "syntax error, unexpected newline (in `add rule ip hanok portmap tcp dport`)")
    assert nat._condense("netlink: something odd\n  happened\n") == "nft: netlink: something odd happened"


def test_a_port_picked_without_host_ip_is_free_in_both_families() -> None:
    """A dual-stack container publishes it on both: a port taken over IPv6 only must not be picked."""
    import socket

    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        last = min(port + 20, 65535)
        [mapping] = nat.parse_publish(f"{port}-{last}:80")          # the range's first free port...
        assert port < mapping.host_port <= last                      # ...is not the one IPv6 has
        [mapping] = nat.parse_publish("80")                          # a picked port: free in both
        for family in (socket.AF_INET, socket.AF_INET6):
            with socket.socket(family) as probe:
                probe.bind(("", mapping.host_port))


def test_a_host_ip_that_is_not_the_hosts_is_named_as_such() -> None:
    with pytest.raises(InvalidArgument, match=r'^host IP 192\.0\.2\.1 is not an address of this host$'):
        nat.parse_publish("192.0.2.1::80")
    with pytest.raises(InvalidArgument, match=r'^host IP 192\.0\.2\.1 is not an address of this host$'):
        nat.parse_publish("192.0.2.1:30000-30002:80")
    with pytest.raises(InvalidArgument, match=r'^host IP 2001:db8::7 is not an address of this host$'):
        nat._check_no_listener(PortMapping(80, 30000, "tcp", "2001:db8::7"), "ip6")
