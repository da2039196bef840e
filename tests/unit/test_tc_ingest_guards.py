"""
Unit tests for the ingest guards in ``_utils/tc_assets.py``: freshness per seat
on (epoch, seq) with missed-event counting, and the per-seat rate limit.
"""

import base64
import threading

import pytest
import salt.crypt

import deskfleet_store as store
import tc_assets
import tc_ingest_batch

TAG = "salt/beacon/{}/tc_status/status"
SEATS = ("tc-0001", "tc-0002")


@pytest.fixture(scope="module")
def keys():
    out = {}
    for name in SEATS + ("intruder",):
        priv, pub = salt.crypt.gen_keys(2048)
        out[name] = (salt.crypt.PrivateKey.from_str(priv), pub)
    return out


@pytest.fixture(scope="module")
def verify(tmp_path_factory, keys):
    pki = tmp_path_factory.mktemp("pki")
    (pki / "minions").mkdir()
    for seat in SEATS:
        (pki / "minions" / seat).write_text(keys[seat][1])
    return tc_assets.pki_verifier(str(pki))


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def conn(tmp_path):
    c = store.connect(str(tmp_path / "s.sqlite"), tc_assets.MIGRATIONS)
    yield c
    c.close()


@pytest.fixture
def event(keys):
    def make(seat="tc-0001", seq=1, epoch=100, key=None, firmware="13.1.0", reason="heartbeat", v=2):
        body = {
            "v": v, "seat": seat, "seq": seq, "ts": 1000.0 + seq, "reason": reason, "changed": [],
            "heartbeat": 300, "facts": {"firmware": firmware, "boot_id": f"boot-{epoch}", "uptime": 10.0 * seq},
        }
        if v == 2:
            body["epoch"] = epoch
        raw = (key or keys[seat][0]).sign(tc_assets.canonical(body), algorithm=tc_assets.SIGN_ALGORITHM)
        return TAG.format(seat), dict(body, sig=base64.b64encode(raw).decode())

    return make


def _seat(conn, seat="tc-0001"):
    return tc_assets.seat(conn, seat, 2000.0, 300, 3)


def _reasons(conn):
    return [r["reason"] for r in tc_assets.recent_rejects(conn, limit=100)][::-1]


# ---- freshness ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, reason",
    [((100, 5), "duplicate"), ((100, 3), "stale"), ((99, 40), "replayed"), ((0, 900), "replayed")],
)
def test_an_event_not_newer_than_the_stored_one_is_refused(conn, verify, clock, event, old, reason):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
    ing.add(*event(seq=5, epoch=100, firmware="13.2.0"))
    ing.flush()
    clock.t += 600  # later than the offline threshold
    ing.add(*event(seq=old[1], epoch=old[0], firmware="12.0.0"))
    assert ing.flush() == {"accepted": 0, "rejected": 1}
    seat = _seat(conn)
    assert (seat["firmware"], seat["seq"], seat["last_seen"]) == ("13.2.0", 5, 1000.0)  # nothing rolled back
    assert tc_assets.counters(conn)[reason] == 1
    (rej,) = tc_assets.recent_rejects(conn)
    # a valid signature of tc-0001 re-sent by someone: the victim is not blamed
    assert rej["sender"] is None and rej["claimed"] == "tc-0001"
    assert rej["attribution"] == f"re-sent signed payload of tc-0001 ({reason}), sender unknown"


def test_freshness_survives_an_engine_restart(tmp_path, verify, clock, event):
    path = str(tmp_path / "s.sqlite")
    first = tc_ingest_batch.Ingestor(store.connect(path, tc_assets.MIGRATIONS), verify, clock=clock)
    first.add(*event(seq=7))
    first.flush()
    second = tc_ingest_batch.Ingestor(store.connect(path, tc_assets.MIGRATIONS), verify, clock=clock)
    second.add(*event(seq=7))
    second.add(*event(seq=6))
    assert second.flush() == {"accepted": 0, "rejected": 2}
    assert tc_assets.counters(second.conn) == {"accepted": 1, "duplicate": 1, "stale": 1}


def test_a_resent_request_is_absorbed_in_the_same_batch(conn, verify, clock, event):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
    tag, data = event(seq=1)
    ing.add(tag, data)
    ing.add(tag, dict(data))
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert tc_assets.counters(conn)["duplicate"] == 1


def test_a_seat_retired_while_its_event_is_buffered_does_not_come_back(conn, verify, clock, event):
    # seat.retire deletes the key, then the rows; an event verified just before sat in the buffer
    retired = set()
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock, accepted=lambda seat: seat not in retired)
    ing.add(*event("tc-0001", seq=1))
    ing.add(*event("tc-0001", seq=2))
    ing.add(*event("tc-0002", seq=1))
    retired.add("tc-0001")
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert _seat(conn, "tc-0001") is None and _seat(conn, "tc-0002")["seq"] == 1
    assert tc_assets.counters(conn) == {"accepted": 1, "forged": 1}
    (rej,) = tc_assets.recent_rejects(conn)
    assert rej["sender"] == "tc-0001" and "key was deleted" in rej["detail"]


