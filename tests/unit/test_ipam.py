"""IPAM on real files in a temp dir: order, idempotence, exhaustion, release, gc, crash leftovers."""
from __future__ import annotations

import os
import threading

import pytest
from hanok.netns import ipam
from hanok.runtime.errors import InvalidArgument, NetError


@pytest.fixture
def pool(tmp_path) -> ipam.Pool:
    return ipam.Pool(str(tmp_path), "testnet", "10.210.0.0/29")   # hosts .1-.6, gateway .1


def test_allocation_skips_gateway_and_goes_in_order(pool):
    assert pool.allocate("a") == ("10.210.0.2", 29, "10.210.0.1")
    assert pool.allocate("b") == ("10.210.0.3", 29, "10.210.0.1")
    assert pool.leases() == {"a": "10.210.0.2", "b": "10.210.0.3"}


def test_allocate_is_idempotent_per_owner(pool):
    first = pool.allocate("a")
    assert pool.allocate("a") == first
    assert pool.leases() == {"a": "10.210.0.2"}


def test_exhaustion_names_network_and_subnet(pool):
    for n in range(5):                                          # .2 .. .6
        pool.allocate(f"o{n}")
    with pytest.raises(NetError) as exc:
        pool.allocate("one-too-many")
    assert str(exc.value) == "network testnet: no free address in 10.210.0.0/29"
    assert "one-too-many" not in pool.leases()
    assert not os.path.exists(os.path.join(pool.dir, "owners", "one-too-many"))


def test_freed_address_is_not_reused_at_once(pool):
    pool.allocate("a")                                          # .2
    pool.allocate("b")                                          # .3
    assert pool.release("a") == "10.210.0.2"
    assert pool.allocate("c")[0] == "10.210.0.4"               # continues after the last one
    assert pool.release("a") is None                            # release is idempotent
    for owner in ("d", "e"):                                    # .5, .6
        pool.allocate(owner)
    assert pool.allocate("f")[0] == "10.210.0.2"               # wraps to the freed one
    assert pool.leases() == {"b": "10.210.0.3", "c": "10.210.0.4", "d": "10.210.0.5",
                             "e": "10.210.0.6", "f": "10.210.0.2"}


def test_custom_gateway_is_never_handed_out(tmp_path):
    pool = ipam.Pool(str(tmp_path), "gw", "10.210.1.0/30", gateway="10.210.1.2")   # hosts .1, .2
    assert pool.allocate("a") == ("10.210.1.1", 30, "10.210.1.2")
    with pytest.raises(NetError, match="no free address in 10.210.1.0/30"):
        pool.allocate("b")


def test_gc_frees_only_dead_owners(pool):
    for owner in ("alive1", "dead1", "alive2", "dead2"):
        pool.allocate(owner)
    freed = pool.gc(lambda owner: owner.startswith("alive"))
    assert sorted(freed) == ["dead1", "dead2"]
    assert pool.leases() == {"alive1": "10.210.0.2", "alive2": "10.210.0.4"}
    assert sorted(os.listdir(os.path.join(pool.dir, "owners"))) == ["alive1", "alive2"]


def test_crash_leftovers_are_tolerated_and_collected(pool):
    pool.allocate("a")                                          # creates the dir, .2
    open(os.path.join(pool.dir, "10.210.0.3"), "w").close()    # empty lease file
    with open(os.path.join(pool.dir, "10.210.0.4"), "w") as f:
        f.write("cut/sh")                                       # not a valid owner id
    with open(os.path.join(pool.dir, "tmp", "99999.lease"), "w") as f:
        f.write("b")                                            # temp file of a dead writer
    with open(os.path.join(pool.dir, "last_reserved"), "w") as f:
        f.write("10.21")                                        # torn write
    assert pool.allocate("b")[0] == "10.210.0.5"               # skips the unreadable leases
    assert pool.leases() == {"a": "10.210.0.2", "b": "10.210.0.5"}
    assert os.listdir(os.path.join(pool.dir, "tmp")) == []
    assert sorted(pool.gc(lambda owner: True)) == ["<10.210.0.3>", "<10.210.0.4>"]
    assert sorted(n for n in os.listdir(pool.dir) if n[0].isdigit()) == ["10.210.0.2", "10.210.0.5"]


def test_lease_without_index_is_found_by_gc(pool):
    pool.allocate("a")
    os.unlink(os.path.join(pool.dir, "owners", "a"))           # crash between the two writes
    assert pool.leases() == {"a": "10.210.0.2"}
    assert pool.gc(lambda owner: False) == ["a"]
    assert pool.leases() == {}


def test_concurrent_allocations_are_distinct(tmp_path):
    pool = ipam.Pool(str(tmp_path), "wide", "10.210.2.0/24")
    results: dict[str, str] = {}

    def take(owner: str) -> None:
        results[owner] = pool.allocate(owner)[0]

    threads = [threading.Thread(target=take, args=(f"t{n}",)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results.values())) == 40
    assert pool.leases() == results


@pytest.mark.parametrize("owner", ["", "a/b", "..", "x" * 65, "sp ace"])
def test_bad_owner_ids_are_refused(pool, owner):
    with pytest.raises(InvalidArgument, match="bad owner id"):
        pool.allocate(owner)


@pytest.mark.parametrize("subnet", ["10.210.0.0", "10.210.0.0/31", "300.1.1.0/24", "x/24"])
def test_bad_subnets_are_refused(tmp_path, subnet):
    with pytest.raises(InvalidArgument, match="bad subnet"):
        ipam.Pool(str(tmp_path), "n", subnet)


