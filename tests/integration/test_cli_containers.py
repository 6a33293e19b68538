"""The `hanok` container verbs, driven as a person or a node agent would: the installed binary.

run (attached, detached, --rm, -t), create/start, stop, kill, rm, ps, logs,
exec, inspect, wait, stats, container prune and gc, on an image made locally
from Debian's busybox-static (`hanok bundle busybox` + `hanok import`), in a
store and run directory of the test's own. Every check is on the exit code
and the exact output; hanok's own failures are one `hanok: ...` line on
stderr with exit code 125, a command that cannot run is 126, one not found 127.

Containers here use `--network none` unless a test is about networking: the
default bridge network belongs to the host, not to tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BUSYBOX, mounts_under

HANOK = str(Path(sys.executable).parent / "hanok")
IMAGE = "busybox:test"
CGROUP_ROOT = Path("/sys/fs/cgroup")

pytestmark = pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static (apt-get install busybox-static)")


class Hanok:
    """`hanok --store S --state R ARGS...` with captured text output."""

    def __init__(self, store: Path, run: Path):
        self.store = store
        self.run = run

    def argv(self, *args: str) -> list[str]:
        return [HANOK, "--store", str(self.store), "--state", str(self.run), *args]

    def __call__(self, *args: str, input: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HANOK_ROOT", "HANOK_STATE")}
        return subprocess.run(self.argv(*args), capture_output=True, text=True, input=input, timeout=timeout,
                              env=env)

    def ok(self, *args: str, **kw: object) -> str:
        done = self(*args, **kw)  # type: ignore[arg-type]
        assert (done.returncode, done.stderr) == (0, ""), done
        return done.stdout

    def container_ids(self) -> list[str]:
        return self.ok("ps", "-a", "-q", "--no-trunc").split()


def failed(done: subprocess.CompletedProcess[str], message: str, code: int = 125) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (code, "", f"hanok: {message}\n"), done


@contextlib.contextmanager
def busybox_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Hanok]:
    """A store holding the busybox image, and a run directory; their pods and containers removed after."""
    base = Path(tmp_path_factory.mktemp(name))
    base.chmod(0o755)
    h = Hanok(base / "store", base / "run")
    h.ok("bundle", "busybox", str(base / "bb"))
    h.ok("import", str(base / "bb" / "rootfs"), IMAGE)
    yield h
    for pid in h.ok("pod", "ls", "-q", "--no-trunc").split():
        h("pod", "rm", "-f", pid)
    for cid in h.container_ids():
        h("rm", "-f", cid)
    # the netns and pods directories stay (shared) mounts of themselves once made, as /run/netns does
    for shared in ("netns", "pods"):
        if str(h.run / shared) in mounts_under(h.run):
            subprocess.run(["umount", str(h.run / shared)], check=True)
    assert mounts_under(base) == []


@pytest.fixture(scope="module")
def hanok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hanok]:
    with busybox_store(tmp_path_factory, "hanok-containers") as h:
        yield h


@pytest.fixture(autouse=True)
def nothing_left(hanok: Hanok) -> Iterator[None]:
    """Every test removes its containers; none may leave a mount, cgroup or runtime state."""
    yield
    for cid in hanok.container_ids():
        hanok("rm", "-f", cid)
    assert hanok.container_ids() == []
    assert mounts_under(hanok.store) == []
    runtime_states = hanok.run / "containers"
    assert not runtime_states.exists() or os.listdir(runtime_states) == []
    assert sorted(p.name for p in (hanok.store / "containers").iterdir()) == ["names"]
    assert os.listdir(hanok.store / "containers" / "names") in ([], [".lock"])


def inspect(hanok: Hanok, ref: str) -> dict:
    out = json.loads(hanok.ok("inspect", ref))
    assert len(out) == 1
    return out[0]


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# ------------------------------------------------------------------ run, attached


def test_run_attached_prints_both_streams_and_exits_with_the_containers_code(hanok: Hanok) -> None:
    done = hanok("run", "--network", "none", "--name", "att", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    state = inspect(hanok, "att")["state"]
    assert (state["status"], state["exitCode"], state["running"]) == ("exited", 3, False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", state["finishedAt"])
    table = hanok.ok("ps", "-a").splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert "Exited (3)" in table[1] and table[1].endswith("att")
    assert hanok.ok("ps") == "CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES\n"


def test_run_rm_leaves_no_container(hanok: Hanok) -> None:
    done = hanok("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "echo bye; exit 4")
    assert (done.returncode, done.stdout, done.stderr) == (4, "bye\n", "")
    assert hanok.container_ids() == []


def test_run_with_a_terminal(hanok: Hanok) -> None:
    done = hanok("run", "-t", "--rm", "--network", "none", IMAGE, "sh", "-c", "tty; exit 5")
    assert done.returncode == 5, done
    assert done.stdout.replace("\r\n", "\n") == "/dev/pts/0\n"


def test_run_interactive_reads_stdin(hanok: Hanok) -> None:
    done = hanok("run", "-i", "--rm", "--network", "none", IMAGE, "sh", "-c", "read line; echo got $line",
                 input="hello\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "got hello\n", "")


def test_exit_codes_of_commands_that_cannot_run(hanok: Hanok) -> None:
    done = hanok("run", "--rm", "--network", "none", IMAGE, "/no/such/program")
    assert done.returncode == 127 and done.stdout == "" and done.stderr.startswith("hanok: "), done
    assert done.stderr.count("\n") == 1 and "/no/such/program" in done.stderr
    done = hanok("run", "--rm", "--network", "none", IMAGE, "/etc/passwd")
    assert done.returncode == 126 and done.stderr.startswith("hanok: ") and done.stderr.count("\n") == 1, done
    assert hanok.container_ids() == []


def test_unknown_image_without_pull(hanok: Hanok) -> None:
    failed(hanok("run", "--pull", "never", "--network", "none", "nosuch:image", "true"),
           "image not known: nosuch:image")


# ------------------------------------------------------------------ detached


def test_detached_lifecycle_logs_exec_stop(hanok: Hanok) -> None:
    out = hanok.ok("run", "-d", "--network", "none", "--name", "web", "--hostname", "box", IMAGE,
                   "sh", "-c", "echo started; echo warn >&2; trap 'echo bye; exit 0' TERM; "
                               "while true; do sleep 0.1; done")
    cid = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    wait_for(lambda: "started" in hanok("logs", "web").stdout)
    assert hanok.ok("ps", "-q") == cid[:12] + "\n"
    summary = json.loads(hanok.ok("ps", "--json"))
    assert [(s["id"], s["name"], s["state"], s["exitCode"]) for s in summary] == [(cid, "web", "running", None)]
    assert summary[0]["pid"] > 0
    assert hanok.ok("exec", "web", "cat", "/etc/hostname") == "box\n"
    assert hanok("exec", cid[:7], "sh", "-c", "exit 6").returncode == 6
    failed(hanok("exec", "-w", "/missing", "web", "true"), "process.cwd /missing: No such file or directory", 126)
    done = hanok("logs", "web")
    assert (done.stdout, done.stderr) == ("started\n", "warn\n")
    stamped = hanok("logs", "-t", "--tail", "1", "web")  # the last line: warn, on stderr
    assert stamped.stdout == "" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z warn\n", stamped.stderr)
    assert hanok.ok("stop", "web") == "web\n"
    assert hanok.ok("wait", "web") == "0\n"
    done = hanok("logs", "web")
    assert (done.returncode, done.stdout, done.stderr) == (0, "started\nbye\n", "warn\n")
    assert inspect(hanok, "web")["state"]["status"] == "exited"
    failed(hanok("exec", "web", "true"), "container web is not running")
    # started again: the same container, a new process
    assert hanok.ok("start", "web") == "web\n"
    wait_for(lambda: hanok("logs", "web").stdout.count("started") == 2)
    failed(hanok("rm", "web"), "cannot remove container web: it is running (stop it first, or use -f)")
    assert hanok.ok("rm", "-f", "web") == "web\n"


def test_stop_kills_what_ignores_the_stop_signal(hanok: Hanok) -> None:
    hanok.ok("run", "-d", "--network", "none", "--name", "stubborn", IMAGE,
             "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done")
    assert hanok.ok("stop", "-t", "0.5", "stubborn") == "stubborn\n"
    assert hanok.ok("wait", "stubborn") == "137\n"


def test_kill_with_a_signal_and_wait(hanok: Hanok) -> None:
    # the container's init (pid 1 of its namespace) only gets signals it handles
    hanok.ok("run", "-d", "--network", "none", "--name", "k", IMAGE,
             "sh", "-c", "trap 'exit 9' USR1; while true; do sleep 0.1; done")
    assert hanok.ok("kill", "-s", "USR1", "k") == "k\n"
    assert hanok.ok("wait", "k") == "9\n"
    failed(hanok("kill", "k"), "container k is not running")


def test_wait_returns_the_exit_code(hanok: Hanok) -> None:
    hanok.ok("run", "-d", "--network", "none", "--name", "w", IMAGE, "sh", "-c", "sleep 0.3; exit 7")
    assert hanok.ok("wait", "w") == "7\n"


def test_create_then_start_attached(hanok: Hanok) -> None:
    cid = hanok.ok("create", "--network", "none", "--name", "job", "-e", "WHO=you", IMAGE,
                   "sh", "-c", "echo hi $WHO").strip()
    assert inspect(hanok, "job")["state"]["status"] == "created"
    assert "Created" in hanok.ok("ps", "-a")
    done = hanok("start", "-a", cid)
    assert (done.returncode, done.stdout) == (0, "hi you\n")


# ------------------------------------------------------------------ names, ids, bad input


def test_names_are_unique_and_ids_abbreviate(hanok: Hanok) -> None:
    cid = hanok.ok("create", "--network", "none", "--name", "uniq", IMAGE, "true").strip()
    failed(hanok("create", "--network", "none", "--name", "uniq", IMAGE, "true"),
           f'the container name "uniq" is already in use by container {cid[:12]}')
    assert inspect(hanok, cid[:5])["id"] == cid
    failed(hanok("inspect", "nosuch"), "no such container: nosuch")
    failed(hanok("create", "--name", "bad/name", IMAGE, "true"),
           "invalid container name 'bad/name': only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


@pytest.mark.parametrize("args, message", [
    (["--memory", "lots"], "--memory 'lots': expected a size such as 512m or 1g"),
    (["--cpus", "-1"], "--cpus -1.0: must be a positive number"),
    (["--cpus", "nan"], "--cpus nan: must be a positive number"),
    (["--cpus", "inf"], "--cpus inf: must be a positive number"),
    (["--pids-limit", "0"], "--pids-limit 0: must be positive (or -1 for unlimited)"),
    (["--cap-add", "FLY"], "unknown capability 'CAP_FLY'"),
    (["-v", "relative"], "volume 'relative': expected SOURCE:DEST[:ro|rw]"),
    (["-v", "/no/such/dir:/data"], "volume '/no/such/dir:/data': /no/such/dir does not exist on the host"),
    (["--tmpfs", "run"], "tmpfs 'run': the destination must be an absolute path"),
    (["-u", "ghost"], "unable to find user ghost: no matching entries in passwd file"),
])
def test_bad_options_leave_nothing(hanok: Hanok, args: list[str], message: str) -> None:
    failed(hanok("run", "--network", "none", "--name", "bad", *args, IMAGE, "true"), message)
    failed(hanok("create", "--network", "none", *args, IMAGE, "true"), message)
    assert hanok.container_ids() == []


# ------------------------------------------------------------------ the writable layer and options


def test_each_container_writes_to_its_own_layer(hanok: Hanok) -> None:
    done = hanok("run", "--network", "none", "--name", "writer", IMAGE, "sh", "-c",
                 "echo mine > /etc/motd; rm /bin/vi; cat /etc/motd")
    assert (done.returncode, done.stdout) == (0, "mine\n")
    other = hanok("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "cat /etc/motd; ls /bin/vi")
    assert (other.returncode, other.stdout) == (0, "/bin/vi\n"), other
    assert other.stderr == "cat: can't open '/etc/motd': No such file or directory\n"
    upper = Path(inspect(hanok, "writer")["upperDir"])
    assert (upper / "etc" / "motd").read_text() == "mine\n"
    for layer in inspect(hanok, "writer")["layers"]:
        assert not (hanok.store / "layers" / layer.split(":")[1] / "etc" / "motd").exists()


def test_volumes_tmpfs_env_workdir_user_readonly(hanok: Hanok, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "in.txt").write_text("from host\n")
    done = hanok("run", "--rm", "--network", "none", "--read-only", "-v", f"{tmp_path}:/data",
                 "-v", f"{tmp_path}:/ro:ro", "--tmpfs", "/scratch", "-e", "A=1", "-w", "/data", "-u", "nobody",
                 IMAGE, "sh", "-c",
                 "cat in.txt; echo $A $(pwd) $(id -u); touch /etc/x 2>/dev/null || echo readonly; "
                 "touch /ro/x 2>/dev/null || echo ro-volume; touch /scratch/x && echo tmpfs-ok")
    assert (done.returncode, done.stdout) == (0, "from host\n1 /data 65534\nreadonly\nro-volume\ntmpfs-ok\n"), done
    done = hanok("run", "--rm", "--network", "none", "-v", "cache:/cache", IMAGE, "sh", "-c", "echo kept > /cache/f")
    assert done.returncode == 0, done
    assert (hanok.store / "volumes" / "cache" / "_data" / "f").read_text() == "kept\n"


def test_memory_limit_and_stats(hanok: Hanok) -> None:
    hanok.ok("run", "-d", "--network", "none", "--name", "lim", "--memory", "64m", "--pids-limit", "50",
             IMAGE, "sleep", "1000")
    stats = json.loads(hanok.ok("stats", "--no-stream", "--json", "lim"))
    assert len(stats) == 1 and stats[0]["name"] == "lim"
    assert stats[0]["memory"]["limit"] == 64 << 20
    assert stats[0]["pids"]["current"] >= 1
    hanok.ok("rm", "-f", "lim")


def test_network_none_has_only_loopback(hanok: Hanok) -> None:
    done = hanok("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "ls /sys/class/net")
    assert (done.returncode, done.stdout) == (0, "lo\n"), done


# ------------------------------------------------------------------ crashes and cleanup


def test_a_killed_monitor_loses_nothing_and_gc_cleans_up(hanok: Hanok) -> None:
    hanok.ok("run", "-d", "--network", "none", "--name", "orphan", IMAGE, "sleep", "1000")
    info = inspect(hanok, "orphan")
    pid = info["state"]["pid"]
    monitor = int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
    os.kill(monitor, signal.SIGKILL)
    time.sleep(0.2)
    assert inspect(hanok, "orphan")["state"]["status"] == "running"  # the container does not care
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: inspect(hanok, "orphan")["state"]["status"] == "exited")
    state = inspect(hanok, "orphan")["state"]
    assert state["exitCode"] is None and "not recorded" in state["error"]
    assert mounts_under(hanok.store) != []  # nobody cleaned up yet
    report = json.loads(hanok.ok("gc", "--json"))
    assert report["released"] == [info["id"]]
    assert mounts_under(hanok.store) == []
    assert "Exited (?)" in hanok.ok("ps", "-a")


def test_image_prune_keeps_layers_containers_use(hanok: Hanok) -> None:
    hanok.ok("import", str(hanok.store.parent / "bb" / "rootfs"), "doomed:1")
    hanok.ok("create", "--network", "none", "--name", "user", "doomed:1", "true")
    failed(hanok("rmi", "doomed:1"), "unable to remove doomed:1: container user uses it "
                                     "(remove the container first, or use -f)")
    hanok.ok("rmi", "-f", "doomed:1")
    hanok.ok("image", "prune")
    done = hanok("start", "-a", "user")
    assert done.returncode == 0, done
    hanok.ok("rm", "user")


def test_an_attached_run_whose_output_cannot_be_written_still_ends_and_removes_its_container(hanok: Hanok) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HANOK_ROOT", "HANOK_STATE")}
    with open("/dev/full", "w") as full:
        done = subprocess.run(hanok.argv("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "echo hi; exit 3"),
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (3, "hanok: cannot write the container's stdout: No space left on "
                                                 "device; the rest of it is discarded\n")
    assert hanok.container_ids() == []                          # --rm still removed it


def test_container_prune(hanok: Hanok) -> None:
    hanok.ok("run", "--network", "none", "--name", "done1", IMAGE, "true")
    hanok.ok("create", "--network", "none", "--name", "new1", IMAGE, "true")
    hanok.ok("run", "-d", "--network", "none", "--name", "busy", IMAGE, "sleep", "1000")
    pruned = hanok.ok("container", "prune").split()
    assert len(pruned) == 2
    assert [json.loads(hanok.ok("ps", "-a", "--json"))[0]["name"]] == ["busy"]
    hanok.ok("rm", "-f", "busy")


# ------------------------------------------------------------------ bridge networks


def _network_spec(tag: str, bridge_suffix: str) -> dict[str, str]:
    """Name, bridge and a 10.2xx.y.0/24 subnet of a test-only network, from a random hex tag."""
    return {"name": f"t{tag}{bridge_suffix}", "bridge": f"hkt{tag}{bridge_suffix}",
            "subnet": f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}.0/24"}


def _remove_network(hanok: Hanok, spec: dict[str, str]) -> None:
    """Its containers, then the network; no bridge or host veth may be left."""
    for cid in hanok.container_ids():
        hanok("rm", "-f", cid)
    hanok("network", "rm", spec["name"])
    leftovers = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert spec["bridge"] not in leftovers and "hkv" not in leftovers


@pytest.fixture
def net(hanok: Hanok, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A test-only bridge network (own bridge name, subnet and nft table), removed afterwards."""
    tag = os.urandom(3).hex()
    monkeypatch.setenv("HANOK_NFT_TABLE", f"hkt{tag}")
    spec = _network_spec(tag, "b")
    assert hanok.ok("network", "create", "--subnet", spec["subnet"], "--bridge", spec["bridge"],
                    spec["name"]) == spec["name"] + "\n"
    try:
        yield spec
    finally:
        _remove_network(hanok, spec)
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert f"hkt{tag}" not in tables


