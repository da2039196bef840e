"""
TCP keepalive for AMQP (RabbitMQ) connections that cross a stateful firewall.

A firewall (or NAT, or conntrack on a Linux router) forgets a TCP flow that
stays idle longer than its idle timeout; the next segment of that flow is then
dropped as invalid and neither peer is told. OpenStack's AMQP connections idle
for long stretches, so they die silently. Two things keep them alive:

- TCP keepalive on the sockets (RabbitMQ: ``tcp_listen_options.keepalive =
  true``) with kernel timers short enough that a probe crosses the firewall
  before the flow is forgotten: ``net.ipv4.tcp_keepalive_time`` +
  ``tcp_keepalive_intvl`` x ``tcp_keepalive_probes`` below the firewall's idle
  timeout;
- AMQP heartbeats (RabbitMQ ``heartbeat``, oslo.messaging
  ``heartbeat_timeout_threshold`` / ``heartbeat_rate``).

This module holds the rule the ``host.rabbitmq`` state enforces (``validate``)
and an audit of a live host (``audit``): established AMQP sockets without a
keepalive timer (``ss -tnoeH``) and keepalive sysctls that are off target.
The parsing and checking are plain functions that use no Salt dunders,
unit-tested with captured ``ss`` output; the public functions are thin shells.

Targets come from the function arguments, else pillar ``host_rabbitmq``
(``sysctl:tcp_keepalive_*``, ``firewall_idle_timeout``, ``amqp_ports``),
else the defaults below, which match ``states/host/rabbitmq/defaults.yaml``.
"""

import logging
import re

import salt.utils.path
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "amqp_keepalive"

PILLAR_KEY = "host_rabbitmq"
SYSCTLS = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
SYSCTL_PREFIX = "net.ipv4."
KERNEL_DEFAULTS = {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9}
# Same values as states/host/rabbitmq/defaults.yaml (a unit test keeps them equal).
DEFAULTS = {
    "firewall_idle_timeout": 3600,
    "amqp_ports": [5672],
    "sysctl": {"tcp_keepalive_time": 60, "tcp_keepalive_intvl": 15, "tcp_keepalive_probes": 4},
}
# ss -tn state names worth auditing: a live flow that a firewall can forget.
LIVE_STATES = ("ESTAB",)
_TIMER_RE = re.compile(r"\btimer:\((?P<name>[a-z_-]+),(?P<expires>[^,)]*),(?P<retrans>\d+)\)")
_USERS_RE = re.compile(r'\busers:\(\("(?P<name>(?:[^"\\]|\\.)*)",pid=(?P<pid>\d+)')
# ss prints timers as e.g. 119min, 1min52sec, 4sec, 988ms, and 2.488ms meaning 2 s + 488 ms (iproute2 print_ms_timer)
_DURATION_RE = re.compile(
    r"^(?P<neg>-)?(?:(?P<min>\d+)min)?(?:(?P<sec>\d+(?:\.\d+)?)sec)?(?:(?:(?P<ssec>\d+)\.)?(?P<ms>\d+)ms)?$"
)


def __virtual__():
    if __grains__.get("kernel") != "Linux":  # pylint: disable=undefined-variable
        return (False, "amqp_keepalive: Linux only (net.ipv4.tcp_keepalive_* sysctls)")
    return __virtualname__


# --------------------------------------------------------------------------
# Plain logic (no Salt dunders): unit-tested directly
# --------------------------------------------------------------------------


def _as_int(value, what, minimum, problems):
    if isinstance(value, bool):
        problems.append(f"{what} must be a whole number of seconds, not {value!r}")
        return None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        problems.append(f"{what} must be a whole number, not {value!r}")
        return None
    if number < minimum:
        problems.append(f"{what} must be at least {minimum}, not {number}")
        return None
    return number


def _keepalive_worst_case(time, intvl, probes):
    """Seconds from the last segment until keepalive gives up on a dead peer."""
    return int(time) + int(intvl) * int(probes)


