"""
Audit the dnsmasq instances running on a host (issue 5: unicast DHCP renewals dropped).

Several dnsmasq instances can share one host only if each one binds its DHCP
socket to its own device. dnsmasq does that (``SO_BINDTODEVICE``) only with
``bind-interfaces`` (or ``bind-dynamic``) and exactly one non-wildcard
``interface=``. An instance that serves DHCP on two interfaces, or on every
interface, binds plain ``0.0.0.0:67``; next to another such instance the kernel
hands every unicast renewal to one of the sockets, and the instance that does
not own the client's interface drops it silently. The client only recovers with
a broadcast rebind, late.

For every running dnsmasq (found in ``/proc/<pid>/cmdline`` and the files it
reads through ``--conf-file``/``-C`` and ``--conf-dir``/``-7``) this module
reports:

``dhcp_multiple_interfaces``
    DHCP served on more than one interface by one instance
``dhcp_wildcard_interface``
    DHCP served without any ``interface=`` (every interface), or with a
    wildcard name such as ``tap*``
``no_bind_interfaces``
    neither ``bind-interfaces`` nor ``bind-dynamic``
``overlapping_dhcp_ranges``
    two instances in the same network namespace hand out overlapping ranges
``shared_interface``
    two instances in the same network namespace serve DHCP on one interface
``old_version``
    dnsmasq older than 2.67 (device binding and wildcard handling fixes)

Instances in different network namespaces (Neutron's one-dnsmasq-per-namespace
layout) never compete for a socket, so cross-instance checks compare instances
of one namespace only.

The parsing and the checks are plain functions (``_parse_cmdline``,
``_read_instance``, ``_findings``, ...) that need no Salt; the public functions
below are a thin shell. The ``/proc`` root is an argument so tests can point it
at fake data.
"""

import ipaddress
import logging
import os
import re
import shutil
import subprocess

try:
    from salt.exceptions import SaltInvocationError
except ImportError:  # pragma: no cover - plain imports in unit tests without Salt
    SaltInvocationError = ValueError

log = logging.getLogger(__name__)

__virtualname__ = "dnsmasq_audit"

MIN_VERSION = (2, 67)
DEFAULT_CONF = "/etc/dnsmasq.conf"  # what dnsmasq reads when no -C/--conf-file is given
_MAX_INCLUDE_DEPTH = 16

