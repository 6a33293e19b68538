"""rootfs.resolve_in_root: a path resolved as if the rootfs were "/".

Symlinks (absolute or relative) and ".." must never lead out of the root; the
result is a host path under root. Runs on a temporary tree, no root needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hanok.runtime.errors import SpecError
from hanok.runtime.rootfs import resolve_in_root


@pytest.fixture
def root(tmp_path: Path) -> str:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (r / "a" / "b" / "c").mkdir(parents=True)
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "file").write_text("")
    return os.path.realpath(r)


def link(root: str, name: str, target: str) -> None:
    path = os.path.join(root, name.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + "/")


def no_symlink_below_root(root: str, path: str) -> bool:
    rel = os.path.relpath(path, root)
    current = root
    for part in ([] if rel == "." else rel.split("/")):
        current = os.path.join(current, part)
        if os.path.islink(current):
            return False
    return True


@pytest.mark.parametrize("path, want", [
    ("/", ""),
    ("", ""),
    (".", ""),
    ("/etc", "etc"),
    ("etc", "etc"),
    ("/etc/", "etc"),
    ("//etc//passwd", "etc/passwd"),
    ("/./etc/./passwd", "etc/passwd"),
    ("/a/b/c", "a/b/c"),
    ("/a/b/../b/c", "a/b/c"),
    ("/..", ""),
    ("/../../..", ""),
    ("/../etc", "etc"),
    ("/a/../../../etc", "etc"),
])
def test_plain_paths(root: str, path: str, want: str) -> None:
    assert resolve_in_root(root, path) == (os.path.join(root, want) if want else root)


@pytest.mark.parametrize("path, want", [
    ("/missing", "missing"),
    ("/missing/deeper/still", "missing/deeper/still"),
    ("/a/b/missing", "a/b/missing"),
    ("/a/b/c/x/y", "a/b/c/x/y"),
    ("/missing/../etc", "etc"),
    ("/missing/../../..", ""),
])
def test_missing_tail_components(root: str, path: str, want: str) -> None:
    got = resolve_in_root(root, path)
    assert got == (os.path.join(root, want) if want else root)
    assert inside(root, got)


def test_absolute_symlink_stays_in_root(root: str) -> None:
    link(root, "/hostetc", "/etc")  # on the host this would be the host's /etc
    assert resolve_in_root(root, "/hostetc") == os.path.join(root, "etc")
    assert resolve_in_root(root, "/hostetc/passwd") == os.path.join(root, "etc/passwd")
    assert resolve_in_root(root, "/hostetc/shadow") == os.path.join(root, "etc/shadow")


def test_absolute_symlink_in_subdir(root: str) -> None:
    link(root, "/a/b/lib", "/usr/lib")
    assert resolve_in_root(root, "/a/b/lib/x.so") == os.path.join(root, "usr/lib/x.so")


def test_relative_symlink(root: str) -> None:
    link(root, "/a/b/sib", "c")
    link(root, "/a/b/up", "../b/c")
    assert resolve_in_root(root, "/a/b/sib") == os.path.join(root, "a/b/c")
    assert resolve_in_root(root, "/a/b/up/new") == os.path.join(root, "a/b/c/new")


def test_relative_symlink_climbing_out_stays_in_root(root: str) -> None:
    link(root, "/a/b/escape", "../../../../../../../..")
    assert resolve_in_root(root, "/a/b/escape") == root
    link(root, "/a/b/escape-etc", "../../../../../../etc")
    assert resolve_in_root(root, "/a/b/escape-etc") == os.path.join(root, "etc")
    assert resolve_in_root(root, "/a/b/escape-etc/passwd") == os.path.join(root, "etc/passwd")
    link(root, "/a/b/escape-missing", "../../../../../tmp/evil")
    assert resolve_in_root(root, "/a/b/escape-missing") == os.path.join(root, "tmp/evil")


def test_symlink_to_slash_then_dotdot(root: str) -> None:
    link(root, "/slash", "/")
    assert resolve_in_root(root, "/slash") == root
    assert resolve_in_root(root, "/slash/..") == root
    assert resolve_in_root(root, "/slash/../..") == root
    assert resolve_in_root(root, "/slash/../etc") == os.path.join(root, "etc")
    assert resolve_in_root(root, "/slash/slash/slash/etc/passwd") == os.path.join(root, "etc/passwd")
    link(root, "/a/dotdot", "..")
    assert resolve_in_root(root, "/a/dotdot") == root
    assert resolve_in_root(root, "/a/dotdot/etc") == os.path.join(root, "etc")
    assert resolve_in_root(root, "/a/dotdot/a/dotdot/a/dotdot/../../etc") == os.path.join(root, "etc")


def test_dotdot_after_symlink_uses_the_target(root: str) -> None:
    """`..` after a symlink goes up from where the link points (chroot semantics),
    not lexically from the link's own directory."""
    link(root, "/x/deep", "/a/b/c")
    assert resolve_in_root(root, "/x/deep/..") == os.path.join(root, "a/b")
    assert resolve_in_root(root, "/x/deep/../../etc") == os.path.join(root, "a/etc")


