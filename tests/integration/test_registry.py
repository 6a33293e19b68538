"""Pulling from a real registry: images/registry.py against Debian's docker-registry.

A session fixture starts three docker-registry processes on 127.0.0.1 that
share one storage directory: plain (anonymous), htpasswd basic auth, and
token auth backed by a tiny JWT token server (RS256, key and cert from
openssl). Test images (the busybox image of test_images_offline.py, a
two-platform index, a Docker schema2 copy) are pushed with skopeo through
the plain one. A forwarding proxy counts requests and cuts blob downloads
half-way; a stub server answers 503 or never answers.

Needs: docker-registry, apache2-utils (htpasswd), skopeo, openssl,
busybox-static (Debian packages). Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from hanok.images import archive, registry
from hanok.images.store import Store
from hanok.runtime.errors import ImageError
from registry_fixture import (
    REGISTRY_BIN,
    TOKEN_ISSUER,
    TOKEN_SERVICE,
    HTTPServerThread,
    Proxy,
    Registry,
    StubServer,
    TokenServer,
    free_port,
    htpasswd_line,
)
from test_images_offline import (
    BUSYBOX,
    MT_LAYER_ZSTD,
    busybox_layers,
    diff_trees,
    tree,
    write_layout,
    write_zstd_layout,
)

SKOPEO = shutil.which("skopeo")
USERS = {"alice": "s3cret-pw"}
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(REGISTRY_BIN) and SKOPEO and shutil.which("htpasswd") and shutil.which("openssl")
         and BUSYBOX.is_file()),
    reason="needs docker-registry, apache2-utils, skopeo, openssl, busybox-static "
           "(apt-get install docker-registry apache2-utils skopeo openssl busybox-static)")


# ------------------------------------------------------------------ images


def _blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    d = layout / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    (d / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_650_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(layout: Path, layers: list[bytes], plat: dict) -> dict:
    """Blobs of one image (gzip layers) in `layout`; returns its manifest descriptor."""
    descs, diff_ids = [], []
    for tar in layers:
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      **_blob(layout, gzip.compress(tar, 6, mtime=0))})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    cfg = {"architecture": plat["architecture"], "os": plat["os"], "config": {"Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if plat.get("variant"):
        cfg["variant"] = plat["variant"]
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, json.dumps(cfg).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg_desc, "layers": descs}
    return {"mediaType": MT_MANIFEST, **_blob(layout, json.dumps(manifest).encode()), "platform": plat}


def write_multiarch(layout: Path, base: list[bytes], tag: str) -> dict:
    """An OCI layout whose `tag` is an index of linux/amd64 and linux/arm64 (different marker files)."""
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    amd = _image(layout, base + [_tar({"marker": b"amd64\n"})], {"os": "linux", "architecture": "amd64"})
    arm = _image(layout, [_tar({"marker": b"arm64\n", "only-arm": b"yes\n"})],
                 {"os": "linux", "architecture": "arm64", "variant": "v8"})
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [amd, arm]}
    idx = _blob(layout, json.dumps(index).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MT_INDEX, **idx, "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return {"index": idx["digest"], "amd64": amd["digest"], "arm64": arm["digest"]}


def skopeo_push(layout: Path, tag: str, dest: str, *extra: str) -> str:
    """Push with skopeo; returns the digest of the manifest (or index) as pushed."""
    digestfile = layout.with_name(layout.name + ".digest")
    subprocess.run([str(SKOPEO), "copy", "--insecure-policy", "--dest-tls-verify=false", "--digestfile",
                    str(digestfile), *extra, f"oci:{layout}:{tag}", f"docker://{dest}"],
                   check=True, capture_output=True, timeout=120)
    return digestfile.read_text().strip()


# ------------------------------------------------------------------ fixtures


class Env:
    """Everything the session started; stopped and removed at the end."""

    def __init__(self, work: Path):
        self.work = work
        storage = work / "storage"
        (work / "auth").mkdir(parents=True)
        (work / "auth" / "htpasswd").write_text("".join(htpasswd_line(u, p) for u, p in USERS.items()))
        self.stopping: list = []
        self.n = 0
        try:
            self._start(work, storage)
        except BaseException:
            self.stop()
            raise

    def _start(self, work: Path, storage: Path) -> None:
        self.tokens = TokenServer(work / "auth", USERS)
        self.stopping.append(self.tokens)
        self.plain = Registry(work / "plain", storage)
        self.stopping.append(self.plain)
        self.basic = Registry(work / "basic", storage, {"htpasswd": {"realm": "hanok-test",
                                                                    "path": str(work / "auth" / "htpasswd")}})
        self.stopping.append(self.basic)
        self.token = Registry(work / "token", storage, self.tokens.registry_auth())
        self.stopping.append(self.token)
        # the images
        self.layers = busybox_layers()
        self.bb = write_layout(work / "bb-layout", self.layers, tag="test")
        self.bb_digest = skopeo_push(work / "bb-layout", "test", f"{self.plain.host}/test/busybox:1")
        self.multi = write_multiarch(work / "multi-layout", self.layers[:1], "multi")
        skopeo_push(work / "multi-layout", "multi", f"{self.plain.host}/test/multi:1", "--all")
        skopeo_push(work / "bb-layout", "test", f"{self.plain.host}/test/docker:1", "--format", "v2s2")

    def store(self) -> Store:
        self.n += 1
        return Store(str(self.work / "stores" / f"s{self.n}"))

    def stop(self) -> None:
        for s in reversed(self.stopping):
            s.stop()


@pytest.fixture(scope="session")
def env() -> Iterator[Env]:
    work = Path(os.environ.get("HANOK_TEST_TMP", "/var/tmp")) / f"hanok-registry-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        e = Env(work)  # stops what it started if it fails half-way
        try:
            yield e
        finally:
            e.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def store(env: Env) -> Store:
    return env.store()


@pytest.fixture
def proxy(env: Env) -> Iterator[Proxy]:
    p = Proxy(env.plain.host)
    yield p
    p.stop()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "BACKOFF", 0.01)
    monkeypatch.setattr(registry, "ATTEMPTS", 3)


@pytest.fixture
def docker_config(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = env.work / f"docker-config-{env.n}-{os.urandom(4).hex()}"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    yield d / "config.json"
    shutil.rmtree(d, ignore_errors=True)


def listing(store: Store) -> dict[str, tuple]:
    """Blobs, layers and refs of a store (what a failed pull must leave as it was), tmp/ files."""
    out: dict[str, tuple] = {}
    root = Path(store.root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            if rel.endswith(".lock") or "/layers/" in f"/{rel}" and rel.count("/") > 1:
                continue
            out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for n in dirnames:
            rel = str(Path(dirpath, n).relative_to(root))
            if rel.startswith("layers/"):
                out[rel] = ("dir",)
    return out


def assert_clean(store: Store, before: dict) -> None:
    assert listing(store) == before
    tmp = Path(store.tmp_dir)
    assert not tmp.exists() or os.listdir(tmp) == [], f"stray files in tmp/: {os.listdir(tmp)}"


# ------------------------------------------------------------------ pulling


def test_pull_matches_a_load_of_the_same_image(env: Env, store: Store, tmp_path_factory) -> None:
    name = registry.pull(store, f"{env.plain.host}/test/busybox:1")
    assert name == f"{env.plain.host}/test/busybox:1"
    img = store.image(name)
    assert img.digest == env.bb_digest
    assert img.diff_ids == env.bb["diff_ids"]
    # The same layout loaded offline gives identical layer trees.
    ref = env.store()
    archive.load(ref, str(env.work / "bb-layout"))
    for mine, theirs in zip(img.layer_dirs(), ref.image("localhost/bb-layout:test").layer_dirs()):
        assert os.path.basename(mine) == os.path.basename(theirs)
        assert diff_trees(tree(Path(mine)), tree(Path(theirs))) == []
    lower = Path(img.layer_dirs()[0])
    assert (lower / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    assert stat.S_IMODE(os.stat(lower / "bin" / "suid").st_mode) == 0o4755
    assert (Path(img.layer_dirs()[1]) / "etc" / "motd").read_text() == "v2\n"
    # Every blob of the image is in the store, nothing left in tmp/.
    for d in [img.config_digest] + [layer["digest"] for layer in img.layers]:
        assert store.has_blob(d)
    assert os.listdir(store.tmp_dir) == []


def test_second_pull_downloads_nothing(env: Env, store: Store, proxy: Proxy) -> None:
    ref = f"{proxy.host}/test/busybox:1"
    t0 = time.monotonic()
    registry.pull(store, ref)
    cold = time.monotonic() - t0
    assert len(proxy.blob_gets()) == 4  # config + 3 layers
    before = listing(store)
    proxy.log.clear()
    t0 = time.monotonic()
    assert registry.pull(store, ref) == ref
    warm = time.monotonic() - t0
    assert proxy.blob_gets() == []
    assert [e[0] for e in proxy.log] == ["GET"] and "/manifests/1" in proxy.log[0][1]
    assert listing(store) == before
    print(f"pull of the busybox test image: cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms")


def test_layers_stream_in_one_pass(env: Env, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh pull never re-reads a stored blob to unpack it: download and unpack are one pass."""
    def unpack_from_store(*args: object) -> None:
        raise AssertionError("a layer was unpacked from its stored blob")

    monkeypatch.setattr(store, "unpack_layer", unpack_from_store)
    ref = f"{env.plain.host}/test/busybox:1"
    assert registry.pull(store, ref) == ref
    img = store.image(ref)
    assert sorted(store.layers()) == sorted(img.diff_ids)
    assert all(store.has_blob(layer["digest"]) for layer in img.layers)
    assert (Path(img.layer_dirs()[0]) / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.listdir(store.tmp_dir) == []
    # on ext2/3/4, layer trees made in tmp/ are spread over block groups (chattr +T)
    attrs = subprocess.run(["lsattr", "-d", store.tmp_dir], capture_output=True, text=True)
    if attrs.returncode == 0:  # lsattr fails on filesystems without these flags
        assert "T" in attrs.stdout.split()[0]


def test_only_what_the_store_lacks_is_fetched(env: Env, store: Store, proxy: Proxy) -> None:
    ref = f"{proxy.host}/test/busybox:1"
    registry.pull(store, ref)
    img = store.image(ref)
    blob, diff_id = img.layers[0]["digest"], img.diff_ids[0]
    # a layer directory gone, its blob kept: unpacked again from the blob, nothing downloaded
    store.remove_layer(diff_id)
    proxy.log.clear()
    registry.pull(store, ref)
    assert proxy.blob_gets() == []
    assert (Path(store.layer_path(diff_id)) / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    # a blob gone, its layer kept: that blob alone is downloaded, the layer left as it is
    inode = os.stat(store.layer_path(diff_id)).st_ino
    store.remove_blob(blob)
    proxy.log.clear()
    registry.pull(store, ref)
    assert [e[1].rsplit("/", 1)[1] for e in proxy.blob_gets()] == [blob]
    assert store.has_blob(blob) and os.stat(store.layer_path(diff_id)).st_ino == inode
    assert os.listdir(store.tmp_dir) == []


def _push_raw(env: Env, name: str, layers: list[tuple[bytes, str]]) -> str:
    """Push test/<name>:1 with layer blobs and diff_ids exactly as given (right or wrong); returns the ref."""
    layout = env.work / f"{name}-layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, b)} for b, _ in layers]
    plat = archive.host_platform()
    cfg = {"architecture": plat["architecture"], "os": plat["os"], "config": {},
           "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, json.dumps(cfg).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg_desc, "layers": descs}
    man = _blob(layout, json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MT_MANIFEST, **man, "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    skopeo_push(layout, "t", f"{env.plain.host}/test/{name}:1")
    return f"{env.plain.host}/test/{name}:1"


def _layer(tar: bytes) -> tuple[bytes, str]:
    return gzip.compress(tar, 6, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize("case", ["escape", "diff-id", "bad-gzip", "bad-tar"])
def test_bad_layer_leaves_neither_blob_nor_layer(env: Env, store: Store, case: str) -> None:
    good = _layer(_tar({"fine": b"ok\n" * 1000}))
    if case == "escape":
        bad, match = _layer(_tar({"../escaped": b"x"})), r"layer entry '\.\./escaped': .*'\.\.'"
    elif case == "diff-id":
        bad, match = (_layer(_tar({"a": b"a"}))[0], "sha256:" + "0" * 64), "diff_id mismatch"
    elif case == "bad-gzip":
        gz = bytearray(gzip.compress(_tar({"a": os.urandom(5000)}), 6, mtime=0))
        gz[20:40] = b"\xff" * 20
        bad, match = (bytes(gz), "sha256:" + "1" * 64), "not valid gzip data"
    else:
        bad, match = (gzip.compress(b"not a tar archive" * 100), "sha256:" + "2" * 64), "not a valid tar archive"
    ref = _push_raw(env, f"bad-{case}", [good, bad])
    before = listing(store)
    with pytest.raises(ImageError, match=match) as err:
        registry.pull(store, ref)
    assert str(err.value).startswith(f"layer sha256:{hashlib.sha256(bad[0]).hexdigest()}: ")
    assert "\n" not in str(err.value)
    assert_clean(store, before)
    assert not store.has_blob("sha256:" + hashlib.sha256(bad[0]).hexdigest())
    assert not (env.work / "escaped").exists()


def test_pull_zstd_layers(env: Env, store: Store) -> None:
    pytest.importorskip("zstandard", reason="the Python zstandard module is not installed (pip install zstandard)")
    layout = env.work / "zstd-layout"
    info = write_zstd_layout(layout, env.layers, tag="z")
    ref = f"{env.plain.host}/test/zstd:1"
    assert skopeo_push(layout, "z", ref) == info["manifest"]  # pushed as it is, zstd layers and all
    assert registry.pull(store, ref) == ref
    img = store.image(ref)
    assert img.digest == info["manifest"] and img.diff_ids == env.bb["diff_ids"]
    assert [layer["mediaType"] for layer in img.layers] == [MT_LAYER_ZSTD] * 3
    assert all(store.has_blob(desc["digest"]) for desc in info["layers"])
    # the same trees as the gzip/plain busybox image
    gz = env.store()
    gz_img = gz.image(registry.pull(gz, f"{env.plain.host}/test/busybox:1"))
    for mine, theirs in zip(img.layer_dirs(), gz_img.layer_dirs(), strict=True):
        assert diff_trees(tree(Path(mine)), tree(Path(theirs))) == []
    assert os.listdir(store.tmp_dir) == []


def test_pull_by_digest(env: Env, store: Store) -> None:
    digest = env.bb_digest
    name = registry.pull(store, f"{env.plain.host}/test/busybox@{digest}")
    assert name == f"{env.plain.host}/test/busybox@{digest}"
    assert store.image(name).digest == digest
    # a digest that the registry does not have: clear error, nothing stored
    before = listing(store)
    missing = "sha256:" + "e" * 64
    with pytest.raises(ImageError, match=f"manifest unknown: .*test/busybox@{missing}"):
        registry.pull(store, f"{env.plain.host}/test/busybox@{missing}")
    assert_clean(store, before)


def test_layers_shared_between_images_are_fetched_once(env: Env, store: Store, proxy: Proxy) -> None:
    registry.pull(store, f"{proxy.host}/test/busybox:1")
    proxy.log.clear()
    registry.pull(store, f"{proxy.host}/test/multi:1", platform="linux/amd64")
    # only the new marker layer and the new config: the busybox base layer is shared
    fetched = {e[1].rsplit("/", 1)[1] for e in proxy.blob_gets()}
    assert len(fetched) == 2
    assert env.bb["layers"][0]["digest"] not in fetched


@pytest.mark.parametrize("plat,marker", [("linux/amd64", "amd64\n"), ("linux/arm64", "arm64\n"),
                                         ("linux/arm64/v8", "arm64\n")])
def test_index_resolved_to_the_platform(env: Env, store: Store, plat: str, marker: str) -> None:
    name = registry.pull(store, f"{env.plain.host}/test/multi:1", platform=plat)
    img = store.image(name)
    assert img.digest == env.multi[plat.split("/")[1]]
    assert img.config["architecture"] == plat.split("/")[1]
    assert (Path(img.layer_dirs()[-1]) / "marker").read_text() == marker
    assert not store.has_blob(env.multi["index"])  # the ref points at the platform's manifest


def test_index_defaults_to_the_host_platform(env: Env, store: Store) -> None:
    host = archive.host_platform()
    if host["architecture"] not in ("amd64", "arm64"):
        pytest.skip(f"host architecture {host['architecture']} is not in the test index")
    img = store.image(registry.pull(store, f"{env.plain.host}/test/multi:1"))
    assert img.digest == env.multi[host["architecture"]]


def test_no_manifest_for_the_platform(env: Env, store: Store) -> None:
    before = listing(store)
    ref = f"{env.plain.host}/test/multi:1"
    with pytest.raises(ImageError, match=rf"^no manifest for linux/s390x in {ref} \(available: "
                                         r"linux/amd64, linux/arm64/v8\)$"):
        registry.pull(store, ref, platform="linux/s390x")
    assert_clean(store, before)


def test_docker_schema2_manifest(env: Env, store: Store) -> None:
    name = registry.pull(store, f"{env.plain.host}/test/docker:1")
    img = store.image(name)
    assert img.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert img.diff_ids == env.bb["diff_ids"]
    assert (Path(img.layer_dirs()[0]) / "bin" / "busybox").is_file()


def test_unknown_tag_is_a_clear_404(env: Env, store: Store) -> None:
    before = listing(store)
    for ref in (f"{env.plain.host}/test/busybox:nope", f"{env.plain.host}/no/such-repo:1"):
        with pytest.raises(ImageError) as e:
            registry.pull(store, ref)
        assert str(e.value) == f"manifest unknown: {ref} not found"
    assert_clean(store, before)
    assert store.refs() == {}


# ------------------------------------------------------------------ auth


def test_basic_auth_and_login(env: Env, store: Store, docker_config: Path) -> None:
    ref = f"{env.basic.host}/test/busybox:1"
    before = listing(store)
    with pytest.raises(ImageError, match=r"^unauthorized: .*requires authentication.*`hanok login "
                                         + env.basic.host + "`"):
        registry.pull(store, ref)
    with pytest.raises(ImageError, match="unauthorized: .*rejected the credentials"):
        registry.pull(store, ref, auth=("alice", "wrong"))
    with pytest.raises(ImageError, match="unauthorized"):
        registry.login(env.basic.host, "alice", "wrong")
    assert not docker_config.exists()  # a failed login writes nothing
    assert_clean(store, before)

    path = registry.login(env.basic.host, "alice", USERS["alice"])
    assert path == str(docker_config)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(docker_config.read_text())
    assert base64.b64decode(doc["auths"][env.basic.host]["auth"]).decode() == f"alice:{USERS['alice']}"
    assert registry.credentials(env.basic.host) == ("alice", USERS["alice"])
    assert registry.pull(store, ref) == ref
    assert store.image(ref).digest == env.bb_digest


def test_bearer_token_auth(env: Env, store: Store, docker_config: Path) -> None:
    ref = f"{env.token.host}/test/busybox:1"
    env.tokens.requests.clear()
    with pytest.raises(ImageError, match=r"^unauthorized: .*check `hanok login"):
        registry.pull(store, ref)  # anonymous token without access: the registry still says 401
    assert env.tokens.requests and env.tokens.requests[0]["user"] == ""
    with pytest.raises(ImageError, match="rejected the credentials"):
        registry.login(env.token.host, "alice", "wrong")
    registry.login(env.token.host, "alice", USERS["alice"])
    env.tokens.requests.clear()
    assert registry.pull(store, ref, max_workers=3) == ref
    # one token for the pull's scope, reused for the manifest, the config and three layers
    assert [r["scope"] for r in env.tokens.requests] == [["repository:test/busybox:pull"]]
    assert env.tokens.requests[0]["user"] == "alice"
    assert store.image(ref).diff_ids == env.bb["diff_ids"]


def test_credentials_from_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.json"
    enc = base64.b64encode(b"hub:pw").decode()
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": enc},
        "https://registry.example:5000/v2/": {"username": "u", "password": "p"},
        "other.example": {"auth": base64.b64encode(b"o:x:y").decode()}},
        "credsStore": "desktop"}))
    assert registry.credentials("docker.io", str(cfg)) == ("hub", "pw")
    assert registry.credentials("registry.example:5000", str(cfg)) == ("u", "p")
    assert registry.credentials("other.example", str(cfg)) == ("o", "x:y")
    assert registry.credentials("nowhere.example", str(cfg)) is None
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert registry.credentials("docker.io") == ("hub", "pw")
    assert registry.credentials("docker.io", str(tmp_path / "missing.json")) is None
    # credsStore names a helper that is not installed: reads fall back to auths (above), a login
    # fails rather than write a password in plaintext where the user asked for a keychain
    before = cfg.read_text()
    with pytest.raises(ImageError, match=r"^credential helper docker-credential-desktop \(credsStore in "
                                         r".*config.json\) is not installed or not on PATH$"):
        registry.login("index.docker.io", "me", "pw2", verify=False)
    assert cfg.read_text() == before
    doc = json.loads(before)
    del doc["credsStore"]
    cfg.write_text(json.dumps(doc))
    path = registry.login("index.docker.io", "me", "pw2", verify=False)
    assert path == str(cfg)
    doc = json.loads(cfg.read_text())
    assert doc["auths"]["other.example"]
    assert registry.credentials("docker.io") == ("me", "pw2")


# ------------------------------------------------------------------ credential helpers

HELPER = "hanoktest"          # docker-credential-hanoktest: a keychain of files, logs every call
FAILING = "hanoktest-fail"    # docker-credential-hanoktest-fail: always fails, logs every call
KEYCHAIN_SCRIPT = """#!/bin/sh
# A docker credential helper for the tests: one file per server URL in {keychain}.
keychain='{keychain}'
input=$(cat)
printf '%s\\t%s\\n' "$1" "$input" >> "$keychain/log"
case "$1" in
    get|erase) server=$input ;;
    store) server=$(printf '%s' "$input" | sed -n 's/.*"ServerURL": *"\\([^"]*\\)".*/\\1/p') ;;
    *) echo "unknown action $1"; exit 1 ;;
esac
file="$keychain/$(printf '%s' "$server" | tr '/:' '__')"
case "$1" in
    get) [ -f "$file" ] && exec cat "$file" ;;
    erase) [ -f "$file" ] && exec rm "$file" ;;
    store) printf '%s' "$input" > "$file"; exit 0 ;;
esac
echo "credentials not found in native keychain"
exit 1
"""
FAILING_SCRIPT = """#!/bin/sh
input=$(cat)
printf 'fail-%s\\t%s\\n' "$1" "$input" >> '{keychain}/log'
echo "pass store is locked:"
echo "  gpg: decryption failed: No secret key"
echo "stderr is not what docker reports" >&2
exit 1
"""


class Helpers:
    """Credential helper programs, first on PATH, with their keychain and the log of what they were asked."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.keychain = root / "keychain"
        self.bin.mkdir(parents=True)
        self.keychain.mkdir()
        (self.keychain / "log").touch()
        for suffix, script in ((HELPER, KEYCHAIN_SCRIPT), (FAILING, FAILING_SCRIPT)):
            exe = self.bin / f"docker-credential-{suffix}"
            exe.write_text(script.format(keychain=self.keychain))
            exe.chmod(0o755)

    def entry(self, server: str) -> Path:
        return self.keychain / server.replace("/", "_").replace(":", "_")

    def put(self, server: str, username: str, secret: str) -> None:
        self.entry(server).write_text(json.dumps({"ServerURL": server, "Username": username, "Secret": secret}))

    def log(self) -> list[tuple[str, str]]:
        lines = (self.keychain / "log").read_text().splitlines()
        return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


@pytest.fixture
def helpers(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Helpers]:
    root = env.work / f"helpers-{os.urandom(4).hex()}"
    try:
        h = Helpers(root)
        monkeypatch.setenv("PATH", f"{h.bin}{os.pathsep}{os.environ['PATH']}")
        yield h
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _basic_auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_pull_with_credentials_from_cred_helpers(env: Env, store: Store, docker_config: Path,
                                                 helpers: Helpers) -> None:
    host = env.basic.host
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credHelpers": {host: HELPER}, "credsStore": FAILING,
                                         "auths": {host: _basic_auth("alice", "wrong")}}))
    helpers.put(host, "alice", USERS["alice"])
    ref = f"{host}/test/busybox:1"
    assert registry.pull(store, ref) == ref
    assert store.image(ref).digest == env.bb_digest
    # asked once, with the registry's host as docker passes it; credsStore's helper never ran
    assert helpers.log() == [("get", host)]
    # a registry that asks for no credentials starts no helper (credsStore's would fail)
    assert registry.pull(store, f"{env.plain.host}/test/busybox:1") == f"{env.plain.host}/test/busybox:1"
    assert helpers.log() == [("get", host)]


def test_pull_with_credentials_from_creds_store(env: Env, store: Store, docker_config: Path,
                                                helpers: Helpers) -> None:
    host = env.basic.host
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credsStore": HELPER, "auths": {host: _basic_auth("alice", "wrong")}}))
    helpers.put(host, "alice", USERS["alice"])
    ref = f"{host}/test/busybox:1"
    assert registry.pull(store, ref) == ref  # the helper wins over auths' wrong password
    assert helpers.log() == [("get", host)]
    assert registry.credentials(host) == ("alice", USERS["alice"])


def test_helper_without_credentials_falls_back(env: Env, store: Store, docker_config: Path,
                                               helpers: Helpers) -> None:
    host = env.basic.host
    ref = f"{host}/test/busybox:1"
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credsStore": HELPER}))
    before = listing(store)
    with pytest.raises(ImageError) as err:
        registry.pull(store, ref)  # not in the keychain: anonymous, and the registry says 401
    assert str(err.value) == (f"unauthorized: {host} requires authentication for manifest {ref}: "
                              f"check `hanok login {host}`")
    assert helpers.log() == [("get", host)]
    assert_clean(store, before)
    # then auths, where `hanok login` wrote before it knew helpers
    docker_config.write_text(json.dumps({"credsStore": HELPER, "auths": {host: _basic_auth("alice", USERS["alice"])}}))
    assert registry.pull(store, ref) == ref
    # a helper that is not installed: the same fall back, and a 401 says why
    docker_config.write_text(json.dumps({"credsStore": "hanoktest-missing"}))
    with pytest.raises(ImageError) as err:
        registry.pull(env.store(), ref)
    assert str(err.value) == (f"unauthorized: {host} requires authentication for manifest {ref}: "
                              f"check `hanok login {host}` (credential helper docker-credential-hanoktest-missing "
                              f"(credsStore in {docker_config}) is not installed or not on PATH)")


def test_failing_helper_is_a_one_line_error(env: Env, store: Store, docker_config: Path,
                                            helpers: Helpers) -> None:
    host = env.basic.host
    ref = f"{host}/test/busybox:1"
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credHelpers": {host: FAILING},
                                         "auths": {host: _basic_auth("alice", USERS["alice"])}}))
    before = listing(store)
    with pytest.raises(ImageError) as err:
        registry.pull(store, ref)
    assert str(err.value) == (f"credential helper docker-credential-{FAILING} get for {host} failed (exit 1): "
                              "pass store is locked: gpg: decryption failed: No secret key")
    assert helpers.log() == [("fail-get", host)]
    assert_clean(store, before)
    # a helper that answers something other than its JSON
    docker_config.write_text(json.dumps({"credHelpers": {host: HELPER}}))
    helpers.entry(host).write_text("Username=alice")
    with pytest.raises(ImageError, match=rf"^credential helper docker-credential-{HELPER} get for {host} printed "
                                         r'something other than \{"Username","Secret"\} JSON$'):
        registry.pull(store, ref)
    assert_clean(store, before)


def test_login_and_logout_through_the_helper(env: Env, store: Store, docker_config: Path,
                                             helpers: Helpers) -> None:
    host = env.basic.host
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credsStore": HELPER, "auths": {
        host: _basic_auth("alice", "old-plaintext"), "other.example": _basic_auth("o", "p")}}))
    with pytest.raises(ImageError, match="rejected the credentials"):
        registry.login(host, "alice", "wrong")
    assert helpers.log() == []  # wrong credentials: nothing stored
    assert registry.login(host, "alice", USERS["alice"]) == f"docker-credential-{HELPER}"
    (action, sent), = helpers.log()
    assert action == "store"
    assert json.loads(sent) == {"ServerURL": host, "Username": "alice", "Secret": USERS["alice"]}
    # the plaintext copy is gone, the rest of config.json is as it was
    assert json.loads(docker_config.read_text()) == {"credsStore": HELPER,
                                                     "auths": {"other.example": _basic_auth("o", "p")}}
    ref = f"{host}/test/busybox:1"
    assert registry.pull(store, ref) == ref
    assert helpers.log()[-1] == ("get", host)
    assert registry.logout(host) == [f"docker-credential-{HELPER}"]
    assert helpers.log()[-1] == ("erase", host) and not helpers.entry(host).exists()
    assert registry.logout(host) == []
    with pytest.raises(ImageError, match="requires authentication"):
        registry.pull(env.store(), ref)
    # a helper that is not installed: login fails before asking the registry, nothing written
    docker_config.write_text(json.dumps({"credHelpers": {host: "hanoktest-missing"}}))
    with pytest.raises(ImageError, match=r"^credential helper docker-credential-hanoktest-missing \(credHelpers in "):
        registry.login(host, "alice", USERS["alice"], verify=False)
    assert json.loads(docker_config.read_text()) == {"credHelpers": {host: "hanoktest-missing"}}


def test_logout_from_auths(env: Env, docker_config: Path) -> None:
    host = env.basic.host
    assert registry.login(host, "alice", USERS["alice"]) == str(docker_config)
    doc = json.loads(docker_config.read_text())
    doc["auths"][f"https://{host}/v1/"] = _basic_auth("alice", "older")  # another spelling of the same registry
    docker_config.write_text(json.dumps(doc))
    assert registry.logout(f"https://{host}/") == [str(docker_config)]
    assert json.loads(docker_config.read_text()) == {"auths": {}}
    assert stat.S_IMODE(os.stat(docker_config).st_mode) == 0o600
    assert registry.logout(host) == []
    assert registry.credentials(host) is None


# ------------------------------------------------------------------ identity tokens

REFRESH_TOKEN = "hanok-test-refresh-token"


class OAuthServer(HTTPServerThread):
    """A token realm that takes OAuth2 refresh_token POSTs only (what docker sends for an identity token).

    Its tokens are signed by the session's TokenServer key, so a registry
    configured with this realm and that key's certificate accepts them.
    Records every POST form; GET answers 405.
    """

    def __init__(self, tokens: TokenServer):
        owner = self
        self.posts: list[tuple[str, dict[str, list[str]]]] = []  # (Content-Type, form)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._send(405, {"error": "unsupported"})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = parse_qs(body, keep_blank_values=True)
                owner.posts.append((self.headers.get("Content-Type", ""), form))
                if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [REFRESH_TOKEN]:
                    self._send(400, {"error": "invalid_grant"})
                    return
                token = tokens.issue("alice", form.get("scope", [""])[0].split(), grant=True)
                self._send(200, {"access_token": token, "expires_in": 300, "refresh_token": REFRESH_TOKEN})

            def _send(self, code: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)
        self.realm = f"http://{self.host}/oauth2/token"


@pytest.fixture
def oauth_registry(env: Env) -> Iterator[tuple[OAuthServer, Registry]]:
    """A registry whose token realm is an OAuthServer (its storage shared with the session's registries)."""
    server = OAuthServer(env.tokens)
    try:
        reg = Registry(env.work / f"oauth-{os.urandom(4).hex()}", env.work / "storage", {"token": {
            "realm": server.realm, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(env.tokens.cert)}})
        try:
            yield server, reg
        finally:
            reg.stop()
    finally:
        server.stop()


def test_identity_token_is_an_oauth2_refresh_token(env: Env, store: Store, docker_config: Path, helpers: Helpers,
                                                   oauth_registry: tuple[OAuthServer, Registry]) -> None:
    server, reg = oauth_registry
    ref = f"{reg.host}/test/busybox:1"
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credHelpers": {reg.host: HELPER}}))
    helpers.put(reg.host, registry.TOKEN_USERNAME, REFRESH_TOKEN)
    assert registry.pull(store, ref, max_workers=3) == ref
    assert store.image(ref).diff_ids == env.bb["diff_ids"]
    # one POST for the pull's scope, shaped as docker's (distribution's fetchTokenWithOAuth)
    assert server.posts == [("application/x-www-form-urlencoded", {
        "grant_type": ["refresh_token"], "refresh_token": [REFRESH_TOKEN], "service": [TOKEN_SERVICE],
        "scope": ["repository:test/busybox:pull"], "client_id": ["hanok"]})]
    # the same from an `identitytoken` in auths
    docker_config.write_text(json.dumps({"auths": {reg.host: {"identitytoken": REFRESH_TOKEN}}}))
    assert registry.pull(env.store(), ref) == ref
    assert len(server.posts) == 2
    # a refresh token the server does not take (400 invalid_grant): rejected, nothing stored
    docker_config.write_text(json.dumps({"auths": {reg.host: {"identitytoken": "revoked"}}}))
    other = env.store()
    before = listing(other)
    with pytest.raises(ImageError) as err:
        registry.pull(other, ref)
    assert str(err.value) == (f"unauthorized: {reg.host} rejected the credentials for manifest {ref}: "
                              f"check `hanok login {reg.host}`")
    assert_clean(other, before)


def test_identity_token_where_it_cannot_be_used(env: Env, store: Store, docker_config: Path) -> None:
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {env.basic.host: {"identitytoken": REFRESH_TOKEN},
                                                   env.token.host: {"identitytoken": REFRESH_TOKEN}}}))
    ref = f"{env.basic.host}/test/busybox:1"
    with pytest.raises(ImageError) as err:
        registry.pull(store, ref)  # basic auth wants a password
    assert str(err.value) == (f"unauthorized: {env.basic.host} asks for a password for manifest {ref} and the "
                              f"stored credential is an identity token: check `hanok login {env.basic.host}`")
    ref = f"{env.token.host}/test/busybox:1"
    with pytest.raises(ImageError) as err:
        registry.pull(store, ref)  # the session's token server answers GETs only
    assert str(err.value) == (f"token server {env.tokens.realm} does not take identity tokens (a POST answered "
                              f"501) for manifest {ref}: check `hanok login {env.token.host}`")
    assert store.refs() == {}


