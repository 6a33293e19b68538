"""The bridge and one veth pair per sandbox, over rtnetlink (lean pyroute2, see _pyroute).

Host veth names carry no state: `host_ifname(owner)` derives them from the
owner id (`hkv` + 10 hex of its sha256, 13 chars, under IFNAMSIZ's 15), so
teardown and gc find them without reading anything. The container end is
created directly inside the sandbox's namespace under its final name
(IFLA_NET_NS_FD on the veth peer, as `ip link add ... peer name eth0 netns NS`
does), so there is never a half-moved interface to clean up: deleting the host
end deletes both, and so does removing the namespace, which is how teardown
normally lets the pair go (detach_after_namespace).

net.ipv4.ip_forward is switched on when a bridge is set up and left on, like
docker and the CNI bridge plugin do: containers on a bridge cannot reach
anything beyond it without forwarding, and turning it off again could break
other users of the host's routing. The same holds for
net.ipv6.conf.all.forwarding, switched on only when a bridge gets an IPv6
gateway (a dual-stack network; see enable_ipv6_forward for what it costs).

IPv6 addresses (the bridge's gateway, a sandbox's eth0) are added with
IFA_F_NODAD: duplicate address detection would keep them "tentative", hence
unusable, for about a second after every setup, and hanok's IPAM already
guarantees they are unique on the bridge.
"""
from __future__ import annotations

import _socket as socket  # the C module: socket.py costs ~4 ms (enum, selectors) for what is used here
import errno
import os
import time

from hanok.netns import _pyroute
from hanok.runtime import explain
from hanok.runtime.errors import NetError

try:    # CPython's built-in SHA-256: hashlib would load OpenSSL's libcrypto first (~3 ms) for 10 hex digits
    from _sha256 import sha256
except ImportError:     # renamed _sha2 in Python 3.12; other interpreters
    from hashlib import sha256

HOST_VETH_PREFIX = "hkv"
_HEX = frozenset("0123456789abcdef")
IFNAMSIZ_MAX = 15
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_IPV6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
_IFA_F_NODAD = 0x02
_NO_IPV6 = "IPv6 is disabled on this host (no /proc/sys/net/ipv6): create the network without an IPv6 subnet"
NAMESPACE_GRACE_S = 0.1   # how long detach_after_namespace waits for the kernel before deleting the pair itself
ALIAS_GRACE_S = 0.2       # how long ensure_bridge waits for a concurrent creator to mark a new bridge as hanok's


def host_ifname(owner: str) -> str:
    """The host-side veth name for `owner`: hkv + 10 hex of sha256(owner)."""
    return HOST_VETH_PREFIX + sha256(owner.encode()).hexdigest()[:10]


