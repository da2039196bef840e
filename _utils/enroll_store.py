"""
Enrollment records in the deskfleet store: tokens, the keys deskfleet
approved per id, an audit log, and bounded counts of refusals.

Token secrets are kept only while a token is open (the engine needs them to
check a proof); consuming, revoking or expiring a token wipes its secret.
"""

import deskfleet_store as store
import enrollment

COMPONENT = "enrollment"
REFUSALS_KEEP = 5000
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE enroll_tokens (
            token_id TEXT PRIMARY KEY, minion_id TEXT NOT NULL, serial TEXT NOT NULL,
            secret TEXT, replace INTEGER NOT NULL DEFAULT 0,
            issued_by TEXT NOT NULL, issued_at REAL NOT NULL, expires_at REAL NOT NULL,
            state TEXT NOT NULL, closed_at REAL, closed_by TEXT, key_fingerprint TEXT
        );
        CREATE UNIQUE INDEX enroll_tokens_one_open ON enroll_tokens (minion_id) WHERE state = 'issued';
        CREATE TABLE enroll_keys (
            minion_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, serial TEXT,
            how TEXT NOT NULL, token_id TEXT, approved_by TEXT NOT NULL, approved_at REAL NOT NULL
        );
        CREATE TABLE enroll_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL,
            minion_id TEXT, token_id TEXT, fingerprint TEXT, actor TEXT NOT NULL, detail TEXT NOT NULL
        );
        CREATE INDEX enroll_audit_id ON enroll_audit (minion_id);
        CREATE TABLE enroll_refusals (
            minion_id TEXT NOT NULL, fingerprint TEXT NOT NULL, reason TEXT NOT NULL,
            count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
            PRIMARY KEY (minion_id, fingerprint)
        )
        """,
    ]
}
TOKEN_PUBLIC = ("token_id", "minion_id", "serial", "replace", "issued_by", "issued_at", "expires_at",
                "state", "closed_at", "closed_by", "key_fingerprint")  # fmt: skip


def open_store(opts, role):
    return store.connect(store.default_path(opts, role), MIGRATIONS)


def _public(row):
    return {k: row[k] for k in TOKEN_PUBLIC} if row is not None else None


def audit(conn, now, action, actor, detail, minion_id=None, token_id=None, fingerprint=None):
    cur = conn.execute(
        "INSERT INTO enroll_audit (at, action, minion_id, token_id, fingerprint, actor, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (now, action, minion_id, token_id, fingerprint, actor, detail),
    )
    return cur.fetchall()[0][0]


def audit_log(conn, minion_id=None, limit=100):
    sql, args = "SELECT * FROM enroll_audit", []
    if minion_id:
        sql, args = sql + " WHERE minion_id = ?", [minion_id]
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)]).fetchall()
    return [dict(r) for r in rows]


def issue(conn, now, minion_id, serial, actor, ttl, replace=False):
    """Store a new token; returns ``(token, public row)``. One open token per id."""
    token = enrollment.new_token()
    tid = enrollment.token_id(token)
    with store.transaction(conn):
        if conn.execute("SELECT 1 FROM enroll_tokens WHERE minion_id = ? AND state = 'issued'", (minion_id,)).fetchone():
            raise enrollment.EnrollError(f"id {minion_id!r} already has an open token (enroll.revoke it first)")
        conn.execute(
            "INSERT INTO enroll_tokens (token_id, minion_id, serial, secret, replace, issued_by, issued_at,"
            " expires_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'issued')",
            (tid, minion_id, serial, token, int(bool(replace)), actor, now, now + ttl),
        )
        audit(conn, now, "issue", actor, f"serial {serial!r}, valid {ttl:.0f} s" + (", replaces the key" if replace else ""),
              minion_id=minion_id, token_id=tid)  # fmt: skip
    return token, _public(open_token(conn, minion_id, now))


def open_token(conn, minion_id, now):
    """The id's open, unexpired token (with its secret), or None."""
    row = conn.execute(
        "SELECT * FROM enroll_tokens WHERE minion_id = ? AND state = 'issued' AND expires_at > ?", (minion_id, now)
    ).fetchone()
    return dict(row) if row is not None else None


def tokens(conn, state=None, minion_id=None):
    sql, where, args = "SELECT * FROM enroll_tokens", [], []
    if state:
        where, args = [*where, "state = ?"], [*args, state]
    if minion_id:
        where, args = [*where, "minion_id = ?"], [*args, minion_id]
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [_public(r) for r in conn.execute(sql + " ORDER BY issued_at", args).fetchall()]


