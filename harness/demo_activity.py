"""
Demo step: active users against the shift plan on the demo's tc master.
A plan is exported for today, a broken copy is refused (row and field named),
the good one is loaded, one tick runs (as the master schedule does every
minute) and ``activity.now`` shows active against planned for LON.
"""

import datetime

from harness import tcroot

COLS = ("department", "online", "connected", "active", "idle", "expected", "deviation", "alert")


def _plan(day):
    start, end = day.isoformat(), (day + datetime.timedelta(days=1)).isoformat()
    rows = [("LON", "sales", 1), ("LON", "support", 2), ("MAN", "support", 0), ("MAN", "billing", 1)]
    return "site,department,start,end,expected\n" + "".join(f"{s},{d},{start},{end},{n}\n" for s, d, n in rows)


def show(tc, base, out, say=print):
    """Run the step against the running demo tc master ``tc``; files go below ``base``, the report to ``out``."""
    say("\n== Active users against the shift plan (tc master)")
    tcroot.touch_input(base / "tc-roots" / "tc-lon-0001", 1)  # the LON sales agent is typing
    day = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    good = base / "shift_plan.csv"
    good.write_text(_plan(day))
    bad = base / "shift_plan_bad.csv"
    bad.write_text(_plan(day).replace("LON,sales", "LON,sale") + f"MAN,billing,{day.isoformat()},"
                   f"{(day + datetime.timedelta(hours=8)).isoformat()},3\n")
    refused = tc.run("activity.plan_check", str(bad))
    say(f"   salt-run activity.plan_check shift_plan_bad.csv -> {refused.get('error_count')} errors, e.g.")
    for err in refused.get("errors", [])[:2]:
        say(f"     row {err['row']}, {err['field']}: {err['error']}")
    loaded = tc.run("activity.plan_load", str(good))
    say(f"   salt-run activity.plan_load shift_plan.csv -> {loaded.get('slots')} slots, {loaded.get('pairs')} departments")
    tc.run("activity.tick")  # what the master schedule runs every minute
    rows = tc.run("activity.now", "site=LON")
    say("   salt-run activity.now site=LON:")
    say("     " + "  ".join(c.ljust(10) for c in COLS))
    for row in rows if isinstance(rows, list) else []:
        say("     " + "  ".join(str("-" if row.get(c) is None else row.get(c)).ljust(10) for c in COLS))
    report = tc.run("activity.report", f"path={out / 'active-users.html'}")
    say(f"   salt-run activity.report -> {report.get('path')} (sites {report.get('sites')})")
