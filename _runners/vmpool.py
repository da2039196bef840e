"""
Pool keeper: keeps pools of pre-booted desktop VMs topped up (vm master).

Pools live in pillar (``deskfleet:pools``, see ``pillar/vm.pools.pillar.example``);
the cloud is the source of truth for servers (membership and state in server
metadata, see ``_utils/vmpool.py``). Reactor events and the master schedule call
:func:`replenish` / :func:`reconcile`; every call is level-triggered, runs under
one lock per master, and never boots past a pool's target, its ``max_size``,
the boots-in-flight caps, or placement's over-commit headroom.

The cloud is reached only through openstacksdk and clouds.yaml:
``deskfleet:vm:cloud`` (default: ``$OS_CLOUD``) and ``deskfleet:vm:clouds_yaml``
(default: openstacksdk's search path) in the vm master's config.
"""

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
import uuid

log = logging.getLogger(__name__)

__virtualname__ = "vmpool"

try:
    import deskfleet_store
    import desktop_seed
    import vmpool as keeper

    import keystoneauth1.exceptions
    import openstack
    import openstack.config
    import openstack.exceptions

    # what a cloud call can raise: the sdk's errors and the transport's (timeouts, refused connections)
    CLOUD_ERRORS = (openstack.exceptions.SDKException, keystoneauth1.exceptions.ClientException)

    HAS_DEPS = True
except ImportError as _exc:  # pragma: no cover
    HAS_DEPS = False
    _IMPORT_ERROR = str(_exc)

