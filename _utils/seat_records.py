"""
Everything the tc master's store holds about one seat, for retiring it.

The inventory tables belong to ``tc_assets`` (and may grow): instead of a
fixed list, every table with a ``seat`` or ``sender`` column is cleared for the
seat, so a history table added later is retired too. Enrollment tables keep
their own rules (``enroll_store.forget``); the audit log is never deleted.
"""

import deskfleet_store as store

SEAT_COLUMNS = ("seat", "sender")
KEEP_PREFIX = ("enroll_", "sqlite_", "schema_version")


def _tables(conn):
    found = []
    for name, cols in sorted(store.table_columns(conn).items()):
        if name.startswith(KEEP_PREFIX):
            continue
        for col in SEAT_COLUMNS:
            if col in cols:
                found.append((name, col))
    return found


def count(conn, seat):
    """``{table: rows}`` held about ``seat`` (what a retire would delete)."""
    out = {}
    for table, col in _tables(conn):
        n = conn.execute(f'SELECT COUNT(*) FROM "{table}" WHERE "{col}" = ?', (seat,)).fetchone()[0]
        if n:
            out[table] = out.get(table, 0) + n
    return out


def delete(conn, seat):
    """Delete every row about ``seat`` in one transaction; returns ``{table: rows deleted}``."""
    out = {}
    with store.transaction(conn):
        for table, col in _tables(conn):
            n = conn.execute(f'DELETE FROM "{table}" WHERE "{col}" = ?', (seat,)).rowcount
            if n:
                out[table] = out.get(table, 0) + n
    return out
