"""
The dnsmasq instances running on a host (issue 5), read from ``/proc`` (any root, so tests use a
fake one): each one's command line plus the files it reads through ``conf-file``/``conf-dir``,
summarised, and the checks that find instances able to drop each other's unicast DHCP renewals:
``dhcp_multiple_interfaces``, ``dhcp_wildcard_interface``, ``no_bind_interfaces``,
``overlapping_dhcp_ranges``, ``shared_interface`` (same network namespace only), ``old_version``.
"""

import logging
import os
import re
import shutil
import subprocess

from host_dnsmasq_options import (
    MIN_VERSION,
    conf_dir_files,
    parse_cmdline,
    parse_conf_text,
    parse_range,
    parse_version,
    ranges_overlap,
    split_list,
)

log = logging.getLogger(__name__)

DEFAULT_CONF = "/etc/dnsmasq.conf"  # what dnsmasq reads when no -C/--conf-file is given
_MAX_INCLUDE_DEPTH = 16


def _read(path, mode="r"):
    with open(path, mode) as handle:  # pylint: disable=unspecified-encoding
        return handle.read()


def proc_cmdline(proc, pid):
    try:
        raw = _read(os.path.join(proc, str(pid), "cmdline"), "rb")
    except OSError:
        return None
    argv = [part.decode("utf-8", "replace") for part in raw.split(b"\0")]
    while argv and argv[-1] == "":
        argv.pop()
    return argv or None


def is_dnsmasq(proc, pid, argv):
    try:
        comm = _read(os.path.join(proc, str(pid), "comm")).strip()
    except OSError:
        comm = ""
    return comm == "dnsmasq" or os.path.basename(argv[0]) == "dnsmasq"


def netns_of(proc, pid):
    """``net:[<inode>]`` of a process, or None when it cannot be read."""
    try:
        return os.readlink(os.path.join(proc, str(pid), "ns", "net"))
    except OSError:
        return None


def resolve_netns(netns, netns_dir="/run/netns"):
    """
    A network namespace given as a name under ``netns_dir`` (as ``ip netns`` makes
    them), an inode number, or ``net:[<inode>]``; returned as ``net:[<inode>]``.
    """
    if netns is None:
        return None
    text = str(netns)
    if re.match(r"^net:\[\d+\]$", text):
        return text
    if text.isdigit():
        return f"net:[{text}]"
    path = text if os.path.isabs(text) else os.path.join(netns_dir, text)
    return f"net:[{os.stat(path).st_ino}]"


def in_root(proc, pid, path):
    """Read ``path`` as the process sees it (through /proc/<pid>/root when that exists)."""
    if not os.path.isabs(path):
        return path
    root = os.path.join(proc, str(pid), "root")
    if os.path.isdir(root):
        return os.path.join(root, path.lstrip("/"))
    return path


def collect_options(pairs, opener, files, missing, depth=0):
    """
    Expand ``conf-file``/``conf-dir`` includes in ``pairs`` (recursively) into one
    flat list of options; ``opener(path)`` returns text or raises OSError,
    ``opener.listdir(path)`` lists a directory.
    """
    out = []
    for name, value in pairs:
        if name == "conf-file" and value:
            out.extend(_include_file(value, opener, files, missing, depth))
        elif name == "conf-dir" and value:
            directory = value.split(",")[0].strip()
            try:
                listing = opener.listdir(directory)
            except OSError:
                missing.append(directory)
                continue
            for entry in conf_dir_files(listing, value):
                out.extend(_include_file(os.path.join(directory, entry), opener, files, missing, depth))
        else:
            out.append((name, value))
    return out


def _include_file(path, opener, files, missing, depth):
    if depth >= _MAX_INCLUDE_DEPTH or path in files:
        return []
    try:
        text = opener(path)
    except OSError:
        missing.append(path)
        return []
    files.append(path)
    return collect_options(parse_conf_text(text), opener, files, missing, depth + 1)


