"""
Per-host capacity from placement, and what fits where. Pure: no cloud, no Salt.

Capacity is never summed over hosts: a desktop lands on ONE host, so ten hosts
with 3 GB free each hold no 4 GB desktop. Every resource class of a request must
fit on the same host, within its free capacity and its ``max_unit`` (placement's
largest single allocation).

A host is a plain dict::

    {"name": str, "free": {"VCPU": float, "MEMORY_MB": float, "DISK_GB": float},
     "max_unit": {...same classes...}, "disabled": bool}

A request is ``{"VCPU": n, "MEMORY_MB": m, "DISK_GB": d}`` (plus an ``"id"`` for
:func:`place`); keys that are not resource-class names (upper case) are ignored,
a class needed at 0 does not constrain.
"""

import math
import re

RC_RE = re.compile(r"[A-Z][A-Z0-9_]*")
DISABLED_TRAIT = "COMPUTE_STATUS_DISABLED"  # set by nova-compute on its provider when the service is disabled
_EPS = 1e-9


def flavor_request(flavor):
    """A Nova flavor ({ram, vcpus, disk}) as a placement request."""
    return {"VCPU": flavor.get("vcpus", 0), "MEMORY_MB": flavor.get("ram", 0), "DISK_GB": flavor.get("disk", 0)}


def hosts_from_placement(providers):
    """
    Hosts from placement's per-provider data: ``providers`` is a list of
    ``{"name", "inventories": {rc: {total, reserved, allocation_ratio, max_unit}}, "usages": {rc: used},
    "disabled": bool}`` (or ``"traits"`` holding ``COMPUTE_STATUS_DISABLED``).
    free = (total − reserved) × allocation_ratio − used, never below 0.
    """
    hosts = []
    for rp in providers:
        free, max_unit = {}, {}
        usages = rp.get("usages") or {}
        for rc, inv in (rp.get("inventories") or {}).items():
            total = float(inv.get("total", 0))
            cap = (total - float(inv.get("reserved", 0))) * float(inv.get("allocation_ratio", 1.0))
            free[rc] = max(0.0, cap - float(usages.get(rc, 0)))
            max_unit[rc] = float(inv.get("max_unit", total))
        disabled = bool(rp.get("disabled")) or DISABLED_TRAIT in (rp.get("traits") or ())
        hosts.append({"name": rp.get("name") or rp.get("uuid", "?"), "free": free, "max_unit": max_unit, "disabled": disabled})
    return hosts


def _needs(request):
    out = {}
    for rc, amount in request.items():
        if not isinstance(rc, str) or not RC_RE.fullmatch(rc):
            continue
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"request {request.get('id', '')!s}: {rc} must be a number >= 0, got {amount!r}")
        if amount:
            out[rc] = amount
    return out


def fits(host, request):
    """True when every class of ``request`` fits ``host``'s free capacity and its max_unit (a class the host
    has no inventory of does not fit). Capacity only: callers skip disabled hosts."""
    free, max_unit = host.get("free") or {}, host.get("max_unit") or {}
    for rc, need in _needs(request).items():
        if need > free.get(rc, 0) + _EPS or need > max_unit.get(rc, math.inf) + _EPS:
            return False
    return True


def _count_on(host, needs):
    free, max_unit = host.get("free") or {}, host.get("max_unit") or {}
    counts = []
    for rc, need in needs.items():
        if need > max_unit.get(rc, math.inf) + _EPS:
            return 0
        counts.append(math.floor(free.get(rc, 0) / need + _EPS))
    return max(0, min(counts)) if counts else 0


def how_many(hosts, request):
    """How many desktops of this size fit: per enabled host the floor of the minimum over classes, summed."""
    needs = _needs(request)
    return sum(_count_on(h, needs) for h in hosts if not h.get("disabled"))


def take(hosts, request, count):
    """Put up to ``count`` desktops of ``request`` on the enabled ``hosts`` (first fit, in order), consuming
    their free capacity in place. Returns how many found a host."""
    needs, done = _needs(request), 0
    for host in hosts:
        if host.get("disabled"):
            continue
        while done < count and fits(host, needs):
            for rc, need in needs.items():
                host["free"][rc] = host["free"].get(rc, 0) - need
            done += 1
        if done == count:
            break
    return done


def _size_key(request):
    needs = _needs(request)
    return (needs.get("MEMORY_MB", 0), needs.get("VCPU", 0), needs.get("DISK_GB", 0), sorted(needs.items()))


def place(hosts, requests, apart=None):
    """
    First-fit-decreasing placement of ``requests`` (each with an ``"id"``) on the enabled ``hosts``, consuming
    capacity (the inputs are not changed). Largest first (RAM, then vCPU, then disk); hosts in the given order.

    Anti-affinity: a request with a ``"group"`` never lands on a host in ``apart[group]`` (hosts already holding
    a member of that server group) nor beside another request of the same group placed here.

    Returns ``{"placed": {id: host name}, "unplaced": [ids], "shortfall": {rc: amount}, "free": {host: {rc: free}},
    "blocked": {id: group}}`` where ``shortfall`` sums what the unplaced requests need per class (what must be
    found elsewhere; blocked requests not counted), ``blocked`` (also in ``unplaced``) names the requests that would fit on capacity alone but only on hosts their
    group rules out, and ``free`` is what is left on each enabled host.
    """
    pool = [
        {"name": h["name"], "free": dict(h.get("free") or {}), "max_unit": dict(h.get("max_unit") or {})}
        for h in hosts
        if not h.get("disabled")
    ]
    taken_by = {g: set(names) for g, names in (apart or {}).items()}
    placed, unplaced, shortfall, blocked = {}, [], {}, {}
    for request in sorted(requests, key=_size_key, reverse=True):
        needs, group = _needs(request), request.get("group")
        ruled_out = taken_by.get(group, set()) if group is not None else set()
        host = next((h for h in pool if h["name"] not in ruled_out and fits(h, needs)), None)
        if host is None:
            unplaced.append(request["id"])
            if group is not None and any(fits(h, needs) for h in pool):
                blocked[request["id"]] = group  # room enough; the group's rule is what refuses it
                continue
            for rc, need in needs.items():
                shortfall[rc] = shortfall.get(rc, 0) + need
            continue
        for rc, need in needs.items():
            host["free"][rc] -= need
        placed[request["id"]] = host["name"]
        if group is not None:
            taken_by.setdefault(group, set()).add(host["name"])
    return {"placed": placed, "unplaced": unplaced, "shortfall": shortfall, "blocked": blocked,
            "free": {h["name"]: h["free"] for h in pool}}
