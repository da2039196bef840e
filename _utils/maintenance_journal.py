"""
The maintenance journal in the deskfleet store: one row per roll, per host and
per step. A step is recorded ``running`` before it runs and ``done``/``failed``
after, so after a master restart the roll resumes at the step in progress and
never repeats a finished one. Plain SQL on either store backend, clock passed in (``now``: epoch s).
"""

import json
import uuid

import deskfleet_store as store
from maintenance import STEPS as STEP_ORDER

COMPONENT = "maintenance"
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE maintenance_rolls (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL, updated REAL NOT NULL,
            state TEXT NOT NULL,
            request TEXT NOT NULL,
            error TEXT
        );
        CREATE TABLE maintenance_hosts (
            roll TEXT NOT NULL, host TEXT NOT NULL, position INTEGER NOT NULL, batch INTEGER NOT NULL,
            state TEXT NOT NULL, step TEXT, error TEXT, info TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (roll, host)
        );
        CREATE TABLE maintenance_steps (
            roll TEXT NOT NULL, host TEXT NOT NULL, step TEXT NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            started REAL, finished REAL, detail TEXT NOT NULL DEFAULT '{}', error TEXT,
            PRIMARY KEY (roll, host, step)
        )
        """
    ]
}
ROLL_STATES = ("running", "stopped", "failed", "aborted", "done")
ACTIVE = ("running", "stopped", "failed")  # may be resumed


class JournalError(Exception):
    """The journal refuses a transition (a finished step again, an unknown roll)."""


def connect(path):
    return store.connect(path, MIGRATIONS)


def _row(row):
    return dict(row) if row is not None else None


def create_roll(db, request, now, roll_id=None):
    """Record a new roll (``request`` validated) with its hosts pending. Refuses while another roll is active."""
    roll_id = roll_id or f"mt-{uuid.uuid4().hex[:10]}"
    with store.transaction(db):
        busy = db.execute(
            f"SELECT id FROM maintenance_rolls WHERE state IN ({','.join('?' * len(ACTIVE))})", ACTIVE
        ).fetchone()
        if busy:
            raise JournalError(f"roll {busy['id']} is not finished: resume or abort it first")
        db.execute(
            "INSERT INTO maintenance_rolls (id, created, updated, state, request) VALUES (?, ?, ?, 'running', ?)",
            (roll_id, now, now, json.dumps(request, sort_keys=True)),
        )
        for position, host in enumerate(request["hosts"]):
            db.execute(
                "INSERT INTO maintenance_hosts (roll, host, position, batch, state) VALUES (?, ?, ?, ?, 'pending')",
                (roll_id, host, position, position // request["batch"]),
            )
    return roll_id


def get_roll(db, roll_id=None):
    """A roll (the newest when ``roll_id`` is None) with its request decoded, or None."""
    if roll_id is None:
        # created ties only under a test clock; updated, then id, decide them the same way on both backends
        row = db.execute("SELECT * FROM maintenance_rolls ORDER BY created DESC, updated DESC, id DESC LIMIT 1").fetchone()
    else:
        row = db.execute("SELECT * FROM maintenance_rolls WHERE id = ?", (roll_id,)).fetchone()
    roll = _row(row)
    if roll:
        roll["request"] = json.loads(roll["request"])
    return roll


def set_roll_state(db, roll_id, state, now, error=None):
    if state not in ROLL_STATES:
        raise JournalError(f"unknown roll state {state}")
    with store.transaction(db):
        db.execute(
            "UPDATE maintenance_rolls SET state = ?, updated = ?, error = ? WHERE id = ?", (state, now, error, roll_id)
        )


def hosts(db, roll_id):
    rows = db.execute("SELECT * FROM maintenance_hosts WHERE roll = ? ORDER BY position", (roll_id,)).fetchall()
    out = []
    for row in rows:
        host = dict(row)
        host["info"] = json.loads(host["info"])
        out.append(host)
    return out


def set_host(db, roll_id, host, now, state=None, error=None, **info):
    """Update a host's state/error and merge ``info`` (desktops left, migrations…) into its record."""
    with store.transaction(db):
        row = db.execute("SELECT info FROM maintenance_hosts WHERE roll = ? AND host = ?", (roll_id, host)).fetchone()
        if row is None:
            raise JournalError(f"host {host} is not in roll {roll_id}")
        merged = dict(json.loads(row["info"]), **info)
        db.execute(
            "UPDATE maintenance_hosts SET state = COALESCE(?, state), error = CASE WHEN ? = 1 THEN ? ELSE error END,"
            " info = ? WHERE roll = ? AND host = ?",
            (state, state is not None, error, json.dumps(merged, sort_keys=True), roll_id, host),
        )
        db.execute("UPDATE maintenance_rolls SET updated = ? WHERE id = ?", (now, roll_id))


