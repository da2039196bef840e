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

The parsing and the checks live in ``_utils/host_dnsmasq_options.py`` and
``_utils/host_dnsmasq_instances.py`` (no Salt); the public functions below are
a thin shell. The ``/proc`` root is an argument so tests can point it
at fake data.
"""

import logging

try:
    from salt.exceptions import SaltInvocationError
except ImportError:  # pragma: no cover - plain imports in unit tests without Salt
    SaltInvocationError = ValueError

try:
    import host_dnsmasq_instances
    import host_dnsmasq_options

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - _utils not synced
    _MISSING = f"host_dnsmasq: deskfleet host utils not importable (saltutil.sync_utils?): {_exc}"

log = logging.getLogger(__name__)

__virtualname__ = "host_dnsmasq"


def __virtual__():
    import salt.utils.platform  # pylint: disable=import-outside-toplevel

    if _MISSING:
        return (False, _MISSING)
    if not salt.utils.platform.is_linux():
        return (False, "host_dnsmasq: Linux only (reads /proc/<pid>/cmdline and network namespaces)")
    return __virtualname__


def _select(proc, pids, netns, pidfiles, default_conf):
    if isinstance(pids, (str, int)):
        pids = [int(p) for p in str(pids).split(",") if p.strip()]
    if isinstance(pidfiles, str):
        pidfiles = [p for p in pidfiles.split(",") if p]
    if pidfiles:
        pids = list(pids or []) + host_dnsmasq_instances.pids_from_files(pidfiles)
    try:
        wanted_netns = host_dnsmasq_instances.resolve_netns(netns)
    except OSError as exc:
        raise SaltInvocationError(f"host_dnsmasq: no network namespace {netns!r}: {exc}") from exc
    return host_dnsmasq_instances.instances(proc=proc, pids=pids, netns=wanted_netns,
                                            default_conf=default_conf or host_dnsmasq_instances.DEFAULT_CONF)


def version(binary="dnsmasq"):
    """
    The installed dnsmasq version, from ``<binary> --version``.

    Returns ``{"version": "2.90", "ok": True}`` (``ok`` is False below 2.67,
    ``version`` is None when the binary is missing).

    CLI Example:

    .. code-block:: bash

        salt '*' host_dnsmasq.version
        salt '*' host_dnsmasq.version binary=/usr/local/sbin/dnsmasq
    """
    found = host_dnsmasq_instances.binary_version(binary)
    return {
        "version": f"{found[0]}.{found[1]}" if found else None,
        "ok": bool(found) and tuple(found) >= host_dnsmasq_options.MIN_VERSION,
        "minimum": f"{host_dnsmasq_options.MIN_VERSION[0]}.{host_dnsmasq_options.MIN_VERSION[1]}",
    }


def instances(proc="/proc", pids=None, netns=None, pidfiles=None, default_conf=None):
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

        salt '*' host_dnsmasq.instances
        salt '*' host_dnsmasq.instances netns=qdhcp-1234
    """
    return _select(proc, pids, netns, pidfiles, default_conf)


def audit(proc="/proc", version=None, pids=None, netns=None, pidfiles=None, binary="dnsmasq",
          default_conf=None):  # pylint: disable=redefined-outer-name
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
        select instances, as for ``host_dnsmasq.instances``
    binary
        the dnsmasq binary to ask for its version (default ``dnsmasq`` on PATH)

    CLI Example:

    .. code-block:: bash

        salt '*' host_dnsmasq.audit
        salt '*' host_dnsmasq.audit netns=qdhcp-1234 --out=json
        salt '*' host_dnsmasq.audit pidfiles=/run/dnsmasq-deskfleet/br-desk1.pid version=2.90
    """
    found = _select(proc, pids, netns, pidfiles, default_conf)
    parsed = host_dnsmasq_options.parse_version(version) if version is not None else host_dnsmasq_instances.binary_version(binary)
    return host_dnsmasq_instances.report(found, parsed)
