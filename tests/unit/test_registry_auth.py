"""Which credentials docker's config.json gives a registry: helper choice, key matching, auths entries.

Pure lookups, no helper runs (tests/integration/test_registry.py runs real
helper programs against a real registry).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hanok.images import registry
from hanok.runtime.errors import ImageError


def _helper(doc: dict, name: str) -> str | None:
    helper = registry._helper_for(doc, registry._registry_of(name), "config.json")
    return None if helper is None else helper.name


def test_cred_helpers_win_over_creds_store() -> None:
    doc = {"credsStore": "pass", "credHelpers": {"gcr.io": "gcloud", "https://index.docker.io/v1/": "hub",
                                                 "https://registry.example:5000": "ex"}}
    assert _helper(doc, "gcr.io") == "docker-credential-gcloud"
    assert _helper(doc, "docker.io") == "docker-credential-hub"
    assert _helper(doc, "index.docker.io") == "docker-credential-hub"
    assert _helper(doc, "registry.example:5000") == "docker-credential-ex"  # matched by host
    assert _helper(doc, "quay.io") == "docker-credential-pass"
    assert _helper({"credHelpers": {"gcr.io": "gcloud"}}, "quay.io") is None
    assert _helper({"credsStore": ""}, "quay.io") is None
    assert _helper({}, "quay.io") is None


@pytest.mark.parametrize("name", ["../../bin/sh", "a/b", "..", "."])
def test_helper_names_cannot_be_paths(name: str) -> None:
    with pytest.raises(ImageError, match=r"^credsStore in config.json: '.*' is not a credential helper name$"):
        registry._helper_for({"credsStore": name}, "quay.io", "config.json")


def test_server_url_is_what_docker_files_credentials_under() -> None:
    assert registry._server_url("docker.io") == "https://index.docker.io/v1/"
    assert registry._server_url("registry.example:5000") == "registry.example:5000"


def test_auths_entries(tmp_path: Path) -> None:
    auths = {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "tok.example": {"identitytoken": "refresh-me", "auth": base64.b64encode(b"ignored:x").decode()},
        "https://registry.example:5000/v2/": {"username": "u", "password": "p"},
        "empty.example": {},
    }
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": auths}))
    assert registry.credentials("docker.io", str(cfg)) == ("hub", "pw")
    # an identity token wins within an entry, as in docker, and is spelled as helpers spell it
    assert registry.credentials("tok.example", str(cfg)) == (registry.TOKEN_USERNAME, "refresh-me")
    assert registry.credentials("registry.example:5000", str(cfg)) == ("u", "p")
    assert registry.credentials("empty.example", str(cfg)) is None
    assert registry.credentials("nowhere.example", str(cfg)) is None


def test_drop_auths_removes_every_spelling_of_the_registry() -> None:
    doc: dict = {"auths": {"registry.example:5000": {}, "https://registry.example:5000/v2/": {}, "other": {}}}
    assert registry._drop_auths(doc, "registry.example:5000") is True
    assert doc == {"auths": {"other": {}}}
    assert registry._drop_auths(doc, "registry.example:5000") is False
    hub: dict = {"auths": {"https://index.docker.io/v1/": {}, "docker.io": {}}}
    assert registry._drop_auths(hub, "docker.io") is True and hub == {"auths": {}}
