"""
The store on a real PostgreSQL (``tests/support/postgres.py``): what only that backend
has. Faults come from the real server: a session killed by the server (unreachable), a
tablespace on a 256 KiB tmpfs (full), another session inside ``BEGIN IMMEDIATE`` (the
write lock). The shared behaviour runs on both backends in the stores' own tests.
"""

import os
import subprocess
import threading
import time

import pytest

import deskfleet_store as store
import deskfleet_store_pg as pg
import escrow_store
import tc_assets
from tests.support.postgres import PG_USER, drop_schema, new_schema

pytestmark = pytest.mark.unit
MIGRATIONS = dict(escrow_store.MIGRATIONS)


@pytest.fixture
def dsn(postgres_server):  # noqa: F811
    schema = new_schema(postgres_server)
    try:
        yield postgres_server.dsn(schema)
    finally:
        drop_schema(postgres_server, schema)


INSERT = "INSERT INTO password_audit (at, who, action, vm, account, outcome) VALUES (?, 'ops', 'read', ?, 'a', 'ok')"


def _audit(conn, vm, reason=None):
    escrow_store.add_audit(conn, who="ops", action="read", vm=vm, account="localadmin", outcome="ok", reason=reason)


def test_the_schema_uses_8_byte_numbers_so_epoch_seconds_and_seqs_keep_their_precision(dsn):
    conn = store.connect(dsn, tc_assets.MIGRATIONS)
    at, seq = 1764551234.123456, 2**63 - 1
    conn.execute("INSERT INTO ingest_seq (seat, epoch, seq) VALUES (?, ?, ?)", ("tc-1", 1, seq))
    conn.execute("INSERT INTO ingest_rejects (at, reason, detail) VALUES (?, 'x', 'y')", (at,))
    assert conn.execute("SELECT seq FROM ingest_seq").fetchone()["seq"] == seq
    assert conn.execute("SELECT at FROM ingest_rejects").fetchone()[0] == at
    conn.close()


def test_rows_placeholders_and_aggregates_read_like_sqlite(dsn):
    conn = store.connect(dsn, {"t": ["CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER, f REAL)"]})
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [("a%?", 1, 0.5), ("b", 2, True)])
    row = conn.execute("SELECT SUM(n) AS total, AVG(n) AS mean, '100%' AS pct FROM t WHERE k <> ?", ("z",)).fetchone()
    assert (row["TOTAL"], row["mean"], row[2]) == (3, 1.5, "100%") and type(row["total"]) is int
    assert dict(conn.execute("SELECT * FROM t WHERE k = :k", {"k": "a%?"}).fetchone()) == {"k": "a%?", "n": 1, "f": 0.5}
    assert conn.execute("SELECT f FROM t WHERE k = 'b'").fetchone()[0] == 1.0  # a bool is stored as 1
    assert conn.execute("UPDATE t SET n = n + 1").rowcount == 2
    conn.close()


def test_two_writers_are_serialised_like_sqlites_begin_immediate(dsn):
    first, second = store.connect(dsn, MIGRATIONS), store.connect(dsn, MIGRATIONS)
    order = []

    def other_writer():
        with store.transaction(second):
            order.append("second in")
            second.execute(INSERT, (2, "desk-2"))

    with store.transaction(first):
        first.execute(INSERT, (1, "desk-1"))
        thread = threading.Thread(target=other_writer)
        thread.start()
        time.sleep(0.3)  # not the proof: the order below is; this only gives the thread a chance to race
        order.append("first commits")
    thread.join(30)
    assert order == ["first commits", "second in"]
    assert [r["vm"] for r in escrow_store.audit_log(first)] == ["desk-2", "desk-1"]
    first.close()
    second.close()


def test_a_write_past_the_lock_timeout_is_a_locked_store_error_and_reads_go_on(dsn):
    holder = store.connect(dsn, MIGRATIONS)
    _audit(holder, "desk-0")
    holder.execute("BEGIN IMMEDIATE")
    conn = store.connect(dsn, MIGRATIONS, timeout=0.5)
    try:
        assert escrow_store.audit_log(conn)[0]["vm"] == "desk-0"
        with pytest.raises(store.StoreError) as info:
            _audit(conn, "desk-1")
        assert info.value.fault == "locked" and "lock" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _audit(conn, "desk-1")  # the same connection writes once the lock is free
    conn.close()


