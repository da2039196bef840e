"""
Issue 9, "identity is self-assigned", attacked on a real tc master from the shipped
config with real salt-minion processes: per-device tokens, pre-claims, expiry,
empty grains, retirement.

Attackers are plain salt-minion processes (their keys are never accepted, so the
factories' start-up check cannot wait for them); real devices are enrolled the way
ops and the device do it (``enroll.issue`` + ``tools/deskfleet-enroll``).
"""

import contextlib
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from harness import saltconf, tcroot
from harness.lab import wait_for
from harness.proc import stop_group
from tests.integration.conftest import HEARTBEAT, enrolled_minion
from tests.support.minions import running as minions_running

import enrollment  # noqa: E402  (tests/conftest puts _utils on sys.path)

PENDING_TTL = 20
FAKE_PROOF = "v1:" + "0" * 64 + ":TC000099"


def _leave_pending(master, payload):  # noqa: ARG001 - factories' auth hook: never accept keys here
    pass


@pytest.fixture(scope="module")
def etc(tmp_path_factory):
    return tmp_path_factory.mktemp("etc-enroll")


@pytest.fixture(scope="module")
def master(salt_factories, etc):
    overrides = saltconf.lab_master_config(
        "tc", etc, heartbeat=HEARTBEAT, beacon_interval=1,
        enroll={"pending_ttl": PENDING_TTL, "sweep_interval": 1, "pending_grace": 2},
    )  # fmt: skip
    factory = salt_factories.salt_master_daemon("tc-enroll", overrides=overrides, on_auth_event_callback=_leave_pending)
    with factory.started():
        yield factory


@pytest.fixture
def work(tmp_path):
    return tmp_path


def keys(master):
    ret = master.salt_key_cli().run("-L")
    assert ret.returncode == 0, ret
    return ret.data


def run(master, fun, *args, ok=True):
    ret = master.salt_run_cli(timeout=120).run(fun, *args)
    if ok:
        assert ret.returncode == 0, ret
    return ret


def accepted_fp(master, minion_id):
    path = master.config["pki_dir"] + f"/minions/{minion_id}"
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        return enrollment.fingerprint(fh.read())
    return None


def device_fp(pki_dir):
    return enrollment.fingerprint((pki_dir / "minion.pub").read_text())


def issue(master, minion_id, serial, work):
    token_file = work / f"{minion_id}.token"
    ret = run(master, "enroll.issue", minion_id, f"serial={serial}", f"path={token_file}")
    return token_file, ret


def raw_pki(work, minion_id):
    """Where a raw minion's key lives (Salt puts pki_dir under root_dir)."""
    return work / f"{minion_id}-m" / "etc/salt/pki/minion"


