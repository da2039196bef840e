"""
Local password escrow in the style of Windows LAPS, the half that runs on each
machine (the ``local_password`` execution module; synced to desktops). No Salt
imports here, so it is tested without Salt.

``policy_from`` validates the pillar policy, ``generate`` makes the password
with :mod:`secrets`, ``encrypt`` seals it to the escrow PUBLIC key (hybrid:
a random AES-256-GCM key wrapped with RSA-OAEP-SHA256) and ``sha512_crypt``
makes the ``$6$`` hash fed to ``chpasswd -e`` on Linux. ``decrypt`` opens an
envelope: a machine its own prepared password, the master (``password.show``)
an escrowed one with the operator's private key.

The master half: ``escrow_check`` vets what a machine returns; ``escrow_store``,
``escrow_rotation`` keep and drive it.

Nothing in here logs, and no exception raised here carries a password.
"""

import base64
import hashlib
import json
import math
import secrets
import string

FORMAT = "deskfleet-escrow-v1"
ALGORITHM = "RSA-OAEP-SHA256+AES-256-GCM"
DEFAULT_ACCOUNT = "localadmin"
MIN_LENGTH = 14  # Windows LAPS default length
MAX_LENGTH = 127  # longest password NetUserSetInfo takes
MIN_RSA_BITS = 2048
DEFAULT_MAX_AGE_DAYS = 30  # Windows LAPS default
# No quotes, backslash, backtick, pipe or space: safe to type, paste and quote.
DEFAULT_SPECIAL = "!#$%&()*+,-./:;<=>?@[]^_{}~"
CLASSES = {
    "upper": string.ascii_uppercase,
    "lower": string.ascii_lowercase,
    "digit": string.digits,
    "special": DEFAULT_SPECIAL,
}
DEFAULT_POLICY = {
    "length": MIN_LENGTH,
    "classes": ["upper", "lower", "digit", "special"],
    "special": DEFAULT_SPECIAL,
    "exclude": "",
    "max_age_days": DEFAULT_MAX_AGE_DAYS,
}
PLACEHOLDER_MARK = "REPLACE"
ACCOUNT_CHARS = set(string.ascii_letters + string.digits + "._-$")

class EscrowError(Exception):
    """A configuration, key or ciphertext problem. Messages never hold a password."""


class Refused(EscrowError):
    """A minion's return, or an operator's key, that the master does not accept."""


# ---- policy and generation ---------------------------------------------------


def check_account(account):
    """A local account name: short, no path or shell characters."""
    if not isinstance(account, str) or not 0 < len(account) <= 64 or not set(account) <= ACCOUNT_CHARS:
        raise EscrowError(f"invalid account name {str(account)[:64]!r}")
    return account


