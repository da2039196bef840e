"""
deskfleet's metrics, read from the store (and the pool keeper's status): what the
``deskfleet_metrics`` engine publishes through Salt's metrics layer.

Level-triggered: every pass reads the whole state again and yields one snapshot,
``{metric: [(labels, value), ...]}``; nothing here keeps a running tally, so a
missed pass or an engine restart loses nothing. The clock is passed in.

Labels come from bounded sets only (Salt's rule, ``salt/utils/metrics.py``): seat
statuses, ingest results, rollout/maintenance states are fixed tuples; sites are
the ones the master's config names (a thin client reports its own site, so any
other value counts as ``other``); pool names are the pillar's (validated names).
A seat id or a sender never becomes a label.
"""

import re

OTHER = "other"
SEAT_STATUSES = ("online", "stale", "offline")  # tc_assets.status_of
INGEST_RESULTS = ("accepted", "flagged", "missed", "forged", "malformed", "oversize", "duplicate", "stale",
                  "replayed", "rate_limited")
POOL_STATES = ("ready", "in_flight", "taken", "stuck", "error")
POOL_HEALTH = ("ok", "backoff", "degraded", "drained")
ROLLOUT_STATES = ("scheduled", "running", "completed", "halted", "expired", "cancelled")
ROLLOUT_MINION_STATES = ("pending", "running", "succeeded", "failed", "skipped")
ROLL_STATES = ("running", "stopped", "failed", "aborted", "done")
HOST_STATES = ("pending", "running", "done", "failed", "aborted")
SOURCES = ("seats", "pools", "rollouts", "maintenance")  # seats: the whole tc store (seats + ingest)
MAX_SITES = 500  # a config typo must not become a cardinality bomb either
MAX_POOLS = 200
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# name -> (kind, description, unit); kind "gauge" or "counter" (a cumulative total read from the store)
SPECS = {
    "deskfleet.seats": ("gauge", "Thin clients by status and site (site: configured sites, else other).", "{seat}"),
    "deskfleet.ingest.events": ("counter", "Beacon events by ingest result since the store was made.", "{event}"),
    "deskfleet.ingest.forged.recent": ("gauge", "Forged beacon events within the burst window.", "{event}"),
    "deskfleet.pool.desktops": ("gauge", "Pool desktops by state, from the cloud (vmpool.status).", "{desktop}"),
    "deskfleet.pool.target": ("gauge", "Spare desktops each pool should have now.", "{desktop}"),
    "deskfleet.pool.health": ("gauge", "1 for the pool's health (ok, backoff, degraded, drained), else 0.", ""),
    "deskfleet.rollouts": ("gauge", "Software rollouts by state.", "{rollout}"),
    "deskfleet.rollout.minions": ("gauge", "Rollout targets by outcome, over the stored rollouts.", "{minion}"),
    "deskfleet.maintenance.rolls": ("gauge", "Host maintenance rolls by state.", "{roll}"),
    "deskfleet.maintenance.hosts": ("gauge", "Hosts of the newest roll by state.", "{host}"),
    "deskfleet.metrics.source_up": ("gauge", "1 when the last pass read this source, 0 when it failed.", ""),
    "deskfleet.metrics.collected": ("gauge", "Unix time of the last collection pass.", "s"),
}


def bounded(value, allowed):
    """``value`` when it is one of ``allowed``, else ``other``."""
    return value if value in allowed else OTHER


def known_sites(configured):
    """{lower-case name: name} for the configured sites (a list or a dict's keys); odd names dropped."""
    names = list(configured or ())[:MAX_SITES] if isinstance(configured, (list, tuple, dict)) else []
    return {str(n).lower(): str(n) for n in names if isinstance(n, str) and LABEL_RE.fullmatch(n)}


def site_label(site, sites):
    """The configured spelling of ``site`` (matched case-insensitively), else ``other``."""
    return sites.get(site.lower(), OTHER) if isinstance(site, str) else OTHER


def status_of(last_seen, now, heartbeat, offline_after):
    """Same rule as ``tc_assets.status_of``: online within 1.5 heartbeats, offline after ``offline_after``."""
    age = now - last_seen
    if age <= 1.5 * heartbeat:
        return "online"
    return "stale" if age < offline_after * heartbeat else "offline"


def seat_counts(rows, now, heartbeat, offline_after, sites):
    """``rows``: (site, last_seen) per seat. Every status x (sites + other) is present, zeros included."""
    counts = {(s, label): 0 for s in SEAT_STATUSES for label in [*sites.values(), OTHER]}
    for site, last_seen in rows:
        key = (status_of(float(last_seen), now, heartbeat, offline_after), site_label(site, sites))
        counts[key] += 1
    return [({"status": s, "site": label}, n) for (s, label), n in sorted(counts.items())]