def test_two_containers_talk_over_the_bridge_and_ports_publish(hanok: Hanok, net: dict[str, str]) -> None:
    nets = json.loads(hanok.ok("network", "ls", "--json"))
    assert [n["name"] for n in nets if n["name"] == net["name"]] == [net["name"]]
    hanok.ok("run", "-d", "--network", net["name"], "--name", "server", "-p", "127.0.0.1:18080:80", IMAGE,
             "sh", "-c", "while true; do echo hello | nc -l -p 80; done")
    server_ip = inspect(hanok, "server")["network"]["ip"]
    assert server_ip.startswith(net["subnet"].rsplit(".", 1)[0] + ".")
    assert hanok.ok("port", "server") == "80/tcp -> 127.0.0.1:18080\n"
    row = json.loads(hanok.ok("ps", "--json"))[0]
    assert (row["ip"], row["ports"]) == (server_ip, [{"containerPort": 80, "hostPort": 18080, "protocol": "tcp",
                                                      "hostIP": "127.0.0.1"}])
    # container to container, by address
    done = hanok("run", "--rm", "--network", net["name"], IMAGE, "sh", "-c",
                 f"for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 2 {server_ip} 80 && exit 0; sleep 0.2; done; exit 1")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done
    # the host, through the published port
    got = subprocess.run([str(BUSYBOX), "nc", "-w", "2", "127.0.0.1", "18080"], capture_output=True, text=True,
                         timeout=10)
    assert got.stdout == "hello\n", got
    # a container joining the server's network namespace reaches it over localhost
    done = hanok("run", "--rm", "--network", "container:server", IMAGE, "sh", "-c",
                 "nc -w 2 127.0.0.1 80; cat /sys/class/net/eth0/address >/dev/null && echo has-eth0")
    assert (done.returncode, done.stdout) == (0, "hello\nhas-eth0\n"), done
    failed(hanok("network", "rm", net["name"]), f"network {net['name']} has 1 active endpoints")
    hanok.ok("rm", "-f", "server")
    assert json.loads(hanok.ok("ps", "-a", "--json")) == []


