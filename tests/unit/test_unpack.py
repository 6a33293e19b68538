"""images/unpack.py: the root-confined layer extractor.

Layers are written by hand with tarfile. Every hostile case runs with a
sentinel directory next to the layer directory and checks that it is exactly
as before: the archive is either contained (written inside the layer) or
rejected with a one-line ImageError. Cases that create device nodes or
whiteouts need root and skip otherwise.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hanok.images import unpack
from hanok.runtime.errors import ImageError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (device nodes, whiteouts, chown)")

Entry = tuple  # (kind, name, *args)


def make_tar(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Entries: ("file", name, data[, mode, uid, gid, mtime, pax]), ("dir", name[, mode]),
    ("sym", name, target), ("hard", name, target), ("chr", name, major, minor), ("fifo", name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for kind, name, *args in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if kind == "file":
                data = args[0] if args else b""
                info.size = len(data)
                info.mode = args[1] if len(args) > 1 else 0o644
                if len(args) > 2:
                    info.uid, info.gid = args[2], args[3]
                if len(args) > 4:
                    info.mtime = args[4]
                if len(args) > 5:
                    info.pax_headers = args[5]
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = args[0] if args else 0o755
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = args[0]
                info.mode = 0o777
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = args[0]
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = args[0], args[1]
                info.mode = 0o666
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                info.mode = 0o644
            tar.addfile(info)
    return buf.getvalue()


def listing(path: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            content = Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_nlink, content)
    return out


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(layer dir, sentinel dir outside it holding one file)."""
    layer = tmp_path / "layer"
    outside = tmp_path / "outside"
    layer.mkdir()
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"keep")
    return layer, outside


def run(layer: Path, data: bytes) -> str:
    return unpack.unpack(io.BytesIO(data), str(layer))


# ------------------------------------------------------------------ formats


