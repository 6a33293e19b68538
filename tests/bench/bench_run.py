"""Benchmark `hanok run --rm IMAGE true` against podman with runc (issue 6).

Run as root:  /opt/hanok/bin/python tests/bench/bench_run.py [--pairs N] [--hanok PATH]

Both sides run the same busybox image (the docker-archive the caller tests
build, loaded into each), with `--network none` so that only the container
work is timed, not network setup (bench_net.py times that). podman (Debian
4.3, conmon, runc, cgroupfs) runs inside its own net+mount namespace with a
private /run and storage under a temp dir, exactly as tests/integration/
test_callers.py sets it up. A B A B alternation in one run; medians, p90s and
the hanok/podman ratio are printed, never a threshold.

Then pod start (sandbox + 2 containers, issue 6's node-agent path): `hanok
pod run -f pod.yaml` (two busybox `sleep` containers, `--network none`)
against `podman pod create` + two `podman run -d --pod` (its infra container
included, as podman starts pods), each pod removed untimed after its sample.

Then the per-container commands a node agent or a script calls on a running
container (`exec C true`, `ps --json`, `inspect C`, `stats --no-stream`, `logs
C`), and a create / start / stop -t 0 / rm cycle, each against podman's same
command, alternated.
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
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "integration")]

from test_callers import (CONTAINERS_CONF, IMAGE, POLICY, STORAGE_CONF, _ulimits,  # noqa: E402
                          build_busybox_archive)

WARMUP = 2
POD_MANIFEST = """\
metadata: {{name: {name}}}
spec:
  containers:
  - {{name: a, image: {image}, command: [sleep, "1000"]}}
  - {{name: b, image: {image}, command: [sleep, "1000"]}}
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter_ns()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stdout}{done.stderr}")
    return elapsed


def alternated(pairs: int, hanok_sample: Callable[[int], float],
               podman_sample: Callable[[int], float]) -> dict[str, list[float]]:
    """hanok, podman, hanok, podman...: WARMUP uncounted pairs, then `pairs` samples (ms) of each."""
    samples: dict[str, list[float]] = {"hanok": [], "podman": []}
    for i in range(WARMUP + pairs):
        h, p = hanok_sample(i), podman_sample(i)
        if i >= WARMUP:
            samples["hanok"].append(h)
            samples["podman"].append(p)
    return samples


def report(title: str, samples: dict[str, list[float]], target: str = "") -> None:
    print(title)
    for side, values in samples.items():
        values = sorted(values)
        print(f"  {side:7} median {statistics.median(values):8.1f}   p90 {values[int(len(values) * 0.9) - 1]:8.1f}")
    print(f"  hanok/podman {statistics.median(samples['hanok']) / statistics.median(samples['podman']):.2f}x{target}")


def pod_start(hanok: list[str], podman: list[str], env: dict[str, str], base: Path, pairs: int) -> None:
    """Median time to a running pod of two containers, hanok against podman, alternated."""
    def hanok_pod(i: int) -> float:
        manifest = base / "pod.yaml"
        manifest.write_text(POD_MANIFEST.format(name=f"bench{i}", image=IMAGE))
        elapsed = timed(hanok + ["pod", "run", "--network", "none", "-f", str(manifest)])
        subprocess.run(hanok + ["pod", "rm", "-f", f"bench{i}"], check=True, capture_output=True)
        return elapsed

    def podman_pod(i: int) -> float:
        elapsed = timed(podman + ["pod", "create", "--name", f"bench{i}", "--network", "none"], env)
        for name in ("a", "b"):
            elapsed += timed(podman + ["run", "-d", "--pod", f"bench{i}", "--name", f"bench{i}-{name}", IMAGE,
                                       "sleep", "1000"], env)
        subprocess.run(podman + ["pod", "rm", "-f", "-t", "0", f"bench{i}"], check=True, capture_output=True, env=env)
        return elapsed

    report(f"pod start (sandbox + 2 containers), {pairs} pairs (ms)", alternated(pairs, hanok_pod, podman_pod))


