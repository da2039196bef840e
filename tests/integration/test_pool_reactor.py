"""
Pool replenishment through a real vm master (shipped reactor + schedule config)
with the Nova lab behind it: taken events → reactor → keeper; a pool VM's
minion start → orchestration → baseline + ready; forged events refused; the
periodic reconcile repairs a dropped event.
"""

import threading
import time

import pytest
import yaml

import salt.utils.event
from harness import novalab as novalab_mod
from harness import saltconf
from harness.lab import wait_for

POOL_KEY, STATE_KEY = "deskfleet_pool", "deskfleet_state"



@pytest.fixture(scope="module")
def nova():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    with novalab_mod.NovaLab() as lab:
        yield lab


@pytest.fixture(scope="module")
def pool_master(salt_factories, nova, tmp_path_factory):
    pillar = tmp_path_factory.mktemp("pool-pillar")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - pools\n")
    pools = {
        "sales": {"flavor": "desk.small", "image": nova.image_id, "network": nova.network_id, "spares": 2, "max_size": 5, "max_in_flight": 2}
    }
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": pools}}))
    conf = saltconf.lab_master_config("vm", tmp_path_factory.mktemp("pool-etc"))
    conf["pillar_roots"]["base"].insert(0, str(pillar))  # our pools.sls shadows the shipped one
    conf["deskfleet"]["vm"].update(cloud=nova.cloud, clouds_yaml=nova.clouds_yaml)
    # only the keeper's schedule, every 20 s: slow enough to tell reactor reactions from it
    conf["schedule"] = {"vmpool-reconcile": dict(conf["schedule"]["vmpool-reconcile"], seconds=20)}
    factory = salt_factories.salt_master_daemon("pool-master", overrides=conf)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def cloud(nova):
    conn = nova.connect()
    yield conn
    conn.close()


class Bus:
    """Every event on the master bus, collected by a thread."""

    def __init__(self, master):
        self.events = []
        self.stop = threading.Event()
        self.bus = salt.utils.event.get_master_event(master.config, master.config["sock_dir"], listen=True)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            ev = self.bus.get_event(wait=0.2, full=True)
            if ev:
                self.events.append(ev)

    def runner_returns(self, fun):
        return [e["data"].get("return") for e in list(self.events) if e["tag"].endswith("/ret") and e["data"].get("fun") == fun]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.bus.destroy()


def members(cloud, state=None):
    servers = [s for s in cloud.compute.servers(details=True) if (s.metadata or {}).get(POOL_KEY) == "sales"]
    return [s for s in servers if state is None or (s.metadata or {}).get(STATE_KEY) == state]


def run(master, fun, *args):
    ret = master.salt_run_cli(timeout=120).run(fun, *args)
    return ret


def test_pool_lifecycle_through_reactor_and_schedule(pool_master, cloud, tmp_path):
    # 1. fill: the schedule (or a manual reconcile) boots the spares
    assert run(pool_master, "vmpool.reconcile").returncode == 0
    servers = wait_for(lambda: (m := members(cloud)) and len([s for s in m if s.status == "ACTIVE"]) == 2 and m, what="2 ACTIVE")

    # 2. the first desktop's minion starts: reactor → orchestration → baseline + ready
    vm = servers[0]
    minion = pool_master.salt_minion_daemon(vm.name, overrides={"grains": {"deskfleet_role": "desktop"}})
    # what cloud-init does on the desktop: install the key the keeper seeded (and accepted) at boot
    saltconf.install_seeded_key(cloud.compute.get_server(vm.id).user_data, minion.config["pki_dir"])
    with minion.started():
        wait_for(lambda: members(cloud, "ready") and members(cloud, "ready")[0].name == vm.name, timeout=120, what=f"{vm.name} marked ready by the orchestration")
        # the other one is marked by hand (no minion for it in this test)
        other = [s for s in servers if s.id != vm.id][0]
        assert run(pool_master, "vmpool.mark_ready", other.name).data["state"] == "ready"

        with Bus(pool_master) as bus:
            # 3. a forged taken event from a machine outside the pool is refused
            intruder = pool_master.salt_minion_daemon("intruder-0001")
            with intruder.started():
                ret = intruder.salt_call_cli(timeout=60).run("event.send", "deskfleet/pool/taken", data={"pool": "sales"})
                assert ret.returncode == 0
                refused = wait_for(lambda: [r for r in bus.runner_returns("runner.vmpool.on_event") if isinstance(r, dict) and r.get("refused")], what="refusal")
                assert "intruder-0001" in refused[0]["reason"]
            # 4. the pool's own desktop reports it was taken: reactor → replenish → one boot
            cloud.compute.set_server_metadata(vm, **{STATE_KEY: "taken"})
            ret = minion.salt_call_cli(timeout=60).run("event.send", "deskfleet/pool/taken", data={"pool": "sales"})
            assert ret.returncode == 0
            replenished = wait_for(
                lambda: [r for r in bus.runner_returns("runner.vmpool.on_event") if isinstance(r, dict) and r.get("boots")],
                timeout=30, what="replenish through the reactor",
            )
            assert replenished[0]["pools"]["sales"]["boots"] == 1
    wait_for(lambda: len(members(cloud)) == 3, what="3 servers (2 spare + 1 taken)")

    # 5. a dropped event: a desktop is taken and nobody tells the keeper; the schedule repairs it
    for server in members(cloud):
        if server.status == "ACTIVE" and not (server.metadata or {}).get(STATE_KEY):
            run(pool_master, "vmpool.mark_ready", server.name)
    cloud.compute.set_server_metadata(other, **{STATE_KEY: "taken"})
    wait_for(lambda: len(members(cloud)) == 4, timeout=60, what="the scheduled reconcile to boot a replacement")
    status = run(pool_master, "vmpool.status").data["pools"]["sales"]
    assert status["taken"] == 2 and status["ready"] + status["in_flight"] == 2


def test_events_for_unknown_pools_are_refused(pool_master):
    ret = run(pool_master, "vmpool.on_event", "deskfleet/pool/taken", '{"pool": "nope"}')
    assert ret.returncode == 1 and "unknown pool" in ret.data["reason"]
    ret = run(pool_master, "vmpool.on_event", "deskfleet/pool/evil", '{"pool": "sales"}')
    assert ret.returncode == 1 and ret.data["refused"] is True
