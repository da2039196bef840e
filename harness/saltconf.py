"""
Master and minion configuration for lab runs, made from the shipped files.

The production config in ``salt_tc/master.d`` and ``salt_vm/master.d`` names the
checkout as ``/srv/deskfleet`` and site secrets under ``/etc/deskfleet``. For a
lab run those prefixes are rewritten to this checkout and a temp dir; where the
daemons listen, who runs them and where their state lives is the lab's choice.
"""

import copy
import os
import pathlib

import yaml

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
PROD_CHECKOUT = "/srv/deskfleet"
PROD_ETC = "/etc/deskfleet"
ENROLL_GRAIN = "deskfleet_enroll"
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


def lab_master_config(role, etc_dir, **deskfleet_overrides):
    """
    The shipped config with paths pointed at this checkout and ``etc_dir``.
    ``deskfleet_overrides`` merge into the ``deskfleet:<role>`` block
    (e.g. a short heartbeat for tests).
    """
    conf = _rewrite(shipped_master_config(role), {PROD_CHECKOUT: str(CHECKOUT), PROD_ETC: str(etc_dir)})
    for key in LAB_OWNED:
        conf.pop(key, None)
    if deskfleet_overrides:
        _merge(conf.setdefault("deskfleet", {}).setdefault(role, {}), deskfleet_overrides)
    return conf


def write_enroll_secret(master_opts, secret):
    """
    What ops provision on the tc master: the accepted enrollment secret, in the
    ``autosign_grains_dir`` the master really reads (Salt puts that path under
    ``root_dir``, so take it from the loaded master config).
    """
    grains_dir = pathlib.Path(master_opts["autosign_grains_dir"])
    grains_dir.mkdir(parents=True, exist_ok=True)
    path = grains_dir / ENROLL_GRAIN
    path.write_text(secret + "\n")
    os.chmod(path, 0o600)
    return path


def tc_minion_config(secret, lab_root):
    """Minion settings of a thin client: enrollment grain, and its fake hardware root."""
    return {
        "autosign_grains": [ENROLL_GRAIN],
        "grains": {ENROLL_GRAIN: secret, "deskfleet_role": "tc", "deskfleet_lab_root": str(lab_root)},
        # beacon intervals count minion loops; 1 s loops keep them in seconds
        "loop_interval": 1,
    }
