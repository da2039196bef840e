"""
``local_password`` on Windows, without Windows: the module's dunders are set
the Salt way (``configure_loader_modules``) with a fake ``__salt__`` that pins
the exact calls into Salt's win_useradd / win_shadow (``user.info``,
``user.setpassword``, ``shadow.verify_password``); and once through Salt's real
loader with Windows grains and the same fakes injected. What is simulated: the
Windows functions themselves (win32net is not here). What is real: the module,
policy, generation, the envelope, and its decryption with the escrow key.
"""

import json
import logging
import pathlib
import subprocess
import traceback
from unittest.mock import MagicMock

import pytest
import salt.config
import salt.loader
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from salt.exceptions import CommandExecutionError

import escrow
import escrow_check
from tests.support.loading import load

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
MINION_ID = "desk-0042"

# the module lives in _modules (a Salt extension dir, not a package)
local_password = load("_modules/local_password.py")


@pytest.fixture(scope="module")
def escrow_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pubkey_pem(escrow_key):
    return (
        escrow_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def pillar(pubkey_pem):
    return {
        "deskfleet": {
            "passwords": {
                "accounts": ["localadmin", "Administrator"],
                "policy": {"length": 20, "classes": ["upper", "lower", "digit", "special"], "max_age_days": 14},
                "escrow_pubkey": pubkey_pem,
            }
        }
    }


@pytest.fixture
def fake_salt():
    return {
        "user.info": MagicMock(return_value={"name": "localadmin", "active": True}),
        "user.setpassword": MagicMock(return_value=True),
        "shadow.verify_password": MagicMock(return_value=True),
    }


@pytest.fixture
def configure_loader_modules(tmp_path, pillar, fake_salt):
    return {
        local_password: {
            "__opts__": {"id": MINION_ID, "cachedir": str(tmp_path / "cache")},
            "__grains__": {"kernel": "Windows", "os": "Windows"},
            "__pillar__": pillar,
            "__salt__": fake_salt,
            "__context__": {},
        }
    }


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    """The Windows branch runs nothing: no chpasswd, no cmd.run."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args!r}")

    monkeypatch.setattr(local_password.subprocess, "run", refuse)
    monkeypatch.setattr(local_password.subprocess, "Popen", refuse)


def set_password(fake_salt):
    """The password the module handed to user.setpassword (the fake saw it; nothing else may)."""
    ((account, password), kwargs) = fake_salt["user.setpassword"].call_args
    assert kwargs == {}
    return account, password


def test_virtual_on_windows():
    assert local_password.__virtual__() == "local_password"


def test_rotate_pins_the_win_useradd_and_win_shadow_calls(fake_salt, escrow_key, caplog):
    with caplog.at_level(logging.DEBUG):
        ret = local_password.rotate("localadmin")
    account, password = set_password(fake_salt)
    assert account == "localadmin"
    fake_salt["user.info"].assert_called_once_with("localadmin")
    fake_salt["user.setpassword"].assert_called_once_with("localadmin", password)
    fake_salt["shadow.verify_password"].assert_called_once_with("localadmin", password)
    # policy from pillar: 20 characters of every class
    assert len(password) == 20
    assert any(c.isupper() for c in password) and any(c.islower() for c in password)
    assert any(c.isdigit() for c in password) and any(c in escrow.DEFAULT_SPECIAL for c in password)

    # only ciphertext + metadata come back, and the escrow key opens it
    assert set(ret) == escrow_check.RETURN_KEYS
    assert ret["account"] == "localadmin" and ret["platform"] == "windows" and ret["verified"] is True
    assert ret["length"] == 20 and ret["max_age_days"] == 14
    assert ret["fingerprint"] == escrow.fingerprint(escrow_key)
    assert ret["ciphertext"]["aad"] == {"vm": MINION_ID, "account": "localadmin", "rotated_at": ret["rotated_at"]}
    assert escrow.decrypt(escrow_key, ret["ciphertext"]) == password
    assert password not in json.dumps(ret)
    # the master accepts it as desk-0042's
    escrow_check.check_return(json.loads(json.dumps(ret)), MINION_ID, "localadmin", escrow.fingerprint(escrow_key))
    # and not a word of it in any log record, at debug
    assert caplog.records, "the module logs the rotation"
    assert all(password not in r.getMessage() for r in caplog.records)


def test_default_account_is_the_first_allowed(fake_salt):
    local_password.rotate()
    assert set_password(fake_salt)[0] == "localadmin"
    local_password.rotate("Administrator")
    assert set_password(fake_salt)[0] == "Administrator"


def test_every_rotation_is_a_new_password(fake_salt):
    seen = set()
    for _ in range(5):
        local_password.rotate("localadmin")
        seen.add(set_password(fake_salt)[1])
    assert len(seen) == 5


def test_account_outside_the_pillar_list_is_refused_before_anything(fake_salt):
    with pytest.raises(CommandExecutionError, match="not in pillar"):
        local_password.rotate("Guest")
    for fun in fake_salt.values():
        fun.assert_not_called()


def test_missing_account_is_refused_before_a_password_is_set(fake_salt):
    fake_salt["user.info"].return_value = {}
    with pytest.raises(CommandExecutionError, match="no local account"):
        local_password.rotate("localadmin")
    fake_salt["user.setpassword"].assert_not_called()


def test_wrong_escrow_key_expected_changes_nothing(fake_salt):
    with pytest.raises(CommandExecutionError, match="nothing changed"):
        local_password.rotate("localadmin", expect_fingerprint="0" * 64)
    for fun in fake_salt.values():
        fun.assert_not_called()


def test_placeholder_escrow_key_changes_nothing(fake_salt, pillar):
    pillar["deskfleet"]["passwords"]["escrow_pubkey"] = "REPLACE-WITH-THE-ESCROW-PUBLIC-KEY-PEM"
    with pytest.raises(CommandExecutionError, match="no escrow public key configured"):
        local_password.rotate("localadmin")
    for fun in fake_salt.values():
        fun.assert_not_called()


def test_setpassword_failure_is_an_error_without_the_password(fake_salt, tmp_path):
    fake_salt["user.setpassword"].return_value = False
    with pytest.raises(CommandExecutionError) as info:
        local_password.rotate("localadmin")
    password = set_password(fake_salt)[1]
    assert "user.setpassword failed" in str(info.value)
    assert password not in "".join(traceback.format_exception(info.value))
    fake_salt["shadow.verify_password"].assert_not_called()
    assert local_password.last("localadmin") == {"error": "no rotation of localadmin recorded on this machine",
                                                  "retcode": 1}
    assert local_password.__context__["retcode"] == 1  # the job exits 1


def test_an_exception_carrying_the_password_is_scrubbed(fake_salt):
    def leaky(name, password):
        raise RuntimeError(f"NetUserSetInfo rejected {password!r} for {name}")

    fake_salt["user.setpassword"].side_effect = leaky
    with pytest.raises(CommandExecutionError) as info:
        local_password.rotate("localadmin")
    password = set_password(fake_salt)[1]
    text = "".join(traceback.format_exception(info.value))
    assert "RuntimeError" in text and "[redacted]" in text
    assert password not in text
    assert info.value.__suppress_context__ and info.value.__cause__ is None


def test_verification_result_is_reported_not_fatal(fake_salt, escrow_key):
    fake_salt["shadow.verify_password"].return_value = False
    ret = local_password.rotate("localadmin")
    assert ret["verified"] is False  # set, but the logon check failed: the runner records it
    assert escrow.decrypt(escrow_key, ret["ciphertext"]) == set_password(fake_salt)[1]

    fake_salt["shadow.verify_password"].side_effect = CommandExecutionError("account 'localadmin' is locked")
    assert local_password.rotate("localadmin")["verified"] is None

    del fake_salt["shadow.verify_password"]  # an older Salt without verify_password
    assert local_password.rotate("localadmin")["verified"] is None


def test_last_rotation_is_kept_sealed_for_collection(fake_salt, escrow_key, tmp_path):
    ret = local_password.rotate("localadmin")
    assert local_password.last("localadmin") == json.loads(json.dumps(ret))
    cached = next((tmp_path / "cache").rglob("localadmin.json"))
    assert oct(cached.stat().st_mode & 0o777) == "0o600"
    assert set_password(fake_salt)[1] not in cached.read_text()


def test_policy_report_has_no_secret(pillar, escrow_key):
    found = local_password.policy()
    assert found["length"] == 20 and found["accounts"] == ["localadmin", "Administrator"]
    assert found["fingerprint"] == escrow.fingerprint(escrow_key) and found["entropy_bits"] > 120


# ---- through Salt's real loader -------------------------------------------------------


def test_real_loader_with_windows_grains(tmp_path, pillar, escrow_key):
    opts = salt.config.minion_config(None, minion_id=MINION_ID)
    opts.update(
        id=MINION_ID,
        cachedir=str(tmp_path / "cache"),
        extension_modules=str(tmp_path / "extmods"),
        module_dirs=[str(CHECKOUT / "_modules")],
        utils_dirs=[str(CHECKOUT / "_utils")],
        grains={"kernel": "Windows", "os": "Windows", "id": MINION_ID},
        pillar=pillar,
        file_client="local",
    )
    utils = salt.loader.utils(opts)
    mods = salt.loader.minion_mods(opts, utils=utils, whitelist=["local_password"], initial_load=True)
    assert "local_password.rotate" in mods
    calls = []
    mods["user.info"] = lambda name: calls.append(("user.info", name)) or {"name": name}
    mods["user.setpassword"] = lambda name, password: calls.append(("user.setpassword", name, password)) or True
    mods["shadow.verify_password"] = lambda name, password: calls.append(("verify", name, password)) or True
    ret = mods["local_password.rotate"]("localadmin")
    password = calls[1][2]
    assert calls == [("user.info", "localadmin"), ("user.setpassword", "localadmin", password),
                     ("verify", "localadmin", password)]  # fmt: skip
    assert ret["platform"] == "windows"
    assert escrow.decrypt(escrow_key, ret["ciphertext"]) == password
    assert password not in json.dumps(ret)


def test_real_loader_refuses_other_kernels(tmp_path):
    opts = salt.config.minion_config(None, minion_id=MINION_ID)
    opts.update(
        cachedir=str(tmp_path / "cache"),
        extension_modules=str(tmp_path / "extmods"),
        module_dirs=[str(CHECKOUT / "_modules")],
        utils_dirs=[str(CHECKOUT / "_utils")],
        grains={"kernel": "Darwin"},
    )
    mods = salt.loader.minion_mods(opts, whitelist=["local_password"], initial_load=True)
    assert "local_password.rotate" not in mods
    assert "Windows and Linux only" in mods.missing_fun_string("local_password.rotate")


def test_call_signatures_match_salts_windows_modules():
    """The fakes above must mirror the real functions' signatures (read from Salt's source)."""
    import inspect

    import salt.modules.win_shadow as win_shadow
    import salt.modules.win_useradd as win_useradd

    assert list(inspect.signature(win_useradd.setpassword).parameters) == ["name", "password"]
    assert list(inspect.signature(win_useradd.info).parameters) == ["name"]
    assert list(inspect.signature(win_shadow.verify_password).parameters) == ["name", "password"]


# ---- the Linux branch's process boundary (the integration test runs the real chpasswd) -------


@pytest.fixture
def linux(monkeypatch, tmp_path):
    """Switch the loaded module to Linux with a throwaway root; record what chpasswd would get."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("localadmin:x:1000:1000::/home/localadmin:/bin/sh\n")
    (root / "etc" / "shadow").write_text("localadmin:!:19000:0:99999:7:::\n")
    monkeypatch.setitem(local_password.__grains__, "kernel", "Linux")
    monkeypatch.setitem(local_password.__opts__, "deskfleet", {"passwords": {"linux_root": str(root)}})
    runs = []

    def fake_run(argv, **kwargs):
        runs.append((argv, kwargs))
        account, hashed = kwargs["input"].decode().rstrip("\n").split(":", 1)
        (root / "etc" / "shadow").write_text(f"{account}:{hashed}:19000:0:99999:7:::\n")
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(local_password.subprocess, "run", fake_run)
    return root, runs


