"""
Rolling host maintenance, the plan: pure functions from (request, placement,
server listing, clock) to batches of hosts, the ordered steps per host, the
capacity pre-check and the notification times. No cloud, no Salt, no store:
``_runners/maintenance.py`` gathers the inputs, ``maintenance_roll`` carries
the plan out and ``maintenance_journal`` records every step.

A host is a nova-compute host name (as Nova's ``services()`` and a server's
``OS-EXT-SRV-ATTR:host`` spell it). A desktop is a server on a host; a pool
spare is a desktop of a pool that nobody took (``_utils/pool_plan.py`` metadata).
"""

import datetime
import re

import host_capacity

# Per host, in this order. "migrate" also tells each user before their desktop moves.
STEPS = (
    "precheck",  # the host's minion answers; the rest of the fleet can take its desktops
    "disable",  # nova-compute disabled with "deskfleet-maintenance: <reason>"
    "drain",  # pool spares deleted (the keeper refills them on other hosts)
    "migrate",  # taken desktops: notice to the user, live migration one at a time
    "stop",  # guests, then libvirt, then Open vSwitch
    "reboot",
    "wait_minion",  # the minion answers again after a new boot
    "start",  # Open vSwitch, then libvirt
    "verify",  # host.ovs_ports audit/repair/verify, dnsmasq audit, commit ratio + KSM
    "enable",  # nova-compute enabled, reason cleared
)
REASON_PREFIX = "deskfleet-maintenance: "
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEADLINE_RE = re.compile(r"\+(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# Lead times (seconds before the deadline) at which a user still on the host is told again.
NOTIFY_LEADS = (3600, 900, 300)
DEFAULTS = {
    "batch": 1,
    "max_failures": 0,  # hosts that may fail before the roll stops (0: stop at the first)
    "deadline": "+2h",
    "force": False,
    "migration_timeout": 900,  # seconds per live migration, then it is aborted
    "minion_timeout": 900,  # seconds for a host to answer again after its reboot
    # wait-for-logoff: pool desktops in use wait for their user to log off (then they are recycled like
    # spares) until this many seconds before the deadline, then move; None: move at once
    "wait_logoff": None,
    "poll": 2.0,
}
MAX_REASON = 200
MAX_HOSTS = 5000


class RequestError(ValueError):
    """The maintenance request is malformed; the message names the field."""


# ---- request ---------------------------------------------------------------------


def parse_deadline(spec, now):
    """
    ``"+2h"``, ``"+90m"``, ``"+1h30m"``, ``"+1d"`` (from ``now``) or an ISO 8601
    time (naive means UTC). Returns an aware datetime after ``now``.
    """
    if isinstance(spec, datetime.datetime):
        when = spec
    elif isinstance(spec, str) and spec.startswith("+"):
        match = DEADLINE_RE.fullmatch(spec.strip())
        if not match or not any(match.groups()):
            raise RequestError(f"deadline {spec!r}: use +<n>d<n>h<n>m<n>s (e.g. +2h, +90m) or an ISO time")
        d, h, m, s = (int(g or 0) for g in match.groups())
        when = now + datetime.timedelta(days=d, hours=h, minutes=m, seconds=s)
    elif isinstance(spec, str):
        try:
            when = datetime.datetime.fromisoformat(spec.strip())
        except ValueError as exc:
            raise RequestError(f"deadline {spec!r}: not +<duration> nor an ISO 8601 time") from exc
    else:
        raise RequestError(f"deadline {spec!r}: must be a string such as +2h or 2026-12-01T04:00Z")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    if when <= now:
        raise RequestError(f"deadline {when.isoformat()} is not in the future (now {now.isoformat()})")
    return when


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def validate_request(request, now):
    """
    Check and normalise a maintenance request (the orchestration's pillar or the
    runner's arguments): ``hosts`` (list, required), ``reason`` (required),
    ``batch``, ``max_failures``, ``deadline``, ``force``, ``migration_timeout``,
    ``minion_timeout``, ``wait_logoff``. Raises :class:`RequestError` naming the field.
    """
    if not isinstance(request, dict):
        raise RequestError("the request must be a mapping")
    unknown = set(request) - set(DEFAULTS) - {"hosts", "reason"}
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    out = dict(DEFAULTS, **request)
    hosts = out.get("hosts")
    if isinstance(hosts, str):
        hosts = [h.strip() for h in hosts.split(",") if h.strip()]
    if not isinstance(hosts, list) or not hosts or len(hosts) > MAX_HOSTS:
        raise RequestError(f"hosts must be a non-empty list of host names (at most {MAX_HOSTS})")
    for i, host in enumerate(hosts):
        if not isinstance(host, str) or not HOST_RE.fullmatch(host):
            raise RequestError(f"hosts[{i}]: {str(host)[:70]!r} is not a host name")
    if len(set(hosts)) != len(hosts):
        raise RequestError("hosts: a host is listed twice")
    reason = out.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise RequestError(f"reason is required: one line of at most {MAX_REASON} characters")
    if any(ord(c) < 32 for c in reason):
        raise RequestError("reason must be one line of printable text")
    if not isinstance(out["force"], bool):
        raise RequestError(f"force must be true or false, got {out['force']!r}")
    if isinstance(out["poll"], bool) or not isinstance(out["poll"], (int, float)) or not 0 < out["poll"] <= 60:
        raise RequestError(f"poll must be seconds in (0, 60], got {out['poll']!r}")
    wait = out["wait_logoff"]
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int) or wait < 0):
        raise RequestError(f"wait_logoff must be seconds before the deadline (an integer >= 0) or null, got {wait!r}")
    return {
        "wait_logoff": wait,
        "hosts": list(hosts),
        "reason": reason.strip(),
        "batch": _int("batch", out["batch"], 1),
        "max_failures": _int("max_failures", out["max_failures"], 0),
        "deadline": parse_deadline(out["deadline"], now).isoformat(),
        "force": out["force"],
        "migration_timeout": _int("migration_timeout", out["migration_timeout"], 1),
        "minion_timeout": _int("minion_timeout", out["minion_timeout"], 1),
        "poll": float(out["poll"]),
    }


