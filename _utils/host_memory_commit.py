"""
Memory over-commit on a compute host, as plain arithmetic (issue 6): the settings the
``host.overcommit`` state refuses, and the committed-memory report with its verdict.

    placement capacity (MEMORY_MB) = (MemTotal - reserved_host_memory_mb) x ram_allocation_ratio

``commit_report`` measures the same from the host's side: the domains' maximum memory over
(MemTotal - reserved), against nova's target, plus MemAvailable and KSM's savings.
"""

import os

import host_ksm
import host_nova_conf
from host_errors import read_text

# Below Nova's own default the host has nothing left for libvirt, OVS, QEMU overhead and the page cache.
MIN_RESERVED_MB = 512
PILLAR_KEY = "deskfleet:host:overcommit"


def parse_meminfo(text):
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


def check_settings(ram_allocation_ratio, cpu_allocation_ratio, reserved_host_memory_mb, disk_allocation_ratio=None,
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
                f"(salt <host> host_overcommit.commit_ratio), set {where}:allow_high_ram_ratio: true."
            )
    if ksm_enabled:
        for what, value in (("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep_millisecs)):
            if value is None:
                continue
            number = _number(value, f"{where}:ksm:{what}", problems, integer=True)
            if number is not None and number < 1:
                problems.append(f"{where}:ksm:{what} must be at least 1, not {number}.")
    return problems


def verdict(ratio, target, mem_available_fraction, warn_fraction=0.9, available_warn=0.10,
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


def commit_report(meminfo, domains, reserved_mb, target, target_source="", reserved_source="", ksm=None,
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
    state, reasons = verdict(ratio, float(target), available_fraction, warn_fraction, available_warn,
                             available_critical)
    ksm = ksm or {}
    saved = host_ksm.saved_bytes(ksm, page_size) if ksm else 0
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


def _validate_files(problems, root, nova_dir, prog, dropin, wanted, require_nova_conf):
    """nova.conf present, conflicting nova config files, nova.conf's own settings (``shadowed``), the paths."""
    nova_dir = root + nova_dir
    files, found = host_nova_conf.read_effective(nova_dir, prog)
    nova_conf = f"{nova_dir}/nova.conf"
    dropin_path = f"{nova_dir}/nova.conf.d/{dropin}"
    if require_nova_conf and not os.path.exists(nova_conf):
        problems.append(f"{nova_conf} does not exist: is nova-compute installed on this host? "
                        "Target compute hosts only.")
    conflicting = host_nova_conf.conflicts(found, wanted, ignore=(nova_conf, dropin_path))
    for row in conflicting:
        problems.append(
            f"{row['source']}:{row['line']} sets {row['key']} = {row['value']} but host.overcommit sets "
            f"{row['wanted']}; nova would use one or the other depending on its command line. Remove it from "
            f"that file or set the pillar to the same value."
        )
    shadowed = sorted(
        {(row["line"], key) for key, row in found.items() if key in wanted and wanted[key] is not None
         for row in [r for r in row["set_in"] if r["source"] == nova_conf]}
    )
    return {"conflicts": conflicting, "shadowed": [{"line": line, "key": key} for line, key in shadowed],
            "nova_conf": nova_conf, "dropin": dropin_path, "files": files}


def validate_host(settings, root, meminfo, nova_dir, prog, dropin, ksm_sysfs, require_nova_conf=True):
    """
    ``host_overcommit.validate``'s report: :func:`check_settings` on ``settings`` (keyword arguments of it
    but ``mem_total_kb``) against this host's MemTotal, plus the host checks: nova.conf present,
    no other nova file setting a managed key differently, KSM in the kernel when enabled.
    """
    mem = parse_meminfo(read_text(root + meminfo)) if os.path.exists(root + meminfo) else {}
    problems = check_settings(mem_total_kb=mem.get("MemTotal"), **settings)
    disk = settings.get("disk_allocation_ratio")
    wanted = {"ram_allocation_ratio": settings["ram_allocation_ratio"],
              "cpu_allocation_ratio": settings["cpu_allocation_ratio"],
              "reserved_host_memory_mb": settings["reserved_host_memory_mb"],
              "disk_allocation_ratio": disk if disk not in (None, "") else None}
    report = _validate_files(problems, root, nova_dir, prog, dropin, wanted, require_nova_conf)
    if settings.get("ksm_enabled") and not os.path.exists(f"{root}{ksm_sysfs}/run"):
        problems.append(f"{root}{ksm_sysfs}/run does not exist: this kernel has no KSM (CONFIG_KSM); "
                        f"set {PILLAR_KEY}:ksm:enabled: false and a RAM ratio of at most the ceiling.")
    ksm = "enabled" if settings.get("ksm_enabled") else "left alone"
    report.update(result=not problems, problems=problems, comment=" ".join(problems) if problems else (
        f"ram_allocation_ratio {settings['ram_allocation_ratio']}, cpu_allocation_ratio "
        f"{settings['cpu_allocation_ratio']}, reserved_host_memory_mb {settings['reserved_host_memory_mb']}"
        + (f", disk_allocation_ratio {disk}" if disk not in (None, "") else "") + f"; KSM {ksm}"))
    return report
