"""Offline images: OCI image layouts and `docker save` archives in and out.

    load(store, path, name=None)      OCI layout (dir or tar) / docker-archive -> refs
    save(store, names, dest)          stored images -> OCI layout (dir, or tar if dest ends in .tar)
    import_rootfs(store, src, name)   a root filesystem (dir or tar) -> a one-layer image

A load validates every JSON document before anything is written, verifies
every blob against its digest while copying it into the store, unpacks the
layers (checked against the config's diff_ids) and creates the refs last. A
load is a store operation (`Store.operation()`): a failure removes every blob
and layer this load added, except those that another pull or load in flight
relies on or an image references meanwhile, so the store is left as it was
and concurrent loads and pulls sharing a layer never break each other.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform as _platform
import tarfile
import zlib
from typing import BinaryIO

from hanok.images import reference as _reference
from hanok.images import store as _store
from hanok.images.store import (
    CONFIG_TYPES,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Operation,
    Store,
)
from hanok.runtime.errors import ImageError, NotFound

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_JSON_LIMIT = 8 << 20
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
         "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> dict:
    machine = _platform.machine()
    plat = {"os": "linux", "architecture": _ARCH.get(machine, machine)}
    if machine == "aarch64":
        plat["variant"] = "v8"
    elif machine in ("armv7l", "armv6l"):
        plat["variant"] = machine[:2]
    return plat


def parse_platform(text: str) -> dict:
    """`linux/amd64`, `linux/arm64/v8` -> a platform dict."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}: expected os/arch[/variant]")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        plat["variant"] = parts[2]
    return plat


def _platform_str(p: dict) -> str:
    return "/".join(x for x in (p.get("os", "?"), p.get("architecture", "?"), p.get("variant")) if x)


def select_platform(manifests: list[dict], want: dict | None = None, where: str = "index") -> dict:
    """The descriptor of `manifests` (an index's list) matching `want` (default: the host)."""
    want = want or host_platform()
    candidates = []
    for m in manifests:
        p = m.get("platform")
        if not isinstance(p, dict):
            continue
        if p.get("os") != want["os"] or p.get("architecture") != want["architecture"]:
            continue
        # A variant asked for must match; an unspecified one matches (arm64 -> v8).
        if want.get("variant") and p.get("variant") and p["variant"] != want["variant"]:
            continue
        candidates.append(m)
    if candidates:
        exact = [m for m in candidates if m["platform"].get("variant") == want.get("variant")]
        return (exact or candidates)[0]
    have = sorted({_platform_str(m["platform"]) for m in manifests if isinstance(m.get("platform"), dict)})
    raise ImageError(f"no image for platform {_platform_str(want)} in {where} "
                     f"(available: {', '.join(have) or 'none'})")


# ------------------------------------------------------------------ sources


class _Source:
    """Files of a layout, in a directory or a tar (read-only, names relative)."""

    def __init__(self, path: str):
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(path):
            return
        try:
            self.tar = tarfile.open(path, "r:*")
            for m in self.tar.getmembers():
                self.members[_member_key(m.name)] = m
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {path}") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise ImageError(f"{path}: not a directory or a readable tar archive: {e}") from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def _norm(self, name: str) -> str:
        norm = os.path.normpath(name)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ImageError(f"{self.path}: path {name!r} leaves the archive")
        return _member_key(norm) if self.tar is not None else norm

    def exists(self, name: str) -> bool:
        name = self._norm(name)
        if self.tar is None:
            return os.path.isfile(os.path.join(self.path, name))
        m = self.members.get(name)
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def open(self, name: str) -> BinaryIO:
        norm = self._norm(name)
        if self.tar is None:
            try:
                return open(os.path.join(self.path, norm), "rb")
            except FileNotFoundError:
                raise ImageError(f"{self.path}: {name} is missing") from None
        m = self.members.get(norm)
        if m is None:
            raise ImageError(f"{self.path}: {name} is missing")
        try:
            f = self.tar.extractfile(m)
        except (KeyError, tarfile.TarError) as e:
            raise ImageError(f"{self.path}: {name}: {e}") from None
        if f is None:
            raise ImageError(f"{self.path}: {name} is not a file")
        return f  # type: ignore[return-value]

    def read(self, name: str, limit: int = _JSON_LIMIT) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.path}: {name} is larger than {limit} bytes")
        return data

    def json(self, name: str, data: bytes | None = None) -> object:
        raw = self.read(name) if data is None else data
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageError(f"{self.path}: {name} is not valid JSON: {e}") from None


