"""Pods of the same name in different Kubernetes namespaces (issue 6): (namespace, name) is a pod's identity.

Driven as a node agent would, through the installed `hanok` binary: two pods
called `web` run side by side in namespaces `a` and `b`, each addressed as
NAMESPACE/NAME, a bare `web` refused as ambiguous, and the default namespace
keeping its plain names (`web`, container `web-c`). The fixtures of
test_pods.py check that every test leaves nothing behind (no pod, container,
namespace mount, cgroup or name link).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import test_pods
from test_cli_containers import IMAGE, Hanok, failed, wait_for
from test_pods import in_pod, pod_json, write

# test_pods.py's store (busybox imported), its check that each test leaves nothing, and its skip condition
hanok = test_pods.hanok
nothing_left = test_pods.nothing_left
pytestmark = test_pods.pytestmark

AMBIGUOUS = 'pod name "web" is ambiguous: a/web, b/web (give NAMESPACE/NAME or the id)'


def manifest(tmp_path: Path, namespace: str | None, name: str = "web") -> str:
    """A one-container pod (container `c`, which says where it runs and waits for SIGTERM)."""
    meta = f"{{name: {name}}}" if namespace is None else f"{{name: {name}, namespace: {namespace}}}"
    return write(tmp_path, f"{namespace}-{name}.yaml", f"""\
metadata: {meta}
spec:
  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, "echo in {namespace}; trap 'exit 0' TERM; while true; do sleep 0.1; done"]
""")


def run_pod(hanok: Hanok, tmp_path: Path, namespace: str | None, name: str = "web") -> dict:
    return json.loads(hanok.ok("pod", "run", "--network", "none", "-f", manifest(tmp_path, namespace, name), "--json"))


def table(hanok: Hanok) -> list[list[str]]:
    """`pod ls` as rows of columns (POD ID, NAMESPACE, NAME, STATUS, ...), by namespace."""
    header, *rows = hanok.ok("pod", "ls").splitlines()
    return [re.split(r"\s{2,}", header)[:3]] + sorted((row.split()[:4] for row in rows), key=lambda columns: columns[1])


def test_two_namespaces_each_run_a_pod_called_web(hanok: Hanok, tmp_path: Path) -> None:
    a = run_pod(hanok, tmp_path, "a")
    b = run_pod(hanok, tmp_path, "b")
    assert a["id"] != b["id"]
    assert [(p["name"], p["namespace"], [c["name"] for c in p["containers"]]) for p in (a, b)] == [
        ("web", "a", ["a_web-c"]), ("web", "b", ["b_web-c"])]

    # both listed, with their namespace
    rows = sorted(json.loads(hanok.ok("pod", "ls", "--json")), key=lambda r: r["namespace"])
    assert [(r["id"], r["name"], r["namespace"], r["state"], r["hostname"], [c["name"] for c in r["containers"]])
            for r in rows] == [(a["id"], "web", "a", "ready", "web", ["a_web-c"]),
                               (b["id"], "web", "b", "ready", "web", ["b_web-c"])]
    assert table(hanok) == [["POD ID", "NAMESPACE", "NAME"], [a["id"][:12], "a", "web", "Ready"],
                            [b["id"][:12], "b", "web", "Ready"]]

    # each addressed by NAMESPACE/NAME, in every verb that takes a pod
    assert pod_json(hanok, "a/web")["id"] == a["id"]
    assert pod_json(hanok, "b/web")["id"] == b["id"]
    members = in_pod(hanok, "a/web")
    assert sorted(members) == ["a_web-c"]
    assert members["a_web-c"]["labels"] == {"io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "a",
                                            "io.kubernetes.container.name": "c"}
    assert in_pod(hanok, "b/web")["b_web-c"]["labels"]["io.kubernetes.pod.namespace"] == "b"
    wait_for(lambda: hanok("pod", "logs", "a/web").stdout == "in a\n")
    assert hanok.ok("pod", "logs", "b/web", "-c", "c") == "in b\n"
    assert hanok.ok("exec", "b_web-c", "hostname") == "web\n"  # the host name rules did not change

    # a bare name both namespaces have is refused, naming the candidates
    for verb in (("pod", "inspect"), ("pod", "stop"), ("pod", "rm", "-f")):
        failed(hanok(*verb, "web"), AMBIGUOUS)
    failed(hanok("pod", "logs", "web"), AMBIGUOUS)
    failed(hanok("ps", "--pod", "web"), AMBIGUOUS)
    failed(hanok("pod", "inspect", "c/web"), "no such pod: c/web")
    failed(hanok("pod", "inspect", "a/"), "no such pod: a/")
    failed(hanok("pod", "inspect", "../names/web"), "no such pod: ../names/web")
    escape = "../" * 20 + "tmpx"  # as long as an id: must not be taken for one
    failed(hanok("pod", "inspect", escape), f"no such pod: {escape}")

    # stopping and removing a/web leaves b/web as it was
    assert hanok.ok("pod", "stop", "-t", "5", "a/web") == "a/web\n"
    assert pod_json(hanok, "a/web")["state"] == "notready"
    assert pod_json(hanok, "b/web")["state"] == "ready"
    assert hanok.ok("pod", "rm", "a/web") == "a/web\n"
    failed(hanok("pod", "inspect", "a/web"), "no such pod: a/web")
    assert [r["id"] for r in json.loads(hanok.ok("pod", "ls", "--json"))] == [b["id"]]
    assert {n: m["state"] for n, m in in_pod(hanok, "b/web").items()} == {"b_web-c": "running"}
    assert hanok.ok("exec", "b_web-c", "true") == ""

    # now only one namespace has a `web`: the bare name finds it
    assert pod_json(hanok, "web")["id"] == b["id"]
    failed(hanok("pod", "rm", "web"), "cannot remove pod b/web: containers b_web-c are running "
                                      "(stop it first, or use -f)")
    assert hanok.ok("pod", "rm", "-f", "web") == "web\n"


def test_the_default_namespace_keeps_plain_names(hanok: Hanok, tmp_path: Path) -> None:
    plain = run_pod(hanok, tmp_path, None)
    assert (plain["namespace"], [c["name"] for c in plain["containers"]]) == ("default", ["web-c"])
    assert sorted(p.name for p in (hanok.store / "pods" / "names").iterdir() if p.is_symlink()) == ["web"]
    assert pod_json(hanok, "web")["id"] == plain["id"]
    assert in_pod(hanok, "web")["web-c"]["labels"]["io.kubernetes.pod.namespace"] == "default"

    other = run_pod(hanok, tmp_path, "x")
    assert [c["name"] for c in other["containers"]] == ["x_web-c"]
    assert sorted(p.name for p in (hanok.store / "pods" / "names").iterdir() if p.is_symlink()) == ["web", "x_web"]
    assert pod_json(hanok, "web")["id"] == plain["id"]  # a plain name means default's, as kubectl reads it
    assert pod_json(hanok, "default/web")["id"] == plain["id"]
    assert pod_json(hanok, "x/web")["id"] == other["id"]
    assert pod_json(hanok, plain["id"][:12])["id"] == plain["id"]
    # the default namespace's pod is also its name: a second one is refused with the name people know
    failed(hanok("pod", "run", "--network", "none", "-f", manifest(tmp_path, "default")),
           f'the pod name "web" is already in use by pod {plain["id"][:12]}')
    failed(hanok("pod", "run", "--network", "none", "-f", manifest(tmp_path, "x")),
           f'the pod name "x/web" is already in use by pod {other["id"][:12]}')
    assert hanok.ok("pod", "rm", "-f", "default/web") == "default/web\n"
    assert hanok.ok("pod", "rm", "-f", "web") == "web\n"  # x/web, the only `web` left


def test_a_cri_sandbox_in_a_namespace(hanok: Hanok, tmp_path: Path) -> None:
    """RunPodSandbox + CreateContainer: the namespace qualifies the container's name, attempts too."""
    sandbox = write(tmp_path, "sandbox.json", {"metadata": {"name": "dns", "namespace": "kube-system", "attempt": 1}})
    pod_id = hanok.ok("pod", "run", "--network", "none", "--config", sandbox).strip()
    container = write(tmp_path, "container.json", {"metadata": {"name": "app", "attempt": 2},
                                                   "image": {"image": IMAGE}, "command": ["sleep", "100"]})
    cid = hanok.ok("create", "--pod", "kube-system/dns.1", "--config", container).strip()
    assert [(r["id"], r["name"]) for r in json.loads(hanok.ok("ps", "--pod", "dns.1", "--json"))] == [
        (cid, "kube-system_dns.1-app.2")]
    assert hanok.ok("rm", "kube-system_dns.1-app.2") == "kube-system_dns.1-app.2\n"
    assert hanok.ok("pod", "rm", "kube-system/dns.1") == "kube-system/dns.1\n"
    failed(hanok("pod", "inspect", pod_id), f"no such pod: {pod_id}")