def test_symlink_chain(root: str) -> None:
    link(root, "/l1", "l2")
    link(root, "/l2", "/sub/l3")
    link(root, "/sub/l3", "../l4")
    link(root, "/l4", "a/b")
    assert resolve_in_root(root, "/l1") == os.path.join(root, "a/b")
    assert resolve_in_root(root, "/l1/c") == os.path.join(root, "a/b/c")
    assert resolve_in_root(root, "/l1/c/new") == os.path.join(root, "a/b/c/new")


def test_long_but_finite_chain(root: str) -> None:
    for i in range(30):
        link(root, f"/n{i}", f"n{i + 1}")
    link(root, "/n30", "/etc")
    assert resolve_in_root(root, "/n0/passwd") == os.path.join(root, "etc/passwd")


def test_dangling_symlink_resolves_to_its_target(root: str) -> None:
    link(root, "/dangling", "/var/run/thing")
    assert resolve_in_root(root, "/dangling") == os.path.join(root, "var/run/thing")


@pytest.mark.parametrize("links, path", [
    ([("/self", "self")], "/self"),
    ([("/self", "/self")], "/self/x"),
    ([("/l1", "l2"), ("/l2", "l1")], "/l1"),
    ([("/l1", "/l2"), ("/l2", "/l1")], "/etc/../l2/x"),
    ([("/a/b/c/loop", "../../../a/b/c/loop")], "/a/b/c/loop"),
    ([("/up", "up/x")], "/up"),
])
def test_symlink_loops(root: str, links: list[tuple[str, str]], path: str) -> None:
    for name, target in links:
        link(root, name, target)
    with pytest.raises(SpecError) as info:
        resolve_in_root(root, path)
    assert path in str(info.value)
    assert "symbolic links" in str(info.value)


def test_root_with_trailing_slash(root: str) -> None:
    link(root, "/hostetc", "/etc")
    assert resolve_in_root(root + "/", "/hostetc/passwd") == os.path.join(root, "etc/passwd")


def test_symlink_through_missing_dir_then_dotdot(root: str) -> None:
    """A link target that goes through a missing directory and back up must still
    have its later components resolved: the result must not be a symlink that
    points out of the root."""
    link(root, "/evil", "/etc")
    link(root, "/trick", "missing/../evil")
    got = resolve_in_root(root, "/trick/passwd")
    assert got == os.path.join(root, "etc/passwd")
    assert no_symlink_below_root(root, got)


@pytest.mark.parametrize("path", [
    "/", "/etc", "/hostetc/passwd", "/a/b/escape", "/a/b/escape/etc", "/slash/..", "/l1",
    "/../../../../x", "/a/b/escape/../../..", "/missing/x", "/a/b/c/../../../../..",
])
def test_results_always_inside_root(root: str, path: str) -> None:
    link(root, "/hostetc", "/etc")
    link(root, "/a/b/escape", "../../../../../../..")
    link(root, "/slash", "/")
    link(root, "/l1", "/a/b/escape/../../etc")
    got = resolve_in_root(root, path)
    assert inside(root, got), got
    assert os.path.normpath(got) == got
    assert no_symlink_below_root(root, got), got
