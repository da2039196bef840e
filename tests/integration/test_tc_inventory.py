"""
Thin-client asset status end to end: beacon on real minions → tc master event
bus → tc_ingest engine → SQLite store → tc_inventory runner.
"""

import datetime
import json
import pathlib
import time

import pytest

import deskfleet_store
from harness import tcroot
from harness.lab import wait_for
from tests.integration.test_password_faults import Alerts


def run(master, fun, *args):
    ret = master.salt_run_cli(timeout=60).run(fun, *args)
    assert ret.returncode == 0, ret
    return ret.data


def seats(master, *args):
    data = run(master, "tc_inventory.list", "fields=all", *args)
    return {s["seat"]: s for s in data} if isinstance(data, list) else {}


def epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def test_beacon_reports_reach_inventory(tc_master, thin_clients):
    # online = heard within 1.5 heartbeats (6 s): on a loaded box one listing may miss it, the next beat fixes it
    def both_and_online():
        found = seats(tc_master)
        return len(found) == 2 and found["tc-0001"]["status"] == "online" and found

    found = wait_for(both_and_online, timeout=120, what="2 seats in inventory, tc-0001 online")
    one, two = found["tc-0001"], found["tc-0002"]
    assert one["serial"] == "TC000001" and one["mac"] == "52:54:00:00:00:01"
    assert one["ips"] == ["10.20.0.3"] and one["firmware"] == "13.1.0" and one["site"] == "LON"
    assert one["session_target"] == "desk-0001" and one["session_state"] == "connected"
    assert two["firmware"] == "12.9.4" and two["session_state"] == "none"
    assert two["idle_seconds"] >= 3600
    assert one["uptime"] > 0


def test_filters_and_show(tc_master, thin_clients, tc_roots):
    wait_for(lambda: len(seats(tc_master)) == 2, what="2 seats")
    assert list(seats(tc_master, "site=MAN")) == ["tc-0002"]
    assert list(seats(tc_master, "firmware=13.1.0")) == ["tc-0001"]
    # tc-0001's user is at the keyboard now (the package's seats may have been up for half an hour)
    tcroot.touch_input(tc_roots["tc-0001"], 5)
    wait_for(lambda: list(seats(tc_master, "idle_over=1800")) == ["tc-0002"], timeout=120, what="only tc-0002 idle")
    assert list(seats(tc_master, "status=offline")) == []
    shown = run(tc_master, "tc_inventory.show", "tc-0002")
    assert shown["seat"] == "tc-0002" and shown["serial"] == "TC000002"
    for bad in (("tc_inventory.show", "tc-9999"), ("tc_inventory.list", "status=sleeping")):
        ret = tc_master.salt_run_cli(timeout=60).run(*bad)
        assert ret.returncode == 1 and "error" in ret.data, ret


def test_compact_rows_fields_sort_limit_counts_and_empty_answer(tc_master, thin_clients):
    wait_for(lambda: len(seats(tc_master)) == 2, what="2 seats")
    rows = run(tc_master, "tc_inventory.list")
    assert [r["seat"] for r in rows] == ["tc-0001", "tc-0002"]
    one = rows[0]
    assert list(one) == ["seat", "site", "status", "firmware", "ip", "session", "idle", "last_seen"], one
    assert (one["site"], one["firmware"], one["ip"], one["session"]) == ("LON", "13.1.0", "10.20.0.3", "connected desk-0001")
    seen = datetime.datetime.fromisoformat(one["last_seen"])
    assert seen.utcoffset() is not None and abs(seen.timestamp() - time.time()) < 120, one
    # case-insensitive filters, projection, descending sort, limit
    assert run(tc_master, "tc_inventory.list", "site=man", "fields=seat,site") == [{"seat": "tc-0002", "site": "MAN"}]
    assert run(tc_master, "tc_inventory.list", "sort=-idle", "limit=1", "fields=seat") == [{"seat": "tc-0002"}]
    counts = run(tc_master, "tc_inventory.list", "counts=True")
    assert counts["total"] == 2 and counts["by_site"] == {"LON": 1, "MAN": 1}, counts
    assert sum(counts["by_status"].values()) == 2
    # an empty answer says so
    assert run(tc_master, "tc_inventory.list", "site=XYZ") == {"seats": [], "note": "no seat matches site=XYZ"}
    # a usage error names the parameter and exits 1
    for bad, param in ((("fields=seat,colour",), "fields"), (("limit=0",), "limit"), (("sort=-colour",), "sort")):
        ret = tc_master.salt_run_cli(timeout=60).run("tc_inventory.list", *bad)
        assert ret.returncode == 1 and ret.data["error"].startswith(f"{param}: "), ret
        assert ret.data["parameter"] == param, ret


def test_report_never_creates_directories(tc_master, thin_clients, tmp_path):
    target = tmp_path / "not-there" / "r.html"
    ret = tc_master.salt_run_cli(timeout=60).run("tc_inventory.report", f"path={target}")
    assert ret.returncode == 1 and ret.data["parameter"] == "path", ret
    assert not target.parent.exists()


