"""The OCI distribution client: pull images from a registry into the store.

    pull(store, "alpine")                 -> "docker.io/library/alpine:latest"
    login("localhost:5000", "u", "p")     -> writes ~/.docker/config.json

A pull fetches the manifest (an image index / Docker manifest list is
resolved to the host's platform or `platform=`), the image config and the
layer blobs, each verified by digest and size as it arrives; nothing appears
under a final name before it checked out. A layer goes through one streaming
pass (`store.ingest_layer`): the bytes from the socket are hashed, written to
the blob's tmp file, inflated, hashed again (diff_id) and extracted, with no
second read of the blob. Layers run in parallel threads (socket reads, zlib,
hashing and file syscalls release the GIL) and are unpacked once per diff_id;
blobs and layers already in the store are not fetched again. The whole pull
is a store operation (`store.operation()`: gc waits, and every blob and layer
is claimed before the pull looks for it or writes it); a failure removes every
blob and layer this pull added, except what another pull or load in flight
claimed or an image references meanwhile, so the store is left as it was and
concurrent pulls sharing a layer never break each other.

Auth: anonymous, basic, and bearer tokens (a 401's WWW-Authenticate
`Bearer realm=..,service=..,scope=..` -> GET realm with basic credentials if
any -> retry once; tokens cached per scope for the pull). An identity token
(username `<token>`) is an OAuth2 refresh token instead: POST realm with
grant_type=refresh_token, as docker does. Credentials come from
`auth=(user, password)` or docker's config.json ($DOCKER_CONFIG or
~/.docker): its credential helpers (`credHelpers`, then `credsStore`, run as
`docker-credential-<suffix> get`), then `auths` (base64 `auth`,
username/password, `identitytoken`). They are looked up at the registry's
first 401, so a registry that asks for none never starts a helper.
`login` stores through the registry's helper when config.json names one,
`logout` erases there and from `auths`.

Transport: https, plain http only for registries in `insecure_registries`
(host or host:port; localhost and 127.0.0.1 by default). Connection errors,
timeouts and 429/500/502/503/504 are retried a few times with backoff; a
blob whose connection drops resumes with a Range request when the server
answers 206, else starts over. Every failure is one ImageError line.

`requests` is imported inside the functions that use it: it costs ~140 ms
and must stay off the runtime's hot path.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable

from hanok.images import archive as _archive
from hanok.images import reference as _reference
from hanok.images.store import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Operation,
    Store,
)
from hanok.runtime.errors import ImageError

ACCEPT = ", ".join((MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST))
MT_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
              "application/vnd.docker.distribution.manifest.v1+prettyjws")
DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
DEFAULT_INSECURE = ("localhost", "127.0.0.1")

# Tunables (tests lower them): attempts per request, first backoff (doubles),
# (connect, read) timeouts in seconds.
ATTEMPTS = 4
BACKOFF = 0.25
TIMEOUT: tuple[float, float] = (10.0, 60.0)
_MANIFEST_LIMIT = 4 << 20
_CHUNK = 1 << 20
_RETRY_STATUS = (429, 500, 502, 503, 504)

Progress = Callable[[str, int, int], None]  # (digest, bytes done, bytes total)


# ------------------------------------------------------------------ credentials
#
# Where docker keeps them, in the order it looks (config.json):
#   credHelpers {registry: suffix}   a helper for one registry
#   credsStore  suffix               the helper for every other registry
#   auths       {registry: entry}    base64 `auth`, username/password or `identitytoken`
# A helper is the program `docker-credential-<suffix>` on PATH: `get` reads the
# server URL on stdin and prints {"ServerURL","Username","Secret"}; `store`
# reads that JSON; `erase` reads the server URL. A failing `get` whose stdout is
# "credentials not found in native keychain" means no credentials, not an error.
# Username "<token>" marks Secret as an identity token (an OAuth2 refresh token).
#
# One difference from docker, on purpose: when the helper has nothing (or is not
# installed), `auths` is still read, so credentials `hanok login` wrote before it
# knew about helpers keep working; docker goes anonymous there.

TOKEN_USERNAME = "<token>"
HELPER_PREFIX = "docker-credential-"
HELPER_NOT_FOUND = "credentials not found in native keychain"
HELPER_TIMEOUT = 60.0  # seconds; a keychain may ask for a passphrase (gpg-agent, pinentry)
OAUTH_CLIENT_ID = "hanok"  # the client_id of identity-token (refresh_token) requests

Credentials = tuple[str, str]  # (username, password), or (TOKEN_USERNAME, identity token)


def docker_config_path(path: str | None = None) -> str:
    """docker's config.json: `path`, else $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    if path:
        return path
    d = os.environ.get("DOCKER_CONFIG")
    if d:
        return os.path.join(d, "config.json")
    return os.path.join(os.path.expanduser("~"), ".docker", "config.json")


