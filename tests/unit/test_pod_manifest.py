"""Pod manifests and CRI configs -> options (runtime/pod.py's pure half): strict validation, exact messages."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hanok.runtime import pod
from hanok.runtime.bundle import RunOptions
from hanok.runtime.errors import InvalidArgument, NotFound, NotSupported

MANIFEST: dict = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                 "annotations": {"note": "x"}},
    "spec": {
        "hostname": "webhost",
        "restartPolicy": "Never",
        "containers": [
            {"name": "app", "image": "busybox:test", "command": ["sh", "-c"], "args": ["echo hi"],
             "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}], "workingDir": "/srv",
             "ports": [{"containerPort": 80, "hostPort": 18080, "protocol": "TCP", "hostIP": "127.0.0.1"},
                       {"containerPort": 53, "protocol": "UDP"}],
             "resources": {"limits": {"memory": "128Mi", "cpu": "500m"},
                           "requests": {"memory": "64Mi", "cpu": "250m"}},
             "volumeMounts": [{"name": "cache", "mountPath": "/cache"},
                              {"name": "host", "mountPath": "/host", "readOnly": True}],
             "securityContext": {"runAsUser": 1000, "runAsGroup": 100, "readOnlyRootFilesystem": True,
                                 "allowPrivilegeEscalation": False,
                                 "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]}}},
            {"name": "side", "image": "busybox:test", "imagePullPolicy": "Never",
             "resources": {"limits": {"memory": "1Gi"}}},
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "host", "hostPath": {"path": "/tmp"}}],
    },
}


def manifest_with(path: str, value: object) -> dict:
    """MANIFEST with the dotted `path` (list indexes as numbers) set to value; None deletes it."""
    doc = copy.deepcopy(MANIFEST)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = doc
    for key in keys[:-1]:
        target = target[key]
    if value is None:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


def refused(doc: object, message: str, kind: type[Exception] = InvalidArgument) -> None:
    with pytest.raises(kind) as e:
        pod.pod_from_manifest(doc)
    assert str(e.value) == message


# ------------------------------------------------------------------ quantities


@pytest.mark.parametrize("text, value", [
    ("128Mi", 128 << 20), ("1Gi", 1 << 30), ("1", 1), (1, 1), (0.5, 0.5), ("500m", 0.5), ("1k", 1000),
    ("2M", 2e6), ("1e3", 1000), ("1.5Gi", 1.5 * (1 << 30)), (".5", 0.5), ("100Ki", 102400), ("1E", 1e18),
])
def test_quantities(text: object, value: float) -> None:
    assert pod.parse_quantity(text, "q") == pytest.approx(value)


@pytest.mark.parametrize("text, message", [
    ("12Q", 'q: "12Q" is not a quantity (e.g. 128Mi, 500m, 1)'),
    ("Mi", 'q: "Mi" is not a quantity (e.g. 128Mi, 500m, 1)'),
    ("-1", 'q: "-1" is not a quantity (e.g. 128Mi, 500m, 1)'),
    ("1 Gi", 'q: "1 Gi" is not a quantity (e.g. 128Mi, 500m, 1)'),
    (True, "q: expected a quantity such as 128Mi, 500m or 1, got true"),
    ([1], "q: expected a quantity such as 128Mi, 500m or 1, got list"),
])
def test_bad_quantities(text: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        pod.parse_quantity(text, "q")
    assert str(e.value) == message


def test_memory_rounds_up_and_cpu_keeps_millicores() -> None:
    assert pod.memory_bytes("1.5", "m") == 2
    assert pod.memory_bytes("1m", "m") == 1  # 0.001 bytes: Kubernetes rounds up too
    assert pod.cpu_cores("1", "c") == 1.0 and pod.cpu_cores("1500m", "c") == 1.5
    with pytest.raises(InvalidArgument, match=r'^c: "0" must be at least 1m$'):
        pod.cpu_cores("0", "c")
    with pytest.raises(InvalidArgument, match=r'^m: "0" must be positive$'):
        pod.memory_bytes("0", "m")
    assert [pod.cpu_shares(c) for c in (0.001, 0.25, 1, 2.5)] == [2, 256, 1024, 2560]


# ------------------------------------------------------------------ the manifest -> options


def test_manifest_maps_to_a_plan_and_run_options() -> None:
    plan = pod.pod_from_manifest(copy.deepcopy(MANIFEST))
    assert (plan.name, plan.namespace, plan.uid, plan.hostname, plan.restart_policy) == (
        "web", "shop", "u-1", "webhost", "Never")
    assert (plan.labels, plan.annotations) == ({"app": "web"}, {"note": "x"})
    assert plan.ports == [{"containerPort": 80, "protocol": "tcp", "hostPort": 18080, "hostIP": "127.0.0.1"}]
    assert plan.volumes == {"cache": {"emptyDir": {}}, "host": {"hostPath": "/tmp"}}
    assert plan.memory_limit() == (128 << 20) + (1 << 30)
    app, side = plan.containers
    assert (app.name, app.pull, app.mounts) == ("app", True, [("cache", "/cache", False), ("host", "/host", True)])
    assert app.options == RunOptions(
        image="busybox:test", entrypoint=["sh", "-c"], command=["echo hi"], env=["A=1", "EMPTY="],
        workdir="/srv", user="1000:100", hostname="webhost", network="pod", memory=str(128 << 20), cpus=0.5,
        cpu_shares=256, memory_reservation=str(64 << 20), read_only=True, no_new_privileges=True,
        cap_add=["NET_ADMIN"], cap_drop=["MKNOD"],
        labels={"app": "web", "io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.container.name": "app"})
    # no command: the image's entrypoint and cmd stay; Never: no pull
    assert (side.options.entrypoint, side.options.command, side.pull) == (None, [], False)
    assert side.options.user is None and side.options.no_new_privileges is False


def test_defaults_and_pod_level_security() -> None:
    doc = {"metadata": {"name": "tiny"}, "spec": {"securityContext": {"runAsUser": 7},
                                                   "containers": [{"name": "c", "image": "i"}]}}
    plan = pod.pod_from_manifest(doc)
    assert (plan.namespace, plan.hostname, plan.restart_policy, plan.memory_limit()) == (
        "default", "tiny", "Always", None)
    assert plan.containers[0].options.user == "7"


def test_yaml_empty_values_are_absent_fields(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("metadata:\n  name: y\n  labels:\nspec:\n  containers:\n  - name: c\n    image: i\n"
                    "    env:\n    - name: A\n      value: '80'\n")
    plan = pod.pod_from_manifest(pod.load_document(str(path)))
    assert plan.labels == {} and plan.containers[0].options.env == ["A=80"]


# ------------------------------------------------------------------ invalid manifests: the field named


@pytest.mark.parametrize("path, value, message", [
    ("spec.containers.1.imag", "x", "spec.containers[1].imag: unknown field"),
    ("spec.containers.0.ports.0.containerPort", "80",
     'spec.containers[0].ports[0].containerPort: expected an integer, got "80"'),
    ("spec.containers.0.ports.0.containerPort", True,
     "spec.containers[0].ports[0].containerPort: expected an integer, got true"),
    ("spec.containers.0.ports.0.containerPort", 70000,
     "spec.containers[0].ports[0].containerPort: 70000 is not a port number (1-65535)"),
    ("spec.containers.0.ports.0.protocol", "SCTP",
     'spec.containers[0].ports[0].protocol: "SCTP" is not a protocol (TCP or UDP)'),
    ("spec.containers.0.ports.1.containerPort", 80, None),  # 80/udp beside 80/tcp is fine
    ("spec.containers.0.ports.0.hostIP", "::1",
     'spec.containers[0].ports[0].hostIP: "::1" is the IPv6 loopback, which the kernel never routes to a '
     "container: publish on 127.0.0.1 instead"),
    ("spec.containers.0.ports.0.hostIP", "[::]",
     'spec.containers[0].ports[0].hostIP: "[::]" is not an IPv6 address'),
    ("spec.containers.0.ports.0.hostIP", "localhost",
     'spec.containers[0].ports[0].hostIP: "localhost" is not an IPv4 address'),
    ("spec.containers.1.name", "app", 'spec.containers[1].name: duplicate container name "app"'),
    ("spec.containers.0.volumeMounts.0.name", "nope",
     'spec.containers[0].volumeMounts[0].name: no volume named "nope" in spec.volumes'),
    ("spec.containers.0.volumeMounts.0.mountPath", None,
     "spec.containers[0].volumeMounts[0].mountPath: required field is missing"),
    ("spec.containers.0.volumeMounts.0.mountPath", "cache",
     'spec.containers[0].volumeMounts[0].mountPath: "cache" is not an absolute path without \':\''),
    ("spec.containers.0.volumeMounts.0.mountPath", "/a:b",
     'spec.containers[0].volumeMounts[0].mountPath: "/a:b" is not an absolute path without \':\''),
    ("spec.containers.1.image", None, "spec.containers[1].image: required field is missing"),
    ("metadata.name", None, "metadata.name: required field is missing"),
    ("metadata.name", "Web_1", 'metadata.name: "Web_1" is not a valid pod name '
                               "(lower case letters, digits, '-' and '.')"),
    ("spec.containers", None, "spec.containers: required field is missing"),
    ("spec.containers", [], "spec.containers: at least one container is required"),
    ("spec.containers", {"name": "x"}, "spec.containers: expected a list, got dict"),
    ("spec.containers.0.resources.limits.memory", "lots",
     'spec.containers[0].resources.limits.memory: "lots" is not a quantity (e.g. 128Mi, 500m, 1)'),
    ("spec.containers.0.resources.limits.cpu", "0",
     'spec.containers[0].resources.limits.cpu: "0" must be at least 1m'),
    ("spec.containers.0.resources.requests.memory", "1Gi",
     "spec.containers[0].resources.requests.memory: must not exceed limits.memory"),
    ("spec.containers.0.resources.limits.gpu", 1, "spec.containers[0].resources.limits.gpu: unknown field"),
    ("spec.containers.0.env.0.value", 1, "spec.containers[0].env[0].value: expected a string, got 1"),
    ("spec.containers.0.env.0.name", "A=B", 'spec.containers[0].env[0].name: "A=B" is not a variable name'),
    ("spec.containers.0.command", "sh", 'spec.containers[0].command: expected a list, got "sh"'),
    ("spec.containers.0.securityContext.readOnlyRootFilesystem", "yes",
     'spec.containers[0].securityContext.readOnlyRootFilesystem: expected a boolean, got "yes"'),
    ("spec.containers.0.workingDir", "srv", 'spec.containers[0].workingDir: "srv" is not an absolute path'),
    ("spec.containers.0.imagePullPolicy", "Sometimes",
     'spec.containers[0].imagePullPolicy: "Sometimes" is not one of Always, IfNotPresent, Never'),
    ("metadata.labels", {"a": 1}, "metadata.labels.a: expected a string, got 1"),
    ("spec.restartPolicy", "Sometimes", 'spec.restartPolicy: "Sometimes" is not one of Always, OnFailure, Never'),
    ("spec.hostname", "Bad_Host", 'spec.hostname: "Bad_Host" is not a valid host name'),
    ("spec.volumes.1.name", "cache", 'spec.volumes[1].name: duplicate volume name "cache"'),
    ("spec.volumes.0.emptyDir", None, "spec.volumes[0]: exactly one of emptyDir or hostPath is required"),
    ("spec.volumes.1.hostPath.path", "tmp",
     'spec.volumes[1].hostPath.path: "tmp" is not an absolute path without \':\''),
    ("spec.nodeName", "n1", "spec.nodeName: unknown field"),
    ("kind", "Deployment", 'kind: "Deployment" is not supported (only Pod)'),
    ("spec.containers.0.name", "App", 'spec.containers[0].name: "App" is not a valid container name '
                                      "(lower case letters, digits and '-')"),
    ("metadata.namespace", "Bad_NS", 'metadata.namespace: "Bad_NS" is not a valid namespace '
                                     "(a DNS label: lower-case letters, digits and '-')"),
    ("metadata.namespace", "a/b", 'metadata.namespace: "a/b" is not a valid namespace '
                                  "(a DNS label: lower-case letters, digits and '-')"),
    ("metadata.namespace", "shop.eu", 'metadata.namespace: "shop.eu" is not a valid namespace '
                                      "(a DNS label: lower-case letters, digits and '-')"),
    ("metadata.namespace", "shop\n", 'metadata.namespace: "shop\\n" is not a valid namespace '
                                      "(a DNS label: lower-case letters, digits and '-')"),
    ("metadata.namespace", "x" * 64, f'metadata.namespace: "{"x" * 64}" is not a valid namespace '
                                     "(a DNS label: lower-case letters, digits and '-')"),
    ("metadata.namespace", 7, "metadata.namespace: expected a string, got 7"),
    ("metadata.namespace", "x" * 63, None),
    ("metadata.name", "web\n", 'metadata.name: "web\\n" is not a valid pod name '
                               "(lower case letters, digits, '-' and '.')"),
])
def test_invalid_manifests_name_the_field(path: str, value: object, message: str | None) -> None:
    doc = manifest_with(path, value)
    if message is None:
        pod.pod_from_manifest(doc)
    else:
        refused(doc, message)


def test_more_refusals() -> None:
    refused(["not", "a", "pod"], "the document: expected an object, got list")
    refused(manifest_with("spec.volumes.1.hostPath.path", "/no/such/dir"),
            "spec.volumes[1].hostPath.path: /no/such/dir does not exist on the host", NotFound)
    refused(manifest_with("spec.containers.0.securityContext.privileged", True),
            "spec.containers[0].securityContext.privileged: privileged containers are not supported", NotSupported)
    refused(manifest_with("spec.containers.1.securityContext", {"runAsNonRoot": True}),
            "spec.containers[1].securityContext.runAsNonRoot: needs an explicit runAsUser here", NotSupported)
    refused(manifest_with("spec.containers.1.securityContext", {"runAsNonRoot": True, "runAsUser": 0}),
            "spec.containers[1].securityContext.runAsNonRoot: runAsUser is 0 (root)")
    plan = pod.pod_from_manifest(manifest_with("spec.containers.1.securityContext",
                                               {"runAsNonRoot": True, "runAsUser": 9}))
    assert plan.containers[1].options.user == "9"
    doc = manifest_with("spec.containers.1.ports", [{"containerPort": 80}])
    refused(doc, "spec.containers[1].ports[0].containerPort: 80/tcp is already declared by "
                 "spec.containers[0].ports[0]")


def test_load_document_reads_json_and_yaml_and_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(MANIFEST))
    assert pod.load_document(str(tmp_path / "p.json")) == MANIFEST
    (tmp_path / "bad.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(InvalidArgument, match=r"^.*bad\.yaml: not valid YAML at line 2: "):
        pod.load_document(str(tmp_path / "bad.yaml"))
    with pytest.raises(NotFound, match=r"^/no/such\.yaml: no such file$"):
        pod.load_document("/no/such.yaml")


# ------------------------------------------------------------------ CRI configs


SANDBOX = {
    "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83djaidwnduwk28bcsb"},
    "hostname": "nginx",
    "log_directory": "/tmp/logs",
    "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local", "svc.cluster.local"],
                   "options": ["ndots:5"]},
    "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 18081, "host_ip": "127.0.0.1"},
                      {"container_port": 81}, {"protocol": "UDP", "container_port": 82, "host_port": 18082},
                      {"container_port": 83, "host_port": 18083, "host_ip": "FD12:0::9"}],
    "labels": {"app": "nginx"},
    "annotations": {"a": "b"},
    "linux": {"cgroup_parent": "/kubepods/pod1",
              "security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}},
}


def test_sandbox_config_maps_to_a_plan() -> None:
    plan = pod.pod_from_sandbox_config(copy.deepcopy(SANDBOX))
    assert (plan.name, plan.namespace, plan.uid, plan.hostname, plan.cgroup_parent, plan.log_directory) == (
        "nginx-sandbox.1", "default", "hdishd83djaidwnduwk28bcsb", "nginx", "/kubepods/pod1", "/tmp/logs")
    assert plan.ports == [{"containerPort": 80, "protocol": "tcp", "hostPort": 18081, "hostIP": "127.0.0.1"},
                          {"containerPort": 82, "protocol": "udp", "hostPort": 18082, "hostIP": ""},
                          {"containerPort": 83, "protocol": "tcp", "hostPort": 18083, "hostIP": "fd12::9"}]
    assert (plan.labels, plan.annotations, plan.containers) == ({"app": "nginx"}, {"a": "b"}, [])
    assert pod.resolv_conf(plan.dns) == ("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\n"
                                         "options ndots:5\n")


def test_sandbox_config_accepts_camel_case_but_not_in_maps() -> None:
    doc = {"metadata": {"name": "s"}, "logDirectory": "/tmp/l", "portMappings": [{"containerPort": 1, "hostPort": 2}],
           "labels": {"someKey": "v"}}
    plan = pod.pod_from_sandbox_config(doc)
    assert (plan.log_directory, plan.ports[0]["hostPort"], plan.labels) == ("/tmp/l", 2, {"someKey": "v"})


@pytest.mark.parametrize("doc, message, kind", [
    ({"metadata": {"name": "s", "attempts": 1}}, "metadata.attempts: unknown field", InvalidArgument),
    ({"metadata": {}}, "metadata.name: required field is missing", InvalidArgument),
    ({"metadata": {"name": "s"}, "port_mappings": [{"container_port": "80"}]},
     'port_mappings[0].container_port: expected an integer, got "80"', InvalidArgument),
    ({"metadata": {"name": "s"}, "port_mappings": [{"container_port": 80, "protocol": 7}]},
     'port_mappings[0].protocol: "7" is not a protocol (TCP or UDP)', InvalidArgument),
    ({"metadata": {"name": "s"}, "port_mappings": [{"container_port": 80, "protocol": True}]},
     "port_mappings[0].protocol: expected a name or a number, got true", InvalidArgument),
    ({"metadata": {"name": "s"}, "port_mappings": [{"container_port": 80, "host_port": 8080, "host_ip": "fe80::1"}]},
     'port_mappings[0].host_ip: "fe80::1" is link-local (it needs an interface): publish on a global or unique '
     "local address", InvalidArgument),
    ({"metadata": {"name": "s"}, "linux": {"security_context": {"namespace_options": {"network": 2}}}},
     "linux.security_context.namespace_options.network: only POD (0) is supported", NotSupported),
    ({"metadata": {"name": "s"}, "dns_config": {"servers": ["dns.example"]}},
     'dns_config.servers[0]: "dns.example" is not an IP address', InvalidArgument),
    ({"metadata": {"name": "s"}, "dns_config": {"searches": ["a b"]}},
     'dns_config.searches[0]: "a b" must be one word', InvalidArgument),
    ({"metadata": {"name": "s"}, "linux": {"sysctls": {"kernel.shm_rmid_forced": "1"}}},
     "linux.sysctls: sandbox sysctls are not supported", NotSupported),
    ({"metadata": {"name": "s"}, "linux": {"security_context": {"privileged": True}}},
     "linux.security_context.privileged: privileged sandboxes are not supported", NotSupported),
    ({"metadata": {"name": "s", "namespace": "Kube_System"}},
     'metadata.namespace: "Kube_System" is not a valid namespace (a DNS label: lower-case letters, digits and \'-\')',
     InvalidArgument),
])
def test_bad_sandbox_configs(doc: dict, message: str, kind: type[Exception]) -> None:
    with pytest.raises(kind) as e:
        pod.pod_from_sandbox_config(doc)
    assert str(e.value) == message


POD_RECORD = {"id": "f" * 64, "name": "nginx-sandbox", "hostname": "nginx", "logDirectory": "/tmp/logs"}
CONTAINER = {
    "metadata": {"name": "app", "attempt": 0},
    "image": {"image": "busybox:test"},
    "command": ["sh", "-c"], "args": ["echo hi"], "working_dir": "/srv",
    "envs": [{"key": "A", "value": "1"}],
    "mounts": [{"container_path": "/data", "host_path": "/tmp", "readonly": True}],
    "labels": {"tier": "web"}, "annotations": {"note": "n"},
    "log_path": "app/0.log", "tty": False,
    "linux": {"resources": {"memory_limit_in_bytes": 67108864, "cpu_period": 100000, "cpu_quota": 50000,
                            "cpu_shares": 512},
              "security_context": {"run_as_user": {"value": 1000}, "readonly_rootfs": True, "no_new_privs": True,
                                   "capabilities": {"add_capabilities": ["NET_ADMIN"],
                                                    "drop_capabilities": ["MKNOD"]}}},
}


def test_container_config_maps_to_run_options() -> None:
    options, log_path = pod.container_from_cri_config(copy.deepcopy(CONTAINER), POD_RECORD)
    assert log_path == "/tmp/logs/app/0.log"
    assert options == RunOptions(
        image="busybox:test", entrypoint=["sh", "-c"], command=["echo hi"], env=["A=1"], workdir="/srv",
        user="1000", name="nginx-sandbox-app", hostname="nginx", volumes=["/tmp:/data:ro"], network="pod",
        memory="67108864", cpus=0.5, cpu_shares=512, read_only=True, no_new_privileges=True, cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"], labels={"tier": "web", "io.kubernetes.container.name": "app"},
        annotations={"note": "n"}, pod="f" * 64)


@pytest.mark.parametrize("change, message", [
    ({"imag": {"image": "x"}}, "imag: unknown field"),
    ({"envs": [{"key": "A", "value": 1}]}, "envs[0].value: expected a string, got 1"),
    ({"mounts": [{"container_path": "data", "host_path": "/tmp"}]},
     'mounts[0].container_path: "data" is not an absolute path'),
    ({"log_path": "../../etc/x"}, 'log_path: "../../etc/x" leaves the sandbox\'s log_directory'),
    ({"metadata": {"attempt": 0}}, "metadata.name: required field is missing"),
    ({"linux": {"resources": {"memory_limit_in_bytes": "64m"}}},
     'linux.resources.memory_limit_in_bytes: expected an integer, got "64m"'),
])
def test_bad_container_configs(change: dict, message: str) -> None:
    doc = {**copy.deepcopy(CONTAINER), **change}
    with pytest.raises(InvalidArgument) as e:
        pod.container_from_cri_config(doc, POD_RECORD)
    assert str(e.value) == message


def test_container_config_camel_case() -> None:
    doc = {"metadata": {"name": "c"}, "image": {"image": "i"}, "workingDir": "/w",
           "linux": {"securityContext": {"runAsUser": {"value": 5}, "runAsGroup": {"value": 6}}}}
    options, log_path = pod.container_from_cri_config(doc, POD_RECORD)
    assert (options.workdir, options.user, log_path) == ("/w", "5:6", None)


# ------------------------------------------------------------------ review fixes


def test_volume_names_cannot_leave_the_pod_directory() -> None:
    doc = manifest_with("spec.volumes.0.name", "../../../../tmp/escaped")
    doc["spec"]["containers"][0]["volumeMounts"][0]["name"] = "../../../../tmp/escaped"
    refused(doc, "spec.volumes[0].name: \"../../../../tmp/escaped\" is not a valid name (a DNS label: "
                 "lower-case letters, digits and '-')")


def test_run_as_group_alone_keeps_the_images_user() -> None:
    doc = manifest_with("spec.containers.0.securityContext", {"runAsGroup": 1234})
    assert pod.pod_from_manifest(doc).containers[0].options.user == ":1234"


@pytest.mark.parametrize("text", ["1e400", "1e99999999", "99999999999Ei"])
def test_huge_quantities_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is too large$"):
        pod.parse_quantity(text, "q")


def test_a_group_alone_is_applied_to_the_images_user() -> None:
    from hanok.images import overlay

    process = overlay.image_config_to_process({"User": "1000:1000", "Cmd": ["true"]}, user=":1234")
    assert (process["user"]["uid"], process["user"]["gid"]) == (1000, 1234)


def test_later_attempts_get_their_own_names() -> None:
    """A kubelet creates attempt 1 before it removes attempt 0: the names must not collide."""
    again: dict = copy.deepcopy(CONTAINER)
    again["metadata"]["attempt"] = 1
    assert pod.container_from_cri_config(again, POD_RECORD)[0].name == "nginx-sandbox-app.1"
    sandbox: dict = copy.deepcopy(SANDBOX)
    sandbox["metadata"]["attempt"] = 2
    assert pod.pod_from_sandbox_config(sandbox).name == sandbox["metadata"]["name"] + ".2"


# ------------------------------------------------------------------ namespaces


def test_an_empty_namespace_is_the_default_one() -> None:
    assert pod.pod_from_manifest(manifest_with("metadata.namespace", "")).namespace == "default"
    assert pod.pod_from_sandbox_config({"metadata": {"name": "s", "namespace": ""}}).namespace == "default"
    assert pod.pod_from_sandbox_config({"metadata": {"name": "s"}}).namespace == "default"


def test_pods_outside_the_default_namespace_qualify_their_containers_names() -> None:
    """The engine names of a pod's containers carry the namespace, except in "default" (unchanged)."""
    assert (pod.qualified_name("default", "web"), pod.qualified_name("shop", "web")) == ("web", "shop/web")
    assert (pod.container_name("default", "web", "app"), pod.container_name("shop", "web", "app")) == (
        "web-app", "shop_web-app")
    shop = {**POD_RECORD, "namespace": "shop"}
    assert pod.container_from_cri_config(copy.deepcopy(CONTAINER), shop)[0].name == "shop_nginx-sandbox-app"
    again: dict = copy.deepcopy(CONTAINER)
    again["metadata"]["attempt"] = 1
    assert pod.container_from_cri_config(again, shop)[0].name == "shop_nginx-sandbox-app.1"
    assert pod.container_from_cri_config(again, {**POD_RECORD, "namespace": "default"})[0].name == (
        "nginx-sandbox-app.1")


def test_link_keys_round_trip_and_never_collide() -> None:
    """'_' is in no pod or namespace name: a key says which (namespace, name) it is."""
    pairs = [("default", "web"), ("shop", "web"), ("a", "b.web"), ("a-b", "web"), ("1", "web.1")]
    keys = [pod._link_key(namespace, name) for namespace, name in pairs]
    assert keys == ["web", "shop_web", "a_b.web", "a-b_web", "1_web.1"]
    assert [pod._split_link_key(key) for key in keys] == pairs
