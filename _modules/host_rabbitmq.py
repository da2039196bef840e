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
The parsing and checking live in ``_utils/host_ss.py`` and
``_utils/host_keepalive.py`` (no Salt, unit-tested with captured ``ss``
output); the public functions here are thin shells.

Targets come from the function arguments, else pillar ``deskfleet:host:rabbitmq``
(``sysctl:tcp_keepalive_*``, ``firewall_idle_timeout``, ``amqp_ports``),
else ``states/host/rabbitmq/parameters/`` (read from the file server; the old
pillar key ``host_rabbitmq`` is read for one more release, with a warning).
"""

import logging

import salt.utils.path
from salt.exceptions import CommandExecutionError

try:
    import host_formula
    import host_keepalive
    import host_ss

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - _utils not synced
    _MISSING = f"host_rabbitmq: deskfleet host utils not importable (saltutil.sync_utils?): {_exc}"

__virtualname__ = "host_rabbitmq"

log = logging.getLogger(__name__)


def __virtual__():
    if _MISSING:
        return (False, _MISSING)
    if __grains__.get("kernel") != "Linux":  # pylint: disable=undefined-variable
        return (False, "host_rabbitmq: Linux only (net.ipv4.tcp_keepalive_* sysctls)")
    return __virtualname__


def _settings():
    """deskfleet:host:rabbitmq over the formula's parameters (``_utils/host_formula.py``)."""
    return host_formula.from_salt("rabbitmq", __salt__, __grains__, log=log)  # pylint: disable=undefined-variable


def _targets(cfg, time, intvl, probes):
    given = {"tcp_keepalive_time": time, "tcp_keepalive_intvl": intvl, "tcp_keepalive_probes": probes}
    return {short: given[short] if given[short] is not None else cfg["sysctl"][short] for short in host_keepalive.SYSCTLS}


def validate(time=None, intvl=None, probes=None, firewall_idle_timeout=None, heartbeat=None,
             heartbeat_timeout_threshold=None, heartbeat_rate=None):
    """
    Check keepalive settings against the firewall idle timeout: refuse unless
    ``time + intvl * probes`` is below it. Unset arguments come from pillar
    ``deskfleet:host:rabbitmq`` (``sysctl:tcp_keepalive_*``, ``firewall_idle_timeout``),
    else the formula's defaults. The ``host.rabbitmq`` state calls this before
    it writes anything.

    Returns ``result`` (bool), ``comment``, ``problems`` (list), ``worst_case_s``
    and ``firewall_idle_timeout``.

    CLI Example:

    .. code-block:: bash

        salt '*' host_rabbitmq.validate
        salt '*' host_rabbitmq.validate time=7200 intvl=75 probes=9 firewall_idle_timeout=3600
    """
    cfg = _settings()
    targets = _targets(cfg, time, intvl, probes)
    if firewall_idle_timeout is None:
        firewall_idle_timeout = cfg["firewall_idle_timeout"]
    problems = host_keepalive.check_keepalive(
        targets["tcp_keepalive_time"], targets["tcp_keepalive_intvl"], targets["tcp_keepalive_probes"],
        firewall_idle_timeout, cfg["sysctl"],
    )
    problems += host_keepalive.check_heartbeats(heartbeat, heartbeat_timeout_threshold, heartbeat_rate)
    try:
        worst = host_keepalive.worst_case(**host_keepalive.short_names(targets))
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
        "sysctl": {host_keepalive.SYSCTL_PREFIX + k: v for k, v in targets.items()},
    }

def sockets(ports=None):
    """
    Live (established) AMQP sockets on this host and network namespace, from
    ``ss -tnoepH``: broker side (local port is an AMQP port) and client side
    (peer port is), each with its timer and whether keepalive is on.
    ``ports`` defaults to pillar ``deskfleet:host:rabbitmq:amqp_ports`` (5672).

    CLI Example:

    .. code-block:: bash

        salt '*' host_rabbitmq.sockets
        salt '*' host_rabbitmq.sockets ports=5672,5671
    """
    # pylint: disable=undefined-variable
    if ports is None:
        ports = _settings()["amqp_ports"]
    ss_bin = salt.utils.path.which("ss")
    if not ss_bin:
        raise CommandExecutionError("host_rabbitmq: 'ss' not found (install iproute2)")
    run = __salt__["cmd.run_all"]([ss_bin, "-tnoepH"], python_shell=False, ignore_retcode=True)
    if run["retcode"] != 0:
        raise CommandExecutionError(f"ss -tnoepH failed: {run.get('stderr', '').strip()}")
    return host_ss.amqp_sockets(host_ss.parse_ss(run["stdout"]), ports)

def audit(ports=None, time=None, intvl=None, probes=None, firewall_idle_timeout=None):
    """
    Audit a host (its current network namespace) for AMQP connections a
    firewall could cut silently: live AMQP sockets without a keepalive timer,
    keepalive sysctls off target, and running kernel values whose
    ``time + intvl * probes`` is not below the firewall idle timeout.
    Targets default to pillar ``deskfleet:host:rabbitmq`` and then the deskfleet defaults.

    ``result`` is True when nothing was found. ``without_keepalive`` lists the
    flows (``local->peer``); ``sockets`` has each socket's detail.

    CLI Example:

    .. code-block:: bash

        salt '*' host_rabbitmq.audit
        salt '*' host_rabbitmq.audit ports=5672 time=60 intvl=15 probes=4 firewall_idle_timeout=3600
    """
    cfg = _settings()
    if firewall_idle_timeout is None:
        firewall_idle_timeout = cfg["firewall_idle_timeout"]
    ports = ports if ports is not None else cfg["amqp_ports"]
    live = sockets(ports)
    drift = host_keepalive.sysctl_drift(host_keepalive.read_sysctls(), _targets(cfg, time, intvl, probes))
    report = host_keepalive.summarize(live, drift, int(firewall_idle_timeout) if firewall_idle_timeout else None)
    report["ports"] = host_ss.ports_list(ports)
    return report