@pytest.fixture
def net6(hanok: Hanok, net: dict[str, str]) -> Iterator[dict[str, str]]:
    """A test-only dual-stack network beside `net` (which sets the nft table and removes containers), with a
    random unique local /64; removed afterwards, with the host's IPv6 forwarding put back."""
    forwarding = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    before = forwarding.read_text()
    tag = os.urandom(3).hex()
    spec = dict(_network_spec(tag, "6"), subnet6=f"fd{tag[:2]}:{tag[2:]}:{os.urandom(2).hex()}:6::/64")
    hanok.ok("network", "create", "--subnet", spec["subnet"], "--ipv6-subnet", spec["subnet6"], "--bridge",
             spec["bridge"], spec["name"])
    try:
        yield spec
    finally:
        try:
            _remove_network(hanok, spec)
        finally:
            forwarding.write_text(before)


def test_ports_publish_over_ipv6_on_a_dual_stack_network(hanok: Hanok, net: dict[str, str],
                                                          net6: dict[str, str]) -> None:
    both, six = random.sample(range(20000, 30000), 2)
    hanok.ok("run", "-d", "--network", net6["name"], "--name", "web6", "-p", f"{both}:80", "-p", f"[::]:{six}:81",
             IMAGE, "sleep", "1000")
    assert hanok.ok("port", "web6") == (f"80/tcp -> 0.0.0.0:{both}\n80/tcp -> [::]:{both}\n"
                                        f"81/tcp -> [::]:{six}\n")
    row = json.loads(hanok.ok("ps", "--json"))[0]
    assert row["ip6"].startswith(net6["subnet6"].removesuffix("::/64") + "::")
    assert [p["hostIP"] for p in row["ports"]] == ["", "::"]
    table = hanok.ok("ps").splitlines()
    assert f"0.0.0.0:{both}->80/tcp, [::]:{both}->80/tcp, [::]:{six}->81/tcp" in table[1]
    # on an IPv4-only network a container has only IPv4 ports, and an IPv6 host IP is refused with nothing left
    hanok.ok("run", "-d", "--network", net["name"], "--name", "web4", "-p", f"{six}:80", IMAGE, "sleep", "1000")
    assert hanok.ok("port", "web4") == f"80/tcp -> 0.0.0.0:{six}\n"
    failed(hanok("run", "--network", net["name"], "-p", f"[::]:{both + 1}:80", IMAGE, "true"),
           "host IP :: is IPv6, but the container has no IPv6 address (publish on IPv6 from a network made "
           "with --ipv6-subnet)")
    failed(hanok("run", "--network", net6["name"], "-p", f"[::1]:{both + 1}:80", IMAGE, "true"),
           f'invalid port mapping "[::1]:{both + 1}:80": host IP "::1" is the IPv6 loopback, which the kernel '
           "never routes to a container: publish on 127.0.0.1 instead")
    assert sorted(c["name"] for c in json.loads(hanok.ok("ps", "-a", "--json"))) == ["web4", "web6"]


