"""
A compute host for the lab tier: Open vSwitch (ovsdb-server + ovs-vswitchd via
the packaged ``ovs-ctl``, userspace ``netdev`` datapath) and libvirtd (QEMU/KVM,
or TCG where KVM cannot run a guest) inside one network namespace, every path
under a temp dir:

- OVS takes ``OVS_RUNDIR/LOGDIR/DBDIR/SYSCONFDIR`` from the environment.
- libvirtd runs in a private mount namespace (``unshare -m``) with a tmpfs over
  ``/run`` and temp dirs bound over ``/etc/libvirt``, ``/var/lib/libvirt``,
  ``/var/log/libvirt``, ``/var/cache/libvirt``, ``/run/libvirt``; the OVS run dir
  is bound over ``/run/openvswitch`` because libvirt runs ``ovs-vsctl`` without
  ``--db`` (and without our environment), exactly as on a real host.
- qemu runs as root, no cgroups, no private /dev, no virtlogd.

Everything started here lives in the namespace, so ``Topology.close()`` (which
kills every pid in it) is the last line of clean-up; ``ComputeHost.shutdown()``
first stops it all politely.
"""

import contextlib
import fcntl
import importlib.util
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from harness.masterless import CHECKOUT, SALT_CALL, Masterless
from harness.netns import missing, sh
from harness.wait import poll as wait_for  # the value or, past the deadline, the last falsy one

