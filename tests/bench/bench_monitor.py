"""Memory of the per-container monitor: hanok's (runtime/monitor.py) against Debian's conmon.

Run as root:  /opt/hanok/bin/python tests/bench/bench_monitor.py [--count 50] [--rounds 2] [--json]

What is measured (issue 6: "at most 3 MiB PSS per container for 50 idle
containers"): `count` idle busybox `sleep 1000` containers are started, each
under its own monitor, and the PSS of the monitor processes alone (not the
containers) is summed from /proc/PID/smaps_rollup once they have settled.

  hanok   monitor.spawn() with a launch that does container.create + start
          in-process, as the engine does for `hanok run -d`
  conmon  `conmon ... -r /usr/sbin/runc -l k8s-file:LOG` per container, then
          `runc start`, as podman drives it (conmon 2.1.6, runc 1.1.5)

PSS divides each shared page among the processes mapping it, so the sum over
`count` monitors is their real cost to the host, and per-container PSS falls as
`count` grows (the interpreter's or conmon's text is shared). Private_Dirty,
what each monitor costs on its own, is printed beside it. Sides alternate A B A
B (`rounds` times each, one side's containers all removed before the other's
start); medians are printed, with the hanok/conmon ratio. Every container and
monitor is removed at the end, even after a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hanok.runtime import bundle as bundles
from hanok.runtime import container, monitor
from hanok.runtime.process import set_subreaper

RUNC = "/usr/sbin/runc"
CONMON = "/usr/bin/conmon"
SETTLE_S = 2.0       # after the last start: let the monitors reach their idle steady state
START_TIMEOUT_S = 10.0


class BenchError(Exception):
    """A precondition or a start failed; the message says which."""


def progress(msg: str) -> None:
    print(f"bench_monitor: {msg}", file=sys.stderr, flush=True)


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: kB}."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def reap_all() -> None:
    """We are a subreaper: monitors and conmons that exit come back to us."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def wait_until(check, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)


class HanokSide:
    """Containers under hanok monitors, state in a private root."""

    label = "hanok"

    def __init__(self, work: Path, bundle: Path):
        self.work, self.bundle = work, bundle
        self.root = str(work / "hanok-state")
        self.live: dict[str, int] = {}  # container id -> monitor pid

    def start(self, cid: str) -> int:
        logs = self.work / "hanok-logs" / cid
        logs.mkdir(parents=True)

        def launch() -> int:
            pid = container.create(self.root, cid, str(self.bundle))
            try:
                container.start(self.root, cid)
            except BaseException:
                container.delete(self.root, cid, force=True)
                raise
            return pid

        info = monitor.spawn(launch=launch, log_path=str(logs / "ctr.log"), exit_path=str(logs / "exit.json"))
        self.live[cid] = info.pid
        return info.pid

    def remove_all(self) -> None:
        for cid, pid in list(self.live.items()):
            try:
                container.delete(self.root, cid, force=True)
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                progress(f"hanok delete {cid}: {e}")
            finish(pid)
            del self.live[cid]


