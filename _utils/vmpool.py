"""
Pool keeper logic: pure functions from (pool config, cloud listing, placement
capacity, keeper health) to a plan of boots and deletes. No I/O here; the
``vmpool`` runner lists the cloud, calls :func:`plan`, and carries it out.

Level-triggered: every call looks at the whole current state, so a dropped
or duplicated event costs nothing but a reconcile.

Server → pool membership and state live in server metadata, the cloud being
the source of truth:

- ``deskfleet_pool``: the pool name;
- ``deskfleet_state``: ``ready`` once the desktop baseline ran, ``taken`` once a
  user has it; absent while the VM boots.
"""

import datetime
import math
import re

POOL_KEY = "deskfleet_pool"
STATE_KEY = "deskfleet_state"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULTS = {
    "max_in_flight_total": 10,
    "backoff_base": 30,
    "backoff_max": 900,
    "degraded_after": 3,
    "name_prefix": "dfp",
}


class PoolConfigError(ValueError):
    """The pool pillar is malformed; the message says where."""


# ---- configuration ---------------------------------------------------------------


def _int(pool, key, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PoolConfigError(f"pool {pool}: {key} must be an integer >= {low}, got {value!r}")
    return value


def _days(pool, spec):
    spec = str(spec).lower()
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise PoolConfigError(f"pool {pool}: bad day range {part!r} (use mon-fri)")
            i, j = DAYS.index(a), DAYS.index(b)
            out.update(DAYS[k % 7] for k in range(i, j + 1 if j >= i else j + 8))
        elif part in DAYS:
            out.add(part)
        else:
            raise PoolConfigError(f"pool {pool}: bad day {part!r}")
    return sorted(out, key=DAYS.index)


def _hhmm(pool, value):
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(value))
    if not match:
        raise PoolConfigError(f"pool {pool}: time {value!r} is not HH:MM")
    return int(match.group(1)) * 60 + int(match.group(2))


def validate_pools(pools):
    """
    Check and normalise the ``deskfleet:pools`` pillar. Raises
    :class:`PoolConfigError` naming the pool and the field.
    """
    if not isinstance(pools, dict):
        raise PoolConfigError("deskfleet:pools must be a mapping of pool name to settings")
    out = {}
    for name, conf in pools.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise PoolConfigError(f"pool name {name!r}: use lower-case letters, digits and '-'")
        if not isinstance(conf, dict):
            raise PoolConfigError(f"pool {name}: settings must be a mapping")
        for key in ("flavor", "image", "network"):
            if not isinstance(conf.get(key), str) or not conf[key]:
                raise PoolConfigError(f"pool {name}: {key} is required")
        spares = _int(name, "spares", conf.get("spares", 0))
        max_size = _int(name, "max_size", conf.get("max_size", spares), 0)
        if max_size < spares:
            raise PoolConfigError(f"pool {name}: max_size {max_size} is below spares {spares}")
        metadata = conf.get("metadata") or {}
        if not isinstance(metadata, dict) or {POOL_KEY, STATE_KEY} & set(metadata):
            raise PoolConfigError(f"pool {name}: metadata must be a mapping without {POOL_KEY}/{STATE_KEY}")
        schedule = []
        for i, window in enumerate(conf.get("schedule") or []):
            if not isinstance(window, dict):
                raise PoolConfigError(f"pool {name}: schedule[{i}] must be a mapping")
            schedule.append(
                {
                    "days": _days(name, window.get("days", "mon-sun")),
                    "from": _hhmm(name, window.get("from", "00:00")),
                    "to": _hhmm(name, window.get("to", "23:59")),
                    "spares": _int(name, f"schedule[{i}].spares", window.get("spares")),
                }
            )
        out[name] = {
            "flavor": conf["flavor"],
            "image": conf["image"],
            "network": conf["network"],
            "metadata": {str(k): str(v) for k, v in metadata.items()},
            "spares": spares,
            "max_size": max_size,
            "max_in_flight": _int(name, "max_in_flight", conf.get("max_in_flight", 2), 1),
            "schedule": schedule,
        }
    return out


def target_spares(pool, now):
    """Spares wanted at ``now`` (a datetime): the first matching schedule window, else ``spares``."""
    day, minute = DAYS[now.weekday()], now.hour * 60 + now.minute
    for window in pool["schedule"]:
        if day in window["days"] and window["from"] <= minute < window["to"]:
            return window["spares"]
    return pool["spares"]


# ---- classification --------------------------------------------------------------


def classify(server):
    """``ready``, ``taken``, ``in_flight`` (BUILD or booted-not-ready), ``error`` or ``other``."""
    status = (server.get("status") or "").upper()
    state = (server.get("metadata") or {}).get(STATE_KEY)
    if status == "ERROR":
        return "error"
    if status == "BUILD":
        return "in_flight"
    if status == "ACTIVE":
        if state == "taken":
            return "taken"
        return "ready" if state == "ready" else "in_flight"
    if status in ("DELETED", "SOFT_DELETED"):
        return "gone"
    return "other"


def census(servers, pools):
    """Per-pool lists of server ids by class; servers of unknown pools are listed apart."""
    out = {name: {"ready": [], "taken": [], "in_flight": [], "error": [], "other": []} for name in pools}
    stray = []
    for server in servers:
        pool = (server.get("metadata") or {}).get(POOL_KEY)
        if pool is None:
            continue
        kind = classify(server)
        if kind == "gone":
            continue
        if pool not in out:
            stray.append(server["id"])
            continue
        out[pool][kind].append(server["id"])
    return out, stray


