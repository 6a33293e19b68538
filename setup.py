"""Build hook: turn the cffi cdefs into an importable module at build time.

setuptools cannot declare `cffi_modules` in pyproject.toml, so this file exists
for that. Out-of-line ABI mode: the build writes a pure-Python module
(hanok/runtime/_syscalls_cffi.py) holding the parsed declarations, so running a
command never needs pycparser or a C compiler.

Because the repository root is the package directory, this file would also be
installed as `hanok/setup.py`; build_py below leaves it out.

The `hanok` and `hanok-oci` commands are launchers written here rather than
[project.scripts] entry points: the launcher pip 23 (Debian 12's) writes for an
entry point imports `re` first, ~5 ms on every command, as much as `hanok-oci
state` itself spends after the interpreter starts. Installers give a `#!python`
script the environment's interpreter, as they do an entry point's launcher.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

LAUNCHERS = {"hanok": "hanok_main", "hanok-oci": "oci_main"}  # command -> function of hanok.cli
LAUNCHER_DIR = os.path.join("build", "launchers")


def write_launchers() -> list[str]:
    """Write one launcher per command (import hanok.cli, call its main, exit with its status); return paths."""
    os.makedirs(LAUNCHER_DIR, exist_ok=True)
    paths = []
    for command, function in LAUNCHERS.items():
        path = os.path.join(LAUNCHER_DIR, command)
        with open(path, "w") as f:
            f.write(f"#!python\n# `{command}`, written by hanok's setup.py (see there for why not an entry point)\n"
                    f"import sys\n\nfrom hanok.cli import {function}\n\nsys.exit({function}())\n")
        paths.append(path)
    return paths


class BuildPyWithoutSetup(build_py):
    def find_package_modules(self, package, package_dir):  # type: ignore[override]
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "hanok" and m[1] == "setup")]


setup(cmdclass={"build_py": BuildPyWithoutSetup},
      cffi_modules=["runtime/_syscalls_build.py:ffibuilder", "netns/_nft_build.py:ffibuilder"],
      scripts=write_launchers())
