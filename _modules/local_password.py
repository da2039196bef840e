"""
Local administrator password rotation in the style of Windows LAPS.

Run by the vm master's ``password`` runner. On this machine it:

1. reads the policy and the escrow PUBLIC key from pillar (``deskfleet:passwords``);
2. generates a random password with :mod:`secrets`;
3. seals it to the escrow key (AES-256-GCM, key wrapped with RSA-OAEP-SHA256);
4. sets it on the local account: on Windows with Salt's ``user.setpassword``
   (win_useradd, in-process through win32net) and checks it with
   ``shadow.verify_password``; on Linux by feeding ``account:$6$hash`` to
   ``chpasswd -e --root <root>`` on STDIN;
5. returns only the ciphertext, the key fingerprint and metadata.

The plaintext never leaves this function: not in the return, not in a log
line, not in a process argument list (``cmd.run`` is not used: it logs its
arguments), and no exception raised here carries it.

Pillar (see ``pillar/vm.passwords.pillar.example``)::

    deskfleet:
      passwords:
        accounts: [localadmin]        # the only accounts this module will touch
        policy: {length: 14, classes: [upper, lower, digit, special], max_age_days: 30}
        escrow_pubkey: |
          -----BEGIN PUBLIC KEY-----
          ...

Linux root: ``deskfleet:passwords:linux_root`` from the minion config, else pillar,
else ``/`` (lab minions point it at a throwaway root).
"""

import json
import logging
import os
import subprocess
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "local_password"

try:
    import deskfleet_salt as glue
    import escrow

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils not synced to this minion
    glue, _MISSING = None, f"local_password: deskfleet utils not synced (saltutil.sync_utils): {_exc}"

LOCK_STALE_SECONDS = 600
CHPASSWD_TIMEOUT = 60


def __virtual__():
    if glue is None:
        return (False, _MISSING)
    try:
        escrow._crypto()  # pylint: disable=protected-access
    except ImportError as exc:  # pragma: no cover - cryptography ships with Salt 3008
        return (False, f"local_password: the cryptography library is missing: {exc}")
    kernel = __grains__.get("kernel")
    if kernel not in ("Windows", "Linux"):
        return (False, f"local_password: Windows and Linux only (kernel is {kernel!r})")
    return glue.virtual(__virtualname__, __opts__)


def _settings():
    """Pillar ``deskfleet:passwords`` (accounts, policy, escrow key)."""
    return glue.conf(__pillar__, "passwords")


def _allowed_accounts(settings):
    accounts = settings.get("accounts") or [escrow.DEFAULT_ACCOUNT]
    if isinstance(accounts, str):
        accounts = [accounts]
    return [escrow.check_account(a) for a in accounts]


def _linux_root(settings):
    mine = glue.conf(__opts__, "passwords").get("linux_root")
    root = mine or settings.get("linux_root") or "/"
    if not isinstance(root, str) or not os.path.isabs(root):
        raise CommandExecutionError(f"local_password: linux_root must be an absolute path, got {root!r}")
    if not os.path.isfile(os.path.join(root, "etc", "shadow")):
        raise CommandExecutionError(f"local_password: no etc/shadow under linux_root {root}")
    return root


def _passwd_has(root, account):
    with open(os.path.join(root, "etc", "passwd"), encoding="utf-8", errors="replace") as fh:
        return any(line.split(":", 1)[0] == account for line in fh)


