"""Layer tar -> directory, confined to that directory, whiteouts in overlayfs form.

Our own extractor on purpose: tarfile's extraction filters have had bypasses
and reject the absolute symlink targets OS layers legitimately contain.
tarfile is used only to iterate members and read their data.

Confinement: every operation is relative to a directory file descriptor. A
member's parent path is walked one component at a time from the layer root
with O_NOFOLLOW; a symlink met on the way is resolved as if the layer root
were `/` (absolute targets restart at the root, `..` stops at the root), the
way `chroot` or openat2(RESOLVE_IN_ROOT) would. The final component is never
followed: it is created with O_EXCL / mkdirat / symlinkat / mknodat / linkat
(without AT_SYMLINK_FOLLOW) after whatever was there is removed. Member names
and hardlink targets containing `..` are rejected.

Whiteouts: `.wh.NAME` -> a 0:0 character device NAME, `.wh..wh..opq` ->
xattr trusted.overlay.opaque=y on the directory (aufs metadata `.wh..wh.plnk`
and friends is skipped, any other `.wh..wh.` name is rejected).

`unpack(stream, dest) -> diff_id`: `stream` is the layer blob (gzip, zstd or
plain tar, told apart by magic); the diff_id is the sha256 of the
uncompressed tar stream, read to its end.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
import zlib
from typing import BinaryIO

from hanok.runtime.errors import ImageError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
# aufs bookkeeping some old images carry: skipped, as docker does.
_AUFS_META = (".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph")
OPAQUE_XATTR = "trusted.overlay.opaque"
_CHUNK = 1 << 20
_MAX_SYMLINK_HOPS = 40
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ------------------------------------------------------------------ streams


class _HashingReader:
    """Reads from `raw`, hashing what passes through (the uncompressed tar)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _GzipReader:
    """Streaming gzip inflate (multi-member), truncation and corruption reported.

    tarfile reads in 10 KiB records: the inflated data is kept with a read
    offset, so a read copies only what it returns (no re-slicing of a
    multi-megabyte buffer per record).
    """

    def __init__(self, raw: BinaryIO, prefix: bytes):
        self.raw = raw
        self.pending = prefix
        self.inflate = zlib.decompressobj(wbits=31)
        self.buf = b""
        self.pos = 0
        self.eof = False

    def _fill(self) -> None:
        chunk = self.pending or self.raw.read(_CHUNK)
        self.pending = b""
        if not chunk:
            if not self.inflate.eof:
                raise ImageError("layer is truncated: the gzip stream ends early")
            self.eof = True
            return
        try:
            out = self.inflate.decompress(chunk)
            while self.inflate.eof and self.inflate.unused_data:
                rest = self.inflate.unused_data
                if not rest.strip(b"\0"):  # zero padding after the last member
                    break
                self.inflate = zlib.decompressobj(wbits=31)
                out += self.inflate.decompress(rest)
        except zlib.error as e:
            raise ImageError(f"layer is not valid gzip data: {e}") from None
        if out:
            self.buf = self.buf[self.pos:] + out if self.pos < len(self.buf) else out
            self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self.buf[self.pos:]]
            self.buf, self.pos = b"", 0
            while not self.eof:
                self._fill()
                parts.append(self.buf)
                self.buf, self.pos = b"", 0
            return b"".join(parts)
        while len(self.buf) - self.pos < n and not self.eof:
            self._fill()
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out


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


