"""
tc master engine: ingest thin-client status beacons into the inventory store.

Listens on the master event bus for ``salt/beacon/<id>/tc_status/status`` and
writes in batches: when ``batch_size`` events are buffered or ``flush_interval``
seconds after the first buffered event, whichever comes first. One engine
process, one SQLite writer, no runner per event. Validation and storage live in
``_utils/tc_assets.py``.

.. code-block:: yaml

    engines:
      - tc_ingest:
          batch_size: 500
          flush_interval: 0.5
"""

import logging
import time

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "tc_ingest"

try:
    import tc_assets

    HAS_ASSETS = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    HAS_ASSETS = False
    _IMPORT_ERROR = str(_exc)


def __virtual__():
    if not HAS_ASSETS:
        return (False, f"tc_ingest: _utils/tc_assets.py not importable (utils_dirs?): {_IMPORT_ERROR}")
    return __virtualname__


def start(batch_size=500, flush_interval=0.5, retry_delay=1.0):
    """
    Run forever: read beacon events, flush batches to the store.
    """
    ingest = tc_assets.ingestor(__opts__, batch_size=batch_size, flush_interval=flush_interval)
    log.info("tc_ingest: started (batch %s, flush every %ss)", batch_size, flush_interval)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True) as bus:
        bus.subscribe(tc_assets.TAG_MATCH, match_type="regex")
        while True:
            event = bus.get_event(
                wait=ingest.wait_time(), tag=tc_assets.TAG_MATCH, match_type="regex", full=True
            )
            if event is not None:
                ingest.add(event.get("tag"), event.get("data"))
            if ingest.due():
                try:
                    ingest.flush()
                except Exception:  # pylint: disable=broad-except
                    # keep the buffer (nothing lost) and try again shortly
                    log.exception("tc_ingest: store write failed; %d events kept for retry", ingest.pending())
                    time.sleep(retry_delay)
