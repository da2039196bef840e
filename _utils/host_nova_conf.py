"""
nova-compute's over-commit settings as oslo.config reads them: the files in its default order,
their active ``[DEFAULT]`` entries, and the effective RAM target and reserve (nova 34 rules:
``ram_allocation_ratio`` unset or 0.0 -> ``initial_ram_allocation_ratio``, default 1.0).
"""

import glob
import logging
import os
import re

from host_errors import read_text

log = logging.getLogger(__name__)

# Nova's [DEFAULT] keys the host.overcommit state manages.
NOVA_KEYS = ("ram_allocation_ratio", "cpu_allocation_ratio", "disk_allocation_ratio", "reserved_host_memory_mb")
INITIAL_KEYS = ("initial_ram_allocation_ratio", "initial_cpu_allocation_ratio", "initial_disk_allocation_ratio")
# Nova 34 defaults (nova/conf/compute.py): the ratios are None -> initial_*_allocation_ratio.
NOVA_DEFAULTS = {
    "ram_allocation_ratio": None,
    "cpu_allocation_ratio": None,
    "disk_allocation_ratio": None,
    "initial_ram_allocation_ratio": 1.0,
    "initial_cpu_allocation_ratio": 4.0,
    "initial_disk_allocation_ratio": 1.0,
    "reserved_host_memory_mb": 512,
}

_SECTION_RE = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_KEY_RE = re.compile(r"^(?P<key>[^\s=:#;][^=:]*?)\s*[=:]\s*(?P<value>.*)$")


def parse_ini(text):
    """Active ``(section, key, value, lineno)`` entries of an oslo.config style ini file.

    Comments (``#``/``;``) and blank lines are skipped; ``key = value`` and
    ``key: value`` are both accepted; a line that starts with whitespace
    continues the previous value (oslo's parser) and is not a key. Keys are
    lower-cased as oslo.config does for option names.
    """
    entries = []
    section = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if raw[:1] in (" ", "\t"):
            continue  # continuation of a multi-line value
        match = _SECTION_RE.match(line)
        if match:
            section = match.group("name").strip()
            continue
        match = _KEY_RE.match(line)
        if match and section is not None:
            value = match.group("value").strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            entries.append((section, match.group("key").strip().lower(), value, lineno))
    return entries


def config_files(nova_dir, prog="nova-compute", exists=os.path.exists, listdir=glob.glob):
    """The files nova-compute reads, in oslo.config's default order.

    ``<dir>/nova.conf``, ``<dir>/<prog>.conf``, then ``<dir>/nova.conf.d/*.conf``
    and ``<dir>/<prog>.conf.d/*.conf`` (sorted): oslo.config's default config
    files and dirs (find_config_files / find_config_dirs), read even when the
    unit passes ``--config-file`` but no ``--config-dir``. In that case the
    default dirs are parsed BEFORE the ``--config-file`` files (oslo_config
    cfg.py _parse_config_files), so a key in nova.conf beats a drop-in: the
    state comments the managed keys out of nova.conf for that reason.
    """
    nova_dir = nova_dir.rstrip("/")
    files = [f"{nova_dir}/nova.conf"]
    if prog and prog != "nova":
        files.append(f"{nova_dir}/{prog}.conf")
    files = [f for f in files if exists(f)]
    for sub in ["nova.conf.d"] + ([f"{prog}.conf.d"] if prog and prog != "nova" else []):
        files.extend(sorted(listdir(f"{nova_dir}/{sub}/*.conf")))
    return files


def effective(file_texts, keys=None):
    """Effective ``[DEFAULT]`` values from ``[(path, text), ...]`` read in order (the last setting wins).

    Returns ``{key: {"value", "source", "line", "set_in": [{"source", "line", "value"}, ...]}}`` for
    every key in ``keys`` (default: the managed keys and the ``initial_*`` ratios); ``value`` is the
    raw string or None when no file sets it.
    """
    keys = tuple(keys or (NOVA_KEYS + INITIAL_KEYS))
    found = {key: {"value": None, "source": None, "line": None, "set_in": []} for key in keys}
    for path, text in file_texts:
        for section, key, value, lineno in parse_ini(text):
            if section.upper() != "DEFAULT" or key not in found:
                continue
            row = found[key]
            row.update(value=value, source=path, line=lineno)
            row["set_in"].append({"source": path, "line": lineno, "value": value})
    return found


def read_effective(nova_dir, prog):
    """``(files, effective)`` of the nova config under ``nova_dir``; an unreadable file is logged and skipped."""
    files = config_files(nova_dir, prog)
    texts = []
    for path in files:
        try:
            texts.append((path, read_text(path)))
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("host_nova_conf: %s", exc)
    return files, effective(texts)


def multiple_values(found):
    """Keys set to different values in several files."""
    return sorted(key for key, row in found.items() if len({to_float(r["value"]) for r in row["set_in"]}) > 1)


def to_float(value):
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def resolve_ram_target(effective):
    """``(target, source)``: the effective ram_allocation_ratio as nova 34 resolves it.

    ``ram_allocation_ratio`` when set to something other than 0.0, else
    ``initial_ram_allocation_ratio`` when set, else nova's default for it (1.0).
    """
    ram = effective.get("ram_allocation_ratio") or {}
    value = to_float(ram.get("value"))
    if value:  # None and 0.0 mean "unset" to nova
        return value, f"ram_allocation_ratio in {ram['source']}:{ram['line']}"
    initial = effective.get("initial_ram_allocation_ratio") or {}
    value = to_float(initial.get("value"))
    if value is not None and initial.get("value") is not None:
        return value, f"initial_ram_allocation_ratio in {initial['source']}:{initial['line']} (ram_allocation_ratio unset)"
    return (
        NOVA_DEFAULTS["initial_ram_allocation_ratio"],
        "nova default: ram_allocation_ratio unset -> initial_ram_allocation_ratio 1.0 (nova 34)",
    )


def resolve_reserved_mb(effective):
    """``(reserved_host_memory_mb, source)``; nova's default is 512."""
    row = effective.get("reserved_host_memory_mb") or {}
    if row.get("value") is not None:
        try:
            return int(str(row["value"]).strip()), f"reserved_host_memory_mb in {row['source']}:{row['line']}"
        except ValueError:
            pass
    return NOVA_DEFAULTS["reserved_host_memory_mb"], "nova default (512)"


def conflicts(effective, wanted, ignore=()):
    """Files (other than ``ignore``) that set a managed key to a value different from ``wanted[key]``.

    Which of two files wins depends on nova-compute's command line (see
    ``nova_config_files``), so a different value anywhere else is a conflict.
    Returns a list of ``{"key", "source", "line", "value", "wanted"}``.
    """
    found = []
    for key, want in wanted.items():
        if want is None or key not in effective:
            continue
        for row in effective[key]["set_in"]:
            if row["source"] in ignore:
                continue
            have = to_float(row["value"])
            if have is None or abs(have - float(want)) > 1e-9:
                found.append({"key": key, "source": row["source"], "line": row["line"], "value": row["value"],
                              "wanted": want})
    return found
