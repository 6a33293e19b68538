"""Benchmark hanok's registry pull against skopeo + umoci and against zlib inflate.

Run as root:  /opt/hanok/bin/python tests/bench/bench_pull.py [--pairs N] [--warmup N] [--json]

One test image (5-6 gzip layers, ~50-150 MB uncompressed, thousands of files,
tarred from host directories) is built once as an OCI layout and pushed with
`skopeo copy` to a private Debian docker-registry on 127.0.0.1 (started and
stopped by pid, see tests/integration/registry_fixture.py). Then, per
iteration, each into fresh empty dirs (made and removed outside the clock):

  hanok          `images.registry.pull(Store(DIR), "127.0.0.1:PORT/bench/img:1")`,
                 in this process: downloads, verifies and unpacks every layer
  skopeo+umoci   `skopeo copy --src-tls-verify=false docker://... oci:DIR:1`, then
                 `umoci unpack --image DIR:1 BUNDLE`, each timed on its own and summed
  inflate        single-core zlib inflate (zlib.decompressobj(16 + MAX_WBITS)) of
                 the same compressed layer blobs, already in memory, summed over
                 the layers: the practical limit of any single-threaded unpack
  file create    the layers' directories and regular files (with their data, taken
                 from memory) created in a fresh plain directory by one thread with
                 bare mkdir/open/write/close: what the filesystem alone costs an
                 unpacker here. On an ext4 without a journal (this VM's) creating
                 inodes soon after many were deleted is slow: the kernel skips the
                 group's recently deleted inodes one by one. hanok's store marks
                 its tmp/ `chattr +T` so each layer tree gets a group of its own
                 (see store._spread_subdirs); this row and umoci do not.

The four are alternated A B C D A B C D so a shared machine's noise hits all
alike; only medians (and min/max) and the ratios hanok/(skopeo+umoci),
hanok/inflate and hanok/create are printed, never a pass/fail threshold
(TESTING.md).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))   # registry_fixture
from bench_oci import mounts_under  # noqa: E402  (same directory: one copy of the helper)
from registry_fixture import REGISTRY_BIN, Registry  # noqa: E402

REPO_TAG = "bench/img:1"
WARMUP = 1                 # uncounted iterations: imports, page cache, registry caches
GZIP_LEVEL = 6             # what docker/buildkit use by default
# (host directory, byte cap for its layer): walked in sorted order until the cap;
# missing directories are skipped; the first six that exist become the layers.
SOURCES = [
    ("/usr/lib/python3.11", 24 << 20),
    ("/usr/lib/python3", 24 << 20),
    ("/usr/share/perl", 20 << 20),
    ("/usr/include", 24 << 20),
    ("/usr/share/locale", 20 << 20),
    ("/usr/share/doc", 16 << 20),
    ("/usr/share/perl5", 8 << 20),
    ("/usr/lib/x86_64-linux-gnu/perl", 20 << 20),
    ("/usr/share/man", 16 << 20),
]
MAX_LAYERS = 6
MIN_LAYERS = 5
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INFLATE_CHUNK = 1 << 20


class BenchError(Exception):
    """A precondition or a command failed; the message says which."""


def progress(msg: str) -> None:
    """Progress goes to stderr so stdout stays pasteable (and valid JSON)."""
    print(f"bench_pull: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str]) -> int:
    """Run a tool with output to temp files (made before the clock); return ns."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter_ns()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode
        ns = time.perf_counter_ns() - t0
        if rc != 0:
            out.seek(0)
            raise BenchError(f"`{' '.join(argv)}` exited {rc}:\n{out.read().decode(errors='replace').strip()}")
    return ns


# ------------------------------------------------------------------ the test image


