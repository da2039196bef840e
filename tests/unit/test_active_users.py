"""
Unit tests for active users against the shift plan: the counts
(``_utils/active_users.py``) over seats ingested through the real
``tc_ingest_batch.Ingestor``, the anomaly rule, the tick over a real SQLite store
(``_utils/active_users_store.py``) and the report (``_utils/tc_report.py``).
The clock is passed in everywhere.
"""

import html.parser

import pytest

import active_users as au
import active_users_store as aus
import deskfleet_store as store
import shift_plan
import tc_assets
import tc_ingest_batch
import tc_report

NOW = 1_796_025_600.0  # 2026-11-30T08:00:00Z
HB = 300
CONF = au.settings({"interval": 60, "percent": 20, "absolute": 2, "buckets": 3, "clear_buckets": 2,
                    "sites": {"LON": ["sales", "support"], "MAN": ["sales"]}})


def payload(seat, seq, ts, site, dept, state, idle):
    facts = {"site": site, "department": dept, "session_state": state, "idle_seconds": idle,
             "session_target": "desk-x" if state == "connected" else None}
    return {"v": 2, "epoch": 1, "seat": seat, "seq": seq, "ts": ts, "reason": "heartbeat", "changed": [],
            "heartbeat": HB, "facts": facts, "sig": "c2ln"}


class Fleet:
    """Seats in a real store, through the real ingestion path (signatures taken as valid)."""

    def __init__(self, path):
        self.conn = store.connect(str(path), dict(tc_assets.MIGRATIONS, **aus.MIGRATIONS))
        self.clock = NOW
        self.ingest = tc_ingest_batch.Ingestor(self.conn, lambda *a: True, clock=lambda: self.clock, rate_limit=10**6)
        self.seq = {}

    def report(self, seat, site="LON", dept="sales", state="connected", idle=5.0, at=None):
        self.clock = at if at is not None else self.clock
        self.seq[seat] = self.seq.get(seat, 0) + 1
        self.ingest.add(f"salt/beacon/{seat}/tc_status/status",
                        payload(seat, self.seq[seat], self.clock, site, dept, state, idle))
        self.ingest.flush()


@pytest.fixture
def fleet(store_db):
    f = Fleet(store_db)
    yield f
    f.conn.close()


def groups(fleet, now=NOW, conf=CONF):
    return au.normalise(au.raw_groups(fleet.conn, now, HB, conf["active_within"]), conf["sites"], conf["max_groups"])


def test_counts_per_group_from_ingested_seats(fleet):
    fleet.report("tc-1")                                  # active
    fleet.report("tc-2", idle=299)                        # active (within 300 s)
    fleet.report("tc-3", idle=301)                        # idle
    fleet.report("tc-4", state="disconnected", idle=1)    # online, no session: neither
    fleet.report("tc-5", dept="support", state="none", idle=None)
    fleet.report("tc-6", at=NOW - 2 * HB)                 # silent for 2 heartbeats: not online
    fleet.clock = NOW
    got = groups(fleet)
    assert got[("LON", "sales")] == {"seats": 5, "online": 4, "connected": 3, "active": 2, "idle": 1}
    assert got[("LON", "support")] == {"seats": 1, "online": 1, "connected": 0, "active": 0, "idle": 0}
    assert got[("LON", "sales")]["active"] + got[("LON", "sales")]["idle"] == got[("LON", "sales")]["connected"]


def test_names_a_seat_invents_fold_into_bounded_groups(fleet):
    fleet.report("tc-1", dept="<script>alert(1)</script>")
    fleet.report("tc-2", site="PAR", dept="sales")
    fleet.report("tc-3", site=None, dept=None)
    got = groups(fleet)
    assert set(got) == {("LON", au.OTHER), (au.OTHER, au.OTHER)}
    assert got[(au.OTHER, au.OTHER)]["seats"] == 2
    # without configured sites: names kept as reported, but at most max_groups of them
    for n in range(5):
        fleet.report(f"tc-x{n}", dept=f"d{n}")
    loose = au.normalise(au.raw_groups(fleet.conn, NOW, HB, 300), {}, 3)
    assert len(loose) == 4 and loose[(au.OTHER, au.OTHER)]["seats"] == 5


@pytest.mark.parametrize("active, expected, out", [
    (10, 10, False), (8, 10, True), (9, 10, False),     # 9: 1 seat < absolute 2
    (98, 100, False),                                   # 2 seats but 2 % < 20 %
    (2, 0, True), (1, 0, False), (0, None, False), (13, 10, True),
])
def test_both_thresholds_must_be_passed(active, expected, out):
    assert au.judge(active, expected, CONF)["out"] is out


