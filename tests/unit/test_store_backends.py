"""
Store code with no store test of its own, on both backends (SQLite file, real PostgreSQL):
the pool keeper's health rows.
"""

import pytest

import deskfleet_store as store
import pool_health

pytestmark = pytest.mark.unit


def test_pool_health_records_failures_recovery_drain_and_shortage(store_db):  # noqa: F811
    db = store.connect(store_db, pool_health.MIGRATIONS)
    try:
        pool_health.record(db, "sales", failures=2, error="No valid host")
        pool_health.record(db, "sales", drained=True, short_since=1000.5)
        pool_health.record(db, "ops")
        health = pool_health.read(db)
        sales = health["sales"]
        assert (sales["failures"], sales["last_error"], sales["drained"], sales["short_since"]) == (
            2, "No valid host", 1, 1000.5)
        assert sales["last_failure"] > 1.7e9  # epoch seconds, kept to the sub-second
        failed_at = sales["last_failure"]
        pool_health.record(db, "sales", failures=0, short_since=None)  # recovered: the last failure stays on record
        sales = pool_health.read(db)["sales"]
        assert (sales["failures"], sales["last_failure"], sales["last_error"], sales["short_since"]) == (
            0, failed_at, "No valid host", None)
        assert health["ops"] == {"pool": "ops", "failures": 0, "last_failure": 0, "last_error": None, "drained": 0,
                                 "short_since": None}
    finally:
        db.close()
