"""OCI hooks: run in order, the container state JSON on stdin, with timeouts.

Failure rules (runtime-spec "Lifecycle"): a failing prestart, createRuntime,
createContainer or startContainer hook fails the operation; a failing poststart
or poststop hook only produces a warning and the lifecycle continues.
Only imported when a config has hooks, so `subprocess` stays off the hot path.
"""
from __future__ import annotations

import subprocess
import sys

from hanok.runtime import explain, jsonio
from hanok.runtime.errors import HookError

FATAL_KINDS = frozenset({"prestart", "createRuntime", "createContainer", "startContainer"})


def run(kind: str, hooks: list[dict], state: dict) -> None:
    """Run every hook of one kind; raise HookError (fatal kinds) or warn."""
    payload = jsonio.dumps(state).encode()
    for index, hook in enumerate(hooks):
        try:
            _run_one(hook, payload)
        except HookError as e:
            message = f"{kind} hook #{index} ({hook['path']}): {e}"
            if kind in FATAL_KINDS:
                raise HookError(message) from None
            sys.stderr.write(f"hanok: warning: {message}\n")


def _run_one(hook: dict, payload: bytes) -> None:
    args = hook.get("args") or [hook["path"]]
    env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
    explain.step(explain.quote(args), "OCI hook, container state JSON on stdin")
    try:
        proc = subprocess.Popen(args, executable=hook["path"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
    except OSError as e:
        raise HookError(f"cannot run: {e.strerror}") from None
    try:
        _, err = proc.communicate(payload, timeout=hook.get("timeout"))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise HookError(f"timed out after {hook['timeout']}s") from None
    except BrokenPipeError:
        err = proc.stderr.read() if proc.stderr else b""
        proc.wait()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        code = proc.returncode if proc.returncode > 0 else f"signal {-proc.returncode}"
        raise HookError(f"exited with {code}" + (f": {detail[-1]}" if detail else ""))
