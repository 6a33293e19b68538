"""OCI linux.resources -> the cgroup files to write, and the values to write there.

Pure: no I/O, no knowledge of where the cgroup is (crun's split between "which
cgroup" and "what is written"). The managers (v1.py, v2.py) check the result
against the host (is the controller there, does the file exist) and write it.

    to_v2(resources) -> {"memory.max": "104857600", "cpu.max": "50000 100000", ...}
    to_v1(resources) -> {"memory": {"memory.limit_in_bytes": "104857600"},
                         "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}, ...}

Insertion order is write order. A value holding several lines ("\\n") is
written one line per write(2): files such as io.max, blkio.throttle.*,
devices.allow take one entry per write.

Conventions follow runc: 0 (or a missing/null field) means "unset" for memory,
cpu and swap values, -1 means unlimited; pids.limit 0 or -1 means "max".
cpu.shares -> cpu.weight uses the quadratic conversion runc (opencontainers/
cgroups ConvertCPUSharesToCgroupV2Value) and crun adopted in 2025, which maps
the default 1024 shares to the default weight 100 (the older linear
`1 + ((shares - 2) * 9999) / 262142` gave 39).

Errors: bad values raise SpecError naming the setting; settings the cgroup
version cannot express raise CgroupError. No regular expressions (hot path).
"""
from __future__ import annotations

import math

from hanok.runtime.errors import CgroupError, SpecError

if False:  # for type checkers only: no import cost at run time
    from collections.abc import Iterable

P = "linux.resources"

# Controllers whose files may appear in `unified` (cgroup v2 only).
V2_CONTROLLERS = frozenset({"cpu", "cpuset", "memory", "io", "pids", "hugetlb", "rdma", "misc"})

# file -> the setting it comes from, for error messages written by the managers
SETTINGS = {
    "memory.max": f"{P}.memory.limit",
    "memory.limit_in_bytes": f"{P}.memory.limit",
    "memory.low": f"{P}.memory.reservation",
    "memory.soft_limit_in_bytes": f"{P}.memory.reservation",
    "memory.swap.max": f"{P}.memory.swap",
    "memory.memsw.limit_in_bytes": f"{P}.memory.swap",
    "memory.swappiness": f"{P}.memory.swappiness",
    "memory.oom_control": f"{P}.memory.disableOOMKiller",
    "cpu.weight": f"{P}.cpu.shares",
    "cpu.shares": f"{P}.cpu.shares",
    "cpu.max": f"{P}.cpu.quota",
    "cpu.cfs_quota_us": f"{P}.cpu.quota",
    "cpu.cfs_period_us": f"{P}.cpu.period",
    "cpu.max.burst": f"{P}.cpu.burst",
    "cpu.cfs_burst_us": f"{P}.cpu.burst",
    "cpu.rt_runtime_us": f"{P}.cpu.realtimeRuntime",
    "cpu.rt_period_us": f"{P}.cpu.realtimePeriod",
    "cpu.idle": f"{P}.cpu.idle",
    "cpuset.cpus": f"{P}.cpu.cpus",
    "cpuset.mems": f"{P}.cpu.mems",
    "pids.max": f"{P}.pids.limit",
    "io.weight": f"{P}.blockIO.weight",
    "blkio.weight": f"{P}.blockIO.weight",
    "blkio.leaf_weight": f"{P}.blockIO.leafWeight",
    "blkio.weight_device": f"{P}.blockIO.weightDevice",
    "blkio.leaf_weight_device": f"{P}.blockIO.weightDevice",
    "io.max": f"{P}.blockIO.throttle*",
    "blkio.throttle.read_bps_device": f"{P}.blockIO.throttleReadBpsDevice",
    "blkio.throttle.write_bps_device": f"{P}.blockIO.throttleWriteBpsDevice",
    "blkio.throttle.read_iops_device": f"{P}.blockIO.throttleReadIOPSDevice",
    "blkio.throttle.write_iops_device": f"{P}.blockIO.throttleWriteIOPSDevice",
    "devices.allow": f"{P}.devices",
    "devices.deny": f"{P}.devices",
    "net_cls.classid": f"{P}.network.classID",
    "net_prio.ifpriomap": f"{P}.network.priorities",
    "rdma.max": f"{P}.rdma",
}