# ---- capacity --------------------------------------------------------------------


def headroom(providers):
    """
    Free capacity across compute resource providers from placement:
    ``providers`` is a list of ``{"inventories": {RC: {total, reserved, allocation_ratio}}, "usages": {RC: used}}``.
    Returns ``{RC: free}`` with free = Σ (total − reserved) × ratio − used (never below 0 per provider).
    """
    free = {}
    for rp in providers:
        for rc, inv in (rp.get("inventories") or {}).items():
            cap = (inv.get("total", 0) - inv.get("reserved", 0)) * inv.get("allocation_ratio", 1.0)
            used = (rp.get("usages") or {}).get(rc, 0)
            free[rc] = free.get(rc, 0) + max(0, math.floor(cap - used))
    return free


def fits(free, flavor):
    """How many servers of ``flavor`` ({ram, vcpus, disk}) fit in ``free``."""
    needs = {"MEMORY_MB": flavor.get("ram", 0), "VCPU": flavor.get("vcpus", 0), "DISK_GB": flavor.get("disk", 0)}
    # a resource class placement does not track (no inventory at all) does not limit
    counts = [max(0, free[rc]) // need for rc, need in needs.items() if need and rc in free]
    return min(counts) if counts else 0


def take(free, flavor, n):
    for rc, key in (("MEMORY_MB", "ram"), ("VCPU", "vcpus"), ("DISK_GB", "disk")):
        if flavor.get(key):
            free[rc] = free.get(rc, 0) - n * flavor[key]


# ---- health and backoff ----------------------------------------------------------


def backoff_seconds(failures, base, cap):
    return 0 if failures <= 0 else min(cap, base * 2 ** (failures - 1))


def pool_health(health, now_ts, settings):
    """``ok``, ``backoff`` (wait after failures) or ``degraded`` (too many in a row)."""
    failures = (health or {}).get("failures", 0)
    if failures >= settings["degraded_after"]:
        return "degraded"
    until = (health or {}).get("last_failure", 0) + backoff_seconds(failures, settings["backoff_base"], settings["backoff_max"])
    return "backoff" if failures and now_ts < until else "ok"


def _worse(a, b):
    order = ("ok", "backoff", "degraded")
    return max(a, b, key=order.index)


# ---- the plan --------------------------------------------------------------------


def plan(pools, servers, providers, flavors, health, now, settings=None, only=None, drained=()):
    """
    Decide boots and deletes for every pool (or only ``only``).

    pools     validated pool config (:func:`validate_pools`)
    servers   cloud listing: dicts with id, status, metadata
    providers placement inventories/usages per compute provider (:func:`headroom`)
    flavors   {flavor name or id: {ram, vcpus, disk}}
    health    {pool: {failures, last_failure}} from the keeper's store
    now       timezone-aware datetime
    drained   pools being drained: no boots, spares deleted

    Returns ``{"pools": {pool: {...counts, boots, delete, reason}}, "boots": n, "in_flight_total": n}``.
    Boots are capped by each pool's deficit, its max_size, its max_in_flight, the
    global max_in_flight_total and placement headroom, in that order of pools
    whose shortfall is largest relative to target.
    """
    settings = dict(DEFAULTS, **(settings or {}))
    counts, stray = census(servers, pools)
    in_flight_total = sum(len(c["in_flight"]) for c in counts.values())
    global_room = max(0, settings["max_in_flight_total"] - in_flight_total)
    free = headroom(providers)
    now_ts = now.timestamp()
    result = {}
    order = []
    for name, pool in pools.items():
        c = counts[name]
        target = 0 if name in drained else target_spares(pool, now)
        have = len(c["ready"]) + len(c["in_flight"])
        size = have + len(c["taken"])
        state = pool_health(health.get(name), now_ts, settings)
        if c["error"]:  # fresh failures: delete them now, retry after the backoff
            state = _worse(state, "backoff")
        entry = {
            "target": target,
            "ready": len(c["ready"]),
            "in_flight": len(c["in_flight"]),
            "taken": len(c["taken"]),
            "error": len(c["error"]),
            "health": state,
            "boots": 0,
            "delete": list(c["error"]),
            "reason": "",
        }
        if name in drained:
            entry["delete"] += c["ready"] + c["in_flight"]
            entry["reason"] = "drained"
        want = max(0, min(target - have, pool["max_size"] - size, pool["max_in_flight"] - len(c["in_flight"])))
        entry["want"] = want
        result[name] = entry
        if want and (only is None or name in only) and entry["health"] == "ok" and name not in drained:
            order.append((-(target - have) / max(1, target), name))
        elif want and entry["health"] != "ok":
            entry["reason"] = entry["health"]
    for _, name in sorted(order):
        entry, pool = result[name], pools[name]
        flavor = flavors.get(pool["flavor"])
        if flavor is None:
            entry["reason"] = f"unknown flavor {pool['flavor']}"
            continue
        n = min(entry["want"], global_room, fits(free, flavor))
        if n < entry["want"]:
            entry["reason"] = "capped by " + ("boot-storm limit" if n == global_room else "over-commit headroom")
        entry["boots"] = n
        global_room -= n
        take(free, flavor, n)
    if only is not None:
        result = {k: v for k, v in result.items() if k in only}
    return {
        "pools": result,
        "stray": stray,
        "boots": sum(e["boots"] for e in result.values()),
        "in_flight_total": in_flight_total,
    }


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
