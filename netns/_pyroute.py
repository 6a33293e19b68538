"""Lean pyroute2: its netlink message classes, without its package __init__ or its heavy imports.

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
peers, link kinds, netns fds) and decode dumps. Each class is imported on
first use (`ifinfmsg()` and friends make messages): deleting a veth needs only
ifinfmsg. The transport they need is one blocking AF_NETLINK socket and an
ack loop, written here in ~60 lines, which also makes per-call cost one send
and one recv with no event loop.

Those message modules still import more than they use: `pyroute2.config`
(multiprocessing, platform), of which ifinfmsg reads only AF_BRIDGE,
data_plugins_pkgs and data_plugins_path, once, at import; `logging`, of which
they call getLogger() at import and log only on error paths; `traceback`
(with textwrap) and `pkgutil`, used only on error paths and for third-party
link plugins. While the message modules load, those names are given light
stand-ins in sys.modules (`_add_stand_ins`), taken out again as soon as the
modules are loaded, so any later import gets the real modules; the stdlib
stand-ins the message modules keep forward every attribute to the real module
(imported on first use), so an error path that logs or formats a traceback
works as before. (ifinfmsg's own `config` global stays the stand-in; it is
read only at import.) `socket` and `typing` get stand-ins too: of socket.py
(which imports selectors and enum) the message modules use the constants and
functions of its C module `_socket`, which the stand-in hands out; of typing
(which imports re and contextlib) they use names only in annotations. While
the modules load, a name the C module lacks (socket.AddressFamily, in an
annotation) and every typing name is an inert placeholder (_ANNOTATION); once
they are loaded, the stand-ins they keep forward such names to the real
modules. This relies on what pyroute2 0.9 reads, so it is done
only when the installed pyroute2 is 0.9.x (read from its config/version.py);
any other version, or a pyroute2 already imported, is imported the ordinary
way. Measured with `python -c`, importing the three classes went from ~31 ms
to ~22 ms above interpreter start with the first stand-ins, and the socket and
typing stand-ins take another ~6 ms off; what remains is pyroute2's own
modules and the stdlib they really use (collections, threading, weakref).

A socket belongs to the network namespace of the thread that created it, so
`socket_in(netns_path)` enters the namespace in the calling thread only
(setns with CLONE_NEWNET is per thread), creates the socket and switches
back: no fork, and other threads of the process never leave their namespace.

If a later import in the same process wants the full package (`from pyroute2
import IPRoute`), the light module runs the real __init__ on first access to
a name it lacks, so nothing breaks; it only costs what it costs.
"""
from __future__ import annotations

import _socket as socket  # the C module: socket.py costs ~4 ms (enum), and _socket.socket is its base class
import _thread
import os
import struct
import sys
import types

if False:  # for type checkers only: the message classes are imported on first use
    from importlib.machinery import ModuleSpec

    from pyroute2.netlink import nlmsg

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
LEAN_VERSIONS = "0.9."                     # the pyroute2 releases `_add_stand_ins` was checked against
_LAZY_STDLIB = ("logging", "traceback", "pkgutil")
_loading = False   # True while the message modules import (under _import_lock): stand-ins hand out placeholders


