"""
The desktop session beacon and its master-side check. Linux branch: a utmp file
written by util-linux's own ``utmpdump -r`` under a temp root, terminal atimes
for idle time. Windows branch: ``quser`` output parsed and the exact
``cmd.run_all`` call pinned (no Windows here). Signatures: real minion keys.
"""

import base64
import os
import shutil
import subprocess
import time

import pytest
import salt.crypt

import desktop_session as beacon_mod
import desktop_sessions as master

DESKTOP = "desk-0042"
UTMP_TEXT = (
    "[7] [01234] [ts/0] [alice   ] [pts/0       ] [10.0.0.5            ] [10.0.0.5       ] [2026-11-30T02:00:00,000000+00:00]\n"
    "[8] [01235] [ts/1] [bob     ] [pts/1       ] [                    ] [0.0.0.0        ] [2026-11-30T02:01:00,000000+00:00]\n"
    "[6] [01236] [tty1] [LOGIN   ] [tty1        ] [                    ] [0.0.0.0        ] [2026-11-30T02:02:00,000000+00:00]\n"
    "[7] [01237] [:0  ] [carol   ] [:0          ] [:0                  ] [0.0.0.0        ] [2026-11-30T02:03:00,000000+00:00]\n"
)


def make_root(tmp_path, text=UTMP_TEXT, idle=700):
    if shutil.which("utmpdump") is None:
        pytest.skip("utmpdump (util-linux) is missing")
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "utmp", "wb") as out:
        subprocess.run(["utmpdump", "-r"], input=text.encode(), stdout=out, stderr=subprocess.DEVNULL, check=True)
    tty = tmp_path / "dev" / "pts" / "0"
    tty.parent.mkdir(parents=True)
    tty.write_text("")
    now = time.time()
    os.utime(tty, (now - idle, now - idle))
    return tmp_path, now


def test_linux_sessions_from_a_real_utmp_file(tmp_path):
    root, now = make_root(tmp_path)
    sessions = beacon_mod.linux_sessions(str(root), "run/utmp", now)
    assert [s["user"] for s in sessions] == ["alice", "carol"]  # dead and login records are not sessions
    assert 695 <= sessions[0]["idle_seconds"] <= 705 and sessions[1]["idle_seconds"] is None  # ":0" has no tty
    facts = beacon_mod.facts_of(sessions)
    assert facts["logged_on"] and 695 <= facts["idle_seconds"] <= 705


def test_no_utmp_means_nobody_logged_on(tmp_path):
    assert beacon_mod.facts_of(beacon_mod.linux_sessions(str(tmp_path), "run/utmp", time.time())) == {
        "logged_on": False, "sessions": [], "idle_seconds": None}


def test_a_hostile_line_never_leaves_the_root(tmp_path):
    text = "[7] [00001] [x   ] [mallory ] [../../etc/sh] [                    ] [0.0.0.0        ] [2026-11-30T02:00:00,000000+00:00]\n"
    root, now = make_root(tmp_path, text)
    assert beacon_mod.linux_sessions(str(root), "run/utmp", now) == [{"user": "mallory", "state": "active", "idle_seconds": None}]


QUSER = """ USERNAME              SESSIONNAME        ID  STATE   IDLE TIME  LOGON TIME
>alice                 rdp-tcp#3           2  Active          .  30/11/2026 08:01
 bob                                       3  Disc        1+02:05  29/11/2026 17:40
 carol                 console             1  Active         12  30/11/2026 07:55
"""


@pytest.mark.parametrize("text, seconds", [("none", 0), (".", 0), ("12", 720), ("1:05", 3900), ("1+02:05", 93900), ("??", None)])
def test_quser_idle_times(text, seconds):
    assert beacon_mod.parse_idle(text) == seconds


