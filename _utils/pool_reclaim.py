"""
Idle reclaim of taken pool desktops: which ones go back, by the pool's policy
(pillar ``deskfleet:pools:<pool>:reclaim``)::

    reclaim:
      reclaim_after: 3600          # seconds all sessions have been disconnected
      logged_off_after: 300        # seconds nobody has been logged on (a short grace: a user may be logging in)
      protected_hours: ["07:00-19:00"]   # UTC; never reclaim then (may cross midnight: "22:00-02:00")
      max_per_pass: 5

Session state comes from the ``desktop_session`` beacon (signed by the desktop
itself, ``_utils/desktop_sessions.py``). A desktop is never reclaimed while
any session is active (a user is logged on and connected), nor when its last
report is not fresh: no fact, no reclaim. "Since when" is what this planner
saw itself (``seen``, kept by the caller between passes): it can only be
later than the truth, never earlier, and a desktop cannot backdate it.

Pure: the clock, the desktops and the sessions are passed in.
"""

import datetime

DEFAULTS = {"reclaim_after": 3600, "logged_off_after": 300, "protected_hours": [], "max_per_pass": 5}


class PolicyError(ValueError):
    """A bad reclaim policy; the message names the pool and the field."""


def _hhmm(text, where):
    try:
        hour, minute = (int(x) for x in str(text).split(":"))
        if not (0 <= hour <= 24 and 0 <= minute < 60) or (hour == 24 and minute):
            raise ValueError
    except ValueError:
        raise PolicyError(f"{where}: {text!r} is not HH:MM") from None
    return hour * 60 + minute


def policy(pool, conf):
    """The checked policy of ``pool`` (``None``: the pool reclaims nothing)."""
    if conf is None:
        return None
    where = f"deskfleet:pools:{pool}:reclaim"
    if not isinstance(conf, dict):
        raise PolicyError(f"{where} must be a mapping")
    unknown = sorted(set(conf) - set(DEFAULTS))
    if unknown:
        raise PolicyError(f"{where}:{unknown[0]} is not a reclaim setting (known: {', '.join(DEFAULTS)})")
    out = dict(DEFAULTS, **conf)
    for field in ("reclaim_after", "logged_off_after", "max_per_pass"):
        value = out[field]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 90 * 86400:
            raise PolicyError(f"{where}:{field} must be a whole number >= 0, got {value!r}")
    if not isinstance(out["protected_hours"], list):
        raise PolicyError(f"{where}:protected_hours must be a list like ['07:00-19:00']")
    spans = []
    for i, span in enumerate(out["protected_hours"]):
        parts = str(span).split("-")
        if len(parts) != 2:
            raise PolicyError(f"{where}:protected_hours[{i}]: {span!r} is not HH:MM-HH:MM")
        spans.append(tuple(_hhmm(p, f"{where}:protected_hours[{i}]") for p in parts))
    out["protected_hours"] = spans
    return out


def protected(spans, now):
    """``now`` (epoch) falls in one of the UTC ``spans`` (minutes of the day; a span may cross midnight)."""
    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    minute = when.hour * 60 + when.minute
    return any((start <= minute < end) if start <= end else (minute >= start or minute < end) for start, end in spans)


def state_of(session):
    """``active`` (someone connected), ``disconnected``, ``logged_off``, or ``unknown`` (no fresh report)."""
    if not session or not session.get("fresh"):
        return "unknown"
    states = {s.get("state") for s in session.get("sessions") or []}
    if "active" in states:
        return "active"
    if states:
        return "disconnected"
    return "unknown" if session.get("logged_on") else "logged_off"


def plan(desktops, sessions, seen, policies, now):
    """
    ``desktops``: ``[{"name", "pool"}]`` of TAKEN desktops; ``sessions``:
    name → session (``desktop_sessions.session``); ``seen``: name → ``(state,
    since)`` from the last pass; ``policies``: pool → checked policy or None.
    Returns ``{"reclaim": [...], "keep": [...], "seen": {...}}``, each entry
    with its reason.
    """
    out = {"reclaim": [], "keep": [], "seen": {}}
    budget = {}
    for desk in sorted(desktops, key=lambda d: d["name"]):
        name, pool = desk["name"], desk.get("pool")
        state = state_of(sessions.get(name))
        prev = seen.get(name)
        since = prev[1] if prev and prev[0] == state else now
        out["seen"][name] = (state, since)
        entry = {"name": name, "pool": pool, "state": state, "since": since, "for_seconds": round(now - since, 1)}
        rule = policies.get(pool)
        reason = _keep_reason(rule, state, now - since, now)
        if reason is None:
            budget.setdefault(pool, rule["max_per_pass"])
            if budget[pool] <= 0:
                reason = f"over max_per_pass ({rule['max_per_pass']}) this pass"
            else:
                budget[pool] -= 1
        if reason is None:
            out["reclaim"].append(dict(entry, reason=f"{state} for {now - since:.0f} s"))
        else:
            out["keep"].append(dict(entry, reason=reason))
    return out


def _keep_reason(rule, state, age, now):
    if rule is None:
        return "the pool has no reclaim policy"
    if state == "active":
        return "a user is logged on and connected"
    if state == "unknown":
        return "no fresh session report"
    wait = rule["reclaim_after"] if state == "disconnected" else rule["logged_off_after"]
    if age < wait:
        return f"{state} for {age:.0f} s, under {wait} s"
    if protected(rule["protected_hours"], now):
        return "protected hours"
    return None
