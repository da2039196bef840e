"""
Host maintenance plan benchmark: ``maintenance.plan`` (batches, per-host capacity
pre-check with first-fit placement, notices) for a synthetic fleet of 500 hosts
and 10,000 desktops, every host in the roll. CPU seconds per plan.

    python -m bench.maintenance_plan [--hosts 500] [--desktops 10000] [--batch 1] [--rounds 5]
"""

import argparse
import datetime
import json
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "_utils"))
import maintenance  # noqa: E402

FLAVORS = ({"ram": 4096, "vcpus": 2, "disk": 40}, {"ram": 8192, "vcpus": 4, "disk": 60})


def fleet(n_hosts, n_desktops, seed=7):
    rng = random.Random(seed)
    hosts = [f"cmp-{i:03d}" for i in range(n_hosts)]
    servers, used = [], {h: 0 for h in hosts}
    for i in range(n_desktops):
        host, flavor = rng.choice(hosts), rng.choice(FLAVORS)
        state = rng.choices(("taken", "ready"), (70, 30))[0]
        used[host] += flavor["ram"]
        servers.append({"id": f"d{i:05d}", "name": f"desk-{i:05d}", "host": host, "status": "ACTIVE", "flavor": flavor,
                        "metadata": {"deskfleet_pool": "sales", "deskfleet_state": state}})
    providers = [
        {
            "name": h,
            "inventories": {
                "MEMORY_MB": {"total": 262_144, "reserved": 4096, "allocation_ratio": 1.2, "max_unit": 262_144},
                "VCPU": {"total": 64, "reserved": 0, "allocation_ratio": 2.0, "max_unit": 64},
                "DISK_GB": {"total": 4000, "reserved": 0, "allocation_ratio": 1.0, "max_unit": 4000},
            },
            "usages": {"MEMORY_MB": used[h], "VCPU": used[h] // 2048, "DISK_GB": used[h] // 100},
        }
        for h in hosts
    ]
    return hosts, providers, servers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--desktops", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    hosts, providers, servers = fleet(args.hosts, args.desktops)
    now = datetime.datetime.now(datetime.timezone.utc)
    request = maintenance.validate_request({"hosts": hosts, "reason": "bench", "batch": args.batch}, now)
    cpu = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        result = maintenance.plan(request, providers, servers, now)
        cpu.append(time.process_time() - t0)
    cpu.sort()
    median = cpu[len(cpu) // 2]
    moves = sum(len(h["taken"]) for h in result["hosts"].values())
    print(f"{args.hosts} hosts, {args.desktops} desktops, batch {args.batch}: {moves} migrations planned, "
          f"{len(result['refused'])} host(s) refused")
    print(f"plan: median {median * 1000:.1f} ms CPU, worst {cpu[-1] * 1000:.1f} ms over {args.rounds} rounds")
    print(f"target < 1 s CPU: {'PASS' if cpu[-1] < 1.0 else 'FAIL'}")
    print(json.dumps({"bench": "maintenance_plan", "hosts": args.hosts, "desktops": args.desktops, "batch": args.batch,
                      "migrations": moves, "refused": len(result["refused"]),
                      "cpu_ms_median": round(median * 1000, 1), "cpu_ms_worst": round(cpu[-1] * 1000, 1),
                      "target_cpu_s": 1.0}))


if __name__ == "__main__":
    main()