COMPONENT = "vmpool"
MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE pool_health (
            pool TEXT PRIMARY KEY,
            failures INTEGER NOT NULL DEFAULT 0,
            last_failure REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            drained INTEGER NOT NULL DEFAULT 0
        )
        """
    ]
}


def __virtual__():
    if not HAS_DEPS:
        return (False, f"vmpool: missing dependency: {_IMPORT_ERROR}")
    role = (__opts__.get("deskfleet") or {}).get("role")
    if role != "vm":
        return (False, f"vmpool: runs on the vm master only (deskfleet:role is {role!r})")
    return __virtualname__


# ---- plumbing -------------------------------------------------------------------


def _error(message):
    """An error return that also makes salt-run (and orchestration) fail."""
    __context__["retcode"] = 1  # orchestration sees the failure
    return {"error": message, "retcode": 1}  # salt-run exits 1


def _vm_conf():
    return (__opts__.get("deskfleet") or {}).get("vm") or {}


def _connect():
    conf = _vm_conf()
    cloud = conf.get("cloud") or os.environ.get("OS_CLOUD")
    if not cloud:
        raise openstack.exceptions.ConfigException(
            "no cloud configured: set deskfleet:vm:cloud in the vm master config or OS_CLOUD"
        )
    files = [conf["clouds_yaml"]] if conf.get("clouds_yaml") else None
    region = openstack.config.OpenStackConfig(config_files=files).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


def _store():
    return deskfleet_store.connect(deskfleet_store.default_path(__opts__, "vm"), MIGRATIONS)


@contextlib.contextmanager
def _lock(timeout=120):
    """One keeper at a time on this master: concurrent events queue here, then see fresh state."""
    path = os.path.join(__opts__["cachedir"], "deskfleet", "vmpool.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.time() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pools():
    import salt.pillar  # pylint: disable=import-outside-toplevel

    pillar = salt.pillar.get_pillar(__opts__, {}, __opts__["id"], saltenv="base").compile_pillar()
    return keeper.validate_pools(((pillar.get("deskfleet") or {}).get("pools")) or {})


def _settings():
    return dict(keeper.DEFAULTS, **((_vm_conf().get("pool_keeper")) or {}))


def _servers(conn):
    return [
        {"id": s.id, "name": s.name, "status": s.status, "metadata": dict(s.metadata or {})}
        for s in conn.compute.servers(details=True)
        if keeper.POOL_KEY in (s.metadata or {})
    ]


def _providers(conn):
    out = []
    for rp in conn.placement.resource_providers():
        inventories = {
            inv.resource_class: {"total": inv.total, "reserved": inv.reserved or 0, "allocation_ratio": inv.allocation_ratio or 1.0}
            for inv in conn.placement.resource_provider_inventories(rp)
        }
        usages = conn.placement.fetch_resource_provider_usages(rp).usages or {}
        out.append({"name": rp.name, "inventories": inventories, "usages": usages})
    return out


def _flavors(conn, pools):
    out = {}
    for name in {p["flavor"] for p in pools.values()}:
        flavor = conn.compute.find_flavor(name, ignore_missing=True)
        if flavor is not None:
            out[name] = {"id": flavor.id, "ram": flavor.ram, "vcpus": flavor.vcpus, "disk": flavor.disk}
    return out


def _health(db):
    rows = db.execute("SELECT pool, failures, last_failure, drained FROM pool_health").fetchall()
    return {r["pool"]: dict(r) for r in rows}


def _record(db, pool, failures=None, error=None, drained=None):
    db.execute("INSERT INTO pool_health (pool) VALUES (?) ON CONFLICT(pool) DO NOTHING", (pool,))
    if failures is not None:
        db.execute(
            "UPDATE pool_health SET failures = ?, last_failure = CASE WHEN ? > 0 THEN ? ELSE last_failure END,"
            " last_error = COALESCE(?, last_error) WHERE pool = ?",
            (failures, failures, time.time(), error, pool),
        )
    if drained is not None:
        db.execute("UPDATE pool_health SET drained = ? WHERE pool = ?", (int(drained), pool))


def _execute(conn, db, pools, decision, flavors, health):
    """Carry out a plan: delete errored/drained servers, boot the planned ones."""
    actions = {"booted": [], "deleted": [], "errors": []}
    prefix = _settings()["name_prefix"]
    for name, entry in decision["pools"].items():
        pool = pools[name]
        failures = (health.get(name) or {}).get("failures", 0)
        errors_seen = entry["error"]
        for server_id in entry["delete"]:
            try:
                conn.compute.delete_server(server_id, ignore_missing=True)
                actions["deleted"].append(server_id)
            except CLOUD_ERRORS as exc:
                actions["errors"].append(f"{name}: delete {server_id}: {exc}")
        boot_error = None
        for _ in range(entry["boots"]):
            server_name = f"{prefix}-{name}-{uuid.uuid4().hex[:8]}"
            try:
                # the desktop's minion key, accepted here before it boots (no pending key to pre-claim)
                seeded = desktop_seed.boot_args(__opts__, server_name)
                conn.compute.create_server(
                    **seeded,
                    name=server_name,
                    flavor_id=flavors[pool["flavor"]]["id"],
                    image_id=pool["image"],
                    networks=[{"uuid": pool["network"]}],
                    metadata=dict(pool["metadata"], **{keeper.POOL_KEY: name}),
                )
                actions["booted"].append(server_name)
            except CLOUD_ERRORS as exc:
                desktop_seed.unseed_for(__opts__, server_name)
                boot_error = f"boot refused: {exc}"
                actions["errors"].append(f"{name}: {boot_error}")
                break  # back off this pool; the next reconcile retries after the delay
        if errors_seen or boot_error:
            _record(db, name, failures + max(errors_seen, 1 if boot_error else 0), boot_error or f"{errors_seen} server(s) in ERROR")
        elif failures and entry["ready"]:
            _record(db, name, 0)  # a ready desktop again: the pool recovered
    return actions


def _run(only=None):
    conn, db = None, _store()
    try:
        conn = _connect()
        with _lock():
            pools = _pools()
            if only is not None and not set(only) <= set(pools):
                return _error(f"unknown pool(s): {', '.join(sorted(set(only) - set(pools)))}; known: {', '.join(sorted(pools))}")
            health, settings = _health(db), _settings()
            drained = {p for p, h in health.items() if h.get("drained")}
            flavors = _flavors(conn, pools)
            decision = keeper.plan(
                pools, _servers(conn), _providers(conn), flavors, health, keeper.utcnow(), settings, only, drained
            )
            decision.update(_execute(conn, db, pools, decision, flavors, health))
            health, now = _health(db), time.time()  # after this pass's failures and recoveries
            for name, entry in decision["pools"].items():
                entry["health"] = keeper.pool_health(health.get(name), now, settings)
            return decision
    except keeper.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}")
    except CLOUD_ERRORS as exc:
        log.warning("vmpool: cloud error: %s", exc)
        return _error(f"cloud error: {exc}")
    finally:
        db.close()
        if conn is not None:
            conn.close()


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
    Per pool: target, ready, in flight, taken, errors, health (ok, backoff,
    degraded), drained. Read-only.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.status
    """
    conn, db = None, _store()
    try:
        conn = _connect()
        pools = _pools()
        health = _health(db)
        counts, stray = keeper.census(_servers(conn), pools)
        now = keeper.utcnow()
        out = {}
        for name, pool in pools.items():
            c = counts[name]
            h = health.get(name) or {}
            out[name] = {
                "target": 0 if h.get("drained") else keeper.target_spares(pool, now),
                "max_size": pool["max_size"],
                **{k: len(v) for k, v in c.items()},
                "health": keeper.pool_health(h, now.timestamp(), _settings()),
                "failures": h.get("failures", 0),
                "drained": bool(h.get("drained")),
            }
        return {"pools": out, "stray": stray}
    except keeper.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}")
    except CLOUD_ERRORS as exc:
        return _error(f"cloud error: {exc}")
    finally:
        db.close()
        if conn is not None:
            conn.close()


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
        pools = _pools()
    except keeper.PoolConfigError as exc:
        return _error(f"pool pillar: {exc}")
    if pool not in pools:
        return _error(f"unknown pool {pool!r}; known: {', '.join(sorted(pools))}")
    db = _store()
    try:
        with deskfleet_store.transaction(db):
            _record(db, pool, drained=not undo)
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
            _record(db, str(pool), failures=0)
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
        return _error(f"cloud error: {exc}")
    finally:
        if conn is not None:
            conn.close()


