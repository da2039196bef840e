"""
The Salt glue every deskfleet module, runner and engine needs, written once.

The error rule (README, "Errors"): code in ``_utils`` raises; the Salt shell (module, runner) turns the
exception into ``{"error": ..., "retcode": 1}`` with :func:`error` (salt-run / salt exit 1, orchestration
fails) and, where ops route it, an alert event with :func:`alert`. Store faults: ``deskfleet_store.guard``
(master side only; this module carries no store code, so minions may sync it).

A shell uses it like this::

    try:
        import deskfleet_salt as glue
        _MISSING = None
    except ImportError as _exc:  # pragma: no cover
        glue, _MISSING = None, str(_exc)

    def __virtual__():
        return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)
"""

import contextlib
import errno
import logging
import os
import time

log = logging.getLogger(__name__)

__all__ = ["virtual", "error", "alert", "conf", "settings", "master_pillar", "PillarError", "master_lock", "Busy"]


def virtual(name, opts, role=None):
    """``name`` when this master runs ``role`` (``deskfleet:role`` in its config), else Salt's refusal."""
    actual = (opts.get("deskfleet") or {}).get("role")
    if role is not None and actual != role:
        return (False, f"{name}: runs on the {role} master only (deskfleet:role is {actual!r})")
    return name


def error(context, message, **extra):
    """The one error return: sets the job's retcode (exit 1) and says so in the return."""
    if context is not None:
        context["retcode"] = 1
    return dict(extra, error=message, retcode=1)


def alert(opts, tag, data):
    """Fire ``tag`` on the master bus for ops' reactors; best effort (the return carries the error too)."""
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    try:
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            return bool(bus.fire_event(data, tag))
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("deskfleet: could not fire %s: %s", tag, exc)
        return False


def conf(opts, *path):
    """The master config below ``deskfleet:<path...>`` as a dict (missing or null levels are empty)."""
    node = opts.get("deskfleet") or {}
    for key in path:
        node = (node.get(key) if isinstance(node, dict) else None) or {}
    return node if isinstance(node, dict) else {}


def settings(opts, path, defaults):
    """``defaults`` overlaid with ``deskfleet:<path>`` from the master config; unknown keys kept as given."""
    return {**defaults, **conf(opts, *path.split(":"))}


class PillarError(ValueError):
    """The master's own pillar does not render."""


def master_pillar(opts, minion_id=None):
    """The pillar the master renders for itself (or ``minion_id``); render errors raise :class:`PillarError`."""
    import salt.pillar  # pylint: disable=import-outside-toplevel

    target = minion_id or opts["id"]
    pillar = salt.pillar.get_pillar(opts, {"id": target}, target, saltenv="base").compile_pillar()
    if pillar.get("_errors"):
        raise PillarError(f"pillar does not render: {'; '.join(map(str, pillar['_errors']))[:500]}")
    return pillar


class Busy(RuntimeError):
    """Another process on this master holds the named lock past the timeout."""


@contextlib.contextmanager
def master_lock(opts, name, timeout=0.0, busy=None):
    """
    One holder of ``<cachedir>/deskfleet/<name>.lock`` per master; others wait up to ``timeout`` s
    (0: refused at once), then raise ``busy`` (a message) as :class:`Busy`.
    """
    import fcntl  # pylint: disable=import-outside-toplevel  (masters only; desktops sync this file, Windows too)

    path = os.path.join(opts["cachedir"], "deskfleet", f"{name}.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise Busy(busy or f"{name}: another process on this master holds the lock") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
