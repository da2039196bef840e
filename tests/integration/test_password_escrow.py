"""
LAPS-style password escrow end to end, with a real vm master (shipped
``salt_vm/master.d``, paths rewritten) and two real minions.

The minions are Linux processes on this machine, so ``local_password`` takes its
Linux branch: it feeds ``localadmin:$6$…`` to the real ``chpasswd -e --root`` of
this machine, acting on a throwaway root (etc/passwd, etc/shadow, etc/group in a
temp dir), never on this machine's own accounts. The Windows branch is covered
in tests/functional/test_local_password_windows.py.

THE LEAK TEST: after a rotation and a read, the plaintext (learned from
``salt-run password.show`` stdout and checked against the throwaway etc/shadow
with the crypt module) must appear nowhere else: not in any file under the
master's or the minions' root dirs (job cache, logs at debug, the store, the
minion cache), not on the master event bus (every event captured by a listener
during rotate + show), not in any process's argv or environment (``ps`` sampled
every 50 ms), not in salt-run's stderr (debug console log) nor in the rotate's
stdout.
"""

import base64
import getpass
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import warnings

import pytest
import salt.payload
import salt.utils.event
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import escrow
from harness import saltconf
from tests.support.minions import running as minions_running

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # the system's libcrypt: an independent check of the $6$ hash

ACCOUNT = "localadmin"
DESKS = ("desk-pw-0001", "desk-pw-0002")
PS_INTERVAL = 0.05


# ---- keys, throwaway roots, master, minions ------------------------------------------------


def write_key_pair(directory, name, bits):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = directory / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public, escrow.fingerprint(key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The escrow pair (operator holds escrow.pem) and an unrelated operator key."""
    directory = tmp_path_factory.mktemp("escrow-keys")
    escrow_pem, escrow_pub, escrow_fp = write_key_pair(directory, "escrow", 3072)
    wrong_pem, wrong_pub, wrong_fp = write_key_pair(directory, "wrong", 2048)
    return {
        "pem": escrow_pem, "pub": escrow_pub, "fp": escrow_fp,
        "wrong_pem": wrong_pem, "wrong_pub": wrong_pub, "wrong_fp": wrong_fp,
    }  # fmt: skip


def make_root(path):
    """A throwaway Linux root with a 'localadmin' account whose password is locked."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nlocaladmin:x:1000:1000:Local admin:/home/localadmin:/bin/sh\n"
    )
    (etc / "group").write_text("root:x:0:\nlocaladmin:x:1000:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\nlocaladmin:!:19000:0:99999:7:::\n")
    (etc / "shadow").chmod(0o640)
    return path


def shadow_hash(root, account=ACCOUNT, name="shadow"):
    for line in (root / "etc" / name).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == account:
            return fields[1]
    return None


@pytest.fixture(scope="module")
def pw_master(salt_factories, tmp_path_factory, keys):
    """
    The vm master from the shipped config, plus: the escrow public key file its
    config names (as production provisions /etc/deskfleet/password-escrow.pub),
    and a pillar root ahead of pillar/vm whose top.sls assigns ``passwords``
    (pillar/vm/top.sls gains that line separately).
    """
    etc = tmp_path_factory.mktemp("etc-pw")
    shutil.copy(keys["pub"], etc / "password-escrow.pub")
    top = tmp_path_factory.mktemp("pillar-pw")
    (top / "top.sls").write_text("base:\n  '*':\n    - passwords\n")
    overrides = saltconf.lab_master_config("vm", etc, passwords={"escrow_pubkey_file": str(etc / "password-escrow.pub")})
    overrides["pillar_roots"] = {"base": [str(top)] + list(overrides["pillar_roots"]["base"])}
    factory = salt_factories.salt_master_daemon("vm-master-pw", overrides=overrides)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return {desk: make_root(tmp_path_factory.mktemp(f"root-{desk}")) for desk in DESKS}


@pytest.fixture(scope="module")
def desks(pw_master, roots):
    minions = [
        pw_master.salt_minion_daemon(
            desk,
            overrides={
                "grains": {"deskfleet_role": "desktop"},
                # the throwaway root; production Linux machines use / (the default)
                "deskfleet": {"passwords": {"linux_root": str(roots[desk])}},
            },
        )
        for desk in DESKS
    ]
    with minions_running(pw_master, minions, "desk-pw-*") as running:
        yield running


