"""
Unit tests for the master side of the thin-client status flow:
``_utils/tc_assets.py`` (event validation, batched ingestion, queries) and
``_utils/deskfleet_store.py`` (the store and its migrations). Store tests run on
SQLite and on a real PostgreSQL (``tests/support/postgres.py``); file faults stay SQLite's.
"""

import base64
import json
import logging
import math
import os
import sqlite3

import pytest
import salt.crypt

import deskfleet_store as store
import tc_assets
import tc_ingest_batch
from tc_assets import Rejected
from tests.support.postgres import raw_connect

SEATS = ("tc-0001", "tc-0002", "tc-0003")
TAG = "salt/beacon/{}/tc_status/status"


# ---- keys and signed payloads ----------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    """Private keys of three accepted thin clients and of an intruder (no accepted key)."""
    out = {}
    for name in SEATS + ("intruder",):
        priv, pub = salt.crypt.gen_keys(2048)
        out[name] = (salt.crypt.PrivateKey.from_str(priv), pub)
    return out


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory, keys):
    """The tc master's pki_dir: accepted keys in minions/, one more only pending."""
    pki = tmp_path_factory.mktemp("master-pki")
    (pki / "minions").mkdir()
    (pki / "minions_pre").mkdir()
    for seat in SEATS:
        (pki / "minions" / seat).write_text(keys[seat][1])
    (pki / "minions_pre" / "tc-pending").write_text(keys["intruder"][1])
    return pki


@pytest.fixture(scope="module")
def verify(pki_dir):
    return tc_assets.pki_verifier(str(pki_dir))


def facts(**over):
    out = {
        "serial": "TC000001",
        "model": "UD3-M350C",
        "vendor": "IGEL Technology",
        "bios": "1.09",
        "iface": "eth0",
        "mac": "52:54:00:00:00:01",
        "ips": ["10.20.0.3", "2001:0db8:0000:0000:0000:0000:0000:0001"],
        "firmware": "13.1.0",
        "image": "deskfleet-tc",
        "boot_id": "0b6c3c53-5f0e-4a38-9d38-2a4b1e1f3f11",
        "uptime": 3600.25,
        "site": "LON",
        "department": "sales",
        "asset_id": "A-00001",
        "session_target": "desk-0001",
        "session_state": "connected",
        "idle_seconds": 5.0,
    }
    out.update(over)
    return out


def payload(seat="tc-0001", seq=1, ts=1000.0, reason="start", **fact_over):
    return {
        "v": 1,
        "seat": seat,
        "seq": seq,
        "ts": ts,
        "reason": reason,
        "changed": [] if reason == "heartbeat" else ["firmware"],
        "heartbeat": 300,
        "facts": facts(**fact_over),
    }


def sign(body, key):
    signed = dict(body)
    raw = key.sign(tc_assets.canonical(signed), algorithm=tc_assets.SIGN_ALGORITHM)
    signed["sig"] = base64.b64encode(raw).decode()
    return signed


@pytest.fixture(scope="module")
def event(keys):
    """``event(seat, **payload_kw) -> (tag, data)``: a correctly signed beacon event."""

    def make(seat="tc-0001", **kw):
        return TAG.format(seat), sign(payload(seat, **kw), keys[seat][0])

    return make


# ---- parse_event: accepted ---------------------------------------------------------


def test_signed_bare_payload_is_accepted(event, verify):
    tag, data = event("tc-0001", seq=4, ts=1234.5, mac="52:54:00:AB:CD:EF")
    data = dict(data, id="tc-0001", _stamp="2026-01-01T00:00:00.000000")  # keys salt adds on the way
    row = tc_ingest_batch.parse_event(tag, data, verify, 2000.0)
    assert row["seat"] == "tc-0001"
    assert row["seq"] == 4
    assert row["reported_at"] == 1234.5
    assert row["last_reason"] == "start"
    assert row["first_seen"] == row["last_seen"] == row["last_change"] == 2000.0
    assert row["firmware"] == "13.1.0"
    assert row["mac"] == "52:54:00:ab:cd:ef"  # normalised
    assert json.loads(row["ips"]) == ["10.20.0.3", "2001:db8::1"]  # normalised
    assert row["uptime"] == 3600.25
    assert row["session_state"] == "connected"
    assert set(row) == set(tc_assets.SEAT_COLUMNS)


def test_signed_payload_wrapped_by_fire_master_is_accepted(event, verify):
    tag, data = event("tc-0002")
    wrapped = {"data": data, "tag": tag, "_stamp": "2026-01-01T00:00:00.000000"}
    row = tc_ingest_batch.parse_event(tag, wrapped, verify, 2000.0)
    assert row["seat"] == "tc-0002"
    assert row == tc_ingest_batch.parse_event(tag, data, verify, 2000.0)


