"""The roll engine and its journal, against an in-memory cloud, simulated hosts and a fake clock."""

import datetime

import pytest

import maintenance as mt
import maintenance_hosts
import maintenance_journal as journal
import maintenance_roll

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SMALL = {"ram": 2048, "vcpus": 1, "disk": 10}


class Clock:
    def __init__(self):
        self.t = T0

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += datetime.timedelta(seconds=seconds)


class Cloud:
    """The engine's cloud port, in memory. ``hang``: ids whose migration never ends; ``fail``: ids that fail."""

    def __init__(self, hosts, servers):
        self.services = {h: {"disabled": False, "reason": None, "up": True} for h in hosts}
        self.servers = {s["id"]: dict(s) for s in servers}
        self.migrations = {}
        self.fail, self.hang = set(), set()
        self.calls = []
        self.groups = []  # [{id, name, policy, members: [server ids]}]

    def server_groups(self):
        return [dict(g, members={sid: self.servers[sid]["host"] for sid in g["members"] if sid in self.servers})
                for g in self.groups]

    def service(self, host):
        return dict(self.services[host]) if host in self.services else None

    def disable(self, host, reason):
        self.calls.append(("disable", host, reason))
        self.services[host].update(disabled=True, reason=reason)

    def enable(self, host):
        self.calls.append(("enable", host))
        self.services[host].update(disabled=False, reason=None)

    def servers_on(self, host):
        return [dict(s) for s in self.servers.values() if s["host"] == host]

    def server(self, sid):
        return dict(self.servers[sid]) if sid in self.servers else None

    def providers(self):
        out = []
        for host, svc in self.services.items():
            used = sum(s["flavor"]["ram"] for s in self.servers.values() if s["host"] == host)
            out.append(
                {
                    "name": host,
                    "inventories": {
                        "MEMORY_MB": {"total": 8192, "reserved": 512, "allocation_ratio": 1.5},
                        "VCPU": {"total": 16, "reserved": 0, "allocation_ratio": 4.0},
                        "DISK_GB": {"total": 1000, "reserved": 0, "allocation_ratio": 1.0},
                    },
                    "usages": {"MEMORY_MB": used},
                    "disabled": svc["disabled"],
                }
            )
        return out

    def delete(self, sid):
        self.calls.append(("delete", sid))
        self.servers.pop(sid, None)

    def live_migrate(self, sid):
        self.calls.append(("live_migrate", sid))
        mid = len(self.migrations) + 1
        src = self.servers[sid]["host"]
        if sid in self.fail:
            self.migrations[mid] = {"id": mid, "server": sid, "status": "error"}
            return
        if sid in self.hang:
            self.migrations[mid] = {"id": mid, "server": sid, "status": "running"}
            return
        dest = next(h for h, svc in self.services.items() if h != src and not svc["disabled"])
        self.servers[sid]["host"] = dest
        self.migrations[mid] = {"id": mid, "server": sid, "status": "completed", "dest": dest}

    def migration(self, sid):
        mine = [m for m in self.migrations.values() if m["server"] == sid]
        return dict(mine[-1]) if mine else None

    def abort_migration(self, sid, mid):
        self.calls.append(("abort_migration", sid, mid))
        self.migrations[mid]["status"] = "cancelled"


def desk(sid, host, state="taken"):
    return {"id": sid, "name": sid, "host": host, "status": "ACTIVE", "flavor": SMALL,
            "metadata": {"deskfleet_pool": "sales", "deskfleet_state": state}}


@pytest.fixture
def world(tmp_path, store_db):
    clock = Clock()
    cloud = Cloud(["cmp-01", "cmp-02", "cmp-03"],
                  [desk("s1", "cmp-01", "ready"), desk("s2", "cmp-01", "ready"), desk("t1", "cmp-01"), desk("t2", "cmp-01")])
    hosts = maintenance_hosts.SimulatedHosts(str(tmp_path / "hosts.json"))
    events, notices = [], []
    db = journal.connect(store_db)

    def start(**kw):
        req = mt.validate_request(dict({"hosts": ["cmp-01"], "reason": "kernel 6.1.0-28", "poll": 1.0}, **kw), clock.now())
        roll_id = journal.create_roll(db, req, clock.now().timestamp())
        return roll(roll_id)

    def roll(roll_id, connection=None):
        return maintenance_roll.Roll(connection or db, roll_id, cloud, hosts, lambda s, t: notices.append((s["id"], t)),
                                     lambda tag, data: events.append((tag, data)), clock)

    class World:
        pass

    w = World()
    w.__dict__.update(clock=clock, cloud=cloud, hosts=hosts, events=events, notices=notices, db=db, start=start, roll=roll, path=store_db)
    yield w
    db.close()


