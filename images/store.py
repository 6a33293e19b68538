"""The image store: content-addressed blobs, refs, unpacked layers, GC.

Layout under the root (default /var/lib/hanok, or $HANOK_ROOT):

    blobs/sha256/<hex>     manifests, configs, layer blobs; the name is the digest
    layers/<hex>/          a layer unpacked, named by the hex of its diff_id
                           (no ':' in the name: ':' separates overlay lowerdirs)
    images.json            {"refs": {"docker.io/library/alpine:latest": "sha256:<manifest>"}}
    tmp/                   ingests and unpacks in progress (same filesystem: rename)
    images.lock            flock: writers of images.json
    gc.lock                flock: shared by loads/pulls, exclusive by gc
    claims.lock            flock: shared while an operation records a claim, exclusive by a rollback
    claims/<pid>-<random>  one per pull/load/import in flight, flocked by it: the blobs and layers
                           it relies on, one "blob <digest>" or "layer <diff_id>" line each

Every write is atomic: a blob is written to tmp/, verified against its digest
and size while streaming, fsynced and renamed into place; a layer is unpacked
into tmp/, synced (one syncfs, not an fsync per file) and renamed into layers/
once its diff_id checked out. A partial never appears under a final name.
`ingest_layer` does both in one pass over a layer blob as it streams in (from
the network): hashed, written to tmp/, inflated, hashed again and extracted;
the blob and the layer are named only when both digests checked out.

Loads, pulls and imports run as an `operation()`: under gc.lock held shared,
so a concurrent `gc` (exclusive) cannot remove blobs they wrote but have not
referenced yet, and with claims so that they cannot break each
other. An operation claims every blob and layer before it looks whether it is
there (to reuse it) or writes it; a failed operation removes what it created
only under claims.lock held exclusively, and only what no image references and
no other operation in flight claims. So a layer that a failing pull created
and a concurrent pull found and reused stays; a claim made after a rollback
removed something finds it gone and fetches it again. A crashed operation's
claims die with its flock. Two pulls of the same image at once are safe (the
second rename of identical content wins harmlessly). Readers (`hanok run`)
take no lock and no claim.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

from hanok.images import reference as _reference
from hanok.runtime import jsonio
from hanok.runtime.errors import ImageError, NotFound

if False:  # typing only (typing ~2 ms, collections.abc ~1.5 ms on the `hanok run` hot path)
    from collections.abc import Iterable
    from typing import BinaryIO

DEFAULT_ROOT = "/var/lib/hanok"
GC_LOCK = "gc.lock"          # shared while an image is added, exclusive while gc runs
REFS_LOCK = "images.lock"    # around images.json

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
CONFIG_TYPES = (MT_OCI_CONFIG, MT_DOCKER_CONFIG)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def default_root() -> str:
    return os.environ.get("HANOK_ROOT") or DEFAULT_ROOT


def hex_of(digest: str) -> str:
    """The hex part of a sha256 digest, validated (ImageError otherwise)."""
    _reference.validate_digest(digest)
    return digest[len("sha256:"):]


def digest_of(data: bytes) -> str:
    """The sha256 digest of a (small) blob: manifests and configs, checked on every read.

    Python's own sha256 when built in: `import hashlib` loads OpenSSL (~2 ms on
    `hanok run`'s path), which pays only for large data (Ingest uses it).
    """
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return "sha256:" + sha256(data).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ingest:
    """A blob being written: `write()` chunks, then `commit()` or `abort()`.

    The digest and size are checked while streaming (a size overrun fails at
    once) and again at commit; the data lives in tmp/ until then. Used as a
    context manager, a clean exit commits and an exception aborts. Within an
    operation `op`, the commit claims the digest before it looks whether the
    blob is there, and a blob it puts in place is the operation's to undo.
    """

    def __init__(self, store: "Store", expected_digest: str | None, expected_size: int | None,
                 op: "Operation | None" = None):
        if expected_digest is not None:
            hex_of(expected_digest)
        if expected_size is not None and expected_size < 0:
            raise ImageError(f"invalid blob size {expected_size}")
        self.store = store
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.op = op
        import hashlib  # OpenSSL's sha256: the fastest for layers

        self.hash = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None
        self.created = False  # commit put a new blob in place (it was not there before)
        store.prepare()
        os.makedirs(store.tmp_dir, exist_ok=True)
        fd, self.tmp_path = _mkstemp(store.tmp_dir, "blob-")
        self._fd: int | None = fd
        fcntl.flock(fd, fcntl.LOCK_EX)  # gc leaves locked tmp files alone

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise ImageError("blob write after commit or abort")
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            what = self.expected_digest or "blob"
            self.abort()
            raise ImageError(f"blob {what}: more data than its expected size {self.expected_size}")
        self.hash.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def copy_from(self, src: BinaryIO) -> None:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            self.write(chunk)

    def verify(self) -> str:
        """Check size and digest of what was written so far (ImageError, and abort, if wrong).

        Lets a caller check the blob before committing something that depends
        on it (see Store.ingest_layer); commit() verifies again.
        """
        if self._fd is None:
            raise ImageError("blob verify after commit or abort")
        digest = "sha256:" + self.hash.hexdigest()
        try:
            if self.expected_size is not None and self.size != self.expected_size:
                raise ImageError(f"blob {self.expected_digest or digest} is truncated: "
                                 f"got {self.size} of {self.expected_size} bytes")
            if self.expected_digest is not None and digest != self.expected_digest:
                raise ImageError(f"blob digest mismatch: expected {self.expected_digest}, got {digest}")
        except BaseException:
            self.abort()
            raise
        return digest

    def commit(self) -> str:
        """Verify, fsync and rename into blobs/; returns the digest."""
        if self._fd is None:
            raise ImageError("blob commit after abort")
        digest = self.verify()
        try:
            os.fsync(self._fd)
            final = self.store.blob_path(digest)
            if self.op is not None:
                self.op.claim_blob(digest)
            self.created = not os.path.exists(final)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.chmod(self.tmp_path, 0o644)
            os.rename(self.tmp_path, final)
            if self.created and self.op is not None:
                self.op.created_blob(digest)
            _fsync_dir(os.path.dirname(final))
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        self.digest = digest
        return digest

    def abort(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _mkstemp(directory: str, prefix: str) -> tuple[int, str]:
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(8).hex())
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, path
    raise ImageError(f"cannot create a temporary file in {directory}")


class _Tee:
    """Reads from `raw`, passing every byte through an Ingest on the way (hash, size, tmp file)."""

    def __init__(self, raw: BinaryIO, ingest: Ingest, digest: str):
        self.raw = raw
        self.ingest = ingest
        self.digest = digest

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            try:
                self.ingest.write(data)
            except OSError as e:  # the store's disk
                raise ImageError(f"blob {self.digest}: cannot write to the store: {e.strerror or e}") from None
        return data

    def drain(self) -> None:
        """Read to the end: the blob is hashed and kept whole even when the extractor stopped early."""
        while self.read(_CHUNK):
            pass


# linux/fs.h: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (_IOR/_IOW('f', 1|2, long)) and FS_TOPDIR_FL
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def _spread_subdirs(path: str) -> None:
    """Mark `path` a top of directory hierarchies for ext2/3/4's Orlov allocator (`chattr +T`).

    Each layer is unpacked into its own new directory under tmp/; with the
    flag, ext4 places each such tree in a block group of its own choosing
    instead of crowding every layer into tmp/'s group. That matters most on
    an ext4 without a journal (this project's VMs), where allocating an inode
    skips, one by one, the inodes of the group deleted in the last minutes:
    right after a gc or an rmi, a pull into tmp/'s group paid ~225 us per
    file (1.7 s for a 7,000-file image) against ~11-50 us with the flag
    (0.6 s). Filesystems without the flag (xfs, btrfs, tmpfs) refuse it and
    nothing changes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], "little")
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(8, "little"))
    except OSError:
        pass  # not ext2/3/4 (or not allowed): the default placement, just slower there
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    """syncfs(2): write back everything of the filesystem holding `fd`.

    One call per unpacked layer instead of an fsync per file: a layer is named
    by its verified diff_id and never checked again, so it must not be
    renamed into place before its files' data is on disk (after a crash,
    delayed allocation would otherwise leave empty files under a trusted name).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Image:
    """One stored image: its manifest digest, manifest, config and layers."""

    def __init__(self, store: "Store", digest: str, names: list[str]):
        self.store = store
        self.digest = digest
        self.names = names
        self.manifest = store.read_json(digest)
        if not isinstance(self.manifest, dict):
            raise ImageError(f"manifest {digest} is not a JSON object")
        cfg = self.manifest.get("config") or {}
        self.config_digest: str = cfg.get("digest", "")
        config = store.read_json(self.config_digest)
        if config is not None and not isinstance(config, dict):
            raise ImageError(f"image config {self.config_digest} is not a JSON object")
        self.config: dict | None = config
        self.layers: list[dict] = list(self.manifest.get("layers") or [])
        self.diff_ids: list[str] = list(((self.config or {}).get("rootfs") or {}).get("diff_ids") or [])

    @property
    def id(self) -> str:
        """docker's image id: the config digest."""
        return self.config_digest

    @property
    def size(self) -> int:
        return sum(int(layer.get("size", 0)) for layer in self.layers)

    def layer_dirs(self) -> list[str]:
        """Unpacked layer directories, bottom first (reverse for lowerdir)."""
        return [self.store.layer_path(d) for d in self.diff_ids]

    def summary(self) -> dict:
        return {
            "names": list(self.names),
            "digest": self.digest,
            "id": self.id,
            "size": self.size,
            "created": (self.config or {}).get("created", ""),
            "architecture": (self.config or {}).get("architecture", ""),
            "os": (self.config or {}).get("os", ""),
        }

    def inspect(self) -> dict:
        out = self.summary()
        out.update({"manifest": self.manifest, "config": self.config,
                    "layers": [self.store.layer_path(d) for d in self.diff_ids]})
        return out


