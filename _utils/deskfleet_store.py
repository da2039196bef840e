"""
The deskfleet store: one SQLite file under the master's cachedir, shared by
every master-side component (thin-client inventory, and later rollouts and
password escrow). Each component owns its tables and a list of migrations;
the applied version per component is kept in ``schema_version``.

SQLite runs in WAL mode so runners can read while an engine writes.
"""

import os
import sqlite3

DEFAULT_NAME = "deskfleet.sqlite"


class StoreError(Exception):
    """The store cannot be opened or is newer than this code."""


def default_path(opts, role):
    """
    ``deskfleet:<role>:db`` from the master config, else
    ``<cachedir>/deskfleet/deskfleet.sqlite``.
    """
    configured = ((opts.get("deskfleet") or {}).get(role) or {}).get("db")
    if configured:
        return configured
    return os.path.join(opts["cachedir"], "deskfleet", DEFAULT_NAME)


def connect(path, migrations):
    """
    Open (creating if needed) the store at ``path`` and bring each component in
    ``migrations`` (``{component: [step_sql, ...]}``) up to date. Step N
    (1-based) is applied once, in its own transaction, with the version bump.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the deskfleet store at {path}: {exc}") from exc
    os.chmod(path, 0o600)
    conn.row_factory = sqlite3.Row
    for component, steps in migrations.items():
        _migrate(conn, path, component, steps)
    return conn


def _migrate(conn, path, component, steps):
    # Read the version inside the write lock: two processes may open a fresh store at once.
    while True:
        with transaction(conn):
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
            have = row[0] if row else 0
            if have > len(steps):
                raise StoreError(
                    f"{path}: schema of {component} is at version {have}, this code knows "
                    f"{len(steps)}; upgrade deskfleet before using this store"
                )
            if have == len(steps):
                return
            for statement in _split(steps[have]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?)"
                " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, have + 1),
            )


def _split(script):
    return [s.strip() for s in script.split(";") if s.strip()]


class transaction:  # pylint: disable=invalid-name
    """``with transaction(conn):`` BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def write_atomic(path, data, mode=0o644):
    """Write ``data`` (str or bytes) to ``path`` via a temp file and rename."""
    if isinstance(data, str):
        data = data.encode()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