class ConmonSide:
    """Containers under conmon driving runc, as podman starts them."""

    label = "conmon"

    def __init__(self, work: Path, bundle: Path):
        self.work, self.bundle = work, bundle
        self.root = str(work / "runc-state")
        self.live: dict[str, int] = {}

    def runc(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([RUNC, "--root", self.root, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)

    def start(self, cid: str) -> int:
        d = self.work / "conmon" / cid
        d.mkdir(parents=True)
        argv = [CONMON, "--api-version", "1", "--cid", cid, "--cuuid", cid, "--name", cid,
                "--runtime", RUNC, "--bundle", str(self.bundle), "--container-pidfile", str(d / "pidfile"),
                "--conmon-pidfile", str(d / "conmon.pid"), "--log-path", f"k8s-file:{d / 'ctr.log'}",
                "--exit-dir", str(d), "--socket-dir-path", str(d), "--runtime-arg", "--root",
                "--runtime-arg", self.root]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise BenchError(f"conmon for {cid} exited {done.returncode}: {done.stderr.decode().strip()}")
        wait_until(lambda: (d / "pidfile").exists() and (d / "conmon.pid").exists(), f"conmon {cid} to create")
        pid = int((d / "conmon.pid").read_text())
        self.live[cid] = pid
        started = self.runc("start", cid)
        if started.returncode != 0:
            raise BenchError(f"runc start {cid}: {started.stderr.decode().strip()}")
        return pid

    def remove_all(self) -> None:
        for cid, pid in list(self.live.items()):
            done = self.runc("delete", "--force", cid)
            if done.returncode != 0 and b"does not exist" not in done.stderr:
                progress(f"runc delete {cid}: {done.stderr.decode().strip()}")
            finish(pid)
            del self.live[cid]


def reaped_and_gone(pid: int) -> bool:
    reap_all()
    return not alive(pid)


def finish(pid: int) -> None:
    """Wait for a monitor to exit by itself (its container is gone), else kill it."""
    try:
        wait_until(lambda: reaped_and_gone(pid), f"monitor {pid} to exit", timeout=5)
    except BenchError:
        progress(f"monitor {pid} did not exit; killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_all()


def measure(side: HanokSide | ConmonSide, count: int, prefix: str) -> dict[str, float]:
    """Start `count` containers under `side`'s monitors, sum their memory, remove them."""
    try:
        pids = [side.start(f"{prefix}-{side.label}-{i}") for i in range(count)]
        time.sleep(SETTLE_S)
        missing = [pid for pid in pids if not alive(pid)]
        if missing:
            raise BenchError(f"{side.label}: monitors exited early: {missing}")
        rollups = [rollup(pid) for pid in pids]
    finally:
        side.remove_all()
    return {field: sum(r.get(field, 0) for r in rollups) / 1024 for field in ("Pss", "Private_Dirty", "Rss")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="containers per side (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per side, alternated (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_monitor: needs root", file=sys.stderr)
        return 2
    for tool in (RUNC, CONMON, bundles.BUSYBOX):
        if not os.path.exists(tool):
            print(f"bench_monitor: {tool} missing (Debian: runc, conmon, busybox-static)", file=sys.stderr)
            return 2
    set_subreaper()  # exited monitors come back to us to be reaped (pid 1 may not reap here)
    work = Path(tempfile.mkdtemp(prefix="hanok-bench-monitor-", dir="/tmp"))
    prefix = f"bm{os.getpid()}"
    bundle = work / "bundle"
    sides: list[HanokSide | ConmonSide] = [HanokSide(work, bundle), ConmonSide(work, bundle)]
    try:
        bundles.busybox_bundle(str(bundle), args=["sleep", "1000"])
        samples: dict[str, list[dict[str, float]]] = {side.label: [] for side in sides}
        for r in range(args.rounds):
            for side in sides:
                progress(f"round {r + 1}/{args.rounds}: {args.count} containers under {side.label}")
                samples[side.label].append(measure(side, args.count, f"{prefix}r{r}"))
    finally:
        for side in sides:
            side.remove_all()
        reap_all()
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, object] = {"count": args.count, "rounds": args.rounds,
                                 "python": sys.executable, "conmon": CONMON}
    for label, runs in samples.items():
        for field in ("Pss", "Private_Dirty", "Rss"):
            total = statistics.median(run[field] for run in runs)
            report[f"{label}_{field}_total_mib"] = round(total, 2)
            report[f"{label}_{field}_per_container_mib"] = round(total / args.count, 3)
    report["pss_ratio_hanok_over_conmon"] = round(
        float(report["hanok_Pss_total_mib"]) / float(report["conmon_Pss_total_mib"]), 2)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"monitor memory, {args.count} idle containers per side, median of {args.rounds} alternated rounds")
    print(f"hanok:  {sys.executable} -S -I -c '...monitor._loop(...)'\nconmon: {CONMON} + {RUNC}\n")
    print("| monitor | PSS total MiB | PSS per container MiB | Private_Dirty per container MiB "
          "| RSS per container MiB |")
    print("|---|---|---|---|---|")
    for label in samples:
        print(f"| {label} | {report[f'{label}_Pss_total_mib']} | {report[f'{label}_Pss_per_container_mib']} | "
              f"{report[f'{label}_Private_Dirty_per_container_mib']} | {report[f'{label}_Rss_per_container_mib']} |")
    print(f"\nPSS ratio hanok/conmon: {report['pss_ratio_hanok_over_conmon']} (target: hanok <= 3 MiB per container)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench_monitor: {e}", file=sys.stderr)
        sys.exit(1)
