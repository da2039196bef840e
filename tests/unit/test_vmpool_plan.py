"""The pool keeper's decisions, as pure functions (no cloud, no Salt)."""

import datetime

import pytest

import vmpool

UTC = datetime.timezone.utc
MONDAY_10 = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SUNDAY_10 = datetime.datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
FLAVORS = {"d2": {"ram": 4096, "vcpus": 2, "disk": 40}}
BIG = [
    {
        "inventories": {
            "MEMORY_MB": {"total": 1_000_000, "reserved": 0, "allocation_ratio": 1.0},
            "VCPU": {"total": 1000, "reserved": 0, "allocation_ratio": 1.0},
            "DISK_GB": {"total": 100_000, "reserved": 0, "allocation_ratio": 1.0},
        },
        "usages": {},
    }
]


def pools(**overrides):
    conf = {"flavor": "d2", "image": "win11", "network": "net", "spares": 5, "max_size": 20, "max_in_flight": 10}
    conf.update(overrides)
    return vmpool.validate_pools({"sales": conf})


def servers(pool="sales", ready=0, taken=0, building=0, booted=0, error=0):
    out = []
    for kind, n, status, state in (
        ("r", ready, "ACTIVE", "ready"),
        ("t", taken, "ACTIVE", "taken"),
        ("b", building, "BUILD", None),
        ("a", booted, "ACTIVE", None),
        ("e", error, "ERROR", None),
    ):
        for i in range(n):
            meta = {vmpool.POOL_KEY: pool}
            if state:
                meta[vmpool.STATE_KEY] = state
            out.append({"id": f"{pool}-{kind}{i}", "status": status, "metadata": meta})
    return out


def decide(p, s, providers=BIG, health=None, now=MONDAY_10, **settings):
    return vmpool.plan(p, s, providers, FLAVORS, health or {}, now, settings or None)


def test_fill_from_zero_to_target():
    d = decide(pools(), [])
    assert d["pools"]["sales"]["boots"] == 5 and d["boots"] == 5


def test_building_and_booting_servers_count_toward_the_target():
    d = decide(pools(), servers(ready=2, building=2, booted=1))
    assert d["pools"]["sales"]["boots"] == 0


def test_taken_servers_are_refilled_up_to_max_size():
    d = decide(pools(max_size=8), servers(ready=0, taken=6))
    assert d["pools"]["sales"]["boots"] == 2  # 5 wanted, only 8 - 6 fit in the pool


def test_never_overshoots_when_already_full():
    d = decide(pools(), servers(ready=7))
    assert d["pools"]["sales"]["boots"] == 0


def test_per_pool_in_flight_cap():
    d = decide(pools(spares=10, max_in_flight=3), servers(building=1))
    assert d["pools"]["sales"]["boots"] == 2


def test_global_in_flight_cap_shared_across_pools_largest_shortfall_first():
    p = vmpool.validate_pools(
        {
            "a": {"flavor": "d2", "image": "i", "network": "n", "spares": 10, "max_size": 50, "max_in_flight": 10},
            "b": {"flavor": "d2", "image": "i", "network": "n", "spares": 10, "max_size": 50, "max_in_flight": 10},
        }
    )
    d = decide(p, servers("a", ready=8) + servers("b"), max_in_flight_total=4)
    assert d["pools"]["b"]["boots"] == 4 and d["pools"]["a"]["boots"] == 0
    assert "boot-storm" in d["pools"]["a"]["reason"]
    assert d["boots"] == 4


def test_over_commit_headroom_caps_boots():
    providers = [
        {
            "inventories": {"MEMORY_MB": {"total": 8192, "reserved": 512, "allocation_ratio": 1.5}, "VCPU": {"total": 16, "allocation_ratio": 2}},
            "usages": {"MEMORY_MB": 4096},
        }
    ]
    # (8192 - 512) * 1.5 - 4096 = 7424 MB free -> one 4096 MB desktop fits
    assert vmpool.headroom(providers)["MEMORY_MB"] == 7424
    d = decide(pools(), [], providers=providers)
    assert d["pools"]["sales"]["boots"] == 1 and "headroom" in d["pools"]["sales"]["reason"]