def close_token(conn, now, token_id, state, actor, fingerprint=None, detail=""):
    """Consume, revoke or expire an open token (wipes its secret). False if it was not open."""
    with store.transaction(conn):
        row = conn.execute("SELECT * FROM enroll_tokens WHERE token_id = ? AND state = 'issued'", (token_id,)).fetchone()
        if row is None:
            return False
        conn.execute(
            "UPDATE enroll_tokens SET state = ?, secret = NULL, closed_at = ?, closed_by = ?, key_fingerprint = ?"
            " WHERE token_id = ?",
            (state, now, actor, fingerprint, token_id),
        )
        audit(conn, now, {"consumed": "enrolled"}.get(state, state), actor, detail or state,
              minion_id=row["minion_id"], token_id=token_id, fingerprint=fingerprint)  # fmt: skip
    return True


def expire_tokens(conn, now):
    rows = conn.execute("SELECT token_id FROM enroll_tokens WHERE state = 'issued' AND expires_at <= ?", (now,)).fetchall()
    return [r["token_id"] for r in rows if close_token(conn, now, r["token_id"], "expired", "enroll", detail="token unused past its ttl")]


def approve(conn, now, minion_id, fingerprint, how, actor, serial=None, token_id=None):
    conn.execute(
        "INSERT INTO enroll_keys (minion_id, fingerprint, serial, how, token_id, approved_by, approved_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(minion_id) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " serial = excluded.serial, how = excluded.how, token_id = excluded.token_id,"
        " approved_by = excluded.approved_by, approved_at = excluded.approved_at",
        (minion_id, fingerprint, serial, how, token_id, actor, now),
    )


def approved(conn, minion_id):
    row = conn.execute("SELECT * FROM enroll_keys WHERE minion_id = ?", (minion_id,)).fetchone()
    return dict(row) if row is not None else None


def protected_ids(conn, now):
    """Ids whose pending keys are never left for ops: an open token, or a key deskfleet approved."""
    rows = conn.execute(
        "SELECT minion_id FROM enroll_tokens WHERE state = 'issued' AND expires_at > ?"
        " UNION SELECT minion_id FROM enroll_keys",
        (now,),
    ).fetchall()
    return {r["minion_id"] for r in rows}


def refused(conn, now, minion_id, fingerprint, reason):
    """Count a refusal per (id, key); bounded, so a flood of keys cannot grow the store without end."""
    conn.execute(
        "INSERT INTO enroll_refusals (minion_id, fingerprint, reason, count, first_at, last_at) VALUES (?, ?, ?, 1, ?, ?)"
        " ON CONFLICT(minion_id, fingerprint) DO UPDATE SET count = enroll_refusals.count + 1, reason = excluded.reason,"
        " last_at = excluded.last_at",
        (str(minion_id)[:128], fingerprint or "-", reason[:300], now, now),
    )
    conn.execute(
        "DELETE FROM enroll_refusals WHERE (minion_id, fingerprint) IN (SELECT minion_id, fingerprint"
        " FROM enroll_refusals ORDER BY last_at DESC LIMIT 9223372036854775807 OFFSET ?)",
        (REFUSALS_KEEP,),
    )


def refusals(conn, minion_id=None, limit=100):
    sql, args = "SELECT * FROM enroll_refusals", []
    if minion_id:
        sql, args = sql + " WHERE minion_id = ?", [minion_id]
    return [dict(r) for r in conn.execute(sql + " ORDER BY last_at DESC LIMIT ?", [*args, int(limit)]).fetchall()]


def forget(conn, now, minion_id, actor):
    """Retire an id's enrollment: revoke its open token, drop its approved key and refusals (audit stays)."""
    revoked = [t["token_id"] for t in tokens(conn, state="issued", minion_id=minion_id)]
    for tid in revoked:
        close_token(conn, now, tid, "revoked", actor, detail="seat retired")
    with store.transaction(conn):
        had = conn.execute("DELETE FROM enroll_keys WHERE minion_id = ?", (minion_id,)).rowcount
        conn.execute("DELETE FROM enroll_refusals WHERE minion_id = ?", (minion_id,))
    return {"tokens_revoked": revoked, "approved_key": bool(had)}

