"""Sandbox network setup/teardown imports only what it uses (issue 5's benchmark, DESIGN.md "Hot paths").

Every network setup and teardown is a fresh hanok process, so each module it
imports is paid per sandbox: `import pyroute2` (~200 ms), or just pyroute2's
message modules with their logging/multiprocessing/platform baggage (~32 ms),
json, dataclasses, re, hashlib's OpenSSL. The sets below are exact: a new
import on these paths fails here, and either goes (lazily) where it is used
or is added here on purpose. Each check runs in a fresh interpreter.

_pyroute loads pyroute2's message modules with light stand-ins for
pyroute2.config, logging, traceback and pkgutil; the tests at the end prove
that the real pyroute2 (and the real logging) still work afterwards in the
same process, and that another pyroute2 version falls back to ordinary imports.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import hanok
import pytest
from hanok.netns import _pyroute, bridge, ipam, network

# the interpreter hanok ships with: the stdlib's own imports differ between Python versions
pytestmark = pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="module sets are those of CPython 3.11")

NETWORK = {"__future__", "_cffi_backend", "_json", "_socket", "errno", "hanok", "hanok.netns",
           "hanok.netns._jsontext", "hanok.netns.ipam", "hanok.netns.namespace", "hanok.netns.network", "hanok.runtime",
           "hanok.runtime._syscalls_cffi", "hanok.runtime.errors", "hanok.runtime.explain",
           "hanok.runtime.syscalls"}
# pyroute2's message modules, nothing else of pyroute2 (no config, iproute, asyncio, ndb)
PYROUTE2_LINKS = {"pyroute2", "pyroute2.common", "pyroute2.netlink", "pyroute2.netlink.exceptions",
                  "pyroute2.netlink.rtnl", "pyroute2.netlink.rtnl.ifinfmsg", "pyroute2.netlink.rtnl.iw_event",
                  "pyroute2.netlink.rtnl.ifinfmsg.plugins"} | {
    f"pyroute2.netlink.rtnl.ifinfmsg.plugins.{kind}"
    for kind in ("bond", "can", "geneve", "gtp", "ipoib", "ipvlan", "team", "tun", "tuntap", "vlan", "vrf",
                 "vti", "vti6", "vxlan", "xfrm")}
PYROUTE2_ALL = PYROUTE2_LINKS | {"pyroute2.netlink.rtnl.ifaddrmsg", "pyroute2.netlink.rtnl.rtmsg"}
# what those modules import of the stdlib once socket and typing have stand-ins: the floor of using pyroute2
PYROUTE2_STDLIB = {"_collections", "_functools", "_operator", "_struct", "_weakrefset", "collections", "functools",
                   "importlib", "importlib._bootstrap", "importlib._bootstrap_external", "itertools", "keyword",
                   "operator", "reprlib", "struct", "threading", "types", "warnings", "weakref"}
# bridge.py and _pyroute.py themselves: the message classes load only when a message is built
BRIDGE = {"hanok.netns.bridge", "hanok.netns._pyroute", "_sha256", "_struct", "struct", "types"}
# teardown of a bridge sandbox: the kernel deletes the veth pair with the namespace, so no netlink and no
# pyroute2; then the lease is released (flock, an ascii read)
TEARDOWN = BRIDGE | {"fcntl", "encodings.ascii"}
# setup of a bridge sandbox with DNS files: netlink messages (pyroute2 and what it needs of the stdlib);
# masquerade loads nat.py and libnftables
SETUP = TEARDOWN | PYROUTE2_ALL | PYROUTE2_STDLIB | {"hanok.netns.dns", "hanok.netns.nat", "hanok.netns._nft_cffi",
                                                     "atexit"}
NEVER = {"logging", "traceback", "pkgutil", "multiprocessing", "platform", "pyroute2.config", "dataclasses",
         "inspect", "hashlib", "_hashlib", "asyncio", "pyroute2.iproute",
         # stand-ins since socket.py (selectors, enum) and typing (re, contextlib) cost ~6 ms of every setup
         "socket", "typing", "selectors", "enum", "re", "json", "contextlib"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(hanok.__file__))  # the hanok this session imported
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def run_python(code: str, argv: list[str] | None = None) -> str:
    """Run `code` in a fresh interpreter; return its stdout (the test fails with its stderr)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *(argv or [])], capture_output=True,
                          text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def imported_by(before: str, measured: str) -> set[str]:
    """Modules `measured` imports in a fresh interpreter, after `before` ran."""
    code = (f"import sys\n{textwrap.dedent(before)}\nbefore = set(sys.modules)\n{textwrap.dedent(measured)}\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    return set(run_python(code).split())


def test_importing_network_loads_no_netlink_json_or_dataclasses() -> None:
    assert imported_by("", "import hanok.netns.network") == NETWORK


def test_teardown_path_loads_no_netlink() -> None:
    """What teardown adds after `network`: the veth's name and a wait for it to go, a lease release."""
    new = imported_by("from hanok.netns import network", """
        from hanok.netns import bridge, ipam
        bridge.detach_after_namespace(bridge.host_ifname("no-such-owner"))
        ipam.Pool("/nonexistent", "n", "10.210.0.0/24")._read("/proc/self/comm")
        import fcntl
    """)
    assert new == TEARDOWN
    assert not new & NEVER


def test_setup_path_message_classes_and_dns() -> None:
    """What a bridge setup adds after `network`, nat's masquerade aside (it needs root; see the next test)."""
    new = imported_by("from hanok.netns import network", """
        from hanok.netns import bridge, dns, ipam
        for make in (bridge._pyroute.ifinfmsg, bridge._pyroute.ifaddrmsg, bridge._pyroute.rtmsg):
            make().encode()
        ipam.Pool("/nonexistent", "n", "10.210.0.0/24")._read("/proc/self/comm")
        import fcntl
    """)
    assert new == TEARDOWN | PYROUTE2_ALL | PYROUTE2_STDLIB | {"hanok.netns.dns"}
    assert not new & NEVER


STEP = """
import sys
from hanok.netns import network
state_root, run_dir, step, owner = sys.argv[1:5]
before = set(sys.modules)
if step == "create":
    network.create_network(state_root, "importtest", "10.211.7.0/24", bridge="hkt-imports")
elif step == "setup":
    network.setup(state_root, run_dir, owner, network="importtest", hostname=owner)
else:
    network.teardown(state_root, run_dir, owner)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def in_private_namespaces(tmp_path, commands: str) -> tuple[str, str, str]:
    """Run `commands` (sh; `$STEP create|setup|teardown OWNER` runs network.py in a fresh interpreter)
    in new network and mount namespaces with their own /sys: the bridge, veths, addresses and nft table
    made there never touch the host's, and vanish with the namespaces. Returns (stdout, state_root, run_dir)."""
    state_root, run_dir = str(tmp_path / "state"), str(tmp_path / "run")
    os.makedirs(run_dir)
    (tmp_path / "step.py").write_text(STEP)
    step = f"{sys.executable} {tmp_path / 'step.py'} {state_root} {run_dir}"
    script = f"set -e\nmount -t sysfs sysfs /sys\nSTEP='{step}'\n"
    done = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                           script + textwrap.dedent(commands)],
                          capture_output=True, text=True, timeout=60, env=dict(_env(), HANOK_NFT_TABLE="hkimports"))
    assert done.returncode == 0, done.stderr
    return done.stdout, state_root, run_dir


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a real setup needs root (it runs in private namespaces)")