def _pyroute2_spec() -> ModuleSpec:
    """Where pyroute2 is, asked of the import system's finders as `import` would (importlib.util,
    which does the same, costs an import of its own)."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec("pyroute2", None) if find_spec is not None else None
        if spec is not None and spec.submodule_search_locations:
            return spec
    raise ImportError("pyroute2 is not installed")


def installed_version(package_dir: str) -> str:
    """pyroute2's version from config/version.py (`__version__ = "0.9.7"`), read as text: importing it
    would run config/__init__; "" when it cannot be read."""
    try:
        with open(os.path.join(package_dir, "config", "version.py"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip() == "__version__":
            return value.strip().strip("'\"")
    return ""


def _install_light_package(spec: ModuleSpec) -> None:
    """Register `pyroute2` as a bare package so submodules import without its __init__."""
    assert spec.loader is not None and spec.submodule_search_locations is not None
    loader = spec.loader
    package_dir = list(spec.submodule_search_locations)[0]
    package = types.ModuleType("pyroute2")
    package.__path__ = [package_dir]
    package.__file__ = spec.origin
    package.__spec__ = spec

    def load_everything(name: str) -> object:
        """Anything not yet imported: run the real __init__ once, then look again.

        `from pyroute2 import config` asks for the attribute first and imports
        the submodule only on AttributeError, so submodule names are refused.
        """
        where = os.path.join(package_dir, name)
        if name.startswith("__") or os.path.exists(where + ".py") or os.path.isdir(where):
            raise AttributeError(name)
        delattr(package, "__getattr__")
        loader.exec_module(package)
        return getattr(package, name)

    setattr(package, "__getattr__", load_everything)
    sys.modules["pyroute2"] = package


def _real(name: str) -> types.ModuleType:
    """The real stdlib module `name`, importing it now (and evicting a stand-in still registered)."""
    module = sys.modules.get(name)
    if isinstance(module, _LazyModule):
        del sys.modules[name]
    __import__(name)
    return sys.modules[name]


class _LazyModule(types.ModuleType):
    """Stands in for a stdlib module the message modules import but use only on error paths:
    every attribute is looked up on the real module, imported on first use."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real(self.__name__), attr)


class _AnnotationOnly:
    """The placeholder a stand-in gives while the message modules load, for names they use only in
    annotations (`Optional[int]`, `TypeVar("F", bound=...)`, `socket.AddressFamily`): it can be
    subscripted, called and or-ed, and is never used for anything else."""

    def __getitem__(self, _item: object) -> _AnnotationOnly:
        return self

    def __call__(self, *_args: object, **_kwargs: object) -> _AnnotationOnly:
        return self

    def __or__(self, _other: object) -> _AnnotationOnly:
        return self

    __ror__ = __or__

    def __repr__(self) -> str:
        return "<annotation placeholder from hanok.netns._pyroute>"


_ANNOTATION = _AnnotationOnly()


class _LeanSocket(_LazyModule):
    """`socket` for the message modules: the C module's constants and functions (ints, not socket.py's
    enums), anything else from the real socket.py, imported on first use after loading."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        try:
            return getattr(socket, attr)    # `socket` is the C module _socket here
        except AttributeError:
            pass
        return _ANNOTATION if _loading else getattr(_real("socket"), attr)


class _LeanTyping(_LazyModule):
    """`typing` for the message modules: placeholders while they load (annotations), the real module after."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _ANNOTATION if _loading else getattr(_real("typing"), attr)


