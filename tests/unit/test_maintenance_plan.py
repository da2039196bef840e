"""Rolling host maintenance, the plan: request checks, deadlines, notices, per-host capacity (pure)."""

import datetime

import pytest

import maintenance as mt

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SMALL = {"ram": 2048, "vcpus": 1, "disk": 10}


def provider(name, ram_mb=8192, used_mb=0, disabled=False):
    return {
        "name": name,
        "inventories": {
            "MEMORY_MB": {"total": ram_mb, "reserved": 512, "allocation_ratio": 1.5, "max_unit": ram_mb},
            "VCPU": {"total": 16, "reserved": 0, "allocation_ratio": 4.0, "max_unit": 16},
            "DISK_GB": {"total": 1000, "reserved": 0, "allocation_ratio": 1.0, "max_unit": 1000},
        },
        "usages": {"MEMORY_MB": used_mb, "VCPU": used_mb // 2048, "DISK_GB": used_mb // 2048 * 10},
        "disabled": disabled,
    }


def server(sid, host, state="taken", pool="sales", flavor=SMALL):
    meta = {"deskfleet_pool": pool, "deskfleet_state": state} if pool else {}
    if pool and state is None:
        meta.pop("deskfleet_state")
    return {"id": sid, "name": sid, "host": host, "status": "ACTIVE", "metadata": meta, "flavor": flavor}


def request(**kw):
    return mt.validate_request(dict({"hosts": ["cmp-01"], "reason": "kernel 6.1.0-28"}, **kw), NOW)


# ---- request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, delta",
    [("+2h", 7200), ("+90m", 5400), ("+1h30m", 5400), ("+1d", 86400), ("+45s", 45)],
)
def test_relative_deadlines(spec, delta):
    assert mt.parse_deadline(spec, NOW) == NOW + datetime.timedelta(seconds=delta)


def test_iso_deadline_naive_means_utc():
    assert mt.parse_deadline("2026-11-30T04:00", NOW) == datetime.datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    assert mt.parse_deadline("2026-11-30T05:00+01:00", NOW).astimezone(UTC).hour == 4


@pytest.mark.parametrize("spec", ["+", "+2x", "2h", "yesterday", "2026-11-30T01:00", 7200, "+0h"])
def test_bad_or_past_deadlines_are_refused(spec):
    with pytest.raises(mt.RequestError, match="deadline"):
        mt.parse_deadline(spec, NOW)


def test_request_defaults():
    req = request()
    assert req["batch"] == 1 and req["max_failures"] == 0 and req["force"] is False
    assert req["deadline"] == (NOW + datetime.timedelta(hours=2)).isoformat()


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"hosts": []}, "hosts"),
        ({"hosts": "cmp-01,cmp-01"}, "listed twice"),
        ({"hosts": ["cmp 01"]}, r"hosts\[0\]"),
        ({"hosts": ["../etc"]}, r"hosts\[0\]"),
        ({"reason": ""}, "reason"),
        ({"reason": "two\nlines"}, "reason"),
        ({"reason": "x" * 201}, "reason"),
        ({"batch": 0}, "batch"),
        ({"batch": True}, "batch"),
        ({"max_failures": -1}, "max_failures"),
        ({"force": "yes"}, "force"),
        ({"colour": "red"}, "unknown field"),
        ({"deadline": "+2y"}, "deadline"),
    ],
)
def test_bad_requests_name_the_field(fields, named):
    with pytest.raises(mt.RequestError, match=named):
        mt.validate_request(dict({"hosts": ["cmp-01"], "reason": "kernel"}, **fields), NOW)


def test_hosts_as_comma_separated_string_and_batches():
    req = request(hosts="a,b,c,d,e", batch=2)
    assert mt.batches(req["hosts"], req["batch"]) == [["a", "b"], ["c", "d"], ["e"]]


