"""
The deskfleet store: one SQLite file under the master's cachedir (or one
PostgreSQL database, ``deskfleet:<role>:db: postgresql://...``, see
``deskfleet_store_pg``), shared by every master-side component (thin-client
inventory, rollouts, password escrow). Each component owns its tables and a list of migrations; the applied
version per component is kept in ``schema_version``.

SQLite runs in WAL mode so runners can read while an engine writes. The file
checks below (marker, quick_check) are SQLite's; on PostgreSQL the server owns
durability and a fault is unreachable, locked, full, corrupt or error.

Store damage is refused, never papered over: the first open writes a marker
beside the file (``<file>.id``: the store's id and creation time, also kept in
the store's ``store_meta``). A store that is missing or empty (0 bytes) while
its marker exists, that fails ``PRAGMA quick_check``, or whose id differs from
the marker's, raises :class:`StoreError` naming the path and the fault; so does
a write that finds the store locked past the busy timeout or the disk full.

Error rule: ``_utils`` raise (:class:`StoreError`); runners return
``{"error": ..., "retcode": 1}`` through :func:`guard`, which also fires
``deskfleet/alert/store`` on the master bus.
"""

import functools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

# Imported with this module: Salt puts utils_dirs on sys.path only while it loads a runner or
# engine, so an import at call time fails on a real master ("No module named deskfleet_store_pg").
try:
    import deskfleet_store_pg as _pg
except ImportError as _exc:  # psycopg (or libpq) missing: only a postgresql:// store needs them
    _pg, _PG_MISSING = None, str(_exc)

DEFAULT_NAME = "deskfleet.sqlite"
DEFAULT_TIMEOUT = 30.0  # seconds a write waits for another writer's lock
ALERT_TAG = "deskfleet/alert/store"
MARKER_SUFFIX = ".id"


class StoreError(sqlite3.DatabaseError):
    """
    The store is damaged, missing, locked, full or newer than this code. Names the
    path and the fault. A ``sqlite3.DatabaseError``, so callers that catch SQLite's
    errors (the ingest engine's retry) still do.
    """

    def __init__(self, message, path=None, fault="error"):
        super().__init__(message)
        self.path = path
        self.fault = fault


class _Connection(sqlite3.Connection):
    """A connection that knows its path and turns SQLite faults into :class:`StoreError`."""

    path = None
    backend = "sqlite"

    @staticmethod
    def ddl(statement):
        return statement  # migrations are written in SQLite's types

    def durable(self):
        self.execute("PRAGMA synchronous=FULL")

    def table_columns(self):
        """``{table: {column, ...}}`` of the store (SQLite's own tables left out)."""
        out = {}
        for (name,) in self.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall():
            out[name] = {row[1] for row in self.execute(f'PRAGMA table_info("{name}")').fetchall()}
        return out

    def execute(self, *args, **kwargs):
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.Error as exc:
            raise fault_of(exc, self.path) from exc

    def executemany(self, *args, **kwargs):
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.Error as exc:
            raise fault_of(exc, self.path) from exc


def fault_of(exc, path):
    """A :class:`StoreError` for a SQLite fault (locked, full, corrupt, I/O); other errors pass through."""
    if isinstance(exc, (StoreError, sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)):
        return exc  # the caller's data or code, not the store
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        fault, hint = "locked", "another process holds a write lock on it; retry later, find the holder (fuser)"
    elif "full" in lowered:
        fault, hint = "full", "the disk is full; free space on that filesystem"
    elif "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
        fault, hint = "corrupt", "restore the store from a backup"
    else:
        fault, hint = "error", "see the master log"
    return StoreError(f"deskfleet store {path}: {text} ({fault}: {hint})", path, fault)


