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
explicit argument, else pillar ``deskfleet:host:overcommit`` (root, nova paths,
targets, ``monitor``), else ``states/host/overcommit/parameters/`` read from the
file server (the old pillar key ``host_overcommit`` and minion config
``host_memory:<key>`` are read for one more release, with a warning). The parsing
and the arithmetic are in ``_utils/host_nova_conf.py``, ``host_ksm.py`` and
``host_memory_commit.py``, unit-tested without Salt; this module is their Salt shell.
"""

import copy
import logging
import os

try:
    import host_formula
    import host_ksm
    import host_libvirt
    import host_memory_commit
    import host_nova_conf
    from host_errors import HostError, read_text

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - _utils not synced
    _MISSING = f"host_overcommit: deskfleet host utils not importable (saltutil.sync_utils?): {_exc}"

__virtualname__ = "host_overcommit"

log = logging.getLogger(__name__)
def __virtual__():
    if _MISSING:
        return (False, _MISSING)
    if os.uname().sysname != "Linux":
        return (False, "host_overcommit: Linux compute hosts only (/proc/meminfo, /sys/kernel/mm/ksm)")
    return __virtualname__


# flat argument names -> their place in deskfleet:host:overcommit (and the deprecated minion config
# key host_memory:<name>, read for one more release)
_PATHS = {
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
    "meminfo": "monitor:meminfo",
    "page_size": "monitor:page_size",
}


def _get(cfg, path):
    for key in path.split(":"):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return copy.deepcopy(cfg)


def _settings():
    """deskfleet:host:overcommit over the formula's parameters (``_utils/host_formula.py``)."""
    # pylint: disable=undefined-variable
    cfg = host_formula.from_salt("overcommit", __salt__, __grains__, log=log)
    for name, path in _PATHS.items():
        legacy = __salt__["config.get"](f"host_memory:{name}", None)
        if legacy is not None:
            note = host_formula.deprecation(f"host_memory:{name}", "overcommit", kind="config")
            log.warning("deskfleet: %s", note)
            cfg["deprecated"].append(note)
            keys = path.split(":")
            node = cfg
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = legacy
    return cfg


def _cfg(key, value=None, cfg=None):
    """An explicit argument, else the setting (pillar, then the formula's defaults)."""
    if value is not None:
        return value
    return _get(cfg if cfg is not None else _settings(), _PATHS[key])


def _root(root, cfg):
    return str(_cfg("root", root, cfg) or "").rstrip("/")


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _page_size(page_size, cfg):
    value = _cfg("page_size", page_size, cfg)
    return int(value) if value else os.sysconf("SC_PAGE_SIZE")


