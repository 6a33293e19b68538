"""A minimal D-Bus client: enough to ask systemd for a transient scope and wait for its job.

None of hanok's dependencies speaks D-Bus and the systemd cgroup driver needs
four method calls and one signal, so this is the wire protocol written out
(https://dbus.freedesktop.org/doc/dbus-specification.html), standard library only:

- SASL EXTERNAL authentication: the server checks our uid through SO_PEERCRED;
- the marshalling of the types systemd's Manager methods use (`s`, `o`, `g`,
  `b`, `y`, `u`, `t`, `i`, `x`, `d`, `n`, `q`, arrays, structs, dict entries,
  variants), both byte orders on input, little-endian on output;
- method calls that return the reply's body or raise DBusError, and a wait
  for a signal that buffers whatever arrives meanwhile.

The connection goes to systemd's private socket when we are root (a direct
peer-to-peer bus: no Hello, and systemd sends its signals to every private
connection), else to the system bus, as go-systemd does.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from collections import namedtuple

from hanok.runtime.errors import CgroupError

if False:  # typing only: dataclasses and typing would cost ~10 ms on the create path
    from collections.abc import Callable
    from typing import Any

SYSTEMD_PRIVATE = "/run/systemd/private"
SYSTEM_BUS = "/run/dbus/system_bus_socket"
TIMEOUT = 30.0

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1

# header field codes and the type of each (D-Bus spec, "Message Format")
_FIELDS = {"path": (1, "o"), "interface": (2, "s"), "member": (3, "s"), "error_name": (4, "s"),
           "reply_serial": (5, "u"), "destination": (6, "s"), "sender": (7, "s"), "signature": (8, "g")}
_FIELD_NAMES = {code: name for name, (code, _sig) in _FIELDS.items()}

_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4), "u": ("I", 4),
          "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {**{code: size for code, (_fmt, size) in _FIXED.items()},
          "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}


class DBusError(CgroupError):
    """A D-Bus call failed: `name` is the error's name (e.g. org.freedesktop.systemd1.NoSuchUnit)."""

    def __init__(self, method: str, name: str, text: str):
        super().__init__(f"D-Bus {method}: {name}: {text}" if text else f"D-Bus {method}: {name}")
        self.method = method
        self.name = name
        self.text = text


Variant = namedtuple("Variant", "signature value")
Variant.__doc__ = "A `v` value: the signature of one complete type and a value of it."


class Message:
    """One D-Bus message; `body` holds one Python value per complete type of `signature`."""

    __slots__ = ("type", "serial", "flags", "path", "interface", "member", "error_name", "reply_serial",
                 "destination", "sender", "signature", "body")

    def __init__(self, type: int, serial: int = 0, flags: int = 0, path: str = "", interface: str = "",
                 member: str = "", error_name: str = "", reply_serial: int = 0, destination: str = "",
                 sender: str = "", signature: str = "", body: tuple = ()):
        self.type = type
        self.serial = serial
        self.flags = flags
        self.path = path
        self.interface = interface
        self.member = member
        self.error_name = error_name
        self.reply_serial = reply_serial
        self.destination = destination
        self.sender = sender
        self.signature = signature
        self.body = body

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "Message(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


# ------------------------------------------------------------------ signatures


def split_signature(signature: str) -> list[str]:
    """"sa(sv)u" -> ["s", "a(sv)", "u"]: the complete types one after another."""
    types = []
    i = 0
    while i < len(signature):
        end = _complete_type_end(signature, i)
        types.append(signature[i:end])
        i = end
    return types


def _complete_type_end(signature: str, i: int) -> int:
    code = signature[i:i + 1]
    if code == "a":
        return _complete_type_end(signature, i + 1)
    if code in ("(", "{"):
        close = ")" if code == "(" else "}"
        j = i + 1
        while signature[j:j + 1] != close:
            if j >= len(signature):
                raise ValueError(f"D-Bus signature {signature!r}: unclosed {code!r}")
            j = _complete_type_end(signature, j)
        return j + 1
    if code in _ALIGN:
        return i + 1
    raise ValueError(f"D-Bus signature {signature!r}: unknown type code {code!r} at {i}")


# ------------------------------------------------------------------ encoding


