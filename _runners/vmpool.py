"""
Pool keeper: keeps pools of pre-booted desktop VMs topped up (vm master).

Pools live in pillar (``deskfleet:pools``, see ``pillar/vm.pools.pillar.example``); the cloud is the
source of truth (server metadata, see ``_utils/pool_plan.py``), reached through openstacksdk and
clouds.yaml only (``_utils/pool_cloud.py``). Reactor events and the master schedule call
:func:`replenish` / :func:`reconcile`: level-triggered, one lock per master, bounded cloud calls;
every error exits 1 and fires ``deskfleet/alert/pool``.
"""

import functools
import logging
import re
import sqlite3
import time
import types

log = logging.getLogger(__name__)

__virtualname__ = "vmpool"

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import desktop_probe
    import desktop_seed
    import pool_cloud
    import pool_config
    import pool_events
    import pool_health
    import pool_plan
    import pool_reclaim_pass

    from pool_cloud import CLOUD_ERRORS

    _MISSING = None
except ImportError as _exc:  # pragma: no cover
    glue, _MISSING = None, f"vmpool: missing dependency: {_exc}"
    deskfleet_store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error
    pool_cloud = types.SimpleNamespace(CONNECT_DEFAULTS={})

ALERT_TAG = "deskfleet/alert/pool"
# bounded cloud calls: a hung API costs at most (retries + 1) x timeout per call, and a pass sends
# no more deletes or boots after pass_timeout, so the keeper lock is always released in bounded time
CLOUD_DEFAULTS = {**pool_cloud.CONNECT_DEFAULTS, "pass_timeout": 120, "lock_timeout": 180, "start_ping_timeout": 30}
KeeperBusy = glue.Busy if glue else Exception  # another keeper pass holds the lock past lock_timeout


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


# ---- plumbing -------------------------------------------------------------------


def _error(message, kind="error", **extra):
    """The error return (salt-run and orchestration fail) plus ``deskfleet/alert/pool`` for ops."""
    glue.alert(__opts__, ALERT_TAG, {"pool": extra.get("pool"), "kind": kind, "message": message})
    return glue.error(__context__, message, **extra)


def _connect():
    _settings()  # a bad bound is an error naming it, before any call
    return pool_cloud.connect_conf(glue.conf(__opts__, "vm"))


def _store():
    return deskfleet_store.open_role(__opts__, "vm", pool_health.MIGRATIONS)


def _lock(timeout):
    """One keeper at a time on this master: concurrent events queue here, then see fresh state."""
    return glue.master_lock(__opts__, "vmpool", timeout, f"another keeper pass held the lock for over {timeout} s")


def _pools():
    """``(good pools, {bad pool: message})`` from the pillar; one bad pool never hides the others."""
    try:
        pillar = glue.master_pillar(__opts__)
    except glue.PillarError as exc:
        raise pool_plan.PoolConfigError(str(exc)) from None
    return pool_config.validate((pillar.get("deskfleet") or {}).get("pools"))


def _settings():
    settings = glue.settings(__opts__, "vm:pool_keeper", {**pool_plan.DEFAULTS, **CLOUD_DEFAULTS})
    for key, value in settings.items():
        if key != "name_prefix" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise pool_plan.PoolConfigError(f"deskfleet:vm:pool_keeper:{key} must be a number >= 0, got {value!r}")
    if not isinstance(settings["name_prefix"], str) or not pool_config.NAME_RE.fullmatch(settings["name_prefix"]):
        raise pool_plan.PoolConfigError("deskfleet:vm:pool_keeper:name_prefix must be lower-case letters, digits, '-'")
    return settings


def _execute(conn, db, pools, decision, flavors, health, deadline):
    """Carry out a plan: delete failed/drained servers, boot the planned ones, record failures."""
    actions = {"booted": [], "deleted": [], "errors": []}
    prefix = _settings()["name_prefix"]
    for name, entry in decision["pools"].items():
        failures = (health.get(name) or {}).get("failures", 0)
        problems = list(entry["problems"])
        for server_id in entry["delete"]:
            if time.monotonic() > deadline:
                problems.append("pass deadline reached before every delete was sent")
                break
            try:
                conn.compute.delete_server(server_id, ignore_missing=True)
                actions["deleted"].append(server_id)
            except CLOUD_ERRORS as exc:
                actions["errors"].append(f"pool {name}: delete {server_id}: {exc}")
        boot_error = None
        for _ in range(entry["boots"]):
            if time.monotonic() > deadline:
                boot_error = "pass deadline reached before every boot was sent"
                break
            server_name = pool_cloud.new_name(prefix, name)
            try:
                flavor_id = flavors[pools[name]["flavor"]]["id"]
                # the desktop's minion key, accepted here before it boots (no pending key to pre-claim)
                seeded = desktop_seed.boot_args(__opts__, server_name)
                actions["booted"].append(pool_cloud.boot(conn, server_name, name, pools[name], flavor_id, **seeded))
            except CLOUD_ERRORS as exc:
                desktop_seed.unseed_for(__opts__, server_name)
                boot_error = f"boot refused: {exc}"
                break  # back off this pool; the next reconcile retries after the delay
        if boot_error:
            problems.append(boot_error)
        actions["errors"] += [f"pool {name}: {p}" for p in problems]
        new = entry["failed"] + (1 if boot_error else 0)
        if new:
            pool_health.record(db, name, failures + new, "; ".join(problems)[:1000] or f"{entry['error']} server(s) in ERROR")
        elif failures and entry["ready"]:
            pool_health.record(db, name, 0)  # a ready desktop again: the pool recovered
    return actions


