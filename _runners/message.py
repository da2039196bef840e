"""
Messages to the people at the fleet, from either master:

- vm master: to the user sessions of desktops, through ``desktop_notice.send``
  on each desktop (Windows ``msg *``, Linux ``wall``);
- tc master: to the screens of thin clients, through ``seat_notice.show`` (a
  notice file the seat's kiosk session displays), for a site-wide notice while
  the desktops cannot be reached.

Both check the text (``deskfleet:<role>:messages:max_length``), rate-limit each
target (``rate_limit`` messages per ``rate_window`` s), audit who sent what to
whom in the deskfleet store, and answer per target ``delivered``, ``failed`` or
``offline``. Any target not delivered: retcode 1 and ``deskfleet/alert/message``.
Logic: ``_utils/messages.py``.
"""

import getpass
import logging
import os
import time
import uuid

log = logging.getLogger(__name__)

__virtualname__ = "message"
ALERT_TAG = "deskfleet/alert/message"
FUNCTION = {"vm": "desktop_notice.send", "tc": "seat_notice.show"}

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import job_returns
    import messages

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"message: deskfleet utils not importable (utils_dirs?): {_exc}"
    deskfleet_store = type("_NoStore", (), {"guard": staticmethod(lambda func: func)})


def __virtual__():
    if not glue:
        return (False, _MISSING)
    on_vm = glue.virtual(__virtualname__, __opts__, role="vm")
    return on_vm if on_vm == __virtualname__ else glue.virtual(__virtualname__, __opts__, role="tc")


def _role():
    return __opts__["deskfleet"]["role"]


def _sender():
    """The OS user behind this salt-run (the sudo caller, not root)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _targets(tgt, tgt_type, site):
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    if not isinstance(tgt, str) or not tgt:
        raise messages.MessageError("tgt", "is required (a target expression)")
    if tgt_type not in ("glob", "list", "pcre"):  # matched against accepted keys: grains are a minion's own claim
        raise messages.MessageError("tgt_type", f"must be glob, list or pcre, got {str(tgt_type)[:40]!r}")
    found = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type).get("minions") or []
    if site is not None:
        if _role() != "tc":
            raise messages.MessageError("site", "selects seats: only on the tc master")
        import tc_assets  # pylint: disable=import-outside-toplevel

        tc = glue.conf(__opts__, "tc")
        conn = tc_assets.open_store(__opts__)
        try:
            at_site = {s["seat"] for s in tc_assets.seats(conn, time.time(), float(tc.get("heartbeat", 300)),
                                                         float(tc.get("offline_after", 3)), site=str(site))}
        finally:
            conn.close()
        found = [m for m in found if m in at_site]
    return found


def _publish(text, seconds, timeout, targets):
    """Full returns from the job cache (the authenticated path), never off the bus."""
    return job_returns.run(__opts__, __salt__["jobs.list_job"], targets, FUNCTION[_role()], [text],
                           kwarg={"seconds": seconds}, timeout=timeout)


@deskfleet_store.guard
def send(tgt, text, tgt_type="glob", seconds=None, site=None):
    """
    Send ``text`` (one line, at most ``messages:max_length`` characters) to every
    minion ``tgt`` matches: desktops on the vm master, seats on the tc master.
    Returns per target ``delivered`` / ``failed`` / ``offline`` (with detail) and
    the counts; exit code 1 when any target did not get it.

    tgt_type
        glob (default), list, pcre (key-based matching)
    seconds
        how long the message stays up (default ``messages:seconds``, 600)
    site
        tc master only: just the seats the inventory places at this site

    CLI Example:

    .. code-block:: bash

        salt-run message.send desk-0042 'Your desktop restarts at 18:00 for an update.'
        salt-run message.send 'desk-00*' 'Save your work: maintenance in 15 min.' seconds=900
        salt-run message.send 'tc-*' 'Desktops in LON are down; IT is on it.' site=LON
    """
    role = _role()
    try:
        limits = messages.settings(glue.conf(__opts__, role, "messages"))
        text = messages.check_text(text, limits["max_length"])
        seconds = messages.check_seconds(seconds, limits["seconds"])
        targets = messages.check_targets(_targets(tgt, tgt_type, site), limits["max_targets"])
    except messages.MessageError as exc:
        return glue.error(__context__, str(exc), field=exc.field)
    conn = deskfleet_store.open_role(__opts__, role, messages.MIGRATIONS)
    try:
        result = messages.deliver(conn, time.time, lambda allowed: _publish(text, seconds, limits["timeout"], allowed),
                                  uuid.uuid4().hex, role, _sender(), targets, text, limits)
    finally:
        conn.close()
    if result["ok"]:
        return result
    missed = {t: v for t, v in result["targets"].items() if v["result"] != "delivered"}
    glue.alert(__opts__, ALERT_TAG, {"batch": result["batch"], "counts": result["counts"],
                                     "missed": dict(list(missed.items())[:100])})
    return glue.error(__context__, f"{len(missed)} of {len(result['targets'])} targets did not get the message", **result)


@deskfleet_store.guard
def audit(target=None, limit=100):
    """
    The message audit log, newest first: batch, sender, target, text, when, result.

    CLI Example:

    .. code-block:: bash

        salt-run message.audit
        salt-run message.audit target=desk-0042 limit=20
    """
    conn = deskfleet_store.open_role(__opts__, _role(), messages.MIGRATIONS)
    try:
        return messages.audit(conn, target=target, limit=limit)
    except messages.MessageError as exc:
        return glue.error(__context__, str(exc), field=exc.field)
    finally:
        conn.close()
