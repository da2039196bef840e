"""
Active users per site and department, from what the thin-client inventory
already stores, and the anomaly rule against the shift plan.

Per group (site, department) at one moment:

- ``seats``: seats in the inventory; ``online``: heard within 1.5 heartbeats;
- ``connected``: online with a connected desktop session;
- ``active``: connected with input within ``active_within`` seconds;
- ``idle``: connected and not active (``active + idle == connected``).

Input age is the ``idle_seconds`` of the seat's last report: the beacon
reports on every idle/active flip (``idle_after``) and every heartbeat, so the
figure is at most one heartbeat old; with ``idle_after == active_within`` it is
exact at the flip.

Site and department are what each seat reports (its ``asset.conf``): a seat
can misplace only itself. To keep a lying seat from minting groups, a pair
outside ``deskfleet:tc:activity:sites`` counts under ``(site, OTHER)`` (an
unknown site under ``(OTHER, OTHER)``); with no sites configured, at most
``max_groups`` pairs are kept (most seats first), the rest under OTHER.

Anomaly: ``|active - expected| >= absolute`` AND ``>= percent`` of expected for
``buckets`` consecutive buckets starts it (one alert); ``clear_buckets``
consecutive buckets inside the band clear it (one alert). A hole of more than
two buckets (master down) restarts both counts; one or two missed ticks do not. Pure: the clock is passed in.
"""

import collections

OTHER = "(other)"
NONE = "(none)"
ALERT_TAG = "deskfleet/alert/active_users"
PLAN_ALERT_TAG = "deskfleet/alert/shift_plan"
MEASURES = ("seats", "online", "connected", "active", "idle")
GAP_BUCKETS = 3  # one or two missed ticks (a slow run) do not break a streak; a longer hole does
STATE_KEYS = ("state", "streak", "calm", "last_bucket", "since")

DEFAULTS = {
    "interval": 60,
    "active_within": 300,
    "plan_file": "",
    "sites": {},
    "percent": 20,
    "absolute": 5,
    "buckets": 3,
    "clear_buckets": 3,
    "minute_days": 7,
    "hour_days": 400,
    "max_groups": 2000,
}
# field -> (lowest, highest)
LIMITS = {
    "interval": (5, 3600),
    "active_within": (1, 86400),
    "percent": (0, 1000),
    "absolute": (0, 1_000_000),
    "buckets": (1, 1440),
    "clear_buckets": (1, 1440),
    "minute_days": (1, 60),
    "hour_days": (1, 3660),
    "max_groups": (1, 100_000),
}
WHOLE = ("interval", "buckets", "clear_buckets", "max_groups")


def settings(conf):
    """``conf`` (``deskfleet:tc:activity``) over the defaults, checked; ValueError names the field."""
    out = dict(DEFAULTS, **{k: v for k, v in (conf or {}).items() if v is not None})
    for field, (low, high) in LIMITS.items():
        value = out[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"deskfleet:tc:activity:{field} must be a number in [{low}, {high}], got {value!r}")
        if field in WHOLE and value != int(value):
            raise ValueError(f"deskfleet:tc:activity:{field} must be a whole number, got {value!r}")
        out[field] = int(value) if field in WHOLE else value
    if not isinstance(out["plan_file"], str):
        raise ValueError(f"deskfleet:tc:activity:plan_file must be a path, got {out['plan_file']!r}")
    out["sites"] = _sites(out["sites"])
    return out


def _sites(sites):
    if not isinstance(sites, dict):
        raise ValueError(f"deskfleet:tc:activity:sites must map site -> [departments], got {type(sites).__name__}")
    known = {}
    for site, depts in sites.items():
        if not isinstance(site, str) or not site:
            raise ValueError(f"deskfleet:tc:activity:sites: site {site!r} must be a non-empty string")
        if not isinstance(depts, list) or not all(isinstance(d, str) and d for d in depts):
            raise ValueError(f"deskfleet:tc:activity:sites:{site} must be a list of department names")
        known[site] = set(depts)
    return known


