"""
Active users per site and department against the shift plan, on the tc master.

Counts come from the thin-client inventory the ``tc_ingest`` engine fills
(``_utils/active_users.py``); series, plan and alert states live in the tc
store (``_utils/active_users_store.py``); the plan format is in
``_utils/shift_plan.py``. The master schedule runs ``activity.tick`` every
minute (``salt_tc/master.d/35-activity.conf``); anomalies fire ONE
``deskfleet/alert/active_users`` event when they start and one when they clear.

Settings: ``deskfleet:tc:activity`` in the tc master config.
"""

import datetime
import logging
import os
import time

log = logging.getLogger(__name__)

__virtualname__ = "activity"

try:
    import active_users
    import active_users_store as aus
    import deskfleet_salt as glue
    import deskfleet_store
    import shift_plan
    import tc_report

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"activity: deskfleet utils not importable (utils_dirs?): {_exc}"
    deskfleet_store = type("_NoStore", (), {"guard": staticmethod(lambda func: func)})


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="tc") if glue else (False, _MISSING)


def _conf():
    """``(settings, heartbeat)``; ValueError names the bad field."""
    conf = active_users.settings(glue.conf(__opts__, "tc", "activity"))
    return conf, float(glue.conf(__opts__, "tc").get("heartbeat", 300))


def _fire(tag, data):
    return glue.alert(__opts__, tag, data)


def _read(path):
    with open(path, "rb") as fh:
        return fh.read(shift_plan.MAX_BYTES + 1)


def _plan_error(exc, **extra):
    return glue.error(__context__, str(exc), errors=getattr(exc, "errors", []),
                      error_count=getattr(exc, "total", 1), **extra)


@deskfleet_store.guard
def now(site=None, department=None):
    """
    Live counts per site and department against the plan: seats, online,
    connected, active, idle, expected, deviation, and the alert state.

    CLI Example:

    .. code-block:: bash

        salt-run activity.now
        salt-run activity.now site=LON --out=json
    """
    try:
        conf, heartbeat = _conf()
    except ValueError as exc:
        return glue.error(__context__, str(exc))
    conn = aus.open_store(__opts__)
    try:
        return aus.now_view(conn, time.time(), conf, heartbeat, site=site, department=department)
    finally:
        conn.close()


def _auto_plan(conn, conf, heartbeat, at):
    """Load ``plan_file`` when it changed; a refused file alerts once per content. Returns an error dict or None."""
    path = conf["plan_file"]
    if not path:
        return None
    try:
        data = _read(path)
    except OSError as exc:
        data, failure = None, f"shift plan {path} unreadable: {exc.strerror or exc}"
    key = shift_plan.digest(data) if data is not None else f"unreadable:{failure}"
    rejected = aus.meta(conn, "plan_rejected") or {}
    if key == (aus.meta(conn, "plan") or {}).get("digest"):
        if rejected:  # the file is back to what is loaded
            with deskfleet_store.transaction(conn):
                aus.set_meta(conn, "plan_rejected", None)
        return None
    if key == rejected.get("digest"):
        return {"error": rejected["error"], "errors": rejected.get("errors", [])}
    try:
        if data is None:
            raise shift_plan.PlanError([{"row": None, "field": None, "error": failure}])
        loaded = aus.load_plan(conn, data, path, at, conf, heartbeat)
        log.info("activity: loaded shift plan %s (%s slots)", path, loaded["slots"])
        return None
    except shift_plan.PlanError as exc:
        report = {"error": str(exc), "errors": exc.errors}
        with deskfleet_store.transaction(conn):
            aus.set_meta(conn, "plan_rejected", dict(report, digest=key))
        _fire(active_users.PLAN_ALERT_TAG, dict(report, path=path, kept="the previous plan stays in force"))
        return report


@deskfleet_store.guard
def tick():
    """
    One bucket: aggregate the inventory, store it, advance the anomaly states,
    fire start/clear alerts, roll up and prune; loads ``plan_file`` when it
    changed. The master schedule runs it; running it by hand is harmless.
    Exit code 1 while the plan file is refused or an alert could not be fired.

    CLI Example:

    .. code-block:: bash

        salt-run activity.tick
    """
    try:
        conf, heartbeat = _conf()
    except ValueError as exc:
        return glue.error(__context__, str(exc))
    at = time.time()
    conn = aus.open_store(__opts__)
    try:
        refused = _auto_plan(conn, conf, heartbeat, at)
        result = aus.tick(conn, at, conf, heartbeat, _fire)
    finally:
        conn.close()
    if refused:
        return glue.error(__context__, refused["error"], plan_errors=refused["errors"], **result)
    if result["undelivered"]:
        return glue.error(__context__, f"{result['undelivered']} alert(s) not fired: kept, retried next tick", **result)
    return result