@needs_root
def test_real_setup_and_teardown_in_private_namespaces(tmp_path) -> None:
    # the first sandbox also makes the bridge and the nft table; "box", measured, finds them (the usual case)
    out, state_root, _ = in_private_namespaces(tmp_path, """
        $STEP create - >/dev/null
        $STEP setup first >/dev/null
        $STEP setup box
        $STEP teardown box
        $STEP teardown first >/dev/null
        ip -br link
    """)
    setup_line, teardown_line, *links = out.splitlines()
    assert set(setup_line.split()) == SETUP
    assert set(teardown_line.split()) == TEARDOWN
    assert [link.split()[0] for link in links] == ["lo", "hkt-imports"]   # the veths went with their namespaces
    assert os.listdir(os.path.join(state_root, "net", "endpoints")) == []


@needs_root
def test_teardown_deletes_the_veth_itself_while_a_process_holds_the_namespace(tmp_path) -> None:
    """The namespace outlives its bind mount while a process is in it, and so does the veth pair: after
    bridge's grace period teardown deletes the pair through netlink (and loads pyroute2 for that)."""
    out, _, run_dir = in_private_namespaces(tmp_path, f"""
        $STEP create - >/dev/null
        $STEP setup held >/dev/null
        nsenter --net={tmp_path / "run" / "netns" / "held"} sleep 60 &
        $STEP teardown held
        kill $!
        ip -br link
    """)
    teardown_line, *links = out.splitlines()
    assert {"hanok.netns.bridge", "pyroute2.netlink.rtnl.ifinfmsg"} <= set(teardown_line.split())
    assert [link.split()[0] for link in links] == ["lo", "hkt-imports"]
    assert bridge.host_ifname("held") not in out
    assert not os.path.exists(os.path.join(run_dir, "netns", "held"))


# --- the stand-ins leave no trace: real pyroute2 and logging afterwards ------------------------------------

def test_full_pyroute2_works_after_the_lean_import() -> None:
    out = run_python("""
        import io, sys, types
        from hanok.netns import _pyroute
        lean_cls = type(_pyroute.ifinfmsg())
        assert "pyroute2.config" not in sys.modules and "logging" not in sys.modules

        import logging
        assert type(logging) is types.ModuleType and hasattr(logging, "Logger")
        import pyroute2.config
        assert pyroute2.config.kernel and pyroute2.config.AF_BRIDGE == 7      # the real module
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            (lo,) = ipr.get_links(ipr.link_lookup(ifname="lo"))
        assert type(lo) is lean_cls and lo.get_attr("IFLA_IFNAME") == "lo"

        # an error path of a lean-loaded module logs through the real logging
        stream = io.StringIO()
        logging.getLogger("pyroute2.netlink").addHandler(logging.StreamHandler(stream))
        sys.modules["pyroute2.netlink"].log.warning("probe %d", 42)
        import traceback
        assert sys.modules["pyroute2.netlink"].traceback.format_exc is traceback.format_exc
        print(stream.getvalue().strip())
    """)
    assert out.strip() == "probe 42"


