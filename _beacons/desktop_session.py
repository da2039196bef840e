"""
Desktop session beacon (on each desktop, reporting to the vm master): who is
logged on, whether each session is active or disconnected, and seconds since
the last input. Host maintenance reads it to know which desktops carry a user.

Linux: the utmp file (``<root>/run/utmp``, USER_PROCESS records) and the
access time of each session's terminal (``<root>/dev/<line>``) for the idle
time, as ``w`` does. Windows: ``quser`` through ``cmd.run_all`` (state Active /
Disc, IDLE TIME). Emits on change and on a jittered heartbeat; each payload is
signed with the minion's own key like ``tc_status`` (the master's bus does not
say which minion fired a beacon event).

.. code-block:: yaml

    beacons:
      desktop_session:
        - interval: 10
        - heartbeat: 300
        - jitter: 0.2
        - idle_after: 600
        - root: /
"""

import base64
import json
import logging
import os
import random
import re
import struct
import time

log = logging.getLogger(__name__)

__virtualname__ = "desktop_session"

PAYLOAD_VERSION = 1
SIGN_ALGORITHM = "PKCS1v15-SHA224"
SIGNED_FIELDS = ("v", "desktop", "seq", "ts", "reason", "heartbeat", "facts")
DEFAULTS = {"root": "/", "utmp": "run/utmp", "heartbeat": 300, "jitter": 0.2, "idle_after": 600}
MAX_SESSIONS = 32

# glibc x86-64 struct utmp: 384 bytes
UTMP = struct.Struct("<h2xi32s4s32s256shhiii4i20x")
USER_PROCESS = 7

_STATE = {}
_KEY = {}


def __virtual__():
    return __virtualname__


def _conf(config):
    merged = dict(DEFAULTS)
    for item in config if isinstance(config, list) else [config or {}]:
        merged.update(item)
    return merged


def validate(config):
    """Check the beacon configuration before the minion runs it."""
    if not isinstance(config, (list, dict)) or (isinstance(config, list) and not all(isinstance(i, dict) for i in config)):
        return False, "desktop_session: configuration must be a list of single-key dicts"
    conf = _conf(config)
    for key in ("heartbeat", "idle_after"):
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return False, f"desktop_session: {key} must be a positive number of seconds, got {value!r}"
    if not isinstance(conf["jitter"], (int, float)) or not 0 <= conf["jitter"] < 1:
        return False, f"desktop_session: jitter must be a fraction in [0, 1), got {conf['jitter']!r}"
    if not isinstance(conf["root"], str) or not os.path.isabs(conf["root"]):
        return False, f"desktop_session: root must be an absolute path, got {conf['root']!r}"
    return True, "valid"


# ---- Linux: utmp + terminal access times -------------------------------------------


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_utmp(blob):
    """USER_PROCESS records of a utmp file: [{user, line, host, pid, login}]."""
    out = []
    for offset in range(0, len(blob) - UTMP.size + 1, UTMP.size):
        fields = UTMP.unpack_from(blob, offset)
        if fields[0] != USER_PROCESS or not fields[4].strip(b"\0"):
            continue
        out.append({"user": _text(fields[4]), "line": _text(fields[2]), "host": _text(fields[5]),
                    "pid": fields[1], "login": fields[9]})
    return out


def linux_sessions(root, utmp_rel, now):
    try:
        with open(os.path.join(root, utmp_rel), "rb") as fh:
            records = parse_utmp(fh.read())
    except OSError:
        return []
    sessions = []
    for rec in records[:MAX_SESSIONS]:
        idle = None
        line = rec["line"]
        if line and "/" not in line.replace("pts/", "", 1) and ".." not in line:
            try:
                idle = max(0.0, now - os.stat(os.path.join(root, "dev", line)).st_atime)
            except OSError:
                idle = None
        sessions.append({"user": rec["user"], "state": "active", "idle_seconds": idle})
    return sessions


# ---- Windows: quser ---------------------------------------------------------------

