"""
The security boundary between the two masters, with real daemons: each master
sees only its own minions, and the tc master accepts thin clients only by a
per-device enrollment token (a wrong proof stays pending; auto_accept is never on).
"""

import subprocess
import sys
import time

import yaml

from harness import saltconf, tcroot
from harness.lab import wait_for


def keys(master):
    ret = master.salt_key_cli().run("-L")
    assert ret.returncode == 0, ret
    return ret.data


def test_each_master_sees_only_its_own_minions(tc_master, vm_master, thin_clients, desktop_vm):
    tc_keys, vm_keys = keys(tc_master), keys(vm_master)
    assert set(thin_clients) <= set(tc_keys["minions"])
    assert "desk-0001" in vm_keys["minions"]
    assert "desk-0001" not in tc_keys["minions"] + tc_keys["minions_pre"]
    assert not set(thin_clients) & set(vm_keys["minions"] + vm_keys["minions_pre"])
    pinged = tc_master.salt_cli(timeout=30).run("test.ping", minion_tgt="*")
    assert set(pinged.data) == set(thin_clients)
    pinged = vm_master.salt_cli(timeout=30).run("test.ping", minion_tgt="*")
    # other tests of this package leave (stopped) desktops on the vm master: no thin client among them
    assert pinged.data["desk-0001"] is True and not set(pinged.data) & set(thin_clients), pinged.data


def test_tc_master_never_auto_accepts(tc_master):
    assert tc_master.config["auto_accept"] is False
    assert tc_master.config["open_mode"] is False
    assert saltconf.shipped_master_config("tc")["auto_accept"] is False


def _auth_attempts(event_listener, master, minion_id, since):
    """The master's ``salt/auth`` events for ``minion_id`` since ``since``: one per authentication attempt."""
    events = event_listener.get_events([(master.id, "salt/auth")], after_time=since)
    return sorted((e.stamp, e.data.get("act")) for e in events if e.data.get("id") == minion_id)


def test_wrong_enrollment_proof_stays_pending(tc_master, thin_clients, tmp_path, event_listener):
    """A plain salt-minion with a made-up proof and no token: its key waits in minions_pre, never accepted."""
    root = tcroot.make(tmp_path / "fakeroot", 66)
    conf = dict(
        saltconf.tc_minion_config(root, enroll="v1:" + "0" * 64 + ":TC000066"),
        id="tc-rogue-0066",
        root_dir=str(tmp_path / "m"),
        user=tc_master.config["user"],
        master="127.0.0.1",
        master_port=tc_master.config["ret_port"],
        publish_port=tc_master.config["publish_port"],
        acceptance_wait_time=1,
    )
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "minion").write_text(yaml.safe_dump(conf))
    exe = [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_minion()"]
    started = time.time()
    proc = subprocess.Popen([*exe, "-c", str(tmp_path / "conf"), "-l", "quiet"], start_new_session=True)  # noqa: S603
    try:
        # proof is attempts the master answered, not time: the minion retries every ~acceptance_wait_time;
        # 4 attempts = first contact + 3 retries, each answered "pend" (an autosign would say "accept")
        attempts = wait_for(
            lambda: len(found := _auth_attempts(event_listener, tc_master, "tc-rogue-0066", started)) >= 4 and found,
            timeout=180, what="4 authentication attempts by tc-rogue-0066",
        )
        assert {act for _, act in attempts} == {"pend"}, attempts
        assert proc.poll() is None, "the rogue minion gave up instead of retrying"
        found = keys(tc_master)
        assert "tc-rogue-0066" in found["minions_pre"]
        assert "tc-rogue-0066" not in found["minions"]
    finally:
        proc.terminate()
        proc.wait(20)
    ret = tc_master.salt_key_cli().run("-y", "-d", "tc-rogue-0066")
    assert ret.returncode == 0