def _auth_keys(registry: str) -> list[str]:
    if registry in (DOCKER_HUB, DOCKER_HUB_HOST, "index.docker.io"):
        return [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", DOCKER_HUB_HOST]
    return [registry]


def _key_host(key: str) -> str:
    """`https://host:5000/v1/` -> `host:5000`."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _server_url(registry: str) -> str:
    """The name docker files credentials under (config key, helper ServerURL): the host, Hub's v1 URL."""
    return DOCKER_HUB_AUTH_KEY if registry == DOCKER_HUB else registry


def _read_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read credentials from {path}: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"cannot read credentials from {path}: not a JSON object")
    return doc


def _write_config(path: str, doc: dict) -> None:
    """Replace config.json atomically (tmp + fsync + rename), mode 0600: it may hold passwords."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent="\t") + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _matching_keys(mapping: dict, registry: str) -> list[str]:
    """Keys of `mapping` (auths, credHelpers) that name `registry`: exact spellings first, then by host."""
    wanted = _auth_keys(registry)
    hosts = {_key_host(k) for k in wanted}
    exact = [k for k in wanted if k in mapping]
    return exact + [k for k in mapping if k not in exact and _key_host(k) in hosts]


class _HelperMissing(ImageError):
    """The configured helper is not on PATH: reads fall back to `auths`, writes fail."""


class _Helper:
    """One credential helper program, `docker-credential-<suffix>`, as config.json names it."""

    def __init__(self, suffix: str, origin: str):
        if not suffix or "/" in suffix or suffix in (".", ".."):
            raise ImageError(f"{origin}: {suffix!r} is not a credential helper name")
        self.name = HELPER_PREFIX + suffix
        self.origin = origin  # e.g. "credsStore in /root/.docker/config.json", for messages

    def executable(self) -> str:
        import shutil

        exe = shutil.which(self.name)
        if exe is None:
            raise _HelperMissing(f"credential helper {self.name} ({self.origin}) is not installed or not on PATH")
        return exe

    def run(self, action: str, stdin: str, server: str) -> str | None:
        """stdout of `<helper> action`; None when the helper has no credentials for `server`."""
        import subprocess

        exe = self.executable()
        try:
            r = subprocess.run([exe, action], input=stdin.encode(), capture_output=True, timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ImageError(f"credential helper {self.name} {action} for {server} did not answer "
                             f"within {HELPER_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise ImageError(f"credential helper {self.name} cannot run: {e.strerror or e}") from None
        out = r.stdout.decode(errors="replace").strip()
        if r.returncode == 0:
            return out
        if out == HELPER_NOT_FOUND:
            return None
        said = out or r.stderr.decode(errors="replace").strip()
        said = " ".join(said.split())[:300] or "no output"
        raise ImageError(f"credential helper {self.name} {action} for {server} failed "
                         f"(exit {r.returncode}): {said}")

    def get(self, server: str) -> Credentials | None:
        out = self.run("get", server, server)
        if out is None:
            return None
        try:
            doc = json.loads(out)
            user, secret = doc["Username"], doc["Secret"]
        except (ValueError, TypeError, KeyError):
            raise ImageError(f"credential helper {self.name} get for {server} printed something other than "
                             '{"Username","Secret"} JSON') from None
        if not isinstance(user, str) or not isinstance(secret, str):
            raise ImageError(f"credential helper {self.name} get for {server}: Username and Secret "
                             "must be strings")
        return (user, secret) if secret else None


def _helper_for(doc: dict, registry: str, path: str) -> _Helper | None:
    """The helper config.json assigns to `registry`: its credHelpers entry, else credsStore, else None."""
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key in _matching_keys(helpers, registry):
            if isinstance(helpers[key], str):
                return _Helper(helpers[key], f"credHelpers in {path}")
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return _Helper(store, f"credsStore in {path}")
    return None


def _from_auths(doc: dict, registry: str, path: str) -> Credentials | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    for key in _matching_keys(auths, registry):
        entry = auths[key]
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return TOKEN_USERNAME, str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ImageError(f"{path}: the auth entry for {key} is not base64 of user:password") from None
            if sep:
                return user, password
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
    return None


def _lookup(registry: str, path: str | None) -> tuple[Credentials | None, str]:
    """(credentials or None, why a configured helper was skipped or '') for `registry`."""
    path = docker_config_path(path)
    registry = _registry_of(registry)
    doc = _read_config(path)
    helper = _helper_for(doc, registry, path)
    skipped = ""
    if helper is not None:
        try:
            creds = helper.get(_server_url(registry))
        except _HelperMissing as e:
            skipped = str(e)
        else:
            if creds is not None:
                return creds, ""
    return _from_auths(doc, registry, path), skipped


def credentials(registry: str, path: str | None = None) -> Credentials | None:
    """(username, password) for `registry` from docker's config.json and its credential helpers, or None.

    An identity token comes back as (TOKEN_USERNAME, token), as helpers spell it.
    """
    return _lookup(registry, path)[0]


def login(registry: str, username: str, password: str, config_path: str | None = None, *,
          verify: bool = True, insecure_registries: Iterable[str] = DEFAULT_INSECURE) -> str:
    """Store credentials for `registry`; returns where they went (a helper's name or config.json's path).

    With `verify` the credentials are tried against the registry first (GET
    /v2/ and, for token auth, a token request): wrong ones raise ImageError
    and nothing is written. When config.json names a helper for the registry
    (credHelpers, credsStore) they go to its `store` and any plaintext copy in
    `auths` is removed; a helper that is not installed is an error (never a
    silent fall back to plaintext). Otherwise they go to `auths` (mode 0600).
    """
    path = docker_config_path(config_path)
    registry = _registry_of(registry)
    doc = _read_config(path)
    helper = _helper_for(doc, registry, path)
    if helper is not None:
        helper.executable()  # before the registry is asked: a missing helper fails first
    if verify:
        client = _Client(registry, None, insecure_registries, (username, password))
        try:
            client.check_login()
        finally:
            client.close()
    server = _server_url(registry)
    if helper is not None:
        helper.run("store", json.dumps({"ServerURL": server, "Username": username, "Secret": password}), server)
        if _drop_auths(doc, registry):
            _write_config(path, doc)
        return helper.name
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = doc["auths"] = {}
    auths[server] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write_config(path, doc)
    return path


def _drop_auths(doc: dict, registry: str) -> bool:
    """Remove every `auths` entry for `registry` from `doc`; True when there was one."""
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    keys = _matching_keys(auths, registry)
    for key in keys:
        del auths[key]
    return bool(keys)


def logout(registry: str, config_path: str | None = None) -> list[str]:
    """Forget the credentials for `registry`; returns where they were removed from (empty: there were none).

    Erased from the registry's helper (when one is configured and installed:
    one that is not installed holds nothing) and from every `auths` entry
    that names the registry.
    """
    path = docker_config_path(config_path)
    registry = _registry_of(registry)
    doc = _read_config(path)
    removed = []
    helper = _helper_for(doc, registry, path)
    if helper is not None:
        server = _server_url(registry)
        with contextlib.suppress(_HelperMissing):
            if helper.run("erase", server, server) is not None:
                removed.append(helper.name)
    if _drop_auths(doc, registry):
        _write_config(path, doc)
        removed.append(path)
    return removed


def _registry_of(text: str) -> str:
    """`https://host:5000/` or `host:5000` -> `host:5000`; Docker Hub's aliases -> docker.io."""
    host = _key_host(text.strip())
    if host in ("index.docker.io", DOCKER_HUB_HOST, DOCKER_HUB, ""):
        return DOCKER_HUB
    return host


