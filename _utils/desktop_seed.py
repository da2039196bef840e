"""
Pre-seeded minion keys for pool desktops (vm master), as salt-cloud seeds them.

The pool keeper makes a key pair for each desktop it boots, accepts the public
half on the vm master under the desktop's name and hands the private half to
the desktop in its Nova user_data (cloud-init ``write_files``). The desktop's
minion starts already accepted; nobody can pre-claim its id, because a pending
key for a seeded or reserved id (``deskfleet:vm:enroll:reserved_pattern``,
the ``dfp-`` names) is deleted by the ``enroll`` engine and another key for
an accepted id is denied by Salt. The master keeps no private key.

Who can read user_data: the desktop itself (metadata service) and cloud
admins. The desktop's user can read its own key; it is that desktop's identity
only.
"""

import base64
import time

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import enroll_store
import enrollment

KEY_BITS = 2048
DEFAULT_PKI_DIR = "/etc/salt/pki/minion"


def new_keypair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()  # fmt: skip
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pub


def user_data(priv_pem, pub_pem, pki_dir=DEFAULT_PKI_DIR):
    """cloud-config that writes the minion key pair before salt-minion starts (base64, as Nova takes it)."""
    doc = {
        "write_files": [
            {"path": f"{pki_dir}/minion.pem", "permissions": "0400", "content": priv_pem},
            {"path": f"{pki_dir}/minion.pub", "permissions": "0644", "content": pub_pem},
        ]
    }
    return base64.b64encode(("#cloud-config\n" + yaml.safe_dump(doc)).encode()).decode()


def keys_from_user_data(data):
    """``(priv_pem, pub_pem)`` from what ``user_data`` made (what the desktop's cloud-init reads)."""
    text = base64.b64decode(data).decode()
    files = {f["path"].rsplit("/", 1)[-1]: f["content"] for f in yaml.safe_load(text)["write_files"]}
    return files["minion.pem"], files["minion.pub"]


def seed(conn, keys, server_name, pki_dir=DEFAULT_PKI_DIR, clock=time.time):
    """Accept a fresh key for ``server_name`` and return the user_data carrying its private half."""
    priv, pub = new_keypair()
    keys.install(server_name, pub)
    enroll_store.approve(conn, clock(), server_name, enrollment.fingerprint(pub), "preseed", "vmpool")
    enroll_store.audit(conn, clock(), "preseed", "vmpool", "key seeded for a pool desktop", server_name, None,
                       enrollment.fingerprint(pub))  # fmt: skip
    return user_data(priv, pub, pki_dir)


def unseed(conn, keys, server_name, clock=time.time):
    """Undo ``seed`` (the boot was refused, or the desktop is gone)."""
    keys.delete(server_name)
    enroll_store.forget(conn, clock(), server_name, "vmpool")


def _open(opts):
    import enroll_keys  # pylint: disable=import-outside-toplevel  (Salt's key cache: master side only)

    return enroll_store.open_store(opts, "vm"), enroll_keys.Keys(opts)


def _conf(opts):
    return ((opts.get("deskfleet") or {}).get("vm") or {}).get("enroll") or {}


def boot_args(opts, server_name):
    """
    The pool keeper's hook before it boots a desktop: ``{"user_data": ...}`` with a
    freshly seeded key, or ``{}`` when ``deskfleet:vm:enroll:seed_keys`` is off.
    """
    if not _conf(opts).get("seed_keys"):
        return {}
    conn, keys = _open(opts)
    try:
        return {"user_data": seed(conn, keys, server_name, _conf(opts).get("seed_pki_dir") or DEFAULT_PKI_DIR)}
    finally:
        conn.close()
        keys.close()


def unseed_for(opts, server_name):
    if not _conf(opts).get("seed_keys"):
        return
    conn, keys = _open(opts)
    try:
        unseed(conn, keys, server_name)
    finally:
        conn.close()
        keys.close()
