"""Address allocation for one network's subnet, in files, safe against crashes and concurrency.

Layout under `<state_root>/net/ipam/<network>/` (IPv4) and, for a dual-stack
network, the same again under `<state_root>/net/ipam/<network>/ipv6/` (IPv6):
  lock            flock()ed around every change
  <address>       one file per leased address (a.b.c.d, or the compressed IPv6
                  form such as fd00:1::2); its content is the owner id
  owners/<owner>  the owner's address: release() is O(1), no scan
  last_reserved   the last address handed out; the next search starts after it
                  (like CNI host-local), so a freed address is not reused at once

The IPv6 pool lives inside the IPv4 one so that a network's address state is
one directory: removing it removes both. Each pool has its own lock and
owners index, and neither ever reads the other's names (an IPv4 pool only
sees names shaped a.b.c.d, an IPv6 pool only names with a colon).

Why this holds up when a process dies at any point:
- An address file is made with its content in one step: written to a temp
  file, then link()ed to its name. link() fails if the name exists, so it is
  O_EXCL and atomic at once: the file never exists without its owner, and a
  lease is valid the moment it exists.
- The address file is the truth; `owners/<owner>` is only an index written
  after it. A crash in between leaves a lease `leases()` and `gc()` see (they
  read address files) even if release() cannot find it.
- Temp files are only made under the lock, so any temp file found by someone
  holding the lock is a crash leftover and is removed. Address files with no
  valid owner id (empty or cut short, e.g. by an older writer or a full disk)
  are never handed out twice and are freed by gc().

The gateway (first host address), the network and broadcast addresses are
never handed out (IPv6 has no broadcast: its last address is a host address).

IPv6 subnets are searched, not exhausted: from ::2 on, sequentially as for
IPv4, but a search looks at most at V6_SEARCH_LIMIT addresses after the last
one handed out. A /64 holds 2**64 addresses; a full scan would never end, and
a network with that many leases does not exist, so a search that finds no
free address within the limit reports the subnet as full for now.
"""
from __future__ import annotations

import os
from _socket import AF_INET6, inet_aton, inet_ntoa, inet_ntop, inet_pton  # socket.py costs ~5 ms (enum)

from hanok.runtime.errors import InvalidArgument, NetError

if False:  # for type checkers only
    from collections.abc import Callable, Iterator

V6_SEARCH_LIMIT = 65536   # addresses one IPv6 allocation looks at before it gives up (see above)
V6_PREFIX_RANGE = (64, 120)   # what an IPv6 pool accepts: a /64 is the norm, a /120 leaves 254 hosts
_OWNER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def is_owner(text: str) -> bool:
    """Whether `text` can be an owner id: 1-64 characters of [a-zA-Z0-9_.-] (checked by hand: no `re`)."""
    return 0 < len(text) <= 64 and _OWNER_CHARS.issuperset(text)


def check_owner(owner: str) -> None:
    """Owner ids are 1-64 characters of [a-zA-Z0-9_.-], and not "." or ".." (they name files)."""
    if not is_owner(owner) or owner in (".", ".."):
        raise InvalidArgument(f"bad owner id {owner!r}: want 1-64 characters of [a-zA-Z0-9_.-]")


def _to_int(address: str) -> int:
    return int.from_bytes(inet_aton(address), "big")


def _to_str(value: int) -> str:
    return inet_ntoa(value.to_bytes(4, "big"))


def _is_address(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts)


def _to_int6(address: str) -> int:
    return int.from_bytes(inet_pton(AF_INET6, address), "big")


def _to_str6(value: int) -> str:
    return inet_ntop(AF_INET6, value.to_bytes(16, "big"))


def _is_address6(name: str) -> bool:
    """An IPv6 address in the compressed form this pool names its files with (and nothing else)."""
    if ":" not in name:
        return False
    try:
        return _to_str6(_to_int6(name)) == name
    except (OSError, ValueError):
        return False


