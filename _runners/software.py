"""
Software rollouts on the vm master: ops schedule a catalog package onto a set of
minions inside a maintenance window, in batches, halting when failures pass a
threshold.

- ``software.schedule`` checks everything up front (the package and version are
  in the catalog, the optional sha256 pin matches it, the window is in the future
  and ends after it starts, the target matches accepted minions) and stores the
  rollout with its minion list frozen.
- ``software.tick`` moves every due rollout one step: collect the returns of the
  running batch, then dispatch at most one new batch (``software.install`` with
  the pinned version) and wait up to ``tick_wait`` seconds for it. The master
  schedule in ``salt_vm/master.d/30-rollouts.conf`` calls it every minute; a lease
  in the store keeps two ticks off the same rollout.
- Each batch's job id is stored before the job is published. After a master
  restart the next tick looks the job ids up in the job cache, asks minions with
  no return whether the job still runs (``saltutil.find_job``), and publishes
  again only to those where it was lost; the install is idempotent by version.

Settings (master config, ``deskfleet:vm:rollouts``): ``tick_wait`` (30 s),
``grace`` (30 s before a job without a return is asked after), ``job_timeout``
(1800 s), ``max_attempts`` (3 publications per minion), ``find_job_timeout``
(10 s), ``lease_ttl`` (default ``tick_wait`` + 120 s; a tick renews it while it waits, and a
lease whose holder process on this host has died is taken over at once). The store is
``deskfleet:vm:db`` or ``<cachedir>/deskfleet/deskfleet.sqlite``.
"""

import contextlib
import getpass
import io
import logging
import time
import types

log = logging.getLogger(__name__)

__virtualname__ = "software"

try:
    import deskfleet_store as store
    import rollouts

    HAS_ROLLOUTS = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    HAS_ROLLOUTS = False
    _IMPORT_ERROR = str(_exc)
    store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error


def __virtual__():
    if not HAS_ROLLOUTS:
        return (False, f"software: deskfleet utils not importable (utils_dirs?): {_IMPORT_ERROR}")
    role = (__opts__.get("deskfleet") or {}).get("role")
    if role != "vm":
        return (False, f"software: runs on the vm master only (deskfleet:role is {role!r})")
    return __virtualname__


def _settings():
    conf = (((__opts__.get("deskfleet") or {}).get("vm") or {}).get("rollouts")) or {}
    return {
        "wait": float(conf.get("tick_wait", 30)),
        "grace": float(conf.get("grace", 30)),
        "job_timeout": float(conf.get("job_timeout", 1800)),
        "max_attempts": int(conf.get("max_attempts", 3)),
        "lease_ttl": conf.get("lease_ttl"),
        "find_job_timeout": float(conf.get("find_job_timeout", 10)),
    }


def _error(message):
    __context__["retcode"] = 1
    return {"error": message, "retcode": 1}


class _SaltDriver:
    """The Salt side of :class:`rollouts.Engine`: LocalClient publish, job cache, find_job."""

    def __init__(self, opts, find_job_timeout):
        import salt.client  # pylint: disable=import-outside-toplevel

        self.opts = opts
        self.client = salt.client.get_local_client(mopts=opts)
        self.find_job_timeout = find_job_timeout

    def new_jid(self):
        import salt.utils.jid  # pylint: disable=import-outside-toplevel

        return salt.utils.jid.gen_jid(self.opts)

    def publish(self, jid, minions, args, kwargs):
        # LocalClient prints "No minions matched ..." to stdout; keep the runner's output clean.
        with contextlib.redirect_stdout(io.StringIO()) as said:
            try:
                pub = self.client.run_job(
                    list(minions), rollouts.INSTALL_FUNCTION, arg=list(args), kwarg=dict(kwargs),
                    tgt_type="list", jid=jid, listen=False,
                )
            except Exception as exc:  # pylint: disable=broad-except
                raise rollouts.DispatchError(str(exc)) from exc
        if not pub:
            if "No minions matched" in said.getvalue():
                return []
            raise rollouts.DispatchError(said.getvalue().strip() or "the master did not take the job")
        return list(pub.get("minions") or [])

    def close(self):
        self.client.destroy()

    def returns(self, jid):
        return {m: data.get("ret") for m, data in self.client.get_cache_returns(jid).items() if "ret" in data}

    def find_job(self, jid, minions):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                found = self.client.cmd(
                    list(minions), "saltutil.find_job", [jid], tgt_type="list", timeout=self.find_job_timeout
                )
            except Exception:  # pylint: disable=broad-except
                log.exception("software: saltutil.find_job %s failed", jid)
                return {}
        return {m: bool(v) for m, v in (found or {}).items() if isinstance(v, dict)}


