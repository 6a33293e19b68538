"""The `hanok` image commands, driven as a person or a node agent would: the installed binary.

pull, login, load, save, import, images, image inspect, rmi and image prune
against a real store in a temporary directory (`hanok --store DIR`), with the
busybox test image of test_images_offline.py, and for pull/login Debian's
docker-registry on 127.0.0.1 (registry_fixture.py), the image pushed with
skopeo. Every check is on the exit code and the exact output; failures must
be one `hanok: ...` line on stderr with exit code 125 (usage errors: 2).

Needs root (the layers hold device nodes and setuid files) and busybox-static;
the registry tests also need docker-registry, apache2-utils, skopeo.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_fixture import REGISTRY_BIN, Registry, htpasswd_line
from test_images_offline import BUSYBOX, busybox_layers, write_layout

HANOK = str(Path(sys.executable).parent / "hanok")
SKOPEO = shutil.which("skopeo")
USER, PASSWORD = "alice", "s3cret-pw"
NAME = "localhost/layout:test"  # what `load` names the layout dir `layout` tagged `test`

needs_registry = pytest.mark.skipif(
    not (os.path.exists(REGISTRY_BIN) and SKOPEO and shutil.which("htpasswd")),
    reason="needs docker-registry, skopeo, apache2-utils (apt-get install docker-registry skopeo apache2-utils)")


def hanok(store: Path | None, *args: str, input: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [HANOK] + (["--store", str(store)] if store is not None else []) + list(args)
    full_env = dict(os.environ)
    full_env.pop("HANOK_ROOT", None)
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, input=input if input is not None else "",
                          timeout=120, env=full_env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 125, nothing on stdout, exactly `hanok: <message>` on stderr."""
    assert (done.returncode, done.stdout, done.stderr) == (125, "", f"hanok: {message}\n")


