"""
Master engine: per-device enrollment (see ``_utils/enrollment.py``).

Listens for ``salt/auth`` (``pend``/``denied``, which carry the device's
``deskfleet_enroll`` proof because ``auth_events_autosign_grains`` lists those
acts) and ``salt/key`` (a key accepted by ``salt-key -a``), and sweeps every
``deskfleet:<role>:enroll:sweep_interval`` seconds: tokens and pending keys
expire, pre-claims of protected ids are deleted. Salt never auto-signs: this
engine is the only thing that accepts a thin client's key.

.. code-block:: yaml

    engines:
      - enroll: {}
"""

import asyncio
import logging

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "enroll"

try:
    import enroll_guard
    import enroll_keys
    import enroll_store
    import enrollment

    HAS_UTILS = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    HAS_UTILS = False
    _IMPORT_ERROR = str(_exc)


def __virtual__():
    if not HAS_UTILS:
        return (False, f"enroll: deskfleet utils not importable (utils_dirs?): {_IMPORT_ERROR}")
    return __virtualname__


def start():
    """Run forever."""
    asyncio.run(_run())


async def _run():
    loop = asyncio.get_running_loop()
    role = (__opts__.get("deskfleet") or {}).get("role")
    settings = enrollment.settings(__opts__, role)
    bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True, io_loop=loop)
    sender = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
    conn = enroll_store.open_store(__opts__, role)
    guard = enroll_guard.Guard(conn, enroll_keys.Keys(__opts__), settings, fire=lambda tag, data: sender.fire_event(data, tag))

    def safely(what, fun, *args):
        try:
            return fun(*args)
        except Exception:  # pylint: disable=broad-except
            log.exception("enroll: %s failed", what)
            sender.fire_event({"error": f"{what} failed; see the master log"}, enroll_guard.TAG + "error")
            return None

    def sweep():
        safely("sweep", guard.sweep)
        loop.call_later(settings["sweep_interval"], sweep)

    async def on_event(raw):
        tag, data = bus.unpack(raw)
        if tag == "salt/auth":
            safely("auth event", guard.on_auth, data)
        elif tag == "salt/key":
            safely("key event", guard.on_key, data)

    bus.set_event_handler(on_event)
    sweep()
    log.info("enroll: started (role %s, id policy %s, pending_ttl %ss)", role, settings["id_pattern"], settings["pending_ttl"])
    await asyncio.Event().wait()
