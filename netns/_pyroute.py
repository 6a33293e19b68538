"""Lean pyroute2: its netlink message classes, without its package __init__.

Why not `from pyroute2 import IPRoute`: measured on this host with pyroute2
0.9.7, `import pyroute2` costs ~140 ms wall (~170 ms under -X importtime)
because the package __init__ imports ndb, ipdb, conntrack, nftables, plan9
and asyncio. Skipping that __init__ (a light module object registered as
`pyroute2` whose __path__ is the real package directory) and importing
`pyroute2.iproute.linux` still costs ~100 ms: since 0.9 the synchronous
IPRoute is a wrapper around AsyncIPRoute, so asyncio (~33 ms), multiprocessing,
ssl and every tc/request-filter module come with it.

What we really use from pyroute2 is its knowledge of the rtnetlink wire
format: `ifinfmsg`, `ifaddrmsg` and `rtmsg` encode nested attributes (veth
peers, link kinds, netns fds) and decode dumps. Those three modules cost
~30 ms (most of it `logging`, which pyroute2.netlink imports, and
pyroute2.config). The transport they need is one blocking AF_NETLINK socket
and an ack loop, written here in ~60 lines, which also makes per-call cost
one send and one recv with no event loop.

A socket belongs to the network namespace of the thread that created it, so
`socket_in(netns_path)` enters the namespace in the calling thread only
(setns with CLONE_NEWNET is per thread), creates the socket and switches
back: no fork, and other threads of the process never leave their namespace.

If a later import in the same process wants the full package (`from pyroute2
import IPRoute`), the light module runs the real __init__ on first access to
a name it lacks, so nothing breaks; it only costs what it costs.
"""
from __future__ import annotations

import os
import socket
import struct
import sys

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

IFF_UP = 0x1
_HEADER = struct.Struct("=IHHII")          # struct nlmsghdr
_CLONE_NEWNET = 0x40000000


def _install_light_package() -> None:
    """Register `pyroute2` as a bare package so submodules import without its __init__."""
    if "pyroute2" in sys.modules:
        return
    import importlib.util
    import types

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyroute2 is not installed")
    package = types.ModuleType("pyroute2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec

    def load_everything(name: str) -> object:
        """Anything not yet imported: run the real __init__ once, then look again.

        `from pyroute2 import config` asks for the attribute first and imports
        the submodule only on AttributeError, so submodule names are refused.
        """
        where = os.path.join(package.__path__[0], name)
        if name.startswith("__") or os.path.exists(where + ".py") or os.path.isdir(where):
            raise AttributeError(name)
        delattr(package, "__getattr__")
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(package)
        return getattr(package, name)

    setattr(package, "__getattr__", load_everything)
    sys.modules["pyroute2"] = package


_install_light_package()

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

__all__ = ["Rtnl", "ifaddrmsg", "ifinfmsg", "rtmsg", "set_link_up", "socket_in"]


class Rtnl:
    """A blocking rtnetlink socket: send one pyroute2 message, wait for its ack or dump."""

    def __init__(self, sock: socket.socket | None = None):
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg, msg_type: int, flags: int) -> int:
        self._seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        return self._seq

    def request(self, msg, msg_type: int, flags: int = 0) -> None:
        """Send `msg` and wait for the kernel's ack; a negative ack raises OSError(errno)."""
        seq = self._send(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK | flags)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if kind == NLMSG_ERROR and msg_seq == seq:
                    code = struct.unpack_from("=i", data, offset + 16)[0]
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                offset += (length + 3) & ~3

    def get(self, msg, msg_type: int):
        """Send a single-object query (e.g. RTM_GETLINK by name); return the decoded reply."""
        seq = self._send(msg, msg_type, NLM_F_REQUEST)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if msg_seq == seq:
                    if kind == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + 16)[0]
                        raise OSError(-code, os.strerror(-code))
                    reply = type(msg)(data[offset:offset + length])
                    reply.decode()
                    return reply
                offset += (length + 3) & ~3

    def dump(self, msg, msg_type: int) -> list:
        """Send a dump request built from `msg`; return the decoded replies (same class)."""
        seq = self._send(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
        replies: list = []
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset < len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return replies
                    if kind == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + 16)[0]
                        raise OSError(-code, os.strerror(-code))
                    reply = type(msg)(data[offset:offset + length])
                    reply.decode()
                    replies.append(reply)
                offset += (length + 3) & ~3


def set_link_up(rtnl: Rtnl, *, ifname: str | None = None, index: int = 0) -> None:
    """ip link set DEV up, DEV given by name or index, in the namespace `rtnl` belongs to."""
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = msg["change"] = IFF_UP
    if ifname is not None:
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
    rtnl.request(msg, RTM_NEWLINK)


def socket_in(netns_path: str) -> Rtnl:
    """An rtnetlink socket that lives in the network namespace bound at `netns_path`."""
    from hanok.runtime import syscalls

    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(target, _CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        finally:
            syscalls.setns(home, _CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)
    return Rtnl(sock)
