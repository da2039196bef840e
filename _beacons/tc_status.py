"""
Thin-client status beacon.

Reads cheap local facts (serial, MAC and IP addresses, firmware/image version,
uptime, SPICE session target and state, seconds since the last user input)
straight from files: no subprocess, no network call per interval.

Emits one ``status`` event when something changed, and a heartbeat every
``heartbeat`` seconds (shortened by a random share of ``jitter`` so a fleet that
boots together does not beat together). Each event is signed with the minion's
own key, so the tc master can tell a thin client's report from a neighbour's
forgery: the master's event bus does not say which minion fired a beacon event.

Facts are read below ``root`` (default ``/``)::

    <root>/sys/class/dmi/id/{product_serial,product_name,sys_vendor,bios_version}
    <root>/sys/class/net/<iface>/address       MAC of the default-route interface
    <root>/proc/net/route                       which interface holds the default route
    <root>/proc/net/fib_trie, proc/net/if_inet6 local IPv4 / IPv6 addresses
    <root>/proc/uptime, proc/sys/kernel/random/boot_id
    <root>/etc/os-release                       IMAGE_VERSION (else VERSION_ID) is the firmware
    <root>/etc/deskfleet/asset.conf             site=, department=, asset_id= (written at enrollment)
    <root>/run/deskfleet/session.json           {"target": "<desktop>", "state": "connected"} from the SPICE launcher
    <root>/dev/input/by-path/*-event-*          newest mtime = last user input

Configuration (pillar ``beacons``; see ``pillar/tc.pillar.example``):

.. code-block:: yaml

    beacons:
      tc_status:
        - interval: 5
        - heartbeat: 300
        - jitter: 0.2
        - idle_after: 600
        - root: /
"""

import base64
import glob
import json
import logging
import os
import random
import time

log = logging.getLogger(__name__)

__virtualname__ = "tc_status"

PAYLOAD_VERSION = 2
SIGN_ALGORITHM = "PKCS1v15-SHA224"
# Salt adds keys on the way (id, _stamp); only these are signed.
SIGNED_FIELDS = ("v", "seat", "seq", "ts", "reason", "changed", "heartbeat", "facts", "epoch")
# Upper bounds so an odd device still fits one small event; the master cuts to its
# own (smaller) limits and flags the field, so nothing odd is hidden.
MAX_TEXT = 256
MAX_ADDRESSES = 32
EPOCH_FILE = "tc_status.epoch"
SESSION_STATES = ("connected", "connecting", "disconnected", "none")
# Facts that change on their own every interval; a change there is not news.
VOLATILE = ("uptime", "idle_seconds")

DEFAULTS = {
    "root": "/",
    "heartbeat": 300,
    "jitter": 0.2,
    "idle_after": 600,
    "session_file": "run/deskfleet/session.json",
    "asset_file": "etc/deskfleet/asset.conf",
    "input_glob": "dev/input/by-path/*-event-*",
}

# Per-process memory between calls: last fingerprint, sequence, next heartbeat.
_STATE = {}
_KEY = {}


def __virtual__():
    if not os.path.isdir("/proc"):
        return (False, "tc_status: needs a Linux thin client (/proc not found)")
    return __virtualname__


def _conf(config):
    merged = dict(DEFAULTS)
    if isinstance(config, dict):
        merged.update(config)
    else:
        for item in config or []:
            merged.update(item)
    return merged


def validate(config):
    """
    Check the beacon configuration before the minion runs it.
    """
    if not isinstance(config, (list, dict)):
        return False, "tc_status: configuration must be a list of single-key dicts"
    if isinstance(config, list) and not all(isinstance(i, dict) for i in config):
        return False, "tc_status: configuration must be a list of single-key dicts"
    conf = _conf(config)
    hb = conf["heartbeat"]
    if not isinstance(hb, (int, float)) or isinstance(hb, bool) or hb <= 0:
        return False, f"tc_status: heartbeat must be a positive number of seconds, got {hb!r}"
    jitter = conf["jitter"]
    if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        return False, f"tc_status: jitter must be a fraction in [0, 1), got {jitter!r}"
    idle = conf["idle_after"]
    if not isinstance(idle, (int, float)) or idle <= 0:
        return False, f"tc_status: idle_after must be a positive number of seconds, got {idle!r}"
    root = conf["root"]
    if not isinstance(root, str) or not os.path.isabs(root):
        return False, f"tc_status: root must be an absolute path, got {root!r}"
    if not os.path.isdir(root):
        return False, f"tc_status: root {root} is not a directory"
    return True, "valid"


