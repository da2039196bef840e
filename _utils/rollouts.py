"""
Software rollouts: the catalog rules, batching, failure thresholds, the rollout
state machine and its tables in the deskfleet store.

Plain Python over a sqlite3 connection and a small *driver* (publish a job,
read the job cache, ask a minion whether a job is still running), so all of it
is tested without Salt. ``_runners/software.py`` is the thin shell that gives
it a Salt driver; ``_modules/software.py`` uses the catalog rules on the minion.

A rollout pins one catalog entry (name, version) and a frozen list of minions.
Each call of :meth:`Engine.tick` takes every due rollout under a lease in the
store (so two ticks never work on the same rollout at once) and moves it one
step: collect what came back, then dispatch at most one batch.

Rollout states::

    scheduled -> running -> completed        every minion done, failures within max_fail
                         -> halted           failures passed max_fail; the rest skipped
                         -> expired          the window ended first: minions not started are
                                             skipped, jobs still out are listed as ``left``
    scheduled|running    -> cancelled        by ops; pending minions skipped

Minion states: ``pending -> running -> succeeded | failed``; ``pending -> skipped``.
Each job carries ``not_after`` (the window end): a minion that gets it later
(unreachable, paused) refuses to install (``skipped``, "window closed"). A return
collected after the rollout closed is recorded with ``late``: ``summary`` lists
them, and the jobs still out at the close (``left``).

A minion's job id is written to the store *before* the job is published. After a
master restart (or a lost return) the next tick looks the job id up in the job
cache; only if there is no return and the minion says the job is not running is
it published again, and the install is idempotent by version, so nothing is
installed twice.
"""

import datetime
import json
import logging
import math
import os
import re
import secrets
import socket
import time

# Salt puts utils_dirs on sys.path while it loads runners and modules.
import deskfleet_store as store

log = logging.getLogger(__name__)

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
TARGET_TYPES = ("glob", "list", "pcre", "grain", "grain_pcre", "pillar", "compound", "nodegroup")
INSTALL_FUNCTION = "software.install"


class CatalogError(ValueError):
    """A catalog entry that cannot be used as it is."""


class ScheduleError(ValueError):
    """A ``software.schedule`` request that is refused."""


class LeaseLost(RuntimeError):
    """Another tick took the rollout over (our lease expired)."""


class DispatchError(RuntimeError):
    """The job could not be published."""


