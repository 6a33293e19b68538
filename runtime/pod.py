"""Pods: a sandbox of shared namespaces plus the containers that join it.

No pause process holds a pod together: its sandbox is a set of *named*
namespaces, each a bind mount of an nsfs file that keeps the namespace alive
without any process (as `ip netns add` does):

    run/netns/<pod id>              the network namespace (netns/network.py: pod IP, veth, ports)
    run/pods/<pod id>/ns/ipc        the IPC namespace (shared memory, semaphores, mqueues)
    run/pods/<pod id>/ns/uts        the UTS namespace (the pod's hostname)

Containers join them through OCI `linux.namespaces[].path`; each keeps its
own pid and mount namespaces (the Kubernetes default). Their cgroups live
under the pod's (`/hanok/pod-<id>/<container id>`), which carries the pod's
memory limit when every container has one (the sum, as the kubelet does).

On disk (`store` = /var/lib/hanok):

    store/pods/<id>/pod.json          what was asked for (written once, last of the sandbox)
    store/pods/<id>/volumes/<name>/   emptyDir volumes, removed with the pod
    store/pods/names/<key> -> <id>    a symlink: creating it with O_EXCL makes (namespace, name) unique

A pod's identity is its Kubernetes (namespace, name), as for the CRI (whose
sandboxes add the attempt to the name: `web.1`). Pods of the namespace
"default" keep the short forms everything used before namespaces counted;
other namespaces prefix `NAMESPACE_` to what is made from the name, and '_'
is in no pod, namespace or container name, so nothing can collide:

                         namespace "default"    namespace "shop"
    pod reference        web (or default/web)   shop/web
    names/ link key      web                    shop_web
    container names      web-app                shop_web-app      (CRI attempt 1: web-app.1, shop_web-app.1)

A reference (`hanok pod inspect|stop|rm|logs REF`, `--pod REF`) is a full id,
NAMESPACE/NAME, a NAME (the pod of that name in "default", as kubectl reads
it, else the one namespace that has it; else a one-line error lists the
qualified names), or an unambiguous id prefix, in that order. So a script
that says `web` keeps meaning default/web when a shop/web appears.

Status is derived, never stored: "ready" while the sandbox's namespaces are
bound, "notready" after `stop` (or a reboot, which empties run/). The pod's
containers are the engine's containers whose options name the pod; the pod
record does not list them, so a CLI killed between creating a container and
updating a list can never make the two disagree.

The first half of this module is pure: Kubernetes Pod manifests and CRI
configs are validated strictly (every error names the offending field) and
mapped to RunOptions; nothing touches the host until they are all valid.
"""
from __future__ import annotations

import errno
import os

from hanok.runtime.bundle import Fields, RunOptions
from hanok.runtime.errors import BadState, Exists, HanokError, InvalidArgument, NotFound, NotSupported

# Starting a pod's container imports this module: so no dataclasses, typing or re at import (~10 ms).
if False:  # typing only
    from collections.abc import Callable
    from typing import Any

    from hanok.runtime.engine import Container, Engine

RECORD = "pod.json"
NSFS_MAGIC = 0x6E736673
SHARED_NAMESPACES = ("ipc", "uts")


class _DnsName:
    """A DNS label (RFC 1123; with dots, a subdomain): lower-case letters, digits and '-' (and '.'),
    alphanumeric at both ends, at most `longest` characters. match() says whether `text` is one."""

    _ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")

    def __init__(self, extra: str, longest: int):
        self.chars, self.longest = self._ALNUM | frozenset(extra), longest

    def match(self, text: str) -> bool:
        return (0 < len(text) <= self.longest and self.chars.issuperset(text)
                and text[0] in self._ALNUM and text[-1] in self._ALNUM)


DNS_LABEL = _DnsName("-", 63)
POD_NAME = _DnsName("-.", 253)
DEFAULT_NAMESPACE = "default"
_HEX = frozenset("0123456789abcdef")


# ====================================================================== names


def qualified_name(namespace: str, name: str) -> str:
    """How a pod is shown and referred to: NAME in the default namespace, NAMESPACE/NAME elsewhere."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"


def _namespace_prefix(namespace: str) -> str:
    """What names made from a pod's name start with: nothing in the default namespace, NAMESPACE_ elsewhere."""
    return "" if namespace == DEFAULT_NAMESPACE else f"{namespace}_"


def container_name(namespace: str, pod_name: str, container: str) -> str:
    """The engine name of a pod's container: `web-app` in the default namespace, `shop_web-app` elsewhere."""
    return f"{_namespace_prefix(namespace)}{pod_name}-{container}"


def _link_key(namespace: str, name: str) -> str:
    """The pod's entry in names/: `web`, or `shop_web` outside the default namespace."""
    return _namespace_prefix(namespace) + name


def _split_link_key(key: str) -> tuple[str, str]:
    """names/ entry -> (namespace, name); the inverse of _link_key."""
    namespace, underscore, name = key.partition("_")
    return (namespace, name) if underscore else (DEFAULT_NAMESPACE, key)


def _namespace_of(meta: dict) -> str:
    """metadata.namespace, checked: it becomes part of file and container names."""
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE  # "": Kubernetes' (and protobuf's) "not set"
    if not DNS_LABEL.match(namespace):
        raise InvalidArgument(f"metadata.namespace: {_shown(namespace)} is not a valid namespace "
                              "(a DNS label: lower-case letters, digits and '-')")
    return namespace


# ====================================================================== quantities

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY = r"^([+]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$"


def parse_quantity(value: object, where: str) -> float:
    """A Kubernetes quantity ("128Mi", "500m", "1", "1Gi", "1e3", or a bare number) -> its value."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidArgument(f"{where}: expected a quantity such as 128Mi, 500m or 1, got {_shown(value)}")
    import re  # manifests only: a container's start does not parse quantities

    match = re.match(_QUANTITY, str(value).strip())
    if not match:
        raise InvalidArgument(f"{where}: {_shown(value)} is not a quantity (e.g. 128Mi, 500m, 1)")
    try:
        amount = _scaled(float(match.group(1)), match.group(2) or "")
    except OverflowError:
        amount = float("inf")
    if not amount < 2.0 ** 63:
        raise InvalidArgument(f"{where}: {_shown(value)} is too large")
    return amount


def _scaled(number: float, suffix: str) -> float:
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exponent = int(suffix[1:])  # 1e3
    if exponent > 30:
        raise OverflowError  # far past 2**63 anyway; and 10**huge would take long to compute
    return number * 10.0 ** exponent


def memory_bytes(value: object, where: str) -> int:
    """A memory quantity in bytes, rounded up as Kubernetes does; zero is refused (no limit is no field)."""
    import math

    size = math.ceil(parse_quantity(value, where))
    if size <= 0:
        raise InvalidArgument(f"{where}: {_shown(value)} must be positive")
    return size


def cpu_cores(value: object, where: str) -> float:
    """A CPU quantity in cores ("500m" -> 0.5); Kubernetes' precision is one millicore."""
    cores = round(parse_quantity(value, where), 3)
    if cores <= 0:
        raise InvalidArgument(f"{where}: {_shown(value)} must be at least 1m")
    return cores


