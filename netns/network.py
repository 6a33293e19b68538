"""The sandbox network API the engine calls: networks, and setup/teardown/gc per owner.

An owner is a container or pod sandbox id. Everything made for it is named
after it, so teardown and gc need no state beyond the files named here:
  <run_dir>/netns/<owner>                  its network namespace (namespace.py)
  hkv<10 hex of sha256(owner)>             its host veth (bridge.host_ifname)
  <state_root>/net/ipam/<net>/...          its address lease (ipam.py)
  nat rules tagged with the owner          its published ports (nat.py)
  <state_root>/net/endpoints/<owner>.json  what setup returned, written last
  <run_dir>/net/<owner>/                   resolv.conf, hosts, hostname (when asked)

Networks other than the implicit default are kept in
<state_root>/net/networks.json (atomic writes under networks.lock).

Dual stack is opt-in per network, as with `docker network create --ipv6`: a
network created with an IPv6 subnet (`subnet6`) gives every sandbox an IPv6
address from its own pool (ipam, under the IPv4 pool's directory), the bridge
the subnet's ::1 as IPv6 gateway, and the subnet an egress masquerade rule in
nat.py's ip6 table. Ports are published on both families there unless their
hostIP names one (nat.py says how). The default network stays IPv4 only.

The bridge and the masquerade rule of a network are shared by its sandboxes:
a failed setup leaves them in place (another sandbox may be using them right
now); `remove_network` removes them.
"""
from __future__ import annotations

import os

from hanok.netns import _jsontext, ipam, namespace
from hanok.runtime.errors import BadState, Exists, HanokError, InvalidArgument, NetError, NotFound

if False:  # for type checkers only: nat is imported when ports or masquerade are used
    import ipaddress
    from collections.abc import Callable, Iterable

    from hanok.netns import nat

DEFAULT_NETWORK = "hanok"
DEFAULT_BRIDGE = "hanok0"
DEFAULT_SUBNET = "10.89.0.0/24"
MODES = ("bridge", "none", "host")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def is_network_name(name: str) -> bool:
    """1-64 characters of [a-zA-Z0-9_.-], the first alphanumeric."""
    return 0 < len(name) <= 64 and name[0] not in "_.-" and _NAME_CHARS.issuperset(name)


def is_bridge_name(name: str) -> bool:
    """1-15 characters (IFNAMSIZ) of [a-zA-Z0-9_.-]."""
    return 0 < len(name) <= 15 and _NAME_CHARS.issuperset(name)


class NetworkConfig:
    """One bridge network: its bridge device, IPv4 subnet and gateway, and optionally an IPv6 subnet and
    gateway (None for IPv4-only networks).

    A plain class rather than a dataclass: `dataclasses` pulls in inspect
    (~6 ms), paid by every process that sets up or tears down a sandbox.
    """

    __slots__ = ("name", "bridge", "subnet", "gateway", "mtu", "masquerade", "subnet6", "gateway6")

    def __init__(self, name: str, bridge: str, subnet: str, gateway: str, mtu: int = 1500,
                 masquerade: bool = True, subnet6: str | None = None, gateway6: str | None = None):
        self.name = name
        self.bridge = bridge
        self.subnet = subnet
        self.gateway = gateway
        self.mtu = mtu
        self.masquerade = masquerade
        self.subnet6 = subnet6
        self.gateway6 = gateway6

    def to_dict(self) -> dict:
        """The fields by name, as stored in networks.json and printed by `hanok network inspect`."""
        return {field: getattr(self, field) for field in self.__slots__}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetworkConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "NetworkConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


def _default_network() -> NetworkConfig:
    return NetworkConfig(DEFAULT_NETWORK, DEFAULT_BRIDGE, DEFAULT_SUBNET, "10.89.0.1")


def _net_dir(state_root: str) -> str:
    return os.path.join(state_root, "net")


# Records are JSON through _jsontext (the C module _json: `import json` costs ~5 ms, paid by every setup and
# teardown).