# dnsmasq's getopt table (option.c, 2.90): which options take an argument.
# Needed to split a command line the way dnsmasq does: "-i eth0" consumes the
# next word, "--conf-file /x" does not (optional argument: only "--conf-file=/x").
_SHORT = {
    # short letter -> long name; letters with a required argument
    "r": "resolv-file", "m": "mx-host", "p": "port", "c": "cache-size", "l": "dhcp-leasefile",
    "s": "domain", "i": "interface", "t": "mx-target", "u": "user", "g": "group",
    "a": "listen-address", "x": "pid-file", "S": "server", "C": "conf-file", "A": "address",
    "T": "local-ttl", "H": "addn-hosts", "Q": "query-port", "I": "except-interface",
    "B": "bogus-nxdomain", "F": "dhcp-range", "G": "dhcp-host", "O": "dhcp-option",
    "M": "dhcp-boot", "X": "dhcp-lease-max", "V": "alias", "U": "dhcp-vendorclass",
    "j": "dhcp-userclass", "P": "edns-packet-max", "J": "dhcp-ignore", "W": "srv-host",
    "Y": "txt-record", "2": "no-dhcp-interface", "4": "dhcp-mac", "6": "dhcp-script",
    "7": "conf-dir", "8": "log-facility", "0": "dns-forward-max", "3": "bootp-dynamic",
}
_SHORT_FLAGS = {
    "9": "leasefile-ro", "5": "no-ping", "1": "enable-dbus", "y": "localise-queries",
    "Z": "read-ethers", "D": "domain-needed", "N": "no-negcache", "L": "localmx",
    "E": "expand-hosts", "R": "no-resolv", "K": "dhcp-authoritative", "z": "bind-interfaces",
    "o": "strict-order", "w": "help", "e": "selfmx", "f": "filterwin2k", "n": "no-poll",
    "b": "bogus-priv", "v": "version", "h": "no-hosts", "d": "no-daemon",
    "k": "keep-in-foreground", "q": "log-queries",
}
# long options whose argument is required (so "--name value" consumes the next word)
_LONG_REQUIRED = set(
    """
    servers-file mx-host mx-target port dhcp-lease dhcp-host dhcp-range dhcp-option dhcp-boot
    domain domain-suffix interface listen-address bogus-nxdomain ignore-address filter-rr
    server rev-server local address conf-script local-ttl cache-rr addn-hosts hostsdir
    query-port except-interface no-dhcp-interface no-dhcpv4-interface no-dhcpv6-interface
    dhcp-lease-max alias dhcp-vendorclass dhcp-userclass dhcp-ignore edns-packet-max srv-host
    txt-record caa-record dns-rr dhcp-mac dhcp-script conf-dir log-facility dns-forward-max
    tftp-root tftp-max tftp-mtu ptr-record naptr-record bridge-interface shared-network
    dhcp-option-force dhcp-option-pxe dhcp-circuitid dhcp-remoteid dhcp-subscrid
    dhcp-pxe-vendor interface-name dhcp-hostsfile dhcp-optsfile dhcp-hostsdir dhcp-optsdir
    tftp-port-range rebind-domain-ok dhcp-match dhcp-name-match neg-ttl max-ttl min-cache-ttl
    max-cache-ttl dhcp-scriptuser min-port max-port cname pxe-prompt pxe-service tag-if
    add-cpe-id dhcp-luascript dhcp-duid host-record auth-zone auth-server auth-ttl auth-soa
    auth-sec-servers auth-peer ipset nftset connmark-allowlist synth-domain trust-anchor
    dnssec-timestamp dnssec-limits dhcp-relay dhcp-split-relay ra-param dhcp-ttl
    dhcp-reply-delay dumpfile dumpmask dynamic-host port-limit max-tcp-connections
    """.split()
)
# long options with an optional argument ("--name=value" only) or none at all
_LONG_OTHER = set(
    """
    log-queries user group resolv-file cache-size dhcp-leasefile local-service pid-file
    conf-file enable-dbus enable-ubus bootp-dynamic dhcp-ignore-names enable-tftp
    tftp-unique-root log-async dhcp-broadcast dhcp-alternate-port dhcp-proxy
    dhcp-generate-names add-mac add-subnet connmark-allowlist-enable dnssec-check-unsigned
    umbrella fast-dns-retry use-stale-cache leasequery
    """.split()
) | set(_SHORT_FLAGS.values()) | set(
    """
    filter-A filter-AAAA no-round-robin no-0x20-encode do-0x20-encode script-on-renewal
    clear-on-reload tftp-secure tftp-no-fail tftp-lowercase tftp-single-port
    tftp-no-blocksize log-dhcp dhcp-no-override stop-dns-rebind all-servers dhcp-fqdn test
    rebind-localhost-ok strip-mac strip-subnet proxy-dnssec dhcp-sequential-ip conntrack
    dhcp-client-update enable-ra bind-dynamic dnssec dnssec-debug dnssec-no-timecheck
    quiet-dhcp quiet-dhcp6 quiet-ra dns-loop-detect script-arp dhcp-rapid-commit
    dhcp-ignore-clid log-debug quiet-tftp no-ident
    """.split()
)
_LONG_ALL = _LONG_REQUIRED | _LONG_OTHER

_RANGE_MODES = {"static", "proxy", "ra-only", "ra-names", "ra-stateless", "ra-advrouter", "slaac", "off-link"}
_VERSION_RE = re.compile(r"version\s+(\d+)\.(\d+)", re.IGNORECASE)