def cpu_shares(cores: float) -> int:
    """The kubelet's cpu request -> cpu.shares: 1024 per core, at least 2."""
    return max(2, int(cores * 1024))


# ====================================================================== strict validation

# A schema is a dict of field -> kind; a kind is one of the type names below,
# a nested schema (an object), or a one-element list [kind] (a list of kind).
# Fields named in REQUIRED[id(schema)] must be present.
STR, INT, BOOL, MAP, QTY, ENUM = "string", "integer", "boolean", "map", "quantity", "enum"
_ARTICLE = {STR: "a string", INT: "an integer", BOOL: "a boolean", MAP: "a map of strings", QTY: "a quantity",
            ENUM: "a name or a number"}


def _shown(value: object) -> str:
    import json

    return json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__


def _snake(key: str) -> str:
    import re

    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


class Schema:
    """The fields of a document's object, by name (a kind each), those required, and whether camelCase
    spellings of snake_case names are accepted (CRI files)."""

    def __init__(self, fields: dict[str, Any], required: tuple[str, ...] = (), camel_ok: bool = False):
        self.fields, self.required, self.camel_ok = fields, required, camel_ok

    def check(self, value: object, where: str) -> dict:
        """The object with its keys in this schema's spelling; InvalidArgument naming the field."""
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where or 'the document'}: expected an object, got {_shown(value)}")
        out: dict = {}
        for key, item in value.items():
            name = key if key in self.fields or not self.camel_ok else _snake(str(key))
            path = f"{where}.{key}" if where else str(key)
            if name not in self.fields:
                raise InvalidArgument(f"{path}: unknown field")
            if item is None:
                continue  # YAML's empty value: the field is absent
            out[name] = _check_kind(self.fields[name], item, path)
        for name in self.required:
            if name not in out:
                raise InvalidArgument(f"{where + '.' if where else ''}{name}: required field is missing")
        return out