def test_the_key_is_asked_under_the_write_lock_so_a_retire_cannot_slip_between(store_db, verify, clock, event):
    # seat.retire deletes the key, then the rows in a transaction of its own. Asked under the ingest's
    # write lock, the key is either gone (row refused) or the retire's row delete waits for this commit.
    conn = store.connect(store_db, tc_assets.MIGRATIONS)
    retire = store.connect(store_db, tc_assets.MIGRATIONS, timeout=0.5)
    tried = []

    def accepted(seat):
        try:
            with store.transaction(retire):
                retire.execute("DELETE FROM seats WHERE seat = ?", (seat,))
            tried.append("wrote")
        except store.StoreError as exc:
            tried.append(exc.fault)
        return True

    try:
        ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock, accepted=accepted)
        ing.add(*event("tc-0001", seq=1))
        assert ing.flush() == {"accepted": 1, "rejected": 0}
        assert tried == ["locked"], tried
    finally:
        retire.close()
        conn.close()


def test_a_reboot_starts_a_new_epoch_and_an_old_boot_cannot_come_back(conn, verify, clock, event):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
    ing.add(*event(seq=40, epoch=100, firmware="13.1.0"))
    ing.add(*event(seq=1, epoch=200, firmware="13.2.0"))  # rebooted: seq restarts
    ing.add(*event(seq=41, epoch=100, firmware="13.1.0"))  # the old boot's payload, replayed
    assert ing.flush() == {"accepted": 2, "rejected": 1}
    seat = _seat(conn)
    assert (seat["epoch"], seat["seq"], seat["firmware"], seat["boot_id"]) == (200, 1, "13.2.0", "boot-200")
    assert _reasons(conn) == ["replayed"]


def test_seq_gaps_are_counted_as_missed_per_seat(conn, verify, clock, event):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
    for seq in (1, 2, 5, 6, 10):  # 3, 4, 7, 8, 9 never arrived
        ing.add(*event(seq=seq))
    ing.add(*event("tc-0002", seq=1))
    ing.flush()
    ing.add(*event(seq=4, epoch=300))  # new epoch: seq 1-3 of it were lost
    ing.flush()
    assert _seat(conn)["missed"] == 8
    assert _seat(conn, "tc-0002")["missed"] == 0
    assert tc_assets.counters(conn)["missed"] == 8


def test_a_v1_payload_cannot_roll_back_a_v2_seat(conn, verify, clock, event):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
    ing.add(*event(seq=1, epoch=100, firmware="13.2.0"))
    ing.add(*event(seq=99, v=1, firmware="12.0.0"))  # an old beacon's payload: epoch 0
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert _seat(conn)["firmware"] == "13.2.0"


# ---- rate limit ------------------------------------------------------------------------


def test_a_flooding_seat_is_limited_and_charged_while_its_neighbour_lands(conn, verify, clock, event):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock, rate_limit=3, rate_window=300)
    for seq in range(1, 11):
        ing.add(*event("tc-0001", seq=seq))
    ing.add(*event("tc-0002", seq=1))
    assert ing.flush() == {"accepted": 4, "rejected": 7}
    assert _seat(conn)["seq"] == 3
    assert _seat(conn, "tc-0002")["seq"] == 1
    (stat,) = tc_assets.reject_stats(conn)
    assert (stat["sender"], stat["reason"], stat["count"]) == ("tc-0001", "rate_limited", 7)
    assert tc_assets.counters(conn)["rate_limited"] == 7
    assert _seat(conn)["missed"] == 0  # refused is not missed
    # next window: the seat lands again
    clock.t += 300
    ing.add(*event("tc-0001", seq=11))
    assert ing.flush() == {"accepted": 1, "rejected": 0}


def test_forgeries_and_replays_do_not_spend_the_victims_budget(conn, verify, clock, event, keys):
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock, rate_limit=2, rate_window=300)
    ing.add(*event("tc-0002", seq=1))
    for seq in range(2, 50):
        ing.add(*event("tc-0002", seq=seq, key=keys["intruder"][0]))  # forged
        ing.add(*event("tc-0002", seq=1))  # replayed
    ing.add(*event("tc-0002", seq=2))
    assert ing.flush()["accepted"] == 2
    assert _seat(conn, "tc-0002")["seq"] == 2


# ---- two tc masters, one store (both backends) ---------------------------------------------


@pytest.fixture
def masters(store_db, verify, clock):
    """Two ingestors (the engines of two tc masters) on one store, each with its own connection."""
    conns = [store.connect(store_db, tc_assets.MIGRATIONS) for _ in range(2)]
    yield [tc_ingest_batch.Ingestor(c, verify, clock=clock) for c in conns]
    for c in conns:
        c.close()