def __virtual__():
    import salt.utils.platform  # pylint: disable=import-outside-toplevel

    if not salt.utils.platform.is_linux():
        return (False, "dnsmasq_audit: Linux only (reads /proc/<pid>/cmdline and network namespaces)")
    return __virtualname__


# ---------------------------------------------------------------- parsing (no Salt)


def _long_name(word):
    """Canonical long option for ``word`` (exact, or an unambiguous GNU getopt prefix)."""
    if word in _LONG_ALL:
        return word
    matches = [name for name in _LONG_ALL if name.startswith(word)]
    return matches[0] if len(matches) == 1 else word


def _parse_cmdline(argv):
    """
    Split a dnsmasq command line (argv, program name first) into ``(option, value)``
    pairs using long option names, as dnsmasq's getopt does. Flags have value None.
    Words that are not options are returned as ``("", word)``.
    """
    pairs = []
    words = list(argv[1:])
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            pairs.extend(("", rest) for rest in words[i:])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name = _long_name(name)
            if eq:
                pairs.append((name, value))
            elif name in _LONG_REQUIRED and i < len(words):
                pairs.append((name, words[i]))
                i += 1
            else:
                pairs.append((name, None))
        elif word.startswith("-") and len(word) > 1:
            j = 1
            while j < len(word):
                letter = word[j]
                j += 1
                if letter in _SHORT:
                    if j < len(word):
                        pairs.append((_SHORT[letter], word[j:]))
                    elif i < len(words):
                        pairs.append((_SHORT[letter], words[i]))
                        i += 1
                    else:
                        pairs.append((_SHORT[letter], None))
                    break
                pairs.append((_SHORT_FLAGS.get(letter, letter), None))
        else:
            pairs.append(("", word))
    return pairs


def _parse_conf_text(text):
    """
    ``(option, value)`` pairs of a dnsmasq configuration file, the way dnsmasq reads
    it: one long option name per line without the dashes, ``#`` starts a comment at
    the start of a word, double quotes group, space around ``=`` is ignored.
    """
    pairs = []
    for raw in text.splitlines():
        line, quoted, white = [], False, True
        for char in raw:
            if char == '"':
                quoted = not quoted
                continue
            if not quoted and char.isspace():
                line.append(" ")
                white = True
                continue
            if not quoted and white and char == "#":
                break
            white = False
            line.append(char)
        line = "".join(line).strip()
        if not line:
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        pairs.append((name, value.strip() if eq else None))
    return pairs


def _conf_dir_files(listing, spec):
    """
    Files of a ``conf-dir=<dir>[,<ext>...]`` that dnsmasq reads, in its order:
    sorted; never names ending ``~``, starting ``.`` or ``#...#``; ``,.bak``
    skips an extension, ``,*.conf`` keeps only that extension.
    """
    parts = [part.strip() for part in spec.split(",")]
    skip = [part for part in parts[1:] if part and not part.startswith("*")]
    only = [part[1:] for part in parts[1:] if part.startswith("*")]
    chosen = []
    for name in sorted(listing):
        if name.endswith("~") or name.startswith(".") or (name.startswith("#") and name.endswith("#")):
            continue
        if any(name.endswith(ext) for ext in skip):
            continue
        if only and not any(name.endswith(ext) for ext in only):
            continue
        chosen.append(name)
    return chosen


