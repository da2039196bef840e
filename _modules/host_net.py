"""
Compute-host network hygiene: stale Open vSwitch ports left behind by libvirt,
and the libvirt ⟂ Open vSwitch start/stop order that prevents them (issue 4).

A compute host that stops Open vSwitch before libvirt cannot let libvirt remove
its ports (``ovs-vsctl --if-exists del-port`` fails while OVSDB is down); on the
next start ovs-vswitchd finds port records whose taps do not exist (``ofport -1``,
``error "could not open network device tapX (No such device)"``), and libvirt's
``--may-exist add-port`` keeps that stale row when the domain starts again.

``audit`` lists the OVS interfaces and classifies each against libvirt's domains:

- ``healthy``: valid ofport, no error, netdev present, owned by a running domain
  on the bridge its XML names (or not a VM port at all);
- ``broken``: the port of a libvirt domain that is not usable (ofport < 0, error,
  netdev gone, wrong bridge, the domain is shut off, or a running domain's
  OVS-virtualport interface has no port at all);
- ``orphan``: a VM port (libvirt/Nova external-ids or a tap/vnet name) no domain
  owns, or a stale duplicate of an iface-id that a running domain now has on
  another tap;
- ``foreign``: a non-VM interface (uplink, tunnel, …) with a problem; reported,
  never touched.

``repair`` deletes orphans and re-plugs broken VM ports with the same
external-ids and Port/Interface settings, only after seeing them stale on two
audits ``delay`` seconds apart (never racing a tap that libvirt is creating),
then audits again and fails if anything stays broken. ``check_order`` reports
whether the systemd drop-ins of ``states/host/boot_order`` and OVS's
``--delete-transient-ports`` are in force.

Where the daemons are: ``ovs_db`` (``--db`` of ovs-vsctl; default its own) and
``libvirt_uri`` (default ``qemu:///system``) as arguments, or the config keys
``host_net:ovs_db`` / ``host_net:libvirt_uri`` (minion config, grains or pillar).
Other keys: ``host_net:confirm_delay`` (5), ``host_net:settle`` (10),
``host_net:bridges`` (all), ``host_net:sysfs`` (/sys), ``host_net:timeout`` (10),
``host_net:vm_port_prefixes`` (tap, vnet), ``host_net:restart_domains`` (False).
"""

import copy
import json
import logging
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

try:
    import libvirt  # pylint: disable=import-error

    HAS_LIBVIRT = True
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)

__virtualname__ = "host_net"

DEFAULTS = {
    "ovs_db": None,
    "libvirt_uri": "qemu:///system",
    "ovs_vsctl": "ovs-vsctl",
    "timeout": 10,
    "confirm_delay": 5,
    "settle": 10,
    "bridges": None,
    "sysfs": "/sys",
    "vm_port_prefixes": ["tap", "vnet"],
    "restart_domains": False,
}

# Interface types whose netdev is a kernel device we can look up in sysfs.
KERNEL_TYPES = ("", "system", "tap")
# External-ids libvirt (vm-id) and Nova/os-vif (vm-uuid) put on a VM's interface.
VM_EXTERNAL_IDS = ("iface-id", "vm-uuid", "vm-id", "attached-mac")
PORT_COLUMNS = ("tag", "trunks", "vlan_mode", "external_ids", "other_config")

# Unit names per OS family; keep in step with states/host/boot_order/map.jinja.
OS_FAMILY_UNITS = {
    "Debian": {
        "ovs_units": ["openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service"],
        "libvirt_units": ["libvirtd.service", "virtqemud.service", "libvirt-guests.service", "nova-compute.service"],
        "ovs_defaults_file": "/etc/default/openvswitch-switch",
        "ovs_opts_var": "OVS_CTL_OPTS",
    },
    "RedHat": {
        "ovs_units": ["openvswitch.service", "ovsdb-server.service", "ovs-vswitchd.service"],
        "libvirt_units": [
            "libvirtd.service",
            "virtqemud.service",
            "libvirt-guests.service",
            "openstack-nova-compute.service",
        ],
        "ovs_defaults_file": "/etc/sysconfig/openvswitch",
        "ovs_opts_var": "OPTIONS",
    },
}
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DROPIN_DIRS = ("/etc/systemd/system", "/run/systemd/system")
TRANSIENT_FLAG = "--delete-transient-ports"


class HostNetError(Exception):
    """A daemon could not be reached or a command failed (CommandExecutionError under Salt)."""


