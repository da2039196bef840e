"""
vm master engine: desktop session beacons into the store's ``desktop_sessions``
table, which host maintenance reads (a pool desktop whose user logged off is
recycled instead of moved). Events are checked in ``_utils/desktop_sessions.py``
(signed by the desktop's accepted key, the sender speaks only for itself);
rejects are logged at WARNING and never stop the engine. Rows are written in
one transaction every ``flush_interval`` seconds.

.. code-block:: yaml

    engines:
      - desktop_sessions:
          flush_interval: 0.5
"""

import asyncio
import logging
import time

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "desktop_sessions"

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import desktop_sessions

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"desktop_sessions: _utils not importable (utils_dirs?): {_exc}"


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


def start(flush_interval=0.5, retry_delay=1.0):
    """Run forever: check session events, write them in small batches."""
    asyncio.run(_run(float(flush_interval), float(retry_delay)))


async def _run(flush_interval, retry_delay):
    loop = asyncio.get_running_loop()
    conn = desktop_sessions.open_store(deskfleet_store.default_path(__opts__, "vm"))
    verify = desktop_sessions.pki_verifier(__opts__["pki_dir"])
    bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True, io_loop=loop)
    rows, timer = {}, None

    def flush():
        nonlocal timer
        timer = None
        batch = list(rows.values())
        try:
            desktop_sessions.record(conn, *batch)
        except Exception:  # pylint: disable=broad-except
            log.exception("desktop_sessions: store write failed; %d rows kept for retry", len(batch))
            timer = loop.call_later(retry_delay, flush)
            return
        for row in batch:
            if rows.get(row["desktop"]) is row:
                del rows[row["desktop"]]

    async def on_event(raw):
        nonlocal timer
        tag, data = bus.unpack(raw)
        if not desktop_sessions.TAG_RE.fullmatch(tag or ""):
            return
        try:
            row = desktop_sessions.parse_event(tag, data, verify, time.time())
        except desktop_sessions.Rejected as exc:
            log.warning("desktop_sessions: %s", exc)
            return
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("desktop_sessions: unreadable event %s: %s", str(tag)[:120], type(exc).__name__)
            return
        rows[row["desktop"]] = row
        if timer is None:
            timer = loop.call_later(flush_interval, flush)

    bus.set_event_handler(on_event)
    log.info("desktop_sessions: started (flush every %ss)", flush_interval)
    await asyncio.Event().wait()
