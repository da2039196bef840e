"""
``make demo``: both deskfleet masters doing real work on embedded defaults.

tc master: four thin clients with varied (fake) hardware enroll with the
per-device tokens ops issue (a fifth without a token stays pending until it
expires); their beacons fill the inventory; the HTML report is written; one thin client is re-imaged and the
inventory follows.

vm master: a desktop VM minion gets a scheduled software install (batched
rollout) and a LAPS-style password rotation (escrowed, shown with the operator
key); a pool of pre-booted desktops is filled on an embedded Nova (real API,
placement, scheduler, fake hypervisor) and refilled through the reactor after a
desktop is taken. Every daemon is stopped on the way out.
"""

import argparse
import contextlib
import json
import pathlib
import shutil
import sys
import tempfile
import time

import yaml

from harness import demo_activity, demo_maintenance, demo_messages, novalab, saltconf, tcroot
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
        with Lab(base) as lab, contextlib.ExitStack() as stack:
            run_demo(lab, base, out, stack)
        say("\n== Host maintenance: roll one compute host on the embedded Nova (3 computes, live migration)")
        demo_maintenance.main()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    say(f"\nDemo finished in {time.time() - started:.0f} s; every daemon stopped.")
    return 0


def demo_vm_setup(base, stack):
    """Embedded defaults for the vm master: a Nova lab, a pool, the escrow key, a throwaway root."""
    nova = stack.enter_context(novalab.NovaLab(base_dir=str(base)))
    pillar = base / "vm-pillar"
    pillar.mkdir()
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": {"demo": {
        "flavor": "desk.small", "image": nova.image_id, "network": nova.network_id,
        "metadata": {"department": "sales"}, "spares": 3, "max_size": 5, "max_in_flight": 3,
    }}}}))
    operator_key = escrow_keys(base)
    return nova, pillar, operator_key, make_desk_root(base / "desk-0001-root")


