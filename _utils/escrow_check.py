"""
What the vm master accepts from a machine's ``local_password`` return (master half of the
escrow; desktops never get this file): exactly the documented keys, sealed to the escrow
key the master trusts, labelled with the returning machine. Raises :class:`escrow.Refused`.
"""

import json

from escrow import DEFAULT_MAX_AGE_DAYS, MAX_LENGTH, MIN_LENGTH, Refused, check_envelope

# what local_password.rotate / prepare return: ciphertext and metadata, never a password
RETURN_KEYS = {
    "account",
    "rotated_at",
    "length",
    "max_age_days",
    "fingerprint",
    "ciphertext",
    "verified",
    "platform",
}


def check_return(ret, vm, account, expected_fingerprint):
    """
    What the vm master accepts from ``vm`` for ``account``: exactly the
    documented keys, sealed to the escrow key the master is configured with,
    and labelled (AES-GCM associated data) with this machine, account and
    rotation time. Returns the row to store, or raises :class:`Refused`.
    """
    if not isinstance(ret, dict):
        raise Refused(f"return is not a mapping: {str(ret)[:200]!r}")
    extra = set(ret) - RETURN_KEYS
    if extra:
        raise Refused(f"return carries unexpected keys: {', '.join(sorted(map(str, extra)))[:200]}")
    missing = {"account", "rotated_at", "length", "fingerprint", "ciphertext"} - set(ret)
    if missing:
        raise Refused(f"return lacks {', '.join(sorted(missing))}")
    if ret["fingerprint"] != expected_fingerprint:
        raise Refused(
            f"escrow key fingerprint mismatch: the minion sealed to {str(ret['fingerprint'])[:64]},"
            f" the master's escrow key is {expected_fingerprint}"
        )
    envelope = ret["ciphertext"]
    check_envelope(envelope)
    if envelope.get("kid") != expected_fingerprint:
        raise Refused("escrow key fingerprint mismatch inside the ciphertext")
    if ret["account"] != account:
        raise Refused(f"return is for account {str(ret['account'])[:64]!r}, not {account!r}")
    rotated_at = ret["rotated_at"]
    if isinstance(rotated_at, bool) or not isinstance(rotated_at, (int, float)) or not 0 < rotated_at < 1e11:
        raise Refused("rotated_at is not an epoch time")
    if envelope["aad"] != {"vm": vm, "account": account, "rotated_at": rotated_at}:
        raise Refused("ciphertext is labelled for another machine, account or rotation")
    length = ret["length"]
    if isinstance(length, bool) or not isinstance(length, int) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise Refused("length is not a policy length")
    max_age = ret.get("max_age_days", DEFAULT_MAX_AGE_DAYS)
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 < max_age <= 3650:
        raise Refused("max_age_days is not a number of days")
    verified = ret.get("verified")
    return {
        "vm": vm,
        "account": account,
        "rotated_at": float(rotated_at),
        "fingerprint": expected_fingerprint,
        "length": length,
        "max_age_days": float(max_age),
        "verified": None if verified is None else int(bool(verified)),
        "platform": str(ret.get("platform") or "")[:32] or None,
        "envelope": json.dumps(envelope, sort_keys=True),
    }
