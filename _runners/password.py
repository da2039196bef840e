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

import contextlib
import functools
import getpass
import logging
import os
import re
import sys
import time
import types

from salt.exceptions import SaltClientError

log = logging.getLogger(__name__)

__virtualname__ = "password"

try:
    import deskfleet_salt as glue
    import deskfleet_store as store
    import escrow
    import escrow_check
    import escrow_rotation
    import escrow_store

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"password: deskfleet utils not importable (utils_dirs?): {_exc}"
    store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error

DEFAULT_PUBKEY_FILE = "/etc/deskfleet/password-escrow.pub"
DEFAULT_ACCOUNT = "localadmin"  # escrow.DEFAULT_ACCOUNT
# salt-run as installed, or as pytest-salt-factories generates it
SALT_RUN_CLI = re.compile(r"(cli_)?salt[-_]run(\.py)?")


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


def _settings():
    return glue.conf(__opts__, "vm", "passwords")


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


def _outcome(result):
    """Exit 1 (``error`` names it) on an error or any machine refused, failed, in doubt or silent."""
    problems = [f"{k}: {', '.join(sorted(result[k]))}" for k in ("refused", "failed", "in_doubt", "no_return")
                if result.get(k)]
    if "error" not in result and not problems:
        return result
    return glue.error(__context__, result.pop("error", None) or "; ".join(problems)[:1000], **result)


def _store():
    """The escrow store, closed when the ``with`` ends."""
    return contextlib.closing(escrow_store.open_store(__opts__))


def _audit(conn, **fields):
    return escrow_store.add_audit(conn, who=_who(), salt_user=_salt_user(), jid=_jid(), **fields)


def _gather(client, timeout, target, fun, arg, kwarg, tgt_type):
    """(publication data, {vm: (return, retcode)}) of one job."""
    pub, found = None, {}
    for chunk in client.cmd_iter(target, fun, arg=arg, kwarg=kwarg, tgt_type=tgt_type, timeout=timeout,
                                 yield_pub_data=True):  # fmt: skip
        if pub is None:
            pub = chunk or {}
            continue
        for vm, data in chunk.items():
            ret = data.get("ret") if isinstance(data, dict) else data
            found[vm] = (ret, data.get("retcode", 0) if isinstance(data, dict) else 0)
    return pub or {}, found


def _rotate(conn, target, account, tgt_type, timeout):
    """Two phases (``_utils/escrow_rotation.py``): escrowed ``pending`` first, then set, then ``in_force``."""
    import salt.client  # pylint: disable=import-outside-toplevel

    fp = escrow.fingerprint(_escrow_key())
    keep = int(_settings().get("history", escrow_store.DEFAULT_HISTORY))
    with salt.client.get_local_client(mopts=__opts__) as client:
        run = escrow_rotation.Rotation(conn, functools.partial(_gather, client, timeout), _audit, account, fp, keep)
        result = run.run(target, tgt_type)
    if not result["jid"]:
        result["error"] = f"nothing published: no minion matched {target!r}, or the master refused the job"
    if run.fault:
        result.update(store.store_fault(globals(), run.fault, "password.rotate"))
    return _outcome(result)


def _collect(conn, target, account, tgt_type, timeout):
    import salt.client  # pylint: disable=import-outside-toplevel

    fp = escrow.fingerprint(_escrow_key())
    keep = int(_settings().get("history", escrow_store.DEFAULT_HISTORY))
    rotated, refused, failed = {}, {}, {}
    with salt.client.get_local_client(mopts=__opts__) as client:
        pub, found = _gather(client, timeout, target, "local_password.last", [account], {}, tgt_type)
    for vm, (ret, retcode) in sorted(found.items()):
        error = escrow_rotation.error_of(ret, retcode)
        if error:
            failed[vm] = error
            _audit(conn, action="collect", vm=vm, account=account, outcome="failed", reason=error)
            continue
        try:
            row = escrow_check.check_return(ret, vm, account, fp)
        except escrow.Refused as exc:
            refused[vm] = f"{exc}; the machine may have changed its password: fix and rotate again"
            _audit(conn, action="collect", vm=vm, account=account, outcome="refused", reason=str(exc),
                   key_fingerprint=fp)  # fmt: skip
            continue
        known = escrow_store.escrowed_at(conn, vm, account, row["rotated_at"])
        if known and known["state"] == "in_force":
            rotated[vm] = {"rotated_at": row["rotated_at"], "already_escrowed": True}
            continue
        if known:  # the machine committed a rotation the master had left in doubt
            escrow_store.mark(conn, known["id"], "in_force", verified=ret.get("verified"))
            escrow_id = known["id"]
        else:
            escrow_id = escrow_store.add_escrow(conn, row, jid=pub.get("jid"), keep=keep)
        _audit(conn, action="collect", vm=vm, account=account, outcome="ok", escrow_id=escrow_id, key_fingerprint=fp)
        rotated[vm] = {"rotated_at": row["rotated_at"], "escrow_id": escrow_id, "verified": ret.get("verified")}
    result = {"jid": pub.get("jid"), "account": account, "fingerprint": fp, "rotated": rotated, "refused": refused,
              "failed": failed, "no_return": sorted(set(pub.get("minions") or []) - set(found))}
    if not pub.get("jid"):
        result["error"] = f"nothing published: no minion matched {target!r}, or the master refused the job"
    return _outcome(result)


