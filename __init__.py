"""hanok: a daemonless Linux container runtime built on raw Linux primitives.

Kept tiny on purpose: every command imports this package first, and the
per-container commands are hot paths (see DESIGN.md).
"""

__version__ = "0.1.0"
OCI_VERSION = "1.1.0"