# ------------------------------------------------------------------ HTTP


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            val = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(val)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def _registry_error(r: object) -> str:
    """The `errors[0]` of a registry's JSON error body, as `CODE: message`, or ''."""
    try:
        doc = r.json()  # type: ignore[attr-defined]
        err = doc["errors"][0]
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    except Exception:
        return ""


class _Cancelled(Exception):
    pass


class _Client:
    """One registry and repository, for one pull: a requests session, auth state, retries."""

    def __init__(self, registry: str, repository: str | None, insecure: Iterable[str],
                 auth: Credentials | None, config: str | None = None, pool_size: int = 10):
        import requests  # noqa: F401 (imported here, off the hot path)

        self.requests = requests
        self.registry = registry
        self.repository = repository
        host = DOCKER_HUB_HOST if registry == DOCKER_HUB else registry
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        insecure = set(insecure)
        scheme = "http" if (host in insecure or hostname in insecure or registry in insecure) else "https"
        self.host = host
        self.root = f"{scheme}://{host}/v2/"
        self.base = f"{self.root}{repository}/" if repository else self.root
        self.config = config
        # resolved at the first 401 (see credentials()): a registry that asks for none starts no helper
        self.creds_lock = threading.Lock()
        self.creds: Credentials | None = auth
        self.creds_known = auth is not None
        self.creds_note = ""  # why a configured helper was skipped, for the 401 message
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "hanok"
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool_size))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.default_scope = f"repository:{repository}:pull" if repository else ""
        self.lock = threading.Lock()
        self.tokens: dict[str, str] = {}      # scope -> bearer token
        self.authz: str | None = None         # the Authorization header in use
        self.requests_made = 0

    def close(self) -> None:
        self.session.close()

    # ---------------------------------------------------------- auth

    def credentials(self) -> Credentials | None:
        with self.creds_lock:
            if not self.creds_known:
                self.creds, self.creds_note = _lookup(self.registry, self.config)
                self.creds_known = True
            return self.creds

    def _unauthorized(self, what: str) -> ImageError:
        note = f" ({self.creds_note})" if self.creds_note else ""
        if self.creds:
            return ImageError(f"unauthorized: {self.registry} rejected the credentials for {what}: "
                              f"check `hanok login {self.registry}`{note}")
        return ImageError(f"unauthorized: {self.registry} requires authentication for {what}: "
                          f"check `hanok login {self.registry}`{note}")

    def _authenticate(self, challenge: str, sent: str | None, what: str) -> None:
        """Answer a 401: set self.authz (basic, or a fresh bearer token)."""
        scheme, params = _parse_challenge(challenge)
        creds = self.credentials()
        with self.lock:
            if self.authz != sent:  # another thread already re-authenticated
                return
            if scheme == "basic":
                if not creds:
                    raise self._unauthorized(what)
                if creds[0] == TOKEN_USERNAME:
                    raise ImageError(f"unauthorized: {self.registry} asks for a password for {what} and the "
                                     f"stored credential is an identity token: check `hanok login {self.registry}`")
                token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
                self.authz = "Basic " + token
                return
            if scheme != "bearer" or not params.get("realm"):
                raise ImageError(f"unauthorized: {self.registry} asks for unsupported authentication "
                                 f"{challenge!r} for {what}")
            scope = params.get("scope", self.default_scope)
            cached = self.tokens.get(scope)
            if cached and "Bearer " + cached != sent:
                self.authz = "Bearer " + cached
                return
            self.tokens[scope] = self._fetch_token(params["realm"], params.get("service"), scope, what, creds)
            self.authz = "Bearer " + self.tokens[scope]

    def _fetch_token(self, realm: str, service: str | None, scope: str, what: str,
                     creds: Credentials | None) -> str:
        """A bearer token from the realm: GET with basic credentials, or an OAuth2 refresh_token POST."""
        requests = self.requests
        refresh_token = creds[1] if creds is not None and creds[0] == TOKEN_USERNAME else None
        identity = refresh_token is not None
        params = {}
        if service:
            params["service"] = service
        if scope:
            params["scope"] = scope
        if refresh_token is not None:
            params.update(grant_type="refresh_token", refresh_token=refresh_token, client_id=OAUTH_CLIENT_ID)
        elif creds:
            params["account"] = creds[0]
        last: Exception | None = None
        for attempt in range(ATTEMPTS):
            try:
                if identity:
                    r = self.session.post(realm, data=params, timeout=TIMEOUT)
                else:
                    r = self.session.get(realm, params=params, auth=creds, timeout=TIMEOUT)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = e
                time.sleep(BACKOFF * 2 ** attempt)
                continue
            with r:
                # an OAuth2 server answers a refresh token it does not accept with 400 invalid_grant
                if r.status_code in (401, 403) or (identity and r.status_code == 400):
                    raise self._unauthorized(what)
                if identity and r.status_code in (404, 405, 501):
                    raise ImageError(f"token server {realm} does not take identity tokens (a POST answered "
                                     f"{r.status_code}) for {what}: check `hanok login {self.registry}`")
                if r.status_code in _RETRY_STATUS:
                    last = ImageError(f"token server {realm} answered {r.status_code}")
                    time.sleep(BACKOFF * 2 ** attempt)
                    continue
                if r.status_code != 200:
                    raise ImageError(f"token server {realm} answered {r.status_code} {r.reason} for {what}")
                try:
                    doc = r.json()
                    token = doc.get("token") or doc.get("access_token")
                except (ValueError, AttributeError):  # not JSON, or JSON but not an object
                    token = None
                if not isinstance(token, str) or not token:
                    raise ImageError(f"token server {realm} sent no token for {what}")
                return token
        raise ImageError(f"cannot get a token from {realm} for {what}: {last}")

    def check_login(self) -> None:
        """GET /v2/ with the credentials (for `login`)."""
        self.request("GET", self.root, what=f"login to {self.registry}", not_found="registry API not found")

    # ---------------------------------------------------------- requests

    def _connection_error(self, e: Exception, what: str, attempts: int) -> ImageError:
        requests = self.requests
        text = str(e)
        if isinstance(e, requests.exceptions.SSLError):
            return ImageError(f"{what}: TLS error talking to {self.host} ({e.__class__.__name__}); "
                              "if it serves plain http, mark it an insecure registry")
        if isinstance(e, requests.Timeout):
            return ImageError(f"{what}: registry {self.host} timed out ({attempts} attempts)")
        if "refused" in text.lower():
            return ImageError(f"{what}: cannot connect to registry {self.host}: connection refused "
                              f"({attempts} attempts)")
        if "Name or service not known" in text or "resolve" in text.lower():
            return ImageError(f"{what}: cannot resolve registry host {self.host}")
        return ImageError(f"{what}: connection to registry {self.host} failed ({attempts} attempts): "
                          f"{e.__class__.__name__}")

    def request(self, method: str, url: str, *, headers: dict | None = None, stream: bool = False,
                what: str, not_found: str) -> object:
        """One request with auth, retries of transient failures and one-line errors."""
        requests = self.requests
        attempts = 0
        reauthed = False
        while True:
            h = dict(headers or {})
            sent = self.authz
            if sent:
                h["Authorization"] = sent
            try:
                self.requests_made += 1
                r = self.session.request(method, url, headers=h, stream=stream, timeout=TIMEOUT)
            except requests.exceptions.SSLError as e:
                raise self._connection_error(e, what, attempts + 1) from None
            except (requests.ConnectionError, requests.Timeout) as e:
                attempts += 1
                if attempts >= ATTEMPTS:
                    raise self._connection_error(e, what, attempts) from None
                time.sleep(BACKOFF * 2 ** (attempts - 1))
                continue
            code = r.status_code
            if code == 401:
                challenge = r.headers.get("WWW-Authenticate", "")
                r.close()
                if reauthed or not challenge:
                    raise self._unauthorized(what)
                reauthed = True
                self._authenticate(challenge, sent, what)
                continue
            if code in _RETRY_STATUS:
                detail = _registry_error(r)
                r.close()
                attempts += 1
                if attempts >= ATTEMPTS:
                    raise ImageError(f"{what}: registry {self.host} answered {code} {r.reason}"
                                     f"{' (' + detail + ')' if detail else ''} after {attempts} attempts")
                delay = BACKOFF * 2 ** (attempts - 1)
                with contextlib.suppress(ValueError, TypeError):
                    delay = max(delay, min(float(r.headers.get("Retry-After", 0)), 10.0))
                time.sleep(delay)
                continue
            if code == 404:
                r.close()
                raise ImageError(not_found)
            if code == 403:
                detail = _registry_error(r)
                r.close()
                raise ImageError(f"denied: {what} on {self.registry}{': ' + detail if detail else ''}")
            if code >= 400 or code < 200:
                detail = _registry_error(r)
                r.close()
                raise ImageError(f"{what}: registry {self.host} answered {code} {r.reason}"
                                 f"{' (' + detail + ')' if detail else ''}")
            return r

    # ---------------------------------------------------------- manifests

    def manifest(self, ref: str, display: str, expected_digest: str | None = None) -> tuple[bytes, str]:
        """(body, media type) of a manifest or index; verified when asked by digest."""
        import urllib3

        what = f"manifest {display}"
        for attempt in range(1, ATTEMPTS + 1):
            r = self.request("GET", f"{self.base}manifests/{ref}", headers={"Accept": ACCEPT}, stream=True,
                             what=what, not_found=f"manifest unknown: {display} not found")
            with r:  # type: ignore[attr-defined]
                try:
                    body = r.raw.read(_MANIFEST_LIMIT + 1, decode_content=True)  # type: ignore[attr-defined]
                    break
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    if attempt == ATTEMPTS:
                        raise ImageError(f"{what}: connection to {self.host} broke {attempt} times: "
                                         f"{e.__class__.__name__}") from None
                time.sleep(BACKOFF * 2 ** (attempt - 1))
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip()  # type: ignore[attr-defined]
        if len(body) > _MANIFEST_LIMIT:
            raise ImageError(f"{what} is larger than {_MANIFEST_LIMIT} bytes")
        from hanok.images.store import digest_of

        got = digest_of(body)
        if expected_digest and got != expected_digest:
            raise ImageError(f"{what}: digest mismatch: expected {expected_digest}, got {got}")
        return body, ctype

    # ---------------------------------------------------------- blobs

    def blob_into(self, store: Store, digest: str, size: int, cancel: threading.Event,
                  progress: Progress | None, op: Operation | None = None) -> bool:
        """Stream a blob into the store (see _BlobReader for dropped connections).

        Returns True when this call created the blob (False: it was there
        already); within an operation `op` the blob is claimed and, if created, its to undo.
        """
        reader = _BlobReader(self, digest, size, cancel, progress)
        try:
            with store.ingest(digest, size, op) as w:
                while True:
                    chunk = reader.read(_CHUNK)
                    if not chunk:
                        break
                    try:
                        w.write(chunk)
                    except OSError as e:  # the store's disk, not the network: no retry
                        raise ImageError(f"blob {digest}: cannot write to the store: {e.strerror or e}") from None
        finally:
            reader.close()
        return w.created