class _Family:
    """What differs between IPv4 and IPv6 pools: address text <-> int, file names, sizes, limits."""

    __slots__ = ("bits", "to_int", "to_str", "is_address", "reserved_at_end", "prefixes", "example", "search_limit")

    def __init__(self, bits: int, to_int: Callable[[str], int], to_str: Callable[[int], str],
                 is_address: Callable[[str], bool], reserved_at_end: int, prefixes: tuple[int, int], example: str,
                 search_limit: int | None):
        self.bits = bits
        self.to_int = to_int
        self.to_str = to_str
        self.is_address = is_address
        self.reserved_at_end = reserved_at_end     # IPv4's broadcast address
        self.prefixes = prefixes
        self.example = example
        self.search_limit = search_limit           # None: search the whole subnet


_IPV4 = _Family(32, _to_int, _to_str, _is_address, 1, (1, 30), "A.B.C.D/N", None)
_IPV6 = _Family(128, _to_int6, _to_str6, _is_address6, 0, V6_PREFIX_RANGE, "fdXX:XXXX:XXXX:XXXX::/64",
                V6_SEARCH_LIMIT)


class _PoolLock:
    """flock on the pool's `lock` file for one change (a class, not @contextmanager: contextlib is
    an import the setup path otherwise does without)."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def __enter__(self) -> None:
        import fcntl

        os.makedirs(self.pool._owners_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.pool._tmp_dir, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.pool.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class Pool:
    """The addresses of one network's subnet (IPv4, or IPv6 when the subnet has a colon); every method is
    safe across processes."""

    def __init__(self, state_root: str, network: str, subnet: str, gateway: str | None = None):
        self.network = network
        self.subnet = subnet
        family = self._family = _IPV6 if ":" in subnet else _IPV4
        base, slash, prefix = subnet.partition("/")
        try:
            prefixlen = int(prefix)
            value = family.to_int(base)
        except (OSError, ValueError):
            raise InvalidArgument(f"bad subnet {subnet!r}: want {family.example}") from None
        shortest, longest = family.prefixes
        if not shortest <= prefixlen <= longest:
            raise InvalidArgument(f"bad subnet {subnet!r}: prefix length must be {shortest}-{longest}")
        self.prefixlen = prefixlen
        host_bits = family.bits - prefixlen
        network_value = value >> host_bits << host_bits
        self._first = network_value + 1                     # the gateway by default
        self._last = network_value + (1 << host_bits) - 1 - family.reserved_at_end
        self.gateway = gateway or family.to_str(self._first)
        self.dir = os.path.join(state_root, "net", "ipam", network)
        if family is _IPV6:
            self.dir = os.path.join(self.dir, "ipv6")
        self._owners_dir = os.path.join(self.dir, "owners")
        self._tmp_dir = os.path.join(self.dir, "tmp")

    def _locked(self) -> _PoolLock:
        return _PoolLock(self)

    def _read(self, path: str) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write_tmp(self, text: str, purpose: str) -> str:
        """A new temp file holding `text`. Never written in place: an old file of
        that name may be hard-linked to a lease, which must not change."""
        tmp = os.path.join(self._tmp_dir, f"{os.getpid()}.{purpose}")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        with open(tmp, "x", encoding="ascii") as f:
            f.write(text)
        return tmp

    def _replace(self, path: str, text: str) -> None:
        os.replace(self._write_tmp(text, "replace"), path)

    def _drop_crash_leftovers(self) -> None:
        """Remove temp files: made only under the lock we hold, so their writer is dead."""
        for name in os.listdir(self._tmp_dir):
            os.unlink(os.path.join(self._tmp_dir, name))

    def _lease_of(self, owner: str) -> str | None:
        """The owner's address if its index and its address file agree."""
        address = self._read(os.path.join(self._owners_dir, owner))
        if address and self._family.is_address(address) and self._read(os.path.join(self.dir, address)) == owner:
            return address
        return None

    def allocate(self, owner: str) -> tuple[str, int, str]:
        """Lease an address to `owner` (the same one again if it has one); return (ip, prefixlen, gateway)."""
        check_owner(owner)
        with self._locked():
            self._drop_crash_leftovers()
            address = self._lease_of(owner)
            if address is None:
                address = self._claim(owner)
                self._replace(os.path.join(self._owners_dir, owner), address)
        return address, self.prefixlen, self.gateway

    def _claim(self, owner: str) -> str:
        """Link a file holding `owner` to the first free address after the last one handed out."""
        family = self._family
        last = self._read(os.path.join(self.dir, "last_reserved"))
        start = family.to_int(last) + 1 if last and family.is_address(last) else self._first
        if not self._first <= start <= self._last:
            start = self._first
        size = self._last - self._first + 1
        searched = size if family.search_limit is None else min(size, family.search_limit)
        gateway = family.to_int(self.gateway)
        lease = self._write_tmp(owner, "lease")
        try:
            for step in range(searched):
                candidate = self._first + (start - self._first + step) % size
                if candidate == gateway:
                    continue
                address = family.to_str(candidate)
                path = os.path.join(self.dir, address)
                if os.path.lexists(path):
                    continue
                try:
                    os.link(lease, path)      # fails if the name exists: O_EXCL with content
                except FileExistsError:
                    continue
                self._replace(os.path.join(self.dir, "last_reserved"), address)
                return address
        finally:
            if os.path.lexists(lease):
                os.unlink(lease)
        if searched < size:
            raise NetError(f"network {self.network}: no free address in {self.subnet} among the {searched} "
                           f"addresses from {family.to_str(start)} on")
        raise NetError(f"network {self.network}: no free address in {self.subnet}")

    def release(self, owner: str) -> str | None:
        """Free the owner's address (O(1)); return it, or None if it held none."""
        check_owner(owner)
        if not os.path.isdir(self.dir):
            return None
        with self._locked():
            index = os.path.join(self._owners_dir, owner)
            address = self._read(index)
            if address and self._family.is_address(address):
                lease = os.path.join(self.dir, address)
                if self._read(lease) == owner:
                    os.unlink(lease)
                else:
                    address = None
            else:
                address = None
            if os.path.lexists(index):
                os.unlink(index)
            return address

    def _address_files(self) -> Iterator[tuple[str, str | None]]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if self._family.is_address(name):
                yield name, self._read(os.path.join(self.dir, name))

    def leases(self) -> dict[str, str]:
        """{owner: address} of every valid lease (read from the address files)."""
        return {owner: address for address, owner in self._address_files()
                if owner is not None and is_owner(owner)}

    def gc(self, is_alive: Callable[[str], bool]) -> list[str]:
        """Free every lease whose owner is gone (or unreadable); return the owners freed.

        A lease whose owner's index points at another address (a crash between
        the two writes, then a retry) is freed too: the owner lives on the
        other one. Unreadable leases are reported as "<address>".
        """
        if not os.path.isdir(self.dir):
            return []
        freed: list[str] = []
        with self._locked():
            self._drop_crash_leftovers()
            for address, content in self._address_files():
                owner = content if content is not None and is_owner(content) else None
                if owner is not None and is_alive(owner) and self._lease_of(owner) in (address, None):
                    continue
                os.unlink(os.path.join(self.dir, address))
                if owner is not None:
                    index = os.path.join(self._owners_dir, owner)
                    if self._read(index) == address:
                        os.unlink(index)
                freed.append(owner if owner is not None else f"<{address}>")
            live = set(self.leases())
            for owner in os.listdir(self._owners_dir):
                if owner not in live:
                    os.unlink(os.path.join(self._owners_dir, owner))
        return freed

    def remove(self) -> None:
        """Delete the pool's directory (only call once it holds no leases); an IPv4 pool's holds the
        network's IPv6 pool too."""
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
