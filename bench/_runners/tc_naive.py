"""
Bench-only runner: the naive way to ingest ``tc_status`` beacons, ONE runner
job per event (reactor ``bench/reactor/tc_naive.sls`` → ``tc_naive.store``).

It writes to the same store, with the same validation, as the ``tc_ingest``
engine: ``tc_ingest_batch.parse_event`` (inside ``Ingestor.add``) and one
``Ingestor.flush()`` transaction per event. Loaded through ``runner_dirs`` on
the bench's naive master only; never shipped.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "tc_naive"

try:
    import tc_assets
    import tc_ingest_batch

    HAS_ASSETS = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing
    HAS_ASSETS = False
    _IMPORT_ERROR = str(_exc)


def __virtual__():
    if not HAS_ASSETS:
        return (False, f"tc_naive: _utils/tc_assets.py not importable (utils_dirs?): {_IMPORT_ERROR}")
    return __virtualname__


def store(tag, data, **_):
    """Validate and store one beacon event; returns the flush counts."""
    conn = tc_assets.open_store(__opts__)
    try:
        ingest = tc_ingest_batch.Ingestor(conn, tc_assets.pki_verifier(__opts__["pki_dir"]), batch_size=1)
        ingest.add(tag, data)  # tc_ingest_batch.parse_event; a rejection is counted like the engine counts it
        return ingest.flush()
    finally:
        conn.close()