def _member_key(name: str) -> str:
    norm = os.path.normpath("/" + name)  # "/" first: ".." cannot climb above the top
    return norm.lstrip("/") or "."


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + _store.hex_of(digest)


# ------------------------------------------------------------------ validation


def _descriptor(d: object, what: str) -> dict:
    if not isinstance(d, dict):
        raise ImageError(f"{what}: descriptor is not a JSON object")
    for key in ("mediaType", "digest", "size"):
        if key not in d:
            raise ImageError(f"{what}: descriptor has no {key!r}")
    if not isinstance(d["mediaType"], str) or not isinstance(d["digest"], str):
        raise ImageError(f"{what}: descriptor mediaType and digest must be strings")
    if not isinstance(d["size"], int) or isinstance(d["size"], bool) or d["size"] < 0:
        raise ImageError(f"{what}: descriptor size must be a non-negative integer")
    _reference.validate_digest(d["digest"])
    return d


def _check_manifest(doc: object, digest: str) -> dict:
    what = f"manifest {digest}"
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    mt = doc.get("mediaType", MT_OCI_MANIFEST)
    if mt not in MANIFEST_TYPES:
        raise ImageError(f"{what}: unknown media type {mt!r}")
    cfg = _descriptor(doc.get("config"), f"{what} config")
    if cfg["mediaType"] not in CONFIG_TYPES:
        raise ImageError(f"{what}: unknown config media type {cfg['mediaType']!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: 'layers' is not a list")
    for i, layer in enumerate(layers):
        _descriptor(layer, f"{what} layer {i}")
        if layer["mediaType"] not in LAYER_TYPES:
            raise ImageError(f"{what}: layer {i} has unknown media type {layer['mediaType']!r}")
    return doc


def _check_config(doc: object, digest: str, n_layers: int) -> dict:
    if not isinstance(doc, dict):
        raise ImageError(f"image config {digest} is not a JSON object")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError(f"image config {digest}: rootfs.diff_ids missing or not a list of strings")
    for d in diff_ids:
        _reference.validate_digest(d)
    if len(diff_ids) != n_layers:
        raise ImageError(f"image config {digest}: {len(diff_ids)} diff_ids for {n_layers} layers")
    return doc


def _check_index(doc: object, what: str) -> list[dict]:
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    mt = doc.get("mediaType", MT_OCI_INDEX)
    if mt not in INDEX_TYPES:
        raise ImageError(f"{what}: unknown media type {mt!r}")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError(f"{what}: 'manifests' is not a list")
    return [_descriptor(m, f"{what} entry {i}") for i, m in enumerate(manifests)]


# ------------------------------------------------------------------ load


class _Plan:
    """One image to load: its blobs (digest -> (source name, size)) and names."""

    def __init__(self, manifest_digest: str, manifest: bytes, config_digest: str, config: bytes,
                 layers: list[tuple[str, int, str]], names: list[str]):
        self.manifest_digest = manifest_digest
        self.manifest = manifest
        self.config_digest = config_digest
        self.config = config
        self.layers = layers  # (source name, size or -1 when unknown, diff_id), digest via blob name
        self.names = names


def _verified(data: bytes, digest: str, size: int | None, what: str) -> bytes:
    if size is not None and len(data) != size:
        raise ImageError(f"{what} {digest}: size mismatch (expected {size}, got {len(data)} bytes)")
    got = _store.digest_of(data)
    if got != digest:
        raise ImageError(f"{what}: digest mismatch: expected {digest}, got {got}")
    return data