def test_error_servers_are_deleted_and_failures_back_off():
    d = decide(pools(), servers(ready=1, error=2), health={"sales": {"failures": 2, "last_failure": MONDAY_10.timestamp() - 10}})
    entry = d["pools"]["sales"]
    assert sorted(entry["delete"]) == ["sales-e0", "sales-e1"]
    assert entry["health"] == "backoff" and entry["boots"] == 0
    later = MONDAY_10 + datetime.timedelta(seconds=61)  # backoff 30 * 2**(2-1) = 60 s
    assert decide(pools(), servers(ready=1), health={"sales": {"failures": 2, "last_failure": MONDAY_10.timestamp() - 10}}, now=later)["pools"]["sales"]["boots"] == 4


def test_a_pool_that_keeps_failing_is_degraded_not_retried():
    d = decide(pools(), [], health={"sales": {"failures": 3, "last_failure": 0}})
    assert d["pools"]["sales"]["health"] == "degraded" and d["pools"]["sales"]["boots"] == 0
    assert d["pools"]["sales"]["reason"] == "degraded"


def test_schedule_sets_peak_and_off_peak_targets():
    p = pools(spares=2, schedule=[{"days": "mon-fri", "from": "07:00", "to": "19:00", "spares": 8}])
    assert decide(p, [], now=MONDAY_10)["pools"]["sales"]["boots"] == 8
    assert decide(p, [], now=SUNDAY_10)["pools"]["sales"]["boots"] == 2


def test_drained_pool_boots_nothing_and_deletes_its_spares_not_taken_desktops():
    d = vmpool.plan(pools(), servers(ready=2, building=1, taken=3), BIG, FLAVORS, {}, MONDAY_10, drained={"sales"})
    entry = d["pools"]["sales"]
    assert entry["boots"] == 0
    assert sorted(entry["delete"]) == ["sales-b0", "sales-r0", "sales-r1"]


def test_only_limits_the_plan_to_one_pool():
    p = vmpool.validate_pools({n: {"flavor": "d2", "image": "i", "network": "n", "spares": 1} for n in ("a", "b")})
    d = vmpool.plan(p, [], BIG, FLAVORS, {}, MONDAY_10, only={"a"})
    assert set(d["pools"]) == {"a"} and d["boots"] == 1


def test_servers_of_unknown_pools_are_reported_not_counted():
    d = decide(pools(), servers("ghost", ready=3))
    assert d["stray"] == ["ghost-r0", "ghost-r1", "ghost-r2"] and d["pools"]["sales"]["boots"] == 5


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"image": "i", "network": "n"}, "flavor is required"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": -1}, "spares must be an integer"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 5, "max_size": 2}, "below spares"),
        ({"flavor": "d2", "image": "i", "network": "n", "metadata": {"deskfleet_pool": "x"}}, "metadata"),
        ({"flavor": "d2", "image": "i", "network": "n", "schedule": [{"days": "funday", "spares": 1}]}, "bad day"),
        ({"flavor": "d2", "image": "i", "network": "n", "schedule": [{"from": "25:00", "spares": 1}]}, "HH:MM"),
        ("not a mapping", "must be a mapping"),
    ],
)
def test_malformed_pool_pillar_is_refused_with_the_field_named(conf, message):
    with pytest.raises(vmpool.PoolConfigError, match=message):
        vmpool.validate_pools({"sales": conf})


def test_bad_pool_names_are_refused():
    with pytest.raises(vmpool.PoolConfigError, match="pool name"):
        vmpool.validate_pools({"Sales Floor": {"flavor": "d2", "image": "i", "network": "n"}})
