"""Benchmark `hanok-oci` against runc on the per-container hot paths.

Run as root:  python tests/bench/bench_oci.py [--pairs N] [--hanok PATH] [--runc PATH] [--json]

What is measured (DESIGN.md "Hot paths": what a caller runs per container):
  run     `run ID` of a /bin/true bundle, foreground, until it exits
  state   `state ID` of a created (not started) container
  cycle   `create`, `start` and `delete` of a /bin/true container, each timed
          on its own and summed per cycle (the wait for the process to exit
          between start and delete is not timed)
  limits  `run` again with five cgroup limits (memory, pids, cpu shares,
          cpu quota/period, cpuset); "limits add" is run+limits minus run,
          per runtime: what creating, limiting, entering and removing a
          cgroup costs inside each runtime's create/delete

Every figure comes from one run with hanok and runc alternated A B A B, so the
noise of a shared machine hits both sides alike; only medians, p90s and the
hanok/runc ratio are printed, never a pass/fail threshold (TESTING.md).
The binaries are executed directly: a pyenv `python3` shim would add ~80 ms
to every call and swamp what we want to see, so shims are refused.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WARMUP = 2                 # uncounted pairs per measurement: page cache, cgroup dirs, ...
STOP_TIMEOUT_S = 10.0      # how long a started /bin/true may take to be reported "stopped"
PR_SET_CHILD_SUBREAPER = 36
FIVE_LIMITS = {"memory": {"limit": 256 << 20}, "pids": {"limit": 512}, "cpu": {"shares": 512,
               "quota": 50000, "period": 100000, "cpus": "0"}}

Sample = dict[str, int]    # step name -> nanoseconds, for one iteration


class BenchError(Exception):
    """A precondition or a runtime command failed; the message says which."""


@dataclass
class Runtime:
    """One side of the comparison: a runc-compatible binary with a private --root.

    Separate state dirs keep the two runtimes from ever seeing each other's
    containers; `live` records every id that may exist so cleanup can remove it
    even after a failure half way through a measurement.
    """

    label: str
    binary: str
    root: Path
    live: set[str] = field(default_factory=set)

    def call(self, *args: str, check: bool = True) -> tuple[int, int, bytes, bytes]:
        """Run `binary --root ROOT args...`; return (ns, rc, stdout, stderr).

        Output goes to temporary files, not pipes: `create` leaves a container
        init behind that inherits our stdio, and with pipes subprocess.run
        would wait for that init to exit. The files are made before the clock
        starts so only the runtime process itself is timed.
        """
        argv = [self.binary, "--root", str(self.root), *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter_ns()
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err).returncode
            ns = time.perf_counter_ns() - t0
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if check and rc != 0:
            raise BenchError(f"{self.label}: `{' '.join(argv)}` exited {rc}:\n"
                             f"{stderr.decode(errors='replace').strip()}")
        return ns, rc, stdout, stderr

    def status(self, cid: str) -> str | None:
        """The container's status from `state`, or None if it does not exist."""
        _, rc, out, _ = self.call("state", cid, check=False)
        if rc != 0:
            return None
        try:
            return str(json.loads(out)["status"])
        except (ValueError, KeyError) as exc:
            raise BenchError(f"{self.label}: `state {cid}` printed no status: {out[:200]!r}") from exc

    def remove(self, cid: str) -> None:
        """Untimed cleanup of one container, whatever state it is in."""
        if self.status(cid) is not None:
            self.call("delete", "--force", cid)
        self.live.discard(cid)


