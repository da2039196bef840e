"""
The two-phase rotation's master side (``_utils/escrow_rotation.py``) over a
real SQLite store, with the Salt side (publish + returns) scripted, and the
store faults real: another process holding the write lock at the exact phase.
"""

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import deskfleet_store as store
import escrow
import escrow_rotation
import escrow_store
from tests.support.postgres import WriteLock

pytestmark = pytest.mark.unit
ACCOUNT = "localadmin"


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def db(store_db):
    return store_db


@pytest.fixture
def conn(db):
    conn = store.connect(db, escrow_store.MIGRATIONS, timeout=0.5)
    yield conn
    conn.close()


def sealed(key, vm, password, at):
    aad = {"vm": vm, "account": ACCOUNT, "rotated_at": at}
    return {"account": ACCOUNT, "rotated_at": at, "length": len(password), "max_age_days": 30,
            "fingerprint": escrow.fingerprint(key), "ciphertext": escrow.encrypt(key.public_key(), password, aad),
            "verified": None, "platform": "linux"}  # fmt: skip


_LAST_AT = [0.0]


def _rotation_time():
    """Wall-clock ms like the minion's, but never the same twice: two test rotations can fall in one ms."""
    _LAST_AT[0] = round(max(time.time(), _LAST_AT[0] + 0.001), 3)
    return _LAST_AT[0]


class Machines:
    """Scripted minions: what each answers to prepare and to commit; what was set."""

    def __init__(self, key, vms, commit=None, before_commit=None):
        self.key, self.vms = key, vms
        self.commit = commit or {}  # vm -> "ok" | "refuse" | "silent"
        self.before_commit = before_commit
        self.prepared, self.set, self.calls = {}, {}, []

    def gather(self, target, fun, arg, kwarg, tgt_type):
        self.calls.append(fun)
        if fun == escrow_rotation.PREPARE:
            at = _rotation_time()
            self.prepared = {vm: (f"Pw-{vm}-{at}!aA1", at) for vm in self.vms}
            return {"jid": "1", "minions": list(self.vms)}, {
                vm: (sealed(self.key, vm, pw, at), 0) for vm, (pw, at) in self.prepared.items()}
        if self.before_commit:
            self.before_commit()
        found = {}
        for vm in target:
            how = self.commit.get(vm, "ok")
            if how == "ok" and kwarg["rotations"][vm] == self.prepared[vm][1]:
                self.set[vm] = self.prepared[vm][0]
                found[vm] = ({"account": ACCOUNT, "rotated_at": kwarg["rotations"][vm], "verified": True,
                              "committed": True}, 0)  # fmt: skip
            elif how == "refuse":
                found[vm] = ("ERROR: local_password: chpasswd exited 1", 1)
        return {"jid": "2", "minions": list(target)}, found


def audit(conn, **fields):
    return escrow_store.add_audit(conn, who="ops", **fields)


def rotate(conn, machines):
    run = escrow_rotation.Rotation(conn, machines.gather, audit, ACCOUNT, escrow.fingerprint(machines.key))
    return run.run(sorted(machines.vms), "list"), run


def shown(conn, key, vm):
    return [(c["state"], escrow.decrypt(key, c["envelope"])) for c in escrow_store.candidates(conn, vm, ACCOUNT)]


def test_escrowed_pending_then_set_then_in_force(conn, key):
    machines = Machines(key, ["desk-1", "desk-2"])
    result, run = rotate(conn, machines)
    assert sorted(result["rotated"]) == ["desk-1", "desk-2"] and run.fault is None
    assert machines.calls == [escrow_rotation.PREPARE, escrow_rotation.COMMIT]
    for vm in machines.vms:
        assert shown(conn, key, vm) == [("in_force", machines.set[vm])]


def test_a_commit_without_answer_leaves_the_machine_in_doubt_between_two_escrowed_passwords(conn, key):
    first = Machines(key, ["desk-1"])
    rotate(conn, first)
    second = Machines(key, ["desk-1"], commit={"desk-1": "silent"})
    result, _ = rotate(conn, second)
    assert "no answer" in result["in_doubt"]["desk-1"] and not result["rotated"]
    candidates = shown(conn, key, "desk-1")
    assert candidates == [("in_doubt", second.prepared["desk-1"][0]), ("in_force", first.set["desk-1"])]
    due = escrow_store.due(conn, ["desk-1"], ACCOUNT, time.time())["desk-1"]
    assert due["due"] is True and due["reason"].startswith("in doubt") and len(due["in_doubt"]) == 1
    # the repair: a new rotation in force supersedes the doubt
    third = Machines(key, ["desk-1"])
    rotate(conn, third)
    assert shown(conn, key, "desk-1") == [("in_force", third.set["desk-1"])]
    assert escrow_store.due(conn, ["desk-1"], ACCOUNT, time.time())["desk-1"]["due"] is False
    assert [h["state"] for h in escrow_store.history(conn, "desk-1", ACCOUNT)] == ["in_force", "superseded", "in_force"]


def test_a_machine_that_refuses_the_commit_stays_on_its_escrowed_password(conn, key):
    first = Machines(key, ["desk-1"])
    rotate(conn, first)
    result, _ = rotate(conn, Machines(key, ["desk-1"], commit={"desk-1": "refuse"}))
    assert "password unchanged" in result["failed"]["desk-1"]
    assert shown(conn, key, "desk-1") == [("in_force", first.set["desk-1"])]


Lock = WriteLock  # another writer holding the store's write lock (a process on SQLite, a session on PostgreSQL)


def test_a_locked_store_before_the_pending_row_sets_nothing(conn, key, db):
    first = Machines(key, ["desk-1", "desk-2"])
    rotate(conn, first)
    lock = Lock(db)
    lock.grab()
    try:
        result, run = rotate(conn, second := Machines(key, ["desk-1", "desk-2"]))
    finally:
        lock.release()
    assert run.fault.fault == "locked" and result["rotated"] == {}
    assert all("password is unchanged" in result["failed"][vm] for vm in ("desk-1", "desk-2"))
    assert second.calls == [escrow_rotation.PREPARE] and second.set == {}, "no machine may set an unescrowed password"
    for vm in first.vms:
        assert shown(conn, key, vm) == [("in_force", first.set[vm])]


def test_a_store_locked_after_the_pending_row_leaves_both_candidates(conn, key, db):
    first = Machines(key, ["desk-1"])
    rotate(conn, first)
    lock = Lock(db)
    second = Machines(key, ["desk-1"], before_commit=lock.grab)
    try:
        result, run = rotate(conn, second)
    finally:
        lock.release()
    assert run.fault.fault == "locked" and "set on the machine" in result["in_doubt"]["desk-1"]
    assert shown(conn, key, "desk-1") == [("pending", second.set["desk-1"]), ("in_force", first.set["desk-1"])]
    assert escrow_store.due(conn, ["desk-1"], ACCOUNT, time.time() + 601)["desk-1"]["reason"].startswith("in doubt")
    assert escrow_store.due(conn, ["desk-1"], ACCOUNT, time.time(), in_doubt_after=600)["desk-1"]["due"] is False
