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
    import seat_rows
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


def _store_absent():
    """True when no store was ever created: read runners answer empty instead of creating one (and its dirs)."""
    return deskfleet_store.absent(deskfleet_store.default_path(__opts__, "tc"))


def _query(**filters):
    if _store_absent():
        return []
    heartbeat, offline_after = _settings()
    conn = tc_assets.open_store(__opts__)
    try:
        return tc_assets.seats(conn, time.time(), heartbeat, offline_after, **filters)
    finally:
        conn.close()


_KNOWN = seat_rows.known_fields(tc_assets.SEAT_COLUMNS + ("ips",)) if glue else ()


@deskfleet_store.guard
def list_(status=None, firmware=None, site=None, idle_over=None, fields=None, sort=None, limit=None, counts=False,
          **kwargs):
    """
    List seats, one compact row each (seat, site, status, firmware, ip, session,
    idle seconds, last seen as ISO 8601 with the master's UTC offset), sorted by seat.
    Nothing matches: ``{"seats": [], "note": "no seat matches ..."}``.
    A bad argument: an error naming it, exit 1.

    status
        ``online``, ``stale`` or ``offline`` (any case)
    firmware
        firmware/image version, e.g. ``13.2.1`` (any case)
    site
        site name from the thin client's asset file (any case)
    idle_over
        only seats whose user has been idle at least this many seconds
    fields
        comma list of fields (``fields=seat,ip``), or ``all`` for the full record
    sort
        a field to sort by, ``-field`` for descending (``sort=-idle``)
    limit
        at most this many rows (after sorting)
    counts
        ``True``: seat counts by status and site instead of rows

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.list
        salt-run tc_inventory.list status=offline site=lon sort=-idle limit=20
        salt-run tc_inventory.list fields=seat,ip,last_seen firmware=12.9.0 --out=json
        salt-run tc_inventory.list counts=True status=offline
        salt-run tc_inventory.list fields=all limit=1
    """
    unknown = sorted(k for k in kwargs if not k.startswith("__"))
    if unknown:
        return glue.error(__context__, f"{unknown[0]}: unknown parameter; known: status, firmware, site, idle_over,"
                                       " fields, sort, limit, counts")
    try:
        req = seat_rows.request(fields, sort, limit, counts, _KNOWN,
                                status=status, firmware=firmware, site=site, idle_over=idle_over)
        return seat_rows.answer(_query(**req["filters"]), req)
    except seat_rows.UsageError as exc:
        return glue.error(__context__, str(exc), parameter=exc.param)
    except ValueError as exc:
        return glue.error(__context__, str(exc))


@deskfleet_store.guard
def show(seat):
    """
    Everything known about one seat (its thin client's minion id); times as
    ISO 8601 with the master's UTC offset, ``last_seen_ago`` in seconds.

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.show tc-lon-0042
    """
    if _store_absent():
        return glue.error(__context__, f"seat: unknown seat {seat!r} (no inventory store yet)", parameter="seat")
    heartbeat, offline_after = _settings()
    conn = tc_assets.open_store(__opts__)
    try:
        found = tc_assets.seat(conn, str(seat), time.time(), heartbeat, offline_after)
    finally:
        conn.close()
    if found is None:
        return glue.error(__context__, f"seat: unknown seat {seat!r}", parameter="seat")
    return seat_rows.humanise(found)


@deskfleet_store.guard
def summary():
    """
    Counts by status, site and firmware, plus the ingestion counters
    (accepted, refusals by reason, missed, flagged), the last rejected events
    and refusals per sender, claimed seat and reason (``rejects_by_sender``).
    Times as ISO 8601 with the master's UTC offset. Rows per seat: ``tc_inventory.list``.

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.summary
    """
    seats = _query()
    if _store_absent():
        return dict(tc_report.counts(seats), ingest={}, recent_rejects=[], rejects_by_sender=[],
                    note="no inventory store yet: no seat has reported")
    conn = tc_assets.open_store(__opts__)
    try:
        counters = tc_assets.counters(conn)
        rejects = [seat_rows.humanise(r, fields=("at",)) for r in tc_assets.recent_rejects(conn)]
        by_sender = [seat_rows.humanise(r, fields=("first_minute", "last_minute")) for r in tc_assets.reject_stats(conn)]
    finally:
        conn.close()
    return dict(tc_report.counts(seats), ingest=counters, recent_rejects=rejects, rejects_by_sender=by_sender)


@deskfleet_store.guard
def report(path=None):
    """
    Write a self-contained HTML fleet report (counts by status, a firmware chart
    as inline SVG, the offline seats). No external assets. Written atomically.

    path
        where to write; default ``<cachedir>/deskfleet/tc-report.html``. Its
        directory must exist: a report never creates directories.

    CLI Example:

    .. code-block:: bash

        salt-run tc_inventory.report
        salt-run tc_inventory.report path=/var/www/html/fleet.html
    """
    path = str(path) if path else os.path.join(__opts__["cachedir"], "deskfleet", "tc-report.html")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return glue.error(__context__, f"path: directory {os.path.dirname(os.path.abspath(path))} does not exist"
                                       " (a report never creates directories)", parameter="path")
    seats = _query()
    heartbeat, offline_after = _settings()
    html = tc_report.render(seats, time.time(), heartbeat, offline_after)
    deskfleet_store.write_atomic(path, html)
    counts = tc_report.counts(seats)
    return {"path": path, "seats": len(seats), "by_status": counts["by_status"],
            "generated_at": seat_rows.iso(time.time())}
