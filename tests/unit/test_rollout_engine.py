"""
The rollout engine without Salt (``_utils/rollout_engine.py`` over ``rollout_store.py`` and
``rollout_lease.py``): the state machine over the store, the lease, and resuming after a
restart, driven through a fake fleet (publish / job cache / find_job).
"""

import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

import deskfleet_store
import rollout_engine
import rollout_lease
import rollout_store
import software_catalog
import tc_assets
from tests.unit.test_software_catalog import linux_only

NOW = 1_750_000_000.0


def test_outcome_of_returns():
    assert rollout_engine.outcome({"result": True, "changes": {"installed": {}}, "installed": "1.0", "comment": "ok"}) == (
        "succeeded", "1.0", True, "ok")
    assert rollout_engine.outcome({"result": True, "changes": {}, "installed": "1.0", "comment": "already"})[:3] == (
        "succeeded", "1.0", False)
    assert rollout_engine.outcome({"result": False, "comment": "sha256 mismatch"})[0] == "failed"
    assert rollout_engine.outcome({"result": None, "comment": "would install"})[0] == "failed"
    state, _, _, why = rollout_engine.outcome("'software.install' is not available.")
    assert state == "failed" and "not available" in why


# ---- the engine over a fake fleet --------------------------------------------------------


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.01)


class FakeFleet:
    """
    Minions that run ``software.install`` idempotently by version. Per minion:
    ``fail`` (installer fails), ``offline`` (never gets jobs, never answers),
    ``delay`` seconds before the return lands, ``lose`` (the next return is lost).
    """

    def __init__(self, clock, minions):
        self.clock = clock
        self.keys = set(minions)
        self.installed = dict.fromkeys(minions)
        self.installs = dict.fromkeys(minions, 0)
        self.fail, self.offline, self.lose = set(), set(), set()
        self.delay = {}
        self.jobs = {}  # jid -> {minion: (ready_at, ret, lost)}
        self.cache = {}  # jid -> {minion: ret}
        self.published = []
        self.counter = 0
        self.publish_error = None

    def new_jid(self):
        self.counter += 1
        return f"2025{self.counter:016d}"

    def publish(self, jid, minions, args, kwargs):
        if self.publish_error:
            raise rollout_engine.DispatchError(self.publish_error)
        self.published.append((jid, list(minions), list(args), dict(kwargs)))
        for minion in minions:
            if minion in self.offline or minion not in self.keys:
                continue
            ret = self._install(minion, kwargs["version"])
            lost = minion in self.lose
            self.lose.discard(minion)
            self.jobs.setdefault(jid, {})[minion] = (self.clock() + self.delay.get(minion, 0), ret, lost)
        return [m for m in minions if m in self.keys]

    def _install(self, minion, version):
        if minion in self.fail:
            return {"result": False, "changes": {}, "comment": "the installer exited with 3", "retcode": 3}
        if self.installed[minion] == version:
            return {"result": True, "changes": {}, "installed": version, "comment": "already installed"}
        old, self.installed[minion] = self.installed[minion], version
        self.installs[minion] += 1
        return {"result": True, "changes": {"installed": {"old": old, "new": version}}, "installed": version,
                "comment": "installed"}

    def _deliver(self):
        for jid, jobs in self.jobs.items():
            for minion, (ready, ret, lost) in list(jobs.items()):
                if ready <= self.clock():
                    del jobs[minion]
                    if not lost:
                        self.cache.setdefault(jid, {})[minion] = ret

    def returns(self, jid):
        self._deliver()
        return dict(self.cache.get(jid, {}))

    def find_job(self, jid, minions):
        self._deliver()
        return {m: m in self.jobs.get(jid, {}) for m in minions if m not in self.offline}


MINIONS = ["desk-1", "desk-2", "desk-3"]
ENTRY = software_catalog.validate_entry("deskfleet-demo", linux_only())


@pytest.fixture
def db(store_db):
    return store_db


