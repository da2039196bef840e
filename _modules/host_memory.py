"""
Memory over-commit on a compute host: how much guest memory is committed
against what Nova is allowed to commit, and what KSM is saving (issue 6).

Hosts were over-committed until they ran out of memory and the OOM killer took
a desktop (or libvirtd) down. Nova decides how much it may place on a host from
``[DEFAULT]`` in nova.conf:

    placement capacity (MEMORY_MB) = (MemTotal - reserved_host_memory_mb) x ram_allocation_ratio

``commit_ratio`` measures the same thing from the host's side: the memory the
libvirt domains may use (their maximum memory, KiB) over the usable memory
(``MemTotal`` from /proc/meminfo minus ``reserved_host_memory_mb``), against the
target ratio nova is configured with, plus ``MemAvailable`` and KSM's savings,
and gives a verdict:

- ``critical``: ratio above the target, or MemAvailable below 5 % of MemTotal;
- ``warning``: ratio above 90 % of the target, or MemAvailable below 10 %;
- ``ok`` otherwise.

The target is the effective ``ram_allocation_ratio`` of nova.conf and its
config dirs (``nova_config``). Nova 34 (2025.2): ``ram_allocation_ratio``
defaults to None (nova/conf/compute.py:466-467), and a compute node whose ratio
is unset takes ``initial_ram_allocation_ratio``, default 1.0
(nova/conf/compute.py:546-547; nova/objects/compute_node.py:201-215). 1.5 was
the default before Stein and is what the deskfleet Nova lab sets on purpose.
So with nothing set, the target here is 1.0 and ``target_source`` says so
(a ratio set by hand through the placement API is not visible from the host).

``validate`` holds the rules the ``host.overcommit`` state enforces before it
writes anything; ``ksm_status`` reads /sys/kernel/mm/ksm.

Every path is ``root`` + an absolute path so tests point ``root`` at a temp dir
holding a fake /proc/meminfo, /etc/nova and /sys/kernel/mm/ksm. Settings: an
explicit argument, else ``config.get host_memory:<key>`` (minion config,
grains or pillar), else pillar ``host_overcommit`` (root, nova paths, targets),
else the defaults below. The parsing and the arithmetic are plain functions
without Salt dunders, unit-tested directly.
"""

import copy
import glob
import logging
import os
import re

try:
    import libvirt  # pylint: disable=import-error

    HAS_LIBVIRT = True
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)

__virtualname__ = "host_memory"

PILLAR_KEY = "host_overcommit"
# Nova's [DEFAULT] keys the host.overcommit state manages.
NOVA_KEYS = ("ram_allocation_ratio", "cpu_allocation_ratio", "disk_allocation_ratio", "reserved_host_memory_mb")
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
# Below Nova's own default the host has nothing left for libvirt, OVS, QEMU overhead and the page cache.
MIN_RESERVED_MB = 512
KSM_FIELDS = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "ksm_zero_pages",
    "use_zero_pages",
    "general_profit",
    "merge_across_nodes",
    "max_page_sharing",
)
KSM_RUN_STATES = {0: "stopped", 1: "running", 2: "unmerging"}
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d")
# Same values as states/host/overcommit/defaults.yaml (a unit test keeps them equal).
DEFAULTS = {
    "root": "",
    "libvirt_uri": "qemu:///system",
    "meminfo": "/proc/meminfo",
    "ksm_sysfs": "/sys/kernel/mm/ksm",
    "nova_dir": "/etc/nova",
    "nova_prog": "nova-compute",
    "dropin": "60-deskfleet-overcommit.conf",
    "include_defined": False,
    "page_size": None,  # os.sysconf('SC_PAGE_SIZE')
    "warn_fraction": 0.9,
    "mem_available_warn": 0.10,
    "mem_available_critical": 0.05,
    "ram_ratio_ceiling": 1.5,
}
# What host.overcommit sets by default (states/host/overcommit/defaults.yaml, host_overcommit:nova / :ksm).
STATE_DEFAULTS = {
    "ram_allocation_ratio": 1.2,
    "cpu_allocation_ratio": 2.0,
    "disk_allocation_ratio": None,
    "reserved_host_memory_mb": 4096,
    "ksm": {"enabled": True, "pages_to_scan": 1000, "sleep_millisecs": 20},
}