def _write_json(path: str, data: object, durable: bool = True) -> None:
    """Write JSON atomically: temp file, fsync (if `durable`), rename."""
    text = _jsontext.dumps(data) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    """The JSON object in `path`, None when the file is missing; NetError when it is not a JSON object."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        value = _jsontext.loads(data.decode("utf-8"))
    except ValueError as e:          # UnicodeDecodeError too: a record cut short can hold any bytes
        raise NetError(f"{path} is corrupt: {e}") from None
    if not isinstance(value, dict):
        raise NetError(f"{path} is corrupt: not one JSON object")
    return value


# -- networks ---------------------------------------------------------------

def _networks_file(state_root: str) -> str:
    return os.path.join(_net_dir(state_root), "networks.json")


def _stored_networks(state_root: str) -> dict[str, NetworkConfig]:
    data = _read_json(_networks_file(state_root)) or {}
    return {name: NetworkConfig(**fields) for name, fields in data.get("networks", {}).items()}


def _all_networks(state_root: str) -> dict[str, NetworkConfig]:
    networks = {DEFAULT_NETWORK: _default_network()}
    networks.update(_stored_networks(state_root))
    return networks


class _NetworksLock:
    """flock on <state_root>/net/networks.lock around read-modify-write of networks.json."""

    def __init__(self, state_root: str):
        self.path = os.path.join(_net_dir(state_root), "networks.lock")

    def __enter__(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _save_networks(state_root: str, networks: dict[str, NetworkConfig]) -> None:
    _write_json(_networks_file(state_root), {"networks": {n: c.to_dict() for n, c in networks.items()}})


def _default_bridge_name(name: str) -> str:
    if name == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    candidate = f"hk-{name}"
    if is_bridge_name(candidate):
        return candidate
    import hashlib

    return "hk-" + hashlib.sha256(name.encode()).hexdigest()[:10]


def create_network(state_root: str, name: str, subnet: str, bridge: str | None = None,
                   gateway: str | None = None, mtu: int = 1500, masquerade: bool = True,
                   subnet6: str | None = None) -> NetworkConfig:
    """Define a bridge network (nothing is created on the host until a sandbox joins it).

    With `subnet6` (an IPv6 network, /64 to /120, see _check_subnet6) the
    network is dual stack; its IPv6 gateway is the subnet's ::1. The default
    network "hanok" exists implicitly and may be redefined here while it has
    no endpoints.
    """
    import ipaddress

    if not is_network_name(name):
        raise InvalidArgument(f"bad network name {name!r}: want 1-64 characters of [a-zA-Z0-9_.-]")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"bad subnet {subnet!r}: {e}") from None
    if net.prefixlen > 30:
        raise InvalidArgument(f"bad subnet {subnet!r}: prefix length must be at most 30")
    if gateway is None:
        gateway = str(net.network_address + 1)
    try:
        gateway_address = ipaddress.IPv4Address(gateway)
    except ValueError as e:
        raise InvalidArgument(f"bad gateway {gateway!r}: {e}") from None
    if gateway_address not in net or gateway_address in (net.network_address, net.broadcast_address):
        raise InvalidArgument(f"bad gateway {gateway}: not a host address of {subnet}")
    bridge = bridge or _default_bridge_name(name)
    if not is_bridge_name(bridge):
        raise InvalidArgument(f"bad bridge name {bridge!r}: want 1-15 characters of [a-zA-Z0-9_.-]")
    if not 68 <= mtu <= 65535:
        raise InvalidArgument(f"bad mtu {mtu}: want 68-65535")
    net6 = _check_subnet6(subnet6) if subnet6 is not None else None
    gateway6 = str(net6.network_address + 1) if net6 is not None else None
    if net6 is not None and mtu < 1280:
        raise InvalidArgument(f"bad mtu {mtu}: IPv6 needs at least 1280")
    config = NetworkConfig(name, bridge, str(net), gateway, mtu, masquerade, str(net6) if net6 else None, gateway6)
    with _NetworksLock(state_root):
        stored = _stored_networks(state_root)
        if name in stored:
            raise Exists(f"network {name} already exists")
        if name == DEFAULT_NETWORK and _pool(state_root, _default_network()).leases():
            raise BadState(f"network {name} has active endpoints: cannot redefine it")
        for other in _all_networks(state_root).values():
            if other.name == name:
                continue
            if ipaddress.IPv4Network(other.subnet).overlaps(net):
                raise InvalidArgument(f"subnet {subnet} overlaps network {other.name} ({other.subnet})")
            if net6 is not None and other.subnet6 and ipaddress.IPv6Network(other.subnet6).overlaps(net6):
                raise InvalidArgument(f"IPv6 subnet {subnet6} overlaps network {other.name} ({other.subnet6})")
            if other.bridge == bridge:
                raise InvalidArgument(f"bridge {bridge} is already used by network {other.name}")
        stored[name] = config
        _save_networks(state_root, stored)
    return config


def _check_subnet6(subnet6: str) -> ipaddress.IPv6Network:
    """The IPv6 network `subnet6` names, or InvalidArgument saying what is wrong with it.

    Supported: unique local (fd00::/8, e.g. fd12:3456:789a:1::/64) and global
    unicast (2000::/3) networks with a prefix length of 64 to 120 (ipam's
    range: shorter prefixes gain nothing for containers on one bridge, longer
    ones leave too few addresses). Link-local, multicast, loopback, IPv4-mapped
    and other special ranges cannot be a bridge's subnet.
    """
    import ipaddress

    try:
        net6 = ipaddress.IPv6Network(subnet6, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"bad IPv6 subnet {subnet6!r}: {e}") from None
    shortest, longest = ipam.V6_PREFIX_RANGE
    if not shortest <= net6.prefixlen <= longest:
        raise InvalidArgument(f"bad IPv6 subnet {subnet6!r}: prefix length must be {shortest}-{longest}")
    if not (net6.subnet_of(ipaddress.IPv6Network("fd00::/8"))
            or net6.subnet_of(ipaddress.IPv6Network("2000::/3"))):
        raise InvalidArgument(f"bad IPv6 subnet {subnet6!r}: want a unique local (fd00::/8) or global unicast "
                              "(2000::/3) network")
    return net6


def list_networks(state_root: str) -> list[NetworkConfig]:
    """Every network, the implicit default included, sorted by name."""
    return sorted(_all_networks(state_root).values(), key=lambda c: c.name)


def get_network(state_root: str, name: str) -> NetworkConfig:
    try:
        return _all_networks(state_root)[name]
    except KeyError:
        raise NotFound(f"network {name} not found") from None


def remove_network(state_root: str, run_dir: str, name: str) -> None:
    """Remove a network's bridge, masquerade rule, address pool and definition.

    Refused while sandboxes use it. Removing the default network removes its
    bridge; the network itself stays defined (implicitly).
    `run_dir` is where sandboxes' namespaces live; a namespace still named
    after an endpoint of this network also counts as a user.
    """
    with _NetworksLock(state_root):
        config = get_network(state_root, name)
        pool = _pool(state_root, config)
        users = set(pool.leases()) | {o for o, record in _endpoint_records(state_root)
                                      if record.get("network") == name and namespace.exists(run_dir, o)}
        pool6 = _pool6(state_root, config)
        if pool6 is not None:
            users |= set(pool6.leases())
        if users:
            raise BadState(f"network {name} has {len(users)} active endpoints")
        if config.masquerade:
            _nat().remove_masquerade(name)
        _links().remove_bridge(config.bridge)
        pool.remove()                                   # the IPv6 pool is inside it
        stored = _stored_networks(state_root)
        if stored.pop(name, None) is not None:
            _save_networks(state_root, stored)


def _pool(state_root: str, config: NetworkConfig) -> ipam.Pool:
    return ipam.Pool(state_root, config.name, config.subnet, config.gateway)


def _pool6(state_root: str, config: NetworkConfig) -> ipam.Pool | None:
    """The network's IPv6 pool; None for an IPv4-only network."""
    if not config.subnet6:
        return None
    return ipam.Pool(state_root, config.name, config.subnet6, config.gateway6)