def _alerts(db, decision, health, settings):
    """Track shortages; a pool short for longer than short_alert_after fires an alert."""
    out, now = [], time.time()
    for name, entry in decision["pools"].items():
        since, alert = pool_plan.shortage(entry, (health.get(name) or {}).get("short_since"), now, settings)
        pool_health.record(db, name, short_since=since)
        if alert:
            out.append(dict(alert, pool=name))
    return out


def _pass(conn, db, only):
    pools, bad = _pools()
    if only is not None and not set(only) <= set(pools) | set(bad):
        known = ", ".join(sorted(set(pools) | set(bad)))
        return _error(f"unknown pool(s): {', '.join(sorted(set(only) - set(pools)))}; known: {known}", kind="request")
    bad = {k: v for k, v in bad.items() if only is None or k in only}
    pools_run = pools if only is None or set(only) <= set(pools) else {}
    health, settings = pool_health.read(db), _settings()
    deadline = time.monotonic() + settings["pass_timeout"]
    drained = {p for p, h in health.items() if h.get("drained")}
    flavors = pool_cloud.flavors(conn, [p["flavor"] for p in pools.values()])
    servers, providers = pool_cloud.servers(conn, settings["name_prefix"]), pool_cloud.providers(conn)
    decision = pool_plan.plan(pools, servers, providers, flavors, health, pool_plan.utcnow(), settings, only, drained)
    decision["pools"] = {k: v for k, v in decision["pools"].items() if k in pools_run}
    decision.update(_execute(conn, db, pools, decision, flavors, health, deadline))
    health, now = pool_health.read(db), time.time()  # after this pass's failures and recoveries
    for name, entry in decision["pools"].items():
        entry["health"] = pool_plan.pool_health(health.get(name), now, settings)
        if entry["health"] == "degraded":  # a standing failure: every pass says so until ops reset it
            last = (health.get(name) or {}).get("last_error") or "?"
            decision["errors"].append(f"pool {name}: degraded (last error: {last[:300]}); fix it, then salt-run vmpool.reset {name}")
    decision["alerts"] = _alerts(db, decision, health, settings)
    decision["errors"] = list(bad.values()) + decision["errors"]
    return decision


def _finish(decision):
    """Alerts on the bus for every problem; any error makes the run fail (retcode 1)."""
    for alert in decision.get("alerts", []):
        glue.alert(__opts__, ALERT_TAG, alert)
    for err in decision.get("errors", []):
        named = re.match(r"pool ([a-z0-9][a-z0-9-]*): (degraded )?", err)
        kind = "degraded" if named and named.group(2) else "error"  # ops route a degraded pool on its own
        glue.alert(__opts__, ALERT_TAG, {"pool": named and named.group(1), "kind": kind, "message": err})
    if decision.get("errors"):
        return glue.error(__context__, "; ".join(decision["errors"])[:2000], **decision)
    return decision


def _guarded(body, locked):
    """``body(conn, db)`` (under the keeper lock if ``locked``) with every fault turned into an error return."""
    conn = db = None
    try:
        db = _store()
        conn = _connect()
        if not locked:
            return body(conn, db)
        with _lock(_settings()["lock_timeout"]):
            return body(conn, db)
    except pool_plan.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}", kind="config")
    except CLOUD_ERRORS as exc:
        log.warning("vmpool: cloud error: %s", exc)
        return _error(f"cloud error: {exc}", kind="cloud")
    except KeeperBusy as exc:
        return _error(f"keeper busy: {exc}", kind="lock")
    except (deskfleet_store.StoreError, sqlite3.Error) as exc:
        return _error(f"keeper store: {exc}", kind="store")
    finally:
        if db is not None:
            db.close()
        if conn is not None:
            conn.close()


