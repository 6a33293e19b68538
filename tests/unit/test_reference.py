"""images/reference.py: name[:tag][@digest] with Docker Hub's defaults."""
from __future__ import annotations

import pytest

from hanok.images import reference
from hanok.runtime.errors import ImageError

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app:v1.2_rc-3", "docker.io", "user/app", "v1.2_rc-3", None),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
        ("index.docker.io/library/alpine:edge", "docker.io", "library/alpine", "edge", None),
        ("registry-1.docker.io/a/b", "docker.io", "a/b", "latest", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000", "team/app", "1", None),
        ("quay.io/org/sub/img:tag", "quay.io", "org/sub/img", "tag", None),
        ("[::1]:5000/x:1", "[::1]:5000", "x", "1", None),
        (f"alpine@{D}", "docker.io", "library/alpine", None, D),
        (f"ghcr.io/o/i:1@{D}", "ghcr.io", "o/i", "1", D),
        ("org/a.b-c__d", "docker.io", "org/a.b-c__d", "latest", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    # str() is canonical and parses back to itself
    assert reference.parse(str(ref)) == ref


def test_str_and_familiar() -> None:
    assert str(reference.parse("alpine")) == "docker.io/library/alpine:latest"
    assert reference.parse("alpine").familiar() == "alpine:latest"
    assert reference.parse("user/app:1").familiar() == "user/app:1"
    assert reference.parse("localhost:5000/x").familiar() == "localhost:5000/x:latest"
    assert str(reference.parse(f"x@{D}")) == f"docker.io/library/x@{D}"
    assert reference.parse(f"x@{D}").reference == D
    assert reference.parse("x:7").reference == "7"
    assert reference.parse("x").name == "docker.io/library/x"


def test_default_registry_override() -> None:
    ref = reference.parse("team/app", default_registry="registry.example:5000")
    assert (ref.registry, ref.repository) == ("registry.example:5000", "team/app")


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("Alpine", "lowercase"),
        ("a b", "whitespace"),
        (" alpine", "whitespace"),
        ("a:b:c", "bad repository"),
        ("x@sha256:abc", "64"),
        (f"x@md5:{'a' * 32}", "sha256"),
        (f"x@sha256:{'A' * 64}", "64"),
        (f"x@{D}@{D}", "more than one"),
        ("a//b", "bad repository"),
        (":tag", "no repository"),
        ("a:", "bad tag"),
        ("a:-x", "bad tag"),
        ("a:" + "t" * 129, "bad tag"),
        ("localhost:99999/x", "bad registry"),
        ("local_host:5000/x", "bad registry"),
        ("-a", "bad repository"),
        ("a-", "bad repository"),
        ("a..b", "bad repository"),
        ("a/", "bad repository"),
        ("x" * 300, "255"),
    ],
)
def test_malformed(text: str, words: str) -> None:
    with pytest.raises(ImageError) as err:
        reference.parse(text)
    msg = str(err.value)
    assert words in msg
    assert "\n" not in msg


def test_validate_digest() -> None:
    assert reference.validate_digest(D) == D
    for bad in ("sha256:", "sha512:" + "a" * 128, "ab" * 32, "sha256:" + "g" * 64):
        with pytest.raises(ImageError):
            reference.validate_digest(bad)