def _pools(state_root: str, config: NetworkConfig) -> list[ipam.Pool]:
    """Every address pool of the network: IPv4, then IPv6 if it is dual stack."""
    return [pool for pool in (_pool(state_root, config), _pool6(state_root, config)) if pool is not None]


def _nat():
    """netns/nat.py, imported only when ports or masquerade are used (it loads nftables)."""
    try:
        from hanok.netns import nat
    except ImportError as e:
        raise NetError(f"port mapping and masquerade are unavailable: {e}") from e
    return nat


def _links():
    """bridge.py, imported on first use; the pyroute2 message classes it uses (~20 ms
    with socket and typing) load only when a netlink message is first built."""
    from hanok.netns import bridge

    return bridge


# -- endpoints --------------------------------------------------------------

def _endpoints_dir(state_root: str) -> str:
    return os.path.join(_net_dir(state_root), "endpoints")


def _endpoint_path(state_root: str, owner: str) -> str:
    return os.path.join(_endpoints_dir(state_root), owner + ".json")


def _read_record(path: str) -> dict | None:
    """An endpoint record, or None when it is missing or unreadable.

    Records are written without fsync (~1 ms of every setup): they describe
    sandboxes, which a reboot ends anyway, so a power loss only risks a record
    left empty or cut short, and its owner is then handled like a setup that
    died half way: setup starts over, teardown and gc look for every trace.
    """
    try:
        return _read_json(path)
    except NetError:
        return None