def test_our_reason_is_recognised():
    assert mt.is_ours(mt.disabled_reason("kernel"))
    assert not mt.is_ours("hardware fault, ticket 4711")
    assert not mt.is_ours(None)


# ---- desktops and notices ---------------------------------------------------------


def test_spares_and_taken_desktops():
    servers = [
        server("ready", "h", "ready"),
        server("booting", "h", None),
        server("taken", "h", "taken"),
        server("pet", "h", pool=None),  # not a pool desktop: must move too
    ]
    assert mt.split_desktops(servers) == (["ready", "booting"], ["taken", "pet"])


def test_notice_times_are_lead_times_before_the_deadline_still_ahead():
    deadline = NOW + datetime.timedelta(minutes=30)
    times = mt.notify_times(NOW, deadline)
    assert times == [NOW, deadline - datetime.timedelta(minutes=15), deadline - datetime.timedelta(minutes=5)]


def test_notice_due_once_per_lead_time():
    deadline = NOW + datetime.timedelta(hours=2)
    assert mt.notice_due([], NOW, deadline)
    assert not mt.notice_due([NOW], NOW + datetime.timedelta(minutes=30), deadline)
    at_1h = deadline - datetime.timedelta(hours=1)
    assert mt.notice_due([NOW], at_1h, deadline)
    assert not mt.notice_due([NOW, at_1h], at_1h + datetime.timedelta(minutes=10), deadline)


def test_notice_text_fits_a_windows_message():
    text = mt.notice_text("r" * 200, NOW + datetime.timedelta(minutes=90), NOW)
    assert len(text) < 256 and "90 min" in text


# ---- capacity ---------------------------------------------------------------------


def test_capacity_is_per_host_not_summed():
    # 3 other hosts with 3 GB free each: 9 GB in sum, but no host takes a 4 GB desktop
    cap = (8192 - 512) * 1.5
    providers = [provider("cmp-01")] + [provider(f"cmp-0{i}", used_mb=int(cap - 3072)) for i in (2, 3, 4)]
    big = {"ram": 4096, "vcpus": 1, "disk": 10}
    servers = [server("d1", "cmp-01", flavor=big)]
    result = mt.plan(request(), providers, servers, NOW)
    assert not result["ok"] and result["refused"] == ["cmp-01"]
    problem = result["hosts"]["cmp-01"]["problems"][0]
    assert "cmp-01: 1 desktop(s)" in problem and "MEMORY_MB 4096" in problem


def test_plan_places_taken_desktops_and_ignores_spares():
    providers = [provider("cmp-01", used_mb=8192), provider("cmp-02"), provider("cmp-03")]
    servers = [server("t1", "cmp-01"), server("t2", "cmp-01"), server("s1", "cmp-01", "ready"), server("s2", "cmp-01", "ready")]
    result = mt.plan(request(), providers, servers, NOW)
    host = result["hosts"]["cmp-01"]
    assert result["ok"] and host["steps"] == list(mt.STEPS)
    assert host["spares"] == ["s1", "s2"] and host["taken"] == ["t1", "t2"]
    assert set(host["moves"].values()) <= {"cmp-02", "cmp-03"}


def test_disabled_hosts_take_nothing():
    providers = [provider("cmp-01"), provider("cmp-02", disabled=True)]
    result = mt.plan(request(), providers, [server("t1", "cmp-01")], NOW)
    assert result["refused"] == ["cmp-01"]


def test_a_batch_is_checked_together():
    # two hosts with 5 desktops each; one spare host takes 5: each alone fits, together not
    providers = [provider("a"), provider("b"), provider("spare")]
    servers = [server(f"{h}{i}", h) for h in "ab" for i in range(5)]
    alone = mt.plan(request(hosts=["a", "b"], batch=1), providers, servers, NOW)
    assert alone["ok"]  # batch 1: a's desktops go to b or spare, then b's to a or spare
    together = mt.plan(request(hosts=["a", "b"], batch=2), providers, servers, NOW)
    assert not together["ok"] and set(together["refused"]) <= {"a", "b"} and together["refused"]


