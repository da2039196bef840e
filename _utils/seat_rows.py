"""
Seat rows for ops at fleet scale: parse the CLI's arguments, project the full
seat records (``tc_assets.seats``) onto a few fields, sort, limit, count
(``tc_report.counts``), and
turn epoch floats into ISO 8601 times with the master's UTC offset.

Pure: no Salt, no store; the clock's timezone is a parameter. Every usage error
is a :class:`UsageError` that names the parameter.
"""

import datetime

import tc_report

# the compact default: one short row per seat
DEFAULT_FIELDS = ("seat", "site", "status", "firmware", "ip", "session", "idle", "last_seen")
# epoch floats in a seat record, shown as ISO 8601 times
TIME_FIELDS = ("reported_at", "first_seen", "last_seen", "last_change")
# derived fields: short names for what ops reads most
DERIVED = {
    "ip": lambda s: ",".join(s.get("ips") or []) or None,
    "session": lambda s: " ".join(v for v in (s.get("session_state"), s.get("session_target")) if v) or None,
    "idle": lambda s: None if s.get("idle_seconds") is None else int(s["idle_seconds"]),
}
STATUSES = tuple(tc_report.STATUS_COLOURS)


class UsageError(ValueError):
    """A bad CLI argument; the message names the parameter."""

    def __init__(self, param, message):
        super().__init__(f"{param}: {message}")
        self.param = param


def iso(epoch, tz=None):
    """``epoch`` seconds as ISO 8601 with offset (``tz`` default: the host's local zone); None stays None."""
    if epoch is None:
        return None
    when = datetime.datetime.fromtimestamp(float(epoch), tz or datetime.timezone.utc)
    return (when if tz else when.astimezone()).isoformat(timespec="seconds")


def humanise(record, tz=None, fields=TIME_FIELDS):
    """A copy of ``record`` with its epoch ``fields`` as ISO 8601 times."""
    out = dict(record)
    for name in fields:
        if name in out and isinstance(out[name], (int, float)) and not isinstance(out[name], bool):
            out[name] = iso(out[name], tz)
    return out


def known_fields(sample_columns):
    """Every field ``fields=`` and ``sort=`` accept: the record's columns plus the derived ones."""
    return sorted(set(sample_columns) | set(DERIVED) | {"status", "last_seen_ago", "missed"})


def parse_fields(fields, known):
    """``fields`` (comma list, list, ``all`` or None) as a tuple of names; ``all`` gives None (the full record)."""
    if fields is None or fields == "":
        return DEFAULT_FIELDS
    if isinstance(fields, str):
        if fields.strip().lower() == "all":
            return None
        names = [f.strip() for f in fields.split(",")]
    elif isinstance(fields, (list, tuple)):
        names = [str(f).strip() for f in fields]
    else:
        raise UsageError("fields", f"a comma-separated list of field names or 'all', got {fields!r}")
    unknown = [n for n in names if n not in known]
    if not names or unknown or "" in names:
        raise UsageError("fields", f"unknown field(s) {unknown or names!r}; known: all, {', '.join(known)}")
    return tuple(dict.fromkeys(names))


def parse_limit(limit):
    """A positive int or None."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, str)):
        raise UsageError("limit", f"a positive whole number, got {limit!r}")
    try:
        value = int(limit)
    except ValueError:
        raise UsageError("limit", f"a positive whole number, got {limit!r}") from None
    if value < 1:
        raise UsageError("limit", f"a positive whole number, got {limit!r}")
    return value


def parse_sort(sort, known):
    """``field`` or ``-field`` as (field, descending); None sorts by seat."""
    if sort is None or sort == "":
        return "seat", False
    if not isinstance(sort, str):
        raise UsageError("sort", f"a field name, '-field' for descending, got {sort!r}")
    name = sort.strip()
    descending = name.startswith("-")
    name = name.lstrip("-")
    if name not in known:
        raise UsageError("sort", f"unknown field {name!r}; known: {', '.join(known)}")
    return name, descending


def parse_filters(status=None, firmware=None, site=None, idle_over=None):
    """The filters, normalised for a case-insensitive match: status lower-cased, idle_over a number."""
    out = {}
    if status is not None:
        out["status"] = str(status).strip().lower()
        if out["status"] not in STATUSES:
            raise UsageError("status", f"one of {', '.join(STATUSES)}, got {status!r}")
    for name, value in (("firmware", firmware), ("site", site)):
        if value is not None:
            if isinstance(value, (dict, list, bool)):
                raise UsageError(name, f"a single value, got {value!r}")
            out[name] = str(value).strip()
    if idle_over is not None:
        try:
            if isinstance(idle_over, bool):
                raise ValueError
            out["idle_over"] = float(idle_over)
        except (TypeError, ValueError):
            raise UsageError("idle_over", f"a number of seconds, got {idle_over!r}") from None
        if out["idle_over"] != out["idle_over"] or out["idle_over"] < 0:
            raise UsageError("idle_over", f"a number of seconds >= 0, got {idle_over!r}")
    return out


def value_of(seat, name):
    return DERIVED[name](seat) if name in DERIVED else seat.get(name)


def _sort_key(name):
    def key(seat):
        value = value_of(seat, name)
        # None last; numbers before text so a mixed column still sorts
        if value is None:
            return (2, 0, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, value, "")
        return (1, 0, str(value).lower())

    return key


def order(seats, name, descending):
    """``seats`` sorted by ``name`` (seat id breaks ties); missing values last either way."""
    by_seat = sorted(seats, key=lambda s: s.get("seat") or "")
    present = [s for s in by_seat if value_of(s, name) is not None]
    missing = [s for s in by_seat if value_of(s, name) is None]
    return sorted(present, key=_sort_key(name), reverse=descending) + missing


def project(seat, fields, tz=None):
    """One row: the ``fields`` of ``seat`` (None: the whole record), times as ISO 8601."""
    if fields is None:
        return humanise(seat, tz)
    return humanise({name: value_of(seat, name) for name in fields}, tz)


def empty_note(filters):
    """What an empty answer says: which filters matched nothing, or that there are no seats at all."""
    said = " ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
    return f"no seat matches {said}" if said else "no seats in the inventory yet"


def request(fields=None, sort=None, limit=None, counts=False, known=DEFAULT_FIELDS, **filters):
    """Every argument of ``tc_inventory.list`` checked before any store is opened. Raises :class:`UsageError`."""
    if not isinstance(counts, bool) and str(counts).lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise UsageError("counts", f"True or False, got {counts!r}")
    name, descending = parse_sort(sort, known)
    return {
        "fields": parse_fields(fields, known),
        "sort": name,
        "descending": descending,
        "limit": parse_limit(limit),
        "counts": counts is True or str(counts).lower() in ("true", "1", "yes"),
        "filters": parse_filters(**filters),
    }


def answer(seats, req, tz=None):
    """
    The return of ``tc_inventory.list`` for ``req`` (see :func:`request`): a list of
    rows; ``{"seats": [], "note": ...}`` when nothing matches; the counts when asked.
    """
    if req["counts"]:
        got = tc_report.counts(seats)
        return dict(got, note=empty_note(req["filters"])) if not seats else got
    if not seats:
        return {"seats": [], "note": empty_note(req["filters"])}
    ordered = order(seats, req["sort"], req["descending"])
    return [project(s, req["fields"], tz) for s in ordered[: req["limit"]]]
