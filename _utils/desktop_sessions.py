"""
Desktop sessions on the vm master: validation of ``desktop_session`` beacon
events (signed by the desktop's own minion key; the sender must be the desktop
it speaks for) and the ``desktop_sessions`` table in the deskfleet store.
Plain Python over sqlite3; clock and signature check passed in.
"""

import base64
import json
import math
import os
import re

import deskfleet_store as store

COMPONENT = "desktop_sessions"
TAG_RE = re.compile(r"salt/beacon/([^/]{1,128})/desktop_session/status")
SENDER_RE = re.compile(r"(?!\.)[\w.@-]{1,128}")
USER_RE = re.compile(r"[^\x00-\x1f/\\]{1,64}")
SIGN_ALGORITHM = "PKCS1v15-SHA224"
SIGNED_FIELDS = ("v", "desktop", "seq", "ts", "reason", "heartbeat", "facts")
MAX_PAYLOAD_BYTES = 8192
MAX_SESSIONS = 32
MAX_SECONDS = 1e11  # epoch seconds fit too (year ~5000)
REASONS = ("start", "change", "heartbeat")
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE desktop_sessions (
            desktop TEXT PRIMARY KEY,
            logged_on INTEGER NOT NULL, sessions TEXT NOT NULL, idle_seconds REAL,
            seq INTEGER NOT NULL, reported_at REAL NOT NULL, heartbeat REAL NOT NULL, received_at REAL NOT NULL
        )
        """
    ]
}


class Rejected(Exception):
    """An event that is not stored: ``reason`` is ``forged`` or ``malformed``."""

    def __init__(self, reason, sender, detail):
        super().__init__(f"{reason} desktop_session event from {sender}: {detail}")
        self.reason, self.sender, self.detail = reason, sender, detail


def canonical(payload):
    """The signed bytes; mirrors ``_beacons/desktop_session.canonical``."""
    return json.dumps({k: payload.get(k) for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def pki_verifier(pki_dir):
    """``verify(sender, message, signature) -> bool`` against the sender's ACCEPTED minion key only."""
    import salt.crypt  # pylint: disable=import-outside-toplevel

    def verify(sender, message, signature):
        try:
            key = salt.crypt.PublicKey.from_file(os.path.join(pki_dir, "minions", sender))
            return bool(key.verify(message, signature, algorithm=SIGN_ALGORITHM))
        except Exception:  # pylint: disable=broad-except
            return False

    return verify


def _seconds(value, what, sender, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise Rejected("malformed", sender, f"{what} is not a number of seconds")
    return float(value)


def _sessions(facts, sender):
    sessions = facts.get("sessions")
    if not isinstance(sessions, list) or len(sessions) > MAX_SESSIONS:
        raise Rejected("malformed", sender, f"facts.sessions must be a list of at most {MAX_SESSIONS}")
    out = []
    for i, s in enumerate(sessions):
        if not isinstance(s, dict) or not isinstance(s.get("user"), str) or not USER_RE.fullmatch(s["user"]):
            raise Rejected("malformed", sender, f"facts.sessions[{i}].user is not a user name")
        if s.get("state") not in ("active", "disconnected"):
            raise Rejected("malformed", sender, f"facts.sessions[{i}].state must be active or disconnected")
        out.append({"user": s["user"], "state": s["state"],
                    "idle_seconds": _seconds(s.get("idle_seconds"), f"facts.sessions[{i}].idle_seconds", sender)})
    return out


def _signed(sender, data, verify):
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
    if data.get("desktop") != sender or data.get("id", sender) != sender:
        raise Rejected("forged", sender, f"signed by {sender} but speaks for {str(data.get('desktop'))[:64]!r}")


def parse_event(tag, data, verify, received_at):
    """One bus event → a row for :func:`record`, or :class:`Rejected`."""
    match = TAG_RE.fullmatch(tag) if isinstance(tag, str) else None
    if not match or not SENDER_RE.fullmatch(match.group(1)):
        raise Rejected("malformed", None, f"tag {str(tag)[:80]!r} is not salt/beacon/<id>/desktop_session/status")
    sender = match.group(1)
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "sig" not in data:
        data = data["data"]
    if not isinstance(data, dict):
        raise Rejected("malformed", sender, "payload is not a mapping")
    _signed(sender, data, verify)
    if data.get("v") != 1 or data.get("reason") not in REASONS:
        raise Rejected("malformed", sender, "unknown payload version or reason")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**63:
        raise Rejected("malformed", sender, "seq is not a positive integer")
    facts = data.get("facts")
    if not isinstance(facts, dict) or not isinstance(facts.get("logged_on"), bool):
        raise Rejected("malformed", sender, "facts.logged_on must be true or false")
    sessions = _sessions(facts, sender)
    return {
        "desktop": sender,
        "logged_on": int(bool(sessions)),  # derived from the sessions, not trusted apart
        "sessions": json.dumps(sessions),
        "idle_seconds": _seconds(facts.get("idle_seconds"), "facts.idle_seconds", sender),
        "seq": seq,
        "reported_at": _seconds(data.get("ts"), "ts", sender, allow_none=False),
        "heartbeat": _seconds(data.get("heartbeat"), "heartbeat", sender, allow_none=False),
        "received_at": received_at,
    }


def open_store(path):
    return store.connect(path, MIGRATIONS)


def record(conn, *rows):
    """Store each row (one transaction) unless an equal or newer ``seq`` of that desktop is there (replays change nothing)."""
    with store.transaction(conn):
        conn.executemany(
            "INSERT INTO desktop_sessions (desktop, logged_on, sessions, idle_seconds, seq, reported_at, heartbeat, received_at)"
            " VALUES (:desktop, :logged_on, :sessions, :idle_seconds, :seq, :reported_at, :heartbeat, :received_at)"
            " ON CONFLICT(desktop) DO UPDATE SET logged_on = excluded.logged_on, sessions = excluded.sessions,"
            " idle_seconds = excluded.idle_seconds, seq = excluded.seq, reported_at = excluded.reported_at,"
            " heartbeat = excluded.heartbeat, received_at = excluded.received_at"
            " WHERE excluded.seq > desktop_sessions.seq OR excluded.reported_at > desktop_sessions.reported_at + 1",
            rows,
        )


def session(conn, desktop, now, stale_after=3):
    """What is known of ``desktop``: logged_on, sessions, idle, and ``fresh`` (heard within stale_after heartbeats)."""
    row = conn.execute("SELECT * FROM desktop_sessions WHERE desktop = ?", (desktop,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["sessions"] = json.loads(out["sessions"])
    out["logged_on"] = bool(out["logged_on"])
    out["fresh"] = now - out["received_at"] <= stale_after * out["heartbeat"]
    return out
