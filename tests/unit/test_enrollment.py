"""Pure enrollment logic: tokens, proofs, decisions, sweep verdicts, and the store records."""

import re
import sqlite3

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import enroll_store
import enrollment
import seat_records

ID_RE = re.compile(enrollment.DEFAULT_ID_PATTERN)
SETTINGS = enrollment.settings({"deskfleet": {"tc": {"enroll": {"pending_ttl": 60, "pending_grace": 5}}}}, "tc")


def pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def pubs():
    return pem(), pem()


def token_row(token, minion_id="tc-lon-0001", serial="TC000001", replace=False):
    return {"token_id": enrollment.token_id(token), "minion_id": minion_id, "serial": serial, "secret": token, "replace": replace}


def test_fingerprint_ignores_pem_layout_and_matches_salt(pubs):
    import salt.utils.crypt  # pylint: disable=import-outside-toplevel

    pub = pubs[0]
    assert enrollment.fingerprint(pub) == enrollment.fingerprint(pub.replace("\n", "\r\n") + "\n\n")
    body = "".join(pub.strip().splitlines()[1:-1])
    import base64  # pylint: disable=import-outside-toplevel

    assert enrollment.fingerprint(pub) == salt.utils.crypt.pem_finger(key=base64.b64decode(body))
    with pytest.raises(enrollment.EnrollError):
        enrollment.fingerprint("")


def test_tokens_are_random_and_have_a_short_public_handle():
    a, b = enrollment.new_token(), enrollment.new_token()
    assert a != b and a.startswith("dfe1-") and len(a) == 37
    assert re.fullmatch(r"[0-9a-f]{12}", enrollment.token_id(a)) and a not in enrollment.token_id(a)


def test_proof_is_bound_to_id_serial_and_key(pubs):
    token = enrollment.new_token()
    row = token_row(token)
    grain = enrollment.grain_value(token, "tc-lon-0001", "TC000001", pubs[0])
    assert token not in grain
    assert enrollment.verify(row, "tc-lon-0001", pubs[0], grain) == (True, None)
    assert not enrollment.verify(row, "tc-lon-0002", pubs[0], grain)[0]  # another id
    assert not enrollment.verify(row, "tc-lon-0001", pubs[1], grain)[0]  # another key
    other_serial = enrollment.grain_value(token, "tc-lon-0001", "TC999999", pubs[0])
    ok, why = enrollment.verify(row, "tc-lon-0001", pubs[0], other_serial)
    assert not ok and "serial mismatch" in why
    wrong_token = enrollment.grain_value(enrollment.new_token(), "tc-lon-0001", "TC000001", pubs[0])
    assert not enrollment.verify(row, "tc-lon-0001", pubs[0], wrong_token)[0]


@pytest.mark.parametrize("grain", ["", None, " ", "v1::TC000001", "v1:" + "0" * 64 + ":", 42, {"x": 1}, "v1:" + "g" * 64 + ":S"])
def test_empty_or_malformed_grain_never_verifies(pubs, grain):
    row = token_row(enrollment.new_token())
    assert enrollment.parse_grain(grain) is None
    assert enrollment.verify(row, "tc-lon-0001", pubs[0], grain)[0] is False


def test_consumed_token_has_no_secret_and_never_verifies(pubs):
    token = enrollment.new_token()
    grain = enrollment.grain_value(token, "tc-lon-0001", "TC000001", pubs[0])
    assert enrollment.verify(dict(token_row(token), secret=None), "tc-lon-0001", pubs[0], grain)[0] is False
    assert enrollment.verify(None, "tc-lon-0001", pubs[0], grain)[0] is False


def test_id_policy():
    assert enrollment.conforming("tc-lon-0042", ID_RE)
    for bad in ("", "TC-lon-1", "tc-", "desk-0001", "tc-lon-0042\n", "tc-a-b-c-d-e", "../tc-1", None):
        assert not enrollment.conforming(bad, ID_RE)
    with pytest.raises(enrollment.EnrollError, match="id policy"):
        enrollment.check_id("evil", ID_RE)


@pytest.mark.parametrize("serial", ["", "  ", None, "x" * 129, "a\nb"])
def test_serial_must_be_printable(serial):
    with pytest.raises(enrollment.EnrollError, match="serial"):
        enrollment.check_serial(serial)