import host_libvirt  # _utils is on sys.path (tests/conftest.py)
import host_ovsdb

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
TOOLS = ("ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "libvirtd", "qemu-system-x86_64", "unshare", "mount", "dnsmasq")
KVM_GET_API_VERSION = 0xAE00


def lab_missing():
    """Why this lab cannot run here, or None."""
    reason = missing(*TOOLS)
    if reason:
        return reason
    if not os.path.exists(OVS_CTL):
        return f"lab tier needs {OVS_CTL} (openvswitch-switch)"
    if not SALT_CALL.exists():
        return f"lab tier needs salt-call next to {sys.executable}"
    if importlib.util.find_spec("libvirt") is None:
        return "lab tier needs libvirt-python in the venv"
    if not os.path.exists("/dev/net/tun"):
        return "lab tier needs /dev/net/tun (libvirt creates taps)"
    return None


def kvm_status():
    """(True, 'why') when /dev/kvm answers KVM_GET_API_VERSION, else (False, 'why not')."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"/dev/kvm unusable: {exc}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"KVM_GET_API_VERSION failed: {exc}"
    finally:
        os.close(fd)
    return version == 12, f"/dev/kvm API version {version}"


def domain_xml(name, uuid, mac, iface_id, tap=None, virt_type="kvm", bridge="br-int", pxe=False, memory_mib=48):
    """
    A diskless guest with one OVS-virtualport NIC. ``tap`` fixes the tap name
    (as Nova does); None lets libvirt pick ``vnetN``. With ``pxe`` the NIC's iPXE
    ROM boots from the network (it takes a DHCP lease); without it the ROM is off
    and the guest halts in the BIOS.
    """
    target = f"<target dev='{tap}'/>" if tap else ""
    rom = "" if pxe else "<rom bar='off'/>"
    boot = "<boot dev='network'/>" if pxe else ""
    return textwrap.dedent(
        f"""\
        <domain type='{virt_type}'>
          <name>{name}</name>
          <uuid>{uuid}</uuid>
          <memory unit='MiB'>{memory_mib}</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type>{boot}<bios rebootTimeout='-1'/></os>
          <on_reboot>restart</on_reboot>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <interface type='bridge'>
              <mac address='{mac}'/>
              <source bridge='{bridge}'/>
              <virtualport type='openvswitch'><parameters interfaceid='{iface_id}'/></virtualport>
              {target}
              <model type='virtio'/>
              {rom}
            </interface>
            <memballoon model='none'/>
          </devices>
        </domain>
        """
    )


class ComputeHost:
    """OVS + libvirtd in the namespace ``ns``; all state under ``base`` (a short temp path)."""

    def __init__(self, topo, base):
        self.topo = topo
        self.ns = topo.ns("cmp")
        self.base = pathlib.Path(base)
        self.ovs_dirs = {k: self.base / "ovs" / k for k in ("run", "log", "db", "etc")}
        for path in self.ovs_dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        (self.ovs_dirs["etc"] / "openvswitch").mkdir(exist_ok=True)
        self.lv = self.base / "lv"
        for sub in ("etc", "run", "lib", "log", "cache"):
            (self.lv / sub).mkdir(parents=True, exist_ok=True)
        self.libvirtd = None
        self.conn = None
        self.uri = f"qemu:///system?socket={self.lv}/run/libvirt-sock"
        self.ovs_db = f"unix:{self.ovs_dirs['run']}/db.sock"
        self.minion = Masterless(self.base / "salt", minion_id="cmp-lab", extra_config={
            "log_level_logfile": "info",
            "utils_dirs": [str(CHECKOUT / "_utils")],
            # where this lab's daemons are: what a real host gets from its defaults
            "deskfleet": {"host": {"ovs_ports": {"ovs_db": self.ovs_db, "libvirt_uri": self.uri, "confirm_delay": 1,
                                                 "settle": 15}}},
        })

    # ------------------------------------------------------------------ OVS
    def ovs_env(self):
        env = dict(os.environ)
        env.update(
            OVS_RUNDIR=str(self.ovs_dirs["run"]),
            OVS_LOGDIR=str(self.ovs_dirs["log"]),
            OVS_DBDIR=str(self.ovs_dirs["db"]),
            OVS_SYSCONFDIR=str(self.ovs_dirs["etc"]),
        )
        return env

    def ovs_ctl(self, action, *opts):
        """``ovs-ctl <action>`` as the packaged units run it (start: --system-id=random, no monitor)."""
        cmd = [OVS_CTL, *opts, action]
        if action in ("start", "restart"):
            cmd += ["--system-id=random", "--no-monitor", "--no-record-hostname"]
        proc = self.ns.run(cmd, env=self.ovs_env(), check=False, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"ovs-ctl {action} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def start_ovs(self, delete_transient=False):
        return self.ovs_ctl("start", *(["--delete-transient-ports"] if delete_transient else []))

    def stop_ovs(self):
        return self.ovs_ctl("stop")

    def vsctl(self, *args, check=True):
        proc = self.ns.run(["ovs-vsctl", f"--db={self.ovs_db}", "--timeout=10", *args], check=False, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ovs-vsctl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def interfaces(self):
        """Interface rows by name (parsed with the module's own OVSDB parser)."""
        out = self.vsctl(
            "--format=json", "--data=json", "--columns=_uuid,name,type,ofport,error,ifindex,external_ids,other_config",
            "list", "Interface",
        )
        rows = {}
        for row in host_ovsdb.parse_ovs_list(out):
            for col in ("ofport", "error", "ifindex"):
                row[col] = host_ovsdb.optional(row[col])
            rows[row["name"]] = row
        return rows

    def show_interfaces(self, names=None):
        """Human ``ovs-vsctl list Interface`` output for the report."""
        cols = "--columns=_uuid,name,ofport,error,ifindex,external_ids,other_config"
        if names:
            return "".join(self.vsctl(cols, "list", "Interface", n, check=False) + "\n" for n in names)
        return self.vsctl(cols, "find", "Interface", "type=\"\"")

    def add_bridge(self, name="br-int"):
        self.vsctl("--may-exist", "add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")

    def netdev_ifindex(self, name):
        proc = self.ns.run(["cat", f"/sys/class/net/{name}/ifindex"], check=False)
        return int(proc.stdout) if proc.returncode == 0 else None

    # ------------------------------------------------------------------ libvirt
    def _write_libvirt_config(self):
        (self.lv / "etc" / "libvirtd.conf").write_text(
            textwrap.dedent(
                """\
                unix_sock_group = "root"
                unix_sock_rw_perms = "0700"
                auth_unix_rw = "none"
                auth_unix_ro = "none"
                log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
                log_filters = "1:util.netdevopenvswitch 1:util.command 3:*"
                """
            )
        )
        (self.lv / "etc" / "qemu.conf").write_text(
            textwrap.dedent(
                """\
                user = "root"
                group = "root"
                dynamic_ownership = 0
                remember_owner = 0
                security_driver = "none"
                cgroup_controllers = [ ]
                namespaces = [ ]
                stdio_handler = "file"
                """
            )
        )
        mounts = [
            ("tmpfs", "/run"),
            (self.lv / "run", "/run/libvirt"),
            (self.ovs_dirs["run"], "/run/openvswitch"),
            (self.lv / "etc", "/etc/libvirt"),
            (self.lv / "lib", "/var/lib/libvirt"),
            (self.lv / "log", "/var/log/libvirt"),
            (self.lv / "cache", "/var/cache/libvirt"),
        ]
        lines = ["set -e"]
        for src, dst in mounts:
            if src == "tmpfs":
                lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {dst}")
            else:
                lines.append(f"mkdir -p {dst} && mount --bind {src} {dst}")
        lines.append("exec libvirtd")
        script = self.lv / "start-libvirtd.sh"
        script.write_text("\n".join(lines) + "\n")
        return script

    def start_libvirtd(self, timeout=30):
        import libvirt  # pylint: disable=import-outside-toplevel

        script = self._write_libvirt_config()
        log = open(self.lv / "libvirtd.stdout", "ab")  # pylint: disable=consider-using-with
        self.libvirtd = self.ns.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", str(script)], stdout=log, stderr=log
        )
        log.close()
        libvirt.registerErrorHandler(lambda *_: None, None)
        deadline = time.monotonic() + timeout
        while True:
            if self.libvirtd.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {(self.lv / 'libvirtd.stdout').read_text()[-2000:]}")
            try:
                self.conn = libvirt.open(self.uri)
                return self.conn
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop_libvirtd(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        if self.libvirtd is not None and self.libvirtd.poll() is None:
            self.libvirtd.send_signal(signal.SIGTERM)
            try:
                self.libvirtd.wait(15)
            except subprocess.TimeoutExpired:
                self.libvirtd.kill()
        self.libvirtd = None

    def libvirtd_log(self):
        path = self.lv / "log" / "libvirtd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def define(self, xml):
        return self.conn.defineXML(xml)

    def domain(self, name):
        return self.conn.lookupByName(name)

    def tap_of(self, name):
        """The tap libvirt gave a running domain (from its live XML)."""
        dom = host_libvirt.parse_domain_xml(self.domain(name).XMLDesc(0), True)
        return dom["interfaces"][0]["target"]

    # ------------------------------------------------------------------ salt
    def salt(self, fun, *args, timeout=120):
        """``salt-call --local`` inside the compute-host namespace; (retcode, return value)."""
        return self.minion.call(fun, *args, netns=self.ns, timeout=timeout)

    # ------------------------------------------------------------------ clean-up
    def shutdown(self):
        """Destroy guests, stop libvirtd and OVS; the Topology then kills whatever is left."""
        if self.conn is not None:
            for dom in self.conn.listAllDomains(0):
                with contextlib.suppress(Exception):
                    if dom.isActive():
                        dom.destroy()
        self.stop_libvirtd()
        with contextlib.suppress(Exception):
            self.ovs_ctl("stop")


def leftover_processes(marker):
    """PIDs whose command line mentions ``marker`` (our temp dir): must be none after clean-up."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append((int(entry), cmdline.strip()))
    return found


@contextlib.contextmanager
def compute_host(topology_cls):
    """A running compute host; everything stopped, namespace and temp dir removed afterwards."""
    base = tempfile.mkdtemp(prefix="dfovs-", dir="/tmp")
    try:
        with topology_cls(prefix="dfovs") as topo:
            host = ComputeHost(topo, base)
            try:
                yield host
            finally:
                host.shutdown()
        left = leftover_processes(base)
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            raise RuntimeError(f"processes survived the lab clean-up: {left}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def start_dnsmasq(host, iface="br-int", cidr="10.77.0.1/24", first="10.77.0.100", last="10.77.0.150"):
    """dnsmasq answering DHCP on the bridge's internal port (for a guest's lease over its OVS port)."""
    host.ns.run(["ip", "addr", "add", cidr, "dev", iface])
    host.ns.run(["ip", "link", "set", iface, "up"])
    log = host.base / "dnsmasq.log"
    host.ns.popen(
        [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--interface={iface}", "--bind-interfaces",
            "--except-interface=lo", "--port=0", f"--dhcp-range={first},{last},1h",
            f"--dhcp-leasefile={host.base}/dnsmasq.leases", "--log-dhcp", f"--log-facility={log}",
            f"--pid-file={host.base}/dnsmasq.pid",
        ]
    )
    return log


__all__ = [
    "ComputeHost", "compute_host", "domain_xml", "kvm_status", "lab_missing", "leftover_processes",
    "sh", "start_dnsmasq", "wait_for",
]