@pytest.fixture
def conn(db):
    conn = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
    yield conn
    conn.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fleet(clock):
    return FakeFleet(clock, MINIONS)


def make(conn, clock, minions=MINIONS, batch=1, max_fail=0, start=None, end=None, sha256=None):
    return rollout_store.create(
        conn, software="deskfleet-demo", version="1.0.0", entry=ENTRY, target="desk-*", tgt_type="glob",
        minions=minions, batch=batch, max_fail=max_fail, start=clock() if start is None else start,
        end=clock() + 3600 if end is None else end, now=clock(), sha256=sha256,
    )


def engine(conn, fleet, clock, **kwargs):
    kwargs.setdefault("wait", 10)
    kwargs.setdefault("grace", 5)
    kwargs.setdefault("job_timeout", 120)
    return rollout_engine.Engine(conn, fleet, clock=clock, sleep=clock.sleep, **kwargs)


def states(conn, rollout_id):
    return {m: v["state"] for m, v in rollout_store.detail(conn, rollout_id)["minions"].items()}


def test_store_migrates_once_and_is_shared(db):
    first = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
    second = deskfleet_store.connect(str(db), {**rollout_store.MIGRATIONS, **tc_assets.MIGRATIONS})
    version = second.execute("SELECT version FROM schema_version WHERE component = 'rollouts'").fetchone()[0]
    assert version == len(rollout_store.MIGRATIONS["rollouts"])
    first.close()
    second.close()


def test_schedule_stores_a_frozen_sorted_minion_list(conn, clock):
    rid = make(conn, clock, minions=["desk-3", "desk-1", "desk-2", "desk-1"], batch="50%", max_fail="34%")
    got = rollout_store.detail(conn, rid)
    assert list(got["minions"]) == ["desk-1", "desk-2", "desk-3"]
    assert (got["state"], got["batch_size"], got["fail_limit"], got["total"]) == ("scheduled", 2, 1, 3)
    assert got["counts"]["pending"] == 3 and got["batches"] == []
    assert rollout_store.listing(conn)[0]["id"] == rid


def test_one_batch_per_tick_until_completed(conn, fleet, clock):
    rid = make(conn, clock, batch=1)
    eng = engine(conn, fleet, clock)
    for n, minion in enumerate(MINIONS, 1):
        (report,) = eng.tick()
        assert report["dispatched"] == [minion]
        assert report["collected"] == {minion: "succeeded"}
        assert len(fleet.published) == n
    assert report["state"] == "completed"
    assert eng.tick() == []  # nothing due any more
    assert fleet.installs == dict.fromkeys(MINIONS, 1)
    got = rollout_store.detail(conn, rid)
    assert [b["minions"] for b in got["batches"]] == [[m] for m in MINIONS]
    assert [b["jid"] for b in got["batches"]] == [p[0] for p in fleet.published]
    assert got["minions"]["desk-2"]["batch"] == 2 and got["minions"]["desk-2"]["changed"] is True
    # the pinned version (and only that) goes to the minions
    assert fleet.published[0][2:] == (["deskfleet-demo"], {"version": "1.0.0", "not_after": rollout_store.get(conn, rid)["end_at"]})


def test_percentage_batches(conn, clock):
    minions = [f"desk-{i:02d}" for i in range(8)]
    fleet = FakeFleet(clock, minions)
    make(conn, clock, minions=minions, batch="25%")
    eng = engine(conn, fleet, clock)
    sizes = [len(eng.tick()[0]["dispatched"]) for _ in range(4)]
    assert sizes == [2, 2, 2, 2]


