"""
Lab helpers for the dnsmasq test (issue 5): real DHCP clients (busybox udhcpc) in
client namespaces, a tcpdump capture on each client's interface, and the count of
unicast renewals that got their DHCPACK, read from that capture.

How one renewal is measured: ``SIGUSR1`` makes a bound udhcpc send ONE unicast
DHCPREQUEST (ciaddr = its address, IP destination = the server) and wait ``-T``
seconds for the ACK. Without an ACK it falls back to a broadcast DHCPREQUEST
(rebinding), which any instance on the segment can answer. In the capture a
unicast renewal counts as answered only when a DHCPACK with its xid for its
address reaches the client's interface before the client sends its next
DHCPREQUEST: a late rescue by the broadcast rebind does not count.

Why the capture and not udhcpc's log: busybox 1.35 sends the unicast renewal from
a second socket bound to <its address>:68 and connected to the server; an ACK that
comes back before that socket is closed is delivered to it and lost, so udhcpc
sometimes logs "broadcasting renew" although the server answered within a
millisecond. The log must agree on what was sent and may only show fewer answers.
"""

import ipaddress
import json
import os
import pathlib
import shlex
import signal
import struct
import subprocess

from harness.masterless import SALT_CALL, Masterless, local_return  # noqa: F401  (SALT_CALL: the test's skip check)
from harness.proc import stop_group as stop
from harness.wait import wait_for

DHCPREQUEST, DHCPACK = 3, 5
BROADCAST = "255.255.255.255"

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook for the lab: configure the address (a unicast renewal is sent from it), log the event.
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
echo "$1 ${ip:-} ${serverid:-}" >> "$LAB_EVENTS"
"""


# ------------------------------------------------------------------ pcap → DHCP packets


def read_pcap(path):
    """DHCP packets (IPv4/UDP 67-68 over Ethernet) of a classic pcap file, in capture order."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[magic]
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"expected an Ethernet capture, got link type {linktype}"
    packets, offset = [], 24
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        packet = _dhcp(frame)
        if packet:
            packet["ts"] = sec + frac / 1e6
            packets.append(packet)
    return packets


def _dhcp(frame):
    if len(frame) < 14 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17:
        return None
    src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
    udp = ip[ihl:]
    sport, dport = struct.unpack("!HH", udp[:4])
    bootp = udp[8:]
    if len(bootp) < 240 or bootp[236:240] != b"\x63\x82\x53\x63":
        return None
    msgtype, i = None, 240
    while i < len(bootp) and bootp[i] != 255:
        code = bootp[i]
        if code == 0:
            i += 1
            continue
        length = bootp[i + 1]
        if code == 53:
            msgtype = bootp[i + 2]
        i += 2 + length
    return {
        "src": src, "dst": dst, "sport": sport, "dport": dport, "op": bootp[0],
        "xid": bootp[4:8].hex(),
        "chaddr": ":".join(f"{b:02x}" for b in bootp[28:34]),
        "ciaddr": str(ipaddress.IPv4Address(bootp[12:16])),
        "yiaddr": str(ipaddress.IPv4Address(bootp[16:20])),
        "type": msgtype,
    }


def unicast_renewals(packets, mac):
    """
    ``(sent, answered)`` unicast renewals of the client with hardware address ``mac``
    in a capture of its interface (other clients' broadcasts are on it too): a
    DHCPREQUEST from its configured address to a unicast IP, answered when a
    DHCPACK for the same xid and address comes back before its next DHCPREQUEST.
    """
    sent = answered = 0
    pending = None
    for pkt in packets:
        if pkt["chaddr"] != mac.lower():
            continue
        if pkt["op"] == 1 and pkt["type"] == DHCPREQUEST:
            unicast = pkt["dst"] != BROADCAST and pkt["ciaddr"] != "0.0.0.0"
            pending = pkt if unicast else None
            sent += unicast
        elif pkt["op"] == 2 and pkt["type"] == DHCPACK and pending is not None:
            if pkt["xid"] == pending["xid"] and pkt["yiaddr"] == pending["ciaddr"]:
                answered += 1
                pending = None
    return sent, answered


def log_renewals(text):
    """The same count from udhcpc's own output: ``(sent, answered)``."""
    sent = answered = 0
    waiting = False
    for line in text.splitlines():
        if "sending renew to server" in line:
            sent += 1
            waiting = True
        elif "lease of" in line and waiting:
            answered += 1
            waiting = False
        elif "broadcasting" in line:
            waiting = False
    return sent, answered


# ------------------------------------------------------------------ a DHCP client in a namespace