def test_linux_secret_goes_to_chpasswd_stdin_as_a_hash_never_argv(linux, fake_salt, escrow_key):
    root, runs = linux
    ret = local_password.rotate("localadmin")
    password = escrow.decrypt(escrow_key, ret["ciphertext"])
    ((argv, kwargs),) = runs
    assert argv[1:] == ["-e", "--root", str(root)] and argv[0].endswith("chpasswd")
    account, hashed = kwargs["input"].decode().rstrip("\n").split(":", 1)
    assert account == "localadmin" and escrow.sha512_crypt_matches(password, hashed)
    assert password not in kwargs["input"].decode()  # only the $6$ hash crosses the process boundary
    assert not any(password in a or hashed in a for a in argv)
    assert not any(password in v or hashed in v for v in kwargs["env"].values())
    assert ret["platform"] == "linux" and ret["verified"] is True
    for fun in fake_salt.values():  # no Salt function (cmd.run logs its arguments) is used
        fun.assert_not_called()


def test_linux_chpasswd_failure_is_scrubbed(linux, monkeypatch):
    root, _ = linux

    def failing(argv, **kwargs):
        line = kwargs["input"].decode().strip()
        return subprocess.CompletedProcess(argv, 1, b"", f"chpasswd: line 1: bad entry {line}".encode())

    monkeypatch.setattr(local_password.subprocess, "run", failing)
    with pytest.raises(CommandExecutionError, match=r"chpasswd exited 1: .*\[redacted\]") as info:
        local_password.rotate("localadmin")
    assert "$6$" not in str(info.value)
    assert (root / "etc" / "shadow").read_text().startswith("localadmin:!:")


