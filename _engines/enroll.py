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
import functools
import logging

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "enroll"

try:
    import deskfleet_salt as glue
    import enroll_guard
    import enroll_keys
    import enroll_store
    import enrollment

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"enroll: deskfleet utils not importable (utils_dirs?): {_exc}"


def __virtual__():
    # both masters: thin clients on the tc master, seeded desktop keys on the vm master
    return glue.virtual(__virtualname__, __opts__) if glue else (False, _MISSING)


def start():
    """Run forever."""
    asyncio.run(_run())


async def _run():
    loop = asyncio.get_running_loop()
    role = glue.conf(__opts__).get("role")
    settings = enrollment.settings(__opts__, role)
    bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True, io_loop=loop)
    conn = enroll_store.open_store(__opts__, role)
    guard = enroll_guard.Guard(conn, enroll_keys.Keys(__opts__), settings, fire=functools.partial(glue.alert, __opts__))

    def safely(what, fun, *args):
        try:
            return fun(*args)
        except Exception:  # pylint: disable=broad-except
            log.exception("enroll: %s failed", what)
            glue.alert(__opts__, enroll_guard.TAG + "error", {"error": f"{what} failed; see the master log"})
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