def _catalog():
    """``software:catalog`` from the vm master's pillar, rendered as the master itself (top ``'*'``)."""
    import salt.pillar  # pylint: disable=import-outside-toplevel

    master_id = __opts__["id"]
    pillar = salt.pillar.Pillar(__opts__, {"id": master_id}, master_id, "base").compile_pillar()
    errors = pillar.get("_errors")
    if errors:
        raise rollouts.CatalogError(f"the vm pillar does not render: {'; '.join(map(str, errors))[:500]}")
    software = pillar.get("software") or {}
    return software.get("catalog") if isinstance(software, dict) else None


def _resolve(target, tgt_type):
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    if target is None or (isinstance(target, (str, list, tuple)) and not target):
        raise rollouts.ScheduleError("target is empty: name minions (a glob, a list, or tgt_type=compound)")
    if isinstance(target, (list, tuple)):
        expr = [str(t).strip() for t in target if str(t).strip()]
        tgt_type = tgt_type or "list"
    else:
        expr = str(target).strip()
        if tgt_type is None:
            tgt_type = "list" if "," in expr and not any(c in expr for c in "*?[@ ") else "glob"
    if tgt_type not in rollouts.TARGET_TYPES:
        raise rollouts.ScheduleError(f"tgt_type must be one of {', '.join(rollouts.TARGET_TYPES)}, got {tgt_type!r}")
    if tgt_type == "list" and isinstance(expr, str):
        expr = [m.strip() for m in expr.split(",") if m.strip()]
    if not expr:
        raise rollouts.ScheduleError("target is empty: name minions (a glob, a list, or tgt_type=compound)")
    found = salt.utils.minions.CkMinions(__opts__).check_minions(expr, tgt_type=tgt_type, greedy=False)
    minions = sorted(set(found.get("minions") or []))
    if tgt_type == "list":
        unknown = sorted(set(expr) - set(minions))
        if unknown:
            raise rollouts.ScheduleError(f"not accepted minions: {', '.join(unknown[:20])}")
    if not minions:
        raise rollouts.ScheduleError(f"target {target!r} ({tgt_type}) matches no accepted minion")
    return minions, tgt_type, expr


def _who():
    try:
        return getpass.getuser()
    except Exception:  # pylint: disable=broad-except
        return None


@store.guard
def schedule(target=None, software=None, version=None, start="now", end=None, batch="10%", max_fail=0,
             tgt_type=None, sha256=None):
    """
    Schedule a catalog package onto minions inside a maintenance window.

    target
        a glob (``desk-lon-*``) or list (``desk-1,desk-2`` or a YAML list) of
        accepted minion ids, or any Salt target with ``tgt_type`` (``compound``,
        ``grain``, ``pcre``, ``nodegroup``); resolved now and frozen
    software
        the catalog key (``software:catalog:<software>`` in the vm pillar)
    version
        must be the catalog's version (default: whatever the catalog has now)
    sha256
        optional pin: must be 64 hex characters and equal the catalog's installer hash
    start, end
        the maintenance window: ``now``, ``+30m``, ``+2h``, epoch seconds or ISO 8601
        (``2025-06-01T22:00``; without an offset, the master's local time). ``end`` is required.
    batch
        minions per batch: a count (``2``) or a percentage of the target (``25%``)
    max_fail
        failures tolerated before the rollout halts: a count (``3``) or a
        percentage of the target (``20%``); ``0`` (the default) halts at the first failure

    Returns the stored rollout (its ``id`` is what ``software.status`` and
    ``software.cancel`` take), or ``{"error": ...}`` with exit code 1.

    CLI Example:

    .. code-block:: bash

        salt-run software.schedule target='desk-lon-*' software=7zip version=23.01 \
            start=2025-06-01T22:00 end=2025-06-02T04:00 batch=25% max_fail=20
        salt-run software.schedule target=desk-1,desk-2 software=7zip end=+2h batch=1
        salt-run software.schedule target='G@deskfleet_role:desktop and G@site:LON' tgt_type=compound \
            software=7zip end=+4h
    """
    now = time.time()
    try:
        if not software:
            raise rollouts.ScheduleError("software is required: a key of the catalog (pillar software:catalog)")
        if end is None:
            raise rollouts.ScheduleError("end is required: the maintenance window must end (e.g. end=+2h)")
        start_at = rollouts.parse_time(start, now, "start")
        end_at = rollouts.parse_time(end, now, "end")
        rollouts.check_window(start_at, end_at, now)
        pinned = rollouts.check_sha256(sha256, "sha256") if sha256 is not None else None
        rollouts.batch_size(batch, 1)
        rollouts.fail_limit(max_fail, 1)
        entry = rollouts.catalog_entry(_catalog(), str(software))
        if version is not None and str(version) != entry["version"]:
            raise rollouts.ScheduleError(
                f"the catalog has {software} {entry['version']}; version {version} is not in the catalog"
            )
        if pinned is not None and pinned not in rollouts.hashes(entry).values():
            raise rollouts.ScheduleError(
                f"sha256 {pinned} does not match the catalog's installer for {software}"
                f" ({', '.join(f'{p}: {h}' for p, h in rollouts.hashes(entry).items())})"
            )
        minions, tgt_type, expr = _resolve(target, tgt_type)
    except ValueError as exc:  # CatalogError, ScheduleError
        return _error(str(exc))
    conn = rollouts.open_store(__opts__)
    try:
        rollout_id = rollouts.create(
            conn, software=entry["key"], version=entry["version"], entry=entry, target=expr, tgt_type=tgt_type,
            minions=minions, batch=batch, max_fail=max_fail, start=max(start_at, now), end=end_at, now=now,
            sha256=pinned, created_by=_who(),
        )
        result = rollouts.detail(conn, rollout_id)
    finally:
        conn.close()
    log.info("software: rollout %s: %s %s on %d minions", rollout_id, software, entry["version"], len(minions))
    return result


