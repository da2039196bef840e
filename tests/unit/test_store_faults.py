"""
Store faults with real faults on the real SQLite file: another process holding
a write transaction, a full filesystem (a 256 KiB tmpfs mounted by the test),
a store truncated to 0 bytes or to half its size, a deleted or replaced store.
Each is refused with a StoreError naming the path and the fault; nothing is
re-created over history. And the runner glue that turns them into results.
"""

import os
import subprocess

import pytest

import deskfleet_store as store
import escrow
import escrow_store
import rollout_engine
import rollout_store
from tests.support.postgres import WriteLock

pytestmark = pytest.mark.unit
MIGRATIONS = {**escrow_store.MIGRATIONS, **rollout_store.MIGRATIONS}


def fresh(path):
    conn = store.connect(str(path), MIGRATIONS)
    escrow_store.add_audit(conn, who="ops", action="rotate", vm="desk-1", account="localadmin", outcome="ok")
    conn.close()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "deskfleet" / "deskfleet.sqlite"
    fresh(path)
    return path


def test_the_first_open_writes_a_marker_with_the_store_id(db):
    marker = store._read_marker(str(db))  # pylint: disable=protected-access
    conn = store.connect(str(db), MIGRATIONS)
    assert conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()[0] == marker["store_id"]
    assert oct(os.stat(store.marker_path(str(db))).st_mode & 0o777) == "0o600"
    conn.close()


def test_a_store_truncated_to_zero_bytes_is_refused_not_recreated(db):
    os.truncate(db, 0)
    with pytest.raises(store.StoreError) as info:
        store.connect(str(db), MIGRATIONS)
    assert info.value.fault == "truncated" and str(db) in str(info.value) and "0 bytes" in str(info.value)
    assert os.path.getsize(db) == 0  # nothing was written over it


def test_a_deleted_store_is_refused(db):
    os.unlink(db)
    with pytest.raises(store.StoreError) as info:
        store.connect(str(db), MIGRATIONS)
    assert info.value.fault == "missing" and not db.exists()


