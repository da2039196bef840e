"""
Both masters: deskfleet's gauges and counters through Salt's metrics layer, and the
forged-beacon burst alert.

One engine process per master reads the deskfleet store every ``interval`` seconds
(``_utils/metrics_collect.py``: level-triggered, nothing counted in memory) and publishes
the snapshot through ``salt.utils.metrics`` configured in this process only
(``_utils/metrics_export.py``): the master's other processes never bind its port.

.. code-block:: yaml

    deskfleet:
      metrics:                  # Salt's ``metrics:`` keys; README "Metrics and alerts"
        enabled: true
        exporter: prometheus
        prometheus: {host: 127.0.0.1, port: 9465}
        interval: 30            # seconds between two reads of the store
        sites: [LON, MAN]       # tc: the site labels; anything else counts as "other"
        forged_burst: 20        # tc: forged events within forged_window fire deskfleet/alert/ingest
        forged_window: 300
    engines:
      - deskfleet_metrics: {}
"""

import contextlib
import logging
import threading
import time

log = logging.getLogger(__name__)

__virtualname__ = "deskfleet_metrics"
ALERT_TAG = "deskfleet/alert/ingest"
METRICS_ALERT_TAG = "deskfleet/alert/metrics"
CLOUD = {"cloud_timeout": 10, "cloud_retries": 1}  # deskfleet:vm:pool_keeper, as the keeper reads them
DEFAULTS = {"interval": 30, "sites": None, "forged_burst": 20, "forged_window": 300}

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import maintenance_journal
    import metrics_collect
    import metrics_export
    import pool_cloud  # Salt puts utils_dirs on sys.path only while loading: no lazy imports
    import pool_config
    import pool_health
    import pool_plan
    import rollout_store
    import tc_assets

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"deskfleet_metrics: deskfleet utils not importable (utils_dirs?): {_exc}"


def __virtual__():
    if glue is None:
        return (False, _MISSING)
    role = glue.conf(__opts__).get("role")
    return __virtualname__ if role in ("tc", "vm") else (False, f"{__virtualname__}: deskfleet:role is {role!r}")


def start(interval=None, stop=None):
    """Run until the master stops the engine: collect, publish, alert; a failing source is retried next pass."""
    role = glue.conf(__opts__)["role"]
    conf = glue.settings(__opts__, "metrics", DEFAULTS)
    interval = float(interval or conf["interval"])
    publisher = metrics_export.Publisher()
    readers, burst = _readers(role, conf)
    stop = stop or threading.Event()
    refused, failing = None, {}
    while not stop.is_set():
        if conf.get("enabled", True) and not publisher.registered:
            refused = _start_publisher(publisher, conf, role, refused)
        snap, errors = metrics_collect.snapshot(readers, time.time())
        for source, error in errors.items():  # logged when it starts or changes; source_up says it each pass
            if failing.get(source) != error:
                log.warning("deskfleet_metrics: could not read %s: %s", source, error)
        failing = errors
        publisher.update(snap)
        if burst is not None:
            _check_burst(burst, snap, conf)
        stop.wait(interval)


def _start_publisher(publisher, conf, role, refused):
    """Start (or retry) the export; say once per distinct reason why it does not run."""
    why = publisher.start(metrics_export.settings(conf, role), __opts__)
    if why and why != refused:
        log.error("deskfleet_metrics: not publishing: %s", why)
        glue.alert(__opts__, METRICS_ALERT_TAG, {"role": role, "error": why})
    elif not why:
        log.info("deskfleet_metrics: publishing (%s)", conf.get("exporter", "prometheus"))
    return why


def _readers(role, conf):
    """{source: callable} for this master's role, and the forged-burst tracker (tc only)."""
    if role == "tc":
        tc = glue.conf(__opts__, "tc")
        sites = metrics_collect.known_sites(conf["sites"] or glue.conf(__opts__, "tc", "activity", "sites"))
        window = float(conf["forged_window"])

        def seats():
            with contextlib.closing(tc_assets.open_store(__opts__)) as conn:
                return metrics_collect.collect_tc(conn, time.time(), float(tc.get("heartbeat", 300)),
                                                  float(tc.get("offline_after", 3)), sites, window)

        return {"seats": seats}, metrics_collect.Burst(conf["forged_burst"])

    def vm_store():
        return deskfleet_store.open_role(__opts__, "vm", {**rollout_store.MIGRATIONS, **maintenance_journal.MIGRATIONS})

    def rollouts():
        with contextlib.closing(vm_store()) as conn:
            return metrics_collect.collect_rollouts(conn)

    def maintenance():
        with contextlib.closing(vm_store()) as conn:
            return metrics_collect.collect_maintenance(conn)

    return {"pools": _pools, "rollouts": rollouts, "maintenance": maintenance}, None


def _pools():
    """
    Pools as ``vmpool.status`` counts them (the cloud is the source of truth), read here without the
    runner: a metrics pass must not fire the keeper's alerts; a failed read shows as source_up 0.
    """
    settings = glue.settings(__opts__, "vm:pool_keeper", {**pool_plan.DEFAULTS, **CLOUD})
    pools, _bad = pool_config.validate((glue.master_pillar(__opts__).get("deskfleet") or {}).get("pools") or {})
    with contextlib.closing(deskfleet_store.open_role(__opts__, "vm", pool_health.MIGRATIONS)) as db:
        health = pool_health.read(db)
    conn = pool_cloud.connect(glue.conf(__opts__, "vm"), settings["cloud_timeout"], settings["cloud_retries"])
    try:
        servers = pool_cloud.servers(conn, settings["name_prefix"])
    finally:
        conn.close()
    now = pool_plan.utcnow()
    counts, _stray = pool_plan.census(servers, pools, now.timestamp(), settings)
    return metrics_collect.pool_samples(pool_plan.status_rows(pools, health, counts, now, settings))


def _check_burst(burst, snap, conf):
    """Forged beacons in the window crossed ``forged_burst``: one alert when it starts, one when it ends."""
    recent = snap.get("deskfleet.ingest.forged.recent")
    if not recent:
        return
    count = int(recent[0][1])
    edge = burst.update(count)
    if edge:
        with contextlib.closing(tc_assets.open_store(__opts__)) as conn:
            since = time.time() - float(conf["forged_window"])
            top = [r for r in tc_assets.reject_stats(conn, since, 50) if r["reason"] == "forged"][:5]
        glue.alert(__opts__, ALERT_TAG, {
            "kind": "forged_burst", "state": edge, "forged": count, "threshold": burst.threshold,
            "window": float(conf["forged_window"]), "top": [
                {"attribution": r["attribution"], "count": r["count"]} for r in top],
        })
        log.warning("deskfleet_metrics: forged beacon burst %s: %d in %.0f s", edge, count, conf["forged_window"])