# The store's `with` blocks are small classes rather than @contextlib.contextmanager generators: importing
# contextlib (collections, functools) costs ~2.5 ms, a sixth of `hanok ps`, on every command that opens
# the store.

class _Flock:
    """flock(`kind`) on the store's lock file `name` for one `with` block.

    Subclasses add work done under the lock: `_begin` (the block gets what it
    returns; if it fails the lock goes at once) and `_end` (told whether the
    block failed; the lock goes after it, whatever it raises).
    """

    def __init__(self, store: Store, name: str, kind: int) -> None:
        store.prepare()
        self.path = os.path.join(store.root, name)
        self.kind = kind
        self.fd = -1

    def __enter__(self) -> object:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, self.kind)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        try:
            return self._begin()
        except BaseException:
            self._unlock()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            self._end(failed=exc_type is not None)
        finally:
            self._unlock()

    def _begin(self) -> object:
        return None

    def _end(self, failed: bool) -> None:
        pass

    def _unlock(self) -> None:
        os.close(self.fd)
        self.fd = -1


class _OperationScope(_Flock):
    """Store.operation(): the gc lock (shared) and an Operation; rolled back when the block fails."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, GC_LOCK, fcntl.LOCK_SH)   # keeps gc from removing blobs not yet referenced
        self.store = store
        self.op: Operation | None = None

    def _begin(self) -> Operation:
        self.op = Operation(self.store)
        return self.op

    def _end(self, failed: bool) -> None:
        assert self.op is not None
        try:
            if failed:
                self.op.rollback()
        finally:
            self.op.release()


class _RefsEdit(_Flock):
    """Store.edit_refs(): images.json read under its lock, written back if the block changed it."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, REFS_LOCK, fcntl.LOCK_EX)
        self.store = store
        self.refs: dict[str, str] = {}
        self.before: dict[str, str] = {}

    def _begin(self) -> dict[str, str]:
        self.refs = self.store._read_refs()
        self.before = dict(self.refs)
        return self.refs

    def _end(self, failed: bool) -> None:
        if not failed and self.refs != self.before:
            self.store._write_refs(self.refs)