def run(states, pattern, start=NOW, interval=60):
    """Feed a string of x (out of band) / . (in band) / _ (missing bucket); return the transitions."""
    state, seen = states, []
    for i, ch in enumerate(pattern):
        if ch == "_":
            continue
        state, change = au.step(state, int(start + i * interval), {"out": ch == "x"}, CONF)
        if change:
            seen.append((i, change))
    return state, seen


def test_one_start_after_k_buckets_and_one_clear_never_a_storm():
    state, seen = run(None, "xx.xxx" + "x" * 50 + "." + "x" + ".." + "x" * 20 + "..")
    assert seen == [(5, "start"), (59, "clear"), (62, "start"), (81, "clear")]
    assert state["state"] == "ok"


def test_a_hole_in_the_series_restarts_the_count_and_reruns_change_nothing():
    _, seen = run(None, "xx___xx")
    assert seen == []
    _, seen = run(None, "x__x_x")  # one or two missed ticks (a slow run) keep the streak
    assert seen == [(5, "start")]
    state, change = au.step(None, int(NOW), {"out": True}, CONF)
    for _ in range(5):  # the same bucket again and again (two ticks in one minute)
        state, change = au.step(state, int(NOW), {"out": True}, CONF)
        assert change is None and state["streak"] == 1


@pytest.mark.parametrize("conf, field", [
    ({"percent": -1}, "percent"), ({"buckets": 0}, "buckets"), ({"interval": 2.5}, "interval"),
    ({"absolute": "5"}, "absolute"), ({"sites": ["LON"]}, "sites"), ({"sites": {"LON": "sales"}}, "sites:LON"),
    ({"plan_file": 3}, "plan_file"), ({"active_within": True}, "active_within"),
])
def test_bad_settings_name_the_field(conf, field):
    with pytest.raises(ValueError, match=f"deskfleet:tc:activity:{field}"):
        au.settings(conf)


PLAN = (
    "site,department,start,end,expected\n"
    "LON,sales,2026-11-30T07:00:00Z,2026-11-30T09:00:00Z,4\n"
    "LON,support,2026-11-30T07:00:00Z,2026-11-30T09:00:00Z,0\n"
).encode()


class Bus:
    def __init__(self):
        self.events, self.up = [], True

    def __call__(self, tag, data):
        if self.up:
            self.events.append((tag, data))
        return self.up


def test_tick_stores_the_bucket_and_alerts_once_at_start_and_once_at_clear(fleet):
    aus.load_plan(fleet.conn, PLAN, "plan.csv", NOW, CONF, HB)
    bus = Bus()
    for n in range(4):
        fleet.report(f"tc-{n}")
    result = aus.tick(fleet.conn, NOW, CONF, HB, bus)
    row = aus.series(fleet.conn, NOW, NOW + 60, site="LON", department="sales")[0]
    assert (row["active"], row["expected"], row["connected"]) == (4, 4, 4)
    assert result["groups"] == 2 and result["transitions"] == [] and bus.events == []
    # two users leave: 2 of 4 (50 %, 2 seats) for 3 buckets -> one start; ticks twice a bucket change nothing
    for n in (0, 1):
        fleet.report(f"tc-{n}", idle=3000, at=NOW + 30)
    for minute in range(1, 8):
        for second in (1, 40):
            aus.tick(fleet.conn, NOW + minute * 60 + second, CONF, HB, bus)
    assert [e[1]["state"] for e in bus.events] == ["start"]
    tag, start = bus.events[0]
    assert tag == au.ALERT_TAG and start["site"] == "LON" and start["department"] == "sales"
    assert (start["active"], start["expected"], start["direction"], start["since"]) == (2, 4, "below", NOW + 60)
    # back at the keyboard: in band for clear_buckets (2) -> one clear
    for n in range(4):  # (all four beat again: one heartbeat is 300 s)
        fleet.report(f"tc-{n}", idle=1, at=NOW + 8 * 60)
    for minute in range(8, 14):
        aus.tick(fleet.conn, NOW + minute * 60 + 1, CONF, HB, bus)
    assert [e[1]["state"] for e in bus.events] == ["start", "clear"]
    assert bus.events[1][1]["bucket"] == NOW + 9 * 60


