"""
Unit tests for the ingest guards in ``_utils/tc_assets.py``: freshness per seat
on (epoch, seq) with missed-event counting, and the per-seat rate limit.
"""

import base64

import pytest
import salt.crypt

import deskfleet_store as store
import tc_assets

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
    ing = tc_assets.Ingestor(conn, verify, clock=clock)
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
    first = tc_assets.Ingestor(store.connect(path, tc_assets.MIGRATIONS), verify, clock=clock)
    first.add(*event(seq=7))
    first.flush()
    second = tc_assets.Ingestor(store.connect(path, tc_assets.MIGRATIONS), verify, clock=clock)
    second.add(*event(seq=7))
    second.add(*event(seq=6))
    assert second.flush() == {"accepted": 0, "rejected": 2}
    assert tc_assets.counters(second.conn) == {"accepted": 1, "duplicate": 1, "stale": 1}


def test_a_resent_request_is_absorbed_in_the_same_batch(conn, verify, clock, event):
    ing = tc_assets.Ingestor(conn, verify, clock=clock)
    tag, data = event(seq=1)
    ing.add(tag, data)
    ing.add(tag, dict(data))
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert tc_assets.counters(conn)["duplicate"] == 1


def test_a_reboot_starts_a_new_epoch_and_an_old_boot_cannot_come_back(conn, verify, clock, event):
    ing = tc_assets.Ingestor(conn, verify, clock=clock)
    ing.add(*event(seq=40, epoch=100, firmware="13.1.0"))
    ing.add(*event(seq=1, epoch=200, firmware="13.2.0"))  # rebooted: seq restarts
    ing.add(*event(seq=41, epoch=100, firmware="13.1.0"))  # the old boot's payload, replayed
    assert ing.flush() == {"accepted": 2, "rejected": 1}
    seat = _seat(conn)
    assert (seat["epoch"], seat["seq"], seat["firmware"], seat["boot_id"]) == (200, 1, "13.2.0", "boot-200")
    assert _reasons(conn) == ["replayed"]


def test_seq_gaps_are_counted_as_missed_per_seat(conn, verify, clock, event):
    ing = tc_assets.Ingestor(conn, verify, clock=clock)
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
    ing = tc_assets.Ingestor(conn, verify, clock=clock)
    ing.add(*event(seq=1, epoch=100, firmware="13.2.0"))
    ing.add(*event(seq=99, v=1, firmware="12.0.0"))  # an old beacon's payload: epoch 0
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert _seat(conn)["firmware"] == "13.2.0"


# ---- rate limit ------------------------------------------------------------------------


def test_a_flooding_seat_is_limited_and_charged_while_its_neighbour_lands(conn, verify, clock, event):
    ing = tc_assets.Ingestor(conn, verify, clock=clock, rate_limit=3, rate_window=300)
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
    ing = tc_assets.Ingestor(conn, verify, clock=clock, rate_limit=2, rate_window=300)
    ing.add(*event("tc-0002", seq=1))
    for seq in range(2, 50):
        ing.add(*event("tc-0002", seq=seq, key=keys["intruder"][0]))  # forged
        ing.add(*event("tc-0002", seq=1))  # replayed
    ing.add(*event("tc-0002", seq=2))
    assert ing.flush()["accepted"] == 2
    assert _seat(conn, "tc-0002")["seq"] == 2