def setting_of(filename: str) -> str:
    """The OCI setting a cgroup file is written for (for error messages)."""
    known = SETTINGS.get(filename)
    if known:
        return known
    if filename.startswith("hugetlb."):
        return f"{P}.hugepageLimits"
    return f"{P}.unified.{filename}"


def setting_of_files(files: Iterable[str]) -> str:
    """The setting to name for a group of files (the default cpu period is not what was asked)."""
    names = list(files)
    for name in names:
        if name != "cpu.cfs_period_us":
            return setting_of(name)
    return setting_of(names[0])


def controller_of(filename: str) -> str:
    return filename.split(".", 1)[0]


# One validated OCI device rule: (allow, type "a"/"c"/"b", major, minor, access made of "rwm");
# major and minor are None for "any". Type "a" means every device and every access, as in cgroup v1.
DeviceRule = tuple[bool, str, int | None, int | None, str]


# ------------------------------------------------------------------ validation


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _limit(block: dict, key: str, field: str) -> int | None:
    """A byte/count limit: None or 0 = unset, -1 = unlimited, else > 0."""
    value = block.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < -1:
        raise SpecError(f"{field}: must be a positive integer or -1 (unlimited), got {_show(value)}")
    return None if value == 0 else value


def _uint(block: dict, key: str, field: str, lo: int = 0, hi: int | None = None) -> int | None:
    value = block.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        if hi is None:
            want = "a non-negative integer" if lo == 0 else f"an integer of at least {lo}"
        else:
            want = f"an integer between {lo} and {hi}"
        raise SpecError(f"{field}: must be {want}, got {_show(value)}")
    return value


def _obj(parent: dict, key: str, field: str) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{field}: expected an object, got {_show(value)}")
    return value


def _list(parent: dict, key: str, field: str) -> list:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{field}: expected an array, got {_show(value)}")
    return value


def _cpu_list(block: dict, key: str, field: str) -> str | None:
    """cpuset list syntax: "0-3,5,7-8" (no regular expressions: hot path)."""
    value = block.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpecError(f'{field}: must be a list like "0-3,5", got {_show(value)}')
    for part in value.split(","):
        lo, dash, hi = part.partition("-")
        ok = lo.isdigit() and lo.isascii() and (not dash or (hi.isdigit() and hi.isascii() and int(lo) <= int(hi)))
        if not ok:
            raise SpecError(f'{field}: must be a list like "0-3,5", got {_show(value)}')
    return value


def _page_size(value: object, field: str) -> str:
    if isinstance(value, str) and len(value) > 2 and value[-2:] in ("KB", "MB", "GB", "TB", "PB") \
            and value[:-2].isdigit() and value[:-2].isascii() and int(value[:-2]) > 0:
        return value
    raise SpecError(f'{field}: must be a size like "2MB" or "1GB", got {_show(value)}')


def _device_number(entry: dict, field: str) -> str:
    major = _uint(entry, "major", f"{field}.major")
    minor = _uint(entry, "minor", f"{field}.minor")
    if major is None or minor is None:
        raise SpecError(f"{field}: major and minor are required")
    return f"{major}:{minor}"


# ------------------------------------------------------------------ conversions


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144, default 1024) -> cpu.weight (1..10000, default 100).

    runc's and crun's current quadratic fit through (2, 1), (1024, 100) and
    (262144, 10000); computed with the same float64 steps as runc's Go code.
    """
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return int(math.ceil(math.pow(10, exponent)))


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) -> io.weight (1..10000), runc's linear mapping."""
    return 1 + (weight - 10) * 9999 // 990


def _v2_swap(swap: int | None, limit: int | None) -> str | None:
    """OCI swap is memory+swap; memory.swap.max is swap only (runc's rule)."""
    if swap is None:
        # memory unlimited and swap unset: lift swap too, as cgroup v1 would
        return "max" if limit == -1 else None
    if swap == -1:
        return "max"
    if limit is None or limit == -1:
        raise SpecError(f"{P}.memory.swap: needs memory.limit (swap counts memory+swap), got swap {swap}")
    if swap < limit:
        raise SpecError(f"{P}.memory.swap: must be at least memory.limit ({limit}) since it counts "
                        f"memory+swap, got {swap}")
    return str(swap - limit)


# ------------------------------------------------------------------ the blocks
# Each helper validates its block and returns the parts both versions need.


