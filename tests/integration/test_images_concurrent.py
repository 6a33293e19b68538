"""Concurrent pulls and loads that share a layer: one failing never breaks the other.

Two images share their bottom layer S (the busybox layer of the offline
tests): G = [S, G2] is sound, F = [S, F2] has a corrupt F2 blob (in the
registry for a pull, in the layout for a load). F starts first on an empty
store and creates S; it is then held right before F2 (a proxy in front of a
real docker-registry holds F2's blob GET until released; a load is held by a
store whose `ingest` waits at F2's digest). G runs while F is held and finds S
in place, either still in flight when F fails (held the same way at G2) or
already done and tagged. Then F fails and rolls back. G must be complete and
runnable, and F must have left nothing of its own. Every pause is an Event:
the order is fixed, nothing sleeps and hopes.

Needs: docker-registry, skopeo, busybox-static (Debian). Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hanok.images import archive, overlay, registry
from hanok.images.store import Ingest, Operation, Store
from hanok.runtime.errors import ImageError
from registry_fixture import REGISTRY_BIN, Proxy, Registry
from test_images_offline import BUSYBOX, busybox_layers, tar_bytes, write_layout
from test_registry import skopeo_push

pytestmark = pytest.mark.skipif(
    not (os.path.exists(REGISTRY_BIN) and shutil.which("skopeo") and BUSYBOX.is_file()),
    reason="needs docker-registry, skopeo, busybox-static (apt-get install docker-registry skopeo busybox-static)")

WAIT = 60.0  # seconds an Event may take before the test fails (a hang, not a timing assert)


class Gate:
    """Holds one step of an operation: `arrived` when it gets there, it goes on at `release`."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.arrived.set()
        if not self.release.wait(WAIT):
            raise RuntimeError("gate never released")

    def reached(self) -> None:
        assert self.arrived.wait(WAIT), "the operation never reached its gate"


class GatedStore(Store):
    """A store whose blob writers stop at a gated digest before writing (how a load is held)."""

    def __init__(self, root: str, gates: dict[str, Gate]):
        super().__init__(root)
        self.gates = gates

    def ingest(self, expected_digest: str | None = None, expected_size: int | None = None,
               op: Operation | None = None) -> Ingest:
        gate = self.gates.get(expected_digest or "")
        if gate is not None:
            gate.hold()
        return super().ingest(expected_digest, expected_size, op)


class Runner:
    """One pull or load in a thread; keeps its result or exception."""

    def __init__(self, fn: Callable[[], object]):
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # handed to the test
            self.error = e

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the operation did not finish"


class Env:
    """A registry, a gating proxy in front of it, and the images F and G (pushed and as layouts)."""

    def __init__(self, work: Path):
        self.work = work
        self.stopping: list = []
        try:
            self.registry = Registry(work / "registry", work / "storage")
            self.stopping.append(self.registry)
            self.proxy = Proxy(self.registry.host)
            self.stopping.append(self.proxy)
            self._images()
        except BaseException:
            self.stop()
            raise

    def _images(self) -> None:
        shared = busybox_layers()[0]
        g2 = tar_bytes([("file", "g-file", b"from g\n", 0o644)])
        f2 = tar_bytes([("file", "f-file", os.urandom(20_000), 0o644)])  # smaller than S: pulled after it
        self.g = write_layout(self.work / "g-layout", [shared, g2], tag="g", compress=(True, True))
        self.f = write_layout(self.work / "f-layout", [shared, f2], tag="f", compress=(True, True))
        self.shared_blob = self.g["layers"][0]["digest"]
        self.shared = self.g["diff_ids"][0]
        self.g2_blob = self.g["layers"][1]["digest"]
        self.f2_blob = self.f["layers"][1]["digest"]
        assert self.f["layers"][0]["digest"] == self.shared_blob
        skopeo_push(self.work / "g-layout", "g", f"{self.registry.host}/test/g:1")
        skopeo_push(self.work / "f-layout", "f", f"{self.registry.host}/test/f:1")
        # F2 corrupt (same size, one byte flipped), in the registry and in the layout F is loaded from
        _flip_a_byte(self.registry.blob_file(self.f2_blob))
        _flip_a_byte(self.work / "f-layout" / "blobs" / "sha256" / self.f2_blob[7:])

    def stop(self) -> None:
        for s in reversed(self.stopping):
            s.stop()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    work = Path(os.environ.get("HANOK_TEST_TMP", "/var/tmp")) / f"hanok-concurrent-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        e = Env(work)
        try:
            yield e
        finally:
            e.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def gates(env: Env) -> Iterator[dict[str, Gate]]:
    """Gates by blob digest, seen by the proxy (pulls) and by GatedStore (loads); all opened at the end."""
    g: dict[str, Gate] = {}
    env.proxy.gates = g
    try:
        yield g
    finally:
        for gate in g.values():
            gate.release.set()
        env.proxy.gates = {}