def test_an_alert_the_bus_did_not_take_is_kept_and_sent_next_tick(fleet):
    aus.load_plan(fleet.conn, PLAN, "plan.csv", NOW, CONF, HB)
    bus = Bus()
    bus.up = False
    results = [aus.tick(fleet.conn, NOW + m * 60, CONF, HB, bus) for m in range(3)]  # nobody there: 0 of 4
    assert results[-1]["undelivered"] == 1 and bus.events == []
    bus.up = True
    assert aus.tick(fleet.conn, NOW + 180, CONF, HB, bus)["undelivered"] == 0
    assert [e[1]["state"] for e in bus.events] == ["start"]
    aus.tick(fleet.conn, NOW + 240, CONF, HB, bus)
    assert len(bus.events) == 1


def test_a_planned_department_with_no_seat_at_all_is_counted_as_zero(fleet):
    aus.load_plan(fleet.conn, PLAN, "plan.csv", NOW, CONF, HB)
    rows = aus.now_view(fleet.conn, NOW, CONF, HB)
    assert [(r["department"], r["active"], r["expected"], r["deviation"]) for r in rows] == [
        ("sales", 0, 4, -4), ("support", 0, 0, 0)]


def test_loading_a_plan_keeps_other_spans_and_cuts_straddling_slots(fleet):
    aus.load_plan(fleet.conn, PLAN, "a.csv", NOW, CONF, HB)
    later = PLAN.replace(b"07:00", b"08:30").replace(b"09:00", b"12:00").replace(b",4\n", b",9\n")
    aus.load_plan(fleet.conn, later, "b.csv", NOW, CONF, HB)
    slots = aus.plan_slots(fleet.conn, 0, 2e10, site="LON", department="sales")
    assert [(s[2] - NOW, s[3] - NOW, s[4]) for s in slots] == [(-3600, 1800, 4), (1800, 4 * 3600, 9)]
    with pytest.raises(shift_plan.PlanError):  # refused: nothing changed
        aus.load_plan(fleet.conn, PLAN.replace(b"sales", b"sails"), "c.csv", NOW, CONF, HB)
    assert aus.plan_slots(fleet.conn, 0, 2e10, site="LON", department="sales") == slots
    assert aus.meta(fleet.conn, "plan")["source"] == "b.csv"


def test_without_configured_sites_the_plan_is_checked_against_seen_departments(fleet):
    conf = au.settings({})
    fleet.report("tc-1", dept="sales")
    with pytest.raises(shift_plan.PlanError, match="row 3, department: unknown department 'support'"):
        aus.load_plan(fleet.conn, PLAN, "plan.csv", NOW, conf, HB, dry_run=True)


def test_hours_roll_up_and_minutes_expire(fleet):
    conf = dict(CONF, minute_days=1, hour_days=2)
    bus = Bus()
    fleet.report("tc-1")
    for m in range(0, 120, 10):
        aus.tick(fleet.conn, NOW + m * 60, conf, HB, bus)
    aus.tick(fleet.conn, NOW + 2 * 3600 + 5, conf, HB, bus)
    hours = aus.series(fleet.conn, NOW, NOW + 7200, hourly=True, site="LON", department="sales")
    assert [(h["hour"] - NOW, h["samples"]) for h in hours] == [(0, 6), (3600, 6)]
    aus.tick(fleet.conn, NOW + 86400 + 3 * 3600, conf, HB, bus)
    assert aus.series(fleet.conn, 0, NOW + 3600) == []          # minutes older than a day: gone
    assert len(aus.series(fleet.conn, 0, 2e10, hourly=True, site="LON", department="sales")) >= 2
    aus.tick(fleet.conn, NOW + 4 * 86400, conf, HB, bus)
    assert aus.series(fleet.conn, 0, NOW + 7200, hourly=True) == []  # hours past hour_days: gone


class Texts(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_report_draws_actual_and_plan_per_site_and_escapes_seat_names():
    points = [(NOW + i * 60, i % 5, None if i > 50 else 3) for i in range(60)]
    rows = [{"site": "<b>LON</b>", "department": "<script>x</script>", "active": 1, "alert": "firing"}]
    page = tc_report.render_activity({"<b>LON</b>": points}, NOW, NOW - 8 * 3600, NOW + 16 * 3600, rows)
    parser = Texts()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags
    assert "&lt;script&gt;" in page and page.count('<path class="actual"') == 1
    assert page.count('<path class="plan"') == 1 and 'class="alert"' in page
