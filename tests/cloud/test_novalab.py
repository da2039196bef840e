"""
Smoke tests of the novalab through openstacksdk only: what the VM pool keeper (issue 6)
relies on — flavors, boot to ACTIVE, placement inventories/usages (over-commit headroom),
"No valid host" when capacity is exhausted, delete, server metadata and tags — plus the
lab's own promise not to leak its server process or temp files.
"""

import concurrent.futures
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import openstack.exceptions
import pytest

from harness import novalab as novalab_mod


def boot(conn, lab, name, flavor="desk.small", metadata=None, tags=None):
    return conn.compute.create_server(
        name=name,
        flavor_id=lab.flavors[flavor],
        image_id=lab.image_id,
        networks=[{"uuid": lab.network_id}],
        metadata=metadata or {},
        tags=tags or [],
    )


def wait_settled(conn, server, timeout=120):
    """Wait until the server leaves BUILD; return it (ACTIVE or ERROR, with its fault)."""
    deadline = time.monotonic() + timeout
    while True:
        server = conn.compute.get_server(server)
        if server.status != "BUILD":
            return server
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name} still in BUILD after {timeout}s")
        time.sleep(0.2)


def ram_headroom(conn):
    """What the pool keeper reads: per provider, MEMORY_MB capacity, used and free (placement)."""
    out = {}
    for rp in conn.placement.resource_providers():
        inv = {i.resource_class: i for i in conn.placement.resource_provider_inventories(rp)}
        used = conn.placement.fetch_resource_provider_usages(rp).usages or {}
        ram = inv["MEMORY_MB"]
        capacity = (ram.total - ram.reserved) * ram.allocation_ratio
        out[rp.name] = {
            "capacity_mb": capacity,
            "used_mb": used.get("MEMORY_MB", 0),
            "free_mb": capacity - used.get("MEMORY_MB", 0),
            "max_unit_mb": ram.max_unit,
        }
    return out


def test_flavors_listed(novalab, cloud):
    flavors = {f.name: f for f in cloud.compute.flavors()}
    for name, fid in novalab.flavors.items():
        assert flavors[name].id == fid
        assert flavors[name].ram == novalab.info["flavor_sizes"][name]["ram_mb"]
    assert cloud.compute.get_flavor(novalab.flavor_id).name == novalab_mod.DEFAULT_FLAVOR


def test_clouds_yaml_works_from_another_process(novalab):
    """A salt master or runner reaches the lab the same way: OS_CLOUD + clouds.yaml, nothing else."""
    code = "import json, openstack; c = openstack.connect(); print(json.dumps(sorted(f.name for f in c.compute.flavors())))"
    env = dict(os.environ, **novalab.env())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == sorted(novalab.flavors)


def test_requests_without_the_lab_token_are_refused(novalab):
    import urllib.error  # pylint: disable=import-outside-toplevel
    import urllib.request  # pylint: disable=import-outside-toplevel

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(novalab.compute_url + "/servers", timeout=10)  # pylint: disable=consider-using-with
    assert err.value.code == 401


def test_boot_active_then_delete(novalab, cloud):
    started = time.monotonic()
    server = wait_settled(cloud, boot(cloud, novalab, "desk-boot-0001"))
    boot_s = time.monotonic() - started
    assert server.status == "ACTIVE", server.fault
    assert server.compute_host in novalab.computes
    assert "private" in server.addresses  # the NeutronFixture network the lab publishes
    assert ram_headroom(cloud)[server.compute_host]["used_mb"] == 2048

    started = time.monotonic()
    cloud.compute.delete_server(server)
    cloud.compute.wait_for_delete(server, interval=0.2, wait=60)
    delete_s = time.monotonic() - started
    with pytest.raises(openstack.exceptions.NotFoundException):
        cloud.compute.get_server(server.id)
    print(f"\nboot to ACTIVE {boot_s:.2f}s, delete {delete_s:.2f}s")


def test_placement_inventory_and_usage_visible(novalab, cloud):
    per = novalab.info["per_compute"]
    rps = {rp.name: rp for rp in cloud.placement.resource_providers()}
    assert sorted(rps) == sorted(novalab.computes)
    rp = rps[novalab.computes[0]]
    inv = {i.resource_class: i for i in cloud.placement.resource_provider_inventories(rp)}
    assert {"VCPU", "MEMORY_MB", "DISK_GB"} <= set(inv)
    assert inv["MEMORY_MB"].total == per["ram_mb"]
    assert inv["MEMORY_MB"].reserved == per["reserved_ram_mb"]
    assert inv["MEMORY_MB"].allocation_ratio == pytest.approx(per["ram_ratio"])
    assert inv["VCPU"].allocation_ratio == pytest.approx(per["cpu_ratio"])
    before = ram_headroom(cloud)[rp.name]
    assert before == {"capacity_mb": 11520.0, "used_mb": 0, "free_mb": 11520.0, "max_unit_mb": 8192}

    server = wait_settled(cloud, boot(cloud, novalab, "desk-usage-0001", flavor="desk.medium"))
    assert server.status == "ACTIVE", server.fault
    usages = cloud.placement.fetch_resource_provider_usages(rp).usages
    assert usages == {"VCPU": 2, "MEMORY_MB": 4096, "DISK_GB": 20}
    assert ram_headroom(cloud)[rp.name]["free_mb"] == 11520.0 - 4096
    # the per-server view: the instance's allocation against the provider
    alloc = cloud.placement.get_allocation(server.id)
    assert alloc.allocations[rp.id]["resources"]["MEMORY_MB"] == 4096