def test_windows_branch_pins_the_quser_call(monkeypatch):
    calls = []

    def run_all(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return {"retcode": 0, "stdout": QUSER}

    monkeypatch.setattr(beacon_mod, "__salt__", {"cmd.run_all": run_all}, raising=False)
    sessions = beacon_mod.windows_sessions()
    assert calls == [(["quser"], {"python_shell": False, "ignore_retcode": True})]
    assert sessions == [
        {"user": "alice", "state": "active", "idle_seconds": 0.0},
        {"user": "bob", "state": "disconnected", "idle_seconds": 93900.0},
        {"user": "carol", "state": "active", "idle_seconds": 720.0},
    ]
    assert beacon_mod.facts_of(sessions)["idle_seconds"] == 0.0


def test_windows_nobody_logged_on(monkeypatch):
    monkeypatch.setattr(beacon_mod, "__salt__", {"cmd.run_all": lambda *a, **k: {"retcode": 1, "stdout": "", "stderr": "No User exists for *"}}, raising=False)
    assert beacon_mod.windows_sessions() == []


def test_decide_emits_on_logoff_and_heartbeat_only():
    state, facts = {}, beacon_mod.facts_of([{"user": "alice", "state": "active", "idle_seconds": 5.0}])
    assert beacon_mod.decide(state, facts, 0, 300, 0, 600) == "start"
    assert beacon_mod.decide(state, facts, 10, 300, 0, 600) is None
    assert beacon_mod.decide(state, beacon_mod.facts_of([]), 20, 300, 0, 600) == "change"
    assert beacon_mod.decide(state, beacon_mod.facts_of([]), 330, 300, 0, 600) == "heartbeat"


# ---- signed on the desktop, checked on the vm master ------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("desk-keys")
    mine, mine_pub = salt.crypt.gen_keys(2048)
    other, other_pub = salt.crypt.gen_keys(2048)
    (base / "minion").mkdir()
    (base / "minion" / "minion.pem").write_text(mine)
    (base / "master" / "minions").mkdir(parents=True)
    (base / "master" / "minions" / DESKTOP).write_text(mine_pub)
    (base / "master" / "minions" / "desk-0007").write_text(other_pub)
    return {"minion": base / "minion", "master": base / "master", "other": other}


@pytest.fixture
def emit(monkeypatch, keys, tmp_path):
    root, _ = make_root(tmp_path)
    monkeypatch.setattr(beacon_mod, "__opts__", {"id": DESKTOP, "pki_dir": str(keys["minion"])}, raising=False)
    monkeypatch.setattr(beacon_mod, "__grains__", {"kernel": "Linux"}, raising=False)
    monkeypatch.setattr(beacon_mod, "_STATE", {})
    monkeypatch.setattr(beacon_mod, "_KEY", {})
    return lambda: beacon_mod.beacon([{"root": str(root)}])


def test_signed_report_is_accepted_and_stored(emit, keys, store_db):
    [payload] = emit()
    verify = master.pki_verifier(str(keys["master"]))
    row = master.parse_event(f"salt/beacon/{DESKTOP}/desktop_session/status", payload, verify, time.time())
    assert row["desktop"] == DESKTOP and row["logged_on"] == 1
    db = master.open_store(store_db)
    try:
        master.record(db, row)
        master.record(db, dict(row, logged_on=0, sessions="[]"))  # a replay of the same seq changes nothing
        known = master.session(db, DESKTOP, time.time())
        assert known["logged_on"] and known["fresh"] and [s["user"] for s in known["sessions"]] == ["alice", "carol"]
    finally:
        db.close()


def test_a_neighbour_cannot_speak_for_a_desktop(emit, keys):
    [payload] = emit()
    verify = master.pki_verifier(str(keys["master"]))
    # the same signed report replayed under another desktop's tag
    with pytest.raises(master.Rejected, match="forged.*speaks for|forged.*does not match"):
        master.parse_event("salt/beacon/desk-0007/desktop_session/status", payload, verify, time.time())
    # a report for desk-0042 signed with the neighbour's key
    forged = dict(payload, facts={"logged_on": False, "sessions": [], "idle_seconds": None})
    key = salt.crypt.PrivateKey.from_str(keys["other"])
    forged["sig"] = base64.b64encode(key.sign(master.canonical(forged), algorithm=master.SIGN_ALGORITHM)).decode()
    with pytest.raises(master.Rejected, match="forged"):
        master.parse_event(f"salt/beacon/{DESKTOP}/desktop_session/status", forged, verify, time.time())
    # the neighbour signs, with its own key and under its own tag, a report that claims desk-0042
    claim = dict(payload)
    claim["sig"] = base64.b64encode(key.sign(master.canonical(claim), algorithm=master.SIGN_ALGORITHM)).decode()
    with pytest.raises(master.Rejected, match="signed by desk-0007 but speaks for 'desk-0042'"):
        master.parse_event("salt/beacon/desk-0007/desktop_session/status", claim, verify, time.time())
    # tampering after signing
    tampered = dict(payload, facts=dict(payload["facts"], sessions=[]))
    with pytest.raises(master.Rejected, match="forged"):
        master.parse_event(f"salt/beacon/{DESKTOP}/desktop_session/status", tampered, verify, time.time())


@pytest.mark.parametrize(
    "facts, named",
    [
        ({"logged_on": "yes", "sessions": []}, "logged_on"),
        ({"logged_on": True, "sessions": [{"user": "a/b", "state": "active"}]}, "user"),
        ({"logged_on": True, "sessions": [{"user": "a", "state": "gone"}]}, "state"),
        ({"logged_on": True, "sessions": [{"user": "a", "state": "active", "idle_seconds": -1}]}, "idle_seconds"),
        ({"logged_on": True, "sessions": [{"user": "a", "state": "active"}] * 33}, "at most 32"),
    ],
)
def test_malformed_but_signed_facts_are_refused(emit, keys, facts, named):
    [payload] = emit()
    bad = dict(payload, facts=facts)
    key = salt.crypt.PrivateKey.from_file(str(keys["minion"] / "minion.pem"))
    bad["sig"] = base64.b64encode(key.sign(master.canonical(bad), algorithm=master.SIGN_ALGORITHM)).decode()
    with pytest.raises(master.Rejected, match=named):
        master.parse_event(f"salt/beacon/{DESKTOP}/desktop_session/status", bad, master.pki_verifier(str(keys["master"])), 0)
