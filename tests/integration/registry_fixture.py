"""A real registry on 127.0.0.1 for the pull tests, plus the small servers around it.

    Registry      Debian's docker-registry (CNCF distribution 2.8), storage in a temp
                  dir, optional htpasswd (basic) or token auth; started and stopped
                  by pid (the system service is never used)
    TokenServer   issues RS256 JWTs the registry trusts (key and cert made by openssl,
                  signed with `openssl dgst`), so bearer auth runs end to end
    Proxy         forwards to a registry, logs every request, and can cut a blob
                  response half-way (with or without honouring Range)
    StubServer    answers every request with a fixed status (500s, hangs)

Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REGISTRY_BIN = "/usr/bin/docker-registry"
TOKEN_ISSUER = "hanok-test-issuer"
TOKEN_SERVICE = "hanok-test-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Registry:
    """docker-registry serving `storage` on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path, storage: Path, auth: dict | None = None):
        self.workdir = workdir
        self.storage = storage
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": os.urandom(16).hex()},
        }
        if auth:
            config["auth"] = auth
        self.config = workdir / "config.yml"
        self.config.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON
        self.log = open(workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def htpasswd_line(user: str, password: str) -> str:
    return subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                          text=True).stdout.strip() + "\n"


# ------------------------------------------------------------------ servers


class HTTPServerThread:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) serving `handler` from a daemon thread until stop()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(HTTPServerThread):
    """GET /token?service=..&scope=.. with basic auth -> {"token": JWT}.

    Valid credentials get what they ask for; anonymous requests get a token
    with no access (as Docker Hub does for private repositories); wrong
    credentials get a 401.
    """

    def __init__(self, workdir: Path, users: dict[str, str]):
        self.users = users
        self.requests: list[dict] = []
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=hanok-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        super().__init__(_TokenHandler)
        self.realm = f"http://{self.host}/token"

    def registry_auth(self) -> dict:
        return {"token": {"realm": self.realm, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
                          "rootcertbundle": str(self.cert)}}

    def issue(self, user: str, scopes: list[str], grant: bool) -> str:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) >= 3 and grant:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode())).encode()
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input,
                             check=True, capture_output=True).stdout
        return signing_input.decode() + "." + _b64url(sig)


class _TokenHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        url = urlparse(self.path)
        query = parse_qs(url.query)
        user = ""
        authz = self.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            user, _, password = base64.b64decode(authz[6:]).decode().partition(":")
            if owner.users.get(user) != password:
                owner.requests.append({"user": user, "ok": False})
                self._send(401, b'{"details":"bad credentials"}')
                return
        owner.requests.append({"user": user, "ok": True, "scope": query.get("scope", [])})
        token = owner.issue(user, query.get("scope", []), grant=bool(user))
        self._send(200, json.dumps({"token": token, "expires_in": 300}).encode())

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Proxy(HTTPServerThread):
    """Forwards to `upstream` (host:port); logs (method, path); can cut or hold blob downloads.

    `drop_blobs`: how many blob GETs (counted over the proxy's life) to cut
    half-way; `honour_range`: forward Range headers (resume) or strip them
    (the client must start over); `gates`: blob digest -> an object whose
    hold() a GET of that blob calls before it is forwarded (a test holds a
    pull at a chosen layer there).
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.log: list[tuple[str, str, str]] = []  # (method, path, range)
        self.drop_blobs = 0
        self.honour_range = True
        self.gates: dict[str, object] = {}  # each with a hold() method
        self.dropped = 0
        self.lock = threading.Lock()
        super().__init__(_ProxyHandler)

    def blob_gets(self) -> list[tuple[str, str, str]]:
        return [e for e in self.log if e[0] == "GET" and "/blobs/" in e[1]]


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._forward("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._forward("HEAD")

    def _forward(self, method: str) -> None:
        owner: Proxy = self.server.owner  # type: ignore[attr-defined]
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        if not owner.honour_range:
            headers.pop("Range", None)
        with owner.lock:
            owner.log.append((method, self.path, self.headers.get("Range", "")))
            drop = method == "GET" and "/blobs/" in self.path and owner.dropped < owner.drop_blobs
            if drop:
                owner.dropped += 1
        gate = owner.gates.get(self.path.rsplit("/", 1)[-1]) if method == "GET" and "/blobs/" in self.path else None
        if gate is not None:
            gate.hold()  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(owner.upstream, timeout=30)
        try:
            conn.request(method, self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        if drop and len(body) > 1:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class StubServer(HTTPServerThread):
    """Every request gets `status` (or no answer at all with hang=True); counts requests."""

    def __init__(self, status: int = 503, hang: bool = False):
        self.status = status
        self.hang = hang
        self.count = 0
        self.release = threading.Event()
        super().__init__(_StubHandler)

    def stop(self) -> None:
        self.release.set()
        super().stop()


class _StubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        owner: StubServer = self.server.owner  # type: ignore[attr-defined]
        owner.count += 1
        if owner.hang:
            owner.release.wait(30)
            return
        body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "stub says no"}]}).encode()
        self.send_response(owner.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