_SECTION_RE = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_KEY_RE = re.compile(r"^(?P<key>[^\s=:#;][^=:]*?)\s*[=:]\s*(?P<value>.*)$")


class HostMemoryError(Exception):
    """A source could not be read (CommandExecutionError under Salt)."""


def __virtual__():
    if os.uname().sysname != "Linux":
        return (False, "host_memory: Linux compute hosts only (/proc/meminfo, /sys/kernel/mm/ksm)")
    return __virtualname__


# --------------------------------------------------------------------------
# Plain logic (no Salt dunders): unit-tested directly
# --------------------------------------------------------------------------


def _parse_meminfo(text):
    """``{field: kB}`` from /proc/meminfo text (``MemTotal:  16384000 kB``); values are ints (kB)."""
    info = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            info[name.strip()] = int(fields[0])
        except ValueError:
            continue
    return info


def _parse_ini(text):
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


def _nova_config_files(nova_dir, prog="nova-compute", exists=os.path.exists, listdir=glob.glob):
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


def _effective_nova(file_texts, keys=None):
    """Effective ``[DEFAULT]`` values from ``[(path, text), ...]`` read in order (the last setting wins).

    Returns ``{key: {"value", "source", "line", "set_in": [{"source", "line", "value"}, ...]}}`` for
    every key in ``keys`` (default: the managed keys and the ``initial_*`` ratios); ``value`` is the
    raw string or None when no file sets it.
    """
    keys = tuple(keys or (NOVA_KEYS + ("initial_ram_allocation_ratio", "initial_cpu_allocation_ratio",
                                       "initial_disk_allocation_ratio")))
    found = {key: {"value": None, "source": None, "line": None, "set_in": []} for key in keys}
    for path, text in file_texts:
        for section, key, value, lineno in _parse_ini(text):
            if section.upper() != "DEFAULT" or key not in found:
                continue
            row = found[key]
            row.update(value=value, source=path, line=lineno)
            row["set_in"].append({"source": path, "line": lineno, "value": value})
    return found


def _float(value):
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def _resolve_ram_target(effective):
    """``(target, source)``: the effective ram_allocation_ratio as nova 34 resolves it.

    ``ram_allocation_ratio`` when set to something other than 0.0, else
    ``initial_ram_allocation_ratio`` when set, else nova's default for it (1.0).
    """
    ram = effective.get("ram_allocation_ratio") or {}
    value = _float(ram.get("value"))
    if value:  # None and 0.0 mean "unset" to nova
        return value, f"ram_allocation_ratio in {ram['source']}:{ram['line']}"
    initial = effective.get("initial_ram_allocation_ratio") or {}
    value = _float(initial.get("value"))
    if value is not None and initial.get("value") is not None:
        return value, f"initial_ram_allocation_ratio in {initial['source']}:{initial['line']} (ram_allocation_ratio unset)"
    return (
        NOVA_DEFAULTS["initial_ram_allocation_ratio"],
        "nova default: ram_allocation_ratio unset -> initial_ram_allocation_ratio 1.0 (nova 34)",
    )


def _resolve_reserved_mb(effective):
    """``(reserved_host_memory_mb, source)``; nova's default is 512."""
    row = effective.get("reserved_host_memory_mb") or {}
    if row.get("value") is not None:
        try:
            return int(str(row["value"]).strip()), f"reserved_host_memory_mb in {row['source']}:{row['line']}"
        except ValueError:
            pass
    return NOVA_DEFAULTS["reserved_host_memory_mb"], "nova default (512)"


def _conflicts(effective, wanted, ignore=()):
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
            have = _float(row["value"])
            if have is None or abs(have - float(want)) > 1e-9:
                found.append({"key": key, "source": row["source"], "line": row["line"], "value": row["value"],
                              "wanted": want})
    return found


def _number(value, what, problems, integer=False):
    if isinstance(value, bool) or value is None or value == "":
        problems.append(f"{what} must be a number, not {value!r}.")
        return None
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        problems.append(f"{what} must be a number, not {value!r}.")
        return None
    if integer:
        if number != int(number):
            problems.append(f"{what} must be a whole number, not {value!r}.")
            return None
        return int(number)
    return number