def is_host_veth(name: str) -> bool:
    """Whether `name` has the shape of a host_ifname(): hkv + 10 lowercase hex digits."""
    return len(name) == 13 and name.startswith(HOST_VETH_PREFIX) and _HEX.issuperset(name[3:])


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the IPv4 address (02:42:a:b:c:d, as docker did).

    Addresses are unique across hanok networks, so the MACs are too, and a
    known MAC spares a netlink round trip to read it back.
    """
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def _split_cidr(cidr: str) -> tuple[str, int]:
    address, _, prefix = cidr.partition("/")
    try:
        socket.inet_aton(address)
        prefixlen = int(prefix)
    except (OSError, ValueError):
        raise NetError(f"bad address {cidr!r}: want A.B.C.D/N") from None
    if not 0 <= prefixlen <= 32:
        raise NetError(f"bad address {cidr!r}: prefix length must be 0-32")
    return address, prefixlen


def _split_cidr6(cidr: str) -> tuple[str, int]:
    address, _, prefix = cidr.partition("/")
    try:
        socket.inet_pton(socket.AF_INET6, address)
        prefixlen = int(prefix)
    except (OSError, ValueError):
        raise NetError(f"bad address {cidr!r}: want an IPv6 address/N") from None
    if not 0 <= prefixlen <= 128:
        raise NetError(f"bad address {cidr!r}: prefix length must be 0-128")
    return address, prefixlen


def _broadcast(address: str, prefixlen: int) -> str:
    value = int.from_bytes(socket.inet_aton(address), "big")
    host_mask = (1 << (32 - prefixlen)) - 1
    return socket.inet_ntoa((value | host_mask).to_bytes(4, "big"))


def _add_address(rtnl: _pyroute.Rtnl, index: int, cidr: str) -> None:
    """ip addr add CIDR dev INDEX (IPv4 with its broadcast address, IPv6 with nodad); an address that is
    there already is fine."""
    msg = _pyroute.ifaddrmsg()
    msg["index"] = index
    if ":" in cidr:
        address, prefixlen = _split_cidr6(cidr)
        msg["family"] = socket.AF_INET6
        msg["flags"] = _IFA_F_NODAD
        msg["attrs"] = [("IFA_ADDRESS", address)]
    else:
        address, prefixlen = _split_cidr(cidr)
        msg["family"] = socket.AF_INET
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address),
                        ("IFA_BROADCAST", _broadcast(address, prefixlen))]
    msg["prefixlen"] = prefixlen
    try:
        rtnl.request(msg, _pyroute.RTM_NEWADDR, _pyroute.NLM_F_CREATE | _pyroute.NLM_F_EXCL)
    except FileExistsError:
        pass


def _add_default_route(rtnl: _pyroute.Rtnl, index: int, gateway: str) -> None:
    """ip [-6] route add default via GATEWAY dev INDEX."""
    route = _pyroute.rtmsg()
    route["family"] = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    route["table"] = _RT_TABLE_MAIN
    route["proto"] = _RTPROT_BOOT
    route["scope"] = _RT_SCOPE_UNIVERSE
    route["type"] = _RTN_UNICAST
    route["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    rtnl.request(route, _pyroute.RTM_NEWROUTE, _pyroute.NLM_F_CREATE | _pyroute.NLM_F_EXCL)


def _link_index(rtnl: _pyroute.Rtnl, ifname: str) -> int:
    msg = _pyroute.ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", ifname)]
    return rtnl.get(msg, _pyroute.RTM_GETLINK)["index"]


def enable_ip_forward() -> None:
    """sysctl net.ipv4.ip_forward=1 (left on; see the module docstring)."""
    with open(_IP_FORWARD, "r+b", buffering=0) as f:
        if f.read(1) != b"1":
            explain.step("sysctl -w net.ipv4.ip_forward=1", "let the bridge's traffic be routed")
            f.seek(0)
            f.write(b"1")


def enable_ipv6_forward() -> None:
    """sysctl net.ipv6.conf.all.forwarding=1 (left on, as IPv4 forwarding is), for dual-stack bridges only.

    What it costs the host: with forwarding on, the kernel ignores router
    advertisements on every interface whose accept_ra is 1 (the default); only
    accept_ra=2 keeps accepting them. A host that gets its own IPv6 address or
    default route by SLAAC then loses them when they expire. hanok does not
    change any interface's accept_ra: a host that relies on RAs needs
    accept_ra=2 on that interface before it creates an IPv6 network.
    """
    try:
        with open(_IPV6_FORWARD, "r+b", buffering=0) as f:
            if f.read(1) != b"1":
                explain.step("sysctl -w net.ipv6.conf.all.forwarding=1",
                             "let the bridge's IPv6 traffic be routed (RAs are then honoured only where accept_ra=2)")
                f.seek(0)
                f.write(b"1")
    except FileNotFoundError:
        raise NetError(_NO_IPV6) from None


def _enable_ipv6_on(name: str) -> None:
    """A bridge created while net.ipv6.conf.default.disable_ipv6=1 takes no IPv6 address: turn IPv6 on for
    this bridge only (hanok made it)."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    try:
        with open(path, "r+b", buffering=0) as f:
            if f.read(1) == b"1":
                explain.step(f"sysctl -w net.ipv6.conf.{name}.disable_ipv6=0", "the bridge carries IPv6 too")
                f.seek(0)
                f.write(b"0")
    except FileNotFoundError:
        raise NetError(_NO_IPV6) from None


BRIDGE_ALIAS = "hanok network bridge"  # ifalias of the bridges hanok makes: the only ones it changes or deletes