def test_heartbeat_row_has_no_last_change(event, verify):
    tag, data = event("tc-0001", reason="heartbeat")
    row = tc_ingest_batch.parse_event(tag, data, verify, 2000.0)
    assert row["last_reason"] == "heartbeat"
    assert row["last_change"] is None


def test_missing_facts_are_stored_as_null(keys, verify):
    body = payload("tc-0001")
    body["facts"] = {"serial": "TC000001"}
    row = tc_ingest_batch.parse_event(TAG.format("tc-0001"), sign(body, keys["tc-0001"][0]), verify, 1.0)
    assert row["serial"] == "TC000001"
    assert row["firmware"] is None and row["mac"] is None
    assert row["ips"] == "[]"


# ---- parse_event: forged -------------------------------------------------------------


def _forged_cases(keys):
    own = keys["tc-0001"][0]
    cases = {}
    cases["unsigned"] = (TAG.format("tc-0001"), payload("tc-0001"))
    cases["sig-not-a-string"] = (TAG.format("tc-0001"), dict(payload("tc-0001"), sig=12345))
    cases["sig-not-base64"] = (TAG.format("tc-0001"), dict(payload("tc-0001"), sig="!!not*base64!!"))
    cases["signed-by-another-key"] = (TAG.format("tc-0001"), sign(payload("tc-0001"), keys["intruder"][0]))
    cases["neighbour-signs-under-my-tag"] = (TAG.format("tc-0001"), sign(payload("tc-0001"), keys["tc-0002"][0]))
    cases["seat-differs-from-tag"] = (TAG.format("tc-0001"), sign(payload("tc-0002"), own))
    cases["id-differs-from-sender"] = (TAG.format("tc-0001"), dict(sign(payload("tc-0001"), own), id="tc-0002"))
    cases["unknown-sender"] = (TAG.format("tc-0099"), sign(payload("tc-0099"), keys["intruder"][0]))
    cases["pending-key-only"] = (TAG.format("tc-pending"), sign(payload("tc-pending"), keys["intruder"][0]))
    tampered = sign(payload("tc-0001"), own)
    tampered["facts"] = facts(firmware="6.6.6")
    cases["tampered-after-signing"] = (TAG.format("tc-0001"), tampered)
    return cases


FORGED = [
    "unsigned",
    "sig-not-a-string",
    "sig-not-base64",
    "signed-by-another-key",
    "neighbour-signs-under-my-tag",
    "seat-differs-from-tag",
    "id-differs-from-sender",
    "unknown-sender",
    "pending-key-only",
    "tampered-after-signing",
]


@pytest.mark.parametrize("case", FORGED)
def test_forged_events_are_rejected(keys, verify, case):
    tag, data = _forged_cases(keys)[case]
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(tag, data, verify, 1.0)
    assert info.value.reason == "forged"
    # nothing proves who sent it: the claimed seat is named, never blamed
    assert info.value.sender is None
    assert info.value.claimed == tag.split("/")[2]


def test_forged_event_wrapped_is_still_rejected(keys, verify):
    forged = sign(payload("tc-0001"), keys["intruder"][0])
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), {"data": forged, "tag": "x"}, verify, 1.0)
    assert info.value.reason == "forged"


# ---- parse_event: malformed ----------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "salt/beacon/tc-0001/tc_status/other",
        "salt/beacon/tc-0001/tc_status/status/extra",
        "salt/beacon/tc-0001/tc_status/",
        "salt/beacon/../tc_status/status",
        "salt/beacon/.hidden/tc_status/status",
        "salt/beacon/a/b/tc_status/status",
        "salt/beacon//tc_status/status",
        "salt/beacon/tc 0001/tc_status/status",
        "salt/beacon/" + "a" * 129 + "/tc_status/status",
        "salt/beacon/tc-0001/other_beacon/status",
        "",
        None,
    ],
)
def test_bad_tag_shape_is_malformed(event, verify, tag):
    _, data = event("tc-0001")
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(tag, data, verify, 1.0)
    assert info.value.reason == "malformed"
    assert info.value.sender is None


@pytest.mark.parametrize("data", [None, ["a", "b"], "payload", 42])
def test_non_mapping_payload_is_malformed(verify, data):
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert info.value.reason == "malformed"
    assert info.value.sender is None and info.value.claimed == "tc-0001"


def _body_with(field, value):
    body = payload("tc-0001")
    if field in tc_assets.FACT_SCHEMA:
        body["facts"][field] = value
    elif value is _DROP:
        del body[field]
    else:
        body[field] = value
    return body


_DROP = object()

MALFORMED = [
    ("v", 3),
    ("v", _DROP),
    ("v", "1"),
    ("v", True),
    ("seq", -1),
    ("seq", True),
    ("seq", "7"),
    ("ts", "now"),
    ("ts", None),
    ("reason", "reboot"),
    ("facts", ["serial"]),
    ("facts", None),
]