class Operation:
    """One pull, load or import in flight: what it relies on (its claims) and what it created.

    Every blob and layer is claimed before the operation looks whether it is
    there (`has_blob`, `has_layer`, or the store's writers given `op=`): a
    claim is a line in the operation's own file under claims/, written under
    claims.lock held shared, and the file is flocked for the operation's life
    so a crashed process's claims stop counting. `rollback()` holds
    claims.lock exclusively while it reads the other live claim files and
    images.json and removes what this operation created that neither names:
    what it leaves to another operation is that one's to keep or undo. Use it
    through `Store.operation()`.
    """

    def __init__(self, store: "Store"):
        import threading  # only pulls and loads get here, never `hanok run`

        self.store = store
        self._mutex = threading.Lock()  # pull workers are threads; one flock per descriptor serves them all
        self._claimed: set[str] = set()
        self._created_blobs: list[str] = []
        self._created_layers: list[str] = []
        self._lock_fd: int | None = None  # claims.lock
        self._file_fd: int | None = None  # claims/<ours>, flocked exclusively
        self._file_path = ""

    def claim_blob(self, digest: str) -> None:
        """Rely on blob `digest` from now on: no other operation's rollback removes it."""
        self._claim(f"blob {digest}\n", digest)

    def claim_layer(self, diff_id: str) -> None:
        """Rely on layer `diff_id` from now on: no other operation's rollback removes it."""
        self._claim(f"layer {diff_id}\n", diff_id)

    def has_blob(self, digest: str) -> bool:
        """Claim, then look: a blob seen here stays for the operation's life."""
        self.claim_blob(digest)
        return self.store.has_blob(digest)

    def has_layer(self, diff_id: str) -> bool:
        """Claim, then look: a layer seen here stays for the operation's life."""
        self.claim_layer(diff_id)
        return self.store.has_layer(diff_id)

    def created_blob(self, digest: str) -> None:
        """This operation put blob `digest` in place (claimed first): a rollback may remove it."""
        with self._mutex:
            self._created_blobs.append(digest)

    def created_layer(self, diff_id: str) -> None:
        """This operation put layer `diff_id` in place (claimed first): a rollback may remove it."""
        with self._mutex:
            self._created_layers.append(diff_id)

    def _claim(self, line: str, digest: str) -> None:
        hex_of(digest)
        with self._mutex:
            if line in self._claimed:
                return
            lock = self._claims_lock()
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits while a rollback decides and removes
            try:
                if self._file_fd is None:
                    self._file_fd, self._file_path = self._new_claim_file()
                os.write(self._file_fd, line.encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            self._claimed.add(line)

    def _claims_lock(self) -> int:
        if self._lock_fd is None:
            self._lock_fd = self.store._open_claims_lock()
        return self._lock_fd

    def _new_claim_file(self) -> tuple[int, str]:
        """Our claim file, made and flocked under claims.lock: a rollback never sees it unlocked."""
        os.makedirs(self.store.claims_dir, mode=0o700, exist_ok=True)
        fd, path = _mkstemp(self.store.claims_dir, f"{os.getpid()}-")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd, path

    def rollback(self) -> None:
        """Remove what this operation created, except what an image or another live operation needs."""
        with self._mutex:
            layers, self._created_layers = self._created_layers[::-1], []
            blobs, self._created_blobs = self._created_blobs[::-1], []
        if not layers and not blobs:
            return
        aside: list[str] = []
        lock = self._claims_lock()
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            claimed = self.store._live_claims(exclude=self._file_path)
            try:
                # read after the claims: an operation that tagged and ended meanwhile tagged first
                referenced_blobs, referenced_layers = self.store.referenced()
            except ImageError:
                return  # images.json unreadable: keeping everything is the safe side
            for diff_id in layers:
                if f"layer {diff_id}\n" not in claimed and diff_id not in referenced_layers:
                    try:
                        moved = self.store._move_layer_aside(diff_id)
                        if moved is not None:
                            aside.append(moved)
                    except OSError:
                        pass
            for digest in blobs:
                if f"blob {digest}\n" not in claimed and digest not in referenced_blobs:
                    self.store.remove_blob(digest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            for path in aside:  # slow for big layers: outside the lock, which claims wait for
                _rmtree(path)

    def release(self) -> None:
        """End the operation: its claims stop counting (call after rollback, if any)."""
        with self._mutex:
            if self._file_fd is not None:
                try:
                    os.unlink(self._file_path)
                except FileNotFoundError:
                    pass
                os.close(self._file_fd)
                self._file_fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._claimed.clear()


class Store:
    """The image store under `root` (see the module docstring)."""

    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(root or default_root())
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.claims_dir = os.path.join(self.root, "claims")
        self.refs_path = os.path.join(self.root, "images.json")

    def prepare(self) -> None:
        """Make the store's root, private to root (0700), tightening an existing one.

        Layers keep the setuid files of their images and containers' upper
        directories what containers write (a container can make its own
        setuid-root file): another host user must not be able to reach and run
        them (Docker's CVE-2021-41091). Overlay lookups in the lower layers run
        with the mounter's credentials, so containers do not need the access.
        """
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    # -------------------------------------------------------------- locks

    def _flock(self, name: str, kind: int) -> _Flock:
        return _Flock(self, name, kind)

    def operation(self) -> _OperationScope:
        """A pull, load or import: gc.lock (shared) plus claims; a failure rolls back what it created.

        `with store.operation() as op:` — pass the Operation to the writers (`ingest`, `unpack_layer`,
        ...) and ask it, not the store, whether a blob or layer is there (see Operation).
        """
        return _OperationScope(self)

    def _open_claims_lock(self) -> int:
        self.prepare()
        return os.open(os.path.join(self.root, "claims.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _live_claims(self, exclude: str = "") -> set[str]:
        """The claim lines of every operation in flight but `exclude`; removes those of dead ones.

        Call with claims.lock held exclusively: then no claim file is half-made.
        A file whose flock we can take has no live owner left.
        """
        try:
            names = os.listdir(self.claims_dir)
        except FileNotFoundError:
            return set()
        lines: set[str] = set()
        for name in names:
            path = os.path.join(self.claims_dir, name)
            if path == exclude:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # its operation ended just now (after tagging, if it did)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    with os.fdopen(os.dup(fd), "rb") as f:
                        lines.update(line.decode(errors="replace") for line in f)
                    continue
                try:
                    os.unlink(path)  # a crashed operation's claims
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return lines

    # -------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, hex_of(digest))

    def has_blob(self, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def ingest(self, expected_digest: str | None = None, expected_size: int | None = None,
               op: Operation | None = None) -> Ingest:
        """A writer for one blob (see Ingest); `with store.ingest(d, n) as w: w.write(...)`."""
        return Ingest(self, expected_digest, expected_size, op)

    def put_bytes(self, data: bytes, expected_digest: str | None = None, op: Operation | None = None) -> str:
        with self.ingest(expected_digest, len(data) if expected_digest else None, op) as w:
            w.write(data)
        assert w.digest is not None
        return w.digest

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not in the store") from None

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config), re-verified against its digest."""
        with self.open_blob(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"blob {digest} is larger than {limit} bytes")
        if digest_of(data) != digest:
            raise ImageError(f"blob {digest} in the store is corrupt (digest mismatch)")
        return data

    def read_json(self, digest: str) -> object:
        data = self.read_blob(digest)
        try:
            return jsonio.loads(data)
        except ValueError as e:
            raise ImageError(f"blob {digest} is not valid JSON: {e}") from None

    def remove_blob(self, digest: str) -> bool:
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    def blobs(self) -> list[str]:
        try:
            names = os.listdir(self.blobs_dir)
        except FileNotFoundError:
            return []
        return ["sha256:" + n for n in names if len(n) == 64 and set(n) <= _HEX]

    # -------------------------------------------------------------- layers

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, hex_of(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_path(diff_id))

    def layers(self) -> list[str]:
        try:
            names = os.listdir(self.layers_dir)
        except FileNotFoundError:
            return []
        return ["sha256:" + n for n in names if len(n) == 64 and set(n) <= _HEX]

    def _layer_tmp(self) -> tuple[str, int]:
        """A new directory in tmp/ to unpack a layer into, and its fd, flocked so gc leaves it alone."""
        self.prepare()
        os.makedirs(self.tmp_dir, exist_ok=True)
        _spread_subdirs(self.tmp_dir)
        os.makedirs(self.layers_dir, exist_ok=True)
        tmp = os.path.join(self.tmp_dir, "layer-" + os.urandom(8).hex())
        os.mkdir(tmp, 0o755)
        lock = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except BaseException:
            os.close(lock)
            os.rmdir(tmp)
            raise
        return tmp, lock

    def _install_layer(self, tmp: str, diff_id: str) -> bool:
        """Rename a synced, verified tree to layers/<diff_id>; False if another unpack won."""
        try:
            os.rename(tmp, self.layer_path(diff_id))
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            _rmtree(tmp)  # another unpack of the same layer won
            return False
        _fsync_dir(self.layers_dir)
        return True

    def unpack_layer_stream(self, stream: BinaryIO, diff_id: str, op: Operation | None = None) -> tuple[str, bool]:
        """Unpack a layer blob read from `stream` into layers/<diff_id>.

        Extracted into tmp/ and renamed into place only when the uncompressed
        stream hashes to `diff_id`. Returns (path, created); a layer already
        present is skipped (created False; the stream is not read). Within an
        operation `op` the layer is claimed first and, if created, its to undo.
        """
        from hanok.images import unpack as _unpack

        final = self.layer_path(diff_id)
        if op is not None:
            op.claim_layer(diff_id)
        if os.path.isdir(final):
            return final, False
        tmp, lock = self._layer_tmp()
        try:
            try:
                got = _unpack.unpack(stream, tmp)
                if got != diff_id:
                    raise ImageError(f"layer diff_id mismatch: the image config says {diff_id}, "
                                     f"the layer's content is {got}")
                os.fchmod(lock, 0o755)
                _syncfs(lock)
                created = self._install_layer(tmp, diff_id)
                if created and op is not None:
                    op.created_layer(diff_id)
                return final, created
            except BaseException:
                _rmtree(tmp)
                raise
        finally:
            os.close(lock)

    def unpack_layer(self, blob_digest: str, diff_id: str, op: Operation | None = None) -> tuple[str, bool]:
        """Unpack a stored layer blob (see unpack_layer_stream)."""
        if op is not None:
            op.claim_layer(diff_id)
            op.claim_blob(blob_digest)
        if os.path.isdir(self.layer_path(diff_id)):
            return self.layer_path(diff_id), False
        with self.open_blob(blob_digest) as f:
            try:
                return self.unpack_layer_stream(f, diff_id, op)
            except ImageError as e:
                raise ImageError(f"layer {blob_digest}: {e}") from None

    def ingest_layer(self, stream: BinaryIO, digest: str, size: int, diff_id: str,
                     op: Operation | None = None) -> tuple[bool, bool]:
        """Store a layer blob read from `stream` and unpack it, in one pass; (blob created, layer created).

        Every byte read is hashed and written to a tmp file, inflated, hashed
        again and extracted into a tmp directory. Only when the blob matches
        `digest` and `size` and its content `diff_id` is anything named: the
        layer synced, the blob committed, then the layer renamed into place.
        A mismatch, a bad archive or an interruption leaves neither. A bad
        archive is reported after reading the blob to its end: a digest
        mismatch, if there is one, is the cause to report. A layer already
        present is not unpacked again (the blob is still stored). Within an
        operation `op` both are claimed first and what is created is its to undo.
        """
        from hanok.images import unpack as _unpack

        w = self.ingest(digest, size, op)
        tee = _Tee(stream, w, digest)
        try:
            if op is not None:
                op.claim_layer(diff_id)
            if os.path.isdir(self.layer_path(diff_id)):
                tee.drain()
                w.commit()
                return w.created, False
            tmp, lock = self._layer_tmp()
            try:
                try:
                    got = _unpack.unpack(tee, tmp)  # type: ignore[arg-type]
                except ImageError as e:
                    tee.drain()
                    w.verify()
                    raise ImageError(f"layer {digest}: {e}") from None
                tee.drain()
                w.verify()
                if got != diff_id:
                    raise ImageError(f"layer {digest}: layer diff_id mismatch: the image config says {diff_id}, "
                                     f"the layer's content is {got}")
                os.fchmod(lock, 0o755)
                _syncfs(lock)  # the blob's and the layer's data, before either gets its name
                w.commit()
                try:
                    created = self._install_layer(tmp, diff_id)
                except BaseException:
                    if w.created and op is None:  # an operation's rollback decides for it
                        self.remove_blob(digest)
                    raise
                if created and op is not None:
                    op.created_layer(diff_id)
                return w.created, created
            except BaseException:
                if os.path.lexists(tmp):
                    _rmtree(tmp)
                raise
            finally:
                os.close(lock)
        finally:
            w.abort()  # no-op after a commit

    def remove_layer(self, diff_id: str) -> bool:
        aside = self._move_layer_aside(diff_id)
        if aside is None:
            return False
        _rmtree(aside)
        return True

    def _move_layer_aside(self, diff_id: str) -> str | None:
        """Rename layers/<diff_id> into tmp/ (None if absent): a half-removed layer never sits under its name."""
        path = self.layer_path(diff_id)
        if not os.path.isdir(path):
            return None
        os.makedirs(self.tmp_dir, exist_ok=True)
        aside = os.path.join(self.tmp_dir, "rm-" + os.urandom(8).hex())
        os.rename(path, aside)
        return aside

    # -------------------------------------------------------------- refs

    def _read_refs(self) -> dict[str, str]:
        try:
            with open(self.refs_path, "rb") as f:
                data = jsonio.loads(f.read())
        except FileNotFoundError:
            return {}
        except ValueError as e:  # includes UnicodeDecodeError
            raise ImageError(f"{self.refs_path} is corrupt: {e}") from None
        refs = data.get("refs") if isinstance(data, dict) else None
        return dict(refs) if isinstance(refs, dict) else {}

    def _write_refs(self, refs: dict[str, str]) -> None:
        self.prepare()
        fd, tmp = _mkstemp(self.root, ".images.json.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(jsonio.dumps({"refs": dict(sorted(refs.items()))}, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.refs_path)
            _fsync_dir(self.root)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def edit_refs(self) -> _RefsEdit:
        """Read-modify-write images.json under its lock: `with store.edit_refs() as refs:`, changed refs
        are written when the block ends without an error."""
        return _RefsEdit(self)

    def refs(self) -> dict[str, str]:
        return self._read_refs()

    @staticmethod
    def canonical(name: str) -> str:
        """`alpine` -> `docker.io/library/alpine:latest` (digest-only refs keep @digest)."""
        return str(_reference.parse(name))

    def tag(self, name: str, manifest_digest: str) -> str:
        """Point `name` at a stored manifest; returns the canonical name."""
        hex_of(manifest_digest)
        if not self.has_blob(manifest_digest):
            raise NotFound(f"manifest {manifest_digest} not in the store")
        canonical = self.canonical(name)
        with self.edit_refs() as refs:
            refs[canonical] = manifest_digest
        return canonical

    def resolve(self, name: str) -> str:
        """A manifest digest for a name, full digest, or id/digest prefix (>= 12 hex)."""
        refs = self._read_refs()
        if name.startswith("sha256:") and len(name) == 71:
            if self.has_blob(name):
                return name
        try:
            canonical = self.canonical(name)
        except ImageError:
            canonical = None
        if canonical is not None and canonical in refs:
            return refs[canonical]
        if canonical is not None and "@" in canonical:
            digest = canonical.split("@", 1)[1]
            if self.has_blob(digest):
                return digest
        prefix = name[len("sha256:"):] if name.startswith("sha256:") else name
        if len(prefix) >= 12 and set(prefix) <= _HEX:
            hits = set()
            for digest in set(refs.values()):
                if digest[7:].startswith(prefix):
                    hits.add(digest)
                else:
                    try:
                        if Image(self, digest, []).id[7:].startswith(prefix):
                            hits.add(digest)
                    except (ImageError, NotFound):
                        pass
            if len(hits) == 1:
                return hits.pop()
            if len(hits) > 1:
                raise ImageError(f"image id prefix {name!r} is ambiguous")
        raise NotFound(f"image not known: {name}")

    def image(self, name: str) -> Image:
        digest = self.resolve(name)
        names = sorted(n for n, d in self._read_refs().items() if d == digest)
        return Image(self, digest, names)

    def list_images(self) -> list[dict]:
        by_digest: dict[str, list[str]] = {}
        for name, digest in self._read_refs().items():
            by_digest.setdefault(digest, []).append(name)
        out = []
        for digest, names in by_digest.items():
            try:
                out.append(Image(self, digest, sorted(names)).summary())
            except (ImageError, NotFound) as e:
                out.append({"names": sorted(names), "digest": digest, "error": str(e)})
        return sorted(out, key=lambda i: i["names"])

    def inspect(self, name: str) -> dict:
        return self.image(name).inspect()

    def remove(self, name: str) -> list[str]:
        """Untag: a name removes that ref; a digest or id removes every ref to it.

        Returns the names removed. Blobs and layers go at the next gc().
        """
        digest = self.resolve(name)
        try:
            canonical = self.canonical(name)
        except ImageError:
            canonical = None
        with self.edit_refs() as refs:
            if canonical is not None and refs.get(canonical) == digest:
                removed = [canonical]
            else:
                removed = [n for n, d in refs.items() if d == digest]
            for n in removed:
                del refs[n]
        return removed

    # -------------------------------------------------------------- gc

    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, layer diff_ids) reachable from the refs."""
        blobs: set[str] = set()
        layers: set[str] = set()
        for digest in set(self._read_refs().values()):
            self._mark(digest, blobs, layers, depth=0)
        return blobs, layers

    def _mark(self, digest: str, blobs: set[str], layers: set[str], depth: int) -> None:
        blobs.add(digest)
        if depth > 2 or not self.has_blob(digest):
            return
        try:
            doc = self.read_json(digest)
        except (ImageError, NotFound):
            return
        if not isinstance(doc, dict):
            return
        for sub in doc.get("manifests") or []:
            if isinstance(sub, dict) and isinstance(sub.get("digest"), str):
                if self.has_blob(sub["digest"]):
                    self._mark(sub["digest"], blobs, layers, depth + 1)
        cfg = doc.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
            blobs.add(cfg["digest"])
            try:
                config = self.read_json(cfg["digest"])
                if isinstance(config, dict):
                    layers.update(d for d in (config.get("rootfs") or {}).get("diff_ids") or []
                                  if isinstance(d, str))
            except (ImageError, NotFound):
                pass
        for layer in doc.get("layers") or []:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                blobs.add(layer["digest"])

    def gc(self, in_use_layers: Iterable[str] = ()) -> dict:
        """Remove blobs and layers no image references.

        `in_use_layers`: diff_ids (or their hex) that containers still use;
        they are kept even when no image references them any more. Also
        clears tmp/ and claims/ leftovers of crashed writers (never a locked one).
        """
        keep_layers = {d if d.startswith("sha256:") else "sha256:" + d for d in in_use_layers}
        removed_blobs: list[str] = []
        removed_layers: list[str] = []
        freed = 0
        with self._flock(GC_LOCK, fcntl.LOCK_EX):
            with self._flock(REFS_LOCK, fcntl.LOCK_SH):
                blobs, layers = self.referenced()
            layers |= keep_layers
            for digest in self.blobs():
                if digest not in blobs:
                    try:
                        freed += os.lstat(self.blob_path(digest)).st_size
                    except FileNotFoundError:
                        pass
                    if self.remove_blob(digest):
                        removed_blobs.append(digest)
            for diff_id in self.layers():
                if diff_id not in layers and self.remove_layer(diff_id):
                    removed_layers.append(diff_id)
            self._clean_tmp()
            with self._flock("claims.lock", fcntl.LOCK_EX):
                self._live_claims()  # drops the claim files crashed operations left
        return {"blobs": removed_blobs, "layers": removed_layers, "bytes": freed}

    def _clean_tmp(self) -> None:
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.tmp_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a writer is still at work
                if os.path.isdir(path) and not os.path.islink(path):
                    _rmtree(path)
                else:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            finally:
                os.close(fd)


def _rmtree(path: str) -> None:
    """Remove a tree we made (read-only dirs, device nodes, any depth: see unpack.remove_tree)."""
    from hanok.images.unpack import remove_tree

    try:
        remove_tree(path)
    except FileNotFoundError:
        pass


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