def _suggest_keepalive(firewall_idle_timeout, probes=None):
    """Keepalive settings whose worst case is below ``firewall_idle_timeout``, or None.

    The deskfleet defaults (60/15/4, 120 s) when they fit, else values scaled
    to the timeout: first probe at about half of it, the probes in the rest.
    """
    limit = int(firewall_idle_timeout)
    base = DEFAULTS["sysctl"]
    if _keepalive_worst_case(base["tcp_keepalive_time"], base["tcp_keepalive_intvl"], base["tcp_keepalive_probes"]) < limit:
        return dict(base)
    budget = limit - 1  # strictly below the timeout
    if budget < 2:  # time >= 1 and intvl * probes >= 1
        return None
    probes = max(1, min(int(probes or base["tcp_keepalive_probes"]), base["tcp_keepalive_probes"]))
    time = max(1, budget // 2)
    while probes > 1 and time + probes > budget:
        probes -= 1
    time = min(time, budget - probes)
    intvl = max(1, (budget - time) // probes)
    return {"tcp_keepalive_time": time, "tcp_keepalive_intvl": intvl, "tcp_keepalive_probes": probes}


def _check_keepalive(time, intvl, probes, firewall_idle_timeout, where=PILLAR_KEY):
    """Problems (human sentences) with keepalive settings against a firewall idle timeout.

    Empty list: ``time + intvl * probes`` is below the idle timeout, so a probe
    refreshes the firewall's flow entry in time and a dead peer is noticed
    before the firewall would have cut the flow anyway.
    """
    problems = []
    time = _as_int(time, f"{where}:sysctl:tcp_keepalive_time", 1, problems)
    intvl = _as_int(intvl, f"{where}:sysctl:tcp_keepalive_intvl", 1, problems)
    probes = _as_int(probes, f"{where}:sysctl:tcp_keepalive_probes", 1, problems)
    timeout = _as_int(firewall_idle_timeout, f"{where}:firewall_idle_timeout", 1, problems)
    if problems:
        return problems
    worst = _keepalive_worst_case(time, intvl, probes)
    if worst < timeout:
        return []
    message = (
        f"TCP keepalive too slow for the firewall: tcp_keepalive_time + tcp_keepalive_intvl x "
        f"tcp_keepalive_probes = {time} + {intvl} x {probes} = {worst} s is not below the firewall idle "
        f"timeout of {timeout} s ({where}:firewall_idle_timeout), so the firewall can forget an idle AMQP "
        f"connection before keepalive refreshes it and the connection dies silently."
    )
    hint = _suggest_keepalive(timeout, probes)
    if hint:
        message += (
            f" Change pillar {where}:sysctl so that the sum is below {timeout} s, e.g. "
            f"tcp_keepalive_time: {hint['tcp_keepalive_time']}, "
            f"tcp_keepalive_intvl: {hint['tcp_keepalive_intvl']}, "
            f"tcp_keepalive_probes: {hint['tcp_keepalive_probes']} "
            f"({_keepalive_worst_case(**_short(hint))} s)"
        )
        message += f", or correct {where}:firewall_idle_timeout if the firewall keeps idle flows longer."
    else:
        message += (
            f" An idle timeout of {timeout} s is too short for TCP keepalive (it needs at least 3 s): "
            f"check {where}:firewall_idle_timeout."
        )
    return [message]


def _short(sysctls):
    return {"time": sysctls["tcp_keepalive_time"], "intvl": sysctls["tcp_keepalive_intvl"], "probes": sysctls["tcp_keepalive_probes"]}


def _check_heartbeats(rabbitmq_heartbeat=None, heartbeat_timeout_threshold=None, heartbeat_rate=None, where=PILLAR_KEY):
    """Problems with the AMQP heartbeat settings (types and ranges only; 0 disables a heartbeat)."""
    problems = []
    if rabbitmq_heartbeat is not None:
        _as_int(rabbitmq_heartbeat, f"{where}:broker:heartbeat", 0, problems)
    if heartbeat_timeout_threshold is not None:
        _as_int(heartbeat_timeout_threshold, f"{where}:oslo_messaging:heartbeat_timeout_threshold", 0, problems)
    if heartbeat_rate is not None:
        _as_int(heartbeat_rate, f"{where}:oslo_messaging:heartbeat_rate", 1, problems)
    return problems


def _parse_duration(text):
    """Seconds (float) from an ss timer expiry: ``119min``, ``1min52sec``, ``4sec``, ``988ms``, ``2.488ms`` (2.488 s)."""
    match = _DURATION_RE.match(text.strip())
    if not match or not any(match.group(k) for k in ("min", "sec", "ms")):
        return None
    seconds = (
        int(match.group("min") or 0) * 60
        + float(match.group("sec") or 0)
        + int(match.group("ssec") or 0)
        + int(match.group("ms") or 0) / 1000.0
    )
    return round(-seconds if match.group("neg") else seconds, 3)


def _split_endpoint(text):
    """(address, port) from ``10.0.0.1:5672``, ``[::1]:5672``, ``[::ffff:10.0.0.1]:5672``, ``*:*``."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:  # fe80::1%eth0
        host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    try:
        return host, int(port)
    except ValueError:
        return host, None


def _parse_ss(output):
    """Sockets from ``ss -tnoe[p]H`` output (with or without the State column).

    Each socket: ``state``, ``recv_q``, ``send_q``, ``local``, ``local_port``,
    ``peer``, ``peer_port``, ``timer`` (name or None), ``timer_expires_s``,
    ``timer_retrans``, ``process`` and ``pid`` (with ``-p``).
    """
    sockets = []
    for line in output.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("State", "Recv-Q", "Netid"):
            continue
        if fields[0].isdigit():  # a single-state filter drops the State column
            fields.insert(0, None)
        if len(fields) < 5 or not fields[1].isdigit() or not fields[2].isdigit():
            continue
        state, recv_q, send_q, local, peer = fields[:5]
        rest = " ".join(fields[5:])
        local_addr, local_port = _split_endpoint(local)
        peer_addr, peer_port = _split_endpoint(peer)
        sock = {
            "state": state,
            "recv_q": int(recv_q),
            "send_q": int(send_q),
            "local": local_addr,
            "local_port": local_port,
            "peer": peer_addr,
            "peer_port": peer_port,
            "timer": None,
            "timer_expires_s": None,
            "timer_retrans": None,
            "process": None,
            "pid": None,
        }
        timer = _TIMER_RE.search(rest)
        if timer:
            sock["timer"] = timer.group("name")
            sock["timer_expires_s"] = _parse_duration(timer.group("expires"))
            sock["timer_retrans"] = int(timer.group("retrans"))
        users = _USERS_RE.search(rest)
        if users:
            sock["process"] = users.group("name")
            sock["pid"] = int(users.group("pid"))
        sockets.append(sock)
    return sockets


def _ports(ports):
    if ports is None:
        return list(DEFAULTS["amqp_ports"])
    if isinstance(ports, (int, str)):
        ports = str(ports).split(",")
    return sorted({int(str(p).strip()) for p in ports if str(p).strip()})


def _amqp_sockets(sockets, ports=(5672,), states=LIVE_STATES):
    """The live sockets of ``sockets`` (from ``parse_ss``) that carry AMQP.

    ``side`` is ``server`` when the local port is an AMQP port (the broker's
    accepted socket), ``client`` when the peer port is (a service talking to
    the broker). A socket with a keepalive timer is ``keepalive: True``; one
    with no timer at all has keepalive off; one showing another timer
    (``on`` = retransmitting, ``persist``) cannot be told from ss alone:
    ``keepalive: None``.
    """
    ports = set(_ports(ports))
    found = []
    for sock in sockets:
        if sock["state"] is not None and sock["state"] not in states:
            continue
        if sock["local_port"] in ports:
            side = "server"
        elif sock["peer_port"] in ports:
            side = "client"
        else:
            continue
        keepalive = True if sock["timer"] == "keepalive" else (False if sock["timer"] is None else None)
        found.append(dict(sock, side=side, keepalive=keepalive))
    return found


def _sysctl_drift(current, target):
    """Per keepalive sysctl: current, target, ok; ``current`` / ``target`` keyed by short or full name."""
    report = {}
    for short in SYSCTLS:
        full = SYSCTL_PREFIX + short
        have = current.get(full, current.get(short))
        want = target.get(full, target.get(short))
        try:
            have = int(str(have).strip()) if have is not None else None
        except ValueError:
            pass
        want = int(want) if want is not None else None
        report[full] = {"current": have, "target": want, "ok": want is None or have == want}
    return report


def _summarize(sockets, drift, firewall_idle_timeout=None):
    """The audit verdict from ``amqp_sockets`` and ``sysctl_drift`` results (plain dict)."""
    missing = [s for s in sockets if s["keepalive"] is False]
    unknown = [s for s in sockets if s["keepalive"] is None]
    off = sorted(name for name, row in drift.items() if not row["ok"])
    comments = []
    if missing:
        comments.append(
            f"{len(missing)} of {len(sockets)} live AMQP socket(s) have no keepalive timer: "
            + ", ".join(_flow(s) for s in missing)
        )
    if unknown:
        comments.append(
            f"{len(unknown)} live AMQP socket(s) show a '{unknown[0]['timer']}' timer (retransmitting?), "
            "keepalive cannot be told: " + ", ".join(_flow(s) for s in unknown)
        )
    if off:
        comments.append(
            "sysctl off target: "
            + ", ".join(f"{name}={drift[name]['current']} (target {drift[name]['target']})" for name in off)
        )
    kernel = {short: drift[SYSCTL_PREFIX + short]["current"] for short in SYSCTLS}
    live_problems = []
    if firewall_idle_timeout and all(isinstance(v, int) for v in kernel.values()):
        worst = _keepalive_worst_case(**_short(kernel))
        if worst >= int(firewall_idle_timeout):
            live_problems.append(
                f"running kernel keepalive gives up after {worst} s ({kernel['tcp_keepalive_time']} + "
                f"{kernel['tcp_keepalive_intvl']} x {kernel['tcp_keepalive_probes']}), not below the firewall idle "
                f"timeout of {firewall_idle_timeout} s: apply host.rabbitmq"
            )
        comments.extend(live_problems)
    if not comments:
        comments.append(f"{len(sockets)} live AMQP socket(s), all with a keepalive timer; keepalive sysctls on target")
    return {
        "result": not (missing or off or live_problems),
        "comment": "; ".join(comments),
        "sockets": sockets,
        "without_keepalive": [_flow(s) for s in missing],
        "undetermined": [_flow(s) for s in unknown],
        "sysctl": drift,
        "sysctl_off_target": off,
        "firewall_idle_timeout": firewall_idle_timeout,
    }


def _flow(sock):
    return f"{_endpoint(sock['local'], sock['local_port'])}->{_endpoint(sock['peer'], sock['peer_port'])}"


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# --------------------------------------------------------------------------
# Salt shell: pillar, commands, /proc
# --------------------------------------------------------------------------


def _setting(path, default):
    # Salt 3008 masks pillar.get results ('**********') outside templates unless unmask=True.
    # pylint: disable=undefined-variable
    return __salt__["pillar.get"](f"{PILLAR_KEY}:{path}", default, unmask=True)


def _targets(time, intvl, probes):
    given = {"tcp_keepalive_time": time, "tcp_keepalive_intvl": intvl, "tcp_keepalive_probes": probes}
    return {
        short: given[short] if given[short] is not None else _setting(f"sysctl:{short}", DEFAULTS["sysctl"][short])
        for short in SYSCTLS
    }


def _read_sysctls():
    current = {}
    for short in SYSCTLS:
        path = "/proc/sys/net/ipv4/" + short
        try:
            with open(path, encoding="ascii") as handle:
                current[SYSCTL_PREFIX + short] = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise CommandExecutionError(f"cannot read {path}: {exc}") from exc
    return current


def validate(time=None, intvl=None, probes=None, firewall_idle_timeout=None, heartbeat=None,
             heartbeat_timeout_threshold=None, heartbeat_rate=None):
    """
    Check keepalive settings against the firewall idle timeout: refuse unless
    ``time + intvl * probes`` is below it. Unset arguments come from pillar
    ``host_rabbitmq`` (``sysctl:tcp_keepalive_*``, ``firewall_idle_timeout``),
    else the deskfleet defaults. The ``host.rabbitmq`` state calls this before
    it writes anything.

    Returns ``result`` (bool), ``comment``, ``problems`` (list), ``worst_case_s``
    and ``firewall_idle_timeout``.

    CLI Example:

    .. code-block:: bash

        salt '*' amqp_keepalive.validate
        salt '*' amqp_keepalive.validate time=7200 intvl=75 probes=9 firewall_idle_timeout=3600
    """
    targets = _targets(time, intvl, probes)
    if firewall_idle_timeout is None:
        firewall_idle_timeout = _setting("firewall_idle_timeout", DEFAULTS["firewall_idle_timeout"])
    problems = _check_keepalive(
        targets["tcp_keepalive_time"], targets["tcp_keepalive_intvl"], targets["tcp_keepalive_probes"], firewall_idle_timeout
    )
    problems += _check_heartbeats(heartbeat, heartbeat_timeout_threshold, heartbeat_rate)
    try:
        worst = _keepalive_worst_case(**_short(targets))
    except (TypeError, ValueError):
        worst = None
    return {
        "result": not problems,
        "comment": " ".join(problems) if problems else (
            f"keepalive gives up after {worst} s, below the firewall idle timeout of {firewall_idle_timeout} s"
        ),
        "problems": problems,
        "worst_case_s": worst,
        "firewall_idle_timeout": firewall_idle_timeout,
        "sysctl": {SYSCTL_PREFIX + k: v for k, v in targets.items()},
    }


def sockets(ports=None):
    """
    Live (established) AMQP sockets on this host and network namespace, from
    ``ss -tnoepH``: broker side (local port is an AMQP port) and client side
    (peer port is), each with its timer and whether keepalive is on.
    ``ports`` defaults to pillar ``host_rabbitmq:amqp_ports`` (5672).

    CLI Example:

    .. code-block:: bash

        salt '*' amqp_keepalive.sockets
        salt '*' amqp_keepalive.sockets ports=5672,5671
    """
    # pylint: disable=undefined-variable
    if ports is None:
        ports = _setting("amqp_ports", DEFAULTS["amqp_ports"])
    ss_bin = salt.utils.path.which("ss")
    if not ss_bin:
        raise CommandExecutionError("amqp_keepalive: 'ss' not found (install iproute2)")
    run = __salt__["cmd.run_all"]([ss_bin, "-tnoepH"], python_shell=False, ignore_retcode=True)
    if run["retcode"] != 0:
        raise CommandExecutionError(f"ss -tnoepH failed: {run.get('stderr', '').strip()}")
    return _amqp_sockets(_parse_ss(run["stdout"]), ports)


def audit(ports=None, time=None, intvl=None, probes=None, firewall_idle_timeout=None):
    """
    Audit a host (its current network namespace) for AMQP connections a
    firewall could cut silently: live AMQP sockets without a keepalive timer,
    keepalive sysctls off target, and running kernel values whose
    ``time + intvl * probes`` is not below the firewall idle timeout.
    Targets default to pillar ``host_rabbitmq`` and then the deskfleet defaults.

    ``result`` is True when nothing was found. ``without_keepalive`` lists the
    flows (``local->peer``); ``sockets`` has each socket's detail.

    CLI Example:

    .. code-block:: bash

        salt '*' amqp_keepalive.audit
        salt '*' amqp_keepalive.audit ports=5672 time=60 intvl=15 probes=4 firewall_idle_timeout=3600
    """
    if firewall_idle_timeout is None:
        firewall_idle_timeout = _setting("firewall_idle_timeout", DEFAULTS["firewall_idle_timeout"])
    live = sockets(ports)
    drift = _sysctl_drift(_read_sysctls(), _targets(time, intvl, probes))
    report = _summarize(live, drift, int(firewall_idle_timeout) if firewall_idle_timeout else None)
    report["ports"] = _ports(ports if ports is not None else _setting("amqp_ports", DEFAULTS["amqp_ports"]))
    return report