class _HashWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `dest`."""

    def __init__(self, dest: io.BufferedIOBase):
        self.dest, self.sha, self.size = dest, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        self.dest.write(b)
        return len(b)


def _entries(top: str, cap: int) -> tuple[list[str], int, int]:
    """Paths under `top` (dirs, regular files, symlinks; sorted) until `cap` bytes of files."""
    paths: list[str] = []
    total = files = 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        paths.append(dirpath)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                paths.append(path)
            elif os.path.isfile(path):  # skip sockets, fifos, devices
                if total + st.st_size > cap:
                    continue
                paths.append(path)
                total += st.st_size
                files += 1
        if total >= cap * 0.98:
            break
    return paths, total, files


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def build_layer(top: str, cap: int, blobs: Path) -> dict:
    """One gzip layer of `top` (capped) in blobs/; returns its descriptor + stats."""
    paths, total, files = _entries(top, cap)
    parents = []
    p = os.path.dirname(top)
    while p not in ("/", ""):
        parents.append(p)
        p = os.path.dirname(p)
    tmp = blobs / "layer.tmp"
    with open(tmp, "wb") as raw:
        outer = _HashWriter(raw)                       # compressed: the blob digest
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
            inner = _HashWriter(gz)                    # uncompressed: the diff_id
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in reversed(parents):
                    tar.add(path, arcname=path.lstrip("/"), recursive=False, filter=_tar_filter)
                for path in paths:
                    tar.add(path, arcname=path.lstrip("/"), recursive=False, filter=_tar_filter)
    digest = "sha256:" + outer.sha.hexdigest()
    tmp.rename(blobs / outer.sha.hexdigest())
    return {"descriptor": {"mediaType": MT_LAYER, "digest": digest, "size": outer.size},
            "diff_id": "sha256:" + inner.sha.hexdigest(), "source": top,
            "uncompressed": inner.size, "content_bytes": total, "files": files, "entries": len(paths)}


def _put_json(blobs: Path, doc: object) -> tuple[str, int]:
    data = json.dumps(doc, separators=(",", ":")).encode()
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return "sha256:" + hexd, len(data)


def build_image(layout: Path) -> list[dict]:
    """Write the test image as an OCI layout with tag "1"; return the layer stats."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers: list[dict] = []
    for top, cap in SOURCES:
        if len(layers) == MAX_LAYERS:
            break
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        progress(f"building layer {len(layers) + 1} from {top}")
        layers.append(build_layer(top, cap, blobs))
    if len(layers) < MIN_LAYERS:
        raise BenchError(f"only {len(layers)} of the source directories exist; need {MIN_LAYERS}")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {"architecture": arch, "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [ly["diff_id"] for ly in layers]}}
    cdigest, csize = _put_json(blobs, config)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": csize},
                "layers": [ly["descriptor"] for ly in layers]}
    mdigest, msize = _put_json(blobs, manifest)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": MT_MANIFEST, "digest": mdigest, "size": msize,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return layers


# ------------------------------------------------------------------ the measurements


