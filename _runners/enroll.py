"""
Per-device enrollment of thin clients, on the tc master.

Ops issue one token per device (``enroll.issue``), bound to its minion id and
DMI serial; the device turns it into a proof bound to its own key
(``tools/deskfleet-enroll``) and the ``enroll`` engine accepts the key when
the proof holds, consuming the token. Use ``enroll.pending`` and
``enroll.accept`` instead of ``salt-key -L``/``salt-key -a``: they show the key
fingerprint and refuse a key that is not the one the device shows.

Settings: ``deskfleet:tc:enroll`` (``id_pattern``, ``token_ttl``, ``pending_ttl``).
A token never appears in a return (returns go to the job cache and the event
bus): ``issue`` writes it to a file or prints it to this terminal only.
"""

import getpass
import logging
import os
import re
import sys
import time

log = logging.getLogger(__name__)

__virtualname__ = "enroll"
__func_alias__ = {"list_": "list"}

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import enroll_guard
    import enroll_keys
    import enroll_store
    import enrollment

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"enroll: deskfleet utils not importable (utils_dirs?): {_exc}"

SALT_RUN_CLI = re.compile(r"(cli_)?salt[-_]run(\.py)?")
TOKEN_STATES = ("issued", "consumed", "revoked", "expired")


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="tc") if glue else (False, _MISSING)


def _error(message, **extra):
    return glue.error(__context__, message, **extra)


