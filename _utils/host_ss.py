"""
TCP sockets as ``ss -tnoe[p]H`` prints them (iproute2), and the live AMQP ones among them with
whether each carries a keepalive timer. Plain parsing of captured output, no processes.
"""

import re

DEFAULT_PORTS = (5672,)
# ss -tn state names worth auditing: a live flow that a firewall can forget.
LIVE_STATES = ("ESTAB",)
_TIMER_RE = re.compile(r"\btimer:\((?P<name>[a-z_-]+),(?P<expires>[^,)]*),(?P<retrans>\d+)\)")
_USERS_RE = re.compile(r'\busers:\(\("(?P<name>(?:[^"\\]|\\.)*)",pid=(?P<pid>\d+)')
# ss prints timers as e.g. 119min, 1min52sec, 4sec, 988ms, and 2.488ms meaning 2 s + 488 ms (iproute2 print_ms_timer)
_DURATION_RE = re.compile(
    r"^(?P<neg>-)?(?:(?P<min>\d+)min)?(?:(?P<sec>\d+(?:\.\d+)?)sec)?(?:(?:(?P<ssec>\d+)\.)?(?P<ms>\d+)ms)?$"
)



def parse_duration(text):
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


def split_endpoint(text):
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


def parse_ss(output):
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
        local_addr, local_port = split_endpoint(local)
        peer_addr, peer_port = split_endpoint(peer)
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
            sock["timer_expires_s"] = parse_duration(timer.group("expires"))
            sock["timer_retrans"] = int(timer.group("retrans"))
        users = _USERS_RE.search(rest)
        if users:
            sock["process"] = users.group("name")
            sock["pid"] = int(users.group("pid"))
        sockets.append(sock)
    return sockets


def ports_list(ports):
    if ports is None:
        return list(DEFAULT_PORTS)
    if isinstance(ports, (int, str)):
        ports = str(ports).split(",")
    return sorted({int(str(p).strip()) for p in ports if str(p).strip()})


def amqp_sockets(sockets, ports=(5672,), states=LIVE_STATES):
    """The live sockets of ``sockets`` (from ``parse_ss``) that carry AMQP.

    ``side`` is ``server`` when the local port is an AMQP port (the broker's
    accepted socket), ``client`` when the peer port is (a service talking to
    the broker). A socket with a keepalive timer is ``keepalive: True``; one
    with no timer at all has keepalive off; one showing another timer
    (``on`` = retransmitting, ``persist``) cannot be told from ss alone:
    ``keepalive: None``.
    """
    ports = set(ports_list(ports))
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


def flow(sock):
    return f"{_endpoint(sock['local'], sock['local_port'])}->{_endpoint(sock['peer'], sock['peer_port'])}"


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