def steps(db, roll_id, host=None):
    sql, args = "SELECT * FROM maintenance_steps WHERE roll = ?", [roll_id]
    if host is not None:
        sql, args = sql + " AND host = ?", args + [host]
    out = {}
    rows = db.execute(sql, args).fetchall()
    # a host's steps begin in the plan's order (a re-run updates its row): list them in that order
    position = {name: i for i, name in enumerate(STEP_ORDER)}
    for row in sorted(rows, key=lambda r: (position.get(r["step"], len(position)), r["step"])):
        step = dict(row)
        step["detail"] = json.loads(step["detail"])
        out.setdefault(step["host"], {})[step["step"]] = step
    return out if host is None else out.get(host, {})


def next_step(db, roll_id, host, order):
    """
    The step to run for ``host``: the one in progress (running, or failed and
    being retried) with its recorded detail, else the first not yet done.
    ``(None, None)`` when every step in ``order`` is done.
    """
    done = steps(db, roll_id, host)
    for name in order:
        entry = done.get(name)
        if entry is None or entry["state"] != "done":
            return name, (entry or {}).get("detail") or {}
    return None, None


def begin(db, roll_id, host, step, now, detail=None):
    """Record ``step`` as running (before it runs). A finished step is never begun again."""
    with store.transaction(db):
        row = db.execute(
            "SELECT state, detail FROM maintenance_steps WHERE roll = ? AND host = ? AND step = ?", (roll_id, host, step)
        ).fetchone()
        if row is not None and row["state"] == "done":
            raise JournalError(f"{host}: step {step} of roll {roll_id} is already done")
        merged = dict(json.loads(row["detail"]) if row else {}, **(detail or {}))
        db.execute(
            "INSERT INTO maintenance_steps (roll, host, step, state, attempts, started, detail)"
            " VALUES (?, ?, ?, 'running', 1, ?, ?)"
            " ON CONFLICT(roll, host, step) DO UPDATE SET state = 'running', attempts = maintenance_steps.attempts + 1,"
            " detail = excluded.detail, error = NULL, finished = NULL",
            (roll_id, host, step, now, json.dumps(merged, sort_keys=True)),
        )
        db.execute(
            "UPDATE maintenance_hosts SET state = 'running', step = ?, error = NULL WHERE roll = ? AND host = ?",
            (step, roll_id, host),
        )
        db.execute("UPDATE maintenance_rolls SET updated = ? WHERE id = ?", (now, roll_id))
    return merged


def note(db, roll_id, host, step, detail):
    """Merge ``detail`` into a running step (progress that a resume must see, e.g. the boot id before a reboot)."""
    with store.transaction(db):
        row = db.execute(
            "SELECT detail FROM maintenance_steps WHERE roll = ? AND host = ? AND step = ?", (roll_id, host, step)
        ).fetchone()
        if row is None:
            raise JournalError(f"{host}: step {step} was never begun")
        merged = dict(json.loads(row["detail"]), **detail)
        db.execute(
            "UPDATE maintenance_steps SET detail = ? WHERE roll = ? AND host = ? AND step = ?",
            (json.dumps(merged, sort_keys=True), roll_id, host, step),
        )
    return merged


def finish(db, roll_id, host, step, now, ok=True, detail=None, error=None):
    """Record the end of ``step``: done, or failed with ``error`` (the host then stays failed on that step)."""
    with store.transaction(db):
        row = db.execute(
            "SELECT state, detail FROM maintenance_steps WHERE roll = ? AND host = ? AND step = ?", (roll_id, host, step)
        ).fetchone()
        if row is None or row["state"] != "running":
            raise JournalError(f"{host}: step {step} is not running")
        merged = dict(json.loads(row["detail"]), **(detail or {}))
        db.execute(
            "UPDATE maintenance_steps SET state = ?, finished = ?, detail = ?, error = ?"
            " WHERE roll = ? AND host = ? AND step = ?",
            ("done" if ok else "failed", now, json.dumps(merged, sort_keys=True), error, roll_id, host, step),
        )
        if not ok:
            db.execute(
                "UPDATE maintenance_hosts SET state = 'failed', error = ? WHERE roll = ? AND host = ?",
                (f"{step}: {error}", roll_id, host),
            )
        db.execute("UPDATE maintenance_rolls SET updated = ? WHERE id = ?", (now, roll_id))
    return merged


def summary(db, roll_id):
    """The roll, and per host: state, step, error, info, and each step's state and timings."""
    roll = get_roll(db, roll_id)
    if roll is None:
        raise JournalError(f"no maintenance roll {roll_id}")
    per_step = steps(db, roll["id"])
    out = {k: roll[k] for k in ("id", "state", "created", "updated", "error")}
    out["request"] = roll["request"]
    out["hosts"] = {}
    for host in hosts(db, roll["id"]):
        out["hosts"][host["host"]] = {
            "state": host["state"],
            "batch": host["batch"],
            "step": host["step"],
            "error": host["error"],
            **host["info"],
            "steps": {
                name: {k: s[k] for k in ("state", "attempts", "started", "finished", "error")}
                for name, s in per_step.get(host["host"], {}).items()
            },
        }
    return out
