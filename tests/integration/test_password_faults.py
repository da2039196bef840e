"""
Password escrow under REAL store faults, with a real vm master and a real Linux
minion acting on a throwaway root (as in test_password_escrow.py):

- the store on a full filesystem (a 16 MiB tmpfs the test mounts and fills),
- the store locked by another process holding a write transaction, either
  before the rotation or right after the pending row is on disk,
- the store truncated to 0 bytes, or to half its size.

The rule under test: the escrow holds a password before the machine uses it,
so a fault leaves the machine on a password ``password.show`` prints (or, when
the set result is unknown, on one of two it prints, labelled), ``status`` says
which machines are in doubt, ``rotate_due`` repairs them, and store faults are
errors with exit code 1 and a ``deskfleet/alert/store`` event, never a
traceback or a silently re-created store.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import warnings

import pytest
import salt.utils.event

from harness import saltconf
from harness.lab import wait_for
from tests.integration.test_password_escrow import ACCOUNT, make_root, shadow_hash, write_key_pair
from tests.support.minions import running as minions_running

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

DESK = "desk-pwf-0001"
IN_DOUBT_AFTER = 3  # seconds a pending row may wait for its commit (production: 600)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("escrow-keys-f")
    pem, pub, fp = write_key_pair(directory, "escrow", 2048)
    return {"pem": pem, "pub": pub, "fp": fp}


@pytest.fixture(scope="module")
def tiny_fs(tmp_path_factory):
    """A 16 MiB tmpfs inside a temp dir for the store (root), unmounted after the master stopped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the full-disk fault needs root")
    mnt = tmp_path_factory.mktemp("store-fs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture(scope="module")
def master(salt_factories, tmp_path_factory, keys, tiny_fs):
    etc = tmp_path_factory.mktemp("etc-pwf")
    shutil.copy(keys["pub"], etc / "password-escrow.pub")
    top = tmp_path_factory.mktemp("pillar-pwf")
    (top / "top.sls").write_text("base:\n  '*':\n    - passwords\n")
    overrides = saltconf.lab_master_config(
        "vm", etc, db=str(tiny_fs / "deskfleet.sqlite"), db_timeout=2,
        passwords={"escrow_pubkey_file": str(etc / "password-escrow.pub"), "in_doubt_after": IN_DOUBT_AFTER},
    )  # fmt: skip
    overrides["pillar_roots"] = {"base": [str(top)] + list(overrides["pillar_roots"]["base"])}
    factory = salt_factories.salt_master_daemon("vm-master-pwf", overrides=overrides)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp(f"root-{DESK}"))


@pytest.fixture(scope="module")
def desk(master, root):
    minion = master.salt_minion_daemon(
        DESK, overrides={"grains": {"deskfleet_role": "desktop"}, "deskfleet": {"passwords": {"linux_root": str(root)}}}
    )
    with minions_running(master, [minion], DESK):
        yield minion


@pytest.fixture
def db(master):
    return master.config["deskfleet"]["vm"]["db"]


def run(master, *args):
    ret = master.salt_run_cli(timeout=240).run(*args)
    data = ret.data if isinstance(ret.data, (dict, list)) else None
    return ret, data


def shown(master, key, *extra):
    """(candidate lines {label or 'only': password}, the return, the process) of password.show."""
    ret = master.salt_run_cli(timeout=120).run("password.show", DESK, ACCOUNT, f"key={key}", *extra)
    text, _, rest = ret.stdout.partition("\n{\n")
    if not rest:
        return {}, json.loads(ret.stdout), ret
    lines = text.splitlines()
    if lines and lines[0].startswith("IN DOUBT"):
        found = dict(line.rsplit(": ", 1) for line in lines[1:])
    else:
        found = {"only": lines[0]}
    return found, json.loads("{\n" + rest), ret


def opens_shadow(password, root):
    hashed = shadow_hash(root)
    return crypt.crypt(password, hashed) == hashed


