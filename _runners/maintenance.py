"""
Rolling host maintenance (vm master): drain, reboot and return compute hosts in
batches while the desktops on them keep running elsewhere.

A thin shell: the plan is ``_utils/maintenance.py``, the steps
``_utils/maintenance_roll.py``, the step journal ``_utils/maintenance_journal.py``
(in the deskfleet store), the cloud calls ``_utils/maintenance_nova.py``
(openstacksdk), the host-side actions ``_utils/maintenance_hosts.py``.

Settings (vm master config, ``deskfleet:vm:maintenance``): ``host_actions``
``salt`` (default: the host's own minion runs the stop/reboot/start/verify
steps) or ``simulated`` (no real host: the cloud test tier and the demo; its
state file is ``simulated_state``, default ``<cachedir>/deskfleet/maintenance-hosts.json``).
The cloud comes from ``deskfleet:vm:cloud`` / ``clouds_yaml`` as for the pool keeper.
Progress goes on the bus as ``deskfleet/maintenance/<host>/<step>``; each user is
told on ``deskfleet/maintenance/notice`` before their desktop moves.
"""

import contextlib
import functools
import logging
import os

log = logging.getLogger(__name__)

__virtualname__ = "maintenance"

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import desktop_sessions
    import maintenance as mt
    import maintenance_hosts
    import maintenance_journal as journal
    import maintenance_nova
    import maintenance_roll

    import pool_cloud
    from pool_cloud import CLOUD_ERRORS

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs or openstacksdk missing
    glue, _MISSING = None, f"maintenance: missing dependency: {_exc}"

ALERT = "deskfleet/alert/maintenance"


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


# ---- plumbing -------------------------------------------------------------------


def _error(message, **extra):
    """An error return that also makes salt-run (and orchestration) fail."""
    return glue.error(__context__, message, **extra)


def _vm_conf():
    return glue.conf(__opts__, "vm")


def _conf():
    return glue.conf(__opts__, "vm", "maintenance")


def _connect():
    return pool_cloud.connect_conf(_vm_conf())


def _store():
    return journal.connect(deskfleet_store.default_path(__opts__, "vm"))


def _lock():
    """One roll driver per master; a second one is refused, not queued (a roll runs for hours)."""
    return glue.master_lock(__opts__, "maintenance", 0, "a maintenance roll is being driven by another process on this master")


def _fire(tag, data):
    glue.alert(__opts__, tag, data)  # best effort: the journal has every step anyway


def _notify(server, text):
    """The bus event always; with real hosts also ``desktop_notice.send`` on the desktop (minion id = server name)."""
    data = {"server": server["id"], "name": server.get("name"), "text": text, "published": False}
    if _conf().get("host_actions", "salt") == "salt" and server.get("name"):
        import salt.client  # pylint: disable=import-outside-toplevel

        try:
            client = salt.client.get_local_client(mopts=__opts__)
            try:
                data["published"] = bool(client.cmd_async(server["name"], "desktop_notice.send", [text]))
            finally:
                client.destroy()
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("maintenance: notice to %s not published: %s", server.get("name"), exc)
    _fire("deskfleet/maintenance/notice", data)


def _salt_call(host, fun, args, timeout, kwargs=None):
    import salt.client  # pylint: disable=import-outside-toplevel

    client = salt.client.get_local_client(mopts=__opts__)
    try:
        return client.cmd(host, fun, list(args), timeout=timeout, kwarg=kwargs or None).get(host)
    finally:
        client.destroy()