def _memory(res: dict) -> dict:
    mem = _obj(res, "memory", f"{P}.memory")
    out = {
        "limit": _limit(mem, "limit", f"{P}.memory.limit"),
        "reservation": _limit(mem, "reservation", f"{P}.memory.reservation"),
        "swap": _limit(mem, "swap", f"{P}.memory.swap"),
        "swappiness": _uint(mem, "swappiness", f"{P}.memory.swappiness", 0, 100),
        "disable_oom": False,
    }
    disable = mem.get("disableOOMKiller")
    if disable is not None and not isinstance(disable, bool):
        raise SpecError(f"{P}.memory.disableOOMKiller: must be true or false, got {_show(disable)}")
    out["disable_oom"] = bool(disable)
    # kernel, kernelTCP, useHierarchy, checkBeforeUpdate: deprecated or no-ops (runc ignores them)
    return out


def _cpu(res: dict) -> dict:
    cpu = _obj(res, "cpu", f"{P}.cpu")
    shares = _uint(cpu, "shares", f"{P}.cpu.shares")
    if shares == 0:
        shares = None
    if shares is not None and not 2 <= shares <= 262144:
        raise SpecError(f"{P}.cpu.shares: must be an integer between 2 and 262144, got {shares}")
    quota = cpu.get("quota")
    if quota is not None:
        if not _is_int(quota) or (quota < 1000 and quota not in (0, -1)):
            raise SpecError(f"{P}.cpu.quota: must be an integer of at least 1000 (microseconds) "
                            f"or -1 (unlimited), got {_show(quota)}")
        if quota == 0:
            quota = None
    period = _uint(cpu, "period", f"{P}.cpu.period")
    if period == 0:
        period = None
    if period is not None and not 1000 <= period <= 1000000:
        raise SpecError(f"{P}.cpu.period: must be an integer between 1000 and 1000000 (microseconds), "
                        f"got {period}")
    rt_runtime = cpu.get("realtimeRuntime")
    if rt_runtime is not None and (not _is_int(rt_runtime) or rt_runtime < -1):
        raise SpecError(f"{P}.cpu.realtimeRuntime: must be a non-negative integer or -1, got {_show(rt_runtime)}")
    idle = cpu.get("idle")
    if idle is not None and idle not in (0, 1):
        raise SpecError(f"{P}.cpu.idle: must be 0 or 1, got {_show(idle)}")
    return {
        "shares": shares,
        "quota": quota,
        "period": period,
        "burst": _uint(cpu, "burst", f"{P}.cpu.burst"),
        "rt_runtime": rt_runtime or None,
        "rt_period": _uint(cpu, "realtimePeriod", f"{P}.cpu.realtimePeriod") or None,
        "idle": None if idle is None else int(idle),
        "cpus": _cpu_list(cpu, "cpus", f"{P}.cpu.cpus"),
        "mems": _cpu_list(cpu, "mems", f"{P}.cpu.mems"),
    }


def _pids(res: dict) -> str | None:
    pids = _obj(res, "pids", f"{P}.pids")
    value = pids.get("limit")
    if value is None:
        return None
    if not _is_int(value) or value < -1:
        raise SpecError(f"{P}.pids.limit: must be a positive integer, or 0 or -1 (unlimited), got {_show(value)}")
    return "max" if value <= 0 else str(value)


_THROTTLES = (
    # OCI key, v1 file, v2 io.max key
    ("throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps"),
    ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps"),
    ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops"),
    ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device", "wiops"),
)


def _blockio(res: dict) -> dict:
    bio = _obj(res, "blockIO", f"{P}.blockIO")
    out: dict = {
        "weight": _uint(bio, "weight", f"{P}.blockIO.weight", 10, 1000),
        "leaf_weight": _uint(bio, "leafWeight", f"{P}.blockIO.leafWeight", 10, 1000),
        "weight_device": [],
        "throttles": [],
    }
    for i, entry in enumerate(_list(bio, "weightDevice", f"{P}.blockIO.weightDevice")):
        field = f"{P}.blockIO.weightDevice[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{field}: expected an object, got {_show(entry)}")
        dev = _device_number(entry, field)
        weight = _uint(entry, "weight", f"{field}.weight", 10, 1000)
        leaf = _uint(entry, "leafWeight", f"{field}.leafWeight", 10, 1000)
        out["weight_device"].append((dev, weight, leaf))
    for key, v1_file, v2_key in _THROTTLES:
        for i, entry in enumerate(_list(bio, key, f"{P}.blockIO.{key}")):
            field = f"{P}.blockIO.{key}[{i}]"
            if not isinstance(entry, dict):
                raise SpecError(f"{field}: expected an object, got {_show(entry)}")
            dev = _device_number(entry, field)
            rate = _uint(entry, "rate", f"{field}.rate")
            if rate is None:
                raise SpecError(f"{field}.rate: required")
            out["throttles"].append((v1_file, v2_key, dev, rate))
    return out