def test_decide(pubs):
    real, attacker = pubs
    token = enrollment.new_token()
    row = token_row(token)
    good = enrollment.grain_value(token, "tc-lon-0001", "TC000001", real)
    pend = lambda pub: {"state": "pending", "pub": pub}  # noqa: E731
    d = lambda *a: enrollment.decide(*a, ID_RE)[0]  # noqa: E731
    # the device with its token: accepted
    assert d("pend", "tc-lon-0001", real, good, pend(real), row, None) == "accept"
    # a pre-claim of an id with a token, no proof: deleted, never left for salt-key -a
    assert d("pend", "tc-lon-0001", attacker, "", pend(attacker), row, None) == "delete"
    # the same proof replayed with another key: deleted
    assert d("pend", "tc-lon-0001", attacker, good, pend(attacker), row, None) == "delete"
    # an invented id without a token: stays pending (the sweep expires it)
    assert d("pend", "tc-new-0001", attacker, "", pend(attacker), None, None) == "keep"
    # an id ops deleted a key of (approved before, no token): deleted
    assert d("pend", "tc-lon-0001", attacker, "", pend(attacker), None, "aa:bb") == "delete"
    # the approved key itself, pending on the second tc master (the first one consumed the token): accepted there
    approved = enrollment.fingerprint(real)
    assert d("pend", "tc-lon-0001", real, good, pend(real), None, approved) == "approved"
    assert d("pend", "tc-lon-0001", attacker, good, pend(attacker), None, approved) == "delete"
    # outside the id policy: deleted
    assert d("pend", "evil", attacker, "", pend(attacker), None, None) == "delete"
    # the real device denied because a pre-claim holds the pending slot: its key replaces it
    assert d("denied", "tc-lon-0001", real, good, pend(attacker), row, None) == "install"
    # an enrolled seat claimed with another key: refused; with a re-key token: installed
    accepted = {"state": "accepted", "pub": attacker}
    assert d("denied", "tc-lon-0001", real, good, accepted, row, None) == "refuse"
    assert d("denied", "tc-lon-0001", real, good, accepted, dict(row, replace=1), None) == "install"
    # a stale event (the pending key is another one now): ignored
    assert d("pend", "tc-lon-0001", real, good, pend(attacker), row, None) == "ignore"


def test_sweep_verdict():
    now = 10_000.0
    v = lambda mid, age, prot: enrollment.sweep_verdict(now, mid, now - age, prot, SETTINGS)[0]  # noqa: E731
    assert v("tc-new-0001", 59, False) == "keep"
    assert v("tc-new-0001", 60, False) == "delete"
    assert v("tc-lon-0001", 4, True) == "keep"  # grace for the auth event that may accept it
    assert v("tc-lon-0001", 5, True) == "delete"
    assert v("evil", 0, False) == "delete"


def test_settings_refuse_bad_values():
    with pytest.raises(enrollment.EnrollError, match="pending_ttl"):
        enrollment.settings({"deskfleet": {"tc": {"enroll": {"pending_ttl": "soon"}}}}, "tc")
    with pytest.raises(enrollment.EnrollError, match="id_pattern"):
        enrollment.settings({"deskfleet": {"tc": {"enroll": {"id_pattern": "("}}}}, "tc")


@pytest.fixture
def conn(store_db):
    import deskfleet_store  # pylint: disable=import-outside-toplevel
    import tc_assets  # pylint: disable=import-outside-toplevel

    c = deskfleet_store.connect(store_db, dict(tc_assets.MIGRATIONS, **enroll_store.MIGRATIONS))
    yield c
    c.close()


def test_store_token_lifecycle_is_audited_and_single_use(conn):
    token, row = enroll_store.issue(conn, 100.0, "tc-lon-0001", "TC000001", "alice", ttl=50)
    assert row["token_id"] == enrollment.token_id(token) and "secret" not in row
    with pytest.raises(enrollment.EnrollError, match="open token"):
        enroll_store.issue(conn, 101.0, "tc-lon-0001", "TC000001", "alice", ttl=50)
    assert enroll_store.open_token(conn, "tc-lon-0001", 120.0)["secret"] == token
    assert enroll_store.close_token(conn, 130.0, row["token_id"], "consumed", "engine", fingerprint="aa:bb")
    assert not enroll_store.close_token(conn, 131.0, row["token_id"], "consumed", "engine")
    assert enroll_store.open_token(conn, "tc-lon-0001", 132.0) is None
    secret = conn.execute("SELECT secret FROM enroll_tokens").fetchone()[0]
    assert secret is None
    (done,) = enroll_store.tokens(conn)
    assert (done["state"], done["issued_by"], done["key_fingerprint"], done["closed_at"]) == ("consumed", "alice", "aa:bb", 130.0)
    actions = [a["action"] for a in enroll_store.audit_log(conn)]
    assert actions == ["enrolled", "issue"]