def __virtual__():
    if not os.uname().sysname == "Linux":
        return (False, "host_net: only Linux compute hosts")
    if shutil.which(_cfg("ovs_vsctl")) is None:
        return (False, "host_net: ovs-vsctl not found (install openvswitch-switch)")
    if not HAS_LIBVIRT:
        return (False, "host_net: libvirt-python is not installed")
    return __virtualname__


# --------------------------------------------------------------------------- config


def _cfg(key, value=None):
    """An explicit argument, else ``config.get host_net:<key>``, else the default."""
    if value is not None:
        return value
    salt_funcs = globals().get("__salt__")
    if salt_funcs is not None:
        try:
            found = salt_funcs["config.get"](f"host_net:{key}", None)
        except Exception:  # pylint: disable=broad-except
            found = None  # not loaded by Salt, or config.get not available yet
        if found is not None:
            return found
    return copy.deepcopy(DEFAULTS.get(key))


def _fail(message):
    """Raise Salt's CommandExecutionError when loaded by Salt, HostNetError otherwise."""
    try:
        from salt.exceptions import CommandExecutionError  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover
        raise HostNetError(message) from None
    raise CommandExecutionError(message)


# --------------------------------------------------------------------------- OVS data


def _ovs_value(value):
    """Decode one OVSDB JSON datum (``--data=json``) into plain Python."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, data = value
        if kind in ("uuid", "named-uuid"):
            return data
        if kind == "set":
            return [_ovs_value(item) for item in data]
        if kind == "map":
            return {_ovs_value(k): _ovs_value(v) for k, v in data}
    return value


def _as_list(value):
    """OVSDB writes a one-element set as the element itself and an empty one as []."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _optional(value):
    """An optional scalar column ([] when unset) as the value or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _parse_ovs_list(text):
    """Rows of one ``ovs-vsctl --format=json --data=json list <Table>`` output."""
    doc = json.loads(text) if isinstance(text, str) else text
    headings = doc["headings"]
    return [dict(zip(headings, (_ovs_value(cell) for cell in row))) for row in doc["data"]]


BRIDGE_COLUMNS = "_uuid,name,ports,datapath_type"
PORT_LIST_COLUMNS = "_uuid,name,interfaces,tag,trunks,vlan_mode,external_ids,other_config"
IFACE_COLUMNS = (
    "_uuid,name,type,ofport,ofport_request,error,external_ids,other_config,options,mtu_request,link_state,admin_state,"
    "ifindex"
)


def _build_ovs_snapshot(bridges, ports, interfaces):
    """
    Join Bridge, Port and Interface rows (as ``parse_ovs_list`` returns them) into a
    list of interfaces, each with its port and bridge.
    """
    port_bridge = {}
    for br in bridges:
        for port_uuid in _as_list(br.get("ports")):
            port_bridge[port_uuid] = br["name"]
    iface_port = {}
    for port in ports:
        members = _as_list(port.get("interfaces"))
        for iface_uuid in members:
            iface_port[iface_uuid] = {
                "name": port["name"],
                "uuid": port["_uuid"],
                "members": len(members),
                "bridge": port_bridge.get(port["_uuid"]),
                "tag": _optional(port.get("tag")),
                "trunks": _as_list(port.get("trunks")),
                "vlan_mode": _optional(port.get("vlan_mode")),
                "external_ids": port.get("external_ids") or {},
                "other_config": port.get("other_config") or {},
            }
    result = []
    for iface in interfaces:
        port = iface_port.get(iface["_uuid"])
        error = _optional(iface.get("error"))
        result.append(
            {
                "name": iface["name"],
                "uuid": iface["_uuid"],
                "type": iface.get("type") or "",
                "ofport": _optional(iface.get("ofport")),
                "ofport_request": _optional(iface.get("ofport_request")),
                "error": error or None,
                "external_ids": iface.get("external_ids") or {},
                "other_config": iface.get("other_config") or {},
                "options": iface.get("options") or {},
                "mtu_request": _optional(iface.get("mtu_request")),
                "link_state": _optional(iface.get("link_state")),
                "ifindex": _optional(iface.get("ifindex")),
                "port": port,
                "bridge": port["bridge"] if port else None,
            }
        )
    return result


def _vsctl_base(ovs_db=None, timeout=None):
    cmd = [_cfg("ovs_vsctl")]
    db = _cfg("ovs_db", ovs_db)
    if db:
        cmd.append(f"--db={db}")
    cmd.append(f"--timeout={int(_cfg('timeout', timeout))}")
    return cmd


def _run(cmd):
    log.debug("host_net: running %s", cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        _fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _ovs_snapshot(ovs_db=None, timeout=None):
    out = _run(
        _vsctl_base(ovs_db, timeout)
        + ["--format=json", "--data=json"]
        + ["--", f"--columns={BRIDGE_COLUMNS}", "list", "Bridge"]
        + ["--", f"--columns={PORT_LIST_COLUMNS}", "list", "Port"]
        + ["--", f"--columns={IFACE_COLUMNS}", "list", "Interface"]
    )
    docs = [line for line in out.splitlines() if line.strip()]
    if len(docs) != 3:
        _fail(f"unexpected ovs-vsctl output ({len(docs)} tables): {out[:200]}")
    return _build_ovs_snapshot(*(_parse_ovs_list(doc) for doc in docs))


# --------------------------------------------------------------------------- libvirt data


def _parse_domain_xml(xml_text, active):
    """A domain as plain data: name, uuid, active and its network interfaces."""
    root = ET.fromstring(xml_text)
    dom = {
        "name": root.findtext("name"),
        "uuid": (root.findtext("uuid") or "").lower(),
        "active": bool(active),
        "interfaces": [],
    }
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        target = iface.find("target")
        source = iface.find("source")
        vport = iface.find("virtualport")
        params = vport.find("parameters") if vport is not None else None
        dom["interfaces"].append(
            {
                "type": iface.get("type"),
                "mac": (mac.get("address") or "").lower() if mac is not None else None,
                "target": target.get("dev") if target is not None else None,
                "bridge": source.get("bridge") if source is not None else None,
                "network": source.get("network") if source is not None else None,
                "virtualport": vport.get("type") if vport is not None else None,
                "interfaceid": params.get("interfaceid") if params is not None else None,
            }
        )
    return dom


def _libvirt_domains(libvirt_uri=None):
    uri = _cfg("libvirt_uri", libvirt_uri)
    if not HAS_LIBVIRT:
        _fail("libvirt-python is not installed")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        _fail(f"cannot reach libvirt at {uri}: {exc}")
    try:
        domains = []
        for dom in conn.listAllDomains(0):
            try:
                active = dom.isActive()
                domains.append(_parse_domain_xml(dom.XMLDesc(0), active))
            except libvirt.libvirtError as exc:  # a domain vanished mid-listing
                log.info("host_net: skipping domain: %s", exc)
        return domains
    finally:
        conn.close()


# --------------------------------------------------------------------------- classification


def _is_vm_port(iface, prefixes):
    ids = iface.get("external_ids") or {}
    if any(key in ids for key in VM_EXTERNAL_IDS):
        return True
    return any(iface["name"].startswith(p) for p in prefixes or ())


def _owner_index(domains):
    by_target, by_ifaceid, by_vm_mac = {}, {}, {}
    for dom in domains:
        for dif in dom["interfaces"]:
            entry = (dom, dif)
            if dif.get("target") and dom["active"]:
                by_target[dif["target"]] = entry
            if dif.get("interfaceid"):
                by_ifaceid.setdefault(dif["interfaceid"], []).append(entry)
            if dif.get("mac"):
                by_vm_mac[(dom["uuid"], dif["mac"])] = entry
    return by_target, by_ifaceid, by_vm_mac


def _find_owner(iface, index):
    by_target, by_ifaceid, by_vm_mac = index
    if iface["name"] in by_target:
        return by_target[iface["name"]], "tap name"
    ids = iface.get("external_ids") or {}
    candidates = by_ifaceid.get(ids.get("iface-id"), [])
    if candidates:
        # prefer a running domain when an iface-id appears twice (e.g. mid-migration)
        candidates = sorted(candidates, key=lambda e: not e[0]["active"])
        return candidates[0], "iface-id"
    vm = (ids.get("vm-uuid") or ids.get("vm-id") or "").lower()
    mac = (ids.get("attached-mac") or "").lower()
    if vm and mac and (vm, mac) in by_vm_mac:
        return by_vm_mac[(vm, mac)], "vm-uuid + attached-mac"
    return None, None


def _netdev_lookup(netdev):
    """``netdev`` as a callable name -> ifindex (None: no such device), from a callable, dict or None."""
    if netdev is None:
        return None
    if callable(netdev):
        return netdev
    return netdev.get


def _problems(iface, netdev):
    problems = []
    ofport = iface.get("ofport")
    if ofport is None:
        problems.append("no ofport")
    elif ofport < 0:
        problems.append(f"ofport {ofport}")
    if iface.get("error"):
        problems.append(f"error: {iface['error']}")
    if iface.get("type", "") in KERNEL_TYPES and netdev is not None:
        kernel_ifindex = netdev(iface["name"])
        if kernel_ifindex is None:
            problems.append("netdev missing")
        elif not problems and iface.get("ifindex") != kernel_ifindex:
            # ovs-vswitchd still holds an older device of that name (or none at all)
            problems.append(
                f"not attached to the current netdev (OVS ifindex {iface.get('ifindex')}, kernel {kernel_ifindex})"
            )
    return problems


def _dom_summary(dom):
    return {"name": dom["name"], "uuid": dom["uuid"], "active": dom["active"]} if dom else None


def _classify(interfaces, domains, netdev=None, bridges=None, prefixes=None):
    """
    Classify OVS interfaces (``build_ovs_snapshot``) against libvirt domains
    (``parse_domain_xml``). ``netdev`` maps a kernel device name to its ifindex
    (callable or dict; a missing name means no such device; None: do not check).
    Returns one row per OVS interface on the watched bridges (non-VM ports are
    ``healthy`` or ``foreign``, never acted on) plus one ``broken`` row per
    running domain's OVS-virtualport interface that has no port at all.
    """
    prefixes = DEFAULTS["vm_port_prefixes"] if prefixes is None else prefixes
    netdev = _netdev_lookup(netdev)
    index = _owner_index(domains)
    rows = []
    seen_names = set()
    for iface in interfaces:
        seen_names.add(iface["name"])
        if bridges and iface["bridge"] not in bridges:
            continue
        problems = _problems(iface, netdev)
        port = iface.get("port") or {}
        row = {
            "name": iface["name"],
            "bridge": iface["bridge"],
            "port": port.get("name"),
            "uuid": iface["uuid"],
            "type": iface["type"],
            "ofport": iface["ofport"],
            "error": iface["error"],
            "external_ids": dict(iface["external_ids"]),
            "problems": problems,
            "domain": None,
            "matched_by": None,
        }
        vm_port = _is_vm_port(iface, prefixes) and iface["type"] in KERNEL_TYPES
        owner, matched_by = _find_owner(iface, index) if vm_port or iface["name"] in index[0] else (None, None)
        if owner is None:
            if not vm_port:
                row.update(klass="foreign" if problems else "healthy", action="none")
                row["reason"] = "not a VM port" + (": left alone" if problems else "")
            elif problems:
                row.update(klass="orphan", action="del-port", reason="no libvirt domain owns this port")
            else:
                row.update(klass="healthy", action="none", reason="VM port without a libvirt domain (left alone)")
            rows.append(row)
            continue
        dom, dif = owner
        row["domain"] = _dom_summary(dom)
        row["matched_by"] = matched_by
        row["domain_bridge"] = dif.get("bridge")
        if port.get("members", 1) > 1:
            row.update(klass="foreign", action="none", reason="bond port: left alone")
        elif not dom["active"]:
            row["problems"] = problems or ["domain is shut off"]
            row.update(
                klass="broken",
                action="del-port",
                reason=f"stale record of shut-off domain {dom['name']}: libvirt's --may-exist add-port would reuse it",
            )
        elif dif.get("target") != iface["name"]:
            if problems:
                row.update(
                    klass="orphan",
                    action="del-port",
                    reason=f"stale duplicate: domain {dom['name']} has this interface on {dif.get('target')}",
                )
            else:
                row.update(
                    klass="healthy",
                    action="none",
                    reason=f"duplicate iface-id: domain {dom['name']} uses {dif.get('target')} (left alone)",
                )
        else:
            if dif.get("bridge") and iface["bridge"] != dif["bridge"]:
                problems.append(f"on bridge {iface['bridge']}, domain expects {dif['bridge']}")
            if not problems:
                row.update(klass="healthy", action="none", reason=f"port of running domain {dom['name']}")
            elif "netdev missing" in problems:
                row.update(
                    klass="broken",
                    action="restart-domain",
                    reason=f"tap of running domain {dom['name']} is gone: only a domain restart re-creates it",
                )
            else:
                row.update(
                    klass="broken", action="replug", reason=f"port of running domain {dom['name']} is not attached"
                )
        rows.append(row)
    # running domains whose OVS interfaces have no port at all
    for dom in domains:
        if not dom["active"]:
            continue
        for dif in dom["interfaces"]:
            if dif.get("virtualport") != "openvswitch" or not dif.get("target") or dif["target"] in seen_names:
                continue
            if bridges and dif.get("bridge") not in bridges:
                continue
            tap_ok = netdev(dif["target"]) is not None if netdev is not None else True
            rows.append(
                {
                    "name": dif["target"],
                    "bridge": dif.get("bridge"),
                    "port": None,
                    "uuid": None,
                    "type": "",
                    "ofport": None,
                    "error": None,
                    "external_ids": {},
                    "problems": ["not plugged"] + ([] if tap_ok else ["netdev missing"]),
                    "domain": _dom_summary(dom),
                    "matched_by": "domain XML",
                    "domain_bridge": dif.get("bridge"),
                    "klass": "broken",
                    "action": "add-port" if tap_ok else "restart-domain",
                    "reason": f"interface of running domain {dom['name']} has no OVS port",
                }
            )
    for row in rows:
        row["class"] = row.pop("klass")
    return rows


def _summarize(rows):
    summary = {"healthy": 0, "broken": 0, "orphan": 0, "foreign": 0}
    for row in rows:
        summary[row["class"]] = summary.get(row["class"], 0) + 1
    return summary


def _candidate_key(row):
    dom = row.get("domain") or {}
    return (
        row["name"], row.get("uuid"), row["class"], row["action"], row.get("bridge"), dom.get("uuid"), dom.get("active")
    )


def _confirm(first, second):
    """
    Rows that need an action on both passes, unchanged (same OVS row, class,
    action, bridge and domain state), and the rows skipped with why.
    """
    first_keys = {_candidate_key(r) for r in first if r["action"] != "none"}
    confirmed, skipped = [], {}
    second_keys = set()
    for row in second:
        if row["action"] == "none":
            continue
        key = _candidate_key(row)
        second_keys.add(key)
        if key in first_keys:
            confirmed.append(row)
        else:
            skipped[row["name"]] = "not stale on the first pass (may be mid-creation): left for the next run"
    for key in first_keys - second_keys:
        skipped.setdefault(key[0], "changed between the two passes: left alone")
    return confirmed, skipped


# --------------------------------------------------------------------------- commands


def _quote(value):
    return json.dumps(str(value))


def _map_settings(column, mapping):
    return [f"{column}:{_quote(k)}={_quote(v)}" for k, v in sorted(mapping.items())]


def _replug_commands(iface, dif=None, dom=None):
    """
    ovs-vsctl argument lists (after the base command) that delete the port and
    add it again with the same settings: Port tag/trunks/vlan_mode/external_ids/
    other_config, Interface type/options/external_ids/other_config/mtu_request,
    the old ofport as ofport_request when it was valid, on the bridge the
    domain's XML names. Two transactions, so ovs-vswitchd re-opens the netdev.
    """
    port = iface.get("port") or {}
    bridge = (dif or {}).get("bridge") or iface["bridge"]
    name = iface["name"]
    delete = ["--", "--if-exists", "del-port", port.get("name") or name]
    add = ["--", "add-port", bridge, name]
    if port.get("tag") is not None:
        add.append(f"tag={port['tag']}")
    if port.get("trunks"):
        add.append("trunks=" + ",".join(str(t) for t in port["trunks"]))
    if port.get("vlan_mode"):
        add.append(f"vlan_mode={port['vlan_mode']}")
    add += _map_settings("external_ids", port.get("external_ids") or {})
    add += _map_settings("other_config", port.get("other_config") or {})
    settings = []
    # libvirt plugs its taps as plain system interfaces (type ""): a stale type
    # on the old row is not carried over to a libvirt-owned port
    if iface.get("type") and not (dif and dif.get("virtualport") == "openvswitch"):
        settings.append(f"type={iface['type']}")
    ids = dict(iface.get("external_ids") or {})
    if dif:
        if dif.get("interfaceid"):
            ids["iface-id"] = dif["interfaceid"]
        if dif.get("mac"):
            ids["attached-mac"] = dif["mac"]
        if dom and "vm-uuid" not in ids:
            ids["vm-id"] = dom["uuid"]
        ids["iface-status"] = "active"
    settings += _map_settings("external_ids", ids)
    settings += _map_settings("other_config", iface.get("other_config") or {})
    settings += _map_settings("options", iface.get("options") or {})
    if iface.get("mtu_request"):
        settings.append(f"mtu_request={iface['mtu_request']}")
    if iface.get("ofport_request"):
        settings.append(f"ofport_request={iface['ofport_request']}")
    elif iface.get("ofport") and iface["ofport"] > 0:
        settings.append(f"ofport_request={iface['ofport']}")
    if settings:
        add += ["--", "set", "Interface", name] + settings
    return [delete, add]


def _add_port_command(dif, dom):
    """What libvirt itself runs to plug a domain's interface (used when a port is missing)."""
    name, ids = dif["target"], {"iface-status": "active", "vm-id": dom["uuid"]}
    if dif.get("interfaceid"):
        ids["iface-id"] = dif["interfaceid"]
    if dif.get("mac"):
        ids["attached-mac"] = dif["mac"]
    return [
        ["--", "--may-exist", "add-port", dif["bridge"], name, "--", "set", "Interface", name]
        + _map_settings("external_ids", ids)
    ]