class Bench:
    def __init__(self, tmp: Path, host: str, layout: Path, layers: list[dict], policy: Path):
        self.tmp, self.ref = tmp, f"{host}/{REPO_TAG}"
        self.layers, self.policy = layers, policy
        self.blobs = [(layout / "blobs" / "sha256" / ly["descriptor"]["digest"].split(":", 1)[1]).read_bytes()
                      for ly in layers]
        self.trees = [self._tree(blob) for blob in self.blobs]

    @staticmethod
    def _tree(blob: bytes) -> list[tuple[str, bytes | None]]:
        """A layer's directories (None) and regular files (their data), in tar order, for `create`."""
        out: list[tuple[str, bytes | None]] = []
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    out.append((member.name, None))
                elif member.isreg():
                    src = tar.extractfile(member)
                    assert src is not None
                    out.append((member.name, src.read()))
        return out

    def fresh(self, name: str) -> Path:
        path = self.tmp / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def hanok(self, i: int) -> dict[str, int]:
        from hanok.images.registry import pull
        from hanok.images.store import Store

        root = self.fresh(f"hanok-{i}")
        root.mkdir()
        store = Store(str(root))
        try:
            t0 = time.perf_counter_ns()
            pull(store, self.ref)
            ns = time.perf_counter_ns() - t0
            if len(store.layers()) != len(self.layers):   # checked outside the clock
                raise BenchError(f"hanok pull left {len(store.layers())} layers, want {len(self.layers)}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return {"hanok pull": ns}

    def skopeo_umoci(self, i: int) -> dict[str, int]:
        layout = self.fresh(f"oci-{i}")
        bundle = self.fresh(f"bundle-{i}")
        try:
            copy = run(["skopeo", "--policy", str(self.policy), "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{self.ref}", f"oci:{layout}:1"])
            unpack = run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)])
            if not (bundle / "rootfs").is_dir():
                raise BenchError(f"umoci unpack made no {bundle}/rootfs")
        finally:
            shutil.rmtree(layout, ignore_errors=True)
            shutil.rmtree(bundle, ignore_errors=True)
        return {"skopeo copy": copy, "umoci unpack": unpack, "skopeo+umoci": copy + unpack}

    def inflate(self, _i: int) -> dict[str, int]:
        total = 0
        out = 0
        for blob in self.blobs:
            t0 = time.perf_counter_ns()
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            for off in range(0, len(blob), INFLATE_CHUNK):
                out += len(d.decompress(blob[off:off + INFLATE_CHUNK]))
            out += len(d.flush())
            total += time.perf_counter_ns() - t0
        want = sum(ly["uncompressed"] for ly in self.layers)
        if out != want:
            raise BenchError(f"inflate produced {out} bytes, want {want}")
        return {"zlib inflate": total}

    def create(self, i: int) -> dict[str, int]:
        root = self.fresh(f"create-{i}")
        root.mkdir()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            t0 = time.perf_counter_ns()
            for n, tree in enumerate(self.trees):
                top = root / str(n)
                os.mkdir(top)
                for name, data in tree:
                    path = os.path.join(top, name)
                    if data is None:
                        os.makedirs(path, exist_ok=True)
                        continue
                    fd = os.open(path, flags, 0o644)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.close(fd)
            ns = time.perf_counter_ns() - t0
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return {"file create": ns}

    def measure(self, pairs: int, warmup: int) -> dict[str, list[int]]:
        samples: dict[str, list[int]] = {}
        steps = (self.hanok, self.skopeo_umoci, self.inflate, self.create)
        for i in range(warmup + pairs):
            tag = "warm-up" if i < warmup else f"{i - warmup + 1}/{pairs}"
            for step in steps:
                progress(f"{tag}: {step.__name__}")
                sample = step(i)
                if i >= warmup:
                    for key, ns in sample.items():
                        samples.setdefault(key, []).append(ns)
        return samples


ROWS = ("hanok pull", "skopeo copy", "umoci unpack", "skopeo+umoci", "zlib inflate", "file create")


def summarize(samples: dict[str, list[int]]) -> tuple[list[dict[str, object]], dict[str, float]]:
    def s(ns: float) -> float:
        return round(ns / 1e9, 3)

    rows = [{"measurement": key, "median_s": s(statistics.median(samples[key])),
             "min_s": s(min(samples[key])), "max_s": s(max(samples[key]))} for key in ROWS]
    med = {key: statistics.median(samples[key]) for key in ROWS}
    ratios = {"hanok/(skopeo+umoci)": round(med["hanok pull"] / med["skopeo+umoci"], 2),
              "hanok/inflate": round(med["hanok pull"] / med["zlib inflate"], 2),
              "hanok/create": round(med["hanok pull"] / med["file create"], 2)}
    return rows, ratios


