"""
dnsmasq's own option syntax, parsed as dnsmasq 2.90 parses it: its command line (getopt, long
names and unambiguous prefixes), its configuration files, ``conf-dir`` selection, ``dhcp-range``
values and ``--version`` output. Plain functions, no I/O.
"""

import ipaddress
import re

MIN_VERSION = (2, 67)

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


def long_name(word):
    """Canonical long option for ``word`` (exact, or an unambiguous GNU getopt prefix)."""
    if word in _LONG_ALL:
        return word
    matches = [name for name in _LONG_ALL if name.startswith(word)]
    return matches[0] if len(matches) == 1 else word


def parse_cmdline(argv):
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
            name = long_name(name)
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


def parse_conf_text(text):
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


def conf_dir_files(listing, spec):
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


def split_list(value):
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_range(value):
    """
    One ``dhcp-range`` value: ``[tag:..,][set:..,]<start>[,<end>|<mode>][,<mask>|<prefix>]...``.
    Returns a dict with ``start``/``end`` (strings), ``family`` (4/6), ``mode`` (static,
    proxy, constructor:IF, ...) and ``dynamic`` (hands out a pool of addresses).
    """
    tokens = split_list(value)
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


def ranges_overlap(a, b):
    if not (a.get("dynamic") and b.get("dynamic")) or a["family"] != b["family"]:
        return False
    a_lo, a_hi = sorted((ipaddress.ip_address(a["start"]), ipaddress.ip_address(a["end"])))
    b_lo, b_hi = sorted((ipaddress.ip_address(b["start"]), ipaddress.ip_address(b["end"])))
    return a_lo <= b_hi and b_lo <= a_hi


def parse_version(text):
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
