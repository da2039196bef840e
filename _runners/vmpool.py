"""
Pool keeper: keeps pools of pre-booted desktop VMs topped up (vm master).

Pools live in pillar (``deskfleet:pools``, see ``pillar/vm.pools.pillar.example``); the cloud is the
source of truth (server metadata, see ``_utils/vmpool.py``), reached through openstacksdk and
clouds.yaml only (``_utils/pool_cloud.py``). Reactor events and the master schedule call
:func:`replenish` / :func:`reconcile`: level-triggered, one lock per master, bounded cloud calls;
every error exits 1 and fires ``deskfleet/alert/pool``.
"""

import contextlib
import errno
import fcntl
import logging
import os
import re
import sqlite3
import time

log = logging.getLogger(__name__)

__virtualname__ = "vmpool"

try:
    import deskfleet_store
    import desktop_probe
    import desktop_seed
    import pool_cloud
    import pool_health
    import pool_config
    import vmpool as keeper

    from pool_cloud import CLOUD_ERRORS

    HAS_DEPS = True
except ImportError as _exc:  # pragma: no cover
    HAS_DEPS = False
    _IMPORT_ERROR = str(_exc)

ALERT_TAG = "deskfleet/alert/pool"
# bounded cloud calls: a hung API costs at most (retries + 1) x timeout per call, and a pass sends
# no more deletes or boots after pass_timeout, so the keeper lock is always released in bounded time
CLOUD_DEFAULTS = {"cloud_timeout": 10, "cloud_retries": 1, "pass_timeout": 120, "lock_timeout": 180, "start_ping_timeout": 30}


class KeeperBusy(Exception):
    """Another keeper pass holds the lock for longer than lock_timeout."""


def __virtual__():
    if not HAS_DEPS:
        return (False, f"vmpool: missing dependency: {_IMPORT_ERROR}")
    role = (__opts__.get("deskfleet") or {}).get("role")
    if role != "vm":
        return (False, f"vmpool: runs on the vm master only (deskfleet:role is {role!r})")
    return __virtualname__


# ---- plumbing -------------------------------------------------------------------


def _error(message, **extra):
    """An error return that also makes salt-run (and orchestration) fail, and an alert on the bus."""
    __context__["retcode"] = 1  # orchestration sees the failure
    _alert({"pool": extra.get("pool"), "kind": extra.pop("kind", "error"), "message": message})
    return dict(extra, error=message, retcode=1)  # salt-run exits 1


def _alert(data):
    """Fire ``deskfleet/alert/pool`` on the master bus (best effort: the return carries it too)."""
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    try:
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
            bus.fire_event(data, ALERT_TAG)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("vmpool: could not fire %s: %s", ALERT_TAG, exc)


def _vm_conf():
    return (__opts__.get("deskfleet") or {}).get("vm") or {}


def _connect():
    settings = _settings()
    return pool_cloud.connect(_vm_conf(), settings["cloud_timeout"], settings["cloud_retries"])


def _store():
    return deskfleet_store.connect(deskfleet_store.default_path(__opts__, "vm"), pool_health.MIGRATIONS)