def _run(only=None):
    decision = _guarded(lambda conn, db: _pass(conn, db, only), locked=True)
    return decision if "pools" not in decision else _finish(decision)  # bus I/O after the lock


def _status(conn, db):
    pools, bad = _pools()
    health, settings = pool_health.read(db), _settings()
    now = pool_plan.utcnow()
    counts, stray = pool_plan.census(pool_cloud.servers(conn, settings["name_prefix"]), pools, now.timestamp(), settings)
    result = {"pools": pool_plan.status_rows(pools, health, counts, now, settings), "stray": stray}
    if bad:
        result["errors"] = list(bad.values())
        return glue.error(__context__, "; ".join(result["errors"])[:2000], **result)
    return result


# ---- public runner functions --------------------------------------------------------


@deskfleet_store.guard
def reconcile():
    """
    Bring every pool to its target (the master schedule runs this periodically,
    because reactor events can be dropped).

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reconcile
    """
    return _run()


@deskfleet_store.guard
def replenish(pool):
    """
    Top up one pool now (what the reactor calls on a "taken" event).

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.replenish callcentre-win11
    """
    return _run(only={str(pool)})


@deskfleet_store.guard
def status():
    """
    Per pool: target, ready, in flight, stuck, taken, errors, health (ok, backoff,
    degraded), failures and the last error, drained, seconds short of target. Read-only;
    a malformed pool is listed as an error (retcode 1) and the others shown.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.status
    """
    return _guarded(_status, locked=False)


@deskfleet_store.guard
def drain(pool, undo=False):
    """
    Stop refilling a pool and delete its spare (not taken) desktops; ``undo=True``
    resumes it. Taken desktops are never touched.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.drain callcentre-win11
        salt-run vmpool.drain callcentre-win11 undo=True
    """
    try:
        pools, bad = _pools()
    except pool_plan.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}", kind="config")
    if pool in bad:
        return _error(f"pool {pool}: config: {bad[pool]}", kind="config", pool=pool)
    if pool not in pools:
        return _error(f"unknown pool {pool!r}; known: {', '.join(sorted(pools))}", kind="request")
    db = _store()
    try:
        with deskfleet_store.transaction(db):
            pool_health.record(db, pool, drained=not undo)
    finally:
        db.close()
    return _run(only={pool})


@deskfleet_store.guard
def reset(pool):
    """
    Clear a degraded pool's failure count after ops fixed the cause.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reset callcentre-win11
    """
    db = _store()
    try:
        with deskfleet_store.transaction(db):
            pool_health.record(db, str(pool), failures=0)
    finally:
        db.close()
    return {"pool": pool, "failures": 0}


def mark_ready(server):
    """
    Mark a pool desktop ready for users (after its baseline state ran). Called
    by the reactor's orchestration when the VM's minion starts.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.mark_ready dfp-callcentre-win11-1a2b3c4d
    """
    conn = None
    try:
        conn = _connect()
        found = conn.compute.find_server(str(server), ignore_missing=True)
        if found is None or pool_plan.POOL_KEY not in (found.metadata or {}):
            return _error(f"{server} is not a pool desktop")
        meta = dict(found.metadata)
        if meta.get(pool_plan.STATE_KEY) == "taken":
            return _error(f"{server} is already taken by a user; not marking it ready")
        conn.compute.set_server_metadata(found, **{pool_plan.STATE_KEY: "ready"})
        return {"server": found.name, "pool": meta[pool_plan.POOL_KEY], "state": "ready"}
    except CLOUD_ERRORS as exc:
        return _error(f"cloud error: {exc}", kind="cloud", server=str(server))
    except pool_plan.PoolConfigError as exc:
        return _error(f"keeper settings: {exc}", kind="config", server=str(server))
    finally:
        if conn is not None:
            conn.close()


def taken(pool):
    """
    The broker's call: a user took a desktop of ``pool``. Fires ``deskfleet/pool/taken``
    on the vm master's bus (the reactor tops the pool up); the broker role in salt-api
    may call this and nothing else (``salt_vm/master.d/80-portal.conf``). An unknown pool
    is an error naming it (exit 1), nothing fired.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.taken callcentre-win11
    """
    try:
        pools, bad = _pools()
    except pool_plan.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}", kind="config")
    if pool not in pools:
        known = f"; known: {', '.join(sorted(pools))}" if pools else ""
        why = f"config: {bad[pool]}" if pool in bad else f"unknown pool {pool!r}{known}"
        return glue.error(__context__, f"pool: {why}", parameter="pool")
    tag = pool_events.TAKEN_TAG
    if not glue.alert(__opts__, tag, {"pool": pool}):
        return _error(f"pool {pool}: could not fire {tag} on the master bus", kind="event", pool=pool)
    return {"pool": pool, "fired": tag}


