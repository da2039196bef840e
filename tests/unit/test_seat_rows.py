"""seat_rows: the pure logic behind ``tc_inventory.list`` (projection, sort, limit, filters, times, usage errors)."""

import datetime

import pytest

import seat_rows
import tc_assets

KNOWN = seat_rows.known_fields(tc_assets.SEAT_COLUMNS + ("ips",))
UTC2 = datetime.timezone(datetime.timedelta(hours=2))


def seat(n, site="LON", status="online", idle=10, firmware="13.1.0"):
    return {
        "seat": f"tc-{n:04d}", "site": site, "status": status, "firmware": firmware, "ips": ["10.0.0.%d" % n],
        "session_state": "connected", "session_target": f"desk-{n:04d}", "idle_seconds": idle,
        "last_seen": 1_800_000_000.5 + n, "first_seen": 1_700_000_000.0, "last_change": None, "reported_at": 1.0,
        "serial": f"S{n}", "last_seen_ago": 3.0,
    }


def req(**kw):
    return seat_rows.request(known=KNOWN, **kw)


def test_compact_default_row_has_the_eight_fields_and_iso_times():
    row = seat_rows.answer([seat(1)], req(), tz=UTC2)[0]
    assert list(row) == list(seat_rows.DEFAULT_FIELDS)
    assert row == {"seat": "tc-0001", "site": "LON", "status": "online", "firmware": "13.1.0", "ip": "10.0.0.1",
                   "session": "connected desk-0001", "idle": 10, "last_seen": "2027-01-15T10:00:01+02:00"}


def test_iso_uses_the_local_offset_by_default_and_round_trips():
    text = seat_rows.iso(1_800_000_000.9)
    assert datetime.datetime.fromisoformat(text).timestamp() == 1_800_000_000
    assert datetime.datetime.fromisoformat(text).utcoffset() is not None
    assert seat_rows.iso(None) is None


def test_fields_all_is_the_full_record_with_iso_times():
    row = seat_rows.answer([seat(1)], req(fields="all"), tz=datetime.timezone.utc)[0]
    assert row["serial"] == "S1" and row["ips"] == ["10.0.0.1"] and row["last_seen_ago"] == 3.0
    assert row["first_seen"] == "2023-11-14T22:13:20+00:00" and row["last_change"] is None
    assert row["reported_at"] == "1970-01-01T00:00:01+00:00"


def test_fields_sort_limit():
    seats = [seat(1, idle=5), seat(2, idle=500), seat(3, idle=50), seat(4, idle=None)]
    got = seat_rows.answer(seats, req(fields="seat,idle", sort="-idle", limit=3))
    assert got == [{"seat": "tc-0002", "idle": 500}, {"seat": "tc-0003", "idle": 50}, {"seat": "tc-0001", "idle": 5}]
    # missing values last in both directions
    assert [r["seat"] for r in seat_rows.answer(seats, req(fields="seat", sort="idle"))] == [
        "tc-0001", "tc-0003", "tc-0002", "tc-0004"]
    assert seat_rows.answer(seats, req(fields=["seat"], limit="2")) == [{"seat": "tc-0001"}, {"seat": "tc-0002"}]


def test_sort_by_text_is_case_insensitive_with_seat_tiebreak():
    seats = [seat(3, site="man"), seat(1, site="MAN"), seat(2, site="Lon")]
    assert [r["seat"] for r in seat_rows.answer(seats, req(sort="site"))] == ["tc-0002", "tc-0001", "tc-0003"]


def test_counts_by_site_and_status():
    seats = [seat(1), seat(2, site="MAN", status="offline"), seat(3, site=None, status="stale")]
    assert seat_rows.answer(seats, req(counts=True)) == {
        "total": 3, "by_status": {"online": 1, "stale": 1, "offline": 1}, "by_site": {"LON": 1, "MAN": 1, "unknown": 1},
        "by_firmware": {"13.1.0": 3}}


def test_empty_answer_says_so():
    assert seat_rows.answer([], req(site="XYZ")) == {"seats": [], "note": "no seat matches site=XYZ"}
    assert seat_rows.answer([], req()) == {"seats": [], "note": "no seats in the inventory yet"}
    assert seat_rows.answer([], req(counts=True))["note"] == "no seats in the inventory yet"


def test_filters_normalised_for_case_insensitive_match():
    assert req(status="OffLine", site=" lon ", idle_over="60")["filters"] == {
        "status": "offline", "site": "lon", "idle_over": 60.0}


@pytest.mark.parametrize("kw, param", [
    ({"fields": "seat,colour"}, "fields"),
    ({"fields": ""}, None),
    ({"fields": "seat,,ip"}, "fields"),
    ({"fields": 12}, "fields"),
    ({"limit": 0}, "limit"),
    ({"limit": -3}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": True}, "limit"),
    ({"limit": 2.5}, "limit"),
    ({"sort": "-colour"}, "sort"),
    ({"sort": 3}, "sort"),
    ({"status": "sleeping"}, "status"),
    ({"idle_over": "soon"}, "idle_over"),
    ({"idle_over": -1}, "idle_over"),
    ({"idle_over": "nan"}, "idle_over"),
    ({"site": ["LON"]}, "site"),
    ({"counts": "maybe"}, "counts"),
])
def test_usage_errors_name_the_parameter(kw, param):
    if param is None:  # an empty fields= is the default, not an error
        assert req(**kw)["fields"] == seat_rows.DEFAULT_FIELDS
        return
    with pytest.raises(seat_rows.UsageError) as err:
        req(**kw)
    assert err.value.param == param and str(err.value).startswith(f"{param}: ")