@pytest.mark.parametrize("field, value", MALFORMED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(MALFORMED)])
def test_signed_but_invalid_envelope_is_malformed(keys, verify, field, value):
    data = sign(_body_with(field, value), keys["tc-0001"][0])
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert info.value.reason == "malformed"
    assert info.value.sender == "tc-0001"  # signed: the signer is proven


# odd but honest facts: (field, value, stored); the event is kept, the field flagged
ODD = [
    ("mac", "52:54:00:zz:00:01", None),
    ("mac", "525400000001", None),
    ("mac", "52:54:00:00:00", None),
    ("mac", 525400000001, None),
    ("ips", ["10.20.0.300"], "[]"),
    ("ips", ["not-an-ip", "10.0.0.1"], '["10.0.0.1"]'),
    ("ips", ["10.20.0.3", None], '["10.20.0.3"]'),
    ("ips", "10.20.0.3", "[]"),
    ("ips", [f"10.0.0.{i}" for i in range(20)], json.dumps([f"10.0.0.{i}" for i in range(16)])),
    ("uptime", -1, None),
    ("uptime", "3600", None),
    ("uptime", True, None),
    ("uptime", 1e13, None),
    ("idle_seconds", -0.5, None),
    ("session_state", "hacked", None),
    ("session_state", "CONNECTED", None),
    ("serial", "S" * 129, "S" * 128),
    ("serial", 12345, None),
    ("iface", "e" * 33, "e" * 32),
    ("session_target", "d" * 256, "d" * 255),
    ("firmware", "13.1.0-" + "x" * 80, ("13.1.0-" + "x" * 80)[:64]),
    ("image", "i" * 65, "i" * 64),
]


@pytest.mark.parametrize("field, value, stored", ODD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(ODD)])
def test_odd_fact_is_cut_and_flagged_and_the_rest_kept(keys, verify, field, value, stored):
    data = sign(_body_with(field, value), keys["tc-0001"][0])
    row = tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert row[field] == stored
    assert row["flags"] == field
    assert row["serial" if field != "serial" else "firmware"] in ("TC000001", "13.1.0")
    assert row["seat"] == "tc-0001" and row["last_reason"] == "start"


@pytest.mark.parametrize("mac", [None, ""])
def test_no_mac_on_a_tunnel_route_is_not_odd(keys, verify, mac):
    data = sign(_body_with("mac", mac), keys["tc-0001"][0])
    row = tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert row["mac"] is None and row["flags"] == ""


def _padded_to(size, key):
    """A signed payload whose canonical form is exactly ``size`` bytes (padding in an extra fact)."""
    body = payload("tc-0001")
    body["facts"]["padding"] = ""
    body["facts"]["padding"] = "x" * (size - len(tc_assets.canonical(body)))
    assert len(tc_assets.canonical(body)) == size
    return sign(body, key)


def test_payload_of_exactly_max_bytes_is_accepted(keys, verify):
    data = _padded_to(tc_assets.MAX_PAYLOAD_BYTES, keys["tc-0001"][0])
    assert tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)["seat"] == "tc-0001"


def test_oversized_signed_payload_is_refused_and_attributed_to_its_signer(keys, verify):
    data = _padded_to(tc_assets.MAX_PAYLOAD_BYTES + 1, keys["tc-0001"][0])
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert info.value.reason == "oversize"
    assert info.value.sender == "tc-0001"
    assert str(tc_assets.MAX_PAYLOAD_BYTES) in info.value.detail


def test_oversized_unsigned_payload_is_not_attributed(keys, verify):
    data = _padded_to(tc_assets.MAX_PAYLOAD_BYTES + 1, keys["intruder"][0])
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, verify, 1.0)
    assert info.value.reason == "forged" and info.value.sender is None


def test_huge_event_is_refused_before_any_signature_check(keys):
    calls = []

    def spy(*args):
        calls.append(args)
        return True

    data = _padded_to(tc_assets.MAX_EVENT_BYTES + 1, keys["tc-0001"][0])
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(TAG.format("tc-0001"), data, spy, 1.0)
    assert calls == []
    assert info.value.reason == "oversize" and info.value.sender is None and info.value.claimed == "tc-0001"


def test_event_trimmed_by_salt_max_event_size_is_oversize_not_forged(event, verify):
    tag, data = event("tc-0001")
    data["facts"]["image"] = "VALUE_TRIMMED"  # what the master bus does to a value over max_event_size
    with pytest.raises(Rejected) as info:
        tc_ingest_batch.parse_event(tag, {"data": data, "id": "tc-0001"}, verify, 1.0)
    assert info.value.reason == "oversize" and info.value.sender is None


# ---- Ingestor ------------------------------------------------------------------------


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def db_path(store_db):
    """The store's location on each backend (a SQLite path, a PostgreSQL DSN)."""
    return store_db