def _rows(conn):
    return conn.execute("SELECT seat, epoch, seq, firmware FROM seats ORDER BY seat").fetchall()


def test_one_report_received_by_both_masters_is_stored_once_and_counted_duplicate(masters, event):
    a, b = masters
    report = event(seq=1, firmware="13.2.0")
    a.add(*report)
    b.add(*report)  # both buffered before either wrote: each process's own view says fresh
    assert a.flush() == {"accepted": 1, "rejected": 0}
    assert b.flush() == {"accepted": 0, "rejected": 1}
    assert [tuple(r) for r in _rows(a.conn)] == [("tc-0001", 100, 1, "13.2.0")]
    assert tc_assets.counters(a.conn) == {"accepted": 1, "duplicate": 1}
    b.add(*event(seq=2))  # B now knows seq 1 was stored: the next report is fresh, nothing missed
    assert b.flush() == {"accepted": 1, "rejected": 0}
    assert tc_assets.seat(a.conn, "tc-0001", 2000.0, 300, 3)["missed"] == 0


def test_an_older_report_after_a_newer_one_from_the_other_master_is_stale(masters, event):
    a, b = masters
    b.add(*event(seq=3, firmware="12.0.0"))
    b.flush()
    a.add(*event(seq=5, firmware="13.2.0"))
    a.flush()
    b.add(*event(seq=4, firmware="12.0.0"))  # newer than B's own view (3), older than the store (5)
    b.add(*event(seq=90, epoch=99, firmware="11.0.0"))  # an old boot's payload, replayed at B
    assert b.flush() == {"accepted": 0, "rejected": 2}
    assert [tuple(r) for r in _rows(a.conn)] == [("tc-0001", 100, 5, "13.2.0")]  # nothing rolled back
    counted = tc_assets.counters(a.conn)
    assert (counted["accepted"], counted["stale"], counted["replayed"]) == (2, 1, 1)
    assert [r["claimed"] for r in tc_assets.recent_rejects(a.conn)] == ["tc-0001", "tc-0001"]


def test_a_stream_split_over_two_masters_lands_once_per_report_without_gaps(masters, event):
    a, b = masters
    reports = [event(seq=seq) for seq in range(1, 13)]
    for seq, report in enumerate(reports, 1):
        if not 5 <= seq <= 8:  # A was down for seq 5-8: only B got those
            a.add(*report)
        b.add(*report)
        if seq % 3 == 0:
            b.flush()
        if seq % 4 == 0:
            a.flush()
    a.flush()
    b.flush()
    assert [tuple(r)[:3] for r in _rows(a.conn)] == [("tc-0001", 100, 12)]
    counted = tc_assets.counters(a.conn)
    assert counted["accepted"] == 12 and counted["duplicate"] + counted.get("stale", 0) == 8
    assert counted.get("missed", 0) == 0  # a report only one master got is not a gap


def test_the_upserts_never_store_an_older_report(store_db, verify, clock, event):
    conn = store.connect(store_db, tc_assets.MIGRATIONS)
    try:
        ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
        ing.add(*event(seq=5, firmware="13.2.0"))
        ing.flush()
        with store.transaction(conn):  # what a settle that let the old report through would write
            stale = tc_ingest_batch._row("tc-0001", 100, 4, 1.0, "change", {"firmware": "12.0.0"}, 2000.0)
            conn.execute(tc_ingest_batch._UPSERT, tuple(stale[c] for c in tc_assets.SEAT_COLUMNS))
            conn.execute(tc_ingest_batch._SEQ_UPSERT, ("tc-0001", 100, 4, 0))
        assert [tuple(r) for r in _rows(conn)] == [("tc-0001", 100, 5, "13.2.0")]
        assert tuple(conn.execute("SELECT epoch, seq FROM ingest_seq").fetchone()) == (100, 5)
    finally:
        conn.close()


def test_two_masters_writing_at_once_store_each_report_once(store_db, verify, clock, event):
    reports = [event(seat, seq=seq) for seq in range(1, 31) for seat in SEATS]
    results, errors = [], []

    def master(every):
        conn = store.connect(store_db, tc_assets.MIGRATIONS)  # its own connection, as another host would
        try:
            ing = tc_ingest_batch.Ingestor(conn, verify, clock=clock)
            for n, report in enumerate(reports, 1):
                ing.add(*report)
                if n % every == 0:
                    results.append(ing.flush())
            results.append(ing.flush())
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=master, args=(every,)) for every in (5, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    conn = store.connect(store_db, tc_assets.MIGRATIONS)
    try:
        assert [tuple(r)[:3] for r in _rows(conn)] == [(seat, 100, 30) for seat in SEATS]
        counted = tc_assets.counters(conn)
        assert sum(r["accepted"] for r in results) == counted["accepted"] == 60
        assert counted.get("duplicate", 0) + counted.get("stale", 0) == 60
        assert counted.get("missed", 0) == 0
    finally:
        conn.close()
