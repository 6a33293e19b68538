"""Cost of the default seccomp profile: build (us), import (us), container start (ms).

Run as root: /opt/hanok/bin/python tests/bench/bench_seccomp.py [--pairs N]
Container runs alternate A (no seccomp), B (default profile, cache miss: a
fresh $HANOK_SECCOMP_CACHE each run) and C (default profile, cache hit) in one
run; medians and the differences to A are printed, never a threshold. In-process
figures: seccomp.prepare() on a miss and a hit, and seccomp.load() installing
the filter through libseccomp versus the prepared program, each in a forked child.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from hanok.runtime import seccomp
from hanok.runtime.bundle import DOCKER_CAPS
from hanok.runtime.seccomp_default import default_profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import default_config  # noqa: E402

WARMUP = 2


def build_us() -> tuple[float, float]:
    n = 2000
    build = min(timeit.repeat(lambda: default_profile(DOCKER_CAPS), number=n, repeat=7)) / n * 1e6
    profile = default_profile(DOCKER_CAPS)
    val = min(timeit.repeat(lambda: seccomp.validate(profile), number=n, repeat=7)) / n * 1e6
    return build, val


def json_parse_us(tmp: Path) -> float:
    path = tmp / "profile.json"
    path.write_text(json.dumps(default_profile(DOCKER_CAPS), indent=1))
    n = 2000
    return min(timeit.repeat(lambda: json.loads(path.read_bytes()), number=n, repeat=7)) / n * 1e6


def importtime_us(module: str, runs: int = 15) -> float:
    """Median self+children time of `module` from -X importtime, in a fresh interpreter each run."""
    env = {**os.environ, "PYTHONPATH": "/tmp/hanok-src"}
    samples = []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             capture_output=True, text=True, env=env, check=True).stderr
        line = [ln for ln in err.splitlines() if ln.rstrip().endswith(f"| {module}")][-1]
        samples.append(int(line.split("|")[1]))
    return statistics.median(samples)


def prepare_us(tmp: Path) -> tuple[float, float]:
    """Median cost of seccomp.prepare(docker's profile): (miss, hit), in us."""
    profile = default_profile(DOCKER_CAPS)
    misses, hits = [], []
    for i in range(30):
        t0 = time.perf_counter_ns()
        seccomp.prepare(profile, str(tmp / f"prepare-miss-{i}"))
        misses.append((time.perf_counter_ns() - t0) / 1e3)
        t0 = time.perf_counter_ns()
        prepared = seccomp.prepare(profile, str(tmp / "prepare-miss-0"))
        hits.append((time.perf_counter_ns() - t0) / 1e3)
        assert prepared.hit
    return statistics.median(misses), statistics.median(hits)


def _load_in_child_us(profile: dict, prepared: bool) -> float:
    """Time seccomp.load() in a forked child (with no_new_privs), via libseccomp or the prepared program."""
    from hanok.runtime import syscalls

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if not prepared:
                seccomp._prepared = None
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            t0 = time.perf_counter_ns()
            seccomp.load(profile)
            os.write(w, str((time.perf_counter_ns() - t0) / 1e3).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(out)


def load_us(tmp: Path) -> tuple[float, float]:
    """Median cost of installing the filter in the child: (libseccomp, prepared), in us, alternated."""
    profile = default_profile(DOCKER_CAPS)
    seccomp.prepare(profile, str(tmp / "load-cache"))
    slow, fast = [], []
    for _ in range(30):
        slow.append(_load_in_child_us(profile, prepared=False))
        fast.append(_load_in_child_us(profile, prepared=True))
    return statistics.median(slow), statistics.median(fast)


def run_ms(binary: str, root: Path, bundle: Path, cid: str, cache: Path) -> float:
    env = {**os.environ, seccomp.CACHE_DIR_ENV: str(cache)}
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter_ns()
        rc = subprocess.run([binary, "--root", str(root), "run", "--bundle", str(bundle), cid],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env).returncode
        ns = time.perf_counter_ns() - t0
        if rc != 0:
            out.seek(0)
            raise SystemExit(f"{bundle.name}: run exited {rc}: {out.read().decode(errors='replace')}")
    return ns / 1e6


def make_bundle(tmp: Path, name: str, seccomp_on: bool, nnp: bool) -> Path:
    bundle = tmp / name
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "true").symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (rootfs / d).mkdir()
    config = default_config("/bin/true")
    config["process"]["capabilities"] = {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    config["process"]["noNewPrivileges"] = nnp
    if seccomp_on:
        config["linux"]["seccomp"] = default_profile(DOCKER_CAPS)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--hanok", default="/opt/hanok/bin/hanok-oci")
    parser.add_argument("--nnp", action="store_true", help="noNewPrivileges true (default: false, as hanok run)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-seccomp-"))
    try:
        build, val = build_us()
        print(f"default_profile(docker caps): {build:.1f} us   seccomp.validate(): {val:.1f} us")
        print(f"json.loads of the same profile from a file: {json_parse_us(tmp):.1f} us")
        print(f"import hanok.runtime.seccomp_default (-X importtime, cumulative, median of 15): "
              f"{importtime_us('hanok.runtime.seccomp_default'):.0f} us")
        print(f"import json (-X importtime, median of 15): {importtime_us('json'):.0f} us")
        miss, hit = prepare_us(tmp)
        print(f"seccomp.prepare(docker profile), median of 30: miss {miss:.0f} us, hit {hit:.0f} us")
        slow, fast = load_us(tmp)
        print(f"seccomp.load() in a child, median of 30 alternated: libseccomp {slow:.0f} us,"
              f" prepared program {fast:.0f} us")
        root = tmp / "state"
        root.mkdir()
        plain = make_bundle(tmp, "plain", False, args.nnp)
        filtered = make_bundle(tmp, "seccomp", True, args.nnp)
        warm_cache = tmp / "cache-hit"
        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        for i in range(WARMUP + args.pairs):
            ta = run_ms(args.hanok, root, plain, f"a{i}", warm_cache)
            tb = run_ms(args.hanok, root, filtered, f"b{i}", tmp / f"cache-miss-{i}")
            tc = run_ms(args.hanok, root, filtered, f"c{i}", warm_cache)
            if i >= WARMUP:
                a.append(ta)
                b.append(tb)
                c.append(tc)
        ma, mb, mc = statistics.median(a), statistics.median(b), statistics.median(c)
        print(f"{os.path.basename(args.hanok)} run /bin/true, {args.pairs} alternated triples (A B C),"
              f" noNewPrivileges={args.nnp}:")
        print(f"  A without seccomp:              median {ma:.1f} ms")
        for label, m, samples in (("B default profile, cache miss:", mb, b), ("C default profile, cache hit: ", mc, c)):
            diffs = statistics.median([y - x for x, y in zip(a, samples)])
            print(f"  {label}  median {m:.1f} ms, {m - ma:+.1f} ms vs A (median of pairwise differences"
                  f" {diffs:+.1f} ms), ratio {m / ma:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