def _hosts():
    kind = _conf().get("host_actions", "salt")
    if kind == "simulated":
        path = _conf().get("simulated_state") or os.path.join(__opts__["cachedir"], "deskfleet", "maintenance-hosts.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return maintenance_hosts.SimulatedHosts(
            path, fail=_conf().get("simulated_failures"), reboot_seconds=float(_conf().get("simulated_reboot_seconds", 0))
        )
    if kind != "salt":
        raise mt.RequestError(f"deskfleet:vm:maintenance:host_actions must be salt or simulated, not {kind!r}")
    kwargs = _conf().get("verify_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, dict) for v in kwargs.values()):
        raise mt.RequestError("deskfleet:vm:maintenance:verify_kwargs must map a check to its keyword arguments")
    try:
        return maintenance_hosts.SaltHosts(_salt_call, kwargs)
    except ValueError as exc:
        raise mt.RequestError(f"deskfleet:vm:maintenance:{exc}") from exc


def _refusals(checked):
    """Each refused host with its problems, for the error line."""
    return "; ".join(f"{h}: {' / '.join(checked['hosts'][h]['problems'])}" for h in checked["refused"])


def _request(kwargs):
    fields = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    return mt.validate_request(fields, mt.utcnow())


def _plan(cloud, request):
    services = cloud.services()
    return mt.plan(request, cloud.providers(), cloud.servers(), mt.utcnow(), services=services,
                   groups=cloud.server_groups())


def _drive(db, roll_id, connect):
    """Drive the roll under the master's roll lock; the cloud is reached only once the lock is ours."""
    clock = maintenance_roll.SystemClock()
    sessions_db = desktop_sessions.open_store(deskfleet_store.default_path(__opts__, "vm"))
    try:
        with _lock():

            def sessions(server):  # what the desktop's own session beacon last said
                return desktop_sessions.session(sessions_db, server.get("name") or "", clock.now().timestamp())

            engine = maintenance_roll.Roll(db, roll_id, connect(), _hosts(), _notify, _fire, clock, sessions)
            result = engine.run()
    finally:
        sessions_db.close()
    if result["state"] != "done":
        message = f"roll {roll_id} {result['state']}: {result.get('error') or 'see hosts'}"
        failed = {h: {"step": e.get("step"), "error": e.get("error")}
                  for h, e in result.get("hosts", {}).items() if e.get("state") == "failed"}
        glue.alert(__opts__, ALERT, {"roll": roll_id, "state": result["state"], "error": message, "hosts": failed})
        return _error(message, **result)
    return result


@contextlib.contextmanager
def _session():
    """Store and cloud for one call; store, cloud and request errors become an error return."""
    db, box = None, {}
    try:
        db = _store()
        box["db"] = db
        box["connect"] = lambda: box.setdefault("cloud", maintenance_nova.NovaCloud(_connect()))
        yield box
    finally:
        if "cloud" in box:
            box["cloud"].conn.close()
        if db is not None:
            db.close()


def _guard(fun):
    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        try:
            return fun(*args, **kwargs)
        except mt.RequestError as exc:
            return _error(f"bad request: {exc}")
        except (journal.JournalError, glue.Busy) as exc:
            return _error(str(exc))
        except CLOUD_ERRORS as exc:
            return _error(f"cloud error: {exc}")

    return wrapped


# ---- public runner functions --------------------------------------------------------


@deskfleet_store.guard
@_guard
def plan(**kwargs):
    """
    Dry run: the whole roll per host (batch, steps, spares to delete, desktops
    to migrate and where they fit, problems). Nothing is touched. Exits 1 when
    a host would be refused (the shortfall is named).

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.plan hosts='[cmp-01, cmp-02]' reason='kernel 6.1.0-28' batch=1 deadline=+2h
    """
    request = _request(kwargs)
    with _session() as s:
        result = _plan(s["connect"](), request)
    if not result["ok"]:
        return _error(f"refused: {_refusals(result)}", plan=result)
    return result


@deskfleet_store.guard
@_guard
def start(**kwargs):
    """
    Plan, then roll the hosts: batch by batch, each host through precheck,
    disable, drain, migrate, stop, reboot, wait_minion, start, verify, enable.
    Refused before touching anything when the plan refuses a host. Blocks until
    the roll ends; exits 1 when a host failed (left disabled, its step named).

    Fields: hosts (list), reason, batch (1), max_failures (0), deadline (+2h or
    ISO time), force (False: never end a session), migration_timeout (900 s),
    minion_timeout (900 s), wait_logoff (seconds before the deadline until which
    pool desktops in use wait for their user to log off, then recycled like
    spares; default: move at once).

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.start hosts='[cmp-01, cmp-02]' reason='kernel 6.1.0-28' batch=1 deadline=+2h
        salt-run maintenance.start hosts='[cmp-01]' reason='BIOS update' deadline=+4h wait_logoff=3600
    """
    request = _request(kwargs)
    with _session() as s:
        cloud = s["connect"]()
        checked = _plan(cloud, request)
        if not checked["ok"]:
            message = f"refused before starting: {_refusals(checked)}"
            glue.alert(__opts__, ALERT, {"roll": None, "state": "refused", "error": message})
            return _error(message, plan=checked)
        roll_id = journal.create_roll(s["db"], request, mt.utcnow().timestamp())
        return _drive(s["db"], roll_id, lambda: cloud)


@deskfleet_store.guard
@_guard
def resume(roll=None):
    """
    Go on with a roll that stopped (master restart, failed host fixed by ops):
    the step in progress runs again, finished steps never do.

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.resume
        salt-run maintenance.resume mt-1a2b3c4d5e
    """
    with _session() as s:
        found = journal.get_roll(s["db"], roll)
        if found is None:
            return _error("no maintenance roll to resume")
        if found["state"] not in journal.ACTIVE:
            return _error(f"roll {found['id']} is {found['state']}; nothing to resume")
        return _drive(s["db"], found["id"], s["connect"])


@deskfleet_store.guard
@_guard
def status(roll=None):
    """
    A roll (the newest by default): its state and per host the state, the step,
    desktops left, migrations done, errors, and each step's timings.

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.status
        salt-run maintenance.status mt-1a2b3c4d5e --out=json
    """
    with _session() as s:
        found = journal.get_roll(s["db"], roll)
        if found is None:
            return {"roll": None, "message": "no maintenance roll yet"}
        return journal.summary(s["db"], found["id"])


@deskfleet_store.guard
@_guard
def abort(roll=None):
    """
    Stop a roll: the driver stops before its next step (aborting a live
    migration in flight). Hosts already disabled stay disabled for ops to check.

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.abort
    """
    with _session() as s:
        found = journal.get_roll(s["db"], roll)
        if found is None or found["state"] not in journal.ACTIVE:
            return _error("no active maintenance roll to abort")
        journal.set_roll_state(s["db"], found["id"], "aborted", mt.utcnow().timestamp(), "aborted by ops")
        result = journal.summary(s["db"], found["id"])
        result["left_disabled"] = [h for h, e in result["hosts"].items() if e.get("disabled")]
        return result


@deskfleet_store.guard
@_guard
def tick():
    """
    Resume a roll left ``running`` with nobody driving it (its master went down
    mid-roll); the vm master schedule calls this every minute. A roll driven by
    another process is left alone; failed or aborted rolls wait for ops.

    CLI Example:

    .. code-block:: bash

        salt-run maintenance.tick
    """
    with _session() as s:
        found = journal.get_roll(s["db"])
        if found is None or found["state"] != "running":
            return {"roll": found["id"] if found else None, "action": "none"}
        try:
            return dict(_drive(s["db"], found["id"], s["connect"]), action="resumed")
        except glue.Busy:
            return {"roll": found["id"], "action": "none", "reason": "driven by another process"}