def ensure_bridge(name: str, gateway_cidr: str, mtu: int = 1500, gateway6_cidr: str | None = None) -> None:
    """Make bridge `name` exist, carry `gateway_cidr` (and `gateway6_cidr`, with nodad) and be up; whatever is
    there already is kept."""
    if len(name) > IFNAMSIZ_MAX:
        raise NetError(f"bridge name {name!r} is longer than {IFNAMSIZ_MAX} characters")
    # A fixed MAC (from the gateway address) keeps the kernel from giving the
    # bridge the lowest MAC of its ports, which changes as sandboxes come and
    # go and would leave stale gateway entries in the sandboxes' ARP caches.
    mac = mac_for(_split_cidr(gateway_cidr)[0])
    with _pyroute.Rtnl() as rtnl:
        msg = _pyroute.ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac),
                        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]
        try:
            rtnl.request(msg, _pyroute.RTM_NEWLINK, _pyroute.NLM_F_CREATE | _pyroute.NLM_F_EXCL)
            try:  # the kernel takes an alias only on an existing link (do_setlink), so in a second message
                alias = _pyroute.ifinfmsg()
                alias["index"] = socket.if_nametoindex(name)
                alias["attrs"] = [("IFLA_IFALIAS", BRIDGE_ALIAS)]
                rtnl.request(alias, _pyroute.RTM_NEWLINK)
            except OSError:
                _delete_link(name)
                raise
            explain.step(f"ip link add {name} mtu {mtu} address {mac} type bridge && "
                         f"ip link set {name} alias {BRIDGE_ALIAS}",
                         "the switch every sandbox's veth plugs into, marked as hanok's")
        except FileExistsError:
            if not os.path.isdir(f"/sys/class/net/{name}/bridge"):
                raise NetError(f"{name} exists and is not a bridge") from None
            if not _marked_within(name, ALIAS_GRACE_S):
                raise NetError(f"bridge {name} exists and was not made by hanok: choose another bridge name "
                               f"(hanok would add addresses to it and delete it with its network)") from None
        except OSError as e:
            raise NetError(f"cannot create bridge {name}: {e.strerror}") from e
        try:
            index = socket.if_nametoindex(name)
            explain.step(f"ip addr add {gateway_cidr} dev {name}", "the sandboxes' default gateway")
            _add_address(rtnl, index, gateway_cidr)
            if gateway6_cidr is not None:
                _enable_ipv6_on(name)
                explain.step(f"ip -6 addr add {gateway6_cidr} dev {name} nodad",
                             "the sandboxes' IPv6 default gateway, usable at once (no duplicate address detection)")
                _add_address(rtnl, index, gateway6_cidr)
            explain.step(f"ip link set {name} up")
            _pyroute.set_link_up(rtnl, index=index)
        except OSError as e:
            raise NetError(f"cannot configure bridge {name}: {e.strerror}") from e
    enable_ip_forward()
    if gateway6_cidr is not None:
        enable_ipv6_forward()


def remove_bridge(name: str) -> None:
    """ip link delete NAME, only if hanok made it; a bridge that is gone already is fine."""
    if os.path.isdir(f"/sys/class/net/{name}") and made_by_hanok(name):
        _delete_link(name)


def _marked_within(name: str, grace: float) -> bool:
    """Whether bridge `name` carries hanok's alias, waiting up to `grace` seconds for it.

    A bridge another setup has just created has no alias until that setup's
    second message (see ensure_bridge): the first sandboxes of a network set
    up at the same time would otherwise take it for a foreign bridge. Only a
    bridge without the alias waits, and then fails: an error path.
    """
    deadline = time.monotonic() + grace
    while not made_by_hanok(name):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def made_by_hanok(name: str) -> bool:
    """Whether the link carries the alias ensure_bridge gives the bridges it creates."""
    try:
        with open(f"/sys/class/net/{name}/ifalias") as f:
            return f.read().strip() == BRIDGE_ALIAS
    except OSError:
        return False


def _delete_link(ifname: str) -> bool:
    """ip link delete IFNAME; True if it existed."""
    msg = _pyroute.ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", ifname)]
    try:
        with _pyroute.Rtnl() as rtnl:
            rtnl.request(msg, _pyroute.RTM_DELLINK)
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise NetError(f"cannot delete link {ifname}: {e.strerror}") from e
    explain.step(f"ip link delete {ifname}")
    return True


