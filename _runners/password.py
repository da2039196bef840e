"""
Local administrator passwords of the fleet, LAPS style, on the vm master.

Each machine generates its own password (``local_password.rotate``), seals it
to the escrow PUBLIC key and returns only the ciphertext. This runner stores
every ciphertext (with history) in the deskfleet store and decrypts one only
in ``password.show``, with the private key the operator supplies, printing the
password to the operator's terminal and never into a return (returns land on
the event bus and in the job cache). Every read, allowed or refused, and every
rotation is in the audit log.

The escrow public key the master trusts: ``deskfleet:vm:passwords:escrow_pubkey_file``
(default ``/etc/deskfleet/password-escrow.pub``) or ``escrow_pubkey`` (PEM) in the
vm master's config; the pillar ``deskfleet:passwords:escrow_pubkey`` must be the
same key, or returns are refused. ``deskfleet:vm:passwords:history`` (default 12)
ciphertexts are kept per machine and account.
"""

import getpass
import logging
import os
import re
import sys
import time

from salt.exceptions import SaltClientError

log = logging.getLogger(__name__)

__virtualname__ = "password"

try:
    import escrow

    HAS_ESCROW = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    HAS_ESCROW = False
    _IMPORT_ERROR = str(_exc)

DEFAULT_PUBKEY_FILE = "/etc/deskfleet/password-escrow.pub"
DEFAULT_ACCOUNT = "localadmin"  # escrow.DEFAULT_ACCOUNT
# salt-run as installed, or as pytest-salt-factories generates it
SALT_RUN_CLI = re.compile(r"(cli_)?salt[-_]run(\.py)?")


def __virtual__():
    if not HAS_ESCROW:
        return (False, f"password: deskfleet utils not importable (utils_dirs?): {_IMPORT_ERROR}")
    role = (__opts__.get("deskfleet") or {}).get("role")
    if role != "vm":
        return (False, f"password: runs on the vm master only (deskfleet:role is {role!r})")
    return __virtualname__


def _settings():
    return ((__opts__.get("deskfleet") or {}).get("vm") or {}).get("passwords") or {}


def _escrow_key():
    """The escrow public key configured on this master (never the pillar's: that is what is checked)."""
    settings = _settings()
    pem = settings.get("escrow_pubkey")
    if not pem:
        path = settings.get("escrow_pubkey_file") or DEFAULT_PUBKEY_FILE
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                pem = fh.read()
        except OSError as exc:
            raise escrow.EscrowError(
                f"cannot read the escrow public key {path} (deskfleet:vm:passwords:escrow_pubkey_file): {exc.strerror}"
            ) from None
    return escrow.load_public_key(pem)


