"""
The ``deskfleet:pools`` pillar, checked and normalised. Pure.

Each pool is checked on its own: :func:`validate` returns the good pools and one
error per bad pool (naming the pool and the field), so one malformed pool never
stops the keeper for the others.
"""

import re

POOL_KEY = "deskfleet_pool"
STATE_KEY = "deskfleet_state"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60


class PoolConfigError(ValueError):
    """The pool pillar is malformed; the message names the pool and the field."""


def _fail(pool, field, problem):
    raise PoolConfigError(f"pool {pool}: {field}: {problem}")


def _int(pool, field, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(pool, field, f"must be an integer >= {low}, got {value!r}")
    return value


def _days(pool, field, spec):
    if not isinstance(spec, str):
        _fail(pool, field, f"must be a string like 'mon-fri' or 'sat,sun', got {spec!r}")
    out = set()
    for part in spec.lower().split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                _fail(pool, field, f"bad day range {part!r} (use e.g. mon-fri)")
            i, j = DAYS.index(a), DAYS.index(b)
            out.update(DAYS[k % 7] for k in range(i, j + 1 if j >= i else j + 8))
        elif part in DAYS:
            out.add(part)
        else:
            _fail(pool, field, f"bad day {part!r}")
    return sorted(out, key=DAYS.index)


def _hhmm(pool, field, value):
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 19:00 as the base-60 integer 1140
        hours, minutes = divmod(value, 60)
        _fail(pool, field, f"got the number {value}: YAML reads an unquoted {hours}:{minutes:02d} as {value}; quote it: \"{hours:02d}:{minutes:02d}\"")
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)|(24):(00)", str(value))
    if not match:
        _fail(pool, field, f"{value!r} is not HH:MM (00:00 to 24:00, quoted)")
    hours, minutes = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return int(hours) * 60 + int(minutes)


def _window(pool, i, window):
    where = f"schedule[{i}]"
    if not isinstance(window, dict):
        _fail(pool, where, "must be a mapping with days, from, to, spares")
    if "spares" not in window:
        _fail(pool, f"{where}.spares", "is required")
    start = _hhmm(pool, f"{where}.from", window.get("from", "00:00"))
    end = _hhmm(pool, f"{where}.to", window.get("to", "24:00"))
    if start == end:
        _fail(pool, f"{where}.to", "equals from: the window would be empty")
    return {
        "days": _days(pool, f"{where}.days", window.get("days", "mon-sun")),
        "from": start,
        "to": end,  # to < from: an overnight window, ending the next day
        "spares": _int(pool, f"{where}.spares", window["spares"]),
    }


def validate_pool(name, conf):
    """One pool's settings, normalised; raises :class:`PoolConfigError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PoolConfigError(f"pool name {name!r}: use lower-case letters, digits and '-'")
    if not isinstance(conf, dict):
        _fail(name, "settings", "must be a mapping")
    for key in ("flavor", "image", "network"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            _fail(name, key, "is required (a non-empty string)")
    if "spares" not in conf:
        _fail(name, "spares", "is required (ready desktops wanted; 0 for none)")
    spares = _int(name, "spares", conf["spares"])
    max_size = _int(name, "max_size", conf.get("max_size", spares))
    if max_size < spares:
        _fail(name, "max_size", f"{max_size} is below spares {spares}")
    metadata = conf.get("metadata") or {}
    if not isinstance(metadata, dict) or {POOL_KEY, STATE_KEY} & set(metadata):
        _fail(name, "metadata", f"must be a mapping without {POOL_KEY}/{STATE_KEY}")
    schedule = conf.get("schedule") or []
    if not isinstance(schedule, list):
        _fail(name, "schedule", "must be a list of windows")
    deadline = conf.get("ready_deadline")
    return {
        "flavor": conf["flavor"],
        "image": conf["image"],
        "network": conf["network"],
        "metadata": {str(k): str(v) for k, v in metadata.items()},
        "spares": spares,
        "max_size": max_size,
        "max_in_flight": _int(name, "max_in_flight", conf.get("max_in_flight", 2), 1),
        "ready_deadline": None if deadline is None else _int(name, "ready_deadline", deadline, 60),
        "schedule": [_window(name, i, w) for i, w in enumerate(schedule)],
    }


def validate(pools):
    """
    Check every pool on its own. Returns ``(good, errors)``: ``good`` maps pool name to
    normalised settings, ``errors`` maps a bad pool's name to its message. Raises
    :class:`PoolConfigError` only when ``pools`` itself is not a mapping.
    """
    if pools is None:
        return {}, {}
    if not isinstance(pools, dict):
        raise PoolConfigError("deskfleet:pools: must be a mapping of pool name to settings")
    good, errors = {}, {}
    for name, conf in pools.items():
        try:
            good[name] = validate_pool(name, conf)
        except PoolConfigError as exc:
            errors[str(name)[:64]] = str(exc)
    return good, errors


def target_spares(pool, now):
    """Spares wanted at ``now`` (a datetime): the first matching window, else ``spares``.
    An overnight window (from 22:00 to 06:00) belongs to the day it starts on."""
    day, minute = now.weekday(), now.hour * 60 + now.minute
    for window in pool["schedule"]:
        start, end, days = window["from"], window["to"], window["days"]
        if start < end:
            hit = DAYS[day] in days and start <= minute < end
        else:
            hit = (DAYS[day] in days and minute >= start) or (DAYS[day - 1] in days and minute < end)
        if hit:
            return window["spares"]
    return pool["spares"]
