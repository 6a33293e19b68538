"""Images without the internet: store, OCI layout / docker-archive load, unpack, overlay.

The test image is built here from /bin/busybox in three hand-written layers
(gzip, plain tar, gzip): a file deleted in an upper layer (whiteout), an
opaque directory, hardlinks, relative and absolute symlinks, a file replaced
by a directory and a directory replaced by a file, a setuid binary, a device
node, an xattr, owners other than root. It is written as an OCI layout,
loaded into a temporary store, unpacked, mounted with overlayfs, and the
merged tree is compared with `umoci unpack` of the same layout.

Needs root (device nodes, whiteouts, trusted xattrs, mount). umoci and skopeo
(Debian packages) are used when installed; the tests that need them skip
with the reason otherwise.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hanok.images import archive, overlay, unpack
from hanok.images.store import Store
from hanok.runtime.errors import HanokError, ImageError

BUSYBOX = Path("/bin/busybox")
UMOCI = shutil.which("umoci")
SKOPEO = shutil.which("skopeo")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci not installed (Debian: apt-get install umoci)")

PASSWD = "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nwheel:x:10:tester\nusers:x:100:tester,nobody\ntester:x:1000:\nnogroup:x:65534:\n"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MTIME = 1_650_000_000


# ------------------------------------------------------------------ building images


def tar_bytes(entries: list[tuple]) -> bytes:
    """("file", name, data, mode=0o644, uid=0, gid=0, pax={}), ("dir", name, mode=0o755, uid, gid),
    ("sym", name, target), ("hard", name, target), ("chr", name, major, minor)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *args in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if kind == "file":
                data = args[0]
                info.size = len(data)
                info.mode = args[1] if len(args) > 1 else 0o644
                if len(args) > 2:
                    info.uid, info.gid = args[2], args[3]
                if len(args) > 4:
                    info.pax_headers = args[4]
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = args[0] if args else 0o755
                if len(args) > 1:
                    info.uid, info.gid = args[1], args[2]
            elif kind == "sym":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, args[0], 0o777
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, args[0]
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = args[0], args[1]
                info.mode = 0o666
            tar.addfile(info)
    return buf.getvalue()


