"""Pods driven as a node agent would: the installed `hanok` binary, `pod run -f`, the CRI-shaped verbs.

A pod is a sandbox of named namespaces (network, IPC, UTS), a cgroup and a
network endpoint, plus containers that join them. Every test checks exit
codes and exact outputs, and that nothing is left behind: no namespace
mounts, no veth, no lease, no nft table, no cgroup under /hanok/pod-*, no
pod directory. Pods use a test-only network (own bridge, subnet and nft
table) or `--network none`; never the default network.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BUSYBOX, mounts_under
from test_cli_containers import IMAGE, Hanok, busybox_store, failed, wait_for

CGROUP_ROOT = Path("/sys/fs/cgroup")
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$")

pytestmark = pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static (apt-get install busybox-static)")


def pod_cgroups() -> list[Path]:
    """Every pod cgroup on the host, in every hierarchy (v1) or the unified tree."""
    return sorted(CGROUP_ROOT.glob("*/hanok/pod-*")) + sorted(CGROUP_ROOT.glob("hanok/pod-*"))


@pytest.fixture(scope="module")
def hanok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hanok]:
    with busybox_store(tmp_path_factory, "hanok-pods") as h:
        yield h


@pytest.fixture(autouse=True)
def nothing_left(hanok: Hanok) -> Iterator[None]:
    """Every test removes its pods; none may leave a container, mount, namespace, cgroup or file."""
    before = pod_cgroups()
    yield
    for pid in hanok.ok("pod", "ls", "-q", "--no-trunc").split():
        hanok("pod", "rm", "-f", pid)
    for cid in hanok.container_ids():
        hanok("rm", "-f", cid)
    assert hanok.ok("pod", "ls", "-q") == ""
    assert hanok.container_ids() == []
    shared = {str(hanok.run / "netns"), str(hanok.run / "pods")}
    assert [m for m in mounts_under(hanok.store.parent) if m not in shared] == []
    assert sorted(p.name for p in (hanok.store / "pods").iterdir()) == ["names"]
    assert set(os.listdir(hanok.store / "pods" / "names")) <= {".lock", ".namespaced"}
    assert os.listdir(hanok.run / "pods") == []
    assert os.listdir(hanok.run / "netns") == []
    assert not (hanok.store / "net" / "endpoints").exists() or os.listdir(hanok.store / "net" / "endpoints") == []
    assert pod_cgroups() == before == []


@pytest.fixture
def net(hanok: Hanok, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A test-only bridge network (own bridge name, subnet and nft table), removed afterwards."""
    tag = os.urandom(3).hex()
    octet = 200 + int(tag[:2], 16) % 50
    monkeypatch.setenv("HANOK_NFT_TABLE", f"hkt{tag}")
    spec = {"name": f"t{tag}", "bridge": f"hkt{tag}b", "subnet": f"10.{octet}.{int(tag[2:4], 16)}.0/24"}
    hanok.ok("network", "create", "--subnet", spec["subnet"], "--bridge", spec["bridge"], spec["name"])
    try:
        yield spec
    finally:
        for pid in hanok.ok("pod", "ls", "-q", "--no-trunc").split():
            hanok("pod", "rm", "-f", pid)
        hanok("network", "rm", spec["name"])
        leftovers = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert spec["bridge"] not in leftovers and "hkv" not in leftovers
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert f"hkt{tag}" not in tables
        leases = hanok.store / "net" / "ipam" / spec["name"]
        assert not leases.exists() or [p for p in leases.rglob("*") if p.is_file() and "lock" not in p.name] == []


def write(tmp_path: Path, name: str, doc: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else str(doc))
    return str(path)


def pod_json(hanok: Hanok, ref: str) -> dict:
    out = json.loads(hanok.ok("pod", "inspect", ref))
    assert len(out) == 1
    return out[0]


def in_pod(hanok: Hanok, pod: str) -> dict[str, dict]:
    """`ps --pod --json`, by container name."""
    return {row["name"]: row for row in json.loads(hanok.ok("ps", "--pod", pod, "--json"))}


