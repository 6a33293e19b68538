"""The per-container hot path imports only what it uses (DESIGN.md, "Hot paths").

`hanok-oci` runs once per container operation: importing click (~35 ms),
requests (~140 ms) or pyroute2 (~160 ms, 30 MB) there, or even the stdlib's
json/re/enum/typing, costs more than runc takes for a whole container. Each
check runs in a fresh interpreter, so what pytest itself imported does not hide
anything.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hanok

FORBIDDEN = {"click", "requests", "pyroute2", "yaml", "json", "re", "enum", "subprocess", "typing",
             "shutil", "dataclasses", "inspect", "hashlib",
             # ~2.5 ms together (contextlib pulls in collections and functools); signal and shlex bring enum/re
             "contextlib", "collections", "functools", "signal", "shlex"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the hanok this session imported (the working tree or the installed one)
    parent = os.path.dirname(os.path.dirname(hanok.__file__))
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def imported_after(*modules: str) -> tuple[set[str], str]:
    """Top-level names of the modules that importing `modules` (in order) pulled in."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        + "".join(f"import {m}\n" for m in modules)
        + "import hanok\n"
        "print(hanok.__file__)\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=_env())
    assert done.returncode == 0, done.stderr
    where, names = done.stdout.splitlines()
    return set(names.split()), where


def _offenders(new: set[str]) -> set[str]:
    tops = {name.split(".")[0] for name in new}
    return tops & FORBIDDEN


def test_same_hanok_in_the_subprocess() -> None:
    _, where = imported_after("hanok.cli")
    assert where == hanok.__file__


@pytest.mark.parametrize("modules", [
    ("hanok.cli",),
    ("hanok.cli", "hanok.runtime.container"),
    ("hanok.runtime.state",),
    ("hanok.runtime.jsonio",),
    # `create` validates linux.seccomp, which podman and containerd send with every container
    ("hanok.cli", "hanok.runtime.container", "hanok.runtime.spec", "hanok.runtime.init",
     "hanok.runtime.seccomp"),
    # `hanok run`, `start` and `ps`: the engine and its store; a pod's container also loads pod.py
    ("hanok.cli", "hanok.runtime.engine", "hanok.images.store", "hanok.runtime.pod"),
    # `hanok run` and `start` also mount the image's layers
    ("hanok.cli", "hanok.runtime.engine", "hanok.images.store", "hanok.images.overlay", "hanok.images.unpack"),
])
def test_hot_path_imports(modules: tuple[str, ...]) -> None:
    new, _ = imported_after(*modules)
    offenders = _offenders(new)
    print(f"{' + '.join(modules)}: offenders {sorted(offenders)}; imported {sorted(new)}")
    assert offenders == set(), f"{' + '.join(modules)} imports {sorted(offenders)}"


def test_hot_path_does_not_import_cold_hanok_packages() -> None:
    """Images, network and cgroup code belong to other commands."""
    new, _ = imported_after("hanok.cli", "hanok.runtime.container")
    cold = sorted(n for n in new if n.startswith(("hanok.images", "hanok.netns", "hanok.cgroups")))
    print("cold hanok modules:", cold)
    assert cold == []


@pytest.mark.parametrize("command", ["hanok", "hanok-oci"])
def test_the_installed_launchers_import_nothing_before_hanok(command: str) -> None:
    """setup.py writes the launchers: pip 23's entry-point launcher imports re (~5 ms) on every command."""
    launcher = os.path.join(os.path.dirname(sys.executable), command)
    if not os.path.exists(launcher):
        pytest.skip(f"{command} is not installed next to {sys.executable}")
    with open(launcher) as f:
        text = f.read()
    statements = [line for line in text.splitlines() if line and not line.startswith("#")]
    main = "hanok_main" if command == "hanok" else "oci_main"
    assert statements == ["import sys", f"from hanok.cli import {main}", f"sys.exit({main}())"]
    assert text.startswith("#!" + os.path.join(os.path.dirname(sys.executable), "python"))