def test_capacity_exhausted_gives_no_valid_host(novalab, cloud):
    head = ram_headroom(cloud)[novalab.computes[0]]
    fits = math.floor(head["free_mb"] / 2048)  # (8192 - 512) * 1.5 = 11520 MB -> 5 desk.small
    assert fits == 5
    started = time.monotonic()
    timings = {}

    def one(i):
        conn = novalab.connect()
        try:
            t = time.monotonic()
            server = wait_settled(conn, boot(conn, novalab, f"desk-cap-{i:04d}"))
            timings[server.name] = time.monotonic() - t
            return server
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(fits) as pool:
        servers = list(pool.map(one, range(fits)))
    assert [s.status for s in servers] == ["ACTIVE"] * fits, [s.fault for s in servers]
    print(f"\n{fits} concurrent boots ACTIVE in {time.monotonic() - started:.2f}s:", {k: round(v, 2) for k, v in sorted(timings.items())})
    assert ram_headroom(cloud)[novalab.computes[0]]["free_mb"] == 11520.0 - fits * 2048  # 1280 MB left

    extra = wait_settled(cloud, boot(cloud, novalab, "desk-cap-extra"))
    assert extra.status == "ERROR"
    assert "No valid host" in extra.fault["message"], extra.fault
    assert extra.compute_host is None


def test_metadata_and_tags_for_pool_state(novalab, cloud):
    server = wait_settled(cloud, boot(cloud, novalab, "desk-pool-0001", metadata={"pool": "sales"}, tags=["pool:sales"]))
    assert server.status == "ACTIVE", server.fault
    other = wait_settled(cloud, boot(cloud, novalab, "desk-pool-0002", metadata={"pool": "support"}, tags=["pool:support"]))

    # metadata: the keeper's pool membership and the "taken" flag
    assert cloud.compute.fetch_server_metadata(server).metadata == {"pool": "sales"}
    cloud.compute.set_server_metadata(server, taken="true", taken_by="tc-lon-0001")
    assert cloud.compute.fetch_server_metadata(server).metadata == {
        "pool": "sales",
        "taken": "true",
        "taken_by": "tc-lon-0001",
    }
    cloud.compute.delete_server_metadata(server, ["taken_by"])
    assert cloud.compute.get_server(server).metadata == {"pool": "sales", "taken": "true"}

    # tags: server-side filtering of pool members and spare/taken state
    cloud.compute.add_tag_to_server(server, "taken")
    assert sorted(cloud.compute.get_server(server).tags) == ["pool:sales", "taken"]
    assert [s.id for s in cloud.compute.servers(tags="pool:sales")] == [server.id]
    assert [s.id for s in cloud.compute.servers(tags="pool:sales", not_tags="taken")] == []
    assert [s.id for s in cloud.compute.servers(tags="pool:support", not_tags="taken")] == [other.id]
    cloud.compute.remove_tag_from_server(server, "taken")
    assert [s.id for s in cloud.compute.servers(tags="pool:sales", not_tags="taken")] == [server.id]


def test_lab_stops_cleanly_and_leaves_nothing(novalab_factory):
    lab = novalab_factory(computes=2)
    print(f"\ntwo-compute lab up in {lab.startup_seconds:.2f}s")
    conn = lab.connect()
    assert sorted(rp.name for rp in conn.placement.resource_providers()) == ["compute1", "compute2"]
    conn.close()
    pid, workdir = lab.pid, pathlib.Path(lab.workdir)
    started = time.monotonic()
    lab.stop()
    print(f"stopped in {time.monotonic() - started:.2f}s")
    assert lab.returncode == 0  # SIGTERM -> orderly stop, not the SIGKILL fallback
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not workdir.exists()


def test_lab_is_stopped_when_the_with_block_fails():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    with pytest.raises(ZeroDivisionError):
        with novalab_mod.NovaLab() as lab:
            pid, workdir = lab.pid, pathlib.Path(lab.workdir)
            _ = 1 / 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not workdir.exists()


def _running(pid):
    """True while ``pid`` exists and is not a zombie waiting for a reaper."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def test_orphaned_lab_stops_itself():
    """If the process that started the lab dies without cleaning up, the server follows it."""
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)
    code = (
        "import json, sys, time; from harness.novalab import NovaLab; lab = NovaLab().__enter__(); "
        "print(json.dumps({'pid': lab.pid, 'workdir': str(lab.workdir)}), flush=True); time.sleep(600)"
    )
    client = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", code], cwd=str(novalab_mod.CHECKOUT), stdout=subprocess.PIPE, text=True
    )
    try:
        started = json.loads(client.stdout.readline())
    finally:
        client.kill()  # SIGKILL: no __exit__, no stop()
        client.wait(10)
        client.stdout.close()
    deadline = time.monotonic() + 30
    while _running(started["pid"]) or pathlib.Path(started["workdir"]).exists():
        if time.monotonic() > deadline:
            os.killpg(started["pid"], 9)
            pytest.fail(f"orphaned novalab {started} still there after 30s")
        time.sleep(0.2)