@pytest.fixture
def sqlite_path(tmp_path):
    return str(tmp_path / "deskfleet" / "deskfleet.sqlite")


@pytest.fixture
def conn(db_path):
    c = store.connect(db_path, tc_assets.MIGRATIONS)
    yield c
    c.close()


@pytest.fixture
def clock():
    return Clock()


def _ingestor(conn, verify, clock, **kw):
    return tc_ingest_batch.Ingestor(conn, verify, clock=clock, **kw)


def _row(conn, seat):
    return conn.execute("SELECT * FROM seats WHERE seat = ?", (seat,)).fetchone()


def _count(conn, table):
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_batch_is_due_when_full(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock, batch_size=3, flush_interval=60)
    ing.add(*event("tc-0001"))
    ing.add(*event("tc-0002"))
    assert ing.pending() == 2
    assert not ing.due()
    ing.add("salt/beacon/../tc_status/status", {})  # a reject fills the batch too
    assert ing.due()
    assert ing.flush() == {"accepted": 2, "rejected": 1}
    assert _count(conn, "seats") == 2
    assert ing.pending() == 0
    assert not ing.due()


def test_partial_batch_is_due_after_flush_interval_without_another_event(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock, batch_size=500, flush_interval=0.5)
    assert ing.wait_time(idle=1.0) == 1.0  # nothing buffered: block as long as the caller likes
    assert not ing.due()

    ing.add(*event("tc-0001"))
    assert ing.wait_time() == pytest.approx(0.5)  # the caller wakes up in time to flush
    clock.t += 0.3
    ing.add(*event("tc-0002", ts=1001.0))  # a later event does not push the deadline out
    assert ing.wait_time() == pytest.approx(0.2)
    clock.t += 0.19
    assert not ing.due()
    clock.t += 0.01  # flush_interval after the FIRST buffered event, no further event
    assert ing.due()
    assert ing.wait_time() == pytest.approx(0.001)
    assert ing.flush() == {"accepted": 2, "rejected": 0}
    assert _count(conn, "seats") == 2
    assert not ing.due()
    assert ing.wait_time(idle=1.0) == 1.0


def test_flush_of_an_empty_buffer_writes_nothing(conn, verify, clock):
    ing = _ingestor(conn, verify, clock)
    assert ing.flush() == {"accepted": 0, "rejected": 0}
    assert tc_assets.counters(conn) == {}


def test_counters_and_rejects_are_recorded(conn, verify, clock, event, keys):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0001"))
    ing.add(*event("tc-0002"))
    ing.add(TAG.format("tc-0003"), sign(payload("tc-0003"), keys["intruder"][0]))  # forged
    ing.add("salt/beacon/tc-0001/tc_status/other", {})  # malformed tag
    ing.add(*event("tc-0001", seq=2, ts=1001.0, mac="nonsense"))  # odd fact: kept, flagged
    assert ing.flush() == {"accepted": 3, "rejected": 2}
    assert tc_assets.counters(conn) == {"accepted": 3, "flagged": 1, "forged": 1, "malformed": 1}
    assert _row(conn, "tc-0001")["flags"] == "mac"

    rejects = tc_assets.recent_rejects(conn)
    assert [(r["sender"], r["claimed"], r["reason"]) for r in rejects] == [
        (None, None, "malformed"),
        (None, "tc-0003", "forged"),
    ]
    assert rejects[1]["attribution"] == "claimed tc-0003, unproven"
    assert all(r["at"] == clock.t for r in rejects)

    ing.add(*event("tc-0003"))
    ing.flush()
    assert tc_assets.counters(conn)["accepted"] == 4


def test_a_flood_cannot_erase_the_evidence(conn, verify, clock, event, keys):
    """Samples are capped per (origin, reason); the per-minute aggregates keep every count."""
    ing = _ingestor(conn, verify, clock, rate_limit=2, rate_window=300)
    ing.add(*event("tc-0002"))  # a seat in the inventory
    for seq in range(1, 6):  # tc-0001 floods with its own, validly signed events
        ing.add(*event("tc-0001", seq=seq))
    ing.flush()
    forged = sign(payload("tc-0002"), keys["intruder"][0])
    for i in range(3 * tc_ingest_batch.SAMPLE_KEEP):  # then a forged flood claiming tc-0002 and invented ids
        clock.t += 1
        ing.add(TAG.format("tc-0002" if i % 2 else f"ghost-{i}"), forged)
        if i % 40 == 0:
            ing.flush()
    ing.flush()
    rows = conn.execute("SELECT MIN(sender), reason, COUNT(*) FROM ingest_rejects GROUP BY origin, reason").fetchall()
    assert ("tc-0001", "rate_limited", 3) in [tuple(r) for r in rows]  # the flooder's rows survive
    assert max(r[2] for r in rows) <= tc_ingest_batch.SAMPLE_KEEP
    stats = {(s["sender"], s["claimed"], s["reason"]): s for s in tc_assets.reject_stats(conn)}
    assert stats[("tc-0001", "tc-0001", "rate_limited")]["count"] == 3
    assert stats[("tc-0001", "tc-0001", "rate_limited")]["attribution"] == "tc-0001"
    assert stats[(None, "tc-0002", "forged")]["count"] == 75
    assert stats[(None, "tc-0002", "forged")]["attribution"] == "claimed tc-0002, unproven"
    # invented ids share one key: a flood cannot mint aggregate rows
    assert stats[(None, tc_ingest_batch.UNKNOWN_SEAT, "forged")]["count"] == 75
    assert len(stats) == 3
    assert tc_assets.counters(conn)["forged"] == 150
    # the victim's own events still land
    ing.add(*event("tc-0002", seq=2, reason="heartbeat"))
    assert ing.flush() == {"accepted": 1, "rejected": 0}