def test_a_host_rolls_through_every_step_in_order(world):
    result = world.start().run()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "done" and host["state"] == "done"
    assert all(s["state"] == "done" and s["attempts"] == 1 for s in host["steps"].values())
    assert list(host["steps"]) == list(mt.STEPS)
    # spares deleted, taken desktops migrated one at a time, each user told first
    assert ("delete", "s1") in world.cloud.calls and ("delete", "s2") in world.cloud.calls
    assert [c for c in world.cloud.calls if c[0] == "live_migrate"] == [("live_migrate", "t1"), ("live_migrate", "t2")]
    assert [n[0] for n in world.notices] == ["t1", "t2"] and "kernel 6.1.0-28" in world.notices[0][1]
    assert {world.cloud.servers[s]["host"] for s in ("t1", "t2")} <= {"cmp-02", "cmp-03"}
    assert host["desktops_left"] == 0 and len(host["migrations"]) == 2
    # disabled with our reason, enabled at the end; guests -> libvirt -> OVS, then OVS -> libvirt
    assert world.cloud.calls[0] == ("disable", "cmp-01", "deskfleet-maintenance: kernel 6.1.0-28")
    assert world.cloud.calls[-1] == ("enable", "cmp-01") and world.cloud.services["cmp-01"]["reason"] is None
    assert world.hosts.log("cmp-01") == ["stop guests", "stop libvirt", "stop ovs", "reboot", "start ovs", "start libvirt", "verify"]
    tags = [t for t, d in world.events if d["state"] == "done"]
    assert tags == [f"deskfleet/maintenance/cmp-01/{s}" for s in mt.STEPS]


def test_precheck_refuses_naming_the_shortfall(world):
    # the others are full: 5 small desktops each fill 11520 MB
    for host in ("cmp-02", "cmp-03"):
        for i in range(5):
            world.cloud.servers[f"{host}-{i}"] = desk(f"{host}-{i}", host)
    result = world.start().run()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "failed" and host["state"] == "failed"
    assert "precheck" in host["error"] and "MEMORY_MB 4096" in host["error"] and "2 desktop(s)" in host["error"]
    assert world.cloud.calls == []  # nothing touched
    assert ("deskfleet/maintenance/cmp-01/precheck", "failed") in [(t, d["state"]) for t, d in world.events]


def test_precheck_refuses_an_anti_affinity_member_with_the_group_named(world):
    for h in ("cmp-02", "cmp-03"):
        world.cloud.servers[f"m-{h}"] = desk(f"m-{h}", h)
    world.cloud.groups = [{"id": "g1", "name": "apart", "policy": "anti-affinity", "members": ["t1", "m-cmp-02", "m-cmp-03"]}]
    host = world.start().run()["hosts"]["cmp-01"]
    assert host["state"] == "failed" and "t1 on cmp-01 is in anti-affinity server group 'apart'" in host["error"]
    assert world.cloud.calls == []  # nothing touched


def test_failed_migration_stops_the_roll_with_the_host_disabled(world):
    world.cloud.fail.add("t2")
    result = world.start(hosts=["cmp-01", "cmp-02"]).run()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "failed" and host["state"] == "failed" and host["step"] == "migrate"
    assert "live migration of t2 error" in host["error"]
    assert world.cloud.services["cmp-01"]["disabled"] and mt.is_ours(world.cloud.services["cmp-01"]["reason"])
    assert result["hosts"]["cmp-02"]["state"] == "pending"  # the roll stopped
    assert world.hosts.log("cmp-01") == []  # never stopped or rebooted


def test_hung_migration_is_aborted_after_its_timeout(world):
    world.cloud.hang.add("t1")
    result = world.start(migration_timeout=30).run()
    assert "not within 30 s" in result["hosts"]["cmp-01"]["error"] and "aborted" in result["hosts"]["cmp-01"]["error"]
    assert ("abort_migration", "t1", 1) in world.cloud.calls