class _Opener:
    """Reads configuration files as process ``pid`` sees them."""

    def __init__(self, proc, pid):
        self.proc, self.pid = proc, pid

    def __call__(self, path):
        if os.path.isdir(in_root(self.proc, self.pid, path)):
            raise IsADirectoryError(path)
        return _read(in_root(self.proc, self.pid, path))

    def listdir(self, path):
        return [
            name for name in os.listdir(in_root(self.proc, self.pid, path))
            if os.path.isfile(os.path.join(in_root(self.proc, self.pid, path), name))
        ]


def summarise(pid, argv, options, files, missing, netns=None):
    """One instance's effective settings from its flat option list."""
    interfaces, excepted, no_dhcp, listen, ranges = [], [], [], [], []
    bind = None
    pid_file = lease_file = None
    for name, value in options:
        if name == "interface":
            interfaces.extend(split_list(value))
        elif name == "except-interface":
            excepted.extend(split_list(value))
        elif name in ("no-dhcp-interface", "no-dhcpv4-interface"):
            no_dhcp.extend(split_list(value))
        elif name == "listen-address":
            listen.extend(split_list(value))
        elif name == "dhcp-range" and value:
            ranges.append(parse_range(value))
        elif name == "bind-interfaces":
            bind = bind or "bind-interfaces"
        elif name == "bind-dynamic":
            bind = "bind-dynamic"
        elif name == "pid-file":
            pid_file = value
        elif name in ("dhcp-leasefile", "dhcp-lease"):
            lease_file = value
    dhcp_interfaces = [name for name in dict.fromkeys(interfaces) if name not in no_dhcp and name not in excepted]
    return {
        "pid": pid,
        "netns": netns,
        "cmdline": list(argv),
        "conf_files": files,
        "missing_files": missing,
        "interfaces": list(dict.fromkeys(interfaces)),
        "except_interfaces": excepted,
        "no_dhcp_interfaces": no_dhcp,
        "listen_addresses": listen,
        "dhcp": bool(ranges),
        "dhcp_interfaces": dhcp_interfaces,
        "dhcp_ranges": ranges,
        "bind": bind,
        "pid_file": pid_file,
        "lease_file": lease_file,
    }


def read_instance(proc, pid, argv, default_conf=DEFAULT_CONF):
    """Everything about one running dnsmasq: its command line plus the files it read."""
    pairs = parse_cmdline(argv)
    if not any(name == "conf-file" for name, _ in pairs):
        # no -C at all: dnsmasq reads its compiled-in default file
        pairs = [("conf-file", default_conf)] + pairs
    # "--conf-file" with no value means "no file": drop it
    pairs = [(name, value) for name, value in pairs if not (name == "conf-file" and not value)]
    files, missing = [], []
    options = collect_options(pairs, _Opener(proc, pid), files, missing)
    return summarise(pid, argv, options, files, missing, netns=netns_of(proc, pid))


def pids_from_files(pidfiles):
    pids = []
    for path in pidfiles or []:
        try:
            pids.append(int(_read(path).split()[0]))
        except (OSError, ValueError, IndexError):
            log.debug("host_dnsmasq_instances: no pid in %s", path)
    return pids


def instances(proc="/proc", pids=None, netns=None, default_conf=DEFAULT_CONF):
    """Every dnsmasq under ``proc`` (optionally only ``pids`` / one network namespace)."""
    wanted = {int(pid) for pid in pids} if pids is not None else None
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in sorted((e for e in entries if e.isdigit()), key=int):
        pid = int(entry)
        if wanted is not None and pid not in wanted:
            continue
        argv = proc_cmdline(proc, pid)
        if not argv or not is_dnsmasq(proc, pid, argv):
            continue
        if netns is not None and netns_of(proc, pid) != netns:
            continue
        found.append(read_instance(proc, pid, argv, default_conf=default_conf))
    return found


# ---------------------------------------------------------------- checks (no Salt)


def _finding(check, severity, pids, message):
    return {"check": check, "severity": severity, "pids": sorted(pids), "message": message}