@contextlib.contextmanager
def _lock(timeout):
    """One keeper at a time on this master: concurrent events queue here, then see fresh state."""
    path = os.path.join(__opts__["cachedir"], "deskfleet", "vmpool.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise KeeperBusy(f"another keeper pass held the lock for over {timeout} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pools():
    """``(good pools, {bad pool: message})`` from the pillar; one bad pool never hides the others."""
    import salt.pillar  # pylint: disable=import-outside-toplevel

    pillar = salt.pillar.get_pillar(__opts__, {}, __opts__["id"], saltenv="base").compile_pillar()
    if pillar.get("_errors"):
        raise keeper.PoolConfigError(f"pillar does not render: {'; '.join(map(str, pillar['_errors']))[:500]}")
    return pool_config.validate((pillar.get("deskfleet") or {}).get("pools"))


def _settings():
    settings = {**keeper.DEFAULTS, **CLOUD_DEFAULTS, **((_vm_conf().get("pool_keeper")) or {})}
    for key, value in settings.items():
        if key != "name_prefix" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise keeper.PoolConfigError(f"deskfleet:vm:pool_keeper:{key} must be a number >= 0, got {value!r}")
    if not isinstance(settings["name_prefix"], str) or not pool_config.NAME_RE.fullmatch(settings["name_prefix"]):
        raise keeper.PoolConfigError("deskfleet:vm:pool_keeper:name_prefix must be lower-case letters, digits, '-'")
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
        since, alert = keeper.shortage(entry, (health.get(name) or {}).get("short_since"), now, settings)
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
    decision = keeper.plan(pools, servers, providers, flavors, health, keeper.utcnow(), settings, only, drained)
    decision["pools"] = {k: v for k, v in decision["pools"].items() if k in pools_run}
    decision.update(_execute(conn, db, pools, decision, flavors, health, deadline))
    health, now = pool_health.read(db), time.time()  # after this pass's failures and recoveries
    for name, entry in decision["pools"].items():
        entry["health"] = keeper.pool_health(health.get(name), now, settings)
        if entry["health"] == "degraded":  # a standing failure: every pass says so until ops reset it
            last = (health.get(name) or {}).get("last_error") or "?"
            decision["errors"].append(f"pool {name}: degraded (last error: {last[:300]}); fix it, then salt-run vmpool.reset {name}")
    decision["alerts"] = _alerts(db, decision, health, settings)
    decision["errors"] = list(bad.values()) + decision["errors"]
    return decision


def _finish(decision):
    """Alerts on the bus for every problem; any error makes the run fail (retcode 1)."""
    for alert in decision.get("alerts", []):
        _alert(alert)
    for err in decision.get("errors", []):
        named = re.match(r"pool ([a-z0-9][a-z0-9-]*): ", err)
        _alert({"pool": named and named.group(1), "kind": "error", "message": err})
    if decision.get("errors"):
        __context__["retcode"] = 1
        decision.update(error="; ".join(decision["errors"])[:2000], retcode=1)
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
    except keeper.PoolConfigError as exc:
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
    now = keeper.utcnow()
    counts, stray = keeper.census(pool_cloud.servers(conn, settings["name_prefix"]), pools, now.timestamp(), settings)
    out = {}
    for name, pool in pools.items():
        h = health.get(name) or {}
        out[name] = {
            "target": 0 if h.get("drained") else keeper.target_spares(pool, now),
            "max_size": pool["max_size"],
            **{k: len(v) for k, v in counts[name].items()},
            "health": keeper.pool_health(h, now.timestamp(), settings),
            "failures": h.get("failures", 0),
            "last_error": h.get("last_error") if h.get("failures") else None,
            "drained": bool(h.get("drained")),
            "short_for": int(now.timestamp() - h["short_since"]) if h.get("short_since") else 0,
        }
    result = {"pools": out, "stray": stray}
    if bad:
        result["errors"] = list(bad.values())
        __context__["retcode"] = 1
        result.update(error="; ".join(result["errors"])[:2000], retcode=1)
    return result


# ---- public runner functions --------------------------------------------------------


def reconcile():
    """
    Bring every pool to its target (the master schedule runs this periodically,
    because reactor events can be dropped).

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reconcile
    """
    return _run()


def replenish(pool):
    """
    Top up one pool now (what the reactor calls on a "taken" event).

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.replenish callcentre-win11
    """
    return _run(only={str(pool)})


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
    except keeper.PoolConfigError as exc:
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
        if found is None or keeper.POOL_KEY not in (found.metadata or {}):
            return _error(f"{server} is not a pool desktop")
        meta = dict(found.metadata)
        if meta.get(keeper.STATE_KEY) == "taken":
            return _error(f"{server} is already taken by a user; not marking it ready")
        conn.compute.set_server_metadata(found, **{keeper.STATE_KEY: "ready"})
        return {"server": found.name, "pool": meta[keeper.POOL_KEY], "state": "ready"}
    except CLOUD_ERRORS as exc:
        return _error(f"cloud error: {exc}", kind="cloud", server=str(server))
    except keeper.PoolConfigError as exc:
        return _error(f"keeper settings: {exc}", kind="config", server=str(server))
    finally:
        if conn is not None:
            conn.close()


# Events are only triggers: the keeper re-reads the cloud, so a dropped, duplicated or forged
# "taken" event costs one bounded keeper pass. A start event leads to a baseline and a ready
# mark, so its subject is checked against what a desktop cannot forge (keeper.check_start).
TAKEN_TAG = "deskfleet/pool/taken"


def on_event(tag, data):
    """
    Validate a pool event from the reactor and act on it:

    - ``deskfleet/pool/taken`` ``{"pool": P}``: from the master/API (no minion id) or
      from a pool desktop of pool P itself (its minion id is its server name) → replenish P;
    - ``salt/minion/<id>/start`` → checked only (the orchestration ``orchestration/pool_vm_ready.sls``
      baselines and marks ready): ``<id>`` must have an accepted minion key and be a Nova server of
      a known pool that is ACTIVE and not yet ready or taken. ``data.id`` is not trusted.

    Anything else is refused with a reason (and logged), never acted on.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.on_event deskfleet/pool/taken '{"pool": "callcentre-win11"}'
    """
    if not isinstance(data, dict):
        return _refuse(tag, "event data is not a mapping")
    try:
        pools, _bad = _pools()
        if tag == TAKEN_TAG:
            return _on_taken(tag, data, pools)
        if keeper.START_TAG_RE.fullmatch(str(tag)):
            return _on_start(tag, data, pools)
    except keeper.PoolConfigError as exc:
        return _refuse(tag, f"pool pillar: {exc}")
    except CLOUD_ERRORS as exc:
        return _refuse(tag, f"cloud error while checking the event: {exc}")
    return _refuse(tag, "not a pool event")


def _on_taken(tag, data, pools):
    sender = data.get("id")
    payload = data.get("data") if isinstance(data.get("data"), dict) else data
    pool = payload.get("pool")
    if not isinstance(pool, str) or pool not in pools:
        return _refuse(tag, f"unknown pool {str(pool)[:64]!r}")
    if sender is not None and sender != __opts__["id"] and not _is_member(sender, pool):
        return _refuse(tag, f"{str(sender)[:64]} is neither the master nor a desktop of pool {pool}")
    return replenish(pool)


def _on_start(tag, data, pools):
    vm = keeper.START_TAG_RE.fullmatch(str(tag)).group(1)
    server = None
    if _key_accepted(vm):
        conn = _connect()
        try:
            server = pool_cloud.find(conn, vm)
        finally:
            conn.close()
    reason = keeper.check_start(tag, data, server, _key_accepted(vm), pools)
    if not reason and not _answers(vm):
        reason = f"{vm} did not answer a ping over the authenticated return path (a forged start event?)"
    if reason:
        return _refuse(tag, reason)
    return {"server": vm, "pool": server["metadata"][keeper.POOL_KEY], "pool_member": True}


def _answers(minion_id):
    """The desktop itself answers ``test.ping`` (read from the job cache, not the bus)."""
    lookup = lambda jid: __salt__["jobs.lookup_jid"](jid, display_progress=False)  # noqa: E731
    publish = desktop_probe.salt_publisher(__opts__)
    return desktop_probe.answers(publish, lookup, minion_id, timeout=_settings()["start_ping_timeout"])


def _key_accepted(minion_id):
    """The minion key for ``minion_id`` is accepted on this master (what a desktop cannot grant itself)."""
    import salt.exceptions  # pylint: disable=import-outside-toplevel
    import salt.key  # pylint: disable=import-outside-toplevel

    try:
        key = salt.key.get_key(__opts__).cache.fetch("keys", str(minion_id))
    except (salt.exceptions.SaltCacheError, OSError):
        return False
    return bool(key) and key.get("state") == "accepted"


def _refuse(tag, reason):
    log.warning("vmpool: refused event %s: %s", str(tag)[:120], reason)
    __context__["retcode"] = 1
    return {"refused": True, "tag": str(tag)[:120], "reason": reason, "retcode": 1}


def _is_member(server_name, pool):
    conn = _connect()
    try:
        found = pool_cloud.find(conn, server_name)
    finally:
        conn.close()
    meta = found["metadata"] if found is not None else {}
    return keeper.POOL_KEY in meta and (pool is None or meta[keeper.POOL_KEY] == pool)


# ---- idle reclaim (issue 13 part 3): taken desktops back to the pool by its policy --------------------------
# Policy: pillar deskfleet:pools:<pool>:reclaim; the pass is in _utils/pool_reclaim_pass.py, the planner in
# _utils/pool_reclaim.py. Reclaim deletes the desktop and lets the keeper refill (see pool_reclaim_pass).


def _reclaim(apply):
    import deskfleet_salt  # pylint: disable=import-outside-toplevel
    import pool_reclaim_pass  # pylint: disable=import-outside-toplevel

    try:
        raw = (deskfleet_salt.master_pillar(__opts__).get("deskfleet") or {}).get("pools") or {}
        good, errors = _pools()
        if not errors and not any(isinstance(raw.get(n), dict) and raw[n].get("reclaim") is not None for n in good):
            return {"reclaim": [], "keep": [], "deleted": [], "pool_errors": {}, "note": "no pool has a reclaim policy"}
        conn = _connect()
        try:
            result = pool_reclaim_pass.run(deskfleet_store.default_path(__opts__, "vm"), conn, good, raw,
                                           _settings()["name_prefix"], apply, time.time(), errors)
        finally:
            conn.close()
    except (keeper.PoolConfigError, deskfleet_salt.PillarError, *CLOUD_ERRORS) as exc:
        return _error(f"reclaim: {exc}", kind="reclaim")
    if result["pool_errors"]:
        return _error(f"bad reclaim policy: {'; '.join(result['pool_errors'].values())[:500]}", kind="reclaim", **result)
    return result


@deskfleet_store.guard
def reclaimable():
    """
    Dry run of idle reclaim: which taken desktops would go back to their pool
    now (logged off, or disconnected past ``reclaim_after``, outside protected
    hours) and why every other one stays. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reclaimable
    """
    return _reclaim(apply=False)


@deskfleet_store.guard
def reclaim():
    """
    Reclaim idle taken desktops by their pool's policy: each is deleted and the
    keeper refills the pool. Never one with a connected user or without a fresh
    session report. Idle time counts from the first pass that saw it: run it
    from the master schedule.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.reclaim
    """
    try:
        with _lock(_settings()["lock_timeout"]):
            return _reclaim(apply=True)
    except KeeperBusy as exc:
        return _error(f"reclaim: {exc}", kind="reclaim")
