"""
Unit tests for ``_utils/metrics_export.py``: the snapshot served through Salt's own metrics
layer (``salt.utils.metrics``, prometheus exporter) in this process, and a taken port reported.
"""

import socket
import urllib.request

import pytest
import salt.utils.metrics

import metrics_export
from harness.lab import free_port


@pytest.fixture
def publisher():
    yield metrics_export.Publisher()
    salt.utils.metrics.shutdown()


def test_settings_take_salts_keys_and_name_the_service_per_role():
    conf = metrics_export.settings({"prometheus": {"port": 1234}, "interval": 5, "sites": ["LON"]}, "vm")
    assert conf["prometheus"] == {"host": "127.0.0.1", "port": 1234} and conf["service_name"] == "deskfleet-vm"
    assert "interval" not in conf and "sites" not in conf  # deskfleet's own keys stay out of Salt's block


def test_the_snapshot_is_served_on_the_engines_port(publisher):
    port = free_port()
    assert publisher.start(metrics_export.settings({"prometheus": {"port": port}}, "tc"), {"id": "tc-master"}) is None
    publisher.update({"deskfleet.seats": [({"status": "online", "site": "LON"}, 3)],
                      "deskfleet.ingest.events": [({"result": "forged"}, 7)]})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("deskfleet_")]
    assert any('site="LON"' in line and 'status="online"' in line and line.endswith(" 3.0") for line in lines)
    assert any(line.startswith("deskfleet_ingest_events_total{") and line.endswith(" 7.0") for line in lines)
    assert 'service_name="deskfleet-tc"' in text


def test_a_taken_port_is_reported_not_hidden(publisher):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        why = publisher.start(metrics_export.settings({"prometheus": {"port": port}}, "tc"), {"id": "tc-master"})
    assert why == f"could not bind the Prometheus listener on 127.0.0.1:{port} (in use?)"
    assert not publisher.registered  # the engine retries on its next pass
