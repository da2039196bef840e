"""
Where the active-user series, the shift plan and the anomaly states live: the
tc master's deskfleet store (component ``active_users``), beside the inventory.

Retention (``deskfleet:tc:activity``): one row per group per bucket (a minute
by default) for ``minute_days`` (7); every completed hour is rolled up into one
row per group (averages, active min/max, samples) kept ``hour_days`` (400).
500 groups: ~720,000 minute rows a day, ~5 M rows (~0.5 GB) at 7 days; set
``minute_days`` lower on a small disk. Plan slots are kept as long as hours.

Alerts are written before they are fired (``unsent``) and cleared once the bus
took them: a failed fire is retried on the next tick, never lost.
"""

import json

import deskfleet_store as store

COMPONENT = "active_users"
ROLLUP_HOURS_PER_TICK = 48  # bounds one tick's catch-up work after a long stop

MIGRATIONS = {
    COMPONENT: [
        """
        CREATE TABLE activity_minute (
            bucket INTEGER NOT NULL, site TEXT NOT NULL, department TEXT NOT NULL,
            seats INTEGER NOT NULL, online INTEGER NOT NULL, connected INTEGER NOT NULL,
            active INTEGER NOT NULL, idle INTEGER NOT NULL, expected INTEGER,
            PRIMARY KEY (bucket, site, department)
        ) WITHOUT ROWID;
        CREATE INDEX activity_minute_site ON activity_minute (site, bucket);
        CREATE TABLE activity_hour (
            hour INTEGER NOT NULL, site TEXT NOT NULL, department TEXT NOT NULL, samples INTEGER NOT NULL,
            online REAL, connected REAL, active REAL, active_min INTEGER, active_max INTEGER, idle REAL,
            expected REAL,
            PRIMARY KEY (hour, site, department)
        ) WITHOUT ROWID;
        CREATE TABLE activity_plan (
            site TEXT NOT NULL, department TEXT NOT NULL, start REAL NOT NULL, "end" REAL NOT NULL,
            expected INTEGER NOT NULL,
            PRIMARY KEY (site, department, start)
        ) WITHOUT ROWID;
        CREATE TABLE activity_alerts (
            site TEXT NOT NULL, department TEXT NOT NULL, state TEXT NOT NULL, streak INTEGER NOT NULL,
            calm INTEGER NOT NULL, last_bucket INTEGER, since REAL, unsent TEXT,
            PRIMARY KEY (site, department)
        );
        CREATE TABLE activity_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
        """,
    ]
}


def open_store(opts):
    """The tc master's store with this component's tables (and the inventory's)."""
    import tc_assets  # pylint: disable=import-outside-toplevel

    return store.open_role(opts, "tc", dict(tc_assets.MIGRATIONS, **MIGRATIONS))


def meta(conn, key, default=None):
    row = conn.execute("SELECT value FROM activity_meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def set_meta(conn, key, value):
    conn.execute("INSERT INTO activity_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                 " SET value = excluded.value", (key, json.dumps(value)))


# ---- plan ---------------------------------------------------------------------------


def replace_plan(conn, plan, source, now):
    """
    Store a checked plan: for each of its pairs, its span is replaced (slots
    straddling an edge are cut there), slots outside it are kept: loading next
    week's export keeps this week's.
    """
    start, end = plan["start"], plan["end"]
    with store.transaction(conn):
        for site, dept in plan["pairs"]:
            for s_start, s_end, expected in conn.execute(
                'SELECT start, "end", expected FROM activity_plan WHERE site = ? AND department = ?'
                ' AND start < ? AND "end" > ?', (site, dept, end, start)).fetchall():
                conn.execute("DELETE FROM activity_plan WHERE site = ? AND department = ? AND start = ?",
                             (site, dept, s_start))
                if s_start < start:
                    conn.execute("INSERT INTO activity_plan VALUES (?, ?, ?, ?, ?)", (site, dept, s_start, start, expected))
                if s_end > end:
                    conn.execute("INSERT INTO activity_plan VALUES (?, ?, ?, ?, ?)", (site, dept, end, s_end, expected))
        conn.executemany("INSERT INTO activity_plan VALUES (?, ?, ?, ?, ?)", [s[:5] for s in plan["slots"]])
        set_meta(conn, "plan", {"digest": plan["digest"], "source": source, "loaded_at": now, "start": start,
                                "end": end, "slots": len(plan["slots"]), "pairs": len(plan["pairs"])})
        set_meta(conn, "plan_rejected", None)


def plan_slots(conn, start, end, site=None, department=None):
    """Slots overlapping ``[start, end)``: ``(site, department, start, end, expected)``."""
    sql, args = 'SELECT site, department, start, "end", expected FROM activity_plan WHERE start < ? AND "end" > ?', [end, start]
    for col, value in (("site", site), ("department", department)):
        if value is not None:
            sql += f" AND {col} = ?"
            args.append(value)
    return [tuple(r) for r in conn.execute(sql + " ORDER BY site, department, start", args)]


# ---- series -------------------------------------------------------------------------


def record(conn, bucket, rows):
    """Write one bucket (replacing a rerun of the same bucket)."""
    conn.execute("DELETE FROM activity_minute WHERE bucket = ?", (bucket,))
    conn.executemany(
        "INSERT INTO activity_minute VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(bucket, r["site"], r["department"], r["seats"], r["online"], r["connected"], r["active"], r["idle"],
          r["expected"]) for r in rows],
    )


