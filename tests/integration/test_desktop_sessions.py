"""
Desktop session beacon → vm master engine → store, with a real vm master from
the shipped config and a real desktop minion running the beacon (Linux branch,
utmp written by util-linux's ``utmpdump -r`` under a temp root): the user logs
on, then off, and the master's ``desktop_sessions`` row follows.
"""

import shutil
import subprocess

import pytest

import deskfleet_store
import desktop_sessions
from harness.lab import wait_for

DESKTOP = "desk-0099"
ALICE = "[7] [01234] [ts/0] [alice   ] [pts/0       ] [10.0.0.5            ] [10.0.0.5       ] [2026-11-30T02:00:00,000000+00:00]\n"
NOBODY = "[8] [01234] [ts/0] [alice   ] [pts/0       ] [                    ] [0.0.0.0        ] [2026-11-30T02:10:00,000000+00:00]\n"


def write_utmp(root, text):
    tmp = root / "run" / "utmp.new"
    with open(tmp, "wb") as out:
        subprocess.run(["utmpdump", "-r"], input=text.encode(), stdout=out, stderr=subprocess.DEVNULL, check=True)
    tmp.replace(root / "run" / "utmp")


@pytest.fixture
def desktop_root(tmp_path):
    if shutil.which("utmpdump") is None:
        pytest.skip("utmpdump (util-linux) is missing")
    (tmp_path / "run").mkdir()
    (tmp_path / "dev" / "pts").mkdir(parents=True)
    (tmp_path / "dev" / "pts" / "0").write_text("")
    write_utmp(tmp_path, ALICE)
    return tmp_path


def test_sessions_reach_the_store(vm_master, desktop_root):
    overrides = {
        # not "desktop": the shipped pillar's beacon config (root "/") would override this test's root
        "grains": {"deskfleet_role": "desktop-lab"},
        "loop_interval": 1,  # beacon intervals count loops
        "beacons": {"desktop_session": [{"interval": 1}, {"heartbeat": 60}, {"root": str(desktop_root)}]},
    }
    factory = vm_master.salt_minion_daemon(DESKTOP, overrides=overrides)
    with factory.started():
        ret = vm_master.salt_cli(timeout=120).run("saltutil.sync_beacons", minion_tgt=DESKTOP)
        assert ret.returncode == 0, ret
        db = desktop_sessions.open_store(deskfleet_store.default_path(vm_master.config, "vm"))
        try:
            def row():
                return desktop_sessions.session(db, DESKTOP, 0)

            seen = wait_for(lambda: (r := row()) and r["logged_on"] and r, timeout=120)
            assert [s["user"] for s in seen["sessions"]] == ["alice"]
            write_utmp(desktop_root, NOBODY)  # alice logs off
            gone = wait_for(lambda: (r := row()) and not r["logged_on"] and r, timeout=120)
            assert gone["sessions"] == [] and gone["seq"] > seen["seq"]
        finally:
            db.close()
