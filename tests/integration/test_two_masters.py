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
    assert pinged.data == {"desk-0001": True} or set(pinged.data) == {"desk-0001"}


def test_tc_master_never_auto_accepts(tc_master):
    assert tc_master.config["auto_accept"] is False
    assert tc_master.config["open_mode"] is False
    assert saltconf.shipped_master_config("tc")["auto_accept"] is False


def test_wrong_enrollment_proof_stays_pending(tc_master, thin_clients, tmp_path):
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
    proc = subprocess.Popen([*exe, "-c", str(tmp_path / "conf"), "-l", "quiet"], start_new_session=True)  # noqa: S603
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "tc-rogue-0066" not in keys(tc_master)["minions_pre"]:
            time.sleep(1)
        time.sleep(3)  # several more auth retries: still not accepted
        found = keys(tc_master)
        assert "tc-rogue-0066" in found["minions_pre"]
        assert "tc-rogue-0066" not in found["minions"]
    finally:
        proc.terminate()
        proc.wait(20)
    ret = tc_master.salt_key_cli().run("-y", "-d", "tc-rogue-0066")
    assert ret.returncode == 0
