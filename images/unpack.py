"""Layer tar -> directory, confined to that directory, whiteouts in overlayfs form.

Our own extractor on purpose: tarfile's extraction filters have had bypasses
and reject the absolute symlink targets OS layers legitimately contain. Our
own tar reader too: tarfile's stream mode passes 10 KiB records through
several layers of Python calls and parses each header field by field, the
largest Python (GIL-holding) cost of an unpack. `_TarReader` parses ustar,
GNU (long names, base-256 numbers) and pax (path, linkpath, size, uid, gid,
mtime, xattrs; global headers) straight from the inflated chunks, and writes
a file's data to its fd from those chunks without copying them. Sparse files
are rejected.

Confinement: every operation is relative to a directory file descriptor. A
member's parent path is walked one component at a time from the layer root
with O_NOFOLLOW; a symlink met on the way is resolved as if the layer root
were `/` (absolute targets restart at the root, `..` stops at the root), the
way `chroot` or openat2(RESOLVE_IN_ROOT) would. The final component is never
followed: it is created with O_EXCL / mkdirat / symlinkat / mknodat / linkat
(without AT_SYMLINK_FOLLOW), and only when that fails with EEXIST is whatever
was there removed. Member names and hardlink targets containing `..` are
rejected.

Few syscalls per entry: a regular file is open(O_CREAT|O_EXCL) with its final
mode, write, utimensat on the fd, close. chown is skipped when the owner is
already ours, chmod when creation gave the exact mode (no setuid/setgid/sticky
bit, nothing the umask removes, no default ACL on the layer root); directory
modes and mtimes are applied once at the end (children change them). Nothing
is fsynced here: the store syncs a finished layer once (see store.py).

Whiteouts: `.wh.NAME` -> a 0:0 character device NAME, `.wh..wh..opq` ->
xattr trusted.overlay.opaque=y on the directory (aufs metadata `.wh..wh.plnk`
and friends is skipped, any other `.wh..wh.` name is rejected).

`unpack(stream, dest) -> diff_id`: `stream` is the layer blob (gzip, zstd or
plain tar, told apart by magic); the diff_id is the sha256 of the
uncompressed tar stream, read to its end.
"""
from __future__ import annotations

import errno
import os
import stat
import zlib

from hanok.runtime.errors import ImageError

if False:  # typing only (typing ~2 ms, collections.abc ~1.5 ms on the `hanok run` hot path)
    from collections.abc import Iterator
    from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
# aufs bookkeeping some old images carry: skipped, as docker does.
_AUFS_META = (".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph")
OPAQUE_XATTR = "trusted.overlay.opaque"
_IN_CHUNK = 1 << 20    # compressed bytes asked of the source per read
_OUT_CHUNK = 1 << 20   # inflated bytes per chunk at most: bounds memory whatever the ratio
_MAX_SYMLINK_HOPS = 40
_DIR_CACHE = 64        # directory fds a Root keeps open (per layer being unpacked)
_MAX_META = 16 << 20   # a pax header or GNU long name larger than this is not a layer
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# ------------------------------------------------------------------ streams