def commands(hanok: list[str], podman: list[str], env: dict[str, str], pairs: int) -> None:
    """Median time of each per-container command on a running container, hanok against podman."""
    stats = ["stats", "--no-stream", "bench-cmd"]
    steps = [("exec C true", ["exec", "bench-cmd", "true"], ["exec", "bench-cmd", "true"]),
             ("ps (JSON)", ["ps", "--json"], ["ps", "--format", "json"]),
             ("inspect C", ["inspect", "bench-cmd"], ["inspect", "bench-cmd"]),
             ("stats --no-stream C", stats, stats),
             ("logs C", ["logs", "bench-cmd"], ["logs", "bench-cmd"])]

    def row(label: str, samples: dict[str, list[float]]) -> None:
        h_med, p_med = statistics.median(samples["hanok"]), statistics.median(samples["podman"])
        print(f"  {label:24} {h_med:8.1f} {p_med:8.1f} {h_med / p_med:6.2f}x")

    def cycle(argv: list[str], run_env: dict[str, str] | None, i: int) -> float:
        name = f"bench-cycle{i}"
        return (timed(argv + ["create", "--network", "none", "--name", name, IMAGE, "sleep", "1000"], run_env)
                + timed(argv + ["start", name], run_env) + timed(argv + ["stop", "-t", "0", name], run_env)
                + timed(argv + ["rm", name], run_env))

    print(f"per-container commands on a running container, {pairs} pairs (ms)")
    print(f"  {'command':24} {'hanok':>8} {'podman':>8} {'ratio':>7}")
    for argv, run_env in ((hanok, None), (podman, env)):
        subprocess.run(argv + ["run", "-d", "--network", "none", "--name", "bench-cmd", IMAGE, "sleep", "1000"],
                       check=True, capture_output=True, env=run_env)
    try:
        for label, h_args, p_args in steps:
            row(label, alternated(pairs, lambda i, h_args=h_args: timed(hanok + h_args),
                                  lambda i, p_args=p_args: timed(podman + p_args, env)))
    finally:
        subprocess.run(hanok + ["rm", "-f", "bench-cmd"], capture_output=True)
        subprocess.run(podman + ["rm", "-f", "-t", "0", "bench-cmd"], capture_output=True, env=env)
    row("create+start+stop+rm", alternated(pairs, lambda i: cycle(hanok, None, i), lambda i: cycle(podman, env, i)))


def podman_sandbox(base: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """podman's config under `base`, and a process holding its private namespaces."""
    for d in ("tmp", "home/.config/containers", "networks", "varlib/upper", "varlib/work"):
        (base / d).mkdir(parents=True)
    (base / "containers.conf").write_text(CONTAINERS_CONF.format(base=base, ulimits=_ulimits()))
    (base / "storage.conf").write_text(STORAGE_CONF.format(base=base))
    (base / "registries.conf").write_text("")
    (base / "home/.config/containers/policy.json").write_text(json.dumps(POLICY))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTAINERS_", "XDG_", "DBUS_", "REGISTRY_AUTH"))}
    env.update(CONTAINERS_CONF=str(base / "containers.conf"), CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"), HOME=str(base / "home"))
    setup = (f"mount -t tmpfs -o mode=755,size=64m hanok-bench-run /run && "
             f"mount -t overlay hanok-bench-varlib -o lowerdir=/var/lib,"
             f"upperdir={base}/varlib/upper,workdir={base}/varlib/work /var/lib && "
             f"echo ready && exec sleep infinity")
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", setup],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        raise SystemExit("could not make podman's namespaces")
    return holder, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--pod-pairs", type=int, default=10)
    parser.add_argument("--hanok", default=str(Path(sys.executable).parent / "hanok"))
    args = parser.parse_args()
    for tool in ("podman", "conmon", "runc", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install podman runc util-linux)")
    base = Path(tempfile.mkdtemp(prefix="hanok-bench-run-", dir="/tmp"))
    base.chmod(0o755)
    holder = None
    try:
        archive = base / "busybox.tar"
        build_busybox_archive(archive)
        hanok = [args.hanok, "--store", str(base / "store"), "--state", str(base / "state")]
        subprocess.run(hanok + ["load", "-i", str(archive)], check=True, capture_output=True)
        holder, env = podman_sandbox(base / "podman")
        runc = shutil.which("runc") or "runc"
        podman = ["nsenter", "-t", str(holder.pid), "--net", "--mount", "podman",
                  "--root", str(base / "podman/graph"), "--runroot", str(base / "podman/runroot"),
                  "--runtime", runc, "--cgroup-manager", "cgroupfs"]
        subprocess.run(podman + ["load", "-i", str(archive)], check=True, capture_output=True, env=env)
        hanok_run = hanok + ["run", "--rm", "--network", "none", IMAGE, "true"]
        podman_run = podman + ["run", "--rm", "--network", "none", IMAGE, "true"]
        report(f"run --rm --network none {IMAGE} true, {args.pairs} pairs (ms)",
               alternated(args.pairs, lambda i: timed(hanok_run), lambda i: timed(podman_run, env)),
               " (target <= 0.5x)")
        pod_start(hanok, podman, env, base, args.pod_pairs)
        commands(hanok, podman, env, args.pod_pairs)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        for pod_id in subprocess.run([args.hanok, "--store", str(base / "store"), "--state", str(base / "state"),
                                      "pod", "ls", "-q", "--no-trunc"], capture_output=True, text=True).stdout.split():
            subprocess.run([args.hanok, "--store", str(base / "store"), "--state", str(base / "state"),
                            "pod", "rm", "-f", pod_id], capture_output=True)
        subprocess.run([args.hanok, "--store", str(base / "store"), "--state", str(base / "state"),
                        "container", "prune"], capture_output=True)
        for shared in ("netns", "pods"):  # self bind mounts, made once per run directory
            subprocess.run(["umount", str(base / "state" / shared)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