def busybox_layers() -> list[bytes]:
    """The three uncompressed layer tars of the test image."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    l1 = [("dir", "./"), ("dir", "bin"), ("file", "bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    l1 += [("sym", f"bin/{a}", "busybox") for a in applets if a != "busybox"]
    l1 += [
        ("dir", "etc"), ("file", "etc/passwd", PASSWD.encode()), ("file", "etc/group", GROUP.encode()),
        ("file", "etc/deleteme", b"bye\n"), ("file", "etc/motd", b"v1\n"),
        ("dir", "tmp", 0o1777), ("dir", "home"), ("dir", "home/tester", 0o750, 1000, 1000),
        ("file", "home/tester/f", b"mine\n", 0o600, 1000, 1000),
        ("dir", "opq"), ("file", "opq/a", b"a\n"), ("file", "opq/b", b"b\n"),
        ("file", "replaced", b"i am a file\n"),
        ("dir", "dir2"), ("file", "dir2/x", b"x\n"),
        ("dir", "hard"), ("file", "hard/orig", b"hard\n"), ("hard", "hard/link", "hard/orig"),
        ("sym", "abs-link", "/bin/busybox"), ("sym", "rel-link", "bin/busybox"),
        ("sym", "dangling", "/nonexistent"),
        ("file", "bin/suid", b"suid\n", 0o4755), ("file", "bin/sgid", b"sgid\n", 0o2711, 0, 10),
        ("dir", "dev"), ("chr", "dev/null", 1, 3),
        ("file", "xattr-file", b"x\n", 0o644, 0, 0, {"SCHILY.xattr.user.test": "hello"}),
    ]
    l2 = [
        ("dir", "etc"), ("file", "etc/.wh.deleteme", b""), ("file", "etc/motd", b"v2\n", 0o600),
        ("dir", "opq"), ("file", "opq/.wh..wh..opq", b""), ("file", "opq/c", b"c\n"),
        ("file", "twice", b"first\n"), ("file", "twice", b"second\n"),
        ("dir", "hard2"), ("file", "hard2/a", b"2\n"), ("hard", "hard2/b", "hard2/a"),
    ]
    l3 = [
        ("dir", "replaced"), ("file", "replaced/inner", b"now a dir\n"),
        ("file", "dir2", b"now a file\n"),
        ("dir", "newdir"), ("dir", "newdir/deep"), ("file", "newdir/deep/file", b"deep\n"),
        ("sym", "rel-link", "etc/motd"),
    ]
    return [tar_bytes(l1), tar_bytes(l2), tar_bytes(l3)]


def _put_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_layout(layout: Path, layers: list[bytes], tag: str = "test", compress: tuple[bool, ...] = (),
                 config: dict | None = None, platform: dict | None = None,
                 index_platforms: list[dict] | None = None) -> dict:
    """An OCI image layout with one image; returns {"manifest": digest, "diff_ids": [...]}.

    `index_platforms`: wrap the manifest in a nested image index listing it
    for the first platform and junk manifests for the others.
    """
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs, diff_ids = [], []
    for i, tar in enumerate(layers):
        gz = compress[i] if i < len(compress) else i % 2 == 0
        blob = gzip.compress(tar, 6, mtime=0) if gz else tar
        descs.append({"mediaType": MT_LAYER_GZ if gz else MT_LAYER, **_put_blob(layout, blob)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    plat = platform or archive.host_platform()
    cfg = {"created": "2024-01-01T00:00:00Z", "architecture": plat["architecture"], "os": plat["os"],
           "config": config if config is not None else {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                **_put_blob(layout, json.dumps(cfg).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg_desc, "layers": descs}
    man = _put_blob(layout, json.dumps(manifest).encode())
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    if index_platforms:
        subs = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **man, "platform": index_platforms[0]}]
        for p in index_platforms[1:]:
            subs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "digest": "sha256:" + "0" * 64, "size": 1, "platform": p})
        inner = _put_blob(layout, json.dumps({"schemaVersion": 2, "mediaType":
                                              "application/vnd.oci.image.index.v1+json",
                                              "manifests": subs}).encode())
        entry = {"mediaType": "application/vnd.oci.image.index.v1+json", **inner,
                 "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return {"manifest": man["digest"], "diff_ids": diff_ids, "layers": descs}


def write_zstd_layout(layout: Path, layers: list[bytes], tag: str = "test") -> dict:
    """write_layout with every layer compressed by zstandard, as write_layout's result.

    The first layer is two zstd frames and the last ends with a skippable
    frame (as zstd:chunked layers do), which a decompressor must read across.
    """
    import zstandard

    write_layout(layout, layers, tag=tag, compress=(False,) * len(layers))
    zstd = zstandard.ZstdCompressor(level=3)
    blobs = [zstd.compress(tar) for tar in layers]
    half = len(layers[0]) // 2
    blobs[0] = zstd.compress(layers[0][:half]) + zstd.compress(layers[0][half:])
    skippable = b"hanok test metadata"
    blobs[-1] += (0x184D2A50).to_bytes(4, "little") + len(skippable).to_bytes(4, "little") + skippable
    descs = [{"mediaType": MT_LAYER_ZSTD, **_put_blob(layout, blob)} for blob in blobs]
    _rewrite_manifest(layout, lambda m: {**m, "layers": descs})
    for tar in layers:  # the uncompressed blobs write_layout left, now referenced by nothing
        (layout / "blobs" / "sha256" / hashlib.sha256(tar).hexdigest()).unlink(missing_ok=True)
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return {"manifest": manifest, "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers],
            "layers": descs}


def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for entry in sorted(os.listdir(src)):
            tar.add(src / entry, arcname=entry)
    return dest


def store_listing(root: Path) -> dict[str, tuple]:
    """Every path in the store with type, size and digest of content (lock files aside)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if rel.endswith(".lock"):
                continue
            st = os.lstat(p)
            h = hashlib.sha256(Path(p).read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_size if h else 0, h)
    return out


def tree(root: Path, mtimes: bool = True) -> dict[str, tuple]:
    """What `umoci unpack` and our merged mount must agree on, per path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            mtime = int(st.st_mtime) if mtimes and not stat.S_ISDIR(st.st_mode) else None
            out[os.path.relpath(p, root)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, mtime)
    return out


def diff_trees(a: dict, b: dict) -> list[str]:
    problems = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            problems.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return problems


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    path = Path(os.environ.get("HANOK_TEST_TMP", "/var/tmp")) / f"hanok-images-{os.getpid()}"
    path.mkdir(parents=True)
    yield path
    _assert_no_mounts(path)
    shutil.rmtree(path, ignore_errors=True)


def _assert_no_mounts(path: Path) -> None:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    assert not left, f"mounts left behind: {left}"


@pytest.fixture(scope="module")
def layers() -> list[bytes]:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    return busybox_layers()


@pytest.fixture(scope="module")
def layout(work: Path, layers: list[bytes]) -> tuple[Path, dict]:
    path = work / "layout"
    info = write_layout(path, layers)
    return path, info


@pytest.fixture
def tmp(work: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A per-test directory on a real filesystem (overlay upper dirs cannot be on overlay)."""
    path = work / f"t{len(os.listdir(work))}-{request.node.name[:40]}".replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir()
    yield path
    _assert_no_mounts(path)


