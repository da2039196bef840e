"""
Messages and user-data retrieval with real masters and minions (issue 13, parts 2
and 4).

- A vm master of its own, from the shipped config, with its profile root moved
  under a temp dir (``/home`` is this box's); its desktop ``desk-0042`` is a real
  Linux minion whose ``wall`` is a stand-in on its PATH (the real one would write
  to every terminal of this box), so ``message.send`` runs the real
  ``desktop_notice.send`` down to the command it calls.
- The package's tc master and thin clients: ``message.send ... site=LON`` puts the
  notice file on the LON seat's screen (its lab root) and nowhere else; a thin
  client's ``cp.push`` stores nothing on the tc master.
"""

import hashlib
import os
import shutil
import stat

import pytest

from harness import saltconf
from harness.lab import wait_for

DESKTOP = "desk-0042"
TEXT = "Your desktop restarts at 18:00 for an update."


@pytest.fixture(scope="module")
def people(salt_factories, lab_etc, tmp_path_factory):
    """(vm master, desktop factory, profile root, wall log): one master and one desktop for the module."""
    base = tmp_path_factory.mktemp("people")
    home, bindir, wall_log = base / "home", base / "bin", base / "wall.log"
    (home / "alice" / "Documents").mkdir(parents=True)
    (home / "bob").mkdir()
    bindir.mkdir()
    (bindir / "wall").write_text(f"#!/bin/sh\ncat >> {wall_log}\n")
    (bindir / "wall").chmod(0o755)
    overrides = saltconf.lab_master_config(
        "vm", lab_etc, messages={"rate_limit": 2, "timeout": 10}, userdata={"max_bytes": 1024 * 1024, "timeout": 60})
    overrides["deskfleet"]["vm"]["userdata"]["roots"] = {"windows": ["C:\\Users"], "linux": [str(home)]}
    master = salt_factories.salt_master_daemon("vm-people", overrides=overrides)
    with master.started():
        desktop = master.salt_minion_daemon(DESKTOP, overrides={"grains": {"deskfleet_role": "desktop"}})
        # its own environment (the factories' one is shared): the stand-in wall first on PATH
        desktop.environ = dict(desktop.environ, PATH=f"{bindir}:{desktop.environ['PATH']}")
        with desktop.started():
            ret = master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt=DESKTOP)
            assert ret.returncode == 0, ret
            yield master, desktop, home, wall_log


def run(master, *args):
    ret = master.salt_run_cli(timeout=180).run(*args)
    assert ret.returncode in (0, 1), ret
    return ret.returncode, ret.data


def wall_lines(log):
    return log.read_text().splitlines() if log.exists() else []


def test_message_delivered_then_rate_limited_and_audited(people):
    master, _, _, wall_log = people
    for n in (1, 2):
        code, got = run(master, "message.send", DESKTOP, f"{TEXT} ({n})")
        assert code == 0 and got["targets"] == {DESKTOP: {"result": "delivered", "detail": "wall"}}, got
    assert wall_lines(wall_log)[-2:] == [f"{TEXT} (1)", f"{TEXT} (2)"]
    code, got = run(master, "message.send", DESKTOP, f"{TEXT} (3)")
    assert code == 1 and got["targets"][DESKTOP]["result"] == "failed", got
    assert got["targets"][DESKTOP]["detail"].startswith("rate limited: 2 messages in the last 600 s")
    assert f"{TEXT} (3)" not in wall_lines(wall_log), "a rate-limited message must not reach the desktop"
    code, rows = run(master, "message.audit", f"target={DESKTOP}")
    assert code == 0 and [(r["text"], r["result"]) for r in rows[:3]] == [
        (f"{TEXT} (3)", "failed"), (f"{TEXT} (2)", "delivered"), (f"{TEXT} (1)", "delivered")]
    assert rows[0]["sender"] and rows[0]["master"] == "vm"


def test_too_long_text_is_refused_and_nothing_sent(people):
    master, _, _, wall_log = people
    before = wall_lines(wall_log)
    code, got = run(master, "message.send", DESKTOP, "x" * 256)
    assert code == 1 and got["field"] == "text" and "the limit is 255" in got["error"], got
    code, got = run(master, "message.send", "deskfleet_role:desktop", TEXT, "tgt_type=grain")
    assert code == 1 and got["field"] == "tgt_type", got  # grains are what a minion says of itself
    assert wall_lines(wall_log) == before


def test_offline_desktop_is_reported_and_exit_code_is_1(people):
    master, desktop, _, _ = people
    # an accepted key whose desktop is down: desk-0043 carries desk-0042's public key
    pki = os.path.join(master.config["pki_dir"], "minions")
    shutil.copy(os.path.join(pki, DESKTOP), os.path.join(pki, "desk-0043"))
    try:
        code, got = run(master, "message.send", "desk-0043", TEXT)
    finally:
        os.unlink(os.path.join(pki, "desk-0043"))
    assert code == 1 and got["targets"] == {"desk-0043": {"result": "offline", "detail": "no answer within the timeout"}}
    assert got["counts"] == {"delivered": 0, "failed": 0, "offline": 1} and "did not get the message" in got["error"]