def test_a_container_gets_hosts_resolv_conf_and_its_address(hanok: Hanok, net: dict[str, str]) -> None:
    done = hanok("run", "--rm", "--network", net["name"], "--hostname", "box", IMAGE, "sh", "-c",
                 "hostname; grep -c box /etc/hosts; grep -c nameserver /etc/resolv.conf; ip -4 -o addr show eth0")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[:2] == ["box", "1"] and int(lines[2]) >= 1
    assert " eth0 " in lines[3] and "inet 10." in lines[3]


def test_publish_needs_a_bridge_network(hanok: Hanok) -> None:
    failed(hanok("run", "--network", "none", "-p", "8080:80", IMAGE, "true"),
           "--publish needs a bridge network, not --network none")
    failed(hanok("run", "--network", "nosuchnet", IMAGE, "true"), "network nosuchnet not found")
    assert hanok.container_ids() == []


def test_an_oom_kill_is_reported_as_the_reason(hanok: Hanok) -> None:
    # busybox sh grows a string past the 16 MiB limit; the kernel's OOM killer ends it
    hanok.ok("run", "-d", "--network", "none", "--name", "hog", "--memory", "16m", IMAGE, "sh", "-c",
             "x=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; while true; do x=$x$x; done")
    assert hanok.ok("wait", "hog") == "137\n"
    wait_for(lambda: inspect(hanok, "hog")["state"]["oomKilled"])
    state = inspect(hanok, "hog")["state"]
    assert (state["status"], state["exitCode"], state["oomKilled"]) == ("exited", 137, True)
    done = hanok("run", "--rm", "--network", "none", "--memory", "64m", IMAGE, "true")
    assert done.returncode == 0