def escrow_keys(base):
    """The operators' key pair: private half ``base/operator.pem``, public half where the vm master's config reads it."""
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    operator_key = base / "operator.pem"
    operator_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    operator_key.chmod(0o600)
    (base / "etc").mkdir(exist_ok=True)
    (base / "etc" / "password-escrow.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return operator_key


def make_desk_root(path):
    """A desktop's throwaway system root (passwords, installs)."""
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nlocaladmin:x:1000:1000::/home/localadmin:/bin/sh\n")
    (path / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\nlocaladmin:!:19000:0:99999:7:::\n")
    (path / "etc" / "group").write_text("root:x:0:\nlocaladmin:x:1000:\n")
    (path / "etc" / "shadow").chmod(0o600)
    return path


def run_demo(lab, base, out, stack):
    tc, vm, nova, operator_key, desk_root = start_masters(lab, base, stack)
    enroll_seats(lab, tc, vm, base, desk_root)
    show_inventory(tc, base, out)
    demo_activity.show(tc, base, out, say)
    demo_messages.main(tc, base / "tc-roots")
    demo_vm(vm, nova, operator_key)


def start_masters(lab, base, stack):
    say("== 1. Two masters from the shipped config (salt_tc/master.d, salt_vm/master.d)")
    nova, vm_pillar, operator_key, desk_root = demo_vm_setup(base, stack)
    say(f"   embedded Nova + placement up in {nova.startup_seconds:.1f} s on {nova.compute_url}")
    tc = lab.master("tc-master", "tc", heartbeat=HEARTBEAT, beacon_interval=1)
    vm = lab.master(
        "vm-master", "vm", pillar_first=vm_pillar,
        drop_schedule=("deskfleet_software_tick", "deskfleet_password_rotate_due"),
        cloud=nova.cloud, clouds_yaml=nova.clouds_yaml,
    )
    for master in (tc, vm):
        master.start()
    for master in (tc, vm):
        master.wait_ready()
        say(f"   {master.name}: listening on 127.0.0.1:{master.config['ret_port']}")
    return tc, vm, nova, operator_key, desk_root


def enroll_seats(lab, tc, vm, base, desk_root):
    say("\n== 2. Thin clients enroll with per-device tokens; one has no token")
    for n, row in enumerate(THIN_CLIENTS, start=1):
        issued = start_seat(lab, tc, base, n, *row)[1]
        say(f"   salt-run enroll.issue {row[0]} serial=TC{n:06d} path=... -> token {issued.get('token_id', issued)}")
    rogue_root = tcroot.make(base / "tc-roots" / "tc-rogue-0001", 99)
    lab.minion("tc-rogue-0001", tc, **saltconf.tc_minion_config(rogue_root, enroll="v1:" + "0" * 64 + ":TC000099")).start()
    lab.minion(
        "desk-0001", vm, grains={"deskfleet_role": "desktop", "deskfleet_lab_root": str(desk_root)},
        deskfleet={"passwords": {"linux_root": str(desk_root)}},
    ).start()
    seats = [t[0] for t in THIN_CLIENTS]
    wait_for(lambda: "tc-rogue-0001" in (tc.keys() or {}).get("minions_pre", []), 60, what="the rogue key to show up")
    tc.wait_minions(seats)
    keys = tc.keys()
    say(f"   tc master accepted: {', '.join(keys['minions'])}")
    say(f"   tc master pending (no token, never accepted): {', '.join(keys['minions_pre'])}")
    for row in tc.run("enroll.pending")["pending"]:
        say(f"   salt-run enroll.pending: {row['id']} key {row['fingerprint'][:23]}… age {row['age_seconds']} s, expires in {row['expires_in']} s")
    consumed = [t for t in tc.run("enroll.list") if t["state"] == "consumed"]
    say(f"   salt-run enroll.list: {len(consumed)} tokens consumed, each by the key fingerprint of its device")
    wait_for(lambda: "desk-0001" in (vm.keys() or {}).get("minions_pre", []), 60, what="desk-0001's key")
    vm.accept("desk-0001")  # ops accept VM keys; the vm master never autosigns
    vm.wait_minions(["desk-0001"])
    say(f"   vm master minions: {', '.join(vm.keys()['minions'])}")
    say(f"   tc master sees desk-0001? {'desk-0001' in tc.keys()['minions']};  vm master sees tc-*? "
        f"{any(k.startswith('tc-') for k in vm.keys()['minions'])}")


def start_seat(lab, tc, base, n, seat, firmware, site, dept, session, idle):
    """Thin client number ``n``: fake hardware, a token from ``enroll.issue``, enrolled and started. (minion, issue return)"""
    root = tcroot.make(base / "tc-roots" / seat, n, firmware=firmware, site=site, department=dept, session=session, idle=idle)
    tokens = base / "tokens"
    issued = tc.run("enroll.issue", seat, f"serial=TC{n:06d}", f"path={tokens / seat}")
    minion = lab.minion(seat, tc, **saltconf.tc_minion_config(root))
    saltconf.enroll_device(tokens / seat, seat, minion.root / "etc/salt/pki/minion", root, conf_dir=minion.conf_dir)
    return minion.start(), issued


def show_inventory(tc, base, out):
    seats = [t[0] for t in THIN_CLIENTS]
    say("\n== 3. Sync deskfleet's modules to the thin clients (the tc baseline state)")
    ret = tc.salt("tc-*", "state.apply", "tc", timeout=120)
    for seat in sorted(ret):
        states = ret[seat] if isinstance(ret[seat], dict) else {}
        ok = all(s.get("result") for s in states.values()) and states
        say(f"   {seat}: {'ok' if ok else ret[seat]}")
    tc.salt("tc-*", "saltutil.refresh_pillar", "wait=True")

    say("\n== 4. Beacons → tc master bus → tc_ingest engine → store. The inventory:")
    rows = wait_for(lambda: (r := tc.run("tc_inventory.list", "fields=all")) and len(r) == len(seats) and r, 90, what="all seats in the inventory")
    table(rows)
    say("\n   salt-run tc_inventory.list site=MAN idle_over=3600:")
    table(tc.run("tc_inventory.list", "site=MAN", "idle_over=3600", "fields=all"))

    say("\n== 5. HTML fleet report (self-contained, inline SVG)")
    report = tc.run("tc_inventory.report", f"path={out / 'tc-report.html'}")
    say(f"   {report['path']}: {report['seats']} seats, {report['by_status']}")

    say("\n== 6. tc-man-0001 is re-imaged to firmware 13.2.0")
    tcroot.set_firmware(base / "tc-roots" / "tc-man-0001", "13.2.0")
    t0 = time.time()
    seat = wait_for(
        lambda: (s := tc.run("tc_inventory.show", "tc-man-0001")) and s.get("firmware") == "13.2.0" and s, 60, what="the new firmware"
    )
    say(f"   inventory updated in {time.time() - t0:.1f} s: firmware {seat['firmware']}, last change {seat['last_change']}")
    table(tc.run("tc_inventory.list", "firmware=13.2.0", "fields=all"))
    summary = tc.run("tc_inventory.summary")
    say(f"\n   by firmware: {summary['by_firmware']}; ingest counters: {summary['ingest']}")


def demo_vm(vm, nova, operator_key):
    vm.salt("desk-0001", "saltutil.sync_all", timeout=120)
    vm.salt("desk-0001", "saltutil.refresh_pillar", "wait=True")

    say("\n== 7. vm master: a software install scheduled into a maintenance window")
    rollout = vm.run("software.schedule", "target=desk-0001", "software=deskfleet-demo", "start=now", "end=+1h", "batch=1")
    say(f"   salt-run software.schedule ... -> rollout {rollout.get('id')} ({rollout.get('state', rollout.get('error'))})")
    for _ in range(5):
        vm.run("software.tick", timeout=180)  # what the master schedule does every minute
        status = vm.run("software.status", str(rollout.get("id")))
        if status.get("state") in ("done", "succeeded", "completed", "halted", "failed"):
            break
    minions = status.get("minions", {})
    say(f"   rollout state: {status.get('state')}; per minion: {json.dumps({m: v.get('state', v) if isinstance(v, dict) else v for m, v in minions.items()})}")
    say(f"   desk-0001 now reports: {vm.salt('desk-0001', 'software.status', 'deskfleet-demo').get('desk-0001')}")

    say("\n== 8. vm master: LAPS-style password rotation, escrowed to the operators' key")
    rotated = vm.run("password.rotate", "desk-0001", "localadmin")
    say(f"   salt-run password.rotate desk-0001 localadmin -> {json.dumps(rotated)[:300]}")
    shown = __import__("subprocess").run(
        [str(vm_bin("salt-run")), "-c", str(vm.conf_dir), "password.show", "desk-0001", "localadmin", f"key={operator_key}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    say("   salt-run password.show desk-0001 localadmin key=operator.pem (plaintext goes to this terminal only):")
    for line in shown.stdout.strip().splitlines()[:6]:
        say(f"     {line}")
    say(f"   audit: {json.dumps(vm.run('password.audit'))[:300]}")

    say("\n== 9. vm master: pool 'demo' filled on the embedded Nova, refilled after a desktop is taken")
    filled = vm.run("vmpool.reconcile")
    booted = filled.get("booted") or "nothing more: the master schedule's reconcile (every 60 s) had already filled it"
    say(f"   salt-run vmpool.reconcile -> booted {booted}")
    conn = nova.connect()
    try:
        servers = wait_for(lambda: (s := [x for x in conn.compute.servers() if (x.metadata or {}).get('deskfleet_pool') == 'demo'])
                           and all(x.status == "ACTIVE" for x in s) and s, 90, what="3 ACTIVE desktops")
        for server in servers:  # what the minion-start reactor's orchestration does once the baseline ran
            vm.run("vmpool.mark_ready", server.name)
        say(f"   status: {vm.run('vmpool.status')['pools']['demo']}")
        conn.compute.set_server_metadata(servers[0], deskfleet_state="taken")
        say(f"   a user takes {servers[0].name}; the broker fires deskfleet/pool/taken")
        vm.run("event.send", "deskfleet/pool/taken", '{"pool": "demo"}')
        wait_for(lambda: len([x for x in conn.compute.servers() if (x.metadata or {}).get('deskfleet_pool') == 'demo']) == 4,
                 60, what="the reactor to boot a replacement")
        say(f"   after the reactor ran vmpool.on_event: {vm.run('vmpool.status')['pools']['demo']}")
    finally:
        conn.close()


def vm_bin(name):
    from harness.lab import BIN  # pylint: disable=import-outside-toplevel

    return BIN / name


if __name__ == "__main__":
    sys.exit(main())