def attach(netns_path: str, bridge: str, host_ifname: str, container_ifname: str = "eth0", *,
           address_cidr: str, gateway: str, mtu: int = 1500, mac: str | None = None,
           address6_cidr: str | None = None, gateway6: str | None = None) -> str:
    """Plug the namespace at `netns_path` into `bridge` with a veth pair; return the container MAC.

    The host end is enslaved to the bridge with hairpin mode on (so a sandbox
    reaches its own published ports) and up; the peer is created inside the
    namespace as `container_ifname`, with the address, MTU, a default route via
    `gateway`, and lo up; with `address6_cidr`, also that IPv6 address (nodad)
    and an IPv6 default route via `gateway6`. On failure the pair is deleted again.
    """
    if (address6_cidr is None) != (gateway6 is None):
        raise NetError("an IPv6 address needs an IPv6 gateway, and the other way round")
    address = _split_cidr(address_cidr)[0]
    mac = mac or mac_for(address)
    try:
        bridge_index = socket.if_nametoindex(bridge)
    except OSError:
        raise NetError(f"bridge {bridge} does not exist") from None
    explain.step(f"ip link add {host_ifname} mtu {mtu} master {bridge} up type veth peer name "
                 f"{container_ifname} mtu {mtu} address {mac} netns {netns_path}",
                 "one cable: host end on the bridge, other end inside the sandbox")
    ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # The peer is brought up from inside the namespace: IFF_UP on a peer
        # created in another namespace fails with ENOTCONN.
        peer = {"attrs": [("IFLA_IFNAME", container_ifname), ("IFLA_MTU", mtu),
                  ("IFLA_ADDRESS", mac), ("IFLA_NET_NS_FD", ns_fd)]}
        msg = _pyroute.ifinfmsg()
        msg["flags"] = msg["change"] = _pyroute.IFF_UP
        msg["attrs"] = [("IFLA_IFNAME", host_ifname), ("IFLA_MTU", mtu), ("IFLA_MASTER", bridge_index),
                        ("IFLA_LINKINFO", {"attrs": [
                            ("IFLA_INFO_KIND", "veth"),
                            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})]
        with _pyroute.Rtnl() as rtnl:
            rtnl.request(msg, _pyroute.RTM_NEWLINK, _pyroute.NLM_F_CREATE | _pyroute.NLM_F_EXCL)
    except FileExistsError:
        raise NetError(f"interface {host_ifname} already exists") from None
    except OSError as e:
        raise NetError(f"cannot create veth pair {host_ifname}: {e.strerror}") from e
    finally:
        os.close(ns_fd)
    try:
        _configure_inside(netns_path, host_ifname, container_ifname, address_cidr, gateway, address6_cidr, gateway6)
    except BaseException:
        _delete_link(host_ifname)
        raise
    return mac


def _configure_inside(netns_path: str, host_ifname: str, container_ifname: str, address_cidr: str,
                      gateway: str, address6_cidr: str | None, gateway6: str | None) -> None:
    explain.step(f"echo 1 > /sys/class/net/{host_ifname}/brport/hairpin_mode",
                 "let a sandbox reach itself through its published ports")
    try:
        with open(f"/sys/class/net/{host_ifname}/brport/hairpin_mode", "wb", buffering=0) as f:
            f.write(b"1")
    except OSError as e:
        raise NetError(f"cannot set hairpin mode on {host_ifname}: {e.strerror}") from e
    ipv6 = (f" && ip -6 addr add {address6_cidr} dev {container_ifname} nodad && "
            f"ip -6 route add default via {gateway6} dev {container_ifname}") if address6_cidr else ""
    explain.step(f"nsenter --net={netns_path} sh -c 'ip link set lo up && "
                 f"ip addr add {address_cidr} dev {container_ifname} && ip link set {container_ifname} up && "
                 f"ip route add default via {gateway} dev {container_ifname}{ipv6}'")
    try:
        with _pyroute.socket_in(netns_path) as rtnl:
            _pyroute.set_link_up(rtnl, ifname="lo")
            index = _link_index(rtnl, container_ifname)
            _add_address(rtnl, index, address_cidr)
            _pyroute.set_link_up(rtnl, index=index)
            _add_default_route(rtnl, index, gateway)
            if address6_cidr is not None and gateway6 is not None:
                _add_address(rtnl, index, address6_cidr)
                _add_default_route(rtnl, index, gateway6)
    except OSError as e:
        raise NetError(f"cannot configure {container_ifname} in {netns_path}: {e.strerror}") from e


def detach(host_ifname: str) -> None:
    """Delete the veth pair by its host end (the peer goes with it); gone already is fine."""
    _delete_link(host_ifname)


def detach_after_namespace(host_ifname: str, grace: float = NAMESPACE_GRACE_S) -> None:
    """Make sure the veth pair is gone once its sandbox's namespace has been removed.

    When nothing else holds a network namespace, removing it makes the kernel
    delete its interfaces in its netns cleanup worker, and with the container
    end the whole pair: 1-20 ms here, without netlink from this process. An
    explicit RTM_DELLINK instead blocks ~20 ms in the kernel (it waits for RCU
    grace periods) after ~20 ms spent loading pyroute2's message classes, which
    is most of a teardown. So this waits for the pair to go, and deletes it
    explicitly (as detach() does) only if it is still there after `grace`
    seconds: a process still in the namespace keeps it, and its interfaces.
    """
    explain.step(f"while ip link show {host_ifname} >/dev/null 2>&1; do sleep 0.001; done",
                 "the kernel deletes the veth pair with its namespace")
    deadline = time.monotonic() + grace
    while _link_exists(host_ifname):
        if time.monotonic() >= deadline:
            detach(host_ifname)
            return
        time.sleep(0.001)


def _link_exists(ifname: str) -> bool:
    """Whether anything of `ifname` is left: the kernel unlists a dying interface's name (if_nametoindex
    fails, the name is free again) before its /sys/class/net entry goes, which gc (host_veths) reads."""
    if os.path.lexists(f"/sys/class/net/{ifname}"):
        return True
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def host_veths() -> list[str]:
    """Names of hanok's host-side veths (by name pattern), for gc."""
    try:
        names = os.listdir("/sys/class/net")
    except OSError as e:
        raise NetError(f"cannot list interfaces: {e.strerror}") from e
    return sorted(n for n in names if is_host_veth(n))