def _delete_command(row):
    return [["--", "--if-exists", "del-port", row["bridge"], row["port"] or row["name"]]] if row["bridge"] else [
        ["--", "--if-exists", "del-port", row["port"] or row["name"]]
    ]


# --------------------------------------------------------------------------- audit


def _netdev_checker(sysfs):
    base = os.path.join(sysfs, "class", "net")

    def ifindex(name):
        try:
            with open(os.path.join(base, name, "ifindex"), encoding="ascii") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None

    return ifindex


def _collect(ovs_db, libvirt_uri, bridges, sysfs, timeout):
    interfaces = _ovs_snapshot(ovs_db, timeout)
    domains = _libvirt_domains(libvirt_uri)
    rows = _classify(
        interfaces,
        domains,
        netdev=_netdev_checker(_cfg("sysfs", sysfs)),
        bridges=_as_list(_cfg("bridges", bridges)) or None,
        prefixes=_as_list(_cfg("vm_port_prefixes")),
    )
    return rows, {i["name"]: i for i in interfaces}, domains


def audit(ovs_db=None, libvirt_uri=None, bridges=None, sysfs=None, timeout=None):
    """
    Classify every VM-facing Open vSwitch interface against libvirt's domains:
    ``healthy``, ``broken`` (a domain's port that is not usable), ``orphan``
    (no domain owns it) or ``foreign`` (non-VM port with a problem, never touched).
    Each row names the problems seen (ofport < 0, error, netdev missing, wrong
    bridge, not plugged) and the action ``repair`` would take.

    ovs_db
        ovs-vsctl ``--db`` (e.g. ``unix:/run/openvswitch/db.sock``); config ``host_net:ovs_db``
    libvirt_uri
        default ``qemu:///system``; config ``host_net:libvirt_uri``
    bridges
        only these bridges (list or comma string); default all

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_net.audit
        salt 'cmp-01' host_net.audit bridges=br-int libvirt_uri=qemu:///system
    """
    if isinstance(bridges, str):
        bridges = [b for b in bridges.split(",") if b]
    rows, _, _ = _collect(ovs_db, libvirt_uri, bridges, sysfs, timeout)
    return {
        "ports": rows,
        "summary": _summarize(rows),
        "needs_repair": sorted(r["name"] for r in rows if r["class"] in ("broken", "orphan")),
        "ovs_db": _cfg("ovs_db", ovs_db),
        "libvirt_uri": _cfg("libvirt_uri", libvirt_uri),
    }


