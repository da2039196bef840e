"""
Thin-client beacon events: who sent them, and what of them may be stored.

Pure functions over one bus event; the signature check is passed in
(``verify(seat, message, signature) -> bool``), so this is tested without Salt.

Sender attribution (read from Salt 3008.3, ``salt/channel/server.py`` and
``salt/daemons/masterapi.py``): the request channel does authenticate the
minion (protocol v3, ``minimum_auth_version: 3``: the load is decrypted with
that minion's session key, ``payload["id"] == load["id"]`` and its ``tok`` is
checked against ``pki_dir/minions/<id>``). But that identity does not reach
the master event bus in a form a listener can trust: a single
``fire_master`` puts the whole load, ``id`` included, on the bus, while a
batched ``events`` request puts each entry's ``data`` there verbatim, so any
minion can batch an event whose data imitates the single form with any
``id``. ``minion_sign_messages`` only covers job returns (``_return``), not
``_minion_event``. So on the bus the only proof of origin is deskfleet's own
signature: a valid one proves the *signer*. A refused event with no valid
signature is logged as "claimed <id>, unproven", never as sent by that seat.
A replay carries a valid signature of the victim but is refused for
freshness; it is logged as "replayed signature of <id>, sender unknown".
"""

import base64
import ipaddress
import json
import math
import os
import re

TAG_MATCH = r"salt/beacon/[^/]+/tc_status/"
TAG_RE = re.compile(r"salt/beacon/([^/]{1,128})/tc_status/status")
# thin-client minion ids: a file name in pki_dir/minions, so no path tricks
SENDER_RE = re.compile(r"(?!\.)[\w.@-]{1,128}")
MAX_SEQ = 2**63 - 1  # SQLite INTEGER
MAX_NUMBER = 1e12  # seconds: ~31,000 years of uptime
SIGN_ALGORITHM = "PKCS1v15-SHA224"
# Salt adds keys on the way (id, _stamp); only these are signed. v2 adds the start epoch.
SIGNED_V1 = ("v", "seat", "seq", "ts", "reason", "changed", "heartbeat", "facts")
SIGNED_FIELDS = {1: SIGNED_V1, 2: SIGNED_V1 + ("epoch",)}
MAX_PAYLOAD_BYTES = 16384  # signed bytes
# whole event, estimated before any signature work; beyond it nothing is verified
MAX_EVENT_BYTES = 65536
TRIMMED = "VALUE_TRIMMED"  # what Salt's max_event_size puts in place of a large value
SESSION_STATES = ("connected", "connecting", "disconnected", "none")
REASONS = ("start", "change", "heartbeat")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# fact name -> (kind, limit)
FACT_SCHEMA = {
    "serial": ("str", 128),
    "model": ("str", 128),
    "vendor": ("str", 128),
    "bios": ("str", 128),
    "iface": ("str", 32),
    "mac": ("mac", None),
    "ips": ("ips", 16),
    "firmware": ("str", 64),
    "image": ("str", 64),
    "boot_id": ("str", 64),
    "uptime": ("num", None),
    "site": ("str", 64),
    "department": ("str", 64),
    "asset_id": ("str", 64),
    "session_target": ("str", 255),
    "session_state": ("enum", SESSION_STATES),
    "idle_seconds": ("num", None),
}


class Rejected(Exception):
    """
    An event refused whole. ``sender`` is the proven signer (or None),
    ``claimed`` the id the tag names; ``reason`` one of forged, malformed,
    oversize (and, from the ingestor, stale, replayed, duplicate, rate_limited).
    """

    def __init__(self, reason, sender, detail, claimed=None):
        super().__init__(f"{reason} event ({attribution(sender, claimed or sender, reason)}): {detail}")
        self.reason = reason
        self.sender = sender
        self.claimed = claimed if claimed is not None else sender
        self.detail = detail


def attribution(sender, claimed, reason=None):
    """How the reject log names the origin of an event: never the victim of a forgery."""
    if reason in ("duplicate", "stale", "replayed"):
        return f"re-sent signed payload of {claimed} ({reason}), sender unknown"
    if sender:
        return sender
    return f"claimed {claimed}, unproven" if claimed else "unknown, unproven"


def canonical(payload):
    """The signed bytes; mirrors ``_beacons/tc_status.canonical``."""
    fields = SIGNED_FIELDS.get(payload.get("v"), SIGNED_V1)
    body = {k: payload.get(k) for k in fields}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def pki_verifier(pki_dir):
    """
    A ``verify(sender, message, signature) -> bool`` that checks against the
    sender's accepted minion key. A pending, rejected or unknown key fails.
    """
    import salt.crypt  # pylint: disable=import-outside-toplevel

    minions_dir = os.path.join(pki_dir, "minions")

    def verify(sender, message, signature):
        try:
            key = salt.crypt.PublicKey.from_file(os.path.join(minions_dir, sender))
            return bool(key.verify(message, signature, algorithm=SIGN_ALGORITHM))
        except Exception:  # pylint: disable=broad-except
            return False

    return verify