def test_rejects_are_logged_up_to_log_rejects_per_batch(conn, verify, clock, caplog):
    ing = _ingestor(conn, verify, clock, log_rejects=2)
    for i in range(5):
        ing.add(f"bad/tag/{i}", {})
    with caplog.at_level(logging.WARNING, logger=tc_ingest_batch.__name__):
        ing.flush()
    messages = [r.getMessage() for r in caplog.records if r.name == tc_ingest_batch.__name__]
    assert len(messages) == 3
    assert "bad/tag/0" in messages[0] and "bad/tag/1" in messages[1]
    assert "3 more rejected events" in messages[2]


def test_last_arrival_wins_whatever_the_thin_clients_clock_says(conn, verify, clock, event):
    """A thin client whose clock jumps back (NTP fix) must not freeze its seat."""
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0001", seq=9, ts=2_000_000_000.0, firmware="13.2.0"))  # clock far ahead
    ing.flush()
    clock.t += 10
    ing.add(*event("tc-0001", seq=10, ts=1000.0, firmware="13.3.0"))  # clock corrected
    ing.flush()
    row = _row(conn, "tc-0001")
    assert (row["firmware"], row["seq"], row["reported_at"]) == ("13.3.0", 10, 1000.0)
    assert row["last_seen"] == clock.t