def _with_store(body, target, account, tgt_type, timeout):
    """``body(conn, target, account, tgt_type, timeout)`` with the account checked; escrow and Salt faults returned."""
    try:
        account = escrow.check_account(account)
        with _store() as conn:
            return body(conn, target, account, tgt_type, timeout)
    except (escrow.EscrowError, SaltClientError) as exc:
        return glue.error(__context__, str(exc))


@store.guard
def rotate(target, account=DEFAULT_ACCOUNT, tgt_type="glob", timeout=120):
    """
    Rotate the local password of ``account`` on the targeted machines now, in
    two phases: each machine seals a new password, the master escrows it
    (``pending``, on disk), and only then does the machine set it (``in_force``).
    A return sealed to any key but this master's escrow key is refused (and audited).

    Returns ``rotated`` ({vm: {rotated_at, escrow_id, verified}}), ``refused``,
    ``failed`` (password unchanged), ``in_doubt`` (the set result is unknown:
    ``password.show`` lists both candidates, ``rotate_due`` repairs it),
    ``no_return`` (no answer to the first phase: nothing changed). A store fault
    adds ``error`` and ``store_fault``; exit code 1 on any of these.

    CLI Example:

    .. code-block:: bash

        salt-run password.rotate desk-0001 localadmin
        salt-run password.rotate 'desk-*' localadmin
        salt-run password.rotate deskfleet_role:desktop localadmin tgt_type=grain
    """
    return _with_store(_rotate, target, account, tgt_type, timeout)


@store.guard
def collect(target, account=DEFAULT_ACCOUNT, tgt_type="glob", timeout=60):
    """
    Fetch the last rotation each machine committed (``local_password.last``)
    and escrow any the store does not have, or confirm one left in doubt. Same
    checks as ``password.rotate``.

    CLI Example:

    .. code-block:: bash

        salt-run password.collect desk-0001 localadmin
    """
    return _with_store(_collect, target, account, tgt_type, timeout)


def _refuse(conn, vm, account, reason, **fields):
    audit_id = _audit(conn, action="read", vm=vm, account=account, outcome="refused", reason=reason, **fields)
    log.warning("password: refused a read of %s/%s by %s: %s", vm, account, _who(), reason)
    return glue.error(__context__, reason, shown=False, vm=vm, account=account, audit_id=audit_id)


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


def _show_refusal(conn, vm, account, key, escrow_id):
    """Why this read is refused before any key is opened (audited), or None."""
    if escrow_id is not None and (isinstance(escrow_id, bool) or not str(escrow_id).strip().isdigit()):
        return _refuse(conn, vm, account,
                       f"escrow_id must be a whole number from password.history, got {str(escrow_id)[:40]!r}")
    if not key:
        return _refuse(conn, vm, account, "key=/path/to/escrow-private.pem is required")
    cli = str(__opts__.get("__cli") or "")
    if not SALT_RUN_CLI.fullmatch(cli) or __opts__.get("async"):
        return _refuse(
            conn, vm, account,
            f"password.show runs only in a foreground salt-run (here: {cli or 'unknown'}"
            f"{', --async' if __opts__.get('async') else ''}): its output would not reach an operator",
        )  # fmt: skip
    return None


def _label(row):
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["rotated_at"]))
    what = {"in_force": "IN FORCE", "pending": "PENDING (set result unknown)",
            "in_doubt": "IN DOUBT (set result unknown)"}.get(row["state"], row["state"].upper())
    return f"escrow id {row['id']}, rotated {when}, {what}"


