"""Egress masquerade and host port mapping, in one hanok-owned nftables table (and its IPv6 twin).

Everything IPv4 lives in table `ip <TABLE>` (default `hanok`; $HANOK_NFT_TABLE lets tests use their own;
IPv6 masquerade is in `ip6 <TABLE>`, see below):

    chain prerouting   nat hook prerouting, priority dstnat:  fib daddr type local jump portmap
    chain output       nat hook output, priority -100:        fib daddr type local jump portmap
    chain portmap      one DNAT rule per published port:      [ip daddr HOSTIP] tcp dport 8080 dnat to C:80
    chain postrouting  nat hook postrouting, priority srcnat: per network, egress masquerade and hairpin;
                       per container, masquerade of DNATed connections from 127.0.0.0/8 or from itself
    chain input        filter hook input: per container, drop new packets for 127.0.0.0/8 arriving on its bridge

Why this shape:
- Rules are tagged by their nft comment, "hanok:<owner>" for a container's port rules and
  "hanok-network:<name>" for a network's, and removed by handle after listing the table as JSON. Per-owner
  chains would still need that listing to find their jump rules, and maps keyed by owner cannot carry the
  hostIP, hairpin and guard rules without several maps; one comment per rule keeps `nft list table ip hanok`
  readable and says who every rule belongs to.
- prerouting and output share the `portmap` chain behind `fib daddr type local`, so a published port answers
  on every address of the host: from outside (prerouting), from the host itself (output) and from containers
  going through the host's address (prerouting on the bridge).
- 127.0.0.1 works like CNI portmap does it: output DNAT sends the packet to the bridge, which the kernel only
  allows with net.ipv4.conf.<bridge>.route_localnet=1, and the 127.0.0.0/8 source is masqueraded so the
  container can answer. route_localnet would also let containers reach services the host binds to
  127.0.0.1 (CVE-2020-8558), so each owner adds an input rule dropping new packets for 127.0.0.0/8 that
  arrive on its bridge, and the last owner on a bridge turns route_localnet off again.
- Hairpin: a DNATed connection whose source is on the same bridge as its new destination is masqueraded
  (`ct status dnat`), otherwise the container would answer the peer directly and the peer would drop the
  reply. With br_netfilter (loaded on this host) the bridge port also needs hairpin mode, which
  netns/bridge.py sets; without it the packet is routed back out of the bridge, which needs ip_forward.
- No forward chain: an `accept` in this table does not override a `drop` in another table (every base chain
  on a hook runs, and any drop is final), so an accepting forward chain here could not help a host whose
  forward policy is drop. The host here has no ruleset and iptables policies ACCEPT.

IPv6 (dual-stack networks) lives in a parallel table `ip6 <TABLE>` of the same name:

    chain postrouting  per network: `ip6 saddr SUBNET6 oifname != BRIDGE masquerade` and its hairpin twin;
                       per container: masquerade of DNATed connections from itself
    chain prerouting, output, portmap   as in IPv4, made with the first port published over IPv6; output
                       skips ::1 (`ip6 daddr != ::1`)

A ULA subnet (fd00::/8) is not routed on the internet, so its sandboxes reach the outside only through the
host's address, as with RFC 1918 IPv4. The same rules hold in both tables: rules are found by their tag, and
the change removing a table's last tagged rule deletes that table. Why a parallel table and not one `inet`
table for both: the IPv4 table's layout (and every test and host that lists `table ip hanok`) stays exactly as
it was, and v4-only networks (the default one) never pay for a second listing when a sandbox is set up.

Which family a published port lands in follows its hostIP, as docker does: "" (none given) every address of
both families, when the container has an IPv6 address; 0.0.0.0 or an IPv4 address the IPv4 table only; :: or
an IPv6 address (docker's `-p [addr]:8080:80`) the IPv6 table only, which needs a dual-stack container. The
IPv6 loopback cannot be published: unlike 127.0.0.1 (route_localnet) the kernel never routes ::1 to another
interface, so connections to [::1]:PORT are left to the host (output skips ::1, so they are refused rather
than hang) and `-p [::1]:...` is refused. No IPv6 guard chain is needed either: the kernel drops packets for
::1 that arrive on any interface but lo before the prerouting hook.
The table is decided at each call (_table()): tests may set nat.TABLE, or $HANOK_NFT_TABLE at any time.

Every change is one nft script run by libnftables in one call, which the kernel applies as one transaction:
a failure leaves the table as it was. Changes are serialized by an flock on LOCK_PATH because each one lists
the table first (conflicts, handles) and the one removing the last tagged rule deletes the table, leaving the
host's ruleset as it was before hanok. libnftables is reached through cffi in ABI mode, loaded on first use.
"""
from __future__ import annotations

import os

from hanok.runtime import explain
from hanok.runtime.errors import InvalidArgument, NetError, NotSupported

if False:  # for type checkers only
    from collections.abc import Iterable