def _endpoint_records(state_root: str) -> Iterable[tuple[str, dict]]:
    """(owner, record) for every endpoint record; an unreadable one as {} (its owner still counts)."""
    try:
        names = os.listdir(_endpoints_dir(state_root))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json"):
            owner = name[:-5]
            path = os.path.join(_endpoints_dir(state_root), name)
            record = _read_record(path)
            if record is not None:
                yield owner, record
            elif os.path.exists(path):
                yield owner, {}


def _dns_dir(run_dir: str, owner: str) -> str:
    return os.path.join(run_dir, "net", owner)


def has_endpoint(state_root: str, run_dir: str, owner: str) -> bool:
    """Whether anything of `owner`'s network may exist (its record or its namespace): a cheap
    check that spares teardown's netlink work for owners that never had a network."""
    return os.path.exists(_endpoint_path(state_root, owner)) or os.path.lexists(netns_path(run_dir, owner))


def netns_path(run_dir: str, owner: str) -> str:
    """The namespace path of `owner`, for containers that join it (container:ID, pods)."""
    return namespace.path(run_dir, owner)


def setup(state_root: str, run_dir: str, owner: str, *, mode: str = "bridge",
          network: str = DEFAULT_NETWORK, ports: Iterable[nat.PortMapping] = (),
          hostname: str | None = None) -> dict:
    """Give `owner` its network; return (and record) what it got as a JSON-able dict.

    mode "host": nothing is made. "none": a namespace with only lo up.
    "bridge": a namespace, an address from the network's pool, a veth pair
    to the network's bridge (made if missing) with masquerade, and the
    published `ports`. On a dual-stack network eth0 also gets an IPv6
    address and default route, and the result "ip6", "prefixLength6" and
    "gateway6" (keys present only then, so IPv4-only results are as they
    were). With `hostname`, resolv.conf, hosts and hostname files
    are written too (their paths under "files"). Calling it again for the
    same owner returns the recorded result. On failure everything made so far
    is undone and the error is raised.
    """
    ipam.check_owner(owner)
    if mode not in MODES:
        raise InvalidArgument(f"bad network mode {mode!r}: want one of {', '.join(MODES)}")
    if mode == "host":
        return {"mode": "host"}
    ports = list(ports)
    record_path = _endpoint_path(state_root, owner)
    recorded = _read_record(record_path)
    if recorded is not None and namespace.exists(run_dir, owner):
        if recorded.get("mode") != mode or (mode == "bridge" and recorded.get("network") != network):
            raise Exists(f"{owner} already has a {recorded.get('mode')} network endpoint")
        return recorded
    config = get_network(state_root, network) if mode == "bridge" else None
    if recorded is not None or os.path.lexists(netns_path(run_dir, owner)):
        # Leftovers: a setup that died half way, or a record that outlived its
        # namespace (run_dir is volatile, state_root is not: a reboot).
        teardown(state_root, run_dir, owner)
    undo: list[Callable[[], None]] = []
    try:
        result = _setup(state_root, run_dir, owner, config, ports, hostname, undo)
        os.makedirs(_endpoints_dir(state_root), mode=0o700, exist_ok=True)
        _write_json(record_path, result, durable=False)
    except BaseException as e:
        for action in reversed(undo):
            try:
                action()
            except Exception:  # the original error is the one to report
                pass
        if isinstance(e, OSError):
            raise NetError(f"network setup for {owner} failed: {e}") from e
        raise
    return result


