"""
The escrow store (vm master): every escrowed ciphertext of every machine, with
its state in the two-phase rotation, and the audit log of reads and rotations.
The crypto is in :mod:`escrow`, the checks of a minion's return in :mod:`escrow_check`; the
rotation protocol in :mod:`escrow_rotation`.
"""

import json
import time

# Salt puts utils_dirs on sys.path while it loads runners.
import deskfleet_store as store
from escrow import EscrowError

DEFAULT_HISTORY = 12  # escrowed ciphertexts kept per machine and account

COMPONENT = "password_escrow"
MIGRATIONS = {
    COMPONENT: [
        # v1: every escrowed ciphertext (history) and the audit log of reads and rotations
        """
        CREATE TABLE password_escrow (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vm TEXT NOT NULL,
            account TEXT NOT NULL,
            rotated_at REAL NOT NULL,
            stored_at REAL NOT NULL,
            fingerprint TEXT NOT NULL,
            length INTEGER NOT NULL,
            max_age_days REAL NOT NULL,
            verified INTEGER,
            platform TEXT,
            jid TEXT,
            envelope TEXT NOT NULL
        );
        CREATE INDEX password_escrow_machine ON password_escrow (vm, account, id);
        CREATE TABLE password_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            salt_user TEXT,
            action TEXT NOT NULL,
            vm TEXT NOT NULL,
            account TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            escrow_id INTEGER,
            key_fingerprint TEXT,
            jid TEXT
        );
        CREATE INDEX password_audit_machine ON password_audit (vm, account, id)
        """,
        # v2: two-phase rotation. A row is written 'pending' (durably) before the machine
        # sets the password, then marked 'in_force'; see STATES.
        """
        ALTER TABLE password_escrow ADD COLUMN state TEXT NOT NULL DEFAULT 'in_force';
        ALTER TABLE password_escrow ADD COLUMN committed_at REAL;
        CREATE INDEX password_escrow_state ON password_escrow (vm, account, state)
        """,
    ]
}
# pending: escrowed, the machine told to set it; in_force: the machine set it; failed: the
# machine refused (still on the previous one); in_doubt: set result unknown; superseded: a
# pending/in-doubt row overtaken by a newer rotation in force.
STATES = ("pending", "in_force", "failed", "in_doubt", "superseded")
DOUBT_STATES = ("pending", "in_doubt")
DEFAULT_IN_DOUBT_AFTER = 600.0  # seconds a pending row may wait for its commit



def open_store(opts):
    """
    The vm master's store (``deskfleet:vm:db`` or ``<cachedir>/deskfleet/deskfleet.sqlite``),
    with ``synchronous=FULL``: an escrow row is on disk (fsync'd WAL) when its commit returns.
    """
    conn = store.open_role(opts, "vm", MIGRATIONS)
    store.durable(conn)
    return conn


def add_escrow(conn, row, jid=None, now=None, keep=DEFAULT_HISTORY, state="in_force"):
    """Store one escrowed ciphertext (``state`` pending or in_force); prune old history. Returns its id."""
    if state not in STATES:
        raise ValueError(f"unknown escrow state {state!r}")
    now = time.time() if now is None else now
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO password_escrow (vm, account, rotated_at, stored_at, fingerprint, length,"
            " max_age_days, verified, platform, jid, envelope, state, committed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (row["vm"], row["account"], row["rotated_at"], now, row["fingerprint"], row["length"],
             row["max_age_days"], row["verified"], row["platform"], jid, row["envelope"], state,
             now if state == "in_force" else None),
        )
        escrow_id = cur.fetchall()[0][0]
        if state == "in_force":
            _supersede(conn, row["vm"], row["account"], row["rotated_at"])
        if keep:
            _prune(conn, row["vm"], row["account"], int(keep))
    return escrow_id


def _supersede(conn, vm, account, rotated_at):
    conn.execute(
        "UPDATE password_escrow SET state = 'superseded' WHERE vm = ? AND account = ? AND rotated_at < ?"
        f" AND state IN ({','.join('?' * len(DOUBT_STATES))})",
        (vm, account, rotated_at, *DOUBT_STATES),
    )


def _prune(conn, vm, account, keep):
    # rows still in doubt and the current password are never pruned
    current = _current_id(conn, vm, account)
    conn.execute(
        "DELETE FROM password_escrow WHERE vm = ? AND account = ? AND state NOT IN ('pending', 'in_doubt')"
        " AND id != ? AND id NOT IN (SELECT id FROM password_escrow WHERE vm = ? AND account = ?"
        " AND state NOT IN ('pending', 'in_doubt') ORDER BY rotated_at DESC, id DESC LIMIT ?)",
        (vm, account, current or -1, vm, account, keep),
    )


def mark(conn, escrow_id, state, verified=None, now=None):
    """Move a pending row to ``in_force`` (superseding older doubts), ``failed`` or ``in_doubt``."""
    if state not in ("in_force", "failed", "in_doubt"):
        raise ValueError(f"cannot mark an escrow row {state!r}")
    now = time.time() if now is None else now
    with store.transaction(conn):
        row = conn.execute("SELECT vm, account, rotated_at, state FROM password_escrow WHERE id = ?",
                           (int(escrow_id),)).fetchone()
        if row is None:
            raise EscrowError(f"no escrow row {escrow_id}")
        conn.execute(
            "UPDATE password_escrow SET state = ?, committed_at = ?, verified = COALESCE(?, verified) WHERE id = ?",
            (state, now if state == "in_force" else None, None if verified is None else int(bool(verified)),
             int(escrow_id)),
        )
        if state == "in_force":
            _supersede(conn, row["vm"], row["account"], row["rotated_at"])


