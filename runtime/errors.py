"""The HanokError family: every failure a person or a caller should understand.

The CLI prints `hanok: <message>` (or a JSON log line) and exits non-zero. Texts
that callers match keep runc's wording ("container does not exist",
"container not running"). Leaf module: imports nothing of hanok.
"""


class HanokError(Exception):
    """Base of every error hanok reports on purpose; str() is the one-line message."""

    exit_code = 1


class NotFound(HanokError):
    """A container, bundle, image or file named by the caller does not exist."""


class Exists(HanokError):
    """Something with that id or name is already there."""


class BadState(HanokError):
    """The container is in a state where the operation is not allowed."""


class InvalidArgument(HanokError):
    """A command-line value (id, signal, flag) is malformed."""


class SpecError(HanokError):
    """config.json is unreadable or asks for something invalid."""


class NotSupported(HanokError):
    """Valid request, but this host or this version of hanok cannot do it."""


class ImageError(HanokError):
    """Pulling, storing or unpacking an image failed."""


class CgroupError(HanokError):
    """A cgroup could not be created, limited or removed."""


class NetError(HanokError):
    """Network setup or teardown failed."""


class HookError(HanokError):
    """An OCI hook failed or timed out."""


class ContainerStartError(HanokError):
    """The container process could not be set up or executed.

    exit_code follows the shell convention callers expect: 127 when the
    executable is missing, 126 when it cannot be invoked.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