def decompressed(raw: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer blob (gzip/zstd/plain by magic)."""
    head = _read_exact(raw, 4)
    kind = compression_of(head)
    if kind == "gzip":
        return _GzipReader(raw, head)  # type: ignore[return-value]
    if kind == "zstd":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise ImageError("layer is zstd-compressed and the Python 'zstandard' module "
                             "is not installed (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(_Prefixed(raw, head))  # type: ignore[return-value]
    return _Prefixed(raw, head)  # type: ignore[return-value]


# ------------------------------------------------------------------ paths


def split_member_path(name: str, what: str = "path") -> list[str]:
    """Components of a member name relative to the layer root; `..` is rejected.

    Leading `/` and `./` are dropped (the root is the layer), empty and `.`
    components ignored.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer entry {name!r}: {what} contains '..' (would leave the layer)")
    if any("\0" in p for p in parts):
        raise ImageError(f"layer entry {name!r}: {what} contains a NUL byte")
    return parts


class Root:
    """A directory tree every operation of which stays inside it (dirfd based)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, _O_DIR)
        self._cache: dict[tuple[str, ...], int] = {}

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
        otherwise. The fd belongs to the cache: do not close it.
        """
        key = tuple(parts)
        fd = self._cache.get(key)
        if fd is not None:
            return fd
        fd = self._walk(list(parts), create)
        if len(self._cache) >= 64:
            self.forget()
        self._cache[key] = fd
        return fd

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
        """Open an existing regular file for reading, every symlink resolved in the root."""
        parts = split_member_path(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        for _ in range(_MAX_SYMLINK_HOPS):
            parent = self._walk(parts[:-1], create=False)
            try:
                try:
                    return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
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
    """Remove `name` (any type, directories recursively) under dir_fd; True if it existed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, _O_DIR, dir_fd=dir_fd)
        try:
            for entry in os.listdir(fd):
                _remove_at(fd, entry)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


# ------------------------------------------------------------------ extract


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            raw = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            import base64
            from urllib.parse import unquote

            name = unquote(key[len("LIBARCHIVE.xattr."):])
            raw = base64.b64decode(value + "=" * (-len(value) % 4))
        else:
            continue
        # overlayfs's own attributes would let a layer redirect lookups or fake
        # opaqueness/metacopy: only whiteouts in tar form may express those.
        if name.startswith("trusted.overlay.") or name.startswith("user.overlay."):
            continue
        out.append((name, raw))
    return out


class _Extractor:
    def __init__(self, dest: str, same_owner: bool):
        self.root = Root(dest)
        self.same_owner = same_owner
        self.dirs: dict[tuple[str, ...], tuple[int, float]] = {}

    def close(self) -> None:
        self.root.close()

    def _meta(self, fd: int, member: tarfile.TarInfo, mode: bool = True, times: bool = True) -> None:
        if self.same_owner:
            os.fchown(fd, member.uid, member.gid)
        if mode:
            os.fchmod(fd, member.mode & 0o7777)  # after chown: chown clears setuid
        for name, value in _xattrs(member):
            try:
                os.setxattr(fd, name, value)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise ImageError(f"layer entry {member.name!r}: cannot set xattr {name}: {e.strerror}") from None
        if times:
            ns = int(member.mtime * 1e9)
            os.utime(fd, ns=(ns, ns))

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_member_path(member.name)
        if not parts:  # the layer root itself ("./")
            if not member.isdir():
                raise ImageError(f"layer entry {member.name!r}: the layer root can only be a directory")
            self.dirs[()] = (member.mode & 0o7777, member.mtime)
            if self.same_owner:
                os.chown(self.root.fd, member.uid, member.gid)
            return
        base = parts[-1]
        for p in parts[:-1]:
            if p.startswith(WHITEOUT_PREFIX):
                if p in _AUFS_META:
                    return  # aufs bookkeeping, skipped as docker does
                raise ImageError(f"layer entry {member.name!r}: malformed whiteout name {p!r} "
                                 "(a whiteout cannot have children)")
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(member, parts)
            return
        try:
            parent = self.root.dir_fd(parts[:-1])
        except NotADirectoryError:
            raise ImageError(f"layer entry {member.name!r}: a parent is not a directory") from None
        existing = None
        try:
            existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            pass
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            self.root.forget()  # cached parents may have been resolved through it
            parent = self.root.dir_fd(parts[:-1])
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(base, dir_fd=parent)
                existing = None
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, _O_DIR, dir_fd=parent)
            try:
                self._meta(fd, member, mode=False, times=False)
            finally:
                os.close(fd)
            self.dirs[tuple(parts)] = (member.mode & 0o7777, member.mtime)
            return
        if member.islnk():
            self.hardlink(member, parts, parent, base)
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                _remove_at(parent, base)
                self.root.forget()
                parent = self.root.dir_fd(parts[:-1])
            else:
                os.unlink(base, dir_fd=parent)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            if self.same_owner:
                os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            ns = int(member.mtime * 1e9)
            os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            try:
                os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
            except PermissionError:
                raise ImageError(f"layer entry {member.name!r}: creating a device node needs root") from None
            fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                # O_PATH fds take fchown/fchmod only through /proc; use the name
                # under the (already confined) parent instead.
                if self.same_owner:
                    os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
                ns = int(member.mtime * 1e9)
                os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(fd)
        elif member.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                if member.size:
                    src = tar.extractfile(member)
                    assert src is not None
                    left = member.size
                    while left > 0:
                        chunk = src.read(min(_CHUNK, left))
                        if not chunk:
                            raise ImageError(f"layer entry {member.name!r}: data ends early (truncated layer)")
                        os.write(fd, chunk)
                        left -= len(chunk)
                self._meta(fd, member)
            finally:
                os.close(fd)
        else:
            raise ImageError(f"layer entry {member.name!r}: unsupported tar entry type {member.type!r}")

    def hardlink(self, member: tarfile.TarInfo, parts: list[str], parent: int, base: str) -> None:
        target = split_member_path(member.linkname, "hardlink target")
        if not target:
            raise ImageError(f"layer entry {member.name!r}: hardlink to the layer root")
        if target == parts:
            return  # a link to itself: nothing to do
        try:
            src_parent = self.root.dir_fd(target[:-1], create=False)
            st = os.stat(target[-1], dir_fd=src_parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                             "is not in this layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"layer entry {member.name!r}: hardlink to a directory {member.linkname!r}")
        try:
            existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                return
            if stat.S_ISLNK(existing.st_mode):
                self.root.forget()
                parent = self.root.dir_fd(parts[:-1])
                src_parent = self.root.dir_fd(target[:-1], create=False)
            if stat.S_ISDIR(existing.st_mode):
                _remove_at(parent, base)
                self.root.forget()
                parent = self.root.dir_fd(parts[:-1])
                src_parent = self.root.dir_fd(target[:-1], create=False)
            else:
                os.unlink(base, dir_fd=parent)
        os.link(target[-1], base, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)

    def whiteout(self, member: tarfile.TarInfo, parts: list[str]) -> None:
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
        ns = int(member.mtime * 1e9)
        os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes and mtimes, last: creating children changed them."""
        for parts, (mode, mtime) in self.dirs.items():
            try:
                if parts:
                    parent = self.root.dir_fd(parts[:-1], create=False)
                    fd = os.open(parts[-1], _O_DIR, dir_fd=parent)
                else:
                    fd = os.dup(self.root.fd)
            except OSError:
                continue  # replaced by a non-directory later on
            try:
                os.fchmod(fd, mode)
                ns = int(mtime * 1e9)
                os.utime(fd, ns=(ns, ns))
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
    reader = _HashingReader(decompressed(stream))
    ex = _Extractor(dest, same_owner)
    try:
        try:
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tar:  # type: ignore[arg-type]
                for member in tar:
                    try:
                        ex.entry(tar, member)
                    except ImageError:
                        raise
                    except OSError as e:
                        raise ImageError(f"layer entry {member.name!r}: {e.strerror or e}") from None
            reader.drain()
        except tarfile.TarError as e:
            raise ImageError(f"layer is not a valid tar archive: {e}") from None
        except EOFError:
            raise ImageError("layer is truncated: unexpected end of data") from None
        except zlib.error as e:
            raise ImageError(f"layer is not valid gzip data: {e}") from None
        ex.finish()
    finally:
        ex.close()
    return "sha256:" + reader.hash.hexdigest()


def unpack_file(path: str, dest: str, same_owner: bool | None = None) -> str:
    with open(path, "rb") as f:
        return unpack(f, dest, same_owner)
