"""
The portal's pages as data: sections of plain rows the browser renders as text.

Pure: the runner (``_runners/portal.py``) passes in what the other runners
return; nothing here reads a store, the cloud or the clock. A section is
``{"id", "title", "columns", "rows", "total", "page", "pages", "actions", "note"}``;
an action names the runner an operator may call on a row (its first cell is the
argument). Roles decide in salt-api's eauth ACL, not here: a viewer sees the
buttons and is refused by the master.
"""

STATUSES = ("online", "stale", "offline")
PAGE_SIZE = 25
MAX_PAGE_SIZE = 200


class UsageError(ValueError):
    """A bad ``page``/``size``; the message names the parameter."""


def paging(page, size):
    """``(page, size)`` as positive ints, or UsageError naming the parameter."""
    out = []
    for name, value, top in (("page", page, None), ("size", size, MAX_PAGE_SIZE)):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name}: a whole number, got {value!r}") from None
        if number < 1 or (top and number > top):
            raise UsageError(f"{name}: 1..{top or 'n'}, got {number}")
        out.append(number)
    return tuple(out)


PAGED = ("offline", "stale")


def section_pages(pages, default=1):
    """``{section: page}`` for the paged sections; ``pages`` from the browser, anything else refused by name."""
    if pages is None:
        pages = {}
    if not isinstance(pages, dict):
        raise UsageError(f"pages: a mapping of section to page, got {type(pages).__name__}")
    out = {}
    for sid in PAGED:
        value = pages.get(sid, default)
        try:
            out[sid] = paging(value, 1)[0]
        except UsageError:
            raise UsageError(f"pages: {sid}: a whole number >= 1, got {value!r}") from None
    unknown = sorted(str(k) for k in pages if k not in PAGED)
    if unknown:
        raise UsageError(f"pages: unknown section {unknown[0]!r}; paged: {', '.join(PAGED)}")
    return out