def _split_list(value):
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _parse_range(value):
    """
    One ``dhcp-range`` value: ``[tag:..,][set:..,]<start>[,<end>|<mode>][,<mask>|<prefix>]...``.
    Returns a dict with ``start``/``end`` (strings), ``family`` (4/6), ``mode`` (static,
    proxy, constructor:IF, ...) and ``dynamic`` (hands out a pool of addresses).
    """
    tokens = _split_list(value)
    while tokens and re.match(r"^(tag|set|net|id):", tokens[0]):
        tokens.pop(0)
    out = {"raw": value, "start": None, "end": None, "family": None, "mode": None, "dynamic": False}
    if not tokens:
        return out
    try:
        start = ipaddress.ip_address(tokens[0])
    except ValueError:
        return out
    out["start"] = str(start)
    out["family"] = start.version
    end = None
    for token in tokens[1:]:
        if token in _RANGE_MODES or token.startswith("constructor:"):
            out["mode"] = token if out["mode"] is None else out["mode"] + "," + token
            continue
        if end is None and out["end"] is None:
            try:
                candidate = ipaddress.ip_address(token)
            except ValueError:
                continue
            if candidate.version == start.version:
                end = candidate
                out["end"] = str(candidate)
    mode = out["mode"] or ""
    out["dynamic"] = end is not None and not any(m in mode for m in ("static", "proxy", "ra-only", "ra-stateless"))
    if out["dynamic"] and "constructor:" in mode:
        # ::1,::400,constructor:eth0 is relative to the interface's prefix: not comparable as-is
        out["dynamic"] = False
    return out


def _ranges_overlap(a, b):
    if not (a.get("dynamic") and b.get("dynamic")) or a["family"] != b["family"]:
        return False
    a_lo, a_hi = sorted((ipaddress.ip_address(a["start"]), ipaddress.ip_address(a["end"])))
    b_lo, b_hi = sorted((ipaddress.ip_address(b["start"]), ipaddress.ip_address(b["end"])))
    return a_lo <= b_hi and b_lo <= a_hi