@deskfleet_store.guard
def on_event(tag, data):
    """
    Validate a pool event from the reactor and act on it:

    - ``deskfleet/pool/taken`` ``{"pool": P}``: from the master/API (no minion id) or
      from a pool desktop of pool P itself (its minion id is its server name) → replenish P;
    - ``salt/minion/<id>/start`` → checked only (the orchestration ``orchestration/pool_vm_ready.sls``
      baselines and marks ready): ``<id>`` must have an accepted minion key and be a Nova server of
      a known pool that is ACTIVE and not yet ready or taken. ``data.id`` is not trusted.

    Anything else is refused with a reason (and logged), never acted on. The checks are
    ``_utils/pool_events.py``.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.on_event deskfleet/pool/taken '{"pool": "callcentre-win11"}'
    """
    try:
        kind = pool_events.kind(tag, data)  # before any lookup: junk is refused cheaply
        pools, _bad = _pools()
        if kind == "taken":
            return replenish(pool_events.taken_pool(data, pools, __opts__["id"], _is_member))
        key_accepted = functools.partial(desktop_probe.key_accepted, __opts__)
        vm, pool = pool_events.started_desktop(tag, data, pools, key_accepted, _find, _answers_ping)
        return {"server": vm, "pool": pool, "pool_member": True}
    except pool_events.Refused as exc:
        return _refuse(tag, str(exc))
    except pool_plan.PoolConfigError as exc:
        return _refuse(tag, f"pool pillar: {exc}")
    except CLOUD_ERRORS as exc:
        return _refuse(tag, f"cloud error while checking the event: {exc}")


def _answers_ping(vm):
    lookup = lambda jid: __salt__["jobs.lookup_jid"](jid, display_progress=False)  # noqa: E731 - the job cache
    return desktop_probe.answers_ping(__opts__, lookup, vm, _settings()["start_ping_timeout"])


def _refuse(tag, reason):
    log.warning("vmpool: refused event %s: %s", str(tag)[:120], reason)
    return glue.error(__context__, reason, refused=True, tag=str(tag)[:120], reason=reason)


def _find(server_name):
    conn = _connect()
    try:
        return pool_cloud.find(conn, server_name)
    finally:
        conn.close()


def _is_member(server_name, pool):
    found = _find(server_name)
    meta = found["metadata"] if found is not None else {}
    return pool_plan.POOL_KEY in meta and (pool is None or meta[pool_plan.POOL_KEY] == pool)


# ---- idle reclaim: pillar deskfleet:pools:<pool>:reclaim; _utils/pool_reclaim_pass.py (delete, keeper refills)


def _reclaim(apply):
    try:
        raw = (glue.master_pillar(__opts__).get("deskfleet") or {}).get("pools") or {}
        good, errors = _pools()
        if not errors and not any(isinstance(raw.get(n), dict) and raw[n].get("reclaim") is not None for n in good):
            return {"reclaim": [], "keep": [], "deleted": [], "pool_errors": {}, "note": "no pool has a reclaim policy"}
        conn = _connect()
        try:
            result = pool_reclaim_pass.run(deskfleet_store.default_path(__opts__, "vm"), conn, good, raw,
                                           _settings()["name_prefix"], apply, time.time(), errors)
        finally:
            conn.close()
    except (pool_plan.PoolConfigError, glue.PillarError, *CLOUD_ERRORS) as exc:
        return _error(f"reclaim: {exc}", kind="reclaim")
    if result["pool_errors"]:
        return _error(f"bad reclaim policy: {'; '.join(result['pool_errors'].values())[:500]}", kind="reclaim", **result)
    return result


@deskfleet_store.guard
def reclaimable():
    """
    Dry run of idle reclaim: which taken desktops would go back to their pool now (logged off, or
    disconnected past ``reclaim_after``, outside protected hours) and why every other one stays.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reclaimable
    """
    return _reclaim(apply=False)


@deskfleet_store.guard
def reclaim():
    """
    Reclaim idle taken desktops by their pool's policy: each is deleted and the keeper refills the
    pool. Never one with a connected user or without a fresh session report. Idle time counts from
    the first pass that saw it: the master schedule runs it (``salt_vm/master.d/20-pools.conf``).

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reclaim
    """
    try:
        with _lock(_settings()["lock_timeout"]):
            return _reclaim(apply=True)
    except KeeperBusy as exc:
        return _error(f"reclaim: {exc}", kind="reclaim")