def finite(value, low, high):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _trimmed(obj, depth=0):
    if obj == TRIMMED:
        return True
    if isinstance(obj, dict) and depth < 4:
        return any(_trimmed(v, depth + 1) for v in obj.values())
    return False


def _size(data):
    try:
        return len(json.dumps(data, default=str))
    except (TypeError, ValueError, RecursionError):
        return MAX_EVENT_BYTES + 1


# ---- the envelope: refused whole ----------------------------------------------------


def verified(tag, data, verify):
    """
    Check tag, size and signature; return ``(sender, payload)`` or raise
    :class:`Rejected`. ``sender`` is proven: its accepted key signed the payload.
    """
    match = TAG_RE.fullmatch(tag) if isinstance(tag, str) else None
    if not match:
        raise Rejected("malformed", None, f"tag {str(tag)[:80]!r} is not salt/beacon/<id>/tc_status/status")
    claimed = match.group(1)
    if not SENDER_RE.fullmatch(claimed):
        raise Rejected("malformed", None, f"tag names an invalid minion id {claimed[:64]!r}")
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "sig" not in data:
        data = data["data"]
    if not isinstance(data, dict):
        raise Rejected("malformed", None, "payload is not a mapping", claimed)
    if _trimmed(data):
        raise Rejected("oversize", None, "trimmed on the bus by max_event_size", claimed)
    size = _size(data)
    if size > MAX_EVENT_BYTES:
        raise Rejected("oversize", None, f"event of {size} bytes is over {MAX_EVENT_BYTES}", claimed)
    sig = data.get("sig")
    if not isinstance(sig, str):
        raise Rejected("forged", None, "payload is not signed", claimed)
    message = canonical(data)
    try:
        signature = base64.b64decode(sig, validate=True)
    except ValueError as exc:
        raise Rejected("forged", None, "signature is not base64", claimed) from exc
    if not verify(claimed, message, signature):
        raise Rejected("forged", None, "signature does not match the claimed seat's accepted key", claimed)
    if data.get("seat") != claimed or data.get("id", claimed) != claimed:
        raise Rejected("forged", None, f"signed by {claimed} for seat {str(data.get('seat'))[:64]!r}", claimed)
    # from here on the signer is proven
    if len(message) > MAX_PAYLOAD_BYTES:
        raise Rejected("oversize", claimed, f"payload of {len(message)} bytes is over {MAX_PAYLOAD_BYTES}")
    return claimed, data


def envelope(sender, data):
    """``(epoch, seq, ts, reason, facts)`` of a verified payload, or :class:`Rejected`."""
    version = data.get("v")
    if version not in SIGNED_FIELDS or isinstance(version, bool):
        raise Rejected("malformed", sender, f"unknown payload version {version!r}")
    seq, ts, reason, facts = (data.get(k) for k in ("seq", "ts", "reason", "facts"))
    epoch = data.get("epoch", 0) if version >= 2 else 0
    for name, value in (("seq", seq), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
            raise Rejected("malformed", sender, f"{name} is not a 64-bit non-negative integer")
    if not finite(ts, 0, MAX_NUMBER * 10):
        raise Rejected("malformed", sender, "ts is not a finite epoch time")
    if reason not in REASONS:
        raise Rejected("malformed", sender, f"reason must be one of {', '.join(REASONS)}")
    if not isinstance(facts, dict):
        raise Rejected("malformed", sender, "facts is not a mapping")
    return epoch, seq, float(ts), reason, facts


# ---- facts: odd but honest values are cut and flagged, never fatal ---------------------


def _ips(value, limit):
    if not isinstance(value, list):
        return "[]", True
    good = []
    for item in value:
        try:
            good.append(str(ipaddress.ip_address(item)))
        except ValueError:
            continue
    cut = len(good) != len(value) or len(good) > limit
    return json.dumps(good[:limit]), cut


def check_fact(name, value):
    """``(stored value, flagged)``: the value as stored, and whether it was cut or emptied."""
    kind, limit = FACT_SCHEMA[name]
    if kind == "ips":
        return ("[]", False) if value is None else _ips(value, limit)
    if value is None or (kind == "mac" and value == ""):
        return None, False  # a tunnel (VPN) interface has no MAC: honest, not odd
    if kind == "num":
        return (float(value), False) if finite(value, 0, MAX_NUMBER) else (None, True)
    if kind == "enum":
        return (value, False) if isinstance(value, str) and value in limit else (None, True)
    if not isinstance(value, str):
        return None, True
    if kind == "mac":
        value = value.lower()
        return (value, False) if MAC_RE.match(value) else (None, True)
    return (value, False) if len(value) <= limit else (value[:limit], True)


def facts_row(facts):
    """Every schema fact checked; returns ``(row, flags)`` with flags the sorted cut field names."""
    row, flags = {}, []
    for name in FACT_SCHEMA:
        row[name], cut = check_fact(name, facts.get(name))
        if cut:
            flags.append(name)
    return row, flags