def verify(ovs_db=None, libvirt_uri=None, bridges=None, sysfs=None, timeout=None):
    """
    Audit and fail (``result: False``) when any port is broken or orphaned: the
    last step of ``states/host/ovs_ports.sls`` and of host maintenance.

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_net.verify
    """
    report = audit(ovs_db=ovs_db, libvirt_uri=libvirt_uri, bridges=bridges, sysfs=sysfs, timeout=timeout)
    bad = [r for r in report["ports"] if r["class"] in ("broken", "orphan")]
    return {
        "result": not bad,
        "comment": "all VM ports healthy" if not bad else f"{len(bad)} port(s) broken or orphaned: "
        + ", ".join(f"{r['name']} ({r['class']}: {'; '.join(r['problems'])})" for r in bad),
        "summary": report["summary"],
        "bad": bad,
    }


# --------------------------------------------------------------------------- repair


def _restart_domain(uri, dom_uuid):
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByUUIDString(dom_uuid)
        if not dom.isPersistent():
            _fail(f"domain {dom.name()} is transient: a restart would delete it")
        if dom.isActive():
            dom.destroy()
        dom.create()
    finally:
        conn.close()


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
    apart (``host_net:confirm_delay``, default 5) so a tap that libvirt is just
    creating is never touched:

    - orphan: ``del-port`` (also stale duplicates of an iface-id now on another tap)
    - broken port of a shut-off domain: ``del-port`` (libvirt adds a fresh one when
      the domain starts instead of reusing the stale row with ``--may-exist``)
    - broken port of a running domain: ``del-port`` then ``add-port`` on the bridge
      the domain's XML names, with the same Port/Interface settings and
      external-ids (iface-id, attached-mac, vm-id/vm-uuid), the old ofport requested
    - running domain interface with no port: ``add-port`` as libvirt does
    - running domain whose tap is gone: a domain restart, only with
      ``restart_domains=True`` (``host_net:restart_domains``); reported otherwise

    Then audits until ``settle`` seconds pass or nothing is left; ``result`` is
    False when ports stay broken. ``test=True`` only reports what it would do
    (``changes`` then lists the planned actions and commands; nothing is run).

    CLI Example:

    .. code-block:: bash

        salt 'cmp-01' host_net.repair test=True
        salt 'cmp-01' host_net.repair delay=10
    """
    delay = float(_cfg("confirm_delay", delay))
    settle = float(_cfg("settle", settle))
    restart_domains = bool(_cfg("restart_domains", restart_domains))
    uri = _cfg("libvirt_uri", libvirt_uri)
    if isinstance(bridges, str):
        bridges = [b for b in bridges.split(",") if b]
    first, _, _ = _collect(ovs_db, libvirt_uri, bridges, sysfs, timeout)
    before = _summarize(first)
    if any(r["action"] != "none" for r in first) and delay > 0:
        time.sleep(delay)
    second, ifaces, domains = _collect(ovs_db, libvirt_uri, bridges, sysfs, timeout)
    confirmed, skipped = _confirm(first, second)
    dom_by_uuid = {d["uuid"]: d for d in domains}

    changes, failed = {}, {}
    base = _vsctl_base(ovs_db, timeout)
    for row in confirmed:
        dom = dom_by_uuid.get((row.get("domain") or {}).get("uuid"))
        dif = None
        if dom:
            dif = next((d for d in dom["interfaces"] if d.get("target") == row["name"]), None) or next(
                (d for d in dom["interfaces"] if d.get("interfaceid") == row["external_ids"].get("iface-id")), None
            )
        action = row["action"]
        if action == "del-port":
            commands = _delete_command(row)
        elif action == "replug":
            commands = _replug_commands(ifaces[row["name"]], dif, dom)
        elif action == "add-port":
            commands = _add_port_command(dif, dom)
        else:  # restart-domain
            commands = []
        entry = {
            "action": action,
            "class": row["class"],
            "reason": row["reason"],
            "problems": row["problems"],
            "bridge": row["bridge"],
            "domain": row["domain"],
            "commands": [" ".join(base + c) for c in commands],
        }
        if action == "restart-domain":
            if not restart_domains:
                skipped[row["name"]] = row["reason"] + " (set restart_domains=True to allow it)"
                continue
            entry["commands"] = [f"virsh -c {uri} destroy {dom['name']} && virsh -c {uri} start {dom['name']}"]
        if test:
            changes[row["name"]] = entry
            continue
        try:
            if action == "restart-domain":
                _restart_domain(uri, dom["uuid"])
            for cmd in commands:
                _run(base + cmd)
            changes[row["name"]] = entry
        except Exception as exc:  # pylint: disable=broad-except
            entry["error"] = str(exc)
            failed[row["name"]] = entry

    if test:
        # result stays True: Salt turns a falsy "result" into a failing retcode
        return {
            "result": True,
            "test": True,
            "would_change": len(changes),
            "comment": f"would change {len(changes)} port(s)" if changes else "nothing to repair",
            "changes": changes,
            "skipped": skipped,
            "before": before,
        }

    deadline = time.monotonic() + settle
    while True:
        final, _, _ = _collect(ovs_db, libvirt_uri, bridges, sysfs, timeout)
        remaining = [r for r in final if r["class"] in ("broken", "orphan")]
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    after_rows = {r["name"]: r for r in final}
    for name, entry in changes.items():
        row = after_rows.get(name)
        entry["after"] = (
            {"class": row["class"], "ofport": row["ofport"], "error": row["error"], "bridge": row["bridge"]}
            if row
            else "deleted"
        )
    ok = not remaining and not failed
    comment = f"{len(changes)} port(s) repaired"
    if remaining:
        comment += "; still broken: " + ", ".join(f"{r['name']} ({'; '.join(r['problems'])})" for r in remaining)
    if failed:
        comment += "; failed: " + ", ".join(failed)
    if skipped:
        comment += "; skipped: " + "; ".join(f"{name}: {why}" for name, why in sorted(skipped.items()))
    return {
        "result": ok,
        "test": False,
        "comment": comment,
        "changes": changes,
        "failed": failed,
        "skipped": skipped,
        "remaining": [
            {"name": r["name"], "class": r["class"], "problems": r["problems"], "reason": r["reason"]}
            for r in remaining
        ],
        "before": before,
        "after": _summarize(final),
    }


# --------------------------------------------------------------------------- boot order


def _parse_unit_deps(text, deps=None):
    """After=/Before=/Wants=/Requires=/BindsTo= of one unit file or drop-in ([Unit] only)."""
    deps = deps if deps is not None else {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Unit" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key not in ("After", "Before", "Wants", "Requires", "BindsTo", "Requisite"):
            continue
        if not value:  # an empty assignment resets the list
            deps[key] = []
        else:
            deps.setdefault(key, []).extend(value.split())
    return deps


def _parse_ovs_opts(text, var):
    """The last active ``VAR=...`` assignment of a shell-style defaults file, unquoted, or None."""
    value = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if line.startswith(f"{var}="):
            value = line[len(var) + 1 :].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
    return value


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _unit_order_status(root, unit, ovs_units):
    """Whether ``unit`` (under ``root``) starts after and wants/requires the OVS units."""
    unit_file = next(
        (root + d + "/" + unit for d in UNIT_DIRS if os.path.exists(root + d + "/" + unit)),
        None,
    )
    deps = _parse_unit_deps(_read(unit_file) or "") if unit_file else {}
    dropins = []
    for d in DROPIN_DIRS:
        ddir = f"{root}{d}/{unit}.d"
        if os.path.isdir(ddir):
            for name in sorted(os.listdir(ddir)):
                if name.endswith(".conf"):
                    dropins.append(f"{ddir}/{name}")
    for path in sorted(dropins, key=os.path.basename):
        _parse_unit_deps(_read(path) or "", deps)
    after = set(deps.get("After", []))
    pulls = set(deps.get("Wants", [])) | set(deps.get("Requires", [])) | set(deps.get("BindsTo", []))
    missing_after = [u for u in ovs_units if u not in after]
    ordered = not missing_after and bool(pulls & set(ovs_units))
    return {
        "installed": unit_file is not None,
        "dropins": dropins,
        "after": sorted(after & set(ovs_units)),
        "wants_or_requires": sorted(pulls & set(ovs_units)),
        "missing_after": missing_after,
        "ordered": ordered,
    }


def _systemd_live(unit, ovs_units):
    proc = subprocess.run(
        ["systemctl", "show", "-p", "After", "-p", "Wants", "-p", "Requires", "-p", "LoadState", unit],
        capture_output=True,
        text=True,
        check=False,
    )
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    after = set(props.get("After", "").split())
    pulls = set(props.get("Wants", "").split()) | set(props.get("Requires", "").split())
    return {
        "load_state": props.get("LoadState"),
        "ordered": all(u in after for u in ovs_units) and bool(pulls & set(ovs_units)),
    }


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

    CLI Example:

    .. code-block:: bash

        salt 'cmp-*' host_net.check_order
        salt-call host_net.check_order root=/mnt/sysimage os_family=RedHat
    """
    root = (root or "").rstrip("/")
    if os_family is None:
        try:
            os_family = __grains__.get("os_family", "Debian")  # pylint: disable=undefined-variable
        except (NameError, AttributeError):  # not loaded by Salt
            os_family = "Debian"
    family = OS_FAMILY_UNITS.get(os_family, OS_FAMILY_UNITS["Debian"])
    units = _as_list(units) or family["libvirt_units"]
    ovs_units = _as_list(ovs_units) or family["ovs_units"]
    report = {"units": {}, "os_family": os_family, "root": root or "/"}
    considered = []
    for unit in units:
        status = _unit_order_status(root, unit, ovs_units)
        report["units"][unit] = status
        if status["installed"] or status["dropins"]:
            considered.append(unit)
    defaults_file = root + family["ovs_defaults_file"]
    text = _read(defaults_file)
    value = _parse_ovs_opts(text or "", family["ovs_opts_var"])
    transient = bool(value) and TRANSIENT_FLAG in value.split()
    report["transient_ports"] = {
        "file": defaults_file,
        "exists": text is not None,
        "variable": family["ovs_opts_var"],
        "value": value,
        "enabled": transient,
    }
    live = None
    if systemd is None:
        systemd = not root and os.path.isdir("/run/systemd/system")
    if systemd:
        live = {unit: _systemd_live(unit, ovs_units) for unit in considered}
    report["systemd"] = live
    problems = [f"{u}: not ordered after {', '.join(report['units'][u]['missing_after']) or 'wanted OVS units'}"
                for u in considered if not report["units"][u]["ordered"]]
    if not any(u in considered for u in ("libvirtd.service", "virtqemud.service")):
        problems.append("neither libvirtd.service nor virtqemud.service is installed or has a drop-in")
    if not transient:
        problems.append(f"{TRANSIENT_FLAG} not in {family['ovs_opts_var']} of {defaults_file}")
    if live:
        problems += [f"{u}: systemd's loaded unit is not ordered" for u, s in live.items()
                     if s["load_state"] == "loaded" and not s["ordered"]]
    report["ok"] = not problems
    report["problems"] = problems
    return report