def test_failures_past_max_fail_halt_and_skip_the_rest(conn, fleet, clock):
    fleet.fail.update(MINIONS)
    rid = make(conn, clock, batch=1, max_fail=1)
    eng = engine(conn, fleet, clock)
    (first,) = eng.tick()
    assert first["state"] == "running" and first["collected"] == {"desk-1": "failed"}
    (second,) = eng.tick()
    assert second["state"] == "halted"
    assert "2 failed, over max_fail 1" in second["reason"]
    assert states(conn, rid) == {"desk-1": "failed", "desk-2": "failed", "desk-3": "skipped"}
    assert rollout_store.detail(conn, rid)["minions"]["desk-3"]["detail"] == "rollout halted: too many failures"
    assert len(fleet.published) == 2
    assert eng.tick() == []


def test_max_fail_zero_halts_at_the_first_failure_of_a_batch(conn, fleet, clock):
    fleet.fail.add("desk-2")
    rid = make(conn, clock, batch=2, max_fail=0)
    (report,) = engine(conn, fleet, clock).tick()
    assert report["state"] == "halted"
    assert states(conn, rid) == {"desk-1": "succeeded", "desk-2": "failed", "desk-3": "skipped"}


def test_failures_within_max_fail_complete(conn, fleet, clock):
    fleet.fail.add("desk-1")
    make(conn, clock, batch=3, max_fail="34%")
    (report,) = engine(conn, fleet, clock).tick()
    assert report["state"] == "completed"
    assert report["counts"]["failed"] == 1 and report["counts"]["succeeded"] == 2


def test_nothing_happens_before_the_window(conn, fleet, clock):
    rid = make(conn, clock, start=clock() + 600, end=clock() + 1200)
    eng = engine(conn, fleet, clock)
    assert eng.tick() == []
    clock.now += 600
    (report,) = eng.tick()
    assert report["dispatched"] == ["desk-1"]
    assert rollout_store.summary(conn, rid)["state"] == "running"


def test_window_end_expires_what_has_not_started(conn, fleet, clock):
    rid = make(conn, clock, end=clock() + 100)
    eng = engine(conn, fleet, clock)
    eng.tick()
    clock.now += 100
    (report,) = eng.tick()
    assert report["state"] == "expired" and not report["dispatched"]
    assert states(conn, rid) == {"desk-1": "succeeded", "desk-2": "skipped", "desk-3": "skipped"}
    assert rollout_store.detail(conn, rid)["minions"]["desk-2"]["detail"] == "maintenance window ended"


def test_a_job_out_at_the_window_end_closes_the_rollout_and_its_return_is_late(conn, fleet, clock):
    fleet.delay["desk-1"] = 500  # the install returns long after the window
    rid = make(conn, clock, end=clock() + 100)
    eng = engine(conn, fleet, clock, job_timeout=3600)
    (first,) = eng.tick()
    assert first["dispatched"] == ["desk-1"] and first["state"] == "running"
    assert fleet.published[0][3]["not_after"] == rollout_store.get(conn, rid)["end_at"]  # the window end goes along
    clock.now += 100
    (closed,) = eng.tick()
    assert closed["state"] == "expired" and not closed["dispatched"], closed
    got = rollout_store.summary(conn, rid)
    assert got["left"] == ["desk-1"] and "1 with no return: desk-1" in got["reason"]
    assert states(conn, rid) == {"desk-1": "running", "desk-2": "skipped", "desk-3": "skipped"}
    clock.now += 400
    (late,) = eng.tick()  # still due: a job is out
    assert late["collected"] == {"desk-1": "succeeded"} and late["state"] == "expired"
    got = rollout_store.detail(conn, rid)
    assert got["late"] == ["desk-1"] and got["minions"]["desk-1"]["late"] is True and "left" not in got
    assert eng.tick() == []


def test_a_minion_refusing_a_job_past_its_window_is_skipped_not_failed():
    ret = {"result": False, "window_closed": True, "changes": {}, "comment": "window closed at 2025-06-01T04:00:00Z"}
    assert rollout_engine.outcome(ret) == ("skipped", None, False, "window closed at 2025-06-01T04:00:00Z")