def _setup(state_root: str, run_dir: str, owner: str, config: NetworkConfig | None,
           ports: list[nat.PortMapping], hostname: str | None, undo: list[Callable[[], None]]) -> dict:
    """The steps of setup, each registering its undo as soon as it has made something."""
    path = namespace.create(run_dir, owner)
    undo.append(lambda: namespace.remove(run_dir, owner))
    result: dict = {"mode": "none", "network": None, "netns": path, "interface": None, "ip": None,
                    "prefixLength": None, "gateway": None, "mac": None, "hostInterface": None, "ports": []}
    if config is not None:
        links = _links()
        pool = _pool(state_root, config)
        ip, prefixlen, gateway = pool.allocate(owner)
        undo.append(lambda: pool.release(owner))
        pool6 = _pool6(state_root, config)
        ipv6: dict = {}                 # the result's IPv6 fields, on a dual-stack network
        address6_cidr = gateway6_cidr = None
        if pool6 is not None:
            ip6, prefixlen6, gateway6 = pool6.allocate(owner)
            undo.append(lambda: pool6.release(owner))
            ipv6 = {"ip6": ip6, "prefixLength6": prefixlen6, "gateway6": gateway6}
            address6_cidr, gateway6_cidr = f"{ip6}/{prefixlen6}", f"{config.gateway6}/{prefixlen6}"
        links.ensure_bridge(config.bridge, f"{config.gateway}/{prefixlen}", config.mtu, gateway6_cidr)
        if config.masquerade:
            _nat().ensure_masquerade(config.name, config.subnet, config.bridge)
            if config.subnet6:
                _nat().ensure_masquerade(config.name, config.subnet6, config.bridge)
        host_ifname = links.host_ifname(owner)
        mac = links.attach(path, config.bridge, host_ifname, "eth0", address_cidr=f"{ip}/{prefixlen}",
                            gateway=gateway, mtu=config.mtu, address6_cidr=address6_cidr,
                            gateway6=ipv6.get("gateway6"))
        undo.append(lambda: links.detach(host_ifname))
        if ports:
            nat = _nat()
            undo.append(lambda: nat.remove_ports(owner))
            ports = nat.add_ports(owner, ip, config.bridge, ports, container_ip6=ipv6.get("ip6"))
        result.update({"mode": "bridge", "network": config.name, "interface": "eth0", "ip": ip,
                       "prefixLength": prefixlen, "gateway": gateway, "mac": mac,
                       "hostInterface": host_ifname, "ports": [p.to_dict() for p in ports]})
        result.update(ipv6)
    if hostname is not None:
        from hanok.netns import dns

        files_dir = _dns_dir(run_dir, owner)
        undo.append(lambda: _remove_tree(files_dir))
        result["hostname"] = hostname
        result["files"] = dns.write_files(files_dir, hostname, result["ip"], ip6=result.get("ip6"))
    return result


