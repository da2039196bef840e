"""
Pool metrics end to end (README "Metrics and alerts"): a real vm master from the shipped config
with the ``deskfleet_metrics`` engine, a real Nova (novalab) as its cloud, one keeper pass through
``salt-run vmpool.reconcile``, and a real Prometheus scraping the engine's port. A pool whose
boots Nova refuses turns degraded: the gauge says so and ``deskfleet/alert/pool`` (kind degraded)
reaches the bus.
"""

import pytest
import yaml

from harness import saltconf
from harness.lab import free_port, wait_for
from tests.support import prometheus
from tests.support.bus import Bus

PORT = {}


@pytest.fixture(scope="module")
def vm_master(salt_factories, novalab, tmp_path_factory):
    pillar = tmp_path_factory.mktemp("metrics-pillar")
    pools = {
        "sales": {"flavor": "desk.small", "image": novalab.image_id, "network": novalab.network_id, "spares": 2,
                  "max_size": 4, "max_in_flight": 2},
        "broken": {"flavor": "desk.small", "image": "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                   "network": novalab.network_id, "spares": 1, "max_size": 2},
    }
    (pillar / "top.sls").write_text("base:\n  '*':\n    - pools\n")
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": pools}}))
    conf = saltconf.lab_master_config("vm", tmp_path_factory.mktemp("metrics-etc"))
    conf["pillar_roots"]["base"].insert(0, str(pillar))
    conf.pop("schedule")  # the test drives the keeper pass itself
    conf["deskfleet"]["vm"].update(cloud=novalab.cloud, clouds_yaml=novalab.clouds_yaml)
    conf["deskfleet"]["vm"]["pool_keeper"].update(degraded_after=1, backoff_base=0)
    PORT["deskfleet"] = free_port()
    conf["deskfleet"]["metrics"].update(interval=2, prometheus={"host": "127.0.0.1", "port": PORT["deskfleet"]})
    factory = salt_factories.salt_master_daemon("vm-metrics", overrides=conf)
    with factory.started(start_timeout=120):
        yield factory


def _value(prom, promql):
    found = prom.query(promql)
    return found[0][1] if len(found) == 1 else None


def test_pool_gauges_and_the_degraded_alert(vm_master, cloud, tmp_path):
    with Bus(vm_master) as bus:
        ret = vm_master.salt_run_cli(timeout=300).run("vmpool.reconcile")
        assert ret.returncode == 1, ret  # the broken pool fails the pass; sales still fills
        assert ret.data["pools"]["sales"]["boots"] == 2 and len(ret.data["booted"]) == 2, ret.data
        degraded = wait_for(lambda: [d for d in bus.tagged("deskfleet/alert/pool") if d["kind"] == "degraded"],
                            timeout=60, what="deskfleet/alert/pool kind degraded")
    assert {d["pool"] for d in degraded} == {"broken"} and "vmpool.reset broken" in degraded[0]["message"]
    with prometheus.running(tmp_path / "prometheus", {"deskfleet-vm": f"127.0.0.1:{PORT['deskfleet']}"}) as prom:
        wait_for(lambda: prom.targets_up() and set(prom.targets_up().values()) == {"up"}, timeout=120,
                 what="the vm master's metrics target up")
        wait_for(lambda: _value(prom, 'deskfleet_pool_health{pool="broken",health="degraded"}') == 1.0,
                 timeout=120, what="the broken pool degraded in Prometheus")
        assert _value(prom, 'deskfleet_pool_target{pool="sales"}') == 2.0
        booted = 'sum(deskfleet_pool_desktops{pool="sales",state=~"ready|in_flight"})'
        assert _value(prom, booted) == 2.0
        assert _value(prom, 'deskfleet_pool_health{pool="sales",health="ok"}') == 1.0
        assert _value(prom, 'sum(deskfleet_metrics_source_up{source=~"pools|rollouts|maintenance"})') == 3.0
        assert _value(prom, 'deskfleet_rollouts{state="running"}') == 0.0
        assert _value(prom, 'deskfleet_maintenance_rolls{state="stopped"}') == 0.0
