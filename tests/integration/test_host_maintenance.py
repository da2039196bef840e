"""
``salt-run state.orch orchestration.host_maintenance`` through a real vm master
started from the shipped config, with the Nova lab as its cloud: exit 0 and
``deskfleet/maintenance/<host>/<step>`` events on the master bus when the roll
succeeds; a non-zero exit when the plan refuses a host or the request is bad
(Salt's orchestration has returned 0 on failure in the past: ours must not).
The host-side steps are simulated (``host_actions: simulated``): no real compute host here.
"""

import json

import pytest

from harness import novalab as novalab_mod
from harness import saltconf
from tests.support.bus import Bus


@pytest.fixture(scope="module")
def nova():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    with novalab_mod.NovaLab(computes=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def mt_master(salt_factories, nova, tmp_path_factory):
    conf = saltconf.lab_master_config("vm", tmp_path_factory.mktemp("mt-etc"))
    conf["deskfleet"]["vm"].update(
        cloud=nova.cloud, clouds_yaml=nova.clouds_yaml,
        maintenance={"host_actions": "simulated", "simulated_failures": {"compute2": "verify"}},
    )
    conf["schedule"] = {}  # no pool keeper passes in this test
    factory = salt_factories.salt_master_daemon("mt-master", overrides=conf)
    with factory.started():
        yield factory


def seen(bus):
    """(tag, state) of the maintenance steps and alerts on the bus so far."""
    return [(e["tag"], e["data"].get("state")) for e in list(bus.events)
            if e["tag"].startswith(("deskfleet/maintenance/", "deskfleet/alert/maintenance"))]


def orch(master, **pillar):
    return master.salt_run_cli(timeout=600).run(
        "state.orch", "orchestration.host_maintenance", f"pillar={json.dumps(pillar)}"
    )


def test_orchestration_rolls_a_host_and_exits_zero(mt_master):
    with Bus(mt_master) as bus:
        ret = orch(mt_master, hosts=["compute1"], reason="kernel 6.1.0-28", poll=0.2)
    assert ret.returncode == 0, ret
    status = mt_master.salt_run_cli(timeout=120).run("maintenance.status")
    assert status.returncode == 0 and status.data["state"] == "done", status
    assert status.data["hosts"]["compute1"]["state"] == "done"
    done = [tag for tag, state in seen(bus) if state == "done"]
    assert done[0] == "deskfleet/maintenance/compute1/precheck" and done[-1] == "deskfleet/maintenance/compute1/enable"
    assert len(done) == 10


def test_orchestration_exits_non_zero_when_a_host_is_refused(mt_master):
    with Bus(mt_master) as bus:
        ret = orch(mt_master, hosts=["compute9"], reason="kernel 6.1.0-28")
    assert ret.returncode != 0, ret
    assert "no nova-compute service on this host" in ret.stdout + json.dumps(ret.data or {})
    assert ("deskfleet/alert/maintenance", "refused") in seen(bus)


def test_orchestration_exits_non_zero_on_a_bad_request(mt_master):
    ret = orch(mt_master, hosts=["compute1"])  # no reason
    assert ret.returncode != 0, ret
    assert "reason is required" in ret.stdout + json.dumps(ret.data or {})


def test_orchestration_exits_non_zero_when_a_host_fails_and_ops_get_the_alert(mt_master):
    # compute2's (simulated) verify fails: the host stays disabled, the roll stops, exit non-zero
    with Bus(mt_master) as bus:
        ret = orch(mt_master, hosts=["compute2"], reason="kernel 6.1.0-28", poll=0.2)
    assert ret.returncode != 0, ret
    status = mt_master.salt_run_cli(timeout=120).run("maintenance.status")
    host = status.data["hosts"]["compute2"]
    assert status.data["state"] == "failed" and host["step"] == "verify" and host["disabled"], status
    assert ("deskfleet/maintenance/compute2/verify", "failed") in seen(bus)
    assert ("deskfleet/alert/maintenance", "failed") in seen(bus)
    aborted = mt_master.salt_run_cli(timeout=120).run("maintenance.abort")
    assert aborted.returncode == 0 and aborted.data["left_disabled"] == ["compute2"], aborted
