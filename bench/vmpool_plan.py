"""
Pool keeper decision benchmark: one reconcile decision (``pool_plan.plan``) for a
synthetic fleet of 10,000 servers across 200 pools, CPU seconds per decision.

    python -m bench.vmpool_plan [--servers 10000] [--pools 200] [--rounds 20]
"""

import argparse
import json
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "_utils"))
import pool_plan  # noqa: E402


def fleet(n_servers, n_pools, seed=7):
    rng = random.Random(seed)
    pools = pool_plan.validate_pools(
        {
            f"pool-{i:03d}": {
                "flavor": "d2.medium",
                "image": "win11",
                "network": "desk-net",
                "spares": rng.randint(5, 40),
                "max_size": 200,
                "max_in_flight": 5,
                "schedule": [{"days": "mon-fri", "from": "07:00", "to": "19:00", "spares": 50}],
            }
            for i in range(n_pools)
        }
    )
    names = list(pools)
    weights = (("ready", "ACTIVE"), ("taken", "ACTIVE"), (None, "BUILD"), (None, "ERROR"), (None, "ACTIVE"))
    servers = []
    for i in range(n_servers):
        state, status = rng.choices(weights, (30, 64, 0.4, 0.6, 5))[0]
        meta = {pool_plan.POOL_KEY: rng.choice(names), "department": "sales"}
        if state:
            meta[pool_plan.STATE_KEY] = state
        servers.append({"id": f"srv-{i:05d}", "status": status, "metadata": meta})
    providers = [
        {
            "inventories": {
                "MEMORY_MB": {"total": 1_048_576, "reserved": 4096, "allocation_ratio": 1.2},
                "VCPU": {"total": 128, "reserved": 0, "allocation_ratio": 2.0},
                "DISK_GB": {"total": 20_000, "reserved": 0, "allocation_ratio": 1.0},
            },
            "usages": {"MEMORY_MB": rng.randint(500_000, 1_100_000), "VCPU": rng.randint(50, 250), "DISK_GB": 9000},
        }
        for _ in range(120)
    ]
    flavors = {"d2.medium": {"ram": 8192, "vcpus": 2, "disk": 60}}
    return pools, servers, providers, flavors


CAP = 600  # boots in flight across all pools


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    pools, servers, providers, flavors = fleet(args.servers, args.pools)
    now = pool_plan.utcnow()
    cpu = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        decision = pool_plan.plan(pools, servers, providers, flavors, {}, now, {"max_in_flight_total": CAP})
        cpu.append(time.process_time() - t0)
    cpu.sort()
    median = cpu[len(cpu) // 2]
    print(f"{args.servers} servers, {args.pools} pools, {len(providers)} compute providers")
    print(f"plan: median {median * 1000:.1f} ms CPU, worst {cpu[-1] * 1000:.1f} ms over {args.rounds} rounds")
    print(f"decision: {decision['boots']} boots (global in-flight cap {CAP}, {decision['in_flight_total']} already in flight)")
    print(f"target < 1 s CPU: {'PASS' if cpu[-1] < 1.0 else 'FAIL'}")
    print(json.dumps({"bench": "vmpool_plan", "servers": args.servers, "pools": args.pools,
                      "cpu_ms_median": round(median * 1000, 1), "cpu_ms_worst": round(cpu[-1] * 1000, 1),
                      "boots": decision["boots"], "target_cpu_s": 1.0}))


if __name__ == "__main__":
    main()
