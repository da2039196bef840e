"""
User-data retrieval, on the vm master: copy one file from a user's profile on a
desktop into the quarantine (``deskfleet:vm:userdata:quarantine``, outside every
file root), 0600, with its sha256, audited. The desktop side is
``profile_file.push`` (through ``cp.push``; ``file_recv`` is on for the vm
master only, capped by ``file_recv_max_size``). Logic: ``_utils/userdata.py``,
path rules ``_utils/userdata_path.py``.
"""

import getpass
import logging
import os
import shutil
import time
import uuid

log = logging.getLogger(__name__)

__virtualname__ = "userdata"
ALERT_TAG = "deskfleet/alert/userdata"

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import job_returns
    import userdata

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"userdata: deskfleet utils not importable (utils_dirs?): {_exc}"
    deskfleet_store = type("_NoStore", (), {"guard": staticmethod(lambda func: func)})


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


def _settings():
    served = [d for roots in (__opts__.get("file_roots") or {}, __opts__.get("pillar_roots") or {})
              for dirs in roots.values() for d in dirs]
    return userdata.settings(glue.conf(__opts__, "vm", "userdata"), __opts__["cachedir"],
                             __opts__.get("file_recv_max_size"), served)


def _ask(request, rid):
    """The desktop's return for ``profile_file.push`` from the job cache, or None when it did not answer."""
    found = job_returns.run(__opts__, __salt__["jobs.list_job"], [request["desktop"]], "profile_file.push",
                            [request["path"], rid, request["max_bytes"]], kwarg={"roots": request["roots"]},
                            timeout=request["timeout"])
    return found.get(request["desktop"])


def _fetch(conf, request, rid):
    """Ask the desktop, then quarantine what arrived; raises :class:`userdata.UserdataError`."""
    if not __opts__.get("file_recv"):
        raise userdata.UserdataError("file_recv", "is off on this master (salt_vm/master.d enables it)")
    got = _ask(dict(request, timeout=conf["timeout"]), rid)
    if not isinstance(got, dict) or "ret" not in got:
        raise userdata.UserdataError("desktop", f"{request['desktop']} did not answer within {conf['timeout']} s (offline)")
    if got.get("retcode", 0) != 0:
        raise userdata.UserdataError("desktop", f"{request['desktop']} refused: {str(got.get('ret'))[:400]}")
    claimed = userdata.check_answer(got["ret"])
    inbox = os.path.join(__opts__["cachedir"], "minions", request["desktop"], "files", "userdata", rid)
    return userdata.quarantine(os.path.join(inbox, "file"), conf["quarantine"], request["desktop"], rid, request["path"],
                               request["max_bytes"], claimed)


@deskfleet_store.guard
def fetch(desktop, path, max_bytes=None):
    """
    Copy one file from a user's profile on ``desktop`` into the quarantine.
    ``path`` must be a file under a profile root (``C:\\Users\\<user>\\...`` or
    ``/home/<user>/...``; ``deskfleet:vm:userdata:roots``), no ``..``, no link out
    of the profile, no device, at most ``max_bytes`` (default and ceiling
    ``userdata:max_bytes``). Returns where it is stored, its size and sha256.
    Refusals name the field and exit 1; every attempt is audited.

    CLI Example:

    .. code-block:: bash

        salt-run userdata.fetch desk-0042 path='C:\\Users\\alice\\Documents\\report.xlsx'
        salt-run userdata.fetch desk-0042 path=/home/alice/notes.txt max_bytes=1048576
    """
    rid, sender, now = uuid.uuid4().hex, os.environ.get("SUDO_USER") or getpass.getuser(), time.time()
    conn = deskfleet_store.open_role(__opts__, "vm", userdata.MIGRATIONS)
    inbox = None  # where cp.push lands this request's file, once the desktop id is known to be one id
    try:
        try:
            conf = _settings()
            request = userdata.check_request(desktop, path, max_bytes, conf)
            inbox = os.path.join(__opts__["cachedir"], "minions", request["desktop"], "files", "userdata", rid)
            done = _fetch(conf, request, rid)
        except (userdata.UserdataError, OSError) as exc:
            field = getattr(exc, "field", "quarantine")
            userdata.record(conn, now, rid, sender, desktop, path, "refused", str(exc))
            glue.alert(__opts__, ALERT_TAG, {"request": rid, "desktop": str(desktop)[:128], "error": str(exc)[:500]})
            return glue.error(__context__, str(exc), field=field, request=rid)
        finally:
            if inbox:
                shutil.rmtree(inbox, ignore_errors=True)
        userdata.record(conn, now, rid, sender, desktop, request["path"], "fetched", "", done["size"], done["sha256"],
                        done["stored"])
    finally:
        conn.close()
    return dict(done, request=rid, desktop=desktop, path=request["path"])


@deskfleet_store.guard
def audit(desktop=None, limit=100):
    """
    The user-data audit log, newest first: who asked for which file of which
    desktop, refused or fetched (size, sha256, where stored).

    CLI Example:

    .. code-block:: bash

        salt-run userdata.audit
        salt-run userdata.audit desktop=desk-0042 limit=20
    """
    conn = deskfleet_store.open_role(__opts__, "vm", userdata.MIGRATIONS)
    try:
        return userdata.audit(conn, desktop=desktop, limit=limit)
    except userdata.UserdataError as exc:
        return glue.error(__context__, str(exc), field=exc.field)
    finally:
        conn.close()
