"""
The dunders the host module shells read, for unit tests: ``pillar.get`` (must be called with unmask=True, as
Salt 3008 masks values otherwise), ``config.get`` (minion config, then pillar) and ``cp.get_file_str``
serving this checkout's ``states/`` as the vm master serves ``salt://host/...`` (``files`` overrides a path).
"""

import pathlib

import host_formula

STATES = pathlib.Path(__file__).resolve().parents[2] / "states"
READ = host_formula.checkout_reader(str(STATES))
_MISSING = object()


def lookup(tree, key, default=None):
    node = tree
    for part in key.split(":"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def fake_salt(pillar=None, config=None, files=None, fetched=None):
    """``__salt__`` for a host module; ``fetched`` (a list) collects every salt:// path read."""
    pillar, config, files = pillar or {}, config or {}, files or {}

    def pillar_get(key, default=None, unmask=False):
        assert unmask, "Salt 3008 masks pillar.get values unless unmask=True"
        return lookup(pillar, key, default)

    def config_get(key, default=None):
        found = lookup(config, key, _MISSING)
        return lookup(pillar, key, default) if found is _MISSING else found

    def get_file_str(path):
        assert path.startswith("salt://"), path
        if fetched is not None:
            fetched.append(path)
        rel = path[len("salt://"):]
        return files[rel] if rel in files else (READ(rel) or False)

    return {"pillar.get": pillar_get, "config.get": config_get, "cp.get_file_str": get_file_str}