def batches(hosts, size):
    """The hosts in order, ``size`` at a time."""
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


def disabled_reason(reason):
    return REASON_PREFIX + reason


def is_ours(disabled_reason_text):
    """A service disabled by deskfleet maintenance (not by someone else, for another reason)."""
    return str(disabled_reason_text or "").startswith(REASON_PREFIX)


# ---- desktops and notifications --------------------------------------------------


def is_spare(server):
    """A pool desktop nobody has taken (ready, booting or broken): deleted, never migrated."""
    meta = server.get("metadata") or {}
    return "deskfleet_pool" in meta and meta.get("deskfleet_state") != "taken"


def split_desktops(servers):
    """``(spares, taken)`` ids: everything that is not a spare must be live-migrated."""
    spares, taken = [], []
    for server in servers:
        (spares if is_spare(server) else taken).append(server["id"])
    return spares, taken


def notify_times(now, deadline, leads=NOTIFY_LEADS):
    """When a user still on the host is told: now, then at each lead time before the deadline still ahead."""
    times = [now]
    for lead in sorted(set(leads), reverse=True):
        at = deadline - datetime.timedelta(seconds=lead)
        if at > now:
            times.append(at)
    return times


def notice_due(sent, now, deadline, leads=NOTIFY_LEADS):
    """True when a notice is due: none ``sent`` yet (list of datetimes), or a lead time passed since the last."""
    if not sent:
        return True
    last = max(sent)
    return any(last < at <= now for at in notify_times(last, deadline, leads)[1:])