def _remove_tree(path: str) -> None:
    """Remove a DNS files directory (flat: three files, maybe a temp one); missing is fine."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def teardown(state_root: str, run_dir: str, owner: str) -> None:
    """Remove everything setup made for `owner`; what is gone already is skipped.

    Without a record (setup died half way) every trace is looked for: the
    owner's lease in every pool, its veth, its port rules and its namespace.
    Every step is tried; the first failure is raised after the rest ran.
    """
    ipam.check_owner(owner)
    record = _read_record(_endpoint_path(state_root, owner))
    errors: list[HanokError] = []

    def attempt(action: Callable[[], object]) -> None:
        try:
            action()
        except HanokError as e:
            errors.append(e)
        except OSError as e:
            errors.append(NetError(f"network teardown for {owner}: {e}"))

    if record is None or record.get("ports"):
        if record is not None or _nat_available():
            attempt(lambda: _nat().remove_ports(owner))
    # The namespace goes first: when nothing else holds it, the kernel deletes
    # the veth pair with it, which is much cheaper than deleting the pair from
    # here (bridge.detach_after_namespace). The lease is freed once the pair is
    # gone, so its address is never on two interfaces at once.
    attempt(lambda: namespace.remove(run_dir, owner))
    if record is None or record.get("mode") == "bridge":
        links = _links()
        attempt(lambda: links.detach_after_namespace(links.host_ifname(owner)))
        if record is not None:
            names = [record["network"]]
        else:
            names = list(_all_networks(state_root))
        for name in names:
            attempt(lambda: _release(state_root, name, owner))
    if record is None or "files" in record:
        attempt(lambda: _remove_tree(_dns_dir(run_dir, owner)))
    if errors:
        raise errors[0]
    try:
        os.unlink(_endpoint_path(state_root, owner))
    except FileNotFoundError:
        pass
    _remove_stale_temp_records(state_root, owner)


def _remove_stale_temp_records(state_root: str, owner: str) -> None:
    """A process killed inside _write_json leaves `<owner>.json.tmp-<pid>`: gone with its owner."""
    prefix = os.path.basename(_endpoint_path(state_root, owner)) + ".tmp-"
    try:
        names = os.listdir(_endpoints_dir(state_root))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(_endpoints_dir(state_root), name))
            except FileNotFoundError:
                pass


def _release(state_root: str, name: str, owner: str) -> None:
    """Free the owner's addresses in network `name` (IPv4, and IPv6 on a dual-stack network)."""
    config = _all_networks(state_root).get(name)
    if config is not None:
        for pool in _pools(state_root, config):
            pool.release(owner)


def _nat_available() -> bool:
    """True when nat.py is installed (teardown without a record must not fail for lack of it)."""
    import importlib.util

    return importlib.util.find_spec("hanok.netns.nat") is not None


def gc(state_root: str, run_dir: str, is_alive: Callable[[str], bool]) -> dict:
    """Remove the network of every owner that is gone; return what was removed.

    Owners are found in endpoint records, leases, namespaces under run_dir and
    nat rules. Host veths matching hanok's name pattern whose owner is not a
    live one are removed too (a namespace destroyed under them takes them
    along anyway). Returns {"owners", "leases", "veths"}: torn-down owners,
    leases freed by IPAM's own gc, and orphan veths deleted.
    """
    # Veths are listed before owners are collected: a setup running right now
    # makes its namespace before its veth, so any veth listed here has an
    # owner that the collection below sees.
    links = _links()
    host_veths = links.host_veths()
    owners = {owner for owner, _ in _endpoint_records(state_root)}
    pools = [pool for config in _all_networks(state_root).values() for pool in _pools(state_root, config)]
    for pool in pools:
        owners.update(pool.leases())
    owners.update(n for n in namespace.list_names(run_dir) if ipam.is_owner(n))
    if _nat_available():
        owners.update(_nat().owners())
    dead = sorted(o for o in owners if ipam.is_owner(o) and not is_alive(o))
    errors: list[HanokError] = []
    for owner in dead:
        try:
            teardown(state_root, run_dir, owner)
        except HanokError as e:
            errors.append(e)
    freed = [lease for pool in pools for lease in pool.gc(is_alive)]
    known_veths = {links.host_ifname(o) for o in owners}    # the dead ones went with teardown
    veths = [name for name in host_veths if name not in known_veths]
    for name in veths:
        links.detach(name)
    if errors:
        raise errors[0]
    return {"owners": dead, "leases": freed, "veths": veths}
