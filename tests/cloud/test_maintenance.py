"""
Rolling host maintenance against a real Nova + placement (novalab, 3 fake
computes, real live migration through the scheduler and conductor), driven
through Salt's runner loader with the shipped vm master config.

The host-side steps (stop guests/libvirt/OVS, reboot, wait for the minion,
start, verify) are SIMULATED here (``host_actions: simulated``): there is no
real compute host in this tier. Cloud, placement, scheduling, migrations,
service disable/enable, the pool keeper and the journal are real.
"""

import json
import os
import signal
import time

import pytest

from harness import novalab as novalab_mod
from harness import wait
from harness.maintenance_runner import MaintenanceRunner
from tests.cloud.conftest import clear_servers

POOL, STATE = "deskfleet_pool", "deskfleet_state"
REASON = "kernel 6.1.0-28"


@pytest.fixture(scope="module")
def lab3():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    with novalab_mod.NovaLab(computes=3) as lab:
        yield lab


@pytest.fixture
def conn(lab3):
    c = lab3.connect()
    try:
        yield c
    finally:
        try:
            clear_servers(c)
            for svc in c.compute.services(binary="nova-compute"):
                if svc.status == "disabled":
                    c.compute.enable_service(svc)
        finally:
            c.close()


def make_roller(root, lab, **maintenance):
    pools = {"sales": {"flavor": "desk.small", "image": lab.image_id, "network": lab.network_id,
                       "spares": 2, "max_size": 10, "max_in_flight": 4}}
    return MaintenanceRunner(root, lab, pools, **maintenance)


def boot(conn, lab, name, host, state=None, pool="sales", group=None, zone=False):
    meta = {POOL: pool, STATE: state} if state else {}
    kwargs = {"scheduler_hints": {"group": group}} if group else {}
    if zone or not group:
        kwargs["availability_zone"] = f"nova:{host}"
    return conn.compute.create_server(name=name, flavor_id=lab.flavor_id, image_id=lab.image_id,
                                      networks=[{"uuid": lab.network_id}], metadata=meta, **kwargs)


def wait_all_active(conn, servers, timeout=120):
    return [conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=timeout) for s in servers]


def service(conn, host):
    return next(s for s in conn.compute.services(binary="nova-compute") if s.host == host)


def wait_for(what, check, timeout=300, interval=0.3):
    return wait.wait_for(check, timeout, interval, what=what)


def live_migrations(conn, sid):
    return list(conn.compute.migrations(instance_uuid=sid, migration_type="live-migration"))


def roll_request(**kw):
    return dict({"hosts": ["compute1"], "reason": REASON, "poll": 0.2, "migration_timeout": 120, "minion_timeout": 600}, **kw)


def test_roll_a_host_with_a_restart_mid_roll(tmp_path, lab3, conn):
    spares = [boot(conn, lab3, f"spare-{i}", "compute1", "ready") for i in range(2)]
    taken = [boot(conn, lab3, f"desk-{i}", "compute1", "taken") for i in range(2)]
    wait_all_active(conn, spares + taken)
    roller = make_roller(tmp_path, lab3, simulated_reboot_seconds=3600)  # the host stays "down" until the test says so

    dry = roller("plan", **roll_request())
    host = dry["hosts"]["compute1"]
    assert dry["ok"] and sorted(host["spares"]) == sorted(s.id for s in spares) and sorted(host["taken"]) == sorted(s.id for s in taken)
    assert service(conn, "compute1").status == "enabled" and not live_migrations(conn, taken[0].id)  # nothing touched

    first = roller.spawn("start", **roll_request())
    try:
        # the roll sits in wait_minion: the host was drained, migrated, stopped and rebooted
        wait_for("wait_minion running", lambda: roller("status").get("hosts", {}).get("compute1", {}).get("step") == "wait_minion")
        svc = service(conn, "compute1")
        assert svc.status == "disabled" and svc.disabled_reason == f"deskfleet-maintenance: {REASON}"
        assert all(conn.compute.find_server(s.id, ignore_missing=True) is None for s in spares)
        for server in taken:
            moved = conn.compute.get_server(server.id)
            assert moved.status == "ACTIVE" and moved.compute_host in ("compute2", "compute3")
        # the keeper refills the deleted spares elsewhere, never on the disabled host, never past the target
        refill = roller.keeper("reconcile")
        assert refill["pools"]["sales"]["boots"] == 2
        assert roller.keeper("reconcile")["boots"] == 0
        refills = wait_all_active(conn, [s for s in conn.compute.servers(details=True) if s.name.startswith("dfp-sales-")])
        assert len(refills) == 2 and all(s.compute_host != "compute1" for s in refills)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the vm master dies mid-roll
        first.wait(30)
    status = roller("status")
    assert status["state"] == "running" and status["hosts"]["compute1"]["steps"]["wait_minion"]["state"] == "running"

    # the host comes back; a new process resumes with a new store connection
    state = roller.hosts_state()
    state["compute1"]["down_until"] = 0
    roller.hosts_file.write_text(json.dumps(state))
    second = roller.spawn("resume")
    out, _ = second.communicate(timeout=300)
    result = roller.result(out)
    assert result["state"] == "done", out.decode()[-3000:]
    steps = result["hosts"]["compute1"]["steps"]
    assert steps["wait_minion"]["attempts"] == 2
    assert all(s["attempts"] == 1 for name, s in steps.items() if name != "wait_minion"), steps
    assert roller.hosts_state()["compute1"]["boots"] == 1  # rebooted once
    assert roller.hosts_state()["compute1"]["log"] == ["stop guests", "stop libvirt", "stop ovs", "reboot", "start ovs", "start libvirt", "verify"]
    for server in taken:  # one live migration each, none repeated
        assert len(live_migrations(conn, server.id)) == 1
    svc = service(conn, "compute1")
    assert svc.status == "enabled" and not svc.disabled_reason
    assert result["hosts"]["compute1"]["desktops_left"] == 0 and len(result["hosts"]["compute1"]["migrations"]) == 2