IDLE_RE = re.compile(r"(?:(\d+)\+)?(?:(\d+):)?(\d+)")


def parse_idle(text):
    """quser's IDLE TIME: ``none``/``.`` (0), ``5`` (minutes), ``1:05``, ``2+03:04`` (days+h:mm) → seconds."""
    text = text.strip().lower()
    if text in ("none", ".", ""):
        return 0.0
    match = IDLE_RE.fullmatch(text)
    if not match:
        return None
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60)


def parse_quser(text):
    """Rows of ``quser``: [{user, state: active|disconnected, idle_seconds}]. A Disc row has no session name."""
    sessions = []
    for line in text.splitlines()[1:]:
        parts = line.lstrip(">").split()
        if len(parts) < 5:
            continue
        state_at = next((i for i, p in enumerate(parts) if p.lower() in ("active", "disc")), None)
        if state_at is None or state_at + 1 >= len(parts):
            continue
        sessions.append({
            "user": parts[0],
            "state": "active" if parts[state_at].lower() == "active" else "disconnected",
            "idle_seconds": parse_idle(parts[state_at + 1]),
        })
    return sessions[:MAX_SESSIONS]


def windows_sessions():
    out = __salt__["cmd.run_all"](["quser"], python_shell=False, ignore_retcode=True)
    # quser exits 1 with "No User exists for *" when nobody is logged on
    return parse_quser(out.get("stdout") or "") if out.get("retcode") in (0, 1) else []


# ---- the report ---------------------------------------------------------------------


def facts_of(sessions):
    active = [s["idle_seconds"] for s in sessions if s["state"] == "active" and s["idle_seconds"] is not None]
    return {
        "logged_on": bool(sessions),
        "sessions": sessions,
        "idle_seconds": min(active) if active else None,
    }


def decide(state, facts, now, heartbeat, jitter, idle_after, rng=random.random):
    """``reason`` (start / change / heartbeat) or None; ``state`` is updated in place."""
    idle = facts["idle_seconds"]
    view = {
        "users": sorted((s["user"], s["state"]) for s in facts["sessions"]),
        "idle": idle is not None and idle >= idle_after,
    }
    if not state:
        reason = "start"
    elif view != state["view"]:
        reason = "change"
    elif now >= state["next_heartbeat"]:
        reason = "heartbeat"
    else:
        return None
    state.update(view=view, seq=state.get("seq", 0) + 1, next_heartbeat=now + heartbeat * (1 - jitter * rng()))
    return reason


def canonical(payload):
    """The signed bytes: the signed fields, in a fixed order."""
    return json.dumps({k: payload.get(k) for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def _signer():
    import salt.crypt  # pylint: disable=import-outside-toplevel

    path = os.path.join(__opts__["pki_dir"], "minion.pem")
    mtime = os.path.getmtime(path)
    if _KEY.get("mtime") != mtime:
        _KEY.update(key=salt.crypt.PrivateKey.from_file(path), mtime=mtime)
    return _KEY["key"]


def beacon(config):
    """
    Emit the desktop's sessions on change and on a jittered heartbeat.

    Event tag: ``salt/beacon/<minion id>/desktop_session/status``.
    """
    conf = _conf(config)
    now = time.time()
    if __grains__.get("kernel") == "Windows":
        sessions = windows_sessions()
    else:
        sessions = linux_sessions(conf["root"], conf["utmp"], now)
    facts = facts_of(sessions)
    reason = decide(_STATE, facts, now, conf["heartbeat"], conf["jitter"], conf["idle_after"])
    if reason is None:
        return []
    payload = {"v": PAYLOAD_VERSION, "desktop": __opts__["id"], "seq": _STATE["seq"], "ts": round(now, 3),
               "reason": reason, "heartbeat": conf["heartbeat"], "facts": facts}
    payload["sig"] = base64.b64encode(_signer().sign(canonical(payload), algorithm=SIGN_ALGORITHM)).decode()
    payload["tag"] = "status"
    return [payload]