def test_fetch_stores_the_file_0600_in_quarantine_with_sha256(people):
    master, _, home, _ = people
    data = os.urandom(300_000)
    (home / "alice" / "Documents" / "report.bin").write_bytes(data)
    code, got = run(master, "userdata.fetch", DESKTOP, f"path={home}/alice/Documents/report.bin")
    assert code == 0, got
    assert got["sha256"] == hashlib.sha256(data).hexdigest() and got["size"] == len(data)
    quarantine = os.path.join(master.config["cachedir"], "deskfleet", "userdata-quarantine")
    assert got["stored"].startswith(quarantine + os.sep)
    assert open(got["stored"], "rb").read() == data
    assert stat.S_IMODE(os.stat(got["stored"]).st_mode) == 0o600
    inbox = os.path.join(master.config["cachedir"], "minions", DESKTOP, "files", "userdata")
    assert os.listdir(inbox) == [], "the received copy must be moved out of Salt's cache"
    code, rows = run(master, "userdata.audit", f"desktop={DESKTOP}", "limit=1")
    assert rows[0]["result"] == "fetched" and rows[0]["sha256"] == got["sha256"] and rows[0]["stored"] == got["stored"]


def test_fetch_refusals_name_the_field_and_are_audited(people):
    master, _, home, _ = people
    (home / "alice" / "big.bin").write_bytes(b"x" * (1024 * 1024 + 1))
    (home / "bob" / "secret.txt").write_text("bob's")
    os.symlink(home / "bob" / "secret.txt", home / "alice" / "bob-secret")
    os.symlink("/etc/hostname", home / "alice" / "hostname")
    cases = [
        (f"path={home}/alice/../bob/secret.txt", "path", "contains '..'"),
        ("path=/etc/hostname", "path", "not a file inside a user profile"),
        (f"path={home}/alice/big.bin", "desktop", "over the cap of 1048576"),
        (f"path={home}/alice/bob-secret", "desktop", "a link out of the profile"),
        (f"path={home}/alice/hostname", "desktop", "a link out of the profile"),
        (f"path={home}/alice/missing.txt", "desktop", "No such file"),
    ]
    for arg, field, why in cases:
        code, got = run(master, "userdata.fetch", DESKTOP, arg)
        assert code == 1 and got["field"] == field and why in got["error"], (arg, got)
    code, got = run(master, "userdata.fetch", "desk-*", f"path={home}/alice/big.bin")
    assert code == 1 and got["field"] == "desktop", got
    code, rows = run(master, "userdata.audit", f"desktop={DESKTOP}", f"limit={len(cases)}")
    assert [r["result"] for r in rows] == ["refused"] * len(cases)
    quarantine = os.path.join(master.config["cachedir"], "deskfleet", "userdata-quarantine", DESKTOP)
    assert not [n for n in os.listdir(quarantine) if not n.endswith("-report.bin")] if os.path.isdir(quarantine) else True


def test_site_notice_reaches_only_the_seats_of_that_site(tc_master, thin_clients, tc_roots):
    def both_in_inventory():
        ret = tc_master.salt_run_cli(timeout=120).run("tc_inventory.list")
        return ret.returncode == 0 and isinstance(ret.data, list) and {s["seat"] for s in ret.data} >= {"tc-0001", "tc-0002"}

    wait_for(both_in_inventory, timeout=180, what="both seats in the inventory")
    code, got = run(tc_master, "message.send", "tc-*", "Desktops in LON are down; IT is on it.", "site=LON")
    assert code == 0 and got["targets"] == {"tc-0001": {"result": "delivered", "detail": "notice-file"}}, got
    notice = tc_roots["tc-0001"] / "run" / "deskfleet" / "seat-notice.json"
    assert "Desktops in LON are down" in notice.read_text()
    assert not (tc_roots["tc-0002"] / "run" / "deskfleet" / "seat-notice.json").exists()
    code, rows = run(tc_master, "message.audit", "target=tc-0001")
    assert rows[0]["master"] == "tc" and rows[0]["result"] == "delivered"


def test_tc_master_refuses_files_from_thin_clients(tc_master, thin_clients, tc_roots):
    loot = tc_roots["tc-0001"] / "loot.bin"
    loot.write_bytes(b"x" * 1000)
    ret = tc_master.salt_cli(timeout=120).run("cp.push", str(loot), minion_tgt="tc-0001")
    assert ret.returncode in (0, 1) and ret.data is False, ret
    assert tc_master.config["file_recv"] is False
    assert not os.path.exists(os.path.join(tc_master.config["cachedir"], "minions", "tc-0001", "files"))
