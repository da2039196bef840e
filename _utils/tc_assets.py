"""
Thin-client inventory: validation of beacon events, batched ingestion into the
deskfleet store, and the queries behind the ``tc_inventory`` runner.

Everything here is plain Python over a sqlite3 connection, so it is tested
without Salt; the engine and the runner are thin shells around it.

Trust model: the master's event bus does not say which minion fired a beacon
event (a minion chooses the tag and data of its batched events). So each
event carries a signature made with the thin client's own minion key, checked
here against the accepted key in ``<pki_dir>/minions/<id>``. An event is
stored only if the tag's minion id, the payload's seat and the signer agree.
"""

import base64
import ipaddress
import json
import logging
import math
import os
import re
import sqlite3
import time

# Salt puts utils_dirs on sys.path while it loads runners and engines.
import deskfleet_store as store

log = logging.getLogger(__name__)

COMPONENT = "tc_inventory"
# regex (anchored at the start) for the bus subscription; TAG_RE then checks the exact shape
TAG_MATCH = r"salt/beacon/[^/]+/tc_status/"
TAG_RE = re.compile(r"salt/beacon/([^/]{1,128})/tc_status/status")
# thin-client minion ids: a file name in pki_dir/minions, so no path tricks
SENDER_RE = re.compile(r"(?!\.)[\w.@-]{1,128}")
MAX_SEQ = 2**63 - 1  # SQLite INTEGER
# errors that say "this row", not "this store": isolate the row instead of retrying forever
STORE_REFUSALS = (sqlite3.IntegrityError, sqlite3.InterfaceError, OverflowError, ValueError)
MAX_NUMBER = 1e12  # seconds: ~31,000 years of uptime
SIGN_ALGORITHM = "PKCS1v15-SHA224"
# Salt adds keys on the way (id, _stamp); only these are signed.
SIGNED_FIELDS = ("v", "seat", "seq", "ts", "reason", "changed", "heartbeat", "facts")
MAX_PAYLOAD_BYTES = 16384
REJECT_LOG_KEEP = 1000
STATUSES = ("online", "stale", "offline")
SESSION_STATES = ("connected", "connecting", "disconnected", "none")
REASONS = ("start", "change", "heartbeat")

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
    ]
}

# fact name -> (kind, limit); kind "str" allows None
FACT_SCHEMA = {
    "serial": ("str", 128),
    "model": ("str", 128),
    "vendor": ("str", 128),
    "bios": ("str", 128),
    "iface": ("str", 32),
    "mac": ("mac", None),
    "ips": ("ips", 16),
    "firmware": ("str", 64),
    "image": ("str", 64),
    "boot_id": ("str", 64),
    "uptime": ("num", None),
    "site": ("str", 64),
    "department": ("str", 64),
    "asset_id": ("str", 64),
    "session_target": ("str", 255),
    "session_state": ("enum", SESSION_STATES),
    "idle_seconds": ("num", None),
}
SEAT_COLUMNS = tuple(FACT_SCHEMA) + (
    "seat",
    "seq",
    "reported_at",
    "last_reason",
    "first_seen",
    "last_seen",
    "last_change",
)
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Rejected(Exception):
    """An event that is not stored. ``reason`` is ``forged`` or ``malformed``."""

    def __init__(self, reason, sender, detail):
        super().__init__(f"{reason} event from {sender}: {detail}")
        self.reason = reason
        self.sender = sender
        self.detail = detail


def open_store(opts):
    """Open the tc master's store (path from ``deskfleet:tc:db`` or the cachedir)."""
    return store.connect(store.default_path(opts, "tc"), MIGRATIONS)