def _who():
    """The OS user behind this salt-run (the sudo caller, not root)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _salt_user():
    return globals().get("__user__")


def _jid():
    return globals().get("__jid__")


def _fail(result):
    __context__["retcode"] = 1
    result["retcode"] = 1
    return result


def _short(value):
    return str(value)[:500]


def _audit(conn, **fields):
    return escrow.add_audit(conn, who=_who(), salt_user=_salt_user(), jid=_jid(), **fields)


def _rotate(conn, target, account, tgt_type, timeout, fun="local_password.rotate"):
    import salt.client  # pylint: disable=import-outside-toplevel

    key = _escrow_key()
    fp = escrow.fingerprint(key)
    keep = int(_settings().get("history", escrow.DEFAULT_HISTORY))
    action = "rotate" if fun == "local_password.rotate" else "collect"
    rotated, refused, failed, seen = {}, {}, {}, set()
    kwarg = {"expect_fingerprint": fp} if fun == "local_password.rotate" else {}
    with salt.client.get_local_client(mopts=__opts__) as client:
        pub = None
        for chunk in client.cmd_iter(
            target, fun, arg=[account], kwarg=kwarg, tgt_type=tgt_type, timeout=timeout, yield_pub_data=True
        ):
            if pub is None:
                pub = chunk or {}
                continue
            for vm, data in chunk.items():
                seen.add(vm)
                ret = data.get("ret") if isinstance(data, dict) else data
                retcode = data.get("retcode", 0) if isinstance(data, dict) else 0
                if retcode or not isinstance(ret, dict) or "error" in ret:
                    failed[vm] = _short(ret.get("error") if isinstance(ret, dict) and "error" in ret else ret)
                    _audit(conn, action=action, vm=vm, account=account, outcome="failed", reason=failed[vm])
                    continue
                try:
                    row = escrow.check_return(ret, vm, account, fp)
                except escrow.Refused as exc:
                    refused[vm] = f"{exc}; the machine may have changed its password: fix and rotate again"
                    _audit(conn, action=action, vm=vm, account=account, outcome="refused", reason=str(exc),
                           key_fingerprint=fp)  # fmt: skip
                    log.warning("password: refused the escrow return of %s: %s", vm, exc)
                    continue
                if action == "collect" and escrow.escrowed_at(conn, vm, account, row["rotated_at"]):
                    rotated[vm] = {"rotated_at": row["rotated_at"], "already_escrowed": True}
                    continue
                escrow_id = escrow.add_escrow(conn, row, jid=(pub or {}).get("jid"), keep=keep)
                _audit(conn, action=action, vm=vm, account=account, outcome="ok", escrow_id=escrow_id,
                       key_fingerprint=fp)  # fmt: skip
                rotated[vm] = {"rotated_at": row["rotated_at"], "escrow_id": escrow_id, "verified": ret.get("verified")}
    no_return = sorted(set((pub or {}).get("minions") or []) - seen)
    result = {
        "jid": (pub or {}).get("jid"),
        "account": account,
        "fingerprint": fp,
        "rotated": rotated,
        "refused": refused,
        "failed": failed,
        "no_return": no_return,
    }
    if not pub or not pub.get("jid"):
        result["error"] = f"nothing published: no minion matched {target!r}, or the master refused the job"
    return _fail(result) if refused or failed or no_return or "error" in result else result


def rotate(target, account=DEFAULT_ACCOUNT, tgt_type="glob", timeout=120):
    """
    Rotate the local password of ``account`` on the targeted machines now and
    escrow each machine's ciphertext. A return sealed to any key but this
    master's escrow key is refused (and audited).

    Returns ``rotated`` ({vm: {rotated_at, escrow_id, verified}}), ``refused``,
    ``failed``, ``no_return`` (machines that did not answer in ``timeout``:
    their new password may be collected later with ``password.collect``).

    CLI Example:

    .. code-block:: bash

        salt-run password.rotate desk-0001 localadmin
        salt-run password.rotate 'desk-*' localadmin
        salt-run password.rotate deskfleet_role:desktop localadmin tgt_type=grain
    """
    try:
        account = escrow.check_account(account)
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    try:
        return _rotate(conn, target, account, tgt_type, timeout)
    except (escrow.EscrowError, SaltClientError) as exc:
        return _fail({"error": str(exc)})
    finally:
        conn.close()


def collect(target, account=DEFAULT_ACCOUNT, tgt_type="glob", timeout=60):
    """
    Fetch the last sealed rotation each machine kept (``local_password.last``)
    and escrow any the store does not have: for machines whose rotation return
    was lost (``no_return``). Same checks as ``password.rotate``.

    CLI Example:

    .. code-block:: bash

        salt-run password.collect desk-0001 localadmin
    """
    try:
        account = escrow.check_account(account)
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    try:
        return _rotate(conn, target, account, tgt_type, timeout, fun="local_password.last")
    except (escrow.EscrowError, SaltClientError) as exc:
        return _fail({"error": str(exc)})
    finally:
        conn.close()


def _refuse(conn, vm, account, reason, **fields):
    audit_id = _audit(conn, action="read", vm=vm, account=account, outcome="refused", reason=reason, **fields)
    log.warning("password: refused a read of %s/%s by %s: %s", vm, account, _who(), reason)
    return _fail({"shown": False, "vm": vm, "account": account, "error": reason, "audit_id": audit_id})


def _load_operator_key(path):
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return escrow.load_private_key(data)
    except escrow.EscrowError as exc:
        if "encrypted" not in str(exc) or not sys.stdin.isatty():
            raise
    # The passphrase is asked for here, never taken as an argument: runner
    # arguments are published on the event bus and kept in the job cache.
    return escrow.load_private_key(data, getpass.getpass(f"Passphrase for {path}: "))


def show(vm, account=DEFAULT_ACCOUNT, key=None, escrow_id=None):
    """
    Decrypt the escrowed password of ``account`` on ``vm`` with the operator's
    private key and print it to this terminal (salt-run's stdout) only. The
    return, which goes to the event bus and the job cache, says only that it
    was shown. A key that is not the escrow key is refused. Every attempt is
    audited (who, when, which machine, ok or refused).

    key
        path to the escrow PRIVATE key (PEM; an encrypted key asks for its
        passphrase on the terminal)
    escrow_id
        an older escrowed password from ``password.history`` (e.g. for a machine
        restored from a backup); default the current one

    Only from the ``salt-run`` command line in the foreground: run by the master
    (API, reactor, ``--async``) the plaintext would go to the master's stdout.

    CLI Example:

    .. code-block:: bash

        salt-run password.show desk-0001 localadmin key=~/.deskfleet/escrow.pem
        salt-run password.show desk-0001 localadmin key=~/.deskfleet/escrow.pem escrow_id=42
    """
    try:
        account = escrow.check_account(account)
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"shown": False, "error": str(exc)})
    vm = str(vm)
    try:
        if not key:
            return _refuse(conn, vm, account, "key=/path/to/escrow-private.pem is required")
        cli = str(__opts__.get("__cli") or "")
        if not SALT_RUN_CLI.fullmatch(cli) or __opts__.get("async"):
            return _refuse(
                conn, vm, account,
                f"password.show runs only in a foreground salt-run (here: {cli or 'unknown'}"
                f"{', --async' if __opts__.get('async') else ''}): its output would not reach an operator",
            )  # fmt: skip
        row = escrow.escrowed(conn, vm, account, escrow_id)
        if row is None:
            which = f"escrow id {escrow_id}" if escrow_id is not None else "any escrowed password"
            return _refuse(conn, vm, account, f"no {which} for {account} on {vm}")
        path = os.path.expanduser(str(key))
        try:
            private_key = _load_operator_key(path)
        except OSError as exc:
            return _refuse(conn, vm, account, f"cannot read key {path}: {exc.strerror}", escrow_id=row["id"])
        except escrow.EscrowError as exc:
            return _refuse(conn, vm, account, f"key {path}: {exc}", escrow_id=row["id"])
        key_fp = escrow.fingerprint(private_key)
        if key_fp != row["fingerprint"]:
            return _refuse(
                conn, vm, account,
                f"key fingerprint mismatch: {path} is {key_fp}, the password of {vm}/{account}"
                f" (escrow id {row['id']}) is sealed to {row['fingerprint']}",
                escrow_id=row["id"], key_fingerprint=key_fp,
            )  # fmt: skip
        try:
            secret = escrow.decrypt(private_key, row["envelope"])
        except escrow.Refused as exc:
            return _refuse(conn, vm, account, str(exc), escrow_id=row["id"], key_fingerprint=key_fp)
        # Audited before it is revealed: no audit record, no password.
        audit_id = _audit(
            conn, action="read", vm=vm, account=account, outcome="ok", escrow_id=row["id"], key_fingerprint=key_fp
        )
    finally:
        conn.close()
    try:
        sys.stdout.write(secret + "\n")
        sys.stdout.flush()
    finally:
        del secret
    log.info("password: %s read the password of %s/%s (escrow id %s, audit id %s)", _who(), vm, account,
             row["id"], audit_id)  # fmt: skip
    return {
        "shown": True,
        "vm": vm,
        "account": account,
        "rotated_at": row["rotated_at"],
        "escrow_id": row["id"],
        "audit_id": audit_id,
    }


def status(target="*", account=DEFAULT_ACCOUNT, tgt_type="glob",
           max_age_days=None):  # fmt: skip
    """
    Which targeted machines (accepted minions) need a rotation: never escrowed,
    older than their policy's ``max_age_days`` (LAPS default 30; or the
    ``max_age_days`` given here), or sealed to an escrow key that is no longer
    this master's.

    Returns ``due`` ({vm: reason}), ``ok`` (list) and ``machines`` (details).

    CLI Example:

    .. code-block:: bash

        salt-run password.status
        salt-run password.status 'desk-*' localadmin max_age_days=7
    """
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    try:
        account = escrow.check_account(account)
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    try:
        try:
            current = escrow.fingerprint(_escrow_key())
            key_error = None
        except escrow.EscrowError as exc:
            current, key_error = None, str(exc)
        minions = salt.utils.minions.CkMinions(__opts__).check_minions(target, tgt_type)["minions"]
        machines = escrow.due(conn, minions, account, time.time(), current, max_age_days)
    finally:
        conn.close()
    result = {
        "account": account,
        "checked": len(machines),
        "due": {vm: m["reason"] for vm, m in machines.items() if m["due"]},
        "ok": sorted(vm for vm, m in machines.items() if not m["due"]),
        "machines": machines,
    }
    if key_error:
        result["escrow_key_error"] = key_error
    return result


def rotate_due(target="*", account=DEFAULT_ACCOUNT, tgt_type="glob",
               max_age_days=None, timeout=120):  # fmt: skip
    """
    Rotate the machines ``password.status`` lists as due, and only those. Meant
    for a master schedule (daily) as well as by hand.

    CLI Example:

    .. code-block:: bash

        salt-run password.rotate_due
        salt-run password.rotate_due 'desk-*' localadmin max_age_days=7
    """
    found = status(target, account, tgt_type, max_age_days)
    if "error" in found:
        return found
    if not found["due"]:
        return {"account": account, "due": {}, "rotated": {}, "refused": {}, "failed": {}, "no_return": []}
    result = rotate(sorted(found["due"]), account, tgt_type="list", timeout=timeout)
    result["due"] = found["due"]
    return result


def history(vm, account=DEFAULT_ACCOUNT):
    """
    The escrowed passwords kept for ``vm``/``account``, newest first: ids,
    rotation times, key fingerprints, no ciphertext.

    CLI Example:

    .. code-block:: bash

        salt-run password.history desk-0001 localadmin
    """
    try:
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    try:
        return escrow.history(conn, str(vm), escrow.check_account(account))
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    finally:
        conn.close()


def audit(vm=None, action=None, limit=50):
    """
    The audit log, newest first: who (OS user of salt-run), when, which machine
    and account, ``read``/``rotate``/``collect``, ``ok``/``refused``/``failed``, why.

    CLI Example:

    .. code-block:: bash

        salt-run password.audit
        salt-run password.audit vm=desk-0001 action=read
    """
    try:
        conn = escrow.open_store(__opts__)
    except escrow.EscrowError as exc:
        return _fail({"error": str(exc)})
    try:
        return escrow.audit_log(conn, None if vm is None else str(vm), action, int(limit))
    finally:
        conn.close()
