"""
Thin-client inventory: the store's schema and the queries behind the
``tc_inventory`` runner. The way in (guards, batching, the write) is
``_utils/tc_ingest_batch.py``; which events are genuine and which facts are odd
lives in ``_utils/tc_validate.py``.

A seat's status is computed at read time from its last report and the
heartbeat (online, stale, offline): nothing has to run for a silent seat to
turn offline. Plain Python over a store connection, SQLite or PostgreSQL.
"""

import json
import logging

# Salt puts utils_dirs on sys.path while it loads runners and engines.
import deskfleet_store as store
from tc_validate import (  # noqa: F401 - re-exported for the engine, runner, bench and tests
    FACT_SCHEMA,
    MAX_EVENT_BYTES,
    MAX_PAYLOAD_BYTES,
    SIGN_ALGORITHM,
    TAG_MATCH,
    TAG_RE,
    Rejected,
    attribution,
    canonical,
    envelope,
    facts_row,
    pki_verifier,
    verified,
)

log = logging.getLogger(__name__)

COMPONENT = "tc_inventory"
RESENT = ("duplicate", "stale", "replayed")  # validly signed, but the sender is unknown
STATUSES = ("online", "stale", "offline")

MIGRATIONS = {
    COMPONENT: [
        # v1
        """
        CREATE TABLE seats (
            seat TEXT PRIMARY KEY,
            site TEXT, department TEXT, asset_id TEXT,
            serial TEXT, model TEXT, vendor TEXT, bios TEXT,
            iface TEXT, mac TEXT, ips TEXT NOT NULL DEFAULT '[]',
            firmware TEXT, image TEXT, boot_id TEXT, uptime REAL,
            session_target TEXT, session_state TEXT, idle_seconds REAL,
            seq INTEGER NOT NULL, reported_at REAL NOT NULL, last_reason TEXT NOT NULL,
            first_seen REAL NOT NULL, last_seen REAL NOT NULL, last_change REAL
        );
        CREATE INDEX seats_firmware ON seats (firmware);
        CREATE INDEX seats_site ON seats (site);
        CREATE TABLE ingest_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE ingest_rejects (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL, sender TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL
        )
        """,
        # v2: freshness, flags, attributed reject log
        """
        ALTER TABLE seats ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE seats ADD COLUMN flags TEXT NOT NULL DEFAULT '';
        CREATE TABLE ingest_seq (
            seat TEXT PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
            missed INTEGER NOT NULL DEFAULT 0
        );
        ALTER TABLE ingest_rejects ADD COLUMN claimed TEXT;
        ALTER TABLE ingest_rejects ADD COLUMN origin TEXT NOT NULL DEFAULT '';
        CREATE INDEX ingest_rejects_origin ON ingest_rejects (origin, reason, id);
        CREATE TABLE ingest_reject_stats (
            minute INTEGER NOT NULL, sender TEXT NOT NULL, claimed TEXT NOT NULL,
            reason TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (minute, sender, claimed, reason)
        )
        """,
    ]
}

SEAT_COLUMNS = tuple(FACT_SCHEMA) + (
    "seat",
    "seq",
    "epoch",
    "flags",
    "reported_at",
    "last_reason",
    "first_seen",
    "last_seen",
    "last_change",
)


def open_store(opts):
    """Open the tc master's store (path from ``deskfleet:tc:db`` or the cachedir)."""
    return store.connect(store.default_path(opts, "tc"), MIGRATIONS)




# ---- queries -------------------------------------------------------------------


def status_of(last_seen, now, heartbeat, offline_after):
    """online: heard within 1.5 heartbeats; offline: silent for ``offline_after`` heartbeats; stale between."""
    age = now - last_seen
    if age <= 1.5 * heartbeat:
        return "online"
    if age < offline_after * heartbeat:
        return "stale"
    return "offline"


def _present(row, now, heartbeat, offline_after):
    seat = dict(row)
    seat["ips"] = json.loads(seat["ips"] or "[]")
    seat["flags"] = [f for f in (seat["flags"] or "").split(",") if f]
    seat["missed"] = seat["missed"] or 0
    if seat["last_change"] is None:
        seat["last_change"] = seat["first_seen"]
    seat["status"] = status_of(seat["last_seen"], now, heartbeat, offline_after)
    seat["last_seen_ago"] = round(now - seat["last_seen"], 1)
    return seat


_SELECT = "SELECT seats.*, ingest_seq.missed AS missed FROM seats LEFT JOIN ingest_seq USING (seat)"


def seats(conn, now, heartbeat, offline_after, status=None, firmware=None, site=None, idle_over=None):
    """All seats matching every given filter, ordered by seat id."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    where, args = [], []
    if firmware is not None:
        where.append("lower(firmware) = lower(?)")
        args.append(str(firmware))
    if site is not None:
        where.append("lower(site) = lower(?)")
        args.append(str(site))
    if idle_over is not None:
        where.append("idle_seconds >= ?")
        args.append(float(idle_over))
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seat"
    found = [_present(r, now, heartbeat, offline_after) for r in conn.execute(sql, args)]
    return [s for s in found if status is None or s["status"] == status]


def seat(conn, seat_id, now, heartbeat, offline_after):
    row = conn.execute(_SELECT + " WHERE seat = ?", (seat_id,)).fetchone()
    return None if row is None else _present(row, now, heartbeat, offline_after)


def counters(conn):
    return {name: value for name, value in conn.execute("SELECT name, value FROM ingest_counters")}


def recent_rejects(conn, limit=20):
    """Newest sample rows of the reject log, each with its attribution."""
    rows = conn.execute(
        "SELECT at, sender, claimed, reason, detail FROM ingest_rejects ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [dict(r, attribution=attribution(r["sender"], r["claimed"], r["reason"])) for r in rows]


def reject_stats(conn, since=0.0, limit=20):
    """
    Refusals per (sender, claimed seat, reason) since ``since`` (epoch seconds),
    largest first, with the first and last minute seen: who floods, as whom.
    """
    rows = conn.execute(
        "SELECT sender, claimed, reason, SUM(count) AS count, MIN(minute) AS first, MAX(minute) AS last"
        " FROM ingest_reject_stats WHERE minute >= ? GROUP BY sender, claimed, reason"
        " ORDER BY count DESC, sender, claimed, reason LIMIT ?",
        (int(since // 60), limit),
    )
    return [
        {
            "sender": r["sender"] or None,
            "claimed": r["claimed"] or None,
            "reason": r["reason"],
            "count": r["count"],
            "attribution": attribution(r["sender"], r["claimed"], r["reason"]),
            "first_minute": r["first"] * 60,
            "last_minute": r["last"] * 60,
        }
        for r in rows
    ]
