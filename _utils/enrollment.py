"""
Per-device enrollment of minions: tokens, proofs and the decision on a key.

Why not Salt's own autosign: ``autosign_grains`` compares a grain value with
lines of a file and never looks at the minion id, so any holder of any valid
line enrols under any id, and a pending key of another public key locks the
real device out. Here nothing is auto-signed by Salt: every new key goes to
pending, and the ``enroll`` engine accepts it only when the device proves a
token issued for exactly that id, serial and public key:

    grain deskfleet_enroll = "v1:" + HMAC-SHA256(token, id | serial | key fp) + ":" + serial

The token itself never leaves the device or the master's store (not in the
auth request, not in events, logs or job returns); a proof seen on the wire is
bound to one public key, useless without its private half.

Pure logic, standard library only: the device-side tool (``tools/deskfleet-enroll``)
imports this file too.
"""

import base64
import binascii
import hashlib
import hmac
import re
import secrets

GRAIN = "deskfleet_enroll"
TOKEN_PREFIX = "dfe1-"
PROOF_VERSION = "v1"
DEFAULT_ID_PATTERN = r"tc-[a-z0-9]+(-[a-z0-9]+){0,3}"
SERIAL_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e]{0,126}[\x21-\x7e])?")
GRAIN_RE = re.compile(r"v1:([0-9a-f]{64}):(.{1,128})", re.S)
DEFAULTS = {
    "id_pattern": DEFAULT_ID_PATTERN,
    "token_ttl": 7 * 86400,  # seconds an unused token stays valid
    "pending_ttl": 3600,  # seconds a pending key stays before it is deleted
    "pending_grace": 5,  # seconds a fresh pending key of a protected id waits for its auth event
    "sweep_interval": 30,
    "reserved_pattern": "",  # ids only ever pre-seeded (vm master: pool desktops); their pending keys are deleted
}


class EnrollError(ValueError):
    """Bad input for an enrollment operation: the message names the item and field."""


def settings(opts, role):
    """``deskfleet:<role>:enroll`` over the defaults, checked."""
    conf = dict(DEFAULTS)
    conf.update((((opts.get("deskfleet") or {}).get(role) or {}).get("enroll")) or {})
    for name in ("token_ttl", "pending_ttl", "pending_grace", "sweep_interval"):
        try:
            conf[name] = float(conf[name])
        except (TypeError, ValueError) as exc:
            raise EnrollError(f"deskfleet:{role}:enroll:{name} must be a number of seconds") from exc
        if conf[name] < 0:
            raise EnrollError(f"deskfleet:{role}:enroll:{name} must not be negative")
    for name in ("id_pattern", "reserved_pattern"):
        try:
            conf[name[:-7] + "re"] = re.compile(str(conf[name])) if conf[name] else None
        except re.error as exc:
            raise EnrollError(f"deskfleet:{role}:enroll:{name} is not a regex: {exc}") from exc
    if conf["id_re"] is None:
        raise EnrollError(f"deskfleet:{role}:enroll:id_pattern must not be empty")
    return conf


def reserved(minion_id, settings_):
    return bool(settings_.get("reserved_re")) and isinstance(minion_id, str) and bool(settings_["reserved_re"].fullmatch(minion_id))


def conforming(minion_id, id_re):
    """True if ``minion_id`` is a string that fully matches the id policy."""
    return isinstance(minion_id, str) and bool(id_re.fullmatch(minion_id))


def check_id(minion_id, id_re):
    if not conforming(minion_id, id_re):
        raise EnrollError(f"id {str(minion_id)[:80]!r} does not match the id policy {id_re.pattern!r}")
    return minion_id


def check_serial(serial):
    serial = "" if serial is None else str(serial).strip()
    if not SERIAL_RE.fullmatch(serial):
        raise EnrollError(f"serial {serial[:40]!r} must be 1-128 printable characters")
    return serial


def new_token():
    """A fresh token: ``dfe1-`` + 160 random bits in base32."""
    return TOKEN_PREFIX + base64.b32encode(secrets.token_bytes(20)).decode().lower().rstrip("=")


