"""
What ``make lab-up`` builds (run inside the lab supervisor, ``harness.lab_up serve``): the
Nova lab and both masters from the shipped config, thin clients and desktops, the pool,
and the files the README examples name. Every name here is one the README uses.
"""

import contextlib
import datetime
import os
import pathlib
import sys

import yaml

from harness import demo, novalab
from harness.lab import BIN, Lab, wait_for

HEARTBEAT = 15  # seconds: a stopped seat is stale after 23 s, offline after 45 s
POOL = "callcentre-win11"
DESKTOPS = ("desk-0042", "desk-0043")
# seat, firmware, site, department, (session target, state), idle seconds
SEATS = [
    ("tc-lon-0041", "13.2.0", "LON", "sales", ("desk-0042", "connected"), 4),
    ("tc-lon-0042", "13.2.0", "LON", "support", ("desk-0043", "connected"), 4000),
    ("tc-man-0001", "12.9.4", "MAN", "support", (None, "none"), 86000),
    ("tc-man-0002", "13.1.0", "MAN", "billing", ("desk-0007", "disconnected"), 30),
    ("tc-bhx-0001", "12.9.4", "BHX", "sales", (None, "none"), 600),
]
OFFLINE_SEAT = "tc-bhx-0001"  # reports once, then its thin client is switched off
PLAN_WEEK = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc)  # ISO week 49 (README: week49.csv)


@contextlib.contextmanager
def built(base, note, stop):
    """Bring the lab up under ``base``; ``note(name, pid, stopped=False)`` records each process group."""
    base = pathlib.Path(base)
    _wall_stand_in(base)
    with Lab(base, shipped_ports=True) as lab, contextlib.ExitStack() as stack:
        nova = stack.enter_context(novalab.NovaLab(base_dir=str(base), computes=3, timeout=600))
        note("novalab", nova.pid)
        tc, vm = _masters(lab, base, nova, note)
        seats = [demo.start_seat(lab, tc, base, n, *row)[0] for n, row in enumerate(SEATS, start=41)]
        for minion in seats:
            note(minion.name, minion.proc.pid)
        desktops = _start_desktops(lab, vm, base, note)
        _check(stop)
        _seats_ready(tc, seats, note)
        _check(stop)
        _desktops_ready(vm, desktops)
        _check(stop)
        _fill_pool(vm, nova)
        _files(base)
        (base / "env.sh").write_text(env_sh(base, tc, vm))
        yield lab


def _check(stop):
    if stop.is_set():
        raise KeyboardInterrupt("lab stopped during start-up")


def _wall_stand_in(base):
    """The desktops' ``wall`` writes to a log: the real one would write to every terminal of this box."""
    bindir = base / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "wall").write_text(f"#!/bin/sh\ncat >> {base / 'wall.log'}\n")
    (bindir / "wall").chmod(0o755)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


def _masters(lab, base, nova, note):
    pillar = base / "vm-pillar"
    pillar.mkdir()
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": {POOL: {
        "flavor": "desk.small", "image": nova.image_id, "network": nova.network_id,
        "metadata": {"department": "sales"}, "spares": 2, "max_size": 6, "max_in_flight": 2,
    }}}}))
    demo.escrow_keys(base)  # base/operator.pem; base/etc/password-escrow.pub, which the vm master reads
    tc = lab.master("tc-master", "tc", heartbeat=HEARTBEAT, beacon_interval=1)
    vm = lab.master("vm-master", "vm", pillar_first=pillar, cloud=nova.cloud, clouds_yaml=nova.clouds_yaml,
                    maintenance={"host_actions": "simulated"}, enroll={"seed_keys": False})
    # seed_keys off: a fake-driver pool desktop never boots a minion, so a seeded key would only
    # make every '*' job wait for it. Profiles the lab's desktops may hand out: under the lab dir, not this box's /home
    vm.config["deskfleet"]["vm"]["userdata"]["roots"] = {"windows": ["C:\\Users"], "linux": [str(base / "home")]}
    (vm.conf_dir / "master").write_text(yaml.safe_dump(vm.config))
    for master in (tc, vm):
        master.start()
        note(master.name, master.proc.pid)
    for master in (tc, vm):
        master.wait_ready(timeout=300)
    for master in (tc, vm):  # the portal and the broker's door (README: "Portal and roles")
        api = lab.api(master).start()
        note(api.name, api.proc.pid)
        api.wait_ready(timeout=300)
    return tc, vm