def _read_exact(raw: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = raw.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def compression_of(head: bytes) -> str:
    """'gzip', 'zstd' or 'none', from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def tar_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """The uncompressed tar stream of a layer blob, as chunks (gzip/zstd/plain by magic).

    Reads `raw` to its end (so a caller hashing the blob as it passes sees
    all of it); truncated or corrupt compressed data raises ImageError.
    """
    head = _read_exact(raw, 4)
    kind = compression_of(head)
    if kind == "gzip":
        return _gunzip(raw, head)
    if kind == "zstd":
        return _unzstd(raw, head)
    return _plain(raw, head)


def _gunzip(raw: BinaryIO, head: bytes) -> Iterator[bytes]:
    """Streaming inflate, multi-member, zero padding after the last member allowed."""
    inflate = zlib.decompressobj(wbits=31)
    pending = head
    while True:
        data = pending or raw.read(_IN_CHUNK)
        pending = b""
        if not data:
            try:
                out = inflate.flush()  # output a full buffer held back: at most one match
            except zlib.error as e:
                raise ImageError(f"layer is not valid gzip data: {e}") from None
            if out:
                yield out
            if not inflate.eof:
                raise ImageError("layer is truncated: the gzip stream ends early")
            return
        if inflate.eof:  # data after the end of a member
            if not data.strip(b"\0"):
                continue  # zero padding after the last member
            inflate = zlib.decompressobj(wbits=31)
        try:
            out = inflate.decompress(data, _OUT_CHUNK)
        except zlib.error as e:
            raise ImageError(f"layer is not valid gzip data: {e}") from None
        if out:
            yield out
        pending = inflate.unused_data if inflate.eof else inflate.unconsumed_tail


def _unzstd(raw: BinaryIO, head: bytes) -> Iterator[bytes]:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise ImageError("layer is zstd-compressed and the Python 'zstandard' module "
                         "is not installed (pip install 'hanok[zstd]')") from None
    reader = zstandard.ZstdDecompressor().stream_reader(_Prefixed(raw, head), read_across_frames=True)
    try:
        while True:
            out = reader.read(_OUT_CHUNK)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise ImageError(f"layer is not valid zstd data: {e}") from None
    while raw.read(_IN_CHUNK):  # skippable frames or padding after the last frame
        pass


def _plain(raw: BinaryIO, head: bytes) -> Iterator[bytes]:
    if head:
        yield head
    while True:
        data = raw.read(_IN_CHUNK)
        if not data:
            return
        yield data


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, raw: BinaryIO, prefix: bytes):
        self.raw = raw
        self.prefix = prefix

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n is None or n < 0:
                out, self.prefix = self.prefix + self.raw.read(), b""
                return out
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            if len(out) < n:
                out += self.raw.read(n - len(out))
            return out
        return self.raw.read(n)


class _ChunkReader:
    """`read(n)` over an iterator of chunks (a file-like face for `tar_chunks`)."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.buf = b""
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = self.buf[self.pos:] + b"".join(self.chunks)
            self.buf, self.pos = b"", 0
            return out
        while self.pos >= len(self.buf):
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.buf, self.pos = chunk, 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def decompressed(raw: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer blob (gzip/zstd/plain by magic), as a reader."""
    return _ChunkReader(tar_chunks(raw))  # type: ignore[return-value]


# ------------------------------------------------------------------ tar


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
_TYPES = {b"0": REGULAR, b"\0": REGULAR, b"7": REGULAR, b"1": HARDLINK, b"2": SYMLINK, b"3": CHARDEV,
          b"4": BLOCKDEV, b"5": DIRECTORY, b"6": FIFO}
_HEADER_ONLY = (HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO)  # data size ignored (as GNU/Go do)
_USTAR = b"ustar\x00"
_XATTR_PREFIXES = (b"SCHILY.xattr.", b"LIBARCHIVE.xattr.")


class Member:
    """One tar entry: what extraction needs of it (pax and GNU extensions applied)."""

    __slots__ = ("name", "linkname", "type", "mode", "uid", "gid", "size", "mtime_ns", "devmajor",
                 "devminor", "xattrs")

    def __init__(self, name: str, linkname: str, type: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime_ns: int, devmajor: int, devminor: int, xattrs: list[tuple[str, bytes]]):
        self.name = name
        self.linkname = linkname
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs


def _text(raw: bytes) -> str:
    """A name field as str; bytes that are not UTF-8 survive the round trip (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str) -> int:
    """An octal (NUL/space terminated) or GNU base-256 numeric header field."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else n
    digits = field.split(b"\0", 1)[0].strip()
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise ImageError(f"layer is not a valid tar archive: the {what} field {digits!r} "
                         "is not an octal number") from None


def _high_bytes(block: bytes) -> int:
    """How many bytes of a header, checksum field aside, are above 127."""
    return sum(1 for b in block[:148] if b > 127) + sum(1 for b in block[156:] if b > 127)


def _pax_number(value: bytes, key: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise ImageError(f"layer is not a valid tar archive: pax {key.decode(errors='replace')}="
                         f"{value[:40]!r} is not a number") from None


def _pax_time_ns(value: bytes) -> int:
    """A pax time (`1600000000.123456789`, maybe negative) in nanoseconds, exactly."""
    sec, _, frac = value.partition(b".")
    try:
        neg = sec.startswith(b"-")
        whole = abs(int(sec)) if sec not in (b"", b"-") else 0
        part = int((frac + b"000000000")[:9]) if frac else 0
    except ValueError:
        raise ImageError(f"layer is not a valid tar archive: pax mtime={value[:40]!r} is not a time") from None
    ns = whole * 1_000_000_000 + part
    return -ns if neg else ns


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """`<len> <key>=<value>\\n` records of a pax header (trailing NULs tolerated)."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            if not data[pos:].strip(b"\0"):
                break
            raise ImageError("layer is not a valid tar archive: malformed pax header record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ImageError("layer is not a valid tar archive: malformed pax header record length") from None
        record_end = pos + length
        if length <= sp - pos + 1 or record_end > end or data[record_end - 1] != 0x0A:
            raise ImageError("layer is not a valid tar archive: malformed pax header record")
        key, eq, value = data[sp + 1:record_end - 1].partition(b"=")
        if not eq:
            raise ImageError("layer is not a valid tar archive: pax header record without '='")
        out[key] = value
        pos = record_end
    return out


def _xattr_of(key: bytes, value: bytes) -> tuple[str, bytes] | None:
    """(name, value) of a pax xattr record, None for overlayfs's own attributes.

    overlayfs's attributes would let a layer redirect lookups or fake
    opaqueness/metacopy: only whiteouts in tar form may express those.
    """
    if key.startswith(b"SCHILY.xattr."):
        name = _text(key[len(b"SCHILY.xattr."):])
    else:
        import base64
        from urllib.parse import unquote

        name = unquote(_text(key[len(b"LIBARCHIVE.xattr."):]))
        try:
            value = base64.b64decode(value + b"=" * (-len(value) % 4))
        except ValueError:
            raise ImageError(f"layer is not a valid tar archive: xattr {name!r} is not base64") from None
    if name.startswith("trusted.overlay.") or name.startswith("user.overlay."):
        return None
    return name, value


class _TarReader:
    """Tar members from a stream of uncompressed chunks; data written to fds from the chunks.

    The chunks are hashed as they arrive (the diff_id). Iterate `members()`;
    for a regular file call `copy_to(fd)` (or not: unread data is skipped).
    """

    def __init__(self, chunks: Iterator[bytes]):
        import hashlib  # here: Root is on the container start path, hashing is not

        self.chunks = chunks
        self.hash = hashlib.sha256()
        self.buf = b""
        self.pos = 0
        self.offset = 0           # of buf[0] in the tar stream (for messages)
        self.left = 0             # data bytes of the current member not yet consumed
        self.pad = 0              # padding after them

    def _next_chunk(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        self.hash.update(chunk)
        self.offset += len(self.buf)
        self.buf, self.pos = chunk, 0
        return True

    def _take(self, n: int) -> bytes:
        """Exactly n bytes (fewer only at the end of the stream)."""
        end = self.pos + n
        if end <= len(self.buf):
            out = self.buf[self.pos:end]
            self.pos = end
            return out
        parts = [self.buf[self.pos:]]
        have = len(parts[0])
        self.pos = len(self.buf)
        while have < n:
            if not self._next_chunk():
                break
            need = n - have
            piece = self.buf[:need]
            parts.append(piece)
            have += len(piece)
            self.pos = len(piece)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n > 0:
            if self.pos >= len(self.buf) and not self._next_chunk():
                raise ImageError("layer is truncated: unexpected end of data")
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step

    def _data(self, size: int) -> bytes:
        """A meta entry's data (pax records, GNU long name), padding skipped."""
        if size > _MAX_META:
            raise ImageError(f"layer is not a valid tar archive: a {size}-byte extended header")
        data = self._take(size)
        if len(data) < size:
            raise ImageError("layer is truncated: unexpected end of data")
        self._skip(-size % _BLOCK)
        return data

    def copy_to(self, fd: int, name: str) -> None:
        """Write the current member's data to `fd`."""
        left = self.left
        while left > 0:
            if self.pos >= len(self.buf) and not self._next_chunk():
                raise ImageError(f"layer entry {name!r}: data ends early (truncated layer)")
            end = min(len(self.buf), self.pos + left)
            view = memoryview(self.buf)[self.pos:end]
            while view:
                n = os.write(fd, view)
                view = view[n:]
            left -= end - self.pos
            self.pos = end
        self.left = 0

    def drain(self) -> None:
        """Read the stream to its end (trailing blocks count in the diff_id)."""
        self.pos = len(self.buf)
        while self._next_chunk():
            self.pos = len(self.buf)

    def members(self) -> Iterator[Member]:
        pax_global: dict[bytes, bytes] = {}
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        first = True
        while True:
            if self.left or self.pad:
                self._skip(self.left + self.pad)
                self.left = self.pad = 0
            at = self.offset + self.pos
            block = self._take(_BLOCK)
            if len(block) < _BLOCK:
                if first:
                    raise ImageError("layer is not a valid tar archive: "
                                     + ("empty file" if not block else "shorter than one header"))
                if block or pax or long_name is not None or long_link is not None:
                    raise ImageError("layer is truncated: unexpected end of data")
                return  # no end-of-archive blocks: accepted, as tar and tarfile do
            if block == _ZERO_BLOCK:
                return  # end of archive (first thing in an empty layer)
            # checksum: the header's bytes with the checksum field read as spaces
            want = _number(block[148:156], "checksum")
            got = sum(block) - sum(block[148:156]) + 256
            if want != got and want != got - 256 * _high_bytes(block):  # some writers sum signed bytes
                raise ImageError(f"layer is not a valid tar archive: bad header checksum at offset {at}")
            first = False
            typeflag = block[156:157]
            size = _number(block[124:136], "size")
            if size < 0:
                raise ImageError(f"layer is not a valid tar archive: negative size at offset {at}")
            if typeflag in (b"x", b"X"):
                pax.update(_pax_records(self._data(size)))
                continue
            if typeflag == b"g":
                pax_global.update(_pax_records(self._data(size)))
                continue
            if typeflag == b"L":
                long_name = self._data(size).split(b"\0", 1)[0]
                continue
            if typeflag == b"K":
                long_link = self._data(size).split(b"\0", 1)[0]
                continue
            if pax_global:
                # as Go's archive/tar (docker, containerd, scanners): a global header never renames,
                # resizes or relinks later members, so everyone reads the same tree from one diff_id
                inherited = {k: v for k, v in pax_global.items() if k not in (b"path", b"linkpath", b"size")}
                pax = {**inherited, **pax}
            raw_name = long_name if long_name is not None else block[:100].split(b"\0", 1)[0]
            if long_name is None and block[257:263] == _USTAR:
                prefix = block[345:500].split(b"\0", 1)[0]
                if prefix:
                    raw_name = prefix + b"/" + raw_name
            raw_link = long_link if long_link is not None else block[157:257].split(b"\0", 1)[0]
            kind = _TYPES.get(typeflag, typeflag)
            if kind == REGULAR and typeflag == b"\0" and raw_name.endswith(b"/"):
                kind = DIRECTORY  # old V7 tar: a directory is a file whose name ends in '/'
            uid = _number(block[108:116], "uid")
            gid = _number(block[116:124], "gid")
            mtime_ns = _number(block[136:148], "mtime") * 1_000_000_000
            xattrs: list[tuple[str, bytes]] = []
            if pax:
                for key, value in pax.items():
                    if key == b"path":
                        raw_name = value
                    elif key == b"linkpath":
                        raw_link = value
                    elif key == b"size":
                        size = _pax_number(value, key)
                    elif key == b"uid":
                        uid = _pax_number(value, key)
                    elif key == b"gid":
                        gid = _pax_number(value, key)
                    elif key == b"mtime":
                        mtime_ns = _pax_time_ns(value)
                    elif key.startswith(_XATTR_PREFIXES):
                        xattr = _xattr_of(key, value)
                        if xattr is not None:
                            xattrs.append(xattr)
                    elif key.startswith(b"GNU.sparse."):
                        raise ImageError(f"layer entry {_text(raw_name)!r}: sparse files are not supported")
            if typeflag == b"S":
                raise ImageError(f"layer entry {_text(raw_name)!r}: sparse files are not supported")
            if size < 0:
                raise ImageError(f"layer is not a valid tar archive: negative size at offset {at}")
            pax = {}
            long_name = long_link = None
            if kind in _HEADER_ONLY:
                size = 0
            self.left, self.pad = size, -size % _BLOCK
            yield Member(_text(raw_name), _text(raw_link), kind, _number(block[100:108], "mode"), uid, gid,
                         size, mtime_ns, _number(block[329:337], "devmajor"), _number(block[337:345], "devminor"),
                         xattrs)


# ------------------------------------------------------------------ paths


def split_member_path(name: str, what: str = "path") -> list[str]:
    """Components of a member name relative to the layer root; `..` is rejected.

    Leading `/` and `./` are dropped (the root is the layer), empty and `.`
    components ignored.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer entry {name!r}: {what} contains '..' (would leave the layer)")
    if "\0" in name:
        raise ImageError(f"layer entry {name!r}: {what} contains a NUL byte")
    return parts


class Root:
    """A directory tree every operation of which stays inside it (dirfd based)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, _O_DIR)
        self._cache: dict[tuple[str, ...], int] = {}  # least recently used first

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        """Drop cached directory fds (after something in the tree was removed)."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def __enter__(self) -> "Root":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dir_fd(self, parts: list[str] | tuple[str, ...], create: bool = True) -> int:
        """An fd of the directory at `parts`, symlinks resolved inside the root.

        Missing directories are created (0755) when `create`; FileNotFoundError
        otherwise. The fd belongs to the cache and stays valid only until the
        next dir_fd() or forget(): do not close it, os.dup() it to hold it longer.
        """
        key = tuple(parts)
        if not key:
            return self.fd
        cache = self._cache
        fd = cache.pop(key, None)
        if fd is None:
            fd = self._descend(key, create)
            if fd is None:
                fd = self._walk(list(key), create)
                self._remember(key, fd)
            return fd
        cache[key] = fd  # now the most recently used
        return fd

    def _remember(self, key: tuple[str, ...], fd: int) -> None:
        cache = self._cache
        if len(cache) >= _DIR_CACHE:
            os.close(cache.pop(next(iter(cache))))
        cache[key] = fd

    def _descend(self, key: tuple[str, ...], create: bool) -> int | None:
        """The fast path of dir_fd for plain directories.

        From the deepest cached ancestor, one O_NOFOLLOW open per remaining
        component (created if missing), each cached. None when a component is
        a symlink or not a directory: `_walk` resolves it from the root. The
        result is the one `_walk` would give, as cached entries are exactly
        what `_walk` resolved and forget() drops them when the tree changes.
        """
        cache = self._cache
        i = len(key) - 1
        while i > 0 and key[:i] not in cache:
            i -= 1
        if any(p in ("", ".", "..") for p in key[i:]):
            return None
        cur = cache[key[:i]] if i else self.fd
        for j in range(i, len(key)):
            name = key[j]
            try:
                fd = os.open(name, _O_DIR, dir_fd=cur)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=cur)
                except FileExistsError:
                    return None  # something not a directory appeared there: let _walk judge
                try:
                    fd = os.open(name, _O_DIR, dir_fd=cur)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        return None
                    raise
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    return None
                raise
            self._remember(key[:j + 1], fd)
            cur = fd
        return cur

    def _walk(self, todo: list[str], create: bool) -> int:
        stack = [os.dup(self.fd)]  # fds from the root down to the current dir
        hops = 0
        try:
            todo.reverse()  # pop() from the end = next component
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                cur = stack[-1]
                try:
                    fd = os.open(name, _O_DIR, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=cur)
                    except FileExistsError:
                        pass  # lost a race with ourselves? re-open below
                    fd = os.open(name, _O_DIR, dir_fd=cur)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, "not a directory", name) from None
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links", name) from None
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    todo.extend(reversed([p for p in target.split("/") if p]))
                    continue
                stack.append(fd)
            fd = stack.pop()
            return fd
        finally:
            for fd in stack:
                os.close(fd)

    def open_file(self, path: str) -> int:
        """Open an existing regular file for reading, every symlink resolved in the root.

        The root may be a live container's, which can put a FIFO (the open
        would hang us) or a device node (opened on the host, outside the
        container's device rules) where a file is expected: the name is opened
        with O_PATH first, and reopened for reading only if it is a regular file.
        """
        import stat as _stat

        parts = split_member_path(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        for _ in range(_MAX_SYMLINK_HOPS):
            parent = self._walk(parts[:-1], create=False)
            try:
                handle = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    mode = os.fstat(handle).st_mode
                    if _stat.S_ISREG(mode):
                        return os.open(f"/proc/self/fd/{handle}",
                                       os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
                    if not _stat.S_ISLNK(mode):
                        raise OSError(errno.EINVAL, "not a regular file", path)
                finally:
                    os.close(handle)
                target = os.readlink(parts[-1], dir_fd=parent)
            finally:
                os.close(parent)
            base = [] if target.startswith("/") else parts[:-1]
            parts = _normalize_in_root(base + target.split("/"))
            if not parts:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)


def _normalize_in_root(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return out


def _remove_at(dir_fd: int, name: str) -> bool:
    """Remove `name` (any type, directories with all they hold) under dir_fd; True if it existed.

    Iterative, holding one directory fd at a time: a hostile layer may nest
    directories thousands deep, past both Python's recursion limit and the
    open-file limit. Going up uses "..", which in a tree we made ourselves
    (no symlink is ever followed going down) is the directory we came from.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return True
    names = [name]
    current = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        while names:
            descend = None
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        descend = entry.name
                        break
                    os.unlink(entry.name, dir_fd=current)
            if descend is not None:
                child = os.open(descend, _O_DIR, dir_fd=current)
                os.close(current)
                current = child
                names.append(descend)
                continue
            parent = os.open("..", _O_DIR, dir_fd=current)
            os.close(current)
            current = parent
            os.rmdir(names.pop(), dir_fd=current)
    finally:
        os.close(current)
    return True


def remove_tree(path: str) -> bool:
    """Remove the tree at `path` (see _remove_at); True if it existed."""
    parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", _O_DIR)
    try:
        return _remove_at(parent, os.path.basename(os.path.abspath(path)))
    finally:
        os.close(parent)


# ------------------------------------------------------------------ extract


def _umask() -> int | None:
    """The process umask, read without changing it (other threads create files too)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _has_default_acl(fd: int) -> bool:
    """A default ACL on the layer root makes creation modes differ from mode & ~umask."""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError:
        return False
    return True


class _Extractor:
    def __init__(self, dest: str, same_owner: bool):
        self.root = Root(dest)
        self.same_owner = same_owner
        # Files we create get our euid and, as no directory in the tree has the
        # setgid bit until finish(), our egid -- unless the layer root has it.
        st = os.fstat(self.root.fd)
        gid = st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()
        self.owner = (os.geteuid(), gid)
        umask = _umask()
        # mode bits creation cannot be trusted to give (then an explicit chmod follows)
        self.inexact = 0o7777 if umask is None or _has_default_acl(self.root.fd) else 0o7000 | umask
        self.dirs: dict[tuple[str, ...], tuple[int, int, bool]] = {}  # parts -> (mode, mtime_ns, chmod)

    def close(self) -> None:
        self.root.close()

    def _owner_differs(self, member: Member) -> bool:
        return self.same_owner and (member.uid, member.gid) != self.owner

    def _xattrs(self, fd: int, member: Member) -> None:
        for name, value in member.xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise ImageError(f"layer entry {member.name!r}: cannot set xattr {name}: {e.strerror}") from None

    def _clear(self, parts: list[str], parent: int, base: str) -> int:
        """Remove what is at `base` (last entry wins); returns the parent's fd afresh.

        The cache is dropped: cached paths may have been resolved through it.
        """
        _remove_at(parent, base)
        self.root.forget()
        return self.root.dir_fd(parts[:-1])

    def entry(self, tar: _TarReader, member: Member) -> None:
        name = member.name
        parts = split_member_path(name)
        if not parts:  # the layer root itself ("./")
            if member.type != DIRECTORY:
                raise ImageError(f"layer entry {name!r}: the layer root can only be a directory")
            self.dirs[()] = (member.mode & 0o7777, member.mtime_ns, True)
            if self._owner_differs(member):
                os.fchown(self.root.fd, member.uid, member.gid)
            return
        base = parts[-1]
        if WHITEOUT_PREFIX in name:
            for p in parts[:-1]:
                if p.startswith(WHITEOUT_PREFIX):
                    if p in _AUFS_META:
                        return  # aufs bookkeeping, skipped as docker does
                    raise ImageError(f"layer entry {name!r}: malformed whiteout name {p!r} "
                                     "(a whiteout cannot have children)")
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(member, parts)
                return
        try:
            parent = self.root.dir_fd(parts[:-1])
        except NotADirectoryError:
            raise ImageError(f"layer entry {name!r}: a parent is not a directory") from None
        kind = member.type
        if kind == REGULAR:
            self.regular(tar, member, parts, parent, base)
        elif kind == DIRECTORY:
            self.directory(member, parts, parent, base)
        elif kind == SYMLINK:
            try:
                os.symlink(member.linkname, base, dir_fd=parent)
            except FileExistsError:
                parent = self._clear(parts, parent, base)
                os.symlink(member.linkname, base, dir_fd=parent)
            if self._owner_differs(member):
                os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            ns = member.mtime_ns
            os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        elif kind == HARDLINK:
            self.hardlink(member, parts, parent, base)
        elif kind in (CHARDEV, BLOCKDEV, FIFO):
            self.node(member, parts, parent, base)
        else:
            raise ImageError(f"layer entry {name!r}: unsupported tar entry type {kind.decode(errors='replace')!r}")

    def regular(self, tar: _TarReader, member: Member, parts: list[str], parent: int, base: str) -> None:
        mode = member.mode & 0o7777
        chown = self._owner_differs(member)
        chmod = chown or bool(mode & self.inexact)  # chown clears setuid: chmod after it
        create_mode = 0o600 if chmod else mode
        try:
            fd = os.open(base, _O_NEWFILE, create_mode, dir_fd=parent)
        except FileExistsError:
            parent = self._clear(parts, parent, base)
            fd = os.open(base, _O_NEWFILE, create_mode, dir_fd=parent)
        try:
            if member.size:
                tar.copy_to(fd, member.name)
            if chown:
                os.fchown(fd, member.uid, member.gid)
            if chmod:
                os.fchmod(fd, mode)
            if member.xattrs:
                self._xattrs(fd, member)
            ns = member.mtime_ns
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def directory(self, member: Member, parts: list[str], parent: int, base: str) -> None:
        mode = member.mode & 0o7777
        # created with its final mode when that is exact and leaves it writable to us;
        # otherwise 0700 now and the mode at finish()
        chmod = bool(mode & self.inexact) or mode & 0o700 != 0o700
        try:
            os.mkdir(base, 0o700 if chmod else mode, dir_fd=parent)
        except FileExistsError:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                chmod = True  # an earlier entry (or an implicit parent) made it
            else:
                parent = self._clear(parts, parent, base)
                os.mkdir(base, 0o700 if chmod else mode, dir_fd=parent)
        if self._owner_differs(member) or member.xattrs:
            fd = os.open(base, _O_DIR, dir_fd=parent)
            try:
                if self._owner_differs(member):
                    os.fchown(fd, member.uid, member.gid)
                    chmod = True
                self._xattrs(fd, member)
            finally:
                os.close(fd)
        self.dirs[tuple(parts)] = (mode, member.mtime_ns, chmod)

    def node(self, member: Member, parts: list[str], parent: int, base: str) -> None:
        kind = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}.get(member.type, stat.S_IFIFO)
        dev = os.makedev(member.devmajor, member.devminor)
        try:
            try:
                os.mknod(base, kind | 0o600, dev, dir_fd=parent)
            except FileExistsError:
                parent = self._clear(parts, parent, base)
                os.mknod(base, kind | 0o600, dev, dir_fd=parent)
        except PermissionError:
            raise ImageError(f"layer entry {member.name!r}: creating a device node needs root") from None
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            # O_PATH fds take fchown/fchmod only through /proc; use the name
            # under the (already confined) parent instead.
            if self.same_owner:
                os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
            ns = member.mtime_ns
            os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(fd)

    def hardlink(self, member: Member, parts: list[str], parent: int, base: str) -> None:
        target = split_member_path(member.linkname, "hardlink target")
        if not target:
            raise ImageError(f"layer entry {member.name!r}: hardlink to the layer root")
        if target == parts:
            return  # a link to itself: nothing to do
        try:
            src_parent = os.dup(self.root.dir_fd(target[:-1], create=False))
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                             "is not in this layer") from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=src_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                                 "is not in this layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"layer entry {member.name!r}: hardlink to a directory {member.linkname!r}")
            parent = self.root.dir_fd(parts[:-1])
            try:
                existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                    return
                parent = self._clear(parts, parent, base)
            os.link(target[-1], base, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_parent)

    def whiteout(self, member: Member, parts: list[str]) -> None:
        base = parts[-1]
        if base.startswith(WHITEOUT_META_PREFIX):
            if base == WHITEOUT_OPAQUE:
                fd = self.root.dir_fd(parts[:-1])
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                except OSError as e:
                    raise ImageError(f"layer entry {member.name!r}: cannot mark the directory opaque "
                                     f"({OPAQUE_XATTR}): {e.strerror} (needs root and a filesystem "
                                     "with trusted xattrs)") from None
                return
            if base in _AUFS_META:
                return
            raise ImageError(f"layer entry {member.name!r}: malformed whiteout name {base!r}")
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            raise ImageError(f"layer entry {member.name!r}: malformed whiteout name {base!r}")
        parent = self.root.dir_fd(parts[:-1])
        if _remove_at(parent, name):
            self.root.forget()
            parent = self.root.dir_fd(parts[:-1])
        try:
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        except PermissionError:
            raise ImageError(f"layer entry {member.name!r}: creating an overlay whiteout "
                             "(a 0:0 character device) needs root") from None
        # the tar entry's time, so the same layer always unpacks to the same tree
        ns = member.mtime_ns
        os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes and mtimes, last (creating children changed them).

        Deepest-last entries first, so a parent losing its u+rwx (as non-root)
        does not lock us out of its children.
        """
        for parts, (mode, mtime_ns, chmod) in reversed(self.dirs.items()):
            try:
                if parts:
                    parent = self.root.dir_fd(parts[:-1], create=False)
                    fd = os.open(parts[-1], _O_DIR, dir_fd=parent)
                else:
                    fd = os.dup(self.root.fd)
            except OSError:
                continue  # replaced by a non-directory, or removed, later on
            try:
                if chmod:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)


def unpack(stream: BinaryIO, dest: str, same_owner: bool | None = None) -> str:
    """Extract the layer blob read from `stream` into the directory `dest`.

    Returns the diff_id ("sha256:<hex>" of the uncompressed tar). Raises
    ImageError for malformed or hostile archives; `dest` may then hold a
    partial tree (callers extract into a temporary directory).
    """
    if same_owner is None:
        same_owner = os.geteuid() == 0
    tar = _TarReader(tar_chunks(stream))
    ex = _Extractor(dest, same_owner)
    try:
        for member in tar.members():
            try:
                ex.entry(tar, member)
            except ImageError:
                raise
            except OSError as e:
                raise ImageError(f"layer entry {member.name!r}: {e.strerror or e}") from None
            except (ValueError, OverflowError) as e:  # a NUL in a name, a pax number past any range
                raise ImageError(f"layer entry {member.name!r}: {e}") from None
        tar.drain()
        ex.finish()
    except (ValueError, OverflowError) as e:  # from the headers themselves
        raise ImageError(f"layer is not a valid tar archive: {e}") from None
    finally:
        ex.close()
    return "sha256:" + tar.hash.hexdigest()


def unpack_file(path: str, dest: str, same_owner: bool | None = None) -> str:
    with open(path, "rb") as f:
        return unpack(f, dest, same_owner)