class DhcpClient:
    """busybox udhcpc on ``ifname`` in namespace ``ns``, with tcpdump capturing that interface."""

    def __init__(self, ns, ifname, workdir, renew_wait=4):
        self.ns, self.ifname = ns, ifname
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.script = self.dir / "udhcpc.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)
        self.events = self.dir / "events"
        self.events.write_text("")
        self.pcap = self.dir / "capture.pcap"
        self.log = self.dir / "udhcpc.log"
        self.renew_wait = renew_wait
        self.tcpdump = self.udhcpc = None
        self.mac = json.loads(ns.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["address"]

    def start(self, timeout=90):
        self.launch()
        return self.wait_bound(timeout)

    def launch(self):
        """Start tcpdump, then udhcpc (without waiting for a lease)."""
        err = self.dir / "tcpdump.err"
        with open(err, "w") as stderr:  # pylint: disable=unspecified-encoding
            self.tcpdump = self.ns.popen(
                ["tcpdump", "-i", self.ifname, "-n", "-U", "--immediate-mode", "-w", str(self.pcap),
                 "udp port 67 or udp port 68"],
                stderr=stderr,
            )
        wait_for(lambda: "listening on" in err.read_text() or self.tcpdump.poll() is not None, 30, 0.1,
                 f"tcpdump on {self.ifname}")
        assert self.tcpdump.poll() is None, err.read_text()
        with open(self.log, "w") as out:  # pylint: disable=unspecified-encoding
            self.udhcpc = self.ns.popen(
                ["udhcpc", "-f", "-i", self.ifname, "-s", str(self.script), "-t", "10", "-T", str(self.renew_wait),
                 "-A", "2"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LAB_EVENTS": str(self.events)},
            )

    def wait_bound(self, timeout=90):
        wait_for(lambda: self.lease() or self.udhcpc.poll() is not None, timeout, 0.1,
                 f"a lease on {self.ns.name}/{self.ifname}")
        assert self.udhcpc.poll() is None, self.log.read_text()
        return self.lease()

    def _events(self):
        return [line.split() for line in self.events.read_text().splitlines() if line.strip()]

    def lease(self):
        """The address of the last bound/renew event, or None."""
        for event in reversed(self._events()):
            if event[0] in ("bound", "renew") and len(event) > 1:
                return event[1]
            if event[0] in ("deconfig", "leasefail", "nak"):
                return None
        return None

    def renew(self, timeout=90):
        """One SIGUSR1 renewal; returns once udhcpc holds a lease again (answered or rescued)."""
        before = len(self._events())
        os.kill(self.udhcpc.pid, signal.SIGUSR1)
        wait_for(lambda: any(e[0] in ("renew", "bound") for e in self._events()[before:]), timeout, 0.1,
                 f"udhcpc in {self.ns.name} to hold a lease again after a renewal")

    def packets(self):
        return read_pcap(self.pcap) if self.pcap.exists() else []

    def measure(self, count):
        """``count`` renewals; returns the figures read from the capture and from udhcpc's log."""
        for _ in range(count):
            self.renew()
        # every ACK the client acted on is on the wire already; wait until tcpdump has written it
        acks = sum(1 for e in self._events() if e[0] in ("bound", "renew"))
        wait_for(lambda: sum(1 for p in self.packets() if p["type"] == DHCPACK and p["chaddr"] == self.mac) >= acks, 30, 0.1,
                 f"tcpdump on {self.ifname} to write {acks} DHCPACKs")
        sent, answered = unicast_renewals(self.packets(), self.mac)
        log_sent, log_answered = log_renewals(self.log.read_text())
        return {"client": self.ns.name.rsplit("-", 1)[1], "address": self.lease(), "sent": sent, "answered": answered,
                "log_sent": log_sent, "log_answered": log_answered}

    def close(self):
        for proc in (self.udhcpc, self.tcpdump):
            if proc is not None:
                stop(proc)
        self.ns.run(["ip", "-4", "addr", "flush", "dev", self.ifname], check=False)


# ------------------------------------------------------------------ dnsmasq from a systemd unit


def exec_lines(unit_text, key, instance):
    """argv of each ``key=`` line (ExecStart, ExecStartPre) of a template unit for one instance (``%i``)."""
    out = []
    for line in unit_text.splitlines():
        if line.startswith(key + "="):
            command = line.split("=", 1)[1].lstrip("-@:+!")
            out.append(shlex.split(command.replace("%i", instance)))
    return out


def exec_start(unit_text, instance):
    """argv of a unit's single ExecStart= for one template instance."""
    lines = exec_lines(unit_text, "ExecStart", instance)
    assert len(lines) == 1, f"expected one ExecStart= line, got {lines}"
    return lines[0]


def conf_value(conf_text, key):
    for line in conf_text.splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1].strip()
    return None


def start_dnsmasq(ns, argv, pid_file, log_path, timeout=60):
    """Start one dnsmasq (argv must keep it in the foreground) and wait for its pid file."""
    with open(log_path, "w") as out:  # pylint: disable=unspecified-encoding
        proc = ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def ready():
        if proc.poll() is not None:
            return True
        try:
            return int(pathlib.Path(pid_file).read_text().split()[0]) == proc.pid
        except (OSError, ValueError, IndexError):
            return False

    wait_for(ready, timeout, 0.1, f"dnsmasq to write {pid_file}")
    assert proc.poll() is None, f"dnsmasq exited: {pathlib.Path(log_path).read_text()}"
    return proc


# ------------------------------------------------------------------ salt-call --local


def minion_config(base, pillar_root):
    """
    A masterless minion whose file_roots are this checkout's states/ and the checkout
    itself, on the pillar the test wrote; it gets _modules and _utils only by saltutil.sync_utils/sync_modules.
    """
    conf_dir = pathlib.Path(base) / "salt"
    return Masterless(conf_dir, minion_id="dnsmasq-lab", pillar_root=pillar_root, checkout_modules=False,
                      log_level="quiet", extra_config={"log_file": str(conf_dir / "minion.log")})


def salt_call(minion, *args, timeout=300):
    """``salt-call --local`` with JSON output; returns the ``local`` value and the raw process."""
    proc = minion.run(*args, timeout=timeout)
    try:
        return local_return(proc), proc
    except ValueError as exc:
        raise AssertionError(f"{' '.join(proc.args)} gave no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