def _shadow_hash(root, account):
    with open(os.path.join(root, "etc", "shadow"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.rstrip("\n").split(":")
            if fields[0] == account and len(fields) > 1:
                return fields[1]
    return None


def _scrub(text, *secrets_):
    """``text`` with every secret replaced, cut short: for messages that leave this module."""
    text = str(text)
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text[:300]


def _lock_path(account):
    return os.path.join(__opts__["cachedir"], "deskfleet", "local_password", f"{account}.lock")


class _Lock:
    """One rotation per account at a time on this machine (O_EXCL file, works on Windows too)."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.write(self.fd, str(os.getpid()).encode())
                return self
            except FileExistsError:
                try:
                    age = time.time() - os.path.getmtime(self.path)
                except OSError:
                    continue
                if age < LOCK_STALE_SECONDS:
                    raise CommandExecutionError(
                        "local_password: another rotation of this account is running on this machine"
                    ) from None
                os.unlink(self.path)
        raise CommandExecutionError("local_password: could not take the rotation lock")

    def __exit__(self, *exc):
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return False


def _set_windows(account, password):
    """Salt's win_useradd sets it in-process (win32net); win_shadow checks it with a network logon."""
    if __salt__["user.setpassword"](account, password) is not True:
        raise CommandExecutionError(f"local_password: user.setpassword failed for {account} (see the minion log)")
    if "shadow.verify_password" not in __salt__:
        return None
    try:
        return __salt__["shadow.verify_password"](account, password) is True
    except CommandExecutionError as exc:
        # e.g. the account is locked: the password is set, only the check could not run
        log.warning("local_password: could not verify the new password of %s: %s", account, _scrub(exc, password))
        return None


def _chpasswd():
    import salt.utils.path  # pylint: disable=import-outside-toplevel

    return salt.utils.path.which("chpasswd") or "/usr/sbin/chpasswd"


def _set_linux(root, account, password):
    """``account:$6$…`` on chpasswd's STDIN, never in argv; then read the hash back."""
    hashed = escrow.sha512_crypt(password)
    argv = [_chpasswd(), "-e", "--root", root]
    proc = subprocess.run(  # noqa: S603 - fixed argv, the secret goes through stdin
        argv,
        input=f"{account}:{hashed}\n".encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=CHPASSWD_TIMEOUT,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise CommandExecutionError(
            f"local_password: chpasswd exited {proc.returncode}: {_scrub(err, password, hashed)}"
        )
    return _shadow_hash(root, account) == hashed


def _cache_path(account):
    return os.path.join(__opts__["cachedir"], "deskfleet", "local_password", f"{account}.json")


def _remember(account, ret):
    """Keep the last sealed return so the master can collect it if this job's return is lost."""
    path = _cache_path(account)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(ret, fh)
    os.replace(tmp, path)


def _begin(account, expect_fingerprint):
    """Validate everything before anything changes: (account, policy, escrow key, fingerprint, windows, root)."""
    settings = _settings()
    try:
        allowed = _allowed_accounts(settings)
        account = escrow.check_account(account or allowed[0])
        if account not in allowed:
            raise escrow.EscrowError(
                f"account {account!r} is not in pillar deskfleet:passwords:accounts ({', '.join(allowed)})"
            )
        pol = escrow.policy_from(settings.get("policy"))
        public_key = escrow.load_public_key(settings.get("escrow_pubkey"))
    except escrow.EscrowError as exc:
        raise CommandExecutionError(f"local_password: {exc}") from None
    fingerprint = escrow.fingerprint(public_key)
    if expect_fingerprint is not None and expect_fingerprint != fingerprint:
        raise CommandExecutionError(
            f"local_password: pillar escrow key {fingerprint} is not the expected {str(expect_fingerprint)[:64]};"
            " nothing changed"
        )
    windows = __grains__.get("kernel") == "Windows"
    if windows:
        if not __salt__["user.info"](account):
            raise CommandExecutionError(f"local_password: no local account {account} on this machine")
        root = None
    else:
        root = _linux_root(settings)
        if not _passwd_has(root, account):
            raise CommandExecutionError(f"local_password: no account {account} in {root}/etc/passwd")
    return account, pol, public_key, fingerprint, windows, root


def _seal(account, pol, public_key, fingerprint, windows, password):
    """The sealed return for the master: ciphertext + metadata, never the password."""
    rotated_at = round(time.time(), 3)
    aad = {"vm": __opts__["id"], "account": account, "rotated_at": rotated_at}
    return {
        "account": account,
        "rotated_at": rotated_at,
        "length": pol["length"],
        "max_age_days": pol["max_age_days"],
        "fingerprint": fingerprint,
        "ciphertext": escrow.encrypt(public_key, password, aad),
        "verified": None,
        "platform": "windows" if windows else "linux",
    }


def _apply(account, password, windows, root):
    """Set ``password``; any failure comes out scrubbed of it."""
    try:
        return _set_windows(account, password) if windows else _set_linux(root, account, password)
    except CommandExecutionError as exc:
        raise CommandExecutionError(_scrub(exc, password)) from None
    except Exception as exc:  # pylint: disable=broad-except
        # never let an exception (message, chained context) carry the password
        raise CommandExecutionError(
            f"local_password: setting the password of {account} failed: {type(exc).__name__}: {_scrub(exc, password)}"
        ) from None


def _done(account, ret):
    try:
        _remember(account, ret)
    except OSError as exc:
        log.warning("local_password: could not keep the sealed return of %s: %s", account, exc)
    log.info("local_password: rotated the password of %s (length %d, sealed to %s, verified %s)",
             account, ret["length"], ret["fingerprint"][:16], ret["verified"])  # fmt: skip


def rotate(account=None, expect_fingerprint=None):
    """
    Generate, escrow and set a new password for a local account in one step.
    Returns only the sealed password (``ciphertext``), the escrow key's
    ``fingerprint`` and metadata: ``account``, ``rotated_at``, ``length``,
    ``max_age_days``, ``verified``, ``platform``. The vm master's
    ``password.rotate`` runner uses ``prepare`` + ``commit`` instead, so the
    escrow holds a password before the machine uses it; called alone the new
    password is lost unless collected with ``local_password.last``.

    account
        local account, one of pillar ``deskfleet:passwords:accounts``
        (default: the first of them, ``localadmin``)
    expect_fingerprint
        the escrow key the caller trusts (sha256 of its DER public key); if the
        pillar key differs, nothing is changed

    CLI Example:

    .. code-block:: bash

        salt desk-0001 local_password.rotate localadmin
    """
    account, pol, public_key, fingerprint, windows, root = _begin(account, expect_fingerprint)
    with _Lock(_lock_path(account)):
        password = escrow.generate(pol, account)
        try:
            # sealed before anything changes: if escrow fails, the old password stays
            ret = _seal(account, pol, public_key, fingerprint, windows, password)
            ret["verified"] = _apply(account, password, windows, root)
        finally:
            del password
        _done(account, ret)
    return ret


def _pending_path(account):
    return os.path.join(__opts__["cachedir"], "deskfleet", "local_password", f"{account}.pending.json")


def _minion_key():
    """This minion's own RSA key pair (Salt's minion.pem): seals a prepared password while it waits."""
    with open(os.path.join(__opts__["pki_dir"], "minion.pem"), "rb") as fh:
        return escrow.load_private_key(fh.read())


def prepare(account=None, expect_fingerprint=None):
    """
    Phase 1 of a rotation: generate a password and seal it to the escrow key
    (returned, as ``rotate`` returns it) and to this minion's own key (kept
    here until ``commit``). The account is NOT changed: the master stores the
    ciphertext durably first, then calls ``local_password.commit``.

    CLI Example:

    .. code-block:: bash

        salt desk-0001 local_password.prepare localadmin
    """
    account, pol, public_key, fingerprint, windows, _ = _begin(account, expect_fingerprint)
    try:
        own = _minion_key()
    except (OSError, escrow.EscrowError) as exc:
        raise CommandExecutionError(f"local_password: cannot read this minion's key: {exc}") from None
    with _Lock(_lock_path(account)):
        password = escrow.generate(pol, account)
        try:
            ret = _seal(account, pol, public_key, fingerprint, windows, password)
            aad = dict(ret["ciphertext"]["aad"], purpose="prepared")
            local = escrow.encrypt(own.public_key(), password, aad)
        finally:
            del password
        path = _pending_path(account)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"ret": ret, "local": local}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return ret


def commit(account=None, rotations=None):
    """
    Phase 2 of a rotation: set the password ``prepare`` sealed, if it is the
    rotation the master escrowed (``rotations``: ``{minion id: rotated_at}``).
    Idempotent: a rotation already committed returns ``committed: True`` again.
    Returns ``account``, ``rotated_at``, ``verified``, ``committed``.

    CLI Example:

    .. code-block:: bash

        salt desk-0001 local_password.commit localadmin rotations='{"desk-0001": 1767225600.123}'
    """
    settings = _settings()
    try:
        account = escrow.check_account(account or _allowed_accounts(settings)[0])
    except escrow.EscrowError as exc:
        raise CommandExecutionError(f"local_password: {exc}") from None
    wanted = (rotations or {}).get(__opts__["id"]) if isinstance(rotations, dict) else None
    if isinstance(wanted, bool) or not isinstance(wanted, (int, float)):
        raise CommandExecutionError(f"local_password: rotations names no rotation for {__opts__['id']}")
    with _Lock(_lock_path(account)):
        try:
            with open(_pending_path(account), encoding="utf-8") as fh:
                pending = json.load(fh)
        except FileNotFoundError:
            pending = None
        if pending is None or pending["ret"]["rotated_at"] != wanted:
            done = last(account)
            if isinstance(done, dict) and done.get("rotated_at") == wanted:
                return {"account": account, "rotated_at": wanted, "verified": done.get("verified"), "committed": True}
            raise CommandExecutionError(f"local_password: no prepared rotation of {account} at {wanted}; nothing changed")
        ret = pending["ret"]
        windows = ret["platform"] == "windows"
        root = None if windows else _linux_root(settings)
        try:
            password = escrow.decrypt(_minion_key(), pending["local"])
        except (OSError, escrow.EscrowError) as exc:
            raise CommandExecutionError(f"local_password: cannot open the prepared password: {exc}") from None
        try:
            ret["verified"] = _apply(account, password, windows, root)
        finally:
            del password
        _done(account, ret)
        os.unlink(_pending_path(account))
    return {"account": account, "rotated_at": wanted, "verified": ret["verified"], "committed": True}


def last(account=None):
    """
    The sealed return of the last rotation on this machine (ciphertext and
    metadata only), for the master to collect when a job's return was lost.

    CLI Example:

    .. code-block:: bash

        salt desk-0001 local_password.last localadmin
    """
    settings = _settings()
    try:
        account = escrow.check_account(account or _allowed_accounts(settings)[0])
    except escrow.EscrowError as exc:
        raise CommandExecutionError(f"local_password: {exc}") from None
    try:
        with open(_cache_path(account), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return glue.error(__context__, f"no rotation of {account} recorded on this machine")


def policy():
    """
    The effective policy on this machine: accounts, length, classes, max age,
    estimated entropy and the escrow key fingerprint (no secrets).

    CLI Example:

    .. code-block:: bash

        salt desk-0001 local_password.policy
    """
    settings = _settings()
    try:
        pol = escrow.policy_from(settings.get("policy"))
        accounts = _allowed_accounts(settings)
    except escrow.EscrowError as exc:
        return glue.error(__context__, str(exc))
    try:
        key = escrow.fingerprint(escrow.load_public_key(settings.get("escrow_pubkey")))
    except escrow.EscrowError as exc:
        key = None
        key_error = str(exc)
    else:
        key_error = None
    found = dict(pol, accounts=accounts, entropy_bits=round(escrow.entropy_bits(pol), 1), fingerprint=key)
    if key_error:
        found["escrow_key_error"] = key_error
    return found