def policy_from(raw):
    """
    The password policy from pillar (``deskfleet:passwords:policy``), validated,
    with LAPS-like defaults: 14 characters, upper + lower + digit + special, 30 days.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise EscrowError("password policy must be a mapping")
    unknown = set(raw) - set(DEFAULT_POLICY)
    if unknown:
        raise EscrowError(f"unknown password policy keys: {', '.join(sorted(unknown))}")
    policy = dict(DEFAULT_POLICY, **raw)
    length = policy["length"]
    if isinstance(length, bool) or not isinstance(length, int) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise EscrowError(f"policy length must be an integer from {MIN_LENGTH} to {MAX_LENGTH}")
    classes = policy["classes"]
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, list) or not classes or not set(classes) <= set(CLASSES):
        raise EscrowError(f"policy classes must be a non-empty list of {', '.join(CLASSES)}")
    policy["classes"] = sorted(set(classes), key=list(CLASSES).index)
    for key in ("special", "exclude"):
        if not isinstance(policy[key], str):
            raise EscrowError(f"policy {key} must be a string of characters")
    if any(c.isspace() or not c.isprintable() for c in policy["special"]):
        raise EscrowError("policy special characters must be printable and not blank")
    if len(policy["classes"]) > length:
        raise EscrowError("policy length is shorter than its number of character classes")
    for name in policy["classes"]:
        if len(_alphabet(policy, name)) < 2:
            raise EscrowError(f"policy leaves fewer than 2 characters in class {name}")
    max_age = policy["max_age_days"]
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 < max_age <= 3650:
        raise EscrowError("policy max_age_days must be a number of days from 1 to 3650")
    return policy


def _alphabet(policy, name):
    chars = policy["special"] if name == "special" else CLASSES[name]
    return "".join(sorted(set(chars) - set(policy["exclude"]), key=chars.index))


def entropy_bits(policy):
    """Roughly how many bits of randomness a password under ``policy`` has."""
    pool = set().union(*(_alphabet(policy, n) for n in policy["classes"]))
    return policy["length"] * math.log2(len(pool))


def generate(policy, account=None):
    """
    A password under ``policy`` (from :func:`policy_from`): at least one
    character of every class, the rest from all of them, shuffled with
    :mod:`secrets`. Never contains the account name (Windows complexity rule).
    """
    alphabets = [_alphabet(policy, n) for n in policy["classes"]]
    pool = "".join(sorted(set("".join(alphabets))))
    rng = secrets.SystemRandom()
    for _ in range(100):
        chars = [secrets.choice(a) for a in alphabets]
        chars += [secrets.choice(pool) for _ in range(policy["length"] - len(chars))]
        rng.shuffle(chars)
        password = "".join(chars)
        if not (account and len(account) >= 3 and account.lower() in password.lower()):
            return password
    raise EscrowError("could not generate a password that avoids the account name")  # pragma: no cover


# ---- SHA-512 crypt (glibc "$6$"), for chpasswd -e ------------------------------

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip


def sha512_crypt(password, salt=None, rounds=None):
    """
    The ``$6$`` hash of ``password`` (Drepper's SHA-crypt, as glibc/libxcrypt
    and ``chpasswd -e`` read it), in pure Python: the ``crypt`` module is
    deprecated and absent on Windows. ``salt`` defaults to 16 random characters;
    ``rounds`` to the system default 5000 (then not written into the hash).
    """
    if salt is None:
        salt = "".join(secrets.choice(_ITOA64) for _ in range(16))
    salt = salt[:16]
    if not salt or any(c not in _ITOA64 for c in salt):
        raise EscrowError("crypt salt must be 1-16 characters of [./0-9A-Za-z]")
    custom = rounds is not None
    rounds = 5000 if rounds is None else min(max(int(rounds), 1000), 999_999_999)
    key = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    salt_b = salt.encode("ascii")
    sha = hashlib.sha512

    alt = sha(key + salt_b + key).digest()
    ctx = sha(key + salt_b)
    n = len(key)
    while n > 64:
        ctx.update(alt)
        n -= 64
    ctx.update(alt[:n])
    n = len(key)
    while n:
        ctx.update(alt if n & 1 else key)
        n >>= 1
    digest_a = ctx.digest()

    dp = sha(key * len(key)).digest()
    p_bytes = (dp * (len(key) // 64 + 1))[: len(key)]
    ds = sha(salt_b * (16 + digest_a[0])).digest()
    s_bytes = ds[: len(salt_b)]

    c = digest_a
    for i in range(rounds):
        ctx = sha(p_bytes if i & 1 else c)
        if i % 3:
            ctx.update(s_bytes)
        if i % 7:
            ctx.update(p_bytes)
        ctx.update(c if i & 1 else p_bytes)
        c = ctx.digest()

    out = []
    for x, y, z in _SHA512_ORDER:
        v = (c[x] << 16) | (c[y] << 8) | c[z]
        for _ in range(4):
            out.append(_ITOA64[v & 0x3F])
            v >>= 6
    v = c[63]
    for _ in range(2):
        out.append(_ITOA64[v & 0x3F])
        v >>= 6
    prefix = f"$6$rounds={rounds}$" if custom else "$6$"
    return f"{prefix}{salt}${''.join(out)}"


def sha512_crypt_matches(password, hashed):
    """True if ``hashed`` (a ``$6$`` hash) is the hash of ``password``."""
    if not isinstance(hashed, str) or not hashed.startswith("$6$"):
        return False
    parts = hashed.split("$")
    rounds = None
    if parts[2].startswith("rounds="):
        rounds = int(parts[2][len("rounds=") :])
        salt = parts[3]
    else:
        salt = parts[2]
    return secrets.compare_digest(sha512_crypt(password, salt, rounds), hashed)


# ---- keys and the envelope -----------------------------------------------------


def _crypto():
    # cryptography ships with Salt 3008 (salt.crypt uses it); imported late so
    # the policy and hash functions work without it.
    from cryptography.exceptions import InvalidTag  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # pylint: disable=import-outside-toplevel

    return InvalidTag, hashes, serialization, padding, rsa, AESGCM


def _oaep():
    _, hashes, _, padding, _, _ = _crypto()
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def load_public_key(pem):
    """The escrow RSA public key from PEM text; refuses placeholders and keys under 2048 bits."""
    _, _, serialization, _, rsa, _ = _crypto()
    if isinstance(pem, bytes):
        pem = pem.decode("ascii", "replace")
    if not isinstance(pem, str) or not pem.strip() or PLACEHOLDER_MARK in pem:
        raise EscrowError("no escrow public key configured (deskfleet:passwords:escrow_pubkey is a placeholder)")
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except ValueError as exc:
        raise EscrowError(f"the escrow public key is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise EscrowError("the escrow public key must be an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise EscrowError(f"the escrow public key has {key.key_size} bits; at least {MIN_RSA_BITS} are required")
    return key


def load_private_key(data, passphrase=None):
    """An operator's RSA private key from PEM bytes. Raises :class:`EscrowError` with no key material."""
    _, _, serialization, _, rsa, _ = _crypto()
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # "Password was not given but private key is encrypted" and the reverse
        raise EscrowError(f"private key: {exc}") from None
    except ValueError:
        raise EscrowError("not a readable PEM private key (or a wrong passphrase)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EscrowError("the operator key must be an RSA private key")
    return key


def fingerprint(public_key):
    """sha256 (hex) of the DER SubjectPublicKeyInfo of ``public_key`` (public or private key object)."""
    _, _, serialization, _, rsa, _ = _crypto()
    if isinstance(public_key, rsa.RSAPrivateKey):
        public_key = public_key.public_key()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def canonical(aad):
    """The associated data bound into the AES-GCM tag: which machine, account and rotation."""
    return json.dumps(aad, sort_keys=True, separators=(",", ":")).encode()


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def encrypt(public_key, password, aad):
    """
    Seal ``password`` to ``public_key``: a fresh AES-256-GCM key and 96-bit
    nonce, ``aad`` (``vm``, ``account``, ``rotated_at``) authenticated, the AES
    key wrapped with RSA-OAEP-SHA256. Returns a JSON-safe envelope.
    """
    _, _, _, _, _, aesgcm = _crypto()
    data_key = aesgcm.generate_key(bit_length=256)
    nonce = secrets.token_bytes(12)
    sealed = aesgcm(data_key).encrypt(nonce, password.encode("utf-8"), canonical(aad))
    return {
        "format": FORMAT,
        "alg": ALGORITHM,
        "kid": fingerprint(public_key),
        "aad": dict(aad),
        "wrapped_key": _b64(public_key.encrypt(data_key, _oaep())),
        "nonce": _b64(nonce),
        "ciphertext": _b64(sealed),
    }


def check_envelope(envelope):
    if not isinstance(envelope, dict):
        raise Refused("ciphertext is not an escrow envelope")
    if envelope.get("format") != FORMAT or envelope.get("alg") != ALGORITHM:
        raise Refused(f"ciphertext is not {FORMAT} / {ALGORITHM}")
    if not isinstance(envelope.get("aad"), dict):
        raise Refused("ciphertext has no associated data")
    raw = {}
    for field, size in (("wrapped_key", None), ("nonce", 12), ("ciphertext", None)):
        value = envelope.get(field)
        if not isinstance(value, str) or len(value) > 8192:
            raise Refused(f"ciphertext field {field} is missing or too long")
        try:
            raw[field] = base64.b64decode(value, validate=True)
        except ValueError:
            raise Refused(f"ciphertext field {field} is not base64") from None
        if size is not None and len(raw[field]) != size:
            raise Refused(f"ciphertext field {field} must be {size} bytes")
    # at least one character + the 16-byte GCM tag
    if len(raw["ciphertext"]) < 17:
        raise Refused("ciphertext is too short")
    return raw


def decrypt(private_key, envelope):
    """The password sealed in ``envelope``; :class:`Refused` if the key or the data do not match."""
    invalid_tag, _, _, _, _, aesgcm = _crypto()
    raw = check_envelope(envelope)
    if envelope.get("kid") != fingerprint(private_key):
        raise Refused("key fingerprint mismatch")
    try:
        data_key = private_key.decrypt(raw["wrapped_key"], _oaep())
        plain = aesgcm(data_key).decrypt(raw["nonce"], raw["ciphertext"], canonical(envelope["aad"]))
    except (ValueError, invalid_tag):
        raise Refused("decryption failed: the ciphertext or its labels were altered") from None
    return plain.decode("utf-8")
