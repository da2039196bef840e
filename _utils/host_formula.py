"""
A host formula's settings in Python, layered exactly as ``states/host/map.jinja`` layers them for the
states, from the same files:

1. ``host/<feature>/parameters/defaults.yaml``
2. ``host/<feature>/parameters/os_family/<family>.yaml`` (Debian or RedHat; other families get Debian's)
3. the pre-release key (``host_<feature>``; for ovs_ports ``host_net``): still read, with a deprecation note
4. ``deskfleet:host:<feature>``

Dicts merge key by key, anything else (lists too) is replaced, as ``slsutil.merge(..., merge_lists=False)``.
``read(relpath)`` returns a file's text (None when missing): on a minion the module passes
``cp.get_file_str salt://<relpath>`` (the vm master serves ``states/host`` as ``host/``), tests a reader of
the checkout's ``states/`` directory, so there is no Python copy of any defaults.yaml.
"""

import yaml

from host_errors import HostError

FAMILIES = ("Debian", "RedHat")


def merge(base, over):
    """``over`` merged into a copy of ``base``: dicts recursively, any other value replaced."""
    out = dict(base or {})
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml(read, relpath, required):
    text = read(relpath)
    if not text:
        if required:
            raise HostError(f"cannot read salt://{relpath}: is states/host served to this host (salt_vm/fileroot/host)?")
        return {}
    data = yaml.safe_load(text)
    if data is not None and not isinstance(data, dict):
        raise HostError(f"salt://{relpath}: not a mapping")
    return data or {}


def layers(feature, os_family, read):
    """Layers 1 and 2: the formula's defaults with its OS-family file over them."""
    family = os_family if os_family in FAMILIES else "Debian"
    base = _yaml(read, f"host/{feature}/parameters/defaults.yaml", required=True)
    return merge(base, _yaml(read, f"host/{feature}/parameters/os_family/{family}.yaml", required=False))


def deprecation(old_key, feature, kind="pillar"):
    """The note (log warning, state comment) for a pre-release key that is still set."""
    return (f"{kind} key {old_key} is deprecated and is read for one more release only: move its settings under "
            f"deskfleet:host:{feature} (that key wins where both set a value)")


def settings(feature, os_family, read, new=None, old=None, old_key=None, kind="pillar"):
    """``(settings, notes)``: every layer merged; ``notes`` holds the deprecation note when ``old`` is set."""
    notes = []
    cfg = layers(feature, os_family, read)
    if old:
        notes.append(deprecation(old_key or f"host_{feature}", feature, kind))
        cfg = merge(cfg, old)
    return merge(cfg, new or {}), notes


def checkout_reader(states_dir):
    """``read`` over a checkout's ``states/`` directory (tests, tools)."""

    def read(relpath):
        try:
            with open(f"{states_dir}/{relpath}", encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            return None

    return read


def from_salt(feature, salt_funcs, grains, lookup="pillar", old_key=None, log=None, os_family=None):
    """
    :func:`settings` read through a Salt shell's dunders: files by ``cp.get_file_str``, the keys by
    ``pillar.get`` (unmasked) or, with ``lookup="config"``, ``config.get`` (minion config, grains, pillar).
    Each deprecation note is logged as a warning and listed under ``deprecated``.
    """
    if lookup == "config":
        def get(key):
            return salt_funcs["config.get"](key, {}) or {}
    else:
        def get(key):
            # Salt 3008 masks pillar.get results outside templates unless unmask=True
            return salt_funcs["pillar.get"](key, {}, unmask=True) or {}
    new, old = get(f"deskfleet:host:{feature}"), get(old_key or f"host_{feature}")
    family = os_family or new.get("os_family") or old.get("os_family") or (grains or {}).get("os_family", "Debian")
    cfg, notes = settings(feature, family, lambda rel: salt_funcs["cp.get_file_str"](f"salt://{rel}") or None,
                          new, old, old_key, kind=lookup)
    for note in notes:
        if log is not None:
            log.warning("deskfleet: %s", note)
    cfg.update(deprecated=notes, os_family=family)
    return cfg