# --- IPv6 ------------------------------------------------------------------------------------------------

@pytest.fixture
def pool6(tmp_path) -> ipam.Pool:
    return ipam.Pool(str(tmp_path), "testnet", "fd42:1:2:3::/64")   # gateway ::1


def test_v6_allocation_is_sequential_from_2_and_idempotent(pool6):
    assert pool6.dir.endswith(os.path.join("net", "ipam", "testnet", "ipv6"))
    assert pool6.allocate("a") == ("fd42:1:2:3::2", 64, "fd42:1:2:3::1")
    assert pool6.allocate("b") == ("fd42:1:2:3::3", 64, "fd42:1:2:3::1")
    assert pool6.allocate("a") == ("fd42:1:2:3::2", 64, "fd42:1:2:3::1")
    assert pool6.leases() == {"a": "fd42:1:2:3::2", "b": "fd42:1:2:3::3"}
    assert sorted(os.listdir(pool6.dir)) == ["fd42:1:2:3::2", "fd42:1:2:3::3", "last_reserved", "lock", "owners",
                                             "tmp"]


def test_v6_release_is_o1_and_not_reused_at_once(pool6):
    pool6.allocate("a")
    pool6.allocate("b")
    assert pool6.release("a") == "fd42:1:2:3::2"
    assert pool6.release("a") is None
    assert pool6.allocate("c")[0] == "fd42:1:2:3::4"
    assert pool6.leases() == {"b": "fd42:1:2:3::3", "c": "fd42:1:2:3::4"}


def test_v4_and_v6_pools_of_one_network_do_not_see_each_other(tmp_path):
    pool4 = ipam.Pool(str(tmp_path), "dual", "10.210.3.0/24")
    pool6 = ipam.Pool(str(tmp_path), "dual", "fd42::/64")
    assert pool4.allocate("a")[0] == "10.210.3.2"
    assert pool6.allocate("a")[0] == "fd42::2"
    assert pool4.leases() == {"a": "10.210.3.2"} and pool6.leases() == {"a": "fd42::2"}
    assert pool4.gc(lambda owner: True) == [] and pool6.gc(lambda owner: True) == []
    assert pool4.release("a") == "10.210.3.2"
    assert pool6.leases() == {"a": "fd42::2"}
    assert pool6.gc(lambda owner: False) == ["a"]
    pool4.remove()                                              # the network's whole address state goes
    assert not os.path.exists(pool6.dir)


def test_v6_small_subnet_is_exhausted_with_the_v4_message(tmp_path):
    pool = ipam.Pool(str(tmp_path), "small", "fd42::100/120")   # ::1 gateway, ::2 .. ::ff
    assert pool.subnet == "fd42::100/120" and pool.gateway == "fd42::101"
    for n in range(254):
        pool.allocate(f"o{n}")
    assert pool.leases()["o253"] == "fd42::1ff"                 # the last address is a host address in IPv6
    with pytest.raises(NetError) as exc:
        pool.allocate("one-too-many")
    assert str(exc.value) == "network small: no free address in fd42::100/120"
    assert "one-too-many" not in pool.leases()


def test_v6_search_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(ipam._IPV6, "search_limit", 3)
    pool = ipam.Pool(str(tmp_path), "wide6", "fd42::/64")
    for n in range(3):                                          # ::2 ::3 ::4
        pool.allocate(f"o{n}")
    pool.release("o0")                                          # ::2 is free, but behind the search window
    for name in ("fd42::5", "fd42::6", "fd42::7"):
        with open(os.path.join(pool.dir, name), "w") as f:    # taken by a crashed writer
            f.write("x")
    with pytest.raises(NetError) as exc:
        pool.allocate("late")
    assert str(exc.value) == "network wide6: no free address in fd42::/64 among the 3 addresses from fd42::5 on"
    assert "late" not in pool.leases()


def test_v6_wraps_to_the_start_after_the_last_address(tmp_path):
    pool = ipam.Pool(str(tmp_path), "wrap", "fd42::/120")
    os.makedirs(pool.dir)
    with open(os.path.join(pool.dir, "last_reserved"), "w") as f:
        f.write("fd42::ff")
    assert pool.allocate("a")[0] == "fd42::2"


def test_v6_crash_leftovers_are_collected(pool6):
    pool6.allocate("a")
    open(os.path.join(pool6.dir, "fd42:1:2:3::3"), "w").close()   # empty lease file
    with open(os.path.join(pool6.dir, "last_reserved"), "w") as f:
        f.write("fd42:1:2")                                         # torn write
    assert pool6.allocate("b")[0] == "fd42:1:2:3::4"
    assert sorted(pool6.gc(lambda owner: True)) == ["<fd42:1:2:3::3>"]
    assert pool6.leases() == {"a": "fd42:1:2:3::2", "b": "fd42:1:2:3::4"}


@pytest.mark.parametrize("subnet, message", [
    ("fd42::/48", "prefix length must be 64-120"),
    ("fd42::/121", "prefix length must be 64-120"),
    ("fd42:::/64", "want fdXX:XXXX:XXXX:XXXX::/64"),
    ("fd42::", "want fdXX:XXXX:XXXX:XXXX::/64"),
])
def test_bad_v6_subnets_are_refused(tmp_path, subnet, message):
    with pytest.raises(InvalidArgument, match=f"^bad subnet '{subnet}': {message}$"):
        ipam.Pool(str(tmp_path), "n", subnet)