# ---- helpers ---------------------------------------------------------------------------------


def salt_run(master, *args, check=True):
    """salt-run with debug on the console (stderr): one more log stream to search."""
    ret = master.salt_run_cli(timeout=180).run(*args, "--log-level=debug")
    if check:
        assert ret.returncode == 0, ret
    return ret


def show(master, desk, key, *extra):
    """(plaintext from stdout, the runner's JSON return, the process result)."""
    ret = salt_run(master, "password.show", desk, ACCOUNT, f"key={key}", *extra, check=False)
    first, _, rest = ret.stdout.partition("\n")
    if first.strip() == "{":  # refused: nothing printed before the return (a password may start with "{")
        return None, json.loads(ret.stdout), ret
    return first, json.loads(rest), ret


def data_of(ret):
    return ret.data if isinstance(ret.data, (dict, list)) else json.loads(ret.stdout)


def needles_for(*secrets):
    """{what: bytes}: the plaintext and the forms it could be smuggled in (base64, hex, UTF-16)."""
    found = {}
    for i, secret in enumerate(secrets):
        raw = secret.encode()
        found.update({
            f"password {i}": raw,
            f"password {i} base64": base64.b64encode(raw),
            f"password {i} hex": raw.hex().encode(),
            f"password {i} utf-16": secret.encode("utf-16-le"),
        })  # fmt: skip
    return found


class LeakWatch:
    """Every event on the master bus, and ``ps`` argv + environment every 50 ms, until stopped."""

    def __init__(self, master):
        self.opts = master.config
        self.events = []
        self.ps_samples = 0
        self.ps_lines = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors = []
        self._threads = [threading.Thread(target=self._listen, daemon=True), threading.Thread(target=self._ps, daemon=True)]

    def _listen(self):
        try:
            with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=True) as bus:
                self._ready.set()
                while not self._stop.is_set():
                    event = bus.get_event(wait=0.2, full=True, no_block=False)
                    if event:
                        self.events.append((event["tag"], event["data"]))
        except Exception as exc:  # pylint: disable=broad-except
            self._errors.append(exc)
            self._ready.set()

    def _ps(self):
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-e", "e", "-ww", "-o", "args"], capture_output=True, check=False).stdout
            self.ps_samples += 1
            self.ps_lines.update(out.splitlines())
            time.sleep(PS_INTERVAL)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        assert self._ready.wait(30), "event listener did not start"
        # prove the subscription is live before anything happens
        with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=False) as bus:
            bus.fire_event({"probe": True}, "deskfleet/test/leakwatch")
        deadline = time.time() + 30
        while not any(tag == "deskfleet/test/leakwatch" for tag, _ in self.events):
            assert time.time() < deadline and not self._errors, f"listener saw no probe event: {self._errors}"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        time.sleep(1)  # let the last return events arrive
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not self._errors, self._errors
        return False


def files_under(*dirs, skip=()):
    for top in dirs:
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                path = pathlib.Path(dirpath) / name
                if path.is_file() and not any(str(path).startswith(str(s)) for s in skip):
                    yield path


def hits(blob, needles):
    """Which needles are in ``blob``, by name only (a failure must not print the secret)."""
    return [what for what, needle in needles.items() if needle in blob]


# ---- the tests -------------------------------------------------------------------------------


