"""
Open vSwitch interfaces classified against libvirt's domains (issue 4):

- ``healthy``: valid ofport, no error, netdev present, owned by a running domain
  on the bridge its XML names (or not a VM port at all);
- ``broken``: the port of a libvirt domain that is not usable (ofport < 0, error,
  netdev gone, wrong bridge, the domain is shut off, or a running domain's
  OVS-virtualport interface has no port at all);
- ``orphan``: a VM port (libvirt/Nova external-ids or a tap/vnet name) no domain
  owns, or a stale duplicate of an iface-id that a running domain now has on
  another tap;
- ``foreign``: a non-VM interface (uplink, tunnel, ...) with a problem; reported,
  never touched.

Each row carries the ``action`` a repair would take. Input: interfaces as
``host_ovsdb.build_snapshot`` returns them, domains as ``host_libvirt.parse_domain_xml``.
"""

import os

# Interface types whose netdev is a kernel device we can look up in sysfs.
KERNEL_TYPES = ("", "system", "tap")
# External-ids libvirt (vm-id) and Nova/os-vif (vm-uuid) put on a VM's interface.
VM_EXTERNAL_IDS = ("iface-id", "vm-uuid", "vm-id", "attached-mac")
VM_PORT_PREFIXES = ("tap", "vnet")


def is_vm_port(iface, prefixes):
    ids = iface.get("external_ids") or {}
    if any(key in ids for key in VM_EXTERNAL_IDS):
        return True
    return any(iface["name"].startswith(p) for p in prefixes or ())


def owner_index(domains):
    """(by tap name of running domains, by iface-id, by (domain uuid, mac))."""
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


def find_owner(iface, index):
    """``((domain, domain interface), matched_by)`` or ``(None, None)``."""
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


def netdev_lookup(netdev):
    """``netdev`` as a callable name -> ifindex (None: no such device), from a callable, dict or None."""
    if netdev is None:
        return None
    if callable(netdev):
        return netdev
    return netdev.get


def netdev_checker(sysfs):
    """name -> ifindex of the kernel device under ``<sysfs>/class/net`` (None: no such device)."""
    base = os.path.join(sysfs, "class", "net")

    def ifindex(name):
        try:
            with open(os.path.join(base, name, "ifindex"), encoding="ascii") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None

    return ifindex


def problems_of(iface, netdev):
    """What is wrong with one OVS interface (empty: nothing)."""
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


def _unowned(row, vm_port, problems):
    if not vm_port:
        row.update(klass="foreign" if problems else "healthy", action="none")
        row["reason"] = "not a VM port" + (": left alone" if problems else "")
    elif problems:
        row.update(klass="orphan", action="del-port", reason="no libvirt domain owns this port")
    else:
        row.update(klass="healthy", action="none", reason="VM port without a libvirt domain (left alone)")


def _running_owner(row, iface, dom, dif, problems):
    if dif.get("target") != iface["name"]:
        if problems:
            row.update(klass="orphan", action="del-port",
                       reason=f"stale duplicate: domain {dom['name']} has this interface on {dif.get('target')}")
        else:
            row.update(klass="healthy", action="none",
                       reason=f"duplicate iface-id: domain {dom['name']} uses {dif.get('target')} (left alone)")
        return
    if dif.get("bridge") and iface["bridge"] != dif["bridge"]:
        problems.append(f"on bridge {iface['bridge']}, domain expects {dif['bridge']}")
    if not problems:
        row.update(klass="healthy", action="none", reason=f"port of running domain {dom['name']}")
    elif "netdev missing" in problems:
        row.update(klass="broken", action="restart-domain",
                   reason=f"tap of running domain {dom['name']} is gone: only a domain restart re-creates it")
    else:
        row.update(klass="broken", action="replug", reason=f"port of running domain {dom['name']} is not attached")