DEFAULT_TABLE = "hanok"
TABLE: str | None = None  # set by tests (nat.TABLE = ...); else $HANOK_NFT_TABLE, else DEFAULT_TABLE


def _table() -> str:
    """The table to work in, decided at each call: an environment set after import still counts."""
    return TABLE or os.environ.get("HANOK_NFT_TABLE") or DEFAULT_TABLE
LOCK_PATH = "/run/hanok-nft.lock"
OWNER_TAG = "hanok:"
NETWORK_TAG = "hanok-network:"
PROTOCOLS = ("tcp", "udp")
# Ports picked for an omitted host port are held open together until all are chosen, so they are distinct.
MAX_PICKED_PORTS = 100
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:@/+=")
_IFNAME_CHARS = _NAME_CHARS - {":", "/"}
_MAX_NAME = 100  # an nft comment holds 128 bytes, the tag prefix included
_NFT_OUTPUT_HANDLE = 1 << 3  # enum nft_output_flags in nftables/libnftables.h
_NFT_OUTPUT_JSON = 1 << 4


class PortMapping:
    """One published port: host_ip:host_port/protocol on the host -> container_port in the container.

    An immutable value class written out rather than @dataclass(frozen=True): importing dataclasses costs
    ~13 ms here (it pulls in inspect), more than everything else this module needs, and container setup is a
    hot path. It behaves like the frozen dataclass: keyword or positional fields, ==, hash, repr, no setattr.
    """

    __slots__ = ("container_port", "host_port", "protocol", "host_ip")
    container_port: int
    host_port: int
    protocol: str
    host_ip: str  # "" means every address of the host

    def __init__(self, container_port: int, host_port: int, protocol: str = "tcp", host_ip: str = "") -> None:
        object.__setattr__(self, "container_port", container_port)
        object.__setattr__(self, "host_port", host_port)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "host_ip", host_ip)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PortMapping is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PortMapping is immutable: cannot delete {name}")

    def _fields(self) -> tuple[int, int, str, str]:
        return (self.container_port, self.host_port, self.protocol, self.host_ip)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PortMapping):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"PortMapping(container_port={self.container_port!r}, host_port={self.host_port!r}, "
                f"protocol={self.protocol!r}, host_ip={self.host_ip!r})")

    def to_dict(self) -> dict:
        """The CRI/OCI-style field names callers print and store."""
        return {"containerPort": self.container_port, "hostPort": self.host_port,
                "protocol": self.protocol, "hostIP": self.host_ip}


# --- parsing and validation (pure) -----------------------------------------------------------------------

def parse_publish(spec: str) -> list[PortMapping]:
    """Parse one docker `-p` value into mappings, picking free host ports where none is given.

    Forms: containerPort | hostPort:containerPort | hostIP:hostPort:containerPort | hostIP::containerPort,
    each with an optional /tcp or /udp; ports may be ranges ("8000-8002:80-82"). A host range with a single
    container port publishes it on the first free port of the range, as docker does.
    """
    bad = f'invalid port mapping "{spec}"'
    body, slash, protocol = spec.strip().rpartition("/")
    if not slash:
        body, protocol = spec.strip(), "tcp"
    protocol = protocol.lower()
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f'{bad}: protocol "{protocol}" is not tcp or udp')
    if body.startswith("["):  # [IPv6]:hostPort:containerPort, as docker writes it
        address, bracket, rest = body[1:].partition("]")
        host, colon, container = rest[1:].partition(":")
        if not bracket or not rest.startswith(":") or not colon:
            raise InvalidArgument(f"{bad}: expected [IPv6 address]:[hostPort]:containerPort[/protocol]")
        if ":" not in address:
            raise InvalidArgument(f'{bad}: host IP "{address}" in brackets is not an IPv6 address')
        parts = [address, host, container]
    else:
        parts = body.split(":")
    if len(parts) == 1:
        host_ip, host, container = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host, container = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, container = parts
    else:
        raise InvalidArgument(f"{bad}: expected [[hostIP:]hostPort:]containerPort[/protocol] "
                              "(an IPv6 hostIP in brackets: [::]:8080:80)")
    if host_ip:
        host_ip = check_host_ip(host_ip, f"{bad}: host IP")
    first, last = _port_range(container, f"{bad}: container port")
    container_ports = list(range(first, last + 1))
    if host in ("", "0"):
        host_ports = _free_ports(len(container_ports), protocol, host_ip, bad)
    else:
        host_first, host_last = _port_range(host, f"{bad}: host port")
        if host_last - host_first == last - first:
            host_ports = list(range(host_first, host_last + 1))
        elif first == last:
            host_ports = [_first_free_port(host_first, host_last, protocol, host_ip)]
        else:
            raise InvalidArgument(f'{bad}: host ports "{host}" and container ports "{container}" '
                                  "are ranges of different lengths")
    return [PortMapping(c, h, protocol, host_ip) for c, h in zip(container_ports, host_ports)]


