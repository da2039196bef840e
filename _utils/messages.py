"""
Messages to people at desktops (vm master) and seats (tc master): the checks, the
per-target rate limit, the audit log in the deskfleet store and the per-target
verdict. Plain Python over sqlite3; clock and publisher passed in, so the
``message`` runner is a thin shell and this is tested without Salt.

A send is recorded before it is published: every target gets an audit row
(``sending``, or ``failed`` when rate limited) inside one write transaction, so
two operators sending at once cannot both pass the limit. The rows are then
finished with the verdict: ``delivered`` (the target's module said so),
``failed`` (it answered with an error, or it was rate limited) or ``offline``
(no answer within the timeout).
"""

import re

import deskfleet_store as store

COMPONENT = "messages"
RESULTS = ("delivered", "failed", "offline")
ID_RE = re.compile(r"(?!\.)[\w.@-]{1,128}")
DEFAULTS = {
    "max_length": 255,  # Windows ``msg`` takes under 256 characters
    "rate_limit": 3,  # messages per target per window (delivered, failed or in flight)
    "rate_window": 600,  # seconds
    "seconds": 600,  # how long the message stays up (Windows msg /time, seat notice expiry)
    "timeout": 30,  # seconds to wait for the targets' answers
    "max_targets": 20000,
}
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE message_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            batch TEXT NOT NULL, master TEXT NOT NULL, sender TEXT NOT NULL, target TEXT NOT NULL,
            text TEXT NOT NULL, sent_at REAL NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            finished_at REAL
        );
        CREATE INDEX message_audit_target ON message_audit (target, sent_at);
        CREATE INDEX message_audit_batch ON message_audit (batch)
        """
    ]
}
NO_RETURN = "Minion did not return"
COUNTED = ("sending", "delivered", "failed")  # what the rate limit counts (not offline, not refused)


class MessageError(ValueError):
    """Bad input; ``field`` names what to fix."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


def _positive_int(value, field, upper):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= upper:
        raise MessageError(field, f"must be an integer in 1..{upper}, got {value!r}")
    return value


def settings(raw):
    """``DEFAULTS`` overlaid with ``raw`` (master config ``deskfleet:<role>:messages``), each checked."""
    out = dict(DEFAULTS, **(raw or {}))
    uppers = {"max_length": 4096, "rate_limit": 10000, "rate_window": 7 * 86400, "seconds": 86400,
              "timeout": 3600, "max_targets": 100000}
    return {k: _positive_int(out[k], f"messages:{k}", uppers[k]) for k in DEFAULTS}


def check_text(text, max_length):
    """The message, stripped: one line of printable text, at most ``max_length`` characters."""
    if not isinstance(text, str) or not text.strip():
        raise MessageError("text", "is required (a non-empty string)")
    text = text.strip()
    if len(text) > max_length:
        raise MessageError("text", f"is {len(text)} characters, the limit is {max_length}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise MessageError("text", "must be one line without control characters")
    return text


def check_seconds(seconds, default):
    """How long the message stays up: an int in 1..86400 (numeric strings from the CLI accepted)."""
    if seconds is None:
        return default
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)
    return _positive_int(seconds, "seconds", 86400)


def check_targets(targets, max_targets):
    """Sorted unique minion ids; a malformed id names itself."""
    out = set()
    for target in targets:
        if not isinstance(target, str) or not ID_RE.fullmatch(target):
            raise MessageError("tgt", f"{str(target)[:80]!r} is not a minion id")
        out.add(target)
    if not out:
        raise MessageError("tgt", "matches no accepted minion")
    if len(out) > max_targets:
        raise MessageError("tgt", f"matches {len(out)} minions, more than messages:max_targets {max_targets}")
    return sorted(out)


def rate_limited(recent, now, limit, window):
    """True when ``recent`` (send times of one target) already holds ``limit`` sends within ``window`` s."""
    return sum(1 for t in recent if now - window < t <= now) >= limit


