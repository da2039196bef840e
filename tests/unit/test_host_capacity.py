"""Per-host capacity: what placement says is free on each host, and what fits where."""

import pytest

import host_capacity as hc

D4 = {"VCPU": 2, "MEMORY_MB": 4096, "DISK_GB": 40}


def provider(name, ram=8192, vcpu=8, disk=100, used=None, ratio=1.0, reserved_ram=0, max_unit=None, **extra):
    inv = {
        "MEMORY_MB": {"total": ram, "reserved": reserved_ram, "allocation_ratio": ratio, "max_unit": ram},
        "VCPU": {"total": vcpu, "reserved": 0, "allocation_ratio": 1.0, "max_unit": vcpu},
        "DISK_GB": {"total": disk, "reserved": 0, "allocation_ratio": 1.0, "max_unit": disk},
    }
    for rc, mu in (max_unit or {}).items():
        inv[rc]["max_unit"] = mu
    return dict({"name": name, "inventories": inv, "usages": used or {}}, **extra)


def host(name, ram, vcpu=64, disk=1000, max_unit=None, disabled=False):
    free = {"MEMORY_MB": ram, "VCPU": vcpu, "DISK_GB": disk}
    return {"name": name, "free": free, "max_unit": dict(free, **(max_unit or {})), "disabled": disabled}


def test_free_is_total_minus_reserved_times_ratio_minus_used():
    (h,) = hc.hosts_from_placement([provider("c1", ram=8192, reserved_ram=512, ratio=1.5, used={"MEMORY_MB": 4096})])
    assert h["free"]["MEMORY_MB"] == (8192 - 512) * 1.5 - 4096
    assert h["max_unit"]["MEMORY_MB"] == 8192 and h["disabled"] is False


def test_disabled_flag_or_placement_trait():
    hosts = hc.hosts_from_placement(
        [provider("a", disabled=True), provider("b", traits=["COMPUTE_STATUS_DISABLED"]), provider("c")]
    )
    assert [h["disabled"] for h in hosts] == [True, True, False]


def test_overused_host_is_zero_not_negative():
    (h,) = hc.hosts_from_placement([provider("c1", ram=4096, used={"MEMORY_MB": 6000})])
    assert h["free"]["MEMORY_MB"] == 0


def test_ten_hosts_with_3gb_each_fit_no_4gb_desktop():
    hosts = [host(f"c{i}", 3072) for i in range(10)]
    assert hc.how_many(hosts, D4) == 0
    assert not any(hc.fits(h, D4) for h in hosts)
    assert hc.place(hosts, [dict(D4, id="x")])["unplaced"] == ["x"]


def test_ram_and_vcpu_on_the_same_host():
    # a has the RAM, b has the vCPUs: summed they would fit one desktop; per host none
    hosts = [host("a", 8192, vcpu=1), host("b", 1024, vcpu=16)]
    assert hc.how_many(hosts, D4) == 0


def test_max_unit_bounds_one_desktop():
    big = host("a", 65536, max_unit={"MEMORY_MB": 2048})
    assert not hc.fits(big, D4)
    assert hc.how_many([big], D4) == 0


def test_missing_inventory_does_not_fit_but_zero_need_is_ignored():
    h = {"name": "a", "free": {"MEMORY_MB": 8192, "VCPU": 8}, "max_unit": {}, "disabled": False}
    assert not hc.fits(h, D4)
    assert hc.fits(h, dict(D4, DISK_GB=0))


def test_how_many_floors_per_host_then_sums_and_skips_disabled():
    hosts = [host("a", 10000), host("b", 8192, vcpu=3), host("c", 50000, disabled=True)]
    # a: floor(10000/4096)=2; b: min(2, floor(3/2)=1)=1; c disabled
    assert hc.how_many(hosts, D4) == 3


def test_place_first_fit_decreasing_consumes_capacity():
    hosts = [host("a", 8192), host("b", 6144)]
    reqs = [dict(D4, id="s1", MEMORY_MB=2048), dict(D4, id="s2"), dict(D4, id="s3"), dict(D4, id="s4", MEMORY_MB=2048)]
    out = hc.place(hosts, reqs)
    # largest first: s2, s3 fill a; s1/s4 (2 GB) go to b
    assert out["placed"] == {"s2": "a", "s3": "a", "s1": "b", "s4": "b"}
    assert out["unplaced"] == [] and out["shortfall"] == {}
    assert out["free"]["b"]["MEMORY_MB"] == 2048
    assert hosts[0]["free"]["MEMORY_MB"] == 8192  # inputs untouched


def test_place_reports_unplaced_and_shortfall():
    hosts = [host("a", 6144), host("b", 3000), host("off", 99999, disabled=True)]
    out = hc.place(hosts, [dict(D4, id="x"), dict(D4, id="y")])
    assert out["placed"] == {"x": "a"} and out["unplaced"] == ["y"]
    assert out["shortfall"] == {"VCPU": 2, "MEMORY_MB": 4096, "DISK_GB": 40}
    assert "off" not in out["free"]


def test_flavor_request():
    assert hc.flavor_request({"ram": 4096, "vcpus": 2, "disk": 40}) == D4


@pytest.mark.parametrize("bad", [-1, "4", True])
def test_bad_request_amount_is_refused(bad):
    with pytest.raises(ValueError, match="MEMORY_MB"):
        hc.fits(host("a", 8192), dict(D4, MEMORY_MB=bad))


def test_take_consumes_in_place_and_counts():
    hosts = [host("a", 9000), host("off", 99999, disabled=True), host("b", 4096)]
    assert hc.take(hosts, D4, 5) == 3  # two on a, one on b, none on the disabled host
    assert hosts[0]["free"]["MEMORY_MB"] == 9000 - 8192 and hosts[2]["free"]["MEMORY_MB"] == 0
    assert hosts[1]["free"]["MEMORY_MB"] == 99999


def test_anti_affinity_keeps_group_members_apart():
    hosts = [host("a", 16384), host("b", 16384), host("c", 16384)]
    reqs = [dict(D4, id="m1", group="g"), dict(D4, id="m2", group="g"), dict(D4, id="free")]
    out = hc.place(hosts, reqs, apart={"g": {"a"}})  # a already holds a member of g
    assert out["placed"]["m1"] != out["placed"]["m2"] and "a" not in (out["placed"]["m1"], out["placed"]["m2"])
    assert out["placed"]["free"] == "a" and out["blocked"] == {}
    without = hc.place(hosts, [{k: v for k, v in r.items() if k != "group"} for r in reqs])
    assert without["placed"]["m1"] == without["placed"]["m2"] == "a"  # no group: first fit stacks them


def test_anti_affinity_member_with_room_but_no_allowed_host_is_blocked_not_short():
    hosts = [host("a", 16384), host("b", 16384)]
    out = hc.place(hosts, [dict(D4, id="m1", group="g")], apart={"g": {"a", "b"}})
    assert out["unplaced"] == ["m1"] and out["blocked"] == {"m1": "g"} and out["shortfall"] == {}