# ---- fact readers: plain functions over a root directory -------------------


def _read(root, rel):
    try:
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _line(root, rel):
    text = _read(root, rel)
    return text.strip() if text is not None else None


def read_kv(text):
    """Parse ``KEY=value`` lines (os-release, asset.conf); quotes stripped."""
    out = {}
    for raw in (text or "").splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#") or "=" not in raw:
            continue
        key, _, value = raw.partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def default_iface(route_text):
    """Interface of the IPv4 default route in /proc/net/route, else None."""
    for row in (route_text or "").splitlines()[1:]:
        cols = row.split()
        if len(cols) > 2 and cols[1] == "00000000":
            return cols[0]
    return None


def ipv4_local(fib_trie_text):
    """Local (own) IPv4 addresses from /proc/net/fib_trie, loopback excluded."""
    addrs, last = [], None
    for raw in (fib_trie_text or "").splitlines():
        line = raw.strip()
        if line.startswith("|--") or line.startswith("+--"):
            last = line[3:].strip().split("/")[0]
        elif "/32 host LOCAL" in line and last and not last.startswith("127."):
            if last not in addrs:
                addrs.append(last)
    return addrs


def ipv6_global(if_inet6_text, iface=None):
    """Global-scope IPv6 addresses (optionally of one interface) from /proc/net/if_inet6."""
    addrs = []
    for raw in (if_inet6_text or "").splitlines():
        cols = raw.split()
        if len(cols) < 6 or cols[3] != "00" or (iface and cols[5] != iface):
            continue
        hexaddr = cols[0]
        addrs.append(":".join(hexaddr[i : i + 4] for i in range(0, 32, 4)))
    return addrs


def _primary_iface(root):
    iface = default_iface(_read(root, "proc/net/route"))
    if iface:
        return iface
    try:
        names = sorted(os.listdir(os.path.join(root, "sys/class/net")))
    except OSError:
        return None
    return next((n for n in names if n != "lo"), None)


