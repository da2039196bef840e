"""The pool keeper's decisions, as pure functions (no cloud, no Salt)."""

import datetime

import pytest

import pool_config
import pool_plan

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
    return pool_plan.validate_pools({"sales": conf})


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
            meta = {pool_plan.POOL_KEY: pool}
            if state:
                meta[pool_plan.STATE_KEY] = state
            out.append({"id": f"{pool}-{kind}{i}", "status": status, "metadata": meta})
    return out


def decide(p, s, providers=BIG, health=None, now=MONDAY_10, **settings):
    return pool_plan.plan(p, s, providers, FLAVORS, health or {}, now, settings or None)


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
    p = pool_plan.validate_pools(
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
            "inventories": {"MEMORY_MB": {"total": 8192, "reserved": 512, "allocation_ratio": 1.5}, "VCPU": {"total": 16, "allocation_ratio": 2},
                            "DISK_GB": {"total": 500}},
            "usages": {"MEMORY_MB": 4096},
        }
    ]
    # (8192 - 512) * 1.5 - 4096 = 7424 MB free -> one 4096 MB desktop fits
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
    d = pool_plan.plan(pools(), servers(ready=2, building=1, taken=3), BIG, FLAVORS, {}, MONDAY_10, drained={"sales"})
    entry = d["pools"]["sales"]
    assert entry["boots"] == 0
    assert sorted(entry["delete"]) == ["sales-b0", "sales-r0", "sales-r1"]


def test_only_limits_the_plan_to_one_pool():
    p = pool_plan.validate_pools({n: {"flavor": "d2", "image": "i", "network": "n", "spares": 1} for n in ("a", "b")})
    d = pool_plan.plan(p, [], BIG, FLAVORS, {}, MONDAY_10, only={"a"})
    assert set(d["pools"]) == {"a"} and d["boots"] == 1


def test_servers_of_unknown_pools_are_reported_not_counted():
    d = decide(pools(), servers("ghost", ready=3))
    assert d["stray"] == ["ghost-r0", "ghost-r1", "ghost-r2"] and d["pools"]["sales"]["boots"] == 5


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"image": "i", "network": "n", "spares": 1}, "pool sales: flavor: is required"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": -1}, "pool sales: spares: must be an integer"),
        ({"flavor": "d2", "image": "i", "network": "n"}, "pool sales: spares: is required"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 5, "max_size": 2}, "max_size: 2 is below spares"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 1, "metadata": {"deskfleet_pool": "x"}}, "metadata"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 1, "schedule": [{"days": "funday", "spares": 1}]}, r"schedule\[0\].days: bad day"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 1, "schedule": [{"from": "25:00", "spares": 1}]}, r"schedule\[0\].from: .*HH:MM"),
        ({"flavor": "d2", "image": "i", "network": "n", "spares": 1, "schedule": [{"from": "07:00"}]}, r"schedule\[0\].spares: is required"),
        ("not a mapping", "pool sales: settings: must be a mapping"),
    ],
)
def test_malformed_pool_pillar_is_refused_with_the_field_named(conf, message):
    with pytest.raises(pool_plan.PoolConfigError, match=message):
        pool_plan.validate_pools({"sales": conf})


def test_bad_pool_names_are_refused():
    with pytest.raises(pool_plan.PoolConfigError, match="pool name"):
        pool_plan.validate_pools({"Sales Floor": {"flavor": "d2", "image": "i", "network": "n"}})


# ---- per-host capacity ---------------------------------------------------------------


def provider(name, ram_free_mb, vcpus=64, max_ram=None):
    inv = {
        "MEMORY_MB": {"total": ram_free_mb, "reserved": 0, "allocation_ratio": 1.0, "max_unit": max_ram or ram_free_mb},
        "VCPU": {"total": vcpus, "reserved": 0, "allocation_ratio": 1.0, "max_unit": vcpus},
        "DISK_GB": {"total": 1000, "reserved": 0, "allocation_ratio": 1.0, "max_unit": 1000},
    }
    return {"name": name, "inventories": inv, "usages": {}}


def test_ten_hosts_with_3gb_free_fit_no_4gb_desktop():
    d = decide(pools(), [], providers=[provider(f"c{i}", 3072) for i in range(10)])
    entry = d["pools"]["sales"]
    assert entry["boots"] == 0 and "headroom" in entry["reason"]


def test_ram_and_vcpu_must_fit_on_the_same_host():
    # c1 has the RAM but one vCPU, c2 the vCPUs but no RAM: summed, one desktop would "fit"
    d = decide(pools(), [], providers=[provider("c1", 8192, vcpus=1), provider("c2", 1024, vcpus=32)])
    assert d["pools"]["sales"]["boots"] == 0