class _Writer:
    """Appends marshalled values; alignment counts from the start of the message."""

    def __init__(self, start: int = 0):
        self.buf = bytearray()
        self.start = start

    def align(self, n: int) -> None:
        self.buf += b"\0" * (-(self.start + len(self.buf)) % n)

    def write(self, sig: str, value: Any) -> None:
        code = sig[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            self.buf += struct.pack("<" + fmt, int(value) if code == "b" else value)
        elif code in ("s", "o"):
            data = str(value).encode()
            self.align(4)
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif code == "g":
            data = str(value).encode()
            self.buf += struct.pack("<B", len(data)) + data + b"\0"
        elif code == "v":
            if not isinstance(value, Variant):
                raise TypeError(f"D-Bus variant: expected a Variant, got {value!r}")
            self.write("g", value.signature)
            self.write(value.signature, value.value)
        elif code == "(":
            self.align(8)
            for member, item in zip(split_signature(sig[1:-1]), value, strict=True):
                self.write(member, item)
        elif code == "{":
            key_sig, value_sig = split_signature(sig[1:-1])
            self.align(8)
            self.write(key_sig, value[0])
            self.write(value_sig, value[1])
        elif code == "a":
            self._array(sig[1:], value)
        else:
            raise ValueError(f"D-Bus signature {sig!r}: cannot encode")

    def _array(self, element: str, value: Any) -> None:
        self.align(4)
        at = len(self.buf)
        self.buf += b"\0\0\0\0"
        self.align(_ALIGN[element[0]])  # the padding before the first element is not counted
        first = len(self.buf)
        if element == "y":
            self.buf += bytes(value)
        else:
            items = value.items() if element[0] == "{" else value
            for item in items:
                self.write(element, item)
        struct.pack_into("<I", self.buf, at, len(self.buf) - first)


def encode(signature: str, values: tuple | list, start: int = 0) -> bytes:
    """Marshal `values` (one per complete type of `signature`) little-endian, as if placed at offset `start`."""
    writer = _Writer(start)
    types = split_signature(signature)
    if len(types) != len(values):
        raise ValueError(f"D-Bus signature {signature!r} has {len(types)} types, got {len(values)} values")
    for sig, value in zip(types, values):
        writer.write(sig, value)
    return bytes(writer.buf)


def encode_message(msg: Message) -> bytes:
    """The whole message: fixed header, header fields, padding to 8, body."""
    body = encode(msg.signature, msg.body)  # the body starts 8-aligned: offsets from 0 align the same
    fields = []
    for name, (code, sig) in _FIELDS.items():
        value = getattr(msg, name)
        if value:
            fields.append((code, Variant(sig, value)))
    head = _Writer()
    head.buf += struct.pack("<cBBBII", b"l", msg.type, msg.flags, 1, len(body), msg.serial)
    head.write("a(yv)", fields)
    head.align(8)
    return bytes(head.buf) + body


# ------------------------------------------------------------------ decoding


class _Reader:
    def __init__(self, data: bytes, endian: str, offset: int = 0):
        self.data = data
        self.endian = endian
        self.pos = offset

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"D-Bus message truncated at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def read(self, sig: str) -> Any:
        code = sig[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            (value,) = struct.unpack(self.endian + fmt, self._take(size))
            return bool(value) if code == "b" else value
        if code in ("s", "o"):
            self.align(4)
            (length,) = struct.unpack(self.endian + "I", self._take(4))
            text = self._take(length + 1)[:-1].decode()
            return text
        if code == "g":
            (length,) = struct.unpack("B", self._take(1))
            return self._take(length + 1)[:-1].decode()
        if code == "v":
            inner = str(self.read("g"))
            return Variant(inner, self.read(inner))
        if code == "(":
            self.align(8)
            return tuple(self.read(member) for member in split_signature(sig[1:-1]))
        if code == "{":
            key_sig, value_sig = split_signature(sig[1:-1])
            self.align(8)
            return self.read(key_sig), self.read(value_sig)
        if code == "a":
            return self._array(sig[1:])
        raise ValueError(f"D-Bus signature {sig!r}: cannot decode")

    def _array(self, element: str) -> Any:
        self.align(4)
        (length,) = struct.unpack(self.endian + "I", self._take(4))
        self.align(_ALIGN[element[0]])
        end = self.pos + length
        if element == "y":
            return self._take(length)
        items: list[Any] = []
        while self.pos < end:
            items.append(self.read(element))
        return dict(items) if element[0] == "{" else items


def decode(signature: str, data: bytes, endian: str = "<", start: int = 0) -> tuple:
    """Unmarshal `data` (laid out as if at offset `start`) into one value per complete type."""
    reader = _Reader(b"\0" * start + data, endian, start)
    return tuple(reader.read(sig) for sig in split_signature(signature))


def message_length(data: bytes) -> int | None:
    """The total length of the message at the start of `data`, or None if its first 16 bytes are not in yet."""
    if len(data) < 16:
        return None
    endian = _endian(data)
    body_length, _serial, fields_length = struct.unpack(endian + "III", data[4:16])
    return 16 + fields_length + (-(16 + fields_length) % 8) + body_length


def _endian(data: bytes) -> str:
    if data[:1] == b"l":
        return "<"
    if data[:1] == b"B":
        return ">"
    raise ValueError(f"D-Bus message: bad byte-order mark {data[:1]!r}")


def decode_message(data: bytes) -> Message:
    """One complete message (see message_length) back into a Message."""
    endian = _endian(data)
    msg_type, flags, version, body_length, serial = struct.unpack(endian + "BBBII", data[1:12])
    if version != 1:
        raise ValueError(f"D-Bus message: protocol version {version}, expected 1")
    reader = _Reader(data, endian, 12)
    msg = Message(type=msg_type, serial=serial, flags=flags)
    for code, variant in reader.read("a(yv)"):
        name = _FIELD_NAMES.get(code)
        if name is not None:
            setattr(msg, name, variant.value)
    reader.align(8)
    body = data[reader.pos:reader.pos + body_length]
    msg.body = decode(msg.signature, body, endian) if msg.signature else ()
    return msg


# ------------------------------------------------------------------ connection


class Connection:
    """One authenticated connection; use as a context manager so the socket is closed."""

    def __init__(self, address: str, timeout: float = TIMEOUT, hello: bool = False):
        self.address = address
        self.timeout = timeout
        self._serial = 0
        self._inbox = b""
        self._pending: list[Message] = []  # signals read while waiting for something else
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(address)
            self._authenticate()
            if hello:  # a message bus wants to be greeted before anything else
                self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
        except OSError as e:
            self.sock.close()
            raise CgroupError(f"D-Bus: cannot connect to {address}: {e.strerror or e}") from None
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _authenticate(self) -> None:
        uid = str(os.geteuid()).encode().hex().encode()
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        line = self._auth_line()
        if not line.startswith(b"OK "):
            raise CgroupError(f"D-Bus: {self.address} refused EXTERNAL authentication as uid "
                              f"{os.geteuid()}: {line.decode(errors='replace')}")
        self.sock.sendall(b"BEGIN\r\n")

    def _auth_line(self) -> bytes:
        while b"\r\n" not in self._inbox:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CgroupError(f"D-Bus: {self.address} closed the connection during authentication")
            self._inbox += chunk
        line, _, self._inbox = self._inbox.partition(b"\r\n")
        return line

    def send(self, msg: Message) -> int:
        self._serial += 1
        msg.serial = self._serial
        self.sock.sendall(encode_message(msg))
        return msg.serial

    def _receive(self, deadline: float) -> Message:
        while True:
            length = message_length(self._inbox)
            if length is not None and len(self._inbox) >= length:
                data, self._inbox = self._inbox[:length], self._inbox[length:]
                return decode_message(data)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CgroupError(f"D-Bus: {self.address} closed the connection")
            self._inbox += chunk

    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", *args: object) -> tuple:
        """Call a method and return its reply's body; DBusError names the method and the error."""
        serial = self.send(Message(METHOD_CALL, path=path, interface=interface, member=member,
                                   destination=destination, signature=signature, body=tuple(args)))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                msg = self._receive(deadline)
            except (TimeoutError, socket.timeout):
                raise CgroupError(f"D-Bus {member}: no reply from {self.address} within {self.timeout:g}s") from None
            if msg.type == SIGNAL:
                self._pending.append(msg)
            elif msg.reply_serial == serial:
                if msg.type == ERROR:
                    text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                    raise DBusError(member, msg.error_name, text)
                return msg.body

    def wait_signal(self, accept: Callable[[Message], bool], what: str) -> Message:
        """The first signal (already buffered or arriving within the timeout) that `accept` takes."""
        for i, msg in enumerate(self._pending):
            if accept(msg):
                del self._pending[i]
                return msg
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                msg = self._receive(deadline)
            except (TimeoutError, socket.timeout):
                raise CgroupError(f"D-Bus: no {what} from {self.address} within {self.timeout:g}s") from None
            if msg.type == SIGNAL and accept(msg):
                return msg


def connect_systemd(timeout: float = TIMEOUT) -> Connection:
    """A connection systemd's Manager answers on: its private socket as root, else the system bus.

    On the system bus, systemd sends job signals only to subscribers and the
    bus delivers them only to matching connections: both are asked for here.
    """
    if os.geteuid() == 0 and os.path.exists(SYSTEMD_PRIVATE):
        try:
            return Connection(SYSTEMD_PRIVATE, timeout)
        except CgroupError:
            pass  # e.g. a container with the path but not the socket's systemd: try the bus
    conn = Connection(SYSTEM_BUS, timeout, hello=True)
    try:
        conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                  "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',"
                  "member='JobRemoved'")
        conn.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                  "Subscribe")
    except BaseException:
        conn.close()
        raise
    return conn
