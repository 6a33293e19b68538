"""The containers the `hanok` CLI manages: made from images, named, with a
writable top layer, a network, a monitor, logs and a recorded exit code.

hanok-oci (runtime/container.py) runs bundles someone else prepared. This
module prepares them: it is what docker's daemon or podman's libpod do, but
without a daemon, so every fact lives in files and every command re-reads them.

On disk (`store` = /var/lib/hanok, `run` = /run/hanok by default):

    store/containers/<id>/container.json  what was asked for (written once, at create)
                         /run.json        the current run: started, network, monitor pid
                         /exit.json       how the last run ended (the monitor writes it)
                         /upper /work     this container's writable layer
                         /bundle/         config.json + rootfs (the overlay's mount point)
                         /etc/            hosts, resolv.conf, hostname bind-mounted in
                         /ctr.log         stdout/stderr in the CRI log format
                         /lock            flock held while the container changes
    store/containers/names/<name> -> <id> a symlink: creating it with O_EXCL is
                                          what makes names unique
    store/volumes/<name>/_data            named volumes
    run/containers/<id>/state.json        the runtime core's state (as hanok-oci's)

Status is derived, never stored: the runtime core's state (pid + start time)
says whether a process runs; exit.json says how it ended. So a CLI killed at
any moment leaves nothing that lies: `hanok ps` reads the truth, and
`hanok gc` finishes what a crash left half-made.

When a detached container's process exits, its monitor runs
`hanok container cleanup ID` (conmon's exit command, the same idea): that
unmounts the root, tears the network down, deletes the runtime state, and
removes the container when it was started with --rm.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

from hanok.runtime import jsonio, state
from hanok.runtime.bundle import RunOptions
from hanok.runtime.errors import BadState, Exists, HanokError, InvalidArgument, NotFound

RECORD = "container.json"
RUN = "run.json"
EXIT = "exit.json"
LOG = "ctr.log"
NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
NAME_CHARS = NAME_FIRST | frozenset("_.-")
_HEX = frozenset("0123456789abcdef")
_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
               "nifty", "proud", "quiet", "sharp", "tender", "vivid", "wise", "young", "zen", "bold")
_NOUNS = ("ondol", "maru", "giwa", "madang", "daecheong", "buttumak", "cheoma", "hanji", "sarang",
          "anchae", "jangdok", "gudeul", "muncheol", "dol", "namu", "baram", "haneul", "byeol", "san", "gang")


def _now() -> str:
    return state.rfc3339_now()


def validate_name(name: str) -> None:
    """docker's rule: [a-zA-Z0-9][a-zA-Z0-9_.-]*; names become file names."""
    if not name or name[0] not in NAME_FIRST or not NAME_CHARS.issuperset(name) or len(name) > 128:
        raise InvalidArgument(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


class Container:
    """One container's files, read on demand."""

    def __init__(self, engine: "Engine", cid: str):
        self.engine = engine
        self.id = cid
        self.dir = os.path.join(engine.containers_dir, cid)
        self._record: dict | None = None

    @property
    def record(self) -> dict:
        if self._record is None:
            self._record = load_record(os.path.join(self.dir, RECORD), "container", self.id)
        return self._record

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def options(self) -> RunOptions:
        return RunOptions(**self.record["options"])

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def bundle(self) -> str:
        return self.path("bundle")

    @property
    def rootfs(self) -> str:
        return self.path("bundle", "rootfs")

    def read_json(self, name: str) -> dict | None:
        try:
            value = jsonio.load_file(self.path(name))
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def write_json(self, name: str, value: dict) -> None:
        """Atomically; fsynced except run.json, which describes a live process (moot after a power loss)."""
        state.write_atomic(self.path(name), jsonio.dumps(value).encode(), 0o644, durable=name != RUN)

    def lock(self) -> _FileLock:
        """Serialises start/stop/rm/cleanup of one container across processes (`with c.lock():`)."""
        return _FileLock(self.path("lock"), missing=NotFound(f"no such container: {self.id}"))

    def try_lock(self) -> _FileLock:
        """`with c.try_lock() as held:` the lock if nobody holds it (True), else False at once: for gc,
        which must not wait."""
        return _FileLock(self.path("lock"), blocking=False)

    # ------------------------------------------------------------ status

    def oci_status(self) -> tuple[str | None, dict | None]:
        """(runtime status or None when the runtime has no state, its record)."""
        try:
            cdir, rec = state.load(self.engine.oci_root, self.id)
        except NotFound:
            return None, None
        return state.status_of(rec, cdir), rec

    def status(self) -> dict:
        """The live status: created, running, paused or exited, with the exit facts."""
        oci, rec = self.oci_status()
        run = self.read_json(RUN) or {}
        ended = self.read_json(EXIT)
        out: dict = {"status": "created", "running": False, "paused": False, "pid": 0,
                     "exitCode": None, "startedAt": run.get("startedAt"),
                     "finishedAt": None, "oomKilled": False, "error": None}
        if oci in ("running", "paused", "created") and not ended:
            out.update(status="paused" if oci == "paused" else "running", running=True,
                       paused=oci == "paused", pid=(rec or {}).get("pid", 0))
            return out
        if ended:
            out.update(status="exited", exitCode=ended.get("exitCode"), finishedAt=ended.get("finishedAt"),
                       oomKilled=bool(ended.get("oomKilled")))
        elif run.get("startedAt"):
            # it ran, but nobody recorded its end (its monitor or CLI was killed)
            out.update(status="exited", error="the exit code was not recorded (its monitor was killed)")
        return out


    def output_complete(self) -> bool:
        """No more output will reach the log: the process ended and its monitor drained the pipes
        (it writes exit.json after that), or the monitor is gone."""
        if self.status()["running"]:
            return False
        return os.path.exists(self.path(EXIT)) or not _pid_alive((self.read_json(RUN) or {}).get("monitorPid") or 0)


class Engine:
    """hanok's containers under one store and one run directory."""

    def __init__(self, store_root: str, run_root: str = "/run/hanok"):
        self.store_root = os.path.abspath(store_root)
        self.run_root = os.path.abspath(run_root)
        self.containers_dir = os.path.join(self.store_root, "containers")
        self.names_dir = os.path.join(self.containers_dir, "names")
        self.volumes_dir = os.path.join(self.store_root, "volumes")
        self.oci_root = os.path.join(self.run_root, "containers")
        self._store = None
        self._pods = None

    @property
    def pods(self):  # -> hanok.runtime.pod.Pods
        if self._pods is None:
            from hanok.runtime.pod import Pods

            self._pods = Pods(self)
        return self._pods

    @property
    def store(self):  # -> hanok.images.store.Store
        if self._store is None:
            from hanok.images.store import Store

            self._store = Store(self.store_root)
        return self._store

    # ------------------------------------------------------------ lookup

    def ids(self) -> list[str]:
        return record_ids(self.containers_dir, RECORD)

    def containers(self) -> list[Container]:
        return [Container(self, cid) for cid in self.ids()]

    def get(self, ref: str) -> Container:
        """By name, full id, or an unambiguous id prefix (docker's rules)."""
        return Container(self, resolve_ref(ref, "container", self.containers_dir, self.names_dir, RECORD))

    def volume_dir(self, name: str) -> str:
        """A named volume's directory, made on first use."""
        validate_name(name)
        path = os.path.join(self.volumes_dir, name, "_data")
        self.store.prepare()
        os.makedirs(path, exist_ok=True)
        return path

    # ------------------------------------------------------------ create

    def _claim_name(self, name: str | None, cid: str) -> str:
        """Take `name` (or a random free one) for the container `cid` and make its directory.

        Both happen under the names lock, so a link whose container directory
        does not exist is known to be left by a crash (never a create in
        progress) and can be taken over.
        """
        cdir = os.path.join(self.containers_dir, cid)
        if name is not None:
            validate_name(name)
            candidates = [name]
        else:
            candidates = []
            for _ in range(100):
                rnd = os.urandom(3)
                candidates.append(f"{_ADJECTIVES[rnd[0] % len(_ADJECTIVES)]}_{_NOUNS[rnd[1] % len(_NOUNS)]}"
                                  f"{rnd[2] % 100}")
        with name_lock(self.names_dir):
            for candidate in candidates:
                if claim_link(self.names_dir, candidate, cid, self.containers_dir):
                    os.mkdir(cdir, 0o700)
                    return candidate
                if name is not None:
                    owner = os.readlink(os.path.join(self.names_dir, name))
                    raise Exists(f'the container name "{name}" is already in use by container {owner[:12]}')
        raise HanokError("could not pick a free container name; give one with --name")

    def resolve_image(self, ref: str, pull: bool = True, quiet: bool = True):  # -> images.store.Image
        """The stored image, pulled first when it is missing (docker run's behaviour)."""
        try:
            return self.store.image(ref)
        except NotFound:
            if not pull:
                raise
        from hanok.images import registry

        name = registry.pull(self.store, ref)
        return self.store.image(name)

    def create(self, opts: RunOptions, pull: bool = True) -> Container:
        """Make the container's files; nothing runs yet. Validates everything first."""
        from hanok.runtime import bundle

        if opts.network.startswith("container:"):
            self.get(opts.network.split(":", 1)[1])
        elif not opts.pod and opts.network not in ("bridge", "none", "host"):
            from hanok.netns import network

            network.get_network(self.store_root, opts.network)  # NotFound now, not at start
        if opts.pod is not None:
            pod = self.pods.get(opts.pod)
            if not pod.ready():
                raise BadState(f"pod {pod.ref} is not ready (stopped): its containers cannot start")
            if opts.publish:
                raise InvalidArgument("--publish: a pod's ports are published by the pod (hostPort), "
                                      "not by its containers")
            opts.pod, opts.network = pod.id, "pod"
        image = self.resolve_image(opts.image, pull=pull)
        missing = [d for d in image.diff_ids if not self.store.has_layer(d)]
        if missing:
            raise NotFound(f"image {opts.image}: layer {missing[0]} is not unpacked; pull it again")
        if opts.publish:
            from hanok.netns import nat

            for p in opts.publish:
                nat.parse_publish(p)
            if opts.network in ("none", "host") or opts.network.startswith("container:"):
                raise InvalidArgument(f"--publish needs a bridge network, not --network {opts.network}")
        # everything the spec needs is checked now, so `create` fails before making anything
        layers = [self.store.layer_path(d) for d in reversed(image.diff_ids)]
        bundle.image_spec(image.config or {}, layers, opts, hostname="x", netns_path=None, etc_files={},
                          named_volume_dir=_checked_volume_name, annotations={})
        cid = os.urandom(32).hex()
        self.store.prepare()  # 0700: containers' upper dirs may hold setuid files they made
        os.makedirs(self.containers_dir, exist_ok=True)
        cdir = os.path.join(self.containers_dir, cid)
        name = self._claim_name(opts.name, cid)
        try:
            for sub in ("upper", "work", "bundle", "bundle/rootfs", "etc"):
                os.mkdir(os.path.join(cdir, sub), 0o755)
            opts.name = name
            record = {
                "id": cid, "name": name, "created": _now(),
                "image": {"name": opts.image, "id": image.id, "digest": image.digest},
                "layers": list(image.diff_ids),
                "imageConfig": (image.config or {}).get("config") or {},
                "hostname": opts.hostname or cid[:12],
                "options": opts.to_dict(),
            }
            # durable: a container outlives a reboot (a --rm one too, if it was running at a power
            # loss: an unsynced new file could come back empty)
            state.write_atomic(os.path.join(cdir, RECORD), jsonio.dumps(record).encode(), 0o644)
        except BaseException:
            try:
                os.unlink(os.path.join(self.names_dir, name))
            except OSError:
                pass
            remove_owner_dir(cdir)
            raise
        return Container(self, cid)

    # ------------------------------------------------------------ start

    def _network_for(self, c: Container) -> dict | None:
        """Set up the network the options ask for; None for the host's network."""
        opts = c.options
        if opts.pod is not None:  # the pod's namespace: set up by the pod, released with it
            pod = self.pods.get(opts.pod)
            if not pod.ready():
                raise BadState(f"pod {pod.ref} is not ready (stopped): its containers cannot start")
            return {**(pod.record.get("network") or {}), "netns": pod.namespace_paths()["network"],
                    "joined": pod.id}
        mode = opts.network
        if mode == "host":
            return None
        from hanok.netns import network

        if mode.startswith("container:"):
            other = self.get(mode.split(":", 1)[1])
            if not other.status()["running"]:
                raise BadState(f"cannot join the network of {other.name}: it is not running")
            run = other.read_json(RUN) or {}
            net = run.get("network")
            if not net or not net.get("netns"):
                raise BadState(f"cannot join the network of {other.name}: it uses the host's network")
            return {**net, "joined": other.id}
        ports = []
        if opts.publish:
            from hanok.netns import nat

            for p in opts.publish:
                ports.extend(nat.parse_publish(p))
        if mode == "none":
            return network.setup(self.store_root, self.run_root, c.id, mode="none", hostname=c.record["hostname"])
        name = network.DEFAULT_NETWORK if mode == "bridge" else mode
        return network.setup(self.store_root, self.run_root, c.id, mode="bridge", network=name, ports=ports,
                             hostname=c.record["hostname"])

    def _etc_files(self, c: Container, net: dict | None) -> dict[str, str]:
        """/etc/hosts, /etc/resolv.conf, /etc/hostname to bind-mount (network.setup writes them)."""
        hostname = c.record["hostname"]
        if net is not None and net.get("files") and not net.get("joined"):
            return dict(net["files"])
        if net is None:  # the host's network: its resolver works as it is, through a copy
            hosts = c.path("etc", "hosts")
            state.write_atomic(hosts, f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n".encode(),
                               0o644, durable=False)
            state.write_atomic(c.path("etc", "hostname"), f"{hostname}\n".encode(), 0o644, durable=False)
            try:
                with open("/etc/resolv.conf", "rb") as f:
                    resolv = f.read(1 << 16)
            except OSError:
                resolv = b""
            state.write_atomic(c.path("etc", "resolv.conf"), resolv, 0o644, durable=False)
            return {"/etc/hosts": hosts, "/etc/hostname": c.path("etc", "hostname"),
                    "/etc/resolv.conf": c.path("etc", "resolv.conf")}
        from hanok.netns import dns

        files = dns.write_files(c.path("etc"), hostname, net.get("ip") or "127.0.1.1", ip6=net.get("ip6"))
        dns_config = self.pods.get(c.options.pod).record.get("dnsConfig") if c.options.pod is not None else None
        if dns_config:  # a node agent's cluster DNS (CRI dns_config) replaces the host's resolvers
            from hanok.runtime.pod import resolv_conf

            state.write_atomic(files["/etc/resolv.conf"], resolv_conf(dns_config).encode(), 0o644)
        return files

    def _fresh_run(self, c: Container, first: bool = False) -> dict:
        """Under the lock: what an earlier run left is released, then root, network and config
        are set up for a new one (see _prepare). `first`: `run` created `c` just now, so there
        is no earlier run to release (unless a `start` raced us, which the status check sees)."""
        if c.status()["running"]:
            raise BadState(f"container {c.name} is already running")
        if not first or os.path.exists(c.path(RUN)):
            self._release(c)
            for stale in (EXIT, RUN):
                try:
                    os.unlink(c.path(stale))
                except FileNotFoundError:
                    pass
        return self._prepare(c)

    def _prepare(self, c: Container) -> dict:
        """Root mounted, network up, config.json written; undone on failure. Returns run.json."""
        from hanok.images import overlay
        from hanok.runtime import bundle

        rec = c.record
        undo: list = []
        try:
            lowers = [self.store.layer_path(d) for d in reversed(rec["layers"])]
            for d in rec["layers"]:
                if not self.store.has_layer(d):
                    raise NotFound(f"container {c.name}: image layer {d} is gone from the store")
            overlay.mount(lowers, c.path("upper"), c.path("work"), c.rootfs)
            undo.append(lambda: overlay.unmount(c.rootfs))
            net = self._network_for(c)
            if net is not None and not net.get("joined"):
                from hanok.netns import network

                undo.append(lambda: network.teardown(self.store_root, self.run_root, c.id))
            etc = self._etc_files(c, net)
            joined: dict[str, str] = {}
            cgroups_path = None
            if c.options.pod is not None:
                pod = self.pods.get(c.options.pod)
                joined = {k: v for k, v in pod.namespace_paths().items() if k != "network"}
                cgroups_path = f"{pod.cgroup_path.rstrip('/')}/{c.id}"
            spec = bundle.image_spec({"config": rec.get("imageConfig") or {}}, lowers, c.options,
                                     hostname=rec["hostname"], netns_path=(net or {}).get("netns"),
                                     etc_files=etc, named_volume_dir=self.volume_dir,
                                     annotations={"io.github.hanok.name": c.name},
                                     joined_namespaces=joined, cgroups_path=cgroups_path)
            state.write_atomic(os.path.join(c.bundle, "config.json"), jsonio.dumps(spec, indent=2).encode(), 0o644,
                               durable=False)  # written again by every start
            return {"startedAt": _now(), "network": net}
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except (HanokError, OSError):
                    pass
            raise

    def start(self, ref: str | Container, *, attach: bool = False) -> Container | int:
        """Start a created or exited container detached, under its monitor.

        With `attach` (docker's `start -a`, and `run` without -d) its output is
        copied to ours until it exits, and the exit code is returned.
        """
        c = ref if isinstance(ref, Container) else self.get(ref)
        if c.options.tty and attach:
            return self._run_in_terminal(c)
        monitor_pid = self._launch(c, attach)
        return self._follow_until_exit(c, monitor_pid) if attach else c

    def _launch(self, c: Container, attach: bool, first: bool = False) -> int:
        """Root, network, config and monitor; the container runs when this returns its monitor's pid."""
        with c.lock():
            run = self._fresh_run(c, first)
            try:
                # a detached container's monitor runs `container cleanup` when it exits; an
                # attached CLI cleans up itself (it has everything loaded already), and its
                # monitor does it only if this CLI was killed meanwhile
                info = self._spawn_monitor(c, stdin_fd=0 if (attach and c.options.interactive) else None,
                                           detached=not attach)
            except BaseException:
                self._release(c, keep_run=False)
                raise
            run["monitorPid"] = info.pid
            run["pid"] = info.container_pid
            c.write_json(RUN, run)
        return info.pid

    def _spawn_monitor(self, c: Container, stdin_fd: int | None, detached: bool):
        from hanok.runtime import container, monitor

        saved_stdin = os.dup(stdin_fd) if stdin_fd is not None else None
        oci_root, cid, bundle_dir = self.oci_root, c.id, c.bundle
        tty = c.options.tty
        console = c.path("console.sock") if tty else None

        def launch() -> int:
            """In the monitor: the container is its child, with the monitor's stdio (or the CLI's stdin)."""
            if saved_stdin is not None:
                os.dup2(saved_stdin, 0)
            pid = container.create(oci_root, cid, bundle_dir, console_socket=console)
            try:
                container.start(oci_root, cid)
            except BaseException:
                container.delete(oci_root, cid, force=True)
                raise
            return pid

        try:
            return monitor.spawn(launch=launch, log_path=c.path(LOG), exit_path=c.path(EXIT), terminal=tty,
                                 console_socket_path=console,
                                 exit_command=self.cli_command("container", "cleanup", c.id),
                                 exit_command_unless_alive=None if detached else os.getpid())
        finally:
            if saved_stdin is not None:
                os.close(saved_stdin)

    def cli_command(self, *args: str) -> list[str]:
        """The `hanok` command line a monitor runs when its container exits."""
        return [sys.executable, "-c", "from hanok.cli import hanok_main; hanok_main()",
                "--store", self.store_root, "--state", self.run_root, *args]

    def _follow_until_exit(self, c: Container, monitor_pid: int) -> int:
        """Print the container's output as it comes, forward ^C and friends, return its exit code."""
        import _signal  # the C module: `signal` would import enum (~3 ms)

        from hanok.runtime import container, logs

        def forward(signum: int, _frame: object) -> None:
            try:
                container.kill(self.oci_root, c.id, signum)
            except HanokError:
                pass

        for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
            _signal.signal(sig, forward)

        ended: dict | None = None

        def finished() -> bool:
            # exit.json appears only once the monitor has drained the log (monitor.py)
            nonlocal ended
            ended = c.read_json(EXIT)
            return ended is not None or not _pid_alive(monitor_pid)

        try:  # readable once the monitor is gone, i.e. once it has recorded the exit: no poll interval lost
            wake: int | None = os.pidfd_open(monitor_pid)
        except OSError:  # gone already (finished() sees that at once), or a kernel without pidfds (< 5.3)
            wake = None
        try:
            logs.show(logs.read(c.path(LOG), follow=True, stop=finished, wake_fd=wake))  # `run | head` waits too
        finally:
            if wake is not None:
                os.close(wake)
        self.cleanup(c.id)  # see _launch: the monitor's exit command is for a killed CLI only
        if ended is None or ended.get("exitCode") is None:
            raise HanokError(f"container {c.name}: its monitor exited without recording an exit code")
        return int(ended["exitCode"])

    def _run_in_terminal(self, c: Container) -> int:
        """`run -it`: the container's pty is relayed to ours by this process (no log is kept)."""
        from hanok.runtime import container

        with c.lock():
            run = self._fresh_run(c)
            run["monitorPid"] = os.getpid()
            c.write_json(RUN, run)
        try:
            code = container.run(self.oci_root, c.id, c.bundle)
            c.write_json(EXIT, {"exitCode": code, "finishedAt": _now()})
        finally:
            self.cleanup(c.id)
        return code

    # ------------------------------------------------------------ run / stop / rm

    def run(self, opts: RunOptions, *, detach: bool, pull: bool = True) -> tuple[Container, int | None]:
        """create + start; attached runs return the exit code (and honour --rm here).

        A failure before the container's process runs removes the container
        (nothing half-made is left); once it runs, it is the container's to
        keep, whatever happens to this CLI.
        """
        c = self.create(opts, pull=pull)
        try:
            if opts.tty and not detach:
                return c, self._run_in_terminal(c)
            monitor_pid = self._launch(c, attach=not detach, first=True)
        except BaseException:
            try:
                self.remove(c.id, force=True)
            except (HanokError, OSError):
                pass
            raise
        if detach:
            return c, None
        return c, self._follow_until_exit(c, monitor_pid)

    def kill(self, ref: str, signal: str | int = "KILL") -> Container:
        from hanok.runtime import container

        c = self.get(ref)
        if not c.status()["running"]:
            raise BadState(f"container {c.name} is not running")
        container.kill(self.oci_root, c.id, signal)
        return c

    def stop(self, ref: str, timeout: float | None = None) -> Container:
        """The stop signal (the image's, else SIGTERM); SIGKILL after `timeout` (10 s)."""
        from hanok.runtime import container

        c = self.get(ref)
        if not c.status()["running"]:
            return c
        signal = (c.record.get("imageConfig") or {}).get("StopSignal") or "TERM"
        try:
            container.kill(self.oci_root, c.id, signal)
        except (BadState, NotFound):
            pass
        if not self._wait_stopped(c, 10.0 if timeout is None else timeout):
            try:
                container.kill(self.oci_root, c.id, "KILL", all_processes=True)
            except (BadState, NotFound):
                pass
            self._wait_stopped(c, 10.0)
        self.cleanup(c.id)
        return c

    def _wait_stopped(self, c: Container, timeout: float) -> bool:
        """Until the process is gone and its end recorded (or its monitor is gone too)."""
        deadline = time.monotonic() + timeout
        while True:
            st = c.status()
            run = c.read_json(RUN) or {}
            monitor = run.get("monitorPid")
            if not st["running"] and (st["exitCode"] is not None or not monitor or not _pid_alive(monitor)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def cleanup(self, ref: str) -> None:
        """After the process exited: runtime state, network and root mount go; --rm removes."""
        try:
            c = self.get(ref)
        except NotFound:
            return
        with c.lock():
            if c.status()["running"]:
                return
            self._record_oom_kill(c)
            self._release(c)
        if c.options.auto_remove:
            try:
                self.remove(c.id, force=True)
            except (NotFound, BadState):
                pass

    def _record_oom_kill(self, c: Container) -> None:
        """Before the cgroup goes: did the kernel's OOM killer end this run? (into exit.json)

        Written only when it did: readers take a missing oomKilled as false, and
        rewriting exit.json after every run would cost an fsync on `run`'s path.
        """
        from hanok.runtime import container

        ended = c.read_json(EXIT)
        if ended is None or "oomKilled" in ended:
            return
        try:
            memory = container.stats(self.oci_root, c.id).get("memory") or {}
        except HanokError:
            return
        if memory.get("oom_kill"):
            ended["oomKilled"] = True
            c.write_json(EXIT, ended)

    def _network_set_up(self, c: Container) -> bool:
        from hanok.netns import network

        return network.has_endpoint(self.store_root, self.run_root, c.id)

    def _owner_alive(self, owner: str) -> bool:
        """For network gc: may `owner` (a container or pod id) still use its network endpoint?

        Asked at the moment of deciding (not from a list made earlier), so a
        container started while gc runs keeps its network.
        """
        if owner in self.pods.live_ids():  # a pod's endpoint lives as long as its sandbox
            return True
        c = Container(self, owner)
        if not os.path.isdir(c.dir):
            return False
        if not os.path.exists(c.path(RECORD)):
            return True  # a create in progress (a crashed one goes with the half-made directories)
        with c.try_lock() as mine:
            return not mine or bool(c.status()["running"])

    def _release(self, c: Container, keep_run: bool = True) -> None:
        """Undo what a run set up (idempotent; the caller holds the lock)."""
        from hanok.images import overlay
        from hanok.runtime import container

        try:
            container.delete(self.oci_root, c.id, force=True)
        except NotFound:
            pass
        net = (c.read_json(RUN) or {}).get("network")
        if net is None or not net.get("joined"):
            from hanok.netns import network

            if network.has_endpoint(self.store_root, self.run_root, c.id):  # else skip loading netlink
                network.teardown(self.store_root, self.run_root, c.id)
        overlay.unmount(c.rootfs)
        if not keep_run:
            try:
                os.unlink(c.path(RUN))
            except FileNotFoundError:
                pass

    def remove(self, ref: str, force: bool = False) -> Container:
        """docker rm: a running container only with `force` (killed first), or with a corrupt record."""
        c = self.get(ref)
        if force and self._record_corrupt(c):
            self._remove_corrupt(c)
            return c
        for _ in range(3):
            if c.status()["running"]:
                if not force:
                    raise BadState(f"cannot remove container {c.name}: it is running (stop it first, or use -f)")
                from hanok.runtime import container

                try:
                    container.kill(self.oci_root, c.id, "KILL", all_processes=True)
                except (BadState, NotFound):
                    pass
                self._wait_stopped(c, 10.0)
            with c.lock():
                if c.status()["running"]:  # started meanwhile: judge again
                    continue
                self._release(c)
                name_link = os.path.join(self.names_dir, c.name)
                try:
                    if os.readlink(name_link) == c.id:
                        os.unlink(name_link)
                except OSError:
                    pass
                os.unlink(c.path(RECORD))  # from here on the container does not exist
            remove_owner_dir(c.dir)
            return c
        raise BadState(f"cannot remove container {c.name}: it keeps being started")

    def _record_corrupt(self, c: Container) -> bool:
        try:
            c.record
        except NotFound:
            return False
        except HanokError:
            return True
        return False

    def _remove_corrupt(self, c: Container) -> None:
        """A container whose record cannot be read (a power loss, a hand edit): everything that may
        exist for its id is released, best effort, then its directory and name links go."""
        from hanok.images import overlay
        from hanok.netns import network
        from hanok.runtime import container

        with c.lock():
            for undo in (lambda: container.delete(self.oci_root, c.id, force=True),
                         lambda: network.teardown(self.store_root, self.run_root, c.id),
                         lambda: overlay.unmount(c.rootfs), lambda: os.unlink(c.path(RECORD))):
                try:
                    undo()
                except (HanokError, OSError):
                    pass
            try:
                for name in os.listdir(self.names_dir):
                    link = os.path.join(self.names_dir, name)
                    try:
                        if os.readlink(link) == c.id:
                            os.unlink(link)
                    except OSError:
                        pass
            except OSError:
                pass
        remove_owner_dir(c.dir)

    # ------------------------------------------------------------ exec

    def exec(self, ref: str, args: list[str], *, env: list[str] = (), workdir: str | None = None,  # type: ignore[assignment]
             user: str | None = None, tty: bool = False, detach: bool = False, timeout: float | None = None,
             interactive: bool = False) -> int:
        """Run another process in a running container; its exit code (0 when detached).

        `timeout` (CRI ExecSync): past it the process is SIGKILLed and a
        HanokError says so; its output so far has been passed through already.
        """
        from hanok.runtime import container

        c = self.get(ref)
        if not c.status()["running"]:
            raise BadState(f"container {c.name} is not running")
        numeric = None
        if user:
            from hanok.images import overlay

            who = overlay.resolve_user(user, c.rootfs)
            numeric = f"{who['uid']}:{who['gid']}"
        process = container.exec_spec(self.oci_root, c.id, list(args), list(env), workdir, numeric, tty, [], None)
        if timeout is not None:
            if tty or detach:
                raise InvalidArgument("a timeout needs an exec that is waited for, without a terminal")
            with _StdinUnless(interactive):
                return container.exec_process(self.oci_root, c.id, process, wait=_waiter(timeout, " ".join(args)))
        if not tty:
            with _StdinUnless(interactive):
                return container.exec_process(self.oci_root, c.id, process, detach=detach)
        if detach:
            raise InvalidArgument("a terminal needs an attached exec (drop -d or -t)")
        from hanok.runtime.process import console_pair, receive_pty_master, relay_pty_until_exit

        ours, theirs = console_pair()
        try:
            def relay(pid: int) -> int:
                master = receive_pty_master(ours)
                try:
                    return relay_pty_until_exit(master, pid)
                finally:
                    os.close(master)

            return container.exec_process(self.oci_root, c.id, process, console_fd=theirs, wait=relay)
        finally:
            os.close(ours)

    # ------------------------------------------------------------ gc

    def gc(self, grace_seconds: float = 60.0) -> dict:
        """Finish what crashed commands left behind; returns what was done.

        - containers not running whose root, network or runtime state is still
          set up (their monitor or CLI was killed): released; --rm ones removed;
          containers whose record is corrupt (a power loss, a hand edit): removed
        - directories without container.json and name links to nothing, older
          than `grace_seconds` (younger ones may be a create in progress)
        - runtime states without a container, network endpoints, leases,
          namespaces and port rules whose owner is not running
        """
        from hanok.runtime import container

        report: dict[str, list[str]] = {"released": [], "removed": [], "halfMade": [], "names": [],
                                        "runtimeStates": [], "network": []}
        for c in self.containers():
            if self._record_corrupt(c):  # records are renamed into place whole: this never heals
                try:
                    self._remove_corrupt(c)
                    report["removed"].append(c.id)
                except (HanokError, OSError):
                    pass
                continue
            try:
                with c.try_lock() as mine:
                    if not mine:  # being started, stopped or removed right now: not ours to judge
                        continue
                    st = c.status()  # read under the lock: a start cannot slip in between
                    if st["running"]:
                        continue
                    doomed = c.options.auto_remove and st["status"] == "exited"
                    if not doomed and (os.path.ismount(c.rootfs) or c.oci_status()[0] is not None
                                       or self._network_set_up(c)):
                        self._release(c)
                        report["released"].append(c.id)
                if doomed:
                    self.remove(c.id, force=True)
                    report["removed"].append(c.id)
            except HanokError:
                continue
        now = time.time()
        try:
            entries = os.listdir(self.containers_dir)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            path = os.path.join(self.containers_dir, entry)
            if (len(entry) == 64 and not os.path.exists(os.path.join(path, RECORD))
                    and now - os.lstat(path).st_mtime > grace_seconds):
                from hanok.images import overlay

                overlay.unmount(os.path.join(path, "bundle", "rootfs"))
                remove_owner_dir(path)
                report["halfMade"].append(entry)
        report["names"] = remove_dangling_links(self.names_dir, self.containers_dir, RECORD, grace_seconds)
        known = set(self.ids())
        for cid in state.list_ids(self.oci_root):
            if cid not in known:
                try:
                    container.delete(self.oci_root, cid, force=True)
                    report["runtimeStates"].append(cid)
                except HanokError:
                    pass
        from hanok.netns import network

        report.update(self.pods.gc(grace_seconds))
        done = network.gc(self.store_root, self.run_root, self._owner_alive)
        for kind, items in sorted(done.items()):
            report["network"].extend(f"{kind} {item}" for item in items)
        return report

    # ------------------------------------------------------------ queries

    def summary(self, c: Container) -> dict:
        """The stable JSON of `hanok ps --json` (documented in the README)."""
        rec = c.record
        st = c.status()
        run = c.read_json(RUN) or {}
        net = run.get("network") or {}
        return {
            "id": c.id, "name": rec["name"], "image": rec["image"]["name"], "imageId": rec["image"]["id"],
            "command": _command_of(rec), "created": rec["created"], "state": st["status"],
            "exitCode": st["exitCode"], "pid": st["pid"], "startedAt": st["startedAt"],
            "finishedAt": st["finishedAt"], "ip": net.get("ip"), "ip6": net.get("ip6"),
            "ports": net.get("ports") or [], "labels": rec["options"].get("labels") or {},
            "pod": rec["options"].get("pod"),
        }

    def inspect(self, ref: str) -> dict:
        c = self.get(ref)
        rec = c.record
        run = c.read_json(RUN) or {}
        return {"id": c.id, "name": rec["name"], "created": rec["created"], "image": rec["image"],
                "state": c.status(), "config": rec["options"], "hostname": rec["hostname"],
                "network": run.get("network"), "logPath": c.path(LOG), "rootfs": c.rootfs,
                "bundle": c.bundle, "upperDir": c.path("upper"), "layers": rec["layers"]}

    def wait(self, ref: str) -> int:
        """docker wait: until the container has exited (a created one is waited for through its start)."""
        c = self.get(ref)
        while True:
            st = c.status()
            if st["status"] == "exited":
                if st["exitCode"] is not None:
                    return int(st["exitCode"])
                run = c.read_json(RUN) or {}
                if not _pid_alive(run.get("monitorPid") or 0):
                    raise HanokError(f"container {c.name}: the exit code was not recorded (its monitor was killed)")
            elif not os.path.exists(c.path(RECORD)):
                raise NotFound(f"no such container: {ref}")  # removed while we waited
            time.sleep(0.05)

    def stats(self, ref: str) -> dict:
        from hanok.runtime import container

        c = self.get(ref)
        if not c.status()["running"]:
            raise BadState(f"container {c.name} is not running")
        return {"id": c.id, "name": c.name, **container.stats(self.oci_root, c.id)}

    def in_use_layers(self) -> set[str]:
        layers: set[str] = set()
        for c in self.containers():
            try:
                layers.update(c.record["layers"])
            except HanokError:
                pass
        return layers

    def users_of_image(self, image_id: str) -> list[Container]:
        out = []
        for c in self.containers():
            try:
                if c.record["image"]["id"] == image_id:
                    out.append(c)
            except HanokError:
                pass
        return out


def record_ids(owners_dir: str, record: str) -> list[str]:
    """Ids (64 hex) of the directories under owners_dir that hold a `record` file: containers, pods."""
    try:
        entries = os.listdir(owners_dir)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if len(e) == 64 and os.path.isfile(os.path.join(owners_dir, e, record)))


def resolve_ref(ref: str, kind: str, owners_dir: str, names_dir: str, record: str) -> str:
    """A container's id from its name, full id, or an unambiguous id prefix (docker's rules)."""
    if not ref:
        raise InvalidArgument(f"a {kind} name or id is required")
    if NAME_CHARS.issuperset(ref) and ref[0] in NAME_FIRST:
        try:
            target = os.readlink(os.path.join(names_dir, ref))
        except OSError:
            target = None
        if target and os.path.isfile(os.path.join(owners_dir, target, record)):
            return target
    return id_by_prefix(ref, kind, owners_dir, record)


def id_by_prefix(ref: str, kind: str, owners_dir: str, record: str) -> str:
    """The one id (of a container or pod) starting with `ref`; NotFound, or InvalidArgument when several do."""
    if _HEX.issuperset(ref):
        matches = [i for i in record_ids(owners_dir, record) if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"{kind} id prefix {ref!r} is ambiguous ({len(matches)} {kind}s)")
    raise NotFound(f"no such {kind}: {ref}")


def load_record(path: str, kind: str, owner_id: str) -> dict:
    """container.json / pod.json: NotFound when gone, one clear line when corrupt."""
    try:
        value = jsonio.load_file(path)
    except FileNotFoundError:
        raise NotFound(f"no such {kind}: {owner_id}") from None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise HanokError(f"{kind} {owner_id}: {path} is corrupt; `hanok {'pod ' if kind == 'pod' else ''}rm -f "
                         f"{owner_id}` removes it")
    return value


def remove_owner_dir(path: str) -> None:
    """Remove a container's or pod's directory; never across a mount, at any depth.

    Iterative (images.unpack.remove_tree): a container may have nested
    directories thousands deep in its upper layer, past Python's recursion limit.
    """
    from hanok.images.unpack import remove_tree

    if os.path.ismount(os.path.join(path, "bundle", "rootfs")):
        raise HanokError(f"cannot remove {path}: its root is still mounted")
    try:
        remove_tree(path)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise HanokError(f"cannot remove {path}: something is still mounted there") from None
        raise


# The `with` blocks here are small classes rather than @contextlib.contextmanager generators: importing
# contextlib (collections, functools) costs ~2.5 ms, a sixth of `hanok ps`.

class _FileLock:
    """flock(LOCK_EX) on a lock file for one `with` block, which gets True; `blocking=False` gets False
    at once when another process holds it, and so does a missing directory unless `missing` is given,
    which is raised instead."""

    def __init__(self, path: str, blocking: bool = True, missing: HanokError | None = None) -> None:
        self.path = path
        self.blocking = blocking
        self.missing = missing
        self.fd = -1

    def __enter__(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            if self.missing is not None:
                raise self.missing from None
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def __exit__(self, *exc_info: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _StdinUnless:
    """docker exec without -i: the process reads /dev/null, not our stdin (a loop's input is not its)."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.saved = -1

    def __enter__(self) -> None:
        if self.interactive:
            return
        saved = os.dup(0)
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            try:
                os.dup2(devnull, 0)
            finally:
                os.close(devnull)
        except BaseException:
            os.close(saved)
            raise
        self.saved = saved

    def __exit__(self, *exc_info: object) -> None:
        if self.saved >= 0:
            os.dup2(self.saved, 0)
            os.close(self.saved)
            self.saved = -1


def name_lock(names_dir: str) -> _FileLock:
    """Serialises taking names (containers' or pods'): see claim_link. `with name_lock(d):`"""
    os.makedirs(names_dir, exist_ok=True)
    return _FileLock(os.path.join(names_dir, ".lock"))


def remove_dangling_links(names_dir: str, owners_dir: str, record: str, grace_seconds: float) -> list[str]:
    """gc of names/ (containers' or pods'): links whose owner has no record and that are older than
    `grace_seconds` (a younger one may be a create in progress) are removed; returns their names."""
    now = time.time()
    removed = []
    try:
        names = os.listdir(names_dir)
    except FileNotFoundError:
        return []
    for name in names:
        link = os.path.join(names_dir, name)
        try:  # not a link (.lock), or gone meanwhile
            if (not os.path.isfile(os.path.join(owners_dir, os.readlink(link), record))
                    and now - os.lstat(link).st_mtime > grace_seconds):
                os.unlink(link)
                removed.append(name)
        except OSError:
            pass
    return removed


def claim_link(names_dir: str, name: str, owner_id: str, owners_dir: str) -> bool:
    """names/<name> -> owner_id; False when a live owner has it. Call under name_lock.

    The caller makes owners_dir/<owner_id> before releasing the lock, so a
    link to a directory that does not exist was left by a crash.
    """
    link = os.path.join(names_dir, name)
    try:
        os.symlink(owner_id, link)
        return True
    except FileExistsError:
        pass
    if os.path.isdir(os.path.join(owners_dir, os.readlink(link))):
        return False
    os.unlink(link)
    os.symlink(owner_id, link)
    return True


def _checked_volume_name(name: str) -> str:
    """For the dry run of image_spec in create: checks a volume name, makes nothing."""
    validate_name(name)
    return "/"


def _command_of(rec: dict) -> list[str]:
    opts = rec["options"]
    cfg = rec.get("imageConfig") or {}
    ep = opts.get("entrypoint")
    if ep is not None:
        return list(ep) + list(opts.get("command") or [])
    return list(cfg.get("Entrypoint") or []) + list(opts.get("command") or cfg.get("Cmd") or [])


def _waiter(timeout: float, what: str):  # -> Callable[[int], int]
    """A wait for exec: the wait status, or SIGKILL after `timeout` seconds and an error saying so."""
    def wait(pid: int) -> int:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= deadline:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                raise HanokError(f"exec {what!r} timed out after {timeout:g}s and was killed")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    return wait


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:data.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return False