def test_service_disabled_by_someone_else_is_refused():
    providers = [provider("cmp-01"), provider("cmp-02")]
    services = {"cmp-01": {"disabled": True, "reason": "RMA ticket 4711"}, "cmp-02": {"disabled": False}}
    result = mt.plan(request(), providers, [], NOW, services=services)
    assert "RMA ticket 4711" in result["hosts"]["cmp-01"]["problems"][0]
    services["cmp-01"]["reason"] = mt.disabled_reason("earlier roll")
    assert mt.plan(request(), providers, [], NOW, services=services)["ok"]


def test_unknown_host_is_refused_when_services_are_known():
    result = mt.plan(request(hosts=["cmp-09"]), [provider("cmp-01")], [], NOW, services={"cmp-01": {}})
    assert result["refused"] == ["cmp-09"]


def group(name, policy, members):
    return {"id": f"uuid-{name}", "name": name, "policy": policy, "members": members}


def test_anti_affinity_member_is_refused_with_the_group_named():
    # one member of "apart" on every host: the one on cmp-01 can go nowhere, memory is plenty
    providers = [provider("cmp-01"), provider("cmp-02"), provider("cmp-03")]
    servers = [server("m1", "cmp-01"), server("m2", "cmp-02"), server("m3", "cmp-03"), server("t1", "cmp-01")]
    groups = [group("apart", "anti-affinity", {"m1": "cmp-01", "m2": "cmp-02", "m3": "cmp-03"})]
    result = mt.plan(request(), providers, servers, NOW, groups=groups)
    assert result["refused"] == ["cmp-01"]
    problem = result["hosts"]["cmp-01"]["problems"][0]
    assert "m1 on cmp-01 is in anti-affinity server group 'apart'" in problem and "short by" not in problem
    assert result["hosts"]["cmp-01"]["moves"]["t1"] in ("cmp-02", "cmp-03")
    # soft anti-affinity is Nova's preference, not a refusal; without the group the plan passes
    assert mt.plan(request(), providers, servers, NOW, groups=[dict(groups[0], policy="soft-anti-affinity")])["ok"]
    assert mt.plan(request(), providers, servers, NOW)["ok"]


def test_anti_affinity_members_in_one_batch_go_to_different_hosts():
    providers = [provider("cmp-01"), provider("cmp-02"), provider("cmp-03"), provider("cmp-04")]
    servers = [server("m1", "cmp-01"), server("m2", "cmp-02"), server("m3", "cmp-03")]
    groups = [group("apart", "anti-affinity", {"m1": "cmp-01", "m2": "cmp-02", "m3": "cmp-03"})]
    # batch of cmp-01 + cmp-02: m3 holds cmp-03, so m1 and m2 cannot both go to cmp-04
    result = mt.plan(request(hosts=["cmp-01", "cmp-02"], batch=2), providers, servers, NOW, groups=groups)
    assert not result["ok"] and len(result["refused"]) == 1
    assert "anti-affinity server group 'apart'" in result["hosts"][result["refused"][0]]["problems"][0]
    providers.append(provider("cmp-05"))
    moves = mt.plan(request(hosts=["cmp-01", "cmp-02"], batch=2), providers, servers, NOW, groups=groups)
    assert moves["ok"] and {moves["hosts"]["cmp-01"]["moves"]["m1"], moves["hosts"]["cmp-02"]["moves"]["m2"]} == {"cmp-04", "cmp-05"}


def test_plan_shows_until_when_desktops_wait_for_a_logoff():
    providers = [provider("cmp-01"), provider("cmp-02")]
    assert "wait_logoff_until" not in mt.plan(request(), providers, [], NOW)
    planned = mt.plan(request(deadline="+2h", wait_logoff=1800), providers, [], NOW)
    assert planned["wait_logoff_until"] == (NOW + datetime.timedelta(minutes=90)).isoformat()