def default_path(opts, role):
    """
    ``deskfleet:<role>:db`` from the master config (a file path, or a
    ``postgresql://`` DSN), else ``<cachedir>/deskfleet/deskfleet.sqlite``.
    A value that is neither raises :class:`StoreError` naming the key.
    """
    configured = ((opts.get("deskfleet") or {}).get(role) or {}).get("db")
    if configured is None or configured == "":
        return os.path.join(opts["cachedir"], "deskfleet", DEFAULT_NAME)
    key = f"deskfleet:{role}:db"
    if not isinstance(configured, str):
        raise StoreError(f"{key} must be a file path or a postgresql:// DSN, got {type(configured).__name__}",
                         key, "config")
    if "://" in configured.split("?", 1)[0] and not _pg_dsn(configured):
        raise StoreError(f"{key}: unknown scheme in {configured.split('://', 1)[0]!r}://...: use a file path"
                         " (SQLite) or postgresql://user@host:port/dbname", key, "config")
    if _pg_dsn(configured):
        pg = _pg_module(key)
        try:
            pg.check_dsn(configured)
        except ValueError as exc:
            raise StoreError(f"{key}: not a valid PostgreSQL DSN ({pg.redact(configured)}): {exc}",
                             key, "config") from None
    return configured


def _pg_module(where):
    if _pg is None:
        raise StoreError(f"{where}: a PostgreSQL store needs the psycopg driver ({_PG_MISSING}):"
                         " pip install -r requirements.lock", where, "config")
    return _pg


def _pg_dsn(path):
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def absent(path):
    """True when no store was ever created at ``path`` (a file store; a server store is never absent)."""
    return not _pg_dsn(path) and not os.path.exists(path) and not os.path.exists(marker_path(path))


def timeout_of(opts, role):
    """``deskfleet:<role>:db_timeout`` (seconds a write waits for a lock), default 30."""
    value = ((opts.get("deskfleet") or {}).get(role) or {}).get("db_timeout")
    return DEFAULT_TIMEOUT if value is None else float(value)


def open_role(opts, role, migrations):
    """The store a master of ``role`` uses, with its configured path and lock timeout."""
    return connect(default_path(opts, role), migrations, timeout=timeout_of(opts, role))


def marker_path(path):
    return path + MARKER_SUFFIX


def _read_marker(path):
    try:
        with open(marker_path(path), encoding="utf-8") as fh:
            marker = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"deskfleet store {path}: its marker {marker_path(path)} is unreadable: {exc}",
                         path, "marker") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("store_id"), str):
        raise StoreError(f"deskfleet store {path}: its marker {marker_path(path)} is damaged", path, "marker")
    return marker


def _check_presence(path, marker):
    if marker is None:
        return
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(marker.get("created_at") or 0))
    aside = (f"restore it from a backup; to start an EMPTY store instead (escrow, audit and history lost)"
             f" move {path} and {marker_path(path)} aside")
    if not os.path.exists(path):
        raise StoreError(f"deskfleet store {path} is missing, but a store was created there at {created}"
                         f" (marker {marker_path(path)}): {aside}", path, "missing")
    if os.path.getsize(path) == 0:
        raise StoreError(f"deskfleet store {path} is empty (0 bytes), but a store was created there at {created}:"
                         f" it was truncated; {aside}", path, "truncated")


def connect(path, migrations, timeout=DEFAULT_TIMEOUT):
    """
    Open (creating if needed) the store at ``path`` and bring each component in
    ``migrations`` (``{component: [step_sql, ...]}``) up to date. Step N
    (1-based) is applied once, in its own transaction, with the version bump.
    Raises :class:`StoreError` on any damage (see the module docstring).
    ``path`` may be a ``postgresql://`` DSN (:mod:`deskfleet_store_pg`).
    """
    if _pg_dsn(path):
        return _connect_pg(path, migrations, timeout)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    marker = _read_marker(path)
    _check_presence(path, marker)
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, factory=_Connection)
    except sqlite3.Error as exc:
        raise fault_of(exc, path) from exc
    conn.path = path
    try:
        _open_checks(conn, path, timeout)
        os.chmod(path, 0o600)
        conn.row_factory = sqlite3.Row
        store_id = _store_id(conn)
        if marker is not None and marker["store_id"] != store_id:
            raise StoreError(f"deskfleet store {path} is not the store its marker {marker_path(path)} names"
                             f" ({store_id} != {marker['store_id']}): it was replaced; restore the original",
                             path, "replaced")
        for component, steps in migrations.items():
            _migrate(conn, path, component, steps)
        if marker is None:
            write_atomic(marker_path(path), json.dumps({"store_id": store_id, "created_at": time.time()}), 0o600)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_pg(dsn, migrations, timeout):
    conn = _pg_module("deskfleet store").connect(dsn, timeout, StoreError)
    try:
        _store_id(conn)
        for component, steps in migrations.items():
            _migrate(conn, conn.path, component, steps)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_checks(conn, path, timeout):
    # Switching a fresh store to WAL while another process creates it can be refused at once
    # (SQLite skips the busy handler where waiting could deadlock): retry up to the lock timeout.
    give_up = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            break
        except StoreError as exc:
            if exc.fault == "locked" and time.monotonic() < give_up:
                time.sleep(0.05)
                continue
            raise StoreError(f"cannot open the deskfleet store at {path}: {exc}", path, exc.fault) from exc
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:  # raised while fetching, past _Connection.execute
        problems = [str(exc)]
    if problems != ["ok"]:
        raise StoreError(f"deskfleet store {path} is damaged (quick_check: {'; '.join(problems)[:300]}):"
                         " restore it from a backup", path, "corrupt")