class _BlobReader:
    """A blob from the registry as one stream of bytes, across dropped connections.

    `read(n)` hands out the body as it arrives. When the connection drops or
    ends early, the blob is asked for again with `Range: bytes=<received>-`:
    a 206 from there continues the stream, a full 200 has its first
    <received> bytes skipped. Whoever reads (hashing, the tmp file, the
    extractor) sees one continuous stream and never restarts. Gives up with
    ImageError after ATTEMPTS failures; stops with _Cancelled when `cancel` is set.
    """

    def __init__(self, client: _Client, digest: str, size: int, cancel: threading.Event,
                 progress: Progress | None):
        import urllib3

        self.client = client
        self.digest = digest
        self.size = size
        self.cancel = cancel
        self.progress = progress
        self.url = f"{client.base}blobs/{digest}"
        requests = client.requests
        # what a retry may cure (the store's own disk errors are raised by the writer, not here)
        self.transient = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, EOFError, OSError)
        self.received = 0
        self.finished = False  # the body was read to its end
        self.failures = 0
        self.response: object | None = None
        self.skip = 0  # bytes of a full (non-206) answer we already have

    def close(self) -> None:
        if self.response is not None:
            self.response.close()  # type: ignore[attr-defined]
            self.response = None

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.received}-"} if self.received else {}
        r = self.client.request("GET", self.url, headers=headers, stream=True, what=f"blob {self.digest}",
                                not_found=f"blob unknown: {self.digest} not found in "
                                          f"{self.client.registry}/{self.client.repository}")
        self.skip = 0
        if self.received:
            start = -1
            if r.status_code == 206:  # type: ignore[attr-defined]
                cr = r.headers.get("Content-Range", "")  # type: ignore[attr-defined]
                with contextlib.suppress(ValueError, IndexError):
                    start = int(cr.split(" ", 1)[1].split("-", 1)[0])
            if start != self.received:  # the whole blob again: skip what we have
                if r.status_code != 200:  # type: ignore[attr-defined]
                    r.close()  # type: ignore[attr-defined]
                    raise EOFError(f"unusable answer {r.status_code} to a range request")  # type: ignore[attr-defined]
                self.skip = self.received
        self.response = r

    def read(self, n: int = -1) -> bytes:
        amount = _CHUNK if n is None or n < 0 else min(n, _CHUNK)
        while not self.finished:
            if self.cancel.is_set():
                raise _Cancelled()
            try:
                if self.response is None:
                    self._open()
                data = self.response.raw.read(amount, decode_content=False)  # type: ignore[union-attr]
                if self.skip and data:
                    drop = min(self.skip, len(data))
                    self.skip -= drop
                    data = data[drop:]
                    if not data:
                        continue
                if not data:
                    self.close()
                    if self.received < self.size:
                        raise EOFError(f"connection closed after {self.received} of {self.size} bytes")
                    self.finished = True
                    return b""
            except self.transient as e:
                self.close()
                self.failures += 1
                if self.failures >= ATTEMPTS:
                    raise ImageError(f"blob {self.digest}: download failed after {self.failures} attempts "
                                     f"({self.received} of {self.size} bytes): {e.__class__.__name__}") from None
                time.sleep(BACKOFF * 2 ** (self.failures - 1))
                continue
            self.received += len(data)
            if self.progress is not None:
                self.progress(self.digest, min(self.received, self.size), self.size)
            return data
        return b""


