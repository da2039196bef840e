"""
Repair of the Open vSwitch ports ``host_port_classes`` finds broken or orphaned (issue 4).

Only rows seen stale on two audits ``delay`` seconds apart are touched (never a tap libvirt is just
creating); then the host is audited until nothing is left or ``settle`` seconds pass. The host is
passed in: ``collect()`` -> (rows, interfaces by name, domains), ``run(argv)``, ``restart(uuid)``,
plus ``sleep`` and ``clock``, so the whole flow runs in unit tests without OVS or libvirt.
"""

import time

import host_ovsdb
import host_port_classes as classes


def _domain_interface(row, dom):
    if not dom:
        return None
    by_tap = next((d for d in dom["interfaces"] if d.get("target") == row["name"]), None)
    return by_tap or next(
        (d for d in dom["interfaces"] if d.get("interfaceid") == row["external_ids"].get("iface-id")), None
    )


def _commands(row, iface, dif, dom):
    action = row["action"]
    if action == "del-port":
        return host_ovsdb.delete_command(row)
    if action == "replug":
        return host_ovsdb.replug_commands(iface, dif, dom)
    if action == "add-port":
        return host_ovsdb.add_port_command(dif, dom)
    return []  # restart-domain


def plan(confirmed, ifaces, domains, base, uri, restart_domains):
    """``(entries by port name, skipped by port name)``: what repair does for each confirmed row."""
    dom_by_uuid = {d["uuid"]: d for d in domains}
    entries, skipped = {}, {}
    for row in confirmed:
        dom = dom_by_uuid.get((row.get("domain") or {}).get("uuid"))
        commands = _commands(row, ifaces.get(row["name"]), _domain_interface(row, dom), dom)
        entry = {
            "action": row["action"], "class": row["class"], "reason": row["reason"], "problems": row["problems"],
            "bridge": row["bridge"], "domain": row["domain"], "commands": [" ".join(base + c) for c in commands],
            "_argv": [base + c for c in commands], "_uuid": dom["uuid"] if dom else None,
        }
        if row["action"] == "restart-domain":
            if not restart_domains:
                skipped[row["name"]] = row["reason"] + " (set restart_domains=True to allow it)"
                continue
            entry["commands"] = [f"virsh -c {uri} destroy {dom['name']} && virsh -c {uri} start {dom['name']}"]
        entries[row["name"]] = entry
    return entries, skipped


def execute(entries, run, restart):
    """Run each entry's commands; ``(changed, failed)`` by port name (a failure never stops the others)."""
    changes, failed = {}, {}
    for name, entry in entries.items():
        argv, uuid = entry.pop("_argv"), entry.pop("_uuid")
        try:
            if entry["action"] == "restart-domain":
                restart(uuid)
            for cmd in argv:
                run(cmd)
            changes[name] = entry
        except Exception as exc:  # pylint: disable=broad-except
            entry["error"] = str(exc)
            failed[name] = entry
    return changes, failed


def _settle(collect, settle, sleep, clock):
    deadline = clock() + settle
    while True:
        final, _, _ = collect()
        remaining = classes.bad(final)
        if not remaining or clock() >= deadline:
            return final, remaining
        sleep(0.5)


def _comment(changes, remaining, failed, skipped):
    comment = f"{len(changes)} port(s) repaired"
    if remaining:
        comment += "; still broken: " + ", ".join(f"{r['name']} ({'; '.join(r['problems'])})" for r in remaining)
    if failed:
        comment += "; failed: " + ", ".join(failed)
    if skipped:
        comment += "; skipped: " + "; ".join(f"{name}: {why}" for name, why in sorted(skipped.items()))
    return comment


def _dry_run(entries, skipped, before):
    for entry in entries.values():
        entry.pop("_argv"), entry.pop("_uuid")
    # result stays True: Salt turns a falsy "result" into a failing retcode
    return {
        "result": True, "test": True, "would_change": len(entries),
        "comment": f"would change {len(entries)} port(s)" if entries else "nothing to repair",
        "changes": entries, "skipped": skipped, "before": before,
    }


def repair(collect, run, restart, base, uri, delay=5, settle=10, restart_domains=False, test=False,
           sleep=time.sleep, clock=time.monotonic):
    """Confirm, act, settle and report (see ``host_ovs_ports.repair`` for the actions)."""
    first, _, _ = collect()
    before = classes.summarize(first)
    if any(r["action"] != "none" for r in first) and delay > 0:
        sleep(delay)
    second, ifaces, domains = collect()
    confirmed, skipped = classes.confirm(first, second)
    entries, more_skipped = plan(confirmed, ifaces, domains, base, uri, restart_domains)
    skipped.update(more_skipped)
    if test:
        return _dry_run(entries, skipped, before)
    changes, failed = execute(entries, run, restart)
    final, remaining = _settle(collect, settle, sleep, clock)
    after_rows = {r["name"]: r for r in final}
    for name, entry in changes.items():
        row = after_rows.get(name)
        entry["after"] = ({"class": row["class"], "ofport": row["ofport"], "error": row["error"],
                           "bridge": row["bridge"]} if row else "deleted")
    return {
        "result": not remaining and not failed, "test": False,
        "comment": _comment(changes, remaining, failed, skipped),
        "changes": changes, "failed": failed, "skipped": skipped,
        "remaining": [{"name": r["name"], "class": r["class"], "problems": r["problems"], "reason": r["reason"]}
                      for r in remaining],
        "before": before, "after": classes.summarize(final),
    }
