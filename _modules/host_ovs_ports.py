"""
Compute-host network hygiene: stale Open vSwitch ports left behind by libvirt,
and the libvirt ⟂ Open vSwitch start/stop order that prevents them (issue 4).

A compute host that stops Open vSwitch before libvirt cannot let libvirt remove
its ports (``ovs-vsctl --if-exists del-port`` fails while OVSDB is down); on the
next start ovs-vswitchd finds port records whose taps do not exist (``ofport -1``,
``error "could not open network device tapX (No such device)"``), and libvirt's
``--may-exist add-port`` keeps that stale row when the domain starts again.

``audit`` lists the OVS interfaces and classifies each against libvirt's domains
as ``healthy``, ``broken``, ``orphan`` or ``foreign`` (the rules: ``_utils/host_port_classes.py``).

``repair`` deletes orphans and re-plugs broken VM ports with the same
external-ids and Port/Interface settings, only after seeing them stale on two
audits ``delay`` seconds apart (never racing a tap that libvirt is creating),
then audits again and fails if anything stays broken. ``check_order`` reports
whether the systemd drop-ins of ``states/host/boot_order`` and OVS's
``--delete-transient-ports`` are in force.

Settings: an argument, else config ``deskfleet:host:ovs_ports:<key>`` (minion config,
grains or pillar; the old ``host_net:<key>`` is read for one more release, with a
warning), else ``states/host/ovs_ports/parameters/defaults.yaml`` (read from the
file server): ``ovs_db``, ``libvirt_uri``, ``confirm_delay``, ``settle``,
``bridges``, ``sysfs``, ``timeout``, ``vm_port_prefixes``, ``restart_domains``.
"""

import copy
import logging
import os
import shutil
import time

try:
    import host_formula
    import host_libvirt
    import host_ovsdb
    import host_port_classes
    import host_port_repair

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - _utils not synced
    _MISSING = f"host_ovs_ports: deskfleet host utils not importable (saltutil.sync_utils?): {_exc}"

__virtualname__ = "host_ovs_ports"

log = logging.getLogger(__name__)

def __virtual__():
    if _MISSING:
        return (False, _MISSING)
    if not os.uname().sysname == "Linux":
        return (False, "host_ovs_ports: only Linux compute hosts")
    binary = __salt__["config.get"]("deskfleet:host:ovs_ports:ovs_vsctl", None) or "ovs-vsctl"  # pylint: disable=undefined-variable
    if shutil.which(binary) is None:
        return (False, "host_ovs_ports: ovs-vsctl not found (install openvswitch-switch)")
    if not host_libvirt.HAS_LIBVIRT:
        return (False, "host_ovs_ports: libvirt-python is not installed")
    return __virtualname__


_KEYS = ("ovs_db", "libvirt_uri", "ovs_vsctl", "timeout", "confirm_delay", "settle", "bridges", "sysfs",
         "vm_port_prefixes", "restart_domains")


def _options(**given):
    """This call's settings: each argument given, else config deskfleet:host:ovs_ports, else the formula's file."""
    # pylint: disable=undefined-variable
    cfg = host_formula.from_salt("ovs_ports", __salt__, __grains__, lookup="config", old_key="host_net", log=log)
    opts = {key: given[key] if given.get(key) is not None else copy.deepcopy(cfg.get(key)) for key in _KEYS}
    if isinstance(opts["bridges"], str):
        opts["bridges"] = [b for b in opts["bridges"].split(",") if b]
    opts["bridges"] = host_ovsdb.as_list(opts["bridges"]) or None
    return opts


def _base(opts):
    return host_ovsdb.vsctl_base(opts["ovs_vsctl"], opts["ovs_db"], opts["timeout"])


def _collect(opts):
    interfaces = host_ovsdb.snapshot(_base(opts), run_cmd=_run)
    domains = host_libvirt.domains(opts["libvirt_uri"])
    rows = host_port_classes.classify(
        interfaces,
        domains,
        netdev=host_port_classes.netdev_checker(opts["sysfs"]),
        bridges=opts["bridges"],
        prefixes=host_ovsdb.as_list(opts["vm_port_prefixes"]),
    )
    return rows, {i["name"]: i for i in interfaces}, domains


def _run(cmd):
    return host_ovsdb.run(cmd)