def _default_repo(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    repo = "".join(c if c.isalnum() or c in "._-" else "-" for c in base.lower()).strip("._-")
    return "localhost/" + (repo or "image")


def _names_for(desc: dict, name: str | None, path: str) -> list[str]:
    ann = desc.get("annotations") or {}
    full = ann.get(CONTAINERD_NAME)
    ref = ann.get(REF_NAME)
    if name:
        r = _reference.parse(name)
        if ref and ":" not in ref and "/" not in ref and name.rfind(":") <= name.rfind("/"):
            r.tag = ref  # `load -i layout NAME`: the layout's tags on that repository
        return [str(r)]
    if full:
        return [str(_reference.parse(full))]
    if ref:
        if "/" in ref or ":" in ref:
            return [str(_reference.parse(ref))]
        return [str(_reference.parse(f"{_default_repo(path)}:{ref}"))]
    return []


def _plan_oci(src: _Source, name: str | None, want: dict | None, tag: str | None) -> list[_Plan]:
    layout = src.json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageError(f"{src.path}: oci-layout has no imageLayoutVersion")
    entries = _check_index(src.json("index.json"), f"{src.path}: index.json")
    if tag is not None:
        entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == tag
                   or (e.get("annotations") or {}).get(CONTAINERD_NAME) == tag]
        if not entries:
            raise NotFound(f"{src.path}: no image tagged {tag!r}")
    if not entries:
        raise ImageError(f"{src.path}: index.json lists no images")
    # Entries for several platforms under one name: keep the host's.
    with_platform = [e for e in entries if isinstance(e.get("platform"), dict)
                     and e["mediaType"] in MANIFEST_TYPES]
    if len(with_platform) > 1 and len(with_platform) == len(entries):
        entries = [select_platform(entries, want, f"{src.path}: index.json")]
    plans = []
    for desc in entries:
        names = _names_for(desc, name, src.path)
        plans.append(_plan_descriptor(src, desc, names, want, depth=0))
    return plans


def _plan_descriptor(src: _Source, desc: dict, names: list[str], want: dict | None, depth: int) -> _Plan:
    digest = desc["digest"]
    what = f"{src.path}: {desc['mediaType']}"
    if desc["mediaType"] in INDEX_TYPES:
        if depth > 2:
            raise ImageError(f"{src.path}: image indexes nested too deep")
        data = _verified(src.read(_blob_name(digest)), digest, desc["size"], "image index")
        manifests = _check_index(src.json(_blob_name(digest), data), f"{src.path}: index {digest}")
        chosen = select_platform(manifests, want, f"index {digest}")
        return _plan_descriptor(src, chosen, names, want, depth + 1)
    if desc["mediaType"] not in MANIFEST_TYPES:
        raise ImageError(f"{what}: unknown media type {desc['mediaType']!r}")
    data = _verified(src.read(_blob_name(digest)), digest, desc["size"], "manifest")
    manifest = _check_manifest(src.json(_blob_name(digest), data), digest)
    cfg = manifest["config"]
    config = _verified(src.read(_blob_name(cfg["digest"])), cfg["digest"], cfg["size"], "image config")
    config_doc = _check_config(src.json(_blob_name(cfg["digest"]), config), cfg["digest"],
                               len(manifest["layers"]))
    diff_ids = config_doc["rootfs"]["diff_ids"]
    layers = []
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        if not src.exists(_blob_name(layer["digest"])):
            raise ImageError(f"{src.path}: layer blob {layer['digest']} is missing")
        layers.append((layer["digest"], layer["size"], diff_id))
    return _Plan(digest, data, cfg["digest"], config, layers, names)


def _plan_docker(src: _Source, name: str | None) -> list[_Plan]:
    doc = src.json("manifest.json")
    if not isinstance(doc, list) or not doc:
        raise ImageError(f"{src.path}: manifest.json is not a non-empty list")
    plans = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list) \
                or not all(isinstance(x, str) for x in entry["Layers"]):
            raise ImageError(f"{src.path}: manifest.json entry {i} needs Config and Layers")
        config = src.read(entry["Config"])
        config_digest = _store.digest_of(config)
        config_doc = _check_config(src.json(entry["Config"], config), config_digest, len(entry["Layers"]))
        layers = []
        descs = []
        for layer_name, diff_id in zip(entry["Layers"], config_doc["rootfs"]["diff_ids"]):
            digest, size, media_type = _hash_file(src, layer_name)
            layers.append((layer_name, size, diff_id))
            descs.append({"mediaType": media_type, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descs,
        }
        raw = json.dumps(manifest).encode()
        tags = entry.get("RepoTags") or []
        if name:
            names = [str(_reference.parse(name))]
        else:
            names = [str(_reference.parse(t)) for t in tags if isinstance(t, str)]
        plan = _Plan(_store.digest_of(raw), raw, config_digest, config, layers, names)
        plan.docker_layers = descs  # type: ignore[attr-defined]
        plans.append(plan)
    return plans


def _hash_file(src: _Source, name: str) -> tuple[str, int, str]:
    h = hashlib.sha256()
    size = 0
    head = b""
    with src.open(name) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            if not head:
                head = chunk[:4]
            h.update(chunk)
            size += len(chunk)
    from hanok.images.unpack import compression_of

    kind = compression_of(head)
    media_type = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                  "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}.get(kind,
                                                                            "application/vnd.oci.image.layer.v1.tar")
    return "sha256:" + h.hexdigest(), size, media_type


