"""
Unit tests for the idle-reclaim planner (``_utils/pool_reclaim.py``): which
taken desktops go back by their pool's policy, and which never do.
"""

import pytest

import pool_reclaim as pr

NOON = 1_796_040_000.0  # 2026-11-30T12:00:00Z
POLICY = pr.policy("sales", {"reclaim_after": 3600, "logged_off_after": 300, "protected_hours": ["22:00-02:00"],
                             "max_per_pass": 2})


def session(*states, fresh=True, logged_on=None):
    sessions = [{"user": f"u{i}", "state": s, "idle_seconds": 10.0} for i, s in enumerate(states)]
    return {"fresh": fresh, "logged_on": bool(sessions) if logged_on is None else logged_on, "sessions": sessions}


def passes(desktops, sessions, times, policies=None):
    seen, result = {}, None
    for now in times:
        result = pr.plan(desktops, sessions, seen, policies or {"sales": POLICY}, now)
        seen = result["seen"]
    return result


def names(result, kind):
    return {d["name"]: d["reason"] for d in result[kind]}


def test_logged_off_and_long_disconnected_go_back_active_never():
    desks = [{"name": n, "pool": "sales"} for n in ("d-off", "d-disc", "d-active", "d-mixed")]
    sessions = {"d-off": session(), "d-disc": session("disconnected"), "d-active": session("active"),
                "d-mixed": session("disconnected", "active")}
    early = passes(desks, sessions, [NOON, NOON + 301])
    assert set(names(early, "reclaim")) == {"d-off"}
    late = passes(desks, sessions, [NOON, NOON + 3601])
    assert set(names(late, "reclaim")) == {"d-off", "d-disc"}
    assert names(late, "keep")["d-active"] == names(late, "keep")["d-mixed"] == "a user is logged on and connected"


def test_a_change_of_state_restarts_the_clock_and_no_report_means_no_reclaim():
    desks = [{"name": "d1", "pool": "sales"}]
    seen = pr.plan(desks, {"d1": session("disconnected")}, {}, {"sales": POLICY}, NOON)["seen"]
    seen = pr.plan(desks, {"d1": session("active")}, seen, {"sales": POLICY}, NOON + 3000)["seen"]
    out = pr.plan(desks, {"d1": session("disconnected")}, seen, {"sales": POLICY}, NOON + 3700)
    assert out["reclaim"] == [] and "under 3600" in out["keep"][0]["reason"]
    for sessions in ({}, {"d1": session(fresh=False)}, {"d1": session(logged_on=True)}):
        out = passes(desks, sessions, [NOON, NOON + 90000])
        assert names(out, "keep") == {"d1": "no fresh session report"}


def test_protected_hours_cap_and_pools_without_policy():
    desks = [{"name": f"d{i}", "pool": "sales"} for i in range(4)] + [{"name": "x1", "pool": "support"}]
    sessions = {d["name"]: session() for d in desks}
    night = NOON + 11 * 3600  # 23:00 UTC, inside 22:00-02:00
    assert passes(desks, sessions, [night - 600, night])["reclaim"] == []
    out = passes(desks, sessions, [NOON, NOON + 600])
    assert sorted(names(out, "reclaim")) == ["d0", "d1"]  # max_per_pass 2
    assert names(out, "keep")["d2"].startswith("over max_per_pass")
    assert names(out, "keep")["x1"] == "the pool has no reclaim policy"


@pytest.mark.parametrize("conf, field", [
    ({"reclaim_after": -1}, "reclaim_after"), ({"reclaim_after": "1h"}, "reclaim_after"),
    ({"protected_hours": "07:00-19:00"}, "protected_hours"), ({"protected_hours": ["7-19"]}, "protected_hours[0]"),
    ({"protected_hours": ["07:00-25:00"]}, "protected_hours[0]"), ({"idle_after": 5}, "idle_after"),
])
def test_bad_policies_name_pool_and_field(conf, field):
    with pytest.raises(pr.PolicyError, match=f"deskfleet:pools:sales:reclaim:{field.replace('[', '.').replace(']', '.')}"):
        pr.policy("sales", conf)