def _hugepages(res: dict) -> list[tuple[str, int]]:
    out = []
    for i, entry in enumerate(_list(res, "hugepageLimits", f"{P}.hugepageLimits")):
        field = f"{P}.hugepageLimits[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{field}: expected an object, got {_show(entry)}")
        size = _page_size(entry.get("pageSize"), f"{field}.pageSize")
        limit = _uint(entry, "limit", f"{field}.limit")
        if limit is None:
            raise SpecError(f"{field}.limit: required")
        out.append((size, limit))
    return out


def _rdma(res: dict) -> str | None:
    rdma = _obj(res, "rdma", f"{P}.rdma")
    lines = []
    for device, limits in rdma.items():
        field = f"{P}.rdma.{device}"
        if not device or any(c.isspace() for c in device):
            raise SpecError(f"{field}: invalid device name")
        if not isinstance(limits, dict):
            raise SpecError(f"{field}: expected an object, got {_show(limits)}")
        words = [device]
        handles = _uint(limits, "hcaHandles", f"{field}.hcaHandles")
        objects = _uint(limits, "hcaObjects", f"{field}.hcaObjects")
        if handles is not None:
            words.append(f"hca_handle={handles}")
        if objects is not None:
            words.append(f"hca_object={objects}")
        if len(words) > 1:
            lines.append(" ".join(words))
    return "\n".join(lines) or None


def device_rules(resources: dict) -> list[DeviceRule]:
    """linux.resources.devices validated, in their order (later rules win).

    cgroup v1 writes them to devices.deny/devices.allow; cgroup v2 has no such
    files and compiles them into an eBPF program instead (devices_bpf.py).
    """
    rules: list[DeviceRule] = []
    for i, rule in enumerate(_list(_check(resources), "devices", f"{P}.devices")):
        field = f"{P}.devices[{i}]"
        if not isinstance(rule, dict):
            raise SpecError(f"{field}: expected an object, got {_show(rule)}")
        allowed = rule.get("allow")
        if not isinstance(allowed, bool):
            raise SpecError(f"{field}.allow: must be true or false, got {_show(allowed)}")
        kind = rule.get("type") or "a"
        if kind not in ("a", "c", "b"):
            raise SpecError(f'{field}.type: must be "a", "c" or "b", got {_show(kind)}')
        numbers: list[int | None] = []
        for key in ("major", "minor"):
            value = rule.get(key)
            if value is None or value == -1:
                numbers.append(None)
            elif _is_int(value) and 0 <= value <= 0xFFFFFFFF:
                numbers.append(value)
            else:
                raise SpecError(f"{field}.{key}: must be a non-negative 32-bit integer or -1 (any), "
                                f"got {_show(value)}")
        access = rule.get("access") or "rwm"
        if not isinstance(access, str) or not set(access) <= set("rwm"):
            raise SpecError(f'{field}.access: must be made of "r", "w" and "m", got {_show(access)}')
        rules.append((allowed, kind, numbers[0], numbers[1], access))
    return rules


def _devices_v1(res: dict) -> tuple[list[str], list[str]]:
    """Device rules as cgroup v1 lines: (leading deny lines, allow lines)."""
    deny: list[str] = []
    allow: list[str] = []
    for i, (allowed, kind, major, minor, access) in enumerate(device_rules(res)):
        line = f"{kind} {'*' if major is None else major}:{'*' if minor is None else minor} {access}"
        if allowed:
            allow.append(line)
        elif allow:
            raise CgroupError(f"{P}.devices[{i}]: a deny rule after an allow rule cannot be expressed with "
                              f"cgroup v1 devices.deny/devices.allow; put deny rules first")
        else:
            deny.append(line)
    return deny, allow


