"""
Benchmark: ``tc_inventory.list`` over 10,000 seats in a real SQLite store filled
through the real ingestion path: CPU time and output size of the compact default
rows against the full record (``fields=all``, the old default), both as JSON and
as Salt's default ``nested`` outputter prints them; plus one filtered, sorted,
limited query and the counts.

    python -m bench.inventory_rows [--seats 10000] [--runs 3]

Last line: one JSON object.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT / "_utils"))

import deskfleet_store as store  # noqa: E402
import seat_rows  # noqa: E402
import tc_assets  # noqa: E402
import tc_ingest_batch  # noqa: E402

HB = 300
NOW = 1_796_025_600.0
KNOWN = seat_rows.known_fields(tc_assets.SEAT_COLUMNS + ("ips",))


def fill(conn, seats):
    ingest = tc_ingest_batch.Ingestor(conn, lambda *a: True, batch_size=10**6, clock=lambda: NOW - (seats % 7), rate_limit=10**6)
    for n in range(seats):
        facts = {"site": f"S{n % 50:02d}", "department": f"d{n % 10}", "session_state": "connected",
                 "session_target": f"desk-{n}", "idle_seconds": float(n % 900), "firmware": f"13.{n % 4}.0",
                 "serial": f"SN{n:08d}", "mac": "52:54:00:%02x:%02x:%02x" % (n >> 16, (n >> 8) & 255, n & 255),
                 "ips": [f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"], "uptime": 3600.0, "model": "t640", "vendor": "Dell", "bios": "1.2.3",
                 "iface": "eth0", "image": "img-13", "boot_id": f"b{n:030d}", "asset_id": f"A{n}"}
        ingest.add(f"salt/beacon/tc-{n:05d}/tc_status/status",
                   {"v": 2, "epoch": 1, "seat": f"tc-{n:05d}", "seq": 1, "ts": NOW, "reason": "start",
                    "changed": [], "heartbeat": HB, "facts": facts, "sig": "c2ln"})
    ingest.flush()


def nested(data):
    """What ``salt-run`` prints by default (the nested outputter, no colour)."""
    import salt.output.nested as out  # pylint: disable=import-outside-toplevel

    out.__opts__ = {"color": False, "color_theme": None, "strip_colors": True}
    return out.NestDisplay(retcode=0).display(data, 0, "", [])


def measure(conn, runs, **kw):
    best, answer = None, None
    for _ in range(runs):
        t0 = time.process_time()
        req = seat_rows.request(known=KNOWN, **kw)
        answer = seat_rows.answer(tc_assets.seats(conn, NOW, HB, 3, **req["filters"]), req)
        spent = time.process_time() - t0
        best = spent if best is None else min(best, spent)
    text = "\n".join(nested(answer))
    return {"cpu_s": round(best, 3), "rows": len(answer) if isinstance(answer, list) else 0,
            "json_bytes": len(json.dumps(answer)), "nested_bytes": len(text.encode()), "nested_lines": text.count("\n") + 1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seats", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rows-") as tmp:
        conn = store.connect(str(pathlib.Path(tmp) / "tc.sqlite"), tc_assets.MIGRATIONS)
        fill(conn, args.seats)
        got = {
            "seats": args.seats,
            "compact": measure(conn, args.runs),
            "full": measure(conn, args.runs, fields="all"),
            "offline_lon_sorted_20": measure(conn, args.runs, site="s07", sort="-idle", limit=20),
            "counts": measure(conn, args.runs, counts=True),
        }
        conn.close()
    got["size_ratio_nested"] = round(got["full"]["nested_bytes"] / got["compact"]["nested_bytes"], 1)
    print(json.dumps(got))


if __name__ == "__main__":
    main()