# ---- the catalog ------------------------------------------------------------------

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
GUID_RE = re.compile(r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$")
SOURCE_SCHEMES = ("salt://", "http://", "https://")
HIVES = {
    "HKLM": "HKLM",
    "HKEY_LOCAL_MACHINE": "HKLM",
    "HKCU": "HKCU",
    "HKEY_CURRENT_USER": "HKCU",
    "HKU": "HKU",
    "HKEY_USERS": "HKU",
    "HKCR": "HKCR",
    "HKEY_CLASSES_ROOT": "HKCR",
}
ENTRY_KEYS = {"name", "version", "source", "sha256", "args", "detect", "remove", "timeout", "success_codes", "linux"}
VARIANT_KEYS = ENTRY_KEYS - {"name", "version", "linux"}
DEFAULT_TIMEOUT = 1800
WINDOWS_SUCCESS = (0, 3010, 1641)  # 3010: reboot required, 1641: reboot started
REBOOT_CODES = (3010, 1641)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_sha256(value, what="sha256"):
    """A sha256 as 64 hex characters (any case) → lower case; else :class:`CatalogError`."""
    if not isinstance(value, str) or not SHA256_RE.match(value.strip()):
        hint = "" if isinstance(value, str) else f" ({type(value).__name__}: quote it in YAML)"
        raise CatalogError(f"{what} must be 64 hex characters, got {str(value)[:80]!r}{hint}")
    return value.strip().lower()


def _text(key, field, value, allow_empty=False):
    if isinstance(value, bool) or not isinstance(value, str):
        hint = " (quote it: YAML reads 1.10 as the number 1.1)" if field == "version" else ""
        raise CatalogError(f"{key}: {field} must be a string{hint}, got {type(value).__name__} {value!r}")
    if not value.strip() and not allow_empty:
        raise CatalogError(f"{key}: {field} is empty")
    return value.strip()


def _windows_detect(key, rule):
    if not isinstance(rule, dict) or len(rule) != 1:
        raise CatalogError(
            f"{key}: detect needs exactly one of product_code, registry, file_version; got {rule!r}"
        )
    (kind, spec), = rule.items()
    if kind == "product_code":
        code = _text(key, "detect.product_code", spec)
        if not GUID_RE.match(code):
            raise CatalogError(f"{key}: detect.product_code must look like {{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}}")
        return {"product_code": code.upper()}
    if kind == "registry":
        if not isinstance(spec, dict) or "key" not in spec:
            raise CatalogError(f"{key}: detect.registry needs key (HKLM\\SOFTWARE\\...) and value")
        full = _text(key, "detect.registry.key", spec["key"])
        hive, _, path = full.replace("/", "\\").partition("\\")
        if hive.upper() not in HIVES or not path:
            raise CatalogError(f"{key}: detect.registry.key must start with a hive (HKLM, HKCU, ...): {full!r}")
        value = spec.get("value", "DisplayVersion")
        return {
            "registry": {
                "hive": HIVES[hive.upper()],
                "key": path.strip("\\"),
                "value": _text(key, "detect.registry.value", value),
                "use_32bit_registry": bool(spec.get("use_32bit_registry", False)),
            }
        }
    if kind == "file_version":
        path = spec.get("path") if isinstance(spec, dict) else spec
        path = _text(key, "detect.file_version.path", path)
        if not re.match(r"^([A-Za-z]:\\|\\\\|%[A-Za-z_]+%)", path):
            raise CatalogError(f"{key}: detect.file_version.path must be an absolute Windows path: {path!r}")
        return {"file_version": {"path": path}}
    raise CatalogError(f"{key}: unknown detect rule {kind!r} (product_code, registry, file_version)")


def _linux_detect(key, rule):
    if not isinstance(rule, dict) or len(rule) != 1:
        raise CatalogError(f"{key}: linux detect needs exactly one of version_file, file_version; got {rule!r}")
    (kind, spec), = rule.items()
    if kind == "version_file":
        spec = {"path": spec} if isinstance(spec, str) else spec
        kind = "file_version"
    if kind != "file_version":
        raise CatalogError(f"{key}: unknown linux detect rule {kind!r} (version_file, file_version)")
    path = spec.get("path") if isinstance(spec, dict) else spec
    path = _text(key, "linux detect path", path)
    if not path.startswith("/"):
        raise CatalogError(f"{key}: linux detect path must be absolute: {path!r}")
    pattern = spec.get("pattern") if isinstance(spec, dict) else None
    if pattern is not None:
        try:
            if re.compile(_text(key, "detect pattern", pattern)).groups != 1:
                raise CatalogError(f"{key}: detect pattern must have exactly one group (the version)")
        except re.error as exc:
            raise CatalogError(f"{key}: detect pattern: {exc}") from exc
    return {"file_version": {"path": path, "pattern": pattern}}


def _variant(key, raw, platform):
    unknown = set(raw) - VARIANT_KEYS
    if unknown:
        raise CatalogError(f"{key}: unknown {platform} field(s) {', '.join(sorted(unknown))}")
    for field in ("source", "sha256", "detect"):
        if field not in raw:
            raise CatalogError(f"{key}: {platform} installer needs {field}")
    source = _text(key, "source", raw["source"])
    if not source.startswith(SOURCE_SCHEMES):
        raise CatalogError(f"{key}: source must be salt://, http:// or https://, got {source[:120]!r}")
    args = raw.get("args", "")
    args = "" if args is None else _text(key, "args", args, allow_empty=True)
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise CatalogError(f"{key}: timeout must be a positive number of seconds")
    codes = raw.get("success_codes", list(WINDOWS_SUCCESS if platform == "windows" else (0,)))
    if not isinstance(codes, list) or not codes or not all(type(c) is int for c in codes):  # noqa: E721 - no bools
        raise CatalogError(f"{key}: success_codes must be a list of exit codes")
    detect = _windows_detect(key, raw["detect"]) if platform == "windows" else _linux_detect(key, raw["detect"])
    remove = raw.get("remove")
    if remove is not None:
        if not isinstance(remove, dict) or len(remove) != 1 or not set(remove) <= {"args", "cmd"}:
            raise CatalogError(f"{key}: remove must be {{args: ...}} (run the installer) or {{cmd: ...}}")
        (rkind, rval), = remove.items()
        remove = {rkind: _text(key, f"remove.{rkind}", rval, allow_empty=rkind == "args")}
    return {
        "source": source,
        "sha256": check_sha256(raw["sha256"], f"{key}: sha256"),
        "args": args,
        "detect": detect,
        "remove": remove,
        "timeout": timeout,
        "success_codes": sorted(set(codes)),
    }


def validate_entry(key, raw):
    """
    Check one catalog entry and return it normalised::

        {"key", "name", "version", "windows": {...} or None, "linux": {...} or None}

    The Windows installer is the entry's top level (source, sha256, args, detect,
    optional remove/timeout/success_codes); ``linux`` holds the same fields for
    Linux minions. At least one of them must be there.
    """
    if not isinstance(key, str) or not NAME_RE.match(key):
        raise CatalogError(f"catalog key {str(key)[:80]!r} must be letters, digits and . _ + -")
    if not isinstance(raw, dict):
        raise CatalogError(f"{key}: the entry is not a mapping")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise CatalogError(f"{key}: unknown field(s) {', '.join(sorted(unknown))}")
    if "version" not in raw:
        raise CatalogError(f"{key}: version is missing")
    version = _text(key, "version", raw["version"])
    name = _text(key, "name", raw.get("name", key))
    top = {k: v for k, v in raw.items() if k in VARIANT_KEYS}
    windows = _variant(key, top, "windows") if top else None
    linux = None
    if raw.get("linux") is not None:
        if not isinstance(raw["linux"], dict):
            raise CatalogError(f"{key}: linux must be a mapping")
        linux = _variant(key, raw["linux"], "linux")
    if windows is None and linux is None:
        raise CatalogError(f"{key}: no installer (top-level source/sha256/args/detect for Windows, or linux:)")
    return {"key": key, "name": name, "version": version, "windows": windows, "linux": linux}


def catalog_entry(catalog, key):
    """The validated entry ``key`` of a ``software:catalog`` mapping, or :class:`CatalogError`."""
    if not isinstance(catalog, dict) or not catalog:
        raise CatalogError("the software catalog (pillar software:catalog) is empty or missing")
    if key not in catalog:
        known = ", ".join(sorted(str(k) for k in catalog)[:20])
        raise CatalogError(f"unknown package {str(key)[:80]!r}; the catalog has: {known}")
    return validate_entry(key, catalog[key])


def hashes(entry):
    """The installer sha256 of each platform of a validated entry."""
    return {p: entry[p]["sha256"] for p in ("windows", "linux") if entry.get(p)}


# ---- versions -----------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\d+|[A-Za-z]+")


def _version_key(version):
    parts = [int(t) if t.isdigit() else t.lower() for t in _TOKEN_RE.findall(str(version))]
    while parts and parts[-1] == 0:  # 8.6.9 == 8.6.9.0
        parts.pop()
    return parts


def compare_versions(left, right):
    """-1, 0, 1 like ``cmp``: numeric parts compared as numbers, ``1.10 > 1.9``, ``8.6.9 == 8.6.9.0``."""
    a, b = _version_key(left), _version_key(right)
    for x, y in zip(a, b):
        if x == y:
            continue
        if isinstance(x, int) and isinstance(y, int):
            return -1 if x < y else 1
        if isinstance(x, int):  # 1.0.1 > 1.0rc
            return 1
        if isinstance(y, int):
            return -1
        return -1 if x < y else 1
    longer_is_a = len(a) > len(b)
    rest = (a if longer_is_a else b)[min(len(a), len(b)):]
    for extra in rest:
        if extra == 0:
            continue
        # 1.0.1 > 1.0, but 1.0rc1 < 1.0 (a pre-release)
        bigger = isinstance(extra, int)
        return (1 if bigger else -1) * (1 if longer_is_a else -1)
    return 0


# ---- schedule-time parsing ------------------------------------------------------------

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


def outcome(ret):
    """
    A minion's ``software.install`` return → (state, installed, changed, detail).
    Anything but a dict with ``result: True`` is a failure.
    """
    if isinstance(ret, dict) and ret.get("window_closed") is True:
        return "skipped", _short(ret.get("installed")), False, _short(ret.get("comment") or "window closed")
    if isinstance(ret, dict) and ret.get("result") is True:
        return "succeeded", _short(ret.get("installed")), bool(ret.get("changes")), _short(ret.get("comment"))
    if isinstance(ret, dict):
        return "failed", _short(ret.get("installed")), bool(ret.get("changes")), _short(ret.get("comment") or ret)
    return "failed", None, False, _short(ret)


def _short(value, limit=500):
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the store --------------------------------------------------------------------------


def open_store(opts):
    """Open the vm master's store (path from ``deskfleet:vm:db`` or the cachedir)."""
    return store.open_role(opts, "vm", MIGRATIONS)


def new_id(now):
    return time.strftime("%Y%m%d", time.gmtime(now)) + "-" + secrets.token_hex(3)


def create(conn, *, software, version, entry, target, tgt_type, minions, batch, max_fail, start, end, now,
           sha256=None, created_by=None):
    """Store a validated rollout with its frozen minion list; returns its id."""
    minions = sorted(set(minions))
    size, limit = batch_size(batch, len(minions)), fail_limit(max_fail, len(minions))
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


def _rollout(conn, rollout_id):
    return conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()


def summary(conn, rollout_id, now=None):
    """A rollout's settings, state and per-state minion counts (None if unknown)."""
    row = _rollout(conn, rollout_id)
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
        "window": {"start": iso(row["start_at"]), "end": iso(row["end_at"])},
        "created": iso(row["created_at"]),
        "finished": iso(row["finished_at"]),
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
            "dispatched": iso(r["dispatched_at"]),
            "finished": iso(r["finished_at"]),
        }
        for r in conn.execute("SELECT * FROM rollout_minions WHERE rollout_id = ? ORDER BY position", (rollout_id,))
    }
    result["batches"] = [
        {
            "seq": r["seq"],
            "batch": r["batch"],
            "jid": r["jid"],
            "minions": json.loads(r["minions"]),
            "dispatched": iso(r["dispatched_at"]),
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
        row = _rollout(conn, rollout_id)
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


def acquire_lease(conn, rollout_id, owner, now, ttl):
    """
    Take the rollout for ``ttl`` seconds unless another owner holds an unexpired
    lease. A lease whose holder was a process on this host that no longer exists
    (a tick killed by a master restart) is taken over at once.
    """
    with store.transaction(conn):
        row = conn.execute("SELECT lease_owner, lease_until FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            return False
        holder = row["lease_owner"]
        free = holder is None or row["lease_until"] is None or row["lease_until"] <= now or holder == owner
        if not free and not _holder_gone(holder):
            return False
        conn.execute(
            "UPDATE rollouts SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, now + ttl, rollout_id)
        )
        return True


def _holder_gone(holder):
    """True if ``holder`` (``host:pid:token``) names a process of this host that has exited."""
    host, _, rest = str(holder).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, someone else's
        return False
    return False


def renew_lease(conn, rollout_id, owner, now, ttl):
    with store.transaction(conn):
        _held(conn, rollout_id, owner)
        conn.execute("UPDATE rollouts SET lease_until = ? WHERE id = ?", (now + ttl, rollout_id))


def release_lease(conn, rollout_id, owner):
    with store.transaction(conn):
        conn.execute(
            "UPDATE rollouts SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
            (rollout_id, owner),
        )


def _held(conn, rollout_id, owner):
    row = conn.execute("SELECT lease_owner FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if row is None or row["lease_owner"] != owner:
        raise LeaseLost(f"rollout {rollout_id}: lease now held by {row and row['lease_owner']!r}")


def lease_owner_name():
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# ---- the engine ---------------------------------------------------------------------------


class Engine:
    """
    Moves due rollouts forward, one step per :meth:`tick`.

    ``driver`` does the Salt side:

    - ``new_jid()`` → a fresh job id (written to the store before publishing);
    - ``publish(jid, minions, args, kwargs)`` → the minions the master targeted
      (raise :class:`DispatchError` if it could not publish);
    - ``returns(jid)`` → ``{minion: return}`` found in the job cache;
    - ``find_job(jid, minions)`` → ``{minion: True (still running) / False (not
      running)}`` for the minions that answered.

    wait
        seconds a tick waits for the returns of the batch it dispatched; what
        has not come back by then is collected by a later tick
    grace
        a job younger than this is never asked after (the minion may not have
        started it yet); older and neither returned nor running → published again
    job_timeout
        a job out for longer than this without a return counts as failed
    max_attempts
        publications per minion before a lost job counts as failed
    """

    def __init__(self, conn, driver, *, clock=time.time, sleep=time.sleep, owner=None, wait=30.0, poll=0.5,
                 grace=30.0, job_timeout=1800.0, lease_ttl=None, max_attempts=3):
        self.conn = conn
        self.driver = driver
        self.clock = clock
        self.sleep = sleep
        self.owner = owner or lease_owner_name()
        self.wait = float(wait)
        self.poll = float(poll)
        self.grace = float(grace)
        self.job_timeout = float(job_timeout)
        self.lease_ttl = float(lease_ttl) if lease_ttl else self.wait + 120.0
        self.max_attempts = int(max_attempts)

    # -- public

    def tick(self, only=None):
        """One step for every due rollout (or just ``only``). Returns one report per rollout."""
        reports = []
        for rollout_id in due(self.conn, self.clock()):
            if only is not None and rollout_id != only:
                continue
            if not acquire_lease(self.conn, rollout_id, self.owner, self.clock(), self.lease_ttl):
                row = _rollout(self.conn, rollout_id)
                reports.append(
                    {"id": rollout_id, "action": "skipped", "comment": f"leased by {row['lease_owner']} (another tick)"}
                )
                continue
            report = {"id": rollout_id, "action": "none", "collected": {}, "dispatched": [], "republished": []}
            try:
                self._step(rollout_id, report)
            except LeaseLost as exc:
                report.update(action="aborted", comment=str(exc))
            except store.StoreError:
                raise  # the store itself: every rollout shares it; the runner reports it (exit 1, alert)
            except Exception as exc:  # pylint: disable=broad-except
                # one rollout's trouble (job cache unreadable, master away) must not stop the others
                log.exception("rollouts: tick of %s failed", rollout_id)
                report.update(action="error", comment=f"{type(exc).__name__}: {exc}")
            finally:
                release_lease(self.conn, rollout_id, self.owner)
            summ = summary(self.conn, rollout_id)
            report.update(state=summ["state"], counts=summ["counts"])
            if summ["reason"]:
                report["reason"] = summ["reason"]
            reports.append(report)
        return reports

    # -- one step

    def _step(self, rollout_id, report):
        self._absorb(rollout_id, report)
        self._chase(rollout_id, report)
        self._settle(rollout_id)
        self._advance(rollout_id, report)
        if report["dispatched"] or report["republished"]:
            self._wait_for_returns(rollout_id, report)
            self._settle(rollout_id)
        if report["dispatched"]:
            report["action"] = "dispatched"
        elif report["republished"]:
            report["action"] = "republished"
        elif report["collected"]:
            report["action"] = "collected"

    def _running(self, rollout_id):
        return self.conn.execute(
            "SELECT minion, jid, attempts, dispatched_at FROM rollout_minions"
            " WHERE rollout_id = ? AND state = 'running' ORDER BY position",
            (rollout_id,),
        ).fetchall()

    def _absorb(self, rollout_id, report):
        """Record every running minion whose job has a return in the job cache."""
        by_jid = {}
        for row in self._running(rollout_id):
            by_jid.setdefault(row["jid"], []).append(row["minion"])
        finished = []
        for jid, minions in by_jid.items():
            if not jid:
                continue
            found = self.driver.returns(jid)
            for minion in minions:
                if minion in found:
                    finished.append((minion, jid, outcome(found[minion])))
        if not finished:
            return
        now = self.clock()
        with store.transaction(self.conn):
            _held(self.conn, rollout_id, self.owner)
            late = int(_rollout(self.conn, rollout_id)["state"] not in ACTIVE)
            for minion, jid, (state, installed, changed, detail_text) in finished:
                cur = self.conn.execute(
                    "UPDATE rollout_minions SET state = ?, installed = ?, changed = ?, detail = ?, finished_at = ?,"
                    " late = ? WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                    (state, installed, int(changed), detail_text, now, late, rollout_id, minion, jid),
                )
                if cur.rowcount:
                    report["collected"][minion] = state
            self._touch(rollout_id, now)

    def _chase(self, rollout_id, report):
        """Jobs out for longer than ``grace`` with no return: still running, lost, or timed out?"""
        now = self.clock()
        old = [
            r for r in self._running(rollout_id)
            if r["dispatched_at"] is None or now - r["dispatched_at"] >= self.grace
        ]
        if not old:
            return
        answers = {}
        by_jid = {}
        for row in old:
            by_jid.setdefault(row["jid"], []).append(row["minion"])
        for jid, minions in by_jid.items():
            answers[jid] = self.driver.find_job(jid, minions) if jid else {}
        # a return may have landed while we asked
        self._absorb(rollout_id, report)
        still = {r["minion"]: r for r in self._running(rollout_id)}
        lost, failed = [], []
        now = self.clock()
        rollout = _rollout(self.conn, rollout_id)
        republish = rollout["state"] in ACTIVE and now < rollout["end_at"]
        for row in old:
            current = still.get(row["minion"])
            if current is None or current["jid"] != row["jid"]:
                continue
            answer = answers.get(row["jid"], {}).get(row["minion"])
            age = now - (row["dispatched_at"] or 0)
            if answer is False:
                if not republish:
                    why = "its window ended" if rollout["state"] in ACTIVE else f"the rollout is {rollout['state']}"
                    failed.append((row, f"job lost (no return, not running); not published again: {why}"))
                elif row["attempts"] < self.max_attempts:
                    lost.append(row["minion"])
                else:
                    failed.append((row, f"no return after {row['attempts']} attempts"))
            elif age > self.job_timeout:
                why = "still running" if answer else "no answer from the minion"
                failed.append((row, f"no return within job_timeout ({int(self.job_timeout)} s; {why})"))
        if failed:
            with store.transaction(self.conn):
                _held(self.conn, rollout_id, self.owner)
                for row, why in failed:
                    self.conn.execute(
                        "UPDATE rollout_minions SET state = 'failed', detail = ?, finished_at = ?"
                        " WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                        (why, now, rollout_id, row["minion"], row["jid"]),
                    )
                    report["collected"][row["minion"]] = "failed"
                self._touch(rollout_id, now)
        if lost:
            self._publish(rollout_id, lost, report, retry=True)

    def _settle(self, rollout_id):
        """Halt, complete or expire an active rollout whose counts say so."""
        now = self.clock()
        with store.transaction(self.conn):
            _held(self.conn, rollout_id, self.owner)
            row = _rollout(self.conn, rollout_id)
            if row["state"] not in ACTIVE:
                return
            found = counts(self.conn, rollout_id)
            if found["failed"] > row["fail_limit"]:
                self._finish(rollout_id, "halted", f"{found['failed']} failed, over max_fail {row['max_fail']}"
                             f" ({row['fail_limit']} allowed)", "rollout halted: too many failures", now)
            elif now >= row["end_at"] and (found["pending"] or found["running"]):
                # past the window nothing is dispatched; jobs still out are named, their returns come in late
                left = [r["minion"] for r in self._running(rollout_id)]
                self._finish(rollout_id, "expired", f"window ended with {found['pending']} minions not started"
                             + (f" and {len(left)} with no return: {', '.join(left[:20])}" if left else ""),
                             "maintenance window ended", now)
            elif found["running"]:
                return
            elif not found["pending"]:
                self._finish(rollout_id, "completed", f"{found['succeeded']} succeeded, {found['failed']} failed,"
                             f" {found['skipped']} skipped", None, now)

    def _finish(self, rollout_id, state, reason, skip_detail, now):
        self.conn.execute(
            "UPDATE rollouts SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (state, reason, now, now, rollout_id),
        )
        if skip_detail:
            self.conn.execute(
                "UPDATE rollout_minions SET state = 'skipped', detail = ?, finished_at = ?"
                " WHERE rollout_id = ? AND state = 'pending'",
                (skip_detail, now, rollout_id),
            )

    def _advance(self, rollout_id, report):
        """Dispatch the next batch if the rollout is active, in its window and nothing is out."""
        now = self.clock()
        row = _rollout(self.conn, rollout_id)
        if row["state"] not in ACTIVE or not row["start_at"] <= now < row["end_at"]:
            return
        if self._running(rollout_id):
            report["comment"] = "waiting for the running batch"
            return
        pending = self.conn.execute(
            "SELECT minion FROM rollout_minions WHERE rollout_id = ? AND state = 'pending' ORDER BY position LIMIT ?",
            (rollout_id, row["batch_size"]),
        ).fetchall()
        if pending:
            self._publish(rollout_id, [r["minion"] for r in pending], report, retry=False)

    def _publish(self, rollout_id, minions, report, retry):
        """Write the job id first, then publish: a crash in between is found by the next tick."""
        jid = self.driver.new_jid()
        now = self.clock()
        with store.transaction(self.conn):
            _held(self.conn, rollout_id, self.owner)
            row = _rollout(self.conn, rollout_id)
            want = "running" if retry else "pending"
            if not retry and row["state"] not in ACTIVE:
                return
            marks = ",".join("?" for _ in minions)
            minions = [
                r["minion"]
                for r in self.conn.execute(
                    f"SELECT minion FROM rollout_minions WHERE rollout_id = ? AND state = ? AND minion IN ({marks})"
                    " ORDER BY position",
                    (rollout_id, want, *minions),
                )
            ]
            if not minions:
                return
            if retry:
                batch = self.conn.execute(
                    "SELECT batch FROM rollout_minions WHERE rollout_id = ? AND minion = ?", (rollout_id, minions[0])
                ).fetchone()["batch"]
            else:
                batch = (self.conn.execute(
                    "SELECT MAX(batch) FROM rollout_minions WHERE rollout_id = ?", (rollout_id,)
                ).fetchone()[0] or 0) + 1
            seq = (self.conn.execute(
                "SELECT MAX(seq) FROM rollout_batches WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()[0] or 0) + 1
            self.conn.executemany(
                "UPDATE rollout_minions SET state = 'running', batch = ?, jid = ?, attempts = attempts + 1,"
                " dispatched_at = ?, detail = NULL WHERE rollout_id = ? AND minion = ?",
                [(batch, jid, now, rollout_id, m) for m in minions],
            )
            self.conn.execute(
                "INSERT INTO rollout_batches (rollout_id, seq, batch, jid, minions, dispatched_at, retry)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rollout_id, seq, batch, jid, json.dumps(minions), now, int(retry)),
            )
            if row["state"] == "scheduled":
                self.conn.execute("UPDATE rollouts SET state = 'running' WHERE id = ?", (rollout_id,))
            self._touch(rollout_id, now)
        entry = json.loads(row["entry"])
        kwargs = {"version": row["version"], "not_after": row["end_at"]}
        if row["sha256"]:
            kwargs["sha256"] = row["sha256"]
        (report["republished"] if retry else report["dispatched"]).extend(minions)
        report.setdefault("jids", []).append(jid)
        try:
            targeted = self.driver.publish(jid, minions, [entry["key"]], kwargs)
        except DispatchError as exc:
            # Left running: the next tick asks the minions and publishes again if the job never arrived.
            with store.transaction(self.conn):
                self.conn.execute(
                    "UPDATE rollout_batches SET error = ? WHERE rollout_id = ? AND seq = ?",
                    (_short(str(exc)), rollout_id, seq),
                )
            report["error"] = f"publish of {jid} failed: {exc}"
            return
        absent = [m for m in minions if targeted is not None and m not in targeted]
        if absent:
            now = self.clock()
            with store.transaction(self.conn):
                self.conn.executemany(
                    "UPDATE rollout_minions SET state = 'skipped', detail = 'no accepted key when the batch ran',"
                    " finished_at = ? WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                    [(now, rollout_id, m, jid) for m in absent],
                )
            for minion in absent:
                report["collected"][minion] = "skipped"

    def _wait_for_returns(self, rollout_id, report):
        deadline = self.clock() + self.wait
        renew_at = self.clock() + self.lease_ttl / 2
        while True:
            self._absorb(rollout_id, report)
            if not self._running(rollout_id) or self.clock() >= deadline:
                return
            if self.clock() >= renew_at:
                renew_lease(self.conn, rollout_id, self.owner, self.clock(), self.lease_ttl)
                renew_at = self.clock() + self.lease_ttl / 2
            self.sleep(min(self.poll, max(0.0, deadline - self.clock())))

    def _touch(self, rollout_id, now):
        self.conn.execute("UPDATE rollouts SET updated_at = ? WHERE id = ?", (now, rollout_id))