def test_boots_are_spread_over_hosts_per_host_floor():
    # 10000 MB -> 2 desktops, 6000 MB -> 1: 3 in all, not floor(16000/4096) = 3... and not 4 of 20000
    d = decide(pools(spares=5), [], providers=[provider("c1", 10000), provider("c2", 6000), provider("c3", 4000)])
    assert d["pools"]["sales"]["boots"] == 3


def test_disabled_hosts_take_no_desktops():
    off = dict(provider("c1", 100_000), traits=["COMPUTE_STATUS_DISABLED"])
    d = decide(pools(), [], providers=[off])
    assert d["pools"]["sales"]["boots"] == 0


def test_capacity_taken_by_one_pool_is_gone_for_the_next():
    p = pool_plan.validate_pools({n: {"flavor": "d2", "image": "i", "network": "n", "spares": 2} for n in ("a", "b")})
    d = decide(p, [], providers=[provider("c1", 4096 * 3)])
    assert d["pools"]["a"]["boots"] + d["pools"]["b"]["boots"] == 3


# ---- global boot cap with boots already in flight ---------------------------------------


def test_global_cap_counts_boots_already_in_flight_in_every_pool():
    p = pool_plan.validate_pools(
        {n: {"flavor": "d2", "image": "i", "network": "n", "spares": 10, "max_size": 50, "max_in_flight": 10} for n in ("a", "b", "c")}
    )
    # 3 building in a, 2 booted-not-ready in b: 5 of the global 6 are taken
    d = decide(p, servers("a", building=3) + servers("b", booted=2), max_in_flight_total=6)
    assert d["in_flight_total"] == 5
    assert d["boots"] == 1 and sum(e["boots"] for e in d["pools"].values()) == 1
    # at the cap: nothing more, whatever the shortfall
    full = decide(p, servers("a", building=4) + servers("b", booted=2), max_in_flight_total=6)
    assert full["boots"] == 0 and all("boot-storm" in e["reason"] for e in full["pools"].values())


def test_default_global_cap_is_ten():
    p = pool_plan.validate_pools({n: {"flavor": "d2", "image": "i", "network": "n", "spares": 30, "max_size": 50, "max_in_flight": 30} for n in ("a", "b")})
    d = decide(p, servers("a", building=7))
    assert d["boots"] == 3


# ---- readiness deadline -------------------------------------------------------------


def aged(server_list, seconds):
    for s in server_list:
        s["created"] = MONDAY_10.timestamp() - seconds
    return server_list


def test_active_never_ready_past_the_deadline_is_a_failure():
    stuck = aged(servers(booted=2), 1300)  # default deadline 1200 s
    d = decide(pools(), stuck + servers(ready=1))
    entry = d["pools"]["sales"]
    assert entry["stuck"] == 2 and entry["in_flight"] == 0 and entry["failed"] == 2
    assert sorted(entry["delete"]) == ["sales-a0", "sales-a1"]
    assert entry["health"] == "backoff" and entry["boots"] == 0 and entry["problems"]
    assert d["in_flight_total"] == 0  # no longer holds the global boot cap


def test_stuck_desktops_do_not_hold_the_global_cap():
    p = pool_plan.validate_pools({n: {"flavor": "d2", "image": "i", "network": "n", "spares": 5} for n in ("bad", "good")})
    d = decide(p, aged(servers("bad", booted=4), 5000), max_in_flight_total=4)
    assert d["pools"]["good"]["boots"] == 2 and d["in_flight_total"] == 0  # good's max_in_flight is 2


def test_young_desktops_are_in_flight_and_a_pool_may_set_its_own_deadline():
    d = decide(pools(), aged(servers(booted=2), 600))
    assert d["pools"]["sales"]["in_flight"] == 2 and d["pools"]["sales"]["stuck"] == 0
    d = decide(pools(ready_deadline=300), aged(servers(booted=2), 600))
    assert d["pools"]["sales"]["stuck"] == 2
    d = decide(pools(), aged(servers(building=1), 2000))  # stuck in BUILD too
    assert d["pools"]["sales"]["stuck"] == 1


def test_unknown_flavor_and_empty_placement_are_failures():
    d = pool_plan.plan(pools(flavor="nope"), [], BIG, FLAVORS, {}, MONDAY_10)
    assert d["pools"]["sales"]["failed"] == 1 and "unknown flavor nope" in d["pools"]["sales"]["problems"]
    d = pool_plan.plan(pools(), [], [], FLAVORS, {}, MONDAY_10)
    assert d["pools"]["sales"]["failed"] == 1 and "placement lists no compute hosts" in d["pools"]["sales"]["problems"]


