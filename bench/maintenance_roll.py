"""
Time to roll one host on the Nova lab (real API, placement, scheduler, live
migration through the fake driver; host-side steps SIMULATED), split by phase
from the step journal: drain (spares deleted), migrate (taken desktops, one at
a time), reboot (stop + reboot + wait_minion + start, simulated: ~0), verify
(simulated), plus disable/enable and the pre-check.

    python -m bench.maintenance_roll [--desktops 6] [--spares 2]
"""

import argparse
import json
import tempfile
import time

from harness.maintenance_runner import MaintenanceRunner
from harness.novalab import NovaLab

PHASES = {
    "precheck": ("precheck",),
    "disable": ("disable",),
    "drain": ("drain",),
    "migrate": ("migrate",),
    "reboot": ("stop", "reboot", "wait_minion", "start"),
    "verify": ("verify",),
    "enable": ("enable",),
}


def boot(conn, lab, name, state):
    return conn.compute.create_server(
        name=name, flavor_id=lab.flavor_id, image_id=lab.image_id, networks=[{"uuid": lab.network_id}],
        metadata={"deskfleet_pool": "bench", "deskfleet_state": state}, availability_zone="nova:compute1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--desktops", type=int, default=6)
    parser.add_argument("--spares", type=int, default=2)
    args = parser.parse_args(argv)
    with NovaLab(computes=3, ram_mb=32768) as lab, tempfile.TemporaryDirectory(prefix="dfbench-mt-") as tmp:
        conn = lab.connect()
        servers = [boot(conn, lab, f"desk-{i}", "taken") for i in range(args.desktops)]
        servers += [boot(conn, lab, f"spare-{i}", "ready") for i in range(args.spares)]
        for server in servers:
            conn.compute.wait_for_server(server, status="ACTIVE", interval=0.3, wait=300)
        pools = {"bench": {"flavor": "desk.small", "image": lab.image_id, "network": lab.network_id, "spares": 0}}
        runner = MaintenanceRunner(tmp, lab, pools)
        t0 = time.monotonic()
        result = runner("start", hosts=["compute1"], reason="bench", poll=0.2)
        wall = time.monotonic() - t0
        conn.close()
    if result.get("state") != "done":
        raise SystemExit(f"roll did not finish: {result}")
    steps = result["hosts"]["compute1"]["steps"]
    phases = {p: round(sum(steps[s]["finished"] - steps[s]["started"] for s in names), 2) for p, names in PHASES.items()}
    migrations = result["hosts"]["compute1"]["migrations"]
    per = sorted(m["seconds"] for m in migrations)
    print(f"rolled compute1 with {args.desktops} taken desktops and {args.spares} spares in {wall:.1f} s (runner wall)")
    print("phases (s): " + ", ".join(f"{p} {v}" for p, v in phases.items()) + "  [reboot/verify simulated]")
    print(f"live migrations: {len(per)}, median {per[len(per) // 2]:.2f} s, worst {per[-1]:.2f} s")
    print(json.dumps({"bench": "maintenance_roll", "desktops": args.desktops, "spares": args.spares,
                      "wall_s": round(wall, 2), **{f"{p}_s": v for p, v in phases.items()},
                      "migration_median_s": per[len(per) // 2], "migration_worst_s": per[-1], "simulated": ["reboot", "verify"]}))


if __name__ == "__main__":
    main()
