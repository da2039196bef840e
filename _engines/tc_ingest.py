"""
tc master engine: ingest thin-client status beacons into the inventory store.

Listens on the master event bus for ``salt/beacon/<id>/tc_status/status`` and
writes in batches: when ``batch_size`` events are buffered or ``flush_interval``
seconds after the first buffered event, whichever comes first (a timer, so the
last partial batch never waits for another event). One engine process, one
SQLite writer, no runner per event. Validation and storage live in
``_utils/tc_ingest_batch.py``. Two tc masters (hot multi-master) run one engine each
on one PostgreSQL: each report reaches both, and ``tc_ingest_batch`` decides in the
write transaction which copy is stored (README "Two tc masters, one inventory").

Events are received through an asyncio handler rather than a blocking
``get_event()`` per event: measured in ``bench/ingest.py``, that halves the
engine's CPU per event.

.. code-block:: yaml

    engines:
      - tc_ingest:
          batch_size: 500
          flush_interval: 0.25
          rate_limit: 64       # events per seat per rate_window
          rate_window: 300     # seconds; default deskfleet:tc:heartbeat

On SIGTERM (master stop, engine restart) the buffer is flushed before the
process exits; events the bus delivered while no engine ran show up as seq
gaps, counted per seat (``missed``).
"""

import asyncio
import logging
import re
import signal

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "tc_ingest"

try:
    import deskfleet_salt as glue
    import tc_assets
    import tc_ingest_batch

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"tc_ingest: _utils/tc_assets.py or tc_ingest_batch.py not importable (utils_dirs?): {_exc}"


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="tc") if glue else (False, _MISSING)


def start(batch_size=500, flush_interval=0.25, retry_delay=1.0, rate_limit=64, rate_window=None):
    """
    Run until SIGTERM/SIGINT: read beacon events, flush batches to the store,
    and flush what is buffered before returning.
    """
    ingest = tc_ingest_batch.ingestor(__opts__, batch_size, flush_interval, rate_limit, rate_window)
    asyncio.run(_run(__opts__, ingest, retry_delay))


async def _run(opts, ingest, retry_delay, bus=None, stop=None):
    loop = asyncio.get_running_loop()
    if bus is None:
        bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True, io_loop=loop)
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    wanted = re.compile(tc_assets.TAG_MATCH).match
    timer = None

    def flush():
        nonlocal timer
        timer = None
        try:
            ingest.flush()
        except Exception:  # pylint: disable=broad-except
            # keep the buffer (nothing lost) and try again shortly
            log.exception("tc_ingest: store write failed; %d events kept for retry", ingest.pending())
            timer = loop.call_later(retry_delay, flush)

    async def on_event(raw):
        nonlocal timer
        tag, data = bus.unpack(raw)
        if not wanted(tag or ""):
            return
        ingest.add(tag, data)
        if ingest.due():
            if timer is not None:
                timer.cancel()
            flush()
        elif timer is None:
            timer = loop.call_later(ingest.wait_time(), flush)

    bus.set_event_handler(on_event)
    log.info("tc_ingest: started (batch %s, flush every %ss)", ingest.batch_size, ingest.flush_interval)
    await stop.wait()
    if timer is not None:
        timer.cancel()
    # stopping: whatever was taken off the bus is stored (a store fault is retried, then logged)
    for _ in range(3):
        try:
            ingest.flush()
            break
        except Exception:  # pylint: disable=broad-except
            log.exception("tc_ingest: flush on shutdown failed; %d events pending", ingest.pending())
            await asyncio.sleep(retry_delay)
    log.info("tc_ingest: stopped")