def test_rotation_escrow_show_and_the_leak_test(pw_master, desks, roots, keys):
    desk = DESKS[0]
    root = roots[desk]
    # the minion acts on the throwaway root, never on this machine's /etc
    assert desks[desk].config["deskfleet"]["passwords"]["linux_root"] == str(root)
    assert (root / "etc" / "shadow").resolve() != pathlib.Path("/etc/shadow")
    before = shadow_hash(root)
    assert before == "!"

    with LeakWatch(pw_master) as watch:
        rotated = salt_run(pw_master, "password.rotate", desk, ACCOUNT)
        result = data_of(rotated)
        password, shown, show_proc = show(pw_master, desk, keys["pem"])

    # rotation → escrow → show with the right key
    assert list(result["rotated"]) == [desk], result
    assert result["fingerprint"] == keys["fp"] and not result["refused"] and not result["failed"]
    assert result["rotated"][desk]["verified"] is True
    assert show_proc.returncode == 0, show_proc
    assert shown["shown"] is True and shown["vm"] == desk and shown["account"] == ACCOUNT
    assert set(shown) == {"shown", "vm", "account", "rotated_at", "escrow_id", "audit_id"}
    assert shown["rotated_at"] == result["rotated"][desk]["rotated_at"]

    # the plaintext is what the throwaway root's shadow now holds (independent check: libcrypt)
    hashed = shadow_hash(root)
    assert hashed.startswith("$6$") and hashed != before
    matches = crypt.crypt(password, hashed) == hashed  # (not in the assert: a failure would print it)
    assert matches, "salt-run password.show printed the password the machine's shadow holds"
    assert len(password) == 14  # the shipped policy
    # ... and this machine's own accounts were not touched: the minion ran chpasswd --root <tmp>
    assert shadow_hash(root, "root") == "*"

    needles = dict(needles_for(password), **{"shadow hash": hashed.encode()})
    counts = {}

    # 1. the master event bus: every event during rotate + show
    tags = [tag for tag, _ in watch.events]
    assert any(t.startswith("salt/job/") and t.endswith(f"/ret/{desk}") for t in tags), tags
    assert any(t.startswith("salt/run/") and t.endswith("/ret") for t in tags), tags
    minion_ret = next(d for t, d in watch.events if t.endswith(f"/ret/{desk}"))
    assert minion_ret["return"]["ciphertext"]["kid"] == keys["fp"]  # the bus carried the ciphertext only
    for tag, data in watch.events:
        blob = tag.encode() + salt.payload.dumps(data) + json.dumps(data, default=repr).encode()
        found = hits(blob, needles)
        assert not found, f"{found} on the event bus in {tag}"
    counts["events"] = len(watch.events)

    # 2. every file under the master's and minions' root dirs: job cache, logs at debug, store, caches
    master_root = pathlib.Path(pw_master.config["root_dir"])
    minion_roots = [pathlib.Path(m.config["root_dir"]) for m in desks.values()]
    jobs = pathlib.Path(pw_master.config["cachedir"]) / "jobs"
    job_files = list(files_under(jobs))
    assert any(desk in str(p) for p in job_files), "the rotation's return is in the job cache"
    assert any(keys["fp"].encode() in p.read_bytes() for p in job_files), "job cache holds the ciphertext"
    counts["job_cache_files"] = len(job_files)
    scanned = 0
    for path in files_under(master_root, *minion_roots):
        found = hits(path.read_bytes(), needles)
        assert not found, f"{found} in {path}"
        scanned += 1
    counts["files"] = scanned

    # the logs were at debug and did record this work
    master_log = pathlib.Path(pw_master.config["log_file"]).read_text(errors="replace").splitlines()
    minion_log = pathlib.Path(desks[desk].config["log_file"]).read_text(errors="replace").splitlines()
    assert pw_master.config["log_level_logfile"] == desks[desk].config["log_level_logfile"] == "debug"
    assert any("[DEBUG" in line for line in master_log) and any("[DEBUG" in line for line in minion_log)
    assert any("local_password.prepare" in line for line in minion_log)
    assert any("local_password.commit" in line for line in minion_log)
    assert any("rotated the password of localadmin" in line for line in minion_log)
    counts["log_lines"] = len(master_log) + sum(
        len(pathlib.Path(m.config["log_file"]).read_text(errors="replace").splitlines()) for m in desks.values()
    )

    # 3. every process's argv and environment, sampled during rotate + show
    assert watch.ps_samples >= 20, watch.ps_samples
    assert any(b"password.rotate" in line for line in watch.ps_lines), "ps sampling saw the salt-run"
    for line in watch.ps_lines:
        found = hits(line, needles)
        assert not found, f"{found} in a process argv/environment: {line[:60]!r}"
    counts["ps_samples"] = watch.ps_samples
    counts["ps_unique_lines"] = len(watch.ps_lines)

    # 4. salt-run's own streams: rotate prints nothing secret; show prints it once, on stdout only
    for name, stream in (("rotate stdout", rotated.stdout), ("rotate stderr", rotated.stderr),
                         ("show stderr", show_proc.stderr)):  # fmt: skip
        found = hits(stream.encode(), needles)
        assert not found, f"{found} in salt-run {name}"
    assert show_proc.stdout.count(password) == 1, "printed once, on salt-run's stdout"
    found = hits(json.dumps(shown).encode(), needles)
    assert not found, f"{found} in the runner's return"
    counts["stderr_lines"] = len(rotated.stderr.splitlines()) + len(show_proc.stderr.splitlines())

    print(f"\nleak test scanned: {json.dumps(counts)}")
    assert counts["events"] >= 5 and counts["log_lines"] > 100


