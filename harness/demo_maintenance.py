"""
Demo: roll one compute host on the embedded Nova lab (3 computes, real live
migration; host-side steps simulated): the plan first, then the real roll with
its progress from ``maintenance.status``, then where every desktop went.

    python -m harness.demo_maintenance
"""

import tempfile
import time

from harness.maintenance_runner import MaintenanceRunner
from harness.novalab import NovaLab


def _boot(conn, lab, name, state):
    return conn.compute.create_server(
        name=name, flavor_id=lab.flavor_id, image_id=lab.image_id, networks=[{"uuid": lab.network_id}],
        metadata={"deskfleet_pool": "sales", "deskfleet_state": state}, availability_zone="nova:compute1")


def _show_plan(plan):
    for host, entry in plan["hosts"].items():
        print(f"  {host}: batch {entry['batch']}, spares to delete {len(entry['spares'])}, "
              f"desktops to move {len(entry['taken'])} -> {sorted(set(entry['moves'].values()))}, ok={entry['ok']}")
        print(f"  steps: {' -> '.join(entry['steps'])}")


def _follow(runner, proc):
    seen = None
    while proc.poll() is None:
        host = (runner("status").get("hosts") or {}).get("compute1") or {}
        now = (host.get("step"), host.get("desktops_left"), len(host.get("migrations") or []))
        if now != seen and host:
            print(f"  step {now[0]:<12} desktops left {now[1]}  migrations done {now[2]}")
            seen = now
        time.sleep(0.5)


def main():
    print("== starting the Nova lab (3 computes) ...")
    with NovaLab(computes=3) as lab, tempfile.TemporaryDirectory(prefix="dfdemo-mt-") as tmp:
        conn = lab.connect()
        servers = [_boot(conn, lab, f"spare-{i}", "ready") for i in range(2)]
        servers += [_boot(conn, lab, f"desk-{i}", "taken") for i in range(2)]
        for server in servers:
            conn.compute.wait_for_server(server, status="ACTIVE", interval=0.3, wait=300)
        pools = {"sales": {"flavor": "desk.small", "image": lab.image_id, "network": lab.network_id, "spares": 2, "max_size": 10}}
        runner = MaintenanceRunner(tmp, lab, pools)
        request = {"hosts": ["compute1"], "reason": "kernel 6.1.0-28", "deadline": "+2h", "poll": 0.2}
        print("== salt-run maintenance.plan hosts='[compute1]' reason='kernel 6.1.0-28' deadline=+2h")
        _show_plan(runner("plan", **request))
        print("== salt-run state.orch orchestration.host_maintenance (the runner's roll, host steps simulated)")
        proc = runner.spawn("start", **request)
        _follow(runner, proc)
        result = runner.result(proc.communicate()[0])
        print(f"== roll {result['id']}: {result['state']}")
        for name, step in result["hosts"]["compute1"]["steps"].items():
            print(f"  {name:<12} {step['state']:<5} {step['finished'] - step['started']:.2f}s")
        for mig in result["hosts"]["compute1"]["migrations"]:
            print(f"  moved {mig['name']}: {mig['from']} -> {mig['to']} in {mig['seconds']}s")
        svc = next(s for s in conn.compute.services(binary="nova-compute") if s.host == "compute1")
        print(f"  compute1 nova-compute: {svc.status} (reason: {svc.disabled_reason})")
        print("== the pool keeper refills the deleted spares on the other hosts:")
        print(f"  {runner.keeper('reconcile')['pools']['sales']}")
        conn.close()


if __name__ == "__main__":
    main()