def test_linux_account_missing_from_the_root(linux):
    root, runs = linux
    (root / "etc" / "passwd").write_text("someone:x:1000:1000::/:/bin/sh\n")
    with pytest.raises(CommandExecutionError, match="no account localadmin in"):
        local_password.rotate("localadmin")
    assert runs == []


def test_prepare_changes_nothing_and_commit_sets_exactly_the_escrowed_password(fake_salt, escrow_key, tmp_path):
    """Two phases: prepare seals (to the escrow key and to this minion's own key) and changes nothing;
    commit sets the very password the escrow holds, only for the rotation the master names."""
    pki = tmp_path / "pki"
    pki.mkdir()
    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "minion.pem").write_bytes(own.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    local_password.__opts__["pki_dir"] = str(pki)
    ret = local_password.prepare("localadmin")
    fake_salt["user.setpassword"].assert_not_called()
    assert set(ret) == escrow_check.RETURN_KEYS and ret["verified"] is None
    escrowed = escrow.decrypt(escrow_key, ret["ciphertext"])
    pending = next((tmp_path / "cache").rglob("localadmin.pending.json"))
    assert oct(pending.stat().st_mode & 0o777) == "0o600" and escrowed not in pending.read_text()
    with pytest.raises(CommandExecutionError, match="no prepared rotation"):
        local_password.commit("localadmin", rotations={MINION_ID: ret["rotated_at"] + 1})
    fake_salt["user.setpassword"].assert_not_called()
    done = local_password.commit("localadmin", rotations={MINION_ID: ret["rotated_at"], "desk-other": 1.0})
    assert done == {"account": "localadmin", "rotated_at": ret["rotated_at"], "verified": True, "committed": True}
    assert set_password(fake_salt) == ("localadmin", escrowed)
    assert not pending.exists() and local_password.last("localadmin")["rotated_at"] == ret["rotated_at"]
    # a repeated commit (its first answer was lost) changes nothing and says committed
    assert local_password.commit("localadmin", rotations={MINION_ID: ret["rotated_at"]})["committed"] is True
    assert fake_salt["user.setpassword"].call_count == 1
