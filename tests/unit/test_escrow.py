"""
Password escrow logic (_utils/escrow.py) without Salt: policy and generation,
SHA-512 crypt, the hybrid envelope, the checks on a minion's return, and the
store (history, audit log, what is due).
"""

import base64
import copy
import hashlib
import json
import string
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import deskfleet_store
import escrow
import escrow_check
import escrow_store
import tc_assets

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the system's libcrypt, as a reference
except ImportError:  # pragma: no cover - Python 3.13+
    crypt = None


@pytest.fixture(scope="module")
def escrow_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(public_key):
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


AAD = {"vm": "desk-0001", "account": "localadmin", "rotated_at": 1700000000.5}


# ---- policy and generation ---------------------------------------------------


def test_default_policy_is_laps_like():
    policy = escrow.policy_from(None)
    assert policy["length"] == 14
    assert policy["classes"] == ["upper", "lower", "digit", "special"]
    assert policy["max_age_days"] == 30
    assert escrow.entropy_bits(policy) > 85


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"length": 13}, "length"),
        ({"length": 128}, "length"),
        ({"length": "20"}, "length"),
        ({"length": True}, "length"),
        ({"classes": []}, "classes"),
        ({"classes": ["upper", "emoji"]}, "classes"),
        ({"lenght": 20}, "unknown"),
        ({"exclude": string.digits, "classes": ["digit", "upper"]}, "digit"),
        ({"special": "a b"}, "special"),
        ({"max_age_days": 0}, "max_age_days"),
        ({"max_age_days": "30"}, "max_age_days"),
        ("14", "mapping"),
    ],
)
def test_bad_policies_are_refused(raw, words):
    with pytest.raises(escrow.EscrowError, match=words):
        escrow.policy_from(raw)


def test_generate_honours_every_class_length_and_exclusions():
    policy = escrow.policy_from({"length": 20, "exclude": "Il1O0", "special": "#@!"})
    allowed = set(string.ascii_letters + string.digits + "#@!") - set("Il1O0")
    seen = set()
    for _ in range(300):
        password = escrow.generate(policy)
        assert len(password) == 20
        assert set(password) <= allowed
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() for c in password) and any(c in "#@!" for c in password)
        seen.add(password)
    assert len(seen) == 300


def test_generate_with_fewer_classes():
    policy = escrow.policy_from({"classes": ["lower", "digit"], "length": 16})
    for _ in range(50):
        password = escrow.generate(policy)
        assert set(password) <= set(string.ascii_lowercase + string.digits)
        assert any(c.isdigit() for c in password)


def test_generate_never_contains_the_account_name(monkeypatch):
    policy = escrow.policy_from({"classes": ["lower"], "length": 14})
    picks = iter("admin" + "x" * 9 + "abcdefghijklmn")  # first draw contains 'admin'
    monkeypatch.setattr(escrow.secrets, "choice", lambda seq: next(picks))
    monkeypatch.setattr(escrow.secrets.SystemRandom, "shuffle", lambda self, x: None)
    assert escrow.generate(policy, "admin") == "abcdefghijklmn"


def test_account_names():
    assert escrow.check_account("localadmin") == "localadmin"
    for bad in ("", "a/b", "root:x", "x" * 65, None, "a b", "a\nb"):
        with pytest.raises(escrow.EscrowError):
            escrow.check_account(bad)


# ---- SHA-512 crypt -------------------------------------------------------------


def test_sha512_crypt_reference_vectors():
    # Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors
    assert escrow.sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )
    assert escrow.sha512_crypt("Hello world!", "saltstringsaltstring", rounds=10000) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
    )


@pytest.mark.skipif(crypt is None, reason="the crypt module (reference libcrypt) is not in this Python")
def test_sha512_crypt_matches_the_system_libcrypt():
    policy = escrow.policy_from({"length": 40})
    for password in ["", "a", "x" * 64, "y" * 65, "ü€" * 50, escrow.generate(policy), escrow.generate(policy)]:
        hashed = escrow.sha512_crypt(password)
        assert hashed.startswith("$6$") and len(hashed.split("$")[2]) == 16
        assert crypt.crypt(password, hashed) == hashed
        assert escrow.sha512_crypt_matches(password, hashed)
        assert not escrow.sha512_crypt_matches(password + "x", hashed)