def test_slow_returns_are_collected_by_a_later_tick(conn, fleet, clock):
    fleet.delay["desk-1"] = 30
    rid = make(conn, clock)
    eng = engine(conn, fleet, clock, wait=10, grace=60)
    (first,) = eng.tick()
    assert first["dispatched"] == ["desk-1"] and first["collected"] == {}
    assert states(conn, rid)["desk-1"] == "running"
    (waiting,) = eng.tick()  # still out: no new batch
    assert waiting["dispatched"] == [] and waiting["comment"] == "waiting for the running batch"
    clock.now += 30
    (collected,) = eng.tick()
    assert collected["collected"]["desk-1"] == "succeeded" and collected["dispatched"] == ["desk-2"]
    assert len(fleet.published) == 2


def test_resume_after_restart_reads_the_job_cache_and_does_not_rerun(db, fleet, clock):
    conn = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
    rid = make(conn, clock)
    fleet.delay["desk-1"] = 5
    (first,) = engine(conn, fleet, clock, wait=0).tick()  # dispatched; returns after the tick stopped waiting
    assert first["dispatched"] == ["desk-1"] and first["collected"] == {}
    conn.close()
    clock.now += 60  # "master restart"
    conn = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
    (report,) = engine(conn, fleet, clock, wait=10).tick()
    assert report["collected"]["desk-1"] == "succeeded"
    assert report["republished"] == [] and report["dispatched"] == ["desk-2"]
    assert fleet.installs["desk-1"] == 1
    assert rollout_store.detail(conn, rid)["minions"]["desk-1"]["attempts"] == 1
    conn.close()


def test_a_lost_return_is_republished_and_install_is_idempotent(conn, fleet, clock):
    fleet.lose.add("desk-1")
    rid = make(conn, clock)
    eng = engine(conn, fleet, clock, wait=10, grace=30)
    (first,) = eng.tick()
    assert first["collected"] == {}  # the return never came
    (early,) = eng.tick()  # inside the grace period: not asked after yet
    assert early["republished"] == [] and early["dispatched"] == []
    clock.now += 30
    (second,) = eng.tick()
    assert second["republished"] == ["desk-1"]
    assert second["collected"]["desk-1"] == "succeeded"
    minion = rollout_store.detail(conn, rid)["minions"]["desk-1"]
    assert minion["attempts"] == 2 and minion["changed"] is False  # the re-run changed nothing
    assert fleet.installs["desk-1"] == 1
    assert [b["retry"] for b in rollout_store.detail(conn, rid)["batches"]] == [False, True]


def test_a_job_still_running_is_left_alone(conn, fleet, clock):
    fleet.delay["desk-1"] = 1000
    rid = make(conn, clock)
    eng = engine(conn, fleet, clock, wait=5, grace=10, job_timeout=2000)
    eng.tick()
    clock.now += 500
    (report,) = eng.tick()
    assert report["republished"] == [] and states(conn, rid)["desk-1"] == "running"
    assert len(fleet.published) == 1


def test_publish_failure_is_recovered_by_the_next_tick(conn, fleet, clock):
    rid = make(conn, clock)
    fleet.publish_error = "The salt master could not be contacted. Is master running?"
    eng = engine(conn, fleet, clock, wait=1, grace=30)
    (report,) = eng.tick()
    assert "publish of" in report["error"]
    got = rollout_store.detail(conn, rid)
    assert got["minions"]["desk-1"]["state"] == "running"  # the jid was stored first
    assert "could not be contacted" in got["batches"][0]["error"]
    fleet.publish_error = None
    clock.now += 30
    (again,) = eng.tick()
    assert again["republished"] == ["desk-1"] and again["collected"]["desk-1"] == "succeeded"
    assert fleet.installs["desk-1"] == 1


def test_lost_jobs_fail_after_max_attempts(conn, fleet, clock):
    rid = make(conn, clock, max_fail=5)
    eng = engine(conn, fleet, clock, wait=1, grace=10, max_attempts=2)
    fleet.lose.add("desk-1")
    eng.tick()
    clock.now += 10
    fleet.lose.add("desk-1")
    eng.tick()  # republished (attempt 2), lost again
    clock.now += 10
    (report,) = eng.tick()
    assert report["collected"]["desk-1"] == "failed"
    assert rollout_store.detail(conn, rid)["minions"]["desk-1"]["detail"] == "no return after 2 attempts"