def test_precheck_refuses_when_the_others_cannot_take_the_load(tmp_path, lab3, conn):
    # compute2 and compute3 full (5 x 2 GB of 11.25 GB each); two taken desktops on compute1
    fillers = [boot(conn, lab3, f"fill-{h}-{i}", h) for h in ("compute2", "compute3") for i in range(5)]
    taken = [boot(conn, lab3, f"desk-{i}", "compute1", "taken") for i in range(2)]
    wait_all_active(conn, fillers + taken)
    roller = make_roller(tmp_path, lab3)
    refused = roller("plan", **roll_request())
    assert refused["retcode"] == 1 and "compute1" in refused["error"]
    problem = refused["plan"]["hosts"]["compute1"]["problems"][0]
    assert "compute1: 2 desktop(s)" in problem and "MEMORY_MB 4096" in problem
    started = roller("start", **roll_request())
    assert started["retcode"] == 1 and "refused before starting" in started["error"]
    assert service(conn, "compute1").status == "enabled"
    assert all(not live_migrations(conn, s.id) for s in taken)
    assert roller("status") == {"roll": None, "message": "no maintenance roll yet"}


def test_precheck_refuses_an_anti_affinity_member_with_the_group_named(tmp_path, lab3, conn):
    # an anti-affinity group with a member on every host: the one on compute1 can go nowhere,
    # although memory is plenty. Refused before anything is touched, the group named.
    group = conn.compute.create_server_group(name="apart", policy="anti-affinity")
    try:
        members = wait_all_active(conn, [boot(conn, lab3, f"apart-{i}", None, "taken", group=group.id) for i in range(3)])
        stuck = next(s for s in members if s.compute_host == "compute1")
        roller = make_roller(tmp_path, lab3)
        refused = roller("plan", **roll_request())
        assert refused["retcode"] == 1, refused
        problem = " ".join(refused["plan"]["hosts"]["compute1"]["problems"])
        assert f"{stuck.name} on compute1 is in anti-affinity server group 'apart'" in problem, problem
        started = roller("start", **roll_request())
        assert started["retcode"] == 1 and "anti-affinity server group 'apart'" in started["error"]
        assert service(conn, "compute1").status == "enabled" and not live_migrations(conn, stuck.id)
        assert roller("status") == {"roll": None, "message": "no maintenance roll yet"}
    finally:
        clear_servers(conn)
        conn.compute.delete_server_group(group, ignore_missing=True)


