"""
Issue 12, lab tier: the maintenance roll's host steps on a real compute host.

Real: a vm master started from the shipped config (salt-factories) with
``host_actions: salt``, running ``salt-run maintenance.start``; the Nova lab
(real API, scheduler, placement, live migration on the fake driver) for the
cloud steps (precheck, disable, drain, migrate, enable); and a compute host in
its own network + mount namespace: Open vSwitch (userspace datapath), libvirtd
with a QEMU guest on an OVS port, the host's dnsmasq on br-int and a real
salt-minion (id ``compute1``, as its nova-compute host name) that reaches the
master over a veth cable. ``_utils/maintenance_hosts.SaltHosts`` drives it:
``systemctl stop/start`` through ``cmd.run_all``, ``system.reboot``, the boot id
through ``file.read``, ``state.apply host.ovs_ports``, ``host_dnsmasq.audit``,
``host_overcommit.commit_ratio``.

SIMULATED (this box has no systemd as PID 1 and must not reboot): inside the
host's mount namespace ``/usr/bin/systemctl`` is the lab's ``host.sh``, which
maps the units to the lab daemons (``libvirt-guests.service`` runs the real
``/usr/lib/libvirt/libvirt-guests.sh`` with ON_SHUTDOWN=shutdown), and
``shutdown -r now`` (what ``system.reboot`` runs) is a power cycle: every process
in the host's namespace is killed (guests, libvirtd, OVS, dnsmasq, the minion),
the host's boot id (a file bound over /proc/sys/kernel/random/boot_id) changes
and the host's /run is emptied (libvirt's and OVS's runtime state, a tmpfs on a real
host) and the host "boots": OVS (``--delete-transient-ports``, as states/host/boot_order
sets it), libvirtd, libvirt-guests, dnsmasq, the minion. The lab guests are not
Nova's (Nova's hypervisor is the fake driver): desk-a stands for a guest left on
the host that ignores the ACPI shutdown (it sits in iPXE), so libvirt-guests
gives up on it, its OVS row survives the stop and the power cycle leaves it stale
(ofport -1, "No such device") - the incident of issue 4. The verify step must
repair it; started again afterwards, the guest takes a DHCP lease over OVS.
"""

import contextlib
import json
import os
import pathlib
import re
import sys
import textwrap
import time
import uuid

import pytest

from harness import novalab as novalab_mod
from harness import saltconf
from harness.netns import Topology, sh

from ovs_support import compute_host, domain_xml, lab_missing, wait_for

pytestmark = pytest.mark.skipif(
    (lab_missing() or novalab_mod.missing()) is not None, reason=str(lab_missing() or novalab_mod.missing())
)

HOST = "compute1"  # minion id = nova-compute host name
REASON = "kernel 6.1.0-28"
SALT_MINION = pathlib.Path(sys.executable).parent / "salt-minion"
GUEST = {"name": "desk-a", "uuid": str(uuid.UUID(int=0xA11CE)), "mac": "fa:16:3e:00:12:0a",
         "iface_id": "a0000120-0000-4000-8000-000000000120"}
GUEST["tap"] = f"tap{GUEST['iface_id'][:11]}"  # Nova's tap naming