def test_an_offline_minion_fails_after_job_timeout(conn, fleet, clock):
    fleet.offline.add("desk-1")
    rid = make(conn, clock, max_fail=1)
    eng = engine(conn, fleet, clock, wait=1, grace=10, job_timeout=100)
    eng.tick()
    clock.now += 50
    (waiting,) = eng.tick()
    assert states(conn, rid)["desk-1"] == "running" and waiting["dispatched"] == []
    clock.now += 60
    (report,) = eng.tick()
    assert report["collected"]["desk-1"] == "failed" and report["dispatched"] == ["desk-2"]
    assert "no answer from the minion" in rollout_store.detail(conn, rid)["minions"]["desk-1"]["detail"]


def test_a_minion_whose_key_went_away_is_skipped(conn, fleet, clock):
    fleet.keys.discard("desk-1")
    rid = make(conn, clock, batch=2)
    (report,) = engine(conn, fleet, clock).tick()
    assert report["collected"] == {"desk-1": "skipped", "desk-2": "succeeded"}
    assert rollout_store.detail(conn, rid)["minions"]["desk-1"]["detail"] == "no accepted key when the batch ran"


def test_cancel_skips_pending_and_still_collects_the_running_batch(conn, fleet, clock):
    fleet.delay["desk-1"] = 20
    rid = make(conn, clock)
    eng = engine(conn, fleet, clock, wait=1, grace=60)
    eng.tick()
    got = rollout_store.cancel(conn, rid, clock(), who="ops")
    assert got["state"] == "cancelled" and got["reason"] == "cancelled by ops"
    assert states(conn, rid) == {"desk-1": "running", "desk-2": "skipped", "desk-3": "skipped"}
    clock.now += 20
    (report,) = eng.tick()  # due only to collect
    assert report["collected"] == {"desk-1": "succeeded"} and report["dispatched"] == []
    assert report["state"] == "cancelled"
    assert eng.tick() == []
    with pytest.raises(ValueError, match="already cancelled"):
        rollout_store.cancel(conn, rid, clock())
    with pytest.raises(ValueError, match="unknown rollout"):
        rollout_store.cancel(conn, "nope", clock())


def test_a_lost_job_of_a_cancelled_rollout_is_not_republished(conn, fleet, clock):
    fleet.lose.add("desk-1")
    rid = make(conn, clock)
    eng = engine(conn, fleet, clock, wait=1, grace=10)
    eng.tick()
    rollout_store.cancel(conn, rid, clock())
    clock.now += 10
    (report,) = eng.tick()
    assert report["republished"] == [] and report["collected"] == {"desk-1": "failed"}
    assert "the rollout is cancelled" in rollout_store.detail(conn, rid)["minions"]["desk-1"]["detail"]


def test_lease_keeps_a_second_tick_out(conn, db, fleet, clock):
    rid = make(conn, clock)
    assert rollout_lease.acquire(conn, rid, "other-tick", clock(), 300)
    (report,) = engine(conn, fleet, clock).tick()
    assert report["action"] == "skipped" and "other-tick" in report["comment"]
    assert fleet.published == []
    assert rollout_store.summary(conn, rid, clock())["leased_by"] == "other-tick"
    clock.now += 301  # the other tick died: its lease runs out
    (taken,) = engine(conn, fleet, clock).tick()
    assert taken["dispatched"] == ["desk-1"]
    row = conn.execute("SELECT lease_owner FROM rollouts WHERE id = ?", (rid,)).fetchone()
    assert row[0] is None  # released