def _nova_effective(cfg, root, nova_dir=None, prog=None):
    nova_dir = root + str(_cfg("nova_dir", nova_dir, cfg))
    files, effective = host_nova_conf.read_effective(nova_dir, str(_cfg("nova_prog", prog, cfg) or ""))
    return nova_dir, files, effective


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

        salt '*' host_overcommit.nova_config
        salt '*' host_overcommit.nova_config root=/tmp/fakeroot
    """
    cfg = _settings()
    root = _root(root, cfg)
    nova_dir, files, effective = _nova_effective(cfg, root, nova_dir, prog)
    target, target_source = host_nova_conf.resolve_ram_target(effective)
    reserved, reserved_source = host_nova_conf.resolve_reserved_mb(effective)
    return {
        "nova_dir": nova_dir,
        "files": files,
        "settings": effective,
        "ram_allocation_ratio": target,
        "ram_target_source": target_source,
        "reserved_host_memory_mb": reserved,
        "reserved_source": reserved_source,
        "multiple_values": host_nova_conf.multiple_values(effective),
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

        salt '*' host_overcommit.ksm_status
        salt '*' host_overcommit.ksm_status root=/tmp/fakeroot page_size=4096
    """
    cfg = _settings()
    root = _root(root, cfg)
    sysfs = str(_cfg("ksm_sysfs", sysfs, cfg))
    summary = host_ksm.summary(host_ksm.read_values(root + sysfs), _page_size(page_size, cfg))
    summary["sysfs"] = root + sysfs
    summary["persisted"] = host_ksm.persisted(root, sysfs)
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

    ``uri`` defaults to ``deskfleet:host:overcommit:monitor:libvirt_uri`` (``qemu:///system``);
    ``reserved_mb`` and ``target`` override what nova.conf says; ``root`` and
    ``meminfo`` relocate the files read (tests).

    CLI Example:

    .. code-block:: bash

        salt -G deskfleet_role:compute host_overcommit.commit_ratio
        salt 'cmp-*' host_overcommit.commit_ratio include_defined=True --out=json
        salt-call host_overcommit.commit_ratio uri=test:///tmp/node.xml root=/tmp/fakeroot
    """
    cfg = _settings()
    root = _root(root, cfg)
    uri = str(_cfg("libvirt_uri", uri, cfg))
    include_defined = _bool(_cfg("include_defined", include_defined, cfg))
    meminfo_path = root + str(_cfg("meminfo", meminfo, cfg))
    info = host_memory_commit.parse_meminfo(read_text(meminfo_path))
    if "MemTotal" not in info:
        raise HostError(f"no MemTotal in {meminfo_path}")
    _, _, effective = _nova_effective(cfg, root)
    if target is None:
        target_value, target_source = host_nova_conf.resolve_ram_target(effective)
    else:
        target_value, target_source = float(target), "argument"
    if reserved_mb is None:
        reserved_value, reserved_source = host_nova_conf.resolve_reserved_mb(effective)
    else:
        reserved_value, reserved_source = int(reserved_mb), "argument"
    domains = host_libvirt.memory(uri, include_defined)
    ksm = host_ksm.read_values(root + str(_cfg("ksm_sysfs", None, cfg)))
    report = host_memory_commit.commit_report(
        info, domains, reserved_value, target_value, target_source, reserved_source,
        ksm=ksm if ksm.get("run") is not None else None,
        page_size=_page_size(page_size, cfg),
        include_defined=include_defined,
        warn_fraction=float(_cfg("warn_fraction", warn_fraction, cfg)),
        available_warn=float(_cfg("mem_available_warn", mem_available_warn, cfg)),
        available_critical=float(_cfg("mem_available_critical", mem_available_critical, cfg)),
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

    Unset arguments come from pillar ``deskfleet:host:overcommit``, else the formula's defaults.
    Returns ``result``, ``comment``, ``problems``, ``conflicts``, ``shadowed``.

    CLI Example:

    .. code-block:: bash

        salt '*' host_overcommit.validate
        salt '*' host_overcommit.validate ram_allocation_ratio=1.8 allow_high_ram_ratio=True
    """
    cfg = _settings()

    def pick(value, path):
        return value if value is not None else _get(cfg, path)

    allow = pick(allow_high_ram_ratio, "allow_high_ram_ratio")
    settings = {
        "ram_allocation_ratio": pick(ram_allocation_ratio, "nova:ram_allocation_ratio"),
        "cpu_allocation_ratio": pick(cpu_allocation_ratio, "nova:cpu_allocation_ratio"),
        "disk_allocation_ratio": pick(disk_allocation_ratio, "nova:disk_allocation_ratio"),
        "reserved_host_memory_mb": pick(reserved_host_memory_mb, "nova:reserved_host_memory_mb"),
        "ksm_enabled": _bool(pick(ksm_enabled, "ksm:enabled")),
        "allow_high_ram_ratio": _bool(allow) if isinstance(allow, str) else allow is True,
        "ram_ratio_ceiling": _cfg("ram_ratio_ceiling", ram_ratio_ceiling, cfg),
        "pages_to_scan": pick(pages_to_scan, "ksm:pages_to_scan"),
        "sleep_millisecs": pick(sleep_millisecs, "ksm:sleep_millisecs"),
    }
    return host_memory_commit.validate_host(
        settings, _root(root, cfg), str(_cfg("meminfo", None, cfg)), str(_cfg("nova_dir", nova_dir, cfg)),
        str(_cfg("nova_prog", prog, cfg) or ""), _cfg("dropin", dropin, cfg), str(_cfg("ksm_sysfs", ksm_sysfs, cfg)),
        require_nova_conf=_bool(require_nova_conf))