# ------------------------------------------------------------------ pull


def _media_type(doc: dict, header: str) -> str:
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if header in INDEX_TYPES or header in MANIFEST_TYPES:
        return header
    if "manifests" in doc:
        return MT_OCI_INDEX
    return MT_OCI_MANIFEST


def _load_json(body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from None


def pull(store: Store, reference: str | _reference.Reference, *, platform: str | dict | None = None,
         insecure_registries: Iterable[str] = DEFAULT_INSECURE, auth: tuple[str, str] | None = None,
         progress: Progress | None = None, max_workers: int = 3, config_path: str | None = None) -> str:
    """Pull `reference` into `store`; returns the stored image name (canonical form)."""
    ref = reference if isinstance(reference, _reference.Reference) else _reference.parse(reference)
    want = _archive.parse_platform(platform) if isinstance(platform, str) else platform
    display = str(ref)
    client = _Client(ref.registry, ref.repository, insecure_registries, auth, config_path, max_workers)
    try:
        with store.operation() as op:
            return _pull(store, op, client, ref, display, want, progress, max_workers)
    finally:
        client.close()


def _pull(store: Store, op: Operation, client: _Client, ref: _reference.Reference, display: str,
          want: dict | None, progress: Progress | None, max_workers: int) -> str:
    body, ctype = client.manifest(ref.reference, display, ref.digest)
    doc = _load_json(body, f"manifest {display}")
    if not isinstance(doc, dict):
        raise ImageError(f"manifest {display} is not a JSON object")
    mt = _media_type(doc, ctype)
    if mt in MT_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ImageError(f"manifest {display}: Docker schema 1 manifests are not supported")
    if mt in INDEX_TYPES:
        entries = _archive._check_index(doc, f"index {display}")
        try:
            chosen = _archive.select_platform(entries, want, display)
        except ImageError:
            plat = want or _archive.host_platform()
            have = sorted({_archive._platform_str(m["platform"]) for m in entries
                           if isinstance(m.get("platform"), dict)})
            raise ImageError(f"no manifest for {_archive._platform_str(plat)} in {display} "
                             f"(available: {', '.join(have) or 'none'})") from None
        if chosen["mediaType"] not in MANIFEST_TYPES:
            raise ImageError(f"index {display}: entry {chosen['digest']} has unsupported media type "
                             f"{chosen['mediaType']!r}")
        body, ctype = client.manifest(chosen["digest"], f"{display} ({chosen['digest']})", chosen["digest"])
        doc = _load_json(body, f"manifest {chosen['digest']}")
        if isinstance(doc, dict):
            doc.setdefault("mediaType", chosen["mediaType"])
    elif mt not in MANIFEST_TYPES:
        raise ImageError(f"manifest {display}: unknown media type {mt!r}")
    from hanok.images.store import digest_of

    manifest_digest = digest_of(body)
    manifest = _archive._check_manifest(doc, manifest_digest)
    cfg_desc = manifest["config"]
    layers = manifest["layers"]

    if not op.has_blob(cfg_desc["digest"]):
        if cfg_desc["size"] > _MANIFEST_LIMIT:
            raise ImageError(f"image config {cfg_desc['digest']} is larger than {_MANIFEST_LIMIT} bytes")
        client.blob_into(store, cfg_desc["digest"], cfg_desc["size"], threading.Event(), None, op)
    config_bytes = store.read_blob(cfg_desc["digest"])
    config = _archive._check_config(_load_json(config_bytes, f"image config {cfg_desc['digest']}"),
                                    cfg_desc["digest"], len(layers))
    diff_ids = config["rootfs"]["diff_ids"]
    _fetch_layers(store, op, client, layers, diff_ids, progress, max_workers)
    if not op.has_blob(manifest_digest):
        with store.ingest(manifest_digest, len(body), op) as w:
            w.write(body)
    return store.tag(str(ref), manifest_digest)


def _fetch_layers(store: Store, op: Operation, client: _Client, layers: list[dict], diff_ids: list[str],
                  progress: Progress | None, max_workers: int) -> None:
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    cancel = threading.Event()
    todo: dict[str, tuple[dict, str]] = {}
    for desc, diff_id in zip(layers, diff_ids):
        todo.setdefault(desc["digest"], (desc, diff_id))

    def one(desc: dict, diff_id: str) -> None:
        """One layer: whatever of blob and unpacked layer the store lacks, in one pass when both."""
        digest, size = desc["digest"], desc["size"]
        have_blob, have_layer = op.has_blob(digest), op.has_layer(diff_id)
        if have_blob:
            if progress is not None:
                progress(digest, size, size)
            if not have_layer:
                store.unpack_layer(digest, diff_id, op)
        elif have_layer:
            client.blob_into(store, digest, size, cancel, progress, op)
        else:
            reader = _BlobReader(client, digest, size, cancel, progress)
            try:
                store.ingest_layer(reader, digest, size, diff_id, op)  # type: ignore[arg-type]
            finally:
                reader.close()

    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))),
                            thread_name_prefix="hanok-pull") as pool:
        # largest first: the last layer to start should be a short one (layer order does not
        # matter, each is unpacked into its own directory)
        biggest_first = sorted(todo.values(), key=lambda t: -t[0]["size"])
        futures = [pool.submit(one, desc, diff_id) for desc, diff_id in biggest_first]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # KeyboardInterrupt: stop the workers, then unwind
            cancel.set()
            raise
        first = next((f.exception() for f in futures if f.done() and not f.cancelled()
                      and f.exception() is not None and not isinstance(f.exception(), _Cancelled)), None)
        if first is not None:
            cancel.set()
            for f in futures:
                f.cancel()
    if first is not None:
        raise first
