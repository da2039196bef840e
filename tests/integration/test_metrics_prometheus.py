"""
deskfleet metrics end to end (README "Metrics and alerts"): a real tc master from the shipped
config runs the ``deskfleet_metrics`` engine; real thin clients beacon; a real Prometheus
(Debian package) scrapes it and the test reads its HTTP API. Salt's own ``metrics:`` block is
enabled on the same master with its own port: both targets are up, neither serves the other's
series. A burst of forged beacons fires ``deskfleet/alert/ingest``.
"""

import json
import time

import pytest

from harness import saltconf, tcroot
from harness.lab import free_port, wait_for
from tests.integration.conftest import enrolled_minion
from tests.support import prometheus
from tests.support.bus import Bus
from tests.support.minions import running as minions_running

LON_SEAT, MAN_SEAT = "tc-0201", "tc-0202"
FORGED = 15
PORTS = {}


@pytest.fixture(scope="module")
def master(salt_factories, lab_etc):
    PORTS.update(deskfleet=free_port(), salt=free_port())
    conf = saltconf.lab_master_config("tc", lab_etc, heartbeat=4, beacon_interval=1)
    conf["deskfleet"]["metrics"].update(
        interval=2, sites=["LON"], forged_burst=10, forged_window=120,
        prometheus={"host": "127.0.0.1", "port": PORTS["deskfleet"]},
    )
    # Salt's own metrics on the same master, on their own port (MWorkers fail to bind it: Salt's design)
    conf["metrics"] = {"enabled": True, "exporter": "prometheus", "prometheus": {"host": "127.0.0.1", "port": PORTS["salt"]}}
    factory = salt_factories.salt_master_daemon("tc-metrics", overrides=conf, on_auth_event_callback=lambda *a: None)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def seats(master, tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics-roots")
    roots = {LON_SEAT: tcroot.make(base / LON_SEAT, 201, site="LON"),
             MAN_SEAT: tcroot.make(base / MAN_SEAT, 202, site="MAN")}
    tokens = tmp_path_factory.mktemp("metrics-tokens")
    minions = [enrolled_minion(master, seat, root, tokens) for seat, root in roots.items()]
    with minions_running(master, minions, "tc-02*") as running:
        yield running


@pytest.fixture(scope="module")
def prom(master, tmp_path_factory):
    targets = {"deskfleet": f"127.0.0.1:{PORTS['deskfleet']}", "salt": f"127.0.0.1:{PORTS['salt']}"}
    with prometheus.running(tmp_path_factory.mktemp("prometheus"), targets) as running:
        yield running


def _value(prom, promql):
    found = prom.query(promql)
    return found[0][1] if len(found) == 1 else None


def test_prometheus_scrapes_seats_by_status_and_bounded_site(master, seats, prom):
    wait_for(lambda: set(prom.targets_up().values()) == {"up"} and len(prom.targets_up()) == 2, timeout=120,
             what=f"both targets up: {prom.targets_up()}")
    # LON is a configured site; MAN is not: it counts as "other"
    wait_for(lambda: _value(prom, 'deskfleet_seats{site="LON",status="online"}') == 1.0, timeout=180,
             what="the LON seat online in Prometheus")
    wait_for(lambda: _value(prom, 'deskfleet_seats{site="other",status="online"}') == 1.0, timeout=120,
             what="the MAN seat online as site=other")
    assert prom.query('deskfleet_seats{site="MAN"}') == []
    assert _value(prom, "sum(deskfleet_seats)") == 2.0
    assert _value(prom, 'deskfleet_ingest_events_total{result="accepted"}') >= 2
    assert _value(prom, 'deskfleet_metrics_source_up{source="seats"}') == 1.0
    # no seat id ever becomes a label value
    labels = [v for m, _ in prom.query('{__name__=~"deskfleet_.*"}') for k, v in m.items() if k != "__name__"]
    assert labels and not [v for v in labels if v.startswith("tc-")]
    # each process family on its own port: Salt's master series on Salt's port only, deskfleet's on its own
    assert {m["job"] for m, _ in prom.query("salt_master_connected_minions_count")} == {"salt"}
    assert {m["job"] for m, _ in prom.query("deskfleet_seats")} == {"deskfleet"}


def _forged(seq):
    return {"v": 1, "seat": MAN_SEAT, "seq": seq, "ts": time.time(), "reason": "change", "changed": ["firmware"],
            "heartbeat": 4, "sig": "Zm9yZ2Vk", "facts": {"firmware": "0.0.0-pwned"}}


def test_a_burst_of_forged_beacons_alerts_and_is_counted(master, seats, prom):
    before = _value(prom, 'deskfleet_ingest_events_total{result="forged"}') or 0.0
    tag = f"salt/beacon/{MAN_SEAT}/tc_status/status"
    preload = json.dumps({"events": [{"tag": tag, "data": _forged(n)} for n in range(1, FORGED + 1)]})
    with Bus(master) as bus:
        ret = master.salt_cli(timeout=90).run("event.send", "ignored", f"preload={preload}", minion_tgt=LON_SEAT)
        assert ret.returncode == 0, ret
        alert = wait_for(lambda: bus.tagged("deskfleet/alert/ingest"), timeout=120,
                         what="deskfleet/alert/ingest for the forged burst")[0]
    assert alert["kind"] == "forged_burst" and alert["state"] == "start" and alert["forged"] >= FORGED
    assert alert["threshold"] == 10 and {t["attribution"] for t in alert["top"]} == {f"claimed {MAN_SEAT}, unproven"}
    wait_for(lambda: (_value(prom, 'deskfleet_ingest_events_total{result="forged"}') or 0) >= before + FORGED,
             timeout=120, what="the forged total to rise in Prometheus")
    assert _value(prom, "deskfleet_ingest_forged_recent") >= FORGED