def human(n: int) -> str:
    """The SIZE column's format, written out independently: docker's decimal units, 3 digits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    if not os.path.exists(HANOK):
        pytest.skip(f"{HANOK} missing: install hanok into this venv")
    path = Path(os.environ.get("HANOK_TEST_TMP", "/var/tmp")) / f"hanok-cli-images-{os.getpid()}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Layout:
    def __init__(self, path: Path, info: dict):
        self.path = path
        self.digest: str = info["manifest"]
        self.diff_ids: list[str] = info["diff_ids"]
        self.blobs: list[str] = [layer["digest"] for layer in info["layers"]]
        self.size: int = sum(layer["size"] for layer in info["layers"])
        manifest = json.loads((path / "blobs" / "sha256" / self.digest[7:]).read_text())
        self.id: str = manifest["config"]["digest"]
        self.short_id = self.id[7:19]


@pytest.fixture(scope="module")
def layout(work: Path) -> Layout:
    path = work / "layout"
    return Layout(path, write_layout(path, busybox_layers()))


_STORES = itertools.count(1)


@pytest.fixture
def store(work: Path) -> Path:
    """A fresh store directory for this test (hanok creates it)."""
    return work / "stores" / f"s{next(_STORES)}"


@pytest.fixture
def loaded(store: Path, layout: Layout) -> Path:
    assert ok(hanok(store, "load", "-i", str(layout.path))) == f"{NAME}\n"
    return store


def table(*rows: tuple[str, ...]) -> str:
    rows = (("REPOSITORY", "TAG", "IMAGE ID", "SIZE"),) + rows
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


# ------------------------------------------------------------------ offline


def test_load_then_images_and_inspect(loaded: Path, layout: Layout) -> None:
    assert ok(hanok(loaded, "images")) == table(("localhost/layout", "test", layout.short_id, human(layout.size)))
    assert json.loads(ok(hanok(loaded, "images", "--json"))) == [{
        "name": NAME, "digest": layout.digest, "id": layout.id, "size": layout.size,
        "created": "2024-01-01T00:00:00Z"}]
    assert ok(hanok(loaded, "images", "--quiet")) == f"{layout.short_id}\n"
    info = json.loads(ok(hanok(loaded, "image", "inspect", NAME)))
    assert (info["names"], info["digest"], info["id"]) == ([NAME], layout.digest, layout.id)
    assert info["layers"] == [str(loaded / "layers" / d[7:]) for d in layout.diff_ids]
    # by id prefix and by digest too; and the store from $HANOK_ROOT
    assert json.loads(ok(hanok(loaded, "image", "inspect", layout.short_id)))["digest"] == layout.digest
    assert json.loads(ok(hanok(loaded, "image", "inspect", layout.digest)))["digest"] == layout.digest
    assert ok(hanok(None, "images", "-q", env={"HANOK_ROOT": str(loaded)})) == f"{layout.short_id}\n"


def test_load_json_and_again_is_idempotent(loaded: Path, layout: Layout) -> None:
    assert json.loads(ok(hanok(loaded, "load", "--json", "-i", str(layout.path)))) == [
        {"name": NAME, "digest": layout.digest, "id": layout.id}]
    assert json.loads(ok(hanok(loaded, "images", "--json")))[0]["digest"] == layout.digest


@pytest.mark.parametrize("dest", ["out", "out.tar"])
def test_save_then_load_into_a_second_store(loaded: Path, layout: Layout, work: Path, dest: str) -> None:
    target = work / f"saved-{os.getpid()}-{dest}"
    assert ok(hanok(loaded, "save", "-o", str(target), NAME)) == ""
    assert target.is_dir() == (dest == "out")
    second = work / f"second-{dest}"
    assert ok(hanok(second, "load", "-i", str(target))) == f"{NAME}\n"
    assert json.loads(ok(hanok(second, "images", "--json")))[0]["digest"] == layout.digest
    assert ok(hanok(second, "images")) == ok(hanok(loaded, "images"))


def test_import_a_directory(store: Path, work: Path) -> None:
    rootfs = work / "import-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "hello").write_text("hi\n")
    assert ok(hanok(store, "import", str(rootfs), "localhost/imp:1")) == "localhost/imp:1\n"
    info = json.loads(ok(hanok(store, "image", "inspect", "localhost/imp:1")))
    assert info["names"] == ["localhost/imp:1"]
    assert len(info["layers"]) == 1
    assert (Path(info["layers"][0]) / "etc" / "hello").read_text() == "hi\n"
    assert ok(hanok(store, "images")) == table(("localhost/imp", "1", info["id"][7:19], human(info["size"])))


def test_rmi_then_images_is_empty_and_prune_frees_the_blobs(loaded: Path, layout: Layout) -> None:
    assert ok(hanok(loaded, "rmi", NAME)) == f"Untagged: {NAME}\n"
    assert ok(hanok(loaded, "images")) == table()
    assert ok(hanok(loaded, "images", "--json")) == "[]\n"
    assert ok(hanok(loaded, "images", "-q")) == ""
    blobs_dir = loaded / "blobs" / "sha256"
    freed = sum(p.stat().st_size for p in blobs_dir.iterdir())
    blobs = sorted("sha256:" + p.name for p in blobs_dir.iterdir())
    assert sorted(blobs) == sorted(layout.blobs + [layout.digest, layout.id])
    out = ok(hanok(loaded, "image", "prune"))
    assert out == "".join(f"deleted blob {d}\n" for d in blobs) \
        + "".join(f"deleted layer {d}\n" for d in sorted(layout.diff_ids)) \
        + f"Total reclaimed space: {human(freed)}\n"
    assert list(blobs_dir.iterdir()) == [] and list((loaded / "layers").iterdir()) == []
    assert json.loads(ok(hanok(loaded, "image", "prune", "--json"))) == {"blobs": [], "layers": [], "bytes": 0}


def test_rmi_by_id_removes_every_name_and_prune_keeps_what_is_used(loaded: Path, layout: Layout) -> None:
    assert ok(hanok(loaded, "load", "-i", str(layout.path))) == f"{NAME}\n"
    ok(hanok(loaded, "import", str(layout.path), "localhost/other:1"))  # any dir will do
    assert ok(hanok(loaded, "image", "prune")) == "Total reclaimed space: 0B\n"
    assert ok(hanok(loaded, "rmi", layout.short_id)) == f"Untagged: {NAME}\n"
    assert [i["name"] for i in json.loads(ok(hanok(loaded, "images", "--json")))] == ["localhost/other:1"]


def test_rmi_goes_on_after_an_unknown_name(loaded: Path) -> None:
    done = hanok(loaded, "rmi", "nope", NAME)
    assert (done.returncode, done.stdout, done.stderr) == (
        125, f"Untagged: {NAME}\n", "hanok: image not known: nope\n")


@pytest.mark.parametrize("args, message", [
    (("load", "-i", "/nonexistent/image.tar"), "no such file or directory: /nonexistent/image.tar"),
    (("rmi", "nope"), "image not known: nope"),
    (("image", "inspect", "nope:1"), "image not known: nope:1"),
    (("save", "-o", "/tmp/never-written.tar", "nope"), "image not known: nope"),
    (("pull", "Bad:Ref"),
     "invalid image reference 'Bad:Ref': bad repository name 'library/Bad' (repository names must be lowercase)"),
    (("pull", "--platform", "linux", "localhost/x"), "invalid platform 'linux': expected os/arch[/variant]"),
    (("import", "/nonexistent/rootfs", "x"), "no such file or directory: /nonexistent/rootfs"),
])
def test_bad_input_is_one_line_and_125(store: Path, args: tuple[str, ...], message: str) -> None:
    failed(hanok(store, *args), message)
    assert not Path("/tmp/never-written.tar").exists()


def test_load_of_something_else(store: Path, work: Path) -> None:
    empty = work / "not-a-layout"
    empty.mkdir(exist_ok=True)
    failed(hanok(store, "load", "-i", str(empty)),
           f"{empty}: neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)")
    assert ok(hanok(store, "images", "--json")) == "[]\n"


@pytest.mark.parametrize("args", [("load",), ("save", "x"), ("rmi",), ("images", "extra"), ("pull",)])
def test_usage_errors_exit_2(store: Path, args: tuple[str, ...]) -> None:
    done = hanok(store, *args)
    assert done.returncode == 2 and done.stdout == "" and "Usage: hanok" in done.stderr, done


@pytest.mark.parametrize("command", [("pull",), ("login",), ("load",), ("save",), ("import",), ("images",),
                                     ("rmi",), ("image", "inspect"), ("image", "prune")])
def test_help_has_an_example(command: tuple[str, ...]) -> None:
    out = ok(hanok(None, *command, "--help"))
    assert f"Usage: hanok {' '.join(command)} " in out
    assert f"Example:\n    hanok {command[0]}" in out or "Example:\n    echo" in out


# ------------------------------------------------------------------ registry


class Registries:
    def __init__(self, work: Path, layout: Layout):
        storage = work / "registry-storage"
        (work / "auth").mkdir(parents=True, exist_ok=True)
        (work / "auth" / "htpasswd").write_text(htpasswd_line(USER, PASSWORD))
        self.plain = Registry(work / "registry-plain", storage)
        try:
            self.basic = Registry(work / "registry-basic", storage, {
                "htpasswd": {"realm": "hanok-test", "path": str(work / "auth" / "htpasswd")}})
        except BaseException:
            self.plain.stop()
            raise
        digestfile = work / "pushed.digest"
        subprocess.run([SKOPEO, "copy", "--insecure-policy", "--dest-tls-verify=false", "--digestfile",
                        str(digestfile), f"oci:{layout.path}:test", f"docker://{self.plain.host}/test/busybox:1"],
                       check=True, capture_output=True, timeout=120)
        self.digest = digestfile.read_text().strip()
        # skopeo recompresses the plain layer: the pushed manifest is the registry's to tell
        request = urllib.request.Request(
            f"http://{self.plain.host}/v2/test/busybox/manifests/{self.digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            manifest = json.loads(r.read())
        self.id = manifest["config"]["digest"]
        self.size = sum(layer["size"] for layer in manifest["layers"])

    def stop(self) -> None:
        self.basic.stop()
        self.plain.stop()


@pytest.fixture(scope="module")
def registries(work: Path, layout: Layout) -> Iterator[Registries]:
    r = Registries(work, layout)
    yield r
    r.stop()


@needs_registry
def test_pull_from_the_local_registry(registries: Registries, store: Path, layout: Layout) -> None:
    ref = f"{registries.plain.host}/test/busybox:1"
    assert ok(hanok(store, "pull", ref)) == f"{ref}\n"
    reg = registries
    assert json.loads(ok(hanok(store, "images", "--json"))) == [{
        "name": ref, "digest": reg.digest, "id": reg.id, "size": reg.size,
        "created": "2024-01-01T00:00:00Z"}]
    assert ok(hanok(store, "images")) == table(
        (f"{reg.plain.host}/test/busybox", "1", reg.id[7:19], human(reg.size)))
    info = json.loads(ok(hanok(store, "image", "inspect", ref)))
    assert [Path(p).name for p in info["layers"]] == [d[7:] for d in layout.diff_ids]
    # again, by digest, with --json and --quiet: nothing to fetch, same image
    by_digest = f"{reg.plain.host}/test/busybox@{reg.digest}"
    assert json.loads(ok(hanok(store, "pull", "--json", by_digest))) == {
        "name": by_digest, "digest": reg.digest, "id": reg.id}
    assert ok(hanok(store, "pull", "-q", ref)) == f"{ref}\n"


@needs_registry
def test_pull_unknown_tag_and_dead_registry(registries: Registries, store: Path) -> None:
    done = hanok(store, "pull", f"{registries.plain.host}/test/busybox:nope")
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith("hanok: ") and done.stderr.count("\n") == 1, done.stderr
    assert "busybox:nope" in done.stderr
    assert ok(hanok(store, "images", "--json")) == "[]\n"


@needs_registry
def test_login_then_pull_with_basic_auth(registries: Registries, store: Path, work: Path) -> None:
    config_dir = work / "docker-config"
    env = {"DOCKER_CONFIG": str(config_dir)}
    ref = f"{registries.basic.host}/test/busybox:1"
    done = hanok(store, "pull", ref, env=env)
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith(f"hanok: unauthorized: {registries.basic.host} requires authentication")
    assert done.stderr.count("\n") == 1
    done = hanok(store, "login", "-u", USER, "--password-stdin", registries.basic.host, input="wrong\n", env=env)
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith(f"hanok: unauthorized: {registries.basic.host} rejected the credentials")
    assert done.stderr.count("\n") == 1
    assert not (config_dir / "config.json").exists()
    assert ok(hanok(store, "login", "-u", USER, "--password-stdin", registries.basic.host,
                    input=f"{PASSWORD}\n", env=env)) == "Login Succeeded\n"
    assert (config_dir / "config.json").stat().st_mode & 0o777 == 0o600
    assert list(json.loads((config_dir / "config.json").read_text())["auths"]) == [registries.basic.host]
    assert ok(hanok(store, "pull", ref, env=env)) == f"{ref}\n"


def test_login_password_stdin_needs_a_user(store: Path) -> None:
    done = hanok(store, "login", "--password-stdin", "127.0.0.1:1", input="pw\n")
    assert done.returncode == 2 and "--password-stdin needs --username" in done.stderr, done


@needs_registry
def test_run_pulls_a_missing_image_then_runs_it(registries: Registries, store: Path, work: Path) -> None:
    """`hanok run REF` as a node agent would use it: not stored yet, so pulled from the registry first."""
    ref = f"{registries.plain.host}/test/busybox:1"
    run_dir = work / f"state-{store.name}"
    state = {"HANOK_STATE": str(run_dir)}
    try:
        done = hanok(store, "run", "--rm", "--network", "none", ref, "sh", "-c", "echo pulled and ran; exit 3",
                     env=state)
        assert (done.returncode, done.stdout, done.stderr) == (3, "pulled and ran\n", ""), done
        assert [i["name"] for i in json.loads(ok(hanok(store, "images", "--json")))] == [ref]
        assert json.loads(ok(hanok(store, "ps", "-a", "--json", env=state))) == []
        failed(hanok(store, "run", "--rm", "--network", "none", f"{registries.plain.host}/test/nosuch:1", "true",
                     env=state), f"manifest unknown: {registries.plain.host}/test/nosuch:1 not found")
    finally:
        # the netns directory stays a (shared) mount of itself once made, as /run/netns does with `ip netns`
        if f" {run_dir}/netns " in Path("/proc/self/mountinfo").read_text():
            subprocess.run(["umount", str(run_dir / "netns")], check=True)