def test_wrong_key_is_refused_and_audited(pw_master, desks, keys):
    desk = DESKS[0]
    password, refused, proc = show(pw_master, desk, keys["wrong_pem"])
    assert password is None and proc.returncode == 1
    assert refused["shown"] is False
    assert "fingerprint mismatch" in refused["error"] and keys["wrong_fp"] in refused["error"]
    entry = data_of(salt_run(pw_master, "password.audit", f"vm={desk}", "action=read", "limit=1"))[0]
    assert entry["id"] == refused["audit_id"]
    assert entry["outcome"] == "refused" and "fingerprint mismatch" in entry["reason"]
    assert entry["key_fingerprint"] == keys["wrong_fp"]
    assert entry["who"] == (os.environ.get("SUDO_USER") or getpass.getuser())
    # a missing key file is refused as well
    _, missing, proc = show(pw_master, desk, "/nonexistent/operator.pem")
    assert proc.returncode == 1 and "cannot read key" in missing["error"]
    # and so is a read whose output would not reach an operator (a detached runner's stdout)
    detached = salt_run(pw_master, "password.show", desk, ACCOUNT, f"key={keys['pem']}", "--async")
    assert "password" not in detached.stdout.lower()

    def refused_async():
        last = data_of(salt_run(pw_master, "password.audit", f"vm={desk}", "action=read", "limit=1"))[0]
        return last if "--async" in (last["reason"] or "") else None

    deadline = time.time() + 60
    while not refused_async():
        assert time.time() < deadline, "the --async read was not refused and audited"
        time.sleep(1)


def test_history_keeps_the_old_ciphertexts(pw_master, desks, roots, keys):
    desk = DESKS[0]
    old_password, old_shown, _ = show(pw_master, desk, keys["pem"])
    result = data_of(salt_run(pw_master, "password.rotate", desk, ACCOUNT))
    assert desk in result["rotated"]
    new_password, new_shown, _ = show(pw_master, desk, keys["pem"])
    assert new_password != old_password
    assert crypt.crypt(new_password, shadow_hash(roots[desk])) == shadow_hash(roots[desk])
    # chpasswd left the previous shadow as shadow-: the old escrowed password still opens it
    assert crypt.crypt(old_password, shadow_hash(roots[desk], name="shadow-")) == shadow_hash(roots[desk], name="shadow-")

    history = data_of(salt_run(pw_master, "password.history", desk, ACCOUNT))
    assert [h["id"] for h in history][:2] == [new_shown["escrow_id"], old_shown["escrow_id"]]
    assert history[0]["current"] is True and history[1]["current"] is False
    assert all("envelope" not in h and "ciphertext" not in h for h in history)
    # an older escrowed password can still be read, by id
    again, shown, _ = show(pw_master, desk, keys["pem"], f"escrow_id={old_shown['escrow_id']}")
    assert again == old_password and shown["escrow_id"] == old_shown["escrow_id"]

    # the store holds ciphertexts, no password
    store = pathlib.Path(pw_master.config["cachedir"]) / "deskfleet" / "deskfleet.sqlite"
    blob = b"".join(p.read_bytes() for p in store.parent.glob("deskfleet.sqlite*"))
    found = hits(blob, needles_for(old_password, new_password))
    assert not found, f"{found} in the store"