def _who():
    """The OS user behind this salt-run (the sudo caller, not root)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _settings():
    return enrollment.settings(__opts__, "tc")


def _fire(tag, data):
    glue.alert(__opts__, tag, data)


class _Session:
    """Store + keys + guard for one runner call."""

    def __enter__(self):
        self.settings = _settings()
        self.conn = enroll_store.open_store(__opts__, "tc")
        self.keys = enroll_keys.Keys(__opts__)
        self.guard = enroll_guard.Guard(self.conn, self.keys, self.settings, fire=_fire, actor=_who())
        return self

    def __exit__(self, *exc):
        self.conn.close()
        self.keys.close()
        return False


def issue(minion_id, serial=None, path=None, ttl=None, replace=False):
    """
    Issue a single-use enrollment token for one thin client. The token is
    written to ``path`` (mode 0600, never overwritten) or, without ``path``,
    printed to this terminal only (foreground salt-run); the return shows only
    its ``token_id``. One open token per id.

    minion_id
        the device's minion id; must match ``deskfleet:tc:enroll:id_pattern``
    serial
        the device's DMI serial (``/sys/class/dmi/id/product_serial``), required
    ttl
        seconds the token stays valid (default ``token_ttl``, 7 days)
    replace
        re-key an enrolled seat (re-imaged device); refused otherwise while the id has an accepted key

    CLI Example:

    .. code-block:: bash

        salt-run enroll.issue tc-lon-0042 serial=TC004242 path=/root/tokens/tc-lon-0042
        salt-run enroll.issue tc-lon-0042 serial=TC004242 replace=True
    """
    try:
        with _Session() as s:
            minion_id = enrollment.check_id(minion_id, s.settings["id_re"])
            serial = enrollment.check_serial(serial)
            ttl = float(ttl) if ttl is not None else s.settings["token_ttl"]
            if not 0 < ttl <= 366 * 86400:
                raise enrollment.EnrollError(f"ttl {ttl} must be between 1 s and a year")
            key = s.keys.get(minion_id)
            if key and key.get("state") == "accepted" and not replace:
                raise enrollment.EnrollError(f"{minion_id} is enrolled (accepted key); replace=True re-keys it")
            to_file = path is not None
            cli = str(__opts__.get("__cli") or "")
            if not to_file and (not SALT_RUN_CLI.fullmatch(cli) or __opts__.get("async")):
                raise enrollment.EnrollError("without path=, issue runs only in a foreground salt-run (the token is printed)")
            if to_file and os.path.lexists(os.path.expanduser(str(path))):
                raise enrollment.EnrollError(f"path {path} exists; tokens are never overwritten")
            token, row = enroll_store.issue(s.conn, time.time(), minion_id, serial, _who(), ttl, replace=bool(replace))
    except (enrollment.EnrollError, ValueError, TypeError) as exc:
        return _error(str(exc), id=str(minion_id)[:128])
    try:
        if to_file:
            deskfleet_store.write_atomic(os.path.expanduser(str(path)), token + "\n", mode=0o600)
        else:
            sys.stdout.write(token + "\n")
            sys.stdout.flush()
    finally:
        del token
    _fire(enroll_guard.TAG + "issued", {"id": minion_id, "token_id": row["token_id"], "serial": serial})
    return dict(row, path=str(path) if to_file else "printed to this terminal")


def list_(state=None, minion_id=None):
    """
    Tokens (never their secret): id, serial, who issued them and when, expiry,
    state (issued / consumed / revoked / expired) and, once consumed, the key
    fingerprint that used it.

    CLI Example:

    .. code-block:: bash

        salt-run enroll.list
        salt-run enroll.list state=issued
        salt-run enroll.list minion_id=tc-lon-0042
    """
    if state is not None and state not in TOKEN_STATES:
        return _error(f"state {state!r} must be one of {', '.join(TOKEN_STATES)}")
    with _Session() as s:
        return enroll_store.tokens(s.conn, state=state, minion_id=minion_id)


def pending():
    """
    Pending keys with fingerprint, age, seconds until they expire, whether the
    id has an open token, and what the sweep does with them; plus recent
    refusals (pre-claims, bad proofs, expired keys).

    CLI Example:

    .. code-block:: bash

        salt-run enroll.pending
    """
    with _Session() as s:
        return {"pending": s.guard.pending_report(), "recent_refusals": enroll_store.refusals(s.conn, limit=20)}


def accept(minion_id, fingerprint=None):
    """
    Accept one pending key by hand (a device without a token), only if its
    fingerprint is the one the device shows (``tools/deskfleet-enroll --show``).
    Refused for ids outside the id policy and ids with an open token (the
    device enrols with its token). Audited.

    CLI Example:

    .. code-block:: bash

        salt-run enroll.accept tc-lon-0042 fingerprint=3f:a2:...:9c
    """
    with _Session() as s:
        now = time.time()
        if not enrollment.conforming(minion_id, s.settings["id_re"]):
            return _error(f"id {str(minion_id)[:80]!r} does not match the id policy {s.settings['id_pattern']!r}")
        key = s.keys.get(minion_id)
        if not key or key.get("state") != "pending":
            return _error(f"{minion_id} has no pending key", id=minion_id)
        have = enrollment.fingerprint(key["pub"])
        if not fingerprint or str(fingerprint).strip().lower() != have:
            enroll_store.audit(s.conn, now, "accept-refused", _who(), f"fingerprint given {fingerprint!r}", minion_id, None, have)
            return _error(f"fingerprint mismatch: the pending key of {minion_id} is {have}; give fingerprint= as the device shows it",
                          id=minion_id, fingerprint=have)  # fmt: skip
        if enroll_store.open_token(s.conn, minion_id, now):
            return _error(f"{minion_id} has an open token: the device enrols with it (or enroll.revoke it first)", id=minion_id)
        s.keys.install(minion_id, key["pub"])
        enroll_store.approve(s.conn, now, minion_id, have, "manual", _who())
        enroll_store.audit(s.conn, now, "accept", _who(), "accepted by hand, fingerprint checked", minion_id, None, have)
    _fire(enroll_guard.TAG + "enrolled", {"id": minion_id, "fingerprint": have, "how": "manual"})
    return {"id": minion_id, "accepted": True, "fingerprint": have}


def revoke(minion_id):
    """
    Revoke the open token of an id (lost, mistyped serial, device not coming).

    CLI Example:

    .. code-block:: bash

        salt-run enroll.revoke tc-lon-0042
    """
    with _Session() as s:
        open_ = enroll_store.tokens(s.conn, state="issued", minion_id=str(minion_id))
        if not open_:
            return _error(f"{minion_id} has no open token", id=str(minion_id)[:128])
        for row in open_:
            enroll_store.close_token(s.conn, time.time(), row["token_id"], "revoked", _who(), detail="revoked by ops")
    return {"id": minion_id, "revoked": [r["token_id"] for r in open_]}


def audit(minion_id=None, limit=100):
    """
    The enrollment audit log, newest first: issue, enrolled, revoked, expired,
    accept, misuse (a key accepted outside deskfleet for a protected id), retire.

    CLI Example:

    .. code-block:: bash

        salt-run enroll.audit
        salt-run enroll.audit minion_id=tc-lon-0042
    """
    with _Session() as s:
        return enroll_store.audit_log(s.conn, minion_id=minion_id, limit=limit)