def _opened(conn, vm, account, rows, key):
    """(key fingerprint, [plaintext per row]) with the operator's key, or the audited refusal as the 2nd item."""
    path = os.path.expanduser(str(key))
    try:
        private_key = _load_operator_key(path)
    except OSError as exc:
        return None, _refuse(conn, vm, account, f"cannot read key {path}: {exc.strerror}", escrow_id=rows[0]["id"])
    except escrow.EscrowError as exc:
        return None, _refuse(conn, vm, account, f"key {path}: {exc}", escrow_id=rows[0]["id"])
    key_fp = escrow.fingerprint(private_key)
    for row in rows:
        if key_fp != row["fingerprint"]:
            return None, _refuse(
                conn, vm, account,
                f"key fingerprint mismatch: {path} is {key_fp}, the password of {vm}/{account}"
                f" (escrow id {row['id']}) is sealed to {row['fingerprint']}",
                escrow_id=row["id"], key_fingerprint=key_fp,
            )  # fmt: skip
    secrets_ = []
    for row in rows:
        try:
            secrets_.append(escrow.decrypt(private_key, row["envelope"]))
        except escrow.Refused as exc:
            return None, _refuse(conn, vm, account, str(exc), escrow_id=row["id"], key_fingerprint=key_fp)
    return key_fp, secrets_


def _print(vm, account, rows, secrets_):
    """The plaintext to this terminal only (never into the return)."""
    if len(rows) == 1:
        sys.stdout.write(secrets_[0] + "\n")
    else:
        sys.stdout.write(f"IN DOUBT: {vm}/{account} is on one of these; salt-run password.rotate_due repairs it\n")
        for row, secret in zip(rows, secrets_):
            sys.stdout.write(f"{_label(row)}: {secret}\n")
    sys.stdout.flush()


def _shown(vm, account, rows, audit_ids):
    if len(rows) == 1:
        return {"shown": True, "vm": vm, "account": account, "rotated_at": rows[0]["rotated_at"],
                "escrow_id": rows[0]["id"], "audit_id": audit_ids[0]}
    return {"shown": True, "vm": vm, "account": account, "in_doubt": True, "audit_ids": audit_ids,
            "candidates": [{"escrow_id": r["id"], "state": r["state"], "rotated_at": r["rotated_at"]} for r in rows]}


@store.guard
def show(vm, account=DEFAULT_ACCOUNT, key=None, escrow_id=None):
    """
    Decrypt the escrowed password of ``account`` on ``vm`` with the operator's
    private key and print it to this terminal (salt-run's stdout) only. The
    return, which goes to the event bus and the job cache, says only that it
    was shown. A key that is not the escrow key is refused. Every attempt is
    audited (who, when, which machine, ok or refused).

    A machine in doubt (a rotation whose set result is unknown) may be on
    either of two escrowed passwords: both are printed, one per line, each
    labelled (``escrow id N, rotated <time>, IN FORCE`` or ``PENDING``); the
    return says ``in_doubt: true`` and lists them.

    key
        path to the escrow PRIVATE key (PEM; an encrypted key asks for its
        passphrase on the terminal)
    escrow_id
        an older escrowed password from ``password.history`` (e.g. for a machine
        restored from a backup); default the one in force

    Only from the ``salt-run`` command line in the foreground: run by the master
    (API, reactor, ``--async``) the plaintext would go to the master's stdout.

    CLI Example:

    .. code-block:: bash

        salt-run password.show desk-0001 localadmin key=~/.deskfleet/escrow.pem
        salt-run password.show desk-0001 localadmin key=~/.deskfleet/escrow.pem escrow_id=42
    """
    try:
        account = escrow.check_account(account)
    except escrow.EscrowError as exc:
        return glue.error(__context__, str(exc), shown=False)
    vm = str(vm)
    with _store() as conn:
        refused = _show_refusal(conn, vm, account, key, escrow_id)
        if refused:
            return refused
        if escrow_id is not None:
            rows = [r for r in [escrow_store.escrowed(conn, vm, account, int(str(escrow_id).strip()))] if r]
        else:
            rows = escrow_store.candidates(conn, vm, account)
        if not rows:
            which = f"escrow id {escrow_id}" if escrow_id is not None else "any escrowed password"
            return _refuse(conn, vm, account, f"no {which} for {account} on {vm}")
        key_fp, secrets_ = _opened(conn, vm, account, rows, key)
        if key_fp is None:
            return secrets_  # the audited refusal
        # Audited before it is revealed: no audit record, no password.
        audit_ids = [
            _audit(conn, action="read", vm=vm, account=account, outcome="ok", escrow_id=row["id"],
                   key_fingerprint=key_fp, reason=None if len(rows) == 1 else "in doubt: every candidate shown")
            for row in rows
        ]  # fmt: skip
    try:
        _print(vm, account, rows, secrets_)
    finally:
        del secrets_
    log.info("password: %s read the password of %s/%s (escrow id %s, audit id %s)", _who(), vm, account,
             [r["id"] for r in rows], audit_ids)  # fmt: skip
    return _shown(vm, account, rows, audit_ids)


