"""
A real PostgreSQL for the store tests, from the Debian package, in a temp dir.

``postgres_server`` (session): initdb + postgres run as the ``postgres`` system user (the
server refuses root) in a temp dir it owns, listening on a unix socket in that dir only (no
TCP), stopped and removed at the end of the session. Nothing under /etc or
/var/lib/postgresql. A missing binary, user or driver skips with the missing piece named.

``store_db`` (per test, parametrised ``sqlite`` / ``postgresql``): where a test's store lives,
a SQLite file path or a DSN to a fresh schema of its own (dropped after the test).
Both are registered once in ``tests/unit/conftest.py`` (importing them into a test module would give that
module a server of its own).
"""

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

PG_BIN = os.environ.get("DESKFLEET_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
PORT = 5432  # names the socket file only: the server listens on no TCP port
DBNAME = "deskfleet"


def _missing():
    for tool in ("initdb", "postgres"):
        if not os.access(os.path.join(PG_BIN, tool), os.X_OK):
            return f"{PG_BIN}/{tool} not found (apt-get install postgresql-15)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no '{PG_USER}' system user (apt-get install postgresql-15)"
    try:
        import psycopg  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as exc:
        return f"psycopg not importable ({exc}): pip install -r requirements.lock"
    return None


class Server:
    """One running postgres: ``dsn(schema)`` for a client, ``stop()`` to end it."""

    def __init__(self, root):
        self.root, self.sock, self.data = root, os.path.join(root, "sock"), os.path.join(root, "data")
        self.proc, self._log = None, None

    def _as_postgres(self):
        user = pwd.getpwnam(PG_USER)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": self.root,
                "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.root}}

    def start(self, deadline=120.0):
        import psycopg  # pylint: disable=import-outside-toplevel

        user = pwd.getpwnam(PG_USER)
        os.makedirs(self.sock)
        for path in (self.root, self.sock):
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(path, 0o700)
        subprocess.run([f"{PG_BIN}/initdb", "-D", self.data, "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync"], check=True, capture_output=True, **self._as_postgres())
        self._log = open(os.path.join(self.root, "server.log"), "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [f"{PG_BIN}/postgres", "-D", self.data, "-k", self.sock, "-p", str(PORT), "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=self._log, **self._as_postgres())
        give_up = time.monotonic() + deadline
        while True:
            try:
                with psycopg.connect(host=self.sock, port=PORT, user=PG_USER, dbname="postgres",
                                     autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DBNAME}")
                return self
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(f"postgres did not start: {exc}; log: {self.log()[-2000:]}") from exc
                time.sleep(0.2)

    def log(self):
        try:
            with open(os.path.join(self.root, "server.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def dsn(self, schema=None, dbname=DBNAME):
        options = f"&options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://{PG_USER}@/{dbname}?host={self.sock}&port={PORT}{options}"

    def admin(self):
        import psycopg  # pylint: disable=import-outside-toplevel

        return psycopg.connect(self.dsn(), autocommit=True)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown, clients disconnected
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_in(pid, root):
    """True when ``pid`` is a postgres started on ``root``'s data dir (a recycled pid is left alone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return bool(args) and args[0].endswith(b"/postgres") and os.path.join(root, "data").encode() in args


def reap_orphans():
    """Stop and remove servers left by a killed test session (its owner pid is gone); ours only (dfpg- dirs)."""
    for root in glob.glob(os.path.join(tempfile.gettempdir(), "dfpg-*")):
        try:
            with open(os.path.join(root, "owner.pid"), encoding="ascii") as fh:
                if _alive(int(fh.read().strip())):
                    continue
            with open(os.path.join(root, "data", "postmaster.pid"), encoding="ascii") as fh:
                postmaster = int(fh.readline().strip())
        except (OSError, ValueError):
            postmaster = None
        if postmaster and _alive(postmaster) and _runs_in(postmaster, root):
            os.kill(postmaster, signal.SIGINT)
            give_up = time.monotonic() + 60
            while _alive(postmaster) and time.monotonic() < give_up:
                time.sleep(0.1)
        if os.path.exists(os.path.join(root, "owner.pid")):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL 15 in a temp dir for the session (see the module docstring)."""
    missing = _missing()
    if missing:
        pytest.skip(f"PostgreSQL store tests need {missing}")
    reap_orphans()
    server = Server(tempfile.mkdtemp(prefix="dfpg-"))
    with open(os.path.join(server.root, "owner.pid"), "w", encoding="ascii") as fh:
        fh.write(str(os.getpid()))
    try:
        yield server.start()
    finally:
        server.stop()


def new_schema(server):
    name = "t_" + secrets.token_hex(6)
    with server.admin() as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return name


def drop_schema(server, name):
    with server.admin() as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request, tmp_path):
    """A store location per backend: a SQLite path, or a DSN to a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "deskfleet" / "deskfleet.sqlite")
        return
    server = request.getfixturevalue("postgres_server")
    schema = new_schema(server)
    try:
        yield server.dsn(schema)
    finally:
        drop_schema(server, schema)


def raw_connect(location):
    """A plain driver connection (no deskfleet checks) to a store location: sqlite3 or psycopg."""
    if location.startswith("postgresql://"):
        import psycopg  # pylint: disable=import-outside-toplevel

        return psycopg.connect(location, autocommit=True)
    import sqlite3  # pylint: disable=import-outside-toplevel

    return sqlite3.connect(location)


_SQLITE_HOLDER = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
    "sys.stdin.readline(); conn.execute('ROLLBACK')\n"
)


class WriteLock:
    """
    Another writer holding the store's write lock from ``grab()`` to ``release()``: on SQLite
    another process inside ``BEGIN IMMEDIATE`` on the real file; on PostgreSQL another session
    inside the store's ``BEGIN IMMEDIATE`` (its advisory lock).
    """

    def __init__(self, location):
        self.location, self.proc, self.conn = str(location), None, None

    def grab(self):
        if self.location.startswith("postgresql://"):
            import deskfleet_store  # pylint: disable=import-outside-toplevel

            self.conn = deskfleet_store.connect(self.location, {})
            self.conn.execute("BEGIN IMMEDIATE")
            return self
        import sys  # pylint: disable=import-outside-toplevel

        self.proc = subprocess.Popen([sys.executable, "-c", _SQLITE_HOLDER, self.location],  # pylint: disable=consider-using-with
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self

    def release(self):
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(30)
            self.proc, self._log = None, None
