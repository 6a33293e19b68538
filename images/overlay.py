"""A container's root: the image's layers stacked with overlayfs under a writable top.

    mount(lowers, upper, work, target)    lowers top first; upper/work per container
    unmount(target)
    image_config_to_process(config, ...)  image config -> OCI `process`, as docker/podman map it

mount(2) passes the option string in one page: 4096 bytes including the final
NUL. When absolute lowerdir paths would not fit, the lowerdirs are written
relative to their common parent with a chdir there for the duration of the
call (containerd's trick); when even that is too long (many layers with
64-hex names), short symlinks 0, 1, 2, ... to the layers are made in a
scratch directory next to the upperdir and the mount is done from there
(docker's overlay2 `l/` links). The kernel resolves lowerdirs at mount time,
so the scratch links are removed right after.
"""
from __future__ import annotations

import errno
import os

from hanok.runtime import explain
from hanok.runtime.errors import ImageError, NotFound

PAGE_LIMIT = 4095  # bytes of options; the page also holds the terminating NUL
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _escape(path: str) -> str:
    """overlayfs splits lowerdir on ':' and the option string on ','."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def options(lowers: list[str], upper: str | None, work: str | None, extra: str = "") -> str:
    opts = "lowerdir=" + ":".join(_escape(p) for p in lowers)
    if upper is not None:
        opts += f",upperdir={_escape(upper)},workdir={_escape(work or '')}"
    if extra:
        opts += "," + extra
    return opts


def plan(lowers: list[str], upper: str | None, work: str | None,
         extra: str = "") -> tuple[str | None, str, list[str] | None]:
    """(directory to chdir to or None, option string, short-link targets or None).

    The third element, when not None, means: make symlinks named 0, 1, ... in
    the chdir directory pointing at these layer paths before mounting.
    """
    opts = options(lowers, upper, work, extra)
    if len(opts.encode()) <= PAGE_LIMIT:
        return None, opts, None
    up = os.path.abspath(upper) if upper else None
    wk = os.path.abspath(work) if work else None
    common = os.path.commonpath([os.path.abspath(p) for p in lowers]) if lowers else "/"
    rel = [os.path.relpath(os.path.abspath(p), common) for p in lowers]
    if all(r != "." for r in rel):
        opts = options(rel, up, wk, extra)
        if len(opts.encode()) <= PAGE_LIMIT:
            return common, opts, None
    names = [format(i, "x") for i in range(len(lowers))]
    opts = options(names, up, wk, extra)
    if len(opts.encode()) <= PAGE_LIMIT:
        return "", opts, [os.path.abspath(p) for p in lowers]
    # upper/work through links too, as a last resort
    opts = options(names, "u", "w", extra)
    if len(opts.encode()) <= PAGE_LIMIT:
        return "", opts, [os.path.abspath(p) for p in lowers] + ([up, wk] if up else [])
    raise ImageError(f"overlay options for {len(lowers)} layers do not fit in one page "
                     f"({len(opts.encode())} bytes > {PAGE_LIMIT})")


def mount(lowers: list[str], upper: str | None, work: str | None, target: str,
          extra: str = "", scratch: str | None = None) -> None:
    """Mount overlayfs on `target`: `lowers` top first, `upper`/`work` per container.

    With `upper` None the mount is read-only (a single lower needs a second
    one for overlayfs: callers then bind-mount instead). `scratch`: where to
    make short links if needed (default: a new directory next to `upper`, or
    next to `target`); it is removed again before returning.
    """
    from hanok.runtime import syscalls

    if not lowers:
        raise ImageError("overlay needs at least one lower layer")
    if upper is None and len(lowers) < 2:
        raise ImageError("a read-only overlay needs at least two lower layers")
    for p in lowers + ([upper, work] if upper else []):
        if not os.path.isdir(p):  # type: ignore[arg-type]
            raise NotFound(f"overlay directory missing: {p}")
    cwd, opts, links = plan(lowers, upper, work, extra)
    made: str | None = None
    old_cwd = None
    try:
        if links is not None:
            base = os.path.dirname(os.path.abspath(scratch or upper or target))
            made = scratch or os.path.join(base, ".l-" + os.urandom(4).hex())
            os.makedirs(made, exist_ok=True)
            names = [format(i, "x") for i in range(len(lowers))]
            if len(links) > len(lowers):
                names += ["u", "w"]
            for n, dest in zip(names, links):
                os.symlink(dest, os.path.join(made, n))
                explain.step(f"ln -s {explain.quote([dest])} {explain.quote([os.path.join(made, n)])}",
                             "short names keep the overlay options within one page")
            cwd = made
        if cwd:
            old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.chdir(cwd)
        if explain.enabled():
            prefix = f"cd {explain.quote([cwd])} && " if cwd else ""
            explain.step(f"{prefix}mount -t overlay overlay -o {explain.quote([opts])} "
                         f"{explain.quote([os.path.abspath(target)])}",
                         "the image's layers (top first) under this container's writable layer")
        try:
            syscalls.mount("overlay", os.path.abspath(target) if cwd else target, "overlay", 0, opts)
        except OSError as e:
            raise ImageError(f"mount overlay on {target}: {e.strerror}") from None
    finally:
        if old_cwd is not None:
            os.fchdir(old_cwd)
            os.close(old_cwd)
        if made is not None:
            for n in os.listdir(made):
                try:
                    os.unlink(os.path.join(made, n))
                except OSError:
                    pass
            try:
                os.rmdir(made)
            except OSError:
                pass


def unmount(target: str, detach_if_busy: bool = True) -> None:
    """Unmount `target` (lazily when busy and `detach_if_busy`); a no-op if not mounted."""
    from hanok.runtime import syscalls

    if explain.enabled():
        if not os.path.ismount(target):  # an overlay is its own filesystem: ismount sees it
            return
        explain.step(f"umount {explain.quote([target])}")
    try:
        syscalls.umount2(target, 0)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return  # not a mount point
        if e.errno == errno.EBUSY and detach_if_busy:
            syscalls.umount2(target, syscalls.MNT_DETACH)
            return
        raise ImageError(f"umount {target}: {e.strerror}") from None


# ------------------------------------------------------------------ process


def _read_in_root(rootfs: str | list[str] | None, path: str) -> str | None:
    """A file of the image, read with every symlink confined to its root.

    `rootfs`: the merged root (a directory) or the unpacked layer dirs, top
    first (a whiteout or a non-file in an upper layer hides lower ones).
    """
    from hanok.images.unpack import Root

    if rootfs is None:
        return None
    roots = [rootfs] if isinstance(rootfs, str) else list(rootfs)
    for r in roots:
        try:
            with Root(r) as root:
                fd = root.open_file(path)
        except FileNotFoundError:
            continue
        except OSError:
            return None  # a whiteout (char device), a directory, a loop: not there
        with os.fdopen(fd, "rb") as f:
            import stat as _stat

            if not _stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(4 << 20).decode("utf-8", "replace")
    return None


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, rootfs: str | list[str] | None = None) -> dict:
    """`user`, `uid`, `user:group`, `uid:gid` -> OCI user {uid, gid, additionalGids?} and home.

    Names are looked up in the image's /etc/passwd and /etc/group (docker's
    rules: a numeric uid not in passwd gets gid 0; supplementary groups are
    the groups listing the user).
    """
    user, _, group = spec.partition(":")
    if not user:
        raise ImageError(f"invalid user {spec!r}")
    passwd = _entries(_read_in_root(rootfs, "/etc/passwd"))
    groups = _entries(_read_in_root(rootfs, "/etc/group"))
    uid = gid = None
    name = None
    home = "/"
    for e in passwd:
        if len(e) < 7 or not e[2].isdigit() or not e[3].isdigit():
            continue
        if e[0] == user or (user.isdigit() and int(e[2]) == int(user)):
            uid, gid, name, home = int(e[2]), int(e[3]), e[0], e[5] or "/"
            break
    if uid is None:
        if not user.isdigit():
            raise ImageError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = int(user), 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for e in groups:
                if len(e) >= 3 and e[0] == group and e[2].isdigit():
                    gid = int(e[2])
                    break
            else:
                raise ImageError(f"unable to find group {group}: no matching entries in group file")
    out: dict = {"uid": uid, "gid": gid}
    if name is not None and not group:
        extra = sorted({int(e[2]) for e in groups
                        if len(e) >= 4 and e[2].isdigit() and name in e[3].split(",") and int(e[2]) != gid})
        if extra:
            out["additionalGids"] = extra
    out["home"] = home
    return out


def _env_key(item: str) -> str:
    return item.split("=", 1)[0]


def image_config_to_process(config: dict, args: list[str] | None = None,
                            entrypoint: list[str] | None = None, env: list[str] | None = None,
                            cwd: str | None = None, user: str | None = None,
                            rootfs: str | list[str] | None = None, terminal: bool = False) -> dict:
    """An OCI `process` from an image config, with the user's overrides, as docker does.

    `config`: the image config JSON (or just its "config" section).
    `args`: replaces Cmd. `entrypoint`: replaces Entrypoint (and drops the
    image's Cmd, as `docker run --entrypoint` does; [] or [""] clears it).
    `env`: KEY=VALUE items overriding the image's. `user`: overrides User.
    `rootfs`: merged root or layer dirs (top first), for user names and HOME.
    The image's StopSignal, Labels and Volumes are returned by
    image_config_extras() (they are not part of `process`).
    """
    cfg = config.get("config", config) if isinstance(config, dict) else {}
    cfg = cfg or {}
    if entrypoint is not None:
        ep = [a for a in entrypoint if a != ""] if entrypoint == [""] else list(entrypoint)
        cmd = list(args) if args else []
    else:
        ep = list(cfg.get("Entrypoint") or [])
        cmd = list(args) if args else list(cfg.get("Cmd") or [])
    argv = ep + cmd
    if not argv:
        raise ImageError("no command specified: the image has no Entrypoint or Cmd, give one")
    merged: dict[str, str] = {}
    for item in list(cfg.get("Env") or []) + list(env or []):
        merged[_env_key(item)] = item
    if "PATH" not in merged:
        merged = {"PATH": DEFAULT_PATH, **merged}
    if terminal and "TERM" not in merged:
        merged["TERM"] = "TERM=xterm"
    workdir = cwd if cwd else (cfg.get("WorkingDir") or "/")
    if not workdir.startswith("/"):
        workdir = "/" + workdir
    image_user = cfg.get("User") or "0"
    if user and user.startswith(":"):  # a group alone (Kubernetes runAsGroup): the image's user, that group
        user = (image_user.partition(":")[0] or "0") + user
    who = resolve_user(user if user else image_user, rootfs)
    home = who.pop("home")
    if "HOME" not in merged:
        merged["HOME"] = f"HOME={home}"
    return {
        "terminal": terminal,
        "user": who,
        "args": argv,
        "env": list(merged.values()),
        "cwd": workdir,
    }


def image_config_extras(config: dict) -> dict:
    """What an image config says beyond `process`: stop signal, labels, volumes.

    Returned as {"annotations": {...}, "volumes": [...], "stopSignal": str|None};
    podman records the stop signal as the org.opencontainers.image.stopSignal
    annotation, and so do we.
    """
    cfg = config.get("config", config) if isinstance(config, dict) else {}
    cfg = cfg or {}
    annotations = dict(cfg.get("Labels") or {})
    stop = cfg.get("StopSignal") or None
    if stop:
        annotations["org.opencontainers.image.stopSignal"] = stop
    return {"annotations": annotations, "volumes": sorted((cfg.get("Volumes") or {}).keys()),
            "stopSignal": stop}
