"""
User-data retrieval on the vm master: the request checks, the quarantine a
received file goes to, and the audit log. Plain Python (the ``userdata`` runner
is the Salt shell); the path rules are ``userdata_path`` (shared with desktops).

A desktop is semi-trusted: its answer (size, sha256) is only compared with what
the master received, hashed and measured itself. A received file is moved into
``<quarantine>/<desktop>/<request>-<name>`` (dirs 0700, file 0600), outside every
file root, so no master ever serves it back.
"""

import hashlib
import os
import re
import stat

import deskfleet_store as store
import userdata_path

COMPONENT = "userdata"
ID_RE = re.compile(r"(?!\.)[\w.@-]{1,128}")
NAME_RE = re.compile(r"[^\w.@+-]")
DEFAULTS = {
    "max_bytes": 50 * 1024 * 1024,  # per file; never above file_recv_max_size
    "timeout": 300,  # seconds the desktop has to read and push the file
    "quarantine": "",  # empty: <cachedir>/deskfleet/userdata-quarantine
    "roots": userdata_path.DEFAULT_ROOTS,
}
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE userdata_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request TEXT NOT NULL, at REAL NOT NULL, sender TEXT NOT NULL, desktop TEXT NOT NULL,
            path TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            size INTEGER, sha256 TEXT, stored TEXT
        );
        CREATE INDEX userdata_audit_desktop ON userdata_audit (desktop, at)
        """
    ]
}


class UserdataError(ValueError):
    """A refused request or answer; ``field`` names what was wrong."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


def _inside(path, parent):
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def settings(raw, cachedir, file_recv_max_mb, served_dirs):
    """The checked ``deskfleet:vm:userdata`` block; ``served_dirs`` are file and pillar roots."""
    out = dict(DEFAULTS, **(raw or {}))
    cap = int(file_recv_max_mb or 0) * 1024 * 1024
    size = out["max_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= cap:
        raise UserdataError("userdata:max_bytes", f"must be an integer in 1..file_recv_max_size ({cap} bytes), got {size!r}")
    if isinstance(out["timeout"], bool) or not isinstance(out["timeout"], int) or not 0 < out["timeout"] <= 3600:
        raise UserdataError("userdata:timeout", f"must be an integer in 1..3600, got {out['timeout']!r}")
    out["quarantine"] = out["quarantine"] or os.path.join(cachedir, "deskfleet", "userdata-quarantine")
    if not os.path.isabs(out["quarantine"]):
        raise UserdataError("userdata:quarantine", "must be an absolute path")
    for served in served_dirs:
        if _inside(out["quarantine"], served) or _inside(served, out["quarantine"]):
            raise UserdataError("userdata:quarantine", f"{out['quarantine']} overlaps the served directory {served}")
    roots = out["roots"]
    if not isinstance(roots, dict) or not all(isinstance(roots.get(f), list) for f in ("windows", "linux")):
        raise UserdataError("userdata:roots", "must map windows and linux to lists of profile roots")
    for flavor in ("windows", "linux"):
        for root in roots[flavor]:
            if not isinstance(root, str) or userdata_path.flavor_of(root) != flavor:
                raise UserdataError("userdata:roots", f"{root!r} is not an absolute {flavor} path")
    return out


def check_request(desktop, path, max_bytes, conf):
    """``{"desktop", "path", "flavor", "roots", "max_bytes"}`` or :class:`UserdataError` naming the field."""
    if not isinstance(desktop, str) or not ID_RE.fullmatch(desktop):
        raise UserdataError("desktop", f"{str(desktop)[:80]!r} is not one desktop's minion id (no globs)")
    try:
        want = userdata_path.check(path, conf["roots"][userdata_path.flavor_of(path)])
    except userdata_path.PathError as exc:
        raise UserdataError(exc.field, str(exc).split(": ", 1)[1]) from None
    cap = conf["max_bytes"]
    if max_bytes is None:
        max_bytes = cap
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 < max_bytes <= cap:
        raise UserdataError("max_bytes", f"must be an integer in 1..{cap} (userdata:max_bytes), got {max_bytes!r}")
    return {"desktop": desktop, "path": want["path"], "flavor": want["flavor"],
            "roots": conf["roots"][want["flavor"]], "max_bytes": max_bytes}


def check_answer(answer):
    """The desktop's claims (``size``, ``sha256``), checked for shape only: they are compared, never trusted."""
    if not isinstance(answer, dict):
        raise UserdataError("answer", f"the desktop answered {str(answer)[:300]}")
    size, sha = answer.get("size"), answer.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UserdataError("answer", f"size {size!r} is not a byte count")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise UserdataError("answer", "sha256 is not 64 hex characters")
    return size, sha


def quarantine(received, quarantine_dir, desktop, request, path, cap, claimed):
    """
    Move ``received`` (what ``cp.push`` left in the master's cache) into the
    quarantine: regular file, at most ``cap`` bytes, same size and sha256 as the
    desktop ``claimed``. Returns ``{"stored", "size", "sha256"}``; refuses otherwise.
    """
    try:
        st = os.lstat(received)
    except FileNotFoundError:
        raise UserdataError("file", "nothing arrived from the desktop (file_recv off, or over file_recv_max_size)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserdataError("file", "what arrived is not a regular file")
    if st.st_size > cap:
        raise UserdataError("file", f"{st.st_size} bytes arrived, over the cap of {cap}")
    base = NAME_RE.sub("_", re.split(r"[\\/]", path)[-1])[:100] or "file"
    folder = os.path.join(quarantine_dir, desktop)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(quarantine_dir, 0o700)
    os.chmod(folder, 0o700)
    stored = os.path.join(folder, f"{request}-{base}")
    digest, size = hashlib.sha256(), 0
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(received, "rb") as src, os.fdopen(fd, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                size += len(chunk)
                digest.update(chunk)
                dst.write(chunk)
        got = (size, digest.hexdigest())
        if size > cap or got != tuple(claimed):
            raise UserdataError("file", f"received {got[0]} bytes sha256 {got[1]}, the desktop claimed {claimed[0]} bytes"
                                        f" sha256 {claimed[1]}")
    except BaseException:
        os.unlink(stored)
        raise
    return {"stored": stored, "size": size, "sha256": got[1]}


def record(conn, at, request, sender, desktop, path, result, detail="", size=None, sha256=None, stored=None):
    """One audit row: every fetch, refused or not."""
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO userdata_audit (request, at, sender, desktop, path, result, detail, size, sha256, stored)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (request, at, sender, str(desktop)[:128], str(path)[:1024], result, str(detail)[:500], size, sha256, stored))


def audit(conn, desktop=None, limit=100):
    """Audit rows, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 100000:
        raise UserdataError("limit", f"must be an integer in 1..100000, got {limit!r}")
    sql, args = "SELECT * FROM userdata_audit", []
    if desktop is not None:
        sql, args = sql + " WHERE desktop = ?", [str(desktop)]
    return [dict(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]