def audit(ovs_db=None, libvirt_uri=None, bridges=None, sysfs=None, timeout=None):
    """
    Classify every VM-facing Open vSwitch interface against libvirt's domains:
    ``healthy``, ``broken`` (a domain's port that is not usable), ``orphan``
    (no domain owns it) or ``foreign`` (non-VM port with a problem, never touched).
    Each row names the problems seen (ofport < 0, error, netdev missing, wrong
    bridge, not plugged) and the action ``repair`` would take.

    ovs_db
        ovs-vsctl ``--db`` (e.g. ``unix:/run/openvswitch/db.sock``); config ``deskfleet:host:ovs_ports:ovs_db``
    libvirt_uri
        default ``qemu:///system``; config ``deskfleet:host:ovs_ports:libvirt_uri``
    bridges
        only these bridges (list or comma string); default all

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_ovs_ports.audit
        salt 'cmp-01' host_ovs_ports.audit bridges=br-int libvirt_uri=qemu:///system
    """
    opts = _options(ovs_db=ovs_db, libvirt_uri=libvirt_uri, bridges=bridges, sysfs=sysfs, timeout=timeout)
    rows, _, _ = _collect(opts)
    return {
        "ports": rows,
        "summary": host_port_classes.summarize(rows),
        "needs_repair": sorted(r["name"] for r in host_port_classes.bad(rows)),
        "ovs_db": opts["ovs_db"],
        "libvirt_uri": opts["libvirt_uri"],
    }


def verify(ovs_db=None, libvirt_uri=None, bridges=None, sysfs=None, timeout=None):
    """
    Audit and fail (``result: False``) when any port is broken or orphaned: the
    last step of ``states/host/ovs_ports.sls`` and of host maintenance.

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_ovs_ports.verify
    """
    report = audit(ovs_db=ovs_db, libvirt_uri=libvirt_uri, bridges=bridges, sysfs=sysfs, timeout=timeout)
    bad = host_port_classes.bad(report["ports"])
    return {
        "result": not bad,
        "comment": "all VM ports healthy" if not bad else f"{len(bad)} port(s) broken or orphaned: "
        + ", ".join(f"{r['name']} ({r['class']}: {'; '.join(r['problems'])})" for r in bad),
        "summary": report["summary"],
        "bad": bad,
    }


def repair(
    ovs_db=None,
    libvirt_uri=None,
    bridges=None,
    delay=None,
    settle=None,
    restart_domains=None,
    test=False,
    sysfs=None,
    timeout=None,
):
    """
    Fix what ``audit`` finds, after confirming it on two passes ``delay`` seconds
    apart (``deskfleet:host:ovs_ports:confirm_delay``, default 5) so a tap that libvirt is just
    creating is never touched:

    - orphan: ``del-port`` (also stale duplicates of an iface-id now on another tap)
    - broken port of a shut-off domain: ``del-port`` (libvirt adds a fresh one when
      the domain starts instead of reusing the stale row with ``--may-exist``)
    - broken port of a running domain: ``del-port`` then ``add-port`` on the bridge
      the domain's XML names, with the same Port/Interface settings and
      external-ids (iface-id, attached-mac, vm-id/vm-uuid), the old ofport requested
    - running domain interface with no port: ``add-port`` as libvirt does
    - running domain whose tap is gone: a domain restart, only with
      ``restart_domains=True`` (``deskfleet:host:ovs_ports:restart_domains``); reported otherwise

    Then audits until ``settle`` seconds pass or nothing is left; ``result`` is
    False when ports stay broken. ``test=True`` only reports what it would do
    (``changes`` then lists the planned actions and commands; nothing is run).

    CLI Example:

    .. code-block:: bash

        salt 'cmp-01' host_ovs_ports.repair test=True
        salt 'cmp-01' host_ovs_ports.repair delay=10
    """
    opts = _options(ovs_db=ovs_db, libvirt_uri=libvirt_uri, bridges=bridges, sysfs=sysfs, timeout=timeout,
                    confirm_delay=delay, settle=settle, restart_domains=restart_domains)
    uri = opts["libvirt_uri"]
    return host_port_repair.repair(
        collect=lambda: _collect(opts),
        run=_run,
        restart=lambda uuid: host_libvirt.restart_domain(uri, uuid),
        base=_base(opts),
        uri=uri,
        delay=float(opts["confirm_delay"]),
        settle=float(opts["settle"]),
        restart_domains=bool(opts["restart_domains"]),
        test=test,
        sleep=time.sleep,
    )
