"""
Rollouts in the deskfleet store (vm master): the tables, creating a rollout with its frozen
minion list, summaries, listing, cancelling, and which rollouts are due. The lease columns
are used by ``rollout_lease``; the state machine is ``rollout_engine``.
"""

import json
import secrets
import time

# Salt puts utils_dirs on sys.path while it loads runners.
import deskfleet_store as store
import rollout_schedule

COMPONENT = "rollouts"

MIGRATIONS = {
    COMPONENT: [
        # v1
        """
        CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            software TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT,
            entry TEXT NOT NULL,
            target TEXT NOT NULL,
            tgt_type TEXT NOT NULL,
            batch TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            max_fail TEXT NOT NULL,
            fail_limit INTEGER NOT NULL,
            start_at REAL NOT NULL,
            end_at REAL NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('scheduled', 'running', 'completed', 'halted', 'expired', 'cancelled')),
            reason TEXT,
            created_at REAL NOT NULL,
            created_by TEXT,
            updated_at REAL NOT NULL,
            finished_at REAL,
            lease_owner TEXT,
            lease_until REAL
        );
        CREATE INDEX rollouts_state ON rollouts (state, start_at);
        CREATE TABLE rollout_minions (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            minion TEXT NOT NULL,
            position INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
            batch INTEGER,
            jid TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            dispatched_at REAL,
            finished_at REAL,
            installed TEXT,
            changed INTEGER,
            detail TEXT,
            PRIMARY KEY (rollout_id, minion)
        );
        CREATE INDEX rollout_minions_state ON rollout_minions (rollout_id, state, position);
        CREATE TABLE rollout_batches (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            seq INTEGER NOT NULL,
            batch INTEGER NOT NULL,
            jid TEXT NOT NULL,
            minions TEXT NOT NULL,
            dispatched_at REAL NOT NULL,
            retry INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            PRIMARY KEY (rollout_id, seq)
        )
        """,
        # v2: a return collected after the rollout closed (its window ended) is marked late
        "ALTER TABLE rollout_minions ADD COLUMN late INTEGER NOT NULL DEFAULT 0",
    ]
}

ACTIVE = ("scheduled", "running")
FINAL = ("completed", "halted", "expired", "cancelled")
MINION_STATES = ("pending", "running", "succeeded", "failed", "skipped")


def open_store(opts):
    """Open the vm master's store (path from ``deskfleet:vm:db`` or the cachedir)."""
    return store.open_role(opts, "vm", MIGRATIONS)


def new_id(now):
    return time.strftime("%Y%m%d", time.gmtime(now)) + "-" + secrets.token_hex(3)


def create(conn, *, software, version, entry, target, tgt_type, minions, batch, max_fail, start, end, now,
           sha256=None, created_by=None):
    """Store a validated rollout with its frozen minion list; returns its id."""
    minions = sorted(set(minions))
    size, limit = rollout_schedule.batch_size(batch, len(minions)), rollout_schedule.fail_limit(max_fail, len(minions))
    target_text = target if isinstance(target, str) else json.dumps(target)
    while True:
        rollout_id = new_id(now)
        with store.transaction(conn):
            if conn.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout_id,)).fetchone():
                continue
            conn.execute(
                "INSERT INTO rollouts (id, software, version, sha256, entry, target, tgt_type, batch, batch_size,"
                " max_fail, fail_limit, start_at, end_at, state, created_at, created_by, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'scheduled', ?, ?, ?)",
                (rollout_id, software, version, sha256, json.dumps(entry, sort_keys=True), target_text, tgt_type,
                 str(batch), size, str(max_fail), limit, start, end, now, created_by, now),
            )
            conn.executemany(
                "INSERT INTO rollout_minions (rollout_id, minion, position, state) VALUES (?, ?, ?, 'pending')",
                [(rollout_id, m, i) for i, m in enumerate(minions)],
            )
        return rollout_id


def counts(conn, rollout_id):
    found = dict.fromkeys(MINION_STATES, 0)
    for state, n in conn.execute(
        "SELECT state, COUNT(*) FROM rollout_minions WHERE rollout_id = ? GROUP BY state", (rollout_id,)
    ):
        found[state] = n
    return found


def get(conn, rollout_id):
    """The rollout's row, or None."""
    return conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()