def test_last_arrival_wins_in_the_buffer(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0001", seq=9, ts=2000.0, firmware="13.2.0"))
    ing.add(*event("tc-0001", seq=10, ts=1999.0, firmware="13.1.0"))
    assert ing.flush()["accepted"] == 2
    row = _row(conn, "tc-0001")
    assert (row["firmware"], row["seq"]) == ("13.1.0", 10)


def test_a_row_the_store_refuses_is_isolated_not_retried_forever(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0002", ts=1000.0))
    ing.add(*event("tc-0001", ts=1000.0))
    ing.rows["tc-0001"]["reported_at"] = None  # a value validation let through by mistake
    result = ing.flush()
    assert result["accepted"] == 1 and result["rejected"] == 1
    assert _row(conn, "tc-0002") is not None and _row(conn, "tc-0001") is None
    counters = tc_assets.counters(conn)
    assert counters["accepted"] == 1 and counters["malformed"] == 1
    assert ing.pending() == 0


def test_newer_event_replaces_the_stored_one(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0001", seq=1, ts=1000.0, firmware="13.1.0"))
    ing.flush()
    clock.t = 1100.0
    ing.add(*event("tc-0001", seq=2, ts=1100.0, reason="change", firmware="13.2.0"))
    ing.flush()
    row = _row(conn, "tc-0001")
    assert (row["firmware"], row["seq"], row["last_seen"], row["first_seen"]) == ("13.2.0", 2, 1100.0, 1000.0)


def test_heartbeat_does_not_move_last_change_but_a_change_does(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    clock.t = 1000.0
    ing.add(*event("tc-0001", seq=1, ts=1000.0, reason="start"))
    ing.flush()
    clock.t = 1300.0
    ing.add(*event("tc-0001", seq=2, ts=1300.0, reason="heartbeat"))
    ing.flush()
    row = _row(conn, "tc-0001")
    assert (row["last_change"], row["last_seen"], row["last_reason"]) == (1000.0, 1300.0, "heartbeat")

    clock.t = 1400.0
    ing.add(*event("tc-0001", seq=3, ts=1400.0, reason="change", firmware="13.2.0"))
    ing.flush()
    row = _row(conn, "tc-0001")
    assert (row["last_change"], row["last_seen"], row["firmware"]) == (1400.0, 1400.0, "13.2.0")


def test_heartbeat_in_the_same_batch_keeps_the_change_time(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    clock.t = 1000.0
    ing.add(*event("tc-0001", seq=1, ts=1000.0, reason="change"))
    clock.t = 1000.2
    ing.add(*event("tc-0001", seq=2, ts=1000.2, reason="heartbeat"))
    ing.flush()
    row = _row(conn, "tc-0001")
    assert (row["last_change"], row["last_seen"], row["seq"]) == (1000.0, 1000.2, 2)


def test_seat_first_heard_by_heartbeat_shows_first_seen_as_last_change(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0001", reason="heartbeat"))
    ing.flush()
    assert _row(conn, "tc-0001")["last_change"] is None
    seat = tc_assets.seat(conn, "tc-0001", clock.t, 300, 3)
    assert seat["last_change"] == seat["first_seen"] == clock.t
    assert tc_assets.seat(conn, "tc-0404", clock.t, 300, 3) is None


def test_failed_write_on_read_only_store_keeps_the_buffer(sqlite_path, verify, clock, event):
    conn = store.connect(sqlite_path, tc_assets.MIGRATIONS)
    read_only = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, isolation_level=None)
    ing = _ingestor(read_only, verify, clock)
    ing.add(*event("tc-0001"))
    ing.add("bad/tag", {})
    with pytest.raises(sqlite3.Error):
        ing.flush()
    read_only.close()
    assert ing.pending() == 2
    assert _count(conn, "seats") == 0
    assert tc_assets.counters(conn) == {}

    ing.conn = conn  # the store is writable again
    assert ing.flush() == {"accepted": 1, "rejected": 1}
    assert _row(conn, "tc-0001")["firmware"] == "13.1.0"
    assert tc_assets.counters(conn) == {"accepted": 1, "malformed": 1}  # counted once, not per try
    assert ing.pending() == 0


def test_failed_write_on_closed_connection_keeps_the_buffer(db_path, verify, clock, event):
    first = store.connect(db_path, tc_assets.MIGRATIONS)
    ing = _ingestor(first, verify, clock, flush_interval=0.5)
    ing.add(*event("tc-0002"))
    first.close()
    clock.t += 1
    assert ing.due()
    with pytest.raises(sqlite3.Error):
        ing.flush()
    assert ing.pending() == 1
    assert ing.due()  # still due: the caller retries

    second = store.connect(db_path, tc_assets.MIGRATIONS)
    ing.conn = second
    assert ing.flush() == {"accepted": 1, "rejected": 0}
    assert _row(second, "tc-0002")["seat"] == "tc-0002"
    second.close()


class _Exploding(dict):
    def get(self, *args, **kwargs):
        raise RuntimeError("boom")

    def __getitem__(self, key):
        raise RuntimeError("boom")


BUGGY = [
    (None, object()),
    (123, {}),
    (b"salt/beacon/tc-0001/tc_status/status", {}),
    (["salt/beacon/tc-0001/tc_status/status"], {}),
    (TAG.format("tc-0001"), object()),
    (TAG.format("tc-0001"), _Exploding()),
    (TAG.format("tc-0001"), {"data": _Exploding()}),
    (TAG.format("tc-0001"), {"sig": "AAAA", "facts": {1, 2}}),  # not JSON-serialisable
    (TAG.format("tc-0001"), {"sig": "AAAA", "facts": {"ips": object()}}),
]


@pytest.mark.parametrize("tag, data", BUGGY, ids=[str(i) for i in range(len(BUGGY))])
def test_add_never_raises_on_a_buggy_event(conn, verify, clock, tag, data):
    ing = _ingestor(conn, verify, clock)
    ing.add(tag, data)
    assert ing.pending() == 1
    assert ing.flush() == {"accepted": 0, "rejected": 1}
    counters = tc_assets.counters(conn)
    assert counters["accepted"] == 0
    assert counters.get("malformed", 0) + counters.get("forged", 0) == 1


# Hostile-but-signed values must be refused at validation, not wedge the store.


def test_signed_nan_timestamp_does_not_wedge_ingestion(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0002", ts=1000.0))
    ing.add(*event("tc-0001", ts=math.nan))
    ing.flush()
    assert _row(conn, "tc-0002") is not None and _row(conn, "tc-0001") is None
    assert tc_assets.counters(conn)["malformed"] == 1


def test_signed_huge_seq_does_not_wedge_ingestion(conn, verify, clock, event):
    ing = _ingestor(conn, verify, clock)
    ing.add(*event("tc-0002", ts=1000.0))
    ing.add(*event("tc-0001", seq=2**63, ts=1000.0))
    ing.flush()
    assert _row(conn, "tc-0002") is not None and _row(conn, "tc-0001") is None
    assert tc_assets.counters(conn)["malformed"] == 1


# ---- status_of and seats() -------------------------------------------------------------


@pytest.mark.parametrize(
    "age, expected",
    [
        (-30, "online"),  # clock skew: heard "in the future"
        (0, "online"),
        (450, "online"),  # exactly 1.5 heartbeats
        (450.001, "stale"),
        (899.999, "stale"),
        (900, "offline"),  # exactly offline_after heartbeats
        (86400, "offline"),
    ],
)
def test_status_of_boundaries(age, expected):
    now = 1_000_000.0
    assert tc_assets.status_of(now - age, now, 300, 3) == expected


NOW = 10_000.0
HB = 300


@pytest.fixture
def fleet(conn, verify, event):
    """tc-0001 online, tc-0002 stale, tc-0003 offline; different firmware, sites and idle times."""
    specs = [
        ("tc-0001", NOW - 10, dict(firmware="13.1.0", site="LON", idle_seconds=5.0)),
        ("tc-0002", NOW - 600, dict(firmware="12.9.4", site="MAN", idle_seconds=3600.0)),
        ("tc-0003", NOW - 1000, dict(firmware="13.1.0", site="MAN", idle_seconds=700.0)),
    ]
    for seat, heard, fact_over in specs:
        ing = _ingestor(conn, verify, Clock(heard))
        ing.add(*event(seat, ts=heard, **fact_over))
        ing.flush()
    return conn


def _ids(found):
    return [s["seat"] for s in found]


def test_seats_lists_every_seat_with_status(fleet):
    found = tc_assets.seats(fleet, NOW, HB, 3)
    assert [(s["seat"], s["status"]) for s in found] == [
        ("tc-0001", "online"),
        ("tc-0002", "stale"),
        ("tc-0003", "offline"),
    ]
    first = found[0]
    assert first["ips"] == ["10.20.0.3", "2001:db8::1"]
    assert first["last_seen_ago"] == 10.0
    assert first["last_change"] == NOW - 10


@pytest.mark.parametrize(
    "filters, expected",
    [
        (dict(status="online"), ["tc-0001"]),
        (dict(status="stale"), ["tc-0002"]),
        (dict(status="offline"), ["tc-0003"]),
        (dict(firmware="13.1.0"), ["tc-0001", "tc-0003"]),
        (dict(firmware="99"), []),
        (dict(site="MAN"), ["tc-0002", "tc-0003"]),
        (dict(idle_over=700), ["tc-0002", "tc-0003"]),
        (dict(idle_over=701), ["tc-0002"]),
        (dict(idle_over="700"), ["tc-0002", "tc-0003"]),
        (dict(firmware="13.1.0", site="MAN"), ["tc-0003"]),
        (dict(firmware="13.1.0", site="MAN", status="online"), []),
        (dict(site="MAN", status="stale", idle_over=1000), ["tc-0002"]),
    ],
)
def test_seats_filters(fleet, filters, expected):
    assert _ids(tc_assets.seats(fleet, NOW, HB, 3, **filters)) == expected


@pytest.mark.parametrize("status", ["down", "Online", ""])
def test_seats_rejects_an_unknown_status(fleet, status):
    with pytest.raises(ValueError, match="status must be one of"):
        tc_assets.seats(fleet, NOW, HB, 3, status=status)


def test_open_store_and_ingestor_use_the_configured_path(tmp_path, pki_dir, event):
    db = tmp_path / "configured" / "tc.sqlite"
    opts = {"cachedir": str(tmp_path / "cache"), "pki_dir": str(pki_dir), "deskfleet": {"tc": {"db": str(db)}}}
    ing = tc_ingest_batch.ingestor(opts, batch_size=10, flush_interval=0.5)
    ing.add(*event("tc-0003"))
    ing.flush()
    ing.conn.close()
    conn = tc_assets.open_store(opts)
    assert _ids(tc_assets.seats(conn, NOW, HB, 3)) == ["tc-0003"]
    conn.close()
    assert db.is_file()
    assert not (tmp_path / "cache").exists()


# ---- deskfleet_store ---------------------------------------------------------------------


def _version(conn, component=tc_assets.COMPONENT):
    row = conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    return None if row is None else row[0]


def test_connect_creates_the_schema_and_records_its_version(db_path):
    conn = store.connect(db_path, tc_assets.MIGRATIONS)
    assert _version(conn) == len(tc_assets.MIGRATIONS[tc_assets.COMPONENT]) == 2
    assert {"schema_version", "seats", "ingest_counters", "ingest_rejects"} <= set(store.table_columns(conn))
    conn.close()


def test_a_sqlite_store_is_wal_and_private(sqlite_path):
    conn = store.connect(sqlite_path, tc_assets.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert os.stat(sqlite_path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(sqlite_path)).st_mode & 0o777 == 0o700


def test_reopening_is_idempotent_and_keeps_data(db_path, verify, event):
    conn = store.connect(db_path, tc_assets.MIGRATIONS)
    ing = tc_ingest_batch.Ingestor(conn, verify, clock=Clock())
    ing.add(*event("tc-0001"))
    ing.flush()
    conn.close()
    for _ in range(2):
        conn = store.connect(db_path, tc_assets.MIGRATIONS)
        assert _version(conn) == 2
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
        assert _row(conn, "tc-0001")["seat"] == "tc-0001"
        conn.close()


def test_a_new_migration_step_is_applied_once(db_path):
    store.connect(db_path, tc_assets.MIGRATIONS).close()
    v2 = {tc_assets.COMPONENT: tc_assets.MIGRATIONS[tc_assets.COMPONENT] + ["ALTER TABLE seats ADD COLUMN note TEXT"]}
    for _ in range(2):  # a second open would fail ("duplicate column") if the step ran again
        conn = store.connect(db_path, v2)
        assert _version(conn) == 3
        assert "note" in store.table_columns(conn)["seats"]
        conn.close()


def test_components_are_versioned_independently(db_path):
    migrations = dict(tc_assets.MIGRATIONS, other=["CREATE TABLE a (x TEXT)", "CREATE TABLE b (y TEXT)"])
    conn = store.connect(db_path, migrations)
    assert _version(conn) == 2
    assert _version(conn, "other") == 2
    conn.close()


@pytest.mark.parametrize("stored", [3, 5])
def test_a_store_newer_than_the_code_is_refused(db_path, stored):
    conn = store.connect(db_path, tc_assets.MIGRATIONS)
    conn.execute("UPDATE schema_version SET version = ? WHERE component = ?", (stored, tc_assets.COMPONENT))
    conn.close()
    with pytest.raises(store.StoreError) as info:
        store.connect(db_path, tc_assets.MIGRATIONS)
    message = str(info.value)
    assert db_path in message
    assert f"version {stored}" in message
    assert "knows 2" in message
    assert "upgrade deskfleet" in message
    # the store itself is left as it was
    conn = raw_connect(db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == stored
    conn.close()


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 40, os.urandom(4096)], ids=["text", "random"])
def test_a_file_that_is_not_sqlite_is_refused(tmp_path, content):
    path = tmp_path / "not.sqlite"
    path.write_bytes(content)
    with pytest.raises(store.StoreError, match="cannot open the deskfleet store"):
        store.connect(str(path), tc_assets.MIGRATIONS)
    assert path.read_bytes() == content  # left alone


def test_failed_migration_step_rolls_back_and_keeps_the_version(db_path):
    broken = {"comp": ["CREATE TABLE ok (x TEXT); CREATE TABLE broken (", "CREATE TABLE never (z TEXT)"]}
    with pytest.raises(sqlite3.Error):
        store.connect(db_path, broken)
    conn = store.connect(db_path, {})
    assert _version(conn, "comp") is None
    tables = set(store.table_columns(conn))
    assert "ok" not in tables and "never" not in tables
    conn.close()


def test_two_processes_opening_a_fresh_store_at_once(db_path, monkeypatch):
    real = store.transaction
    raced = []

    class racing(real):  # pylint: disable=invalid-name
        def __enter__(self):
            if not raced:
                raced.append(True)
                # the other process (engine or runner) wins the race and migrates first
                store.connect(db_path, tc_assets.MIGRATIONS).close()
            return super().__enter__()

    monkeypatch.setattr(store, "transaction", racing)
    conn = store.connect(db_path, tc_assets.MIGRATIONS)
    assert raced and _version(conn) == 2
    conn.close()


def test_transaction_commits_or_rolls_back(db_path):
    conn = store.connect(db_path, {})
    conn.execute("CREATE TABLE t (x INTEGER)")
    with store.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError):
        with store.transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("abort")
    assert [r[0] for r in conn.execute("SELECT x FROM t")] == [1]
    conn.close()


def test_default_path(tmp_path):
    assert store.default_path({"cachedir": "/var/cache/salt/master"}, "tc") == (
        "/var/cache/salt/master/deskfleet/deskfleet.sqlite"
    )
    assert store.default_path({"cachedir": "/c", "deskfleet": {"tc": {"db": "/srv/tc.sqlite"}}}, "tc") == "/srv/tc.sqlite"
    assert store.default_path({"cachedir": "/c", "deskfleet": {"vm": {"db": "/srv/vm.sqlite"}}}, "tc") == (
        "/c/deskfleet/deskfleet.sqlite"
    )
    assert store.default_path({"cachedir": "/c", "deskfleet": None}, "tc") == "/c/deskfleet/deskfleet.sqlite"


def test_write_atomic_replaces_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out" / "report.html"
    assert store.write_atomic(str(target), "first") == str(target)
    assert target.read_text() == "first"
    store.write_atomic(str(target), b"\x00second", mode=0o600)
    assert target.read_bytes() == b"\x00second"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(target.parent) == ["report.html"]


def test_write_atomic_cleans_up_when_the_rename_fails(tmp_path):
    target = tmp_path / "a-directory"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        store.write_atomic(str(target), "data")
    assert sorted(os.listdir(tmp_path)) == ["a-directory"]
    assert os.listdir(target) == ["inside"]