def ingest_totals(counter_rows):
    """``counter_rows``: (name, value) from ``ingest_counters``; unknown names add up under ``other``."""
    totals = dict.fromkeys(INGEST_RESULTS + (OTHER,), 0)
    for name, value in counter_rows:
        totals[bounded(name, INGEST_RESULTS)] += int(value or 0)
    return [({"result": r}, n) for r, n in totals.items()]


def forged_recent(stats_rows, now, window):
    """``stats_rows``: (minute, reason, count) from ``ingest_reject_stats``: forged events in the last ``window`` s."""
    since = int((now - window) // 60)
    return sum(int(c) for minute, reason, c in stats_rows if reason == "forged" and int(minute) >= since)


def state_counts(rows, states, label="state"):
    """``rows``: (state, count); every state present, zeros included, strays under ``other``."""
    counts = dict.fromkeys(states + (OTHER,), 0)
    for state, n in rows:
        counts[bounded(state, states)] += int(n)
    return [({label: s}, n) for s, n in counts.items()]


def pool_samples(status):
    """From ``vmpool.status``'s ``pools``: desktops by state, target, and health as a one-hot gauge."""
    desktops, target, health = [], [], []
    names = [n for n in sorted(status or {}) if LABEL_RE.fullmatch(str(n))][:MAX_POOLS]
    for name in names:
        row = status[name] or {}
        desktops += [({"pool": name, "state": s}, int(row.get(s) or 0)) for s in POOL_STATES]
        target.append(({"pool": name}, int(row.get("target") or 0)))
        now = "drained" if row.get("drained") else bounded(row.get("health"), POOL_HEALTH)
        health += [({"pool": name, "health": h}, int(h == now)) for h in POOL_HEALTH + (OTHER,)]
    return {"deskfleet.pool.desktops": desktops, "deskfleet.pool.target": target, "deskfleet.pool.health": health}


def collect_tc(conn, now, heartbeat, offline_after, sites, burst_window):
    """The tc master's part: seats by status and site, ingest totals, forged events in the window."""
    seats = conn.execute("SELECT site, last_seen FROM seats").fetchall()
    totals = conn.execute("SELECT name, value FROM ingest_counters").fetchall()
    recent = conn.execute(
        "SELECT minute, reason, SUM(count) FROM ingest_reject_stats WHERE minute >= ? GROUP BY minute, reason",
        (int((now - burst_window) // 60),),
    ).fetchall()
    return {
        "deskfleet.seats": seat_counts(seats, now, heartbeat, offline_after, sites),
        "deskfleet.ingest.events": ingest_totals(totals),
        "deskfleet.ingest.forged.recent": [({}, forged_recent(recent, now, burst_window))],
    }


def collect_rollouts(conn):
    return {
        "deskfleet.rollouts": state_counts(conn.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state"),
                                           ROLLOUT_STATES),
        "deskfleet.rollout.minions": state_counts(
            conn.execute("SELECT state, COUNT(*) FROM rollout_minions GROUP BY state"), ROLLOUT_MINION_STATES),
    }


def collect_maintenance(conn):
    newest = conn.execute("SELECT id FROM maintenance_rolls ORDER BY created DESC, id DESC LIMIT 1").fetchone()
    hosts = conn.execute("SELECT state, COUNT(*) FROM maintenance_hosts WHERE roll = ? GROUP BY state",
                         (newest[0],)).fetchall() if newest else []
    return {
        "deskfleet.maintenance.rolls": state_counts(
            conn.execute("SELECT state, COUNT(*) FROM maintenance_rolls GROUP BY state"), ROLL_STATES),
        "deskfleet.maintenance.hosts": state_counts(hosts, HOST_STATES),
    }


def snapshot(readers, now):
    """
    Run every ``{source: reader}`` (a callable returning ``{metric: samples}``); one failing source
    never hides the others: its metrics are left out and ``source_up`` says 0. ``(snapshot, errors)``.
    """
    out, errors = {}, {}
    for source, reader in readers.items():
        try:
            out.update(reader())
        except Exception as exc:  # pylint: disable=broad-except
            errors[source] = f"{type(exc).__name__}: {exc}"[:500]
    out["deskfleet.metrics.source_up"] = [({"source": bounded(s, SOURCES)}, int(s not in errors)) for s in readers]
    out["deskfleet.metrics.collected"] = [({}, float(now))]
    return out, errors


class Burst:
    """
    Edge-triggered alert over a level: ``update(count)`` returns ``"start"`` when the count
    reaches ``threshold``, ``"clear"`` when it falls back below, else ``None``.
    """

    def __init__(self, threshold):
        self.threshold = int(threshold)
        self.active = False

    def update(self, count):
        hot = self.threshold > 0 and count >= self.threshold
        if hot == self.active:
            return None
        self.active = hot
        return "start" if hot else "clear"