def test_deadline_passed_stops_the_roll_and_kills_no_session(world):
    roll = world.start(deadline="+30s")
    world.clock.sleep(60)
    result = roll.run()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "failed" and host["step"] == "migrate"
    assert "deadline passed with 2 desktop(s) still on the host: t1, t2" in host["error"]
    assert world.hosts.log("cmp-01") == [] and all(c[0] != "live_migrate" for c in world.cloud.calls)
    assert world.cloud.services["cmp-01"]["disabled"]


def test_forced_roll_goes_on_after_the_deadline(world):
    roll = world.start(deadline="+30s", force=True)
    world.clock.sleep(60)
    result = roll.run()
    assert result["state"] == "done"
    assert journal.steps(world.db, result["id"], "cmp-01")["migrate"]["detail"]["forced"] == ["t1", "t2"]


def test_resume_after_a_crash_runs_the_step_in_progress_and_repeats_nothing(world, tmp_path):
    roll = world.start()
    rid = roll.roll_id
    # run until the reboot was requested, then "crash" (the process dies inside wait_minion)
    original = world.hosts.ping
    calls = {"n": 0}

    def dies_after_reboot(host):
        if any(e[0].endswith("/wait_minion") for e in world.events):
            raise SystemExit("master restarted")
        calls["n"] += 1
        return original(host)

    world.hosts.ping = dies_after_reboot
    with pytest.raises(SystemExit):
        roll.run()
    world.hosts.ping = original
    boots_before = world.hosts._host("cmp-01")[1]["boots"]
    assert journal.steps(world.db, rid, "cmp-01")["wait_minion"]["state"] == "running"
    # a new process: new store connection, new engine
    db2 = journal.connect(world.path)
    try:
        result = world.roll(rid, db2).run()
    finally:
        db2.close()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "done"
    assert host["steps"]["wait_minion"]["attempts"] == 2
    assert all(s["attempts"] == 1 for n, s in host["steps"].items() if n != "wait_minion")
    assert world.hosts._host("cmp-01")[1]["boots"] == boots_before == 1  # rebooted once
    assert [c for c in world.cloud.calls if c[0] == "live_migrate"] == [("live_migrate", "t1"), ("live_migrate", "t2")]


def test_journal_never_begins_a_finished_step(world):
    rid = world.start().roll_id
    journal.begin(world.db, rid, "cmp-01", "precheck", 1.0)
    journal.finish(world.db, rid, "cmp-01", "precheck", 2.0)
    with pytest.raises(journal.JournalError, match="already done"):
        journal.begin(world.db, rid, "cmp-01", "precheck", 3.0)
    assert journal.next_step(world.db, rid, "cmp-01", mt.STEPS) == ("disable", {})


def test_one_roll_at_a_time(world):
    world.start()
    with pytest.raises(journal.JournalError, match="not finished"):
        world.start()


def test_abort_stops_between_steps(world):
    roll = world.start(hosts=["cmp-01", "cmp-02"])
    journal.set_roll_state(world.db, roll.roll_id, "aborted", 0)
    result = roll.run()
    assert result["state"] == "aborted" and world.cloud.calls == []


def test_abort_during_a_migration_aborts_it(world):
    world.cloud.hang.add("t1")
    roll = world.start(migration_timeout=600)
    original = world.clock.sleep

    def ops_abort(seconds):
        journal.set_roll_state(world.db, roll.roll_id, "aborted", 0)
        original(seconds)

    world.clock.sleep = ops_abort
    result = roll.run()
    assert result["state"] == "aborted" and ("abort_migration", "t1", 1) in world.cloud.calls
    assert result["hosts"]["cmp-01"]["steps"]["migrate"]["error"] == "aborted by ops"


def test_failure_threshold_lets_later_hosts_roll(world):
    world.hosts.fail["cmp-01"] = "verify"
    result = world.start(hosts=["cmp-01", "cmp-02"], max_failures=1).run()
    assert result["hosts"]["cmp-01"]["state"] == "failed" and "verify" in result["hosts"]["cmp-01"]["error"]
    assert result["hosts"]["cmp-02"]["state"] == "done" and result["state"] == "failed"
    assert world.cloud.services["cmp-01"]["disabled"]  # left disabled for ops


def test_a_reboot_in_progress_at_a_crash_is_not_sent_again(world):
    roll = world.start()
    original = world.hosts.reboot

    def reboot_then_die(host):
        original(host)
        raise SystemExit("master died right after sending the reboot")

    world.hosts.reboot = reboot_then_die
    with pytest.raises(SystemExit):
        roll.run()
    world.hosts.reboot = original
    assert journal.steps(world.db, roll.roll_id, "cmp-01")["reboot"]["state"] == "running"
    db2 = journal.connect(world.path)
    try:
        result = world.roll(roll.roll_id, db2).run()
    finally:
        db2.close()
    assert result["state"] == "done" and result["hosts"]["cmp-01"]["steps"]["reboot"]["attempts"] == 2
    assert world.hosts.log("cmp-01").count("reboot") == 1


