"""
What ops give ``software.schedule``: times (``now``, ``+2h``, epoch, ISO 8601), the window,
and batch / failure thresholds as counts or percentages. Pure; master side.
"""

import datetime
import math
import re

TARGET_TYPES = ("glob", "list", "pcre", "grain", "grain_pcre", "pillar", "compound", "nodegroup")


class ScheduleError(ValueError):
    """A ``software.schedule`` request that is refused."""


_RELATIVE_RE = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value, now, what="time"):
    """
    Epoch seconds from ``now``, ``+90s`` / ``+30m`` / ``+2h`` / ``+1d``, epoch
    seconds, or ISO 8601 (``2025-06-01T22:00``, ``...+02:00``, ``...Z``; without an
    offset it is the master's local time).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "now"):
        return float(now)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ScheduleError(f"{what} {value!r} is not a time")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        relative = _RELATIVE_RE.match(text)
        if relative:
            return float(now) + float(relative.group(1)) * _UNITS[relative.group(2)]
        try:
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T")).timestamp()
        except ValueError:
            pass
    raise ScheduleError(
        f"{what} {str(value)[:60]!r} is not a time: use now, +30m, +2h, epoch seconds or ISO 8601 (2025-06-01T22:00)"
    )


def iso(epoch):
    """Epoch seconds → ISO 8601 in UTC (None stays None)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


def check_window(start, end, now):
    """Refuse a window that has ended or ends before it starts (both epoch seconds)."""
    if end <= start:
        raise ScheduleError(f"the window ends ({iso(end)}) before it starts ({iso(start)})")
    if end <= now:
        raise ScheduleError(f"the window {iso(start)} .. {iso(end)} is in the past (now {iso(now)})")


def _count_or_percent(spec, what):
    text = str(spec).strip() if not isinstance(spec, bool) else ""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%?)", text)
    if not match:
        raise ScheduleError(f"{what} must be a number of minions (2) or a percentage (25%), got {spec!r}")
    number, percent = float(match.group(1)), bool(match.group(2))
    if not percent and number != int(number):
        raise ScheduleError(f"{what} must be a whole number of minions or a percentage, got {spec!r}")
    return number, percent


def batch_size(spec, total):
    """``2`` → 2 minions per batch; ``25%`` → a quarter of ``total``, rounded up, at least 1."""
    number, percent = _count_or_percent(spec, "batch")
    if percent:
        if not 0 < number <= 100:
            raise ScheduleError(f"batch percentage must be in (0, 100], got {spec!r}")
        return max(1, math.ceil(total * number / 100))
    if number < 1:
        raise ScheduleError(f"batch must be at least 1 minion, got {spec!r}")
    return int(number)


def fail_limit(spec, total):
    """
    How many failed minions are tolerated: ``3`` → 3; ``20%`` → 20 % of ``total``
    (rounded down). The rollout halts when failures pass this, so ``0`` stops at
    the first failure.
    """
    number, percent = _count_or_percent(spec, "max_fail")
    if percent:
        if number > 100:
            raise ScheduleError(f"max_fail percentage must be at most 100, got {spec!r}")
        return math.floor(total * number / 100)
    return int(number)