def test_a_failed_migration_stops_the_roll_with_the_host_disabled(tmp_path, lab3, conn):
    # two members of an AFFINITY group on compute1: one cannot move without the other, so Nova's
    # scheduler refuses the live migration (the pre-check knows anti-affinity only: it passes).
    group = conn.compute.create_server_group(name="together", policy="affinity")
    try:
        members = wait_all_active(conn, [boot(conn, lab3, f"together-{i}", "compute1", "taken", group=group.id,
                                              zone=True) for i in range(2)])
        assert {s.compute_host for s in members} == {"compute1"}
        roller = make_roller(tmp_path, lab3)
        result = roller("start", **roll_request(hosts=["compute1", "compute2"]))
        assert result["retcode"] == 1 and result["state"] == "failed"
        host = result["hosts"]["compute1"]
        assert host["state"] == "failed" and host["step"] == "migrate"
        assert "No valid host" in host["error"] and "together-" in host["error"]
        assert result["hosts"]["compute2"]["state"] == "pending"  # the roll stopped there
        svc = service(conn, "compute1")
        assert svc.status == "disabled" and svc.disabled_reason == f"deskfleet-maintenance: {REASON}"
        assert {conn.compute.get_server(s.id).compute_host for s in members} == {"compute1"}
        assert "compute1" not in roller.hosts_state()  # never stopped nor rebooted
        aborted = roller("abort")
        assert aborted["state"] == "aborted" and aborted["left_disabled"] == ["compute1"]
    finally:
        clear_servers(conn)
        conn.compute.delete_server_group(group, ignore_missing=True)


def report_session(roller, name, logged_on, seq):
    """What the vm master's desktop_sessions engine stores from a desktop's signed beacon report."""
    import deskfleet_store  # pylint: disable=import-outside-toplevel
    import desktop_sessions  # pylint: disable=import-outside-toplevel

    db = desktop_sessions.open_store(deskfleet_store.default_path(roller.opts, "vm"))
    try:
        sessions = [{"user": "agent7", "state": "active", "idle_seconds": 5.0}] if logged_on else []
        now = time.time()
        desktop_sessions.record(db, {"desktop": name, "logged_on": int(logged_on), "sessions": json.dumps(sessions),
                                     "idle_seconds": 5.0, "seq": seq, "reported_at": now, "heartbeat": 600.0,
                                     "received_at": now})
    finally:
        db.close()


def test_wait_for_logoff_recycles_the_desktop_whose_user_left_and_moves_the_other(tmp_path, lab3, conn):
    stay, leave = wait_all_active(conn, [boot(conn, lab3, name, "compute1", "taken") for name in ("desk-stay", "desk-leave")])
    roller = make_roller(tmp_path, lab3)
    for name in ("desk-stay", "desk-leave"):
        report_session(roller, name, True, 1)
    # deadline in an hour; users may log off until WINDOW s from now, then whoever is left moves.
    # WINDOW covers a slow start on a loaded box (make test runs this beside the integration tier: 272 s for a 240 s
    # window there, too close); the recycle is read from the roll's journal (no Nova delete wait)
    window = 420
    started_at = time.monotonic()
    proc = roller.spawn("start", **roll_request(deadline="+1h", wait_logoff=3600 - window))
    try:
        wait_for("migrate step", lambda: roller("status").get("hosts", {}).get("compute1", {}).get("step") == "migrate",
                 window - 120)
        assert not live_migrations(conn, stay.id) and not live_migrations(conn, leave.id)  # both wait
        report_session(roller, "desk-leave", False, 2)  # the user logs off
        try:
            wait_for("desk-leave recycled in the roll's journal",
                     lambda: leave.id in roller("status")["hosts"]["compute1"].get("recycled", []),
                     max(1, window - (time.monotonic() - started_at)))
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
            raise AssertionError(f"no recycle; status: {roller('status')}\nroll output: {out.decode()[-4000:]}") from None
        assert not live_migrations(conn, stay.id) and time.monotonic() - started_at < window  # still waiting
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    result = roller.result(out)
    assert result["state"] == "done", out.decode()[-3000:]
    host = result["hosts"]["compute1"]
    assert host["recycled"] == [leave.id] and [m["server"] for m in host["migrations"]] == [stay.id]
    assert not live_migrations(conn, leave.id) and len(live_migrations(conn, stay.id)) == 1
    assert time.monotonic() - started_at >= window  # desk-stay moved only once the wait was over
    wait_for("desk-leave deleted in Nova", lambda: conn.compute.find_server(leave.id, ignore_missing=True) is None, 300)
    assert conn.compute.get_server(stay.id).compute_host in ("compute2", "compute3")