def print_table(report: dict) -> None:
    img = report["image"]
    print(f"hanok pull vs skopeo copy + umoci unpack vs zlib inflate vs file create, {report['pairs']} alternated "
          f"iterations (+{report['warmup']} warm-up), medians")
    print(f"image: {img['layers']} gzip layers, {img['compressed_mb']} MB compressed, "
          f"{img['uncompressed_mb']} MB uncompressed, {img['files']} files ({img['entries']} tar entries)")
    for ly in img["per_layer"]:
        print(f"  {ly['source']}: {ly['compressed_mb']} MB gz, {ly['uncompressed_mb']} MB tar, {ly['files']} files")
    print(f"tools: {report['skopeo']}; {report['umoci']}; registry {REGISTRY_BIN}")
    print(f"host:  {report['host']}\n")
    print("| measurement | median s | min s | max s |")
    print("|---|---|---|---|")
    for row in report["results"]:
        print(f"| {row['measurement']} | {row['median_s']} | {row['min_s']} | {row['max_s']} |")
    print()
    for name, value in report["ratios"].items():
        print(f"{name} = {value}")
    print("\nratios are of medians (< 1 means hanok is faster); skopeo+umoci = median of per-iteration "
          "sums; inflate = single-core zlib over the compressed layers, in memory (the practical limit); "
          "create = the same directories and files written from memory by one thread (the filesystem's share)")


# ------------------------------------------------------------------ setup, cleanup


def cleanup(tmp: Path | None, registry: Registry | None) -> None:
    """Stop the registry, unmount anything left under tmp, remove tmp. Never raises."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if registry is not None:
        try:
            registry.stop()
        except Exception as exc:  # noqa: BLE001
            progress(f"warning: stopping registry pid {registry.proc.pid}: {exc}")
    if tmp is not None:
        for point in mounts_under(tmp):
            progress(f"warning: unmounting leftover {point}")
            subprocess.run(["umount", "--lazy", point], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            progress(f"warning: could not remove {tmp}")


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchError("must run as root (umoci unpack and hanok unpack keep owners)")
    for tool, pkg in (("skopeo", "skopeo"), ("umoci", "umoci")):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: apt-get install {pkg}")
    if not os.access(REGISTRY_BIN, os.X_OK):
        raise BenchError(f"{REGISTRY_BIN} not found: apt-get install docker-registry")
    if args.pairs < 1 or args.warmup < 0:
        raise BenchError("--pairs must be >= 1 and --warmup >= 0")


def version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="counted iterations (default 3; each pull is big)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"uncounted iterations (default {WARMUP})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tmp: Path | None = None
    registry: Registry | None = None
    try:
        preflight(args)
        tmp = Path(tempfile.mkdtemp(prefix="hanok-bench-pull-"))
        layout = tmp / "image"
        layers = build_image(layout)
        policy = tmp / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        progress("starting docker-registry")
        registry = Registry(tmp / "registry", tmp / "registry" / "storage")
        progress(f"pushing the image to {registry.host}")
        run(["skopeo", "--policy", str(policy), "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout}:1", f"docker://{registry.host}/{REPO_TAG}"])
        bench = Bench(tmp, registry.host, layout, layers, policy)
        samples = bench.measure(args.pairs, args.warmup)
        rows, ratios = summarize(samples)

        def mb(n: int) -> float:
            return round(n / 1e6, 1)

        report = {
            "pairs": args.pairs, "warmup": args.warmup,
            "image": {"layers": len(layers),
                      "compressed_mb": mb(sum(ly["descriptor"]["size"] for ly in layers)),
                      "uncompressed_mb": mb(sum(ly["uncompressed"] for ly in layers)),
                      "files": sum(ly["files"] for ly in layers),
                      "entries": sum(ly["entries"] for ly in layers),
                      "per_layer": [{"source": ly["source"], "compressed_mb": mb(ly["descriptor"]["size"]),
                                     "uncompressed_mb": mb(ly["uncompressed"]), "files": ly["files"]}
                                    for ly in layers]},
            "skopeo": version(["skopeo", "--version"]), "umoci": version(["umoci", "--version"]),
            "host": f"{platform.node()} {platform.release()} {os.cpu_count()} cpus",
            "results": rows, "ratios": ratios,
        }
    except BenchError as exc:
        print(f"bench_pull: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_pull: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup(tmp, registry)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
