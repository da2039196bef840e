"""
Benchmark: one active-users tick over 10,000 seats in 500 departments (50 sites
x 10), with a plan for every department, in a real SQLite store filled through
the real ingestion path. Target: under 1 s CPU per tick.

Side by side: the baseline reads every seat through ``tc_assets.seats`` (what
``tc_inventory.list`` does) and counts in Python; the tick does one grouped
SQL pass, then stores the bucket, advances 500 anomaly states and rolls up.

    python -m bench.active_users [--seats 10000] [--departments 500] [--ticks 5]

Last line: one JSON object.
"""

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT / "_utils"))

import active_users as au  # noqa: E402
import active_users_store as aus  # noqa: E402
import deskfleet_store as store  # noqa: E402
import tc_assets  # noqa: E402
import tc_ingest_batch  # noqa: E402

HB = 300
NOW = 1_796_025_600.0


def fill(conn, seats, departments):
    ingest = tc_ingest_batch.Ingestor(conn, lambda *a: True, batch_size=10**6, clock=lambda: NOW, rate_limit=10**6)
    for n in range(seats):
        dept = n % departments
        facts = {"site": f"S{dept // 10:02d}", "department": f"d{dept % 10}", "session_state": "connected",
                 "session_target": f"desk-{n}", "idle_seconds": float(n % 900)}
        ingest.add(f"salt/beacon/tc-{n:05d}/tc_status/status",
                   {"v": 2, "epoch": 1, "seat": f"tc-{n:05d}", "seq": 1, "ts": NOW, "reason": "start",
                    "changed": [], "heartbeat": HB, "facts": facts, "sig": "c2ln"})
    ingest.flush()


def plan_csv(departments):
    rows = ["site,department,start,end,expected"]
    for dept in range(departments):
        rows.append(f"S{dept // 10:02d},d{dept % 10},2026-11-30T00:00:00Z,2026-12-01T00:00:00Z,20")  # ~7 of 20 active: every group alerts at tick 3
    return ("\n".join(rows) + "\n").encode()


def baseline(conn, now, conf):
    """Every seat as tc_inventory.list reads it, counted in Python."""
    counts = collections.defaultdict(collections.Counter)
    for seat in tc_assets.seats(conn, now, HB, 3):
        group = counts[(seat["site"], seat["department"])]
        group["seats"] += 1
        if seat["status"] == "online":
            group["online"] += 1
            if seat["session_state"] == "connected":
                group["connected"] += 1
                group["active" if (seat["idle_seconds"] or 0) <= conf["active_within"] else "idle"] += 1
    return counts


def cpu(fn, ticks):
    spent = []
    for i in range(ticks):
        t0 = time.process_time()
        fn(i)
        spent.append(time.process_time() - t0)
    return sorted(spent)[len(spent) // 2], max(spent)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seats", type=int, default=10_000)
    parser.add_argument("--departments", type=int, default=500)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-au-") as tmp:
        conn = store.connect(str(pathlib.Path(tmp) / "tc.sqlite"), dict(tc_assets.MIGRATIONS, **aus.MIGRATIONS))
        fill(conn, args.seats, args.departments)
        conf = au.settings({})
        aus.load_plan(conn, plan_csv(args.departments), "bench.csv", NOW, conf, HB)
        fired = []
        base_med, base_max = cpu(lambda i: baseline(conn, NOW + i * 60, conf), args.ticks)
        tick_med, tick_max = cpu(lambda i: aus.tick(conn, NOW + i * 60, conf, HB, lambda t, d: fired.append(d) or True),
                                 args.ticks)
        groups = len(aus.now_view(conn, NOW, conf, HB))
        rows = len(aus.series(conn, 0, 2e10))
        conn.close()
    print(f"{args.seats} seats, {groups} groups, {args.ticks} ticks")
    print(f"  baseline (tc_assets.seats + Python count): median {base_med * 1000:.0f} ms CPU, max {base_max * 1000:.0f} ms")
    print(f"  activity tick (grouped SQL, store, 500 states): median {tick_med * 1000:.0f} ms CPU, max {tick_max * 1000:.0f} ms")
    print(json.dumps({"bench": "active_users", "seats": args.seats, "groups": groups, "ticks": args.ticks,
                      "tick_cpu_s_median": round(tick_med, 4), "tick_cpu_s_max": round(tick_max, 4),
                      "baseline_cpu_s_median": round(base_med, 4), "series_rows": rows,
                      "alerts_fired": len(fired), "under_1s": tick_max < 1.0}))
    return 0 if tick_max < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
