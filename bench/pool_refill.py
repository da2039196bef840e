"""
Pool refill benchmark on the Nova lab (real API, placement, scheduler, fake
hypervisor): time from an empty pool to N ready desktops, and time to refill
after K desktops are taken, with the keeper's boot-storm caps in force. A
thread plays the start reactor (marks each ACTIVE desktop ready at once), so
the figure is the keeper + cloud part of the refill.

    python -m bench.pool_refill [--spares 10] [--take 5] [--in-flight 5]
"""

import argparse
import json
import tempfile
import threading
import time

from harness.novalab import NovaLab
from harness.vmrunner import VmRunner

POOL_KEY, STATE_KEY = "deskfleet_pool", "deskfleet_state"


def members(conn):
    return [s for s in conn.compute.servers(details=True) if (s.metadata or {}).get(POOL_KEY) == "bench"]


def until_ready(keeper, conn, want, timeout=300):
    """Reconcile (as the schedule would, every second here) until ``want`` desktops are ready."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        keeper("reconcile")
        ready = [s for s in members(conn) if (s.metadata or {}).get(STATE_KEY) == "ready"]
        if len(ready) >= want:
            return time.monotonic() - t0
        time.sleep(1)
    raise TimeoutError(f"{want} ready desktops not reached in {timeout}s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spares", type=int, default=10)
    parser.add_argument("--take", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=5)
    args = parser.parse_args(argv)
    with NovaLab(computes=2, ram_mb=16384) as lab, tempfile.TemporaryDirectory(prefix="dfbench-pool-") as tmp:
        conn = lab.connect()
        pools = {"bench": {"flavor": "desk.small", "image": lab.image_id, "network": lab.network_id,
                           "spares": args.spares, "max_size": args.spares + args.take, "max_in_flight": args.in_flight}}
        keeper = VmRunner(tmp, lab, pools, max_in_flight_total=args.in_flight)
        stop = threading.Event()

        def start_reactor():
            while not stop.is_set():
                for s in members(conn):
                    if s.status == "ACTIVE" and not (s.metadata or {}).get(STATE_KEY):
                        conn.compute.set_server_metadata(s, **{STATE_KEY: "ready"})
                time.sleep(0.2)

        marker = threading.Thread(target=start_reactor, daemon=True)
        marker.start()
        try:
            fill = until_ready(keeper, conn, args.spares)
            ready = [s for s in members(conn) if (s.metadata or {}).get(STATE_KEY) == "ready"]
            for server in ready[: args.take]:
                conn.compute.set_server_metadata(server, **{STATE_KEY: "taken"})
            t0 = time.monotonic()
            keeper("replenish", "bench")  # the reactor's reaction to the taken event
            refill = time.monotonic() - t0 + until_ready(keeper, conn, args.spares)
        finally:
            stop.set()
            marker.join(5)
            conn.close()
    print(f"Nova lab: 2 fake computes; pool of {args.spares} spares, {args.in_flight} boots in flight at most")
    print(f"fill 0 -> {args.spares} ready: {fill:.1f} s")
    print(f"refill after {args.take} taken: {refill:.1f} s")
    print(json.dumps({"bench": "pool_refill", "spares": args.spares, "taken": args.take, "max_in_flight": args.in_flight,
                      "fill_s": round(fill, 1), "refill_s": round(refill, 1)}))


if __name__ == "__main__":
    main()
