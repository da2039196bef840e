"""
Software rollouts with real daemons: a vm master started from the shipped
``salt_vm/master.d`` (its schedule taken out so the test drives ``software.tick``
itself), three Linux minions, and the catalog's demo installer served by the vm
master's file root (``salt://deskfleet-demo/deskfleet-demo-installer.sh``). It
really installs: each minion gets a version file and one line in an install log
per real install, under its own ``deskfleet_lab_root``.

The master's pillar tree gets a top file (``'*': [software, software_test]``)
and a few test-only entries (a gated, a failing and a bad-hash package) next to
the shipped ``pillar/vm/software.sls``.
"""

import hashlib
import os
import pathlib
import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import salt.utils.jid
from pytestshellutils.exceptions import FactoryTimeout

from harness import saltconf, wait
from tests.support.bus import Bus
from tests.support.minions import running as minions_running

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
INSTALLER = CHECKOUT / "salt_vm" / "fileroot" / "deskfleet-demo" / "deskfleet-demo-installer.sh"
MINIONS = ("desk-sw-1", "desk-sw-2", "desk-sw-3")
DEMO_LOG = "var/log/deskfleet-demo-install.log"
GATED_LOG = "var/log/gated-install.log"
FACTORIES = {}  # minion id -> its salt-factories daemon, for pausing one

TOP = """
base:
  '*':
    - software
    - software_test
"""

TEST_CATALOG = """
{%- set root = grains.get('deskfleet_lab_root', '') %}
{%- set common = '--log ' ~ root ~ '/var/log/' %}
software:
  catalog:
    deskfleet-gated:
      version: "1.0.0"
      linux:
        source: salt://deskfleet-demo/deskfleet-demo-installer.sh
        sha256: @SHA@
        args: --version-file {{ root }}/opt/gated/VERSION {{ common }}gated-install.log --wait-for {{ root }}/gate
        detect:
          version_file: {{ root }}/opt/gated/VERSION
    deskfleet-fail:
      version: "1.0.0"
      linux:
        source: salt://deskfleet-demo/deskfleet-demo-installer.sh
        sha256: @SHA@
        args: --version-file {{ root }}/opt/fail/VERSION {{ common }}fail-install.log --fail 3
        detect:
          version_file: {{ root }}/opt/fail/VERSION
    deskfleet-badhash:
      version: "1.0.0"
      linux:
        source: salt://deskfleet-demo/deskfleet-demo-installer.sh
        sha256: "@BAD@"
        args: --version-file {{ root }}/opt/badhash/VERSION {{ common }}badhash-install.log
        detect:
          version_file: {{ root }}/opt/badhash/VERSION
"""


def _real_path(config, key):
    path = pathlib.Path(config[key])
    return path if path.is_absolute() else pathlib.Path(config["root_dir"]) / path


@pytest.fixture(scope="module")
def sw_master(salt_factories, tmp_path_factory):
    overrides = saltconf.lab_master_config("vm", tmp_path_factory.mktemp("etc-sw"))
    assert overrides["schedule"]["deskfleet_software_tick"]["function"] == "software.tick"
    overrides.pop("schedule")  # the test calls software.tick itself, between master restarts
    overrides["deskfleet"]["vm"]["rollouts"].update(grace=2, find_job_timeout=5)
    # Salt 3008 drops a publish peer that misses ZMTP heartbeats for 30 s: a minion paused for longer
    # would lose its publication instead of getting it late, which is the case the late-job test needs
    overrides.update(zmq_heartbeat_ivl=0, zmq_heartbeat_timeout=0)
    factory = salt_factories.salt_master_daemon("vm-master-sw", overrides=overrides)
    pillar_root = pathlib.Path(factory.config["pillar_roots"]["base"][0])
    assert pillar_root != CHECKOUT / "pillar" / "vm"  # ours comes first: its top.sls wins
    sha = hashlib.sha256(INSTALLER.read_bytes()).hexdigest()
    (pillar_root / "top.sls").write_text(TOP)
    (pillar_root / "software_test.sls").write_text(TEST_CATALOG.replace("@SHA@", sha).replace("@BAD@", "0f" * 32))
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="module")
def desks(sw_master, tmp_path_factory):
    """Three Linux minions on the vm master, each with its own lab root; returns {id: root}."""
    roots = {m: tmp_path_factory.mktemp(m) for m in MINIONS}
    factories = [
        sw_master.salt_minion_daemon(
            m, overrides={"grains": {"deskfleet_role": "desktop", "deskfleet_lab_root": str(roots[m])}}
        )
        for m in MINIONS
    ]
    with minions_running(sw_master, factories, "desk-sw-*", start_timeout=120) as running:
        FACTORIES.update(running)
        yield roots


