"""OCI hooks: when each kind runs, where, and what it reads on stdin.

Every hook is a shell script appending one line to one log file:
``<kind> <mount namespace> <state JSON from stdin>``. The host-side hooks
(prestart, createRuntime, poststart, poststop) and createContainer (run in the
container's namespaces before pivot_root, its path resolved on the host) use
the host's /bin/sh and the log's host path. startContainer's path is resolved
inside the container, so it is the rootfs's busybox sh, writing through a
bind mount of the log's directory at /h.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    BundleFactory,
    ContainerIds,
    RunCapture,
    Runtime,
    Untouched,
    default_config,
    describe,
    ns_link,
    sh,
)

HOST_KINDS = ["prestart", "createRuntime", "poststart", "poststop"]
ALL_KINDS = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
]
# (runc calls prestart before createRuntime; the spec leaves their order open.)
CREATE_KINDS = ["prestart", "createRuntime", "createContainer"]
HOOK_PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


@dataclass
class HookCall:
    kind: str
    mntns: str
    state: dict[str, Any]


def _hook(kind: str, log: str) -> dict[str, Any]:
    # The state JSON may be pretty-printed: join its lines into one.
    script = (
        f'printf "%s %s %s\\n" {kind} "$(readlink /proc/self/ns/mnt)" "$(tr -d "\\n")" >> {log}'
    )
    return {"path": "/bin/sh", "args": ["sh", "-c", script], "env": [HOOK_PATH]}


def _hooked_config(host_dir: Path, *args: str, kinds: list[str] = ALL_KINDS) -> dict[str, Any]:
    config = default_config(*(args or ("sleep", "100")))
    config["mounts"].append(
        {"destination": "/h", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]}
    )
    log = str(host_dir / "log")
    config["hooks"] = {
        kind: [_hook(kind, "/h/log" if kind == "startContainer" else log)] for kind in kinds
    }
    return config


def _calls(host_dir: Path) -> list[HookCall]:
    log = host_dir / "log"
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        kind, mntns, state = line.split(" ", 2)
        calls.append(HookCall(kind, mntns, json.loads(state) if kind != "main" else {}))
    return calls


def _kinds(host_dir: Path) -> list[str]:
    return [call.kind for call in _calls(host_dir)]


def test_hooks_run_in_spec_order(run_capture: RunCapture, host_dir: Path) -> None:
    # FAILS ON runc 1.1.5: it runs poststart hooks inside `create` (right after
    # createContainer, status "created"), before startContainer; runc 1.2
    # moved them into `start`. The spec wants poststart after the user process
    # started, so: startContainer before poststart.
    config = _hooked_config(host_dir, *sh("echo 'main - -' >> /h/log"))
    result = run_capture(config)
    assert result.code == 0, result
    kinds = _kinds(host_dir)
    # poststart and the user process race (poststart runs once the process
    # was started, not when it has printed): compare without "main".
    assert [k for k in kinds if k != "main"] == ALL_KINDS, kinds
    assert kinds.index("startContainer") < kinds.index("main") < kinds.index("poststop"), kinds


def test_hooks_per_lifecycle_step(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path
) -> None:
    # FAILS ON runc 1.1.5 for the same reason: poststart already ran in create.
    path = bundle(_hooked_config(host_dir))
    oci.ok("create", "--bundle", path, cid)
    assert _kinds(host_dir) == CREATE_KINDS
    oci.ok("start", cid)
    assert _kinds(host_dir) == [*CREATE_KINDS, "startContainer", "poststart"]
    oci.ok("kill", cid, "KILL")
    oci.wait_status(cid, "stopped")
    assert "poststop" not in _kinds(host_dir)
    oci.ok("delete", cid)
    assert _kinds(host_dir) == ALL_KINDS


def test_hook_state_and_namespaces(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path
) -> None:
    path = bundle(_hooked_config(host_dir))
    pid_file = path / "pid"
    oci.ok("create", "--bundle", path, "--pid-file", pid_file, cid)
    pid = int(pid_file.read_text())
    container_mntns = ns_link(pid, "mnt")
    oci.ok("start", cid)
    oci.ok("delete", "--force", cid)

    calls = {call.kind: call for call in _calls(host_dir)}
    assert sorted(calls) == sorted(ALL_KINDS), list(calls)
    for kind, call in calls.items():
        assert call.state["id"] == cid, (kind, call.state)
        assert call.state["bundle"] == str(path), (kind, call.state)
        assert call.state["ociVersion"], (kind, call.state)
    status = {kind: call.state["status"] for kind, call in calls.items()}
    assert status["prestart"] == status["createRuntime"] == status["createContainer"] == "creating"
    assert status["startContainer"] == "created"
    # runc 1.1.5 says "created" (it runs poststart in create); after start,
    # "running" is right.
    assert status["poststart"] in ("created", "running")
    assert status["poststop"] == "stopped"
    # Host-side hooks get the container's pid as the host sees it.
    for kind in ("prestart", "createRuntime", "poststart"):
        assert calls[kind].state["pid"] == pid, (kind, calls[kind].state)
    # Where they ran: host hooks in the host's mount namespace, the other two
    # in the container's.
    host_mntns = ns_link("self", "mnt")
    for kind in HOST_KINDS:
        assert calls[kind].mntns == host_mntns, kind
    for kind in ("createContainer", "startContainer"):
        assert calls[kind].mntns == container_mntns, kind


def test_hook_args_and_env(run_capture: RunCapture, host_dir: Path) -> None:
    config = default_config("true")
    out = host_dir / "out"
    config["hooks"] = {
        "createRuntime": [
            {
                "path": "/bin/sh",
                # args[0] is the hook's argv[0], not the path.
                "args": [
                    "my-argv0",
                    "-c",
                    f'echo "$0 $1 $GREETING" > {out}; '
                    f'tr "\\0" "\\n" < /proc/$$/cmdline | head -n 1 >> {out}',
                    "zero",
                    "one",
                ],
                "env": ["GREETING=hello", HOOK_PATH],
            }
        ]
    }
    result = run_capture(config)
    assert result.code == 0, result
    assert out.read_text() == "zero one hello\nmy-argv0\n"


@pytest.mark.parametrize("kind", CREATE_KINDS)
def test_failing_hook_fails_create(
    oci: Runtime,
    bundle: BundleFactory,
    cid: str,
    host_dir: Path,
    untouched: Untouched,
    kind: str,
) -> None:
    config = _hooked_config(host_dir)
    config["hooks"][kind].append(
        {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}
    )
    path = bundle(config)
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc 1.1.5: runc create failed: unable to start container process: error
    #   during container init: error running hook #1: error running hook:
    #   exit status 3, stdout: , stderr: hook-said-no
    assert proc.returncode != 0, describe(proc)
    assert "hook" in proc.stderr, describe(proc)
    assert "hook-said-no" in proc.stderr, describe(proc)
    untouched.check(before)
    assert oci.status(cid) is None
    # The hooks after the failing one never ran; the lifecycle went on to
    # destroying the container, which runs poststop (runtime-spec: "If any
    # prestart hook fails, the runtime MUST generate an error, stop the
    # container, and continue the lifecycle at step 12"; runc does so).
    kinds = _kinds(host_dir)
    assert kinds == [*CREATE_KINDS[: CREATE_KINDS.index(kind) + 1], "poststop"], kinds


def test_hook_timeout(oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched) -> None:
    config = default_config("true")
    # exec'd sleep (no shell in between): the runtime kills the hook process,
    # and nothing else holds the hook's stdout open.
    config["hooks"] = {
        "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]
    }
    path = bundle(config)
    before = untouched()
    started = time.monotonic()
    proc = oci("create", "--bundle", path, cid, timeout=20)
    elapsed = time.monotonic() - started
    # runc 1.1.5: runc create failed: unable to start container process: error
    #   during container init: error running hook #0: hook ran past specified
    #   timeout of 1.0s
    assert proc.returncode != 0, describe(proc)
    assert "timeout" in proc.stderr or "timed out" in proc.stderr, describe(proc)
    assert elapsed < 10, f"create took {elapsed:.1f}s with a 1 s hook timeout"
    untouched.check(before)


def test_poststop_runs_when_run_ends(
    run_capture: RunCapture, host_dir: Path, ids: ContainerIds
) -> None:
    cid = ids.new()
    config = _hooked_config(host_dir, *sh("exit 5"), kinds=["poststop"])
    result = run_capture(config, cid=cid)
    assert result.code == 5, result
    (call,) = _calls(host_dir)
    assert call.kind == "poststop"
    assert call.state["id"] == cid
    assert call.state["status"] == "stopped"