def test_firmware_change_is_reported(tc_master, thin_clients, tc_roots):
    wait_for(lambda: "tc-0001" in seats(tc_master), what="tc-0001")
    changed_at = time.time()
    tcroot.set_firmware(tc_roots["tc-0001"], "13.2.0")
    updated = wait_for(
        lambda: seats(tc_master, "firmware=13.2.0").get("tc-0001"), timeout=60, what="firmware 13.2.0"
    )
    # heartbeats carry every fact too, so the new firmware alone proves nothing about change detection:
    # only a `change` event moves last_change (heartbeats keep it), and tc-0002, unchanged, keeps its own
    # times are ISO 8601 to the second: compare with the second of the change
    assert epoch(updated["last_change"]) >= int(changed_at), (updated, changed_at)
    assert epoch(seats(tc_master)["tc-0002"]["last_change"]) < int(changed_at)


def test_offline_after_missed_heartbeats(tc_master, thin_clients):
    wait_for(lambda: seats(tc_master, "status=online").get("tc-0002"), timeout=120, what="tc-0002 online")
    minion = thin_clients["tc-0002"]
    minion.terminate()
    try:
        # heartbeat 4 s, offline after 3 missed: offline within ~12 s of the last beat; in the same listing the
        # still-beating tc-0001 is online (6 s window: on a loaded box one listing may catch it stale)
        def only_two_offline():
            found = seats(tc_master)
            return found["tc-0002"]["status"] == "offline" and found["tc-0001"]["status"] == "online"

        wait_for(only_two_offline, timeout=300, what="tc-0002 offline while tc-0001 online")
    finally:
        minion.start()
    wait_for(lambda: seats(tc_master, "status=online").get("tc-0002"), timeout=120, what="tc-0002 back online")


def test_forged_and_malformed_events_are_counted_not_stored(tc_master, thin_clients):
    """tc-0001 (a real, accepted thin client) tries to overwrite tc-0002's seat."""
    before = wait_for(lambda: seats(tc_master).get("tc-0002"), what="tc-0002")
    counters = run(tc_master, "tc_inventory.summary")["ingest"]
    cli = tc_master.salt_cli(timeout=60)
    forged = {
        "v": 1, "seat": "tc-0002", "seq": 999, "ts": time.time() + 3600, "reason": "change",
        "changed": ["firmware"], "heartbeat": 4, "sig": "Zm9yZ2Vk",
        "facts": {"firmware": "0.0.0-pwned", "serial": "EVIL", "session_state": "none"},
    }
    import json

    ret = cli.run("event.send", "salt/beacon/tc-0002/tc_status/status", f"data={json.dumps(forged)}", minion_tgt="tc-0001")
    assert ret.returncode == 0 and ret.data is True, ret
    ret = cli.run("event.send", "salt/beacon/tc-0001/tc_status/bogus", 'data={"v": 1}', minion_tgt="tc-0001")
    assert ret.returncode == 0, ret

    def counted():
        now = run(tc_master, "tc_inventory.summary")["ingest"]
        return (
            now.get("forged", 0) > counters.get("forged", 0)
            and now.get("malformed", 0) > counters.get("malformed", 0)
            and now
        )

    wait_for(counted, timeout=300, what="forged and malformed counters to rise")
    rejects = run(tc_master, "tc_inventory.summary")["recent_rejects"]
    # never blame the victim: the forgery claims tc-0002, its sender is unproven
    assert any(r["reason"] == "forged" and r["sender"] is None and r["claimed"] == "tc-0002" for r in rejects)
    assert any(r["reason"] == "malformed" for r in rejects)
    after = run(tc_master, "tc_inventory.show", "tc-0002")
    assert after["firmware"] == before["firmware"] == "12.9.4"
    assert after["serial"] == "TC000002"
    # the pipeline keeps going: tc-0002's own heartbeats still land
    wait_for(lambda: run(tc_master, "tc_inventory.show", "tc-0002")["last_seen"] != after["last_seen"], timeout=300, what="next heartbeat")


@pytest.fixture
def replaced_store(tc_master):
    """The store's marker names another store (as after the file was swapped): every open is refused; restored after."""
    path = deskfleet_store.default_path(tc_master.config, "tc")
    marker = pathlib.Path(deskfleet_store.marker_path(path))
    wait_for(marker.exists, timeout=120, what="the tc store's marker")
    saved = marker.read_bytes()
    marker.write_text(json.dumps({"store_id": "0" * 16, "created_at": 0}))
    try:
        yield path
    finally:
        marker.write_bytes(saved)


@pytest.mark.parametrize("args", [["tc_inventory.list"], ["seat.retire", "tc-0002", "test=True"]], ids=lambda a: a[0])
def test_a_store_fault_is_an_error_exit_1_and_an_alert_never_a_traceback(tc_master, thin_clients, replaced_store, args):
    with Alerts(tc_master) as alerts:
        ret = tc_master.salt_run_cli(timeout=120).run(*args)
        wait_for(lambda: alerts.events, timeout=300, what="a deskfleet/alert/store event")
    assert ret.returncode == 1, ret
    assert "Traceback" not in ret.stdout + ret.stderr, ret
    assert ret.data["retcode"] == 1 and ret.data["store_fault"] == "replaced" and replaced_store in ret.data["error"], ret
    # the master's scheduled activity.tick may hit the replaced store first and alert too
    assert any(e["runner"] == args[0] and e["fault"] == "replaced" for e in alerts.events), alerts.events