def test_an_invalid_namespace_is_refused_and_leaves_nothing(hanok: Hanok, tmp_path: Path) -> None:
    message = ('metadata.namespace: "Shop_1" is not a valid namespace '
               "(a DNS label: lower-case letters, digits and '-')")
    failed(hanok("pod", "run", "--network", "none", "-f", manifest(tmp_path, "Shop_1")), message)
    failed(hanok("pod", "run", "--network", "none", "--config",
                 write(tmp_path, "sb.json", {"metadata": {"name": "s", "namespace": "Shop_1"}})), message)
    assert hanok.ok("pod", "ls", "--json") == "[]\n"


def test_a_pod_named_by_an_older_hanok_gets_its_namespace(hanok: Hanok, tmp_path: Path) -> None:
    """Older hanok linked names/NAME for a pod of any namespace and named its containers POD-CONTAINER:
    such a pod is found as NAMESPACE/NAME (not as default's), its logs by container, and it is removed."""
    old = run_pod(hanok, tmp_path, "shop")
    names = hanok.store / "pods" / "names"
    (names / "shop_web").rename(names / "web")  # the older layout
    (names / ".namespaced").unlink(missing_ok=True)
    container = hanok.store / "containers" / "names"
    (container / "shop_web-c").rename(container / "web-c")
    record = hanok.store / "containers" / old["containers"][0]["id"] / "container.json"
    record.write_text(record.read_text().replace('"name": "shop_web-c"', '"name": "web-c"'))
    assert pod_json(hanok, "shop/web")["id"] == old["id"]
    assert sorted(p.name for p in names.iterdir() if p.is_symlink()) == ["shop_web"]
    failed(hanok("pod", "inspect", "default/web"), "no such pod: default/web")
    assert pod_json(hanok, "web")["id"] == old["id"]  # the only `web`
    wait_for(lambda: hanok("pod", "logs", "-c", "c", "shop/web").stdout == "in shop\n")
    # default/web's name is free now, but its container's older name is still taken (a known limit)
    failed(hanok("pod", "run", "--network", "none", "-f", manifest(tmp_path, None)),
           f'the container name "web-c" is already in use by container {old["containers"][0]["id"][:12]}')
    assert [p["id"] for p in json.loads(hanok.ok("pod", "ls", "--json"))] == [old["id"]]
    assert hanok.ok("pod", "rm", "-f", "shop/web") == "shop/web\n"