@pytest.fixture
def store_root(env: Env, request: pytest.FixtureRequest) -> Iterator[str]:
    root = env.work / "stores" / request.node.name.replace("[", "-").replace("]", "")
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


def _start(how: str, image: str, env: Env, root: str, gates: dict[str, Gate]) -> Runner:
    name = f"localhost/{image}:1"
    if how == "pull":
        # one worker: the bigger shared layer first, so a gate at the second blob means S is done
        return Runner(lambda: registry.pull(Store(root), f"{env.proxy.host}/test/{image}:1", max_workers=1))
    return Runner(lambda: archive.load(GatedStore(root, gates), str(env.work / f"{image}-layout"), name=name))


def _expected_name(how: str, env: Env, image: str) -> str:
    return f"{env.proxy.host}/test/{image}:1" if how == "pull" else f"localhost/{image}:1"


def _assert_runs(store: Store, name: str, scratch: Path) -> None:
    """G as a container would see it: its layers stacked under a writable one, busybox run inside."""
    lowers = list(reversed(store.image(name).layer_dirs()))  # top first
    for d in ("upper", "work", "merged"):
        (scratch / d).mkdir(parents=True)
    merged = scratch / "merged"
    overlay.mount(lowers, str(scratch / "upper"), str(scratch / "work"), str(merged))
    try:
        out = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", "cat /g-file && /bin/busybox echo ran"],
                             capture_output=True, text=True, timeout=30)
    finally:
        overlay.unmount(str(merged))
    assert (out.returncode, out.stdout) == (0, "from g\nran\n"), out.stderr


@pytest.mark.parametrize("when", ["g-in-flight", "g-tagged-first"])
@pytest.mark.parametrize("survivor", ["pull", "load"])
@pytest.mark.parametrize("failing", ["pull", "load"])
def test_a_failing_operation_keeps_the_layer_another_one_relies_on(env: Env, gates: dict[str, Gate],
                                                                   store_root: str, failing: str,
                                                                   survivor: str, when: str) -> None:
    store = Store(store_root)
    gates[env.f2_blob] = f_gate = Gate()
    f = _start(failing, "f", env, store_root, gates)
    f_gate.reached()
    assert store.has_layer(env.shared) and store.has_blob(env.shared_blob)  # F made S and waits at F2

    if when == "g-in-flight":
        gates[env.g2_blob] = g_gate = Gate()
        g = _start(survivor, "g", env, store_root, gates)
        g_gate.reached()  # G found S in place and relies on it
        f_gate.release.set()
        f.join()
        g_gate.release.set()
        g.join()
    else:
        g = _start(survivor, "g", env, store_root, gates)
        g.join()
        f_gate.release.set()
        f.join()

    assert isinstance(f.error, ImageError), f.error
    assert f"digest mismatch: expected {env.f2_blob}" in str(f.error)
    assert g.error is None, g.error
    g_name = _expected_name(survivor, env, "g")
    assert g.result == (g_name if survivor == "pull" else [g_name])

    # G complete: exactly its blobs and layers are in the store, S with its files
    img = store.image(g_name)
    assert store.refs() == {g_name: img.digest}
    assert store.has_layer(env.shared) and store.has_blob(env.shared_blob), "F's rollback removed G's shared layer"
    assert sorted(store.layers()) == sorted(env.g["diff_ids"])
    assert sorted(store.blobs()) == sorted({img.digest, img.config_digest, *(d["digest"] for d in img.layers)})
    assert (Path(store.layer_path(env.shared)) / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    # F left nothing of its own: no F2 blob, no F config or manifest (the exact listings above), no tmp files
    assert not store.has_blob(env.f2_blob)
    assert os.listdir(store.tmp_dir) == []
    assert os.listdir(store.claims_dir) == []
    _assert_runs(store, g_name, Path(store_root) / "run")


def test_a_failing_operation_alone_still_leaves_nothing(env: Env, gates: dict[str, Gate], store_root: str) -> None:
    """Nobody else relies on S: F's rollback removes S too, and the store is as empty as before."""
    store = Store(store_root)
    with pytest.raises(ImageError, match=f"digest mismatch: expected {env.f2_blob}"):
        registry.pull(store, f"{env.proxy.host}/test/f:1", max_workers=1)
    with pytest.raises(ImageError, match=f"digest mismatch: expected {env.f2_blob}"):
        archive.load(store, str(env.work / "f-layout"), name="localhost/f:1")
    assert store.refs() == {} and store.blobs() == [] and store.layers() == []
    assert os.listdir(store.tmp_dir) == [] and os.listdir(store.claims_dir) == []