# ---- schedules ------------------------------------------------------------------------


def at(day, hh, mm=0):
    return datetime.datetime(2026, 11, 23 + day, hh, mm, tzinfo=UTC)  # day 0 = Monday


def test_overnight_window_applies_after_midnight_of_the_next_day():
    p = pools(spares=2, schedule=[{"days": "mon-fri", "from": "22:00", "to": "06:00", "spares": 1}])["sales"]
    assert pool_plan.target_spares(p, at(0, 23)) == 1  # Monday night
    assert pool_plan.target_spares(p, at(1, 3)) == 1  # ... into Tuesday morning
    assert pool_plan.target_spares(p, at(1, 6)) == 2  # over at 06:00
    assert pool_plan.target_spares(p, at(0, 3)) == 2  # Sunday night is not in mon-fri
    assert pool_plan.target_spares(p, at(5, 3)) == 1  # Friday night into Saturday
    assert pool_plan.target_spares(p, at(5, 23)) == 2  # Saturday night


def test_window_to_24_00_and_equal_bounds():
    p = pools(spares=0, schedule=[{"from": "18:00", "to": "24:00", "spares": 3}])["sales"]
    assert pool_plan.target_spares(p, at(0, 23, 59)) == 3
    with pytest.raises(pool_plan.PoolConfigError, match=r"schedule\[0\].to: equals from"):
        pools(schedule=[{"from": "08:00", "to": "08:00", "spares": 3}])


def test_unquoted_time_is_named_and_the_fix_given():
    # what YAML 1.1 makes of `to: 19:00`
    with pytest.raises(pool_plan.PoolConfigError) as err:
        pools(schedule=[{"from": "07:00", "to": 1140, "spares": 3}])
    assert "pool sales: schedule[0].to:" in str(err.value) and '"19:00"' in str(err.value) and "quote" in str(err.value)


def test_unquoted_time_through_real_yaml():
    import yaml  # pylint: disable=import-outside-toplevel

    conf = yaml.safe_load("sales: {flavor: d2, image: i, network: n, spares: 1, schedule: [{from: 07:00, to: 19:00, spares: 2}]}")
    good, errors = pool_config.validate(conf)
    # 07:00 stays a string (leading zero); 19:00 becomes 1140
    assert good == {} and "schedule[0].to" in errors["sales"] and "quote" in errors["sales"]


# ---- one bad pool never stops the others -------------------------------------------------


def test_bad_pools_are_reported_one_by_one_and_good_ones_kept():
    good, errors = pool_config.validate(
        {
            "sales": {"flavor": "d2", "image": "i", "network": "n", "spares": 1},
            "broken": {"flavor": "d2", "image": "i", "network": "n"},
            "Bad Name": {"flavor": "d2"},
            "late": {"flavor": "d2", "image": "i", "network": "n", "spares": 1, "schedule": [{"to": 1140, "spares": 1}]},
        }
    )
    assert list(good) == ["sales"]
    assert errors["broken"] == "pool broken: spares: is required (ready desktops wanted; 0 for none)"
    assert "pool name 'Bad Name'" in errors["Bad Name"] and "schedule[0].to" in errors["late"]


# ---- alerts ------------------------------------------------------------------------------


def test_short_pool_alerts_only_after_the_grace_period():
    entry = {"ready": 1, "target": 5, "reason": "capped by over-commit headroom (per host)"}
    since, alert = pool_plan.shortage(entry, None, 1000.0, pool_plan.DEFAULTS)
    assert since == 1000.0 and alert is None
    since, alert = pool_plan.shortage(entry, since, 1000.0 + 901, pool_plan.DEFAULTS)
    assert since == 1000.0 and alert["kind"] == "short" and alert["short_for"] == 901 and "headroom" in alert["message"]
    assert pool_plan.shortage(dict(entry, ready=5), since, 5000.0, pool_plan.DEFAULTS) == (None, None)


def test_pillar_example_validates():
    import pathlib  # pylint: disable=import-outside-toplevel

    import yaml  # pylint: disable=import-outside-toplevel

    example = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "vm.pools.pillar.example"
    good, errors = pool_config.validate(yaml.safe_load(example.read_text())["deskfleet"]["pools"])
    assert errors == {} and good["callcentre-win11"]["schedule"][1]["from"] == 22 * 60
