"""
TCP keepalive against a stateful firewall's idle timeout (issue 5): the rule ``host.rabbitmq``
enforces (``tcp_keepalive_time + tcp_keepalive_intvl x tcp_keepalive_probes`` below the idle
timeout), a suggestion that fits, AMQP heartbeat ranges, and the audit verdict from live sockets
(``host_ss``) and the running kernel's sysctls.
"""

from host_errors import HostError
from host_ss import flow

PILLAR_KEY = "deskfleet:host:rabbitmq"
SYSCTLS = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
SYSCTL_PREFIX = "net.ipv4."
KERNEL_DEFAULTS = {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9}
def as_int(value, what, minimum, problems):
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


def worst_case(time, intvl, probes):
    """Seconds from the last segment until keepalive gives up on a dead peer."""
    return int(time) + int(intvl) * int(probes)


def suggest(firewall_idle_timeout, base, probes=None):
    """Keepalive settings whose worst case is below ``firewall_idle_timeout``, or None.

    ``base`` (the formula's sysctl defaults, 60/15/4 = 120 s) when it fits, else
    values scaled to the timeout: first probe at about half of it, the probes in the rest.
    """
    limit = int(firewall_idle_timeout)
    base = {short: int(base[short]) for short in SYSCTLS}
    if worst_case(base["tcp_keepalive_time"], base["tcp_keepalive_intvl"], base["tcp_keepalive_probes"]) < limit:
        return base
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


def check_keepalive(time, intvl, probes, firewall_idle_timeout, base, where=PILLAR_KEY):
    """Problems (human sentences) with keepalive settings against a firewall idle timeout.

    Empty list: ``time + intvl * probes`` is below the idle timeout, so a probe
    refreshes the firewall's flow entry in time and a dead peer is noticed
    before the firewall would have cut the flow anyway. ``base``: the formula's
    sysctl defaults, suggested first when they fit.
    """
    problems = []
    time = as_int(time, f"{where}:sysctl:tcp_keepalive_time", 1, problems)
    intvl = as_int(intvl, f"{where}:sysctl:tcp_keepalive_intvl", 1, problems)
    probes = as_int(probes, f"{where}:sysctl:tcp_keepalive_probes", 1, problems)
    timeout = as_int(firewall_idle_timeout, f"{where}:firewall_idle_timeout", 1, problems)
    if problems:
        return problems
    worst = worst_case(time, intvl, probes)
    if worst < timeout:
        return []
    message = (
        f"TCP keepalive too slow for the firewall: tcp_keepalive_time + tcp_keepalive_intvl x "
        f"tcp_keepalive_probes = {time} + {intvl} x {probes} = {worst} s is not below the firewall idle "
        f"timeout of {timeout} s ({where}:firewall_idle_timeout), so the firewall can forget an idle AMQP "
        f"connection before keepalive refreshes it and the connection dies silently."
    )
    hint = suggest(timeout, base, probes)
    if hint:
        message += (
            f" Change pillar {where}:sysctl so that the sum is below {timeout} s, e.g. "
            f"tcp_keepalive_time: {hint['tcp_keepalive_time']}, "
            f"tcp_keepalive_intvl: {hint['tcp_keepalive_intvl']}, "
            f"tcp_keepalive_probes: {hint['tcp_keepalive_probes']} "
            f"({worst_case(**short_names(hint))} s)"
        )
        message += f", or correct {where}:firewall_idle_timeout if the firewall keeps idle flows longer."
    else:
        message += (
            f" An idle timeout of {timeout} s is too short for TCP keepalive (it needs at least 3 s): "
            f"check {where}:firewall_idle_timeout."
        )
    return [message]


def short_names(sysctls):
    return {"time": sysctls["tcp_keepalive_time"], "intvl": sysctls["tcp_keepalive_intvl"], "probes": sysctls["tcp_keepalive_probes"]}


def check_heartbeats(rabbitmq_heartbeat=None, heartbeat_timeout_threshold=None, heartbeat_rate=None, where=PILLAR_KEY):
    """Problems with the AMQP heartbeat settings (types and ranges only; 0 disables a heartbeat)."""
    problems = []
    if rabbitmq_heartbeat is not None:
        as_int(rabbitmq_heartbeat, f"{where}:broker:heartbeat", 0, problems)
    if heartbeat_timeout_threshold is not None:
        as_int(heartbeat_timeout_threshold, f"{where}:oslo_messaging:heartbeat_timeout_threshold", 0, problems)
    if heartbeat_rate is not None:
        as_int(heartbeat_rate, f"{where}:oslo_messaging:heartbeat_rate", 1, problems)
    return problems


def sysctl_drift(current, target):
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


def summarize(sockets, drift, firewall_idle_timeout=None):
    """The audit verdict from ``amqp_sockets`` and ``sysctl_drift`` results (plain dict)."""
    missing = [s for s in sockets if s["keepalive"] is False]
    unknown = [s for s in sockets if s["keepalive"] is None]
    off = sorted(name for name, row in drift.items() if not row["ok"])
    comments = []
    if missing:
        comments.append(
            f"{len(missing)} of {len(sockets)} live AMQP socket(s) have no keepalive timer: "
            + ", ".join(flow(s) for s in missing)
        )
    if unknown:
        comments.append(
            f"{len(unknown)} live AMQP socket(s) show a '{unknown[0]['timer']}' timer (retransmitting?), "
            "keepalive cannot be told: " + ", ".join(flow(s) for s in unknown)
        )
    if off:
        comments.append(
            "sysctl off target: "
            + ", ".join(f"{name}={drift[name]['current']} (target {drift[name]['target']})" for name in off)
        )
    kernel = {short: drift[SYSCTL_PREFIX + short]["current"] for short in SYSCTLS}
    live_problems = []
    if firewall_idle_timeout and all(isinstance(v, int) for v in kernel.values()):
        worst = worst_case(**short_names(kernel))
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
        "without_keepalive": [flow(s) for s in missing],
        "undetermined": [flow(s) for s in unknown],
        "sysctl": drift,
        "sysctl_off_target": off,
        "firewall_idle_timeout": firewall_idle_timeout,
    }


def read_sysctls(proc_sys="/proc/sys/net/ipv4"):
    """The running kernel's keepalive sysctls (this network namespace), by full name."""
    current = {}
    for short in SYSCTLS:
        path = f"{proc_sys}/{short}"
        try:
            with open(path, encoding="ascii") as handle:
                current[SYSCTL_PREFIX + short] = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise HostError(f"cannot read {path}: {exc}") from exc
    return current