# ---- host actions through Salt: the exact calls on the host's minion ------------------


class Minion:
    """Stands in for LocalClient on one host: records (host, fun, args) and answers from a table."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, host, fun, args, timeout, kwargs=None):
        self.calls.append((host, fun, list(args)) + ((kwargs,) if kwargs else ()))
        answer = self.answers.get(fun)
        return answer(args) if callable(answer) else answer


def test_salt_hosts_stop_and_start_in_order():
    minion = Minion({"cmd.run_all": {"retcode": 0, "stdout": "", "stderr": ""}})
    hosts = maintenance_hosts.SaltHosts(minion)
    hosts.stop("cmp-01")
    hosts.start("cmp-01")
    assert [c[2][0] for c in minion.calls] == [
        "systemctl stop libvirt-guests.service",
        "systemctl stop libvirtd.service",
        "systemctl stop openvswitch-switch.service",
        "systemctl start openvswitch-switch.service",
        "systemctl start libvirtd.service",
    ]
    assert {c[0] for c in minion.calls} == {"cmp-01"}


def test_salt_hosts_stop_failure_names_the_command():
    hosts = maintenance_hosts.SaltHosts(Minion({"cmd.run_all": {"retcode": 1, "stderr": "unit not found"}}))
    with pytest.raises(RuntimeError, match="libvirt-guests.*unit not found"):
        hosts.stop("cmp-01")


def test_salt_hosts_boot_id_and_ping():
    hosts = maintenance_hosts.SaltHosts(Minion({"test.ping": True, "file.read": "b0a7\n"}))
    assert hosts.ping("cmp-01") and hosts.boot_id("cmp-01") == "b0a7"
    silent = maintenance_hosts.SaltHosts(Minion({}))
    assert not silent.ping("cmp-01") and silent.boot_id("cmp-01") is None


@pytest.mark.parametrize(
    "ovs, dnsmasq, memory, bad",
    [
        ({"a": {"result": True}}, {"ok": True}, {"verdict": "warning"}, []),
        ({"a": {"result": True}, "b": {"result": False}}, {"ok": True}, {"verdict": "ok"}, ["ovs_ports"]),
        ({"a": {"result": True}}, {"ok": False}, {"verdict": "ok"}, ["dnsmasq"]),
        ({"a": {"result": True}}, {"ok": True}, {"verdict": "critical"}, ["memory"]),
        (["ERROR: no such sls"], None, "'host_overcommit.commit_ratio' is not available.", ["ovs_ports", "dnsmasq", "memory"]),
    ],
)
def test_salt_hosts_verify(ovs, dnsmasq, memory, bad):
    minion = Minion({"state.apply": ovs, "host_dnsmasq.audit": dnsmasq, "host_overcommit.commit_ratio": memory})
    result = maintenance_hosts.SaltHosts(minion).verify("cmp-01")
    assert [n for n, c in result["checks"].items() if not c["ok"]] == bad and result["ok"] is (not bad)
    assert ("cmp-01", "state.apply", ["host.ovs_ports"]) in minion.calls


def test_salt_hosts_verify_passes_each_checks_keyword_arguments():
    minion = Minion({"state.apply": {"a": {"result": True}}, "host_dnsmasq.audit": {"ok": True},
                     "host_overcommit.commit_ratio": {"verdict": "ok"}})
    hosts = maintenance_hosts.SaltHosts(minion, {"dnsmasq": {"pidfiles": ["/run/dnsmasq-deskfleet/br-int.pid"]}})
    assert hosts.verify("cmp-01")["ok"]
    assert ("cmp-01", "host_dnsmasq.audit", [], {"pidfiles": ["/run/dnsmasq-deskfleet/br-int.pid"]}) in minion.calls
    with pytest.raises(ValueError, match="unknown check.*dnsmaq"):
        maintenance_hosts.SaltHosts(minion, {"dnsmaq": {}})


def test_a_desktop_whose_user_logged_off_is_recycled_not_moved(world):
    reports = {"t1": {"logged_on": False, "fresh": True}, "t2": {"logged_on": False, "fresh": False}}
    world.cloud.servers["pet"] = dict(desk("pet", "cmp-01"), metadata={})  # not a pool desktop: never deleted
    roll = world.start()
    roll.sessions = lambda server: reports.get(server["id"], {"logged_on": False, "fresh": True})
    result = roll.run()
    assert result["state"] == "done" and result["hosts"]["cmp-01"]["recycled"] == ["t1"]
    assert ("delete", "t1") in world.cloud.calls and "t1" not in world.cloud.servers
    moved = [c[1] for c in world.cloud.calls if c[0] == "live_migrate"]
    assert moved == ["t2", "pet"]  # a stale report is not trusted; a pet VM always moves


# ---- wait-for-logoff -----------------------------------------------------------------


def timed(world, roll, reports):
    """Record when each user was told and when each migration started; sessions from ``reports(sid, now)``."""
    told, started = [], []
    roll.notify = lambda server, text: told.append((server["id"], world.clock.now()))
    roll.sessions = lambda server: reports(server["id"], world.clock.now())
    live_migrate = world.cloud.live_migrate

    def recorded(sid):
        started.append((sid, world.clock.now()))
        live_migrate(sid)

    world.cloud.live_migrate = recorded
    return told, started


def test_wait_for_logoff_recycles_a_desktop_whose_user_logs_off_before_the_policy_ends(world):
    roll = world.start(deadline="+2h", wait_logoff=1800)  # wait until T-30min
    # t1's user logs off 20 minutes in; t2's user stays on
    told, started = timed(world, roll, lambda sid, now: {
        "fresh": True, "logged_on": not (sid == "t1" and now >= T0 + datetime.timedelta(minutes=20))})
    result = roll.run()
    host = result["hosts"]["cmp-01"]
    assert result["state"] == "done" and host["recycled"] == ["t1"]
    assert ("delete", "t1") in world.cloud.calls and [sid for sid, _ in started] == ["t2"]
    # t2 moved only once the wait was over (T-30min = T0 + 90 min), not at once
    assert started[0][1] >= T0 + datetime.timedelta(minutes=90)
    # both users told at once, t2 again 60 minutes before the deadline, while it waited
    assert [sid for sid, at in told if at == T0] == ["t1", "t2"]
    assert ("t2", T0 + datetime.timedelta(minutes=60)) in [(sid, at.replace(second=0, microsecond=0)) for sid, at in told]


def test_wait_for_logoff_never_holds_a_pet_or_a_desktop_without_a_fresh_report(world):
    world.cloud.servers["pet"] = dict(desk("pet", "cmp-01"), metadata={})
    roll = world.start(deadline="+2h", wait_logoff=1800)
    told, started = timed(world, roll, lambda sid, now: {"fresh": sid != "t2", "logged_on": True})
    assert roll.run()["state"] == "done"
    at = dict(started)
    assert at["t2"] < T0 + datetime.timedelta(minutes=5) and at["pet"] < T0 + datetime.timedelta(minutes=5)
    assert at["t1"] >= T0 + datetime.timedelta(minutes=90)  # the only one worth waiting for


def test_without_the_policy_desktops_move_at_once(world):
    roll = world.start(deadline="+2h")
    _, started = timed(world, roll, lambda sid, now: {"fresh": True, "logged_on": True})
    assert roll.run()["state"] == "done"
    assert all(at < T0 + datetime.timedelta(minutes=5) for _, at in started) and len(started) == 2


@pytest.mark.parametrize("bad", [-1, True, "30m", 1.5])
def test_wait_logoff_must_be_whole_seconds(bad):
    with pytest.raises(mt.RequestError, match="wait_logoff"):
        mt.validate_request({"hosts": ["cmp-01"], "reason": "k", "wait_logoff": bad}, T0)


def test_a_user_logging_off_mid_pass_is_recycled_next_pass_never_moved(world):
    # t1's user logs off right after the roll's first look at t1 (seen here as: every later look says so)
    roll = world.start(deadline="+2h", wait_logoff=1800)
    looks = []

    def reports(sid, _now):
        looks.append(sid)
        return {"fresh": True, "logged_on": not (sid == "t1" and looks.count("t1") > 1)}

    _, started = timed(world, roll, reports)
    result = roll.run()
    assert result["state"] == "done" and result["hosts"]["cmp-01"]["recycled"] == ["t1"], result
    assert [sid for sid, _ in started] == ["t2"]