def salt_run(master, *args, timeout=240):
    return master.salt_run_cli(timeout=timeout).run(*args)


def tick(master, rollout_id, *args):
    ret = salt_run(master, "software.tick", *args)
    assert ret.returncode == 0, ret
    reports = [r for r in ret.data["rollouts"] if r["id"] == rollout_id]
    return reports[0] if reports else None


def schedule(master, *args):
    ret = salt_run(master, "software.schedule", *args)
    assert ret.returncode == 0, ret
    assert "error" not in ret.data, ret.data
    return ret.data


def lines(root, log=DEMO_LOG):
    path = pathlib.Path(root) / log
    return path.read_text().splitlines() if path.exists() else []


def store_detail(master, rollout_id):
    """Read the rollout straight from the master's store (quicker than salt-run for polling)."""
    path = _real_path(master.config, "cachedir") / "deskfleet" / "deskfleet.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute(
            "SELECT minion, state FROM rollout_minions WHERE rollout_id = ?", (rollout_id,)
        ).fetchall())
    finally:
        conn.close()


def wait_until(fn, what, timeout=90, interval=0.3):
    return wait.wait_for(fn, timeout, interval, what=what)


def return_dir(master, jid, minion):
    jobs = _real_path(master.config, "cachedir") / "jobs"
    return pathlib.Path(salt.utils.jid.jid_dir(jid, str(jobs), master.config.get("hash_type", "sha256"))) / minion


def wait_for_return(master, jid, minion, timeout=300):
    # generous: a minion just resumed from SIGSTOP first catches up on its queued I/O
    return wait_until(lambda: (return_dir(master, jid, minion) / "return.p").exists(), f"{minion}'s return of {jid}",
                      timeout=timeout)


def wait_for_minions(master, timeout=120):
    cli = master.salt_cli(timeout=15)

    def all_answer():
        try:
            ret = cli.run("test.ping", minion_tgt="desk-sw-*")
        except FactoryTimeout:  # a loaded box: the salt CLI itself was slow; ask again
            return False
        return isinstance(ret.data, dict) and all(ret.data.get(m) is True for m in MINIONS)

    wait_until(all_answer, "the minions to answer the restarted master", timeout=max(timeout, 300), interval=1)


def restart(master, between=None):
    master.terminate()
    if between is not None:
        between()
    master.start(start_timeout=120)
    wait_for_minions(master)


