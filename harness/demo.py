"""
``make demo``: both deskfleet masters doing real work on embedded defaults.

Starts the tc master and the vm master on 127.0.0.1 from the shipped config,
four thin clients with varied (fake) hardware plus one with a wrong enrollment
secret, and one desktop VM minion. Syncs the modules, waits for the beacons,
prints the inventory, writes the HTML report, changes one thin client's
firmware and shows the inventory follow. Stops everything on the way out.
"""

import argparse
import pathlib
import secrets
import shutil
import sys
import tempfile
import time

from harness import saltconf, tcroot
from harness.lab import Lab, wait_for

HEARTBEAT = 15
THIN_CLIENTS = [
    # seat, firmware, site, department, session, idle seconds
    ("tc-lon-0001", "13.2.0", "LON", "sales", ("desk-0001", "connected"), 4),
    ("tc-lon-0002", "13.2.0", "LON", "support", ("desk-0002", "connected"), 2400),
    ("tc-man-0001", "12.9.4", "MAN", "support", (None, "none"), 86000),
    ("tc-man-0002", "13.1.0", "MAN", "billing", ("desk-0007", "disconnected"), 30),
]
COLUMNS = ("seat", "status", "site", "serial", "mac", "ips", "firmware", "session_state", "session_target", "idle_seconds")


def say(text=""):
    print(text, flush=True)


def table(rows):
    cells = [[("-" if r.get(c) in (None, []) else ",".join(r[c]) if isinstance(r[c], list) else str(r[c])) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    say(line(COLUMNS))
    say(line("-" * w for w in widths))
    for row in cells:
        say(line(row))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, store, report) afterwards")
    args = parser.parse_args(argv)
    started = time.time()
    base = pathlib.Path(tempfile.mkdtemp(prefix="dfdemo-"))
    out = pathlib.Path.cwd() / "build"
    out.mkdir(exist_ok=True)
    try:
        with Lab(base) as lab:
            run_demo(lab, base, out)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    say(f"\nDemo finished in {time.time() - started:.0f} s; every daemon stopped.")
    return 0


def run_demo(lab, base, out):
    say("== 1. Two masters from the shipped config (salt_tc/master.d, salt_vm/master.d)")
    tc = lab.master("tc-master", "tc", heartbeat=HEARTBEAT, beacon_interval=1)
    vm = lab.master("vm-master", "vm")
    secret = secrets.token_hex(16)
    saltconf.write_enroll_secret(tc.opts, secret)
    for master in (tc, vm):
        master.start()
    for master in (tc, vm):
        master.wait_ready()
        say(f"   {master.name}: listening on 127.0.0.1:{master.config['ret_port']}")

    say("\n== 2. Thin clients enroll by autosign grain; one has the wrong secret")
    for n, (seat, firmware, site, dept, session, idle) in enumerate(THIN_CLIENTS, start=1):
        root = tcroot.make(base / "tc-roots" / seat, n, firmware=firmware, site=site, department=dept, session=session, idle=idle)
        lab.minion(seat, tc, **saltconf.tc_minion_config(secret, root)).start()
    rogue_root = tcroot.make(base / "tc-roots" / "tc-rogue-0001", 99)
    lab.minion("tc-rogue-0001", tc, **saltconf.tc_minion_config("not-the-secret", rogue_root)).start()
    lab.minion("desk-0001", vm, grains={"deskfleet_role": "desktop"}).start()
    seats = [t[0] for t in THIN_CLIENTS]
    wait_for(lambda: "tc-rogue-0001" in (tc.keys() or {}).get("minions_pre", []), 60, what="the rogue key to show up")
    tc.wait_minions(seats)
    keys = tc.keys()
    say(f"   tc master accepted: {', '.join(keys['minions'])}")
    say(f"   tc master pending (wrong secret, never auto-accepted): {', '.join(keys['minions_pre'])}")
    wait_for(lambda: "desk-0001" in (vm.keys() or {}).get("minions_pre", []), 60, what="desk-0001's key")
    vm.accept("desk-0001")  # ops accept VM keys; the vm master never autosigns
    vm.wait_minions(["desk-0001"])
    say(f"   vm master minions: {', '.join(vm.keys()['minions'])}")
    say(f"   tc master sees desk-0001? {'desk-0001' in tc.keys()['minions']};  vm master sees tc-*? "
        f"{any(k.startswith('tc-') for k in vm.keys()['minions'])}")

    say("\n== 3. Sync deskfleet's modules to the thin clients (the tc baseline state)")
    ret = tc.salt("tc-*", "state.apply", "tc", timeout=120)
    for seat in sorted(ret):
        states = ret[seat] if isinstance(ret[seat], dict) else {}
        ok = all(s.get("result") for s in states.values()) and states
        say(f"   {seat}: {'ok' if ok else ret[seat]}")
    tc.salt("tc-*", "saltutil.refresh_pillar", "wait=True")

    say("\n== 4. Beacons → tc master bus → tc_ingest engine → store. The inventory:")
    rows = wait_for(lambda: (r := tc.run("tc_inventory.list")) and len(r) == len(seats) and r, 90, what="all seats in the inventory")
    table(rows)
    say("\n   salt-run tc_inventory.list site=MAN idle_over=3600:")
    table(tc.run("tc_inventory.list", "site=MAN", "idle_over=3600"))

    say("\n== 5. HTML fleet report (self-contained, inline SVG)")
    report = tc.run("tc_inventory.report", f"path={out / 'tc-report.html'}")
    say(f"   {report['path']}: {report['seats']} seats, {report['by_status']}")

    say("\n== 6. tc-man-0001 is re-imaged to firmware 13.2.0")
    tcroot.set_firmware(base / "tc-roots" / "tc-man-0001", "13.2.0")
    t0 = time.time()
    seat = wait_for(
        lambda: (s := tc.run("tc_inventory.show", "tc-man-0001")) and s.get("firmware") == "13.2.0" and s, 60, what="the new firmware"
    )
    say(f"   inventory updated in {time.time() - t0:.1f} s: firmware {seat['firmware']}, last change {time.strftime('%H:%M:%S', time.localtime(seat['last_change']))}")
    table(tc.run("tc_inventory.list", "firmware=13.2.0"))
    summary = tc.run("tc_inventory.summary")
    say(f"\n   by firmware: {summary['by_firmware']}; ingest counters: {summary['ingest']}")


if __name__ == "__main__":
    sys.exit(main())
