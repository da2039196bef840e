"""
Pool keeper plan: pure functions from (pool config, cloud listing, placement
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

import host_capacity
import pool_config
from pool_config import POOL_KEY, STATE_KEY, PoolConfigError, target_spares  # noqa: F401  (the keeper's API)

DEFAULTS = {
    "max_in_flight_total": 10,
    "backoff_base": 30,
    "backoff_max": 900,
    "degraded_after": 3,
    "name_prefix": "dfp",
    "ready_deadline": 1200,  # seconds from creation to "ready"; past it the desktop has failed
    "short_alert_after": 900,  # seconds below target before deskfleet/alert/pool fires
}


def validate_pools(pools):
    """Strict form of :func:`pool_config.validate`: raises on the first bad pool (tests, tools)."""
    good, errors = pool_config.validate(pools)
    if errors:
        raise PoolConfigError(next(iter(errors.values())))
    return good


# ---- classification --------------------------------------------------------------


def classify(server, now_ts=None, deadline=None):
    """``ready``, ``taken``, ``in_flight`` (BUILD or booted-not-ready), ``stuck`` (in flight past
    ``deadline`` seconds since ``created``), ``error``, ``gone`` or ``other``."""
    status = (server.get("status") or "").upper()
    state = (server.get("metadata") or {}).get(STATE_KEY)
    if status == "ERROR":
        return "error"
    if status in ("DELETED", "SOFT_DELETED"):
        return "gone"
    if status == "ACTIVE" and state in ("taken", "ready"):
        return state
    if status in ("BUILD", "ACTIVE"):
        created = server.get("created")
        if deadline and now_ts is not None and created is not None and now_ts - created > deadline:
            return "stuck"
        return "in_flight"
    return "other"


def census(servers, pools, now_ts=None, settings=None):
    """Per-pool lists of server ids by class; servers of unknown pools are listed apart."""
    default_deadline = (settings or DEFAULTS)["ready_deadline"]
    out = {name: {"ready": [], "taken": [], "in_flight": [], "stuck": [], "error": [], "other": []} for name in pools}
    stray = []
    for server in servers:
        pool = (server.get("metadata") or {}).get(POOL_KEY)
        if pool is None:
            continue
        if pool not in out:
            if classify(server) != "gone":
                stray.append(server["id"])
            continue
        kind = classify(server, now_ts, pools[pool].get("ready_deadline") or default_deadline)
        if kind != "gone":
            out[pool][kind].append(server["id"])
    return out, stray


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


def _entry(pool, c, target, health_state, drained):
    have = len(c["ready"]) + len(c["in_flight"])
    entry = {
        "target": target,
        **{k: len(c[k]) for k in ("ready", "in_flight", "taken", "error", "stuck")},
        "health": health_state,
        "boots": 0,
        "delete": list(c["error"]) + list(c["stuck"]),
        "failed": len(c["error"]) + len(c["stuck"]),  # new failures this pass (the runner records them)
        "problems": [],
        "reason": "",
    }
    if c["stuck"]:
        entry["problems"].append(f"{len(c['stuck'])} desktop(s) not ready within the deadline (deleted)")
    if entry["failed"]:  # fresh failures: delete them now, retry after the backoff
        entry["health"] = _worse(entry["health"], "backoff")
    if drained:
        entry["delete"] += c["ready"] + c["in_flight"]
        entry["reason"] = "drained"
    size = have + len(c["taken"])
    entry["want"] = max(0, min(target - have, pool["max_size"] - size, pool["max_in_flight"] - len(c["in_flight"])))
    return entry


def _boot(entry, pool, flavors, hosts, global_room):
    """Boots for one pool within the global room and what fits per host; returns the boots."""
    flavor = flavors.get(pool["flavor"])
    problem = None
    if flavor is None:
        problem = f"unknown flavor {pool['flavor']}"
    elif not hosts:
        problem = "placement lists no compute hosts"
    if problem:  # a failure of the pool: it backs off and, repeated, degrades
        entry["problems"].append(problem)
        entry["failed"] += 1
        entry["reason"] = problem
        return 0
    n = host_capacity.take(hosts, host_capacity.flavor_request(flavor), min(entry["want"], global_room))
    if n < entry["want"]:
        entry["reason"] = "capped by " + ("boot-storm limit" if n == global_room else "over-commit headroom (per host)")
    entry["boots"] = n
    return n


def plan(pools, servers, providers, flavors, health, now, settings=None, only=None, drained=()):
    """
    Decide boots and deletes for every pool (or only ``only``).

    pools     validated pool config (:func:`pool_config.validate`)
    servers   cloud listing: dicts with id, status, metadata, created (epoch seconds)
    providers placement per compute provider (:func:`host_capacity.hosts_from_placement`)
    flavors   {flavor name or id: {ram, vcpus, disk}}
    health    {pool: {failures, last_failure}} from the keeper's store
    now       timezone-aware datetime
    drained   pools being drained: no boots, spares deleted

    Returns ``{"pools": {pool: {...counts, boots, delete, failed, problems, reason}}, "boots": n,
    "in_flight_total": n}``. Boots are capped by each pool's deficit, its max_size, its max_in_flight,
    the global max_in_flight_total and what fits on each host (every resource on one host), pools
    whose shortfall is largest relative to target first. Desktops in flight past their readiness
    deadline are failures: deleted, counted against the pool's health, and no longer in flight.
    """
    settings = dict(DEFAULTS, **(settings or {}))
    now_ts = now.timestamp()
    counts, stray = census(servers, pools, now_ts, settings)
    in_flight_total = sum(len(c["in_flight"]) for c in counts.values())
    global_room = max(0, settings["max_in_flight_total"] - in_flight_total)
    hosts = host_capacity.hosts_from_placement(providers)
    result, order = {}, []
    for name, pool in pools.items():
        target = 0 if name in drained else target_spares(pool, now)
        state = pool_health(health.get(name), now_ts, settings)
        entry = result[name] = _entry(pool, counts[name], target, state, name in drained)
        if entry["want"] and (only is None or name in only) and entry["health"] == "ok" and name not in drained:
            order.append((-(target - entry["ready"] - entry["in_flight"]) / max(1, target), name))
        elif entry["want"] and entry["health"] != "ok":
            entry["reason"] = entry["health"]
    for _, name in sorted(order):
        global_room -= _boot(result[name], pools[name], flavors, hosts, global_room)
    if only is not None:
        result = {k: v for k, v in result.items() if k in only}
    return {
        "pools": result,
        "stray": stray,
        "boots": sum(e["boots"] for e in result.values()),
        "in_flight_total": in_flight_total,
    }


# ---- alerts and event checks -------------------------------------------------------


def shortage(entry, short_since, now_ts, settings):
    """
    Track how long a pool has had fewer ready desktops than its target. Returns
    ``(short_since, alert)``: the new start of the shortage (None when not short) and an
    alert dict once it lasted longer than ``short_alert_after`` (else None).
    """
    if entry["ready"] >= entry["target"] or entry.get("reason") == "drained":
        return None, None
    since = short_since or now_ts
    lasted = now_ts - since
    if lasted < settings["short_alert_after"]:
        return since, None
    alert = {"kind": "short", "ready": entry["ready"], "target": entry["target"], "short_for": int(lasted)}
    alert["message"] = f"{entry['ready']}/{entry['target']} ready for {int(lasted)} s ({entry.get('reason') or 'booting'})"
    return since, alert


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def status_rows(pools, health, counts, now, settings):
    """Per pool: target, counts by state, health and the last error, as ``vmpool.status`` shows them."""
    out = {}
    for name, pool in pools.items():
        h = health.get(name) or {}
        out[name] = {
            "target": 0 if h.get("drained") else target_spares(pool, now),
            "max_size": pool["max_size"],
            **{k: len(v) for k, v in counts[name].items()},
            "health": pool_health(h, now.timestamp(), settings),
            "failures": h.get("failures", 0),
            "last_error": h.get("last_error") if h.get("failures") else None,
            "drained": bool(h.get("drained")),
            "short_for": int(now.timestamp() - h["short_since"]) if h.get("short_since") else 0,
        }
    return out
