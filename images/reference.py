"""Image references: `name[:tag][@digest]` with Docker Hub's defaults.

    alpine                      -> docker.io/library/alpine:latest
    user/app:1.2                -> docker.io/user/app:1.2
    localhost:5000/x            -> localhost:5000/x:latest
    quay.io/org/img@sha256:...  -> digest only, no tag

The first path component is a registry when it contains a '.' or a ':' or is
`localhost` (Docker's rule). Pure and cheap: hand-written checks (no `re` on
the hot path); imports nothing but hanok's errors.
"""
from __future__ import annotations

from hanok.runtime.errors import ImageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRIES = ("index.docker.io", "registry-1.docker.io")

_HEX = frozenset("0123456789abcdef")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


class Reference:
    """A parsed image reference; `str()` gives the canonical full form."""

    __slots__ = ("registry", "repository", "tag", "digest")

    def __init__(self, registry: str, repository: str, tag: str | None = None,
                 digest: str | None = None):
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask a registry's /manifests/ endpoint for: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def familiar(self) -> str:
        """The short form people type: `alpine:latest`, `user/app:1`, `localhost:5000/x:1`."""
        name = self.repository
        if self.registry == DEFAULT_REGISTRY:
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
        else:
            name = f"{self.registry}/{name}"
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def validate_digest(digest: str) -> str:
    """Return `digest` if it is `sha256:<64 lowercase hex>`; ImageError otherwise."""
    algo, sep, hexpart = digest.partition(":")
    if not sep or algo != "sha256":
        raise ImageError(f"invalid digest {digest!r}: only sha256:<64 hex> is supported")
    if len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise ImageError(f"invalid digest {digest!r}: expected sha256 followed by 64 lowercase hex digits")
    return digest


def _valid_component(part: str) -> bool:
    """A path component: lowercase alnum runs separated by '.', '_', '__' or '-'+."""
    if not part or part[0] not in _ALNUM or part[-1] not in _ALNUM:
        return False
    i = 0
    n = len(part)
    while i < n:
        c = part[i]
        if c in _ALNUM:
            i += 1
            continue
        # a separator run
        j = i
        while j < n and part[j] not in _ALNUM:
            j += 1
        sep = part[i:j]
        if sep not in (".", "_", "__") and set(sep) != {"-"}:
            return False
        i = j
    return True


def _valid_registry(host: str) -> bool:
    if host.startswith("["):  # IPv6 literal, [::1]:5000
        end = host.find("]")
        name, port = host[:end + 1], host[end + 1:]
        if end < 2 or (port and not port.startswith(":")):
            return False
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return False
    if name.startswith("["):
        return set(name[1:-1]) <= set("0123456789abcdefABCDEF:.")
    return bool(name) and set(name) <= _HOST_CHARS and name[0] != "-" and name[-1] != "-"


def parse(text: str, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Parse `name[:tag][@digest]`; ImageError naming the problem when malformed."""
    if not isinstance(text, str) or not text:
        raise ImageError("invalid image reference: empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ImageError(f"invalid image reference {text!r}: contains whitespace")
    if len(text) > 4096:
        raise ImageError("invalid image reference: longer than 4096 characters")
    rest = text
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if "@" in digest:
            raise ImageError(f"invalid image reference {text!r}: more than one '@'")
        validate_digest(digest)
    tag = None
    # A ':' after the last '/' is a tag separator; before it, a registry port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not tag or len(tag) > 128 or not set(tag) <= _TAG_CHARS or tag[0] in ".-":
            raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
    if not rest:
        raise ImageError(f"invalid image reference {text!r}: no repository name")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
        if not _valid_registry(registry):
            raise ImageError(f"invalid image reference {text!r}: bad registry {registry!r}")
    else:
        registry, repository = default_registry, rest
    if registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = "library/" + repository
    for part in repository.split("/"):
        if not _valid_component(part):
            hint = " (repository names must be lowercase)" if part.lower() != part else ""
            raise ImageError(f"invalid image reference {text!r}: bad repository name {repository!r}{hint}")
    if len(registry) + 1 + len(repository) > 255:
        raise ImageError(f"invalid image reference {text!r}: name longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)
