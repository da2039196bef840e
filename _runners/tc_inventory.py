"""
Thin-client inventory for ops, on the tc master.

Answers from the inventory store that the ``tc_ingest`` engine fills from the
``tc_status`` beacons. A seat's status comes from its last heartbeat:

- ``online``: heard from within 1.5 heartbeats;
- ``stale``: missed at least one heartbeat;
- ``offline``: nothing for ``deskfleet:tc:offline_after`` heartbeats (default 3).

The heartbeat is ``deskfleet:tc:heartbeat`` in the tc master's config.
"""

import logging
import os
import time
import types

log = logging.getLogger(__name__)

__virtualname__ = "tc_inventory"
__func_alias__ = {"list_": "list"}

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import tc_assets
    import tc_report

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"tc_inventory: deskfleet utils not importable (utils_dirs?): {_exc}"
    deskfleet_store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error

DEFAULTS = {"heartbeat": 300, "offline_after": 3}


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="tc") if glue else (False, _MISSING)


def _settings():
    tc = glue.settings(__opts__, "tc", DEFAULTS)
    return float(tc["heartbeat"]), float(tc["offline_after"])


def _query(**filters):
    heartbeat, offline_after = _settings()
    conn = tc_assets.open_store(__opts__)
    try:
        return tc_assets.seats(conn, time.time(), heartbeat, offline_after, **filters)
    finally:
        conn.close()


@deskfleet_store.guard
def list_(status=None, firmware=None, site=None, idle_over=None):
    """
    List seats, optionally filtered. Returns a list of seat dicts (sorted by seat).

    status
        ``online``, ``stale`` or ``offline``
    firmware
        exact firmware/image version, e.g. ``13.2.1``
    site
        site name from the thin client's asset file
    idle_over
        only seats whose user has been idle at least this many seconds

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.list
        salt-run tc_inventory.list status=offline site=LON
        salt-run tc_inventory.list firmware=12.9.0 --out=json
    """
    try:
        return _query(status=status, firmware=firmware, site=site, idle_over=idle_over)
    except ValueError as exc:
        return glue.error(__context__, str(exc))


@deskfleet_store.guard
def show(seat):
    """
    Everything known about one seat (its thin client's minion id).

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.show tc-lon-0042
    """
    heartbeat, offline_after = _settings()
    conn = tc_assets.open_store(__opts__)
    try:
        found = tc_assets.seat(conn, str(seat), time.time(), heartbeat, offline_after)
    finally:
        conn.close()
    return found if found is not None else glue.error(__context__, f"unknown seat {seat!r}")


@deskfleet_store.guard
def summary():
    """
    Counts by status, site and firmware, plus the ingestion counters
    (accepted, refusals by reason, missed, flagged), the last rejected events
    and refusals per sender, claimed seat and reason (``rejects_by_sender``).

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.summary
    """
    seats = _query()
    conn = tc_assets.open_store(__opts__)
    try:
        counters = tc_assets.counters(conn)
        rejects = tc_assets.recent_rejects(conn)
        by_sender = tc_assets.reject_stats(conn)
    finally:
        conn.close()
    return dict(tc_report.counts(seats), ingest=counters, recent_rejects=rejects, rejects_by_sender=by_sender)


@deskfleet_store.guard
def report(path=None):
    """
    Write a self-contained HTML fleet report (counts by status, a firmware chart
    as inline SVG, the offline seats). No external assets. Written atomically.

    path
        where to write; default ``<cachedir>/deskfleet/tc-report.html``

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.report
        salt-run tc_inventory.report path=/var/www/html/fleet.html
    """
    seats = _query()
    heartbeat, offline_after = _settings()
    path = path or os.path.join(__opts__["cachedir"], "deskfleet", "tc-report.html")
    html = tc_report.render(seats, time.time(), heartbeat, offline_after)
    deskfleet_store.write_atomic(path, html)
    counts = tc_report.counts(seats)
    return {"path": path, "seats": len(seats), "by_status": counts["by_status"]}