def test_sha512_crypt_salts_are_random_and_checked():
    assert escrow.sha512_crypt("same") != escrow.sha512_crypt("same")
    with pytest.raises(escrow.EscrowError):
        escrow.sha512_crypt("pw", "bad salt!")
    assert not escrow.sha512_crypt_matches("pw", "$1$md5$whatever")


# ---- keys and envelopes ------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_der_public_key(escrow_key):
    der = escrow_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hashlib.sha256(der).hexdigest()
    assert escrow.fingerprint(escrow_key.public_key()) == expected
    assert escrow.fingerprint(escrow_key) == expected  # of the private key's public half
    assert escrow.fingerprint(escrow.load_public_key(pem(escrow_key.public_key()))) == expected


def test_public_key_refusals():
    with pytest.raises(escrow.EscrowError, match="placeholder"):
        escrow.load_public_key("REPLACE-WITH-THE-ESCROW-PUBLIC-KEY-PEM")
    with pytest.raises(escrow.EscrowError, match="placeholder"):
        escrow.load_public_key(None)
    with pytest.raises(escrow.EscrowError, match="not a PEM"):
        escrow.load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(escrow.EscrowError, match="1024 bits"):
        escrow.load_public_key(pem(small.public_key()))
    with pytest.raises(escrow.EscrowError, match="RSA"):
        escrow.load_public_key(pem(ec.generate_private_key(ec.SECP256R1()).public_key()))


def test_encrypt_decrypt_round_trip_and_no_plaintext_in_the_envelope(escrow_key):
    password = escrow.generate(escrow.policy_from(None))
    envelope = escrow.encrypt(escrow_key.public_key(), password, AAD)
    text = json.dumps(envelope)
    for needle in (password, base64.b64encode(password.encode()).decode(), password.encode().hex()):
        assert needle not in text
    assert envelope["kid"] == escrow.fingerprint(escrow_key)
    assert envelope["alg"] == "RSA-OAEP-SHA256+AES-256-GCM"
    assert len(base64.b64decode(envelope["wrapped_key"])) == 256  # RSA-2048 block
    assert escrow.decrypt(escrow_key, json.loads(text)) == password
    # fresh data key and nonce every time
    again = escrow.encrypt(escrow_key.public_key(), password, AAD)
    assert again["wrapped_key"] != envelope["wrapped_key"] and again["nonce"] != envelope["nonce"]


def test_decrypt_refuses_the_wrong_key(escrow_key, other_key):
    envelope = escrow.encrypt(escrow_key.public_key(), "S3cret!S3cret!x", AAD)
    with pytest.raises(escrow.Refused, match="fingerprint mismatch"):
        escrow.decrypt(other_key, envelope)
    # even with the kid forged to the wrong key, OAEP unwrapping fails
    forged = dict(envelope, kid=escrow.fingerprint(other_key))
    with pytest.raises(escrow.Refused, match="decryption failed"):
        escrow.decrypt(other_key, forged)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: e["aad"].update(vm="desk-0002"),
        lambda e: e["aad"].update(rotated_at=1),
        lambda e: e.update(ciphertext=base64.b64encode(b"\0" * 30).decode()),
        lambda e: e.update(nonce=base64.b64encode(b"\1" * 12).decode()),
    ],
)
def test_decrypt_refuses_altered_data_or_labels(escrow_key, tamper):
    envelope = copy.deepcopy(escrow.encrypt(escrow_key.public_key(), "S3cret!S3cret!x", AAD))
    tamper(envelope)
    with pytest.raises(escrow.Refused, match="decryption failed"):
        escrow.decrypt(escrow_key, envelope)


def test_refused_messages_never_carry_the_password(escrow_key, other_key):
    password = "Unique!Pa55word#42"
    envelope = escrow.encrypt(escrow_key.public_key(), password, AAD)
    for key, env in ((other_key, envelope), (escrow_key, dict(envelope, aad={"vm": "x"}))):
        with pytest.raises(escrow.Refused) as info:
            escrow.decrypt(key, env)
        assert password not in str(info.value) and info.value.__cause__ is None