def test_a_session_the_server_drops_is_an_unreachable_store_error(dsn, postgres_server):  # noqa: F811
    conn = store.connect(dsn, MIGRATIONS)
    pid = conn.raw.info.backend_pid
    with postgres_server.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(store.StoreError) as info:
        escrow_store.audit_log(conn)
    assert info.value.fault == "unreachable" and info.value.path == pg.redact(dsn)
    _audit(conn, "desk-after")  # the next call reconnects (a server restart or failover is not forever)
    assert escrow_store.audit_log(conn)[0]["vm"] == "desk-after" and conn.raw.info.backend_pid != pid
    conn.close()


def test_a_server_that_is_not_there_is_an_unreachable_store_error(tmp_path):
    with pytest.raises(store.StoreError) as info:
        store.connect(f"postgresql://deskfleet@/deskfleet?host={tmp_path}&port=5999", MIGRATIONS, timeout=2)
    assert info.value.fault == "unreachable" and str(tmp_path) in str(info.value)


def test_errors_and_alerts_never_carry_the_password(tmp_path):
    secret = "s3cr3t-pw"
    with pytest.raises(store.StoreError) as info:
        store.connect(f"postgresql://deskfleet:{secret}@/deskfleet?host={tmp_path}&port=5999", {}, timeout=2)
    assert secret not in str(info.value) and secret not in info.value.path
    assert pg.redact(f"postgresql://u@/d?host=/x&password={secret}&port=1") == "postgresql://u@/d?host=/x&port=1"


@pytest.mark.parametrize("value, says", [
    ("mysql://db.example/deskfleet", "unknown scheme"),
    (42, "must be a file path or a postgresql:// DSN"),
    ("postgresql://h/db?sslmode", "not a valid PostgreSQL DSN"),
])
def test_a_bad_db_setting_is_an_error_naming_the_key(value, says):
    with pytest.raises(store.StoreError) as info:
        store.default_path({"cachedir": "/c", "deskfleet": {"tc": {"db": value}}}, "tc")
    assert "deskfleet:tc:db" in str(info.value) and says in str(info.value) and info.value.fault == "config"


def test_open_role_and_the_tc_inventory_use_the_configured_dsn(dsn):
    opts = {"cachedir": "/nonexistent", "deskfleet": {"tc": {"db": dsn}}}
    assert store.default_path(opts, "tc") == dsn and not store.absent(dsn)
    conn = tc_assets.open_store(opts)
    assert conn.backend == "postgresql" and "seats" in store.table_columns(conn)
    conn.close()


def test_guard_turns_a_postgresql_fault_into_an_error_result_and_an_alert(tmp_path):
    sent, context = [], {}
    dsn = f"postgresql://deskfleet@/deskfleet?host={tmp_path}&port=5999"
    namespace = {"__context__": context, "__virtualname__": "demo", "store": store, "dsn": dsn,
                 "__salt__": {"event.send": lambda tag, data: sent.append((tag, data)) or True}}
    exec("def status():\n    store.connect(dsn, {}, timeout=2)\n", namespace)  # noqa: S102
    result = store.guard(namespace["status"])()
    assert result["retcode"] == 1 and result["store_fault"] == "unreachable" and context["retcode"] == 1
    assert sent[0][0] == store.ALERT_TAG and sent[0][1]["fault"] == "unreachable" and sent[0][1]["path"] == dsn


@pytest.fixture
def tiny_tablespace(postgres_server):  # noqa: F811
    """A schema whose tables live in a tablespace on a 256 KiB tmpfs (root mounts, postgres owns it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = os.path.join(postgres_server.root, "tiny")  # inside the server's own temp dir: postgres can reach it
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    schema = new_schema(postgres_server)
    try:
        subprocess.run(["chown", f"{PG_USER}:", str(mnt)], check=True)
        with postgres_server.admin() as admin:
            admin.execute(f"CREATE TABLESPACE {schema} LOCATION '{mnt}'")
        yield postgres_server.dsn(schema) + f"%20-cdefault_tablespace%3D{schema}"
    finally:
        drop_schema(postgres_server, schema)
        with postgres_server.admin() as admin:
            admin.execute(f"DROP TABLESPACE IF EXISTS {schema}")
        subprocess.run(["umount", "-l", mnt], check=True)
        os.rmdir(mnt)


def test_a_full_tablespace_is_a_full_store_error_and_the_rows_before_it_survive(tiny_tablespace):
    conn = store.connect(tiny_tablespace, MIGRATIONS)
    _audit(conn, "desk-first")
    with pytest.raises(store.StoreError) as info:
        for i in range(10_000):
            _audit(conn, f"desk-{i}", reason=os.urandom(1000).hex())
    assert info.value.fault == "full" and "No space left" in str(info.value)
    conn.close()
    conn = store.connect(tiny_tablespace, MIGRATIONS)
    assert escrow_store.audit_log(conn, vm="desk-first")[0]["action"] == "read"
    conn.close()