def test_bad_input_is_refused_and_compound_targets_resolve(sw_master, desks):
    cases = {
        "unknown package": (["target=desk-sw-*", "software=nope", "end=+1h"], "unknown package 'nope'"),
        "unknown version": (["target=desk-sw-*", "software=deskfleet-demo", "version=9.9", "end=+1h"],
                            "version 9.9 is not in the catalog"),
        "hash not hex": (["target=desk-sw-*", "software=deskfleet-demo", "sha256=xyz", "end=+1h"],
                         "sha256 must be 64 hex characters"),
        "hash mismatch": (["target=desk-sw-*", "software=deskfleet-demo", f"sha256={'0f' * 32}", "end=+1h"],
                          "does not match the catalog's installer"),
        "window in the past": (["target=desk-sw-*", "software=deskfleet-demo", "start=2020-01-01T22:00:00Z",
                                "end=2020-01-02T04:00:00Z"], "is in the past"),
        "end before start": (["target=desk-sw-*", "software=deskfleet-demo", "start=+2h", "end=+1h"],
                             "before it starts"),
        "empty target": (["target=nothing-here-*", "software=deskfleet-demo", "end=+1h"],
                         "matches no accepted minion"),
        "unknown minion in a list": (["target=desk-sw-1,desk-nope", "software=deskfleet-demo", "end=+1h"],
                                     "not accepted minions: desk-nope"),
    }
    compound = ["target=G@deskfleet_role:desktop and desk-sw-[12]", "tgt_type=compound", "software=deskfleet-demo",
                "start=+1h", "end=+2h", "batch=50%"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        refused = {name: pool.submit(salt_run, sw_master, "software.schedule", *args)
                   for name, (args, _) in cases.items()}
        accepted = pool.submit(salt_run, sw_master, "software.schedule", *compound)
    for name, (_, message) in cases.items():
        ret = refused[name].result()
        assert ret.returncode == 1, (name, ret)
        assert message in ret.data["error"], (name, ret.data)

    ret = accepted.result()
    assert ret.returncode == 0, ret
    assert list(ret.data["minions"]) == ["desk-sw-1", "desk-sw-2"]  # resolved by the master's CkMinions
    assert (ret.data["tgt_type"], ret.data["batch_size"], ret.data["state"]) == ("compound", 1, "scheduled")
    cancelled = salt_run(sw_master, "software.cancel", ret.data["id"])
    assert cancelled.data["state"] == "cancelled" and cancelled.data["counts"]["skipped"] == 2
    # only the accepted one was stored
    listed = salt_run(sw_master, "software.status").data
    assert [r["id"] for r in listed] == [ret.data["id"]]


def test_install_module_on_real_minions(sw_master, desks):
    cli = sw_master.salt_cli(timeout=120)
    ret = cli.run("software.install", "deskfleet-badhash", minion_tgt="desk-sw-1")
    assert ret.data["result"] is False, ret
    assert "sha256 mismatch" in ret.data["comment"] and "nothing was run" in ret.data["comment"]
    assert lines(desks["desk-sw-1"], "var/log/badhash-install.log") == []

    ret = cli.run("software.install", "deskfleet-demo", "test=True", minion_tgt="desk-sw-1")
    assert ret.data["result"] is None and ret.data["changes"] == {"installed": {"old": None, "new": "1.0.0"}}
    assert lines(desks["desk-sw-1"]) == []

    ret = cli.run("software.list", minion_tgt="desk-sw-1")
    assert ret.data["deskfleet-demo"]["version"] == "1.0.0"
    assert ret.data["deskfleet-demo"]["source"] == "salt://deskfleet-demo/deskfleet-demo-installer.sh"


def test_batched_rollout_resumes_after_master_restarts(sw_master, desks):
    rollout = schedule(sw_master, "target=desk-sw-*", "software=deskfleet-demo", "version=1.0.0", "start=now",
                       "end=+1h", "batch=1", "max_fail=0")
    rid = rollout["id"]
    assert rollout["state"] == "scheduled" and list(rollout["minions"]) == list(MINIONS)
    assert rollout["counts"]["pending"] == 3 and rollout["batch_size"] == 1

    # tick 1: batch 1, waited for
    report = tick(sw_master, rid)
    assert report["dispatched"] == ["desk-sw-1"] and report["collected"] == {"desk-sw-1": "succeeded"}
    assert [len(lines(desks[m])) for m in MINIONS] == [1, 0, 0]
    status = salt_run(sw_master, "software.status", rid).data
    assert status["state"] == "running"
    assert status["counts"] == {"pending": 2, "running": 0, "succeeded": 1, "failed": 0, "skipped": 0}

    # tick 2 does not wait: batch 2 is out when the master goes down; its return reaches the job cache
    report = tick(sw_master, rid, "wait=0")
    assert report["dispatched"] == ["desk-sw-2"]
    (jid2,) = report["jids"]
    wait_for_return(sw_master, jid2, "desk-sw-2")
    restart(sw_master)

    # tick 3 after the restart: batch 2 found in the job cache (not re-run), batch 3 goes out
    report = tick(sw_master, rid, "wait=0")
    assert report["collected"]["desk-sw-2"] == "succeeded" and report["republished"] == []
    assert report["dispatched"] == ["desk-sw-3"]
    (jid3,) = report["jids"]
    wait_for_return(sw_master, jid3, "desk-sw-3")
    # this time the master loses batch 3's return while it is down
    restart(sw_master, between=lambda: shutil.rmtree(return_dir(sw_master, jid3, "desk-sw-3")))

    # tick 4: no return in the cache, find_job says not running → published again; install is idempotent
    report = tick(sw_master, rid)
    assert report["republished"] == ["desk-sw-3"] and report["collected"]["desk-sw-3"] == "succeeded"
    assert report["state"] == "completed"

    status = salt_run(sw_master, "software.status", rid).data
    assert status["state"] == "completed"
    assert {m: v["state"] for m, v in status["minions"].items()} == dict.fromkeys(MINIONS, "succeeded")
    assert status["minions"]["desk-sw-2"]["jid"] == jid2 and status["minions"]["desk-sw-2"]["attempts"] == 1
    assert status["minions"]["desk-sw-3"]["attempts"] == 2 and status["minions"]["desk-sw-3"]["changed"] is False
    assert [(b["minions"], b["retry"]) for b in status["batches"]] == [
        (["desk-sw-1"], False), (["desk-sw-2"], False), (["desk-sw-3"], False), (["desk-sw-3"], True)]
    # nothing lost, nothing done twice: exactly one real install per minion
    for minion in MINIONS:
        assert len(lines(desks[minion])) == 1, (minion, lines(desks[minion]))
        assert (desks[minion] / "opt/deskfleet-demo/VERSION").read_text().strip() == "1.0.0"
    assert tick(sw_master, rid) is None  # done: no longer due

    ret = sw_master.salt_cli(timeout=60).run("software.status", "deskfleet-demo", minion_tgt="desk-sw-*")
    assert {m: v["deskfleet-demo"]["state"] for m, v in ret.data.items()} == dict.fromkeys(MINIONS, "current")


def test_concurrent_ticks_share_nothing_and_cancel_stops_the_rest(sw_master, desks):
    rid = schedule(sw_master, "target=desk-sw-1,desk-sw-2,desk-sw-3", "software=deskfleet-gated", "end=+1h",
                   "batch=1")["id"]
    held = {}
    holder = threading.Thread(target=lambda: held.update(ret=salt_run(sw_master, "software.tick", "wait=120")))
    holder.start()
    try:
        # the holder's batch is running: its installer waits for a gate file
        wait_until(lambda: store_detail(sw_master, rid).get("desk-sw-1") == "running", "batch 1 to be dispatched")
        second = tick(sw_master, rid)
        assert second["action"] == "skipped" and "another tick" in second["comment"]
    finally:
        (desks["desk-sw-1"] / "gate").touch()
        holder.join(240)
    first = [r for r in held["ret"].data["rollouts"] if r["id"] == rid][0]
    assert first["dispatched"] == ["desk-sw-1"] and first["collected"] == {"desk-sw-1": "succeeded"}

    cancelled = salt_run(sw_master, "software.cancel", rid)
    assert cancelled.returncode == 0, cancelled
    assert cancelled.data["state"] == "cancelled"
    assert cancelled.data["counts"] == {"pending": 0, "running": 0, "succeeded": 1, "failed": 0, "skipped": 2}
    again = salt_run(sw_master, "software.cancel", rid)
    assert again.returncode == 1 and "already cancelled" in again.data["error"]
    assert tick(sw_master, rid) is None
    assert [len(lines(desks[m], GATED_LOG)) for m in MINIONS] == [1, 0, 0]
    status = salt_run(sw_master, "software.status", rid).data
    assert status["minions"]["desk-sw-2"] == {**status["minions"]["desk-sw-2"], "state": "skipped",
                                              "detail": "rollout cancelled", "jid": None}


def test_failures_past_max_fail_halt_the_rollout(sw_master, desks):
    rid = schedule(sw_master, "target=desk-sw-*", "software=deskfleet-fail", "end=+1h", "batch=1",
                   "max_fail=1")["id"]
    with Bus(sw_master) as bus:
        first = tick(sw_master, rid)
        assert first["collected"] == {"desk-sw-1": "failed"} and first["state"] == "running"
        second = tick(sw_master, rid)
        assert second["collected"] == {"desk-sw-2": "failed"} and second["state"] == "halted"
        # each failed batch reaches ops' reactors (README "Metrics and alerts")
        alerts = wait.wait_for(lambda: len(bus.tagged("deskfleet/alert/rollout")) >= 2 and bus.tagged(
            "deskfleet/alert/rollout"), 60, what="two deskfleet/alert/rollout events")
    assert [(a["rollout"], a["failed"], a["state"]) for a in alerts] == [
        (rid, ["desk-sw-1"], "running"), (rid, ["desk-sw-2"], "halted")]
    status = salt_run(sw_master, "software.status", rid).data
    assert "over max_fail 1" in status["reason"]
    assert {m: v["state"] for m, v in status["minions"].items()} == {
        "desk-sw-1": "failed", "desk-sw-2": "failed", "desk-sw-3": "skipped"}
    assert status["minions"]["desk-sw-1"]["detail"] == "the deskfleet-fail installer exited with 3"


def test_remove_on_a_real_minion(sw_master, desks):
    cli = sw_master.salt_cli(timeout=60)
    ret = cli.run("software.install", "deskfleet-demo", minion_tgt="desk-sw-1")  # a no-op after the rollout
    assert ret.data["result"] is True and ret.data["installed"] == "1.0.0", ret
    ret = cli.run("software.remove", "deskfleet-demo", minion_tgt="desk-sw-1")
    assert ret.data["result"] is True and ret.data["changes"] == {"installed": {"old": "1.0.0", "new": None}}
    assert not (desks["desk-sw-1"] / "opt/deskfleet-demo/VERSION").exists()
    assert lines(desks["desk-sw-1"])[-1].split()[1] == "uninstall"
    ret = cli.run("software.remove", "deskfleet-demo", minion_tgt="desk-sw-1")
    assert ret.data["result"] is True and ret.data["changes"] == {}


def test_a_minion_unreachable_at_dispatch_does_not_install_after_the_window(sw_master, desks):
    """
    The minion is paused (SIGSTOP on its whole process tree: it takes no job, answers no find_job)
    when its batch goes out; the window ends; the rollout closes naming the job left out; the minion
    wakes up, gets the job late and refuses it (not_after), and nothing is installed.
    """
    minion = "desk-sw-3"
    (desks[minion] / "gate").touch()  # the gated installer would run straight through
    main = psutil.Process(FACTORIES[minion].pid)
    tree = [main] + main.children(recursive=True)
    for proc in tree:
        proc.suspend()
    try:
        rollout = schedule(sw_master, f"target={minion}", "software=deskfleet-gated", "end=+60s", "batch=1")
        rid = rollout["id"]
        report = tick(sw_master, rid, "wait=0")
        assert report["dispatched"] == [minion], report
        end = rollouts_end(sw_master, rid)
        wait_until(lambda: time.time() > end + 1, "the window to end", timeout=120, interval=1)
        report = tick(sw_master, rid, "wait=0")
        assert report["state"] == "expired" and not report["dispatched"], report
        status = salt_run(sw_master, "software.status", rid).data
        assert status["left"] == [minion] and f"no return: {minion}" in status["reason"], status
    finally:
        for proc in tree:
            proc.resume()
    wait_for_return(sw_master, status["minions"][minion]["jid"], minion)
    report = tick(sw_master, rid, "wait=0")
    assert report["collected"] == {minion: "skipped"} and report["state"] == "expired", report
    status = salt_run(sw_master, "software.status", rid).data
    assert status["minions"][minion]["state"] == "skipped" and status["late"] == [minion], status
    assert "after its window closed" in status["minions"][minion]["detail"] and "left" not in status
    assert lines(desks[minion], GATED_LOG) == [], "installed after the window closed"


def rollouts_end(master, rollout_id):
    path = _real_path(master.config, "cachedir") / "deskfleet" / "deskfleet.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT end_at FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()[0]
    finally:
        conn.close()