def _owned(row, iface, owner, matched_by, problems):
    dom, dif = owner
    row["domain"] = _dom_summary(dom)
    row["matched_by"] = matched_by
    row["domain_bridge"] = dif.get("bridge")
    if (iface.get("port") or {}).get("members", 1) > 1:
        row.update(klass="foreign", action="none", reason="bond port: left alone")
    elif not dom["active"]:
        row["problems"] = problems or ["domain is shut off"]
        row.update(klass="broken", action="del-port",
                   reason=f"stale record of shut-off domain {dom['name']}: libvirt's --may-exist add-port would reuse it")
    else:
        _running_owner(row, iface, dom, dif, problems)


def _iface_row(iface, index, netdev, prefixes):
    problems = problems_of(iface, netdev)
    row = {
        "name": iface["name"],
        "bridge": iface["bridge"],
        "port": (iface.get("port") or {}).get("name"),
        "uuid": iface["uuid"],
        "type": iface["type"],
        "ofport": iface["ofport"],
        "error": iface["error"],
        "external_ids": dict(iface["external_ids"]),
        "problems": problems,
        "domain": None,
        "matched_by": None,
    }
    vm_port = is_vm_port(iface, prefixes) and iface["type"] in KERNEL_TYPES
    owner, matched_by = find_owner(iface, index) if vm_port or iface["name"] in index[0] else (None, None)
    if owner is None:
        _unowned(row, vm_port, problems)
    else:
        _owned(row, iface, owner, matched_by, problems)
    return row


def _unplugged_rows(domains, seen_names, netdev, bridges):
    """One ``broken`` row per running domain's OVS-virtualport interface that has no port at all."""
    rows = []
    for dom in domains:
        if not dom["active"]:
            continue
        for dif in dom["interfaces"]:
            if dif.get("virtualport") != "openvswitch" or not dif.get("target") or dif["target"] in seen_names:
                continue
            if bridges and dif.get("bridge") not in bridges:
                continue
            tap_ok = netdev(dif["target"]) is not None if netdev is not None else True
            rows.append({
                "name": dif["target"], "bridge": dif.get("bridge"), "port": None, "uuid": None, "type": "",
                "ofport": None, "error": None, "external_ids": {},
                "problems": ["not plugged"] + ([] if tap_ok else ["netdev missing"]),
                "domain": _dom_summary(dom), "matched_by": "domain XML", "domain_bridge": dif.get("bridge"),
                "klass": "broken", "action": "add-port" if tap_ok else "restart-domain",
                "reason": f"interface of running domain {dom['name']} has no OVS port",
            })
    return rows


def classify(interfaces, domains, netdev=None, bridges=None, prefixes=None):
    """
    Classify OVS interfaces against libvirt domains. ``netdev`` maps a kernel
    device name to its ifindex (callable or dict; a missing name means no such
    device; None: do not check). Returns one row per OVS interface on the
    watched bridges (non-VM ports are ``healthy`` or ``foreign``, never acted
    on) plus one ``broken`` row per running domain's OVS-virtualport interface
    that has no port at all.
    """
    prefixes = VM_PORT_PREFIXES if prefixes is None else prefixes
    netdev = netdev_lookup(netdev)
    index = owner_index(domains)
    seen_names = {iface["name"] for iface in interfaces}
    rows = [_iface_row(iface, index, netdev, prefixes) for iface in interfaces
            if not bridges or iface["bridge"] in bridges]
    rows += _unplugged_rows(domains, seen_names, netdev, bridges)
    for row in rows:
        row["class"] = row.pop("klass")
    return rows


def summarize(rows):
    summary = {"healthy": 0, "broken": 0, "orphan": 0, "foreign": 0}
    for row in rows:
        summary[row["class"]] = summary.get(row["class"], 0) + 1
    return summary


def bad(rows):
    """The broken and orphaned rows."""
    return [r for r in rows if r["class"] in ("broken", "orphan")]


def _candidate_key(row):
    dom = row.get("domain") or {}
    return (
        row["name"], row.get("uuid"), row["class"], row["action"], row.get("bridge"), dom.get("uuid"), dom.get("active")
    )


def confirm(first, second):
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