def notice_text(reason, deadline, now):
    """The message on the user's desktop: short (Windows ``msg`` takes under 256 characters)."""
    minutes = max(0, int((deadline - now).total_seconds() // 60))
    text = (
        f"Maintenance ({reason[:80]}): your desktop moves to another server within {minutes} min. "
        "You keep working; expect a pause of a few seconds. Please save your work."
    )
    return text[:255]


# ---- capacity --------------------------------------------------------------------


def _requests(servers, ids, flavors):
    by_id = {s["id"]: s for s in servers}
    out = []
    for sid in ids:
        flavor = by_id[sid].get("flavor") or flavors.get(by_id[sid].get("flavor_id")) or {}
        out.append(dict(host_capacity.flavor_request(flavor), id=sid))
    return out


def _candidates(others, requests):
    # Fast path: a few of the emptiest hosts usually take everything; a placement on a
    # subset is a placement on the whole, so only a refusal needs the full list.
    need = sum(r.get("MEMORY_MB", 0) for r in requests)
    ranked = sorted(others, key=lambda h: h["free"].get("MEMORY_MB", 0), reverse=True)
    picked, room = [], 0
    for host in ranked:
        picked.append(host)
        room += host["free"].get("MEMORY_MB", 0)
        if len(picked) >= 8 and room >= 2 * need:
            break
    return picked


def anti_affinity(groups, batch, servers_by_host):
    """
    ``(group_of, apart, names)`` for the hard anti-affinity server groups: the group of each member
    {server id: group id}, the hosts outside ``batch`` already holding a member {group id: {host}}
    and the group names. ``groups``: [{id, name, policy, members: {server id: host}}] (Nova).
    Soft anti-affinity is a preference to Nova, not a refusal: ignored here.
    """
    group_of, apart, names = {}, {}, {}
    moving = {s["id"] for h in batch for s in servers_by_host.get(h) or []}
    for group in groups or ():
        if group.get("policy") != "anti-affinity":
            continue
        names[group["id"]] = group.get("name") or group["id"]
        for sid, host in (group.get("members") or {}).items():
            if sid in moving:
                group_of[sid] = group["id"]
            elif host and host not in batch:
                apart.setdefault(group["id"], set()).add(host)
    return group_of, apart, names


def check_capacity(hosts_capacity, batch, servers_by_host, flavors=None, exclude=(), groups=None):
    """
    Can the enabled hosts outside ``batch`` (and ``exclude``) take the batch's
    taken desktops, each on ONE host? ``hosts_capacity`` from
    ``host_capacity.hosts_from_placement``; ``servers_by_host`` {host: [server]}
    with each server's ``flavor`` ({ram, vcpus, disk}); ``groups`` Nova's server
    groups (:func:`anti_affinity`): a member of an anti-affinity group never goes
    to a host that holds another member.

    Returns ``{"ok", "placed": {id: host}, "unplaced": {host: [ids]}, "shortfall": {rc: n}, "spares": n,
    "blocked": {host: {id: group name}}}``.
    Spares are not counted: they are deleted and the keeper refills them where it can.
    """
    flavors = flavors or {}
    skip = set(batch) | set(exclude)
    others = [h for h in hosts_capacity if h["name"] not in skip and not h.get("disabled")]
    group_of, apart, group_names = anti_affinity(groups, batch, servers_by_host)
    requests, owner, spares = [], {}, 0
    for host in batch:
        servers = servers_by_host.get(host) or []
        spare_ids, taken = split_desktops(servers)
        spares += len(spare_ids)
        for request in _requests(servers, taken, flavors):
            owner[request["id"]] = host
            if request["id"] in group_of:
                request["group"] = group_of[request["id"]]
            requests.append(request)
    result = host_capacity.place(_candidates(others, requests), requests, apart)
    if result["unplaced"]:
        result = host_capacity.place(others, requests, apart)
    unplaced, blocked = {}, {}
    for sid in result["unplaced"]:
        unplaced.setdefault(owner[sid], []).append(sid)
    for sid, group in result["blocked"].items():
        blocked.setdefault(owner[sid], {})[sid] = group_names[group]
    return {
        "ok": not result["unplaced"],
        "placed": result["placed"],
        "unplaced": unplaced,
        "shortfall": {rc: round(n, 2) for rc, n in result["shortfall"].items()},
        "spares": spares,
        "blocked": blocked,
    }


def shortfall_text(check, host=None, names=None):
    """One line naming what does not fit (``host``: only its desktops), for the refusal."""
    names = names or {}
    unplaced = check["unplaced"] if host is None else {host: check["unplaced"].get(host, [])}
    blocked = check.get("blocked") or {}
    parts = []
    for h, ids in sorted(unplaced.items()):
        grouped = blocked.get(h) or {}
        short = [sid for sid in ids if sid not in grouped]
        if short:
            parts.append(f"the other hosts cannot take {h}: {len(short)} desktop(s); short by "
                         + ", ".join(f"{rc} {n:g}" for rc, n in sorted(check["shortfall"].items())))
        for sid, group in sorted(grouped.items()):
            parts.append(f"{names.get(sid) or sid} on {h} is in anti-affinity server group {group!r}: "
                         "every other host with room already holds a member")
    return "; ".join(parts)


# ---- the plan --------------------------------------------------------------------


def group_by_host(servers):
    out = {}
    for server in servers:
        out.setdefault(server.get("host"), []).append(server)
    return out


def plan(request, providers, servers, now, flavors=None, services=None, groups=None):
    """
    The whole roll, touching nothing: per batch and host the steps, the spares
    to delete, the desktops to migrate, the capacity verdict, the notice times.

    request    validated (:func:`validate_request`)
    providers  placement per compute host (``host_capacity.hosts_from_placement`` input)
    servers    [{id, name, host, status, metadata, flavor}]
    services   {host: {"disabled": bool, "reason": str, "up": bool}} from nova (optional)
    groups     Nova's server groups [{id, name, policy, members: {server id: host}}] (optional)

    Each batch is checked against the hosts outside it, the earlier batches back
    in service (their desktops moved away is not assumed: current usage counts).
    """
    capacity = host_capacity.hosts_from_placement(providers)
    by_host = group_by_host(servers)
    services = services or {}
    deadline = datetime.datetime.fromisoformat(request["deadline"])
    out = {"batches": [], "hosts": {}, "refused": [], "deadline": request["deadline"]}
    for index, batch in enumerate(batches(request["hosts"], request["batch"])):
        out["batches"].append(batch)
        check = check_capacity(capacity, batch, by_host, flavors, groups=groups)
        for host in batch:
            spares, taken = split_desktops(by_host.get(host) or [])
            problems = []
            svc = services.get(host)
            if services and svc is None:
                problems.append("no nova-compute service on this host")
            elif svc and svc.get("disabled") and not is_ours(svc.get("reason")):
                problems.append(f"nova-compute already disabled by someone else: {svc.get('reason') or 'no reason'}")
            if host in check["unplaced"]:
                problems.append(shortfall_text(check, host, {s["id"]: s.get("name") for s in by_host.get(host) or []}))
            out["hosts"][host] = {
                "batch": index,
                "steps": list(STEPS),
                "spares": spares,
                "taken": taken,
                "moves": {sid: check["placed"].get(sid) for sid in taken},
                "ok": not problems,
                "problems": problems,
            }
            if problems:
                out["refused"].append(host)
    out["notify_at"] = [t.isoformat() for t in notify_times(now, deadline)]
    if request.get("wait_logoff") is not None:  # in-use pool desktops wait for a logoff until then
        out["wait_logoff_until"] = max(now, deadline - datetime.timedelta(seconds=request["wait_logoff"])).isoformat()
    out["ok"] = not out["refused"]
    return out


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