def _start_desktops(lab, vm, base, note):
    desktops = []
    for name in DESKTOPS:
        root = demo.make_desk_root(base / f"{name}-root")
        minion = lab.minion(name, vm, grains={"deskfleet_role": "desktop", "deskfleet_lab_root": str(root)},
                            deskfleet={"passwords": {"linux_root": str(root)}})
        desktops.append(minion.start())
        note(name, minion.proc.pid)
    return desktops


def _seats_ready(tc, seats, note):
    ids = [m.name for m in seats]
    tc.wait_minions(ids, timeout=300)
    tc.salt("tc-*", "state.apply", "tc", timeout=300)
    tc.salt("tc-*", "saltutil.refresh_pillar", "wait=True", timeout=120)
    wait_for(lambda: len(tc.run("tc_inventory.list") or []) >= len(ids), 300, 2, what="every seat in the inventory")
    offline = next(m for m in seats if m.name == OFFLINE_SEAT)
    offline.stop()
    note(offline.name, offline.proc.pid, stopped=True)


def _desktops_ready(vm, desktops):
    ids = [m.name for m in desktops]
    wait_for(lambda: set(ids) <= set((vm.keys() or {}).get("minions_pre", [])), 300, 1, what="the desktops' keys")
    for name in ids:
        vm.accept(name)  # ops accept a desktop's key; the vm master never autosigns
    vm.wait_minions(ids, timeout=300)
    vm.salt("desk-*", "saltutil.sync_all", timeout=300)
    vm.salt("desk-*", "saltutil.refresh_pillar", "wait=True", timeout=120)


def _fill_pool(vm, nova):
    """The keeper fills the pool; the lab marks booted spares ready (no minion boots in a fake-driver server)."""
    vm.run("vmpool.reconcile", timeout=300)
    conn = nova.connect()
    try:
        def booted():
            servers = [s for s in conn.compute.servers() if (s.metadata or {}).get("deskfleet_pool") == POOL]
            return len(servers) >= 2 and all(s.status == "ACTIVE" for s in servers) and servers

        for server in wait_for(booted, 300, 1, what=f"pool {POOL} booted"):
            vm.run("vmpool.mark_ready", server.name)
    finally:
        conn.close()


def _files(base):
    """What README examples name: shift plans, a report directory, a profile file, a token directory."""
    plans = base / "plans"
    plans.mkdir()
    (plans / "week49.csv").write_text(week_plan(PLAN_WEEK))
    (plans / "week49-bad.csv").write_text(week_plan(PLAN_WEEK).replace("LON,sales,", "LON,sale,", 1))
    (base / "www").mkdir()
    (base / "tokens").mkdir(exist_ok=True)
    notes = base / "home" / "alice" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("alice's notes: call back Mr Smith on Tuesday\n")


def week_plan(monday):
    """A shift plan for the lab's departments: closed at night, staffed by day, a week from ``monday``."""
    rows = ["site,department,start,end,expected"]
    pairs = sorted({(site, dept) for _, _, site, dept, _, _ in SEATS})
    for day in range(7):
        start = monday + datetime.timedelta(days=day)
        cuts = [start, start + datetime.timedelta(hours=8), start + datetime.timedelta(hours=17), start + datetime.timedelta(days=1)]
        for site, dept in pairs:
            for (begin, end), expected in zip(zip(cuts, cuts[1:]), (0, 2, 1)):
                rows.append(f"{site},{dept},{begin.isoformat()},{end.isoformat()},{expected}")
    return "\n".join(rows) + "\n"


def env_sh(base, tc, vm):
    """What ``. <lab>/env.sh`` does: this venv's Salt first on PATH, one function per master."""
    return f"""# deskfleet lab ({base}): both masters from the shipped config. Source it: . {base / 'env.sh'}
# use_tc / use_vm point every Salt CLI (salt, salt-run, salt-key) at one master: SALT_CONFIG_DIR is their -c default.
export DESKFLEET_LAB={base}
export PATH={BIN}:$PATH
# portals (salt-api, file eauth users viewer/operator/broker, password lab-<user>): {tc.config['rest_cherrypy']['port']} tc, {vm.config['rest_cherrypy']['port']} vm
export DESKFLEET_TC_PORTAL=http://127.0.0.1:{tc.config['rest_cherrypy']['port']}/portal
export DESKFLEET_VM_PORTAL=http://127.0.0.1:{vm.config['rest_cherrypy']['port']}/portal
use_tc() {{ export SALT_CONFIG_DIR={tc.conf_dir}; }}
use_vm() {{ export SALT_CONFIG_DIR={vm.conf_dir}; }}
use_tc
"""


if __name__ == "__main__":
    sys.exit("run: python -m harness.lab_up up")