def _store_id(conn):
    if "store_meta" in conn.table_columns():
        found = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        if found is not None:
            return found[0]
    with transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO store_meta (key, value) VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING",
                     (secrets.token_hex(8),))
        return conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()[0]


def _version(conn, component):
    row = conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    return row[0] if row else 0


def _migrate(conn, path, component, steps):
    # Read first without a lock (an up-to-date store opens while another process writes),
    # then again inside the write lock: two processes may open a fresh store at once.
    if _version(conn, component) == len(steps):
        return
    while True:
        with transaction(conn):
            have = _version(conn, component)
            if have > len(steps):
                raise StoreError(
                    f"{path}: schema of {component} is at version {have}, this code knows "
                    f"{len(steps)}; upgrade deskfleet before using this store", path, "newer"
                )
            if have == len(steps):
                return
            for statement in _split(steps[have]):
                conn.execute(conn.ddl(statement))
            conn.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?)"
                " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, have + 1),
            )


def durable(conn):
    """Every commit on disk when it returns: SQLite ``synchronous=FULL``; PostgreSQL's default, made sure."""
    conn.durable()


def table_columns(conn):
    """``{table: {column, ...}}`` of the store on either backend."""
    return conn.table_columns()


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
        if exc_type:
            try:
                self.conn.execute("ROLLBACK")
            except (StoreError, sqlite3.Error):
                pass  # the failed statement may have rolled back already; keep the first error
            return False
        self.conn.execute("COMMIT")
        return False


def guard(func):
    """
    Runner glue, the one place a store fault becomes a runner result:
    :class:`StoreError` → ``{"error": ..., "retcode": 1}``, salt-run exit code 1,
    and a ``deskfleet/alert/store`` event (path, fault, runner) for ops to route.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        name = (func.__globals__.get("__func_alias__") or {}).get(func.__name__, func.__name__)  # list_ -> list
        where = f"{func.__globals__.get('__virtualname__')}.{name}"
        try:
            return func(*args, **kwargs)
        except StoreError as exc:
            return store_fault(func.__globals__, exc, where)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            # raised while fetching rows (past _Connection.execute): the same faults, path unknown here
            fault = fault_of(exc, "(the deskfleet store)")
            if not isinstance(fault, StoreError):
                raise
            return store_fault(func.__globals__, fault, where)

    return wrapper


def store_fault(dunders, exc, where):
    """The error return for ``exc``; sets the runner's retcode and fires the alert (best effort)."""
    log.error("deskfleet store fault in %s: %s", where, exc)
    result = {"error": str(exc), "retcode": 1, "store_fault": getattr(exc, "fault", "error")}
    context = dunders.get("__context__")
    if context is not None:
        context["retcode"] = 1
    send = (dunders.get("__salt__") or {}).get("event.send") if dunders.get("__salt__") is not None else None
    alert = {"path": getattr(exc, "path", None), "fault": result["store_fault"], "error": str(exc)[:500],
             "runner": where}
    try:
        if send is not None and not send(ALERT_TAG, alert):
            log.error("deskfleet store fault: could not fire %s", ALERT_TAG)
    except Exception:  # pylint: disable=broad-except
        log.exception("deskfleet store fault: could not fire %s", ALERT_TAG)
    return result


def write_atomic(path, data, mode=0o644):
    """Write ``data`` (str or bytes) to ``path`` via a temp file and rename."""
    if isinstance(data, str):
        data = data.encode()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # unique per process AND thread: concurrent first opens of one store must not share a temp file
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
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