def _number(text):
    """First field of a /proc line as a float, or None if absent or garbled."""
    try:
        return float(text.split()[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _session(root, rel):
    text = _read(root, rel)
    if text is None:
        return None, "none"
    try:
        data = json.loads(text)
    except ValueError:
        return None, "none"
    if not isinstance(data, dict):
        return None, "none"
    state = data.get("state")
    target = data.get("target")
    return (str(target) if target else None), (state if state in SESSION_STATES else "none")


def _idle_seconds(root, pattern, now):
    newest = None
    for path in glob.glob(os.path.join(glob.escape(root), pattern)):
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return None if newest is None else round(max(0.0, now - newest), 1)


def collect(conf, now=None):
    """
    Read every fact below ``conf['root']``. Missing files give ``None``, never an error.
    """
    now = time.time() if now is None else now
    root = conf["root"]
    dmi = "sys/class/dmi/id/"
    iface = _primary_iface(root)
    osrel = read_kv(_read(root, "etc/os-release"))
    asset = read_kv(_read(root, conf["asset_file"]))
    uptime = _number(_line(root, "proc/uptime"))
    target, state = _session(root, conf["session_file"])
    ips = ipv4_local(_read(root, "proc/net/fib_trie"))
    ips += ipv6_global(_read(root, "proc/net/if_inet6"), iface)
    return bounded({
        "serial": _line(root, dmi + "product_serial"),
        "model": _line(root, dmi + "product_name"),
        "vendor": _line(root, dmi + "sys_vendor"),
        "bios": _line(root, dmi + "bios_version"),
        "iface": iface,
        "mac": _line(root, f"sys/class/net/{iface}/address") if iface else None,
        "ips": ips,
        "firmware": osrel.get("IMAGE_VERSION") or osrel.get("VERSION_ID"),
        "image": osrel.get("IMAGE_ID") or osrel.get("ID"),
        "boot_id": _line(root, "proc/sys/kernel/random/boot_id"),
        "uptime": uptime,
        "site": asset.get("site"),
        "department": asset.get("department"),
        "asset_id": asset.get("asset_id"),
        "session_target": target,
        "session_state": state,
        "idle_seconds": _idle_seconds(root, conf["input_glob"], now),
    })


def bounded(facts):
    """Cap strings and the address list; an empty MAC (tunnel interface) is no MAC."""
    out = {}
    for name, value in facts.items():
        if isinstance(value, str):
            value = value[:MAX_TEXT] or (None if name == "mac" else value)
        elif isinstance(value, list):
            value = value[: MAX_ADDRESSES + 1]  # one more than kept: the master sees it was cut
        out[name] = value
    return out


# ---- change detection and heartbeat ----------------------------------------


def _stable_view(facts, idle_after):
    view = {k: v for k, v in facts.items() if k not in VOLATILE}
    idle = facts.get("idle_seconds")
    view["idle"] = idle is not None and idle >= idle_after
    return view


def decide(state, facts, now, heartbeat, jitter, idle_after, rng=random.random):
    """
    Decide whether to emit: ``(reason, changed_fields)`` or ``None``.

    ``state`` is updated in place. The first call is a ``start``; later calls emit
    on a change of a stable fact (or of idle/active) and otherwise at the
    jittered heartbeat.
    """
    view = _stable_view(facts, idle_after)
    if "view" not in state:
        reason, changed = "start", sorted(view)
    elif view != state["view"]:
        reason = "change"
        changed = sorted(k for k in view if view.get(k) != state["view"].get(k))
    elif now >= state["next_heartbeat"]:
        reason, changed = "heartbeat", []
    else:
        return None
    state["view"] = view
    state["seq"] = state.get("seq", 0) + 1
    state["next_heartbeat"] = now + heartbeat * (1 - jitter * rng())
    return reason, changed


def next_epoch(path, now):
    """
    This beacon process's start epoch: above the last one recorded at ``path``
    and at least the wall clock, then recorded. A reboot or minion restart
    starts a new epoch (seq restarts at 1); the master refuses any (epoch, seq)
    not newer than the last it saw, so an old boot's payload cannot come back.
    Wall clock keeps it rising if the file is lost (re-imaged device); the
    file keeps it rising if the clock goes back.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            last = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        last = 0
    epoch = max(last + 1, int(now))
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(str(epoch))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("tc_status: cannot record epoch at %s: %s", path, exc)
    return epoch


def canonical(payload):
    """The bytes that are signed: everything but the signature, in a fixed order."""
    body = {k: payload.get(k) for k in SIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _signer():
    import salt.crypt  # pylint: disable=import-outside-toplevel

    path = os.path.join(__opts__["pki_dir"], "minion.pem")
    mtime = os.path.getmtime(path)
    if _KEY.get("mtime") != mtime:
        _KEY.update(key=salt.crypt.PrivateKey.from_file(path), mtime=mtime)
    return _KEY["key"]


def build_payload(seat, state, reason, changed, facts, now, heartbeat):
    return {
        "v": PAYLOAD_VERSION,
        "epoch": state.get("epoch", 0),
        "seat": seat,
        "seq": state["seq"],
        "ts": round(now, 3),
        "reason": reason,
        "changed": changed,
        "heartbeat": heartbeat,
        "facts": facts,
    }


def beacon(config):
    """
    Emit the thin client's status on change and on a jittered heartbeat.

    Event tag: ``salt/beacon/<minion id>/tc_status/status``.
    """
    conf = _conf(config)
    now = time.time()
    if "epoch" not in _STATE:
        _STATE["epoch"] = next_epoch(os.path.join(__opts__["cachedir"], EPOCH_FILE), now)
    facts = collect(conf, now)
    verdict = decide(
        _STATE, facts, now, conf["heartbeat"], conf["jitter"], conf["idle_after"]
    )
    if verdict is None:
        return []
    reason, changed = verdict
    payload = build_payload(
        __opts__["id"], _STATE, reason, changed, facts, now, conf["heartbeat"]
    )
    signature = _signer().sign(canonical(payload), algorithm=SIGN_ALGORITHM)
    payload["sig"] = base64.b64encode(signature).decode()
    payload["tag"] = "status"
    log.debug("tc_status: %s (seq %s, changed %s)", reason, payload["seq"], changed)
    return [payload]