def _unified(res: dict) -> dict[str, str]:
    unified = _obj(res, "unified", f"{P}.unified")
    for key, value in unified.items():
        field = f"{P}.unified.{key}"
        if not key or "/" in key or key in (".", "..") or "\0" in key:
            raise SpecError(f"{field}: must be a plain cgroup file name")
        controller, dot, rest = key.partition(".")
        if not dot or not rest:
            raise SpecError(f"{field}: not a cgroup file name (want <controller>.<file>)")
        if controller == "cgroup":
            raise SpecError(f"{field}: cgroup.* files are managed by the runtime, not by resources")
        if controller not in V2_CONTROLLERS:
            raise SpecError(f"{field}: unknown controller {_show(controller)} "
                            f"(known: {', '.join(sorted(V2_CONTROLLERS))})")
        if not isinstance(value, str):
            raise SpecError(f"{field}: must be a string, got {_show(value)}")
    return unified


def _check(resources: object) -> dict:
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise SpecError(f"{P}: expected an object, got {_show(resources)}")
    return resources


# ------------------------------------------------------------------ v2


def to_v2(resources: dict) -> dict[str, str]:
    """linux.resources -> {cgroup v2 file: value}, in write order."""
    res = _check(resources)
    out: dict[str, str] = {}
    device_rules(res)  # validated here; cgroup v2 has no devices files: V2Manager.apply compiles the
    # rules into an eBPF program (devices_bpf.py) and attaches it to the cgroup

    mem = _memory(res)
    if mem["disable_oom"]:
        raise CgroupError(f"{P}.memory.disableOOMKiller: cgroup v2 has no way to disable the OOM killer")
    limit = mem["limit"]
    if limit is not None:
        out["memory.max"] = "max" if limit == -1 else str(limit)
    if mem["reservation"] is not None:
        out["memory.low"] = "max" if mem["reservation"] == -1 else str(mem["reservation"])
    swap = _v2_swap(mem["swap"], limit)
    if swap is not None:
        out["memory.swap.max"] = swap
    # swappiness has no v2 file: ignored, as runc does

    cpu = _cpu(res)
    if cpu["shares"] is not None:
        out["cpu.weight"] = str(shares_to_weight(cpu["shares"]))
    if cpu["quota"] is not None or cpu["period"] is not None:
        quota = "max" if cpu["quota"] in (None, -1) else str(cpu["quota"])
        out["cpu.max"] = f"{quota} {cpu['period'] or 100000}"
    if cpu["burst"] is not None:
        out["cpu.max.burst"] = str(cpu["burst"])
    if cpu["rt_runtime"] is not None or cpu["rt_period"] is not None:
        raise CgroupError(f"{P}.cpu.realtimeRuntime: cgroup v2 has no realtime cpu limits")
    if cpu["idle"] is not None:
        out["cpu.idle"] = str(cpu["idle"])
    if cpu["cpus"] is not None:
        out["cpuset.cpus"] = cpu["cpus"]
    if cpu["mems"] is not None:
        out["cpuset.mems"] = cpu["mems"]

    pids = _pids(res)
    if pids is not None:
        out["pids.max"] = pids

    bio = _blockio(res)
    weights = []
    if bio["weight"] is not None:
        weights.append(f"default {blkio_to_io_weight(bio['weight'])}")
    for dev, weight, _leaf in bio["weight_device"]:
        if weight is not None:
            weights.append(f"{dev} {blkio_to_io_weight(weight)}")
    if weights:
        out["io.weight"] = "\n".join(weights)
    per_device: dict[str, list[str]] = {}
    for _v1_file, key, dev, rate in bio["throttles"]:
        per_device.setdefault(dev, []).append(f"{key}={rate or 'max'}")
    if per_device:
        out["io.max"] = "\n".join(f"{dev} {' '.join(keys)}" for dev, keys in per_device.items())

    for size, limit_ in _hugepages(res):
        out[f"hugetlb.{size}.max"] = str(limit_)

    net = _obj(res, "network", f"{P}.network")
    if net.get("classID") is not None or net.get("priorities"):
        raise CgroupError(f"{P}.network: cgroup v2 has no net_cls/net_prio controllers")

    rdma = _rdma(res)
    if rdma:
        out["rdma.max"] = rdma

    for key, value in _unified(res).items():
        out.pop(key, None)  # unified wins, and is written last
        out[key] = value
    return out


# ------------------------------------------------------------------ v1