def test_private_key_loading(tmp_path, escrow_key):
    clear = escrow_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    locked = escrow_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pass")
    )
    assert escrow.fingerprint(escrow.load_private_key(clear)) == escrow.fingerprint(escrow_key)
    assert escrow.fingerprint(escrow.load_private_key(locked, "pass")) == escrow.fingerprint(escrow_key)
    with pytest.raises(escrow.EscrowError, match="encrypted"):
        escrow.load_private_key(locked)
    with pytest.raises(escrow.EscrowError, match="passphrase"):
        escrow.load_private_key(locked, "wrong")
    with pytest.raises(escrow.EscrowError, match="PEM private key"):
        escrow.load_private_key(pem(escrow_key.public_key()).encode())


# ---- a minion's return, as the master vets it ------------------------------------------


def minion_return(key, vm="desk-0001", account="localadmin", rotated_at=1700000000.5, password="Pw!0aaaaaaaaaaaa"):
    aad = {"vm": vm, "account": account, "rotated_at": rotated_at}
    return {
        "account": account,
        "rotated_at": rotated_at,
        "length": 16,
        "max_age_days": 30,
        "fingerprint": escrow.fingerprint(key),
        "ciphertext": escrow.encrypt(key.public_key(), password, aad),
        "verified": True,
        "platform": "windows",
    }


def test_check_return_accepts_a_good_return(escrow_key):
    ret = minion_return(escrow_key)
    row = escrow_check.check_return(ret, "desk-0001", "localadmin", escrow.fingerprint(escrow_key))
    assert row["vm"] == "desk-0001" and row["length"] == 16 and row["verified"] == 1
    assert json.loads(row["envelope"]) == ret["ciphertext"]


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda r, k: r.update(fingerprint="0" * 64), "fingerprint mismatch"),
        (lambda r, k: r.update(password="oops"), "unexpected keys"),
        (lambda r, k: r.pop("ciphertext"), "lacks ciphertext"),
        (lambda r, k: r["ciphertext"].update(kid="1" * 64), "inside the ciphertext"),
        (lambda r, k: r.update(account="root"), "account"),
        (lambda r, k: r.update(rotated_at="yesterday"), "rotated_at"),
        (lambda r, k: r.update(length=8), "length"),
        (lambda r, k: r["ciphertext"].update(format="plain"), "escrow envelope|deskfleet-escrow-v1"),
        (lambda r, k: r["ciphertext"].update(nonce="***"), "base64"),
    ],
)
def test_check_return_refusals(escrow_key, change, words):
    ret = minion_return(escrow_key)
    change(ret, escrow_key)
    with pytest.raises(escrow.Refused, match=words):
        escrow_check.check_return(ret, "desk-0001", "localadmin", escrow.fingerprint(escrow_key))


def test_check_return_refuses_a_key_the_master_does_not_trust(escrow_key, other_key):
    ret = minion_return(other_key)  # sealed to another key, honestly labelled
    with pytest.raises(escrow.Refused, match="fingerprint mismatch"):
        escrow_check.check_return(ret, "desk-0001", "localadmin", escrow.fingerprint(escrow_key))


def test_check_return_refuses_a_ciphertext_labelled_for_another_machine(escrow_key):
    ret = minion_return(escrow_key, vm="desk-0002")  # desk-0001 returns desk-0002's label
    with pytest.raises(escrow.Refused, match="another machine"):
        escrow_check.check_return(ret, "desk-0001", "localadmin", escrow.fingerprint(escrow_key))
    with pytest.raises(escrow.Refused):
        escrow_check.check_return("ERROR: boom", "desk-0001", "localadmin", escrow.fingerprint(escrow_key))


# ---- the store -------------------------------------------------------------------------


@pytest.fixture
def conn(store_db):
    connection = deskfleet_store.connect(store_db, escrow_store.MIGRATIONS)
    yield connection
    connection.close()


def store_rotation(conn, key, vm, rotated_at, password="Pw!0aaaaaaaaaaaa", keep=escrow_store.DEFAULT_HISTORY):
    row = escrow_check.check_return(
        minion_return(key, vm=vm, rotated_at=rotated_at, password=password), vm, "localadmin", escrow.fingerprint(key)
    )
    return escrow_store.add_escrow(conn, row, jid="20240101", now=rotated_at + 1, keep=keep)