# Events are only triggers: the keeper re-reads the cloud, so a dropped or
# duplicated event is harmless. Still, check who sent what before acting.
TAKEN_TAG = "deskfleet/pool/taken"
START_TAG_RE = re.compile(r"salt/minion/([^/]{1,128})/start")


def on_event(tag, data):
    """
    Validate a pool event from the reactor and act on it:

    - ``deskfleet/pool/taken`` ``{"pool": P}``: from the master/API (no minion id) or
      from a pool desktop of pool P itself (its minion id is its server name) → replenish P;
    - ``salt/minion/<id>/start`` of a pool desktop → its baseline and ready mark
      are applied by ``orchestration/pool_vm_ready.sls``; here only validated.

    Anything else is refused with a reason (and logged), never acted on.

    CLI Example:

    .. code-block:: bash

        salt-run vmpool.on_event deskfleet/pool/taken '{"pool": "callcentre-win11"}'
    """
    if not isinstance(data, dict):
        return _refuse(tag, "event data is not a mapping")
    sender = data.get("id")
    if tag == TAKEN_TAG:
        payload = data.get("data") if isinstance(data.get("data"), dict) else data
        pool = payload.get("pool")
        try:
            pools = _pools()
        except keeper.PoolConfigError as exc:
            return _refuse(tag, f"pool pillar: {exc}")
        if not isinstance(pool, str) or pool not in pools:
            return _refuse(tag, f"unknown pool {str(pool)[:64]!r}")
        if sender is not None and sender != __opts__["id"] and not _is_member(sender, pool):
            return _refuse(tag, f"{sender} is neither the master nor a desktop of pool {pool}")
        return replenish(pool)
    match = START_TAG_RE.fullmatch(str(tag))
    if match:
        if sender != match.group(1):
            return _refuse(tag, f"start event for {match.group(1)} sent by {sender}")
        if not _is_member(sender, None):
            return _refuse(tag, f"{sender} is not a pool desktop")
        return {"server": sender, "pool_member": True}
    return _refuse(tag, "not a pool event")


def _refuse(tag, reason):
    log.warning("vmpool: refused event %s: %s", str(tag)[:120], reason)
    __context__["retcode"] = 1
    return {"refused": True, "tag": str(tag)[:120], "reason": reason, "retcode": 1}


def _is_member(server_name, pool):
    conn = _connect()
    try:
        found = conn.compute.find_server(str(server_name), ignore_missing=True)
    finally:
        conn.close()
    meta = (found.metadata or {}) if found is not None else {}
    return keeper.POOL_KEY in meta and (pool is None or meta[keeper.POOL_KEY] == pool)