def classify(targets, returns):
    """
    ``{target: (result, detail)}`` from a publication's full returns
    (``{id: {"ret": ..., "retcode": n}}``); a target without a return is offline.
    Only a return saying ``sent: True`` with retcode 0 counts as delivered.
    """
    out = {}
    for target in targets:
        got = returns.get(target)
        # LocalClient fills in targets that did not answer with this text (Salt 3008)
        if not isinstance(got, dict) or "ret" not in got or str(got["ret"]).startswith(NO_RETURN):
            out[target] = ("offline", "no answer within the timeout")
            continue
        ret, retcode = got.get("ret"), got.get("retcode", 0)
        if retcode == 0 and isinstance(ret, dict) and ret.get("sent") is True:
            out[target] = ("delivered", str(ret.get("method", ""))[:40])
        else:
            out[target] = ("failed", str(ret)[:300])
    return out


def reserve(conn, now, batch, master, sender, targets, text, limits):
    """
    Record the send: ``(allowed, refused)``. Rate-limited targets get a ``failed``
    row at once (detail says why) and are not published to.
    """
    allowed, refused = [], {}
    window, limit = limits["rate_window"], limits["rate_limit"]
    marks = ",".join("?" * len(COUNTED))
    with store.transaction(conn):
        for target in targets:
            recent = [r[0] for r in conn.execute(
                f"SELECT sent_at FROM message_audit WHERE target = ? AND sent_at > ? AND result IN ({marks})",
                (target, now - window, *COUNTED))]
            if rate_limited(recent, now, limit, window):
                detail = f"rate limited: {len(recent)} messages in the last {window} s (limit {limit})"
                refused[target] = detail
                result, finished = "failed", now
            else:
                allowed.append(target)
                detail, result, finished = "", "sending", None
            conn.execute(
                "INSERT INTO message_audit (batch, master, sender, target, text, sent_at, result, detail, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch, master, sender, target, text, now, result, detail, finished))
    return allowed, refused


def finish(conn, now, batch, verdicts):
    """Write each published target's verdict to its audit row."""
    with store.transaction(conn):
        for target, (result, detail) in verdicts.items():
            conn.execute(
                "UPDATE message_audit SET result = ?, detail = ?, finished_at = ?"
                " WHERE batch = ? AND target = ? AND result = 'sending'",
                (result, detail, now, batch, target))


def deliver(conn, clock, publish, batch, master, sender, targets, text, limits):
    """
    The whole send: reserve (rate limit), ``publish(allowed) -> full returns``,
    classify, finish. Returns the runner's result (``ok`` False when any target
    did not get the message). A publish that raises marks its targets failed.
    """
    allowed, refused = reserve(conn, clock(), batch, master, sender, targets, text, limits)
    verdicts = {}
    if allowed:
        try:
            verdicts = classify(allowed, publish(allowed) or {})
        except Exception as exc:  # pylint: disable=broad-except
            verdicts = {t: ("failed", f"publish failed: {exc}"[:300]) for t in allowed}
        finish(conn, clock(), batch, verdicts)
    verdicts.update({t: ("failed", why) for t, why in refused.items()})
    return summary(batch, text, verdicts)


def summary(batch, text, verdicts):
    targets = {t: {"result": r, "detail": d} for t, (r, d) in sorted(verdicts.items())}
    counts = {name: sum(1 for v in targets.values() if v["result"] == name) for name in RESULTS}
    return {"batch": batch, "text": text, "ok": counts["delivered"] == len(targets), "counts": counts,
            "targets": targets}


def audit(conn, target=None, limit=100):
    """Audit rows, newest first: who sent what to whom, when, and the verdict."""
    limit = _positive_int(limit, "limit", 100000)
    sql, args = "SELECT * FROM message_audit", []
    if target is not None:
        sql, args = sql + " WHERE target = ?", [str(target)]
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
    return [dict(r) for r in rows]