def test_audit_log_records_reads_and_no_secret(pw_master, desks, keys):
    desk = DESKS[0]
    password, shown, _ = show(pw_master, desk, keys["pem"])
    log = data_of(salt_run(pw_master, "password.audit", f"vm={desk}"))
    reads = [e for e in log if e["action"] == "read"]
    assert reads[0]["id"] == shown["audit_id"] and reads[0]["outcome"] == "ok"
    assert reads[0]["key_fingerprint"] == keys["fp"] and reads[0]["escrow_id"] == shown["escrow_id"]
    assert abs(reads[0]["at"] - time.time()) < 120
    assert {e["outcome"] for e in reads} >= {"ok", "refused"}
    assert all(e["who"] == (os.environ.get("SUDO_USER") or getpass.getuser()) for e in log)
    assert any(e["action"] == "rotate" and e["outcome"] == "ok" for e in log)
    found = hits(json.dumps(log).encode(), needles_for(password))
    assert not found, f"{found} in the audit log"


def test_status_and_rotate_due(pw_master, desks, roots):
    status = data_of(salt_run(pw_master, "password.status", "desk-pw-*", ACCOUNT))
    assert status["due"] == {DESKS[1]: "never escrowed"}
    assert status["ok"] == [DESKS[0]]
    assert status["machines"][DESKS[0]]["max_age_days"] == 30
    result = data_of(salt_run(pw_master, "password.rotate_due", "desk-pw-*", ACCOUNT))
    assert list(result["rotated"]) == [DESKS[1]] and result["due"] == {DESKS[1]: "never escrowed"}
    assert shadow_hash(roots[DESKS[1]]).startswith("$6$")
    status = data_of(salt_run(pw_master, "password.status", "desk-pw-*", ACCOUNT))
    assert status["due"] == {} and status["ok"] == list(DESKS)
    # nothing due: nothing rotated
    assert data_of(salt_run(pw_master, "password.rotate_due", "desk-pw-*", ACCOUNT))["rotated"] == {}
    # a target that matches nothing is an error, not a silent success
    nothing = salt_run(pw_master, "password.rotate", "no-such-desk-*", ACCOUNT, check=False)
    assert nothing.returncode == 1 and "no minion matched" in data_of(nothing)["error"]
    # a stricter age makes both due
    strict = data_of(salt_run(pw_master, "password.status", "desk-pw-*", ACCOUNT, "max_age_days=0.00001"))
    assert sorted(strict["due"]) == list(DESKS)


def test_a_return_for_another_escrow_key_is_refused(pw_master, desks, roots, keys):
    """
    The master's escrow key changes under the minions' pillar: the minion refuses to
    rotate (nothing changed), and a sealed return it kept is refused by the master.
    """
    desk = DESKS[1]
    configured = pathlib.Path(pw_master.config["deskfleet"]["vm"]["passwords"]["escrow_pubkey_file"])
    original = configured.read_bytes()
    before = shadow_hash(roots[desk])
    configured.write_bytes(keys["wrong_pub"].read_bytes())
    try:
        rotated = salt_run(pw_master, "password.rotate", desk, ACCOUNT, check=False)
        result = data_of(rotated)
        assert rotated.returncode == 1 and result["rotated"] == {}
        assert "nothing changed" in result["failed"][desk]
        assert shadow_hash(roots[desk]) == before
        collected = salt_run(pw_master, "password.collect", desk, ACCOUNT, check=False)
        result = data_of(collected)
        assert collected.returncode == 1 and "fingerprint mismatch" in result["refused"][desk]
    finally:
        configured.write_bytes(original)
    log = data_of(salt_run(pw_master, "password.audit", f"vm={desk}", "limit=2"))
    assert [(e["action"], e["outcome"]) for e in log] == [("collect", "refused"), ("rotate", "failed")]
    assert log[0]["key_fingerprint"] == keys["wrong_fp"]
    # with the key restored, collecting the kept return finds it already escrowed
    result = data_of(salt_run(pw_master, "password.collect", desk, ACCOUNT))
    assert result["rotated"][desk]["already_escrowed"] is True