@contextlib.contextmanager
def raw_minion(master, minion_id, work, grain=None, token_file=None, serial_of=99):
    """
    A salt-minion process the test harness never accepts: an attacker, or a device
    without a token. ``token_file``: it turns that token into its grain for ``minion_id``.
    """
    root = tcroot.make(work / f"{minion_id}-root", serial_of)
    if token_file is not None:
        grain = saltconf.enroll_device(token_file, minion_id, raw_pki(work, minion_id), root)
    conf = dict(
        saltconf.tc_minion_config(root, enroll=grain),
        id=minion_id, root_dir=str(work / f"{minion_id}-m"), user=master.config["user"],
        master="127.0.0.1", master_port=master.config["ret_port"], publish_port=master.config["publish_port"],
        acceptance_wait_time=1, acceptance_wait_time_max=1, random_reauth_delay=0,
    )  # fmt: skip
    conf_dir = work / f"{minion_id}-conf"
    conf_dir.mkdir()
    (conf_dir / "minion").write_text(yaml.safe_dump(conf))
    exe = [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_minion()"]
    proc = subprocess.Popen([*exe, "-c", str(conf_dir), "-l", "quiet"], start_new_session=True)  # noqa: S603
    try:
        yield proc
    finally:
        # its whole process group (start_new_session): a salt-minion takes 10-20 s to act on SIGTERM
        stop_group(proc, grace=10)


def pending_age(master, minion_id):
    rows = [p for p in run(master, "enroll.pending").data["pending"] if p["id"] == minion_id]
    return rows[0]["age_seconds"] if rows else -1


def refusals(master, minion_id):
    return [r for r in run(master, "enroll.pending").data["recent_refusals"] if r["minion_id"] == minion_id]


def test_device_with_its_token_enrols_and_the_token_is_consumed(master, work):
    root = tcroot.make(work / "root", 101)
    device = enrolled_minion(master, "tc-lon-0101", root, work)
    with device.started():
        fp = device_fp(pathlib.Path(device.config["pki_dir"]))
        assert accepted_fp(master, "tc-lon-0101") == fp
        (token,) = run(master, "enroll.list", "minion_id=tc-lon-0101").data
        assert (token["state"], token["serial"], token["key_fingerprint"]) == ("consumed", "TC000101", fp)
        assert token["issued_by"] and token["closed_at"] >= token["issued_at"]
        actions = [a["action"] for a in run(master, "enroll.audit", "minion_id=tc-lon-0101").data]
        assert actions[:2] == ["enrolled", "issue"]
    secret = (work / "tc-lon-0101.token").read_text().strip()
    log = open(master.config["log_file"], encoding="utf-8", errors="replace").read()  # noqa: SIM115
    assert secret not in log and enrollment.token_id(secret) in log


def test_a_token_works_once_and_only_for_its_id(master, work):
    root = tcroot.make(work / "root", 102)
    device = enrolled_minion(master, "tc-lon-0102", root, work)
    with device.started():
        real = accepted_fp(master, "tc-lon-0102")
        token_file = work / "tc-lon-0102.token"
        # a second device with the same (now consumed) token and id: its own key, a proof made with the token;
        # and the same token turned into a proof for another id
        (work / "x").mkdir()
        with raw_minion(master, "tc-lon-0102", work / "x", token_file=token_file, serial_of=102), \
             raw_minion(master, "tc-lon-0199", work, token_file=token_file, serial_of=102):  # fmt: skip
            # Salt denies the second key (the id holds another); the guard finds no open token for it
            (refusal,) = wait_for(lambda: refusals(master, "tc-lon-0102"), 60, what="the second device's refusal")
            assert "no open token" in refusal["reason"]
            # the other id has no token: its key waits for ops through several auth rounds, never accepted
            wait_for(lambda: pending_age(master, "tc-lon-0199") >= 4, 60, what="tc-lon-0199 pending for 4 s")
            assert accepted_fp(master, "tc-lon-0102") == real
            assert accepted_fp(master, "tc-lon-0199") is None
            assert "tc-lon-0199" in keys(master)["minions_pre"]  # no token for that id: left for ops, expires


def test_invented_id_without_token_stays_pending_and_expires(master, work):
    with raw_minion(master, "tc-new-0001", work):
        wait_for(lambda: "tc-new-0001" in keys(master)["minions_pre"], 60, what="tc-new-0001 pending")
        (row,) = [p for p in run(master, "enroll.pending").data["pending"] if p["id"] == "tc-new-0001"]
        assert row["fingerprint"] == device_fp(raw_pki(work, "tc-new-0001"))
        assert row["expires_in"] <= PENDING_TTL and row["open_token"] is False
        pending_since = time.time() - row["age_seconds"]
    wait_for(lambda: "tc-new-0001" not in keys(master)["minions_pre"], PENDING_TTL * 4, what="the pending key to expire")
    assert time.time() - pending_since >= PENDING_TTL - 2  # kept for pending_ttl, not deleted at once
    assert accepted_fp(master, "tc-new-0001") is None
    assert "pending for" in refusals(master, "tc-new-0001")[0]["reason"]


def test_a_pre_claimed_id_does_not_lock_out_the_real_device(master, work):
    root = tcroot.make(work / "root", 103)
    token_file, _ = issue(master, "tc-lon-0103", "TC000103", work)
    with raw_minion(master, "tc-lon-0103", work, grain=FAKE_PROOF):
        wait_for(lambda: refusals(master, "tc-lon-0103"), 60, what="the pre-claim to be refused")
        # a careless `salt-key -a` finds nothing to accept: the pre-claim is never left pending
        # each attempt is deleted on its auth event, so a careless `salt-key -a` finds nothing, or
        # catches one in flight and the salt/key guard undoes it
        wait_for(lambda: (r := refusals(master, "tc-lon-0103")) and r[0]["count"] >= 2, 60, what="two refused attempts")
        master.salt_key_cli().run("-y", "-a", "tc-lon-0103")
        wait_for(lambda: accepted_fp(master, "tc-lon-0103") is None, 30, what="no accepted pre-claim")
        device = enrolled_minion(master, "tc-lon-0103", root, work, token_file=token_file)
        with device.started(start_timeout=120):
            assert accepted_fp(master, "tc-lon-0103") == device_fp(pathlib.Path(device.config["pki_dir"]))
            ret = master.salt_cli(timeout=60).run("test.ping", minion_tgt="tc-lon-0103")
            assert ret.data is True, ret


def test_salt_key_accept_of_a_pre_claim_is_undone(master, work):
    """A claim's key that sits in Salt's key dirs (here: rejected earlier) and a careless `salt-key -a`."""
    issue(master, "tc-lon-0104", "TC000104", work)
    import salt.crypt  # pylint: disable=import-outside-toplevel

    salt.crypt.write_keys(str(work), "attacker", 2048)
    pending = work / "attacker.pub"
    dest = master.config["pki_dir"] + "/minions_rejected/tc-lon-0104"
    with open(dest, "w", encoding="utf-8") as fh:
        fh.write(pending.read_text())
    ret = master.salt_key_cli().run("-y", "-a", "tc-lon-0104", "--include-rejected")
    assert ret.returncode == 0, ret
    wait_for(lambda: accepted_fp(master, "tc-lon-0104") is None, 30, what="the foreign key to be deleted")
    audit = run(master, "enroll.audit", "minion_id=tc-lon-0104").data
    assert any(a["action"] == "misuse" and a["fingerprint"] == enrollment.fingerprint(pending.read_text()) for a in audit)
    assert run(master, "enroll.list", "minion_id=tc-lon-0104").data[0]["state"] == "issued"  # the device can still enrol


@pytest.mark.parametrize("grain", ["", " "])
def test_an_empty_grain_never_enrols(master, etc, work, grain):
    # what the old shared-secret set-up left on masters: a grains file with a blank line, where
    # the master would read it if autosign_grains_dir were set (Salt puts it under root_dir)
    legacy = pathlib.Path(master.config.get("autosign_grains_dir") or etc / "autosign_grains")
    legacy.mkdir(parents=True, exist_ok=True)
    (legacy / saltconf.ENROLL_GRAIN).write_text("\n")
    (legacy / saltconf.ENROLL_GRAIN).chmod(0o600)
    minion_id = f"tc-lon-010{5 + len(grain)}"
    issue(master, minion_id, "TC000105", work)
    with raw_minion(master, minion_id, work, grain=grain):
        wait_for(lambda: (r := refusals(master, minion_id)) and r[0]["count"] >= 3, 60, what="three refusals")
        assert accepted_fp(master, minion_id) is None
        assert "no enrollment proof" in refusals(master, minion_id)[0]["reason"]
    with raw_minion(master, "tc-blank-0001", work, grain=grain):
        wait_for(lambda: pending_age(master, "tc-blank-0001") >= 4, 60, what="tc-blank-0001 pending for 4 s")
        assert accepted_fp(master, "tc-blank-0001") is None
    master.salt_key_cli().run("-y", "-d", "tc-blank-0001")
    # Salt's own autosign stays off: no autosign_grains_dir, autosign_file or auto_accept
    assert not {k for k in master.config if k.startswith("autosign")} - {"autosign_timeout"}
    assert master.config["auto_accept"] is False


def test_retire_removes_key_inventory_row_and_history(master, work):
    root = tcroot.make(work / "root", 107, site="LON")
    device = enrolled_minion(master, "tc-lon-0107", root, work)
    with minions_running(master, [device], "tc-lon-0107"):
        wait_for(lambda: run(master, "tc_inventory.show", "tc-lon-0107", ok=False).returncode == 0, 60, what="an inventory row")
        dry = run(master, "seat.retire", "tc-lon-0107", "test=True").data
        assert dry["retired"] is False and dry["keys"] == ["minions"] and dry["store_rows"].get("seats") == 1
        assert accepted_fp(master, "tc-lon-0107") is not None
        done = run(master, "seat.retire", "tc-lon-0107").data
        assert done["retired"] is True and done["keys"] == ["minions"]
        assert accepted_fp(master, "tc-lon-0107") is None
    assert run(master, "tc_inventory.show", "tc-lon-0107", ok=False).returncode == 1
    import tc_assets  # pylint: disable=import-outside-toplevel
    import seat_records  # pylint: disable=import-outside-toplevel

    conn = tc_assets.open_store(master.config)
    try:
        assert seat_records.count(conn, "tc-lon-0107") == {}
    finally:
        conn.close()
    assert any(a["action"] == "retire" for a in run(master, "enroll.audit", "minion_id=tc-lon-0107").data)
