"""
Unit tests for ``_utils/metrics_collect.py``: the pure collector behind the
``deskfleet_metrics`` engine (bounded labels, level-triggered reads of the store).
"""

import deskfleet_store as store
import maintenance_journal
import metrics_collect as mc
import rollout_store
import tc_assets

NOW = 1_000_000.0
HB = 60.0


def _seat(conn, seat, site, last_seen):
    conn.execute(
        "INSERT INTO seats (seat, site, seq, reported_at, last_reason, first_seen, last_seen)"
        " VALUES (?, ?, 1, ?, 'heartbeat', ?, ?)", (seat, site, last_seen, last_seen, last_seen))


def _tc_store(tmp_path):
    conn = store.connect(str(tmp_path / "tc.sqlite"), tc_assets.MIGRATIONS)
    _seat(conn, "tc-1", "LON", NOW - 10)            # online
    _seat(conn, "tc-2", "lon", NOW - 2 * HB)        # stale, site spelled otherwise
    _seat(conn, "tc-3", "MAN", NOW - 10 * HB)       # offline
    _seat(conn, "tc-4", "<script>x", NOW - 10)      # hostile site: other
    _seat(conn, "tc-5", None, NOW - 10)             # no site: other
    conn.executemany("INSERT INTO ingest_counters (name, value) VALUES (?, ?)",
                     [("accepted", 40), ("forged", 7), ("malformed", 2), ("flagged", 1), ("weird", 3)])
    conn.executemany(
        "INSERT INTO ingest_reject_stats (minute, sender, claimed, reason, count) VALUES (?, ?, ?, ?, ?)",
        [(int(NOW // 60), "tc-9", "tc-1", "forged", 5), (int(NOW // 60) - 1, "tc-8", "*", "forged", 2),
         (int((NOW - 3600) // 60), "tc-9", "tc-1", "forged", 100), (int(NOW // 60), "tc-9", "", "malformed", 9)])
    conn.commit()
    return conn


def _by(samples, **match):
    return [v for labels, v in samples if all(labels.get(k) == x for k, x in match.items())]


def test_seats_by_status_and_only_configured_sites(tmp_path):
    conn = _tc_store(tmp_path)
    sites = mc.known_sites(["LON", "MAN", "bad site!"])
    got = mc.collect_tc(conn, NOW, HB, 3, sites, 300)["deskfleet.seats"]
    assert {labels["site"] for labels, _ in got} == {"LON", "MAN", "other"}  # never a seat id, never hostile text
    assert _by(got, site="LON", status="online") == [1]
    assert _by(got, site="LON", status="stale") == [1]
    assert _by(got, site="MAN", status="offline") == [1]
    assert _by(got, site="other", status="online") == [2]
    assert sum(v for _, v in got) == 5
    assert len(got) == 3 * 3  # every status x site present, zeros included: series never vanish


def test_without_configured_sites_every_seat_is_other(tmp_path):
    got = mc.collect_tc(_tc_store(tmp_path), NOW, HB, 3, mc.known_sites(None), 300)["deskfleet.seats"]
    assert {labels["site"] for labels, _ in got} == {"other"} and sum(v for _, v in got) == 5


def test_ingest_totals_are_bounded_results(tmp_path):
    got = mc.collect_tc(_tc_store(tmp_path), NOW, HB, 3, {}, 300)["deskfleet.ingest.events"]
    assert _by(got, result="accepted") == [40] and _by(got, result="forged") == [7]
    assert _by(got, result="malformed") == [2] and _by(got, result="other") == [3]
    assert {labels["result"] for labels, _ in got} == set(mc.INGEST_RESULTS) | {"other"}


def test_forged_recent_counts_only_the_window(tmp_path):
    got = mc.collect_tc(_tc_store(tmp_path), NOW, HB, 3, {}, 300)["deskfleet.ingest.forged.recent"]
    assert got == [({}, 7)]  # 5 + 2 now; the 100 an hour ago and the malformed 9 are not forged-recent


def test_burst_fires_once_when_it_starts_and_once_when_it_clears():
    burst = mc.Burst(10)
    assert [burst.update(c) for c in (0, 9, 10, 50, 12, 3, 2, 11)] == [None, None, "start", None, None, "clear",
                                                                       None, "start"]
    assert mc.Burst(0).update(10 ** 6) is None  # 0 disables


def test_pool_samples_one_hot_health_and_drained():
    status = {"sales": {"target": 3, "ready": 2, "in_flight": 1, "taken": 4, "health": "degraded"},
              "gpu": {"target": 0, "drained": True, "health": "ok"}, "Bad Name!": {"ready": 9}}
    got = mc.pool_samples(status)
    assert _by(got["deskfleet.pool.desktops"], pool="sales", state="ready") == [2]
    assert _by(got["deskfleet.pool.desktops"], pool="sales", state="in_flight") == [1]
    assert _by(got["deskfleet.pool.health"], pool="sales", health="degraded") == [1]
    assert sum(_by(got["deskfleet.pool.health"], pool="sales")) == 1
    assert _by(got["deskfleet.pool.health"], pool="gpu", health="drained") == [1]
    assert {labels["pool"] for labels, _ in got["deskfleet.pool.target"]} == {"sales", "gpu"}


def test_rollouts_and_maintenance_by_state(tmp_path):
    conn = store.connect(str(tmp_path / "vm.sqlite"), {**rollout_store.MIGRATIONS, **maintenance_journal.MIGRATIONS})
    rid = rollout_store.create(conn, software="7zip", version="1", entry={}, target="d-*", tgt_type="glob",
                               minions=["d-1", "d-2", "d-3"], batch="1", max_fail=0, start=NOW, end=NOW + 600, now=NOW)
    conn.execute("UPDATE rollout_minions SET state = 'failed' WHERE minion = 'd-1'")
    conn.execute("UPDATE rollouts SET state = 'halted' WHERE id = ?", (rid,))
    roll = maintenance_journal.create_roll(conn, {"hosts": ["h1", "h2"], "batch": 1}, NOW)
    maintenance_journal.set_roll_state(conn, roll, "stopped", NOW)
    conn.commit()
    got = {**mc.collect_rollouts(conn), **mc.collect_maintenance(conn)}
    assert _by(got["deskfleet.rollouts"], state="halted") == [1] and _by(got["deskfleet.rollouts"], state="running") == [0]
    assert _by(got["deskfleet.rollout.minions"], state="failed") == [1]
    assert _by(got["deskfleet.rollout.minions"], state="pending") == [2]
    assert _by(got["deskfleet.maintenance.rolls"], state="stopped") == [1]


def test_one_failing_source_does_not_hide_the_others():
    def broken():
        raise OSError("store gone")

    snap, errors = mc.snapshot({"seats": lambda: {"deskfleet.seats": [({"status": "online", "site": "other"}, 1)]},
                                "pools": broken}, NOW)
    assert snap["deskfleet.seats"] == [({"status": "online", "site": "other"}, 1)]
    assert sorted(snap["deskfleet.metrics.source_up"], key=lambda s: s[0]["source"]) == [
        ({"source": "pools"}, 0), ({"source": "seats"}, 1)]
    assert "store gone" in errors["pools"] and snap["deskfleet.metrics.collected"] == [({}, NOW)]
