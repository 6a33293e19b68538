"""D-Bus marshalling against hand-computed bytes, and systemd cgroupsPath parsing (no root, no systemd)."""
from __future__ import annotations

import os

import pytest
from hanok.cgroups import _dbus, systemd
from hanok.cgroups._dbus import Message, Variant, decode, decode_message, encode, encode_message
from hanok.runtime.errors import CgroupError, NotSupported

# ------------------------------------------------------------------ marshalling

# (signature, values, bytes): each laid out by hand from the D-Bus specification
CASES = [
    ("y", (7,), b"\x07"),
    ("b", (True,), b"\x01\x00\x00\x00"),
    ("u", (0x01020304,), b"\x04\x03\x02\x01"),
    ("i", (-2,), b"\xfe\xff\xff\xff"),
    ("q", (0x0102,), b"\x02\x01"),
    # t is 8-aligned: 4 bytes of padding after the u
    ("ut", (1, 2), b"\x01\x00\x00\x00" + b"\0" * 4 + b"\x02\x00\x00\x00\x00\x00\x00\x00"),
    ("s", ("abc",), b"\x03\x00\x00\x00abc\x00"),
    ("o", ("/a",), b"\x02\x00\x00\x00/a\x00"),
    ("g", ("a(sv)",), b"\x05a(sv)\x00"),
    ("ss", ("a", "bc"), b"\x01\x00\x00\x00a\x00" + b"\0\0" + b"\x02\x00\x00\x00bc\x00"),
    # array length counts the elements, including the padding between them (2 bytes), not after the length
    ("as", (["a", "bc"],), b"\x0f\x00\x00\x00" + b"\x01\x00\x00\x00a\x00" + b"\0\0" + b"\x02\x00\x00\x00bc\x00"),
    ("au", ([1, 2],), b"\x08\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
    # padding to the element's alignment comes after the length and is not counted, even for no elements
    ("at", ([5],), b"\x08\x00\x00\x00" + b"\0" * 4 + b"\x05" + b"\0" * 7),
    ("at", ([],), b"\x00\x00\x00\x00" + b"\0" * 4),
    ("ay", (b"\x27\x01",), b"\x02\x00\x00\x00\x27\x01"),
    ("v", (Variant("u", 9),), b"\x01u\x00" + b"\0" + b"\x09\x00\x00\x00"),
    # a(sv) with one property: struct 8-aligned at 8; "MemoryMax\0" ends at 22; variant sig "t" to 25;
    # t padded to 32, ends at 40: length 40 - 8 = 32
    ("a(sv)", ([("MemoryMax", Variant("t", 1048576))],),
     b"\x20\x00\x00\x00" + b"\0" * 4 + b"\x09\x00\x00\x00MemoryMax\x00" + b"\x01t\x00" + b"\0" * 7
     + b"\x00\x00\x10\x00\x00\x00\x00\x00"),
    # a{sv}: dict entries are 8-aligned like structs
    ("a{su}", ({"k": 3},), b"\x0c\x00\x00\x00" + b"\0" * 4 + b"\x01\x00\x00\x00k\x00" + b"\0\0"
     + b"\x03\x00\x00\x00"),
    ("a(sa(sv))", ([],), b"\x00\x00\x00\x00" + b"\0" * 4),
]


@pytest.mark.parametrize("signature,values,data", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_encode_exact_bytes(signature: str, values: tuple, data: bytes) -> None:
    assert encode(signature, values) == data


@pytest.mark.parametrize("signature,values,data", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_decode_round_trip(signature: str, values: tuple, data: bytes) -> None:
    assert decode(signature, data) == values


def test_decode_big_endian() -> None:
    assert decode("us", b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02hi\x00", ">") == (1, "hi")


def test_alignment_counts_from_the_given_offset() -> None:
    # a u placed at offset 2 is padded to 4
    assert encode("u", (1,), start=2) == b"\0\0\x01\x00\x00\x00"
    assert decode("u", b"\0\0\x01\x00\x00\x00", start=2) == (1,)


def test_split_signature() -> None:
    assert _dbus.split_signature("ssa(sv)a(sa(sv))") == ["s", "s", "a(sv)", "a(sa(sv))"]
    assert _dbus.split_signature("a{sv}uaay") == ["a{sv}", "u", "aay"]
    with pytest.raises(ValueError, match=r"unknown type code 'z'"):
        _dbus.split_signature("sz")
    with pytest.raises(ValueError, match=r"unclosed '\('"):
        _dbus.split_signature("(su")


def test_encode_rejects_value_count_mismatch() -> None:
    with pytest.raises(ValueError, match="has 2 types, got 1 values"):
        encode("su", ("x",))


# a method call with path "/a", member "M", signature "s", body ("x",), serial 1, laid out by hand:
# fixed header (12) + fields length (4); field path at 16: 01, "o", "/a" -> 27; pad to 32;
# member: 03, "s", "M" -> 42; pad to 48; signature: 08, "g", "s" -> 55; fields length 55 - 16 = 39;
# pad to 56; body "x" (6 bytes) -> 62
HAND_MESSAGE = (b"l\x01\x00\x01" + b"\x06\x00\x00\x00" + b"\x01\x00\x00\x00" + b"\x27\x00\x00\x00"
                + b"\x01\x01o\x00" + b"\x02\x00\x00\x00/a\x00" + b"\0" * 5
                + b"\x03\x01s\x00" + b"\x01\x00\x00\x00M\x00" + b"\0" * 6
                + b"\x08\x01g\x00" + b"\x01s\x00" + b"\0"
                + b"\x01\x00\x00\x00x\x00")


def test_encode_message_exact_bytes() -> None:
    msg = Message(_dbus.METHOD_CALL, serial=1, path="/a", member="M", signature="s", body=("x",))
    assert encode_message(msg) == HAND_MESSAGE
    assert _dbus.message_length(HAND_MESSAGE) == len(HAND_MESSAGE) == 62
    assert _dbus.message_length(HAND_MESSAGE[:15]) is None


def test_decode_message_round_trip() -> None:
    assert decode_message(HAND_MESSAGE) == Message(_dbus.METHOD_CALL, serial=1, path="/a", member="M",
                                                   signature="s", body=("x",))
    signal = Message(_dbus.SIGNAL, serial=7, path="/org/freedesktop/systemd1",
                     interface="org.freedesktop.systemd1.Manager", member="JobRemoved", sender=":1.1",
                     signature="uoss", body=(42, "/org/freedesktop/systemd1/job/42", "hanok-a.scope", "done"))
    assert decode_message(encode_message(signal)) == signal
    error = Message(_dbus.ERROR, serial=3, reply_serial=2, error_name="org.freedesktop.systemd1.NoSuchUnit",
                    signature="s", body=("Unit x.scope not loaded.",))
    assert decode_message(encode_message(error)) == error


def test_decode_message_rejects_bad_byte_order() -> None:
    with pytest.raises(ValueError, match="bad byte-order mark"):
        decode_message(b"X" + HAND_MESSAGE[1:])


# ------------------------------------------------------------------ a connection over a socketpair


def test_call_auth_error_and_signal_buffering() -> None:
    """SASL EXTERNAL, a call answered by an error, then a signal sent before a reply is kept for wait_signal."""
    import socket
    import threading

    path = f"/tmp/hanok-test-dbus-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n" not in data:
                data += conn.recv(4096)
            line, data = data.split(b"\r\n", 1)
            seen.append(line + b"\r\n")
            conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
            while b"BEGIN\r\n" not in data:
                data += conn.recv(4096)
            data = data.split(b"BEGIN\r\n", 1)[1]
            for reply in ("error", "signal+return"):
                while _dbus.message_length(data) is None or len(data) < (_dbus.message_length(data) or 0):
                    data += conn.recv(4096)
                call = decode_message(data[:_dbus.message_length(data)])
                data = data[_dbus.message_length(data):]
                if reply == "error":
                    conn.sendall(encode_message(Message(_dbus.ERROR, serial=10, reply_serial=call.serial,
                                                        error_name="org.freedesktop.systemd1.NoSuchUnit",
                                                        signature="s", body=("Unit a.scope not loaded.",))))
                else:
                    conn.sendall(encode_message(Message(
                        _dbus.SIGNAL, serial=11, path="/org/freedesktop/systemd1",
                        interface="org.freedesktop.systemd1.Manager", member="JobRemoved", signature="uoss",
                        body=(5, "/org/freedesktop/systemd1/job/5", "a.scope", "done"))))
                    conn.sendall(encode_message(Message(_dbus.METHOD_RETURN, serial=12, reply_serial=call.serial,
                                                        signature="o", body=("/org/freedesktop/systemd1/job/5",))))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with _dbus.Connection(path, timeout=10) as bus:
            with pytest.raises(_dbus.DBusError) as info:
                bus.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                         "StopUnit", "ss", "a.scope", "replace")
            assert str(info.value) == ("D-Bus StopUnit: org.freedesktop.systemd1.NoSuchUnit: "
                                       "Unit a.scope not loaded.")
            assert info.value.name == "org.freedesktop.systemd1.NoSuchUnit"
            assert bus.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
                            "a.scope", "replace", [("PIDs", Variant("au", [1]))], []) \
                == ("/org/freedesktop/systemd1/job/5",)
            signal = bus.wait_signal(lambda m: m.member == "JobRemoved", "JobRemoved")
            assert signal.body == (5, "/org/freedesktop/systemd1/job/5", "a.scope", "done")
        assert seen[0] == b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n"
    finally:
        thread.join(timeout=10)
        listener.close()
        os.unlink(path)


def test_connect_error_names_the_socket() -> None:
    with pytest.raises(CgroupError, match=r"D-Bus: cannot connect to /nonexistent/bus: No such file"):
        _dbus.Connection("/nonexistent/bus", timeout=1)


# ------------------------------------------------------------------ cgroupsPath `slice:prefix:name`


@pytest.mark.parametrize("path,expected", [
    ("", ("system.slice", "hanok-c1.scope")),
    ("system.slice:hanok:c1", ("system.slice", "hanok-c1.scope")),
    ("machine.slice:libpod:0123abcd", ("machine.slice", "libpod-0123abcd.scope")),
    (":libpod:c1", ("system.slice", "libpod-c1.scope")),
    ("user.slice::c1", ("user.slice", "c1.scope")),
    ("a-b.slice:x:y", ("a-b.slice", "x-y.scope")),
])
def test_parse_path(path: str, expected: tuple[str, str]) -> None:
    assert systemd.parse_path(path, "c1") == expected


@pytest.mark.parametrize("path,message", [
    ("system.slice:c1", r"expected \"slice:prefix:name\" for the systemd cgroup driver, got 'system.slice:c1'"),
    ("/hanok/c1", r"expected \"slice:prefix:name\" for the systemd cgroup driver, got '/hanok/c1'"),
    ("a:b:c:d", r"got 'a:b:c:d'"),
    ("system:hanok:c1", r"invalid slice name 'system' \(expected NAME.slice\)"),
    (".slice:hanok:c1", r"invalid slice name '.slice' \(expected NAME.slice\)"),
    ("a--b.slice:hanok:c1", r"invalid slice name 'a--b.slice' \(empty part between dashes\)"),
    ("-a.slice:hanok:c1", r"invalid slice name '-a.slice' \(empty part between dashes\)"),
    ("sys/tem.slice:hanok:c1", r"invalid slice name 'sys/tem.slice' \(bad characters\)"),
    ("system.slice:hanok:", r"'system.slice:hanok:': the name \(after the second ':'\) is empty"),
    ("system.slice:hanok:x.slice", r"'x.slice' names a slice; the systemd driver makes scopes only"),
    ("system.slice:hanok:a b", r"unit name 'hanok-a b.scope' is invalid \(characters ' ' are not allowed\)"),
    ("system.slice:hanok:" + "x" * 250, r"is invalid \(longer than 255\)"),
])
def test_parse_path_rejects(path: str, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        systemd.parse_path(path, "c1")


def test_expand_slice() -> None:
    assert systemd.expand_slice("system.slice") == "/system.slice"
    assert systemd.expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert systemd.expand_slice("-.slice") == ""


def test_manager_paths_without_touching_the_host() -> None:
    manager = systemd.SystemdManager("machine.slice:libpod:abc", "abc", mountpoint="/sys/fs/cgroup")
    assert (manager.unit, manager.slice) == ("libpod-abc.scope", "machine.slice")
    assert manager.path == "/machine.slice/libpod-abc.scope"
    assert manager.dir == "/sys/fs/cgroup/machine.slice/libpod-abc.scope"


def test_a_failed_create_leaves_a_same_named_scope_alone(tmp_path) -> None:
    """Until create()'s own unit is started, the manager sees no scope: no write, kill or StopUnit on another's."""
    (tmp_path / "system.slice" / "hanok-c1.scope").mkdir(parents=True)
    later = systemd.SystemdManager("system.slice:hanok:c1", "c1", mountpoint=str(tmp_path))
    assert later.exists()  # rebuilt by delete/update/exec: the container's scope
    creating = systemd.SystemdManager("system.slice:hanok:c1", "c1", mountpoint=str(tmp_path))
    creating.create()
    assert not creating.exists()
    creating.destroy()  # returns before any D-Bus call (there is no bus here to call)
    assert (tmp_path / "system.slice" / "hanok-c1.scope").is_dir()


# ------------------------------------------------------------------ unit properties


def test_properties_from_files() -> None:
    files = {"memory.max": "1048576", "memory.low": "max", "memory.swap.max": "0", "cpu.weight": "39",
             "cpu.max": "33333 100000", "cpuset.cpus": "0-2,5", "cpuset.mems": "0", "pids.max": "max",
             "io.weight": "default 100\n8:0 200", "io.max": "8:0 rbps=1"}
    assert systemd.properties(files) == [
        ("MemoryMax", Variant("t", 1048576)),
        ("MemoryLow", Variant("t", 2**64 - 1)),
        ("MemorySwapMax", Variant("t", 0)),
        ("CPUWeight", Variant("t", 39)),
        ("CPUQuotaPerSecUSec", Variant("t", 340000)),  # 333330 us per second, rounded up to 10 ms
        ("CPUQuotaPeriodUSec", Variant("t", 100000)),
        ("AllowedCPUs", Variant("ay", b"\x27")),
        ("AllowedMemoryNodes", Variant("ay", b"\x01")),
        ("TasksMax", Variant("t", 2**64 - 1)),
        ("IOWeight", Variant("t", 100)),
    ]
    assert systemd.properties({"cpu.max": "max 100000"})[0] == ("CPUQuotaPerSecUSec", Variant("t", 2**64 - 1))


def test_cpu_mask() -> None:
    assert systemd.cpu_mask("0-2,5") == b"\x27"
    assert systemd.cpu_mask("8") == b"\x00\x01"
    assert systemd.cpu_mask("0,9-10") == b"\x01\x06"


def test_busctl_args() -> None:
    props = [("Delegate", Variant("b", True)), ("PIDs", Variant("au", [42])), ("MemoryMax", Variant("t", 5))]
    assert systemd.busctl_args(props) == "3 Delegate b true PIDs au 1 42 MemoryMax t 5"


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd is PID 1 on this host")
def test_manager_refuses_without_systemd() -> None:
    from hanok import cgroups

    with pytest.raises(NotSupported, match=r"--systemd-cgroup: systemd is not running as PID 1 here "
                                           r"\(/run/systemd/system does not exist\)"):
        cgroups.manager("system.slice:hanok:c1", "c1", systemd=True)