def test_a_half_truncated_store_is_refused_without_a_traceback_elsewhere(db):
    conn = store.connect(str(db), MIGRATIONS)
    with store.transaction(conn):
        for i in range(400):
            conn.execute("INSERT INTO password_audit (at, who, action, vm, account, outcome, reason)"
                         " VALUES (?, 'ops', 'read', ?, 'localadmin', 'ok', ?)", (i, f"desk-{i}", "x" * 200))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.truncate(db, os.path.getsize(db) // 2)
    with pytest.raises(store.StoreError) as info:
        store.connect(str(db), MIGRATIONS)
    assert info.value.fault == "corrupt" and str(db) in str(info.value)


def test_a_damaged_data_page_is_found_when_the_store_opens(db):
    conn = store.connect(str(db), MIGRATIONS)
    with store.transaction(conn):
        for i in range(400):
            conn.execute("INSERT INTO password_audit (at, who, action, vm, account, outcome, reason)"
                         " VALUES (?, 'ops', 'read', ?, 'localadmin', 'ok', ?)", (i, f"desk-{i}", "x" * 200))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:  # scribble over a page near the end (audit rows), not the schema
        fh.seek((pages - 3) * page)
        fh.write(os.urandom(page))
    with pytest.raises(store.StoreError) as info:
        store.connect(str(db), MIGRATIONS)
    assert info.value.fault == "corrupt" and "quick_check" in str(info.value)


def test_a_replaced_store_is_refused(db, tmp_path):
    other = tmp_path / "other.sqlite"
    fresh(other)
    os.replace(other, db)
    with pytest.raises(store.StoreError) as info:
        store.connect(str(db), MIGRATIONS)
    assert info.value.fault == "replaced"


def _refuse_wal(monkeypatch, times):
    """SQLite refusing the WAL switch at once (no busy handler: it could deadlock), ``times`` times.
    Seen for real when processes open a fresh store together (about 1 in 150 rounds of 6)."""
    real, refused = store._Connection.execute, []  # pylint: disable=protected-access

    def execute(self, sql, *args):
        if sql.startswith("PRAGMA journal_mode") and len(refused) < times:
            refused.append(sql)
            raise store.fault_of(store.sqlite3.OperationalError("database is locked"), self.path)
        return real(self, sql, *args)

    monkeypatch.setattr(store._Connection, "execute", execute)  # pylint: disable=protected-access
    return refused


def test_a_refused_wal_switch_while_another_process_creates_the_store_is_retried(tmp_path, monkeypatch):
    refused = _refuse_wal(monkeypatch, 3)
    conn = store.connect(str(tmp_path / "s.sqlite"), MIGRATIONS, timeout=10)
    assert len(refused) == 3 and conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_wal_switch_refused_past_the_lock_timeout_is_a_locked_store_error(tmp_path, monkeypatch):
    _refuse_wal(monkeypatch, 10**9)
    with pytest.raises(store.StoreError) as err:
        store.connect(str(tmp_path / "s.sqlite"), MIGRATIONS, timeout=0.3)
    assert err.value.fault == "locked" and "cannot open the deskfleet store" in str(err.value)


def test_a_legacy_store_without_a_marker_is_adopted(db):
    os.unlink(store.marker_path(str(db)))
    store.connect(str(db), MIGRATIONS).close()
    assert os.path.exists(store.marker_path(str(db)))
    conn = store.connect(str(db), MIGRATIONS)
    assert escrow_store.audit_log(conn)[0]["vm"] == "desk-1"  # history kept
    conn.close()


@pytest.fixture
def any_db(store_db):
    """A store with one audit row, on each backend (a SQLite path or a PostgreSQL DSN)."""
    fresh(store_db)
    return store_db


@pytest.fixture
def locked(any_db):
    """Another writer holding the store's write lock until the test ends."""
    holder = WriteLock(any_db).grab()
    try:
        yield any_db
    finally:
        holder.release()


def test_a_locked_store_opens_for_reading_and_refuses_writes_with_a_store_error(locked):
    conn = store.connect(str(locked), MIGRATIONS, timeout=0.5)
    try:
        assert escrow_store.audit_log(conn)[0]["vm"] == "desk-1"  # readers are not blocked (WAL)
        with pytest.raises(store.StoreError) as info:
            escrow_store.add_audit(conn, who="ops", action="read", vm="desk-2", account="localadmin", outcome="ok")
        assert info.value.fault == "locked" and str(locked) in str(info.value)
    finally:
        conn.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs mounted inside the test's temp dir (root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_filesystem_is_a_store_error_and_the_rows_before_it_survive(tiny_fs):
    path = tiny_fs / "deskfleet.sqlite"
    conn = store.connect(str(path), MIGRATIONS)
    escrow_store.add_audit(conn, who="ops", action="rotate", vm="desk-first", account="localadmin", outcome="ok")
    with pytest.raises(store.StoreError) as info:
        for i in range(10_000):
            escrow_store.add_audit(conn, who="ops", action="read", vm=f"desk-{i}", account="localadmin", outcome="ok",
                             reason="x" * 2000)
    assert info.value.fault == "full" and str(path) in str(info.value)
    conn.close()
    conn = store.connect(str(path), MIGRATIONS)
    assert escrow_store.audit_log(conn, vm="desk-first")[0]["action"] == "rotate"
    conn.close()


# ---- the runner glue ------------------------------------------------------------------------


def test_guard_turns_a_store_error_into_an_error_result_a_retcode_and_an_alert(db):
    sent = []
    context = {}

    # a runner's module globals, as Salt's loader fills them
    namespace = {"__context__": context, "__salt__": {"event.send": lambda tag, data: sent.append((tag, data)) or True},
                 "__virtualname__": "demo", "store": store, "os": os, "db": db, "MIGRATIONS": MIGRATIONS}
    exec("def status():\n    os.truncate(db, 0)\n    store.connect(str(db), MIGRATIONS)\n", namespace)  # noqa: S102
    result = store.guard(namespace["status"])()
    assert result["retcode"] == 1 and result["store_fault"] == "truncated" and str(db) in result["error"]
    assert context["retcode"] == 1
    # the alert carries the error bounded to 500 characters (an event, not a log): a long path cuts it there
    assert sent == [(store.ALERT_TAG, {"path": str(db), "fault": "truncated", "error": result["error"][:500],
                                       "runner": "demo.status"})]


def test_a_locked_store_stops_a_rollout_tick_with_a_store_error(any_db):
    """Not one rollout's error among others: the shared store is down, the runner reports it (exit 1, alert)."""
    db = any_db
    conn = store.connect(str(db), MIGRATIONS, timeout=0.5)
    entry = {"key": "demo", "name": "demo", "version": "1", "windows": None, "linux": None}
    rollout_store.create(conn, software="demo", version="1", entry=entry, target="d-*", tgt_type="glob", minions=["d-1"],
                    batch=1, max_fail=0, start=0, end=4e9, now=1)  # fmt: skip
    holder = WriteLock(db).grab()
    try:
        with pytest.raises(store.StoreError) as info:
            rollout_engine.Engine(conn, driver=None, clock=lambda: 100.0).tick()
        assert info.value.fault == "locked"
    finally:
        holder.release()
        conn.close()
