"""
Master and minion configuration for lab runs, made from the shipped files.

The production config in ``salt_tc/master.d`` and ``salt_vm/master.d`` names the
checkout as ``/srv/deskfleet`` and site secrets under ``/etc/deskfleet``. For a
lab run those prefixes are rewritten to this checkout and a temp dir; where the
daemons listen, who runs them and where their state lives is the lab's choice.
"""

import copy
import hashlib
import pathlib
import subprocess
import sys

import yaml

from harness.proc import free_port

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
PROD_CHECKOUT = "/srv/deskfleet"
PROD_ETC = "/etc/deskfleet"
ENROLL_GRAIN = "deskfleet_enroll"
ENROLL_TOOL = CHECKOUT / "tools" / "deskfleet-enroll"
TC_MINION_TEMPLATE = CHECKOUT / "salt_tc" / "minion" / "deskfleet-tc.conf"
LAB_OWNED = (
    "interface",
    "publish_port",
    "ret_port",
    "user",
    "root_dir",
    "pki_dir",
    "cachedir",
    "sock_dir",
    "log_file",
    "pidfile",
)


def _merge(base, extra):
    """Like Salt's master.d merge: dicts recursively, lists concatenated."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            base[key] = base[key] + copy.deepcopy(value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def shipped_master_config(role):
    """The merged ``salt_<role>/master.d/*.conf`` as production reads it."""
    conf = {}
    for path in sorted((CHECKOUT / f"salt_{role}" / "master.d").glob("*.conf")):
        _merge(conf, yaml.safe_load(path.read_text()) or {})
    return conf


def _rewrite(obj, mapping):
    if isinstance(obj, dict):
        return {k: _rewrite(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rewrite(v, mapping) for v in obj]
    if isinstance(obj, str):
        for prod, lab in mapping.items():
            if obj == prod or obj.startswith(prod + "/"):
                return lab + obj[len(prod) :]
    return obj


def lab_master_config(role, etc_dir, shipped_ports=False, **deskfleet_overrides):
    """
    The shipped config with paths pointed at this checkout and ``etc_dir``.
    ``deskfleet_overrides`` merge into the ``deskfleet:<role>`` block
    (e.g. a short heartbeat for tests). Metrics go to a free port unless ``shipped_ports``
    (the one lab that stays up keeps the README's ports).
    """
    conf = _rewrite(shipped_master_config(role), {PROD_CHECKOUT: str(CHECKOUT), PROD_ETC: str(etc_dir)})
    for key in LAB_OWNED:
        conf.pop(key, None)
    if deskfleet_overrides:
        _merge(conf.setdefault("deskfleet", {}).setdefault(role, {}), deskfleet_overrides)
    lab_portal(conf, pathlib.Path(etc_dir), shipped_ports)
    metrics = (conf.get("deskfleet") or {}).get("metrics")
    if metrics and metrics.get("exporter") == "prometheus" and not shipped_ports:
        # masters side by side (the suite, the lab) each serve metrics on a port of their own
        metrics.setdefault("prometheus", {})["port"] = free_port()
    return conf


# The lab's portal users: one per role, password "lab-<user>" (loopback only; production: PAM groups)
PORTAL_USERS = {"viewer": "viewer", "operator": "operator", "broker": "broker"}


def portal_password(user):
    return f"lab-{user}"


def lab_portal(conf, etc_dir, shipped_ports=False):
    """
    salt-api for a lab: plain HTTP on 127.0.0.1 (no site certificate here), Salt's file
    eauth with one user per role (the roles' ACLs as shipped) instead of PAM.
    """
    api = conf.get("rest_cherrypy")
    if not api:
        return
    for key in ("ssl_crt", "ssl_key"):
        api.pop(key, None)
    api.update(disable_ssl=True, host="127.0.0.1")
    if not shipped_ports:
        api["port"] = free_port()
    roles = ((conf.get("deskfleet") or {}).get("portal") or {}).get("roles") or {}
    etc_dir.mkdir(parents=True, exist_ok=True)
    acl = {user: roles[role] for user, role in PORTAL_USERS.items() if roles.get(role)}  # no user for an empty role
    users = etc_dir / "portal-users.txt"
    users.write_text("".join(f"{u}:{hashlib.sha256(portal_password(u).encode()).hexdigest()}\n" for u in acl))
    users.chmod(0o600)
    conf["external_auth"] = {"file": {"^filename": str(users), "^hashtype": "sha256", **acl}}


def enroll_device(token_file, minion_id, pki_dir, lab_root, conf_dir=None):
    """
    What a thin client does once before its first start (``tools/deskfleet-enroll``):
    make its minion key in ``pki_dir`` and turn the token ops issued into the
    ``deskfleet_enroll`` grain, bound to its id, its (fake) DMI serial and that key.
    With ``conf_dir`` the grain goes to ``<conf_dir>/grains`` (as on a device, next
    to the minion config); returns the grain value either way.
    """
    cmd = [sys.executable, str(ENROLL_TOOL), "--id", minion_id, "--token-file", str(token_file),
           "--root", str(lab_root), "--pki-dir", str(pki_dir), "--print-grain"]  # fmt: skip
    value = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    if conf_dir is not None:
        grains = pathlib.Path(conf_dir) / "grains"
        current = (yaml.safe_load(grains.read_text()) or {}) if grains.exists() else {}
        grains.write_text(yaml.safe_dump(dict(current, **{ENROLL_GRAIN: value})))
    return value


def preseed_key(master_opts, minion_id, pki_dir):
    """
    Accept a minion's key on the master before it first starts, as salt-cloud does:
    for labs that measure something else than enrollment (benchmarks).
    """
    import salt.crypt  # pylint: disable=import-outside-toplevel

    pki_dir = pathlib.Path(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    if not (pki_dir / "minion.pub").exists():
        salt.crypt.write_keys(str(pki_dir), "minion", 2048)
    accepted = pathlib.Path(master_opts["pki_dir"]) / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    (accepted / minion_id).write_text((pki_dir / "minion.pub").read_text())
    return accepted / minion_id


def tc_minion_config(lab_root, enroll=None):
    """Minion settings of a thin client: its enrollment grain (if any), and its fake hardware root."""
    grains = {"deskfleet_role": "tc", "deskfleet_lab_root": str(lab_root)}
    if enroll is not None:
        grains[ENROLL_GRAIN] = enroll
    return {
        "autosign_grains": [ENROLL_GRAIN],
        "grains": grains,
        # beacon intervals count minion loops; 1 s loops keep them in seconds
        "loop_interval": 1,
    }


def tc_minion_template(master=None):
    """The shipped thin-client minion template (``salt_tc/minion``) as a dict; ``master`` replaces its placeholder."""
    conf = yaml.safe_load(TC_MINION_TEMPLATE.read_text())
    if master is not None:
        conf["master"] = master
    return conf


def seed_desktop(master_opts, minion_id, pki_dir):
    """What the pool keeper and cloud-init do together for a pool desktop: seed and accept its key, install it."""
    sys.path.insert(0, str(CHECKOUT / "_utils"))
    import desktop_seed  # pylint: disable=import-outside-toplevel
    import enroll_keys  # pylint: disable=import-outside-toplevel
    import enroll_store  # pylint: disable=import-outside-toplevel

    conn, keys = enroll_store.open_store(master_opts, "vm"), enroll_keys.Keys(master_opts)
    try:
        user_data = desktop_seed.seed(conn, keys, minion_id)
    finally:
        conn.close()
        keys.close()
    return install_seeded_key(user_data, pki_dir)


def install_seeded_key(user_data, pki_dir):
    """What cloud-init does on a pool desktop: write the minion key the keeper seeded (from Nova user_data)."""
    sys.path.insert(0, str(CHECKOUT / "_utils"))
    import desktop_seed  # pylint: disable=import-outside-toplevel

    priv, pub = desktop_seed.keys_from_user_data(user_data)
    pki_dir = pathlib.Path(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    (pki_dir / "minion.pem").write_text(priv)
    (pki_dir / "minion.pem").chmod(0o400)
    (pki_dir / "minion.pub").write_text(pub)
    return pki_dir