def reap() -> None:
    """Reap re-parented container inits (we are their subreaper).

    Only called while no subprocess of ours is running, so it cannot steal an
    exit status that subprocess.run is waiting for.
    """
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def become_subreaper() -> None:
    """Adopt orphaned container inits, as conmon or a containerd shim would.

    After `create` the runtime exits and the init is re-parented. Here pid 1
    may not reap, so without this stopped inits would stay zombies, and a
    runtime that does not count a zombie as stopped would never say "stopped".
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def refuse_shims(binary: str) -> None:
    """Exit if `binary` runs through a shim script (e.g. pyenv's python3).

    Follows the #! chain (resolving `/usr/bin/env X` through PATH): a shim in
    it would be timed along with the runtime and dominate the figures.
    """
    path: str | None = binary
    for _ in range(4):
        if path is None:
            raise BenchError(f"{binary}: cannot resolve its #! interpreter")
        if "/shims/" in os.path.realpath(path) or "/shims/" in path:
            raise BenchError(f"{binary} runs through the shim {path}; give the real "
                             "console script (e.g. /opt/hanok/bin/hanok-oci)")
        with open(path, "rb") as f:
            head = f.read(256)
        if not head.startswith(b"#!"):
            return
        words = head[2:].split(b"\n", 1)[0].decode().split()
        if not words:
            raise BenchError(f"{path}: empty #! line")
        path = words[0]
        if os.path.basename(path) == "env" and len(words) > 1:
            path = shutil.which(words[1])
    raise BenchError(f"{binary}: #! chain too deep")


def make_bundle(dest: Path, runc: str) -> Path:
    """A busybox bundle whose config.json is `runc spec`, trimmed for /bin/true.

    Starting from runc's own default spec keeps the comparison fair: default
    namespaces (pid, network, ipc, uts, mount), read-only root, masked paths.
    linux.resources is dropped so no cgroup limit is written by either side.
    """
    rootfs = dest / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for name in ("true", "sh"):
        (rootfs / "bin" / name).symlink_to("busybox")
    subprocess.run([runc, "spec"], cwd=dest, check=True, capture_output=True)
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["linux"].pop("resources", None)
    config_path.write_text(json.dumps(config, indent=2))
    limited = dest.parent / "bundle-limits"
    limited.mkdir()
    config["root"]["path"] = str(rootfs)
    config["linux"]["resources"] = FIVE_LIMITS
    (limited / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def alternate(pairs: int, a: Runtime, b: Runtime,
              step: Callable[[Runtime, int], Sample]) -> dict[str, dict[str, list[int]]]:
    """Run `step` A B A B for WARMUP + `pairs` pairs; keep all but the warm-up.

    Returns {runtime label: {step name: [ns, ...]}}. The iteration number is
    passed to `step` so it can make container ids unique per run.
    """
    samples: dict[str, dict[str, list[int]]] = {a.label: {}, b.label: {}}
    for i in range(WARMUP + pairs):
        for rt in (a, b):
            sample = step(rt, i)
            if i >= WARMUP:
                for key, ns in sample.items():
                    samples[rt.label].setdefault(key, []).append(ns)
    return samples


class Bench:
    """The three measurements over one bundle, sharing id naming and cleanup."""

    def __init__(self, a: Runtime, b: Runtime, bundle: Path, pairs: int, prefix: str) -> None:
        self.a, self.b, self.bundle, self.pairs = a, b, str(bundle), pairs
        self.prefix = prefix   # cgroup paths are host-global: ids must not collide

    def cid(self, rt: Runtime, kind: str, i: int) -> str:
        """A container id unique across runtimes and runs, registered for cleanup."""
        cid = f"{self.prefix}-{rt.label}-{kind}-{i}"
        rt.live.add(cid)
        return cid

    def run_true(self, rt: Runtime, i: int) -> Sample:
        """Foreground `run` until /bin/true exits; runc removes the container itself."""
        cid = self.cid(rt, "run", i)
        ns = rt.call("run", "--bundle", self.bundle, cid)[0]
        rt.remove(cid)   # untimed: only if the runtime left state behind
        return {"run": ns}

    def run_limited(self, rt: Runtime, i: int) -> Sample:
        """The same `run` with five cgroup limits in config.json."""
        cid = self.cid(rt, "lim", i)
        ns = rt.call("run", "--bundle", str(Path(self.bundle).parent / "bundle-limits"), cid)[0]
        rt.remove(cid)
        return {"run+limits": ns}

    def cycle(self, rt: Runtime, i: int) -> Sample:
        """create, start, (untimed wait for exit), delete; each step timed alone."""
        cid = self.cid(rt, "cycle", i)
        create = rt.call("create", "--bundle", self.bundle, cid)[0]
        start = rt.call("start", cid)[0]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (status := rt.status(cid)) != "stopped":
            reap()
            if time.monotonic() > deadline:
                raise BenchError(f"{rt.label}: {cid} still {status!r} {STOP_TIMEOUT_S}s after start")
            time.sleep(0.001)
        delete = rt.call("delete", cid)[0]
        rt.live.discard(cid)
        reap()
        return {"create": create, "start": start, "delete": delete,
                "create+start+delete": create + start + delete}

    def measure(self) -> dict[str, dict[str, list[int]]]:
        """All three measurements; returns merged samples per runtime label."""
        merged: dict[str, dict[str, list[int]]] = {self.a.label: {}, self.b.label: {}}

        def add(part: dict[str, dict[str, list[int]]]) -> None:
            for label, steps in part.items():
                merged[label].update(steps)

        progress("run: /bin/true in the foreground")
        add(alternate(self.pairs, self.a, self.b, self.run_true))

        progress("state: of one created container per runtime")
        held = {rt.label: self.cid(rt, "state", 0) for rt in (self.a, self.b)}
        for rt in (self.a, self.b):
            rt.call("create", "--bundle", self.bundle, held[rt.label])

        def state(rt: Runtime, _i: int) -> Sample:
            ns, _, out, _ = rt.call("state", held[rt.label])
            if json.loads(out).get("status") != "created":   # checked outside the clock
                raise BenchError(f"{rt.label}: unexpected state {out[:200]!r}")
            return {"state": ns}

        add(alternate(self.pairs, self.a, self.b, state))
        for rt in (self.a, self.b):
            rt.remove(held[rt.label])
        reap()

        progress("cycle: create + start + delete")
        add(alternate(self.pairs, self.a, self.b, self.cycle))

        progress("limits: run with five cgroup limits")
        add(alternate(self.pairs, self.a, self.b, self.run_limited))
        return merged


def progress(msg: str) -> None:
    """Progress goes to stderr so stdout stays pasteable (and valid JSON)."""
    print(f"bench_oci: {msg}", file=sys.stderr, flush=True)


def summarize(samples: dict[str, dict[str, list[int]]], a: str, b: str) -> list[dict[str, object]]:
    """Median, p90 (ms) per runtime and the median ratio a/b, one row per step."""
    def ms(ns: float) -> float:
        return round(ns / 1e6, 2)

    rows: list[dict[str, object]] = []
    for key in ("run", "state", "create", "start", "delete", "create+start+delete", "run+limits"):
        row: dict[str, object] = {"measurement": key}
        for label in (a, b):
            xs = samples[label][key]
            row[f"{label}_median_ms"] = ms(statistics.median(xs))
            row[f"{label}_p90_ms"] = ms(statistics.quantiles(xs, n=10, method="inclusive")[8])
        row["ratio"] = round(statistics.median(samples[a][key]) / statistics.median(samples[b][key]), 2)
        rows.append(row)
    # what five limits add to `run`, per runtime (difference of medians)
    row = {"measurement": "limits add (run+limits - run)"}
    for label in (a, b):
        delta = statistics.median(samples[label]["run+limits"]) - statistics.median(samples[label]["run"])
        row[f"{label}_median_ms"] = ms(delta)
        row[f"{label}_p90_ms"] = "-"
    row["ratio"] = "-"
    rows.append(row)
    return rows


def print_table(report: dict[str, object]) -> None:
    """A Markdown table, ready to paste into an issue note."""
    rows: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    head = ["measurement", "hanok median ms", "hanok p90 ms", "runc median ms", "runc p90 ms",
            "hanok/runc"]
    keys = ["measurement", "hanok_median_ms", "hanok_p90_ms", "runc_median_ms", "runc_p90_ms", "ratio"]
    print(f"hanok-oci vs runc, {report['pairs']} alternated pairs (+{report['warmup']} warm-up), medians")
    print(f"hanok: {report['hanok']}\nrunc:  {report['runc']} ({report['runc_version']})")
    print(f"host:  {report['host']}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    print("\nratio = hanok median / runc median (< 1 means hanok is faster); "
          "create+start+delete = median of per-cycle sums")


def mounts_under(top: Path) -> list[str]:
    """Mount points at or below `top`, deepest first (so they unmount cleanly)."""
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(top) or point.startswith(f"{top}/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def cleanup(tmp: Path, runtimes: list[Runtime], prefix: str) -> None:
    """Delete every container we made, unmount and remove the temp dir.

    Runs in `finally`, with SIGINT ignored so a second Ctrl-C cannot leave
    containers, mounts or cgroups behind. Problems are reported, not raised.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for rt in runtimes:
        for cid in sorted(rt.live):
            try:
                rt.call("delete", "--force", cid, check=False)
                if rt.status(cid) is not None:
                    progress(f"warning: {rt.label} container {cid} survived delete --force")
            except (OSError, BenchError) as exc:
                progress(f"warning: cleaning {cid}: {exc}")
        rt.live.clear()
        if rt.root.is_dir() and any(rt.root.iterdir()):
            progress(f"warning: {rt.label} left {sorted(p.name for p in rt.root.iterdir())} in its --root")
    reap()
    for point in mounts_under(tmp):
        progress(f"warning: unmounting leftover {point}")
        subprocess.run(["umount", "--lazy", point], check=False)
    shutil.rmtree(tmp, ignore_errors=True)
    leftovers = [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/{prefix}-*") if p.is_dir()] \
        if Path("/sys/fs/cgroup").is_dir() else []
    if leftovers:
        progress(f"warning: cgroups left behind: {leftovers}")


def default_hanok() -> str:
    """The hanok-oci console script: on PATH, else the /opt/hanok venv."""
    return shutil.which("hanok-oci") or "/opt/hanok/bin/hanok-oci"


def preflight(args: argparse.Namespace) -> tuple[str, str]:
    """Check root, busybox and both binaries; return their resolved paths."""
    if os.geteuid() != 0:
        raise BenchError("must run as root (namespaces, mounts, cgroups)")
    if not Path("/bin/busybox").is_file():
        raise BenchError("/bin/busybox not found: apt-get install busybox-static")
    runc = shutil.which(args.runc)
    if runc is None:
        raise BenchError(f"runc not found ({args.runc!r}): apt-get install runc")
    hanok = shutil.which(args.hanok) if args.hanok else None
    if hanok is None:
        raise BenchError(f"hanok-oci not found or not executable: {args.hanok!r} (use --hanok PATH)")
    for binary in (hanok, runc):
        refuse_shims(binary)
    if args.pairs < 2:
        raise BenchError("--pairs must be at least 2 (p90 needs two samples)")
    if args.pairs < 20:
        progress(f"note: {args.pairs} pairs is a smoke run; use >= 20 for figures worth quoting")
    return hanok, runc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=30, help="counted A/B pairs per measurement (default 30)")
    parser.add_argument("--hanok", default=default_hanok(), help="hanok-oci binary (default: %(default)s)")
    parser.add_argument("--runc", default="runc", help="runc binary (default: runc on PATH)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tmp: Path | None = None
    runtimes: list[Runtime] = []
    prefix = f"hb{os.getpid()}"
    try:
        hanok, runc = preflight(args)
        become_subreaper()
        tmp = Path(tempfile.mkdtemp(prefix="hanok-bench-oci-"))
        bundle = make_bundle(tmp / "bundle", runc)
        runtimes = [Runtime("hanok", hanok, tmp / "state-hanok"), Runtime("runc", runc, tmp / "state-runc")]
        for rt in runtimes:
            rt.root.mkdir()
        bench = Bench(runtimes[0], runtimes[1], bundle, args.pairs, prefix)
        samples = bench.measure()
        report: dict[str, object] = {
            "pairs": args.pairs, "warmup": WARMUP, "hanok": hanok, "runc": runc,
            "runc_version": subprocess.run([runc, "--version"], capture_output=True, text=True)
            .stdout.splitlines()[0],
            "host": f"{platform.node()} {platform.release()} {os.cpu_count()} cpus",
            "results": summarize(samples, "hanok", "runc"),
        }
    except BenchError as exc:
        print(f"bench_oci: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_oci: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        if tmp is not None:
            cleanup(tmp, runtimes, prefix)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