def _parse_version(text):
    """
    ``(major, minor)`` from ``dnsmasq --version`` output or a bare ``2.90``; None if unknown.
    A float (Salt's CLI turns ``version=2.90`` into 2.9) with one decimal is read as
    ``2.90``: dnsmasq minors have had two digits since 2.10.
    """
    if text is None:
        return None
    if isinstance(text, float):
        major, _, minor = repr(text).partition(".")
        text = f"{major}.{minor}0" if len(minor) == 1 else f"{major}.{minor}"
    text = str(text)
    match = _VERSION_RE.search(text) or re.match(r"^\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


# ---------------------------------------------------------------- /proc (no Salt)


def _read(path, mode="r"):
    with open(path, mode) as handle:  # pylint: disable=unspecified-encoding
        return handle.read()


def _proc_cmdline(proc, pid):
    try:
        raw = _read(os.path.join(proc, str(pid), "cmdline"), "rb")
    except OSError:
        return None
    argv = [part.decode("utf-8", "replace") for part in raw.split(b"\0")]
    while argv and argv[-1] == "":
        argv.pop()
    return argv or None


def _is_dnsmasq(proc, pid, argv):
    try:
        comm = _read(os.path.join(proc, str(pid), "comm")).strip()
    except OSError:
        comm = ""
    return comm == "dnsmasq" or os.path.basename(argv[0]) == "dnsmasq"


def _netns_of(proc, pid):
    """``net:[<inode>]`` of a process, or None when it cannot be read."""
    try:
        return os.readlink(os.path.join(proc, str(pid), "ns", "net"))
    except OSError:
        return None


def _resolve_netns(netns, netns_dir="/run/netns"):
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


def _in_root(proc, pid, path):
    """Read ``path`` as the process sees it (through /proc/<pid>/root when that exists)."""
    if not os.path.isabs(path):
        return path
    root = os.path.join(proc, str(pid), "root")
    if os.path.isdir(root):
        return os.path.join(root, path.lstrip("/"))
    return path


def _collect_options(pairs, opener, files, missing, depth=0):
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
            for entry in _conf_dir_files(listing, value):
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
    return _collect_options(_parse_conf_text(text), opener, files, missing, depth + 1)


class _Opener:
    """Reads configuration files as process ``pid`` sees them."""

    def __init__(self, proc, pid):
        self.proc, self.pid = proc, pid

    def __call__(self, path):
        if os.path.isdir(_in_root(self.proc, self.pid, path)):
            raise IsADirectoryError(path)
        return _read(_in_root(self.proc, self.pid, path))

    def listdir(self, path):
        return [
            name for name in os.listdir(_in_root(self.proc, self.pid, path))
            if os.path.isfile(os.path.join(_in_root(self.proc, self.pid, path), name))
        ]


def _summarise(pid, argv, options, files, missing, netns=None):
    """One instance's effective settings from its flat option list."""
    interfaces, excepted, no_dhcp, listen, ranges = [], [], [], [], []
    bind = None
    pid_file = lease_file = None
    for name, value in options:
        if name == "interface":
            interfaces.extend(_split_list(value))
        elif name == "except-interface":
            excepted.extend(_split_list(value))
        elif name in ("no-dhcp-interface", "no-dhcpv4-interface"):
            no_dhcp.extend(_split_list(value))
        elif name == "listen-address":
            listen.extend(_split_list(value))
        elif name == "dhcp-range" and value:
            ranges.append(_parse_range(value))
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


def _read_instance(proc, pid, argv, default_conf=DEFAULT_CONF):
    """Everything about one running dnsmasq: its command line plus the files it read."""
    pairs = _parse_cmdline(argv)
    if not any(name == "conf-file" for name, _ in pairs):
        # no -C at all: dnsmasq reads its compiled-in default file
        pairs = [("conf-file", default_conf)] + pairs
    # "--conf-file" with no value means "no file": drop it
    pairs = [(name, value) for name, value in pairs if not (name == "conf-file" and not value)]
    files, missing = [], []
    options = _collect_options(pairs, _Opener(proc, pid), files, missing)
    return _summarise(pid, argv, options, files, missing, netns=_netns_of(proc, pid))


def _pids_from_files(pidfiles):
    pids = []
    for path in pidfiles or []:
        try:
            pids.append(int(_read(path).split()[0]))
        except (OSError, ValueError, IndexError):
            log.debug("dnsmasq_audit: no pid in %s", path)
    return pids


def _instances(proc="/proc", pids=None, netns=None, default_conf=DEFAULT_CONF):
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
        argv = _proc_cmdline(proc, pid)
        if not argv or not _is_dnsmasq(proc, pid, argv):
            continue
        if netns is not None and _netns_of(proc, pid) != netns:
            continue
        found.append(_read_instance(proc, pid, argv, default_conf=default_conf))
    return found


# ---------------------------------------------------------------- checks (no Salt)


def _finding(check, severity, pids, message):
    return {"check": check, "severity": severity, "pids": sorted(pids), "message": message}


def _findings(instances, version=None):
    """
    Problems of a set of instances (as ``_summarise`` returns them). ``version`` is
    ``(major, minor)`` or None (unknown: reported as a warning).
    """
    out = []
    for inst in instances:
        pid = inst["pid"]
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
    # cross-instance checks: only instances that share a network namespace compete
    for i, first in enumerate(instances):
        for second in instances[i + 1 :]:
            if first.get("netns") != second.get("netns"):
                continue
            pair = [first["pid"], second["pid"]]
            for a in first["dhcp_ranges"]:
                for b in second["dhcp_ranges"]:
                    if _ranges_overlap(a, b):
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
    if instances:
        if version is None:
            out.append(_finding(
                "version_unknown", "warning", [i["pid"] for i in instances],
                "dnsmasq version unknown (binary not found and no version given)",
            ))
        elif tuple(version) < MIN_VERSION:
            out.append(_finding(
                "old_version", "error", [i["pid"] for i in instances],
                f"dnsmasq {version[0]}.{version[1]} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                "(per-device DHCP binding and wildcard fixes)",
            ))
    return out


def _report(instances, version):
    findings = _findings(instances, version)
    return {
        "ok": not any(f["severity"] == "error" for f in findings),
        "version": f"{version[0]}.{version[1]}" if version else None,
        "count": len(instances),
        "instances": instances,
        "findings": findings,
    }


def _binary_version(binary="dnsmasq"):
    path = shutil.which(binary)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return _parse_version(out.stdout + out.stderr)


# ---------------------------------------------------------------- Salt functions


def _select(proc, pids, netns, pidfiles, default_conf):
    if isinstance(pids, (str, int)):
        pids = [int(p) for p in str(pids).split(",") if p.strip()]
    if isinstance(pidfiles, str):
        pidfiles = [p for p in pidfiles.split(",") if p]
    if pidfiles:
        pids = list(pids or []) + _pids_from_files(pidfiles)
    try:
        wanted_netns = _resolve_netns(netns)
    except OSError as exc:
        raise SaltInvocationError(f"dnsmasq_audit: no network namespace {netns!r}: {exc}") from exc
    return _instances(proc=proc, pids=pids, netns=wanted_netns, default_conf=default_conf)


def version(binary="dnsmasq"):
    """
    The installed dnsmasq version, from ``<binary> --version``.

    Returns ``{"version": "2.90", "ok": True}`` (``ok`` is False below 2.67,
    ``version`` is None when the binary is missing).

    CLI Example:

    .. code-block:: bash

        salt '*' dnsmasq_audit.version
        salt '*' dnsmasq_audit.version binary=/usr/local/sbin/dnsmasq
    """
    found = _binary_version(binary)
    return {
        "version": f"{found[0]}.{found[1]}" if found else None,
        "ok": bool(found) and tuple(found) >= MIN_VERSION,
        "minimum": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
    }


def instances(proc="/proc", pids=None, netns=None, pidfiles=None, default_conf=DEFAULT_CONF):
    """
    List the running dnsmasq instances with their effective settings (interfaces,
    bind mode, DHCP ranges, pid and lease files, files read), without judging them.

    proc
        the /proc to read (default ``/proc``)
    pids
        only these process ids (list, or comma-separated)
    netns
        only processes in this network namespace: a name under ``/run/netns``
        (``ip netns``), an inode number or ``net:[<inode>]``
    pidfiles
        only the processes named in these pid files (list, or comma-separated)
    default_conf
        the file dnsmasq reads when started without ``-C`` (default ``/etc/dnsmasq.conf``)

    CLI Example:

    .. code-block:: bash

        salt '*' dnsmasq_audit.instances
        salt '*' dnsmasq_audit.instances netns=qdhcp-1234
    """
    return _select(proc, pids, netns, pidfiles, default_conf)


def audit(proc="/proc", version=None, pids=None, netns=None, pidfiles=None, binary="dnsmasq",
          default_conf=DEFAULT_CONF):  # pylint: disable=redefined-outer-name
    """
    Audit the running dnsmasq instances. Returns ``ok`` (no error-level finding),
    the dnsmasq ``version``, the ``instances`` and a list of ``findings``, each
    ``{"check", "severity", "pids", "message"}``. Checks: ``dhcp_multiple_interfaces``,
    ``dhcp_wildcard_interface``, ``no_bind_interfaces``, ``overlapping_dhcp_ranges``,
    ``shared_interface``, ``old_version`` (below 2.67); warnings ``conf_unreadable``
    and ``version_unknown``. Instances in different network namespaces are not
    compared with each other.

    proc
        the /proc to read (default ``/proc``)
    version
        the dnsmasq version to judge (e.g. ``2.66``); default: ask ``<binary> --version``
    pids, netns, pidfiles
        select instances, as for ``dnsmasq_audit.instances``
    binary
        the dnsmasq binary to ask for its version (default ``dnsmasq`` on PATH)

    CLI Example:

    .. code-block:: bash

        salt '*' dnsmasq_audit.audit
        salt '*' dnsmasq_audit.audit netns=qdhcp-1234 --out=json
        salt '*' dnsmasq_audit.audit pidfiles=/run/dnsmasq-deskfleet/br-desk1.pid version=2.90
    """
    found = _select(proc, pids, netns, pidfiles, default_conf)
    parsed = _parse_version(version) if version is not None else _binary_version(binary)
    return _report(found, parsed)