def _plan(path, dry_run):
    try:
        conf, heartbeat = _conf()
    except ValueError as exc:
        return glue.error(__context__, str(exc))
    try:
        data = _read(str(path))
    except OSError as exc:
        return glue.error(__context__, f"cannot read {path}: {exc.strerror or exc}", path=str(path))
    conn = aus.open_store(__opts__)
    try:
        return aus.load_plan(conn, data, os.path.abspath(str(path)), time.time(), conf, heartbeat, dry_run=dry_run)
    except shift_plan.PlanError as exc:
        return _plan_error(exc, path=str(path))
    finally:
        conn.close()


@deskfleet_store.guard
def plan_check(path):
    """
    Check a shift plan file without loading it. Every broken row is listed with
    its line and field; exit code 1 if any.

    CLI Example:

    .. code-block:: bash

        salt-run activity.plan_check /srv/plans/week49.csv
    """
    return _plan(path, dry_run=True)


@deskfleet_store.guard
def plan_load(path):
    """
    Check and load a shift plan file: for each site/department in it, its time
    span is replaced; other slots are kept. A refused file changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run activity.plan_load /srv/plans/week49.csv
    """
    return _plan(path, dry_run=False)


def _day(day):
    """``(start, end)`` epoch seconds of a UTC day ``YYYY-MM-DD`` (default today)."""
    if day in (None, "", "today"):
        start = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = datetime.datetime.strptime(str(day), "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    return start.timestamp(), start.timestamp() + 86400


@deskfleet_store.guard
def plan(site=None, department=None, day=None):
    """
    The plan's slots of one UTC day (default today), with what is loaded.

    CLI Example:

    .. code-block:: bash

        salt-run activity.plan site=LON day=2026-11-30
    """
    try:
        start, end = _day(day)
    except ValueError:
        return glue.error(__context__, f"day must be YYYY-MM-DD, got {day!r}")
    conn = aus.open_store(__opts__)
    try:
        slots = aus.plan_slots(conn, start, end, site=site, department=department)
        loaded, rejected = aus.meta(conn, "plan"), aus.meta(conn, "plan_rejected")
    finally:
        conn.close()
    keys = ("site", "department", "start", "end", "expected")
    return {"loaded": loaded, "rejected": rejected, "slots": [dict(zip(keys, s)) for s in slots]}


@deskfleet_store.guard
def series(site=None, department=None, hours=1, hourly=False):
    """
    The stored series of the last ``hours`` hours: minute buckets, or hourly
    roll-ups with ``hourly=True``.

    CLI Example:

    .. code-block:: bash

        salt-run activity.series site=LON department=sales hours=2
        salt-run activity.series site=LON hours=168 hourly=True
    """
    try:
        hours = float(hours)
        if not 0 < hours <= 24 * 3660:
            raise ValueError
    except (TypeError, ValueError):
        return glue.error(__context__, f"hours must be a positive number, got {hours!r}")
    end = time.time() + 1
    conn = aus.open_store(__opts__)
    try:
        return aus.series(conn, end - hours * 3600, end, site=site, department=department, hourly=bool(hourly))
    finally:
        conn.close()


@deskfleet_store.guard
def report(path=None, day=None):
    """
    Write a self-contained HTML page: per site, active against planned seats
    over one UTC day (inline SVG), and the live table. Written atomically.

    CLI Example:

    .. code-block:: bash

        salt-run activity.report
        salt-run activity.report path=/var/www/html/active.html day=2026-11-30
    """
    try:
        start, end = _day(day)
        conf, heartbeat = _conf()
    except ValueError as exc:
        return glue.error(__context__, str(exc) if "activity" in str(exc) else f"day must be YYYY-MM-DD, got {day!r}")
    path = path or os.path.join(__opts__["cachedir"], "deskfleet", "active-users.html")
    at = time.time()
    conn = aus.open_store(__opts__)
    try:
        sites = {site: aus.site_day(conn, site, start, end) for site in aus.sites_between(conn, start, end)}
        rows = aus.now_view(conn, at, conf, heartbeat)
    finally:
        conn.close()
    deskfleet_store.write_atomic(path, tc_report.render_activity(sites, at, start, end, rows))
    return {"path": path, "sites": sorted(sites), "buckets": sum(len(p) for p in sites.values())}
