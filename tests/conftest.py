"""Top-level pytest configuration shared by every hanok test suite.

The repository root is the ``hanok`` package itself (it has an ``__init__.py``)
while ``tests/`` and its subdirectories are plain directories without one, so
pytest imports each test module and conftest by its bare name. This file makes
``tests/`` importable explicitly (not only as a side effect of the default
``prepend`` import mode), so test modules can ``from helpers import ...`` under
any ``--import-mode``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