class _LazyLogger:
    """What the `logging` stand-in's getLogger returns: the real logger, fetched on first use."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str) -> object:
        return getattr(_real("logging").getLogger(self.name), attr)


class _LazyLogging(_LazyModule):
    def getLogger(self, name: str | None = None) -> object:   # noqa: N802 (logging's name)
        return _LazyLogger(name) if name else _real("logging").getLogger()


def _config_stand_in(package_dir: str) -> types.ModuleType:
    """`pyroute2.config` as the message modules read it (pyroute2 0.9: ifinfmsg reads AF_BRIDGE,
    data_plugins_pkgs and data_plugins_path at import), with the real defaults and none of the
    multiprocessing/platform imports."""
    config = types.ModuleType("pyroute2.config")
    config.__path__ = [os.path.join(package_dir, "config")]
    config.AF_BRIDGE = getattr(socket, "AF_BRIDGE", 7)  # type: ignore[attr-defined]
    config.data_plugins_pkgs = []  # type: ignore[attr-defined]
    config.data_plugins_path = []  # type: ignore[attr-defined]
    return config


def _add_stand_ins(package_dir: str) -> dict[str, types.ModuleType]:
    """Register light modules for the names not imported yet (see above); return them."""
    added: dict[str, types.ModuleType] = {}
    if "pyroute2.config" not in sys.modules:
        added["pyroute2.config"] = _config_stand_in(package_dir)
    for name in _LAZY_STDLIB:
        if name not in sys.modules:
            added[name] = _LazyLogging(name) if name == "logging" else _LazyModule(name)
    # Their placeholders would break a module another thread imported `typing` or `socket` for meanwhile
    # (sys.modules is shared): only while this is the process's one thread (_thread._count: the others).
    if _thread._count() == 0:
        for name, lean in (("socket", _LeanSocket), ("typing", _LeanTyping)):
            if name not in sys.modules:
                added[name] = lean(name)
    sys.modules.update(added)
    return added


def _remove_stand_ins(added: dict[str, types.ModuleType]) -> None:
    """Take the light modules out of sys.modules again, so later imports get the real ones."""
    for name, module in added.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    package = sys.modules.get("pyroute2")
    if "pyroute2.config" in added and getattr(package, "config", None) is added["pyroute2.config"]:
        delattr(package, "config")   # so `pyroute2.config` resolves to the real one later


# name -> module of the message classes used here; each is imported on first use (teardown needs only ifinfmsg)
_MESSAGE_MODULES = {"ifinfmsg": "pyroute2.netlink.rtnl.ifinfmsg",
                    "ifaddrmsg": "pyroute2.netlink.rtnl.ifaddrmsg",
                    "rtmsg": "pyroute2.netlink.rtnl.rtmsg"}
_lean_dir: str | None = None   # pyroute2's directory once the lean way is chosen
_chosen = False
_classes: dict[str, type] = {}    # name -> message class, once imported
# Threads of one process (a pool of concurrent setups) import the classes in turn: the stand-ins in sys.modules
# and the lean/ordinary choice are process-wide, and another thread's half-imported module has no class yet.
_import_lock = _thread.allocate_lock()


def _message_class(name: str) -> type:
    """One message class, imported on first use (once per process, whichever thread asks first)."""
    found = _classes.get(name)
    if found is None:
        with _import_lock:
            found = _classes.get(name)
            if found is None:
                found = _classes[name] = _import_message_class(name)
    return found


def _import_message_class(name: str) -> type:
    """Import one message class: the lean way for pyroute2 0.9.x, the ordinary way otherwise.

    The way is chosen once per process, at the first import: lean only if
    nothing of pyroute2 is imported yet and its version is one checked here.
    """
    global _lean_dir, _chosen
    if not _chosen:
        _chosen = True
        if "pyroute2" not in sys.modules:
            spec = _pyroute2_spec()
            package_dir = list(spec.submodule_search_locations or ())[0]
            if installed_version(package_dir).startswith(LEAN_VERSIONS):
                _install_light_package(spec)
                _lean_dir = package_dir
    module_name = _MESSAGE_MODULES[name]
    module = sys.modules.get(module_name)
    if module is not None:
        return getattr(module, name)
    global _loading
    added = _add_stand_ins(_lean_dir) if _lean_dir is not None else {}
    _loading = bool(added)
    try:
        __import__(module_name)
    finally:
        _loading = False
        _remove_stand_ins(added)
    return getattr(sys.modules[module_name], name)


def ifinfmsg() -> nlmsg:
    """A new, empty pyroute2 ifinfmsg (links), its class imported on first use."""
    return _message_class("ifinfmsg")()


def ifaddrmsg() -> nlmsg:
    """A new, empty pyroute2 ifaddrmsg (addresses), its class imported on first use."""
    return _message_class("ifaddrmsg")()


def rtmsg() -> nlmsg:
    """A new, empty pyroute2 rtmsg (routes), its class imported on first use."""
    return _message_class("rtmsg")()


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