def _meta(row, current_id=None):
    meta = {k: row[k] for k in row.keys() if k != "envelope"}
    if meta.get("verified") is not None:
        meta["verified"] = bool(meta["verified"])
    if current_id is not None:
        meta["current"] = row["id"] == current_id
    return meta


def _current_id(conn, vm, account):
    row = conn.execute(
        "SELECT id FROM password_escrow WHERE vm = ? AND account = ? AND state = 'in_force'"
        " ORDER BY rotated_at DESC, id DESC LIMIT 1",
        (vm, account),
    ).fetchone()
    return row[0] if row else None


def _full(row):
    found = _meta(row)
    found["envelope"] = json.loads(row["envelope"])
    return found


def escrowed(conn, vm, account, escrow_id=None):
    """The password in force for ``vm``/``account`` (or the row ``escrow_id``), with its envelope, or None."""
    if escrow_id is None:
        escrow_id = _current_id(conn, vm, account)
        if escrow_id is None:
            return None
    row = conn.execute(
        "SELECT * FROM password_escrow WHERE vm = ? AND account = ? AND id = ?", (vm, account, int(escrow_id))
    ).fetchone()
    return None if row is None else _full(row)


def candidates(conn, vm, account):
    """
    The passwords ``vm``/``account`` may be on, newest first: rows in doubt
    (pending or in_doubt) newer than the one in force, then the one in force.
    One entry means the machine is not in doubt.
    """
    current = escrowed(conn, vm, account)
    since = current["rotated_at"] if current else -1.0
    doubts = [
        _full(r)
        for r in conn.execute(
            "SELECT * FROM password_escrow WHERE vm = ? AND account = ? AND rotated_at > ?"
            f" AND state IN ({','.join('?' * len(DOUBT_STATES))}) ORDER BY rotated_at DESC, id DESC",
            (vm, account, since, *DOUBT_STATES),
        )
    ]
    return doubts + ([current] if current else [])


def escrowed_at(conn, vm, account, rotated_at):
    """The row (id, state) of the rotation of ``vm``/``account`` at ``rotated_at``, or None."""
    row = conn.execute(
        "SELECT id, state FROM password_escrow WHERE vm = ? AND account = ? AND rotated_at = ?"
        " ORDER BY id DESC LIMIT 1",
        (vm, account, float(rotated_at)),
    ).fetchone()
    return None if row is None else {"id": row["id"], "state": row["state"]}


def history(conn, vm, account):
    """Every kept escrow of ``vm``/``account``, newest first, WITHOUT ciphertexts; ``current`` is in force."""
    rows = conn.execute(
        "SELECT * FROM password_escrow WHERE vm = ? AND account = ? ORDER BY rotated_at DESC, id DESC", (vm, account)
    ).fetchall()
    current = _current_id(conn, vm, account)
    return [_meta(r, current if current is not None else -1) for r in rows]


def add_audit(conn, *, who, action, vm, account, outcome, reason=None, escrow_id=None,
              key_fingerprint=None, salt_user=None, jid=None, now=None):  # fmt: skip
    """Append one audit record (who, when, which machine, what, ok/refused). Returns its id."""
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO password_audit (at, who, salt_user, action, vm, account, outcome, reason,"
            " escrow_id, key_fingerprint, jid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (time.time() if now is None else now, who, salt_user, action, vm, account, outcome, reason,
             escrow_id, key_fingerprint, jid),
        )
        return cur.fetchall()[0][0]


def audit_log(conn, vm=None, action=None, limit=50):
    """Audit records, newest first, optionally for one machine and/or action."""
    where, args = [], []
    if vm is not None:
        where.append("vm = ?")
        args.append(vm)
    if action is not None:
        where.append("action = ?")
        args.append(action)
    sql = "SELECT * FROM password_audit" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, args + [int(limit)])]


def _doubts(conn, vm, account, now, in_doubt_after):
    """Rows of ``vm`` in doubt: marked so, or pending for longer than ``in_doubt_after`` seconds."""
    return [
        c for c in candidates(conn, vm, account)
        if c["state"] == "in_doubt" or (c["state"] == "pending" and now - c["stored_at"] >= in_doubt_after)
    ]


def due(conn, vms, account, now, current_fingerprint=None, max_age_days=None,
        in_doubt_after=DEFAULT_IN_DOUBT_AFTER):  # fmt: skip
    """
    Which of ``vms`` need a rotation of ``account``: in doubt (a rotation whose
    set result is unknown: the machine may be on either escrowed password),
    never escrowed, older than their policy's ``max_age_days`` (or the override),
    or sealed to an escrow key that is no longer the current one. Returns
    ``{vm: {...}}`` for every vm.
    """
    found = {}
    for vm in sorted(vms):
        doubts = _doubts(conn, vm, account, now, in_doubt_after)
        row = escrowed(conn, vm, account)
        if row is None:
            entry = {"due": True, "reason": "never escrowed", "rotated_at": None}
        else:
            limit = float(max_age_days) if max_age_days is not None else row["max_age_days"]
            age = (now - row["rotated_at"]) / 86400.0
            entry = {"rotated_at": row["rotated_at"], "age_days": round(age, 2), "max_age_days": limit,
                     "escrow_id": row["id"], "verified": row["verified"], "due": False, "reason": None}
            if age >= limit:
                entry.update(due=True, reason=f"older than {limit:g} days")
            elif current_fingerprint and row["fingerprint"] != current_fingerprint:
                entry.update(due=True, reason="sealed to an old escrow key")
        if doubts:
            ids = ", ".join(str(d["id"]) for d in doubts)
            entry.update(due=True, in_doubt=[d["id"] for d in doubts],
                         reason=f"in doubt: set result of escrow id {ids} unknown; password.show lists every candidate")
        found[vm] = entry
    return found
