"""Build hook: turn the cffi cdefs into an importable module at build time.

setuptools cannot declare `cffi_modules` in pyproject.toml, so this file exists
only for that. Out-of-line ABI mode: the build writes a pure-Python module
(hanok/runtime/_syscalls_cffi.py) holding the parsed declarations, so running a
command never needs pycparser or a C compiler.
"""
from setuptools import setup

setup(cffi_modules=["runtime/_syscalls_build.py:ffibuilder"])
