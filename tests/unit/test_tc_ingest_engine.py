"""
Fast tests of the ``tc_ingest`` engine shell (``_engines/tc_ingest.py``): its
own timer flush, its retry after a store failure, its flush on stop and on
SIGTERM. A real asyncio loop, a real Ingestor over a real SQLite file, real
lock contention for the store fault; only the master bus is a stand-in that
hands events to the engine's handler the way Salt's does.
"""

import asyncio
import base64
import logging
import os
import signal
import sqlite3

import pytest
import salt.crypt

import deskfleet_store as store
import tc_assets
import tc_ingest_batch
from tests.support.loading import load

SEAT = "tc-0001"
TAG = f"salt/beacon/{SEAT}/tc_status/status"
DEADLINE = 20.0  # seconds; generous for a loaded 2-core box


engine = load("_engines/tc_ingest.py", "tc_ingest_engine")


class Bus:
    """What the engine uses of Salt's master event bus: a handler and unpack."""

    def __init__(self):
        self.handler = None

    def set_event_handler(self, handler):
        self.handler = handler

    @staticmethod
    def unpack(raw):
        return raw

    async def fire(self, tag, data):
        while self.handler is None:
            await asyncio.sleep(0.001)
        await self.handler((tag, data))


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    priv, pub = salt.crypt.gen_keys(2048)
    pki = tmp_path_factory.mktemp("pki")
    (pki / "minions").mkdir()
    (pki / "minions" / SEAT).write_text(pub)
    key = salt.crypt.PrivateKey.from_str(priv)

    def make(seq):
        body = {"v": 2, "epoch": 1, "seat": SEAT, "seq": seq, "ts": 1.0, "reason": "heartbeat",
                "changed": [], "heartbeat": 300, "facts": {"firmware": "13.1.0"}}
        sig = key.sign(tc_assets.canonical(body), algorithm=tc_assets.SIGN_ALGORITHM)
        return dict(body, sig=base64.b64encode(sig).decode())

    return make, tc_assets.pki_verifier(str(pki))


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "deskfleet.sqlite")


def _stored(db, seq=1):
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT seq FROM seats WHERE seat = ?", (SEAT,)).fetchone()
    finally:
        conn.close()
    return row is not None and row[0] >= seq


async def _until(cond, what):
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _ingestor(db, verify, **kw):
    return tc_ingest_batch.Ingestor(store.connect(db, tc_assets.MIGRATIONS), verify, **kw)


def test_a_lone_event_is_stored_on_the_engines_own_timer(db, signed):
    make, verify = signed
    ingest = _ingestor(db, verify, batch_size=500, flush_interval=0.05)

    async def scenario():
        bus, stop = Bus(), asyncio.Event()
        task = asyncio.create_task(engine._run({}, ingest, 0.05, bus=bus, stop=stop))
        await bus.fire(TAG, make(1))  # no event after it, batch far from full
        await _until(lambda: _stored(db), "the timer flush")
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_failed_store_write_is_retried_until_it_lands(db, signed, caplog):
    make, verify = signed
    ingest = _ingestor(db, verify, batch_size=500, flush_interval=0.01)
    ingest.conn.execute("PRAGMA busy_timeout = 10")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the store: a real lock fault

    async def scenario():
        bus, stop = Bus(), asyncio.Event()
        task = asyncio.create_task(engine._run({}, ingest, 0.05, bus=bus, stop=stop))
        await bus.fire(TAG, make(1))
        await _until(lambda: "store write failed" in caplog.text, "a failed write")
        assert not _stored(db)
        blocker.execute("ROLLBACK")
        await _until(lambda: _stored(db), "the retry to land")
        stop.set()
        await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    blocker.close()
    assert tc_assets.counters(ingest.conn)["accepted"] == 1  # counted once, not per try


def test_stop_flushes_what_was_taken_off_the_bus(db, signed):
    make, verify = signed
    ingest = _ingestor(db, verify, batch_size=500, flush_interval=3600)  # the timer would never fire

    async def scenario():
        bus, stop = Bus(), asyncio.Event()
        task = asyncio.create_task(engine._run({}, ingest, 0.05, bus=bus, stop=stop))
        for seq in (1, 2, 3):
            await bus.fire(TAG, make(seq))
        assert not _stored(db)
        stop.set()
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(scenario())
    assert _stored(db, seq=3)


def test_sigterm_stops_the_engine_after_a_flush(db, signed):
    make, verify = signed
    ingest = _ingestor(db, verify, batch_size=500, flush_interval=3600)

    async def scenario():
        bus = Bus()
        task = asyncio.create_task(engine._run({}, ingest, 0.05, bus=bus))
        await bus.fire(TAG, make(1))
        os.kill(os.getpid(), signal.SIGTERM)  # what the master's process manager sends
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(scenario())
    assert _stored(db)