def _check_settings(ram_allocation_ratio, cpu_allocation_ratio, reserved_host_memory_mb, disk_allocation_ratio=None,
                   ksm_enabled=True, allow_high_ram_ratio=False, ram_ratio_ceiling=1.5, pages_to_scan=None,
                   sleep_millisecs=None, mem_total_kb=None, where=PILLAR_KEY):
    """Problems (sentences) with over-commit settings; empty when host.overcommit may write them.

    Refused: a ratio <= 0 (or not a number); ``reserved_host_memory_mb`` below 512
    (nova's own default) or not below MemTotal; a RAM ratio above
    ``ram_ratio_ceiling`` unless KSM is enabled AND ``allow_high_ram_ratio`` is
    true; KSM scan settings below 1.
    """
    problems = []
    ram = _number(ram_allocation_ratio, f"{where}:nova:ram_allocation_ratio", problems)
    cpu = _number(cpu_allocation_ratio, f"{where}:nova:cpu_allocation_ratio", problems)
    for what, value in (("ram_allocation_ratio", ram), ("cpu_allocation_ratio", cpu)):
        if value is not None and value <= 0:
            problems.append(
                f"{where}:nova:{what} must be above 0, not {value:g} (nova reads 0 as unset and falls back to "
                f"initial_{what}; below 0 nova-compute does not start: min=0.0)."
            )
    if disk_allocation_ratio not in (None, ""):
        disk = _number(disk_allocation_ratio, f"{where}:nova:disk_allocation_ratio", problems)
        if disk is not None and disk <= 0:
            problems.append(f"{where}:nova:disk_allocation_ratio must be above 0, not {disk:g} (or leave it unset).")
    reserved = _number(reserved_host_memory_mb, f"{where}:nova:reserved_host_memory_mb", problems, integer=True)
    if reserved is not None and reserved < MIN_RESERVED_MB:
        problems.append(
            f"{where}:nova:reserved_host_memory_mb must be at least {MIN_RESERVED_MB} (nova's default), not "
            f"{reserved}: the host needs memory for libvirt, Open vSwitch, nova-compute and each QEMU "
            f"process's overhead, none of which placement counts."
        )
    if reserved is not None and mem_total_kb and reserved * 1024 >= int(mem_total_kb):
        problems.append(
            f"{where}:nova:reserved_host_memory_mb = {reserved} is not below this host's MemTotal "
            f"({int(mem_total_kb) // 1024} MiB): nothing would be left for guests."
        )
    ceiling = _number(ram_ratio_ceiling, f"{where}:ram_ratio_ceiling", problems)
    if ram is not None and ram > 0 and ceiling is not None and ram > ceiling:
        if not ksm_enabled:
            problems.append(
                f"{where}:nova:ram_allocation_ratio = {ram:g} is above the hard ceiling of {ceiling:g} "
                f"({where}:ram_ratio_ceiling) and KSM is disabled ({where}:ksm:enabled): over-committing that far "
                f"without page sharing is how hosts ran out of memory (OOM). Lower the ratio to {ceiling:g} or less."
            )
        elif allow_high_ram_ratio is not True:
            problems.append(
                f"{where}:nova:ram_allocation_ratio = {ram:g} is above the hard ceiling of {ceiling:g} "
                f"({where}:ram_ratio_ceiling). Lower it, or, only where KSM is measured to save enough "
                f"(salt <host> host_memory.commit_ratio), set {where}:allow_high_ram_ratio: true."
            )
    if ksm_enabled:
        for what, value in (("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep_millisecs)):
            if value is None:
                continue
            number = _number(value, f"{where}:ksm:{what}", problems, integer=True)
            if number is not None and number < 1:
                problems.append(f"{where}:ksm:{what} must be at least 1, not {number}.")
    return problems


def _ksm_saved_bytes(ksm, page_size):
    """Bytes KSM saves: (pages_sharing + ksm_zero_pages) x page size (kernel admin-guide/mm/ksm)."""
    pages = int(ksm.get("pages_sharing") or 0) + int(ksm.get("ksm_zero_pages") or 0)
    return pages * int(page_size)


def _ksm_summary(values, page_size):
    """``ksm_status``'s dict from raw sysfs values (``{field: int or None}``)."""
    run = values.get("run")
    saved = _ksm_saved_bytes(values, page_size)
    summary = {field: values.get(field) for field in KSM_FIELDS}
    summary.update(
        available=run is not None,
        run_state=KSM_RUN_STATES.get(run, "unavailable" if run is None else f"unknown ({run})"),
        page_size=int(page_size),
        saved_bytes=saved,
        saved_mb=round(saved / 1048576, 1),
    )
    return summary


def _domain_memory(conn, include_defined=False, errors=()):
    """``[{"name", "active", "max_kib", "current_kib"}]`` of a libvirt connection's domains.

    Running domains always; defined (shut-off) ones too with ``include_defined``.
    ``max_kib`` is the domain's maximum memory (``maxMemory()``, KiB): what the
    guest may touch, whatever its balloon says now (``current_kib``).
    """
    rows = []
    for dom in conn.listAllDomains(0):
        try:
            active = bool(dom.isActive())
            if not active and not include_defined:
                continue
            info = dom.info()  # [state, maxMem KiB, memory KiB, nrVirtCpu, cpuTime]
            rows.append({"name": dom.name(), "active": active, "max_kib": int(dom.maxMemory()),
                         "current_kib": int(info[2])})
        except errors as exc:  # a domain vanished mid-listing
            log.info("host_memory: skipping domain: %s", exc)
    return sorted(rows, key=lambda r: r["name"])


def _verdict(ratio, target, mem_available_fraction, warn_fraction=0.9, available_warn=0.10,
            available_critical=0.05):
    """``(verdict, reasons)``: critical / warning / ok from the commit ratio and MemAvailable."""
    critical, warning = [], []
    if ratio is None:
        critical.append("no usable memory: reserved_host_memory_mb is not below MemTotal")
    elif ratio > target:
        critical.append(f"commit ratio {ratio:.4f} is above the target {target:g}")
    elif ratio > warn_fraction * target:
        warning.append(
            f"commit ratio {ratio:.4f} is above {warn_fraction:.0%} of the target {target:g} "
            f"({warn_fraction * target:.4g})"
        )
    if mem_available_fraction is not None:
        if mem_available_fraction < available_critical:
            critical.append(f"MemAvailable is {mem_available_fraction:.1%} of MemTotal (< {available_critical:.0%})")
        elif mem_available_fraction < available_warn:
            warning.append(f"MemAvailable is {mem_available_fraction:.1%} of MemTotal (< {available_warn:.0%})")
    if critical:
        return "critical", critical + warning
    if warning:
        return "warning", warning
    return "ok", []


def _commit_report(meminfo, domains, reserved_mb, target, target_source="", reserved_source="", ksm=None,
                  page_size=4096, include_defined=False, warn_fraction=0.9, available_warn=0.10,
                  available_critical=0.05):
    """The ``commit_ratio`` report from parsed /proc/meminfo, ``domain_memory`` rows and nova's settings.

    committed = sum of the domains' max memory; usable = MemTotal - reserved;
    ratio = committed / usable (None when usable <= 0); headroom = target x usable - committed.
    """
    if "MemTotal" not in meminfo:
        raise ValueError("meminfo has no MemTotal")
    total_kib = int(meminfo["MemTotal"])
    available_kib = meminfo.get("MemAvailable")
    committed_kib = sum(int(d["max_kib"]) for d in domains)
    usable_kib = total_kib - int(reserved_mb) * 1024
    ratio = committed_kib / usable_kib if usable_kib > 0 else None
    available_fraction = (int(available_kib) / total_kib) if available_kib is not None and total_kib else None
    state, reasons = _verdict(ratio, float(target), available_fraction, warn_fraction, available_warn,
                             available_critical)
    ksm = ksm or {}
    saved = _ksm_saved_bytes(ksm, page_size) if ksm else 0
    ratio_after_ksm = ((committed_kib - saved / 1024) / usable_kib) if usable_kib > 0 else None
    comment = (
        f"{state}: {len(domains)} domain(s) commit {committed_kib / 1024:.0f} MiB against "
        f"{usable_kib / 1024:.0f} MiB usable (MemTotal {total_kib / 1024:.0f} - reserved {int(reserved_mb)}): "
        + (f"ratio {ratio:.4f}" if ratio is not None else "no usable memory")
        + f", target {float(target):g}"
    )
    if reasons:
        comment += "; " + "; ".join(reasons)
    return {
        "verdict": state,
        "comment": comment,
        "reasons": reasons,
        "ratio": round(ratio, 4) if ratio is not None else None,
        "target": float(target),
        "target_source": target_source,
        "ratio_of_target_pct": round(100 * ratio / float(target), 1) if ratio is not None and target else None,
        "committed_mb": round(committed_kib / 1024, 1),
        "usable_mb": round(usable_kib / 1024, 1),
        "mem_total_mb": round(total_kib / 1024, 1),
        "reserved_host_memory_mb": int(reserved_mb),
        "reserved_source": reserved_source,
        "headroom_mb": round((float(target) * usable_kib - committed_kib) / 1024, 1),
        "mem_available_mb": round(int(available_kib) / 1024, 1) if available_kib is not None else None,
        "mem_available_pct": round(100 * available_fraction, 1) if available_fraction is not None else None,
        "ksm_run": ksm.get("run"),
        "ksm_saved_mb": round(saved / 1048576, 1),
        "ratio_after_ksm": round(ratio_after_ksm, 4) if ratio_after_ksm is not None else None,
        "include_defined": bool(include_defined),
        "domains": domains,
    }


# --------------------------------------------------------------------------
# Salt shell: settings, files, libvirt
# --------------------------------------------------------------------------


def _fail(message):
    """Raise Salt's CommandExecutionError when loaded by Salt, HostMemoryError otherwise."""
    try:
        from salt.exceptions import CommandExecutionError  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover
        raise HostMemoryError(message) from None
    raise CommandExecutionError(message)


def _config(path):
    salt_funcs = globals().get("__salt__")
    if salt_funcs is None:
        return None
    try:
        return salt_funcs["config.get"](path, None)
    except Exception:  # pylint: disable=broad-except
        return None


def _pillar(path, default=None):
    salt_funcs = globals().get("__salt__")
    if salt_funcs is None:
        return default
    try:
        # Salt 3008 masks pillar.get results outside templates unless unmask=True.
        return salt_funcs["pillar.get"](f"{PILLAR_KEY}:{path}", default, unmask=True)
    except Exception:  # pylint: disable=broad-except
        return default


# host_memory:<key> falls back to these pillar host_overcommit paths
_PILLAR_FALLBACK = {
    "root": "root",
    "nova_dir": "nova:config_dir",
    "nova_prog": "nova:prog",
    "dropin": "nova:dropin",
    "ksm_sysfs": "ksm:sysfs",
    "ram_ratio_ceiling": "ram_ratio_ceiling",
    "libvirt_uri": "monitor:libvirt_uri",
    "include_defined": "monitor:include_defined",
    "warn_fraction": "monitor:warn_fraction",
    "mem_available_warn": "monitor:mem_available_warn",
    "mem_available_critical": "monitor:mem_available_critical",
}


def _cfg(key, value=None):
    """An explicit argument, else ``config.get host_memory:<key>``, else pillar host_overcommit, else the default."""
    if value is not None:
        return value
    found = _config(f"host_memory:{key}")
    if found is not None:
        return found
    if key in _PILLAR_FALLBACK:
        found = _pillar(_PILLAR_FALLBACK[key])
        if found is not None:
            return found
    return copy.deepcopy(DEFAULTS.get(key))


def _root(root=None):
    return str(_cfg("root", root) or "").rstrip("/")


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc}")
        return None  # not reached


def _read_int(path):
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _nova_effective(root, nova_dir=None, prog=None):
    nova_dir = root + str(_cfg("nova_dir", nova_dir))
    files = _nova_config_files(nova_dir, str(_cfg("nova_prog", prog) or ""))
    texts = []
    for path in files:
        try:
            texts.append((path, _read(path)))
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("host_memory: %s", exc)
    return nova_dir, files, _effective_nova(texts)


def _ksm_values(root, sysfs=None):
    base = root + str(_cfg("ksm_sysfs", sysfs))
    return base, {field: _read_int(f"{base}/{field}") for field in KSM_FIELDS}


def _page_size(page_size=None):
    value = _cfg("page_size", page_size)
    return int(value) if value else os.sysconf("SC_PAGE_SIZE")


def _ksm_persisted(root, sysfs):
    """tmpfiles.d lines (under root) that write ``<sysfs>/run`` at boot: ``[{"file", "line", "value"}]``."""
    found = []
    target = f"{sysfs.rstrip('/')}/run"
    for directory in TMPFILES_DIRS:
        for path in sorted(glob.glob(f"{root}{directory}/*.conf")):
            try:
                text = _read(path)
            except Exception:  # pylint: disable=broad-except
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                fields = line.split()
                if len(fields) >= 7 and fields[0].startswith("w") and fields[1] == target:
                    found.append({"file": path, "line": lineno, "value": " ".join(fields[6:])})
    return found


def nova_config(root=None, nova_dir=None, prog=None):
    """
    The effective over-commit settings of nova-compute on this host, read from
    ``nova.conf``, ``nova-compute.conf`` and the ``nova.conf.d`` /
    ``nova-compute.conf.d`` drop-ins under ``root`` in oslo.config's default
    order (the last file wins), with the file and line each value comes from,
    every place a key is set (``set_in``), the resolved RAM target and reserve,
    and ``multiple_values`` for keys set to different values in several files
    (which one nova uses then depends on its command line).

    CLI Example:

    .. code-block:: bash

        salt '*' host_memory.nova_config
        salt '*' host_memory.nova_config root=/tmp/fakeroot
    """
    root = _root(root)
    nova_dir, files, effective = _nova_effective(root, nova_dir, prog)
    target, target_source = _resolve_ram_target(effective)
    reserved, reserved_source = _resolve_reserved_mb(effective)
    multiple = sorted(
        key for key, row in effective.items()
        if len({_float(r["value"]) for r in row["set_in"]}) > 1
    )
    return {
        "nova_dir": nova_dir,
        "files": files,
        "settings": effective,
        "ram_allocation_ratio": target,
        "ram_target_source": target_source,
        "reserved_host_memory_mb": reserved,
        "reserved_source": reserved_source,
        "multiple_values": multiple,
    }


def ksm_status(root=None, sysfs=None, page_size=None):
    """
    Kernel samepage merging on this host: ``run`` (0 stopped, 1 running,
    2 unmerging) and ``run_state``, the scan settings (``pages_to_scan``,
    ``sleep_millisecs``), the counters (``pages_shared``, ``pages_sharing``,
    ``pages_unshared``, ``pages_volatile``, ``full_scans``, ``ksm_zero_pages``,
    ``general_profit``), the memory saved ((pages_sharing + ksm_zero_pages) x
    page size: ``saved_bytes``, ``saved_mb``) and ``persisted``: the tmpfiles.d
    lines that set ``run`` at boot. Fields this kernel does not have are None.

    CLI Example:

    .. code-block:: bash

        salt '*' host_memory.ksm_status
        salt '*' host_memory.ksm_status root=/tmp/fakeroot page_size=4096
    """
    root = _root(root)
    sysfs = str(_cfg("ksm_sysfs", sysfs))
    base, values = _ksm_values(root, sysfs)
    summary = _ksm_summary(values, _page_size(page_size))
    summary["sysfs"] = base
    summary["persisted"] = _ksm_persisted(root, sysfs)
    return summary


def commit_ratio(uri=None, root=None, include_defined=None, reserved_mb=None, target=None, meminfo=None,
                 page_size=None, warn_fraction=None, mem_available_warn=None, mem_available_critical=None):
    """
    The committed-memory ratio of this compute host against nova's target, so
    the OOM risk shows before it hits.

    committed = the sum of the libvirt domains' maximum memory (running domains;
    defined, shut-off ones too with ``include_defined=True``); usable = MemTotal
    (``/proc/meminfo``) - ``reserved_host_memory_mb``; ratio = committed / usable;
    target = the effective ``ram_allocation_ratio`` of nova.conf + nova.conf.d
    (unset: initial_ram_allocation_ratio, nova's default 1.0). ``verdict`` is
    ``critical`` when the ratio is above the target or MemAvailable is below 5 %
    of MemTotal, ``warning`` above 90 % of the target or MemAvailable below 10 %,
    else ``ok``; ``reasons`` says why. Also: ``headroom_mb`` (what nova may still
    place), ``ksm_saved_mb`` and ``ratio_after_ksm``.

    ``uri`` defaults to ``host_memory:libvirt_uri`` or ``qemu:///system``;
    ``reserved_mb`` and ``target`` override what nova.conf says; ``root`` and
    ``meminfo`` relocate the files read (tests).

    CLI Example:

    .. code-block:: bash

        salt -G deskfleet_role:compute host_memory.commit_ratio
        salt 'cmp-*' host_memory.commit_ratio include_defined=True --out=json
        salt-call host_memory.commit_ratio uri=test:///tmp/node.xml root=/tmp/fakeroot
    """
    root = _root(root)
    uri = str(_cfg("libvirt_uri", uri))
    include_defined = _bool(_cfg("include_defined", include_defined))
    meminfo_path = root + str(_cfg("meminfo", meminfo))
    info = _parse_meminfo(_read(meminfo_path))
    if "MemTotal" not in info:
        _fail(f"no MemTotal in {meminfo_path}")

    _, _, effective = _nova_effective(root)
    if target is None:
        target_value, target_source = _resolve_ram_target(effective)
    else:
        target_value, target_source = float(target), "argument"
    if reserved_mb is None:
        reserved_value, reserved_source = _resolve_reserved_mb(effective)
    else:
        reserved_value, reserved_source = int(reserved_mb), "argument"

    if not HAS_LIBVIRT:
        _fail("host_memory.commit_ratio needs libvirt-python (python3-libvirt)")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        _fail(f"cannot reach libvirt at {uri}: {exc}")
    try:
        domains = _domain_memory(conn, include_defined, errors=(libvirt.libvirtError,))
    finally:
        conn.close()

    _, ksm = _ksm_values(root)
    report = _commit_report(
        info, domains, reserved_value, target_value, target_source, reserved_source,
        ksm=ksm if ksm.get("run") is not None else None,
        page_size=_page_size(page_size),
        include_defined=include_defined,
        warn_fraction=float(_cfg("warn_fraction", warn_fraction)),
        available_warn=float(_cfg("mem_available_warn", mem_available_warn)),
        available_critical=float(_cfg("mem_available_critical", mem_available_critical)),
    )
    report["libvirt_uri"] = uri
    report["meminfo"] = meminfo_path
    return report


def validate(ram_allocation_ratio=None, cpu_allocation_ratio=None, reserved_host_memory_mb=None,
             disk_allocation_ratio=None, ksm_enabled=None, allow_high_ram_ratio=None, ram_ratio_ceiling=None,
             pages_to_scan=None, sleep_millisecs=None, root=None, nova_dir=None, prog=None, dropin=None,
             ksm_sysfs=None, require_nova_conf=True):
    """
    Check over-commit settings before ``host.overcommit`` writes them: refuse
    ratios <= 0, ``reserved_host_memory_mb`` below 512 or not below MemTotal, a
    RAM ratio above ``ram_ratio_ceiling`` (1.5) unless KSM is enabled and
    ``allow_high_ram_ratio`` is true, a host without nova.conf or (KSM enabled)
    without /sys/kernel/mm/ksm, and another nova config file
    (``nova-compute.conf``, ``nova.conf.d/*.conf`` other than the deskfleet
    drop-in) that sets a managed key to a different value: which of the two nova
    would use depends on its command line. nova.conf's own settings are not a
    conflict: the state comments them out (``shadowed``).

    Unset arguments come from pillar ``host_overcommit``, else the defaults.
    Returns ``result``, ``comment``, ``problems``, ``conflicts``, ``shadowed``.

    CLI Example:

    .. code-block:: bash

        salt '*' host_memory.validate
        salt '*' host_memory.validate ram_allocation_ratio=1.8 allow_high_ram_ratio=True
    """
    def pick(value, path, default):
        return value if value is not None else _pillar(path, default)

    ram = pick(ram_allocation_ratio, "nova:ram_allocation_ratio", STATE_DEFAULTS["ram_allocation_ratio"])
    cpu = pick(cpu_allocation_ratio, "nova:cpu_allocation_ratio", STATE_DEFAULTS["cpu_allocation_ratio"])
    disk = pick(disk_allocation_ratio, "nova:disk_allocation_ratio", STATE_DEFAULTS["disk_allocation_ratio"])
    reserved = pick(reserved_host_memory_mb, "nova:reserved_host_memory_mb", STATE_DEFAULTS["reserved_host_memory_mb"])
    ksm_enabled = _bool(pick(ksm_enabled, "ksm:enabled", STATE_DEFAULTS["ksm"]["enabled"]))
    allow = pick(allow_high_ram_ratio, "allow_high_ram_ratio", False)
    allow = _bool(allow) if isinstance(allow, str) else allow is True
    pages = pick(pages_to_scan, "ksm:pages_to_scan", STATE_DEFAULTS["ksm"]["pages_to_scan"])
    sleep = pick(sleep_millisecs, "ksm:sleep_millisecs", STATE_DEFAULTS["ksm"]["sleep_millisecs"])
    ceiling = _cfg("ram_ratio_ceiling", ram_ratio_ceiling)

    root = _root(root)
    meminfo = _parse_meminfo(_read(root + DEFAULTS["meminfo"])) if os.path.exists(root + DEFAULTS["meminfo"]) else {}
    problems = _check_settings(ram, cpu, reserved, disk, ksm_enabled, allow, ceiling, pages, sleep,
                              meminfo.get("MemTotal"))

    nova_dir, files, effective = _nova_effective(root, nova_dir, prog)
    nova_conf = f"{nova_dir}/nova.conf"
    dropin_path = f"{nova_dir}/nova.conf.d/{_cfg('dropin', dropin)}"
    if _bool(require_nova_conf) and not os.path.exists(nova_conf):
        problems.append(f"{nova_conf} does not exist: is nova-compute installed on this host? Target compute hosts only.")
    wanted = {"ram_allocation_ratio": ram, "cpu_allocation_ratio": cpu, "reserved_host_memory_mb": reserved,
              "disk_allocation_ratio": disk if disk not in (None, "") else None}
    found = _conflicts(effective, wanted, ignore=(nova_conf, dropin_path))
    for row in found:
        problems.append(
            f"{row['source']}:{row['line']} sets {row['key']} = {row['value']} but host.overcommit sets "
            f"{row['wanted']}; nova would use one or the other depending on its command line. Remove it from "
            f"that file or set the pillar to the same value."
        )
    if ksm_enabled:
        sysfs = root + str(_cfg("ksm_sysfs", ksm_sysfs))
        if not os.path.exists(f"{sysfs}/run"):
            problems.append(f"{sysfs}/run does not exist: this kernel has no KSM (CONFIG_KSM); "
                            f"set {PILLAR_KEY}:ksm:enabled: false and a RAM ratio of at most the ceiling.")
    shadowed = sorted(
        {(row["line"], key) for key, row in effective.items() if key in wanted and wanted[key] is not None
         for row in [r for r in row["set_in"] if r["source"] == nova_conf]}
    )
    return {
        "result": not problems,
        "comment": " ".join(problems) if problems else (
            f"ram_allocation_ratio {ram}, cpu_allocation_ratio {cpu}, reserved_host_memory_mb {reserved}"
            + (f", disk_allocation_ratio {disk}" if disk not in (None, "") else "")
            + f"; KSM {'enabled' if ksm_enabled else 'left alone'}"
        ),
        "problems": problems,
        "conflicts": found,
        "shadowed": [{"line": line, "key": key} for line, key in shadowed],
        "nova_conf": nova_conf,
        "dropin": dropin_path,
        "files": files,
    }