def test_stdlib_stand_ins_forward_to_the_real_modules() -> None:
    out = run_python("""
        import sys
        from hanok.netns import _pyroute
        _pyroute.ifinfmsg()
        netlink = sys.modules["pyroute2.netlink"]
        assert "logging" not in sys.modules                 # nothing logged yet, so never imported
        assert netlink.logging.WARNING == 30                # first real use imports it
        logging = sys.modules["logging"]
        assert netlink.logging.Logger is logging.Logger
        assert netlink.log.getEffectiveLevel() == logging.getLogger("pyroute2.netlink").getEffectiveLevel()
        print(type(logging).__name__)
    """)
    assert out.strip() == "module"


def test_socket_and_typing_stand_ins_serve_the_c_module_then_the_real_modules() -> None:
    out = run_python("""
        import _socket, sys
        from hanok.netns import _pyroute
        msg = _pyroute.ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", "lo")]
        msg.encode()
        assert "socket" not in sys.modules and "typing" not in sys.modules
        common = sys.modules["pyroute2.common"]
        assert common.socket.inet_pton is _socket.inet_pton                  # the C module's, as they were
        assert common.get_address_family("fd00::1") == _socket.AF_INET6
        assert common.dqn2int("255.255.255.0") == 24
        assert common.socket.AddressFamily.AF_INET6 == 10                    # loaded: the real socket.py
        import socket, typing
        assert sys.modules["socket"] is socket and socket.socket.__module__ == "socket"
        assert typing.Optional[int] == typing.Union[int, None]              # the real typing, untouched
        print(type(_pyroute._ANNOTATION).__name__, _pyroute._loading)
    """)
    assert out.split() == ["_AnnotationOnly", "False"]


def test_with_another_thread_running_socket_and_typing_get_no_stand_ins() -> None:
    """sys.modules is shared: a thread importing typing meanwhile must never get the placeholders."""
    out = run_python("""
        import sys, _thread
        from hanok.netns import _pyroute
        started, release = _thread.allocate_lock(), _thread.allocate_lock()
        started.acquire()
        release.acquire()

        def other_thread():                                   # alive while the classes load
            started.release()
            release.acquire()

        _thread.start_new_thread(other_thread, ())
        started.acquire()
        assert _thread._count() == 1
        msg = _pyroute.ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", "lo")]
        msg.encode()
        release.release()
        print("socket" in sys.modules, "typing" in sys.modules, "logging" in sys.modules)
    """)
    assert out.split() == ["True", "True", "False"]   # the real socket and typing; logging still forwarded


def test_other_pyroute2_versions_are_imported_the_ordinary_way() -> None:
    out = run_python("""
        import sys
        from hanok.netns import _pyroute
        _pyroute.LEAN_VERSIONS = "0.0."          # as if the installed pyroute2 were not a checked release
        msg = _pyroute.ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", "lo")]
        msg.encode()
        print(hasattr(sys.modules["pyroute2"], "IPRoute"), "multiprocessing" in sys.modules)
    """)
    assert out.split() == ["True", "True"]      # pyroute2's own __init__ and config ran


def test_installed_version_is_read_from_the_source(tmp_path) -> None:
    (tmp_path / "config").mkdir()
    assert _pyroute.installed_version(str(tmp_path)) == ""
    (tmp_path / "config" / "version.py").write_text('__version__ = "0.9.7"\n')
    assert _pyroute.installed_version(str(tmp_path)) == "0.9.7"
    assert _pyroute.installed_version(os.path.dirname(_pyroute._pyroute2_spec().origin or "")).startswith("0.9.")


# --- the hand-written name checks that replaced `re` accept exactly what the patterns did -----------------

SAMPLES = ["", "a", "A9", "box-1", "a.b_c", ".", "..", "-x", "_x", "x" * 15, "x" * 16, "x" * 64, "x" * 65,
           "a b", "a/b", "a\n", "a:b", "ä", "hkv0123456789", "hkv0123456789a", "hkv012345678", "hkvABCDEF0123",
           "hkv012345678g", "Hkv0123456789", "٣", "a\x00"]


@pytest.mark.parametrize("name", SAMPLES)
def test_name_checks_match_the_old_patterns(name: str) -> None:
    assert ipam.is_owner(name) == bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name))
    assert network.is_network_name(name) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name))
    assert network.is_bridge_name(name) == bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name))
    assert bridge.is_host_veth(name) == bool(re.fullmatch(r"hkv[0-9a-f]{10}", name))