def to_v1(resources: dict) -> dict[str, dict[str, str]]:
    """linux.resources -> {controller: {cgroup v1 file: value}}, in write order."""
    res = _check(resources)
    out: dict[str, dict[str, str]] = {}

    def put(controller: str, name: str, value: str) -> None:
        out.setdefault(controller, {})[name] = value

    if _obj(res, "unified", f"{P}.unified"):
        _unified(res)
        raise CgroupError(f"{P}.unified: needs cgroup v2, this host has cgroup v1 hierarchies")

    mem = _memory(res)
    limit, swap = mem["limit"], mem["swap"]
    if swap is not None and swap != -1:
        if limit is None or limit == -1:
            raise SpecError(f"{P}.memory.swap: needs memory.limit (swap counts memory+swap), got swap {swap}")
        if swap < limit:
            raise SpecError(f"{P}.memory.swap: must be at least memory.limit ({limit}) since it counts "
                            f"memory+swap, got {swap}")
    if limit is not None:
        put("memory", "memory.limit_in_bytes", str(limit))
    if swap is not None:
        put("memory", "memory.memsw.limit_in_bytes", str(swap))
    elif limit == -1:
        put("memory", "memory.memsw.limit_in_bytes", "-1")
    if mem["reservation"] is not None:
        put("memory", "memory.soft_limit_in_bytes", str(mem["reservation"]))
    if mem["swappiness"] is not None:
        put("memory", "memory.swappiness", str(mem["swappiness"]))
    if mem["disable_oom"]:
        put("memory", "memory.oom_control", "1")

    cpu = _cpu(res)
    if cpu["shares"] is not None:
        put("cpu", "cpu.shares", str(cpu["shares"]))
    if cpu["quota"] is not None or cpu["period"] is not None:
        put("cpu", "cpu.cfs_period_us", str(cpu["period"] or 100000))
        put("cpu", "cpu.cfs_quota_us", str(cpu["quota"] or -1))
    if cpu["burst"] is not None:
        put("cpu", "cpu.cfs_burst_us", str(cpu["burst"]))
    if cpu["rt_period"] is not None:
        put("cpu", "cpu.rt_period_us", str(cpu["rt_period"]))
    if cpu["rt_runtime"] is not None:
        put("cpu", "cpu.rt_runtime_us", str(cpu["rt_runtime"]))
    if cpu["idle"] is not None:
        put("cpu", "cpu.idle", str(cpu["idle"]))
    if cpu["cpus"] is not None:
        put("cpuset", "cpuset.cpus", cpu["cpus"])
    if cpu["mems"] is not None:
        put("cpuset", "cpuset.mems", cpu["mems"])

    pids = _pids(res)
    if pids is not None:
        put("pids", "pids.max", pids)

    bio = _blockio(res)
    if bio["weight"] is not None:
        put("blkio", "blkio.weight", str(bio["weight"]))
    if bio["leaf_weight"] is not None:
        put("blkio", "blkio.leaf_weight", str(bio["leaf_weight"]))
    lines = [f"{dev} {w}" for dev, w, _ in bio["weight_device"] if w is not None]
    if lines:
        put("blkio", "blkio.weight_device", "\n".join(lines))
    lines = [f"{dev} {leaf}" for dev, _, leaf in bio["weight_device"] if leaf is not None]
    if lines:
        put("blkio", "blkio.leaf_weight_device", "\n".join(lines))
    for v1_file, _key, dev, rate in bio["throttles"]:
        files = out.setdefault("blkio", {})
        files[v1_file] = (files[v1_file] + "\n" if v1_file in files else "") + f"{dev} {rate}"

    for size, limit_ in _hugepages(res):
        put("hugetlb", f"hugetlb.{size}.limit_in_bytes", str(limit_))

    net = _obj(res, "network", f"{P}.network")
    class_id = _uint(net, "classID", f"{P}.network.classID", 0, 0xFFFFFFFF)
    if class_id is not None:
        put("net_cls", "net_cls.classid", str(class_id))
    prios = []
    for i, entry in enumerate(_list(net, "priorities", f"{P}.network.priorities")):
        field = f"{P}.network.priorities[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise SpecError(f"{field}.name: must be an interface name")
        prio = _uint(entry, "priority", f"{field}.priority", 0, 0xFFFFFFFF)
        prios.append(f"{entry['name']} {prio or 0}")
    if prios:
        put("net_prio", "net_prio.ifpriomap", "\n".join(prios))

    rdma = _rdma(res)
    if rdma:
        put("rdma", "rdma.max", rdma)

    deny, allow = _devices_v1(res)
    if deny:
        put("devices", "devices.deny", "\n".join(deny))
    if allow:
        put("devices", "devices.allow", "\n".join(allow))
    return out
