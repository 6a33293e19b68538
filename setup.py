"""Build hook: turn the cffi cdefs into an importable module at build time.

setuptools cannot declare `cffi_modules` in pyproject.toml, so this file exists
for that. Out-of-line ABI mode: the build writes a pure-Python module
(hanok/runtime/_syscalls_cffi.py) holding the parsed declarations, so running a
command never needs pycparser or a C compiler.

Because the repository root is the package directory, this file would also be
installed as `hanok/setup.py`; build_py below leaves it out.
"""
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithoutSetup(build_py):
    def find_package_modules(self, package, package_dir):  # type: ignore[override]
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "hanok" and m[1] == "setup")]


setup(cmdclass={"build_py": BuildPyWithoutSetup},
      cffi_modules=["runtime/_syscalls_build.py:ffibuilder", "netns/_nft_build.py:ffibuilder"])