HOST_SH = r"""#!/bin/sh
# The lab compute host's init (no systemd here): boot, the units the roll stops and starts
# (this file is bound over /usr/bin/systemctl in the host's mount namespace) and the
# simulated reboot (shutdown -r: a power cycle of every process in the host's namespace).
LAB=@LAB@
NS=@NS@
URI='@URI@'
export OVS_RUNDIR=$LAB/ovs/run OVS_LOGDIR=$LAB/ovs/log OVS_DBDIR=$LAB/ovs/db OVS_SYSCONFDIR=$LAB/ovs/etc
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
note() { echo "$*" >> $LAB/units.log; }

ovs_start() {
    $OVS_CTL --delete-transient-ports --system-id=random --no-monitor --no-record-hostname start \
        </dev/null >>$LAB/ovs-ctl.log 2>&1 || return 1
    ovs-vsctl --db=unix:$OVS_RUNDIR/db.sock --timeout=10 --may-exist add-br br-int -- set Bridge br-int datapath_type=netdev
    ip addr replace 10.77.0.1/24 dev br-int && ip link set br-int up
}
libvirtd_up() { virsh -c "$URI" version >/dev/null 2>&1; }
libvirtd_start() {
    libvirtd_up && return 0
    setsid unshare --mount --propagation private sh $LAB/lv/start-libvirtd.sh </dev/null >>$LAB/lv/libvirtd.stdout 2>&1 &
    echo $! > $LAB/libvirtd.pid
    for i in $(seq 120); do libvirtd_up && return 0; sleep 0.5; done
    echo "libvirtd did not answer" >&2; return 1
}
libvirtd_stop() {
    pid=$(cat $LAB/libvirtd.pid 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -KILL "$pid"
}
unit() {  # unit VERB NAME
    case "$1 $2" in
        "start openvswitch-switch.service") ovs_start ;;
        "stop openvswitch-switch.service") $OVS_CTL stop </dev/null >>$LAB/ovs-ctl.log 2>&1 ;;
        "start libvirtd.service") libvirtd_start ;;
        "stop libvirtd.service") libvirtd_stop ;;
        "start libvirt-guests.service") /usr/lib/libvirt/libvirt-guests.sh start </dev/null >>$LAB/libvirt-guests.log 2>&1 ;;
        # as systemd: a failing ExecStop (guests that ignored the shutdown) does not fail the stop job
        "stop libvirt-guests.service")
            /usr/lib/libvirt/libvirt-guests.sh stop </dev/null >>$LAB/libvirt-guests.log 2>&1 || note "libvirt-guests stop: rc $?" ;;
        *) echo "lab systemctl: no unit $2 on this host" >&2; return 5 ;;
    esac
}
boot() {
    note "boot $(cat $LAB/boot_id)"
    for u in openvswitch-switch.service libvirtd.service libvirt-guests.service; do
        unit start $u || note "boot: $u failed"
    done
    dnsmasq --conf-file=/dev/null --interface=br-int --bind-interfaces --except-interface=lo --port=0 \
        --dhcp-range=10.77.0.100,10.77.0.150,1h --dhcp-leasefile=$LAB/dnsmasq.leases --log-dhcp \
        --log-facility=$LAB/dnsmasq.log --pid-file=$LAB/dnsmasq.pid || note "boot: dnsmasq failed"
    setsid @SALT_MINION@ -c $LAB/minion-conf </dev/null >>$LAB/minion.out 2>&1 &
}
powercycle() {
    sleep 2  # the minion returns its reboot job first, as shutdown -r now would let it
    note "power cycle"
    init=$(cat $LAB/init.pid)
    for pid in $(ip netns pids $NS); do
        [ "$pid" = "$$" ] || [ "$pid" = "$init" ] || kill -KILL "$pid" 2>/dev/null
    done
    sleep 1
    # /run is a tmpfs on a real host: what libvirt and OVS kept there does not survive a reboot
    rm -rf $LAB/lv/run/* $OVS_RUNDIR/*
    cat /proc/sys/kernel/random/uuid > $LAB/boot_id
    boot
}

case "$(basename "$0")" in
    systemctl)
        note "systemctl $*"
        unit "$@" ;;
    shutdown)
        note "shutdown $*"
        [ "$1" = "-r" ] || { echo "lab: only shutdown -r" >&2; exit 1; }
        setsid sh $LAB/host.sh powercycle </dev/null >>$LAB/powercycle.log 2>&1 &
        ;;
    *)
        case "$1" in
            init)
                set -e
                echo $$ > $LAB/init.pid
                mount --bind $LAB/boot_id /proc/sys/kernel/random/boot_id
                mount --bind $LAB/host.sh /usr/bin/systemctl
                mount --bind $LAB/libvirt-guests.conf /etc/default/libvirt-guests
                mount --bind $LAB/varlib /var/lib/libvirt
                mount --bind $LAB/runlock /run/lock
                set +e
                boot
                exec sleep infinity ;;
            powercycle) powercycle ;;
        esac ;;
esac
"""


def root_side_link(ns, tag):
    """A veth cable from the box's namespace to the host's; the vm master listens on the root end."""
    octet = 16 + os.getpid() % 200
    root_if, host_if = f"mt{os.getpid() % 100000}{tag}", "eth-mgmt"
    root_ip, host_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    sh(["ip", "link", "add", root_if, "type", "veth", "peer", "name", f"{root_if}p"])
    sh(["ip", "link", "set", f"{root_if}p", "netns", ns.name])
    ns.run(["ip", "link", "set", f"{root_if}p", "name", host_if])
    sh(["ip", "addr", "add", f"{root_ip}/30", "dev", root_if])
    sh(["ip", "link", "set", root_if, "up"])
    ns.run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if])
    ns.run(["ip", "link", "set", host_if, "up"])
    return root_if, root_ip


