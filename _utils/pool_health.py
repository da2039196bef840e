"""
The pool keeper's memory between passes, in the deskfleet store: failures and backoff, the last
error, drained pools, and since when a pool is short of its target. Servers are never stored:
the cloud is the source of truth for them.
"""

import time

COMPONENT = "vmpool"
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE pool_health (
            pool TEXT PRIMARY KEY,
            failures INTEGER NOT NULL DEFAULT 0,
            last_failure REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            drained INTEGER NOT NULL DEFAULT 0
        )
        """,
        "ALTER TABLE pool_health ADD COLUMN short_since REAL",
    ]
}


def read(db):
    """{pool: {failures, last_failure, last_error, drained, short_since}}."""
    rows = db.execute("SELECT pool, failures, last_failure, last_error, drained, short_since FROM pool_health").fetchall()
    return {r["pool"]: dict(r) for r in rows}


def record(db, pool, failures=None, error=None, drained=None, short_since=False):
    db.execute("INSERT INTO pool_health (pool) VALUES (?) ON CONFLICT(pool) DO NOTHING", (pool,))
    if failures is not None:
        db.execute(
            "UPDATE pool_health SET failures = ?, last_failure = CASE WHEN ? > 0 THEN ? ELSE last_failure END,"
            " last_error = COALESCE(?, last_error) WHERE pool = ?",
            (failures, failures, time.time(), error, pool),
        )
    if drained is not None:
        db.execute("UPDATE pool_health SET drained = ? WHERE pool = ?", (int(drained), pool))
    if short_since is not False:
        db.execute("UPDATE pool_health SET short_since = ? WHERE pool = ?", (short_since, pool))