def _put(store: Store, op: Operation, data: bytes, digest: str) -> None:
    if op.has_blob(digest):
        return
    with store.ingest(digest, len(data), op) as w:
        w.write(data)


def _put_stream(store: Store, op: Operation, stream: BinaryIO, digest: str, size: int | None) -> None:
    if op.has_blob(digest):
        return
    w = store.ingest(digest, size, op)
    try:
        w.copy_from(stream)
        w.commit()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        w.abort()
        raise ImageError(f"blob {digest}: cannot read it: {e}") from None
    except BaseException:
        w.abort()
        raise


def load(store: Store, path: str, name: str | None = None, platform: str | dict | None = None,
         tag: str | None = None) -> list[str]:
    """Load an OCI layout (dir or tar) or a docker-archive; returns the names created.

    `name` names the image (its tags from the layout kept when it has none);
    `tag` picks one entry of a layout's index.json by its ref name; `platform`
    (`linux/arm64` or a dict) overrides the host's for multi-platform indexes.
    """
    want = parse_platform(platform) if isinstance(platform, str) else platform
    src = _Source(path)
    try:
        if src.exists("oci-layout"):
            plans = _plan_oci(src, name, want, tag)
        elif src.exists("manifest.json"):
            plans = _plan_docker(src, name)
        else:
            raise ImageError(f"{path}: neither an OCI image layout (oci-layout, index.json) "
                             "nor a docker save archive (manifest.json)")
        created: list[str] = []
        with store.operation() as op:
            for plan in plans:
                _put(store, op, plan.config, plan.config_digest)
                docker = getattr(plan, "docker_layers", None)
                for i, (src_name, size, diff_id) in enumerate(plan.layers):
                    digest = docker[i]["digest"] if docker else src_name
                    blob = src_name if docker else _blob_name(src_name)
                    with src.open(blob) as f:
                        _put_stream(store, op, f, digest, size)
                    store.unpack_layer(digest, diff_id, op)
                _put(store, op, plan.manifest, plan.manifest_digest)
            for plan in plans:
                for n in plan.names:
                    created.append(store.tag(n, plan.manifest_digest))
                if not plan.names:
                    created.append(plan.manifest_digest)
        return created
    finally:
        src.close()


# ------------------------------------------------------------------ save


def save(store: Store, names: list[str], dest: str) -> str:
    """Write images as an OCI image layout: a directory, or a tar if dest ends in .tar.

    Each image is tagged in index.json with org.opencontainers.image.ref.name
    (its tag, as skopeo and umoci expect) and io.containerd.image.name (its
    full name). Returns dest.
    """
    images = [(n, store.image(n)) for n in names]
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
    blobs: dict[str, None] = {}
    for n, img in images:
        try:
            ref = _reference.parse(n)
            full, tag = str(ref), ref.tag
        except ImageError:
            full, tag = None, None
        ann = {}
        if tag:
            ann[REF_NAME] = tag
        if full and "@" not in full:
            ann[CONTAINERD_NAME] = full
        raw = store.read_blob(img.digest)
        index["manifests"].append({"mediaType": img.manifest.get("mediaType", MT_OCI_MANIFEST),
                                   "digest": img.digest, "size": len(raw), "annotations": ann})
        blobs[img.digest] = None
        blobs[img.config_digest] = None
        for layer in img.layers:
            blobs[layer["digest"]] = None
    files: list[tuple[str, bytes | str]] = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index).encode()),
    ]
    for digest in blobs:
        if not store.has_blob(digest):
            raise ImageError(f"blob {digest} is missing from the store (image incomplete)")
        files.append((_blob_name(digest), store.blob_path(digest)))
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise ImageError(f"cannot save to {dest}: {parent} does not exist")
    try:
        if dest.endswith(".tar"):
            _write_tar(dest, files)
        else:
            _write_dir(dest, files)
    except OSError as e:
        raise ImageError(f"cannot save to {dest}: {e.strerror}") from None
    return dest