def rollup(conn, now):
    """Roll every completed hour not rolled yet into ``activity_hour`` (at most a bounded number per call)."""
    done = meta(conn, "rolled_until")
    if done is None:
        first = conn.execute("SELECT MIN(bucket) FROM activity_minute").fetchone()[0]
        if first is None:
            return 0
        done = int(first // 3600 * 3600)
    current = int(now // 3600 * 3600)
    hours = 0
    while done < current and hours < ROLLUP_HOURS_PER_TICK:
        conn.execute(
            "INSERT INTO activity_hour SELECT ?, site, department, COUNT(*), AVG(online),"
            " AVG(connected), AVG(active), MIN(active), MAX(active), AVG(idle), AVG(expected)"
            " FROM activity_minute WHERE bucket >= ? AND bucket < ? GROUP BY site, department"
            " ON CONFLICT(hour, site, department) DO UPDATE SET samples = excluded.samples, online = excluded.online,"
            " connected = excluded.connected, active = excluded.active, active_min = excluded.active_min,"
            " active_max = excluded.active_max, idle = excluded.idle, expected = excluded.expected",
            (done, done, done + 3600),
        )
        done += 3600
        hours += 1
    set_meta(conn, "rolled_until", done)
    return hours


def prune(conn, now, conf):
    """Drop minute rows, hour rows and plan slots past their retention."""
    minute_cut = now - conf["minute_days"] * 86400
    hour_cut = now - conf["hour_days"] * 86400
    rolled = meta(conn, "rolled_until", 0)
    # never drop minutes that are not rolled up yet
    conn.execute("DELETE FROM activity_minute WHERE bucket < ?", (min(minute_cut, rolled),))
    conn.execute("DELETE FROM activity_hour WHERE hour < ?", (hour_cut,))
    conn.execute('DELETE FROM activity_plan WHERE "end" < ?', (hour_cut,))


def series(conn, start, end, site=None, department=None, hourly=False):
    """Rows of one resolution between ``start`` and ``end`` (epoch seconds), oldest first."""
    table, col = ("activity_hour", "hour") if hourly else ("activity_minute", "bucket")
    sql, args = f"SELECT * FROM {table} WHERE {col} >= ? AND {col} < ?", [start, end]
    for name, value in (("site", site), ("department", department)):
        if value is not None:
            sql += f" AND {name} = ?"
            args.append(value)
    return [dict(r) for r in conn.execute(sql + f" ORDER BY {col}, site, department", args)]


def site_day(conn, site, start, end):
    """Per bucket of one site: summed active and expected over its departments (for the report)."""
    rows = conn.execute(
        "SELECT bucket, SUM(active) AS active, SUM(expected) AS expected, COUNT(expected) AS planned"
        " FROM activity_minute WHERE site = ? AND bucket >= ? AND bucket < ? GROUP BY bucket ORDER BY bucket",
        (site, start, end),
    )
    return [(r["bucket"], r["active"], r["expected"] if r["planned"] else None) for r in rows]


def sites_between(conn, start, end):
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT site FROM activity_minute WHERE bucket >= ? AND bucket < ? ORDER BY site", (start, end))]


# ---- anomaly states -----------------------------------------------------------------


def alert_states(conn):
    return {(r["site"], r["department"]): dict(r) for r in conn.execute("SELECT * FROM activity_alerts")}


def save_state(conn, pair, state, unsent):
    conn.execute(
        "INSERT INTO activity_alerts (site, department, state, streak, calm, last_bucket, since, unsent)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(site, department) DO UPDATE SET state = excluded.state,"
        " streak = excluded.streak, calm = excluded.calm, last_bucket = excluded.last_bucket,"
        " since = excluded.since, unsent = COALESCE(excluded.unsent, activity_alerts.unsent)",
        (*pair, state["state"], state["streak"], state["calm"], state["last_bucket"], state["since"],
         json.dumps(unsent) if unsent else None),
    )


def unsent(conn):
    """Alerts written but not fired yet: ``[(pair, [event data, ...])]``."""
    return [((r["site"], r["department"]), json.loads(r["unsent"]))
            for r in conn.execute("SELECT site, department, unsent FROM activity_alerts WHERE unsent IS NOT NULL")]


def mark_sent(conn, pair):
    conn.execute("UPDATE activity_alerts SET unsent = NULL WHERE site = ? AND department = ?", pair)


# ---- one tick, the now view, plan loading -----------------------------------------------


def tick(conn, now, conf, heartbeat, fire):
    """
    Aggregate the inventory into the current bucket, advance every group's
    anomaly state, roll up and prune, then fire what is unsent
    (``fire(tag, data) -> bool``). Level-triggered: run it as often as you like.
    """
    import active_users as au  # pylint: disable=import-outside-toplevel
    import shift_plan  # pylint: disable=import-outside-toplevel

    bucket = au.bucket_of(now, conf["interval"])
    groups = au.normalise(au.raw_groups(conn, now, heartbeat, conf["active_within"]), conf["sites"],
                          conf["max_groups"])
    lookup = shift_plan.Lookup(plan_slots(conn, bucket, bucket + 1))
    rows = au.compare(groups, lookup, bucket, conf)
    transitions = []
    with store.transaction(conn):
        record(conn, bucket, rows.values())
        states = alert_states(conn)
        for pair, row in rows.items():
            old = states.get(pair)
            state, change = au.step(old and {k: old[k] for k in au.STATE_KEYS}, bucket, row, conf)
            pending = None
            if change:
                event = au.alert(change, state, bucket, row, conf)
                transitions.append(event)
                pending = (json.loads(old["unsent"]) if old and old["unsent"] else []) + [event]
            if state != {k: (old or {}).get(k) for k in state}:
                save_state(conn, pair, state, pending)
        rolled = rollup(conn, now)
        prune(conn, now, conf)
    undelivered = deliver(conn, fire)
    firing = sum(1 for s in alert_states(conn).values() if s["state"] == "firing")
    return {"bucket": bucket, "groups": len(rows), "transitions": transitions, "firing": firing,
            "hours_rolled": rolled, "undelivered": undelivered}


def deliver(conn, fire):
    """Fire every unsent alert in order; a pair whose fire failed keeps its rest for the next tick."""
    import active_users as au  # pylint: disable=import-outside-toplevel

    failed = 0
    for pair, events in unsent(conn):
        sent = 0
        for event in events:
            if not fire(au.ALERT_TAG, event):
                break
            sent += 1
        with store.transaction(conn):
            if sent == len(events):
                mark_sent(conn, pair)
            else:
                failed += len(events) - sent
                conn.execute("UPDATE activity_alerts SET unsent = ? WHERE site = ? AND department = ?",
                             (json.dumps(events[sent:]), *pair))
    return failed


def now_view(conn, now, conf, heartbeat, site=None, department=None):
    """Live counts against the plan per group, with each group's alert state."""
    import active_users as au  # pylint: disable=import-outside-toplevel
    import shift_plan  # pylint: disable=import-outside-toplevel

    groups = au.normalise(au.raw_groups(conn, now, heartbeat, conf["active_within"]), conf["sites"],
                          conf["max_groups"])
    rows = au.compare(groups, shift_plan.Lookup(plan_slots(conn, now, now + 1)), now, conf)
    states = alert_states(conn)
    out = []
    for pair in sorted(rows):
        if (site is not None and pair[0] != site) or (department is not None and pair[1] != department):
            continue
        state = states.get(pair) or {}
        out.append(dict(rows[pair], alert=state.get("state", "ok"), alert_since=state.get("since")))
    return out


def known_for_plan(conn, now, conf, heartbeat):
    """What a plan may name: ``deskfleet:tc:activity:sites``, else the pairs the inventory has seen."""
    import active_users as au  # pylint: disable=import-outside-toplevel

    return au.known_pairs(conf["sites"], au.raw_groups(conn, now, heartbeat, conf["active_within"]))


def load_plan(conn, data, source, now, conf, heartbeat, dry_run=False):
    """Check (and unless ``dry_run`` store) a plan file's bytes; raises ``shift_plan.PlanError``."""
    import shift_plan  # pylint: disable=import-outside-toplevel

    plan = shift_plan.parse(data, known_for_plan(conn, now, conf, heartbeat))
    if not dry_run:
        replace_plan(conn, plan, source, now)
    return {"source": source, "digest": plan["digest"], "slots": len(plan["slots"]), "pairs": len(plan["pairs"]),
            "start": plan["start"], "end": plan["end"], "checked_against": "sites" if conf["sites"] else "inventory",
            "loaded": not dry_run}
