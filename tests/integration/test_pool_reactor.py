"""
Pool replenishment through a real vm master (shipped reactor config, no schedule:
every effect is the reactor's) with the Nova lab behind it: taken events → reactor →
keeper; a pool VM's minion start → orchestration → baseline + ready; forged taken and
start events refused; a malformed pool reported on the bus while the others run. A
second master with the shipped schedule shows the periodic reconcile on its own.
"""

import pytest
import yaml

from harness import novalab as novalab_mod
from harness import saltconf
from harness.lab import wait_for
from tests.support.bus import Bus

POOL_KEY, STATE_KEY = "deskfleet_pool", "deskfleet_state"



@pytest.fixture(scope="module")
def nova():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    with novalab_mod.NovaLab() as lab:
        yield lab


def _master(salt_factories, nova, tmp_path_factory, name, pools, schedule_seconds=None):
    pillar = tmp_path_factory.mktemp(f"{name}-pillar")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - pools\n")
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": pools}}))
    conf = saltconf.lab_master_config("vm", tmp_path_factory.mktemp(f"{name}-etc"))
    conf["pillar_roots"]["base"].insert(0, str(pillar))  # our pools.sls shadows the shipped one
    conf["deskfleet"]["vm"].update(cloud=nova.cloud, clouds_yaml=nova.clouds_yaml)
    if schedule_seconds is None:
        conf.pop("schedule")  # the reactor alone: nothing else may boot or mark desktops
    else:
        conf["schedule"] = {"vmpool-reconcile": dict(conf["schedule"]["vmpool-reconcile"], seconds=schedule_seconds)}
    return salt_factories.salt_master_daemon(name, overrides=conf)


@pytest.fixture(scope="module")
def pool_master(salt_factories, nova, tmp_path_factory):
    pools = {
        "sales": {"flavor": "desk.small", "image": nova.image_id, "network": nova.network_id, "spares": 2, "max_size": 5, "max_in_flight": 2},
        "broken": {"flavor": "desk.small", "image": nova.image_id, "network": nova.network_id},  # no spares
    }
    factory = _master(salt_factories, nova, tmp_path_factory, "pool-master", pools)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def cloud(nova):
    conn = nova.connect()
    yield conn
    conn.close()


def members(cloud, state=None, pool="sales"):
    servers = [s for s in cloud.compute.servers(details=True) if (s.metadata or {}).get(POOL_KEY) == pool]
    return [s for s in servers if state is None or (s.metadata or {}).get(STATE_KEY) == state]


def run(master, fun, *args):
    ret = master.salt_run_cli(timeout=120).run(fun, *args)
    return ret


def alerts(bus):
    return [e["data"] for e in list(bus.events) if e["tag"] == "deskfleet/alert/pool"]


