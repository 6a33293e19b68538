"""The /etc/resolv.conf, /etc/hosts and /etc/hostname a container gets.

The engine bind-mounts the files `write_files` makes; the text functions are
pure so they are tested without root.
"""
from __future__ import annotations

import os

FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")   # what docker falls back to


def _is_loopback(address: str) -> bool:
    address = address.split("%", 1)[0]
    return address.startswith("127.") or address in ("::1", "0:0:0:0:0:0:0:1")


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf minus loopback nameservers, which mean nothing in another namespace.

    A host running a local resolver (systemd-resolved's 127.0.0.53, dnsmasq)
    would leave a container with none, so then the public fallback servers
    are used, as docker does. search, domain and options lines are kept.
    """
    kept: list[str] = []
    nameservers = 0
    for line in host_text.splitlines():
        words = line.split()
        if words and words[0] == "nameserver":
            if len(words) < 2 or _is_loopback(words[1]):
                continue
            nameservers += 1
        kept.append(line)
    if nameservers == 0:
        kept += [f"nameserver {server}" for server in FALLBACK_NAMESERVERS]
    return "\n".join(kept) + "\n"


def hosts(hostname: str, ip: str | None, extra: dict[str, str] | None = None, ip6: str | None = None) -> str:
    """/etc/hosts: localhost for IPv4 and IPv6, then `ip hostname` (and `ip6 hostname` on a dual-stack
    network), then extra {name: ip}."""
    lines = ["127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet",
             "ff00::0\tip6-mcastprefix",
             "ff02::1\tip6-allnodes",
             "ff02::2\tip6-allrouters"]
    if ip:
        lines.append(f"{ip}\t{hostname}")
    else:
        lines[0] += f" {hostname}"
    if ip6:
        lines.append(f"{ip6}\t{hostname}")
    lines += [f"{address}\t{name}" for name, address in (extra or {}).items()]
    return "\n".join(lines) + "\n"


def hostname_file(hostname: str) -> str:
    return hostname + "\n"


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_files(dir: str, hostname: str, ip: str | None, host_resolv_path: str = "/etc/resolv.conf",
                extra_hosts: dict[str, str] | None = None, ip6: str | None = None) -> dict[str, str]:
    """Write resolv.conf, hosts and hostname into `dir`; return {container path: file written}.

    A host without a resolv.conf gets the fallback nameservers. `ip6` is the
    container's IPv6 address on a dual-stack network (hosts names it too).
    """
    try:
        with open(host_resolv_path, encoding="utf-8", errors="replace") as f:
            host_text = f.read()
    except FileNotFoundError:
        host_text = ""
    os.makedirs(dir, mode=0o755, exist_ok=True)
    files = {"/etc/resolv.conf": (os.path.join(dir, "resolv.conf"), resolv_conf(host_text)),
             "/etc/hosts": (os.path.join(dir, "hosts"), hosts(hostname, ip, extra_hosts, ip6)),
             "/etc/hostname": (os.path.join(dir, "hostname"), hostname_file(hostname))}
    for path, text in files.values():
        _write_atomically(path, text)
    return {target: path for target, (path, _) in files.items()}
