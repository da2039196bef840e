"""
Network namespaces for the lab tier: each test builds its own little network
(hosts as namespaces, veth cables, optional bridges), runs real daemons inside,
and removes everything afterwards. Needs root and iproute2.

    with Topology() as topo:
        server = topo.ns("srv")
        client = topo.ns("cli")
        topo.link(server, "s0", client, "c0", "10.99.0.1/24", "10.99.0.2/24")
        server.popen(["dnsmasq", ...])          # stopped when the topology closes
        client.run(["ping", "-c1", "10.99.0.1"])
"""

import itertools
import os
import shutil
import signal
import subprocess
import time

from harness.proc import spawn, stop_groups

_COUNTER = itertools.count()


def missing(*tools):
    """Why the lab cannot run here (root, ip netns, the named tools), or None."""
    if os.geteuid() != 0:
        return "lab tier needs root (network namespaces)"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"lab tier needs '{tool}' (see tools/apt-packages.txt)"
    return None


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Netns:
    def __init__(self, topology, name):
        self.topology = topology
        self.name = name
        sh(["ip", "netns", "add", name])
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, cmd):
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd, check=True, **kw):
        return sh(self.argv(cmd), check=check, **kw)

    def popen(self, cmd, **kw):
        """Start a long-running process in this namespace; the topology stops it."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = spawn(self.argv(cmd), **kw)
        self.topology.procs.append(proc)
        return proc

    def pids(self):
        out = sh(["ip", "netns", "pids", self.name], check=False).stdout.split()
        return [int(p) for p in out]

    def delete(self, deadline=60):
        # SIGKILL lands asynchronously (a loaded box, a process in D state) and a dying process
        # manager may fork once more: kill until the namespace is empty, not just once
        give_up = time.monotonic() + deadline
        while (pids := self.pids()) and time.monotonic() < give_up:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        sh(["ip", "netns", "del", self.name], check=False)


class Topology:
    """A set of namespaces with a unique prefix; closing it removes them all."""

    def __init__(self, prefix="dfl"):
        self.prefix = f"{prefix}{os.getpid() % 10000}x{next(_COUNTER)}"
        self.namespaces = []
        self.procs = []

    def ns(self, role):
        netns = Netns(self, f"{self.prefix}-{role}")
        self.namespaces.append(netns)
        return netns

    def link(self, ns_a, if_a, ns_b, if_b, addr_a=None, addr_b=None):
        """A veth cable between two namespaces, with optional CIDR addresses."""
        tmp_a, tmp_b = f"{self.prefix}a{next(_COUNTER)}"[-15:], f"{self.prefix}b{next(_COUNTER)}"[-15:]
        sh(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        for tmp, netns, ifname, addr in ((tmp_a, ns_a, if_a, addr_a), (tmp_b, ns_b, if_b, addr_b)):
            sh(["ip", "link", "set", tmp, "netns", netns.name])
            netns.run(["ip", "link", "set", tmp, "name", ifname])
            if addr:
                netns.run(["ip", "addr", "add", addr, "dev", ifname])
            netns.run(["ip", "link", "set", ifname, "up"])

    def close(self):
        stop_groups(list(reversed(self.procs)), grace=10)
        for netns in reversed(self.namespaces):
            netns.delete()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
