"""
Whether the libvirt ⟂ Open vSwitch start/stop order is in force on a compute host (issue 4):
systemd unit files and drop-ins (``After=`` + ``Wants=``/``Requires=`` on the OVS units) read
under a root directory, and OVS's ``--delete-transient-ports`` in the distro's defaults file.
The unit names per OS family come from the caller (the boot_order formula's parameters).
"""

import os
import subprocess

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DROPIN_DIRS = ("/etc/systemd/system", "/run/systemd/system")
TRANSIENT_FLAG = "--delete-transient-ports"
DEPENDENCY_KEYS = ("After", "Before", "Wants", "Requires", "BindsTo", "Requisite")


def parse_unit_deps(text, deps=None):
    """After=/Before=/Wants=/Requires=/BindsTo= of one unit file or drop-in ([Unit] only)."""
    deps = deps if deps is not None else {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Unit" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key not in DEPENDENCY_KEYS:
            continue
        if not value:  # an empty assignment resets the list
            deps[key] = []
        else:
            deps.setdefault(key, []).extend(value.split())
    return deps


def parse_ovs_opts(text, var):
    """The last active ``VAR=...`` assignment of a shell-style defaults file, unquoted, or None."""
    value = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if line.startswith(f"{var}="):
            value = line[len(var) + 1 :].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
    return value


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _dropins(root, unit):
    found = []
    for d in DROPIN_DIRS:
        ddir = f"{root}{d}/{unit}.d"
        if os.path.isdir(ddir):
            found += [f"{ddir}/{name}" for name in sorted(os.listdir(ddir)) if name.endswith(".conf")]
    return found


def unit_order_status(root, unit, ovs_units):
    """Whether ``unit`` (under ``root``) starts after and wants/requires the OVS units."""
    unit_file = next((root + d + "/" + unit for d in UNIT_DIRS if os.path.exists(root + d + "/" + unit)), None)
    deps = parse_unit_deps(_read(unit_file) or "") if unit_file else {}
    dropins = _dropins(root, unit)
    for path in sorted(dropins, key=os.path.basename):
        parse_unit_deps(_read(path) or "", deps)
    after = set(deps.get("After", []))
    pulls = set(deps.get("Wants", [])) | set(deps.get("Requires", [])) | set(deps.get("BindsTo", []))
    missing_after = [u for u in ovs_units if u not in after]
    return {
        "installed": unit_file is not None,
        "dropins": dropins,
        "after": sorted(after & set(ovs_units)),
        "wants_or_requires": sorted(pulls & set(ovs_units)),
        "missing_after": missing_after,
        "ordered": not missing_after and bool(pulls & set(ovs_units)),
    }


def systemd_live(unit, ovs_units):
    """What the running systemd has loaded for ``unit`` (``systemctl show``)."""
    proc = subprocess.run(
        ["systemctl", "show", "-p", "After", "-p", "Wants", "-p", "Requires", "-p", "LoadState", unit],
        capture_output=True, text=True, check=False,
    )
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    after = set(props.get("After", "").split())
    pulls = set(props.get("Wants", "").split()) | set(props.get("Requires", "").split())
    return {
        "load_state": props.get("LoadState"),
        "ordered": all(u in after for u in ovs_units) and bool(pulls & set(ovs_units)),
    }


def transient_status(root, defaults_file, var):
    """Whether ``--delete-transient-ports`` is in ``var`` of the OVS defaults file under ``root``."""
    path = root + defaults_file
    text = _read(path)
    value = parse_ovs_opts(text or "", var)
    return {"file": path, "exists": text is not None, "variable": var, "value": value,
            "enabled": bool(value) and TRANSIENT_FLAG in value.split()}


def _problems(report, considered, live):
    units = report["units"]
    problems = [f"{u}: not ordered after {', '.join(units[u]['missing_after']) or 'wanted OVS units'}"
                for u in considered if not units[u]["ordered"]]
    if not any(u in considered for u in ("libvirtd.service", "virtqemud.service")):
        problems.append("neither libvirtd.service nor virtqemud.service is installed or has a drop-in")
    transient = report["transient_ports"]
    if not transient["enabled"]:
        problems.append(f"{TRANSIENT_FLAG} not in {transient['variable']} of {transient['file']}")
    if live:
        problems += [f"{u}: systemd's loaded unit is not ordered" for u, s in live.items()
                     if s["load_state"] == "loaded" and not s["ordered"]]
    return problems


def check_order(root, family, units, ovs_units, systemd=None, live=systemd_live):
    """
    The ``check_order`` report: ``family`` has ``ovs_defaults_file`` and ``ovs_opts_var``; a unit
    counts when it is installed or has a drop-in; ``systemd`` (default: when root is '' and systemd
    runs) also asks the running systemd through ``live(unit, ovs_units)``.
    """
    report = {"units": {}, "os_family": family.get("os_family"), "root": root or "/"}
    considered = []
    for unit in units:
        status = unit_order_status(root, unit, ovs_units)
        report["units"][unit] = status
        if status["installed"] or status["dropins"]:
            considered.append(unit)
    report["transient_ports"] = transient_status(root, family["ovs_defaults_file"], family["ovs_opts_var"])
    if systemd is None:
        systemd = not root and os.path.isdir("/run/systemd/system")
    report["systemd"] = {unit: live(unit, ovs_units) for unit in considered} if systemd else None
    problems = _problems(report, considered, report["systemd"])
    report["ok"] = not problems
    report["problems"] = problems
    return report