# ------------------------------------------------------------------ broken blobs and servers


def test_corrupt_blob_in_the_registry(env: Env, store: Store) -> None:
    layout = env.work / "corrupt-layout"
    info = write_layout(layout, [_tar({"corrupt-me": os.urandom(200_000)})], tag="c", compress=(True,))
    skopeo_push(layout, "c", f"{env.plain.host}/test/corrupt:1")
    blob = env.plain.blob_file(info["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size, different content
    before = listing(store)
    digest = info["layers"][0]["digest"]
    with pytest.raises(ImageError, match=f"digest mismatch: expected {digest}, got sha256:"):
        registry.pull(store, f"{env.plain.host}/test/corrupt:1")
    assert_clean(store, before)
    assert not store.has_blob(digest)


@pytest.mark.parametrize("honour_range", [True, False], ids=["resume", "restart"])
def test_dropped_connection_is_retried(env: Env, store: Store, proxy: Proxy, fast_retries: None,
                                       honour_range: bool) -> None:
    proxy.drop_blobs = 2
    proxy.honour_range = honour_range
    ref = f"{proxy.host}/test/busybox:1"
    assert registry.pull(store, ref, max_workers=1) == ref
    assert proxy.dropped == 2
    ranged = [e for e in proxy.blob_gets() if e[2]]
    assert len(ranged) == 2 and all(e[2].startswith("bytes=") and e[2] != "bytes=0-" for e in ranged)
    assert store.image(ref).diff_ids == env.bb["diff_ids"]
    assert os.listdir(store.tmp_dir) == []


def test_connection_dropped_every_time_gives_up(env: Env, store: Store, proxy: Proxy,
                                               fast_retries: None) -> None:
    proxy.drop_blobs = 1000
    before = listing(store)
    with pytest.raises(ImageError, match=r"^blob sha256:[0-9a-f]{64}: download failed after 3 attempts"):
        registry.pull(store, f"{proxy.host}/test/busybox:1")
    assert_clean(store, before)


def test_server_errors_are_retried_then_reported(store: Store, fast_retries: None) -> None:
    stub = StubServer(503)
    try:
        with pytest.raises(ImageError, match=r"registry 127.0.0.1:\d+ answered 503 .*UNAVAILABLE.* "
                                             r"after 3 attempts$"):
            registry.pull(store, f"{stub.host}/x/y:1")
        assert stub.count == 3
    finally:
        stub.stop()
    assert store.refs() == {}


def test_connection_refused_and_timeout(store: Store, fast_retries: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with pytest.raises(ImageError, match=rf"cannot connect to registry 127.0.0.1:{port}: connection refused"):
        registry.pull(store, f"127.0.0.1:{port}/x/y:1")
    monkeypatch.setattr(registry, "TIMEOUT", (1.0, 0.3))
    stub = StubServer(hang=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(ImageError, match=rf"registry {stub.host} timed out \(3 attempts\)"):
            registry.pull(store, f"{stub.host}/x/y:1")
        assert time.monotonic() - t0 < 10
    finally:
        stub.stop()


def test_https_unless_marked_insecure(env: Env, store: Store, fast_retries: None) -> None:
    ref = f"{env.plain.host}/test/busybox:1"
    with pytest.raises(ImageError, match="TLS error.*insecure registry"):
        registry.pull(store, ref, insecure_registries=())
    assert registry.pull(store, ref, insecure_registries=[env.plain.host]) == ref


def test_progress_and_no_requests_import_at_module_load(env: Env, store: Store) -> None:
    seen: dict[str, tuple[int, int]] = {}
    registry.pull(store, f"{env.plain.host}/test/busybox:1",
                  progress=lambda d, done, total: seen.__setitem__(d, (done, total)))
    img = store.image(f"{env.plain.host}/test/busybox:1")
    assert {layer["digest"] for layer in img.layers} <= set(seen)
    assert all(done == total for done, total in seen.values())
    out = subprocess.run([sys.executable, "-c", "import sys, hanok.images.registry; "
                          "print('requests' in sys.modules)"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert out.stdout.strip() == "False", out.stderr


def _pull_in_child(root: str, ref: str) -> None:
    registry.pull(Store(root), ref)


def test_concurrent_pulls_of_one_image(env: Env, store: Store) -> None:
    import multiprocessing

    ref = f"{env.plain.host}/test/busybox:1"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_pull_in_child, args=(store.root, ref)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    img = store.image(ref)
    assert img.digest == env.bb_digest
    assert sorted(store.layers()) == sorted(env.bb["diff_ids"])
    assert os.listdir(store.tmp_dir) == []


def _put_manifest(env: Env, repo: str, tag: str, manifest: dict) -> None:
    import requests

    body = json.dumps(manifest).encode()
    r = requests.put(f"http://{env.plain.host}/v2/{repo}/manifests/{tag}", data=body, timeout=10,
                     headers={"Content-Type": manifest["mediaType"]})
    assert r.status_code == 201, r.text


def test_unknown_layer_media_type(env: Env, store: Store) -> None:
    pulled = env.store()
    img = pulled.image(registry.pull(pulled, f"{env.plain.host}/test/busybox:1"))
    manifest = dict(img.manifest)
    manifest["layers"] = [dict(manifest["layers"][0], mediaType="application/x-hanok-unknown")] + \
        manifest["layers"][1:]
    _put_manifest(env, "test/busybox", "odd", manifest)
    before = listing(store)
    with pytest.raises(ImageError, match="layer 0 has unknown media type 'application/x-hanok-unknown'"):
        registry.pull(store, f"{env.plain.host}/test/busybox:odd")
    assert_clean(store, before)


def test_parse_challenge() -> None:
    assert registry._parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"') == ("bearer", {
            "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
            "scope": "repository:library/alpine:pull"})
    assert registry._parse_challenge('Basic realm="x y"') == ("basic", {"realm": "x y"})
    assert registry._parse_challenge('bearer realm=http://h/t, scope="a:b:pull,push"') == \
        ("bearer", {"realm": "http://h/t", "scope": "a:b:pull,push"})