@store.guard
def status(id=None, state=None):  # pylint: disable=redefined-builtin
    """
    One rollout with every minion's progress (``pending``, ``running``,
    ``succeeded``, ``failed``, ``skipped``), its batches and their job ids; or,
    without an id, a summary of the most recent rollouts (optionally one ``state``:
    scheduled, running, completed, halted, expired, cancelled).

    CLI Example:

    .. code-block:: bash

        salt-run software.status
        salt-run software.status state=running
        salt-run software.status 20250601-3fa9c1
    """
    conn = rollouts.open_store(__opts__)
    try:
        if id is None:
            try:
                return rollouts.listing(conn, state=state)
            except ValueError as exc:
                return _error(str(exc))
        found = rollouts.detail(conn, str(id), time.time())
    finally:
        conn.close()
    return found if found is not None else _error(f"unknown rollout {id!r}")


@store.guard
def cancel(id):  # pylint: disable=redefined-builtin
    """
    Cancel a scheduled or running rollout: minions not started yet are
    ``skipped``; a batch already running finishes and its results are still
    collected by the next ticks.

    CLI Example:

    .. code-block:: bash

        salt-run software.cancel 20250601-3fa9c1
    """
    conn = rollouts.open_store(__opts__)
    try:
        try:
            return rollouts.cancel(conn, str(id), time.time(), who=_who())
        except ValueError as exc:
            return _error(str(exc))
    finally:
        conn.close()


@store.guard
def tick(id=None, wait=None):  # pylint: disable=redefined-builtin
    """
    Move every due rollout one step: collect the running batch's returns from the
    job cache (republishing a job that was lost), halt/complete/expire, then
    dispatch at most one batch and wait up to ``wait`` seconds (default
    ``deskfleet:vm:rollouts:tick_wait``) for it. Called by the master schedule;
    safe to call by hand at the same time (a lease keeps ticks apart).

    CLI Example:

    .. code-block:: bash

        salt-run software.tick
        salt-run software.tick 20250601-3fa9c1 wait=0
    """
    settings = _settings()
    if wait is not None:
        settings["wait"] = float(wait)
    conn = rollouts.open_store(__opts__)
    driver = None
    try:
        if not rollouts.due(conn, time.time()):
            return {"at": rollouts.iso(time.time()), "rollouts": []}  # the usual case: no LocalClient needed
        driver = _SaltDriver(__opts__, settings["find_job_timeout"])
        engine = rollouts.Engine(
            conn,
            driver,
            wait=settings["wait"],
            grace=settings["grace"],
            job_timeout=settings["job_timeout"],
            max_attempts=settings["max_attempts"],
            lease_ttl=settings["lease_ttl"],
        )
        reports = engine.tick(only=None if id is None else str(id))
    finally:
        if driver is not None:
            driver.close()
        conn.close()
    result = {"at": rollouts.iso(time.time()), "rollouts": reports}
    errors = [f"{r['id']}: {r['comment']}" for r in reports if r.get("action") == "error"]
    if errors:  # one rollout's trouble does not stop the others, but reaches the exit code
        __context__["retcode"] = 1
        result.update(error="; ".join(errors)[:1000], retcode=1)
    return result