def _due(target, account, tgt_type, max_age_days):
    """Which targeted machines need a rotation (``password.status`` without its exit code)."""
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    account = escrow.check_account(account)
    in_doubt_after = float(_settings().get("in_doubt_after", escrow_store.DEFAULT_IN_DOUBT_AFTER))
    with _store() as conn:
        try:
            current = escrow.fingerprint(_escrow_key())
            key_error = None
        except escrow.EscrowError as exc:
            current, key_error = None, str(exc)
        minions = salt.utils.minions.CkMinions(__opts__).check_minions(target, tgt_type)["minions"]
        machines = escrow_store.due(conn, minions, account, time.time(), current, max_age_days, in_doubt_after)
    result = {
        "account": account,
        "checked": len(machines),
        "due": {vm: m["reason"] for vm, m in machines.items() if m["due"]},
        "in_doubt": {vm: m["in_doubt"] for vm, m in machines.items() if m.get("in_doubt")},
        "ok": sorted(vm for vm, m in machines.items() if not m["due"]),
        "machines": machines,
    }
    if key_error:
        result["escrow_key_error"] = key_error
    return result


@store.guard
def status(target="*", account=DEFAULT_ACCOUNT, tgt_type="glob",
           max_age_days=None):  # fmt: skip
    """
    Which targeted machines (accepted minions) need a rotation: in doubt (a
    rotation's set result is unknown, or it has been pending longer than
    ``deskfleet:vm:passwords:in_doubt_after``, default 600 s), never escrowed,
    older than their policy's ``max_age_days`` (LAPS default 30; or the
    ``max_age_days`` given here), or sealed to an escrow key that is no longer
    this master's.

    Returns ``due`` ({vm: reason}), ``in_doubt`` ({vm: [escrow ids]}; exit code 1
    when any), ``ok`` (list) and ``machines`` (details).

    CLI Example:

    .. code-block:: bash

        salt-run password.status
        salt-run password.status 'desk-*' localadmin max_age_days=7
    """
    try:
        return _outcome(_due(target, account, tgt_type, max_age_days))
    except escrow.EscrowError as exc:
        return glue.error(__context__, str(exc))


@store.guard
def rotate_due(target="*", account=DEFAULT_ACCOUNT, tgt_type="glob",
               max_age_days=None, timeout=120):  # fmt: skip
    """
    Rotate the machines ``password.status`` lists as due, and only those; a
    machine in doubt gets a new rotation, which supersedes both candidates.
    Meant for a master schedule (daily) as well as by hand.

    CLI Example:

    .. code-block:: bash

        salt-run password.rotate_due
        salt-run password.rotate_due 'desk-*' localadmin max_age_days=7
    """
    try:
        found = _due(target, account, tgt_type, max_age_days)  # machines in doubt are what this repairs
    except escrow.EscrowError as exc:
        return glue.error(__context__, str(exc))
    if not found["due"]:
        return {"account": account, "due": {}, "rotated": {}, "refused": {}, "failed": {}, "in_doubt": {},
                "no_return": []}
    result = rotate(sorted(found["due"]), account, tgt_type="list", timeout=timeout)
    result["due"] = found["due"]
    return result


@store.guard
def history(vm, account=DEFAULT_ACCOUNT):
    """
    The escrowed passwords kept for ``vm``/``account``, newest first: ids,
    rotation times, key fingerprints, ``state`` (pending, in_force, failed,
    in_doubt, superseded), ``current`` (the one in force), no ciphertext.

    CLI Example:

    .. code-block:: bash

        salt-run password.history desk-0001 localadmin
    """
    with _store() as conn:
        try:
            return escrow_store.history(conn, str(vm), escrow.check_account(account))
        except escrow.EscrowError as exc:
            return glue.error(__context__, str(exc))


@store.guard
def audit(vm=None, action=None, limit=50):
    """
    The audit log, newest first: who (OS user of salt-run), when, which machine
    and account, ``read``/``rotate``/``collect``, ``ok``/``refused``/``failed``, why.

    CLI Example:

    .. code-block:: bash

        salt-run password.audit
        salt-run password.audit vm=desk-0001 action=read
    """
    with _store() as conn:
        return escrow_store.audit_log(conn, None if vm is None else str(vm), action, int(limit))