def canonical(payload):
    """The signed bytes; mirrors ``_beacons/tc_status.canonical``."""
    body = {k: payload.get(k) for k in SIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def pki_verifier(pki_dir):
    """
    A ``verify(sender, message, signature) -> bool`` that checks against the
    sender's accepted minion key. A pending, rejected or unknown key fails.
    """
    import salt.crypt  # pylint: disable=import-outside-toplevel

    minions_dir = os.path.join(pki_dir, "minions")

    def verify(sender, message, signature):
        try:
            key = salt.crypt.PublicKey.from_file(os.path.join(minions_dir, sender))
        except Exception:  # pylint: disable=broad-except
            return False
        try:
            return bool(key.verify(message, signature, algorithm=SIGN_ALGORITHM))
        except Exception:  # pylint: disable=broad-except
            return False

    return verify


# ---- validation --------------------------------------------------------------


def _finite(value, low, high):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _check_fact(sender, name, value):
    kind, limit = FACT_SCHEMA[name]
    if value is None:
        return None
    if kind in ("str", "mac"):
        if not isinstance(value, str) or len(value) > (limit or 64):
            raise Rejected("malformed", sender, f"fact {name} is not a short string")
        if kind == "mac" and not MAC_RE.match(value.lower()):
            raise Rejected("malformed", sender, f"fact mac {value[:32]!r} is not a MAC address")
        return value.lower() if kind == "mac" else value
    if kind == "num":
        if not _finite(value, 0, MAX_NUMBER):
            raise Rejected("malformed", sender, f"fact {name} is not a number of seconds")
        return float(value)
    if kind == "enum":
        if value not in limit:
            raise Rejected("malformed", sender, f"fact {name} must be one of {', '.join(limit)}")
        return value
    if not isinstance(value, list) or len(value) > limit:
        raise Rejected("malformed", sender, f"fact {name} must be a list of at most {limit} addresses")
    if not all(isinstance(v, str) for v in value):
        raise Rejected("malformed", sender, f"fact {name} must hold address strings")
    try:
        return json.dumps([str(ipaddress.ip_address(v)) for v in value])
    except ValueError as exc:
        raise Rejected("malformed", sender, f"fact {name}: {exc}") from exc


def parse_event(tag, data, verify, received_at):
    """
    Turn one bus event into a seat row, or raise :class:`Rejected`.

    ``data`` is the beacon payload as the master bus carries it: the payload
    itself (beacon batches) or wrapped under ``data`` (a single fire_master).
    """
    match = TAG_RE.fullmatch(tag) if isinstance(tag, str) else None
    if not match:
        raise Rejected("malformed", None, f"tag {str(tag)[:80]!r} is not salt/beacon/<id>/tc_status/status")
    sender = match.group(1)
    if not SENDER_RE.fullmatch(sender):
        raise Rejected("malformed", None, f"tag names an invalid minion id {sender[:64]!r}")
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "sig" not in data:
        data = data["data"]
    if not isinstance(data, dict):
        raise Rejected("malformed", sender, "payload is not a mapping")
    sig = data.get("sig")
    if not isinstance(sig, str):
        raise Rejected("forged", sender, "payload is not signed")
    message = canonical(data)
    if len(message) > MAX_PAYLOAD_BYTES:
        raise Rejected("malformed", sender, f"payload of {len(message)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        signature = base64.b64decode(sig, validate=True)
    except ValueError as exc:
        raise Rejected("forged", sender, "signature is not base64") from exc
    if not verify(sender, message, signature):
        raise Rejected("forged", sender, "signature does not match the sender's accepted key")
    if data.get("seat") != sender or data.get("id", sender) != sender:
        raise Rejected("forged", sender, f"signed by {sender} but claims seat {str(data.get('seat'))[:64]!r}")
    return _row(sender, data, received_at)


def _row(sender, data, received_at):
    if data.get("v") != 1:
        raise Rejected("malformed", sender, f"unknown payload version {data.get('v')!r}")
    seq, ts, reason, facts = (data.get(k) for k in ("seq", "ts", "reason", "facts"))
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise Rejected("malformed", sender, "seq is not a 64-bit non-negative integer")
    if not _finite(ts, 0, MAX_NUMBER * 10):
        raise Rejected("malformed", sender, "ts is not a finite epoch time")
    if reason not in REASONS:
        raise Rejected("malformed", sender, f"reason must be one of {', '.join(REASONS)}")
    if not isinstance(facts, dict):
        raise Rejected("malformed", sender, "facts is not a mapping")
    row = {name: _check_fact(sender, name, facts.get(name)) for name in FACT_SCHEMA}
    row["ips"] = row["ips"] or "[]"
    row.update(
        seat=sender,
        seq=seq,
        reported_at=float(ts),
        last_reason=reason,
        first_seen=received_at,
        last_seen=received_at,
        # a heartbeat is not a change: keep the stored time of the last real one
        last_change=None if reason == "heartbeat" else received_at,
    )
    return row


# ---- batched ingestion -------------------------------------------------------

_UPSERT = "INSERT INTO seats ({cols}) VALUES ({marks}) ON CONFLICT(seat) DO UPDATE SET {sets}".format(
    cols=", ".join(SEAT_COLUMNS),
    marks=", ".join("?" for _ in SEAT_COLUMNS),
    sets=", ".join(
        [f"{c} = excluded.{c}" for c in SEAT_COLUMNS if c not in ("seat", "first_seen", "last_change")]
        + ["last_change = COALESCE(excluded.last_change, seats.last_change)"]
    ),
)


class Ingestor:
    """
    Buffers validated rows and writes them in one transaction when the batch is
    full or ``flush_interval`` seconds have passed since the first buffered item,
    whichever comes first: no partial batch waits for the next event.
    """

    def __init__(self, conn, verify, batch_size=500, flush_interval=0.25, clock=time.time, log_rejects=20):
        self.conn = conn
        self.verify = verify
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.clock = clock
        self.log_rejects = log_rejects
        self.rows = {}
        self.rejects = []
        self.accepted = 0
        self.deadline = None

    def add(self, tag, data):
        """Validate one event and buffer it (or its rejection). Never raises."""
        now = self.clock()
        try:
            row = parse_event(tag, data, self.verify, now)
        except Rejected as exc:
            self.rejects.append((now, exc.sender, exc.reason, exc.detail))
        except Exception as exc:  # pylint: disable=broad-except
            self.rejects.append((now, None, "malformed", f"unreadable event: {type(exc).__name__}"))
        else:
            # Last arrival wins: a thin client emits at most once per interval, in order,
            # and its own clock (reported_at) may be wrong, so it is kept but never trusted.
            self.accepted += 1
            prev = self.rows.get(row["seat"])
            if prev is not None and row["last_change"] is None:
                row["last_change"] = prev["last_change"]
            self.rows[row["seat"]] = row
        if self.deadline is None:
            self.deadline = now + self.flush_interval

    def pending(self):
        """Events buffered (several events of one seat merge into one row, but each counts)."""
        return self.accepted + len(self.rejects)

    def wait_time(self, idle=1.0):
        """Seconds the caller may block for the next event before a flush is due."""
        if self.deadline is None:
            return idle
        return max(0.001, self.deadline - self.clock())

    def due(self):
        return self.pending() >= self.batch_size or (
            self.deadline is not None and self.clock() >= self.deadline
        )

    def _counts(self):
        counts = {"accepted": self.accepted}
        for _, _, reason, _ in self.rejects:
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def _write(self, rows):
        with store.transaction(self.conn):
            self.conn.executemany(_UPSERT, [tuple(r[c] for c in SEAT_COLUMNS) for r in rows])
            self.conn.executemany(
                "INSERT INTO ingest_counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(self._counts().items()),
            )
            if self.rejects:
                self.conn.executemany(
                    "INSERT INTO ingest_rejects (at, sender, reason, detail) VALUES (?, ?, ?, ?)",
                    self.rejects,
                )
                self.conn.execute(
                    "DELETE FROM ingest_rejects WHERE id <= (SELECT MAX(id) FROM ingest_rejects) - ?",
                    (REJECT_LOG_KEEP,),
                )

    def _isolate(self):
        for seat_id, row in list(self.rows.items()):
            try:
                with store.transaction(self.conn):
                    self.conn.execute(_UPSERT, tuple(row[c] for c in SEAT_COLUMNS))
            except STORE_REFUSALS as exc:
                del self.rows[seat_id]
                self.accepted -= 1
                self.rejects.append((self.clock(), seat_id, "malformed", f"refused by the store: {exc}"))
        self._write([])  # counters and rejects; the good rows are in

    def flush(self):
        """Write the buffer in one transaction. On a store error the buffer is kept for the next try."""
        if not self.pending():
            self.deadline = None
            return {"accepted": 0, "rejected": 0}
        try:
            self._write(list(self.rows.values()))
        except STORE_REFUSALS:
            # A row the store refuses must not block the fleet: write one by one, reject the bad.
            log.exception("tc_ingest: batch refused by the store; isolating the bad rows")
            self._isolate()
        for _, sender, reason, detail in self.rejects[: self.log_rejects]:
            log.warning("tc_ingest: rejected %s event from %s: %s", reason, sender or "?", detail)
        if len(self.rejects) > self.log_rejects:
            log.warning("tc_ingest: %d more rejected events in this batch", len(self.rejects) - self.log_rejects)
        result = {"accepted": self.accepted, "rejected": len(self.rejects)}
        self.rows, self.rejects, self.accepted, self.deadline = {}, [], 0, None
        return result


def ingestor(opts, batch_size=500, flush_interval=0.25):
    """Build an :class:`Ingestor` on the tc master's store and minion keys."""
    return Ingestor(open_store(opts), pki_verifier(opts["pki_dir"]), batch_size, flush_interval)


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
    if seat["last_change"] is None:
        seat["last_change"] = seat["first_seen"]
    seat["status"] = status_of(seat["last_seen"], now, heartbeat, offline_after)
    seat["last_seen_ago"] = round(now - seat["last_seen"], 1)
    return seat


def seats(conn, now, heartbeat, offline_after, status=None, firmware=None, site=None, idle_over=None):
    """All seats matching every given filter, ordered by seat id."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    where, args = [], []
    if firmware is not None:
        where.append("firmware = ?")
        args.append(str(firmware))
    if site is not None:
        where.append("site = ?")
        args.append(str(site))
    if idle_over is not None:
        where.append("idle_seconds >= ?")
        args.append(float(idle_over))
    sql = "SELECT * FROM seats" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seat"
    found = [_present(r, now, heartbeat, offline_after) for r in conn.execute(sql, args)]
    return [s for s in found if status is None or s["status"] == status]


def seat(conn, seat_id, now, heartbeat, offline_after):
    row = conn.execute("SELECT * FROM seats WHERE seat = ?", (seat_id,)).fetchone()
    return None if row is None else _present(row, now, heartbeat, offline_after)


def counters(conn):
    return {name: value for name, value in conn.execute("SELECT name, value FROM ingest_counters")}


def recent_rejects(conn, limit=20):
    return [
        dict(r)
        for r in conn.execute(
            "SELECT at, sender, reason, detail FROM ingest_rejects ORDER BY id DESC LIMIT ?", (limit,)
        )
    ]
