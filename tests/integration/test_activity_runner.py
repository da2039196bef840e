"""
Active users against the shift plan end to end: real thin-client minions with
real beacons → tc master bus → tc_ingest engine → store → the master schedule's
``activity.tick`` (never called by hand here) → series, alerts on the bus →
``activity.*`` runners. A tc master of its own, with 5 s buckets so K
consecutive buckets pass in seconds.
"""

import datetime
import threading

import pytest
import salt.utils.event

from harness import saltconf, tcroot
from harness.lab import wait_for
from tests.integration.conftest import enrolled_minion
from tests.support.minions import running as minions_running

HEARTBEAT = 4
INTERVAL = 5
SEATS = {  # seat: (department, input idle seconds)
    "tc-au01": ("sales", 2),
    "tc-au02": ("sales", 2),
    "tc-au03": ("support", 3600),
}


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def plan_csv(sales, start, hours=3):
    end = start + hours * 3600
    return (f"site,department,start,end,expected\nLON,sales,{_iso(start)},{_iso(end)},{sales}\n"
            f"LON,support,{_iso(start)},{_iso(end)},0\n")


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "shift_plan.csv"
    start = int(datetime.datetime.now(datetime.timezone.utc).timestamp() // 3600 * 3600) - 3600
    path.write_text(plan_csv(2, start))
    return path


@pytest.fixture(scope="module")
def master(salt_factories, lab_etc, plan_file):
    activity = {"interval": INTERVAL, "active_within": 60, "percent": 20, "absolute": 1, "buckets": 2,
                "clear_buckets": 2, "plan_file": str(plan_file), "sites": {"LON": ["sales", "support"]}}
    conf = saltconf.lab_master_config("tc", lab_etc, heartbeat=HEARTBEAT, beacon_interval=1, activity=activity)
    conf["schedule"]["activity-tick"]["seconds"] = INTERVAL  # the shipped entry, on the test's bucket
    factory = salt_factories.salt_master_daemon("tc-activity", overrides=conf, on_auth_event_callback=lambda *a: None)
    with factory.started():
        yield factory


class Bus:
    """Every deskfleet alert on the master bus, from fixture start on."""

    def __init__(self, master):
        self.events, self.stop = [], threading.Event()
        self.bus = salt.utils.event.get_master_event(master.config, master.config["sock_dir"], listen=True)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            ev = self.bus.get_event(wait=0.2, full=True)
            if ev and ev["tag"].startswith("deskfleet/alert/"):
                self.events.append((ev["tag"], ev["data"]))

    def of(self, tag):
        return [data for t, data in self.events if t == tag]

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.bus.destroy()


@pytest.fixture(scope="module")
def bus(master):
    listener = Bus(master)
    yield listener
    listener.close()


class Typists:
    """Users at their keyboards: the input device of each typing seat is touched every 2 s."""

    def __init__(self, roots):
        self.roots, self.typing, self.stop = roots, set(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(2):
            for seat in list(self.typing):
                tcroot.touch_input(self.roots[seat], 0)

    def leave(self, seat, idle):
        self.typing.discard(seat)
        tcroot.touch_input(self.roots[seat], idle)

    def close(self):
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def seats(master, bus, tmp_path_factory):
    base = tmp_path_factory.mktemp("au-roots")
    roots = {seat: tcroot.make(base / seat, 200 + n, site="LON", department=dept, session=(f"desk-{n}", "connected"),
                               idle=idle) for n, (seat, (dept, idle)) in enumerate(SEATS.items())}
    tokens = tmp_path_factory.mktemp("au-tokens")
    minions = [enrolled_minion(master, seat, root, tokens) for seat, root in roots.items()]
    typists = Typists(roots)
    typists.typing.update(s for s, (_, idle) in SEATS.items() if idle < 60)
    try:
        with minions_running(master, minions, "tc-au*"):
            yield typists
    finally:
        typists.close()


def run(master, fun, *args, code=0):
    ret = master.salt_run_cli(timeout=120).run(fun, *args)
    assert ret.returncode == code, ret
    return ret.data


def now_rows(master):
    rows = run(master, "activity.now", "site=LON")
    return {r["department"]: r for r in rows} if isinstance(rows, list) else {}


def measures(row):
    return {k: row[k] for k in ("online", "connected", "active", "idle", "expected")}


def test_counts_from_real_beacons_match_the_plan_and_the_schedule_stores_them(master, seats):
    last = {}

    def settled():
        rows = now_rows(master)
        last.update(rows=rows, plan=run(master, "activity.plan", "site=LON"))
        want = {"sales": {"online": 2, "connected": 2, "active": 2, "idle": 0, "expected": 2},
                "support": {"online": 1, "connected": 1, "active": 0, "idle": 1, "expected": 0}}
        # start-up alerts (seats come up one by one on a loaded box) clear after clear_buckets in band
        in_band = rows.get("sales", {}).get("alert") == "ok"
        return {d: measures(rows[d]) for d in want if d in rows} == want and in_band and rows

    try:
        rows = wait_for(settled, timeout=240, interval=1, what="LON sales 2 active of 2 planned, support 1 idle, no alert")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: last seen {last}") from None
    assert rows["sales"]["deviation"] == 0 and rows["sales"]["alert"] == "ok"
    # the same figures, seat by seat, from the inventory the beacons filled
    seats_now = {s["seat"]: s for s in run(master, "tc_inventory.list", "site=LON", "fields=all")}
    assert {s: seats_now[s]["department"] for s in SEATS} == {s: d for s, (d, _) in SEATS.items()}
    assert seats_now["tc-au03"]["idle_seconds"] >= 3600 and seats_now["tc-au01"]["idle_seconds"] < 60
    # the master schedule (every 5 s) writes buckets on its own: two consecutive ones with the settled figures
    def stored():
        got = run(master, "activity.series", "site=LON", "department=sales", "hours=0.1")
        good = [r for r in got if r["active"] == 2 and r["expected"] == 2 and r["connected"] == 2]
        return len(good) >= 2 and good

    good = wait_for(stored, timeout=300, interval=1, what="scheduled buckets in the series")
    assert all(r["bucket"] % INTERVAL == 0 for r in good)
    plan = run(master, "activity.plan", "site=LON")
    assert plan["loaded"]["source"] == str(master.config["deskfleet"]["tc"]["activity"]["plan_file"])
    assert {(s["department"], s["expected"]) for s in plan["slots"]} == {("sales", 2), ("support", 0)}


def test_one_alert_when_a_user_leaves_and_one_when_back(master, seats, bus):
    # settled: 2 active and no alert left over from the start-up (seats came up one by one)
    wait_for(lambda: (r := now_rows(master).get("sales", {})).get("active") == 2 and r["alert"] == "ok",
             timeout=180, interval=1, what="2 active in sales, no alert")
    before = len(bus.of("deskfleet/alert/active_users"))
    seats.leave("tc-au02", 3600)  # tc-au02's user walks away
    started = wait_for(lambda: bus.of("deskfleet/alert/active_users")[before:], timeout=120, interval=0.5,
                       what="the start alert")
    event = started[0]
    assert (event["state"], event["site"], event["department"]) == ("start", "LON", "sales")
    assert (event["active"], event["expected"], event["direction"]) == (1, 2, "below")
    # still out of band for many more buckets: no second event (no storm)
    first = event["bucket"]
    wait_for(lambda: any(r["bucket"] >= first + 4 * INTERVAL and r["active"] == 1 for r in
                         run(master, "activity.series", "site=LON", "department=sales", "hours=0.1")),
             timeout=90, interval=1, what="4 more buckets out of band")
    assert [e["state"] for e in bus.of("deskfleet/alert/active_users")[before:]] == ["start"]
    assert now_rows(master)["sales"]["alert"] == "firing"
    seats.typing.add("tc-au02")  # back at the keyboard
    wait_for(lambda: len(bus.of("deskfleet/alert/active_users")[before:]) >= 2, timeout=120, interval=0.5,
             what="the clear alert")
    cleared = bus.of("deskfleet/alert/active_users")[before + 1]
    assert (cleared["state"], cleared["department"], cleared["active"]) == ("clear", "sales", 2)
    wait_for(lambda: any(r["bucket"] >= cleared["bucket"] + 4 * INTERVAL for r in
                         run(master, "activity.series", "site=LON", "department=sales", "hours=0.1")),
             timeout=90, interval=1, what="4 more buckets in band")
    assert [e["state"] for e in bus.of("deskfleet/alert/active_users")[before:]] == ["start", "clear"]
    # support (0 planned, 0 active) never alerted
    assert all(e["department"] == "sales" for e in bus.of("deskfleet/alert/active_users"))


def test_bad_plans_are_refused_with_row_and_field_and_the_old_plan_stays(master, seats, bus, plan_file, tmp_path):
    good = plan_file.read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(good + "LON,billing,2026-11-30T08:00:00Z,2026-11-30T09:00:00Z,3\n")
    ret = run(master, "activity.plan_check", str(bad), code=1)
    assert any(e["row"] == 4 and e["field"] == "department" for e in ret["errors"]), ret
    assert "unknown department 'billing'" in ret["error"]
    assert run(master, "activity.plan_load", "/nonexistent/plan.csv", code=1)["error"].startswith("cannot read")
    # the exported file the schedule watches turns bad: one shift_plan alert, the loaded plan stays
    before = len(bus.of("deskfleet/alert/shift_plan"))
    gap = good.replace(",2\n", ",2\n", 1).splitlines()
    gap.insert(2, gap[1].replace(",2", ",5").replace("LON,sales,", "LON,sales,x", 1))
    plan_file.write_text("\n".join(gap) + "\n")
    try:
        alerts = wait_for(lambda: bus.of("deskfleet/alert/shift_plan")[before:], timeout=300, what="shift_plan alert")
        assert any(e["field"] == "start" and e["row"] == 3 for e in alerts[0]["errors"]), alerts
        assert run(master, "activity.plan", "site=LON")["rejected"]["errors"]
        wait_for(lambda: run(master, "activity.series", "site=LON", "hours=0.01"), timeout=300, what="a later tick")
        assert len(bus.of("deskfleet/alert/shift_plan")[before:]) == 1  # once per file content, not per tick
        assert now_rows(master)["sales"]["expected"] == 2
    finally:
        plan_file.write_text(good)
    wait_for(lambda: run(master, "activity.plan", "site=LON")["rejected"] is None, timeout=300, what="rejection cleared")


def test_report_draws_actual_against_planned_per_site(master, seats, tmp_path):
    wait_for(lambda: run(master, "activity.series", "site=LON", "hours=0.1"), timeout=300, what="a stored bucket")
    out = run(master, "activity.report", f"path={tmp_path / 'active.html'}")
    page = (tmp_path / "active.html").read_text()
    assert out["sites"] == ["LON"] and out["buckets"] >= 1
    assert '<path class="actual"' in page and '<path class="plan"' in page and "<h2>LON</h2>" in page