def test_store_shares_the_file_with_other_components(store_db):
    path = store_db
    deskfleet_store.connect(path, tc_assets.MIGRATIONS).close()
    conn = deskfleet_store.connect(path, escrow_store.MIGRATIONS)
    versions = dict(conn.execute("SELECT component, version FROM schema_version").fetchall())
    assert versions == {
        "tc_inventory": len(tc_assets.MIGRATIONS["tc_inventory"]),
        "password_escrow": len(escrow_store.MIGRATIONS["password_escrow"]),
    }
    conn.close()
    deskfleet_store.connect(path, escrow_store.MIGRATIONS).close()  # idempotent


def test_history_keeps_old_ciphertexts_and_the_newest_is_current(conn, escrow_key):
    ids = [store_rotation(conn, escrow_key, "desk-0001", 1000.0 + i, password=f"Pw!0-{i}-aaaaaaaaaa") for i in range(3)]
    current = escrow_store.escrowed(conn, "desk-0001", "localadmin")
    assert current["id"] == ids[-1]
    assert escrow.decrypt(escrow_key, current["envelope"]) == "Pw!0-2-aaaaaaaaaa"
    old = escrow_store.escrowed(conn, "desk-0001", "localadmin", escrow_id=ids[0])
    assert escrow.decrypt(escrow_key, old["envelope"]) == "Pw!0-0-aaaaaaaaaa"
    listed = escrow_store.history(conn, "desk-0001", "localadmin")
    assert [h["id"] for h in listed] == ids[::-1]
    assert [h["current"] for h in listed] == [True, False, False]
    assert all("envelope" not in h for h in listed)
    assert escrow_store.escrowed(conn, "desk-0002", "localadmin") is None
    assert escrow_store.escrowed_at(conn, "desk-0001", "localadmin", 1001.0)
    assert not escrow_store.escrowed_at(conn, "desk-0001", "localadmin", 999.0)


def test_history_is_pruned_to_keep(conn, escrow_key):
    for i in range(5):
        store_rotation(conn, escrow_key, "desk-0001", 1000.0 + i, keep=3)
    store_rotation(conn, escrow_key, "desk-0002", 1000.0, keep=3)
    assert [h["rotated_at"] for h in escrow_store.history(conn, "desk-0001", "localadmin")] == [1004.0, 1003.0, 1002.0]
    assert len(escrow_store.history(conn, "desk-0002", "localadmin")) == 1


def test_current_is_the_latest_rotation_even_if_stored_out_of_order(conn, escrow_key):
    store_rotation(conn, escrow_key, "desk-0001", 2000.0)
    store_rotation(conn, escrow_key, "desk-0001", 1000.0)  # a late, older return (collect)
    assert escrow_store.escrowed(conn, "desk-0001", "localadmin")["rotated_at"] == 2000.0


def test_audit_log(conn):
    first = escrow_store.add_audit(conn, who="alice", action="read", vm="desk-0001", account="localadmin",
                             outcome="ok", escrow_id=1, key_fingerprint="ab", now=10.0)  # fmt: skip
    escrow_store.add_audit(conn, who="bob", action="read", vm="desk-0002", account="localadmin",
                     outcome="refused", reason="key fingerprint mismatch", now=11.0)  # fmt: skip
    log = escrow_store.audit_log(conn)
    assert [r["who"] for r in log] == ["bob", "alice"]
    assert log[1]["id"] == first and log[1]["at"] == 10.0 and log[1]["outcome"] == "ok"
    assert [r["who"] for r in escrow_store.audit_log(conn, vm="desk-0001")] == ["alice"]
    assert escrow_store.audit_log(conn, action="rotate") == []


def test_due(conn, escrow_key, other_key):
    day = 86400.0
    now = 100 * day
    store_rotation(conn, escrow_key, "fresh", now - 2 * day)
    store_rotation(conn, escrow_key, "old", now - 31 * day)
    store_rotation(conn, other_key, "rekeyed", now - 1 * day)
    found = escrow_store.due(conn, ["fresh", "old", "rekeyed", "never"], "localadmin", now, escrow.fingerprint(escrow_key))
    assert {vm: f["due"] for vm, f in found.items()} == {"fresh": False, "old": True, "rekeyed": True, "never": True}
    assert found["never"]["reason"] == "never escrowed"
    assert "30 days" in found["old"]["reason"]
    assert "old escrow key" in found["rekeyed"]["reason"]
    assert found["fresh"]["age_days"] == 2.0
    tighter = escrow_store.due(conn, ["fresh"], "localadmin", now, None, max_age_days=1)
    assert tighter["fresh"]["due"] is True
