"""
The portal's one read: what ``portal/index.html`` shows, for the master it runs on.

salt-api (rest_cherrypy, ``salt_<role>/master.d/80-portal.conf``) serves the page and
runs this runner for a logged-in user; the roles are eauth ACLs in that file. The
sections are shaped by ``_utils/portal_view.py`` from the same runners ops use on the
CLI, so the portal never shows a number the CLI would not.
"""

import logging
import types

log = logging.getLogger(__name__)

__virtualname__ = "portal"

try:
    import deskfleet_salt as glue
    import portal_view

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"portal: deskfleet utils not importable (utils_dirs?): {_exc}"
    portal_view = types.SimpleNamespace(PAGE_SIZE=25)


def __virtual__():
    return glue.virtual(__virtualname__, __opts__) if glue else (False, _MISSING)


def view(page=1, size=portal_view.PAGE_SIZE, pages=None):
    """
    The portal page of this master as sections of rows: on the tc master seats by
    site and status, firmware, offline and stale seats (``page``/``size`` page
    those two), active users against plan, beacon ingest; on the vm master pools,
    rollouts in progress, password compliance, hosts (commit ratio, maintenance).
    ``pages``: a page per section (``{"offline": 3}``), the browser's pager.

    CLI Example:

    .. code-block:: bash

        salt-run portal.view
        salt-run portal.view page=2 size=50 --out=json
    """
    try:
        page, size = portal_view.paging(page, size)
        pages = portal_view.section_pages(pages, page)
    except portal_view.UsageError as exc:
        return glue.error(__context__, str(exc), parameter=str(exc).split(":", 1)[0])
    role = (__opts__.get("deskfleet") or {}).get("role")
    sections = _tc(pages, size) if role == "tc" else _vm()
    # the runners read above set a retcode for what they found (a degraded pool): the page itself is fine
    __context__.pop("retcode", None)
    return {"master": role, "id": __opts__.get("id"), "tiles": portal_view.tiles(sections), "sections": sections}


def _tc(pages, size):
    listed = __salt__["tc_inventory.list"]()
    seats = listed if isinstance(listed, list) else []
    summary = __salt__["tc_inventory.summary"]()
    activity = __salt__["activity.now"]()
    return portal_view.tc_sections(seats, summary.get("ingest"), activity if isinstance(activity, list) else None,
                                   pages=pages, size=size)


def _vm():
    rollouts = __salt__["software.status"]()
    return portal_view.vm_sections(
        __salt__["vmpool.status"](),
        rollouts if isinstance(rollouts, list) else [],
        __salt__["password.status"](),
        _providers(),
        __salt__["maintenance.status"](),
    )


def _providers():
    """Placement's per-host inventories and usages, or why not (the page still shows the rest)."""
    import pool_cloud  # pylint: disable=import-outside-toplevel  (openstacksdk: vm master only)

    try:
        conn = pool_cloud.connect_conf(glue.conf(__opts__, "vm"))
        try:
            return pool_cloud.providers(conn)
        finally:
            conn.close()
    except Exception as exc:  # pylint: disable=broad-except  (any cloud failure: say it on the page)
        log.warning("portal: placement unreadable: %s", exc)
        return f"placement unreadable: {exc}"