def token_id(token):
    """The public handle of a token (what lists, audits and events show)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def fingerprint(pub_pem):
    """SHA-256 of the key's DER body, colon hex: the same whatever the PEM's line breaks."""
    text = pub_pem.decode() if isinstance(pub_pem, bytes) else str(pub_pem)
    body = "".join(line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnrollError("public key is not PEM") from exc
    if not der:
        raise EnrollError("public key is empty")
    digest = hashlib.sha256(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def proof(token, minion_id, serial, key_fp):
    message = "\0".join(("deskfleet-enroll", PROOF_VERSION, minion_id, serial, key_fp)).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def grain_value(token, minion_id, serial, pub_pem):
    """What the device puts in its ``deskfleet_enroll`` grain."""
    serial = check_serial(serial)
    return f"{PROOF_VERSION}:{proof(token, minion_id, serial, fingerprint(pub_pem))}:{serial}"


def parse_grain(value):
    """``(proof, serial)`` from a grain value, or None if it is not one (empty, wrong shape)."""
    if not isinstance(value, str):
        return None
    match = GRAIN_RE.fullmatch(value)
    if not match or not SERIAL_RE.fullmatch(match.group(2)):
        return None
    return match.group(1), match.group(2)


def verify(token_row, minion_id, pub_pem, grain):
    """
    ``(True, None)`` if ``grain`` proves ``token_row``'s token for this id and key,
    else ``(False, reason)``. The reason never quotes the token or the proof.
    """
    if token_row is None or not token_row.get("secret"):
        return False, "no open token for this id"
    parsed = parse_grain(grain)
    if parsed is None:
        return False, "no enrollment proof (grain deskfleet_enroll empty or malformed)"
    got, serial = parsed
    if serial != token_row["serial"]:
        return False, f"serial mismatch: device says {serial!r}, token {token_row['token_id']} is for {token_row['serial']!r}"
    try:
        key_fp = fingerprint(pub_pem)
    except EnrollError as exc:
        return False, str(exc)
    want = proof(token_row["secret"], minion_id, token_row["serial"], key_fp)
    if not hmac.compare_digest(want, got):
        return False, f"proof does not match token {token_row['token_id']} for this id and key"
    return True, None


def decide(act, minion_id, pub_pem, grain, key, token_row, approved_fp, id_re, is_reserved=False):
    """
    What to do about one auth event (``salt/auth`` act ``pend`` or ``denied``).

    key: the key Salt holds for the id now, ``{"state", "pub"}`` or None
    token_row: the id's open token or None; approved_fp: fingerprint deskfleet approved for the id;
    is_reserved: the id is only ever pre-seeded

    Returns ``(action, reason)``: ``accept`` (the pending key is the proven one),
    ``approved`` (it is the key deskfleet approved for the id: enrolled through
    the other tc master, which consumed the token), ``install`` (replace what
    Salt holds with the proven key), ``delete`` (drop the pending key), ``keep``
    (leave it pending for ops), ``refuse`` (record only), ``ignore`` (stale or not ours).
    """
    if not conforming(minion_id, id_re):
        return ("delete", "id does not match the id policy") if key and key["state"] == "pending" else ("ignore", "id outside policy")
    proven, why = verify(token_row, minion_id, pub_pem, grain)
    same = bool(key) and _same_key(key["pub"], pub_pem)
    if act == "pend":
        if not key or key["state"] != "pending" or not same:
            return "ignore", "the pending key is not the one of this request"
        if proven:
            return "accept", "token proven"
        if approved_fp and _same_fp(pub_pem, approved_fp):
            return "approved", "the key deskfleet approved for this id (enrolled through another tc master)"
        if token_row is not None or approved_fp or is_reserved:
            return "delete", f"pre-claim of a protected id refused: {why}"
        return "keep", why
    if act == "denied":
        if not proven:
            return "refuse", f"key does not match the one Salt holds; {why}"
        if key and key["state"] == "accepted" and not token_row.get("replace"):
            return "refuse", "seat already enrolled; issue with replace=True to re-key it"
        return "install", "token proven; replaces a pre-claimed or old key"
    return "ignore", f"act {act!r}"


def _same_key(a, b):
    try:
        return fingerprint(a) == fingerprint(b)
    except EnrollError:
        return False


def _same_fp(pub_pem, fp):
    try:
        return fingerprint(pub_pem) == fp
    except EnrollError:
        return False


def sweep_verdict(now, minion_id, mtime, protected, settings_):
    """
    What the periodic sweep does with one pending key: ``delete`` (non-conforming
    id; a protected id past its grace; older than ``pending_ttl``) or ``keep``.
    A protected id has an open token or a deskfleet-approved key.
    """
    age = max(0.0, now - mtime)
    if not conforming(minion_id, settings_["id_re"]):
        return "delete", "id does not match the id policy"
    if protected and age >= settings_["pending_grace"]:
        return "delete", "pre-claim of a protected id (no proof with its auth)"
    if age >= settings_["pending_ttl"]:
        return "delete", f"pending for {age:.0f} s (pending_ttl {settings_['pending_ttl']:.0f} s)"
    return "keep", None