def _check_kind(kind: Any, value: object, where: str) -> Any:
    if isinstance(kind, Schema):
        return kind.check(value, where)
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}: expected a list, got {_shown(value)}")
        return [_check_kind(kind[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind == STR and isinstance(value, str):
        return value
    if kind in (INT, ENUM) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == ENUM and isinstance(value, str):  # protobuf enums: crictl writes names or numbers
        return value
    if kind == BOOL and isinstance(value, bool):
        return value
    if kind == QTY:
        parse_quantity(value, where)
        return value
    if kind == MAP and isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str):
                raise InvalidArgument(f"{where}.{k}: expected a string, got {_shown(v)}")
        return dict(value)
    raise InvalidArgument(f"{where}: expected {_ARTICLE[kind]}, got {_shown(value)}")


# ---------------------------------------------------------------- Kubernetes Pod

_K8S_SECURITY = Schema({"runAsUser": INT, "runAsGroup": INT, "runAsNonRoot": BOOL,
                        "readOnlyRootFilesystem": BOOL, "allowPrivilegeEscalation": BOOL, "privileged": BOOL,
                        "capabilities": Schema({"add": [STR], "drop": [STR]})})
_K8S_CONTAINER = Schema({
    "name": STR, "image": STR, "command": [STR], "args": [STR], "workingDir": STR,
    "env": [Schema({"name": STR, "value": STR}, ("name",))],
    "ports": [Schema({"name": STR, "containerPort": INT, "hostPort": INT, "protocol": STR, "hostIP": STR},
                     ("containerPort",))],
    "resources": Schema({"limits": Schema({"memory": QTY, "cpu": QTY}),
                         "requests": Schema({"memory": QTY, "cpu": QTY})}),
    "volumeMounts": [Schema({"name": STR, "mountPath": STR, "readOnly": BOOL}, ("name", "mountPath"))],
    "securityContext": _K8S_SECURITY, "imagePullPolicy": STR,
}, ("name", "image"))
_K8S_POD = Schema({
    "apiVersion": STR, "kind": STR,
    "metadata": Schema({"name": STR, "namespace": STR, "uid": STR, "labels": MAP, "annotations": MAP}, ("name",)),
    "spec": Schema({
        "hostname": STR, "restartPolicy": STR, "containers": [_K8S_CONTAINER],
        "volumes": [Schema({"name": STR, "emptyDir": Schema({"medium": STR, "sizeLimit": QTY}),
                            "hostPath": Schema({"path": STR, "type": STR}, ("path",))}, ("name",))],
        "securityContext": Schema({"runAsUser": INT, "runAsGroup": INT, "runAsNonRoot": BOOL}),
    }, ("containers",)),
}, ("metadata", "spec"))

RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class ContainerPlan(Fields):
    """One container of a pod: its name in the pod, its options (volumes still by volume name)."""

    name: str = ""
    options: RunOptions = None  # type: ignore[assignment]  # always given
    mounts: list[tuple[str, str, bool]] = []                # (volume name, mountPath, readOnly)
    pull: bool = True


class PodPlan(Fields):
    """A validated pod: what the sandbox is made of, and its containers (list and dict defaults are
    copied for each plan: see bundle.Fields)."""

    name: str = ""
    namespace: str = "default"
    uid: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    hostname: str | None = None
    restart_policy: str = "Always"
    ports: list[dict] = []  # {containerPort, hostPort, protocol, hostIP}
    volumes: dict[str, dict] = {}  # name -> {"emptyDir": {}} | {"hostPath": P}
    containers: list[ContainerPlan] = []
    cgroup_parent: str | None = None
    dns: dict[str, list[str]] = {}  # CRI dns_config: servers, searches, options
    log_directory: str | None = None

    def memory_limit(self) -> int | None:
        """The pod cgroup's limit: the containers' limits summed, when every container has one."""
        limits = [c.options.memory for c in self.containers]
        if not limits or any(m is None for m in limits):
            return None
        return sum(int(m) for m in limits)  # type: ignore[arg-type]


def load_document(path: str) -> object:
    """A YAML or JSON file (JSON is YAML; pyyaml is imported only when the file is not JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as e:
        raise InvalidArgument(f"{path}: {e.strerror}") from None
    import json

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        raise NotSupported(f"{path}: reading YAML needs pyyaml (pip install pyyaml); JSON works without it") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidArgument(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def _protocol(value: str, where: str) -> str:
    if value.upper() not in ("TCP", "UDP"):
        raise InvalidArgument(f"{where}: {_shown(value)} is not a protocol (TCP or UDP)")
    return value.lower()


def _port_number(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidArgument(f"{where}: {value} is not a port number (1-65535)")
    return value


def _host_ip(value: str, where: str) -> str:
    """A port's hostIP, checked now (not when the pod starts) and normalized as nat.py publishes it."""
    from hanok.netns import nat

    return nat.check_host_ip(value, f"{where}:")


def _user_of(security: dict, pod_security: dict, where: str) -> str | None:
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
        # the kubelet checks the image's user too; hanok only trusts an explicit uid
        if uid is None:
            raise NotSupported(f"{where}.runAsNonRoot: needs an explicit runAsUser here")
        if uid == 0:
            raise InvalidArgument(f"{where}.runAsNonRoot: runAsUser is 0 (root)")
    if uid is None and gid is None:
        return None
    # a group alone keeps the image's user (":GID", resolved against the image in bundle.image_spec)
    return ("" if uid is None else f"{uid}") + ("" if gid is None else f":{gid}")


def _security_options(security: dict, where: str) -> dict:
    """securityContext -> RunOptions fields (privileged is refused: hanok has no device/cap free-for-all)."""
    if security.get("privileged"):
        raise NotSupported(f"{where}.privileged: privileged containers are not supported")
    caps = security.get("capabilities") or {}
    return {"read_only": bool(security.get("readOnlyRootFilesystem")),
            "no_new_privileges": security.get("allowPrivilegeEscalation") is False,
            "cap_add": list(caps.get("add") or []), "cap_drop": list(caps.get("drop") or [])}


def pod_from_manifest(document: object) -> PodPlan:
    """Validate a Kubernetes Pod manifest and map it to a PodPlan; the first problem, its field named."""
    doc = _K8S_POD.check(document, "")
    if doc.get("kind", "Pod") != "Pod":
        raise InvalidArgument(f"kind: {_shown(doc['kind'])} is not supported (only Pod)")
    meta, spec = doc["metadata"], doc["spec"]
    if not POD_NAME.match(meta["name"]):
        raise InvalidArgument(f"metadata.name: {_shown(meta['name'])} is not a valid pod name "
                              f"(lower case letters, digits, '-' and '.')")
    plan = PodPlan(name=meta["name"], namespace=_namespace_of(meta), uid=meta.get("uid", ""),
                   labels=meta.get("labels", {}), annotations=meta.get("annotations", {}),
                   hostname=spec.get("hostname") or meta["name"][:63],
                   restart_policy=spec.get("restartPolicy", "Always"))
    if not DNS_LABEL.match(plan.hostname or ""):
        raise InvalidArgument(f"spec.hostname: {_shown(plan.hostname)} is not a valid host name")
    if plan.restart_policy not in RESTART_POLICIES:
        raise InvalidArgument(f"spec.restartPolicy: {_shown(plan.restart_policy)} is not one of "
                              f"{', '.join(RESTART_POLICIES)}")
    for i, volume in enumerate(spec.get("volumes", [])):
        where = f"spec.volumes[{i}]"
        if not DNS_LABEL.match(volume["name"]):  # it becomes a directory name: no '/', no '..'
            raise InvalidArgument(f"{where}.name: {_shown(volume['name'])} is not a valid name (a DNS label: "
                                  "lower-case letters, digits and '-')")
        if volume["name"] in plan.volumes:
            raise InvalidArgument(f"{where}.name: duplicate volume name {_shown(volume['name'])}")
        kinds = [k for k in ("emptyDir", "hostPath") if k in volume]
        if len(kinds) != 1:
            raise InvalidArgument(f"{where}: exactly one of emptyDir or hostPath is required")
        if kinds[0] == "hostPath":
            host = volume["hostPath"]["path"]
            if not host.startswith("/") or ":" in host:
                raise InvalidArgument(f"{where}.hostPath.path: {_shown(host)} is not an absolute path without ':'")
            if not os.path.exists(host):
                raise NotFound(f"{where}.hostPath.path: {host} does not exist on the host")
            plan.volumes[volume["name"]] = {"hostPath": host}
        else:
            plan.volumes[volume["name"]] = {"emptyDir": {}}
    if not spec["containers"]:
        raise InvalidArgument("spec.containers: at least one container is required")
    pod_security = spec.get("securityContext", {})
    taken_ports: dict[tuple[int, str], str] = {}
    for i, ctr in enumerate(spec["containers"]):
        where = f"spec.containers[{i}]"
        if any(c.name == ctr["name"] for c in plan.containers):
            raise InvalidArgument(f"{where}.name: duplicate container name {_shown(ctr['name'])}")
        if not DNS_LABEL.match(ctr["name"]):
            raise InvalidArgument(f"{where}.name: {_shown(ctr['name'])} is not a valid container name "
                                  f"(lower case letters, digits and '-')")
        plan.containers.append(_k8s_container(ctr, where, plan, pod_security, taken_ports))
    return plan


def _k8s_container(ctr: dict, where: str, plan: PodPlan, pod_security: dict,
                   taken_ports: dict[tuple[int, str], str]) -> ContainerPlan:
    env = []
    for j, item in enumerate(ctr.get("env", [])):
        if not item["name"] or "=" in item["name"]:
            raise InvalidArgument(f"{where}.env[{j}].name: {_shown(item['name'])} is not a variable name")
        env.append(f"{item['name']}={item.get('value', '')}")
    workdir = ctr.get("workingDir")
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidArgument(f"{where}.workingDir: {_shown(workdir)} is not an absolute path")
    for j, port in enumerate(ctr.get("ports", [])):
        pw = f"{where}.ports[{j}]"
        key = (_port_number(port["containerPort"], f"{pw}.containerPort"),
               _protocol(port.get("protocol", "TCP"), f"{pw}.protocol"))
        entry: dict[str, Any] = {"containerPort": key[0], "protocol": key[1]}
        if key in taken_ports:
            raise InvalidArgument(f"{pw}.containerPort: {key[0]}/{key[1]} is already declared by {taken_ports[key]}")
        taken_ports[key] = pw
        if "hostPort" in port:
            entry["hostPort"] = _port_number(port["hostPort"], f"{pw}.hostPort")
            entry["hostIP"] = _host_ip(port.get("hostIP", ""), f"{pw}.hostIP")
            plan.ports.append(entry)
    resources = ctr.get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    rw = f"{where}.resources"
    memory = memory_bytes(limits["memory"], f"{rw}.limits.memory") if "memory" in limits else None
    reservation = memory_bytes(requests["memory"], f"{rw}.requests.memory") if "memory" in requests else None
    if memory is not None and reservation is not None and reservation > memory:
        raise InvalidArgument(f"{rw}.requests.memory: must not exceed limits.memory")
    cpus = cpu_cores(limits["cpu"], f"{rw}.limits.cpu") if "cpu" in limits else None
    shares = cpu_shares(cpu_cores(requests["cpu"], f"{rw}.requests.cpu")) if "cpu" in requests else None
    mounts = []
    for j, mount in enumerate(ctr.get("volumeMounts", [])):
        mw = f"{where}.volumeMounts[{j}]"
        if mount["name"] not in plan.volumes:
            raise InvalidArgument(f"{mw}.name: no volume named {_shown(mount['name'])} in spec.volumes")
        if not mount["mountPath"].startswith("/") or ":" in mount["mountPath"]:
            raise InvalidArgument(f"{mw}.mountPath: {_shown(mount['mountPath'])} is not an absolute path without ':'")
        mounts.append((mount["name"], mount["mountPath"], bool(mount.get("readOnly"))))
    policy = ctr.get("imagePullPolicy", "IfNotPresent")
    if policy not in PULL_POLICIES:
        raise InvalidArgument(f"{where}.imagePullPolicy: {_shown(policy)} is not one of {', '.join(PULL_POLICIES)}")
    security = ctr.get("securityContext", {})
    options = RunOptions(
        image=ctr["image"], entrypoint=ctr.get("command"), command=ctr.get("args", []), env=env, workdir=workdir,
        user=_user_of(security, pod_security, f"{where}.securityContext"), hostname=plan.hostname, network="pod",
        memory=None if memory is None else str(memory), cpus=cpus, cpu_shares=shares,
        memory_reservation=None if reservation is None else str(reservation),
        labels={**plan.labels, "io.kubernetes.pod.name": plan.name, "io.kubernetes.pod.namespace": plan.namespace,
                "io.kubernetes.container.name": ctr["name"]},
        **_security_options(security, f"{where}.securityContext"))
    return ContainerPlan(name=ctr["name"], options=options, mounts=mounts, pull=policy != "Never")


# ---------------------------------------------------------------- CRI configs

def _value(kind: str) -> Schema:
    return Schema({"value": kind}, camel_ok=True)


_CRI_CAPS = Schema({"add_capabilities": [STR], "drop_capabilities": [STR]}, camel_ok=True)
_CRI_SANDBOX = Schema({
    "metadata": Schema({"name": STR, "uid": STR, "namespace": STR, "attempt": INT}, ("name",), camel_ok=True),
    "hostname": STR, "log_directory": STR,
    "dns_config": Schema({"servers": [STR], "searches": [STR], "options": [STR]}, camel_ok=True),
    "port_mappings": [Schema({"protocol": ENUM, "container_port": INT, "host_port": INT, "host_ip": STR},
                             ("container_port",), camel_ok=True)],
    "labels": MAP, "annotations": MAP,
    "linux": Schema({"cgroup_parent": STR, "sysctls": MAP,
                     "security_context": Schema({
                         "namespace_options": Schema({"network": INT, "pid": INT, "ipc": INT}, camel_ok=True),
                         "privileged": BOOL, "run_as_user": _value(INT), "run_as_group": _value(INT),
                         "readonly_rootfs": BOOL, "seccomp_profile_path": STR}, camel_ok=True)},
                    camel_ok=True),
}, ("metadata",), camel_ok=True)
_CRI_CONTAINER = Schema({
    "metadata": Schema({"name": STR, "attempt": INT}, ("name",), camel_ok=True),
    "image": Schema({"image": STR, "annotations": MAP}, ("image",), camel_ok=True),
    "command": [STR], "args": [STR], "working_dir": STR,
    "envs": [Schema({"key": STR, "value": STR}, ("key",), camel_ok=True)],
    "mounts": [Schema({"container_path": STR, "host_path": STR, "readonly": BOOL, "propagation": INT,
                       "selinux_relabel": BOOL}, ("container_path", "host_path"), camel_ok=True)],
    "labels": MAP, "annotations": MAP, "log_path": STR, "tty": BOOL, "stdin": BOOL, "stdin_once": BOOL,
    "linux": Schema({
        "resources": Schema({"memory_limit_in_bytes": INT, "cpu_period": INT, "cpu_quota": INT, "cpu_shares": INT,
                             "oom_score_adj": INT}, camel_ok=True),
        "security_context": Schema({"run_as_user": _value(INT), "run_as_group": _value(INT),
                                    "readonly_rootfs": BOOL, "no_new_privs": BOOL, "privileged": BOOL,
                                    "capabilities": _CRI_CAPS}, camel_ok=True),
    }, camel_ok=True),
}, ("metadata", "image"), camel_ok=True)
_POD_NAMESPACE = 0  # CRI NamespaceMode POD; CONTAINER = 1, NODE = 2


def _attempt_name(name: str, attempt: int) -> str:
    """A kubelet re-creates a sandbox or container with attempt+1 before removing the old one:
    attempts after the first get their own name (`web-app.1`), the first keeps the plain one."""
    if type(attempt) is not int or attempt < 0:
        raise InvalidArgument(f"metadata.attempt: {_shown(attempt)} must be a non-negative integer")
    return name if attempt == 0 else f"{name}.{attempt}"


def pod_from_sandbox_config(document: object) -> PodPlan:
    """A CRI PodSandboxConfig (crictl's JSON: snake_case, camelCase too) -> a PodPlan without containers."""
    doc = _CRI_SANDBOX.check(document, "")
    meta = doc["metadata"]
    if not POD_NAME.match(meta["name"]):
        raise InvalidArgument(f"metadata.name: {_shown(meta['name'])} is not a valid pod name "
                              f"(lower case letters, digits, '-' and '.')")
    linux = doc.get("linux", {})
    security = linux.get("security_context", {})
    if security.get("privileged"):
        raise NotSupported("linux.security_context.privileged: privileged sandboxes are not supported")
    modes = security.get("namespace_options", {})
    for kind in ("network", "ipc"):
        if modes.get(kind, _POD_NAMESPACE) != _POD_NAMESPACE:
            raise NotSupported(f"linux.security_context.namespace_options.{kind}: only POD (0) is supported")
    if modes.get("pid", 1) != 1:
        raise NotSupported("linux.security_context.namespace_options.pid: only CONTAINER (1) is supported")
    plan = PodPlan(name=_attempt_name(meta["name"], meta.get("attempt", 0)), namespace=_namespace_of(meta),
                   uid=meta.get("uid", ""), labels=doc.get("labels", {}), annotations=doc.get("annotations", {}),
                   hostname=doc.get("hostname") or meta["name"][:63], cgroup_parent=linux.get("cgroup_parent"),
                   log_directory=doc.get("log_directory"))
    if not DNS_LABEL.match(plan.hostname or ""):
        raise InvalidArgument(f"hostname: {_shown(plan.hostname)} is not a valid host name")
    if linux.get("sysctls"):
        raise NotSupported("linux.sysctls: sandbox sysctls are not supported")
    plan.dns = _dns_config(doc.get("dns_config", {}))
    for i, port in enumerate(doc.get("port_mappings", [])):
        where = f"port_mappings[{i}]"
        protocol = port.get("protocol", 0)
        entry = {"containerPort": _port_number(port["container_port"], f"{where}.container_port"),
                 "protocol": _protocol({0: "TCP", 1: "UDP"}.get(protocol, str(protocol)),  # type: ignore[call-overload]
                                       f"{where}.protocol")}
        if port.get("host_port"):
            entry["hostPort"] = _port_number(port["host_port"], f"{where}.host_port")
            entry["hostIP"] = _host_ip(port.get("host_ip", ""), f"{where}.host_ip")
            plan.ports.append(entry)
    return plan


def _dns_config(config: dict) -> dict[str, list[str]]:
    """CRI dns_config, checked: nameservers must be IP addresses, nothing may break resolv.conf's lines."""
    import ipaddress

    for i, server in enumerate(config.get("servers", [])):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"dns_config.servers[{i}]: {_shown(server)} is not an IP address") from None
    for key in ("searches", "options"):
        for i, item in enumerate(config.get(key, [])):
            if not item or any(ch.isspace() for ch in item):
                raise InvalidArgument(f"dns_config.{key}[{i}]: {_shown(item)} must be one word")
    return {key: list(config[key]) for key in ("servers", "searches", "options") if config.get(key)}


def resolv_conf(dns: dict[str, list[str]]) -> str:
    """The resolv.conf of a pod's containers from its CRI dns_config."""
    lines = [f"nameserver {server}" for server in dns.get("servers", [])]
    if dns.get("searches"):
        lines.append("search " + " ".join(dns["searches"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    return "\n".join(lines) + "\n"


def container_from_cri_config(document: object, pod: dict) -> tuple[RunOptions, str | None]:
    """A CRI ContainerConfig for the pod recorded as `pod` -> (RunOptions, its log path or None)."""
    doc = _CRI_CONTAINER.check(document, "")
    name = doc["metadata"]["name"]
    if not DNS_LABEL.match(name):
        raise InvalidArgument(f"metadata.name: {_shown(name)} is not a valid container name")
    linux = doc.get("linux", {})
    res = linux.get("resources", {})
    security = linux.get("security_context", {})
    if security.get("privileged"):
        raise NotSupported("linux.security_context.privileged: privileged containers are not supported")
    env = []
    for i, item in enumerate(doc.get("envs", [])):
        if not item["key"] or "=" in item["key"]:
            raise InvalidArgument(f"envs[{i}].key: {_shown(item['key'])} is not a variable name")
        env.append(f"{item['key']}={item.get('value', '')}")
    volumes = []
    for i, mount in enumerate(doc.get("mounts", [])):
        for key in ("container_path", "host_path"):
            if not mount[key].startswith("/"):
                raise InvalidArgument(f"mounts[{i}].{key}: {_shown(mount[key])} is not an absolute path")
        if ":" in mount["host_path"] + mount["container_path"]:
            raise InvalidArgument(f"mounts[{i}]: paths with ':' are not supported")
        volumes.append(f"{mount['host_path']}:{mount['container_path']}:{'ro' if mount.get('readonly') else 'rw'}")
    cpus = None
    if res.get("cpu_quota", 0) > 0:
        cpus = res["cpu_quota"] / (res.get("cpu_period") or 100_000)
    uid = (security.get("run_as_user") or {}).get("value")
    gid = (security.get("run_as_group") or {}).get("value")
    # ":GID" (a group alone) keeps the image's user
    user = (None if uid is None and gid is None
            else ("" if uid is None else f"{uid}") + ("" if gid is None else f":{gid}"))
    caps = security.get("capabilities", {})
    workdir = doc.get("working_dir") or None
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidArgument(f"working_dir: {_shown(workdir)} is not an absolute path")
    options = RunOptions(
        image=doc["image"]["image"], entrypoint=doc.get("command") or None, command=doc.get("args", []), env=env,
        workdir=workdir, user=user, hostname=pod["hostname"], volumes=volumes,
        name=_attempt_name(container_name(pod.get("namespace") or DEFAULT_NAMESPACE, pod["name"], name),
                           doc["metadata"].get("attempt", 0)),
        network="pod", memory=str(res["memory_limit_in_bytes"]) if res.get("memory_limit_in_bytes") else None,
        cpus=cpus, cpu_shares=res.get("cpu_shares") or None, read_only=bool(security.get("readonly_rootfs")),
        no_new_privileges=bool(security.get("no_new_privs")), cap_add=list(caps.get("add_capabilities", [])),
        cap_drop=list(caps.get("drop_capabilities", [])), tty=bool(doc.get("tty")),
        labels={**doc.get("labels", {}), "io.kubernetes.container.name": name}, annotations=doc.get("annotations", {}),
        pod=pod["id"])
    log_path = doc.get("log_path")
    if log_path is not None:
        if not pod.get("logDirectory"):
            raise InvalidArgument("log_path: the sandbox has no log_directory to put it in")
        log_path = os.path.normpath(os.path.join(pod["logDirectory"], log_path))
        if not log_path.startswith(pod["logDirectory"].rstrip("/") + "/"):
            raise InvalidArgument(f"log_path: {_shown(doc['log_path'])} leaves the sandbox's log_directory")
    return options, log_path


# ====================================================================== the sandbox on the host


def _shared_dir(path: str) -> None:
    """mount --make-shared DIR (bound on itself first): unmounts of namespace files reach copies of /run."""
    from hanok.netns import namespace

    namespace.make_dir_shared(path)


def _is_nsfs(path: str) -> bool:
    from hanok.runtime import syscalls

    try:
        return syscalls.fs_type(path) == NSFS_MAGIC
    except OSError:
        return False


def _bind_namespaces(ns_dir: str, hostname: str) -> None:
    """New IPC and UTS namespaces, the host name set, bound at ns_dir/{ipc,uts}.

    As netns/namespace.py does for the network: the calling *thread* unshares,
    binds /proc/thread-self/ns/* onto the files and setns()es back, which costs
    microseconds and moves no other thread (forking a helper costs milliseconds).
    """
    from hanok.runtime import explain, syscalls

    targets = {kind: os.path.join(ns_dir, kind) for kind in SHARED_NAMESPACES}
    for target in targets.values():
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    explain.step(f"unshare --ipc={targets['ipc']} --uts={targets['uts']} hostname {hostname}",
                 "the pod's IPC and UTS namespaces, kept alive by bind mounts, not by a pause process")
    homes = {kind: os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in SHARED_NAMESPACES}
    try:
        syscalls.unshare(syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS)
        try:
            syscalls.sethostname(hostname)
            for kind, target in targets.items():
                syscalls.mount(f"/proc/thread-self/ns/{kind}", target, None, syscalls.MS_BIND)
        finally:
            syscalls.setns(homes["ipc"], syscalls.CLONE_NEWIPC)
            syscalls.setns(homes["uts"], syscalls.CLONE_NEWUTS)
    finally:
        for fd in homes.values():
            os.close(fd)


def _unbind_namespaces(ns_dir: str) -> None:
    """Unmount and remove the IPC/UTS namespace files; what is gone already is fine."""
    from hanok.runtime import explain, syscalls

    for kind in SHARED_NAMESPACES:
        target = os.path.join(ns_dir, kind)
        if not os.path.lexists(target):
            continue
        explain.step(f"umount {target} && rm {target}", f"release the pod's {kind} namespace")
        try:
            syscalls.umount2(target, syscalls.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise HanokError(f"cannot unmount {target}: {e.strerror}") from None
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(ns_dir)
    except (FileNotFoundError, OSError):
        pass


class Pod:
    """One pod's files, read on demand."""

    def __init__(self, pods: "Pods", pod_id: str):
        self.pods = pods
        self.id = pod_id
        self.dir = os.path.join(pods.pods_dir, pod_id)
        self._record: dict | None = None

    @property
    def record(self) -> dict:
        if self._record is None:
            from hanok.runtime.engine import load_record

            self._record = load_record(os.path.join(self.dir, RECORD), "pod", self.id)
        return self._record

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace (records always hold one; "default" when the manifest had none)."""
        return self.record.get("namespace") or DEFAULT_NAMESPACE

    @property
    def ref(self) -> str:
        """How messages name the pod and how a person refers to it: NAME or NAMESPACE/NAME."""
        return qualified_name(self.namespace, self.name)

    def container_name(self, container: str) -> str:
        """The engine name of this pod's container called `container` in the manifest."""
        return container_name(self.namespace, self.name, container)

    @property
    def ns_dir(self) -> str:
        return os.path.join(self.pods.run_pods_dir, self.id, "ns")

    def namespace_paths(self) -> dict[str, str]:
        """OCI namespace type -> the path containers of this pod join."""
        from hanok.netns import network

        return {"network": network.netns_path(self.pods.engine.run_root, self.id),
                "ipc": os.path.join(self.ns_dir, "ipc"), "uts": os.path.join(self.ns_dir, "uts")}

    def ready(self) -> bool:
        return all(_is_nsfs(p) for p in self.namespace_paths().values())

    @property
    def cgroup_path(self) -> str:
        return self.record["cgroupParent"]

    def containers(self) -> list["Container"]:
        out = []
        for c in self.pods.engine.containers():
            try:
                if c.record["options"].get("pod") == self.id:
                    out.append(c)
            except HanokError:
                pass
        return out

    def _name_prefixes(self) -> tuple[str, str]:
        # a pod made before namespaces were part of names called its containers POD-CONTAINER everywhere
        return self.container_name(""), f"{self.name}-"

    def short_name(self, c: "Container") -> str:
        """The name a container of this pod has in its manifest (`app` of `web-app` or `shop_web-app`)."""
        return next((c.name[len(p):] for p in self._name_prefixes() if c.name.startswith(p)), c.name)

    def member(self, container: str) -> "Container":
        """This pod's container called `container` in its manifest; NotFound if there is none."""
        names = {prefix + container for prefix in self._name_prefixes()}
        found = [c for c in self.containers() if c.name in names]
        if not found:
            raise NotFound(f"pod {self.ref} has no container {container}")
        return found[0]


class Pods:
    """hanok's pods under one engine's store and run directory."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.pods_dir = os.path.join(engine.store_root, "pods")
        self.names_dir = os.path.join(self.pods_dir, "names")
        self.run_pods_dir = os.path.join(engine.run_root, "pods")

    # ------------------------------------------------------------ lookup

    def ids(self) -> list[str]:
        from hanok.runtime.engine import record_ids

        return record_ids(self.pods_dir, RECORD)

    def all(self) -> list[Pod]:
        return [Pod(self, pid) for pid in self.ids()]

    def get(self, ref: str) -> Pod:
        """By full id, NAMESPACE/NAME, NAME (default's, else the only one), or an unambiguous id prefix.

        A full id is tried first: it is what the engine passes for every
        container start (one stat, no directory listing).
        """
        if not ref:
            raise InvalidArgument("a pod name or id is required")
        # all hex (and so no '/' or '..' that would leave pods/) before it becomes a path
        if len(ref) == 64 and _HEX.issuperset(ref) and self._recorded(ref):
            return Pod(self, ref)
        self._migrate_legacy_links()
        if "/" in ref:
            namespace, _, name = ref.partition("/")
            # checked before they become a path: `../x` must not reach readlink
            pod_id = (self._linked(_link_key(namespace, name))
                      if DNS_LABEL.match(namespace) and POD_NAME.match(name) else None)
            if pod_id is None:
                raise NotFound(f"no such pod: {ref}")
            return Pod(self, pod_id)
        pod_id = self._linked(_link_key(DEFAULT_NAMESPACE, ref)) if POD_NAME.match(ref) else None
        if pod_id is not None:
            return Pod(self, pod_id)
        named = self._named(ref)
        if len(named) == 1:
            return Pod(self, named[0][1])
        if named:
            listed = ", ".join(f"{namespace}/{ref}" for namespace, _ in named)
            raise InvalidArgument(f'pod name "{ref}" is ambiguous: {listed} (give NAMESPACE/NAME or the id)')
        from hanok.runtime.engine import id_by_prefix

        return Pod(self, id_by_prefix(ref, "pod", self.pods_dir, RECORD))

    _LEGACY_DONE = ".namespaced"  # in names/: the links of older pods have been given their namespace

    def _migrate_legacy_links(self) -> None:
        """Once per store: older hanok linked names/NAME for a pod of any namespace; such a link
        of a pod outside "default" moves to its namespaced key (NAMESPACE_NAME), so that
        NAMESPACE/NAME finds it and a plain NAME no longer takes it for default's. (Its
        containers keep their older names: `pod logs -c` knows both forms.)"""
        from hanok.runtime.engine import name_lock

        if os.path.exists(os.path.join(self.names_dir, self._LEGACY_DONE)) or not os.path.isdir(self.names_dir):
            return
        with name_lock(self.names_dir):
            for key in os.listdir(self.names_dir):
                if key.startswith(".") or "_" in key:
                    continue
                pod_id = self._linked(key)
                if pod_id is None:
                    continue
                namespace = Pod(self, pod_id).namespace
                target = os.path.join(self.names_dir, _link_key(namespace, key))
                if namespace != DEFAULT_NAMESPACE and not os.path.lexists(target):
                    os.rename(os.path.join(self.names_dir, key), target)
            with open(os.path.join(self.names_dir, self._LEGACY_DONE), "w"):
                pass

    def _recorded(self, pod_id: str) -> bool:
        """A pod with this id exists (its record is written last: a sandbox being made does not count)."""
        return os.path.isfile(os.path.join(self.pods_dir, pod_id, RECORD))

    def _linked(self, key: str) -> str | None:
        """The id names/<key> points to, when that pod exists."""
        try:
            pod_id = os.readlink(os.path.join(self.names_dir, key))
        except OSError:
            return None
        return pod_id if self._recorded(pod_id) else None

    def _named(self, name: str) -> list[tuple[str, str]]:
        """(namespace, id) of every existing pod called `name`, by namespace."""
        try:
            keys = os.listdir(self.names_dir)
        except FileNotFoundError:
            return []
        found = []
        for key in keys:
            namespace, key_name = _split_link_key(key)
            if key_name == name:
                pod_id = self._linked(key)
                if pod_id is not None:
                    found.append((namespace, pod_id))
        return sorted(found)

    def live_ids(self) -> set[str]:
        """Pods whose sandbox is up: their network endpoints are not garbage."""
        return {p.id for p in self.all() if p.ready()}

    # ------------------------------------------------------------ create

    def _claim_name(self, namespace: str, name: str, pod_id: str) -> str:
        """Take (namespace, name) for the pod and make its directory, under the names lock
        (engine.claim_link); the names/ entry taken."""
        from hanok.runtime.engine import claim_link, name_lock

        key = _link_key(namespace, name)
        self._migrate_legacy_links()
        with name_lock(self.names_dir):
            if not claim_link(self.names_dir, key, pod_id, self.pods_dir):
                owner = os.readlink(os.path.join(self.names_dir, key))
                raise Exists(f'the pod name "{qualified_name(namespace, name)}" is already in use by pod {owner[:12]}')
            os.mkdir(os.path.join(self.pods_dir, pod_id), 0o700)
        return key

    def create_sandbox(self, plan: PodPlan, network: str = "bridge") -> Pod:
        """The pod's namespaces, cgroup, network endpoint, volumes and record; all undone on failure."""
        from hanok import cgroups
        from hanok.netns import nat
        from hanok.netns import network as netmod
        from hanok.runtime import jsonio, state

        ports = [nat.PortMapping(host_port=p["hostPort"], container_port=p["containerPort"], protocol=p["protocol"],
                                 host_ip=p.get("hostIP") or "") for p in plan.ports]
        if network == "host":
            raise NotSupported("--network host: a pod always has its own network namespace")
        if network != "none":
            netmod.get_network(self.engine.store_root, netmod.DEFAULT_NETWORK if network == "bridge" else network)
        elif ports:
            raise InvalidArgument("hostPort needs a bridge network, not --network none")
        pod_id = os.urandom(32).hex()
        pod_dir = os.path.join(self.pods_dir, pod_id)
        undo: list[Callable[[], object]] = []
        try:
            self.engine.store.prepare()
            os.makedirs(self.pods_dir, exist_ok=True)
            link = os.path.join(self.names_dir, self._claim_name(plan.namespace, plan.name, pod_id))
            undo.append(lambda: os.unlink(link))
            undo.append(lambda: _rmtree(pod_dir))
            # a CRI cgroup_parent is the pod's cgroup (its containers go right under it, as
            # with containerd); it may be the node agent's: see _destroy_cgroup
            cgroup_path = plan.cgroup_parent or f"/{cgroups.DEFAULT_PARENT}/pod-{pod_id}"
            cgroup = cgroups.manager(cgroup_path, pod_id)
            undo.append(lambda: _destroy_cgroup(cgroup))
            cgroup.create()
            limit = plan.memory_limit()
            if limit is not None:
                cgroup.apply({"memory": {"limit": limit}})
            ns_dir = os.path.join(self.run_pods_dir, pod_id, "ns")
            os.makedirs(ns_dir, mode=0o755, exist_ok=True)
            _shared_dir(self.run_pods_dir)
            undo.append(lambda: os.rmdir(os.path.dirname(ns_dir)))  # runs last: after the unbind below
            undo.append(lambda: os.rmdir(ns_dir))
            undo.append(lambda: _unbind_namespaces(ns_dir))
            _bind_namespaces(ns_dir, plan.hostname or plan.name)
            mode = "none" if network == "none" else "bridge"
            undo.append(lambda: netmod.teardown(self.engine.store_root, self.engine.run_root, pod_id))
            net = netmod.setup(self.engine.store_root, self.engine.run_root, pod_id, mode=mode,
                               network=netmod.DEFAULT_NETWORK if network in ("bridge", "none") else network,
                               ports=ports, hostname=plan.hostname)
            for name, volume in plan.volumes.items():
                if "emptyDir" in volume:
                    os.makedirs(os.path.join(pod_dir, "volumes", name), 0o777)
                    os.chmod(os.path.join(pod_dir, "volumes", name), 0o777)  # as the kubelet makes them
            if plan.log_directory:
                os.makedirs(plan.log_directory, 0o755, exist_ok=True)
            record = {"id": pod_id, "name": plan.name, "namespace": plan.namespace, "uid": plan.uid,
                      "labels": plan.labels, "annotations": plan.annotations, "hostname": plan.hostname,
                      "restartPolicy": plan.restart_policy, "created": state.rfc3339_now(), "network": net,
                      "cgroupParent": cgroup_path, "cgroupCreated": cgroup.created, "memoryLimit": limit,
                      "ports": plan.ports,
                      "volumes": plan.volumes, "logDirectory": plan.log_directory, "dnsConfig": plan.dns}
            state.write_atomic(os.path.join(pod_dir, RECORD), jsonio.dumps(record).encode(), 0o644)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except (HanokError, OSError):
                    pass
            raise
        return Pod(self, pod_id)

    def volume_sources(self, pod: Pod) -> dict[str, str]:
        """Volume name -> host directory for the pod's containers."""
        out = {}
        for name, volume in (pod.record.get("volumes") or {}).items():
            out[name] = volume["hostPath"] if "hostPath" in volume else os.path.join(pod.dir, "volumes", name)
        return out

    def create_container(self, pod: Pod, options: RunOptions, pull: bool = True,
                         log_path: str | None = None) -> "Container":
        """An engine container in the pod (its namespaces, cgroup and hostname); not started.

        `log_path` (CRI): where the node agent reads the log; a symlink to the
        container's CRI-format log (rotation renames behind the same name).
        """
        if not pod.ready():
            raise BadState(f"pod {pod.ref} is not ready (stopped): remove it and run it again")
        options.pod = pod.id
        options.network = "pod"
        options.hostname = pod.record["hostname"]
        c = self.engine.create(options, pull=pull)
        if log_path is not None:
            from hanok.runtime.engine import LOG

            try:
                os.makedirs(os.path.dirname(log_path), 0o755, exist_ok=True)
                os.symlink(c.path(LOG), log_path)
            except OSError as e:
                try:
                    self.engine.remove(c.id, force=True)
                except HanokError:
                    pass
                raise InvalidArgument(f"log_path {log_path}: {e.strerror}") from None
        return c

    def run(self, plan: PodPlan, network: str = "bridge") -> tuple[Pod, list["Container"]]:
        """Sandbox, then every container created and started (detached, under monitors).

        A failure half way removes everything made: containers, namespaces,
        network endpoint, cgroup, volumes and the record.
        """
        for cp in plan.containers:  # the images first: a missing one fails before anything is made
            self.engine.resolve_image(cp.options.image, pull=cp.pull)
        pod = self.create_sandbox(plan, network)
        made: list[Container] = []
        try:
            sources = self.volume_sources(pod)
            for cp in plan.containers:
                options = cp.options.replace(name=container_name(plan.namespace, plan.name, cp.name), volumes=[
                    f"{sources[vol]}:{path}:{'ro' if ro else 'rw'}" for vol, path, ro in cp.mounts])
                made.append(self.create_container(pod, options, pull=cp.pull))
            for c in made:
                self.engine.start(c)
        except BaseException:
            try:
                self.remove(pod.id, force=True)
            except (HanokError, OSError):
                pass
            raise
        return pod, made

    # ------------------------------------------------------------ stop / rm

    def stop(self, ref: str, timeout: float | None = None) -> Pod:
        """StopPodSandbox: every container stopped, then the sandbox's namespaces and network released."""
        pod = self.get(ref)
        self._stop_containers(pod, timeout)
        self._release_sandbox(pod)
        return pod

    def _stop_containers(self, pod: Pod, timeout: float | None) -> None:
        import threading

        errors: list[HanokError] = []

        def stop(c: "Container") -> None:
            try:
                self.engine.stop(c.id, timeout)
            except NotFound:
                pass
            except HanokError as e:
                errors.append(e)

        threads = [threading.Thread(target=stop, args=(c,)) for c in pod.containers()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _release_sandbox(self, pod: Pod) -> None:
        """Network endpoint, IPC and UTS namespaces (idempotent)."""
        from hanok.netns import network

        network.teardown(self.engine.store_root, self.engine.run_root, pod.id)
        _unbind_namespaces(pod.ns_dir)
        try:
            os.rmdir(os.path.dirname(pod.ns_dir))
        except OSError:
            pass

    def remove(self, ref: str, force: bool = False) -> Pod:
        """The containers (running ones only with `force`), the sandbox, cgroup, volumes and record."""
        from hanok import cgroups

        pod = self.get(ref)
        containers = pod.containers()
        running = sorted(c.name for c in containers if c.status()["running"])
        if running and not force:
            raise BadState(f"cannot remove pod {pod.ref}: containers {', '.join(running)} are running "
                           f"(stop it first, or use -f)")
        for c in containers:
            try:
                self.engine.remove(c.id, force=True)
            except NotFound:
                pass
        self._release_sandbox(pod)
        cgroup = cgroups.manager(pod.cgroup_path, pod.id)
        _destroy_cgroup(cgroup, pod.record.get("cgroupCreated") or [], raise_errors=True)
        link = os.path.join(self.names_dir, _link_key(pod.namespace, pod.name))
        try:
            if os.readlink(link) == pod.id:
                os.unlink(link)
        except OSError:
            pass
        os.unlink(os.path.join(pod.dir, RECORD))  # from here on the pod does not exist
        _rmtree(pod.dir)
        return pod

    # ------------------------------------------------------------ queries

    def summary(self, pod: Pod) -> dict:
        """The stable JSON of `hanok pod ls --json` (documented in the README)."""
        rec = pod.record
        containers = [{"id": c.id, "name": c.name, "state": c.status()["status"]} for c in pod.containers()]
        return {"id": pod.id, "name": rec["name"], "namespace": rec["namespace"], "uid": rec["uid"],
                "state": "ready" if pod.ready() else "notready", "created": rec["created"],
                "ip": (rec.get("network") or {}).get("ip"), "hostname": rec["hostname"],
                "labels": rec["labels"], "annotations": rec["annotations"], "containers": containers}

    def inspect(self, ref: str) -> dict:
        pod = self.get(ref)
        rec = pod.record
        return {**self.summary(pod), "restartPolicy": rec["restartPolicy"], "network": rec["network"],
                "namespaces": pod.namespace_paths(), "cgroupParent": rec["cgroupParent"],
                "memoryLimit": rec.get("memoryLimit"), "ports": rec.get("ports") or [],
                "volumes": self.volume_sources(pod), "logDirectory": rec.get("logDirectory")}

    # ------------------------------------------------------------ gc

    def gc(self, grace_seconds: float = 60.0) -> dict:
        """Half-made pods: directories without a record, name links to nothing, namespaces of no pod,
        and the sandboxes of recorded pods whose namespaces a reboot (or a crash) took away."""
        import time

        report: dict[str, list[str]] = {"pods": [], "podNames": [], "podNamespaces": []}
        now = time.time()
        known = set(self.ids())
        try:
            entries = os.listdir(self.pods_dir)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            path = os.path.join(self.pods_dir, entry)
            if len(entry) == 64 and entry not in known and now - os.lstat(path).st_mtime > grace_seconds:
                from hanok import cgroups

                _unbind_namespaces(os.path.join(self.run_pods_dir, entry, "ns"))
                try:
                    os.rmdir(os.path.join(self.run_pods_dir, entry))
                except OSError:
                    pass
                try:
                    _destroy_cgroup(cgroups.manager(f"/{cgroups.DEFAULT_PARENT}/pod-{entry}", entry))
                except HanokError:
                    pass
                _rmtree(path)
                report["pods"].append(entry)
        from hanok.runtime.engine import remove_dangling_links

        report["podNames"] = remove_dangling_links(self.names_dir, self.pods_dir, RECORD, grace_seconds)
        try:
            run_entries = os.listdir(self.run_pods_dir)
        except FileNotFoundError:
            run_entries = []
        for entry in run_entries:
            path = os.path.join(self.run_pods_dir, entry)
            if entry in known or not os.path.isdir(path) or now - os.lstat(path).st_mtime <= grace_seconds:
                continue
            _unbind_namespaces(os.path.join(path, "ns"))
            try:
                os.rmdir(path)
            except OSError:
                pass
            report["podNamespaces"].append(entry)
        for pod in self.all():
            # a recorded pod missing part of its sandbox is not ready: release the rest
            paths = pod.namespace_paths()
            if not pod.ready() and any(os.path.lexists(p) for p in paths.values()):
                self._release_sandbox(pod)
                report["podNamespaces"].append(pod.id)
        return report


def _destroy_cgroup(cgroup: Any, created: list[str] | None = None, raise_errors: bool = False) -> None:
    """Remove a pod's cgroup (its containers' are gone by now), the parents its creation made
    (`created`, e.g. a node agent's cgroup_parent) and the hanok/ parent, when empty."""
    import os.path as osp

    from hanok import cgroups

    try:
        if created is not None:
            cgroup.created = list(created)
        leaves = list(getattr(cgroup, "dirs", None) or [cgroup.dir])
        ours = created if created is not None else list(getattr(cgroup, "created", []))
        under_hanok = all(f"/{cgroups.DEFAULT_PARENT}/" in directory for directory in leaves)
        if not under_hanok and not set(leaves) <= set(ours):
            # partly or wholly a node agent's cgroup_parent: only the directories hanok made are
            # removed, one by one and only when empty (destroy() would also remove child cgroups
            # that are not ours)
            for directory in reversed(ours):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            return
        if cgroup.exists():
            cgroup.destroy()
        for directory in reversed(created or []):  # destroy() did these unless the leaf was gone already
            try:
                os.rmdir(directory)
            except OSError:
                pass
        for directory in getattr(cgroup, "dirs", None) or [cgroup.dir]:  # each hierarchy's /hanok, once empty
            parent = osp.dirname(directory)
            if osp.basename(parent) == cgroups.DEFAULT_PARENT:
                try:
                    os.rmdir(parent)
                except OSError:
                    pass
    except HanokError:
        if raise_errors:
            raise


def _rmtree(path: str) -> None:
    """A pod's directory (its emptyDir volumes may be deep): see engine.remove_owner_dir."""
    from hanok.runtime.engine import remove_owner_dir

    remove_owner_dir(path)