def summary(conn, rollout_id, now=None):
    """A rollout's settings, state and per-state minion counts (None if unknown)."""
    row = get(conn, rollout_id)
    if row is None:
        return None
    found = counts(conn, rollout_id)
    result = {
        "id": row["id"],
        "software": row["software"],
        "version": row["version"],
        "state": row["state"],
        "reason": row["reason"],
        "target": row["target"],
        "tgt_type": row["tgt_type"],
        "batch": row["batch"],
        "batch_size": row["batch_size"],
        "max_fail": row["max_fail"],
        "fail_limit": row["fail_limit"],
        "window": {"start": rollout_schedule.iso(row["start_at"]), "end": rollout_schedule.iso(row["end_at"])},
        "created": rollout_schedule.iso(row["created_at"]),
        "finished": rollout_schedule.iso(row["finished_at"]),
        "total": sum(found.values()),
        "counts": found,
    }
    if row["sha256"]:
        result["sha256"] = row["sha256"]
    late = [r[0] for r in conn.execute(
        "SELECT minion FROM rollout_minions WHERE rollout_id = ? AND late = 1 ORDER BY position", (rollout_id,))]
    if late:
        result["late"] = late  # returns collected after the rollout closed
    if row["state"] in FINAL and found["running"]:
        result["left"] = [r[0] for r in conn.execute(
            "SELECT minion FROM rollout_minions WHERE rollout_id = ? AND state = 'running' ORDER BY position",
            (rollout_id,))]
    if now is not None and row["lease_until"] and row["lease_until"] > now:
        result["leased_by"] = row["lease_owner"]
    return result


def detail(conn, rollout_id, now=None):
    """:func:`summary` plus every minion's progress and every dispatched batch with its job id."""
    result = summary(conn, rollout_id, now)
    if result is None:
        return None
    result["minions"] = {
        r["minion"]: {
            "state": r["state"],
            "batch": r["batch"],
            "jid": r["jid"],
            "attempts": r["attempts"],
            "installed": r["installed"],
            "changed": None if r["changed"] is None else bool(r["changed"]),
            "detail": r["detail"],
            "late": bool(r["late"]),
            "dispatched": rollout_schedule.iso(r["dispatched_at"]),
            "finished": rollout_schedule.iso(r["finished_at"]),
        }
        for r in conn.execute("SELECT * FROM rollout_minions WHERE rollout_id = ? ORDER BY position", (rollout_id,))
    }
    result["batches"] = [
        {
            "seq": r["seq"],
            "batch": r["batch"],
            "jid": r["jid"],
            "minions": json.loads(r["minions"]),
            "dispatched": rollout_schedule.iso(r["dispatched_at"]),
            "retry": bool(r["retry"]),
            **({"error": r["error"]} if r["error"] else {}),
        }
        for r in conn.execute("SELECT * FROM rollout_batches WHERE rollout_id = ? ORDER BY seq", (rollout_id,))
    ]
    return result


def listing(conn, state=None, limit=50):
    """Summaries of the most recent rollouts, newest first."""
    if state is not None and state not in ACTIVE + FINAL:
        raise ValueError(f"state must be one of {', '.join(ACTIVE + FINAL)}, got {state!r}")
    sql = "SELECT id FROM rollouts" + (" WHERE state = ?" if state else "") + " ORDER BY created_at DESC LIMIT ?"
    args = ((state,) if state else ()) + (int(limit),)
    return [summary(conn, r["id"]) for r in conn.execute(sql, args).fetchall()]


def cancel(conn, rollout_id, now, who=None):
    """
    Stop a scheduled or running rollout: pending minions become ``skipped``; a
    batch already running finishes and is still collected by the next ticks.
    """
    with store.transaction(conn):
        row = get(conn, rollout_id)
        if row is None:
            raise ValueError(f"unknown rollout {rollout_id!r}")
        if row["state"] not in ACTIVE:
            raise ValueError(f"rollout {rollout_id} is already {row['state']}")
        reason = "cancelled" + (f" by {who}" if who else "")
        conn.execute(
            "UPDATE rollouts SET state = 'cancelled', reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (reason, now, now, rollout_id),
        )
        conn.execute(
            "UPDATE rollout_minions SET state = 'skipped', detail = 'rollout cancelled', finished_at = ?"
            " WHERE rollout_id = ? AND state = 'pending'",
            (now, rollout_id),
        )
    return summary(conn, rollout_id)


def due(conn, now):
    """Rollouts a tick should look at: active and started, or with jobs still out."""
    return [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM rollouts r WHERE (state IN ('scheduled', 'running') AND start_at <= ?)"
            " OR EXISTS (SELECT 1 FROM rollout_minions m WHERE m.rollout_id = r.id AND m.state = 'running')"
            " ORDER BY start_at, created_at",
            (now,),
        )
    ]