def section(sid, title, columns, rows, note=None, actions=(), page=1, size=None):
    """One table; with ``size`` only that page of ``rows`` (``pages`` says how many)."""
    total = len(rows)
    pages = max(1, -(-total // size)) if size else 1
    page = min(page, pages)
    shown = rows[(page - 1) * size : page * size] if size else rows
    out = {"id": sid, "title": title, "columns": list(columns), "rows": [[_cell(v) for v in r] for r in shown],
           "total": total, "page": page, "pages": pages, "actions": list(actions)}
    if note or not rows:
        out["note"] = note or "nothing to show"
    return out


def _key(value):
    """A grouping key: text, whatever the store held."""
    return str(value) if value not in (None, "") else "unknown"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, (int, str, bool)):
        return value
    return str(value)


def tiles(sections):
    """The headline numbers above the tables, read off the sections (never counted twice)."""
    got = {sec["id"]: sec for sec in sections}
    out = []
    if "sites" in got:
        cols = got["sites"]["columns"]
        for status in ("total",) + STATUSES:
            i = cols.index(status)
            out.append({"label": "seats" if status == "total" else status, "value": sum(r[i] for r in got["sites"]["rows"]),
                        "status": status})
    if "pools" in got:
        for label, i in (("ready", 2), ("in flight", 3), ("taken", 4)):
            out.append({"label": f"desktops {label}", "value": sum(r[i] or 0 for r in got["pools"]["rows"]), "status": ""})
        degraded = sum(1 for r in got["pools"]["rows"] if r[5] != "ok")
        out.append({"label": "pools not ok", "value": degraded, "status": "degraded" if degraded else "ok"})
    if "passwords" in got:
        due = sum(1 for r in got["passwords"]["rows"] if r[1] != "ok")
        out.append({"label": "passwords due", "value": due, "status": "due" if due else "ok"})
    return out


# ---------------------------------------------------------------------------------------------
# tc master: seats
# ---------------------------------------------------------------------------------------------


def tc_sections(seats, ingest, activity, pages=None, size=PAGE_SIZE):
    """``seats``: tc_inventory.list rows; ``ingest``: summary counters; ``activity``: activity.now rows or None."""
    by_site, firmware = {}, {}
    for s in seats:
        counts = by_site.setdefault(_key(s.get("site")), dict.fromkeys(STATUSES, 0))
        counts[s.get("status")] = counts.get(s.get("status"), 0) + 1
        firmware[_key(s.get("firmware"))] = firmware.get(_key(s.get("firmware")), 0) + 1
    site_rows = [[site] + [c.get(k, 0) for k in STATUSES] + [sum(c.values())] for site, c in sorted(by_site.items())]
    fw_rows = [[fw, n, f"{100 * n / len(seats):.0f}%"] for fw, n in sorted(firmware.items(), key=lambda kv: (-kv[1], kv[0]))]
    sections = [
        section("sites", "Seats by site and status", ["site", *STATUSES, "total"], site_rows),
        section("firmware", "Firmware", ["firmware", "seats", "share"], fw_rows),
    ]
    for status in PAGED:
        rows = [[s.get("seat"), s.get("site"), s.get("firmware"), s.get("ip"), s.get("last_seen")]
                for s in seats if s.get("status") == status]
        sections.append(section(status, f"{status.capitalize()} seats", ["seat", "site", "firmware", "ip", "last seen"],
                                rows, page=(pages or {}).get(status, 1), size=size))
    if activity is not None:
        rows = [[a.get("site"), a.get("department"), a.get("seats"), a.get("active"), a.get("expected"),
                 a.get("deviation"), a.get("alert")] for a in activity]
        sections.append(section("activity", "Active users against plan",
                                ["site", "department", "seats", "active", "expected", "deviation", "alert"], rows,
                                note=None if any(a.get("expected") is not None for a in activity) else "no shift plan loaded"))
    ingest_rows = [[k, v] for k, v in sorted((ingest or {}).items()) if isinstance(v, (int, float))]
    sections.append(section("ingest", "Beacon ingest", ["counter", "events"], ingest_rows))
    return sections


# ---------------------------------------------------------------------------------------------
# vm master: pools, rollouts, passwords, hosts
# ---------------------------------------------------------------------------------------------

DRAIN = {"label": "Drain", "fun": "vmpool.drain", "param": "pool"}
CANCEL = {"label": "Cancel", "fun": "software.cancel", "param": "id"}
MAINTAIN = {"label": "Start maintenance", "fun": "maintenance.start", "param": "hosts", "list": True,
            "ask": "reason", "async": True}
RUNNING = ("scheduled", "running")


def vm_sections(pools, rollouts, passwords, providers, roll):
    """
    ``pools``: vmpool.status; ``rollouts``: software.status listing; ``passwords``:
    password.status; ``providers``: placement per host (``pool_cloud.providers``) or an
    error string; ``roll``: maintenance.status.
    """
    pool_rows = [[name, p.get("target"), p.get("ready"), p.get("in_flight"), p.get("taken"), p.get("health"),
                  "yes" if p.get("drained") else "no"] for name, p in sorted(((pools or {}).get("pools") or {}).items())]
    sections = [section("pools", "Pools", ["pool", "target", "ready", "in flight", "taken", "health", "drained"],
                        pool_rows, note=(pools or {}).get("error"), actions=[DRAIN])]
    live = [r for r in rollouts if isinstance(r, dict) and r.get("state") in RUNNING]
    rollout_rows = [[r.get("id"), r.get("software"), r.get("version"), r.get("state"), _counts(r.get("counts"))]
                    for r in live]
    sections.append(section("rollouts", "Rollouts in progress", ["rollout", "software", "version", "state", "progress"],
                            rollout_rows, note=None if live else "no rollout scheduled or running", actions=[CANCEL]))
    sections.append(section("passwords", "Password compliance", ["machine", "state", "why"], password_rows(passwords),
                            note=(passwords or {}).get("error")))
    if isinstance(providers, str):
        sections.append(section("hosts", "Hosts", ["host"], [], note=providers))
    else:
        sections.append(section("hosts", "Hosts", ["host", "enabled", "vCPU commit", "RAM commit", "maintenance"],
                                host_rows(providers, roll), actions=[MAINTAIN]))
    return sections


def _counts(counts):
    return ", ".join(f"{k} {v}" for k, v in sorted((counts or {}).items()) if v) or "-"


def password_rows(status):
    status = status or {}
    rows = [[vm, "in doubt", ", ".join(ids)] for vm, ids in sorted((status.get("in_doubt") or {}).items())]
    rows += [[vm, "due", why] for vm, why in sorted((status.get("due") or {}).items()) if vm not in (status.get("in_doubt") or {})]
    rows += [[vm, "ok", ""] for vm in sorted(status.get("ok") or [])]
    return rows


def commit(inventory, used):
    """Allocated against physical (``used / (total − reserved)``) and the ceiling allowed (allocation ratio)."""
    physical = float(inventory.get("total", 0)) - float(inventory.get("reserved", 0))
    if physical <= 0:
        return "-"
    return f"{float(used) / physical:.2f} of {float(inventory.get('allocation_ratio', 1.0)):.1f}"


def host_rows(providers, roll):
    """One row per compute provider; the maintenance column from the newest roll's host states."""
    hosts = (roll or {}).get("hosts") or {}
    states = {name: f"{h.get('state')} ({roll.get('id')})" for name, h in hosts.items() if isinstance(h, dict)}
    rows = []
    for rp in sorted(providers or [], key=lambda p: p.get("name") or ""):
        inv, used = rp.get("inventories") or {}, rp.get("usages") or {}
        rows.append([rp.get("name"), "no" if rp.get("disabled") else "yes",
                     commit(inv["VCPU"], used.get("VCPU", 0)) if "VCPU" in inv else "-",
                     commit(inv["MEMORY_MB"], used.get("MEMORY_MB", 0)) if "MEMORY_MB" in inv else "-",
                     states.get(rp.get("name"), "-")])
    return rows