def _instance_findings(inst):
    pid = inst["pid"]
    out = []
    if inst["dhcp"]:
        wildcards = [name for name in inst["interfaces"] if "*" in name]
        if not inst["interfaces"]:
            how = "listen-address only" if inst["listen_addresses"] else "no interface="
            out.append(_finding(
                "dhcp_wildcard_interface", "error", [pid],
                f"pid {pid} serves DHCP on every interface ({how}): its DHCP socket is 0.0.0.0:67, "
                "not bound to a device",
            ))
        elif wildcards:
            out.append(_finding(
                "dhcp_wildcard_interface", "error", [pid],
                f"pid {pid} serves DHCP on wildcard interface(s) {', '.join(wildcards)}: "
                "dnsmasq does not bind its DHCP socket to a device then",
            ))
        if len(inst["dhcp_interfaces"]) > 1:
            out.append(_finding(
                "dhcp_multiple_interfaces", "error", [pid],
                f"pid {pid} serves DHCP on {len(inst['dhcp_interfaces'])} interfaces "
                f"({', '.join(inst['dhcp_interfaces'])}): its DHCP socket is 0.0.0.0:67 and another "
                "instance can receive (and drop) its unicast renewals; run one instance per interface",
            ))
    if inst["bind"] is None:
        out.append(_finding(
            "no_bind_interfaces", "error", [pid],
            f"pid {pid} has neither bind-interfaces nor bind-dynamic: it binds wildcard sockets",
        ))
    for path in inst["missing_files"]:
        out.append(_finding("conf_unreadable", "warning", [pid], f"pid {pid}: cannot read {path}"))
    return out


def _pair_findings(first, second):
    """Two instances of one network namespace: overlapping ranges, a shared DHCP interface."""
    out = []
    pair = [first["pid"], second["pid"]]
    for a in first["dhcp_ranges"]:
        for b in second["dhcp_ranges"]:
            if ranges_overlap(a, b):
                out.append(_finding(
                    "overlapping_dhcp_ranges", "error", pair,
                    f"pids {pair[0]} and {pair[1]} hand out overlapping ranges "
                    f"{a['start']}-{a['end']} and {b['start']}-{b['end']}",
                ))
    if first["dhcp"] and second["dhcp"]:
        shared = sorted(set(first["dhcp_interfaces"]) & set(second["dhcp_interfaces"]))
        if shared:
            out.append(_finding(
                "shared_interface", "error", pair,
                f"pids {pair[0]} and {pair[1]} both serve DHCP on {', '.join(shared)}",
            ))
    return out


def _version_findings(instances, version):
    if not instances:
        return []
    pids = [i["pid"] for i in instances]
    if version is None:
        return [_finding("version_unknown", "warning", pids,
                         "dnsmasq version unknown (binary not found and no version given)")]
    if tuple(version) < MIN_VERSION:
        return [_finding(
            "old_version", "error", pids,
            f"dnsmasq {version[0]}.{version[1]} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]} "
            "(per-device DHCP binding and wildcard fixes)",
        )]
    return []


def findings(instances, version=None):
    """
    Problems of a set of instances (as ``summarise`` returns them). ``version`` is
    ``(major, minor)`` or None (unknown: reported as a warning).
    """
    out = []
    for inst in instances:
        out += _instance_findings(inst)
    # cross-instance checks: only instances that share a network namespace compete
    for i, first in enumerate(instances):
        for second in instances[i + 1 :]:
            if first.get("netns") == second.get("netns"):
                out += _pair_findings(first, second)
    return out + _version_findings(instances, version)


def report(found, version):
    """The audit's return: ``ok`` (no error-level finding), version, instances and findings."""
    problems = findings(found, version)
    return {
        "ok": not any(f["severity"] == "error" for f in problems),
        "version": f"{version[0]}.{version[1]}" if version else None,
        "count": len(found),
        "instances": found,
        "findings": problems,
    }


def binary_version(binary="dnsmasq"):
    """``(major, minor)`` of ``<binary> --version``; None when it is missing or says nothing usable."""
    path = shutil.which(binary)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out.stdout + out.stderr)
