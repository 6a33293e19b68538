"""Benchmark one sandbox's network setup and teardown: hanok against the CNI bridge plugin.

Run as root:  /opt/hanok/bin/python tests/bench/bench_net.py [--pairs N] [--python PATH] [--json]

What is measured, whole process against whole process:
  ADD  hanok: a fresh interpreter runs `network.setup()` for one owner on a
       test network (namespace, lease, bridge check, masquerade check, veth,
       addresses, route).
       CNI: `/usr/lib/cni/bridge` with CNI_COMMAND=ADD and ipam host-local
       (bridge, isGateway, ipMasq, hairpinMode), config on stdin, into a
       namespace made beforehand with `ip netns add` (untimed: hanok's ADD
       makes its namespace, CNI's does not; that favours CNI).
  DEL  hanok: a fresh interpreter runs `network.teardown()`.
       CNI: the same plugin with CNI_COMMAND=DEL.
  Each hanok process then leaves through os._exit, as hanok's commands do
  (cli._exit_now: interpreter teardown frees modules and arenas for a few
  milliseconds and cleans nothing up).

  START the interpreter alone (`python -c pass`, same interpreter and
       environment), timed in the same alternation: the part of hanok's
       time that no change to hanok can remove, printed as the floor.

hanok runs from the source tree (PYTHONPATH) but with its bytecode cached, as
an installed package has it: the children get PYTHONPYCACHEPREFIX under the
bench's temp dir (nothing is written into the tree) and never inherit
PYTHONDONTWRITEBYTECODE, so the warm-up rounds compile every module once.
Otherwise each hanok process would compile its modules from source (~7 ms).

Both sides run alternated A B A B in one run, so a shared machine's noise
hits both alike; medians, p90s and the hanok/CNI ratio are printed, never a
pass/fail threshold (TESTING.md). Everything made is removed at the end: the
bridges, namespaces, leases, iptables rules CNI added, hanok's nft table
(a bench-only one, $HANOK_NFT_TABLE) and the `ip nat` table iptables creates
when it was not there before.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 2
CNI_DIR = "/usr/lib/cni"
HANOK_PYTHON = "/opt/hanok/bin/python"
SETUP = ("import os, sys; from hanok.netns import network; "
         "network.setup(sys.argv[1], sys.argv[2], sys.argv[3], network=sys.argv[4]); os._exit(0)")
TEARDOWN = ("import os, sys; from hanok.netns import network; "
            "network.teardown(sys.argv[1], sys.argv[2], sys.argv[3]); os._exit(0)")


class BenchError(Exception):
    """A precondition or a command failed; the message says which."""


def timed(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> int:
    """Run argv; return its wall time in ns; raise BenchError when it fails."""
    t0 = time.perf_counter_ns()
    done = subprocess.run(argv, input=stdin, capture_output=True, env=env)
    ns = time.perf_counter_ns() - t0
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv[:3])}...` exited {done.returncode}: "
                         f"{(done.stderr or done.stdout).decode(errors='replace').strip()[-800:]}")
    return ns


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return set(out.splitlines())


def hanok_source_root(tmp: Path) -> str:
    """A directory holding `hanok`: the repository root is the package, so link it under tmp."""
    (tmp / "src").mkdir()
    (tmp / "src" / "hanok").symlink_to(Path(__file__).resolve().parents[2])
    return str(tmp / "src")


class Bench:
    def __init__(self, tmp: Path, python: str, pairs: int):
        self.tmp = tmp
        self.python = python
        self.pairs = pairs
        tag = secrets.token_hex(2)
        self.state_root = str(tmp / "state")
        self.run_dir = str(tmp / "run")
        os.makedirs(self.run_dir)
        self.network = "bench" + tag
        self.hanok_bridge = "hkb" + tag + "h"
        self.cni_bridge = "hkb" + tag + "c"
        octet = 200 + secrets.randbelow(50)
        self.hanok_subnet = f"10.{octet}.10.0/24"
        self.cni_subnet = f"10.{octet}.20.0/24"
        self.env = dict(os.environ, PYTHONPATH=hanok_source_root(tmp), PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
                        HANOK_NFT_TABLE="hanokbench" + tag)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cni_config = json.dumps({
            "cniVersion": "0.4.0", "name": "hkbench" + tag, "type": "bridge", "bridge": self.cni_bridge,
            "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "subnet": self.cni_subnet, "dataDir": str(tmp / "cni-ipam")},
        }).encode()
        self.cni_netns: set[str] = set()

    def prepare(self) -> None:
        subprocess.run([self.python, "-c",
                        "import sys; from hanok.netns import network; "
                        "network.create_network(sys.argv[1], sys.argv[2], sys.argv[3], bridge=sys.argv[4])",
                        self.state_root, self.network, self.hanok_subnet, self.hanok_bridge],
                       env=self.env, check=True)

    def hanok_cycle(self, i: int) -> dict[str, int]:
        owner = f"bench-{i}"
        args = [self.state_root, self.run_dir, owner]
        add = timed([self.python, "-c", SETUP, *args, self.network], self.env)
        delete = timed([self.python, "-c", TEARDOWN, *args], self.env)
        return {"ADD": add, "DEL": delete}

    def cni_cycle(self, i: int) -> dict[str, int]:
        name = f"hkbench-{os.getpid()}-{i}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.cni_netns.add(name)
        env = dict(os.environ, CNI_CONTAINERID=name, CNI_NETNS=f"/run/netns/{name}", CNI_IFNAME="eth0",
                   CNI_PATH=CNI_DIR)
        plugin = [f"{CNI_DIR}/bridge"]
        add = timed(plugin, dict(env, CNI_COMMAND="ADD"), self.cni_config)
        delete = timed(plugin, dict(env, CNI_COMMAND="DEL"), self.cni_config)
        subprocess.run(["ip", "netns", "delete", name], check=True)
        self.cni_netns.discard(name)
        return {"ADD": add, "DEL": delete}

    def start_cycle(self, i: int) -> dict[str, int]:
        return {"START": timed([self.python, "-c", "pass"], self.env)}

    def measure(self) -> dict[str, dict[str, list[int]]]:
        samples: dict[str, dict[str, list[int]]] = {"hanok": {}, "cni": {}, "python": {}}
        for i in range(WARMUP + self.pairs):
            for label, cycle in (("hanok", self.hanok_cycle), ("cni", self.cni_cycle), ("python", self.start_cycle)):
                sample = cycle(i)
                if i >= WARMUP:
                    for key, ns in sample.items():
                        samples[label].setdefault(key, []).append(ns)
        return samples

    def cleanup(self) -> None:
        subprocess.run([self.python, "-c",
                        "import sys; from hanok.netns import network; "
                        "network.gc(sys.argv[1], sys.argv[2], lambda owner: False); "
                        "network.remove_network(sys.argv[1], sys.argv[2], sys.argv[3])",
                        self.state_root, self.run_dir, self.network], env=self.env)
        netns_dir = os.path.join(self.run_dir, "netns")
        while subprocess.run(["mountpoint", "-q", netns_dir]).returncode == 0:
            subprocess.run(["umount", "-l", netns_dir], check=True)
        for name in sorted(self.cni_netns):
            env = dict(os.environ, CNI_COMMAND="DEL", CNI_CONTAINERID=name, CNI_NETNS=f"/run/netns/{name}",
                       CNI_IFNAME="eth0", CNI_PATH=CNI_DIR)
            subprocess.run([f"{CNI_DIR}/bridge"], input=self.cni_config, env=env, capture_output=True)
            subprocess.run(["ip", "netns", "delete", name])
        subprocess.run(["ip", "link", "delete", self.cni_bridge], capture_output=True)


def summarize(samples: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, float]]:
    results = {}
    for step in ("ADD", "DEL"):
        row: dict[str, float] = {}
        for label in ("hanok", "cni"):
            values = sorted(samples[label][step])
            row[f"{label}_median_ms"] = statistics.median(values) / 1e6
            row[f"{label}_p90_ms"] = values[int(0.9 * (len(values) - 1))] / 1e6
        row["ratio"] = row["hanok_median_ms"] / row["cni_median_ms"]
        results[step] = row
    start = sorted(samples["python"]["START"])
    results["START"] = {"python_median_ms": statistics.median(start) / 1e6,
                        "python_p90_ms": start[int(0.9 * (len(start) - 1))] / 1e6}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="counted A/B pairs (default 20)")
    parser.add_argument("--python", default=HANOK_PYTHON, help="interpreter for hanok (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_net: needs root", file=sys.stderr)
        return 1
    if "/shims/" in os.path.realpath(args.python) or "/shims/" in args.python:
        print(f"bench_net: {args.python} is a shim; give the real interpreter", file=sys.stderr)
        return 1

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    tables_before = nft_tables()
    tmp = Path(tempfile.mkdtemp(prefix="hanok-bench-net-"))
    bench = Bench(tmp, args.python, args.pairs)
    try:
        bench.prepare()
        results = summarize(bench.measure())
    except BenchError as exc:
        print(f"bench_net: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_net: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        # only what this bench made: its own hanok table and iptables' `ip nat` (CNI's ipMasq);
        # tables other programs add meanwhile are theirs
        ours = {f"ip {bench.env['HANOK_NFT_TABLE']}", "ip nat"}
        for table in sorted((nft_tables() - tables_before) & ours):
            subprocess.run(["nft", "delete", *table.split()], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"pairs": args.pairs, "warmup": WARMUP, "results": results}, indent=2))
        return 0
    print(f"network setup/teardown of one sandbox, {args.pairs} pairs (+{WARMUP} warm-up), alternated")
    print(f"{'step':<5} {'hanok median':>13} {'p90':>8} {'CNI median':>11} {'p90':>8} {'hanok/CNI':>10}")
    for step in ("ADD", "DEL"):
        row = results[step]
        print(f"{step:<5} {row['hanok_median_ms']:>10.1f} ms {row['hanok_p90_ms']:>5.1f} ms "
              f"{row['cni_median_ms']:>8.1f} ms {row['cni_p90_ms']:>5.1f} ms {row['ratio']:>9.2f}x")
    start = results["START"]["python_median_ms"]
    print(f"floor: `{args.python} -c pass` takes {start:.1f} ms (p90 {results['START']['python_p90_ms']:.1f} ms), "
          f"{start / results['ADD']['cni_median_ms']:.2f}x CNI's ADD and "
          f"{start / results['DEL']['cni_median_ms']:.2f}x its DEL before hanok does anything")
    print("(issue 5 target: hanok at most 0.5x CNI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