TWO_CONTAINERS = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  hostname: webhost
  restartPolicy: Never
  containers:
  - name: server
    image: {image}
    command: [sh, -c]
    args:
    - "echo started; trap 'echo bye; exit 0' TERM; while true; do echo hello | nc -l -p 8080 & wait $!; done"
    ports: [{{containerPort: 8080, hostPort: {host_port}, hostIP: 127.0.0.1}}]
    resources:
      limits: {{memory: 64Mi, cpu: 500m}}
      requests: {{memory: 32Mi, cpu: 250m}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: client
    image: {image}
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
    resources:
      limits: {{memory: 32Mi}}
    volumeMounts: [{{name: shared, mountPath: /shared, readOnly: true}}]
  volumes:
  - name: shared
    emptyDir: {{}}
"""


def test_a_two_container_pod_as_a_node_agent_runs_it(hanok: Hanok, net: dict[str, str], tmp_path: Path) -> None:
    host_port = 18000 + int.from_bytes(os.urandom(2), "big") % 1000
    manifest = write(tmp_path, "pod.yaml", TWO_CONTAINERS.format(image=IMAGE, host_port=host_port))
    out = json.loads(hanok.ok("pod", "run", "--network", net["name"], "-f", manifest, "--json"))
    assert sorted(out) == ["containers", "id", "ip", "ip6", "name", "namespace"] and out["ip6"] is None
    assert (out["name"], out["namespace"]) == ("web", "default")  # the default namespace: names as they always were
    assert re.fullmatch(r"[0-9a-f]{64}", out["id"])
    assert out["ip"].startswith(net["subnet"].rsplit(".", 1)[0] + ".")
    assert [c["name"] for c in out["containers"]] == ["web-server", "web-client"]
    wait_for(lambda: "started" in hanok("pod", "logs", "web", "-c", "server").stdout)

    # listings
    assert hanok.ok("pod", "ls", "-q") == out["id"][:12] + "\n"
    (row,) = json.loads(hanok.ok("pod", "ls", "--json"))
    assert (row["id"], row["name"], row["namespace"], row["state"], row["ip"], row["hostname"], row["labels"]) == (
        out["id"], "web", "default", "ready", out["ip"], "webhost", {"app": "web"})
    assert sorted((c["name"], c["state"]) for c in row["containers"]) == [("web-client", "running"),
                                                                          ("web-server", "running")]
    members = in_pod(hanok, "web")
    assert sorted(members) == ["web-client", "web-server"]
    assert {m["pod"] for m in members.values()} == {out["id"]}
    info = pod_json(hanok, out["id"][:8])
    assert (info["restartPolicy"], info["memoryLimit"]) == ("Never", 96 << 20)
    assert info["ports"] == [{"containerPort": 8080, "protocol": "tcp", "hostPort": host_port, "hostIP": "127.0.0.1"}]

    # localhost between the containers, the pod IP, hostname, IPC shared, pid not
    done = hanok("exec", "web-client", "sh", "-c",
                 "for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 2 127.0.0.1 8080 && exit 0; sleep 0.2; done; exit 1")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done
    namespaces = {}
    for name in ("web-server", "web-client"):
        script = "hostname; for n in ipc uts net pid; do readlink /proc/self/ns/$n; done; ip -4 -o addr show eth0"
        lines = hanok.ok("exec", name, "sh", "-c", script).splitlines()
        assert lines[0] == "webhost"
        assert f"inet {out['ip']}/" in lines[5]
        namespaces[name] = lines[1:5]
    server_ns, client_ns = namespaces["web-server"], namespaces["web-client"]
    assert server_ns[:3] == client_ns[:3]  # ipc, uts, net
    assert server_ns[3] != client_ns[3]  # each its own pid namespace
    # the published hostPort belongs to the pod's endpoint
    got = subprocess.run([str(BUSYBOX), "nc", "-w", "2", "127.0.0.1", str(host_port)], capture_output=True,
                         text=True, timeout=10)
    assert got.stdout == "hello\n", got
    # emptyDir shared, read-only where asked
    assert hanok.ok("exec", "web-server", "sh", "-c", "echo from-server > /shared/f") == ""
    done = hanok("exec", "web-client", "sh", "-c", "cat /shared/f; touch /shared/g")
    assert (done.returncode, done.stdout, done.stderr) == (1, "from-server\n",
                                                            "touch: /shared/g: Read-only file system\n")

    # the pod cgroup holds its containers and their limits' sum
    pid = members["web-server"]["pid"]
    memory_line = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                       if line.split(":")[1] in ("memory", ""))
    assert memory_line.split(":")[2] == f"/hanok/pod-{out['id']}/{members['web-server']['id']}"
    if (CGROUP_ROOT / "memory").is_dir():
        pod_dir = CGROUP_ROOT / "memory" / "hanok" / f"pod-{out['id']}"
        assert int((pod_dir / "memory.limit_in_bytes").read_text()) == 96 << 20
        ctr_dir = pod_dir / members["web-server"]["id"]
        assert int((ctr_dir / "memory.soft_limit_in_bytes").read_text()) == 32 << 20
        assert int((CGROUP_ROOT / "cpu" / "hanok" / f"pod-{out['id']}" / members["web-server"]["id"]
                    / "cpu.shares").read_text()) == 256

    # the CRI log file a kubelet reads
    log = hanok.store / "containers" / members["web-server"]["id"] / "ctr.log"
    first = log.read_text().splitlines()[0]
    match = CRI_LINE.match(first)
    assert match and match.groups() == ("stdout", "F", "started"), first

    # exec: exit codes pass through; ExecSync with a timeout
    assert hanok("exec", "web-client", "sh", "-c", "exit 3").returncode == 3
    done = hanok("exec", "--sync", "--timeout", "5", "web-client", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (done.returncode, done.stdout, done.stderr) == (4, "out\n", "err\n")
    failed(hanok("exec", "--sync", "--timeout", "0.5", "web-client", "sleep", "30"),
           "exec 'sleep 30' timed out after 0.5s and was killed")
    assert hanok("exec", "web-client", "/no/such").returncode == 127

    # stats, for a node agent's ContainerStats
    stats = {s["name"]: s for s in json.loads(hanok.ok("stats", "--no-stream", "--json", "web-server", "web-client"))}
    assert stats["web-server"]["memory"]["limit"] == 64 << 20
    assert stats["web-client"]["memory"]["limit"] == 32 << 20
    assert stats["web-server"]["pids"]["current"] >= 1

    # gc while the pod runs: its endpoint is alive even though it is no container's
    hanok.ok("gc", "--json")
    assert pod_json(hanok, "web")["state"] == "ready"
    done = hanok("exec", "web-client", "nc", "-w", "2", "127.0.0.1", "8080")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done

    # graceful stop: both handle SIGTERM; the sandbox goes (StopPodSandbox)
    failed(hanok("pod", "rm", "web"), "cannot remove pod web: containers web-client, web-server are running "
                                      "(stop it first, or use -f)")
    assert hanok.ok("pod", "stop", "web") == "web\n"
    members = in_pod(hanok, "web")
    assert {(n, m["state"], m["exitCode"]) for n, m in members.items()} == {
        ("web-server", "exited", 0), ("web-client", "exited", 0)}
    assert hanok.ok("pod", "logs", "web", "-c", "server").endswith("bye\n")
    assert pod_json(hanok, "web")["state"] == "notready"
    assert os.listdir(hanok.run / "netns") == [] and os.listdir(hanok.run / "pods") == []
    failed(hanok("start", "web-client"), "pod web is not ready (stopped): its containers cannot start")
    assert hanok.ok("pod", "stop", "web") == "web\n"  # idempotent
    assert hanok.ok("pod", "rm", "web") == "web\n"
    failed(hanok("pod", "inspect", "web"), "no such pod: web")
    assert hanok.container_ids() == []


def test_forced_stop_and_exit_codes_through_pod_containers(hanok: Hanok, tmp_path: Path) -> None:
    manifest = write(tmp_path, "pod.yaml", f"""\
metadata: {{name: codes}}
spec:
  containers:
  - {{name: stubborn, image: {IMAGE}, command: [sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]}}
  - {{name: three, image: {IMAGE}, command: [sh, -c, "exit 3"]}}
  - {{name: zero, image: {IMAGE}, command: ["true"]}}
""")
    pod_id = hanok.ok("pod", "run", "--network", "none", "-f", manifest).strip()
    assert hanok.ok("wait", "codes-three", "codes-zero") == "3\n0\n"
    done = hanok("pod", "logs", "codes")
    assert done.returncode == 2 and "pod codes has 3 containers (stubborn, three, zero): choose one with -c" \
        in done.stderr, done
    assert hanok.ok("pod", "stop", "-t", "1", pod_id[:10]) == pod_id[:10] + "\n"
    members = in_pod(hanok, "codes")
    assert {n: m["exitCode"] for n, m in members.items()} == {"codes-stubborn": 137, "codes-three": 3,
                                                              "codes-zero": 0}
    assert hanok.ok("pod", "rm", "codes") == "codes\n"


@pytest.mark.parametrize("command, code, message", [
    ("/no/such/program", 127, 'exec: "/no/such/program": executable file not found'),
    ("/etc/passwd", 126, None),
])
def test_a_container_that_cannot_start_removes_the_whole_pod(hanok: Hanok, tmp_path: Path, command: str, code: int,
                                                             message: str | None) -> None:
    manifest = write(tmp_path, "pod.yaml", f"""\
metadata: {{name: broken}}
spec:
  containers:
  - {{name: fine, image: {IMAGE}, command: [sleep, "100"]}}
  - {{name: bad, image: {IMAGE}, command: [{command}]}}
""")
    done = hanok("pod", "run", "--network", "none", "-f", manifest)
    assert done.returncode == code and done.stdout == "" and done.stderr.startswith("hanok: "), done
    assert done.stderr.count("\n") == 1
    if message is not None:
        assert done.stderr == f"hanok: {message}\n"
    # the autouse fixture checks that nothing of it is left


@pytest.mark.parametrize("manifest, message", [
    ("metadata: {{name: p}}\nspec:\n  containers:\n  - {{name: a, image: {image}}}\n  - {{name: b, imag: x}}\n",
     "spec.containers[1].imag: unknown field"),
    ("metadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: {image}\n"
     "    ports: [{{containerPort: \"80\"}}]\n",
     'spec.containers[0].ports[0].containerPort: expected an integer, got "80"'),
    ("metadata: {{name: p}}\nspec:\n  containers:\n  - {{name: a, image: {image}}}\n  - {{name: a, image: {image}}}\n",
     'spec.containers[1].name: duplicate container name "a"'),
    ("metadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: {image}\n"
     "    volumeMounts: [{{name: data, mountPath: /data}}]\n",
     'spec.containers[0].volumeMounts[0].name: no volume named "data" in spec.volumes'),
    ("metadata: {{name: p}}\nspec:\n  containers:\n  - {{name: a, image: nosuch:image, imagePullPolicy: Never}}\n",
     "image not known: nosuch:image"),
])
def test_invalid_manifests_are_refused_and_leave_nothing(hanok: Hanok, tmp_path: Path, manifest: str,
                                                         message: str) -> None:
    path = write(tmp_path, "pod.yaml", manifest.format(image=IMAGE))
    failed(hanok("pod", "run", "--network", "none", "-f", path), message)
    assert hanok.ok("pod", "ls", "--json") == "[]\n"


def test_pod_names_are_unique(hanok: Hanok, tmp_path: Path) -> None:
    path = write(tmp_path, "pod.yaml", f"metadata: {{name: once}}\nspec:\n  containers:\n"
                                       f"  - {{name: a, image: {IMAGE}, command: [sleep, '100']}}\n")
    pod_id = hanok.ok("pod", "run", "--network", "none", "-f", path).strip()
    failed(hanok("pod", "run", "--network", "none", "-f", path),
           f'the pod name "once" is already in use by pod {pod_id[:12]}')
    assert hanok.ok("pod", "rm", "-f", "once") == "once\n"


def test_the_cri_shaped_path(hanok: Hanok, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    parent = f"hkt{os.urandom(3).hex()}"  # a node agent's own cgroup tree, made and removed with the pod
    sandbox = write(tmp_path, "sandbox.json", {
        "metadata": {"name": "cri", "namespace": "default", "uid": "u-123", "attempt": 0},
        "hostname": "crihost", "log_directory": str(logs), "labels": {"tier": "t"},
        "dns_config": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]},
        "linux": {"cgroup_parent": f"/{parent}/pod-u-123",
                  "security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}}})
    container = write(tmp_path, "container.json", {
        "metadata": {"name": "app", "attempt": 0}, "image": {"image": IMAGE},
        "command": ["sh", "-c"], "args": ["echo hello $WHO; trap 'exit 0' TERM; while true; do sleep 0.1; done"],
        "envs": [{"key": "WHO", "value": "agent"}], "working_dir": "/tmp", "log_path": "app/0.log",
        "linux": {"resources": {"memory_limit_in_bytes": 33554432},
                  "security_context": {"run_as_user": {"value": 65534}, "readonly_rootfs": True}}})
    pod_id = hanok.ok("pod", "run", "--network", "none", "--config", sandbox).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pod_id)
    assert json.loads(hanok.ok("pod", "ls", "--json"))[0]["containers"] == []
    cid = hanok.ok("create", "--pod", pod_id, "--config", container).strip()
    rows = json.loads(hanok.ok("ps", "--pod", pod_id, "--json"))
    assert [(r["id"], r["name"], r["state"], r["pod"]) for r in rows] == [(cid, "cri-app", "created", pod_id)]
    assert hanok.ok("start", cid) == cid + "\n"
    pid = json.loads(hanok.ok("ps", "--pod", pod_id, "--json"))[0]["pid"]
    assert f":/{parent}/pod-u-123/{cid}\n" in Path(f"/proc/{pid}/cgroup").read_text()
    wait_for(lambda: (logs / "app" / "0.log").exists() and "hello agent" in (logs / "app" / "0.log").read_text())
    match = CRI_LINE.match((logs / "app" / "0.log").read_text().splitlines()[0])
    assert match and match.groups() == ("stdout", "F", "hello agent")
    done = hanok("exec", "--sync", "--timeout", "5", cid, "sh", "-c", "hostname; id -u; pwd; touch /x")
    assert (done.returncode, done.stdout) == (1, "crihost\n65534\n/tmp\n"), done
    assert hanok.ok("exec", cid, "cat", "/etc/resolv.conf") == ("nameserver 10.96.0.10\nsearch svc.cluster.local\n"
                                                              "options ndots:5\n")
    assert json.loads(hanok.ok("stats", "--no-stream", "--json", cid))[0]["memory"]["limit"] == 32 << 20
    assert hanok.ok("stop", cid) == cid + "\n"
    assert json.loads(hanok.ok("ps", "--pod", "cri", "--json"))[0]["exitCode"] == 0
    assert hanok.ok("rm", cid) == cid + "\n"
    assert hanok.ok("ps", "--pod", "cri", "--json") == "[]\n"
    assert hanok.ok("pod", "rm", pod_id) == pod_id + "\n"
    assert sorted(CGROUP_ROOT.glob(f"*/{parent}")) + sorted(CGROUP_ROOT.glob(parent)) == []


def test_cri_configs_are_validated(hanok: Hanok, tmp_path: Path) -> None:
    failed(hanok("pod", "run", "--network", "none", "--config",
                 write(tmp_path, "s.json", {"metadata": {"name": "s"}, "hostnme": "x"})), "hostnme: unknown field")
    pod_id = hanok.ok("pod", "run", "--network", "none", "--config",
                      write(tmp_path, "ok.json", {"metadata": {"name": "s"}})).strip()
    failed(hanok("create", "--pod", pod_id, "--config",
                 write(tmp_path, "c.json", {"metadata": {"name": "c"}, "image": {"image": IMAGE},
                                            "envs": [{"key": "A", "value": 1}]})),
           "envs[0].value: expected a string, got 1")
    failed(hanok("create", "--pod", "nosuch", "--config", str(tmp_path / "c.json")), "no such pod: nosuch")
    assert hanok.container_ids() == []
    hanok.ok("pod", "rm", pod_id)


def test_a_cli_killed_during_pod_run_loses_nothing_and_gc_cleans_up(hanok: Hanok, net: dict[str, str],
                                                                     tmp_path: Path) -> None:
    manifest = write(tmp_path, "pod.yaml", f"""\
metadata: {{name: crash}}
spec:
  containers:
  - {{name: a, image: {IMAGE}, command: [sleep, "1000"]}}
  - {{name: b, image: {IMAGE}, command: [sleep, "1000"]}}
""")
    seen_states = set()
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6):
        proc = subprocess.Popen(hanok.argv("pod", "run", "--network", net["name"], "-f", manifest),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the truth, whatever was made: listings work and agree with each other
        pods = json.loads(hanok.ok("pod", "ls", "--json"))
        containers = json.loads(hanok.ok("ps", "-a", "--json"))
        for p in pods:
            seen_states.add(p["state"])
            assert sorted(c["id"] for c in p["containers"]) == sorted(c["id"] for c in containers
                                                                      if c["pod"] == p["id"])
        for c in containers:
            assert c["pod"] in {p["id"] for p in pods}
        # pods and containers that exist are removed by the agent; half-made ones by gc (once old enough)
        for p in pods:
            hanok.ok("pod", "rm", "-f", p["id"])
        old = time.time() - 120
        for d in (hanok.store / "pods", hanok.store / "pods" / "names", hanok.run / "pods", hanok.store / "containers",
                  hanok.store / "containers" / "names"):
            if d.is_dir():
                for entry in d.iterdir():
                    os.utime(entry, (old, old), follow_symlinks=False)
        hanok.ok("gc", "--json")
        assert hanok.ok("pod", "ls", "-q") == "" and hanok.container_ids() == []
        if (hanok.store / "pods").exists():  # killed early enough, nothing of pods was made yet
            assert sorted(p.name for p in (hanok.store / "pods").iterdir()) == ["names"]
            assert set(os.listdir(hanok.store / "pods" / "names")) <= {".lock", ".namespaced"}
        assert not (hanok.run / "pods").exists() or os.listdir(hanok.run / "pods") == []
        assert not (hanok.run / "netns").exists() or os.listdir(hanok.run / "netns") == []
        assert pod_cgroups() == []
        ports = subprocess.run(["ip", "-br", "link", "show", "master", net["bridge"]], capture_output=True, text=True)
        assert ports.stdout == "", ports
    assert seen_states <= {"ready", "notready"}


def test_a_pod_whose_namespaces_vanished_is_notready_and_gc_frees_its_endpoint(hanok: Hanok, net: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """What a reboot does (run/ is a tmpfs): the record and the lease survive, the namespaces do not."""
    manifest = write(tmp_path, "pod.yaml", f"metadata: {{name: reboot}}\nspec:\n  containers:\n"
                                           f"  - {{name: a, image: {IMAGE}, command: [sleep, '1000']}}\n")
    out = json.loads(hanok.ok("pod", "run", "--network", net["name"], "-f", manifest, "--json"))
    assert hanok.ok("stop", "-t", "0", "reboot-a") == "reboot-a\n"
    for path in [hanok.run / "netns" / out["id"], *sorted((hanok.run / "pods" / out["id"] / "ns").iterdir())]:
        subprocess.run(["umount", str(path)], check=True)
        path.unlink()
    assert pod_json(hanok, "reboot")["state"] == "notready"
    assert (hanok.store / "net" / "endpoints" / f"{out['id']}.json").exists()
    report = json.loads(hanok.ok("gc", "--json"))
    assert f"owners {out['id']}" in report["network"]
    assert not (hanok.store / "net" / "endpoints" / f"{out['id']}.json").exists()
    failed(hanok("start", "reboot-a"), "pod reboot is not ready (stopped): its containers cannot start")
    assert hanok.ok("pod", "rm", "reboot") == "reboot\n"


def test_a_node_agents_cgroup_parent_is_never_removed(hanok: Hanok, tmp_path: Path) -> None:
    """A CRI cgroup_parent that exists already is the agent's: pod rm leaves it and its other children."""
    parent = f"hkt{os.urandom(3).hex()}"
    made = [d / parent / "other" for d in CGROUP_ROOT.iterdir() if (d / "cgroup.procs").exists()][:1]
    if not made:
        pytest.skip("no cgroup hierarchy to make a parent in")
    hierarchy = made[0].parent.parent
    (hierarchy / parent / "other").mkdir(parents=True)
    try:
        sandbox = write(tmp_path, "sb.json", {"metadata": {"name": "agentpod"},
                                              "linux": {"cgroup_parent": f"/{parent}"}})
        pod_id = hanok.ok("pod", "run", "--network", "none", "--config", sandbox).strip()
        assert hanok.ok("pod", "rm", "-f", pod_id) == pod_id + "\n"
        assert (hierarchy / parent / "other").is_dir()
        # what hanok made for the pod in the other hierarchies is gone with it
        assert [d for d in CGROUP_ROOT.glob(f"*/{parent}") if d.parent != hierarchy] == []
    finally:
        for d in sorted(CGROUP_ROOT.glob(f"*/{parent}/other")) + sorted(CGROUP_ROOT.glob(f"{parent}/other")):
            d.rmdir()
        for d in sorted(CGROUP_ROOT.glob(f"*/{parent}")) + sorted(CGROUP_ROOT.glob(parent)):
            d.rmdir()