def write_host(host, master, root_ip):
    """The host's files: init script, libvirt config, libvirt-guests config, minion config + preseeded key."""
    base = host.base
    for sub in ("varlib", "runlock", "minion-conf"):
        (base / sub).mkdir(exist_ok=True)
    (base / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    host._write_libvirt_config()  # pylint: disable=protected-access  (lv/start-libvirtd.sh, libvirtd.conf, qemu.conf)
    script = HOST_SH.replace("@LAB@", str(base)).replace("@NS@", host.ns.name).replace("@URI@", host.uri)
    (base / "host.sh").write_text(script.replace("@SALT_MINION@", str(SALT_MINION)))
    (base / "host.sh").chmod(0o755)
    (base / "libvirt-guests.conf").write_text(
        f"URIS='{host.uri}'\nON_BOOT=ignore\nON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=10\nPARALLEL_SHUTDOWN=0\n"
    )
    pki = base / "minion-root" / "pki"
    saltconf.preseed_key(master.config, HOST, pki)
    conf = {
        "id": HOST, "master": root_ip, "master_port": master.config["ret_port"], "user": "root",
        "root_dir": str(base / "minion-root"), "pki_dir": str(pki),
        "log_file": str(base / "minion-root" / "minion.log"), "log_level_logfile": "info",
        "acceptance_wait_time": 1, "random_reauth_delay": 0, "recon_default": 500, "recon_max": 2000,
        "grains": {"deskfleet_role": "compute"},
        "deskfleet": {"host": {"ovs_ports": {"ovs_db": host.ovs_db, "libvirt_uri": host.uri, "confirm_delay": 1,
                                             "settle": 15}}},
        # overcommit reads deskfleet:host:overcommit from pillar; this minion-config key is its old form (warns)
        "host_memory": {"libvirt_uri": host.uri},
    }
    (base / "minion-conf" / "minion").write_text(json.dumps(conf, indent=1))


def salt(master, fun, *args, timeout=120):
    return master.salt_cli(timeout=timeout).run(fun, *args, minion_tgt=HOST)


def answers(master):
    from pytestshellutils.exceptions import FactoryTimeout  # pylint: disable=import-outside-toplevel

    try:
        return master.salt_cli(timeout=20).run("test.ping", "--timeout=10", minion_tgt=HOST).data is True
    except FactoryTimeout:
        return False


def tail(base, *names):
    out = []
    for name in names:
        path = base / name
        out.append(f"--- {name}\n" + (path.read_text(errors="replace")[-1500:] if path.exists() else "(none)"))
    return "\n".join(out)


def dhcp_acks(base):
    log = base / "dnsmasq.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return len(re.findall(rf"DHCPACK\(br-int\) \S+ {GUEST['mac']}", text))


def libvirt_conn(host):
    import libvirt  # pylint: disable=import-outside-toplevel

    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt.open(host.uri)


def journal_steps(master):
    import deskfleet_store  # pylint: disable=import-outside-toplevel
    import maintenance_journal as journal  # pylint: disable=import-outside-toplevel

    db = journal.connect(deskfleet_store.default_path(master.config, "vm"))
    try:
        return journal.steps(db, journal.get_roll(db)["id"], HOST)
    finally:
        db.close()


@pytest.fixture
def nova():
    with novalab_mod.NovaLab(computes=2) as lab:
        yield lab


def test_roll_reboots_a_real_host_and_verify_repairs_the_stale_port(salt_factories, nova, tmp_path):
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(compute_host(Topology))
        root_if, root_ip = root_side_link(host.ns, "r")
        stack.callback(sh, ["ip", "link", "del", root_if], check=False)
        conf = saltconf.lab_master_config("vm", tmp_path / "etc")
        conf["deskfleet"]["vm"].update(cloud=nova.cloud, clouds_yaml=nova.clouds_yaml, maintenance={
            "host_actions": "salt",
            # the box is shared: audit this host's DHCP instance, not every dnsmasq on the machine
            "verify_kwargs": {"dnsmasq": {"pidfiles": [str(host.base / "dnsmasq.pid")]}},
        })
        conf.update(interface=root_ip, schedule={})  # no keeper passes, no tick: the test drives the roll
        master = salt_factories.salt_master_daemon("mt-lab-master", overrides=conf)
        stack.enter_context(master.started())
        write_host(host, master, root_ip)
        host.ns.popen(["unshare", "--mount", "--propagation", "private", "sh", str(host.base / "host.sh"), "init"])
        assert wait_for(lambda: answers(master), 180), "the host's minion never answered:\n" + tail(
            host.base, "units.log", "minion.out", "minion-root/minion.log", "ovs-ctl.log", "lv/libvirtd.stdout")
        assert salt(master, "saltutil.sync_all", timeout=180).returncode == 0  # the host modules import _utils
        boot_before = salt(master, "file.read", "/proc/sys/kernel/random/boot_id").data.strip()
        assert boot_before == (host.base / "boot_id").read_text().strip()

        # a guest on an OVS port takes a lease from the host's dnsmasq
        conn = libvirt_conn(host)
        conn.defineXML(domain_xml(GUEST["name"], GUEST["uuid"], GUEST["mac"], GUEST["iface_id"], tap=GUEST["tap"],
                                  virt_type="qemu", pxe=True)).create()
        conn.close()
        assert wait_for(lambda: dhcp_acks(host.base), 120), "desk-a took no DHCP lease before the roll"
        # and a user's desktop on the same host in Nova, which the roll live-migrates away
        oc = nova.connect()
        desk = oc.compute.create_server(name="desk-0042", flavor_id=nova.flavor_id, image_id=nova.image_id,
                                        networks=[{"uuid": nova.network_id}], availability_zone=f"nova:{HOST}",
                                        metadata={"deskfleet_pool": "sales", "deskfleet_state": "taken"})
        oc.compute.wait_for_server(desk, status="ACTIVE", interval=0.5, wait=180)

        roll = master.salt_run_cli(timeout=900).run(
            "maintenance.start", f"hosts={json.dumps([HOST])}", f"reason={REASON}", "poll=1",
            "migration_timeout=180", "minion_timeout=300",
        )
        print(f"\n[maintenance lab] roll returned {roll.returncode} after {time.monotonic() - t0:.0f} s")
        assert roll.returncode == 0, roll
        assert roll.data["state"] == "done" and roll.data["hosts"][HOST]["state"] == "done", roll.data

        units = (host.base / "units.log").read_text().splitlines()
        print("[maintenance lab] host log:\n  " + "\n  ".join(units))
        print(tail(host.base, "libvirt-guests.log"))
        roll_calls = [u for u in units if u.startswith(("systemctl", "shutdown", "power", "boot"))][1:]
        stop_at = roll_calls.index("systemctl stop libvirt-guests.service")
        assert roll_calls[stop_at:stop_at + 5] == [
            "systemctl stop libvirt-guests.service", "systemctl stop libvirtd.service",
            "systemctl stop openvswitch-switch.service", "shutdown -r now", "power cycle",
        ], roll_calls
        assert roll_calls[-2:] == ["systemctl start openvswitch-switch.service", "systemctl start libvirtd.service"]
        steps = journal_steps(master)
        assert steps["reboot"]["detail"]["boot_id_before"] == boot_before
        assert steps["wait_minion"]["detail"]["boot_id"] not in (boot_before, None)
        assert all(s["attempts"] == 1 and s["state"] == "done" for s in steps.values()), steps

        # the power cycle left desk-a's row stale; the verify step repaired it through Salt
        verify = steps["verify"]["detail"]["checks"]
        repair = next(s for s in verify["ovs_ports"]["result"].values()
                      if s["__id__"] == "host-ovs-ports-repair")["changes"]["host_ovs_ports.repair"]
        print("[maintenance lab] verify repaired: " + json.dumps(repair["changes"], default=str)[:800])
        assert repair["before"]["broken"] >= 1 and repair["after"]["broken"] == repair["after"]["orphan"] == 0
        fixed = repair["changes"][GUEST["tap"]]
        assert fixed["action"] == "del-port" and "No such device" in " ".join(fixed["problems"]), fixed
        assert verify["dnsmasq"]["ok"] and verify["memory"]["ok"], verify
        assert GUEST["tap"] not in host.interfaces()
        assert host.vsctl("--columns=name", "find", "Interface", "ofport<0").strip() == ""

        # the cloud side: the user's desktop moved, the host is back in service
        moved = oc.compute.get_server(desk.id)
        assert moved.compute_host != HOST and moved.status == "ACTIVE"
        svc = next(s for s in oc.compute.services(binary="nova-compute") if s.host == HOST)
        assert svc.status == "enabled" and not svc.disabled_reason
        oc.close()

        # the guest starts again on the repaired host and takes its lease over a fresh port
        acks_before = dhcp_acks(host.base)
        conn = libvirt_conn(host)
        conn.lookupByName(GUEST["name"]).create()
        conn.close()
        assert wait_for(lambda: dhcp_acks(host.base) > acks_before, 120), "no DHCP lease after the roll"
        row = host.interfaces()[GUEST["tap"]]
        assert row["ofport"] > 0 and not row["error"], row
        print(f"[maintenance lab] lease after the roll; whole test {time.monotonic() - t0:.0f} s")
