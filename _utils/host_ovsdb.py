"""
Open vSwitch's database as plain data, and the ``ovs-vsctl`` commands that change it.

``ovs-vsctl --format=json --data=json list <Table>`` rows are decoded (:func:`parse_ovs_list`) and
joined into one row per interface with its port and bridge (:func:`build_snapshot`). The command
builders return argument lists to put after :func:`vsctl_base`; nothing here runs a process except
:func:`run`.
"""

import json
import logging
import subprocess

from host_errors import HostError

log = logging.getLogger(__name__)

BRIDGE_COLUMNS = "_uuid,name,ports,datapath_type"
PORT_LIST_COLUMNS = "_uuid,name,interfaces,tag,trunks,vlan_mode,external_ids,other_config"
IFACE_COLUMNS = (
    "_uuid,name,type,ofport,ofport_request,error,external_ids,other_config,options,mtu_request,link_state,admin_state,"
    "ifindex"
)


def ovs_value(value):
    """Decode one OVSDB JSON datum (``--data=json``) into plain Python."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, data = value
        if kind in ("uuid", "named-uuid"):
            return data
        if kind == "set":
            return [ovs_value(item) for item in data]
        if kind == "map":
            return {ovs_value(k): ovs_value(v) for k, v in data}
    return value


def as_list(value):
    """OVSDB writes a one-element set as the element itself and an empty one as []."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def optional(value):
    """An optional scalar column ([] when unset) as the value or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def parse_ovs_list(text):
    """Rows of one ``ovs-vsctl --format=json --data=json list <Table>`` output."""
    doc = json.loads(text) if isinstance(text, str) else text
    headings = doc["headings"]
    return [dict(zip(headings, (ovs_value(cell) for cell in row))) for row in doc["data"]]


def _port_rows(bridges, ports):
    """Interface uuid -> its port (name, uuid, members, bridge and the Port settings)."""
    port_bridge = {}
    for br in bridges:
        for port_uuid in as_list(br.get("ports")):
            port_bridge[port_uuid] = br["name"]
    iface_port = {}
    for port in ports:
        members = as_list(port.get("interfaces"))
        for iface_uuid in members:
            iface_port[iface_uuid] = {
                "name": port["name"],
                "uuid": port["_uuid"],
                "members": len(members),
                "bridge": port_bridge.get(port["_uuid"]),
                "tag": optional(port.get("tag")),
                "trunks": as_list(port.get("trunks")),
                "vlan_mode": optional(port.get("vlan_mode")),
                "external_ids": port.get("external_ids") or {},
                "other_config": port.get("other_config") or {},
            }
    return iface_port


def build_snapshot(bridges, ports, interfaces):
    """
    Join Bridge, Port and Interface rows (as :func:`parse_ovs_list` returns them) into a
    list of interfaces, each with its port and bridge.
    """
    iface_port = _port_rows(bridges, ports)
    result = []
    for iface in interfaces:
        port = iface_port.get(iface["_uuid"])
        result.append(
            {
                "name": iface["name"],
                "uuid": iface["_uuid"],
                "type": iface.get("type") or "",
                "ofport": optional(iface.get("ofport")),
                "ofport_request": optional(iface.get("ofport_request")),
                "error": optional(iface.get("error")) or None,
                "external_ids": iface.get("external_ids") or {},
                "other_config": iface.get("other_config") or {},
                "options": iface.get("options") or {},
                "mtu_request": optional(iface.get("mtu_request")),
                "link_state": optional(iface.get("link_state")),
                "ifindex": optional(iface.get("ifindex")),
                "port": port,
                "bridge": port["bridge"] if port else None,
            }
        )
    return result


def vsctl_base(vsctl="ovs-vsctl", db=None, timeout=10):
    """``ovs-vsctl [--db=...] --timeout=N``: the start of every command."""
    cmd = [vsctl]
    if db:
        cmd.append(f"--db={db}")
    cmd.append(f"--timeout={int(timeout)}")
    return cmd


def run(cmd):
    """stdout of ``cmd``; :class:`HostError` with its stderr when it fails."""
    log.debug("host_ovsdb: running %s", cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def snapshot(base, run_cmd=run):
    """Every interface of the running OVSDB (``base`` from :func:`vsctl_base`), joined with its port and bridge."""
    out = run_cmd(
        base
        + ["--format=json", "--data=json"]
        + ["--", f"--columns={BRIDGE_COLUMNS}", "list", "Bridge"]
        + ["--", f"--columns={PORT_LIST_COLUMNS}", "list", "Port"]
        + ["--", f"--columns={IFACE_COLUMNS}", "list", "Interface"]
    )
    docs = [line for line in out.splitlines() if line.strip()]
    if len(docs) != 3:
        raise HostError(f"unexpected ovs-vsctl output ({len(docs)} tables): {out[:200]}")
    return build_snapshot(*(parse_ovs_list(doc) for doc in docs))


# --------------------------------------------------------------------------- commands


def _quote(value):
    return json.dumps(str(value))


def map_settings(column, mapping):
    """``column:"key"="value"`` arguments for ``ovs-vsctl set``/``add-port``, sorted by key."""
    return [f"{column}:{_quote(k)}={_quote(v)}" for k, v in sorted(mapping.items())]


def _port_settings(port):
    settings = []
    if port.get("tag") is not None:
        settings.append(f"tag={port['tag']}")
    if port.get("trunks"):
        settings.append("trunks=" + ",".join(str(t) for t in port["trunks"]))
    if port.get("vlan_mode"):
        settings.append(f"vlan_mode={port['vlan_mode']}")
    settings += map_settings("external_ids", port.get("external_ids") or {})
    settings += map_settings("other_config", port.get("other_config") or {})
    return settings


def _iface_settings(iface, dif, dom):
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
    settings += map_settings("external_ids", ids)
    settings += map_settings("other_config", iface.get("other_config") or {})
    settings += map_settings("options", iface.get("options") or {})
    if iface.get("mtu_request"):
        settings.append(f"mtu_request={iface['mtu_request']}")
    if iface.get("ofport_request"):
        settings.append(f"ofport_request={iface['ofport_request']}")
    elif iface.get("ofport") and iface["ofport"] > 0:
        settings.append(f"ofport_request={iface['ofport']}")
    return settings


def replug_commands(iface, dif=None, dom=None):
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
    add = ["--", "add-port", bridge, name] + _port_settings(port)
    settings = _iface_settings(iface, dif, dom)
    if settings:
        add += ["--", "set", "Interface", name] + settings
    return [delete, add]


def add_port_command(dif, dom):
    """What libvirt itself runs to plug a domain's interface (used when a port is missing)."""
    name, ids = dif["target"], {"iface-status": "active", "vm-id": dom["uuid"]}
    if dif.get("interfaceid"):
        ids["iface-id"] = dif["interfaceid"]
    if dif.get("mac"):
        ids["attached-mac"] = dif["mac"]
    return [
        ["--", "--may-exist", "add-port", dif["bridge"], name, "--", "set", "Interface", name]
        + map_settings("external_ids", ids)
    ]


def delete_command(row):
    """``del-port`` of a classified row (on its bridge when known)."""
    if row["bridge"]:
        return [["--", "--if-exists", "del-port", row["bridge"], row["port"] or row["name"]]]
    return [["--", "--if-exists", "del-port", row["port"] or row["name"]]]
