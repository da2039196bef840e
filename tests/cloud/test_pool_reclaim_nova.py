"""
Idle reclaim against a real Nova + placement (novalab), through Salt's runner
loader with the vm master's shipped config: taken desktops whose users logged
off (or stayed disconnected past ``reclaim_after``) are deleted and the keeper
refills; a desktop with a connected user is never touched. Session rows are
written with ``desktop_sessions.record``, as the engine writes them from the
signed beacon events.
"""

import json
import time

import deskfleet_store
import desktop_sessions
from harness.lab import wait_for
from harness.vmrunner import VmRunner
from tests.cloud.test_vmpool_keeper import STATE_KEY, mark_all_ready, members, pool, wait_active


def sessions_row(desktop, *states):
    now = time.time()
    sessions = [{"user": f"agent{i}", "state": s, "idle_seconds": 5.0} for i, s in enumerate(states)]
    return {"desktop": desktop, "logged_on": int(bool(sessions)), "sessions": json.dumps(sessions),
            "idle_seconds": 5.0, "seq": int(now * 1000), "reported_at": now, "heartbeat": 60.0, "received_at": now}


def test_reclaim_by_policy_never_a_connected_user(tmp_path, novalab, cloud):
    policy = {"reclaim_after": 3, "logged_off_after": 0, "max_per_pass": 5}
    keeper = VmRunner(tmp_path, novalab, {"sales": pool(novalab, reclaim=policy)})
    keeper("reconcile")
    wait_active(cloud, "sales", 3)
    mark_all_ready(keeper, cloud, "sales")
    desks = sorted(s.name for s in members(cloud, "sales"))
    for server in members(cloud, "sales"):
        cloud.compute.set_server_metadata(server, **{STATE_KEY: "taken"})
    off, busy, away = desks
    db = desktop_sessions.open_store(deskfleet_store.default_path(keeper.opts, "vm"))
    try:
        desktop_sessions.record(db, sessions_row(off), sessions_row(busy, "active"), sessions_row(away, "disconnected"))
    finally:
        db.close()

    dry = keeper("reclaimable")
    assert [d["name"] for d in dry["reclaim"]] == [off], dry
    assert {d["name"]: d["reason"] for d in dry["keep"]}[busy] == "a user is logged on and connected"
    assert len(members(cloud, "sales")) == 3  # a dry run deletes nothing

    first = keeper("reclaim")
    assert first["deleted"] == [off], first
    wait_for(lambda: off not in {s.name for s in members(cloud, "sales")}, timeout=60, what=f"{off} deleted")
    wait_for(lambda: keeper("reclaim")["deleted"] == [away], timeout=60, interval=1, what=f"{away} reclaimed")
    wait_for(lambda: away not in {s.name for s in members(cloud, "sales")}, timeout=60, what=f"{away} deleted")
    assert busy in {s.name for s in members(cloud, "sales")}
    assert keeper("reclaim")["deleted"] == []
    refill = keeper("replenish", "sales")  # the keeper refills spares; the one taken desktop left counts as taken
    assert refill["pools"]["sales"]["taken"] == 1 and refill["pools"]["sales"]["boots"] == 3, refill


def test_a_bad_policy_is_an_error_naming_pool_and_field(tmp_path, novalab, cloud):
    keeper = VmRunner(tmp_path, novalab, {"sales": pool(novalab, spares=0, reclaim={"reclaim_after": "soon"})})
    ret = keeper("reclaimable")
    assert ret["retcode"] == 1 and "deskfleet:pools:sales:reclaim:reclaim_after" in ret["error"], ret