def test_pool_lifecycle_through_the_reactor(pool_master, cloud):
    # 1. fill by hand (no schedule on this master); the malformed pool is an error, sales still fills
    with Bus(pool_master) as bus:
        ret = run(pool_master, "vmpool.reconcile")
        assert ret.returncode == 1 and "pool broken: spares: is required" in ret.data["error"]
        assert ret.data["pools"]["sales"]["boots"] == 2
        wait_for(lambda: [a for a in alerts(bus) if a.get("pool") == "broken" and "spares" in a["message"]], what="alert event for the broken pool")
    servers = wait_for(lambda: (m := members(cloud)) and len([s for s in m if s.status == "ACTIVE"]) == 2 and m, what="2 ACTIVE")
    vm, other = servers

    # 2. the first desktop's minion starts: reactor → orchestration → baseline + ready
    minion = pool_master.salt_minion_daemon(vm.name, overrides={"grains": {"deskfleet_role": "desktop"}})
    # what cloud-init does on the desktop: install the key the keeper seeded (and accepted) at boot
    saltconf.install_seeded_key(cloud.compute.get_server(vm.id).user_data, minion.config["pki_dir"])
    with minion.started():
        wait_for(lambda: [s.name for s in members(cloud, "ready")] == [vm.name], timeout=120, what=f"{vm.name} marked ready by the orchestration")

        with Bus(pool_master) as bus:
            # 3. the desktop forges a start event for the other one (batched form: tag and data.id both
            #    name the victim, whose minion is not running): refused, and the victim stays not ready
            forged = {"events": [{"tag": f"salt/minion/{other.name}/start", "data": {"id": other.name, "cmd": "_minion_event", "data": "Minion started"}}]}
            ret = minion.salt_call_cli(timeout=60).run("event.fire_master", data={}, tag="deskfleet/noop", preload=forged)
            assert ret.returncode == 0, ret
            refused = wait_for(
                lambda: [r for r in bus.runner_returns("runner.vmpool.on_event") if isinstance(r, dict) and other.name in str(r)],
                timeout=120, what="the check-sender verdict on the forged start",
            )
            # the victim's key is seeded (accepted before boot): only its own answer could prove the start
            assert refused[0].get("refused") and "did not answer a ping" in refused[0]["reason"], refused
            wait_for(lambda: [r for r in bus.runner_returns("runner.state.orchestrate") if other.name in str(r)], timeout=120, what="the orchestration to end")
            assert not (cloud.compute.get_server(other).metadata or {}).get(STATE_KEY)
            assert run(pool_master, "vmpool.mark_ready", other.name).data["state"] == "ready"  # by hand: no minion for it

            # 4. a forged taken event from a machine outside the pool is refused
            intruder = pool_master.salt_minion_daemon("intruder-0001")
            with intruder.started():
                ret = intruder.salt_call_cli(timeout=60).run("event.send", "deskfleet/pool/taken", data={"pool": "sales"})
                assert ret.returncode == 0
                refused = wait_for(lambda: [r for r in bus.runner_returns("runner.vmpool.on_event") if isinstance(r, dict) and "intruder-0001" in str(r.get("reason"))], what="refusal")
                assert refused[0]["refused"]
            assert len(members(cloud)) == 2
            # 5. the pool's own desktop reports it was taken: reactor → replenish → one boot (the reactor's own)
            cloud.compute.set_server_metadata(vm, **{STATE_KEY: "taken"})
            ret = minion.salt_call_cli(timeout=60).run("event.send", "deskfleet/pool/taken", data={"pool": "sales"})
            assert ret.returncode == 0
            replenished = wait_for(
                lambda: [r for r in bus.runner_returns("runner.vmpool.on_event") if isinstance(r, dict) and r.get("boots")],
                timeout=60, what="replenish through the reactor",
            )
            assert replenished[0]["pools"]["sales"]["boots"] == 1
    wait_for(lambda: len(members(cloud)) == 3, what="3 servers (2 spare + 1 taken)")


def test_the_shipped_schedule_runs_the_keeper(salt_factories, nova, cloud, tmp_path_factory):
    """A dropped event is repaired because the master schedule calls vmpool.reconcile: nobody else calls it here."""
    pools = {"sched": {"flavor": "desk.small", "image": nova.image_id, "network": nova.network_id, "spares": 1}}
    factory = _master(salt_factories, nova, tmp_path_factory, "sched-master", pools, schedule_seconds=5)
    with factory.started():
        wait_for(lambda: members(cloud, pool="sched"), timeout=120, what="the scheduled reconcile to boot a desktop")


def test_events_for_unknown_pools_are_refused(pool_master):
    ret = run(pool_master, "vmpool.on_event", "deskfleet/pool/taken", '{"pool": "nope"}')
    assert ret.returncode == 1 and "unknown pool" in ret.data["reason"]
    ret = run(pool_master, "vmpool.on_event", "deskfleet/pool/evil", '{"pool": "sales"}')
    assert ret.returncode == 1 and ret.data["refused"] is True