class Alerts:
    """Every deskfleet/alert/store event on the master bus while open."""

    def __init__(self, master):
        self.opts = master.config
        self.events, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._ready = threading.Event()

    def _listen(self):
        with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=True) as bus:
            self._ready.set()
            while not self._stop.is_set():
                event = bus.get_event(wait=0.2, full=True, tag="deskfleet/alert/store")
                if event:
                    self.events.append(event["data"])

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class Holder:
    """Another process holding a write transaction on the real store file, from ``grab()`` to ``release()``."""

    SCRIPT = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "sys.stdin.readline(); conn.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
        "sys.stdin.readline(); conn.execute('ROLLBACK')\n"
    )

    def __init__(self, path):
        self.proc = subprocess.Popen([os.sys.executable, "-c", self.SCRIPT, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip

    def grab(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def escrow_rows(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT id, state FROM password_escrow ORDER BY id").fetchall()
    finally:
        conn.close()


# ---- the tests (in file order: each starts from the previous one's state) -------------------------------


def test_a_full_filesystem_refuses_the_rotation_and_the_machine_keeps_its_escrowed_password(master, desk, root, keys,
                                                                                           tiny_fs, db):
    ret, first = run(master, "password.rotate", DESK, ACCOUNT)
    assert ret.returncode == 0 and list(first["rotated"]) == [DESK], ret
    before = shadow_hash(root)
    # A reader keeps its snapshot, so the next write must grow the (emptied) WAL: new blocks on a full disk.
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM password_escrow").fetchone()
    filler = tiny_fs / "filler"
    # fill the store's filesystem to the last block; unbuffered, so closing has nothing left to flush on a full disk
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    try:
        with Alerts(master) as alerts:
            ret, data = run(master, "password.rotate", DESK, ACCOUNT)
            assert ret.returncode == 1, ret
            assert data["rotated"] == {} and "password is unchanged" in data["failed"][DESK], data
            assert data["store_fault"] == "full" and str(tiny_fs) in data["error"]
            wait_for(lambda: alerts.events, timeout=300, what="a deskfleet/alert/store event")
        assert alerts.events[0]["fault"] == "full" and alerts.events[0]["runner"] == "password.rotate"
        assert shadow_hash(root) == before, "the machine must not take a password the escrow could not store"
    finally:
        reader.close()
        filler.unlink()
    found, data, proc = shown(master, keys["pem"])
    assert proc.returncode == 0 and data["escrow_id"] == first["rotated"][DESK]["escrow_id"]
    assert opens_shadow(found["only"], root), "password.show prints the password the machine has"


def test_a_locked_store_refuses_the_rotation_and_the_machine_keeps_its_escrowed_password(master, desk, root, keys, db):
    before = shadow_hash(root)
    holder = Holder(db)
    holder.grab()
    try:
        ret, data = run(master, "password.rotate", DESK, ACCOUNT)
    finally:
        holder.release()
    assert ret.returncode == 1 and data["store_fault"] == "locked" and db in data["error"], ret
    assert "password is unchanged" in data["failed"][DESK]
    assert shadow_hash(root) == before
    found, _, proc = shown(master, keys["pem"])
    assert proc.returncode == 0 and opens_shadow(found["only"], root)
    ret, status = run(master, "password.status", DESK, ACCOUNT)
    assert ret.returncode == 0 and status["ok"] == [DESK] and status["in_doubt"] == {}


def test_a_store_locked_after_the_pending_row_leaves_the_machine_in_doubt_and_rotate_due_repairs_it(
    master, desk, root, keys, db
):
    known = {row[0] for row in escrow_rows(db)}
    holder = Holder(db)
    grabbed = threading.Event()

    def lock_once_pending():
        # the pending row is on disk before the machine is told to set it: lock the store right then
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(i not in known and s == "pending" for i, s in escrow_rows(db)):
                holder.grab()
                grabbed.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=lock_once_pending, daemon=True)
    watcher.start()
    try:
        ret, data = run(master, "password.rotate", DESK, ACCOUNT)
    finally:
        watcher.join(130)
        assert grabbed.is_set(), "the pending row never appeared"
        holder.release()
    assert ret.returncode == 1 and data["rotated"] == {} and DESK in data["in_doubt"], ret
    assert "set on the machine" in data["in_doubt"][DESK] and data["store_fault"] == "locked"
    # the pending row turns "in doubt" once older than in_doubt_after
    status = wait_for(lambda: (r := run(master, "password.status", DESK, ACCOUNT))[1]["in_doubt"] and r,
                      timeout=60, what="password.status to report the machine in doubt")
    assert status[0].returncode == 1 and status[1]["due"][DESK].startswith("in doubt")
    found, data, proc = shown(master, keys["pem"])
    assert proc.returncode == 0 and data["in_doubt"] is True and len(data["candidates"]) == 2, proc
    assert [c["state"] for c in data["candidates"]] == ["pending", "in_force"]
    labels = list(found)
    assert "PENDING (set result unknown)" in labels[0] and "IN FORCE" in labels[1]
    assert sum(opens_shadow(pw, root) for pw in found.values()) == 1, "one candidate is the machine's password"
    assert opens_shadow(found[labels[0]], root)

    ret, repaired = run(master, "password.rotate_due", DESK, ACCOUNT)
    assert ret.returncode == 0 and list(repaired["rotated"]) == [DESK], ret
    assert repaired["due"][DESK].startswith("in doubt")
    ret, status = run(master, "password.status", DESK, ACCOUNT)
    assert ret.returncode == 0 and status["in_doubt"] == {} and status["ok"] == [DESK]
    found, data, _ = shown(master, keys["pem"])
    assert "in_doubt" not in data and opens_shadow(found["only"], root)
    ret, history = run(master, "password.history", DESK, ACCOUNT)
    assert [h["state"] for h in history][:2] == ["in_force", "superseded"]


def test_show_with_a_bad_escrow_id_is_refused_and_audited(master, desk, keys):
    ret, data = run(master, "password.show", DESK, ACCOUNT, f"key={keys['pem']}", "escrow_id=abc")
    assert ret.returncode == 1 and "escrow_id must be a whole number" in data["error"], ret
    assert "Traceback" not in ret.stderr
    ret, audit = run(master, "password.audit", f"vm={DESK}", "action=read", "limit=1")
    assert audit[0]["id"] == data["audit_id"] and audit[0]["outcome"] == "refused"
    assert "escrow_id" in audit[0]["reason"]


def restore(saved, db):
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    shutil.copy(saved, db)


def test_a_truncated_store_is_refused_never_recreated(master, desk, db):
    saved = db + ".saved"
    with sqlite3.connect(db, timeout=30) as src, sqlite3.connect(saved) as dst:
        src.backup(dst)  # a consistent copy, WAL included
    try:
        os.truncate(db, 0)
        with Alerts(master) as alerts:
            for fun in ("password.status", "password.history", "software.status"):
                ret, data = run(master, fun, *([DESK] if fun == "password.history" else []))
                assert ret.returncode == 1, (fun, ret)
                assert data["store_fault"] == "truncated" and db in data["error"] and "0 bytes" in data["error"]
                assert "Traceback" not in ret.stderr
            wait_for(lambda: len(alerts.events) >= 3, timeout=300, what="an alert per refused call")
        assert {e["runner"] for e in alerts.events} >= {"password.status", "password.history", "software.status"}
        assert os.path.getsize(db) == 0, "the store must not be re-created over its history"
        # half a store: damaged, refused the same way
        restore(saved, db)
        os.truncate(db, os.path.getsize(saved) // 2)
        ret, data = run(master, "password.status", DESK, ACCOUNT)
        assert ret.returncode == 1 and data["store_fault"] in ("corrupt", "error") and db in data["error"], ret
        assert "Traceback" not in ret.stderr
    finally:
        restore(saved, db)
        os.unlink(saved)
    ret, status = run(master, "password.status", DESK, ACCOUNT)
    assert ret.returncode == 0 and status["ok"] == [DESK]