def bucket_of(now, interval):
    return int(now // interval * interval)


# ---- aggregation -------------------------------------------------------------------

# One pass in SQLite over the seats table: 10,000 seats cost milliseconds (bench/active_users.py).
_GROUPS = (
    "SELECT site, department, COUNT(*) AS seats, COALESCE(SUM(online), 0) AS online,"
    " COALESCE(SUM(CASE WHEN online = 1 AND session_state = 'connected' THEN 1 ELSE 0 END), 0) AS connected,"
    " COALESCE(SUM(CASE WHEN online = 1 AND session_state = 'connected' AND idle_seconds <= :within"
    " THEN 1 ELSE 0 END), 0) AS active"
    " FROM (SELECT site, department, session_state, idle_seconds,"
    " CASE WHEN last_seen >= :since THEN 1 ELSE 0 END AS online FROM seats) AS s"
    " GROUP BY site, department"
)


def raw_groups(conn, now, heartbeat, active_within):
    """``[(site, department, {measure: n})]`` straight from the inventory (names as the seats report them)."""
    rows = conn.execute(_GROUPS, {"since": now - 1.5 * heartbeat, "within": active_within})
    out = []
    for r in rows:
        counts = {m: r[m] for m in ("seats", "online", "connected", "active")}
        counts["idle"] = counts["connected"] - counts["active"]
        out.append((r["site"], r["department"], counts))
    return out


def normalise(raw, known, max_groups):
    """Fold reported names into bounded groups (see the module docstring): ``{(site, dept): counts}``."""
    out = collections.defaultdict(lambda: dict.fromkeys(MEASURES, 0))
    if known:
        keys = [_known_key(site, dept, known) for site, dept, _ in raw]
    else:
        keep = {(s or NONE, d or NONE) for s, d, c in sorted(raw, key=lambda g: -g[2]["seats"])[:max_groups]}
        keys = [(s or NONE, d or NONE) if (s or NONE, d or NONE) in keep else (OTHER, OTHER) for s, d, _ in raw]
    for key, (_, _, counts) in zip(keys, raw):
        for m in MEASURES:
            out[key][m] += counts[m]
    return dict(out)


def _known_key(site, dept, known):
    if site not in known:
        return (OTHER, OTHER)
    return (site, dept if dept in known[site] else OTHER)


def known_pairs(known, raw):
    """Site → departments a plan may name: the configured ones, else those the inventory has seen."""
    if known:
        return known
    seen = collections.defaultdict(set)
    for site, dept, _ in raw:
        if site and dept:
            seen[site].add(dept)
    return dict(seen)


def compare(groups, lookup, when, conf):
    """Every group and every planned pair at ``when``: counts, expected, deviation, out-of-band."""
    rows = {}
    for pair in set(groups) | set(lookup.pairs()):
        counts = groups.get(pair) or dict.fromkeys(MEASURES, 0)
        expected = lookup.expected(pair, when)
        rows[pair] = dict(counts, site=pair[0], department=pair[1], expected=expected,
                          **judge(counts["active"], expected, conf))
    return rows


def judge(active, expected, conf):
    """Deviation of ``active`` from ``expected``; out of band only past BOTH thresholds."""
    if expected is None:
        return {"deviation": None, "deviation_pct": None, "out": False}
    dev = active - expected
    pct = None if expected == 0 else round(100.0 * dev / expected, 1)
    out = abs(dev) >= conf["absolute"] and (expected == 0 or abs(dev) * 100 >= conf["percent"] * expected)
    return {"deviation": dev, "deviation_pct": pct, "out": bool(out and dev != 0)}


# ---- the anomaly state of one group ----------------------------------------------------


def step(state, bucket, row, conf):
    """
    Advance one group's anomaly ``state`` (dict: state, streak, calm, last_bucket,
    since) by one bucket. Returns ``(state, transition)``, transition ``"start"``,
    ``"clear"`` or None. A bucket already seen changes nothing (level-triggered
    callers may run twice in one bucket).
    """
    state = dict(state or {"state": "ok", "streak": 0, "calm": 0, "last_bucket": None, "since": None})
    last = state["last_bucket"]
    if last is not None and bucket <= last:
        return state, None
    if last is not None and bucket - last > GAP_BUCKETS * conf["interval"]:
        state["streak"] = state["calm"] = 0  # the master was away: the hole proves neither
    state["last_bucket"] = bucket
    if row["out"]:
        state["streak"] += 1
        state["calm"] = 0
        if state["state"] == "ok" and state["streak"] >= conf["buckets"]:
            state.update(state="firing", since=bucket - (conf["buckets"] - 1) * conf["interval"])
            return state, "start"
        return state, None
    state["streak"] = 0
    if state["state"] == "firing":
        state["calm"] += 1
        if state["calm"] >= conf["clear_buckets"]:
            state.update(state="ok", calm=0)
            return state, "clear"
    return state, None


def alert(transition, state, bucket, row, conf):
    """The event data of a start or clear."""
    return {
        "state": transition,
        "site": row["site"],
        "department": row["department"],
        "bucket": bucket,
        "since": state["since"],
        "active": row["active"],
        "expected": row["expected"],
        "deviation": row["deviation"],
        "deviation_pct": row["deviation_pct"],
        "direction": None if not row["deviation"] else ("below" if row["deviation"] < 0 else "above"),
        "online": row["online"],
        "connected": row["connected"],
        "thresholds": {k: conf[k] for k in ("percent", "absolute", "buckets", "clear_buckets")},
    }