@pytest.fixture
def store(tmp: Path) -> Store:
    return Store(str(tmp / "store"))


class Mounts:
    def __init__(self) -> None:
        self.targets: list[str] = []

    def mount(self, lowers: list[str], base: Path) -> Path:
        for d in ("upper", "work", "merged"):
            (base / d).mkdir(parents=True)
        self.targets.append(str(base / "merged"))
        overlay.mount(lowers, str(base / "upper"), str(base / "work"), str(base / "merged"))
        return base / "merged"

    def close(self) -> None:
        for t in reversed(self.targets):
            overlay.unmount(t)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


# ------------------------------------------------------------------ load, unpack, mount


def test_load_unpack_mount_matches_umoci(layout: tuple[Path, dict], store: Store, tmp: Path,
                                         mounts: Mounts) -> None:
    path, info = layout
    t0 = time.perf_counter()
    names = archive.load(store, str(path), name="localhost/test")
    load_s = time.perf_counter() - t0
    assert names == ["localhost/test:test"]
    img = store.image("localhost/test:test")
    assert img.digest == info["manifest"] and img.diff_ids == info["diff_ids"]
    for d in info["diff_ids"]:
        assert store.has_layer(d)
    merged = mounts.mount(list(reversed(img.layer_dirs())), tmp / "c1")
    print(f"\nload of the 3-layer busybox test image: {load_s * 1000:.0f} ms")

    # what the layers say, through the overlay
    assert not (merged / "etc/deleteme").exists()
    assert sorted(os.listdir(merged / "opq")) == ["c"]
    assert (merged / "etc/motd").read_text() == "v2\n"
    assert (merged / "twice").read_text() == "second\n"
    assert (merged / "replaced/inner").read_text() == "now a dir\n"
    assert (merged / "dir2").read_text() == "now a file\n"
    assert os.readlink(merged / "abs-link") == "/bin/busybox"
    assert os.readlink(merged / "rel-link") == "etc/motd"
    assert os.lstat(merged / "hard/orig").st_ino == os.lstat(merged / "hard/link").st_ino
    assert stat.S_IMODE(os.lstat(merged / "bin/suid").st_mode) == 0o4755
    assert os.lstat(merged / "home/tester/f").st_uid == 1000
    assert os.getxattr(merged / "xattr-file", "user.test") == b"hello"
    out = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", "echo hi from $(cat /etc/motd)"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "hi from v2\n", out.stderr

    if UMOCI is None:
        pytest.skip("umoci not installed (Debian: apt-get install umoci): cross-check skipped")
    bundle = tmp / "umoci-bundle"
    subprocess.run([UMOCI, "unpack", "--image", f"{path}:test", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    expected = tree(bundle / "rootfs")
    got = tree(merged)
    assert diff_trees(got, expected) == []
    assert os.lstat(bundle / "rootfs/hard/orig").st_ino == os.lstat(bundle / "rootfs/hard/link").st_ino


def test_two_containers_from_one_image_are_isolated(layout: tuple[Path, dict], store: Store, tmp: Path,
                                                   mounts: Mounts) -> None:
    path, _ = layout
    archive.load(store, str(path), name="localhost/test")
    img = store.image("localhost/test:test")
    lowers = list(reversed(img.layer_dirs()))
    before = tree(Path(store.layers_dir))
    a = mounts.mount(lowers, tmp / "a")
    b = mounts.mount(lowers, tmp / "b")
    (a / "etc/motd").write_text("changed in a\n")
    (a / "new-in-a").write_text("a\n")
    os.unlink(a / "etc/passwd")
    os.chmod(a / "bin/suid", 0o755)
    assert (b / "etc/motd").read_text() == "v2\n"
    assert not (b / "new-in-a").exists()
    assert (b / "etc/passwd").exists()
    assert stat.S_IMODE(os.lstat(b / "bin/suid").st_mode) == 0o4755
    assert (tmp / "a/upper/new-in-a").exists()  # the write went to a's own upper layer
    assert tree(Path(store.layers_dir)) == before  # and never into a shared layer


def test_many_layers_with_long_paths_still_mount(work: Path, tmp: Path, mounts: Mounts) -> None:
    deep = tmp / ("long-directory-name-" * 6) / ("another-long-directory-" * 5)
    store = Store(str(deep / "store"))
    n = 64
    tars = [tar_bytes([("file", f"l{i}", b"%d\n" % i), ("file", "top", b"%d\n" % i)]) for i in range(n)]
    write_layout(tmp / "many", tars, tag="many")
    archive.load(store, str(tmp / "many"), name="localhost/many")
    img = store.image("localhost/many:many")
    lowers = list(reversed(img.layer_dirs()))
    assert len(lowers) == n
    upper_base = deep / ("container-" * 10)
    assert len(overlay.options(lowers, str(upper_base / "upper"), str(upper_base / "work"))) > 4096
    cwd, opts, links = overlay.plan(lowers, str(upper_base / "upper"), str(upper_base / "work"))
    assert links is not None and len(opts) <= 4095  # too long even relative: short links
    merged = mounts.mount(lowers, upper_base)
    assert (merged / "top").read_text() == f"{n - 1}\n"
    assert sorted(os.listdir(merged)) == sorted(["top"] + [f"l{i}" for i in range(n)])
    assert not [p for p in os.listdir(upper_base.parent) if p.startswith(".l-")]  # links cleaned up
    # fewer layers under a long common parent: relative lowerdirs with a chdir
    lowers40 = lowers[:40]
    assert len(overlay.options(lowers40, "/u", "/w")) > 4095
    cwd, opts, links = overlay.plan(lowers40, "/u", "/w")
    assert cwd == store.layers_dir and links is None
    merged40 = mounts.mount(lowers40, deep / "c40")
    assert (merged40 / "top").read_text() == f"{n - 1}\n" and not (merged40 / "l0").exists()


def test_explain_prints_the_mount(layout: tuple[Path, dict], store: Store, tmp: Path, mounts: Mounts) -> None:
    from hanok.runtime import explain

    archive.load(store, str(layout[0]), name="localhost/test")
    r, w = os.pipe()
    explain.enable(w)
    try:
        mounts.mount(list(reversed(store.image("localhost/test:test").layer_dirs())), tmp / "c")
    finally:
        explain.disable()
        os.close(w)
    text = os.read(r, 65536).decode()
    os.close(r)
    assert "+ mount -t overlay overlay -o lowerdir=" in text and ",upperdir=" in text and ",workdir=" in text


def test_layers_unpacked_once_and_loads_are_idempotent(layout: tuple[Path, dict], store: Store) -> None:
    path, info = layout
    archive.load(store, str(path), name="localhost/one")
    ino = {d: os.stat(store.layer_path(d)).st_ino for d in info["diff_ids"]}
    archive.load(store, str(path), name="localhost/two")
    assert {d: os.stat(store.layer_path(d)).st_ino for d in info["diff_ids"]} == ino
    assert sorted(store.refs()) == ["localhost/one:test", "localhost/two:test"]
    assert os.listdir(store.tmp_dir) == []


def _load_in_child(root: str, path: str, name: str) -> None:
    archive.load(Store(root), path, name=name)


def test_concurrent_loads_are_safe(layout: tuple[Path, dict], store: Store) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_load_in_child, args=(store.root, str(layout[0]), f"localhost/p{i}"))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(store.refs()) == [f"localhost/p{i}:test" for i in range(4)]
    assert sorted(store.layers()) == sorted(layout[1]["diff_ids"])
    assert os.listdir(store.tmp_dir) == []


def test_load_tar_and_docker_archive(layout: tuple[Path, dict], layers: list[bytes], store: Store,
                                     tmp: Path) -> None:
    path, info = layout
    as_tar = tar_dir(path, tmp / "layout.tar")
    assert archive.load(store, str(as_tar)) == ["localhost/layout:test"]
    # docker save: manifest.json + <id>/layer.tar + <config>.json
    d = tmp / "docker"
    d.mkdir()
    layer_names = []
    for i, t in enumerate(layers):
        (d / f"l{i}").mkdir()
        (d / f"l{i}/layer.tar").write_bytes(t)
        layer_names.append(f"l{i}/layer.tar")
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": info["diff_ids"]}}
    raw = json.dumps(cfg).encode()
    cfg_name = hashlib.sha256(raw).hexdigest() + ".json"
    (d / cfg_name).write_bytes(raw)
    (d / "manifest.json").write_text(json.dumps([{"Config": cfg_name, "RepoTags": ["busy:docker"],
                                                  "Layers": layer_names}]))
    docker_tar = tar_dir(d, tmp / "docker.tar")
    assert archive.load(store, str(docker_tar)) == ["docker.io/library/busy:docker"]
    img = store.image("busy:docker")
    assert img.diff_ids == info["diff_ids"] and img.id == "sha256:" + cfg_name[:-5]
    assert os.listdir(store.tmp_dir) == []


@needs_umoci
def test_save_round_trips_through_umoci(layout: tuple[Path, dict], store: Store, tmp: Path,
                                        mounts: Mounts) -> None:
    archive.load(store, str(layout[0]), name="localhost/test")
    out = tmp / "saved"
    archive.save(store, ["localhost/test:test"], str(out))
    subprocess.run([UMOCI, "unpack", "--image", f"{out}:test", str(tmp / "b")], check=True,
                   capture_output=True, timeout=120)
    merged = mounts.mount(list(reversed(store.image("localhost/test:test").layer_dirs())), tmp / "c")
    assert diff_trees(tree(merged), tree(tmp / "b/rootfs")) == []
    # and as a tar, loadable again into a fresh store under the same name
    archive.save(store, ["localhost/test:test"], str(tmp / "saved.tar"))
    other = Store(str(tmp / "other"))
    assert archive.load(other, str(tmp / "saved.tar")) == ["localhost/test:test"]
    if SKOPEO:
        r = subprocess.run([SKOPEO, "inspect", f"oci:{out}:test"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["Layers"]) == 3


def test_import_rootfs_dir_and_tar(store: Store, tmp: Path, mounts: Mounts) -> None:
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(PASSWD)
    os.chmod(root / "bin/busybox", 0o4755)
    name = archive.import_rootfs(store, str(root), "localhost/imported:1", {"Cmd": ["/bin/sh"]})
    assert name == "localhost/imported:1"
    img = store.image(name)
    assert len(img.layers) == 1 and img.config["config"]["Cmd"] == ["/bin/sh"]
    layer = Path(img.layer_dirs()[0])
    assert os.readlink(layer / "bin/sh") == "busybox"
    assert stat.S_IMODE(os.lstat(layer / "bin/busybox").st_mode) == 0o4755
    name2 = archive.import_rootfs(store, str(tar_dir(root, tmp / "rootfs.tar")), "imported2")
    assert store.image(name2).layers[0]["mediaType"] == MT_LAYER_GZ
    assert (Path(store.image(name2).layer_dirs()[0]) / "etc/passwd").read_text() == PASSWD


def test_zstd_layers_unpack_like_gzip_ones(layers: list[bytes], store: Store, tmp: Path) -> None:
    pytest.importorskip("zstandard", reason="the Python zstandard module is not installed (pip install zstandard)")
    info = write_zstd_layout(tmp / "zstd", layers, tag="z")
    assert archive.load(store, str(tmp / "zstd"), name="localhost/zstd") == ["localhost/zstd:z"]
    img = store.image("localhost/zstd:z")
    assert img.digest == info["manifest"] and img.diff_ids == info["diff_ids"]
    assert [layer["mediaType"] for layer in img.layers] == [MT_LAYER_ZSTD] * 3
    assert all(store.has_blob(desc["digest"]) for desc in info["layers"])
    # each layer tree is the one the same tar gives through gzip
    write_layout(tmp / "gz", layers, tag="g", compress=(True, True, True))
    ref = Store(str(tmp / "ref"))
    archive.load(ref, str(tmp / "gz"), name="localhost/gz")
    for mine, theirs in zip(img.layer_dirs(), ref.image("localhost/gz:g").layer_dirs(), strict=True):
        assert os.path.basename(mine) == os.path.basename(theirs)
        assert diff_trees(tree(Path(mine)), tree(Path(theirs))) == []
    lower = Path(img.layer_dirs()[0])
    assert (lower / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert (Path(img.layer_dirs()[2]) / "newdir/deep/file").read_text() == "deep\n"
    assert os.listdir(store.tmp_dir) == []
    # and the tar form of the layout
    other = Store(str(tmp / "other"))
    assert archive.load(other, str(tar_dir(tmp / "zstd", tmp / "zstd.tar"))) == ["localhost/zstd:z"]
    assert other.image("localhost/zstd:z").diff_ids == info["diff_ids"]


def test_platform_selection(layers: list[bytes], store: Store, tmp: Path) -> None:
    host = archive.host_platform()
    arm = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    write_layout(tmp / "multi", layers[:1], tag="m", index_platforms=[host, arm])
    assert archive.load(store, str(tmp / "multi"), name="localhost/multi") == ["localhost/multi:m"]
    assert archive.select_platform([{"platform": arm, "digest": "x"}], arm)["digest"] == "x"
    assert archive.select_platform([{"platform": {"os": "linux", "architecture": "arm64"}, "digest": "y"}],
                                   arm)["digest"] == "y"


def test_store_remove_and_gc(layout: tuple[Path, dict], layers: list[bytes], store: Store, tmp: Path) -> None:
    path, info = layout
    archive.load(store, str(path), name="localhost/a")
    write_layout(tmp / "small", layers[:1], tag="s")  # shares layer 1 with the test image
    archive.load(store, str(tmp / "small"), name="localhost/small")
    assert [i["names"] for i in store.list_images()] == [["localhost/a:test"], ["localhost/small:s"]]
    assert store.inspect("localhost/a:test")["config"]["config"]["Cmd"] == ["sh"]
    assert store.image(info["manifest"][7:19]).digest == info["manifest"]  # digest prefix
    assert store.gc() == {"blobs": [], "layers": [], "bytes": 0}
    assert store.remove("localhost/a:test") == ["localhost/a:test"]
    with pytest.raises(HanokError, match="not known"):
        store.image("localhost/a:test")
    # a container still uses the top layer: gc keeps it
    top = info["diff_ids"][2]
    result = store.gc(in_use_layers={top})
    assert sorted(result["layers"]) == sorted(info["diff_ids"][1:2])
    assert store.has_layer(info["diff_ids"][0]) and store.has_layer(top)  # shared one, in-use one
    assert info["manifest"] in result["blobs"]
    store.remove("localhost/small:s")
    store.gc()
    assert store.layers() == [] and store.blobs() == [] and store.refs() == {}


def test_ingest_verifies_while_streaming(store: Store) -> None:
    data = os.urandom(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match="digest mismatch"):
        with store.ingest("sha256:" + "1" * 64, len(data)) as w:
            w.write(data)
    with pytest.raises(ImageError, match="truncated"):
        with store.ingest(digest, len(data)) as w:
            w.write(data[:5000])
    with pytest.raises(ImageError, match="more data"):
        with store.ingest(digest, 10) as w:
            w.write(data)
    w = store.ingest(digest, len(data))
    w.write(data[:10])
    assert not store.has_blob(digest)  # nothing under the final name before commit
    w.abort()
    assert os.listdir(store.tmp_dir) == [] and store.blobs() == []
    with store.ingest(digest, len(data)) as w:
        for i in range(0, len(data), 4096):
            w.write(data[i:i + 4096])
    assert store.read_blob(digest) == data
    # a crashed writer's tmp file is cleared by gc, a live one is not
    live = store.ingest()
    Path(store.tmp_dir, "blob-crashed").write_bytes(b"junk")
    store.gc()
    assert os.listdir(store.tmp_dir) == [os.path.basename(live.tmp_path)]
    live.abort()


def _tag_many(root: str, who: int, digest: str) -> None:
    s = Store(root)
    for i in range(30):
        s.tag(f"localhost/w{who}:{i}", digest)


def test_refs_written_atomically_under_a_lock(store: Store) -> None:
    digest = store.put_bytes(b'{"schemaVersion": 2}')
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tag_many, args=(store.root, w, digest)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(store.refs()) == 4 * 30
    assert [n for n in os.listdir(store.root) if n.startswith(".images.json")] == []


# ------------------------------------------------------------------ bad input


def _rewrite_manifest(layout: Path, fn: Callable[[dict], dict | bytes]) -> None:
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    old = json.loads((layout / "blobs/sha256" / entry["digest"][7:]).read_bytes())
    new = fn(old)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    entry.update(_put_blob(layout, raw))
    (layout / "index.json").write_text(json.dumps(index))


def _layer_blob(layout: Path, i: int) -> Path:
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return layout / "blobs/sha256" / man["layers"][i]["digest"][7:]


def _bad_digest(p: Path, layers: list[bytes]) -> None:
    blob = _layer_blob(p, 2)
    data = bytearray(blob.read_bytes())
    data[-30] ^= 0xFF
    blob.write_bytes(bytes(data))


def _truncated(p: Path, layers: list[bytes]) -> None:
    blob = _layer_blob(p, 2)
    blob.write_bytes(blob.read_bytes()[:100])


def _corrupt_gzip(p: Path, layers: list[bytes]) -> None:
    gz = bytearray(gzip.compress(layers[2]))
    gz[30:60] = b"\x00" * 30
    desc = _put_blob(p, bytes(gz))
    _rewrite_manifest(p, lambda m: {**m, "layers": m["layers"][:2] + [{**m["layers"][2], **desc}]})


def _diff_id_mismatch(p: Path, layers: list[bytes]) -> None:
    other = gzip.compress(tar_bytes([("file", "other", b"o")]))
    desc = _put_blob(p, other)
    _rewrite_manifest(p, lambda m: {**m, "layers": m["layers"][:2] + [{**m["layers"][2], **desc}]})


def _bad_manifest_json(p: Path, layers: list[bytes]) -> None:
    _rewrite_manifest(p, lambda m: b'{"schemaVersion": 2, "config": ')


def _manifest_not_object(p: Path, layers: list[bytes]) -> None:
    _rewrite_manifest(p, lambda m: {**m, "layers": "nope"})


def _bad_index_json(p: Path, layers: list[bytes]) -> None:
    (p / "index.json").write_text('{"schemaVersion": 2, "manifests": [')


def _unknown_layer_type(p: Path, layers: list[bytes]) -> None:
    _rewrite_manifest(p, lambda m: {**m, "layers": [{**m["layers"][0], "mediaType": "application/x-rar"}]
                                    + m["layers"][1:]})


def _unknown_manifest_type(p: Path, layers: list[bytes]) -> None:
    _rewrite_manifest(p, lambda m: {**m, "mediaType": "application/vnd.example.weird+json"})


def _no_platform(p: Path, layers: list[bytes]) -> None:
    shutil.rmtree(p)
    write_layout(p, layers, tag="test", index_platforms=[{"os": "linux", "architecture": "s390x"},
                                                          {"os": "windows", "architecture": "amd64"}])


def _missing_blob(p: Path, layers: list[bytes]) -> None:
    _layer_blob(p, 1).unlink()


def _hostile_layer(p: Path, layers: list[bytes]) -> None:
    bad = gzip.compress(tar_bytes([("file", "ok", b"1"), ("file", "../../escape", b"x")]))
    desc = _put_blob(p, bad)
    diff = "sha256:" + hashlib.sha256(gzip.decompress(bad)).hexdigest()
    _rewrite_manifest(p, lambda m: {**m, "layers": m["layers"][:2] + [{**m["layers"][2], **desc}]})
    # the config's diff_id is right: rejection must come from the extractor itself
    index = json.loads((p / "index.json").read_text())
    man = json.loads((p / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    cfg = json.loads((p / "blobs/sha256" / man["config"]["digest"][7:]).read_bytes())
    cfg["rootfs"]["diff_ids"][2] = diff
    man["config"].update(_put_blob(p, json.dumps(cfg).encode()))
    _rewrite_manifest(p, lambda m: man)


BAD = {
    "digest-mismatch": (_bad_digest, "digest mismatch"),
    "truncated-blob": (_truncated, "truncated"),
    "corrupt-gzip": (_corrupt_gzip, "gzip"),
    "diff-id-mismatch": (_diff_id_mismatch, "diff_id mismatch"),
    "malformed-manifest-json": (_bad_manifest_json, "not valid JSON"),
    "malformed-manifest": (_manifest_not_object, "'layers' is not a list"),
    "malformed-index-json": (_bad_index_json, "index.json is not valid JSON"),
    "unknown-layer-media-type": (_unknown_layer_type, "unknown media type"),
    "unknown-manifest-media-type": (_unknown_manifest_type, "unknown media type"),
    "no-matching-platform": (_no_platform, "no image for platform"),
    "missing-blob": (_missing_blob, "missing"),
    "hostile-layer": (_hostile_layer, "'..'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_error_and_store_unchanged(case: str, layout: tuple[Path, dict], layers: list[bytes],
                                                          store: Store, tmp: Path) -> None:
    # the store already holds an image sharing the first layers, so a failure must not
    # remove what was there, nor leave what it added
    write_layout(tmp / "small", layers[:1], tag="s")
    archive.load(store, str(tmp / "small"), name="localhost/small")
    before = store_listing(Path(store.root))
    bad = tmp / "bad"
    shutil.copytree(layout[0], bad)
    mutate, words = BAD[case]
    mutate(bad, layers)
    with pytest.raises(ImageError) as err:
        archive.load(store, str(bad), name="localhost/bad")
    msg = str(err.value)
    assert words in msg and "\n" not in msg, msg
    assert store_listing(Path(store.root)) == before
    # the tar form of the same layout fails the same way
    with pytest.raises(ImageError):
        archive.load(store, str(tar_dir(bad, tmp / "bad.tar")), name="localhost/bad")
    assert store_listing(Path(store.root)) == before


def test_not_a_layout(store: Store, tmp: Path) -> None:
    (tmp / "empty").mkdir()
    with pytest.raises(ImageError, match="neither an OCI image layout"):
        archive.load(store, str(tmp / "empty"))
    (tmp / "junk.tar").write_bytes(b"junk" * 1000)
    with pytest.raises(ImageError, match="not a directory or a readable tar"):
        archive.load(store, str(tmp / "junk.tar"))


# ------------------------------------------------------------------ image config -> process


def test_image_config_to_process(layout: tuple[Path, dict], store: Store) -> None:
    archive.load(store, str(layout[0]), name="localhost/test")
    lowers = list(reversed(store.image("localhost/test:test").layer_dirs()))
    cfg = {"config": {"Entrypoint": ["/bin/ep"], "Cmd": ["--flag"], "Env": ["PATH=/bin", "A=1"],
                      "WorkingDir": "/srv", "User": "tester", "StopSignal": "SIGQUIT",
                      "Labels": {"k": "v"}, "Volumes": {"/data": {}}}}
    p = overlay.image_config_to_process(cfg, rootfs=lowers)
    assert p["args"] == ["/bin/ep", "--flag"]
    assert p["env"] == ["PATH=/bin", "A=1", "HOME=/home/tester"]
    assert p["cwd"] == "/srv"
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 100]}
    # overrides, as docker run does them
    p = overlay.image_config_to_process(cfg, args=["x"], env=["A=2", "B=3"], user="nobody:wheel",
                                        cwd="work", rootfs=lowers)
    assert p["args"] == ["/bin/ep", "x"] and p["env"] == ["PATH=/bin", "A=2", "B=3", "HOME=/nonexistent"]
    assert p["user"] == {"uid": 65534, "gid": 10} and p["cwd"] == "/work"
    assert overlay.image_config_to_process(cfg, entrypoint=["sh"], rootfs=lowers)["args"] == ["sh"]
    assert overlay.image_config_to_process(cfg, entrypoint=[""], args=["ls"], rootfs=lowers)["args"] == ["ls"]
    assert overlay.image_config_to_process({"config": {"Cmd": ["sh"], "User": "1234:55"}})["user"] == \
        {"uid": 1234, "gid": 55}
    p = overlay.image_config_to_process({"config": {"Cmd": ["sh"]}}, rootfs=lowers)
    assert p["user"] == {"uid": 0, "gid": 0} and p["cwd"] == "/" and p["env"][0].startswith("PATH=/usr/local")
    with pytest.raises(ImageError, match="unable to find user ghost"):
        overlay.image_config_to_process({"config": {"Cmd": ["sh"], "User": "ghost"}}, rootfs=lowers)
    with pytest.raises(ImageError, match="unable to find group"):
        overlay.image_config_to_process({"config": {"Cmd": ["sh"], "User": "0:ghosts"}}, rootfs=lowers)
    with pytest.raises(ImageError, match="no command"):
        overlay.image_config_to_process({"config": {}})
    extras = overlay.image_config_extras(cfg)
    assert extras == {"annotations": {"k": "v", "org.opencontainers.image.stopSignal": "SIGQUIT"},
                      "volumes": ["/data"], "stopSignal": "SIGQUIT"}


def test_user_lookup_never_reads_host_files(tmp: Path) -> None:
    """An image whose /etc/passwd links to the host's must not resolve names from it."""
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to("/etc/passwd")  # inside the image: a dangling link
    with pytest.raises(ImageError, match="unable to find user root"):
        overlay.resolve_user("root", str(root))


def test_unpack_timing_busybox_layer(layers: list[bytes], tmp: Path) -> None:
    gz = gzip.compress(layers[0], 6)
    (tmp / "l").mkdir()
    t0 = time.perf_counter()
    unpack.unpack(io.BytesIO(gz), str(tmp / "l"))
    print(f"\nunpack of the busybox layer ({len(layers[0]) >> 10} KiB tar, {len(gz) >> 10} KiB gzip, "
          f"{len(os.listdir(tmp / 'l/bin'))} entries in bin/): {(time.perf_counter() - t0) * 1000:.0f} ms")