def test_a_lease_of_a_dead_tick_on_this_host_is_taken_over(conn, fleet, clock):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = f"{socket.gethostname()}:{proc.stdout.strip()}:0000"
    alive = rollout_lease.owner_name()  # this process: alive
    elsewhere = "other-host:1:0000"
    rid = make(conn, clock)
    for holder, taken in ((alive, False), (elsewhere, False), (dead, True)):
        conn.execute("UPDATE rollouts SET lease_owner = ?, lease_until = ? WHERE id = ?", (holder, clock() + 300, rid))
        assert rollout_lease.acquire(conn, rid, "me", clock(), 60) is taken, holder


def test_two_ticks_at_once_on_separate_connections(db, clock):
    """A real race: tick A blocks inside publish while tick B runs on its own connection."""
    setup = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
    make(setup, clock)
    setup.close()
    inside, release = threading.Event(), threading.Event()

    class BlockingFleet(FakeFleet):
        def publish(self, jid, minions, args, kwargs):
            inside.set()
            release.wait(30)
            return super().publish(jid, minions, args, kwargs)

    fleet = BlockingFleet(clock, MINIONS)
    results = {}

    def run(name):
        conn = deskfleet_store.connect(str(db), rollout_store.MIGRATIONS)
        try:
            results[name] = rollout_engine.Engine(conn, fleet, clock=clock, sleep=lambda s: None, wait=1).tick()
        finally:
            conn.close()

    first = threading.Thread(target=run, args=("a",))
    first.start()
    assert inside.wait(30)
    run("b")
    release.set()
    first.join(30)
    assert results["b"][0]["action"] == "skipped"
    assert results["a"][0]["dispatched"] == ["desk-1"]
    assert len(fleet.published) == 1


def test_a_tick_that_lost_its_lease_stops(conn, fleet, clock):
    rid = make(conn, clock)

    class Thief(FakeFleet):
        def publish(self, jid, minions, args, kwargs):
            # meanwhile our lease expired and another tick took the rollout
            conn.execute(
                "UPDATE rollouts SET lease_owner = 'thief', lease_until = ? WHERE id = ?", (clock() + 300, rid)
            )
            return super().publish(jid, minions, args, kwargs)

    thief = Thief(clock, MINIONS)
    thief.delay["desk-1"] = 5
    (report,) = engine(conn, thief, clock, wait=10).tick()
    assert report["action"] == "aborted" and "thief" in report["comment"]
    assert conn.execute("SELECT lease_owner FROM rollouts WHERE id = ?", (rid,)).fetchone()[0] == "thief"


def test_a_failing_rollout_does_not_stop_the_others(conn, fleet, clock, caplog, monkeypatch):
    # keep the record away from the root logger (Salt's deferred start-up handler lives there)
    monkeypatch.setattr(rollout_engine.log, "propagate", False)
    monkeypatch.setattr(rollout_engine.log, "handlers", [caplog.handler])
    broken = make(conn, clock)
    fine = make(conn, clock)

    class Flaky(FakeFleet):
        def publish(self, jid, minions, args, kwargs):
            if not self.published and not getattr(self, "raised", False):
                self.raised = True
                raise OSError("job cache disk full")
            return super().publish(jid, minions, args, kwargs)

    flaky = Flaky(clock, MINIONS)
    reports = {r["id"]: r for r in engine(conn, flaky, clock).tick()}
    assert reports[broken]["action"] == "error" and "job cache disk full" in reports[broken]["comment"]
    assert reports[fine]["action"] == "dispatched"
    assert any(f"tick of {broken} failed" in r.getMessage() for r in caplog.records)
    assert conn.execute("SELECT COUNT(*) FROM rollouts WHERE lease_owner IS NOT NULL").fetchone()[0] == 0


def test_store_refuses_unknown_minion_states(conn, clock):
    rid = make(conn, clock)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO rollout_minions (rollout_id, minion, position, state) VALUES (?, 'desk-9', 9, 'x')",
                     (rid,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE rollouts SET state = 'paused' WHERE id = ?", (rid,))