def test_basic_tree_modes_mtimes_and_diff_id(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = make_tar([
        ("dir", "./", 0o755),
        ("dir", "etc", 0o750),
        ("file", "etc/hosts", b"127.0.0.1 localhost\n", 0o640, 0, 0, 1_500_000_000),
        ("file", "bin/tool", b"\x7fELF", 0o4755),  # parent made implicitly
        ("sym", "bin/sh", "busybox"),
        ("sym", "abs", "/etc/hosts"),
        ("hard", "etc/hosts2", "etc/hosts"),
        ("fifo", "run.fifo"),
        ("file", "big", os.urandom(3 << 20)),
    ])
    digest = run(layer, data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (layer / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    st = os.lstat(layer / "etc/hosts")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime == 1_500_000_000
    assert stat.S_IMODE(os.lstat(layer / "etc").st_mode) == 0o750
    assert os.lstat(layer / "etc").st_mtime == 1_600_000_000  # set after its children
    assert stat.S_IMODE(os.lstat(layer / "bin/tool").st_mode) == 0o4755  # setuid kept
    assert os.readlink(layer / "bin/sh") == "busybox"
    assert os.readlink(layer / "abs") == "/etc/hosts"  # absolute targets kept verbatim
    assert os.lstat(layer / "etc/hosts2").st_ino == st.st_ino
    assert stat.S_ISFIFO(os.lstat(layer / "run.fifo").st_mode)
    assert len((layer / "big").read_bytes()) == 3 << 20


def test_gzip_and_plain_give_the_same_diff_id(tmp_path: Path) -> None:
    data = make_tar([("file", "a", b"x" * 10000), ("dir", "d")])
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    plain = run(tmp_path / "p", data)
    gz = run(tmp_path / "g", gzip.compress(data))
    assert plain == gz == "sha256:" + hashlib.sha256(data).hexdigest()
    # multi-member gzip is one stream too
    (tmp_path / "m").mkdir()
    half = len(data) // 2
    assert run(tmp_path / "m", gzip.compress(data[:half]) + gzip.compress(data[half:])) == plain


def test_gnu_format_and_long_names(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    long = "d/" + "n" * 200
    run(layer, make_tar([("file", long, b"1"), ("sym", "l" * 150, "t" * 150)], fmt=tarfile.GNU_FORMAT))
    assert (layer / long).read_bytes() == b"1"
    assert os.readlink(layer / ("l" * 150)) == "t" * 150


def test_last_entry_wins(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    run(layer, make_tar([
        ("file", "twice", b"first"),
        ("file", "twice", b"second", 0o600),
        ("file", "f2d", b"file"),
        ("dir", "f2d"),
        ("file", "f2d/in", b"in"),
        ("dir", "d2f"),
        ("file", "d2f/x", b"x"),
        ("file", "d2f", b"now a file"),
        ("sym", "s2f", "/etc/passwd"),
        ("file", "s2f", b"plain"),
    ]))
    assert (layer / "twice").read_bytes() == b"second"
    assert stat.S_IMODE(os.lstat(layer / "twice").st_mode) == 0o600
    assert (layer / "f2d/in").read_bytes() == b"in"
    assert (layer / "d2f").read_bytes() == b"now a file"
    assert not (layer / "s2f").is_symlink() and (layer / "s2f").read_bytes() == b"plain"


def test_xattrs_kept_but_not_overlay_ones(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    pax = {"SCHILY.xattr.user.color": "blue", "SCHILY.xattr.trusted.overlay.opaque": "y",
           "SCHILY.xattr.trusted.overlay.redirect": "/etc"}
    run(layer, make_tar([("file", "f", b"x", 0o644, 0, 0, 1, pax)]))
    try:
        assert os.getxattr(layer / "f", "user.color") == b"blue"
    except OSError:
        pytest.skip("filesystem of tmp_path has no user xattrs")
    names = os.listxattr(layer / "f")
    assert not [n for n in names if n.startswith("trusted.overlay.")]


@needs_root
def test_owners_devices_and_setuid_as_root(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    run(layer, make_tar([
        ("file", "home/u/f", b"x", 0o6755, 1000, 1001),
        ("chr", "dev/null", 1, 3),
        ("sym", "home/u/link", "f"),
    ]))
    st = os.lstat(layer / "home/u/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o6755)
    dev = os.lstat(layer / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1 and os.minor(dev.st_rdev) == 3
    assert stat.S_IMODE(dev.st_mode) == 0o666


@needs_root
def test_whiteouts_become_overlay_form(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    run(layer, make_tar([
        ("dir", "etc"),
        ("file", "etc/.wh.gone", b""),
        ("dir", "opq"),
        ("file", "opq/.wh..wh..opq", b""),
        ("file", "opq/new", b"n"),
        ("file", ".wh..wh.plnk/123", b""),  # aufs metadata: skipped
    ]))
    wh = os.lstat(layer / "etc/gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(layer / "opq", "trusted.overlay.opaque") == b"y"
    assert (layer / "opq/new").read_bytes() == b"n"
    assert not os.path.lexists(layer / "etc/.wh.gone")
    assert not os.path.lexists(layer / ".wh..wh.plnk")


@pytest.mark.parametrize("name", [".wh.", "d/.wh..", "d/.wh...", ".wh..wh.foo", "x/.wh..wh.bogus",
                                  ".wh..wh..opqx"])
def test_malformed_whiteouts_rejected(dirs: tuple[Path, Path], name: str) -> None:
    layer, outside = dirs
    with pytest.raises(ImageError, match="malformed whiteout"):
        run(layer, make_tar([("dir", "d"), ("dir", "x"), ("file", name, b"")]))
    assert listing(outside) == {"sentinel": (os.lstat(outside / "sentinel").st_mode, 1, b"keep")}


# ------------------------------------------------------------------ bad streams


def test_corrupt_gzip(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    gz = bytearray(gzip.compress(make_tar([("file", "a", os.urandom(5000))])))
    gz[20:40] = b"\xff" * 20
    with pytest.raises(ImageError, match="gzip"):
        run(layer, bytes(gz))


def test_truncated_gzip(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    gz = gzip.compress(make_tar([("file", "a", os.urandom(50000))]))
    with pytest.raises(ImageError, match="truncated"):
        run(layer, gz[: len(gz) // 2])


def test_truncated_tar(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = make_tar([("file", "a", os.urandom(50000))])
    with pytest.raises(ImageError) as err:
        run(layer, data[:20000])
    assert "\n" not in str(err.value)


def test_not_a_tar(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    with pytest.raises(ImageError, match="tar"):
        run(layer, b"this is not a tar archive at all" * 40)


def test_zstd_without_module_is_a_clear_error(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    layer, _ = dirs
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails
    with pytest.raises(ImageError, match="zstandard"):
        run(layer, b"\x28\xb5\x2f\xfd" + b"\0" * 100)


# ------------------------------------------------------------------ hostile layers


def _sentinel_intact(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["sentinel"], "something was written outside the layer"
    assert (outside / "sentinel").read_bytes() == b"keep"
    assert os.lstat(outside / "sentinel").st_nlink == 1


def _hostile_cases(outside: Path) -> list[tuple[str, list[Entry], Callable[[Path], object] | None]]:
    """(id, entries, check of the layer when contained; None = must be rejected)."""
    out = str(outside)
    return [
        ("dotdot", [("file", "../outside/evil", b"x")], None),
        ("dotdot-deep", [("dir", "a"), ("file", "a/../../outside/evil", b"x")], None),
        ("absolute", [("file", out + "/evil", b"x")],
         lambda layer: (layer / out.lstrip("/") / "evil").read_bytes() == b"x"),
        ("symlink-rel-then-file", [("sym", "esc", "../outside"), ("file", "esc/evil", b"x")],
         lambda layer: (layer / "outside/evil").read_bytes() == b"x"),
        ("symlink-abs-then-file", [("sym", "esc", out), ("file", "esc/evil", b"x")],
         lambda layer: (layer / out.lstrip("/") / "evil").read_bytes() == b"x"),
        ("symlink-deep-dotdot", [("dir", "a/b"), ("sym", "a/b/up", "../../../../../../.."),
                                 ("file", "a/b/up" + out + "/evil", b"x")],
         lambda layer: (layer / out.lstrip("/") / "evil").read_bytes() == b"x"),
        ("symlink-chain", [("sym", "s1", "s2"), ("sym", "s2", "/" + "../" * 8 + out.lstrip("/")),
                           ("file", "s1/evil", b"x")],
         lambda layer: (layer / out.lstrip("/") / "evil").read_bytes() == b"x"),
        ("symlink-then-dir-entry", [("sym", "esc", out), ("dir", "esc"), ("file", "esc/evil", b"x")],
         lambda layer: (layer / "esc").is_dir() and not (layer / "esc").is_symlink()),
        ("symlink-overwritten-by-file", [("sym", "esc", out + "/sentinel"), ("file", "esc", b"over")],
         lambda layer: (layer / "esc").read_bytes() == b"over"),
        ("symlink-overwritten-by-hardlink", [("file", "f", b"mine"), ("sym", "esc", out + "/sentinel"),
                                             ("hard", "esc", "f")],
         lambda layer: (layer / "esc").read_bytes() == b"mine"),
        ("hardlink-dotdot", [("hard", "hl", "../outside/sentinel")], None),
        ("hardlink-absolute-host-file", [("hard", "hl", out + "/sentinel")], None),
        ("hardlink-through-symlink", [("sym", "esc", out), ("hard", "hl", "esc/sentinel")], None),
        ("hardlink-to-symlink-kept-as-link", [("sym", "esc", out + "/sentinel"), ("hard", "hl", "esc")],
         lambda layer: os.readlink(layer / "hl") == out + "/sentinel"),
        ("symlink-loop", [("sym", "a", "b"), ("sym", "b", "a"), ("file", "a/x", b"x")], None),
        ("root-as-symlink", [("sym", "./", out)], None),
        ("root-as-file", [("file", ".", b"x")], None),
        ("whiteout-dotdot", [("file", "../outside/.wh.sentinel", b"")], None),
        ("whiteout-dotdot-name", [("file", "d/.wh...", b"")], None),
    ]


def _ids() -> list[str]:
    return [c[0] for c in _hostile_cases(Path("/x"))]


@pytest.mark.parametrize("case", _ids())
def test_hostile_layer_stays_inside(tmp_path: Path, case: str) -> None:
    layer = tmp_path / "layer"
    outside = tmp_path / "outside"
    layer.mkdir()
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"keep")
    entries, check = next((e, c) for i, e, c in _hostile_cases(outside) if i == case)
    data = make_tar(entries)
    if check is None:
        with pytest.raises(ImageError) as err:
            run(layer, data)
        assert "\n" not in str(err.value)
    else:
        run(layer, data)
        assert check(layer)
    _sentinel_intact(outside)


@needs_root
def test_whiteout_through_symlink_stays_inside(dirs: tuple[Path, Path]) -> None:
    layer, outside = dirs
    run(layer, make_tar([("sym", "esc", str(outside)), ("file", "esc/.wh.sentinel", b""),
                         ("sym", "rel", "../outside"), ("file", "rel/.wh..wh..opq", b"")]))
    _sentinel_intact(outside)
    assert not os.listxattr(outside) or "trusted.overlay.opaque" not in os.listxattr(outside)
    wh = os.lstat(layer / str(outside).lstrip("/") / "sentinel")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0


@needs_root
def test_device_node_through_symlink_stays_inside(dirs: tuple[Path, Path]) -> None:
    layer, outside = dirs
    run(layer, make_tar([("sym", "esc", str(outside)), ("chr", "esc/null", 1, 3)]))
    _sentinel_intact(outside)


def test_hostile_layer_into_a_layer_under_symlinked_parent(tmp_path: Path) -> None:
    """A link in the layer pointing at the layer's own parent cannot reach it either."""
    layer = tmp_path / "layer"
    layer.mkdir()
    before = sorted(os.listdir(tmp_path))
    run(layer, make_tar([("sym", "up", ".."), ("file", "up/up/up/escaped", b"x")]))
    assert sorted(os.listdir(tmp_path)) == before
    assert (layer / "escaped").read_bytes() == b"x"


def test_open_file_in_root_is_confined(tmp_path: Path) -> None:
    """Root.open_file (used to read /etc/passwd of an image) never leaves the root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "host-secret").write_text("secret")
    (root / "etc/passwd").symlink_to("../../host-secret")
    (root / "etc/group").symlink_to(str(tmp_path / "host-secret"))
    with unpack.Root(str(root)) as r:
        for name in ("etc/passwd", "/etc/group"):
            with pytest.raises(FileNotFoundError):
                r.open_file(name)
    (root / "host-secret").write_text("inside")
    with unpack.Root(str(root)) as r:
        with os.fdopen(r.open_file("/etc/passwd"), "rb") as f:
            assert f.read() == b"inside"


# ------------------------------------------------------------------ our tar reader


def _patch_header(data: bytes, offset: int, field: slice, value: bytes) -> bytes:
    """`data` with one header field replaced and that header's checksum recomputed."""
    block = bytearray(data[offset:offset + 512])
    block[field] = value.ljust(field.stop - field.start, b"\0")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[:offset] + bytes(block) + data[offset + 512:]


def test_pax_fractional_mtime_global_header_and_ustar_prefix(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"SCHILY.xattr.user.everywhere": "g"}) as tar:
        info = tarfile.TarInfo("frac")
        info.mtime = 1_600_000_000.25
        tar.addfile(info, io.BytesIO(b""))
    run(layer, buf.getvalue())
    assert os.lstat(layer / "frac").st_mtime_ns == 1_600_000_000_250_000_000
    try:
        assert os.getxattr(layer / "frac", "user.everywhere") == b"g"  # from the global header
    except OSError:
        pass  # no user xattrs on this filesystem: the mtime part still ran
    long = "p" * 90 + "/" + "q" * 90  # > 100 bytes: ustar splits it into prefix + name
    (layer / "u").mkdir()
    run(layer / "u", make_tar([("file", long, b"u")], fmt=tarfile.USTAR_FORMAT))
    assert (layer / "u" / long).read_bytes() == b"u"


def test_gnu_base256_numbers(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    run(layer, make_tar([("file", "old", b"o", 0o644, 0, 0, -86400)], fmt=tarfile.GNU_FORMAT))
    assert os.lstat(layer / "old").st_mtime == -86400  # a negative mtime is base-256 in GNU tar


def test_v7_directory_and_header_only_types(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = make_tar([("file", "v7dir/", b""), ("sym", "link", "target"), ("file", "after", b"after")])
    data = _patch_header(data, 0, slice(156, 157), b"\0")      # old tar: type NUL, name ending in '/'
    # a symlink whose header claims data: the size is ignored (GNU tar and Go do the same)
    data = _patch_header(data, 512, slice(124, 136), b"%011o" % 1024)
    run(layer, data)
    assert (layer / "v7dir").is_dir()
    assert os.readlink(layer / "link") == "target"
    assert (layer / "after").read_bytes() == b"after"


def test_sparse_files_are_rejected(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = _patch_header(make_tar([("file", "holes", b"x" * 600)]), 0, slice(156, 157), b"S")
    with pytest.raises(ImageError, match="sparse files are not supported"):
        run(layer, data)


def test_bad_checksum_after_the_first_header(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = bytearray(make_tar([("file", "one", b"1"), ("file", "two", b"2")]))
    data[1024 + 10] ^= 0xFF  # the second header's name
    with pytest.raises(ImageError, match="bad header checksum at offset 1024"):
        run(layer, bytes(data))


def test_empty_stream_empty_layer_and_pax_size(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    with pytest.raises(ImageError, match="not a valid tar archive: empty file"):
        run(layer, b"")
    # docker's empty layer: two zero blocks, gzipped
    assert run(layer, gzip.compress(bytes(1024))) == \
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    assert os.listdir(layer) == []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sized")
        info.size = 3
        info.pax_headers = {"size": "3"}
        tar.addfile(info, io.BytesIO(b"abc"))
    run(layer, buf.getvalue())
    assert (layer / "sized").read_bytes() == b"abc"


def test_modes_creation_cannot_give(dirs: tuple[Path, Path]) -> None:
    """Modes the umask would cut, special bits and read-only directories all come out exact."""
    layer, _ = dirs
    run(layer, make_tar([
        ("file", "open", b"o", 0o666),
        ("file", "sticky", b"s", 0o1755),
        ("dir", "shared", 0o2775),
        ("file", "shared/f", b"f", 0o640),
        ("dir", "ro", 0o555),
        ("file", "ro/inside", b"i", 0o444),
        ("dir", "plain", 0o755),
    ]))
    modes = {p: stat.S_IMODE(os.lstat(layer / p).st_mode)
             for p in ("open", "sticky", "shared", "shared/f", "ro", "ro/inside", "plain")}
    assert modes == {"open": 0o666, "sticky": 0o1755, "shared": 0o2775, "shared/f": 0o640, "ro": 0o555,
                     "ro/inside": 0o444, "plain": 0o755}
    os.chmod(layer / "ro", 0o755)  # let the fixture clean up as non-root


def test_many_directories_deep_paths_and_hardlinks_across_them(dirs: tuple[Path, Path]) -> None:
    """More directories than the fd cache holds, a 150-deep path, hardlinks back to early ones."""
    layer, _ = dirs
    entries: list[Entry] = []
    for i in range(200):
        entries.append(("file", f"d{i}/f", f"{i}".encode()))
    deep = "/".join(f"n{i}" for i in range(150))
    entries.append(("file", f"{deep}/leaf", b"deep"))
    for i in range(200):
        entries.append(("hard", f"d{199 - i}/link", f"d{i}/f"))
    run(layer, make_tar(entries))
    for i in range(200):
        assert (layer / f"d{199 - i}" / "link").read_bytes() == f"{i}".encode()
        assert os.lstat(layer / f"d{i}" / "f").st_nlink == 2
    assert (layer / deep / "leaf").read_bytes() == b"deep"


def test_decompressed_reader_gives_the_tar(tmp_path: Path) -> None:
    data = make_tar([("file", "a", os.urandom(300_000)), ("file", "b", b"b")])
    for blob in (data, gzip.compress(data), gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + bytes(64)):
        stream = unpack.decompressed(io.BytesIO(blob))
        out = stream.read(7) + stream.read(100_000)
        out += stream.read()
        assert out == data


def test_hostile_numbers_and_names_are_one_line_errors(tmp_path: Path) -> None:
    """A NUL in a link target, a pax uid past any range: ImageError, never a traceback."""
    for pax in ({"linkpath": "a\x00b"}, {"uid": "9" * 40}, {"mtime": "1e999"}):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("f")
            info.type = tarfile.SYMTYPE if "linkpath" in pax else tarfile.REGTYPE
            info.pax_headers = pax
            tar.addfile(info, io.BytesIO(b""))
        dest = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        dest.mkdir()
        with pytest.raises(ImageError):
            unpack.unpack(io.BytesIO(buf.getvalue()), str(dest))


def test_pax_global_headers_never_rename_or_resize(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                       pax_headers={"path": "renamed", "comment": "x"}) as tar:
        info = tarfile.TarInfo("real")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    unpack.unpack(io.BytesIO(buf.getvalue()), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]
    assert (tmp_path / "real").read_bytes() == b"hello"


def test_deeply_nested_trees_are_replaced_and_removed(tmp_path: Path) -> None:
    """1500 nested directories, then a file with the top one's name (the last entry wins): no
    RecursionError, no fd exhaustion; and the whole tree can be removed afterwards."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        deep = "/".join(["a"] * 1500)
        info = tarfile.TarInfo(deep + "/f")
        tar.addfile(info, io.BytesIO(b""))
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    layer = tmp_path / "layer"
    layer.mkdir()
    unpack.unpack(io.BytesIO(buf.getvalue()), str(layer))
    assert (layer / "a").is_file()
    nested = tmp_path / "nested"
    nested.mkdir()
    fd = os.open(nested, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):  # os.makedirs would recurse
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    assert unpack.remove_tree(str(nested)) and not nested.exists()