def _write_dir(dest: str, files: list[tuple[str, bytes | str]]) -> None:
    import shutil

    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
    for rel, content in files:
        target = os.path.join(dest, rel)
        if isinstance(content, bytes):
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(content)
            os.rename(tmp, target)
        elif not os.path.exists(target):
            # a copy, never a hard link: editing the saved layout must not change the store
            shutil.copyfile(content, target + ".tmp")
            os.rename(target + ".tmp", target)


def _write_tar(dest: str, files: list[tuple[str, bytes | str]]) -> None:
    tmp = dest + ".tmp-" + os.urandom(4).hex()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for d in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            for rel, content in files:
                info = tarfile.TarInfo(rel)
                info.mode = 0o644
                if isinstance(content, bytes):
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    info.size = os.path.getsize(content)
                    with open(content, "rb") as f:
                        tar.addfile(info, f)
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------ import


class _LayerWriter:
    """A file-like sink: hashes the tar (diff_id), gzips it into a store ingest."""

    def __init__(self, ingest: _store.Ingest):
        self.ingest = ingest
        self.diff = hashlib.sha256()
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, 31)

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        out = self.deflate.compress(data)
        if out:
            self.ingest.write(out)
        return len(data)

    def finish(self) -> str:
        self.ingest.write(self.deflate.flush())
        return "sha256:" + self.diff.hexdigest()


def _add_tree(tar: tarfile.TarFile, root: str) -> None:
    """The tree under root with numeric owners, symlinks not followed, sorted."""
    def add(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        info = tar.gettarinfo(full, arcname=rel or ".")
        info.uname = info.gname = ""
        if info.isreg():
            with open(full, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        if info.isdir():
            for entry in sorted(os.listdir(full)):
                add(os.path.join(rel, entry) if rel else entry)

    add("")


def import_rootfs(store: Store, source: str, name: str, config: dict | None = None) -> str:
    """Make a one-layer image from a root filesystem (a directory or a tar, maybe compressed).

    The layer is stored gzip-compressed; the image config gets the host
    platform, a default PATH and whatever `config` (an image config's
    "config" section: Cmd, Env, ...) adds. Returns the canonical name.
    """
    from hanok.images.unpack import decompressed

    canonical = str(_reference.parse(name))
    if not os.path.exists(source):
        raise NotFound(f"no such file or directory: {source}")
    with store.operation() as op:
        w = store.ingest(op=op)
        try:
            sink = _LayerWriter(w)
            if os.path.isdir(source):
                with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    _add_tree(tar, source)
            else:
                with open(source, "rb") as f:
                    stream = decompressed(f)
                    while True:
                        chunk = stream.read(1 << 20)
                        if not chunk:
                            break
                        sink.write(chunk)
            diff_id = sink.finish()
            layer_digest = w.commit()
        except BaseException:
            w.abort()
            raise
        layer_size = os.path.getsize(store.blob_path(layer_digest))
        plat = host_platform()
        cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        cfg.update(config or {})
        image_config = {
            "created": _store.now_rfc3339(),
            "architecture": plat["architecture"],
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": _store.now_rfc3339(), "created_by": f"hanok import {source}"}],
        }
        if "variant" in plat:
            image_config["variant"] = plat["variant"]
        config_raw = json.dumps(image_config).encode()
        config_digest = _store.digest_of(config_raw)
        _put(store, op, config_raw, config_digest)
        store.unpack_layer(layer_digest, diff_id, op)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_raw = json.dumps(manifest).encode()
        manifest_digest = _store.digest_of(manifest_raw)
        _put(store, op, manifest_raw, manifest_digest)
        return store.tag(canonical, manifest_digest)