@pytest.mark.parametrize("delay", [0.02, 0.05, 0.08, 0.12, 0.2])
def test_a_cli_killed_during_run_loses_nothing(hanok: Hanok, delay: float) -> None:
    """SIGKILL the CLI at some point of `run`; ps still tells the truth and gc + rm leave nothing."""
    proc = subprocess.Popen(hanok.argv("run", "--network", "none", "--name", "victim", IMAGE,
                                       "sh", "-c", "echo up; sleep 0.3; exit 3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    rows = json.loads(hanok.ok("ps", "-a", "--json"))
    assert len(rows) <= 1
    if rows:
        row = rows[0]
        assert row["name"] == "victim" and row["state"] in ("created", "running", "exited")
        if row["state"] == "running":  # its monitor carries on: the exit code is still recorded
            assert hanok.ok("wait", "victim") == "3\n"
    report = json.loads(hanok.ok("gc", "--json", "--grace", "0"))
    assert set(report) >= {"released", "removed", "halfMade", "names", "runtimeStates", "network"}
    for cid in hanok.container_ids():
        hanok.ok("rm", "-f", cid)
    # nothing_left (autouse) checks mounts, runtime states, directories and names


def test_a_corrupt_record_is_listed_around_and_removed_by_rm_f_and_gc(hanok: Hanok) -> None:
    """A record a power loss emptied: `ps` lists the others (and says so on stderr), `rm -f` and `gc` remove it."""
    good = hanok.ok("create", "--network", "none", "--name", "good", IMAGE, "true").strip()
    broken = [hanok.ok("run", "-d", "--network", "none", "--name", name, IMAGE, "sleep", "1000").strip()
              for name in ("broken1", "broken2")]
    for cid in broken:
        (hanok.store / "containers" / cid / "container.json").write_bytes(b"")
    listed = hanok("ps", "-a", "--json")
    assert listed.returncode == 0
    assert [row["id"] for row in json.loads(listed.stdout)] == [good]
    assert listed.stderr.count("is corrupt; `hanok rm -f") == 2
    assert hanok.ok("rm", "-f", broken[0][:12]) == broken[0][:12] + "\n"
    report = json.loads(hanok.ok("gc", "--json", "--grace", "0"))
    assert report["removed"] == [broken[1]]
    assert hanok.container_ids() == [good]
    assert sorted(p.name for p in (hanok.store / "containers" / "names").iterdir() if p.is_symlink()) == ["good"]
    hanok.ok("rm", good)
    # nothing_left (autouse): the killed sleeps' runtime states, mounts and cgroups are gone too


def test_host_side_lookups_never_open_what_a_container_planted(hanok: Hanok) -> None:
    """`exec -u NAME` reads the container's /etc/passwd on the host: a FIFO there must not hang hanok."""
    hanok.ok("run", "-d", "--network", "none", "--name", "planter", IMAGE, "sh", "-c",
             "rm /etc/passwd && mkfifo /etc/passwd && touch /planted && sleep 1000")
    rootfs = Path(inspect(hanok, "planter")["rootfs"])
    wait_for(lambda: (rootfs / "planted").exists())
    failed(hanok("exec", "-u", "nobody", "planter", "id", timeout=20),
           "unable to find user nobody: no matching entries in passwd file")


def test_exec_reads_stdin_only_with_i(hanok: Hanok) -> None:
    hanok.ok("run", "-d", "--network", "none", "--name", "reader", IMAGE, "sleep", "1000")
    assert hanok("exec", "reader", "cat", input="data\n").stdout == ""
    assert hanok("exec", "-i", "reader", "cat", input="data\n").stdout == "data\n"


def test_host_network_gets_a_copy_of_resolv_conf(hanok: Hanok) -> None:
    done = hanok("run", "--rm", "--network", "host", IMAGE, "sh", "-c",
                 "echo nameserver 192.0.2.99 > /etc/resolv.conf && echo wrote")
    assert (done.returncode, done.stdout) == (0, "wrote\n"), done
    assert "192.0.2.99" not in Path("/etc/resolv.conf").read_text()


def test_store_is_private_to_root(hanok: Hanok) -> None:
    """Layers and upper dirs hold setuid files; other host users must not reach them (CVE-2021-41091)."""
    hanok.ok("create", "--network", "none", IMAGE, "true")
    assert (hanok.store.stat().st_mode & 0o777) == 0o700


def test_concurrent_creates_with_one_name_make_one_container(hanok: Hanok) -> None:
    procs = [subprocess.Popen(hanok.argv("create", "--network", "none", "--name", "dup", IMAGE, "true"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert sorted(p.returncode for p in procs) == [0] + [125] * 5, results
    assert len(hanok.container_ids()) == 1


def test_a_bundle_path_refuses_image_flags(hanok: Hanok, tmp_path: Path) -> None:
    done = hanok("run", "-d", str(tmp_path))
    assert done.returncode == 2 and "only --name and --explain apply" in done.stderr, done


def test_the_monitor_cleans_up_for_a_killed_attached_cli(hanok: Hanok) -> None:
    proc = subprocess.Popen(hanok.argv("run", "--rm", "--network", "none", "--name", "left", IMAGE,
                                       "sh", "-c", "echo up; sleep 0.5; exit 3"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # it runs: kill its CLI now
    proc.kill()
    proc.wait()
    # nobody runs gc: the monitor saw its CLI gone and ran the cleanup (--rm included) itself
    wait_for(lambda: hanok.container_ids() == [] and mounts_under(hanok.store) == [], timeout=20)


def test_containers_get_dockers_seccomp_profile_unless_unconfined(hanok: Hanok, tmp_path: Path) -> None:
    done = hanok("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                 "grep Seccomp: /proc/self/status; unshare -U true 2>&1 || echo refused")
    assert (done.returncode, done.stdout) == (0, "Seccomp:\t2\nunshare: unshare(0x10000000): Operation not permitted\n"
                                                 "refused\n"), done
    done = hanok("run", "--rm", "--network", "none", "--security-opt", "seccomp=unconfined", IMAGE, "sh", "-c",
                 "grep Seccomp: /proc/self/status; unshare -U true && echo allowed")
    assert (done.returncode, done.stdout) == (0, "Seccomp:\t0\nallowed\n"), done
    docker_format = tmp_path / "docker.json"
    docker_format.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "archMap": []}))
    failed(hanok("run", "--rm", "--network", "none", "--security-opt", f"seccomp={docker_format}", IMAGE, "true"),
           f"--security-opt seccomp={docker_format}: a docker-format profile (archMap); "
           f"give an OCI linux.seccomp object")


def test_init_runs_as_pid_1_and_passes_exit_codes_and_signals(hanok: Hanok) -> None:
    done = hanok("run", "--rm", "--init", "--network", "none", IMAGE, "sh", "-c",
                 'tr "\\0" " " < /proc/1/cmdline; echo; echo $$; exit 3')
    assert (done.returncode, done.stdout) == (3, "/run/hanok-init -- sh -c " + 'tr "\\0" " " < /proc/1/cmdline; '
                                                 "echo; echo $$; exit 3 \n2\n"), done
    # a shell as pid 1 would ignore SIGTERM; behind the init it gets it (and dies of it)
    hanok.ok("run", "-d", "--init", "--network", "none", "--name", "inited", IMAGE, "sleep", "1000")
    assert hanok.ok("stop", "-t", "5", "inited") == "inited\n"
    assert hanok.ok("wait", "inited") == "143\n"


def test_wait_on_a_created_container_waits_for_its_run(hanok: Hanok) -> None:
    hanok.ok("create", "--network", "none", "--name", "later", IMAGE, "sh", "-c", "exit 4")
    waiter = subprocess.Popen(hanok.argv("wait", "later"), stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    assert waiter.poll() is None  # still waiting: docker's wait blocks on a created container
    hanok.ok("start", "later")
    assert waiter.communicate(timeout=30)[0] == "4\n"


def test_rm_removes_a_writable_layer_of_any_depth(hanok: Hanok) -> None:
    """A container may nest directories past Python's recursion limit in its upper layer."""
    done = hanok("run", "--network", "none", "--name", "deep", IMAGE, "sh", "-c",
                 "i=0; while [ $i -lt 1200 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo deep")
    assert (done.returncode, done.stdout) == (0, "deep\n"), done
    assert hanok.ok("rm", "deep") == "deep\n"