def _port_range(text: str, what: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    if not dash:
        last = first
    if not (_is_number(first) and _is_number(last)) or not 1 <= int(first) <= int(last) <= 65535:
        raise InvalidArgument(f'{what} "{text}" is not a port (1-65535) or a range of ports')
    return int(first), int(last)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _ipv4(text: str, what: str) -> str:
    """Validate a dotted-quad IPv4 address without importing ipaddress (3 ms); returns it normalized."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise InvalidArgument(f'{what} "{text}" is not an IPv4 address')
    return ".".join(str(int(p)) for p in parts)


def _ipv6(text: str, what: str) -> str:
    """Validate an IPv6 address (no zone, no brackets); returns it compressed, as nft prints it."""
    from _socket import AF_INET6, inet_ntop, inet_pton

    try:
        return inet_ntop(AF_INET6, inet_pton(AF_INET6, text))
    except (OSError, ValueError):
        raise InvalidArgument(f'{what} "{text}" is not an IPv6 address') from None


def check_host_ip(text: str, what: str) -> str:
    """A hostIP, normalized: "" (every address of the host, in both families when the container has IPv6),
    0.0.0.0 or an IPv4 address (IPv4 only), :: or an IPv6 address (IPv6 only). Pod manifests check theirs
    here too, so `what` names the field."""
    if not text:
        return ""
    if ":" not in text:
        return _ipv4(text, what)
    address = _ipv6(text, what)
    if address == "::1":
        raise InvalidArgument(f'{what} "{text}" is the IPv6 loopback, which the kernel never routes to a '
                              "container: publish on 127.0.0.1 instead")
    if address.startswith("::ffff:") and "." in address:
        raise InvalidArgument(f'{what} "{text}" is an IPv4-mapped address: give the IPv4 address itself')
    if int(address.split(":", 1)[0] or "0", 16) & 0xFFC0 == 0xFE80:  # fe80::/10
        raise InvalidArgument(f'{what} "{text}" is link-local (it needs an interface): publish on a global or '
                              "unique local address")
    return address


WILDCARDS = ("", "0.0.0.0", "::")  # hostIPs without a daddr match: every address (of their family)


def _families(host_ip: str, has_ip6: bool) -> tuple[str, ...]:
    """The tables a mapping's DNAT rule goes in ("ip", "ip6"), from its hostIP and whether the container has an
    IPv6 address; an IPv6 hostIP for a container without one is an error."""
    if not host_ip:
        return ("ip", "ip6") if has_ip6 else ("ip",)
    if ":" not in host_ip:
        return ("ip",)
    if not has_ip6:
        raise InvalidArgument(f"host IP {host_ip} is IPv6, but the container has no IPv6 address "
                              "(publish on IPv6 from a network made with --ipv6-subnet)")
    return ("ip6",)


def _subnet(text: str) -> str:
    """Validate an IPv4 network "a.b.c.d/len"; host bits are cleared, so the result names the network."""
    address, slash, length = text.partition("/")
    if not slash or not _is_number(length) or int(length) > 32:
        raise InvalidArgument(f'subnet "{text}" is not an IPv4 network such as 10.88.0.0/16')
    value = 0
    for part in _ipv4(address, f'subnet "{text}": address').split("."):
        value = value << 8 | int(part)
    value &= (0xFFFFFFFF << (32 - int(length))) & 0xFFFFFFFF
    return ".".join(str(value >> shift & 0xFF) for shift in (24, 16, 8, 0)) + f"/{int(length)}"


def _subnet6(text: str) -> str:
    """Validate an IPv6 network "addr/len"; host bits are cleared and the address compressed as nft prints it."""
    from _socket import AF_INET6, inet_ntop, inet_pton

    address, slash, length = text.partition("/")
    bad = f'subnet "{text}" is not an IPv6 network such as fd00:1::/64'
    if not slash or not length.isascii() or not length.isdigit() or len(length) > 3 or int(length) > 128:
        raise InvalidArgument(bad)
    try:
        value = int.from_bytes(inet_pton(AF_INET6, address), "big")
    except (OSError, ValueError):
        raise InvalidArgument(bad) from None
    host_bits = 128 - int(length)
    value = value >> host_bits << host_bits
    return f"{inet_ntop(AF_INET6, value.to_bytes(16, 'big'))}/{int(length)}"


def _name(text: str, what: str) -> str:
    """Owner and network names end up inside a quoted nft comment: keep them to a safe alphabet."""
    if not text or len(text) > _MAX_NAME or not set(text) <= _NAME_CHARS:
        raise InvalidArgument(f'{what} "{text}" must be 1-{_MAX_NAME} characters of letters, digits and _.-:@/+=')
    return text


def _bridge(text: str) -> str:
    if not text or len(text) > 15 or not set(text) <= _IFNAME_CHARS:
        raise InvalidArgument(f'bridge name "{text}" is not a valid interface name')
    return text


def _checked(mapping: PortMapping) -> PortMapping:
    """A mapping from any caller (CLI, pod spec), validated and with hostIP normalized."""
    if mapping.protocol not in PROTOCOLS:
        raise InvalidArgument(f'port mapping protocol "{mapping.protocol}" is not tcp or udp')
    for what, port in (("container port", mapping.container_port), ("host port", mapping.host_port)):
        if type(port) is not int or not 1 <= port <= 65535:
            raise InvalidArgument(f'{what} "{port}" is not a port (1-65535)')
    host_ip = check_host_ip(mapping.host_ip, "host IP")
    return PortMapping(mapping.container_port, mapping.host_port, mapping.protocol, host_ip)


def _overlaps(host_ip: str, other_host_ip: str) -> bool:
    """Two hostIPs of one family collide when they are equal or either is a wildcard."""
    return host_ip in WILDCARDS or other_host_ip in WILDCARDS or host_ip == other_host_ip


def _probe(protocol: str, host_ip: str) -> tuple:
    """A socket of the hostIP's family and the protocol's kind, and the address to bind it to for `port`.

    An IPv6 hostIP gets IPV6_V6ONLY, so it never collides with an IPv4 listener. No hostIP ("") means both
    families, not yet known while ports are picked: a dual-stack socket on :: (V6ONLY off) binds only a port
    free in both, so a port picked for a dual-stack container is never refused by add_ports's IPv6 check.
    Without IPv6 on the host it is an IPv4 socket.
    """
    import socket

    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    if ":" in host_ip or not host_ip:
        try:
            sock = socket.socket(socket.AF_INET6, kind)
        except OSError:
            if host_ip:
                raise
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if host_ip else 0)
            return sock, host_ip or "::"
    return socket.socket(socket.AF_INET, kind), host_ip


def _free_ports(count: int, protocol: str, host_ip: str, bad: str) -> list[int]:
    """Let the kernel pick `count` distinct free ports (bind to port 0), holding them until all are known."""
    if count > MAX_PICKED_PORTS:
        raise InvalidArgument(f"{bad}: give host ports for ranges longer than {MAX_PICKED_PORTS}")
    held = []
    try:
        for _ in range(count):
            sock, address = _probe(protocol, host_ip)
            held.append(sock)
            sock.bind((address, 0))
        return [sock.getsockname()[1] for sock in held]
    except OSError as e:
        _raise_if_not_ours(e, host_ip)
        raise NetError(f"cannot pick a free {protocol} port on {_shown(host_ip)}: {e.strerror}") from None
    finally:
        for sock in held:
            sock.close()


def _check_no_listener(mapping: PortMapping, family: str = "ip") -> None:
    """Refuse a host port a host service already listens on (in the family the rule is for): the DNAT would
    silently take its connections (say, -p 22:22 would hand the host's SSH to the container); docker refuses
    too."""
    host_ip = mapping.host_ip or ("::" if family == "ip6" else "0.0.0.0")
    sock, address = _probe(mapping.protocol, host_ip)
    with sock:
        try:
            sock.bind((address, mapping.host_port))
        except OSError as e:
            _raise_if_not_ours(e, host_ip)
            raise NetError(f"port {mapping.host_port}/{mapping.protocol} on {_shown(mapping.host_ip, family)} "
                           f"is already in use: {e.strerror}") from None


def _raise_if_not_ours(error: OSError, host_ip: str) -> None:
    """A bind that failed because the hostIP is not an address of this host says so, rather than "in use"."""
    import errno

    if error.errno == errno.EADDRNOTAVAIL:
        raise InvalidArgument(f"host IP {host_ip} is not an address of this host") from None


def _shown(host_ip: str, family: str = "") -> str:
    """A hostIP as error messages name it (a check of one family of "" names that family)."""
    if host_ip == "0.0.0.0" or (not host_ip and family == "ip"):
        return "the host's IPv4 addresses"
    if host_ip == "::" or (not host_ip and family == "ip6"):
        return "the host's IPv6 addresses"
    return host_ip or "the host"


def _first_free_port(first: int, last: int, protocol: str, host_ip: str) -> int:
    for port in range(first, last + 1):
        sock, address = _probe(protocol, host_ip)
        with sock:
            try:
                sock.bind((address, port))
            except OSError as e:
                _raise_if_not_ours(e, host_ip)
                continue
            return port
    raise NetError(f"no free {protocol} port in {first}-{last} on {_shown(host_ip)}")


# --- nft script text (pure) ------------------------------------------------------------------------------

def _skeleton_commands(table: str) -> list[str]:
    """The table, its chains and the two jumps into `portmap`; sent with the first rule of an absent table."""
    return [
        f"add table ip {table}",
        f"add chain ip {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain ip {table} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add chain ip {table} input {{ type filter hook input priority filter; policy accept; }}",
        f"add chain ip {table} guard {{ type filter hook prerouting priority raw; policy accept; }}",
        # a packet for 127.0.0.0/8 arriving from outside would otherwise be DNATed to a port published
        # on 127.0.0.1 before the kernel's martian check (moby#45610): loopback addresses come from lo only
        f'add rule ip {table} guard ip daddr 127.0.0.0/8 iifname != "lo" drop',
        f"add chain ip {table} portmap",
        f"add rule ip {table} prerouting fib daddr type local jump portmap",
        f"add rule ip {table} output fib daddr type local jump portmap",
    ]


def _skeleton6_commands(table: str) -> list[str]:
    """The IPv6 table and its postrouting chain; sent with the first IPv6 rule of an absent table."""
    return [
        f"add table ip6 {table}",
        f"add chain ip6 {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
    ]


def _portmap6_commands(table: str) -> list[str]:
    """The IPv6 table's port chains; sent with its first published port (a table made for masquerade alone
    has only postrouting). No guard chain: the kernel drops ::1 packets from anywhere but lo itself."""
    return [
        f"add chain ip6 {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain ip6 {table} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain ip6 {table} portmap",
        f"add rule ip6 {table} prerouting fib daddr type local jump portmap",
        # ::1 cannot leave lo: DNATing it would hang the connection instead of refusing it
        f"add rule ip6 {table} output ip6 daddr != ::1 fib daddr type local jump portmap",
    ]


def _masquerade6_commands(table: str, network: str, subnet: str, bridge: str) -> list[str]:
    """Egress masquerade for an IPv6 subnet, and hairpin masquerade between containers of its bridge."""
    tag = f'comment "{NETWORK_TAG}{network}"'
    return [
        f'add rule ip6 {table} postrouting ip6 saddr {subnet} oifname != "{bridge}" masquerade {tag}',
        f'add rule ip6 {table} postrouting ip6 saddr {subnet} oifname "{bridge}" ct status dnat masquerade {tag}',
    ]


def _masquerade_commands(table: str, network: str, subnet: str, bridge: str) -> list[str]:
    """Egress masquerade for the subnet, and hairpin masquerade between containers of its bridge."""
    tag = f'comment "{NETWORK_TAG}{network}"'
    return [
        f'add rule ip {table} postrouting ip saddr {subnet} oifname != "{bridge}" masquerade {tag}',
        f'add rule ip {table} postrouting ip saddr {subnet} oifname "{bridge}" ct status dnat masquerade {tag}',
    ]


def _dnat_command(table: str, owner: str, container_ip: str, mapping: PortMapping, family: str = "ip") -> str:
    """The DNAT rule of one mapping in the table of `family`; container_ip is of that family."""
    only_to = "" if mapping.host_ip in WILDCARDS else f"{family} daddr {mapping.host_ip} "
    target = f"[{container_ip}]" if family == "ip6" else container_ip
    return (f"add rule {family} {table} portmap {only_to}{mapping.protocol} dport {mapping.host_port} "
            f'dnat to {target}:{mapping.container_port} comment "{OWNER_TAG}{owner}"')


def _owner_commands(table: str, owner: str, container_ip: str, bridge: str) -> list[str]:
    """Once per owner: masquerade its DNATed connections from localhost or itself; guard route_localnet."""
    tag = f'comment "{OWNER_TAG}{owner}"'
    return [
        f'add rule ip {table} postrouting oifname "{bridge}" ip daddr {container_ip} ct status dnat '
        f"ip saddr {{ 127.0.0.0/8, {container_ip} }} masquerade {tag}",
        f'add rule ip {table} input iifname "{bridge}" ip daddr 127.0.0.0/8 '
        f"ct state != {{ established, related }} drop {tag}",
    ]


def _owner6_commands(table: str, owner: str, container_ip6: str, bridge: str) -> list[str]:
    """Once per owner publishing over IPv6: masquerade its DNATed connections from itself (hairpin)."""
    return [f'add rule ip6 {table} postrouting oifname "{bridge}" ip6 daddr {container_ip6} ct status dnat '
            f'ip6 saddr {container_ip6} masquerade comment "{OWNER_TAG}{owner}"']


def _delete_commands(table: str, doomed: list[_Rule], family: str = "ip") -> list[str]:
    return [f"delete rule {family} {table} {rule.chain} handle {rule.handle}" for rule in doomed]


# --- what is installed (JSON listing, parsed purely) -----------------------------------------------------

class _Rule:
    """A tagged rule found in the table: where it is, its handle, its tag and the facts hanok compares."""

    __slots__ = ("chain", "handle", "tag", "facts")

    def __init__(self, chain: str, handle: int, tag: str, facts: dict[str, str | int]) -> None:
        self.chain = chain
        self.handle = handle
        self.tag = tag
        self.facts = facts

    @property
    def kind(self) -> str:
        if self.chain == "portmap":
            return "dnat"
        if self.chain == "input":
            return "localnet-guard"
        return "masquerade" if self.facts.get("oifname_op") == "!=" else "hairpin"


def _parse_listing(text: str, chains: set[str] | None = None) -> list[_Rule]:
    """The hanok-tagged rules of `nft -j list table` output; untagged skeleton rules are left out. The table's
    chain names are added to `chains` when it is given."""
    from hanok.netns import _jsontext

    found = []
    for item in _jsontext.loads(text).get("nftables", ()):  # type: ignore[union-attr]  # nft's: an object
        if chains is not None and "chain" in item:
            chains.add(item["chain"]["name"])
        rule = item.get("rule")
        if rule and rule.get("comment", "").startswith((OWNER_TAG, NETWORK_TAG)):
            found.append(_Rule(rule["chain"], rule["handle"], rule["comment"], _facts(rule["expr"])))
    return found


def _facts(expr: list[dict]) -> dict[str, str | int]:
    """Flatten the matches hanok writes into {field: value}: saddr, daddr, protocol, dport, oifname, dnat..."""
    facts: dict[str, str | int] = {}
    for statement in expr:
        if "dnat" in statement:
            facts["dnat_addr"] = statement["dnat"]["addr"]
            facts["dnat_port"] = statement["dnat"]["port"]
        match = statement.get("match")
        if not match:
            continue
        left, right = match["left"], match["right"]
        if isinstance(right, dict) and "prefix" in right:
            right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
        if not isinstance(right, (str, int)):
            continue  # sets such as { 127.0.0.0/8, C }: nothing hanok compares
        if "payload" in left and left["payload"]["field"] == "dport":
            facts["protocol"] = left["payload"]["protocol"]
            facts["dport"] = right
        elif "payload" in left:
            facts[left["payload"]["field"]] = right
        elif "meta" in left:
            facts[left["meta"]["key"]] = right
            facts[left["meta"]["key"] + "_op"] = match["op"]
    return facts


def _parse_rule_texts(text: str) -> dict[int, str]:
    """handle -> rule text from `nft -a list table` output (chain and table headers end in '{' and are skipped)."""
    texts = {}
    for line in text.splitlines():
        body, marker, handle = line.strip().rpartition(" # handle ")
        if marker and handle.isdigit() and not body.endswith("{"):
            texts[int(handle)] = body
    return texts


def _condense(error: str) -> str:
    """nft's multi-line error (message, command, carets; repeated per failing part) as one line."""
    lines = error.splitlines()
    messages: list[str] = []
    for number, line in enumerate(lines):
        if line.startswith("Error: "):
            command = lines[number + 1].strip() if number + 1 < len(lines) else ""
            message = line[len("Error: "):] + (f" (in `{command}`)" if command else "")
            if message not in messages:
                messages.append(message)
    return "nft: " + ("; ".join(messages) or " ".join(line.strip() for line in lines if line.strip()))


# --- libnftables -----------------------------------------------------------------------------------------

_nft: tuple | None = None  # (ffi, lib, ctx, pid) once loaded


def _context() -> tuple:
    """Load libnftables and make this process's context on first use (cffi is imported only then).

    The context holds a netlink socket: it talks to the network namespace it was made in, and a forked
    child makes its own rather than sharing the parent's socket.
    """
    global _nft
    if _nft is None or _nft[3] != os.getpid():
        try:
            from hanok.netns._nft_cffi import ffi
        except ImportError:  # running from an unbuilt checkout
            from hanok.netns._nft_build import ffibuilder as ffi
        try:
            lib = ffi.dlopen("libnftables.so.1")
        except OSError:
            raise NotSupported("libnftables.so.1 is missing: install the libnftables1 package") from None
        ctx = lib.nft_ctx_new(0)
        if ctx == ffi.NULL:
            raise NetError("nft: cannot create a libnftables context")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        import atexit

        atexit.register(lib.nft_ctx_free, ctx)
        _nft = (ffi, lib, ctx, os.getpid())
    return _nft


def _run(script: str, flags: int = 0, missing_ok: bool = False) -> str | None:
    """Run an nft script (one transaction); return its output, or None if missing_ok and the table is absent."""
    ffi, lib, ctx, _ = _context()
    lib.nft_ctx_output_set_flags(ctx, flags)
    status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
    output = ffi.string(lib.nft_ctx_get_output_buffer(ctx)).decode(errors="replace")
    error = ffi.string(lib.nft_ctx_get_error_buffer(ctx)).decode(errors="replace")
    if status != 0:
        if missing_ok and "No such file or directory" in error:
            return None
        raise NetError(_condense(error))
    return output


def _apply(commands: list[str], why: str) -> None:
    if explain.enabled():
        explain.step(explain.quote(["nft", "; ".join(commands)]), why)
    _run("\n".join(commands) + "\n")


FAMILIES = ("ip", "ip6")   # the IPv4 table, then the IPv6 one (masquerade only)


def _installed(family: str = "ip", chains: set[str] | None = None) -> list[_Rule] | None:
    """The tagged rules in the table of `family`, or None when the table does not exist (its chain names
    are added to `chains` when given)."""
    text = _run(f"list table {family} {_table()}", _NFT_OUTPUT_JSON, missing_ok=True)
    return None if text is None else _parse_listing(text, chains)


class _Locked:
    """An exclusive flock on LOCK_PATH for one list-then-change sequence."""

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def _remove_tagged(tag: str, why: str, family: str = "ip") -> tuple[list[_Rule], list[_Rule]]:
    """Delete every rule carrying `tag` from the table of `family` (the whole table when nothing else is
    left); caller holds the lock.

    Returns (removed, remaining).
    """
    installed = _installed(family)
    if installed is None:
        return [], []
    doomed = [rule for rule in installed if rule.tag == tag]
    remaining = [rule for rule in installed if rule.tag != tag]
    if not remaining:  # also cleans up a table some crash left without tagged rules
        _apply([f"delete table {family} {_table()}"], f"{why}; nothing else is left in table {family} {_table()}")
    elif doomed:
        _apply(_delete_commands(_table(), doomed, family), why)
    return doomed, remaining


def _set_route_localnet(bridge: str, enabled: bool, why: str) -> bool:
    """Set net.ipv4.conf.<bridge>.route_localnet; returns whether it changed. A missing bridge is an error
    only when enabling."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    wanted = "1" if enabled else "0"
    try:
        with open(path) as f:
            if f.read().strip() == wanted:
                return False
    except FileNotFoundError:
        if enabled:
            raise NetError(f"bridge {bridge} does not exist") from None
        return False
    explain.step(f"echo {wanted} > {path}", why)
    with open(path, "w") as f:
        f.write(wanted)
    return True


# --- the API ---------------------------------------------------------------------------------------------

def ensure_masquerade(network: str, subnet: str, bridge: str) -> None:
    """Masquerade traffic from `subnet` leaving through any interface but `bridge`, and hairpin on it.

    An IPv6 subnet (it has a colon) gets its rules in the `ip6` table; a dual-stack network calls this once
    per subnet. Idempotent: identical rules are left alone; rules of `network` in the same family with another
    subnet or bridge are replaced in the same transaction.
    """
    _name(network, "network name")
    family = "ip6" if ":" in subnet else "ip"
    subnet = _subnet6(subnet) if family == "ip6" else _subnet(subnet)
    _bridge(bridge)
    tag = NETWORK_TAG + network
    table = _table()
    with _Locked():
        installed = _installed(family)
        mine = [rule for rule in installed or () if rule.tag == tag]
        have = sorted((str(r.facts.get("saddr")), str(r.facts.get("oifname")), str(r.facts.get("oifname_op")))
                      for r in mine)
        wanted = [(subnet, bridge, "!="), (subnet, bridge, "==")]
        if family == "ip6":
            skeleton, rules_to_add = _skeleton6_commands, _masquerade6_commands(table, network, subnet, bridge)
        else:
            skeleton, rules_to_add = _skeleton_commands, _masquerade_commands(table, network, subnet, bridge)
        if have == wanted:
            return
        commands = [] if installed is not None else skeleton(table)
        commands += _delete_commands(table, mine, family) + rules_to_add
        _apply(commands, f"network {network}: masquerade {subnet} leaving through interfaces other than {bridge}")


def remove_masquerade(network: str) -> None:
    """Remove the rules of `network` from both tables (idempotent)."""
    _name(network, "network name")
    with _Locked():
        for family in FAMILIES:
            _remove_tagged(NETWORK_TAG + network, f"network {network}: stop masquerading", family)


def add_ports(owner: str, container_ip: str, bridge: str, ports: list[PortMapping],
              container_ip6: str | None = None) -> list[PortMapping]:
    """Publish `ports` of the container at `container_ip` (and `container_ip6`, if dual-stack) on `bridge`,
    all in one transaction over both tables; return them normalized (hostIP as the rules have it), which is
    what callers should record and show.

    Each mapping goes in the tables its hostIP names (_families). Mappings `owner` already has are skipped
    (idempotent); a host port another owner publishes in the same family is an error naming that owner, and
    nothing is added.
    """
    _name(owner, "owner")
    container_ip = _ipv4(container_ip, "container address")
    addresses = {"ip": container_ip}
    if container_ip6 is not None:
        addresses["ip6"] = _ipv6(container_ip6, "container IPv6 address")
    _bridge(bridge)
    wanted = [(mapping, _families(mapping.host_ip, "ip6" in addresses))
              for mapping in (_checked(mapping) for mapping in ports)]
    for number, (mapping, families) in enumerate(wanted):
        for earlier, earlier_families in wanted[:number]:
            if (earlier.protocol, earlier.host_port) == (mapping.protocol, mapping.host_port) \
                    and set(families) & set(earlier_families) and _overlaps(earlier.host_ip, mapping.host_ip):
                raise InvalidArgument(f"port {mapping.host_port}/{mapping.protocol} is published twice")
    published = [mapping for mapping, _ in wanted]
    if not wanted:
        return published
    if not os.path.isdir(f"/sys/class/net/{bridge}"):
        raise NetError(f"bridge {bridge} does not exist")
    tag = OWNER_TAG + owner
    table = _table()
    commands: list[str] = []
    with _Locked():
        added_v4 = False
        for family in FAMILIES:
            mine = [mapping for mapping, families in wanted if family in families]
            if not mine:
                continue
            chains: set[str] = set()
            installed = _installed(family, chains)
            address = addresses[family]
            additions = [_dnat_command(table, owner, address, mapping, family)
                         for mapping in _unpublished(mine, installed or (), tag, address, family)]
            if not any(rule.tag == tag and rule.chain == "postrouting" and rule.facts.get("daddr") == address
                       and rule.facts.get("oifname") == bridge for rule in installed or ()):
                owner_commands = _owner_commands if family == "ip" else _owner6_commands
                additions += owner_commands(table, owner, address, bridge)
            if not additions:
                continue
            if family == "ip":
                added_v4 = True
                commands += [] if installed is not None else _skeleton_commands(table)
            else:
                commands += [] if installed is not None else _skeleton6_commands(table)
                commands += [] if "portmap" in chains else _portmap6_commands(table)
            commands += additions
        if not commands:
            return published
        # the rules (with the 127.0.0.0/8 guards) first, route_localnet after: a crash in between
        # leaves localhost publishing not working yet, never the bridge open to the host's loopback
        _apply(commands, f"publish ports of {owner} at {' and '.join(addresses.values())}")
        if added_v4:
            _set_route_localnet(bridge, True,
                                "let 127.0.0.1 connections DNATed to a container leave through the bridge")
    return published


def _unpublished(mappings: list[PortMapping], installed: Iterable[_Rule], tag: str, address: str,
                 family: str) -> list[PortMapping]:
    """The mappings not yet in the table of `family`, each checked against the host's listeners; a port
    another owner (or this one, elsewhere) publishes there is an error."""
    published = [rule for rule in installed if rule.chain == "portmap"]
    missing = []
    for mapping in mappings:
        clash = next((rule for rule in published
                      if rule.facts.get("protocol") == mapping.protocol
                      and rule.facts.get("dport") == mapping.host_port
                      and _overlaps(mapping.host_ip, str(rule.facts.get("daddr", "")))), None)
        if clash is None:
            _check_no_listener(mapping, family)
            missing.append(mapping)
        elif (clash.tag, str(clash.facts.get("daddr", "")), clash.facts.get("dnat_addr"),
              clash.facts.get("dnat_port")) != (tag, _daddr(mapping.host_ip), address, mapping.container_port):
            raise NetError(f"port {mapping.host_port}/{mapping.protocol} is already published by container "
                           f"{clash.tag.removeprefix(OWNER_TAG)}")
    return missing


def _daddr(host_ip: str) -> str:
    """The daddr fact a listing shows for a rule of this hostIP ("" for the wildcards, which match none)."""
    return "" if host_ip in WILDCARDS else host_ip


def remove_ports(owner: str) -> None:
    """Remove every rule tagged with `owner` from both tables (idempotent); route_localnet goes off with its
    bridge's last owner."""
    _name(owner, "owner")
    with _Locked():
        _remove_tagged(OWNER_TAG + owner, f"unpublish the IPv6 ports of {owner}", "ip6")
        removed, remaining = _remove_tagged(OWNER_TAG + owner, f"unpublish the ports of {owner}")
        still_guarded = {rule.facts.get("iifname") for rule in remaining if rule.chain == "input"}
        for bridge in {str(rule.facts.get("iifname")) for rule in removed if rule.chain == "input"}:
            if bridge not in still_guarded:
                _set_route_localnet(bridge, False, f"no published ports left on {bridge}")


def rules() -> list[dict]:
    """What hanok installed: [{"owner"|"network": name, "kind", "chain", "rule": nft text}], the IPv4 table's
    rules in table order, then the IPv6 table's.

    kind: "dnat" (a published port); "hairpin" (masquerade of DNATed connections into a bridge: a network's
    from its subnet, an owner's from 127.0.0.0/8 and from the container itself); "masquerade" (a network's
    egress, `ip saddr` or `ip6 saddr` in its rule text); "localnet-guard" (an owner's drop of new
    127.0.0.0/8 packets arriving on its bridge).
    """
    found = []
    with _Locked():
        for family in FAMILIES:
            installed = _installed(family)
            if not installed:
                continue
            texts = _parse_rule_texts(_run(f"list table {family} {_table()}", _NFT_OUTPUT_HANDLE) or "")
            for rule in installed:
                if rule.tag.startswith(OWNER_TAG):
                    who = {"owner": rule.tag.removeprefix(OWNER_TAG)}
                else:
                    who = {"network": rule.tag.removeprefix(NETWORK_TAG)}
                found.append({**who, "kind": rule.kind, "chain": rule.chain, "rule": texts.get(rule.handle, "")})
    return found


def owners() -> set[str]:
    """Owners that have rules, so `hanok gc` can remove those whose container is gone."""
    with _Locked():
        installed = [rule for family in FAMILIES for rule in _installed(family) or ()]
    return {rule.tag.removeprefix(OWNER_TAG) for rule in installed if rule.tag.startswith(OWNER_TAG)}
