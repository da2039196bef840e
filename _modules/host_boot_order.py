"""
Whether the libvirt ⟂ Open vSwitch start/stop order of ``states/host/boot_order`` is in force on a
compute host (issue 4): systemd drop-ins that order libvirtd, virtqemud, libvirt-guests and
nova-compute after the OVS units, and OVS's ``--delete-transient-ports``. The reading and the rules
live in ``_utils/host_systemd_order.py``; this module is its Salt shell.
"""

import logging
import os

try:
    import host_formula
    import host_systemd_order

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - _utils not synced
    _MISSING = f"host_boot_order: deskfleet host utils not importable (saltutil.sync_utils?): {_exc}"

__virtualname__ = "host_boot_order"

log = logging.getLogger(__name__)

def __virtual__():
    if _MISSING:
        return (False, _MISSING)
    if os.uname().sysname != "Linux":
        return (False, "host_boot_order: only Linux compute hosts")
    return __virtualname__


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value)


def check_order(root="", os_family=None, units=None, ovs_units=None, systemd=None):
    """
    Report whether the libvirt ⟂ Open vSwitch order is in force: systemd drop-ins
    that put ``After=`` + ``Wants=``/``Requires=`` on the OVS units into
    libvirtd, virtqemud, libvirt-guests and the nova-compute unit, and
    ``--delete-transient-ports`` in the OVS defaults file. Files are read under
    ``root`` (default ''). When systemd runs (and root is ''), ``systemctl show``
    confirms the loaded units too (``systemd=False`` skips it).

    A unit counts when it is installed or has a drop-in; ``ok`` needs every such
    unit ordered, libvirtd or virtqemud among them, and the transient flag set.
    Unit names and the OVS defaults file are those the ``host.boot_order`` state
    writes: pillar ``deskfleet:host:boot_order`` over the formula's parameters
    (``os_family`` picks the family layer; default: the grain).

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_boot_order.check_order
        salt-call host_boot_order.check_order root=/mnt/sysimage os_family=RedHat
    """
    root = (root or "").rstrip("/")
    # pylint: disable=undefined-variable
    family = host_formula.from_salt("boot_order", __salt__, __grains__, log=log, os_family=os_family)
    units = _as_list(units) or family["libvirt_units"] + ([family["nova_unit"]] if family.get("nova_unit") else [])
    ovs_units = _as_list(ovs_units) or family["ovs_units"]
    return host_systemd_order.check_order(root, family, units, ovs_units, systemd=systemd)
