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
    import deskfleet_salt as glue
    import deskfleet_store as store
    import rollout_engine
    import rollout_schedule as schedules
    import rollout_store
    import software_catalog as catalog

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"software: deskfleet utils not importable (utils_dirs?): {_exc}"
    store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error


ALERT_TAG = "deskfleet/alert/rollout"  # a batch with failed minions (README "Metrics and alerts")
# deskfleet:vm:rollouts (README, "Software pushes")
DEFAULTS = {"tick_wait": 30, "grace": 30, "job_timeout": 1800, "max_attempts": 3, "lease_ttl": None,
            "find_job_timeout": 10}


def _alerts(reports):
    """One ``deskfleet/alert/rollout`` per rollout whose batch came back with failures in this tick."""
    out = []
    for report in reports:
        failed = sorted(m for m, state in (report.get("collected") or {}).items() if state == "failed")
        if failed:
            out.append({"kind": "batch_failed", "rollout": report["id"], "state": report.get("state"),
                        "failed": failed[:50], "count": len(failed), "counts": report.get("counts"),
                        "reason": report.get("reason")})
    return out


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


def _settings():
    conf = glue.settings(__opts__, "vm:rollouts", DEFAULTS)
    return {
        "wait": float(conf["tick_wait"]),
        "grace": float(conf["grace"]),
        "job_timeout": float(conf["job_timeout"]),
        "max_attempts": int(conf["max_attempts"]),
        "lease_ttl": conf["lease_ttl"],
        "find_job_timeout": float(conf["find_job_timeout"]),
    }


def _store():
    """The vm master's store, closed when the ``with`` ends."""
    return contextlib.closing(rollout_store.open_store(__opts__))


class _SaltDriver:
    """The Salt side of :class:`rollout_engine.Engine`: LocalClient publish, job cache, find_job."""

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
                    list(minions), rollout_engine.INSTALL_FUNCTION, arg=list(args), kwarg=dict(kwargs),
                    tgt_type="list", jid=jid, listen=False,
                )
            except Exception as exc:  # pylint: disable=broad-except
                raise rollout_engine.DispatchError(str(exc)) from exc
        if not pub:
            if "No minions matched" in said.getvalue():
                return []
            raise rollout_engine.DispatchError(said.getvalue().strip() or "the master did not take the job")
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
    """``software:catalog`` from the vm master's own pillar (top ``'*'``)."""
    software = glue.master_pillar(__opts__).get("software") or {}
    return software.get("catalog") if isinstance(software, dict) else None


def _resolve(target, tgt_type):
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    if target is None or (isinstance(target, (str, list, tuple)) and not target):
        raise schedules.ScheduleError("target is empty: name minions (a glob, a list, or tgt_type=compound)")
    if isinstance(target, (list, tuple)):
        expr = [str(t).strip() for t in target if str(t).strip()]
        tgt_type = tgt_type or "list"
    else:
        expr = str(target).strip()
        if tgt_type is None:
            tgt_type = "list" if "," in expr and not any(c in expr for c in "*?[@ ") else "glob"
    if tgt_type not in schedules.TARGET_TYPES:
        raise schedules.ScheduleError(f"tgt_type must be one of {', '.join(schedules.TARGET_TYPES)}, got {tgt_type!r}")
    if tgt_type == "list" and isinstance(expr, str):
        expr = [m.strip() for m in expr.split(",") if m.strip()]
    if not expr:
        raise schedules.ScheduleError("target is empty: name minions (a glob, a list, or tgt_type=compound)")
    found = salt.utils.minions.CkMinions(__opts__).check_minions(expr, tgt_type=tgt_type, greedy=False)
    minions = sorted(set(found.get("minions") or []))
    if tgt_type == "list":
        unknown = sorted(set(expr) - set(minions))
        if unknown:
            raise schedules.ScheduleError(f"not accepted minions: {', '.join(unknown[:20])}")
    if not minions:
        raise schedules.ScheduleError(f"target {target!r} ({tgt_type}) matches no accepted minion")
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
        start_at, end_at, entry, pinned = _checked(software, version, start, end, batch, max_fail, sha256, now)
        minions, tgt_type, expr = _resolve(target, tgt_type)
    except ValueError as exc:  # CatalogError, ScheduleError, PillarError
        return glue.error(__context__, str(exc))
    with _store() as conn:
        rollout_id = rollout_store.create(
            conn, software=entry["key"], version=entry["version"], entry=entry, target=expr, tgt_type=tgt_type,
            minions=minions, batch=batch, max_fail=max_fail, start=max(start_at, now), end=end_at, now=now,
            sha256=pinned, created_by=_who(),
        )
        result = rollout_store.detail(conn, rollout_id)
    log.info("software: rollout %s: %s %s on %d minions", rollout_id, software, entry["version"], len(minions))
    return result


def _checked(software, version, start, end, batch, max_fail, sha256, now):
    """The request checked before anything is stored: (start, end, catalog entry, sha256 pin or None)."""
    if not software:
        raise schedules.ScheduleError("software is required: a key of the catalog (pillar software:catalog)")
    if end is None:
        raise schedules.ScheduleError("end is required: the maintenance window must end (e.g. end=+2h)")
    start_at = schedules.parse_time(start, now, "start")
    end_at = schedules.parse_time(end, now, "end")
    schedules.check_window(start_at, end_at, now)
    pinned = catalog.check_sha256(sha256, "sha256") if sha256 is not None else None
    schedules.batch_size(batch, 1)
    schedules.fail_limit(max_fail, 1)
    entry = catalog.catalog_entry(_catalog(), str(software))
    if version is not None and str(version) != entry["version"]:
        raise schedules.ScheduleError(
            f"the catalog has {software} {entry['version']}; version {version} is not in the catalog"
        )
    if pinned is not None and pinned not in catalog.hashes(entry).values():
        raise schedules.ScheduleError(
            f"sha256 {pinned} does not match the catalog's installer for {software}"
            f" ({', '.join(f'{p}: {h}' for p, h in catalog.hashes(entry).items())})"
        )
    return start_at, end_at, entry, pinned


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
    with _store() as conn:
        try:
            found = rollout_store.listing(conn, state=state) if id is None else rollout_store.detail(
                conn, str(id), time.time())
        except ValueError as exc:
            return glue.error(__context__, str(exc))
    return found if found is not None else glue.error(__context__, f"unknown rollout {id!r}")


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
    with _store() as conn:
        try:
            return rollout_store.cancel(conn, str(id), time.time(), who=_who())
        except ValueError as exc:
            return glue.error(__context__, str(exc))


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
    with _store() as conn:
        if not rollout_store.due(conn, time.time()):
            return {"at": schedules.iso(time.time()), "rollouts": []}  # the usual case: no LocalClient needed
        driver = _SaltDriver(__opts__, settings["find_job_timeout"])
        try:
            engine = rollout_engine.Engine(
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
            driver.close()
    result = {"at": schedules.iso(time.time()), "rollouts": reports}
    for alert in _alerts(reports):
        glue.alert(__opts__, ALERT_TAG, alert)
    errors = [f"{r['id']}: {r['comment']}" for r in reports if r.get("action") == "error"]
    if errors:  # one rollout's trouble does not stop the others, but reaches the exit code
        return glue.error(__context__, "; ".join(errors)[:1000], **result)
    return result