def test_store_tokens_expire(conn):
    _, row = enroll_store.issue(conn, 100.0, "tc-lon-0001", "TC000001", "alice", ttl=50)
    assert enroll_store.open_token(conn, "tc-lon-0001", 150.0) is None
    assert enroll_store.expire_tokens(conn, 150.0) == [row["token_id"]]
    assert enroll_store.tokens(conn)[0]["state"] == "expired"


def test_refusals_are_counted_and_bounded(conn, monkeypatch):
    monkeypatch.setattr(enroll_store, "REFUSALS_KEEP", 3)
    for i in range(5):
        enroll_store.refused(conn, float(i), f"tc-x-{i}", "aa", "pre-claim")
    enroll_store.refused(conn, 9.0, "tc-x-4", "aa", "pre-claim")
    rows = enroll_store.refusals(conn)
    assert [r["minion_id"] for r in rows] == ["tc-x-4", "tc-x-3", "tc-x-2"] and rows[0]["count"] == 2


def test_seat_records_delete_every_row_about_a_seat(conn):
    conn.execute("INSERT INTO seats (seat, seq, reported_at, last_reason, first_seen, last_seen) VALUES ('tc-a-1', 1, 1, 'start', 1, 1)")
    conn.execute("INSERT INTO seats (seat, seq, reported_at, last_reason, first_seen, last_seen) VALUES ('tc-a-2', 1, 1, 'start', 1, 1)")
    conn.execute("INSERT INTO ingest_rejects (at, sender, reason, detail) VALUES (1, 'tc-a-1', 'forged', 'x')")
    conn.execute("CREATE TABLE seat_history (seat TEXT, at REAL)")  # a table added later is covered too
    conn.execute("INSERT INTO seat_history VALUES ('tc-a-1', 1)")
    enroll_store.audit(conn, 1.0, "issue", "alice", "x", minion_id="tc-a-1")
    assert seat_records.count(conn, "tc-a-1") == {"seats": 1, "ingest_rejects": 1, "seat_history": 1}
    assert seat_records.delete(conn, "tc-a-1") == {"seats": 1, "ingest_rejects": 1, "seat_history": 1}
    assert seat_records.count(conn, "tc-a-1") == {}
    assert seat_records.count(conn, "tc-a-2") == {"seats": 1}
    assert enroll_store.audit_log(conn, minion_id="tc-a-1")  # the audit log stays
    assert conn.backend in ("sqlite", "postgresql")


def test_reserved_ids_are_never_left_pending(pubs):
    settings_ = enrollment.settings({"deskfleet": {"vm": {"enroll": {"id_pattern": ".+", "reserved_pattern": "dfp-.+"}}}}, "vm")
    assert enrollment.reserved("dfp-sales-0badc0de", settings_) and not enrollment.reserved("desk-0001", settings_)
    pend = {"state": "pending", "pub": pubs[1]}
    args = ("pend", "dfp-sales-0badc0de", pubs[1], None, pend, None, None, settings_["id_re"])
    assert enrollment.decide(*args, is_reserved=True)[0] == "delete"
    assert enrollment.decide(*args, is_reserved=False)[0] == "keep"


def test_seeded_key_round_trips_through_user_data():
    import base64  # pylint: disable=import-outside-toplevel

    import desktop_seed  # pylint: disable=import-outside-toplevel

    priv, pub = desktop_seed.new_keypair()
    data = desktop_seed.user_data(priv, pub, pki_dir="/etc/salt/pki/minion")
    assert base64.b64decode(data).startswith(b"#cloud-config\n")
    assert desktop_seed.keys_from_user_data(data) == (priv, pub)
    # off unless the vm master's config says so: the keeper then boots exactly as before
    assert desktop_seed.boot_args({"deskfleet": {"vm": {}}}, "dfp-x-1") == {}
